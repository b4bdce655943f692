//! The PostgreSQL store, for several stateless nodes sharing one database.
//!
//! Each node runs one writer task that groups queued appends into one
//! transaction. Index assignment is serialized *in the database*: the batch
//! locks the head row of every tenant it touches (`SELECT … FOR UPDATE`, in
//! id order so two nodes never deadlock), reads the size, and writes events,
//! tree nodes and the new head before `COMMIT`. A node's cached frontier is
//! used only when its size equals the locked head's, so a tenant appended by
//! another node is reloaded, never forked. Nothing is acknowledged before
//! `COMMIT` returns (with `synchronous_commit` as configured on the server,
//! `on` by default).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tlog::{Frontier, Hash, NodeId};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{
    AppendJob, AppendOutcome, Delivery, DeliveryResult, EventQuery, EventStore, Page, Principal,
    ProjectId, StoreError, StoreFuture, StoredEvent, TreeHead, Webhook,
};
use crate::config::CommitConfig;
use crate::keys;
use crate::metrics::Metrics;
use crate::model::Time;

use super::{Cursor, ListOrder};

pub mod tls;
mod writer;

/// Migrations in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("sql/postgres_001_init.sql"),
    include_str!("sql/postgres_002_rate_limits.sql"),
    include_str!("sql/postgres_003_time_order.sql"),
];
/// Advisory lock held while migrating or bootstrapping (`b"trailk"`).
const LOCK_KEY: i64 = 0x7472_6169_6c6b;
/// How long the idempotency record of a request is honoured.
const IDEMPOTENCY_TTL_MICROS: i64 = 24 * 3600 * 1_000_000;
/// How long a node owns a claimed delivery before others may retry it;
/// longer than any attempt's timeout.
const DELIVERY_LEASE_MICROS: i64 = 120 * 1_000_000;
/// Connections per node.
const POOL_SIZE: usize = 16;
/// How long a request waits for a connection before answering 503.
const POOL_WAIT: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

/// (project, key, request hash, status, response body) of a new idempotency record.
type IdempotencyRow = (i64, String, Vec<u8>, i32, Vec<u8>);

struct Queued {
    job: AppendJob,
    reply: Reply,
}

/// The PostgreSQL [`EventStore`].
pub struct PgStore {
    pool: Pool,
    tx: Mutex<Option<mpsc::Sender<Queued>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    writer_alive: Arc<AtomicBool>,
    outbox: Arc<tokio::sync::Notify>,
}

/// Lost connections and refused connects mean "retry later" (503); every
/// other failure is a bug or a broken database (500).
fn pg_error(e: tokio_postgres::Error) -> StoreError {
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        StoreError::Unavailable
    } else {
        StoreError::Backend(Box::new(e))
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        _ => StoreError::Unavailable,
    }
}

/// True for `postgres://` and `postgresql://` URLs.
#[must_use]
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A connection pool for `url`, with TLS as its `sslmode` and
/// `sslrootcert` ask (see [`tls`]).
///
/// # Errors
/// When the URL is not a valid PostgreSQL connection string, or its TLS
/// settings cannot be used.
pub fn pool(url: &str) -> Result<Pool, StoreError> {
    let (config, tls) = tls::config(url).map_err(|e| StoreError::Backend(Box::new(e)))?;
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| StoreError::Backend(Box::new(e)))
}

/// Applies pending migrations under an advisory lock, so nodes starting at
/// once do not race; refuses a database newer than this build.
///
/// # Errors
/// Connection failures, SQL failures, or a newer schema.
pub async fn migrate(pool: &Pool) -> Result<i64, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(pg_error)?;
    let res = async {
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await
            .map_err(pg_error)?;
        let current: i64 = client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
            .await
            .map_err(pg_error)?
            .get(0);
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::Corrupted(format!(
                "database schema version {current} is newer than this build ({known}); refusing to downgrade"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(current).unwrap_or(0)) {
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.batch_execute(sql).await.map_err(pg_error)?;
            exec(&tx, "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)", &[&(i as i64 + 1), &Time::now().as_micros()]).await?;
            tx.commit().await.map_err(pg_error)?;
        }
        Ok(known)
    }
    .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    res
}

