//! The fold: moves acknowledged group commits from the tail into the
//! database (events with their tree nodes, every secondary index, full text, tenant
//! heads, idempotency records and webhook notifications) in large
//! transactions, so each randomly keyed index page is rewritten once per
//! fold instead of once per acknowledgment.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};

use super::super::StoreError;
use super::journal::{self, Frame};
use super::leaves::{Packer, TRAIN_AFTER};
use super::tail::{FoldPolicy, FoldWork, Published, Tail};
use crate::metrics::{Background, Metrics};
use crate::model::Time;

/// How long the fold waits after a failed transaction before it retries.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The highest `seq` folded into the database (0 when none ever was).
pub(super) fn folded_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT value FROM meta WHERE key = 'folded_seq'", [], |r| {
            r.get(0)
        })?,
    )
}

/// The fold's leaf compression: the packer of the store's dictionary, or
/// when to try training one.
pub(super) struct Packing {
    packer: Option<Packer>,
    next_train_at: i64,
}

impl Packing {
    /// The state of the database behind `conn`.
    pub(super) fn load(conn: &Connection) -> Result<Self, StoreError> {
        Ok(Self {
            packer: Packer::load(conn)?,
            next_train_at: TRAIN_AFTER,
        })
    }
}

/// Writes `frames` (oldest first) into the database in one transaction and
/// returns the highest `seq` they hold. Leaves are compressed once the
/// store has a dictionary (see `leaves`); the first fold past
/// `TRAIN_AFTER` events trains it. Full-text time is added to `fts_time`.
///
/// The transaction runs at the connection's `synchronous = FULL`, so when
/// this returns the frames are durable in the database and their journal
/// segments may go.
pub(super) fn fold_frames<'f>(
    conn: &mut Connection,
    frames: impl Iterator<Item = &'f Frame> + Clone,
    packing: &mut Packing,
    fts_time: &mut Duration,
) -> Result<i64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut hi = 0;
    // A dictionary trained here packs this fold's rows, which commit
    // together with it; later folds use it only once that commit succeeded.
    let mut trained = None;
    if packing.packer.is_none() && folded_seq(&tx)? >= packing.next_train_at {
        // Training is an optimization: its failure must not fail the fold.
        trained = Packer::train(&tx, Time::now().as_micros()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "training the leaf dictionary failed");
            None
        });
        if trained.is_none() {
            packing.next_train_at = folded_seq(&tx)? + 4 * TRAIN_AFTER;
        }
    }
    {
        let mut packer = trained.as_mut().or(packing.packer.as_mut());
        let mut packed: Vec<u8> = Vec::new();
        let mut tenant = tx.prepare_cached(
            "INSERT INTO tenants (id, project_id, name, size, root, created_at) VALUES (?1, ?2, ?3, 0, ?4, ?5)",
        )?;
        for t in frames.clone().flat_map(|f| &f.tenants) {
            tenant.execute(params![
                t.id,
                t.project,
                &*t.name,
                &tlog::empty_root()[..],
                t.created_at
            ])?;
        }
        let mut event = tx.prepare_cached(
            "INSERT INTO events (seq, id, project_id, tenant_id, idx, occurred_at, action, actor_id, result, leaf, nodes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        let mut tag = tx.prepare_cached(
            "INSERT OR IGNORE INTO event_tags (project_id, tag, seq) VALUES (?1, ?2, ?3)",
        )?;
        let mut target = tx.prepare_cached(
            "INSERT OR IGNORE INTO event_targets (project_id, target_id, seq) VALUES (?1, ?2, ?3)",
        )?;
        let mut action = tx.prepare_cached(
            "INSERT OR IGNORE INTO event_actions (project_id, action) VALUES (?1, ?2)",
        )?;
        let mut outbox = tx.prepare_cached(
            "INSERT INTO webhook_outbox (webhook_id, msg_id, payload, attempts, next_attempt_at, created_at)
             SELECT id, ?1, ?2, 0, ?3, ?3 FROM webhooks WHERE project_id = ?4 AND deleted_at IS NULL",
        )?;
        let mut actions: HashSet<(i64, &str)> = HashSet::new();
        let mut nodes: Vec<u8> = Vec::with_capacity(64 * 32);
        let now = Time::now().as_micros();
        for e in frames.clone().flat_map(|f| &f.events) {
            nodes.clear();
            for hash in &e.nodes {
                nodes.extend_from_slice(hash);
            }
            let leaf: &[u8] = match packer.as_mut() {
                Some(p) => {
                    p.pack(&e.leaf, &mut packed)?;
                    &packed
                }
                None => &e.leaf,
            };
            event.execute(params![
                e.seq,
                e.id.as_bytes(),
                e.project,
                e.tenant_id,
                e.index as i64,
                e.occurred_at,
                e.action,
                e.actor_id,
                e.result.map(crate::model::Outcome::as_str),
                leaf,
                nodes,
            ])?;
            for t in &e.tags {
                tag.execute(params![e.project, t, e.seq])?;
            }
            for t in &e.targets {
                target.execute(params![e.project, t, e.seq])?;
            }
            if actions.insert((e.project, &e.action)) {
                action.execute(params![e.project, e.action])?;
            }
            if e.notify {
                let payload = crate::webhooks::notification_payload(
                    Time::from_micros(e.received_at),
                    &e.leaf,
                );
                outbox.execute(params![e.id.to_string(), payload, now, e.project])?;
            }
            hi = e.seq;
        }
        let mut idem = tx.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (project_id, key, request_hash, status, response, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for i in frames.clone().flat_map(|f| &f.idempotency) {
            idem.execute(params![
                i.project,
                i.key,
                &i.request_hash[..],
                i.status,
                i.body,
                i.created_at
            ])?;
        }
        // Later frames hold later heads, so the last update of a tenant wins.
        let mut head =
            tx.prepare_cached("UPDATE tenants SET size = ?1, root = ?2 WHERE id = ?3")?;
        for h in frames.clone().flat_map(|f| &f.heads) {
            head.execute(params![h.size as i64, &h.root[..], h.tenant_id])?;
        }
        let started = Instant::now();
        let mut fts = tx.prepare_cached("INSERT INTO events_fts (rowid, body) VALUES (?1, ?2)")?;
        for e in frames.flat_map(|f| &f.events) {
            fts.execute(params![e.seq, e.search_text])?;
        }
        *fts_time += started.elapsed();
    }
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key IN ('folded_seq', 'fts_watermark')",
        params![hi],
    )?;
    tx.commit()?;
    if trained.is_some() {
        packing.packer = trained;
    }
    Ok(hi)
}

