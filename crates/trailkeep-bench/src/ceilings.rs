//! The machine's own ceilings, measured in the same run as trailkeep: an
//! HTTP server that only parses, a single-threaded durable append, and
//! SHA-256 over an export bundle's lines.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running ceiling server; dropping the stop sender ends it.
pub struct CeilingServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn parse_only(body: Bytes) -> StatusCode {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(_) => StatusCode::CREATED,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// Starts the HTTP ceiling on 127.0.0.1:0: axum, `POST /v1/events` parsed
/// into a `serde_json::Value`, answered 201, nothing stored.
///
/// # Errors
/// When binding fails.
pub async fn start_http_ceiling() -> std::io::Result<CeilingServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route("/v1/events", post(parse_only));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(CeilingServer { addr, stop, task })
}

impl CeilingServer {
    /// Stops the server and waits for it.
    ///
    /// # Errors
    /// When serving failed.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// What the durable-append ceiling did.
#[derive(Debug)]
pub struct AppendResult {
    /// Events appended and synced.
    pub events: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Wall seconds.
    pub secs: f64,
    /// Bytes written.
    pub bytes: u64,
    /// Bytes the process sent to storage meanwhile (`/proc/self/io`).
    pub storage_write_bytes: u64,
}

/// Parses each body into a `serde_json::Value`, hashes it with SHA-256 and
/// appends hash, length and body to `dir/append.log`, with one
/// `fdatasync` per `batch` events, on one thread, until `max_events` or
/// `max_time`.
///
/// # Errors
/// IO errors, or a body that is not JSON.
pub fn durable_append(
    bodies: &[Vec<u8>],
    dir: &Path,
    batch: usize,
    max_events: u64,
    max_time: Duration,
) -> anyhow::Result<AppendResult> {
    let mut file = std::fs::File::create(dir.join("append.log"))?;
    let mut buf = Vec::with_capacity(batch * 700);
    let start = Instant::now();
    let written_start = crate::sys::storage_write_bytes();
    let (mut events, mut syncs, mut bytes) = (0u64, 0u64, 0u64);
    let mut next = 0usize;
    while events < max_events && start.elapsed() < max_time {
        for _ in 0..batch {
            let body = &bodies[next % bodies.len()];
            next += 1;
            let value: serde_json::Value = serde_json::from_slice(body)?;
            std::hint::black_box(&value);
            buf.extend_from_slice(&Sha256::digest(body));
            buf.extend_from_slice(&u32::try_from(body.len())?.to_le_bytes());
            buf.extend_from_slice(body);
        }
        file.write_all(&buf)?;
        file.sync_data()?;
        bytes += buf.len() as u64;
        buf.clear();
        syncs += 1;
        events += batch as u64;
    }
    Ok(AppendResult {
        events,
        syncs,
        secs: start.elapsed().as_secs_f64(),
        bytes,
        storage_write_bytes: crate::sys::storage_write_bytes().saturating_sub(written_start),
    })
}

/// SHA-256 of every non-empty line of every bundle: the hashing a verifier
/// cannot avoid. Returns the lines hashed.
#[must_use]
pub fn sha256_lines(bundles: &[Vec<u8>]) -> u64 {
    let mut lines = 0u64;
    for bundle in bundles {
        for line in bundle.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            std::hint::black_box(Sha256::digest(line));
            lines += 1;
        }
    }
    lines
}