impl PgStore {
    /// Connects, migrates and starts this node's writer task.
    ///
    /// # Errors
    /// When the database is unreachable at start or cannot be migrated.
    pub async fn open(
        url: &str,
        commit: &CommitConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let pool = pool(url)?;
        migrate(&pool).await?;
        let (tx, rx) = mpsc::channel(commit.queue_capacity);
        let outbox = Arc::new(tokio::sync::Notify::new());
        let writer_alive = Arc::new(AtomicBool::new(true));
        let writer = writer::Writer {
            pool: pool.clone(),
            commit: commit.clone(),
            metrics,
            frontiers: HashMap::new(),
            tenant_ids: HashMap::new(),
            in_flight: HashMap::new(),
            outbox: outbox.clone(),
        };
        let alive = writer_alive.clone();
        let handle = tokio::spawn(async move {
            writer.run(rx).await;
            alive.store(false, Ordering::SeqCst);
        });
        Ok(Self {
            pool,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            writer_alive,
            outbox,
        })
    }

    /// The connection pool (for administration at startup).
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Stops accepting appends and waits for the writer to finish.
    pub async fn close(&self) {
        drop(self.tx.lock().expect("lock").take());
        let handle = self.writer.lock().expect("lock").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// Runs a statement prepared once per connection (deadpool caches it), so
/// each call is one round trip instead of a parse and an execute.
async fn exec(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = tx.prepare_cached(sql).await.map_err(pg_error)?;
    tx.execute(&stmt, params).await.map_err(pg_error)
}

/// Full-text input for PostgreSQL's `simple` configuration: every run of
/// letters and digits becomes a token, as in SQLite's index and in
/// `api::native::search_terms`, so both stores answer `q` alike.
pub(crate) fn tokenizable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect()
}

async fn read_nodes(
    client: &impl GenericClient,
    tenant_id: i64,
    ids: &[NodeId],
) -> Result<Vec<Hash>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let levels: Vec<i16> = ids.iter().map(|i| i16::from(i.level)).collect();
    let idxs: Vec<i64> = ids.iter().map(|i| i.index as i64).collect();
    let rows = client
        .query(
            "SELECT n.level, n.idx, n.hash FROM tree_nodes n
             JOIN unnest($2::smallint[], $3::bigint[]) AS k(l, i) ON n.level = k.l AND n.idx = k.i
             WHERE n.tenant_id = $1",
            &[&tenant_id, &levels, &idxs],
        )
        .await
        .map_err(pg_error)?;
    let found: HashMap<(i16, i64), Vec<u8>> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    ids.iter()
        .map(|id| {
            found
                .get(&(i16::from(id.level), id.index as i64))
                .and_then(|h| <Hash>::try_from(h.as_slice()).ok())
                .ok_or_else(|| {
                    StoreError::Corrupted(format!(
                        "tenant {tenant_id}: tree node {id:?} is missing"
                    ))
                })
        })
        .collect()
}

async fn load_frontier(
    client: &impl GenericClient,
    tenant_id: i64,
    size: u64,
) -> Result<Frontier, StoreError> {
    let ids = tlog::range_node_ids(0, size);
    let hashes = read_nodes(client, tenant_id, &ids).await?;
    let map: HashMap<NodeId, Hash> = ids.into_iter().zip(hashes).collect();
    Frontier::load(size, &map).map_err(|e| StoreError::Corrupted(e.to_string()))
}

fn stored_event(row: &tokio_postgres::Row, stored_hash: bool) -> StoredEvent {
    let leaf: Vec<u8> = row.get(3);
    let hash = if stored_hash {
        row.get::<_, Option<Vec<u8>>>(4)
    } else {
        None
    };
    let leaf_hash = hash
        .and_then(|h| <Hash>::try_from(h.as_slice()).ok())
        .unwrap_or_else(|| tlog::leaf_hash(&leaf));
    StoredEvent {
        seq: row.get(0),
        tenant_id: row.get(1),
        index: row.get::<_, i64>(2) as u64,
        leaf_hash,
        leaf,
    }
}

