//! The embedded store: one SQLite file in WAL mode, and a journal beside it.
//!
//! Appends go through a single writer thread (`writer`) that drains a
//! bounded queue, assigns indexes and hashes in memory, and appends each
//! group of jobs as one frame to the acknowledgment journal (`journal`),
//! answering nobody before the frame is `fdatasync`ed. The durable frame is
//! then published to the in-memory tail (`tail`), which reads merge with
//! the database. The fold thread (`fold`) moves tail frames into `events`
//! (with their tree nodes), every secondary index and full text in large
//! transactions, so a randomly keyed index page is rewritten once per fold
//! instead of once per acknowledgment, and deletes journal segments once
//! they are folded. Reads use a small pool of read-only connections that
//! run concurrently with both. A checkpointer thread copies the WAL into
//! the database file in the background.

mod fold;
mod journal;
mod leaves;
mod node_cache;
mod tail;
mod writer;

pub(crate) use leaves::Leaves;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tlog::{Hash, NodeId};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{
    AppendJob, AppendOutcome, Delivery, DeliveryResult, EventQuery, EventStore, Page, Principal,
    ProjectId, StoreError, StoreFuture, StoredEvent, TreeHead, Webhook, schema,
};
use crate::config::CommitConfig;
use crate::keys;
use crate::metrics::Metrics;
use crate::model::Time;

use super::{Cursor, ListOrder};
use tail::{FoldPolicy, Tail, View};

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_MICROS: i64 = 24 * 3600 * 1_000_000;
/// Most events one fold moves into the database, so a fold transaction
/// stays a fraction of a second.
const FOLD_CHUNK: usize = 16_384;
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
    tail: Arc<Tail>,
    leaves: Arc<Leaves>,
    nodes: Arc<node_cache::NodeCache>,
    writer: Mutex<Option<JoinHandle<()>>>,
    folder: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    writer_alive: Arc<AtomicBool>,
    /// Set by the writer or the syncer once appends cannot be made durable.
    writer_broken: Arc<AtomicBool>,
    fold_alive: Arc<AtomicBool>,
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

/// The lock file of the database at `db`: whoever holds it owns the
/// database's journal, so one server (or offline tool) writes it at a time.
#[must_use]
pub fn lock_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", db.display()))
}

/// Takes the lock of the database at `db` without waiting; `None` when
/// another process holds it.
///
/// # Errors
/// When the lock file cannot be created.
pub fn try_lock(db: &Path) -> std::io::Result<Option<File>> {
    let path = lock_path(db);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

fn open_migrated(path: &Path) -> Result<Connection, StoreError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::Backend(Box::new(e)))?;
    }
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    schema::migrate_sqlite(&mut conn)?;
    Ok(conn)
}

/// Opens a database for offline use by the CLI or for startup work. When no
/// server holds the database's lock, it is created if needed and migrated,
/// and acknowledged events that a stopped or crashed server left in the
/// journal are folded first, so offline tools see every one of them. When a
/// server holds the lock, the schema is that server's: the database is
/// opened only if it is already at this build's version, never migrated.
///
/// # Errors
/// When the file cannot be opened, the schema is newer than this build (or,
/// beside a running server, older), or the journal cannot be folded.
pub fn open_admin(path: &Path) -> Result<Connection, StoreError> {
    let lock = try_lock(path).map_err(|e| StoreError::Backend(Box::new(e)))?;
    match lock {
        Some(_lock) => fold_journal(path),
        None => open_served(path),
    }
}

/// Opens a database that a running server holds, without migrating it: a
/// migration would change tables under the server's prepared statements
/// and its writer's assumptions.
fn open_served(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    let version = schema::sqlite_version(&conn)?;
    if version < schema::SQLITE_SCHEMA_VERSION {
        return Err(StoreError::Backend(
            format!(
                "{} is at schema version {version} and served by a running server, but this build uses version {}; stop the server and run this build's `trailkeep serve` or command first, which migrates it",
                path.display(),
                schema::SQLITE_SCHEMA_VERSION
            )
            .into(),
        ));
    }
    Ok(conn)
}

