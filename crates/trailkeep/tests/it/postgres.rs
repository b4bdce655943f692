//! PostgreSQL deployments: import from SQLite, several nodes on one
//! database, and a database connection cut mid-load. Traffic stays on
//! 127.0.0.1; every loop is bounded in count and time.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tlog::Checkpoint;

use crate::support::{KEY, TestServer, bin, free_port, fresh_schema, run_cli, skip};

fn hashes(v: &Value) -> Vec<tlog::Hash> {
    use base64::Engine as _;
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| {
            base64::engine::general_purpose::STANDARD
                .decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_moves_an_embedded_store_with_its_proofs_intact() {
    let Some(url) = fresh_schema().await else {
        return;
    };
    let s = TestServer::start_with(|c| c.store = None).await;
    for i in 0..30 {
        let tenant = if i % 2 == 0 { "even" } else { "odd" };
        let (st, _) = s.post("/v1/events", KEY, &json!({"tenant": tenant, "action": format!("a{i}"), "actor": {"id": "u"}, "tags": ["x"]})).await;
        assert_eq!(st, 201);
    }
    // Enough events for SQLite to train its leaf dictionary, so the last
    // batch is stored compressed and import must decode it.
    for k in 0..6 {
        let events: Vec<serde_json::Value> = (0..1000)
            .map(|i| json!({"tenant": "bulk", "action": "user.login", "actor": {"id": format!("u{i}")}, "description": format!("batch{k} item {i}")}))
            .collect();
        let (st, r) = s
            .post("/v1/events/batch", KEY, &json!({ "events": events }))
            .await;
        assert_eq!(st, 201, "{r}");
        if k == 4 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let folded: i64 = rusqlite::Connection::open(s.db_path())
                    .unwrap()
                    .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                    .unwrap();
                if folded >= 5030 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the fold did not catch up"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    let (_, old_note) = s.get_text("/v1/tenants/even/checkpoint", KEY).await;
    let old_verifier = s.verifier.clone();
    let dir = s.stop().await;
    let db = dir.path().join("trailkeep.db");
    let packed: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM events WHERE substr(leaf, 1, 4) = x'28b52ffd'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        packed >= 1000,
        "the last batch is stored compressed ({packed})"
    );
    let (code, _, err) = run_cli(&[
        "import",
        "--from",
        &format!("sqlite://{}", db.display()),
        "--to",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("6030 events"), "{err}");
    let (code, _, err) = run_cli(&[
        "import",
        "--from",
        &format!("sqlite://{}", db.display()),
        "--to",
        &url,
    ]);
    assert!(
        code != 0 && err.contains("fresh database"),
        "a second import is refused: {err}"
    );
    let (code, vkey, _) = run_cli(&["key", "public", "--store", &url]);
    assert_eq!(
        (code, vkey.trim()),
        (0, old_verifier.to_string().as_str()),
        "the signing key moved"
    );

    let pg = TestServer::start_with(|c| c.store = Some(url.clone())).await;
    assert_eq!(pg.list_all("tenant=even", KEY).await.len(), 15);
    assert_eq!(pg.list_all("tenant=odd", KEY).await.len(), 15);
    assert_eq!(pg.list_all("tag=x&tenant=odd", KEY).await.len(), 15);
    let old = Checkpoint::open(&old_note, &old_verifier).unwrap();
    let (_, r) = pg
        .post(
            "/v1/events",
            KEY,
            &json!({"tenant": "even", "action": "after", "actor": {"id": "u"}}),
        )
        .await;
    assert_eq!(r["index"], 15, "indexes continue where SQLite stopped");
    let (_, bundle) = pg.get_text("/v1/tenants/even/export", KEY).await;
    let v = trailkeep::export::verify_bundle(bundle.as_bytes(), &old_verifier, Some(&old)).unwrap();
    assert_eq!(v.events, 16);
    let (_, c) = pg.get("/v1/tenants/even/consistency?from=15", KEY).await;
    tlog::verify_consistency(15, 16, &hashes(&c["hashes"]), &old.root, &v.checkpoint.root).unwrap();
    let (_, bundle) = pg.get_text("/v1/tenants/bulk/export", KEY).await;
    let v = trailkeep::export::verify_bundle(bundle.as_bytes(), &old_verifier, None).unwrap();
    assert_eq!(
        v.events, 6000,
        "compressed leaves arrive as the bytes that were hashed"
    );
    let (_, found) = pg.get("/v1/events?q=batch5%20item%20999", KEY).await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1, "{found}");
}

struct Node {
    child: Child,
    base: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_node(url: &str) -> Node {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            url,
            "--data-dir",
            data.path().to_str().unwrap(),
        ])
        .env("TRAILKEEP_API_KEY", KEY)
        .env("TRAILKEEP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node = Node {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", node.base)).send().await
            && r.status() == 200
        {
            return node;
        }
        assert!(Instant::now() < deadline, "node did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_json(c: &reqwest::Client, url: String) -> Value {
    c.get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn get_text(c: &reqwest::Client, url: String) -> String {
    c.get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_log_without_forking() {
    let Some(url) = fresh_schema().await else {
        return;
    };
    // Nodes start at once: migrations and the key bootstrap must not race.
    let (a, b, c) = tokio::join!(start_node(&url), start_node(&url), start_node(&url));
    let nodes = [a, b, c];
    let (code, vkey, err) = run_cli(&["key", "public", "--store", &url]);
    assert_eq!(code, 0, "{err}");
    let verifier = tlog::NoteVerifier::parse(vkey.trim()).unwrap();
    let client = reqwest::Client::new();
    let acked: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for w in 0..6 {
            let (client, base, acked) = (client.clone(), node.base.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..40 {
                    let tenant = format!("t{}", (n + w + i) % 3);
                    let body = json!({"tenant": tenant, "action": format!("n{n}w{w}i{i}"), "actor": {"id": "u"}});
                    let res = client.post(format!("{base}/v1/events")).bearer_auth(KEY).json(&body).send().await.unwrap();
                    assert_eq!(res.status(), 201);
                    let r: Value = res.json().await.unwrap();
                    acked.lock().unwrap().push((r["id"].as_str().unwrap().into(), tenant, r["index"].as_u64().unwrap()));
                }
            }));
        }
    }
    // A checkpoint from node 0 while the load runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mid_note = get_text(
        &client,
        format!("{}/v1/tenants/t0/checkpoint", nodes[0].base),
    )
    .await;
    let mid = Checkpoint::open(&mid_note, &verifier).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 3 * 6 * 40);
    let mut stored: HashMap<String, (String, u64)> = HashMap::new();
    for t in 0..3 {
        let tenant = format!("t{t}");
        // The checkpoint of one node verifies the events exported by another.
        let note = get_text(
            &client,
            format!("{}/v1/tenants/{tenant}/checkpoint", nodes[t % 3].base),
        )
        .await;
        let cp = Checkpoint::open(&note, &verifier).unwrap();
        let bundle = get_text(
            &client,
            format!("{}/v1/tenants/{tenant}/export", nodes[(t + 1) % 3].base),
        )
        .await;
        let v = trailkeep::export::verify_bundle(
            bundle.as_bytes(),
            &verifier,
            (t == 0).then_some(&mid),
        )
        .unwrap();
        assert_eq!(v.checkpoint.root, cp.root);
        let mut ids = HashSet::new();
        for line in bundle.lines().take(v.events as usize) {
            let l: Value = serde_json::from_str(line).unwrap();
            let id = l["event"]["id"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "stored twice: {id}");
            stored.insert(id, (tenant.clone(), l["index"].as_u64().unwrap()));
        }
    }
    assert_eq!(
        stored.len(),
        acked.len(),
        "every 201 is stored exactly once"
    );
    for (id, tenant, index) in &acked {
        assert_eq!(stored.get(id), Some(&(tenant.clone(), *index)));
    }
    // Consistency between checkpoints taken from different nodes.
    let end = Checkpoint::open(
        &get_text(
            &client,
            format!("{}/v1/tenants/t0/checkpoint", nodes[1].base),
        )
        .await,
        &verifier,
    )
    .unwrap();
    let proof = get_json(
        &client,
        format!(
            "{}/v1/tenants/t0/consistency?from={}&to={}",
            nodes[2].base, mid.size, end.size
        ),
    )
    .await;
    tlog::verify_consistency(
        mid.size,
        end.size,
        &hashes(&proof["hashes"]),
        &mid.root,
        &end.root,
    )
    .unwrap();
    drop(nodes);

    // fsck re-hashes the shared store, and catches an edited payload.
    let (code, out, err) = run_cli(&["fsck", "--store", &url]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(err.contains("720 events re-hashed"), "{err}");
    let pool = trailkeep::store::postgres::pool(&url).unwrap();
    let c = pool.get().await.unwrap();
    c.execute(
        "UPDATE events SET leaf = convert_to(replace(convert_from(leaf, 'UTF8'), '\"u\"', '\"x\"'), 'UTF8')
         WHERE idx = 3 AND tenant_id = (SELECT id FROM tenants WHERE name = 't1')",
        &[],
    )
    .await
    .unwrap();
    let (code, out, _) = run_cli(&["fsck", "--store", &url]);
    assert!(
        code != 0 && out.contains("default/t1: index 3: event payload does not match"),
        "{out}"
    );
}

