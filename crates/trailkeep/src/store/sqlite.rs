//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through a single writer thread that drains a bounded queue and
//! commits everything queued as one transaction (group commit) with
//! `synchronous = FULL`, so the WAL is fsynced before any caller is
//! answered. That acknowledging transaction appends each event, with the
//! tree nodes its leaf completes, to `events_tail` and its leaf to
//! `events_tail_leaves` (both keyed by `seq`, so they only grow at their
//! right edge) and updates the tenant heads; nothing else. The *fold* then moves tail rows into `events`, `tree_nodes` and
//! every secondary index in large transactions, so a randomly keyed index
//! page is rewritten once per fold instead of once per commit. Listings
//! wait until the fold has reached what was acknowledged when they started;
//! point reads (by id, by tenant index, tree nodes) read the tail as well.
//! Reads use a small pool of read-only connections that run concurrently
//! with the writer. A checkpointer thread copies the WAL into the database
//! file in the background so the writer never waits on it. Full-text
//! indexing runs on the writer thread after the fold, driven by the
//! `fts_watermark` row.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tlog::{Frontier, Hash, HashReader, NodeId, TlogError};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{
    AppendJob, AppendOutcome, Delivery, DeliveryResult, EventQuery, EventStore, Page, Principal,
    ProjectId, Receipt, StoreError, StoreFuture, StoredEvent, StoredResponse, TreeHead, Webhook,
    schema,
};
use crate::config::CommitConfig;
use crate::keys;
use crate::metrics::{Background, Metrics};
use crate::model::Time;

use super::{Cursor, ListOrder};

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_MICROS: i64 = 24 * 3600 * 1_000_000;
/// Most events the deferred full-text indexer handles per transaction.
const FTS_CHUNK: i64 = 4096;
/// The indexer runs at least this often while the writer is busy, which
/// bounds search staleness well under one second.
const FTS_MAX_LAG: Duration = Duration::from_millis(200);
/// Most tail rows one fold moves into the indexed tables.
const FOLD_CHUNK: i64 = 16_384;
/// Background WAL checkpoint period.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL frames (about 4 KiB each) beyond which the checkpointer forces the
/// WAL to rewind: 16 384 frames is about 64 MiB.
const WAL_RESTART_FRAMES: i64 = 16_384;

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

struct Queued {
    job: AppendJob,
    reply: Reply,
}

/// The SQLite [`EventStore`].
pub struct SqliteStore {
    path: PathBuf,
    tx: Mutex<Option<SyncSender<Queued>>>,
    readers: Arc<ReadPool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    writer_alive: Arc<AtomicBool>,
    /// A read-write connection for small writes outside the event path
    /// (webhooks, delivery results); opened on first use.
    side: Arc<Mutex<Option<Connection>>>,
    outbox: Arc<tokio::sync::Notify>,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Opens (creating if needed) and migrates a database for offline use by
/// the CLI or for startup work.
///
/// # Errors
/// When the file cannot be opened or the schema is newer than this build.
pub fn open_admin(path: &Path) -> Result<Connection, StoreError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::Backend(Box::new(e)))?;
    }
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    schema::migrate_sqlite(&mut conn)?;
    // Offline tools read `events` and `tree_nodes` directly; a server that
    // stopped (or crashed) may have left acknowledged events in the tail.
    while fold(&mut conn, FOLD_CHUNK)?.0 > 0 {}
    Ok(conn)
}

/// Moves up to `max` of the oldest tail rows into `events`, `tree_nodes`
/// and the secondary indexes, in one transaction. Returns how many rows
/// moved and the highest `seq` now folded (0 when nothing ever was).
/// Any process holding the write lock may fold: the tail is the only input.
fn fold(conn: &mut Connection, max: i64) -> Result<(i64, i64), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (n, hi): (i64, Option<i64>) = tx.query_row(
        "SELECT count(*), max(seq) FROM (SELECT seq FROM events_tail ORDER BY seq LIMIT ?1)",
        params![max],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some(hi) = hi else {
        let top: Option<i64> = tx.query_row("SELECT max(seq) FROM events", [], |r| r.get(0))?;
        return Ok((0, top.unwrap_or(0)));
    };
    tx.prepare_cached(
        "INSERT INTO events (seq, id, project_id, tenant_id, idx, occurred_at, action, actor_id, result, leaf)
         SELECT t.seq, t.id, t.project_id, t.tenant_id, t.idx, t.occurred_at, t.action, t.actor_id, t.result, l.leaf
         FROM events_tail t JOIN events_tail_leaves l ON l.seq = t.seq WHERE t.seq <= ?1 ORDER BY t.seq",
    )?
    .execute(params![hi])?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO event_actions (project_id, action)
         SELECT DISTINCT project_id, action FROM events_tail WHERE seq <= ?1",
    )?
    .execute(params![hi])?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO event_tags (project_id, tag, seq)
         SELECT t.project_id, j.value, t.seq FROM events_tail t, json_each(t.tags) j
         WHERE t.seq <= ?1 AND t.tags IS NOT NULL ORDER BY 1, 2, 3",
    )?
    .execute(params![hi])?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO event_targets (project_id, target_id, seq)
         SELECT t.project_id, j.value, t.seq FROM events_tail t, json_each(t.targets) j
         WHERE t.seq <= ?1 AND t.targets IS NOT NULL ORDER BY 1, 2, 3",
    )?
    .execute(params![hi])?;
    {
        let mut select = tx.prepare_cached(
            "SELECT tenant_id, idx, nodes FROM events_tail WHERE seq <= ?1 ORDER BY tenant_id, idx",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO tree_nodes (tenant_id, level, idx, hash) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut rows = select.query(params![hi])?;
        while let Some(row) = rows.next()? {
            let tenant: i64 = row.get(0)?;
            let idx: i64 = row.get(1)?;
            let nodes = row.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
            for (level, hash) in nodes.chunks_exact(32).enumerate() {
                insert.execute(params![tenant, level as i64, idx >> level, hash])?;
            }
        }
    }
    tx.prepare_cached("DELETE FROM events_tail WHERE seq <= ?1")?
        .execute(params![hi])?;
    tx.prepare_cached("DELETE FROM events_tail_leaves WHERE seq <= ?1")?
        .execute(params![hi])?;
    tx.commit()?;
    Ok((n, hi))
}