/// Opens and migrates a database and folds what its journal holds, for a
/// caller that holds the database's lock ([`try_lock`]).
///
/// # Errors
/// As [`open_admin`].
pub fn fold_journal(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = open_migrated(path)?;
    fold::recover(&mut conn, &journal::dir_for(path))?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens the store at `path`, migrating it, folding what the journal
    /// holds from an earlier run, and starting the writer, fold and
    /// checkpointer threads. The caller must hold the database's lock
    /// ([`try_lock`]) for as long as the store is open.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated, or the journal
    /// cannot be read or folded.
    pub fn open(
        path: &Path,
        commit: &CommitConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let backend = |e: std::io::Error| StoreError::Backend(Box::new(e));
        let mut conn = open_migrated(path)?;
        let journal_dir = journal::dir_for(path);
        fold::index_fts_backlog(&mut conn)?;
        fold::recover(&mut conn, &journal_dir)?;
        // The checkpointer thread owns checkpoints; the fold never blocks on one.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // When the WAL is rewound it is also truncated to this size.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.pragma_update(None, "cache_size", -32_000)?;
        let top_seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
        let top_tenant: i64 =
            conn.query_row("SELECT coalesce(max(id), 0) FROM tenants", [], |r| r.get(0))?;
        let tail = Arc::new(Tail::new());
        let (tx, rx) = std::sync::mpsc::sync_channel(commit.queue_capacity);
        let outbox = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let writer_alive = Arc::new(AtomicBool::new(true));
        let fold_alive = Arc::new(AtomicBool::new(true));

        let writer = writer::Writer::new(
            read_only(path)?,
            journal::Journal::open(&journal_dir).map_err(backend)?,
            tail.clone(),
            commit.clone(),
            metrics.clone(),
            top_seq,
            top_tenant,
        );
        let packing = fold::Packing::load(&conn)?;
        let folder = fold::Folder {
            conn,
            tail: tail.clone(),
            policy: FoldPolicy {
                at_events: commit.fold_at_events,
                interval: Duration::from_millis(commit.fold_interval_ms),
                idle: Duration::from_millis(commit.fold_idle_ms),
                chunk: FOLD_CHUNK,
                max_unfolded: commit.max_unfolded_events,
            },
            journal_dir,
            metrics,
            outbox: outbox.clone(),
            packing,
        };
        let writer_broken = writer.broken_flag();
        let alive = writer_alive.clone();
        let writer = std::thread::Builder::new()
            .name("trailkeep-writer".into())
            .spawn(move || {
                writer.run(&rx);
                alive.store(false, Ordering::SeqCst);
            })
            .map_err(backend)?;
        let (alive, fold_tail) = (fold_alive.clone(), tail.clone());
        let folder = std::thread::Builder::new()
            .name("trailkeep-fold".into())
            .spawn(move || {
                // Even a panicking fold must let the writer stop waiting for it.
                struct Gone(Arc<AtomicBool>, Arc<Tail>);
                impl Drop for Gone {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::SeqCst);
                        self.1.fold_gone();
                    }
                }
                let _gone = Gone(alive, fold_tail);
                lower_priority();
                folder.run();
            })
            .map_err(backend)?;
        let ck_path = path.to_owned();
        let ck_stop = stop.clone();
        let checkpointer = std::thread::Builder::new()
            .name("trailkeep-checkpoint".into())
            .spawn(move || {
                lower_priority();
                run_checkpointer(&ck_path, &ck_stop);
            })
            .map_err(backend)?;
        Ok(Self {
            path: path.to_owned(),
            tx: Mutex::new(Some(tx)),
            readers: Arc::new(ReadPool::new(path)),
            tail,
            leaves: Arc::default(),
            nodes: Arc::default(),
            writer: Mutex::new(Some(writer)),
            folder: Mutex::new(Some(folder)),
            checkpointer: Mutex::new(Some(checkpointer)),
            stop,
            writer_alive,
            writer_broken,
            fold_alive,
            side: Arc::default(),
            outbox,
        })
    }

    /// Opens an existing store for reading only: no writer, no fold, no
    /// checkpointer, so it is safe beside a running server (the CLI's
    /// `export` uses it). It reads the database alone, which a running
    /// server's fold keeps within about one fold of acknowledgment: the
    /// journal may hold frames that are written but not yet synced, and a
    /// checkpoint must never cover those. Appends fail with
    /// [`StoreError::Unavailable`].
    ///
    /// # Errors
    /// When the database is missing or its schema is newer than this build.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let conn = read_only(path)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != schema::SQLITE_SCHEMA_VERSION {
            return Err(StoreError::Corrupted(format!(
                "database schema version {version}; this build reads {}",
                schema::SQLITE_SCHEMA_VERSION
            )));
        }
        let tail = Arc::new(Tail::new());
        Ok(Self {
            path: path.to_owned(),
            tx: Mutex::new(None),
            readers: Arc::new(ReadPool::new(path)),
            tail,
            leaves: Arc::default(),
            nodes: Arc::default(),
            writer: Mutex::new(None),
            folder: Mutex::new(None),
            checkpointer: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(true)),
            writer_alive: Arc::new(AtomicBool::new(false)),
            writer_broken: Arc::new(AtomicBool::new(true)),
            fold_alive: Arc::new(AtomicBool::new(false)),
            side: Arc::default(),
            outbox: Arc::default(),
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting appends, lets the writer answer what is queued, folds
    /// the whole tail, and joins the background threads.
    pub fn close(&self) {
        drop(self.tx.lock().expect("lock").take());
        if let Some(h) = self.writer.lock().expect("lock").take() {
            let _ = h.join();
        }
        self.tail.close();
        if let Some(h) = self.folder.lock().expect("lock").take() {
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

    /// Runs `f` on a pooled read connection, inside one read transaction,
    /// with a view of the tail taken before that transaction began (see
    /// `tail`): `f` must use the view only above the `folded_seq` it reads.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let pool = self.readers.clone();
        let tail = self.tail.clone();
        let leaves = self.leaves.clone();
        let nodes = self.nodes.clone();
        Box::pin(async move {
            let permit = pool
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| StoreError::Backend(Box::new(e)))?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let view = tail.view();
                pool.with(|conn| {
                    f(&Reader {
                        conn,
                        view: &view,
                        leaves: &leaves,
                        nodes: &nodes,
                    })
                })
            })
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

/// What a read works with: its read transaction, the tail view taken
/// before it, and the store's leaf dictionaries.
struct Reader<'a> {
    conn: &'a Connection,
    view: &'a View,
    leaves: &'a Leaves,
    nodes: &'a node_cache::NodeCache,
}

impl Reader<'_> {
    /// A folded event with its leaf decoded.
    fn event(&self, row: EventRow) -> Result<StoredEvent, StoreError> {
        let leaf = self.leaves.decode(self.conn, row.stored_leaf)?;
        Ok(StoredEvent {
            seq: row.seq,
            tenant_id: row.tenant_id,
            index: row.index,
            leaf_hash: row.leaf_hash.unwrap_or_else(|| tlog::leaf_hash(&leaf)),
            leaf,
        })
    }
}

