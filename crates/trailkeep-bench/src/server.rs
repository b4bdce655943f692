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
    let dir = tempfile::Builder::new()
        .prefix("trailkeep-bench-")
        .tempdir()?;
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let server = trailkeep::Server::open(config, Some(API_KEY))?;
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