/// Escapes `%`, `_` and `\` for a `LIKE` prefix.
fn like_prefix(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 1);
    for c in p.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl EventStore for PgStore {
    fn append(&self, job: AppendJob) -> StoreFuture<'_, AppendOutcome> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            {
                let guard = self.tx.lock().expect("lock");
                let Some(sender) = guard.as_ref() else {
                    return Err(StoreError::Unavailable);
                };
                match sender.try_send(Queued { job, reply }) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => return Err(StoreError::Overloaded),
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err(StoreError::Unavailable);
                    }
                }
            }
            rx.await.map_err(|_| StoreError::Unavailable)?
        })
    }

    fn get(&self, project: ProjectId, id: Uuid) -> StoreFuture<'_, Option<StoredEvent>> {
        Box::pin(async move {
            let c = self.client().await?;
            let row = c
                .query_opt("SELECT seq, tenant_id, idx, leaf FROM events WHERE id = $1 AND project_id = $2", &[&id, &project])
                .await
                .map_err(pg_error)?;
            Ok(row.map(|r| stored_event(&r, false)))
        })
    }

    fn query(&self, project: ProjectId, q: EventQuery) -> StoreFuture<'_, Page> {
        Box::pin(async move {
            let order = q.order();
            // Column 4 is the listing's occurred_at, not a stored hash.
            let mut sql = String::from(
                "SELECT seq, tenant_id, idx, leaf, occurred_at FROM events WHERE project_id = $1",
            );
            let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(project)];
            let mut arg = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
                args.push(v);
                sql.push_str(&clause.replace("{p}", &format!("${}", args.len())));
            };
            if let Some(t) = q.tenant {
                arg(
                    &mut sql,
                    " AND tenant_id = (SELECT id FROM tenants WHERE project_id = $1 AND name = {p})",
                    Box::new(t),
                );
            }
            if let Some(a) = q.actor {
                arg(&mut sql, " AND actor_id = {p}", Box::new(a));
            }
            if let Some(a) = q.action {
                arg(&mut sql, " AND action = {p}", Box::new(a));
            }
            if let Some(p) = q.action_prefix {
                arg(&mut sql, " AND action LIKE {p}", Box::new(like_prefix(&p)));
            }
            if let Some(t) = q.target {
                arg(
                    &mut sql,
                    " AND seq IN (SELECT seq FROM event_targets WHERE project_id = $1 AND target_id = {p})",
                    Box::new(t),
                );
            }
            if let Some(t) = q.tag {
                arg(
                    &mut sql,
                    " AND seq IN (SELECT seq FROM event_tags WHERE project_id = $1 AND tag = {p})",
                    Box::new(t),
                );
            }
            if let Some(r) = q.result {
                arg(&mut sql, " AND result = {p}", Box::new(r));
            }
            if let Some(s) = q.since {
                arg(&mut sql, " AND occurred_at >= {p}", Box::new(s.as_micros()));
            }
            // One upper bound on occurred_at, so a reverse scan of
            // events_by_time (project_id, occurred_at, seq) starts right at
            // the cursor: the row comparison is an index condition there.
            // `until` is left out when the cursor implies it, and the
            // cursor when `until` implies it.
            let until = q.until.map(Time::as_micros);
            match q.before {
                Some(Cursor::Time { occurred_at, seq })
                    if until.is_none_or(|u| occurred_at < u) =>
                {
                    arg(
                        &mut sql,
                        " AND (occurred_at, seq) < ({p}",
                        Box::new(occurred_at),
                    );
                    arg(&mut sql, ", {p})", Box::new(seq));
                }
                _ => {
                    if let Some(u) = until {
                        arg(&mut sql, " AND occurred_at < {p}", Box::new(u));
                    }
                }
            }
            if !q.text_terms.is_empty() {
                arg(
                    &mut sql,
                    " AND search @@ plainto_tsquery('simple', {p})",
                    Box::new(q.text_terms.join(" ")),
                );
            }
            if let Some(b) = q.before_index {
                arg(&mut sql, " AND idx < {p}", Box::new(b as i64));
            }
            if let Some(Cursor::Seq(b)) = q.before {
                arg(&mut sql, " AND seq < {p}", Box::new(b));
            }
            let order_by = match order {
                ListOrder::Seq => " ORDER BY seq DESC LIMIT {p}",
                ListOrder::Time => " ORDER BY occurred_at DESC, seq DESC LIMIT {p}",
            };
            arg(&mut sql, order_by, Box::new(q.limit as i64 + 1));
            let c = self.client().await?;
            let params: Vec<&(dyn ToSql + Sync)> = args
                .iter()
                .map(|a| a.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = c.query(&sql, &params).await.map_err(pg_error)?;
            let more = rows.len() > q.limit;
            let rows = &rows[..rows.len().min(q.limit)];
            let events: Vec<StoredEvent> = rows.iter().map(|r| stored_event(r, false)).collect();
            let next_before = match rows.last() {
                Some(r) if more => Some(Cursor::at(order, r.get(0), r.get(4))),
                _ => None,
            };
            Ok(Page {
                events,
                next_before,
            })
        })
    }

    fn authenticate(&self, key_hash: [u8; 32]) -> StoreFuture<'_, Option<Principal>> {
        Box::pin(async move {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT k.id, k.key_hash, p.id, p.name FROM api_keys k JOIN projects p ON p.id = k.project_id
                     WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
                    &[&&key_hash[..]],
                )
                .await
                .map_err(pg_error)?;
            Ok(row.and_then(|r| {
                let stored: Vec<u8> = r.get(1);
                keys::hashes_equal(&stored, &key_hash).then(|| Principal {
                    key_id: r.get(0),
                    project: r.get(2),
                    project_name: r.get(3),
                })
            }))
        })
    }

    fn tree_head(&self, project: ProjectId, tenant: String) -> StoreFuture<'_, Option<TreeHead>> {
        Box::pin(async move {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT id, size, root FROM tenants WHERE project_id = $1 AND name = $2",
                    &[&project, &tenant],
                )
                .await
                .map_err(pg_error)?;
            row.map(|r| TreeHead::from_stored(r.get(0), r.get(1), &r.get::<_, Vec<u8>>(2)))
                .transpose()
        })
    }

    fn read_nodes(&self, tenant_id: i64, ids: Vec<NodeId>) -> StoreFuture<'_, Vec<Hash>> {
        Box::pin(async move {
            let c = self.client().await?;
            read_nodes(&c, tenant_id, &ids).await
        })
    }

    fn scan_tenant(&self, tenant_id: i64, from: u64, to: u64) -> StoreFuture<'_, Vec<StoredEvent>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT e.seq, e.tenant_id, e.idx, e.leaf, n.hash FROM events e
                     LEFT JOIN tree_nodes n ON n.tenant_id = e.tenant_id AND n.level = 0 AND n.idx = e.idx
                     WHERE e.tenant_id = $1 AND e.idx >= $2 AND e.idx < $3 ORDER BY e.idx",
                    &[&tenant_id, &(from as i64), &(to as i64)],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows.iter().map(|r| stored_event(r, true)).collect())
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if !self.writer_alive.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable);
            }
            let c = self.client().await?;
            c.query_one("SELECT 1", &[]).await.map_err(pg_error)?;
            Ok(())
        })
    }

    fn create_webhook(
        &self,
        project: ProjectId,
        url: String,
        description: Option<String>,
    ) -> StoreFuture<'_, Webhook> {
        Box::pin(async move {
            let c = self.client().await?;
            admin::add_webhook(&c, project, &url, description.as_deref()).await
        })
    }

    fn list_webhooks(&self, project: ProjectId) -> StoreFuture<'_, Vec<Webhook>> {
        Box::pin(async move {
            let c = self.client().await?;
            admin::list_webhooks(&c, project).await
        })
    }

    fn delete_webhook(&self, project: ProjectId, id: i64) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let c = self.client().await?;
            admin::remove_webhook(&c, project, id).await
        })
    }

    fn due_deliveries(&self, now: Time, limit: usize) -> StoreFuture<'_, Vec<Delivery>> {
        Box::pin(async move {
            let c = self.client().await?;
            // Claim the rows with a lease so that the other nodes' delivery
            // tasks skip them while this node tries; if this node dies, the
            // lease runs out and another node retries (at least once).
            let lease_until = now.as_micros() + DELIVERY_LEASE_MICROS;
            let rows = c
                .query(
                    "WITH due AS (
                         SELECT id FROM webhook_outbox
                         WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1
                         ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                     UPDATE webhook_outbox o SET next_attempt_at = $3 FROM due, webhooks w
                     WHERE o.id = due.id AND w.id = o.webhook_id
                     RETURNING o.id, w.url, w.secret, o.msg_id, o.payload, o.attempts",
                    &[&now.as_micros(), &(limit as i64), &lease_until],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows
                .iter()
                .map(|r| Delivery {
                    id: r.get(0),
                    url: r.get(1),
                    secret: r.get(2),
                    msg_id: r.get(3),
                    payload: r.get(4),
                    attempts: u32::try_from(r.get::<_, i32>(5)).unwrap_or(0),
                })
                .collect())
        })
    }

    fn record_delivery(&self, id: i64, result: DeliveryResult) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let c = self.client().await?;
            let now = Time::now().as_micros();
            match result {
                DeliveryResult::Delivered => c
                    .execute(
                        "UPDATE webhook_outbox SET attempts = attempts + 1, delivered_at = $1, last_status = NULL, last_error = NULL WHERE id = $2",
                        &[&now, &id],
                    )
                    .await,
                DeliveryResult::Retry { at, status, error } => c
                    .execute(
                        "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $1, last_status = $2, last_error = $3 WHERE id = $4",
                        &[&at.as_micros(), &status.map(i32::from), &error, &id],
                    )
                    .await,
                DeliveryResult::Failed { status, error } => c
                    .execute(
                        "UPDATE webhook_outbox SET attempts = attempts + 1, failed_at = $1, last_status = $2, last_error = $3 WHERE id = $4",
                        &[&now, &status.map(i32::from), &error, &id],
                    )
                    .await,
            }
            .map_err(pg_error)?;
            Ok(())
        })
    }

    fn outbox_signal(&self) -> Arc<tokio::sync::Notify> {
        self.outbox.clone()
    }

    fn shared_rate_limit(
        &self,
        credential: String,
        interval_us: i64,
        tolerance_us: i64,
    ) -> Option<StoreFuture<'_, Result<(), i64>>> {
        Some(Box::pin(async move {
            let c = self.client().await?;
            let now = Time::now().as_micros();
            // Admit: move the credential's arrival time on, unless that
            // would pass the tolerance. One statement, so nodes cannot race.
            let admitted = c
                .execute(
                    "UPDATE rate_limits SET tat = GREATEST(tat, $2) + $3
                     WHERE credential = $1 AND GREATEST(tat, $2) + $3 <= $2 + $4",
                    &[&credential, &now, &interval_us, &tolerance_us],
                )
                .await
                .map_err(pg_error)?;
            if admitted == 1 {
                return Ok(Ok(()));
            }
            let inserted = c
                .execute(
                    "INSERT INTO rate_limits (credential, tat) VALUES ($1, $2::bigint + $3::bigint) ON CONFLICT (credential) DO NOTHING",
                    &[&credential, &now, &interval_us],
                )
                .await
                .map_err(pg_error)?;
            if inserted == 1 {
                return Ok(Ok(()));
            }
            let tat: i64 = c
                .query_one(
                    "SELECT tat FROM rate_limits WHERE credential = $1",
                    &[&credential],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            Ok(Err(
                (tat.max(now) + interval_us - (now + tolerance_us)).max(1)
            ))
        }))
    }
}