/// Folds every frame the journal holds above what the database has folded,
/// then deletes the journal. Only whoever holds the data-directory lock may
/// call this: the journal belongs to the one writer.
pub(super) fn recover(conn: &mut Connection, dir: &std::path::Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Backend(Box::new(e));
    if !dir.exists() {
        return Ok(());
    }
    let frames = journal::read_frames(dir, folded_seq(conn)?)?;
    if !frames.is_empty() {
        let n: usize = frames.iter().map(|f| f.events.len()).sum();
        tracing::info!(
            events = n,
            "folding acknowledged events left in the journal"
        );
        let mut fts = Duration::ZERO;
        let mut packing = Packing::load(conn)?;
        for chunk in frames.chunks(256) {
            fold_frames(conn, chunk.iter(), &mut packing, &mut fts)?;
        }
    }
    journal::remove_all(dir).map_err(io)
}

/// The fold thread's state.
pub(super) struct Folder {
    pub(super) conn: Connection,
    pub(super) tail: Arc<Tail>,
    pub(super) policy: FoldPolicy,
    pub(super) journal_dir: PathBuf,
    pub(super) metrics: Arc<Metrics>,
    pub(super) outbox: Arc<tokio::sync::Notify>,
    pub(super) packing: Packing,
}

impl Folder {
    /// Folds until the store closes and the tail is empty; then deletes the
    /// journal, whose every frame is in the database.
    pub(super) fn run(mut self) {
        let mut clean = true;
        while let FoldWork::Fold(frames) = self.tail.next_fold(&self.policy) {
            clean = self.fold(&frames);
            if !clean {
                if self.tail.is_closing() {
                    // The journal still holds the frames; the next start folds them.
                    break;
                }
                std::thread::sleep(RETRY_AFTER);
            }
        }
        if clean && let Err(e) = journal::remove_all(&self.journal_dir) {
            tracing::warn!(error = %e, "could not delete the folded journal");
        }
    }

    /// Folds `frames`; false when the transaction failed (the frames stay
    /// in the tail and the journal, and are tried again).
    fn fold(&mut self, frames: &[Arc<Published>]) -> bool {
        let started = Instant::now();
        let mut fts = Duration::ZERO;
        let notify = frames
            .iter()
            .any(|p| p.frame.events.iter().any(|e| e.notify));
        match fold_frames(
            &mut self.conn,
            frames.iter().map(|p| &p.frame),
            &mut self.packing,
            &mut fts,
        ) {
            Ok(hi) => {
                self.tail.folded(Some(hi));
                let n: usize = frames.iter().map(|p| p.frame.events.len()).sum();
                self.metrics.observe_background(
                    Background::Fold,
                    n as u64,
                    started.elapsed() - fts,
                );
                self.metrics
                    .observe_background(Background::Fts, n as u64, fts);
                if notify {
                    self.outbox.notify_one();
                }
                if let Err(e) = journal::remove_folded(&self.journal_dir, hi) {
                    tracing::warn!(error = %e, "could not delete folded journal segments");
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "folding acknowledged events into the database failed; will retry");
                self.tail.folded(None);
                false
            }
        }
    }
}

/// Indexes for full text the folded events above `fts_watermark`, which a
/// database written by an older build can hold.
pub(super) fn index_fts_backlog(conn: &mut Connection) -> Result<(), StoreError> {
    let leaves = super::Leaves::default();
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let watermark: i64 = tx.query_row(
            "SELECT value FROM meta WHERE key = 'fts_watermark'",
            [],
            |r| r.get(0),
        )?;
        let mut last = watermark;
        {
            let mut select =
                tx.prepare("SELECT seq, leaf FROM events WHERE seq > ?1 ORDER BY seq LIMIT 4096")?;
            let mut insert = tx.prepare("INSERT INTO events_fts (rowid, body) VALUES (?1, ?2)")?;
            let mut rows = select.query(params![watermark])?;
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                let leaf = leaves.decode(&tx, row.get(1)?)?;
                let text = crate::model::Event::from_leaf(&leaf)
                    .map(|e| e.search_text())
                    .unwrap_or_default();
                insert.execute(params![seq, text])?;
                last = seq;
            }
        }
        if last == watermark {
            return Ok(());
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'fts_watermark'",
            params![last],
        )?;
        tx.commit()?;
    }
}