fn read_only(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(Duration::from_secs(10))?;
    Ok(c)
}

/// Lets the calling thread yield to request handling and the writer: the
/// fold and the checkpointer only need their share on average (the tail
/// and the WAL absorb bursts), while acknowledgments wait for the threads
/// they compete with. Best effort: a refusal changes nothing else.
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority on a thread id only
    // changes that thread's nice value.
    let res = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10)
    };
    if res != 0 {
        tracing::debug!("could not lower a background thread's priority");
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
            // fully copied at a moment the fold could restart it, so the
            // WAL would grow without bound; past the limit, a RESTART
            // checkpoint briefly holds the fold back and lets it rewind.
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

/// Reads run at most this many at a time, each on a pooled connection in a
/// blocking thread. Unbounded, a burst of reads (64 connections) started as
/// many blocking threads and connections, each with its own page cache and
/// allocator heap, which showed as 40 MiB more peak RSS under mixed load.
const READERS: usize = 8;

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl ReadPool {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(READERS)),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.idle.lock().expect("lock").pop();
        let conn = match conn {
            Some(c) => c,
            None => read_only(&self.path)?,
        };
        // One read transaction: the reads inside `f` see one snapshot, so a
        // fold cannot move events out of the tail and into the database
        // between them.
        let res = conn
            .unchecked_transaction()
            .map_err(StoreError::from)
            .and_then(|tx| f(&tx));
        let mut idle = self.idle.lock().expect("lock");
        if idle.len() < READERS {
            idle.push(conn);
        }
        res
    }
}

/// Folded tree nodes of one tenant; `None` where a node is not folded.
/// Node `(level, i)` is stored in the `nodes` of the event whose append
/// completed it, leaf `((i + 1) << level) - 1`, at `level * 32`.
fn read_db_nodes(
    conn: &Connection,
    tenant_id: i64,
    ids: &[NodeId],
) -> Result<Vec<Option<Hash>>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT substr(nodes, ?3 * 32 + 1, 32) FROM events WHERE tenant_id = ?1 AND idx = ?2",
    )?;
    ids.iter()
        .map(|id| {
            let Some(leaf) = completing_leaf(id) else {
                return Ok(None);
            };
            let blob: Option<Vec<u8>> = stmt
                .query_row(params![tenant_id, leaf, id.level], |r| r.get(0))
                .optional()?;
            Ok(blob.and_then(|b| <Hash>::try_from(b.as_slice()).ok()))
        })
        .collect()
}