/// Administration of projects, keys, webhooks and the shared signing key,
/// used at startup and by the CLI with `--store postgres://…`.
pub mod admin {
    use super::{LOCK_KEY, ProjectId, StoreError, Time, Webhook, keys, pg_error};
    use crate::store::sqlite::admin::KeyInfo;

    /// The id of project `name`, creating it if needed.
    ///
    /// # Errors
    /// Database failures.
    pub async fn ensure_project(
        c: &tokio_postgres::Client,
        name: &str,
    ) -> Result<ProjectId, StoreError> {
        c.execute(
            "INSERT INTO projects (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &Time::now().as_micros()],
        )
        .await
        .map_err(pg_error)?;
        Ok(
            c.query_one("SELECT id FROM projects WHERE name = $1", &[&name])
                .await
                .map_err(pg_error)?
                .get(0),
        )
    }

    /// The id of an existing project.
    ///
    /// # Errors
    /// Database failures.
    pub async fn project_id(
        c: &tokio_postgres::Client,
        name: &str,
    ) -> Result<Option<ProjectId>, StoreError> {
        Ok(
            c.query_opt("SELECT id FROM projects WHERE name = $1", &[&name])
                .await
                .map_err(pg_error)?
                .map(|r| r.get(0)),
        )
    }

    /// Stores `key` (hashed) for `project`, idempotently; returns its id.
    ///
    /// # Errors
    /// Database failures.
    pub async fn add_key(
        c: &tokio_postgres::Client,
        project: &str,
        key: &str,
    ) -> Result<i64, StoreError> {
        let project_id = ensure_project(c, project).await?;
        let hash: &[u8] = &keys::hash_key(key);
        c.execute(
            "INSERT INTO api_keys (project_id, key_hash, prefix, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (key_hash) DO NOTHING",
            &[&project_id, &hash, &keys::display_prefix(key), &Time::now().as_micros()],
        )
        .await
        .map_err(pg_error)?;
        Ok(
            c.query_one("SELECT id FROM api_keys WHERE key_hash = $1", &[&hash])
                .await
                .map_err(pg_error)?
                .get(0),
        )
    }

