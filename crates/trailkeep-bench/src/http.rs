//! A lean HTTP/1.1 keep-alive client on raw tokio TCP, and a closed-loop load
//! generator that drives many such connections. Requests are built once as
//! bytes, so the client spends its share of the two cores on little more
//! than a write and a read per request.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response: its status and its body (chunked bodies are decoded).
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body bytes.
    pub body: Vec<u8>,
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    /// Connects to `addr` with Nagle's algorithm off.
    ///
    /// # Errors
    /// When the connection fails.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends one complete request (see [`post`], [`get`]) and reads its response.
    ///
    /// # Errors
    /// IO errors, a closed connection or a malformed response.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request).await?;
        self.read_response().await
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    async fn line_end(&mut self) -> io::Result<usize> {
        loop {
            if let Some(p) = find(&self.buf, b"\r\n") {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| invalid("head"))?;
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("status line"))?;
        let mut content_length = 0;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value
                        .trim()
                        .parse()
                        .map_err(|_| invalid("content-length"))?;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        self.buf.drain(..head_end);
        let body = if chunked {
            self.read_chunked().await?
        } else {
            while self.buf.len() < content_length {
                self.fill().await?;
            }
            self.buf.drain(..content_length).collect()
        };
        Ok(Response { status, body })
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let end = self.line_end().await?;
            let size_line = std::str::from_utf8(&self.buf[..end]).map_err(|_| invalid("chunk"))?;
            let size_hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| invalid("chunk size"))?;
            self.buf.drain(..end + 2);
            if size == 0 {
                // Trailers, then the empty line that ends the message.
                loop {
                    let end = self.line_end().await?;
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }
}

/// A complete `POST` request with a JSON body and a bearer key.
#[must_use]
pub fn post(path: &str, key: &str, body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        path,
        &[("Authorization", &format!("Bearer {key}"))],
        body,
    )
}

/// A complete request with `headers` and a JSON `body` (for dialects whose
/// auth is not a bearer key).
#[must_use]
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    req
}

/// A complete `GET` request with a bearer key.
#[must_use]
pub fn get(path_and_query: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n"
    )
    .into_bytes()
}

/// What a request is, for the tallies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Stores events.
    Write = 0,
    /// Reads events.
    Read = 1,
}

/// One request the load generator sends.
pub struct Req {
    /// The complete request bytes.
    pub bytes: Arc<[u8]>,
    /// Write or read.
    pub kind: Kind,
    /// Events it carries (0 for reads).
    pub events: u64,
}

/// Chooses request `n` (counted across all connections) for connection `conn`.
pub type Source = Arc<dyn Fn(usize, u64) -> Req + Send + Sync>;

/// How long and how hard to load.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Keep-alive connections, each with one request in flight.
    pub connections: usize,
    /// Time before measuring starts; responses to requests sent in it are
    /// not measured.
    pub warmup: Duration,
    /// Time measured after the warmup.
    pub measure: Duration,
    /// Most requests sent in all, warmup included.
    pub max_requests: u64,
}

/// The name of trailkeep's writer thread as `/proc` shows it (15 bytes).
const WRITER_THREAD: &str = "trailkeep-write";
/// The name of trailkeep's SQLite fold thread.
const FOLD_THREAD: &str = "trailkeep-fold";

/// Tallies of one load run.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Seconds from the end of warmup to the last measured response.
    pub secs: f64,
    /// Measured successful requests, by [`Kind`].
    pub requests: [u64; 2],
    /// Measured events stored by successful writes.
    pub events: u64,
    /// Events acknowledged in the whole run, warmup included.
    pub acked_events: u64,
    /// Latencies in microseconds of measured successful requests, by
    /// [`Kind`], sorted.
    pub latencies_us: [Vec<u32>; 2],
    /// Failed requests (non-2xx or IO errors).
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Process CPU seconds (server and load generator) while measuring.
    pub cpu_secs: f64,
    /// CPU seconds of trailkeep's single writer thread while measuring.
    pub writer_cpu_secs: f64,
    /// CPU seconds of trailkeep's fold thread (SQLite) while measuring.
    pub fold_cpu_secs: f64,
    /// Bytes the process sent to storage while measuring.
    pub storage_write_bytes: u64,
    /// CPU seconds of the machine's `postgres` processes while measuring
    /// (whoever they served).
    pub postgres_cpu_secs: f64,
}

#[derive(Default)]
struct Tally {
    result: LoadResult,
    last_done: Option<Instant>,
}

/// Runs a closed loop: every connection sends its next request as soon as
/// the previous one is answered, until the time or the request count is used
/// up.
///
/// # Errors
/// When a connection cannot be opened.
pub async fn run_load(addr: SocketAddr, spec: &LoadSpec, source: Source) -> io::Result<LoadResult> {
    let mut conns = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        conns.push(Conn::connect(addr).await?);
    }
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.measure;
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conns.len());
    for (c, mut conn) in conns.into_iter().enumerate() {
        let issued = issued.clone();
        let source = source.clone();
        let max = spec.max_requests;
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                if Instant::now() >= end {
                    break;
                }
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= max {
                    break;
                }
                let req = source(c, n);
                let sent = Instant::now();
                match conn.send(&req.bytes).await {
                    Ok(res) if (200..300).contains(&res.status) => {
                        let done = Instant::now();
                        t.result.acked_events += req.events;
                        if sent >= measure_from {
                            let k = req.kind as usize;
                            t.result.requests[k] += 1;
                            t.result.events += req.events;
                            let us = u32::try_from(done.duration_since(sent).as_micros())
                                .unwrap_or(u32::MAX);
                            t.result.latencies_us[k].push(us);
                            t.last_done = Some(done);
                        }
                    }
                    Ok(res) => {
                        t.result.errors += 1;
                        t.result.first_error.get_or_insert_with(|| {
                            format!(
                                "status {}: {}",
                                res.status,
                                String::from_utf8_lossy(&res.body[..res.body.len().min(300)])
                            )
                        });
                    }
                    Err(e) => {
                        t.result.errors += 1;
                        t.result.first_error.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
            t
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_start = crate::sys::cpu_secs();
    let writer_start = crate::sys::thread_cpu_secs(WRITER_THREAD);
    let fold_start = crate::sys::thread_cpu_secs(FOLD_THREAD);
    let written_start = crate::sys::storage_write_bytes();
    let postgres_start = crate::sys::processes_cpu_secs("postgres");
    let mut total = LoadResult::default();
    let mut last_done = measure_from;
    for task in tasks {
        let t = task.await.map_err(io::Error::other)?;
        let r = t.result;
        for k in 0..2 {
            total.requests[k] += r.requests[k];
            total.latencies_us[k].extend_from_slice(&r.latencies_us[k]);
        }
        total.events += r.events;
        total.acked_events += r.acked_events;
        total.errors += r.errors;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
        if let Some(d) = t.last_done {
            last_done = last_done.max(d);
        }
    }
    total.cpu_secs = crate::sys::cpu_secs() - cpu_start;
    total.writer_cpu_secs = crate::sys::thread_cpu_secs(WRITER_THREAD) - writer_start;
    total.fold_cpu_secs = crate::sys::thread_cpu_secs(FOLD_THREAD) - fold_start;
    total.storage_write_bytes = crate::sys::storage_write_bytes().saturating_sub(written_start);
    total.postgres_cpu_secs = crate::sys::processes_cpu_since(
        &postgres_start,
        &crate::sys::processes_cpu_secs("postgres"),
    );
    total.secs = last_done.duration_since(measure_from).as_secs_f64();
    for l in &mut total.latencies_us {
        l.sort_unstable();
    }
    Ok(total)
}