impl SqliteStore {
    /// Opens the store at `path`, migrating it and starting the writer and
    /// checkpointer threads.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated.
    pub fn open(
        path: &Path,
        commit: &CommitConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let conn = open_admin(path)?;
        // The checkpointer thread owns checkpoints; the writer never blocks on one.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // When the writer rewinds the WAL it also truncates the file to this size.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.pragma_update(None, "cache_size", -32_000)?;
        let watermark: i64 = conn.query_row(
            "SELECT value FROM meta WHERE key = 'fts_watermark'",
            [],
            |r| r.get(0),
        )?;
        // open_admin folded the whole tail, so `events` holds the top seq.
        let top: i64 = conn.query_row(
            "SELECT max(coalesce((SELECT max(seq) FROM events), 0), coalesce((SELECT max(seq) FROM events_tail), 0))",
            [],
            |r| r.get(0),
        )?;
        let (tx, rx) = std::sync::mpsc::sync_channel(commit.queue_capacity);
        let outbox = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let writer_alive = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            conn,
            tenants: HashMap::new(),
            commit: commit.clone(),
            metrics,
            fts_watermark: watermark,
            last_fts: Instant::now(),
            outbox: outbox.clone(),
            broken: false,
            next_seq: top + 1,
            tail_len: 0,
            last_fold: Instant::now(),
        };
        let alive = writer_alive.clone();
        let writer = std::thread::Builder::new()
            .name("trailkeep-writer".into())
            .spawn(move || {
                writer.run(&rx);
                alive.store(false, Ordering::SeqCst);
            })
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let ck_path = path.to_owned();
        let ck_stop = stop.clone();
        let checkpointer = std::thread::Builder::new()
            .name("trailkeep-checkpoint".into())
            .spawn(move || run_checkpointer(&ck_path, &ck_stop))
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Self {
            path: path.to_owned(),
            tx: Mutex::new(Some(tx)),
            readers: Arc::new(ReadPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(Some(checkpointer)),
            stop,
            writer_alive,
            side: Arc::default(),
            outbox,
        })
    }

    /// Opens an existing store for reading only: no writer, no
    /// checkpointer, no search indexing, so it is safe beside a running
    /// server (the CLI's `export` uses it). Appends fail with
    /// [`StoreError::Unavailable`].
    ///
    /// # Errors
    /// When the database is missing or its schema is newer than this build.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != schema::SQLITE_SCHEMA_VERSION {
            return Err(StoreError::Corrupted(format!(
                "database schema version {version}; this build reads {}",
                schema::SQLITE_SCHEMA_VERSION
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            tx: Mutex::new(None),
            readers: Arc::new(ReadPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
            writer: Mutex::new(None),
            checkpointer: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(true)),
            writer_alive: Arc::new(AtomicBool::new(false)),
            side: Arc::default(),
            outbox: Arc::default(),
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting appends, lets the writer finish what is queued, and
    /// joins the background threads.
    pub fn close(&self) {
        drop(self.tx.lock().expect("lock").take());
        if let Some(h) = self.writer.lock().expect("lock").take() {
            let _ = h.join();
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.checkpointer.lock().expect("lock").take() {
            let _ = h.join();
        }
    }

    fn write_side<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let side = self.side.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = side.lock().expect("lock");
                if guard.is_none() {
                    let conn = Connection::open(&path)?;
                    configure(&conn)?;
                    *guard = Some(conn);
                }
                f(guard.as_ref().expect("just opened"))
            })
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?
        })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let pool = self.readers.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || pool.with(f))
                .await
                .map_err(|e| StoreError::Backend(Box::new(e)))?
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn run_checkpointer(path: &Path, stop: &AtomicBool) {
    let Ok(conn) = Connection::open(path) else {
        return;
    };
    let _ = conn.busy_timeout(Duration::from_secs(1));
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(CHECKPOINT_EVERY);
        // (busy, frames in the WAL, frames copied back).
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
            // Under constant writes a passive checkpoint never finds the WAL
            // fully copied at a moment the writer could restart it, so the
            // WAL would grow without bound; past the limit, a RESTART
            // checkpoint briefly holds the writer back and lets it rewind.
            Ok((frames, _)) if frames > WAL_RESTART_FRAMES => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL restart checkpoint failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.idle.lock().expect("lock").pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(Duration::from_secs(10))?;
                c
            }
        };
        // One read transaction: the reads inside `f` see one snapshot, so a
        // fold cannot move rows from the tail to `events` between them.
        let res = conn
            .unchecked_transaction()
            .map_err(StoreError::from)
            .and_then(|tx| f(&tx));
        let mut idle = self.idle.lock().expect("lock");
        if idle.len() < 8 {
            idle.push(conn);
        }
        res
    }
}

/// Reads tree nodes of one tenant through any connection.
struct NodeReader<'c> {
    conn: &'c Connection,
    tenant_id: i64,
}

impl HashReader for NodeReader<'_> {
    fn read_hashes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, TlogError> {
        read_nodes(self.conn, self.tenant_id, ids).map_err(|e| TlogError::Reader(e.to_string()))
    }
}

/// Reads tree nodes from `tree_nodes`, and those not folded yet from the
/// tail. Call it inside one read transaction so a concurrent fold cannot
/// move a node between the two lookups.
fn read_nodes(conn: &Connection, tenant_id: i64, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT hash FROM tree_nodes WHERE tenant_id = ?1 AND level = ?2 AND idx = ?3",
    )?;
    let mut found: Vec<Option<Hash>> = ids
        .iter()
        .map(|id| {
            let blob: Option<Vec<u8>> = stmt
                .query_row(params![tenant_id, id.level, id.index as i64], |r| r.get(0))
                .optional()?;
            Ok(blob.and_then(|b| <Hash>::try_from(b.as_slice()).ok()))
        })
        .collect::<Result<_, StoreError>>()?;
    if found.iter().any(Option::is_none) {
        // Node (level, i) was completed by the append of leaf
        // ((i + 1) << level) - 1. The tail has no index but is short: one
        // scan serves every missing node.
        let want: HashMap<i64, Vec<usize>> = ids
            .iter()
            .enumerate()
            .filter(|(k, id)| found[*k].is_none() && id.level < 63)
            .fold(HashMap::new(), |mut m, (k, id)| {
                let leaf = ((id.index + 1) << id.level) - 1;
                m.entry(leaf as i64).or_default().push(k);
                m
            });
        let mut tail =
            conn.prepare_cached("SELECT idx, nodes FROM events_tail WHERE tenant_id = ?1")?;
        let mut rows = tail.query(params![tenant_id])?;
        while let Some(row) = rows.next()? {
            let Some(slots) = want.get(&row.get::<_, i64>(0)?) else {
                continue;
            };
            let nodes = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            for &k in slots {
                let at = usize::from(ids[k].level) * 32;
                found[k] = nodes
                    .get(at..at + 32)
                    .and_then(|h| <Hash>::try_from(h).ok());
            }
        }
    }
    ids.iter()
        .zip(found)
        .map(|(id, h)| {
            h.ok_or_else(|| {
                StoreError::Corrupted(format!("tenant {tenant_id}: tree node {id:?} is missing"))
            })
        })
        .collect()
}

