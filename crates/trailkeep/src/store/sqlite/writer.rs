//! The writer: the one thread that assigns `seq`s and leaf indexes. It
//! drains the append queue, sequences a group of jobs in memory and writes
//! the group as one journal frame. Its syncer thread `fdatasync`s written
//! frames, publishes them to the tail and only then answers their jobs, in
//! write order, while the writer already sequences the next group: a slow
//! sync delays answers but not sequencing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use tlog::{Frontier, Hash, HashReader, NodeId, TlogError};

use super::super::{AppendJob, AppendOutcome, ProjectId, Receipt, StoreError, StoredResponse};
use super::journal::{Frame, Head, IdemRecord, Journal, NewTenant, TailEvent, Written};
use super::tail::{Room, Tail, View};
use super::{IDEMPOTENCY_TTL_MICROS, Queued, Reply, read_db_nodes};

/// Groups written but not yet synced that the writer may run ahead by.
const IN_FLIGHT: usize = 64;
/// How long a group waits for room (for the journal's sync of the groups
/// before it and for the fold) before it is refused with 503: long enough
/// for any sync and fold that succeed, short enough that a failing fold
/// cannot hold requests (or a shutdown) for good, nor a stuck sync new
/// requests.
const FOLD_STALL: Duration = Duration::from_secs(10);
use crate::config::CommitConfig;
use crate::metrics::Metrics;
use crate::model::Time;

/// A tenant's committed state.
#[derive(Clone)]
struct TenantState {
    id: i64,
    name: Arc<str>,
    frontier: Frontier,
}

/// The sequencer thread's state.
pub(super) struct Writer {
    /// A read-only connection: tenant heads, tree nodes and idempotency
    /// records that are already folded.
    pub(super) conn: Connection,
    pub(super) journal: Journal,
    pub(super) tail: Arc<Tail>,
    /// Committed state of every tenant this writer has touched, keyed by
    /// (project, tenant name). Only the writer appends, and every tenant
    /// with events in the tail is in here (the tail starts empty), so a
    /// tenant missing here is complete in the database.
    tenants: HashMap<(ProjectId, String), TenantState>,
    pub(super) commit: CommitConfig,
    pub(super) metrics: Arc<Metrics>,
    /// The `seq` of the next appended event; seqs only grow.
    next_seq: i64,
    /// The id of the next tenant created.
    next_tenant_id: i64,
    /// Set once the journal can no longer promise durable appends; shared
    /// with the syncer, whose failed sync sets it too.
    broken: Arc<AtomicBool>,
    /// Idempotency records of groups written but maybe not published yet,
    /// with the last `seq` of their group; published ones are in the tail.
    in_flight: VecDeque<(i64, Vec<IdemRecord>)>,
    /// The last `seq` the syncer has published.
    published: Arc<AtomicI64>,
}

/// A job's reply, its result, and whether that result needs its group's
/// frame to be durable.
type Answer = (Reply, Result<AppendOutcome, StoreError>, bool);

/// One written group on its way to the syncer.
struct Pending {
    frame: Option<Frame>,
    written: Option<Written>,
    answers: Vec<Answer>,
    n_events: usize,
    started: Instant,
}

/// What one job adds to the frame, kept apart until the job succeeds.
#[derive(Default)]
struct JobWrites {
    tenants: Vec<NewTenant>,
    events: Vec<TailEvent>,
    idempotency: Option<IdemRecord>,
    staged: HashMap<(ProjectId, String), TenantState>,
}

impl Writer {
    /// A writer that continues after `top_seq` and `top_tenant_id`.
    pub(super) fn new(
        conn: Connection,
        journal: Journal,
        tail: Arc<Tail>,
        commit: CommitConfig,
        metrics: Arc<Metrics>,
        top_seq: i64,
        top_tenant_id: i64,
    ) -> Self {
        Self {
            conn,
            journal,
            tail,
            tenants: HashMap::new(),
            commit,
            metrics,
            next_seq: top_seq + 1,
            next_tenant_id: top_tenant_id + 1,
            broken: Arc::default(),
            in_flight: VecDeque::new(),
            published: Arc::new(AtomicI64::new(top_seq)),
        }
    }

    /// Set once appends can no longer be made durable.
    pub(super) fn broken_flag(&self) -> Arc<AtomicBool> {
        self.broken.clone()
    }

