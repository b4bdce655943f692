//! trailkeep itself, in process, on 127.0.0.1:0 over a fresh data directory.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use trailkeep::config::Config;

/// The API key every benchmark server is started with.
pub const API_KEY: &str = "tk_bench_key_for_the_load_generator_000000000";

/// A running trailkeep server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory, removed when dropped.
    pub dir: tempfile::TempDir,
    /// Verifies its checkpoints.
    pub verifier: tlog::NoteVerifier,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Opens a server with default configuration (what a user gets) over a new
/// temporary directory and serves it.
///
/// # Errors
/// When the store cannot be opened or the port bound.
pub async fn start() -> anyhow::Result<Running> {
    start_with(None).await
}

/// Like [`start`], with the store at `store` (for example a `postgres://`
/// URL) instead of SQLite in the data directory.
///
/// # Errors
/// When the store cannot be opened or the port bound.
pub async fn start_with(store: Option<String>) -> anyhow::Result<Running> {
    start_config(|c| c.store = store).await
}

/// Like [`start`], with the default configuration changed by `configure`
/// before the server opens (the data directory is already set).
///
/// # Errors
/// When the store cannot be opened or the port bound.
pub async fn start_config(configure: impl FnOnce(&mut Config)) -> anyhow::Result<Running> {
    let dir = tempfile::Builder::new()
        .prefix("trailkeep-bench-")
        .tempdir()?;
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    configure(&mut config);
    let server = trailkeep::Server::open(config, Some(API_KEY)).await?;
    let verifier = server.state.log.verifier();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(listener, async {
        let _ = stopped.await;
    }));
    Ok(Running {
        addr,
        dir,
        verifier,
        stop,
        task,
    })
}

impl Running {
    /// Stops serving, drains the store (full-text indexing, WAL checkpoint)
    /// and returns the data directory.
    ///
    /// # Errors
    /// When the server failed.
    pub async fn stop(self) -> anyhow::Result<tempfile::TempDir> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(self.dir)
    }
}

/// Cumulative group-commit counters from the server's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Commits {
    /// Group commits.
    pub commits: f64,
    /// Events in them.
    pub events: f64,
    /// Seconds spent committing, fsync included.
    pub secs: f64,
    /// Seconds the writer spent folding the tail into the indexes (SQLite).
    pub fold_secs: f64,
    /// Seconds the writer spent on full-text indexing (SQLite).
    pub fts_secs: f64,
}

impl Commits {
    /// Reads the counters from `GET /metrics`.
    ///
    /// # Errors
    /// When the request fails.
    pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut conn = crate::http::Conn::connect(addr).await?;
        let res = conn.send(&crate::http::get("/metrics", API_KEY)).await?;
        let text = String::from_utf8_lossy(&res.body);
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Ok(Self {
            commits: value("trailkeep_commit_seconds_count"),
            events: value("trailkeep_commit_batch_events_sum"),
            secs: value("trailkeep_commit_seconds_sum"),
            fold_secs: value("trailkeep_background_seconds_total{task=\"fold\"}"),
            fts_secs: value("trailkeep_background_seconds_total{task=\"fts\"}"),
        })
    }

    /// What happened between `earlier` and `self`, as JSON: commits, mean
    /// events per commit, mean commit time, and the writer's time per
    /// acknowledged event in commits, folds and full-text indexing.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> serde_json::Value {
        let commits = self.commits - earlier.commits;
        let (per_commit, ms) = if commits > 0.0 {
            (
                (self.events - earlier.events) / commits,
                (self.secs - earlier.secs) * 1000.0 / commits,
            )
        } else {
            (0.0, 0.0)
        };
        let events = self.events - earlier.events;
        let us_per_event = |secs: f64| {
            if events > 0.0 {
                secs * 1e6 / events
            } else {
                0.0
            }
        };
        serde_json::json!({
            "commits": commits,
            "events_per_commit": per_commit,
            "commit_ms_mean": ms,
            "commit_us_per_event": us_per_event(self.secs - earlier.secs),
            "fold_us_per_event": us_per_event(self.fold_secs - earlier.fold_secs),
            "fts_us_per_event": us_per_event(self.fts_secs - earlier.fts_secs),
        })
    }
}