/// A TCP proxy to PostgreSQL that can cut every connection and refuse new
/// ones until restored.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (upstream, c2, conns2) = (upstream.to_owned(), cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { port, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_mid_load_loses_nothing_acknowledged() {
    let Some(url) = fresh_schema().await else {
        return;
    };
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let base = crate::support::postgres_url();
    let via_proxy = url.replacen(
        &base["postgres://".len()..]
            .split('/')
            .next()
            .unwrap()
            .to_owned(),
        &format!("postgres@127.0.0.1:{}", proxy.port),
        1,
    );
    assert!(via_proxy.contains(&proxy.port.to_string()), "{via_proxy}");
    let s = Arc::new(TestServer::start_with(|c| c.store = Some(via_proxy.clone())).await);
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let refused = Arc::new(Mutex::new(Vec::<(u16, Option<String>)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (s, acked, refused, stop) = (s.clone(), acked.clone(), refused.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && i < 2000 {
                i += 1;
                let res = s.client.post(format!("{}/v1/events", s.base)).bearer_auth(KEY)
                    .json(&json!({"tenant": "f", "action": format!("w{w}i{i}"), "actor": {"id": "u"}}))
                    .send().await.unwrap();
                let status = res.status().as_u16();
                let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                let body: Value = res.json().await.unwrap();
                if status == 201 {
                    acked.lock().unwrap().push((body["id"].as_str().unwrap().to_owned(), body["index"].as_u64().unwrap()));
                } else {
                    refused.lock().unwrap().push((status, retry));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.cut();
    // While the database is unreachable the node is not ready.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, _) = s.get_text("/readyz", "").await;
        if st == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed ready without a database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, _) = s.get_text("/readyz", "").await;
        if st == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not recover by itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let refused = refused.lock().unwrap().clone();
    assert!(
        !refused.is_empty(),
        "the outage refused nothing: the test did not cut anything"
    );
    for (status, retry) in &refused {
        assert_eq!(
            (*status, retry.is_some()),
            (503, true),
            "outage answers are 503 with Retry-After"
        );
    }
    let acked = acked.lock().unwrap().clone();
    let (_, bundle) = s.get_text("/v1/tenants/f/export", KEY).await;
    let v = trailkeep::export::verify_bundle(bundle.as_bytes(), &s.verifier, None).unwrap();
    let stored: HashMap<String, u64> = bundle
        .lines()
        .take(v.events as usize)
        .map(|l| {
            let l: Value = serde_json::from_str(l).unwrap();
            (
                l["event"]["id"].as_str().unwrap().to_owned(),
                l["index"].as_u64().unwrap(),
            )
        })
        .collect();
    for (id, index) in &acked {
        assert_eq!(stored.get(id), Some(index), "acknowledged event {id} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_across_nodes() {
    let Some(url) = fresh_schema().await else {
        return;
    };
    let tune = |c: &mut trailkeep::config::Config| {
        c.store = Some(url.clone());
        c.rate_limit.requests_per_minute = 1;
        c.rate_limit.burst = 2;
    };
    let a = TestServer::start_with(tune).await;
    let b = TestServer::start_with(tune).await;
    let ev = json!({"action": "a", "actor": {"id": "u"}});
    assert_eq!(a.post("/v1/events", KEY, &ev).await.0, 201);
    assert_eq!(b.post("/v1/events", KEY, &ev).await.0, 201);
    // The key's burst is spent on two nodes together: a third node-hop is refused.
    let res = a
        .client
        .post(format!("{}/v1/events", a.base))
        .bearer_auth(KEY)
        .json(&ev)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&retry), "{retry}");
    assert_eq!(b.post("/v1/events", KEY, &ev).await.0, 429);
}

/// Whether the pool's connection to `url` is encrypted, or the error
/// chain of connecting.
async fn pool_tls(url: &str) -> Result<bool, String> {
    let pool = trailkeep::store::postgres::pool(url).map_err(|e| chain(&e))?;
    let client = pool.get().await.map_err(|e| chain(&e))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| chain(&e))?;
    Ok(row.get(0))
}

/// Asserts that connecting to `url` fails with an error chain naming `why`.
async fn assert_refused(url: &str, why: &str) {
    let e = pool_tls(url)
        .await
        .expect_err("the connection must be refused");
    assert!(e.contains(why), "expected {why:?}, got: {e}");
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        s.push_str(": ");
        s.push_str(&c.to_string());
        next = c.source();
    }
    s
}

/// The URL's `sslmode` and `sslrootcert` mean what they mean to libpq,
/// against the machine's PostgreSQL over real TLS (Debian's server runs with
/// `ssl = on` and a self-signed certificate for `localhost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_and_sslrootcert_work_as_in_libpq_over_real_tls() {
    let Some(url) = fresh_schema().await else {
        return;
    };
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let cert: String = admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    if ssl != "on" || std::fs::metadata(&cert).is_err() {
        let _: Option<()> = skip(&format!(
            "PostgreSQL offers no TLS with a readable certificate (ssl = {ssl}, {cert})"
        ));
        return;
    }
    assert!(url.contains("@127.0.0.1:"), "{url}");
    let by_name = url.replace("@127.0.0.1:", "@localhost:");
    let with = |u: &str, q: &str| format!("{u}&{q}");
    let root = format!("sslrootcert={cert}");

    assert_eq!(pool_tls(&with(&url, "sslmode=disable")).await, Ok(false));
    // libpq's default, `prefer`, encrypts whenever the server offers it.
    assert_eq!(pool_tls(&url).await, Ok(true));
    assert_eq!(pool_tls(&with(&url, "sslmode=require")).await, Ok(true));
    assert_eq!(
        pool_tls(&with(&by_name, &format!("sslmode=verify-full&{root}"))).await,
        Ok(true)
    );
    // verify-ca checks the chain, not the name: 127.0.0.1 is not in the
    // certificate, and verify-full refuses it for that.
    assert_eq!(
        pool_tls(&with(&url, &format!("sslmode=verify-ca&{root}"))).await,
        Ok(true)
    );
    let other = tempfile::NamedTempFile::new().unwrap();
    // A CA certificate (its key was thrown away) that signed nothing here.
    std::fs::write(other.path(), include_str!("unrelated-ca.pem")).unwrap();
    let unrelated = format!("sslrootcert={}", other.path().display());
    assert_refused(
        &with(&url, &format!("sslmode=verify-ca&{unrelated}")),
        "invalid peer certificate: UnknownIssuer",
    )
    .await;
    assert_refused(
        &with(&url, &format!("sslmode=verify-full&{root}")),
        "certificate not valid for name",
    )
    .await;
    // A self-signed certificate is not among the built-in roots.
    assert_refused(
        &with(&by_name, "sslrootcert=system"),
        "invalid peer certificate: UnknownIssuer",
    )
    .await;
    // `require` with roots checks the chain, as in libpq.
    assert_refused(
        &with(&by_name, &format!("sslmode=require&{unrelated}")),
        "invalid peer certificate: UnknownIssuer",
    )
    .await;
    // A `hostaddr` without `host` is the name the certificate is checked
    // against, as in libpq; with `host` as well, the host is.
    let (_, query) = url.split_once('?').unwrap();
    let by_addr = format!("postgres:///test?user=postgres&hostaddr=127.0.0.1&port=5432&{query}");
    assert_eq!(pool_tls(&by_addr).await, Ok(true));
    assert_eq!(
        pool_tls(&with(&by_addr, "sslmode=disable")).await,
        Ok(false)
    );
    assert_eq!(pool_tls(&with(&by_addr, "sslmode=require")).await, Ok(true));
    assert_refused(
        &with(&by_addr, &format!("sslmode=verify-full&{root}")),
        "certificate not valid for name",
    )
    .await;
    let named_addr = format!("postgres://postgres@localhost:5432/test?hostaddr=127.0.0.1&{query}");
    assert_eq!(
        pool_tls(&with(&named_addr, &format!("sslmode=verify-full&{root}"))).await,
        Ok(true)
    );

    // A whole node on a verified connection.
    let full = with(&by_name, &format!("sslmode=verify-full&{root}"));
    let s = TestServer::start_with(|c| c.store = Some(full.clone())).await;
    let (st, r) = s
        .post(
            "/v1/events",
            KEY,
            &json!({"tenant": "tls", "action": "a", "actor": {"id": "u"}}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    assert_eq!(s.list_all("tenant=tls", KEY).await.len(), 1);
}

/// A PostgreSQL server of its own in a temporary directory, with SCRAM
/// password authentication over TLS and trusted Unix sockets. It runs as a
/// child that dies with the test thread (`PR_SET_PDEATHSIG`) and is killed
/// when dropped. The machine's shared server trusts 127.0.0.1, so SCRAM is
/// never used there.
struct ScramServer {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    password: String,
    /// The certificate the server presents (a copy of the shared server's).
    cert: String,
}

impl ScramServer {
    /// Starts one with a copy of the certificate and key of the machine's
    /// server, or `None` (with the reason printed) outside CI when
    /// PostgreSQL's programs or TLS files are missing or unreadable.
    async fn start() -> Option<Self> {
        let Some(bin) = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()
        else {
            return skip("no PostgreSQL server programs under /usr/lib/postgresql");
        };
        let url = fresh_schema().await?;
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut show = Vec::new();
        for name in ["ssl", "ssl_cert_file", "ssl_key_file"] {
            let row = admin.query_one(&format!("SHOW {name}"), &[]).await.unwrap();
            show.push(row.get::<_, String>(0));
        }
        let (Ok(cert), Ok(key)) = (std::fs::read(&show[1]), std::fs::read(&show[2])) else {
            return skip(&format!(
                "the machine's PostgreSQL (ssl = {}) has no certificate and key this test can read ({}, {})",
                show[0], show[1], show[2]
            ));
        };
        // initdb and postgres refuse to run as root; the server's own user
        // runs them then, and owns the directory.
        // SAFETY: geteuid has no preconditions.
        let owner = if unsafe { libc::geteuid() } == 0 {
            let Some(ids) = passwd_ids("postgres") else {
                return skip("running as root and there is no postgres user");
            };
            Some(ids)
        } else {
            None
        };
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut raw = [0u8; 12];
        getrandom::fill(&mut raw).unwrap();
        let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(path("pw"), &password).unwrap();
        std::fs::write(path("server.crt"), cert).unwrap();
        std::fs::write(path("server.key"), key).unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path("server.key"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        if let Some((uid, gid)) = owner {
            for entry in [dir.path().to_path_buf()].into_iter().chain(
                std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().path()),
            ) {
                std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).unwrap();
            }
        }
        let out = as_owner(Command::new(bin.join("initdb")), owner)
            .args(["-D", &path("data"), "-U", "postgres", "-A", "scram-sha-256"])
            .arg(format!("--pwfile={}", path("pw")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(
            format!("{}/pg_hba.conf", path("data")),
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(path("log")).unwrap();
        let child = as_owner(Command::new(bin.join("postgres")), owner)
            .args(["-D", &path("data"), "-p", &port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "ssl=on",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .arg("-c")
            .arg(format!("ssl_cert_file={}", path("server.crt")))
            .arg("-c")
            .arg(format!("ssl_key_file={}", path("server.key")))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let me = Self {
            cert: path("server.crt"),
            dir,
            child,
            port,
            password,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the private PostgreSQL did not start: {}",
                std::fs::read_to_string(me.dir.path().join("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(me)
    }

    fn url(&self, password: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{password}@localhost:{}/postgres?{query}",
            self.port
        )
    }

    /// A URL for the server's Unix socket.
    fn socket_url(&self, query: &str) -> String {
        let dir = self.dir.path().display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{dir}:{}/postgres?{query}", self.port)
    }
}

impl Drop for ScramServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The uid and gid of `user`, from `/etc/passwd`.
fn passwd_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

/// `cmd` run as `owner` when given, and killed when the thread that starts
/// it ends.
fn as_owner(mut cmd: Command, owner: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (setgroups, setgid, setuid, prctl), with values computed before.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = owner
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // After setuid, which would clear it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// SCRAM with channel binding (`SCRAM-SHA-256-PLUS`) over a verified TLS
/// connection: the binding data must be exactly what the server computes
/// from its certificate, or authentication fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_authenticates_with_scram_over_tls() {
    let Some(pg) = ScramServer::start().await else {
        return;
    };
    let verified = format!(
        "sslmode=verify-full&sslrootcert={}&channel_binding=require",
        pg.cert
    );
    assert_eq!(pool_tls(&pg.url(&pg.password, &verified)).await, Ok(true));
    // The URL a hosted PostgreSQL typically gives.
    assert_eq!(
        pool_tls(&pg.url(&pg.password, "sslmode=require&channel_binding=require")).await,
        Ok(true)
    );
    assert_refused(
        &pg.url("wrong", &verified),
        "password authentication failed",
    )
    .await;
    assert_refused(
        &pg.url(&pg.password, "sslmode=disable&channel_binding=require"),
        "server did not use channel binding",
    )
    .await;
    // Unix sockets ignore sslmode, as in libpq: `require` still connects.
    assert_eq!(pool_tls(&pg.socket_url("sslmode=require")).await, Ok(false));
}