    /// Serves the queue until every sender is gone or the journal breaks.
    pub(super) fn run(mut self, rx: &Receiver<Queued>) {
        let (to_syncer, from_writer) = std::sync::mpsc::sync_channel::<Pending>(IN_FLIGHT);
        let syncer = Syncer {
            tail: self.tail.clone(),
            metrics: self.metrics.clone(),
            broken: self.broken.clone(),
            published: self.published.clone(),
        };
        let syncer = match std::thread::Builder::new()
            .name("trailkeep-sync".into())
            .spawn(move || syncer.run(&from_writer))
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the journal syncer; refusing appends");
                self.broken.store(true, Ordering::SeqCst);
                refuse(rx.try_iter());
                return;
            }
        };
        // Jobs a group left for the next one when its frame was full.
        let mut carried: VecDeque<Queued> = VecDeque::new();
        while !self.broken.load(Ordering::SeqCst) {
            let first = match carried.pop_front() {
                Some(q) => q,
                None => match rx.recv() {
                    Ok(q) => q,
                    Err(_) => break,
                },
            };
            let mut n_events = first.job.events.len();
            let mut batch = vec![first];
            while n_events < self.commit.max_batch_events
                && let Some(q) = carried.pop_front()
            {
                n_events += q.job.events.len();
                batch.push(q);
            }
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
            match self
                .tail
                .wait_for_room(self.commit.max_unfolded_events, FOLD_STALL)
            {
                // A failed sync released the wait: this group must not be written.
                Room::Ready if self.broken.load(Ordering::SeqCst) => {
                    refuse(batch);
                    break;
                }
                Room::Ready => {}
                Room::Stalled => {
                    // Nothing of this group is written; the clients may retry.
                    tracing::warn!(
                        "the fold or the journal's sync makes no room for new events; refusing this group"
                    );
                    refuse(batch);
                    continue;
                }
                Room::Gone => {
                    tracing::error!("the fold has stopped; refusing appends");
                    self.broken.store(true, Ordering::SeqCst);
                    refuse(batch);
                    break;
                }
            }
            match self.sequence_batch(batch, n_events, &mut carried) {
                Some(pending) => {
                    if let Some(f) = &pending.frame {
                        self.tail.wrote(f.events.len());
                    }
                    if to_syncer.send(pending).is_err() {
                        break;
                    }
                }
                None => break,
            }
        }
        drop(to_syncer);
        let _ = syncer.join();
        refuse(carried);
        refuse(rx.try_iter());
    }

    /// Sequences a group and writes its frame; `None` when the write failed
    /// (every job of the group has been answered then, and the writer stops).
    fn sequence_batch(
        &mut self,
        batch: Vec<Queued>,
        mut n_events: usize,
        carried: &mut VecDeque<Queued>,
    ) -> Option<Pending> {
        let started = Instant::now();
        // Read what is published before taking the view, so an in-flight
        // record dropped below is in the view (or already folded).
        let published = self.published.load(Ordering::SeqCst);
        let view = self.tail.view();
        while self
            .in_flight
            .front()
            .is_some_and(|(hi, _)| *hi <= published)
        {
            self.in_flight.pop_front();
        }
        let now = Time::now().as_micros();
        let mut frame = Frame::default();
        let mut staged: HashMap<(ProjectId, String), TenantState> = HashMap::new();
        let mut answers = Vec::with_capacity(batch.len());
        let mut leaf_bytes = 0usize;
        let mut jobs = batch.into_iter();
        while let Some(Queued { job, reply }) = jobs.next() {
            // A frame stays far below the 1 GiB a reader accepts: it is full
            // at `commit.max_frame_bytes` (at most 256 MiB) of leaves, and one
            // job is at most `limits.max_body_bytes` (as much) of request.
            if leaf_bytes >= self.commit.max_frame_bytes {
                // The frame is full: the rest waits for the next group, in order.
                let rest: Vec<Queued> =
                    std::iter::once(Queued { job, reply }).chain(jobs).collect();
                n_events -= rest.iter().map(|q| q.job.events.len()).sum::<usize>();
                for q in rest.into_iter().rev() {
                    carried.push_front(q);
                }
                break;
            }
            let first_seq = self.next_seq;
            let first_tenant = self.next_tenant_id;
            let mut writes = JobWrites::default();
            match self.apply_job(&view, &staged, &frame, job, now, &mut writes) {
                Ok(outcome) => {
                    // A replay may return a record that is still in flight:
                    // like a new append, it is answered only once durable.
                    // A conflict may be with a record still in flight too.
                    let wrote = !writes.events.is_empty()
                        || matches!(
                            outcome,
                            AppendOutcome::Replayed(_) | AppendOutcome::IdempotencyConflict
                        );
                    leaf_bytes += writes.events.iter().map(|e| e.leaf.len()).sum::<usize>();
                    frame.tenants.append(&mut writes.tenants);
                    frame.events.append(&mut writes.events);
                    frame.idempotency.extend(writes.idempotency);
                    staged.extend(writes.staged);
                    answers.push((reply, Ok(outcome), wrote));
                }
                Err(e) => {
                    self.next_seq = first_seq;
                    self.next_tenant_id = first_tenant;
                    answers.push((reply, Err(e), false));
                }
            }
        }
        if frame.events.is_empty() {
            return Some(Pending {
                frame: None,
                written: None,
                answers,
                n_events: 0,
                started,
            });
        }
        frame.heads = staged
            .iter()
            .map(|((project, _), s)| Head {
                tenant_id: s.id,
                project: *project,
                name: s.name.clone(),
                size: s.frontier.size(),
                root: s.frontier.root(),
            })
            .collect();
        let first_seq = frame.events[0].seq;
        let written = match self.journal.write(first_seq, &frame.encode()) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "writing to the journal failed; no event of this group was acknowledged and the writer stops");
                self.broken.store(true, Ordering::SeqCst);
                answer_unsynced(answers);
                return None;
            }
        };
        // Later groups build on this one. Should its sync fail, the writer
        // stops and none of them is acknowledged either.
        self.tenants.extend(staged);
        if !frame.idempotency.is_empty() {
            self.in_flight
                .push_back((frame.last_seq(), frame.idempotency.clone()));
        }
        Some(Pending {
            frame: Some(frame),
            written: Some(written),
            answers,
            n_events,
            started,
        })
    }

    /// Sequences one job into `writes`; nothing of it reaches the frame
    /// unless it succeeds.
    fn apply_job(
        &mut self,
        view: &View,
        staged: &HashMap<(ProjectId, String), TenantState>,
        frame: &Frame,
        job: AppendJob,
        now: i64,
        writes: &mut JobWrites,
    ) -> Result<AppendOutcome, StoreError> {
        let AppendJob {
            project,
            events,
            idempotency,
            notify,
        } = job;
        if let Some((idem, _)) = &idempotency
            && let Some(prior) = self.prior_response(view, frame, project, &idem.key)?
            && now - prior.created_at < IDEMPOTENCY_TTL_MICROS
        {
            if prior.request_hash == idem.request_hash {
                return Ok(AppendOutcome::Replayed(StoredResponse {
                    status: prior.status,
                    body: prior.body,
                }));
            }
            return Ok(AppendOutcome::IdempotencyConflict);
        }
        let mut receipts = Vec::with_capacity(events.len());
        for mut event in events {
            let key = (project, event.tenant.clone());
            if !writes.staged.contains_key(&key) {
                let state = match staged.get(&key).or_else(|| self.tenants.get(&key)) {
                    Some(s) => s.clone(),
                    None => self.load_tenant(project, &event.tenant, now, writes)?,
                };
                writes.staged.insert(key.clone(), state);
            }
            let state = writes.staged.get_mut(&key).expect("just inserted");
            event.index = state.frontier.size();
            let leaf = event.leaf();
            let leaf_hash = tlog::leaf_hash(&leaf);
            // The append completes nodes (0, i), (1, i >> 1), … in level order.
            let nodes: Vec<Hash> = state
                .frontier
                .append(leaf_hash)
                .into_iter()
                .map(|(_, h)| h)
                .collect();
            let seq = self.next_seq;
            self.next_seq += 1;
            receipts.push(Receipt::of(&event, leaf_hash));
            writes.events.push(TailEvent::new(
                seq,
                project,
                state.id,
                state.name.clone(),
                notify,
                &event,
                leaf,
                nodes,
            ));
        }
        if let Some((idem, render)) = idempotency {
            let response = render(&receipts);
            writes.idempotency = Some(IdemRecord {
                project,
                key: idem.key,
                request_hash: idem.request_hash,
                status: response.status,
                body: response.body.clone(),
                created_at: now,
            });
            return Ok(AppendOutcome::Replayed(response));
        }
        Ok(AppendOutcome::Committed(receipts))
    }

    /// The stored response of `(project, key)`: this frame's jobs first,
    /// then the tail, then the database.
    fn prior_response(
        &self,
        view: &View,
        frame: &Frame,
        project: ProjectId,
        key: &str,
    ) -> Result<Option<IdemRecord>, StoreError> {
        let matches = |i: &&IdemRecord| i.project == project && i.key == key;
        let pending = frame
            .idempotency
            .iter()
            .rev()
            .find(matches)
            .or_else(|| {
                self.in_flight
                    .iter()
                    .rev()
                    .find_map(|(_, records)| records.iter().rev().find(matches))
            })
            .or_else(|| view.idempotency(project, key));
        if let Some(i) = pending {
            return Ok(Some(i.clone()));
        }
        Ok(self
            .conn
            .prepare_cached(
                "SELECT request_hash, status, response, created_at FROM idempotency WHERE project_id = ?1 AND key = ?2",
            )?
            .query_row(params![project, key], |r| {
                let hash: Vec<u8> = r.get(0)?;
                Ok(IdemRecord {
                    project,
                    key: key.to_owned(),
                    // A stored digest of the wrong length matches no request.
                    request_hash: hash.try_into().unwrap_or([0; 32]),
                    status: r.get(1)?,
                    body: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })
            .optional()?)
    }

    /// A tenant this writer has not touched: its folded state, or a new
    /// tenant recorded in `writes`.
    fn load_tenant(
        &mut self,
        project: ProjectId,
        name: &str,
        now: i64,
        writes: &mut JobWrites,
    ) -> Result<TenantState, StoreError> {
        let row: Option<(i64, i64)> = self
            .conn
            .prepare_cached("SELECT id, size FROM tenants WHERE project_id = ?1 AND name = ?2")?
            .query_row(params![project, name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let name: Arc<str> = name.into();
        match row {
            Some((id, size)) => {
                let size = u64::try_from(size)
                    .map_err(|_| StoreError::Corrupted("negative tree size".into()))?;
                let frontier = Frontier::load(
                    size,
                    &DbNodes {
                        conn: &self.conn,
                        tenant_id: id,
                    },
                )
                .map_err(|e| StoreError::Corrupted(e.to_string()))?;
                Ok(TenantState { id, name, frontier })
            }
            None => {
                let id = self.next_tenant_id;
                self.next_tenant_id += 1;
                writes.tenants.push(NewTenant {
                    id,
                    project,
                    name: name.clone(),
                    created_at: now,
                });
                Ok(TenantState {
                    id,
                    name,
                    frontier: Frontier::empty(),
                })
            }
        }
    }
}

/// Answers jobs that will not be appended with 503.
fn refuse(jobs: impl IntoIterator<Item = Queued>) {
    for q in jobs {
        let _ = q.reply.send(Err(StoreError::Unavailable));
    }
}

/// Answers a group whose frame did not become durable: 503 for every job
/// whose answer depends on it, its own result for every other.
fn answer_unsynced(answers: Vec<Answer>) {
    for (reply, res, wrote) in answers {
        let _ = reply.send(if wrote {
            Err(StoreError::Unavailable)
        } else {
            res
        });
    }
}

/// The syncer thread: makes written groups durable, publishes them and
/// answers their jobs, in the order they were written.
struct Syncer {
    tail: Arc<Tail>,
    metrics: Arc<Metrics>,
    broken: Arc<AtomicBool>,
    published: Arc<AtomicI64>,
}

impl Syncer {
    fn run(self, rx: &Receiver<Pending>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter());
            // One sync of a segment covers every frame written to it before
            // the sync; the segments the group wrote to are synced in order.
            let mut files: Vec<&Written> = Vec::new();
            for w in group.iter().filter_map(|p| p.written.as_ref()) {
                if files.last().is_none_or(|last| !last.same_file(w)) {
                    files.push(w);
                }
            }
            let synced = !self.broken.load(Ordering::SeqCst)
                && files.iter().all(|w| match w.sync() {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "syncing the journal failed; no event of these groups was acknowledged and the writer stops");
                        self.broken.store(true, Ordering::SeqCst);
                        false
                    }
                });
            for p in group {
                self.finish(p, synced);
            }
        }
    }

    fn finish(&self, p: Pending, synced: bool) {
        if !synced {
            if let Some(frame) = &p.frame {
                // Never published: release a writer waiting on its events.
                self.tail.unwrote(frame.events.len());
            }
            answer_unsynced(p.answers);
            return;
        }
        if let Some(frame) = p.frame {
            let hi = frame.last_seq();
            self.tail.publish(frame);
            self.published.store(hi, Ordering::SeqCst);
            self.metrics.observe_commit(p.n_events, p.started.elapsed());
        }
        for (reply, res, _) in p.answers {
            let _ = reply.send(res);
        }
    }
}

/// Folded tree nodes of one tenant.
struct DbNodes<'c> {
    conn: &'c Connection,
    tenant_id: i64,
}

impl HashReader for DbNodes<'_> {
    fn read_hashes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, TlogError> {
        read_db_nodes(self.conn, self.tenant_id, ids)
            .map_err(|e| TlogError::Reader(e.to_string()))?
            .into_iter()
            .zip(ids)
            .map(|(h, id)| {
                h.ok_or_else(|| TlogError::Reader(format!("tree node {id:?} is missing")))
            })
            .collect()
    }
}