#[derive(Clone)]
struct TenantState {
    id: i64,
    frontier: Frontier,
}

struct Writer {
    conn: Connection,
    /// Committed state of every tenant this writer has touched, keyed by
    /// (project, tenant name). Only the writer appends, so this cache is
    /// exact; it is cleared whenever a commit fails.
    tenants: HashMap<(ProjectId, String), TenantState>,
    commit: CommitConfig,
    metrics: Arc<Metrics>,
    fts_watermark: i64,
    last_fts: Instant,
    outbox: Arc<tokio::sync::Notify>,
    /// Set when the connection can no longer promise durable commits.
    broken: bool,
    /// The `seq` of the next appended event; seqs only grow (gaps are fine).
    next_seq: i64,
    /// Rows acknowledged into the tail since the last fold (an estimate
    /// that only decides when to fold).
    tail_len: i64,
    last_fold: Instant,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Queued>) {
        // Events committed before a crash may not be searchable yet.
        self.index_fts_until_done();
        let mut pending: Option<Queued> = None;
        while !self.broken {
            let first = match pending.take() {
                Some(q) => q,
                None => {
                    // Idle: wait briefly for more appends to fold together.
                    let wait = if self.tail_len > 0 {
                        Duration::from_millis(self.commit.fold_idle_ms)
                    } else {
                        FTS_MAX_LAG
                    };
                    match rx.recv_timeout(wait) {
                        Ok(q) => q,
                        Err(RecvTimeoutError::Timeout) => {
                            self.fold_until_done();
                            self.index_fts_until_done();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let mut n_events = first.job.events.len();
            let mut batch = vec![first];
            let deadline = Instant::now() + Duration::from_micros(self.commit.window_us);
            while n_events < self.commit.max_batch_events {
                let next = match rx.try_recv() {
                    Ok(q) => Some(q),
                    Err(_) => {
                        let now = Instant::now();
                        if now >= deadline {
                            None
                        } else {
                            rx.recv_timeout(deadline - now).ok()
                        }
                    }
                };
                let Some(q) = next else { break };
                n_events += q.job.events.len();
                batch.push(q);
            }
            self.commit_batch(batch, n_events);
            if self.tail_len >= self.commit.fold_at_events as i64
                || self.last_fold.elapsed() >= Duration::from_millis(self.commit.fold_interval_ms)
            {
                self.fold_chunk();
            }
            // Index for search at least every FTS_MAX_LAG while busy.
            if self.last_fts.elapsed() >= FTS_MAX_LAG {
                self.index_fts_chunk();
            }
            pending = rx.try_recv().ok();
        }
        if !self.broken {
            self.fold_until_done();
            self.index_fts_until_done();
        }
    }

    fn fold_until_done(&mut self) {
        while !self.broken && self.fold_chunk() == FOLD_CHUNK {}
    }

    /// Folds up to [`FOLD_CHUNK`] tail rows; returns how many.
    fn fold_chunk(&mut self) -> i64 {
        self.last_fold = Instant::now();
        // A fold only moves rows the tail already holds durably, in one
        // transaction: if it is lost, the tail still has them. So it need not
        // wait for fsync; the next acknowledging commit syncs the WAL anyway.
        let res = self
            .conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(StoreError::from)
            .and_then(|()| fold(&mut self.conn, FOLD_CHUNK));
        if let Err(e) = self.conn.pragma_update(None, "synchronous", "FULL") {
            tracing::error!(error = %e, "cannot restore synchronous=FULL; stopping the writer");
            self.broken = true;
        }
        match res {
            Ok((n, _)) => {
                if n > 0 {
                    self.metrics.observe_background(
                        Background::Fold,
                        n as u64,
                        self.last_fold.elapsed(),
                    );
                }
                // Another process may have folded too: the tail is drained
                // when a fold moves less than a full chunk.
                self.tail_len = if n < FOLD_CHUNK {
                    0
                } else {
                    (self.tail_len - n).max(0)
                };
                n
            }
            Err(e) => {
                tracing::error!(error = %e, "folding acknowledged events into the indexes failed; will retry");
                0
            }
        }
    }

    fn commit_batch(&mut self, batch: Vec<Queued>, n_events: usize) {
        let started = Instant::now();
        let mut results: Vec<Result<AppendOutcome, StoreError>> = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut staged: HashMap<(ProjectId, String), TenantState> = HashMap::new();
        let notified = batch.iter().any(|q| q.job.notify);
        let mut failed_keys: Vec<(ProjectId, String)> = Vec::new();
        let mut appended = 0i64;
        let outcome = (|| -> Result<(), StoreError> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = Time::now().as_micros();
            for Queued { job, reply } in batch {
                replies.push(reply);
                tx.execute_batch("SAVEPOINT job")?;
                let mut job_staged: HashMap<(ProjectId, String), TenantState> = HashMap::new();
                let keys: Vec<(ProjectId, String)> = job
                    .events
                    .iter()
                    .map(|e| (job.project, e.tenant.clone()))
                    .collect();
                let first_seq = self.next_seq;
                match apply_job(
                    &tx,
                    &self.tenants,
                    &staged,
                    &mut job_staged,
                    job,
                    now,
                    &mut self.next_seq,
                ) {
                    Ok(outcome) => {
                        tx.execute_batch("RELEASE job")?;
                        staged.extend(job_staged);
                        appended += self.next_seq - first_seq;
                        results.push(Ok(outcome));
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
                        // A failed job may mean the cached head is stale (another
                        // process wrote the file): reload those tenants next time.
                        failed_keys.extend(keys);
                        results.push(Err(e));
                    }
                }
            }
            {
                let mut stmt =
                    tx.prepare_cached("UPDATE tenants SET size = ?1, root = ?2 WHERE id = ?3")?;
                for state in staged.values() {
                    stmt.execute(params![
                        state.frontier.size() as i64,
                        &state.frontier.root()[..],
                        state.id
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                for key in &failed_keys {
                    self.tenants.remove(key);
                    staged.remove(key);
                }
                self.tenants.extend(staged);
                self.tail_len += appended;
                self.metrics.observe_commit(n_events, started.elapsed());
                if notified {
                    self.outbox.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; no event in it was acknowledged");
                self.tenants.clear();
                results = (0..replies.len())
                    .map(|_| Err(StoreError::Unavailable))
                    .collect();
            }
        }
        for (reply, res) in replies.into_iter().zip(results) {
            let _ = reply.send(res);
        }
    }

    fn index_fts_until_done(&mut self) {
        while !self.broken && self.index_fts_chunk() == FTS_CHUNK {}
    }

    /// Indexes up to [`FTS_CHUNK`] committed events; returns how many.
    fn index_fts_chunk(&mut self) -> i64 {
        self.last_fts = Instant::now();
        let res = (|| -> Result<i64, StoreError> {
            // The index is derived data: it is rebuilt from the watermark after
            // a crash, so this transaction need not wait for fsync.
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut n = 0i64;
            let mut last = self.fts_watermark;
            {
                let mut select = tx.prepare_cached(
                    "SELECT seq, leaf FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let mut insert =
                    tx.prepare_cached("INSERT INTO events_fts (rowid, body) VALUES (?1, ?2)")?;
                let mut rows = select.query(params![self.fts_watermark, FTS_CHUNK])?;
                while let Some(row) = rows.next()? {
                    let seq: i64 = row.get(0)?;
                    let leaf: Vec<u8> = row.get(1)?;
                    let text = crate::model::Event::from_leaf(&leaf)
                        .map(|e| e.search_text())
                        .unwrap_or_default();
                    insert.execute(params![seq, text])?;
                    last = seq;
                    n += 1;
                }
            }
            if n > 0 {
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'fts_watermark'",
                    params![last],
                )?;
                tx.commit()?;
                self.fts_watermark = last;
                self.metrics
                    .observe_background(Background::Fts, n as u64, self.last_fts.elapsed());
            }
            Ok(n)
        })();
        if let Err(e) = self.conn.pragma_update(None, "synchronous", "FULL") {
            // Acknowledging without fsync would break the durability
            // contract: stop the writer instead; appends then fail with 503.
            tracing::error!(error = %e, "cannot restore synchronous=FULL; stopping the writer");
            self.broken = true;
        }
        match res {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "full-text indexing failed; will retry");
                0
            }
        }
    }
}

fn tenant_state(
    tx: &Connection,
    committed: &HashMap<(ProjectId, String), TenantState>,
    staged: &HashMap<(ProjectId, String), TenantState>,
    key: &(ProjectId, String),
    now: i64,
) -> Result<TenantState, StoreError> {
    if let Some(s) = staged.get(key).or_else(|| committed.get(key)) {
        return Ok(s.clone());
    }
    let row: Option<(i64, i64)> = tx
        .query_row(
            "SELECT id, size FROM tenants WHERE project_id = ?1 AND name = ?2",
            params![key.0, key.1],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        Some((id, size)) => {
            let size = u64::try_from(size)
                .map_err(|_| StoreError::Corrupted("negative tree size".into()))?;
            let frontier = Frontier::load(
                size,
                &NodeReader {
                    conn: tx,
                    tenant_id: id,
                },
            )
            .map_err(|e| StoreError::Corrupted(e.to_string()))?;
            Ok(TenantState { id, frontier })
        }
        None => {
            tx.execute(
                "INSERT INTO tenants (project_id, name, size, root, created_at) VALUES (?1, ?2, 0, ?3, ?4)",
                params![key.0, key.1, &tlog::empty_root()[..], now],
            )?;
            Ok(TenantState {
                id: tx.last_insert_rowid(),
                frontier: Frontier::empty(),
            })
        }
    }
}

fn apply_job(
    tx: &Connection,
    committed: &HashMap<(ProjectId, String), TenantState>,
    staged: &HashMap<(ProjectId, String), TenantState>,
    job_staged: &mut HashMap<(ProjectId, String), TenantState>,
    job: AppendJob,
    now: i64,
    next_seq: &mut i64,
) -> Result<AppendOutcome, StoreError> {
    let AppendJob {
        project,
        events,
        idempotency,
        notify,
    } = job;
    if let Some((idem, _)) = &idempotency {
        let prior: Option<(Vec<u8>, u16, Vec<u8>, i64)> = tx
            .prepare_cached("SELECT request_hash, status, response, created_at FROM idempotency WHERE project_id = ?1 AND key = ?2")?
            .query_row(params![project, idem.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        if let Some((hash, status, body, created_at)) = prior {
            if now - created_at < IDEMPOTENCY_TTL_MICROS {
                if hash == idem.request_hash {
                    return Ok(AppendOutcome::Replayed(StoredResponse { status, body }));
                }
                return Ok(AppendOutcome::IdempotencyConflict);
            }
            tx.execute(
                "DELETE FROM idempotency WHERE project_id = ?1 AND key = ?2",
                params![project, idem.key],
            )?;
        }
    }
    let mut receipts = Vec::with_capacity(events.len());
    // Only the tail is written here; see `fold` for the indexed tables.
    let mut insert_tail = tx.prepare_cached(
        "INSERT INTO events_tail (seq, id, project_id, tenant_id, idx, occurred_at, action, actor_id, result, nodes, tags, targets)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    let mut insert_leaf =
        tx.prepare_cached("INSERT INTO events_tail_leaves (seq, leaf) VALUES (?1, ?2)")?;
    let mut nodes = Vec::with_capacity(64 * 32);
    for mut event in events {
        let key = (project, event.tenant.clone());
        if !job_staged.contains_key(&key) {
            let state = tenant_state(tx, committed, staged, &key, now)?;
            job_staged.insert(key.clone(), state);
        }
        let state = job_staged.get_mut(&key).expect("just inserted");
        event.index = state.frontier.size();
        let leaf = event.leaf();
        let leaf_hash = tlog::leaf_hash(&leaf);
        // The append completes nodes (0, i), (1, i >> 1), … in level order,
        // which is how `fold` reads them back.
        nodes.clear();
        for (_, hash) in state.frontier.append(leaf_hash) {
            nodes.extend_from_slice(&hash);
        }
        let tags = json_strings(event.tags.iter().map(String::as_str));
        let targets = json_strings(event.targets.iter().map(|t| t.id.as_str()));
        let seq = *next_seq;
        insert_tail.execute(params![
            seq,
            event.id.as_bytes(),
            project,
            state.id,
            event.index as i64,
            event.occurred_at.as_micros(),
            event.action,
            event.actor.id,
            event.result.map(crate::model::Outcome::as_str),
            nodes,
            tags,
            targets,
        ])?;
        insert_leaf.execute(params![seq, leaf])?;
        *next_seq += 1;
        if notify {
            let payload = crate::webhooks::notification_payload(event.received_at, &leaf);
            tx.prepare_cached(
                "INSERT INTO webhook_outbox (webhook_id, msg_id, payload, attempts, next_attempt_at, created_at)
                 SELECT id, ?1, ?2, 0, ?3, ?3 FROM webhooks WHERE project_id = ?4 AND deleted_at IS NULL",
            )?
            .execute(params![event.id.to_string(), payload, now, project])?;
        }
        receipts.push(Receipt {
            id: event.id,
            tenant: event.tenant,
            index: event.index,
            received_at: event.received_at,
            leaf_hash,
        });
    }
    if let Some((idem, render)) = idempotency {
        let response = render(&receipts);
        tx.execute(
            "INSERT INTO idempotency (project_id, key, request_hash, status, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![project, idem.key, &idem.request_hash[..], response.status, response.body, now],
        )?;
        return Ok(AppendOutcome::Replayed(response));
    }
    Ok(AppendOutcome::Committed(receipts))
}

/// A JSON array of `items`, or `None` when there are none.
fn json_strings<'a>(items: impl ExactSizeIterator<Item = &'a str>) -> Option<String> {
    if items.len() == 0 {
        return None;
    }
    serde_json::to_string(&items.collect::<Vec<_>>()).ok()
}

/// Columns: seq, tenant_id, idx, leaf, and optionally the stored level-0
/// node hash; without it the hash is computed from the leaf.
fn stored_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let leaf: Vec<u8> = row.get(3)?;
    let stored_hash: Option<Vec<u8>> = row.get(4).unwrap_or(None);
    let leaf_hash = stored_hash
        .and_then(|h| <Hash>::try_from(h.as_slice()).ok())
        .unwrap_or_else(|| tlog::leaf_hash(&leaf));
    Ok(StoredEvent {
        seq: row.get(0)?,
        tenant_id: row.get(1)?,
        index: row.get::<_, i64>(2)? as u64,
        leaf_hash,
        leaf,
    })
}

/// Turns search input into an FTS5 query: every term quoted, all required.
fn fts_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Most distinct actions a prefix filter is split into; beyond it the
/// prefix is answered by one range scan.
const PREFIX_SPLIT_MAX: usize = 64;

/// An action prefix matching few distinct actions is answered as one
/// exact-action key query per action (each a scan of `events_by_action` in
/// `seq` order that stops after `limit + 1` rows), merged by the listing
/// key. A single range query would read every matching row and sort them.
/// `None` when the prefix matches too many actions to split.
///
/// Only `Seq` listings are split: in a time window each exact-action query
/// would scan the window on `events_by_time` itself, so one range query
/// over the window, filtered by the prefix, does the work once.
fn prefix_keys(
    conn: &Connection,
    project: ProjectId,
    q: &EventQuery,
    prefix: &str,
) -> Result<Option<Vec<Cursor>>, StoreError> {
    let actions: Vec<String> = conn
        .prepare_cached("SELECT action FROM event_actions WHERE project_id = ?1 AND action >= ?2 AND action < ?3 LIMIT ?4")?
        .query_map(params![project, prefix, format!("{prefix}\u{10FFFF}"), PREFIX_SPLIT_MAX as i64 + 1], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if actions.len() > PREFIX_SPLIT_MAX {
        return Ok(None);
    }
    // Each action's first `limit + 1` keys include every one of its keys
    // among the merged first `limit + 1`, so the merge is exact.
    let mut keys = Vec::new();
    for action in actions {
        let exact = EventQuery {
            action: Some(action),
            action_prefix: None,
            ..q.clone()
        };
        keys.extend(page_keys(conn, project, &exact, Table::Events)?);
    }
    keys.sort_unstable_by(|a, b| b.cmp(a));
    keys.truncate(q.limit + 1);
    Ok(Some(keys))
}

/// The listing keys of up to `limit + 1` matching events, in the query's
/// order; a `limit + 1`-th key only says that more follow.
///
/// Every index holds the rowid (seq), so a filter answered from an index
/// picks and orders keys without touching the table; the rows are read
/// afterwards, for the page only. A `Seq` listing selects `seq` alone so
/// that `events_by_project`, `events_by_actor` and `events_by_action`
/// stay covering. A `Time` listing is answered by `events_by_time`
/// (`project_id, occurred_at`, then the implicit rowid): a reverse range
/// scan that yields `occurred_at DESC, seq DESC` and stops after the page.
fn page_keys(
    conn: &Connection,
    project: ProjectId,
    q: &EventQuery,
    table: Table,
) -> Result<Vec<Cursor>, StoreError> {
    let order = q.order();
    let (sql, args) = page_keys_sql(project, q, table);
    let keys = conn
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(args), |r| {
            let seq: i64 = r.get(0)?;
            let occurred_at: Option<i64> = r.get(1)?;
            Ok(Cursor::at(order, seq, occurred_at.unwrap_or_default()))
        })?
        .collect::<Result<_, _>>()?;
    Ok(keys)
}

/// The statement of [`page_keys`] and its arguments.
fn page_keys_sql(
    project: ProjectId,
    q: &EventQuery,
    table: Table,
) -> (String, Vec<rusqlite::types::Value>) {
    let order = q.order();
    let mut sql = String::from(match order {
        ListOrder::Seq => "SELECT seq, NULL FROM ",
        ListOrder::Time => "SELECT seq, occurred_at FROM ",
    });
    sql.push_str(table.name());
    sql.push_str(" WHERE project_id = ?1");
    let mut args: Vec<rusqlite::types::Value> = vec![project.into()];
    let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&clause.replace('@', &format!("?{}", args.len())));
    };
    if let Some(t) = &q.tenant {
        arg(
            &mut sql,
            " AND tenant_id = (SELECT id FROM tenants WHERE project_id = ?1 AND name = @)",
            t.clone().into(),
        );
    }
    if let Some(a) = &q.actor {
        arg(&mut sql, " AND actor_id = @", a.clone().into());
    }
    if let Some(a) = &q.action {
        arg(&mut sql, " AND action = @", a.clone().into());
    }
    if let Some(p) = &q.action_prefix {
        arg(&mut sql, " AND action >= @", p.clone().into());
        arg(&mut sql, " AND action < @", format!("{p}\u{10FFFF}").into());
    }
    if let Some(t) = &q.target {
        let clause = match table {
            Table::Events => {
                " AND seq IN (SELECT seq FROM event_targets WHERE project_id = ?1 AND target_id = @)"
            }
            Table::Tail => " AND EXISTS (SELECT 1 FROM json_each(targets) WHERE value = @)",
        };
        arg(&mut sql, clause, t.clone().into());
    }
    if let Some(t) = &q.tag {
        let clause = match table {
            Table::Events => {
                " AND seq IN (SELECT seq FROM event_tags WHERE project_id = ?1 AND tag = @)"
            }
            Table::Tail => " AND EXISTS (SELECT 1 FROM json_each(tags) WHERE value = @)",
        };
        arg(&mut sql, clause, t.clone().into());
    }
    if let Some(r) = &q.result {
        arg(&mut sql, " AND result = @", r.clone().into());
    }
    if let Some(s) = q.since {
        arg(&mut sql, " AND occurred_at >= @", s.as_micros().into());
    }
    // SQLite bounds an index range by one upper bound per column and checks
    // any other as a filter, so `until` and a time cursor's `occurred_at`
    // are folded into one exclusive bound: the scan starts at the cursor
    // instead of at `until`. Entries tied with the cursor's `occurred_at`
    // and not after it are then skipped by the `seq` test on the index
    // entry itself (SQLite does not seek on the rowid after a range), so a
    // page inside a run of equal `occurred_at` steps over the run's earlier
    // pages.
    let mut upper = q.until.map(Time::as_micros);
    if let Some(Cursor::Time { occurred_at, .. }) = q.before
        && let Some(next) = occurred_at.checked_add(1)
    {
        upper = Some(upper.map_or(next, |u| u.min(next)));
    }
    if let Some(u) = upper {
        arg(&mut sql, " AND occurred_at < @", u.into());
    }
    // The tail is never searched by text: see `run_query`.
    if !q.text_terms.is_empty() && table == Table::Events {
        arg(
            &mut sql,
            " AND seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH @)",
            fts_query(&q.text_terms).into(),
        );
    }
    if let Some(b) = q.before_index {
        arg(&mut sql, " AND idx < @", (b as i64).into());
    }
    match q.before {
        None => {}
        Some(Cursor::Seq(b)) => arg(&mut sql, " AND seq < @", b.into()),
        Some(Cursor::Time { occurred_at, seq }) => {
            arg(&mut sql, " AND (occurred_at < @", occurred_at.into());
            arg(&mut sql, " OR seq < @)", seq.into());
        }
    }
    let order_by = match order {
        ListOrder::Seq => " ORDER BY seq DESC LIMIT @",
        ListOrder::Time => " ORDER BY occurred_at DESC, seq DESC LIMIT @",
    };
    arg(&mut sql, order_by, (q.limit as i64 + 1).into());
    (sql, args)
}

#[cfg(test)]
mod query_plan;

/// A page: its keys first (see [`page_keys`]), then the rows of those keys.
/// Where a listing looks for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// Folded events, with every index.
    Events,
    /// Acknowledged events not folded yet: few, unindexed, scanned.
    Tail,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Tail => "events_tail",
        }
    }
}

/// A page: its keys first (see [`page_keys`]), then the rows of those keys.
/// Keys come from the folded events and from the tail, merged, so a listing
/// sees every acknowledged event without waiting for a fold. Full-text
/// queries skip the tail: search is derived data that trails the fold
/// (see `index_fts_chunk`).
fn run_query(conn: &Connection, project: ProjectId, q: &EventQuery) -> Result<Page, StoreError> {
    let split = match (&q.action_prefix, &q.action, q.order()) {
        (Some(prefix), None, ListOrder::Seq) => prefix_keys(conn, project, q, prefix)?,
        _ => None,
    };
    let mut keys = match split {
        Some(keys) => keys,
        None => page_keys(conn, project, q, Table::Events)?,
    };
    if q.text_terms.is_empty()
        && conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM events_tail)")?
            .query_row([], |r| r.get::<_, bool>(0))?
    {
        keys.extend(page_keys(conn, project, q, Table::Tail)?);
        keys.sort_unstable_by(|a, b| b.cmp(a));
        keys.dedup();
        keys.truncate(q.limit + 1);
    }
    let more = keys.len() > q.limit;
    keys.truncate(q.limit);
    let mut fetch =
        conn.prepare_cached("SELECT seq, tenant_id, idx, leaf FROM events WHERE seq = ?1")?;
    let mut fetch_tail = conn.prepare_cached(
        "SELECT t.seq, t.tenant_id, t.idx, l.leaf, substr(t.nodes, 1, 32) FROM events_tail t JOIN events_tail_leaves l ON l.seq = t.seq WHERE t.seq = ?1",
    )?;
    let events: Vec<StoredEvent> = keys
        .iter()
        .map(|key| {
            match fetch
                .query_row(params![key.seq()], stored_event)
                .optional()?
            {
                Some(e) => Ok(e),
                None => fetch_tail.query_row(params![key.seq()], stored_event),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Page {
        events,
        next_before: if more { keys.last().copied() } else { None },
    })
}

impl EventStore for SqliteStore {
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
                    Err(TrySendError::Full(_)) => return Err(StoreError::Overloaded),
                    Err(TrySendError::Disconnected(_)) => return Err(StoreError::Unavailable),
                }
            }
            rx.await.map_err(|_| StoreError::Unavailable)?
        })
    }

    fn get(&self, project: ProjectId, id: Uuid) -> StoreFuture<'_, Option<StoredEvent>> {
        self.read(move |c| {
            let folded = c
                .prepare_cached(
                    "SELECT seq, tenant_id, idx, leaf FROM events WHERE id = ?1 AND project_id = ?2",
                )?
                .query_row(params![id.as_bytes(), project], stored_event)
                .optional()?;
            if folded.is_some() {
                return Ok(folded);
            }
            Ok(c.prepare_cached(
                "SELECT t.seq, t.tenant_id, t.idx, l.leaf, substr(t.nodes, 1, 32) FROM events_tail t JOIN events_tail_leaves l ON l.seq = t.seq WHERE t.id = ?1 AND t.project_id = ?2",
            )?
            .query_row(params![id.as_bytes(), project], stored_event)
            .optional()?)
        })
    }

    fn query(&self, project: ProjectId, query: EventQuery) -> StoreFuture<'_, Page> {
        self.read(move |c| run_query(c, project, &query))
    }

    fn authenticate(&self, key_hash: [u8; 32]) -> StoreFuture<'_, Option<Principal>> {
        self.read(move |c| {
            let row: Option<(i64, Vec<u8>, i64, String)> = c
                .prepare_cached(
                    "SELECT k.id, k.key_hash, p.id, p.name FROM api_keys k JOIN projects p ON p.id = k.project_id
                     WHERE k.key_hash = ?1 AND k.revoked_at IS NULL",
                )?
                .query_row(params![&key_hash[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            Ok(row.and_then(|(key_id, stored, project, project_name)| {
                keys::hashes_equal(&stored, &key_hash).then_some(Principal { key_id, project, project_name })
            }))
        })
    }

    fn tree_head(&self, project: ProjectId, tenant: String) -> StoreFuture<'_, Option<TreeHead>> {
        self.read(move |c| {
            let row: Option<(i64, i64, Vec<u8>)> = c
                .prepare_cached(
                    "SELECT id, size, root FROM tenants WHERE project_id = ?1 AND name = ?2",
                )?
                .query_row(params![project, tenant], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            row.map(|(tenant_id, size, root)| TreeHead::from_stored(tenant_id, size, &root))
                .transpose()
        })
    }

    fn read_nodes(&self, tenant_id: i64, ids: Vec<NodeId>) -> StoreFuture<'_, Vec<Hash>> {
        self.read(move |c| read_nodes(c, tenant_id, &ids))
    }

    fn scan_tenant(&self, tenant_id: i64, from: u64, to: u64) -> StoreFuture<'_, Vec<StoredEvent>> {
        self.read(move |c| {
            let mut events: Vec<StoredEvent> = c
                .prepare_cached(
                    "SELECT e.seq, e.tenant_id, e.idx, e.leaf, n.hash FROM events e
                 LEFT JOIN tree_nodes n ON n.tenant_id = e.tenant_id AND n.level = 0 AND n.idx = e.idx
                 WHERE e.tenant_id = ?1 AND e.idx >= ?2 AND e.idx < ?3 ORDER BY e.idx",
                )?
                .query_map(params![tenant_id, from as i64, to as i64], stored_event)?
                .collect::<Result<_, _>>()?;
            // The newest events may not be folded yet.
            if events.len() as u64 != to.saturating_sub(from) {
                let tail: Vec<StoredEvent> = c
                    .prepare_cached(
                        "SELECT t.seq, t.tenant_id, t.idx, l.leaf, substr(t.nodes, 1, 32) FROM events_tail t
                         JOIN events_tail_leaves l ON l.seq = t.seq
                         WHERE t.tenant_id = ?1 AND t.idx >= ?2 AND t.idx < ?3",
                    )?
                    .query_map(params![tenant_id, from as i64, to as i64], stored_event)?
                    .collect::<Result<_, _>>()?;
                if !tail.is_empty() {
                    events.extend(tail);
                    events.sort_by_key(|e| e.index);
                }
            }
            Ok(events)
        })
    }

    fn create_webhook(
        &self,
        project: ProjectId,
        url: String,
        description: Option<String>,
    ) -> StoreFuture<'_, Webhook> {
        self.write_side(move |c| admin::add_webhook(c, project, &url, description.as_deref()))
    }

    fn list_webhooks(&self, project: ProjectId) -> StoreFuture<'_, Vec<Webhook>> {
        self.read(move |c| admin::list_webhooks(c, project))
    }

    fn delete_webhook(&self, project: ProjectId, id: i64) -> StoreFuture<'_, bool> {
        self.write_side(move |c| admin::remove_webhook(c, project, id))
    }

    fn due_deliveries(&self, now: Time, limit: usize) -> StoreFuture<'_, Vec<Delivery>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT o.id, w.url, w.secret, o.msg_id, o.payload, o.attempts FROM webhook_outbox o
                 JOIN webhooks w ON w.id = o.webhook_id
                 WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_attempt_at <= ?1
                 ORDER BY o.next_attempt_at LIMIT ?2",
            )?
            .query_map(params![now.as_micros(), limit as i64], |r| {
                Ok(Delivery {
                    id: r.get(0)?,
                    url: r.get(1)?,
                    secret: r.get(2)?,
                    msg_id: r.get(3)?,
                    payload: r.get(4)?,
                    attempts: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?)
        })
    }

    fn record_delivery(&self, id: i64, result: DeliveryResult) -> StoreFuture<'_, ()> {
        self.write_side(move |c| {
            let now = Time::now().as_micros();
            match result {
                DeliveryResult::Delivered => c.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, delivered_at = ?1, last_status = NULL, last_error = NULL WHERE id = ?2",
                    params![now, id],
                )?,
                DeliveryResult::Retry { at, status, error } => c.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?1, last_status = ?2, last_error = ?3 WHERE id = ?4",
                    params![at.as_micros(), status, error, id],
                )?,
                DeliveryResult::Failed { status, error } => c.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, failed_at = ?1, last_status = ?2, last_error = ?3 WHERE id = ?4",
                    params![now, status, error, id],
                )?,
            };
            Ok(())
        })
    }

    fn outbox_signal(&self) -> Arc<tokio::sync::Notify> {
        self.outbox.clone()
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        let alive = self.writer_alive.load(Ordering::SeqCst);
        Box::pin(async move {
            if !alive {
                return Err(StoreError::Unavailable);
            }
            self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
                .await
        })
    }
}