/// The leaf whose append completed node `id`, if it fits an `i64`.
fn completing_leaf(id: &NodeId) -> Option<i64> {
    let leaf = id
        .index
        .checked_add(1)?
        .checked_shl(u32::from(id.level))?
        .checked_sub(1)?;
    i64::try_from(leaf).ok()
}

/// Tree nodes of one tenant: cached, folded or still in the tail. Nodes
/// read from the database are cached (see `node_cache`).
fn read_nodes(r: &Reader<'_>, tenant_id: i64, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
    let mut found: Vec<Option<Hash>> = ids.iter().map(|id| r.nodes.get(tenant_id, id)).collect();
    let missing: Vec<NodeId> = ids
        .iter()
        .zip(&found)
        .filter(|(_, h)| h.is_none())
        .map(|(id, _)| *id)
        .collect();
    let from_db = read_db_nodes(r.conn, tenant_id, &missing)?;
    debug_assert_eq!(from_db.len(), missing.len(), "one answer per missing node");
    let mut read = from_db.into_iter().zip(&missing);
    for slot in found.iter_mut().filter(|h| h.is_none()) {
        if let Some((Some(h), id)) = read.next() {
            r.nodes.put(tenant_id, id, h);
            *slot = Some(h);
        }
    }
    found
        .into_iter()
        .zip(ids)
        .map(|(h, id)| {
            h.or_else(|| r.view.node(tenant_id, id)).ok_or_else(|| {
                StoreError::Corrupted(format!("tenant {tenant_id}: tree node {id:?} is missing"))
            })
        })
        .collect()
}

/// A folded event row whose leaf is still as stored (see `leaves`).
struct EventRow {
    seq: i64,
    tenant_id: i64,
    index: u64,
    leaf_hash: Option<Hash>,
    stored_leaf: Vec<u8>,
}

