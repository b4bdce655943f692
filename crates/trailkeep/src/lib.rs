//! trailkeep: a self-hostable, tamper-evident audit-log service.
//!
//! Code map (see `ARCHITECTURE.md` for the whole picture):
//! - [`config`]: layered configuration (defaults, TOML, env, flags).
//! - [`model`]: the canonical [`model::Event`] and its leaf encoding.
//! - [`ingest`]: limits and field validation shared by every dialect.
//! - [`api`]: the HTTP router, the native API and the problem responses.
//! - [`store`]: the [`store::EventStore`] contract and the SQLite store with
//!   group commit.
//! - [`log`]: the checkpoint signing key.
//! - [`export`]: export bundles and their offline verification.
//! - [`fsck`]: offline re-hashing of a store against its stored trees.
//! - `tlog` (its own crate): Merkle math, proofs and signed notes, no IO.

pub mod api;
pub mod config;
pub mod export;
pub mod fsck;
pub mod ingest;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod model;
pub mod ratelimit;
pub mod store;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::sqlite::{SqliteStore, admin, open_admin};

/// The project that owns the first API key.
pub const DEFAULT_PROJECT: &str = "default";

/// A server ready to accept connections.
pub struct Server {
    /// Shared handler state.
    pub state: api::AppState,
    /// A key generated on this start, to be shown once; `None` when keys existed
    /// or one was given by `TRAILKEEP_API_KEY`.
    pub generated_key: Option<String>,
    store: Arc<SqliteStore>,
    _lock: std::fs::File,
}

impl Server {
    /// Opens the data directory and store, and bootstraps the first API key.
    /// `bootstrap_key` (from `TRAILKEEP_API_KEY`) is stored for project
    /// `default` if it is not stored yet.
    ///
    /// # Errors
    /// When the data directory is locked by another server, or the store or
    /// signing key cannot be opened.
    pub fn open(config: Config, bootstrap_key: Option<&str>) -> anyhow::Result<Self> {
        let data_dir = config.data_dir().to_owned();
        std::fs::create_dir_all(&data_dir).with_context(|| {
            format!(
                "creating data directory {} (data_dir / TRAILKEEP_DATA_DIR)",
                data_dir.display()
            )
        })?;
        let lock_path = data_dir.join("trailkeep.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "{} is in use by another trailkeep server",
                data_dir.display()
            )
        })?;
        let db = config.sqlite_path();
        let mut tavivo_project = None;
        let generated_key = {
            let conn = open_admin(&db).with_context(|| {
                format!("opening store {} (store / TRAILKEEP_STORE)", db.display())
            })?;
            if config.dialects.tavivo.jwt_secret.is_some() {
                let name = config.dialects.tavivo.project.clone();
                tavivo_project = Some((admin::ensure_project(&conn, &name)?, name));
            }
            match bootstrap_key {
                Some(key) => {
                    admin::add_key(&conn, DEFAULT_PROJECT, key)?;
                    None
                }
                None if admin::active_key_count(&conn)? == 0 => {
                    Some(admin::create_key(&conn, DEFAULT_PROJECT)?.1)
                }
                None => None,
            }
        };
        let log = log::LogKey::load_or_create(&config.signing_key_path(), &config.log_name)
            .context("loading the log signing key")?;
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(SqliteStore::open(&db, &config.commit, metrics.clone())?);
        let mut state = api::AppState::new(store.clone(), Arc::new(config), metrics, Arc::new(log));
        state.tavivo_project = tavivo_project;
        if let Some(paths) = &state.config.geoip.city_db {
            let paths: Vec<std::path::PathBuf> = paths
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(Into::into)
                .collect();
            let geo = ingest::enrich::GeoIp::open(&paths).context(
                "opening the geo-IP database (geoip.city_db / TRAILKEEP_GEOIP__CITY_DB)",
            )?;
            state.geo = Some(Arc::new(geo));
        }
        Ok(Self {
            state,
            generated_key,
            store,
            _lock: lock,
        })
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then drains
    /// in-flight requests and flushes the store.
    ///
    /// # Errors
    /// When serving fails.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = api::app(self.state.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let deliveries = tokio::spawn(webhooks::run(
            self.state.store.clone(),
            self.state.config.webhooks.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = stop_tx.send(());
        let _ = deliveries.await;
        served?;
        drop(self.state);
        let store = self.store;
        tokio::task::spawn_blocking(move || store.close()).await?;
        Ok(())
    }
}
