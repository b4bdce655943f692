//! The `trailkeep` binary: parses the command line and calls the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use trailkeep::config::{Config, Overrides};
use trailkeep::store::postgres::admin as pg;
use trailkeep::store::sqlite::{admin, open_admin};

#[derive(Parser)]
#[command(
    name = "trailkeep",
    version,
    about = "Self-hostable, tamper-evident audit log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Default)]
struct StoreArgs {
    /// TOML config file (env TRAILKEEP_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (env TRAILKEEP_DATA_DIR; default ./trailkeep-data).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Store URL, sqlite://PATH or postgres://USER@HOST/DB (env TRAILKEEP_STORE or DATABASE_URL).
    #[arg(long, global = true)]
    store: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Listen address (env TRAILKEEP_LISTEN, or PORT; default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage API keys offline.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage notification webhooks offline.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Apply schema migrations (the server also applies them at start).
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Copy an embedded store into PostgreSQL with every event, tree hash,
    /// key and webhook intact.
    Import {
        /// Source, sqlite://PATH.
        #[arg(long)]
        from: String,
        /// Destination, postgres://USER@HOST/DB (empty of events).
        #[arg(long)]
        to: String,
    },
    /// The log signing key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write a tenant's export bundle (NDJSON leaves, then the checkpoint).
    Export {
        /// Tenant to export.
        #[arg(long)]
        tenant: String,
        /// Project owning the tenant.
        #[arg(long, default_value = trailkeep::DEFAULT_PROJECT)]
        project: String,
        /// Output file; default standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Verify an export bundle, or with --proof an inclusion proof, offline.
    Verify {
        /// The bundle (or, with --proof, the proof JSON) to check.
        file: PathBuf,
        /// Verifier key, `<name>+<id>+<key>` (as printed by `key public`).
        #[arg(long)]
        key: String,
        /// FILE is an inclusion proof as returned by /v1/events/{id}/proof.
        #[arg(long)]
        proof: bool,
        /// With --proof: the event JSON; its leaf hash must match the proof.
        #[arg(long)]
        event: Option<PathBuf>,
        /// A signed checkpoint saved earlier; the bundle must extend it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Re-hash every stored event against the stored trees.
    Fsck {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Exit 0 when the server at URL answers /healthz.
    Healthcheck {
        /// Base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key for a project (created if missing); prints it once.
    Create {
        /// Project name.
        #[arg(long)]
        project: String,
    },
    /// List keys (never the keys themselves).
    List {
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
    },
    /// Revoke a key by id.
    Revoke {
        /// Key id from `keys list`.
        id: i64,
    },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Add a webhook; prints its signing secret once.
    Add {
        /// Project name.
        #[arg(long, default_value = trailkeep::DEFAULT_PROJECT)]
        project: String,
        /// Receiver URL (http or https).
        url: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List a project's webhooks (never their secrets).
    List {
        /// Project name.
        #[arg(long, default_value = trailkeep::DEFAULT_PROJECT)]
        project: String,
    },
    /// Remove a webhook by id.
    Remove {
        /// Project name.
        #[arg(long, default_value = trailkeep::DEFAULT_PROJECT)]
        project: String,
        /// Webhook id from `webhooks list`.
        id: i64,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the verifier key in signed-note format.
    Public,
    /// Print a new signing key for `log_signing_key` / TRAILKEEP_LOG_SIGNING_KEY
    /// (the production choice for several nodes); keep it secret.
    Generate {
        /// Key name: the log name that starts every checkpoint origin.
        #[arg(long, default_value = "trailkeep.local")]
        name: String,
    },
}

fn load_config(store: &StoreArgs, listen: Option<String>) -> anyhow::Result<Config> {
    let overrides = Overrides {
        config_file: store.config.clone(),
        listen,
        data_dir: store.data_dir.clone(),
        store: store.store.clone(),
    };
    let (config, warnings) = Config::from_env(&overrides)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRAILKEEP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { listen, store } => serve(&load_config(&store, listen)?),
        Command::Keys { command, store } => {
            let admin = Admin::open(&load_config(&store, None)?)?;
            match command {
                KeysCommand::Create { project } => {
                    let (id, key) = admin.create_key(&project)?;
                    eprintln!("created key {id} for project {project}; it is shown only now:");
                    println!("{key}");
                }
                KeysCommand::List { project } => {
                    println!(
                        "{:>6}  {:<20} {:<12} {:<28} revoked",
                        "id", "project", "prefix", "created"
                    );
                    for k in admin.list_keys(project.as_deref())? {
                        let revoked = k
                            .revoked_at
                            .map_or_else(|| "-".to_owned(), |t| t.to_string());
                        println!(
                            "{:>6}  {:<20} {:<12} {:<28} {revoked}",
                            k.id,
                            k.project,
                            k.prefix,
                            k.created_at.to_string()
                        );
                    }
                }
                KeysCommand::Revoke { id } => {
                    if !admin.revoke_key(id)? {
                        anyhow::bail!("no active key with id {id}");
                    }
                    eprintln!("revoked key {id}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Webhooks { command, store } => {
            let admin = Admin::open(&load_config(&store, None)?)?;
            match command {
                WebhooksCommand::Add {
                    project,
                    url,
                    description,
                } => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        anyhow::bail!("the URL must start with http:// or https://");
                    }
                    let hook = admin.add_webhook(&project, &url, description.as_deref())?;
                    eprintln!(
                        "added webhook {} for project {project}; its signing secret is shown only now:",
                        hook.id
                    );
                    println!("{}", hook.secret.unwrap_or_default());
                }
                WebhooksCommand::List { project } => {
                    for h in admin.list_webhooks(&project)? {
                        println!(
                            "{:>6}  {}  {}",
                            h.id,
                            h.url,
                            h.description.unwrap_or_default()
                        );
                    }
                }
                WebhooksCommand::Remove { project, id } => {
                    if !admin.remove_webhook(&project, id)? {
                        anyhow::bail!("no webhook {id} in project {project}");
                    }
                    eprintln!("removed webhook {id}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { store } => {
            let config = load_config(&store, None)?;
            let version: i64 = match config.postgres_url() {
                Some(url) => runtime()?.block_on(async {
                    let pool = trailkeep::store::postgres::pool(url)?;
                    trailkeep::store::postgres::migrate(&pool).await
                })?,
                None => {
                    let conn = open_admin(&config.sqlite_path())?;
                    conn.query_row("PRAGMA user_version", [], |r| r.get(0))?
                }
            };
            eprintln!("schema is at version {version}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { from, to } => {
            let summary = runtime()?.block_on(trailkeep::import::sqlite_to_postgres(&from, &to))?;
            eprintln!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Key {
            command: KeyCommand::Generate { name },
            ..
        } => {
            let key = trailkeep::log::LogKey::generate(&name)?;
            eprintln!("verifier key: {}", key.verifier());
            println!("{}", key.to_private_key());
            Ok(ExitCode::SUCCESS)
        }
        Command::Key {
            command: KeyCommand::Public,
            store,
        } => {
            let config = load_config(&store, None)?;
            println!("{}", log_key(&config)?.verifier());
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            tenant,
            project,
            output,
            store,
        } => {
            let config = load_config(&store, None)?;
            export(&config, &project, &tenant, output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            file,
            key,
            proof,
            event,
            checkpoint,
        } => verify(&file, &key, proof, event, checkpoint),
        Command::Fsck { store } => {
            let config = load_config(&store, None)?;
            let (n, findings) = match config.postgres_url() {
                Some(url) => runtime()?.block_on(async {
                    let pool = trailkeep::store::postgres::pool(url)?;
                    trailkeep::store::postgres::fsck(&pool).await
                })?,
                None => trailkeep::fsck::check(&open_admin(&config.sqlite_path())?)?,
            };
            for f in &findings {
                println!("{f}");
            }
            if findings.is_empty() {
                eprintln!("fsck: {n} events re-hashed, all trees consistent");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("fsck: {} problem(s) in {n} events", findings.len());
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Healthcheck { url } => Ok(if healthcheck(&url) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Openapi => {
            print!("{}", trailkeep::api::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(config: &Config) -> anyhow::Result<ExitCode> {
    let bootstrap = std::env::var("TRAILKEEP_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {} (listen / TRAILKEEP_LISTEN)", config.listen))?;
        let server = trailkeep::Server::open(config.clone(), bootstrap.as_deref()).await?;
        if let Some(key) = &server.generated_key {
            let mut err = std::io::stderr().lock();
            writeln!(err, "\n================ trailkeep: first start ================")?;
            writeln!(err, "Created project `{}` with this API key. It is shown only", trailkeep::DEFAULT_PROJECT)?;
            writeln!(err, "once and stored hashed; keep it somewhere safe:\n")?;
            writeln!(err, "    {key}\n")?;
            writeln!(err, "========================================================\n")?;
        }
        tracing::info!(listen = %listener.local_addr()?, data_dir = %config.data_dir.display(), "trailkeep serving");
        server.run(listener, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

fn healthcheck(url: &str) -> bool {
    use std::io::Read as _;
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.trim_end_matches('/');
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The log signing key the server would use with this config.
fn log_key(config: &Config) -> anyhow::Result<trailkeep::log::LogKey> {
    if let Some(k) = &config.log_signing_key {
        return trailkeep::log::LogKey::from_private_key(&k.0);
    }
    match config.postgres_url() {
        Some(url) => {
            let stored = runtime()?.block_on(async {
                let pool = trailkeep::store::postgres::pool(url)?;
                let client = pool.get().await.context("connecting to PostgreSQL")?;
                anyhow::Ok(pg::stored_signing_key(&client).await?)
            })?;
            let stored = stored
                .context("no signing key in the database; start a server once to create it")?;
            trailkeep::log::LogKey::from_private_key(&stored)
        }
        None => {
            let path = config.signing_key_path();
            if !path.exists() {
                anyhow::bail!(
                    "no signing key at {}; start the server once to create it",
                    path.display()
                );
            }
            trailkeep::log::LogKey::load_or_create(&path, &config.log_name)
        }
    }
}

/// Offline administration over either store.
enum Admin {
    Sqlite(rusqlite::Connection),
    Postgres(tokio::runtime::Runtime, deadpool_postgres::Object),
}

impl Admin {
    fn open(config: &Config) -> anyhow::Result<Self> {
        match config.postgres_url() {
            Some(url) => {
                let rt = runtime()?;
                let client = rt.block_on(async {
                    let pool = trailkeep::store::postgres::pool(url)?;
                    trailkeep::store::postgres::migrate(&pool).await?;
                    pool.get().await.context("connecting to PostgreSQL")
                })?;
                Ok(Self::Postgres(rt, client))
            }
            None => Ok(Self::Sqlite(open_admin(&config.sqlite_path())?)),
        }
    }

    fn create_key(&self, project: &str) -> anyhow::Result<(i64, String)> {
        Ok(match self {
            Self::Sqlite(c) => admin::create_key(c, project)?,
            Self::Postgres(rt, c) => rt.block_on(pg::create_key(c, project))?,
        })
    }

    fn list_keys(&self, project: Option<&str>) -> anyhow::Result<Vec<admin::KeyInfo>> {
        Ok(match self {
            Self::Sqlite(c) => admin::list_keys(c, project)?,
            Self::Postgres(rt, c) => rt.block_on(pg::list_keys(c, project))?,
        })
    }

    fn revoke_key(&self, id: i64) -> anyhow::Result<bool> {
        Ok(match self {
            Self::Sqlite(c) => admin::revoke_key(c, id)?,
            Self::Postgres(rt, c) => rt.block_on(pg::revoke_key(c, id))?,
        })
    }

    fn project_id(&self, project: &str, create: bool) -> anyhow::Result<i64> {
        let id = match (self, create) {
            (Self::Sqlite(c), true) => Some(admin::ensure_project(c, project)?),
            (Self::Sqlite(c), false) => admin::project_id(c, project)?,
            (Self::Postgres(rt, c), true) => Some(rt.block_on(pg::ensure_project(c, project))?),
            (Self::Postgres(rt, c), false) => rt.block_on(pg::project_id(c, project))?,
        };
        id.with_context(|| format!("no project {project}"))
    }

    fn add_webhook(
        &self,
        project: &str,
        url: &str,
        description: Option<&str>,
    ) -> anyhow::Result<trailkeep::store::Webhook> {
        let id = self.project_id(project, true)?;
        Ok(match self {
            Self::Sqlite(c) => admin::add_webhook(c, id, url, description)?,
            Self::Postgres(rt, c) => rt.block_on(pg::add_webhook(c, id, url, description))?,
        })
    }

    fn list_webhooks(&self, project: &str) -> anyhow::Result<Vec<trailkeep::store::Webhook>> {
        let id = self.project_id(project, false)?;
        Ok(match self {
            Self::Sqlite(c) => admin::list_webhooks(c, id)?,
            Self::Postgres(rt, c) => rt.block_on(pg::list_webhooks(c, id))?,
        })
    }

    fn remove_webhook(&self, project: &str, hook: i64) -> anyhow::Result<bool> {
        let id = self.project_id(project, false)?;
        Ok(match self {
            Self::Sqlite(c) => admin::remove_webhook(c, id, hook)?,
            Self::Postgres(rt, c) => rt.block_on(pg::remove_webhook(c, id, hook))?,
        })
    }
}

fn export(
    config: &Config,
    project: &str,
    tenant: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    use trailkeep::store::EventStore;
    let log = log_key(config)?;
    runtime()?.block_on(async {
        let (store, project_id): (std::sync::Arc<dyn EventStore>, i64) = match config.postgres_url()
        {
            Some(url) => {
                let pool = trailkeep::store::postgres::pool(url)?;
                let client = pool.get().await.context("connecting to PostgreSQL")?;
                let id = pg::project_id(&client, project)
                    .await?
                    .with_context(|| format!("no project {project}"))?;
                drop(client);
                let metrics = std::sync::Arc::new(trailkeep::metrics::Metrics::default());
                (
                    std::sync::Arc::new(
                        trailkeep::store::postgres::PgStore::open(url, &config.commit, metrics)
                            .await?,
                    ),
                    id,
                )
            }
            None => {
                let db = config.sqlite_path();
                let id = admin::project_id(&open_admin(&db)?, project)?
                    .with_context(|| format!("no project {project}"))?;
                (
                    std::sync::Arc::new(trailkeep::store::sqlite::SqliteStore::open_read_only(
                        &db,
                    )?),
                    id,
                )
            }
        };
        let head = store
            .tree_head(project_id, tenant.to_owned())
            .await?
            .with_context(|| format!("no tenant {tenant} in project {project}"))?;
        let note = log.sign(log.origin(project, tenant), head.size, head.root);
        let mut stream = std::pin::pin!(trailkeep::export::stream(
            store.clone(),
            head.tenant_id,
            head.size,
            note,
            1000
        ));
        let mut out: Box<dyn std::io::Write> = match &output {
            Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
            None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        };
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?)?;
        }
        out.flush()?;
        anyhow::Ok(())
    })
}

fn verify(
    file: &PathBuf,
    key: &str,
    proof: bool,
    event: Option<PathBuf>,
    trusted: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    let verifier = tlog::NoteVerifier::parse(key).context("invalid --key")?;
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if !proof {
        let trusted = match trusted {
            Some(path) => {
                let note = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Some(
                    tlog::Checkpoint::open(&note, &verifier)
                        .context("the trusted checkpoint does not verify")?,
                )
            }
            None => None,
        };
        return match trailkeep::export::verify_bundle(&data, &verifier, trusted.as_ref()) {
            Ok(v) => {
                println!(
                    "OK: {} events, checkpoint {} size {}",
                    v.events, v.checkpoint.origin, v.checkpoint.size
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("FAILED: {e}");
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let p: serde_json::Value = serde_json::from_slice(&data).context("the proof is not JSON")?;
    let decode = |v: &serde_json::Value| -> anyhow::Result<tlog::Hash> {
        let raw = B64.decode(v.as_str().context("hash must be a string")?)?;
        raw.try_into()
            .map_err(|_| anyhow::anyhow!("hash must be 32 bytes"))
    };
    let leaf_hash = decode(&p["leaf_hash"])?;
    if let Some(path) = event {
        let bytes = std::fs::read(&path)?;
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        if tlog::leaf_hash(bytes) != leaf_hash {
            println!("FAILED: the event does not hash to the proof's leaf_hash");
            return Ok(ExitCode::FAILURE);
        }
    }
    let hashes: Vec<tlog::Hash> = p["hashes"]
        .as_array()
        .context("hashes missing")?
        .iter()
        .map(decode)
        .collect::<Result<_, _>>()?;
    let index = p["leaf_index"].as_u64().context("leaf_index missing")?;
    let size = p["tree_size"].as_u64().context("tree_size missing")?;
    let checkpoint = match tlog::Checkpoint::open(
        p["checkpoint"].as_str().context("checkpoint missing")?,
        &verifier,
    ) {
        Ok(c) => c,
        Err(e) => {
            println!("FAILED: checkpoint: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if checkpoint.size != size {
        println!(
            "FAILED: the checkpoint is of size {}, the proof of {size}",
            checkpoint.size
        );
        return Ok(ExitCode::FAILURE);
    }
    match tlog::verify_inclusion(index, size, &leaf_hash, &hashes, &checkpoint.root) {
        Ok(()) => {
            println!(
                "OK: leaf {index} is included in {} at size {size}",
                checkpoint.origin
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
