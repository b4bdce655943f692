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

use crate::support::{KEY, TestServer, bin, free_port, fresh_schema, run_cli};

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
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but PostgreSQL offers no TLS with a readable certificate (ssl = {ssl}, {cert})"
        );
        eprintln!(
            "skipping: PostgreSQL offers no TLS with a readable certificate (ssl = {ssl}, {cert})"
        );
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
    let e = pool_tls(&with(&url, &format!("sslmode=verify-ca&{unrelated}")))
        .await
        .unwrap_err();
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    let e = pool_tls(&with(&url, &format!("sslmode=verify-full&{root}")))
        .await
        .unwrap_err();
    assert!(e.contains("certificate not valid for name"), "{e}");
    // A self-signed certificate is not among the built-in roots.
    let e = pool_tls(&with(&by_name, "sslrootcert=system"))
        .await
        .unwrap_err();
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    // `require` with roots checks the chain, as in libpq.
    let e = pool_tls(&with(&by_name, &format!("sslmode=require&{unrelated}")))
        .await
        .unwrap_err();
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    // A `hostaddr` without `host` has no name for a handshake: `prefer`
    // stays plaintext, as before TLS, and `require` says why it fails.
    let (_, query) = url.split_once('?').unwrap();
    let by_addr = format!("postgres:///test?user=postgres&hostaddr=127.0.0.1&port=5432&{query}");
    assert_eq!(pool_tls(&by_addr).await, Ok(false));
    assert_eq!(
        pool_tls(&with(&by_addr, "sslmode=disable")).await,
        Ok(false)
    );
    let e = pool_tls(&with(&by_addr, "sslmode=require"))
        .await
        .unwrap_err();
    assert!(e.contains("no hostname provided for TLS"), "{e}");

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
/// password authentication over TLS, stopped when dropped. The machine's
/// shared server trusts 127.0.0.1, so SCRAM is never used there.
struct ScramServer {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
    password: String,
}

impl ScramServer {
    /// Starts one with the certificate and key the machine's server uses,
    /// or `None` (with the reason printed) outside CI when PostgreSQL's
    /// programs or TLS files are missing.
    async fn start() -> Option<Self> {
        let skip = |why: String| {
            assert!(std::env::var_os("CI").is_none(), "CI is set but {why}");
            eprintln!("skipping: {why}");
            None
        };
        let Some(bin) = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()
        else {
            return skip("no PostgreSQL server programs under /usr/lib/postgresql".into());
        };
        let url = fresh_schema().await?;
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let show = |name: &'static str| {
            let admin = &admin;
            async move {
                let row = admin.query_one(&format!("SHOW {name}"), &[]).await.unwrap();
                row.get::<_, String>(0)
            }
        };
        let (ssl, cert, key) = (
            show("ssl").await,
            show("ssl_cert_file").await,
            show("ssl_key_file").await,
        );
        if ssl != "on" {
            return skip("the machine's PostgreSQL has no TLS certificate to borrow".into());
        }
        let dir = tempfile::tempdir().unwrap();
        let mut raw = [0u8; 12];
        getrandom::fill(&mut raw).unwrap();
        let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.path().join("pw"), &password).unwrap();
        let me = Self {
            dir,
            bin,
            port: free_port(),
            password,
        };
        // initdb refuses to run as root; the server's own user runs it then.
        let status = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(me.dir.path())
            .status();
        let root = status.is_ok_and(|s| s.success());
        me.run(
            root,
            "initdb",
            &[
                "-D",
                &me.data(),
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "--pwfile",
                &me.dir.path().join("pw").display().to_string(),
            ],
        );
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\nfsync = off\n",
            me.port,
            me.dir.path().display()
        );
        let append = |file: &str, text: &str| {
            use std::io::Write as _;
            std::fs::OpenOptions::new()
                .append(true)
                .open(format!("{}/{file}", me.data()))
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        };
        append("postgresql.conf", &conf);
        std::fs::write(
            format!("{}/pg_hba.conf", me.data()),
            "host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let log = me.dir.path().join("log").display().to_string();
        me.run(
            root,
            "pg_ctl",
            &["-D", &me.data(), "-l", &log, "-w", "-t", "30", "start"],
        );
        Some(me)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, as_postgres: bool, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let out = if as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .output()
        } else {
            Command::new(&path).args(args).output()
        }
        .unwrap();
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, password: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{password}@localhost:{}/postgres?{query}",
            self.port
        )
    }
}

impl Drop for ScramServer {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let stopped = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&path)
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = Command::new(&path).args(args).status();
        }
    }
}

/// SCRAM with channel binding (`SCRAM-SHA-256-PLUS`) over a verified TLS
/// connection: the binding data must be exactly what the server computes
/// from its certificate, or authentication fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_authenticates_with_scram_over_tls() {
    let Some(pg) = ScramServer::start().await else {
        return;
    };
    let (admin, conn) =
        tokio_postgres::connect(&fresh_schema().await.unwrap(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let cert: String = admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let verified = format!("sslmode=verify-full&sslrootcert={cert}&channel_binding=require");
    assert_eq!(pool_tls(&pg.url(&pg.password, &verified)).await, Ok(true));
    let e = pool_tls(&pg.url("wrong", &verified)).await.unwrap_err();
    assert!(e.contains("password authentication failed"), "{e}");
    let e = pool_tls(&pg.url(&pg.password, "sslmode=disable&channel_binding=require"))
        .await
        .unwrap_err();
    assert!(e.contains("server did not use channel binding"), "{e}");
}