/// Columns: seq, tenant_id, idx, leaf, and optionally the stored level-0
/// node hash; without it the hash is computed from the leaf.
fn event_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    let stored_hash: Option<Vec<u8>> = row.get(4).unwrap_or(None);
    Ok(EventRow {
        seq: row.get(0)?,
        tenant_id: row.get(1)?,
        index: row.get::<_, i64>(2)? as u64,
        leaf_hash: stored_hash.and_then(|h| <Hash>::try_from(h.as_slice()).ok()),
        stored_leaf: row.get(3)?,
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
        keys.extend(page_keys(conn, project, &exact)?);
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
) -> Result<Vec<Cursor>, StoreError> {
    let order = q.order();
    let (sql, args) = page_keys_sql(project, q);
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
fn page_keys_sql(project: ProjectId, q: &EventQuery) -> (String, Vec<rusqlite::types::Value>) {
    let order = q.order();
    let mut sql = String::from(match order {
        ListOrder::Seq => "SELECT seq, NULL FROM ",
        ListOrder::Time => "SELECT seq, occurred_at FROM ",
    });
    sql.push_str("events WHERE project_id = ?1");
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
        arg(
            &mut sql,
            " AND seq IN (SELECT seq FROM event_targets WHERE project_id = ?1 AND target_id = @)",
            t.clone().into(),
        );
    }
    if let Some(t) = &q.tag {
        arg(
            &mut sql,
            " AND seq IN (SELECT seq FROM event_tags WHERE project_id = ?1 AND tag = @)",
            t.clone().into(),
        );
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
    if !q.text_terms.is_empty() {
        arg(
            &mut sql,
            " AND seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH @)",
            fts_query(&q.text_terms).into(),
        );
    }
    if let Some(b) = q.before_index {
        arg(
            &mut sql,
            " AND idx < @",
            i64::try_from(b).unwrap_or(i64::MAX).into(),
        );
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
/// Keys come from the folded events and from the tail above what this
/// snapshot has folded, merged, so a listing sees every acknowledged event
/// without waiting for a fold. Full-text queries skip the tail: search
/// trails acknowledgment by one fold (`commit.fold_interval_ms`).
fn run_query(r: &Reader<'_>, project: ProjectId, q: &EventQuery) -> Result<Page, StoreError> {
    let (conn, view) = (r.conn, r.view);
    let folded = fold::folded_seq(conn)?;
    let split = match (&q.action_prefix, &q.action, q.order()) {
        (Some(prefix), None, ListOrder::Seq) => prefix_keys(conn, project, q, prefix)?,
        _ => None,
    };
    let mut keys = match split {
        Some(keys) => keys,
        None => page_keys(conn, project, q)?,
    };
    if q.text_terms.is_empty() {
        let tail = view.page_keys(project, q, folded);
        if !tail.is_empty() {
            keys.extend(tail);
            keys.sort_unstable_by(|a, b| b.cmp(a));
            keys.truncate(q.limit + 1);
        }
    }
    let more = keys.len() > q.limit;
    keys.truncate(q.limit);
    let mut fetch =
        conn.prepare_cached("SELECT seq, tenant_id, idx, leaf FROM events WHERE seq = ?1")?;
    let events: Vec<StoredEvent> = keys
        .iter()
        .map(
            |key| match view.by_seq(key.seq()).filter(|e| e.seq > folded) {
                Some(e) => Ok(e.stored()),
                None => r.event(fetch.query_row(params![key.seq()], event_row)?),
            },
        )
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
        self.read(move |r| {
            let folded = r
                .conn
                .prepare_cached(
                    "SELECT seq, tenant_id, idx, leaf FROM events WHERE id = ?1 AND project_id = ?2",
                )?
                .query_row(params![id.as_bytes(), project], event_row)
                .optional()?;
            match folded {
                Some(row) => r.event(row).map(Some),
                None => Ok(r.view.by_id(project, id).map(journal::TailEvent::stored)),
            }
        })
    }

    fn query(&self, project: ProjectId, query: EventQuery) -> StoreFuture<'_, Page> {
        self.read(move |r| run_query(r, project, &query))
    }

    fn authenticate(&self, key_hash: [u8; 32]) -> StoreFuture<'_, Option<Principal>> {
        self.read(move |r| {
            let row: Option<(i64, Vec<u8>, i64, String)> = r.conn
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
        self.read(move |r| {
            let row: Option<(i64, i64, Vec<u8>)> = r
                .conn
                .prepare_cached(
                    "SELECT id, size, root FROM tenants WHERE project_id = ?1 AND name = ?2",
                )?
                .query_row(params![project, tenant], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let folded = row
                .map(|(tenant_id, size, root)| TreeHead::from_stored(tenant_id, size, &root))
                .transpose()?;
            // The tail's head is newer whenever the tenant has events in it.
            Ok(match (folded, r.view.head(project, &tenant)) {
                (Some(f), Some(t)) if f.size >= t.size => Some(f),
                (f, t) => t.or(f),
            })
        })
    }

    fn read_nodes(&self, tenant_id: i64, ids: Vec<NodeId>) -> StoreFuture<'_, Vec<Hash>> {
        self.read(move |r| read_nodes(r, tenant_id, &ids))
    }

    fn scan_tenant(&self, tenant_id: i64, from: u64, to: u64) -> StoreFuture<'_, Vec<StoredEvent>> {
        self.read(move |r| {
            let rows: Vec<EventRow> = r
                .conn
                .prepare_cached(
                    "SELECT seq, tenant_id, idx, leaf, substr(nodes, 1, 32) FROM events
                     WHERE tenant_id = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY idx",
                )?
                .query_map(params![tenant_id, from as i64, to as i64], event_row)?
                .collect::<Result<_, _>>()?;
            let mut events: Vec<StoredEvent> = rows
                .into_iter()
                .map(|row| r.event(row))
                .collect::<Result<_, _>>()?;
            // The newest events may not be folded yet.
            if events.len() as u64 != to.saturating_sub(from) {
                let folded = fold::folded_seq(r.conn)?;
                let before = events.len();
                events.extend(
                    r.view
                        .events_after(folded)
                        .filter(|e| e.tenant_id == tenant_id && (from..to).contains(&e.index))
                        .map(journal::TailEvent::stored),
                );
                if events.len() != before {
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
        self.read(move |r| admin::list_webhooks(r.conn, project))
    }

    fn delete_webhook(&self, project: ProjectId, id: i64) -> StoreFuture<'_, bool> {
        self.write_side(move |c| admin::remove_webhook(c, project, id))
    }

    fn due_deliveries(&self, now: Time, limit: usize) -> StoreFuture<'_, Vec<Delivery>> {
        self.read(move |r| {
            Ok(r.conn.prepare_cached(
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
        let alive = self.writer_alive.load(Ordering::SeqCst)
            && !self.writer_broken.load(Ordering::SeqCst)
            && self.fold_alive.load(Ordering::SeqCst)
            && !self.tail.fold_failing();
        Box::pin(async move {
            if !alive {
                return Err(StoreError::Unavailable);
            }
            self.read(|r| Ok(r.conn.query_row("SELECT 1", [], |_| Ok(()))?))
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
