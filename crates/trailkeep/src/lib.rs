//! trailkeep: a self-hostable, tamper-evident audit-log service.
//!
//! Code map (see `ARCHITECTURE.md` for the whole picture):
//! - [`config`]: layered configuration (defaults, TOML, env, flags).
//! - [`model`]: the canonical [`model::Event`] and its leaf encoding.
//! - [`ingest`]: limits and field validation shared by every dialect.
//! - [`api`]: the HTTP router, the native API and the problem responses.
//! - [`store`]: the [`store::EventStore`] contract, the SQLite store with
//!   group commit, and the PostgreSQL store for several nodes.
//! - [`log`]: the checkpoint signing key.
//! - [`export`]: export bundles and their offline verification.
//! - [`fsck`]: offline re-hashing of a store against its stored trees.
//! - `tlog` (its own crate): Merkle math, proofs and signed notes, no IO.

pub mod api;
pub mod config;
pub mod export;
pub mod fsck;
pub mod import;
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
use crate::store::postgres::{PgStore, admin as pg_admin};
use crate::store::sqlite::{self, SqliteStore, admin};

/// The project that owns the first API key.
pub const DEFAULT_PROJECT: &str = "default";

/// A server ready to accept connections.
pub struct Server {
    /// Shared handler state.
    pub state: api::AppState,
    /// A key generated on this start, to be shown once; `None` when keys existed
    /// or one was given by `TRAILKEEP_API_KEY`.
    pub generated_key: Option<String>,
    backend: Backend,
}

/// The concrete store behind [`Server`], kept for an orderly close.
enum Backend {
    Sqlite {
        store: Arc<SqliteStore>,
        _lock: std::fs::File,
    },
    Postgres(Arc<PgStore>),
}

/// What opening a store yields before the shared state is built.
struct Opened {
    store: Arc<dyn store::EventStore>,
    backend: Backend,
    log: log::LogKey,
    generated_key: Option<String>,
    tavivo_project: Option<(i64, String)>,
}

impl Server {
    /// Opens the store (SQLite in the data directory, or PostgreSQL), and
    /// bootstraps the first API key and the log signing key.
    /// `bootstrap_key` (from `TRAILKEEP_API_KEY`) is stored for project
    /// `default` if it is not stored yet, idempotently across nodes.
    ///
    /// # Errors
    /// When the data directory is locked by another server, or the store or
    /// signing key cannot be opened.
    pub async fn open(config: Config, bootstrap_key: Option<&str>) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let opened = match config.postgres_url() {
            Some(url) => open_postgres(&config, url, bootstrap_key, metrics.clone()).await?,
            None => open_sqlite(&config, bootstrap_key, metrics.clone())?,
        };
        let mut state = api::AppState::new(
            opened.store,
            Arc::new(config),
            metrics,
            Arc::new(opened.log),
        );
        state.tavivo_project = opened.tavivo_project;
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
            generated_key: opened.generated_key,
            backend: opened.backend,
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
        match self.backend {
            Backend::Sqlite { store, _lock } => {
                tokio::task::spawn_blocking(move || store.close()).await?
            }
            Backend::Postgres(store) => store.close().await,
        }
        Ok(())
    }
}

fn configured_key(config: &Config) -> anyhow::Result<Option<log::LogKey>> {
    config
        .log_signing_key
        .as_ref()
        .map(|k| {
            log::LogKey::from_private_key(&k.0)
                .context("log_signing_key / TRAILKEEP_LOG_SIGNING_KEY")
        })
        .transpose()
}

fn open_sqlite(
    config: &Config,
    bootstrap_key: Option<&str>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Opened> {
    let data_dir = config.data_dir().to_owned();
    std::fs::create_dir_all(&data_dir).with_context(|| {
        format!(
            "creating data directory {} (data_dir / TRAILKEEP_DATA_DIR)",
            data_dir.display()
        )
    })?;
    let db = config.sqlite_path();
    // The lock sits beside the database file, which `store` may put outside
    // the data directory: one writer per file is what the writer's caches and
    // the journal need.
    let lock = sqlite::try_lock(&db)
        .with_context(|| format!("opening {}", sqlite::lock_path(&db).display()))?
        .ok_or_else(|| anyhow::anyhow!("{} is in use by another trailkeep server", db.display()))?;
    // This process holds the lock, so it migrates and folds what an earlier
    // run left in the journal.
    let conn = sqlite::fold_journal(&db)
        .with_context(|| format!("opening store {} (store / TRAILKEEP_STORE)", db.display()))?;
    let tavivo_project = match &config.dialects.tavivo.jwt_secret {
        Some(_) => {
            let name = config.dialects.tavivo.project.clone();
            Some((admin::ensure_project(&conn, &name)?, name))
        }
        None => None,
    };
    let generated_key = match bootstrap_key {
        Some(key) => {
            admin::add_key(&conn, DEFAULT_PROJECT, key)?;
            None
        }
        None if admin::active_key_count(&conn)? == 0 => {
            Some(admin::create_key(&conn, DEFAULT_PROJECT)?.1)
        }
        None => None,
    };
    drop(conn);
    let log = match configured_key(config)? {
        Some(k) => k,
        None => log::LogKey::load_or_create(&config.signing_key_path(), &config.log_name)
            .context("loading the log signing key")?,
    };
    let store = Arc::new(SqliteStore::open(&db, &config.commit, metrics)?);
    Ok(Opened {
        store: store.clone(),
        backend: Backend::Sqlite { store, _lock: lock },
        log,
        generated_key,
        tavivo_project,
    })
}

async fn open_postgres(
    config: &Config,
    url: &str,
    bootstrap_key: Option<&str>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Opened> {
    let store = Arc::new(
        PgStore::open(url, &config.commit, metrics)
            .await
            .context("opening the PostgreSQL store (store / TRAILKEEP_STORE / DATABASE_URL)")?,
    );
    let client = store
        .pool()
        .get()
        .await
        .context("connecting to PostgreSQL")?;
    let generated_key = pg_admin::bootstrap(&client, DEFAULT_PROJECT, bootstrap_key).await?;
    let tavivo_project = match &config.dialects.tavivo.jwt_secret {
        Some(_) => {
            let name = config.dialects.tavivo.project.clone();
            Some((pg_admin::ensure_project(&client, &name).await?, name))
        }
        None => None,
    };
    let log = match configured_key(config)? {
        Some(k) => k,
        None => {
            let candidate = log::LogKey::generate(&config.log_name)?.to_private_key();
            let stored = pg_admin::signing_key(&client, || candidate).await?;
            log::LogKey::from_private_key(&stored)
                .context("the signing key stored in PostgreSQL")?
        }
    };
    drop(client);
    Ok(Opened {
        store: store.clone(),
        backend: Backend::Postgres(store),
        log,
        generated_key,
        tavivo_project,
    })
}