/// Offline administration of projects and API keys, used by the CLI and at
/// startup. Keys are stored as SHA-256 digests; the plaintext is returned
/// once by [`create_key`] and never stored.
pub mod admin {
    use super::*;

    /// A listed API key (never the key itself).
    #[derive(Debug, Clone)]
    pub struct KeyInfo {
        /// Key id.
        pub id: i64,
        /// Owning project.
        pub project: String,
        /// The first characters of the key, for recognition.
        pub prefix: String,
        /// Creation time.
        pub created_at: Time,
        /// Revocation time, if revoked.
        pub revoked_at: Option<Time>,
    }

    /// The id of project `name`, creating it if needed.
    ///
    /// # Errors
    /// Database failures.
    pub fn ensure_project(conn: &Connection, name: &str) -> Result<ProjectId, StoreError> {
        conn.execute(
            "INSERT INTO projects (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            params![name, Time::now().as_micros()],
        )?;
        Ok(conn.query_row(
            "SELECT id FROM projects WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )?)
    }

    /// Stores `key` (hashed) for `project`; a no-op when already stored.
    /// Returns the key id.
    ///
    /// # Errors
    /// Database failures.
    pub fn add_key(conn: &Connection, project: &str, key: &str) -> Result<i64, StoreError> {
        let project_id = ensure_project(conn, project)?;
        let hash = keys::hash_key(key);
        conn.execute(
            "INSERT INTO api_keys (project_id, key_hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key_hash) DO NOTHING",
            params![project_id, &hash[..], keys::display_prefix(key), Time::now().as_micros()],
        )?;
        Ok(conn.query_row(
            "SELECT id FROM api_keys WHERE key_hash = ?1",
            params![&hash[..]],
            |r| r.get(0),
        )?)
    }

    /// Generates, stores and returns a new key for `project`.
    ///
    /// # Errors
    /// Database failures.
    pub fn create_key(conn: &Connection, project: &str) -> Result<(i64, String), StoreError> {
        let key = keys::generate();
        let id = add_key(conn, project, &key)?;
        Ok((id, key))
    }

    /// Number of keys that are not revoked.
    ///
    /// # Errors
    /// Database failures.
    pub fn active_key_count(conn: &Connection) -> Result<i64, StoreError> {
        Ok(conn.query_row(
            "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL",
            [],
            |r| r.get(0),
        )?)
    }

    /// Every key, optionally of one project.
    ///
    /// # Errors
    /// Database failures.
    pub fn list_keys(conn: &Connection, project: Option<&str>) -> Result<Vec<KeyInfo>, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT k.id, p.name, k.prefix, k.created_at, k.revoked_at FROM api_keys k
             JOIN projects p ON p.id = k.project_id WHERE ?1 IS NULL OR p.name = ?1 ORDER BY k.id",
        )?;
        let rows = stmt.query_map(params![project], |r| {
            Ok(KeyInfo {
                id: r.get(0)?,
                project: r.get(1)?,
                prefix: r.get(2)?,
                created_at: Time::from_micros(r.get(3)?),
                revoked_at: r.get::<_, Option<i64>>(4)?.map(Time::from_micros),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes key `id`; false when no such active key exists.
    ///
    /// # Errors
    /// Database failures.
    pub fn revoke_key(conn: &Connection, id: i64) -> Result<bool, StoreError> {
        let n = conn.execute(
            "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![Time::now().as_micros(), id],
        )?;
        Ok(n == 1)
    }

    /// Creates a webhook for a project; the returned value carries its
    /// secret, which is shown only now.
    ///
    /// # Errors
    /// Database failures.
    pub fn add_webhook(
        conn: &Connection,
        project: ProjectId,
        url: &str,
        description: Option<&str>,
    ) -> Result<Webhook, StoreError> {
        let secret = crate::webhooks::generate_secret();
        let now = Time::now();
        conn.execute(
            "INSERT INTO webhooks (project_id, url, description, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![project, url, description, secret, now.as_micros()],
        )?;
        Ok(Webhook {
            id: conn.last_insert_rowid(),
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
    pub fn list_webhooks(
        conn: &Connection,
        project: ProjectId,
    ) -> Result<Vec<Webhook>, StoreError> {
        Ok(conn
            .prepare_cached("SELECT id, url, description, created_at FROM webhooks WHERE project_id = ?1 AND deleted_at IS NULL ORDER BY id")?
            .query_map(params![project], |r| {
                Ok(Webhook {
                    id: r.get(0)?,
                    url: r.get(1)?,
                    description: r.get(2)?,
                    secret: None,
                    created_at: Time::from_micros(r.get(3)?),
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    /// Deletes a webhook; its pending deliveries are dropped with it.
    ///
    /// # Errors
    /// Database failures.
    pub fn remove_webhook(
        conn: &Connection,
        project: ProjectId,
        id: i64,
    ) -> Result<bool, StoreError> {
        let now = Time::now().as_micros();
        let n = conn.execute(
            "UPDATE webhooks SET deleted_at = ?1 WHERE id = ?2 AND project_id = ?3 AND deleted_at IS NULL",
            params![now, id, project],
        )?;
        if n == 1 {
            conn.execute(
                "UPDATE webhook_outbox SET failed_at = ?1, last_error = 'webhook deleted' WHERE webhook_id = ?2 AND delivered_at IS NULL AND failed_at IS NULL",
                params![now, id],
            )?;
        }
        Ok(n == 1)
    }

    /// The id of an existing project.
    ///
    /// # Errors
    /// Database failures.
    pub fn project_id(conn: &Connection, name: &str) -> Result<Option<ProjectId>, StoreError> {
        Ok(conn
            .query_row(
                "SELECT id FROM projects WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?)
    }
}
