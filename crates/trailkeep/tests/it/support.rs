//! Starting servers and talking to them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;
use trailkeep::config::Config;

pub const KEY: &str = "tk_test_key_for_integration_tests_0000000000";

/// An in-process server on 127.0.0.1:0 over a fresh data directory.
pub struct TestServer {
    pub base: String,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    pub verifier: tlog::NoteVerifier,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tune).await
    }

    pub async fn start_in(dir: tempfile::TempDir, tune: impl FnOnce(&mut Config)) -> Self {
        // Server logs (5xx causes included) show up in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("warn")
            .try_init();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        // With TRAILKEEP_TEST_STORE=postgres the same tests run on PostgreSQL,
        // each server in a schema of its own (kept across a restart).
        if std::env::var("TRAILKEEP_TEST_STORE").as_deref() == Ok("postgres") {
            let marker = dir.path().join("pg-url");
            let url = match std::fs::read_to_string(&marker) {
                Ok(url) => url,
                Err(_) => {
                    let url = fresh_schema()
                        .await
                        .expect("TRAILKEEP_TEST_STORE=postgres needs a reachable PostgreSQL");
                    std::fs::write(&marker, &url).unwrap();
                    url
                }
            };
            config.store = Some(url);
        }
        tune(&mut config);
        let server = trailkeep::Server::open(config, Some(KEY)).await.unwrap();
        let verifier = server.state.log.verifier();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            base,
            dir,
            client: reqwest::Client::new(),
            verifier,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits until the store is closed.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown().await;
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    async fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("server stops")
                .unwrap();
        }
    }

    /// Creates an API key for `project` in whichever store the server uses.
    pub async fn create_key(&self, project: &str) -> String {
        match self.pg_url() {
            Some(url) => {
                let pool = trailkeep::store::postgres::pool(&url).unwrap();
                let c = pool.get().await.unwrap();
                trailkeep::store::postgres::admin::create_key(&c, project)
                    .await
                    .unwrap()
                    .1
            }
            None => {
                let conn = trailkeep::store::sqlite::open_admin(&self.db_path()).unwrap();
                trailkeep::store::sqlite::admin::create_key(&conn, project)
                    .unwrap()
                    .1
            }
        }
    }

    /// Revokes every key of `project`.
    pub async fn revoke_keys(&self, project: &str) {
        match self.pg_url() {
            Some(url) => {
                let pool = trailkeep::store::postgres::pool(&url).unwrap();
                let c = pool.get().await.unwrap();
                for k in trailkeep::store::postgres::admin::list_keys(&c, Some(project))
                    .await
                    .unwrap()
                {
                    trailkeep::store::postgres::admin::revoke_key(&c, k.id)
                        .await
                        .unwrap();
                }
            }
            None => {
                let conn = trailkeep::store::sqlite::open_admin(&self.db_path()).unwrap();
                for k in trailkeep::store::sqlite::admin::list_keys(&conn, Some(project)).unwrap() {
                    trailkeep::store::sqlite::admin::revoke_key(&conn, k.id).unwrap();
                }
            }
        }
    }

    /// The PostgreSQL URL of this server's schema, in PostgreSQL mode.
    pub fn pg_url(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("pg-url")).ok()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("trailkeep.db")
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        read(res).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut req = self.client.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        read(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        read(res).await
    }

    pub async fn get_text(&self, path: &str, key: &str) -> (u16, String) {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    /// Every event of a listing, following cursors.
    pub async fn list_all(&self, query: &str, key: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/events?limit=1000&{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.get(&path, key).await;
            assert_eq!(status, 200, "{path}: {body}");
            out.extend(body["data"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn read(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

pub fn event(action: &str, actor: &str) -> Value {
    serde_json::json!({"action": action, "actor": {"id": actor}})
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Path of the built binary.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_trailkeep"))
}

/// Runs the binary to completion; returns (code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env_remove("TRAILKEEP_API_KEY")
        .env("TRAILKEEP_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The PostgreSQL the tests use: `TRAILKEEP_TEST_POSTGRES_URL`, by default
/// the machine's `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_url() -> String {
    std::env::var("TRAILKEEP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A URL for a new, empty schema of the test database, or `None` (with the
/// reason printed) when PostgreSQL is unreachable outside CI.
///
/// # Panics
/// When PostgreSQL is unreachable and `CI` is set: a test that needs the
/// database must fail loudly there, never skip.
pub async fn fresh_schema() -> Option<String> {
    let base = postgres_url();
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(&base, tokio_postgres::NoTls),
    )
    .await;
    let (client, conn) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return unreachable(&base, &e.to_string()),
        Err(_) => return unreachable(&base, "timed out"),
    };
    tokio::spawn(conn);
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).unwrap();
    let schema = format!(
        "tk_test_{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

fn unreachable(url: &str, why: &str) -> Option<String> {
    skip(&format!("PostgreSQL at {url} is unreachable: {why}"))
}

/// Skips a test whose outside requirement `why` names is missing: prints
/// the reason and returns `None`.
///
/// # Panics
/// When `CI` is set: there, a test must fail loudly instead of skipping.
pub fn skip<T>(why: &str) -> Option<T> {
    assert!(std::env::var_os("CI").is_none(), "CI is set but {why}");
    eprintln!("skipping: {why}; set CI=1 to make this a failure");
    None
}