    /// Generates, stores and returns a new key for `project`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn create_key(
        c: &tokio_postgres::Client,
        project: &str,
    ) -> Result<(i64, String), StoreError> {
        let key = keys::generate();
        let id = add_key(c, project, &key).await?;
        Ok((id, key))
    }

    /// Bootstraps the first key under the advisory lock, so several nodes
    /// starting at once create at most one; returns a generated key to show.
    ///
    /// # Errors
    /// Database failures.
    pub async fn bootstrap(
        c: &tokio_postgres::Client,
        project: &str,
        given: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        c.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg_error)?;
        let res = async {
            if let Some(key) = given {
                add_key(c, project, key).await?;
                return Ok(None);
            }
            let active: i64 = c
                .query_one(
                    "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if active == 0 {
                Ok(Some(create_key(c, project).await?.1))
            } else {
                Ok(None)
            }
        }
        .await;
        let _ = c
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await;
        res
    }

    /// Every key, optionally of one project.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_keys(
        c: &tokio_postgres::Client,
        project: Option<&str>,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        let rows = c
            .query(
                "SELECT k.id, p.name, k.prefix, k.created_at, k.revoked_at FROM api_keys k
                 JOIN projects p ON p.id = k.project_id WHERE $1::text IS NULL OR p.name = $1 ORDER BY k.id",
                &[&project],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|r| KeyInfo {
                id: r.get(0),
                project: r.get(1),
                prefix: r.get(2),
                created_at: Time::from_micros(r.get(3)),
                revoked_at: r.get::<_, Option<i64>>(4).map(Time::from_micros),
            })
            .collect())
    }

    /// Revokes key `id`; false when no such active key exists.
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_key(c: &tokio_postgres::Client, id: i64) -> Result<bool, StoreError> {
        let n = c
            .execute(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                &[&Time::now().as_micros(), &id],
            )
            .await
            .map_err(pg_error)?;
        Ok(n == 1)
    }

    /// Creates a webhook; the result carries its secret, shown only now.
    ///
    /// # Errors
    /// Database failures.
    pub async fn add_webhook(
        c: &tokio_postgres::Client,
        project: ProjectId,
        url: &str,
        description: Option<&str>,
    ) -> Result<Webhook, StoreError> {
        let secret = crate::webhooks::generate_secret();
        let now = Time::now();
        let id: i64 = c
            .query_one(
                "INSERT INTO webhooks (project_id, url, description, secret, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&project, &url, &description, &secret, &now.as_micros()],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        Ok(Webhook {
            id,
            url: url.to_owned(),
            description: description.map(str::to_owned),
            secret: Some(secret),
            created_at: now,
        })
    }

    /// The live webhooks of a project, without secrets.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_webhooks(
        c: &tokio_postgres::Client,
        project: ProjectId,
    ) -> Result<Vec<Webhook>, StoreError> {
        let rows = c
            .query(
                "SELECT id, url, description, created_at FROM webhooks WHERE project_id = $1 AND deleted_at IS NULL ORDER BY id",
                &[&project],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|r| Webhook {
                id: r.get(0),
                url: r.get(1),
                description: r.get(2),
                secret: None,
                created_at: Time::from_micros(r.get(3)),
            })
            .collect())
    }

    /// Deletes a webhook and drops its pending deliveries.
    ///
    /// # Errors
    /// Database failures.
    pub async fn remove_webhook(
        c: &tokio_postgres::Client,
        project: ProjectId,
        id: i64,
    ) -> Result<bool, StoreError> {
        let now = Time::now().as_micros();
        let n = c
            .execute(
                "UPDATE webhooks SET deleted_at = $1 WHERE id = $2 AND project_id = $3 AND deleted_at IS NULL",
                &[&now, &id, &project],
            )
            .await
            .map_err(pg_error)?;
        if n == 1 {
            c.execute(
                "UPDATE webhook_outbox SET failed_at = $1, last_error = 'webhook deleted' WHERE webhook_id = $2 AND delivered_at IS NULL AND failed_at IS NULL",
                &[&now, &id],
            )
            .await
            .map_err(pg_error)?;
        }
        Ok(n == 1)
    }

    /// The shared log signing key (a Go-style signer key), created by the
    /// first node that asks.
    ///
    /// # Errors
    /// Database failures.
    pub async fn signing_key(
        c: &tokio_postgres::Client,
        make: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        c.execute(
            "INSERT INTO settings (key, value) VALUES ('log_signing_key', $1) ON CONFLICT (key) DO NOTHING",
            &[&make()],
        )
        .await
        .map_err(pg_error)?;
        Ok(c.query_one(
            "SELECT value FROM settings WHERE key = 'log_signing_key'",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0))
    }

    /// The stored signing key, if any node created one.
    ///
    /// # Errors
    /// Database failures.
    pub async fn stored_signing_key(
        c: &tokio_postgres::Client,
    ) -> Result<Option<String>, StoreError> {
        Ok(c.query_opt(
            "SELECT value FROM settings WHERE key = 'log_signing_key'",
            &[],
        )
        .await
        .map_err(pg_error)?
        .map(|r| r.get(0)))
    }
}

