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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tlog::{Frontier, Hash, NodeId};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{
    AppendJob, AppendOutcome, Delivery, DeliveryResult, EventQuery, EventStore, Page, Principal,
    ProjectId, Receipt, StoreError, StoreFuture, StoredEvent, StoredResponse, TreeHead, Webhook,
};
use crate::config::CommitConfig;
use crate::keys;
use crate::metrics::Metrics;
use crate::model::Time;

use super::{Cursor, ListOrder};

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

/// A connection pool for `url`.
///
/// # Errors
/// When the URL is not a valid PostgreSQL connection string.
pub fn pool(url: &str) -> Result<Pool, StoreError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Backend(Box::new(e)))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
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
        let writer = Writer {
            pool: pool.clone(),
            commit: commit.clone(),
            metrics,
            frontiers: HashMap::new(),
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

struct Writer {
    pool: Pool,
    commit: CommitConfig,
    metrics: Arc<Metrics>,
    /// Frontiers this node last wrote, by tenant id. Trusted only when the
    /// locked head has the same size.
    frontiers: HashMap<i64, Frontier>,
    outbox: Arc<tokio::sync::Notify>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        while let Some(first) = rx.recv().await {
            let mut n_events = first.job.events.len();
            let mut batch = vec![first];
            let deadline =
                tokio::time::Instant::now() + Duration::from_micros(self.commit.window_us);
            while n_events < self.commit.max_batch_events {
                let next = match rx.try_recv() {
                    Ok(q) => Some(q),
                    Err(_) => tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten(),
                };
                let Some(q) = next else { break };
                n_events += q.job.events.len();
                batch.push(q);
            }
            let started = Instant::now();
            let notify = batch.iter().any(|q| q.job.notify);
            let (jobs, replies): (Vec<AppendJob>, Vec<Reply>) =
                batch.into_iter().map(|q| (q.job, q.reply)).unzip();
            match self.commit_batch(jobs).await {
                Ok(outcomes) => {
                    self.metrics.observe_commit(n_events, started.elapsed());
                    if notify {
                        self.outbox.notify_one();
                    }
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "group commit failed; no event in it was acknowledged");
                    self.frontiers.clear();
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Unavailable));
                    }
                }
            }
        }
    }

    async fn commit_batch(
        &mut self,
        jobs: Vec<AppendJob>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let now = Time::now().as_micros();

        // 1. Idempotency: replay or refuse before anything is written.
        let mut outcomes: Vec<Option<AppendOutcome>> = Vec::with_capacity(jobs.len());
        // A key first used inside this batch: later jobs with the same key
        // replay the first one's response (or conflict), as they would in
        // separate transactions.
        let mut new_keys: HashMap<(i64, String), (usize, [u8; 32])> = HashMap::new();
        let mut dup_of: Vec<Option<usize>> = vec![None; jobs.len()];
        for (job_idx, job) in jobs.iter().enumerate() {
            let mut outcome = None;
            if let Some((idem, _)) = &job.idempotency {
                if let Some(&(first, hash)) = new_keys.get(&(job.project, idem.key.clone())) {
                    if hash == idem.request_hash {
                        dup_of[job_idx] = Some(first);
                    }
                    outcomes.push(Some(AppendOutcome::IdempotencyConflict));
                    continue;
                }
                // Serializes one key across nodes until this batch commits, so a
                // second node waits and then sees the first node's record.
                let lock_key = format!("{}:{}", job.project, idem.key);
                exec(
                    &tx,
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    &[&lock_key],
                )
                .await?;
                let row = query(&tx, "SELECT request_hash, status, response, created_at FROM idempotency WHERE project_id = $1 AND key = $2", &[&job.project, &idem.key]).await?.into_iter().next();
                if let Some(row) = row {
                    let created_at: i64 = row.get(3);
                    if now - created_at < IDEMPOTENCY_TTL_MICROS {
                        let hash: Vec<u8> = row.get(0);
                        outcome = Some(if hash == idem.request_hash {
                            let status: i32 = row.get(1);
                            AppendOutcome::Replayed(StoredResponse {
                                status: u16::try_from(status).unwrap_or(500),
                                body: row.get(2),
                            })
                        } else {
                            AppendOutcome::IdempotencyConflict
                        });
                    } else {
                        exec(
                            &tx,
                            "DELETE FROM idempotency WHERE project_id = $1 AND key = $2",
                            &[&job.project, &idem.key],
                        )
                        .await?;
                    }
                }
                if outcome.is_none() {
                    new_keys.insert(
                        (job.project, idem.key.clone()),
                        (job_idx, idem.request_hash),
                    );
                }
            }
            outcomes.push(outcome);
        }

        // 2. Lock the head of every tenant touched, creating missing ones.
        let mut keys: Vec<(i64, String)> = jobs
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_none())
            .flat_map(|(j, _)| j.events.iter().map(move |e| (j.project, e.tenant.clone())))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        keys.sort();
        let projects: Vec<i64> = keys.iter().map(|k| k.0).collect();
        let names: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        let empty_root: &[u8] = &tlog::empty_root();
        exec(
            &tx,
            "INSERT INTO tenants (project_id, name, size, root, created_at)
             SELECT p, n, 0, $3, $4 FROM unnest($1::bigint[], $2::text[]) AS t(p, n)
             ON CONFLICT (project_id, name) DO NOTHING",
            &[&projects, &names, &empty_root, &now],
        )
        .await?;
        let rows = query(&tx, "SELECT t.id, t.project_id, t.name, t.size FROM tenants t
                 JOIN unnest($1::bigint[], $2::text[]) AS k(p, n) ON t.project_id = k.p AND t.name = k.n
                 ORDER BY t.id FOR UPDATE OF t", &[&projects, &names]).await?;
        let mut heads: HashMap<(i64, String), (i64, Frontier)> = HashMap::new();
        for row in rows {
            let (id, project, name, size): (i64, i64, String, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let size = u64::try_from(size)
                .map_err(|_| StoreError::Corrupted("negative tree size".into()))?;
            let frontier = match self.frontiers.get(&id) {
                Some(f) if f.size() == size => f.clone(),
                _ => load_frontier(&tx, id, size).await?,
            };
            heads.insert((project, name), (id, frontier));
        }

        // 3. Assign indexes and build every row of the batch.
        let n_new: i64 = jobs
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_none())
            .map(|(j, _)| j.events.len() as i64)
            .sum();
        let seqs: Vec<i64> = if n_new > 0 {
            query(&tx, "SELECT nextval(pg_get_serial_sequence('events', 'seq')) FROM generate_series(1, $1::bigint)", &[&n_new]).await?
                .iter()
                .map(|r| r.get(0))
                .collect()
        } else {
            Vec::new()
        };
        let mut rows = EventRows::default();
        let mut seq_iter = seqs.into_iter();
        let mut idem_rows: Vec<IdempotencyRow> = Vec::new();
        let mut outbox_rows: Vec<(i64, String, Vec<u8>)> = Vec::new();
        for (job, outcome) in jobs.into_iter().zip(outcomes.iter_mut()) {
            if outcome.is_some() {
                continue;
            }
            let AppendJob {
                project,
                events,
                idempotency,
                notify,
            } = job;
            let mut receipts = Vec::with_capacity(events.len());
            for mut event in events {
                let (tenant_id, frontier) = heads
                    .get_mut(&(project, event.tenant.clone()))
                    .ok_or_else(|| {
                        StoreError::Corrupted("tenant head vanished inside its lock".into())
                    })?;
                event.index = frontier.size();
                let leaf = event.leaf();
                let leaf_hash = tlog::leaf_hash(&leaf);
                let seq = seq_iter
                    .next()
                    .ok_or_else(|| StoreError::Corrupted("sequence exhausted".into()))?;
                for (id, hash) in frontier.append(leaf_hash) {
                    rows.node(*tenant_id, id, hash);
                }
                if notify {
                    let payload = crate::webhooks::notification_payload(event.received_at, &leaf);
                    outbox_rows.push((project, event.id.to_string(), payload));
                }
                rows.event(seq, project, *tenant_id, &event, leaf);
                receipts.push(Receipt {
                    id: event.id,
                    tenant: event.tenant,
                    index: event.index,
                    received_at: event.received_at,
                    leaf_hash,
                });
            }
            *outcome = Some(match idempotency {
                Some((idem, render)) => {
                    let response = render(&receipts);
                    idem_rows.push((
                        project,
                        idem.key,
                        idem.request_hash.to_vec(),
                        i32::from(response.status),
                        response.body.clone(),
                    ));
                    AppendOutcome::Replayed(response)
                }
                None => AppendOutcome::Committed(receipts),
            });
        }

        // 4. Write everything, then the new heads, then commit.
        rows.write(&tx).await?;
        for (project, key, hash, status, body) in &idem_rows {
            exec(&tx, "INSERT INTO idempotency (project_id, key, request_hash, status, response, created_at) VALUES ($1, $2, $3, $4, $5, $6)", &[project, key, hash, status, body, &now]).await?;
        }
        for (project, msg_id, payload) in &outbox_rows {
            exec(&tx, "INSERT INTO webhook_outbox (webhook_id, msg_id, payload, attempts, next_attempt_at, created_at)
                 SELECT id, $1, $2, 0, $3, $3 FROM webhooks WHERE project_id = $4 AND deleted_at IS NULL", &[msg_id, payload, &now, project]).await?;
        }
        let (mut ids, mut sizes, mut roots) = (Vec::new(), Vec::new(), Vec::new());
        for (id, frontier) in heads.values() {
            ids.push(*id);
            sizes.push(frontier.size() as i64);
            roots.push(frontier.root().to_vec());
        }
        exec(
            &tx,
            "UPDATE tenants t SET size = u.size, root = u.root
             FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS u(id, size, root) WHERE t.id = u.id",
            &[&ids, &sizes, &roots],
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        for (id, frontier) in heads.into_values() {
            self.frontiers.insert(id, frontier);
        }
        for (job_idx, first) in dup_of.iter().enumerate() {
            if let Some(first) = *first
                && let Some(AppendOutcome::Replayed(response)) = &outcomes[first]
            {
                outcomes[job_idx] = Some(AppendOutcome::Replayed(response.clone()));
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every job has an outcome"))
            .collect())
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

/// As [`exec`], for queries.
async fn query(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let stmt = tx.prepare_cached(sql).await.map_err(pg_error)?;
    tx.query(&stmt, params).await.map_err(pg_error)
}

/// Columns of a batch, inserted with one `unnest` statement per table.
#[derive(Default)]
struct EventRows {
    seq: Vec<i64>,
    id: Vec<Uuid>,
    project: Vec<i64>,
    tenant: Vec<i64>,
    idx: Vec<i64>,
    occurred_at: Vec<i64>,
    action: Vec<String>,
    actor: Vec<String>,
    result: Vec<Option<&'static str>>,
    leaf: Vec<Vec<u8>>,
    search: Vec<String>,
    tag_project: Vec<i64>,
    tag: Vec<String>,
    tag_seq: Vec<i64>,
    target_project: Vec<i64>,
    target: Vec<String>,
    target_seq: Vec<i64>,
    node_tenant: Vec<i64>,
    node_level: Vec<i16>,
    node_idx: Vec<i64>,
    node_hash: Vec<Vec<u8>>,
}

/// Full-text input for PostgreSQL's `simple` configuration: every run of
/// letters and digits becomes a token, as in SQLite's index and in
/// `api::native::search_terms`, so both stores answer `q` alike.
pub(crate) fn tokenizable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect()
}

impl EventRows {
    fn event(
        &mut self,
        seq: i64,
        project: i64,
        tenant: i64,
        e: &crate::model::Event,
        leaf: Vec<u8>,
    ) {
        self.seq.push(seq);
        self.id.push(e.id);
        self.project.push(project);
        self.tenant.push(tenant);
        self.idx.push(e.index as i64);
        self.occurred_at.push(e.occurred_at.as_micros());
        self.action.push(e.action.clone());
        self.actor.push(e.actor.id.clone());
        self.result
            .push(e.result.map(crate::model::Outcome::as_str));
        self.search.push(tokenizable(&e.search_text()));
        self.leaf.push(leaf);
        for t in e.tags.iter().collect::<HashSet<_>>() {
            self.tag_project.push(project);
            self.tag.push(t.clone());
            self.tag_seq.push(seq);
        }
        for t in e.targets.iter().map(|t| &t.id).collect::<HashSet<_>>() {
            self.target_project.push(project);
            self.target.push(t.clone());
            self.target_seq.push(seq);
        }
    }

    fn node(&mut self, tenant: i64, id: NodeId, hash: Hash) {
        self.node_tenant.push(tenant);
        self.node_level.push(i16::from(id.level));
        self.node_idx.push(id.index as i64);
        self.node_hash.push(hash.to_vec());
    }

    async fn write(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        if self.seq.is_empty() {
            return Ok(());
        }
        exec(tx, "INSERT INTO events (seq, id, project_id, tenant_id, idx, occurred_at, action, actor_id, result, leaf, search)
             SELECT s, i, p, t, x, o, a, ac, r, l, to_tsvector('simple', q)
             FROM unnest($1::bigint[], $2::uuid[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                         $7::text[], $8::text[], $9::text[], $10::bytea[], $11::text[])
                  AS u(s, i, p, t, x, o, a, ac, r, l, q)", &[
                &self.seq, &self.id, &self.project, &self.tenant, &self.idx, &self.occurred_at, &self.action, &self.actor,
                &self.result, &self.leaf, &self.search,
            ]).await?;
        exec(
            tx,
            "INSERT INTO tree_nodes (tenant_id, level, idx, hash)
             SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::bigint[], $4::bytea[])",
            &[
                &self.node_tenant,
                &self.node_level,
                &self.node_idx,
                &self.node_hash,
            ],
        )
        .await?;
        if !self.tag.is_empty() {
            exec(tx, "INSERT INTO event_tags (project_id, tag, seq) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])", &[&self.tag_project, &self.tag, &self.tag_seq]).await?;
        }
        if !self.target.is_empty() {
            exec(tx, "INSERT INTO event_targets (project_id, target_id, seq) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])", &[&self.target_project, &self.target, &self.target_seq]).await?;
        }
        Ok(())
    }
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