/// `trailkeep fsck` on PostgreSQL: the same checks as on SQLite
/// ([`crate::fsck::TenantCheck`]), reading events in chunks by index.
///
/// # Errors
/// Database failures.
pub async fn fsck(pool: &Pool) -> Result<(u64, Vec<crate::fsck::Finding>), StoreError> {
    /// Events read per query.
    const FSCK_CHUNK: i64 = 10_000;
    let c = pool.get().await.map_err(pool_error)?;
    let tenants = c
        .query("SELECT t.id, p.name, t.name, t.size, t.root FROM tenants t JOIN projects p ON p.id = t.project_id ORDER BY t.id", &[])
        .await
        .map_err(pg_error)?;
    let mut findings = Vec::new();
    let mut n_events = 0;
    for t in tenants {
        let tenant_id: i64 = t.get(0);
        let nodes: HashMap<NodeId, Hash> = c
            .query(
                "SELECT level, idx, hash FROM tree_nodes WHERE tenant_id = $1",
                &[&tenant_id],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| {
                let hash: Vec<u8> = r.get(2);
                (
                    NodeId::new(r.get::<_, i16>(0) as u8, r.get::<_, i64>(1) as u64),
                    hash.as_slice().try_into().unwrap_or([0u8; 32]),
                )
            })
            .collect();
        let mut check = crate::fsck::TenantCheck::new(
            t.get(1),
            t.get(2),
            t.get::<_, i64>(3) as u64,
            t.get(4),
            nodes,
        );
        let mut from = -1i64;
        loop {
            let rows = c
                .query(
                    "SELECT idx, leaf FROM events WHERE tenant_id = $1 AND idx > $2 ORDER BY idx LIMIT $3",
                    &[&tenant_id, &from, &FSCK_CHUNK],
                )
                .await
                .map_err(pg_error)?;
            for r in &rows {
                let idx: i64 = r.get(0);
                let leaf: Vec<u8> = r.get(1);
                check.event(idx as u64, &leaf);
                from = idx;
            }
            if (rows.len() as i64) < FSCK_CHUNK {
                break;
            }
        }
        n_events += check.events();
        findings.extend(check.finish());
    }
    Ok((n_events, findings))
}
