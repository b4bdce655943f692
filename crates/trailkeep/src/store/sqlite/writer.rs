//! The writer: the one thread that assigns `seq`s and leaf indexes. It
//! drains the append queue, sequences a group of jobs in memory, appends
//! the group as one journal frame, `fdatasync`s it, publishes it to the
//! tail and only then answers every job.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use tlog::{Frontier, Hash, HashReader, NodeId, TlogError};

use super::super::{AppendJob, AppendOutcome, ProjectId, Receipt, StoreError, StoredResponse};
use super::journal::{Frame, Head, IdemRecord, Journal, NewTenant, TailEvent};
use super::tail::{Tail, View};
use super::{IDEMPOTENCY_TTL_MICROS, Queued, read_db_nodes};
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
    /// Set once the journal can no longer promise durable appends.
    broken: bool,
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
            broken: false,
        }
    }

    /// Serves the queue until every sender is gone or the journal breaks.
    pub(super) fn run(mut self, rx: &Receiver<Queued>) {
        while !self.broken {
            let Ok(first) = rx.recv() else { break };
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
            if !self.tail.wait_for_room(self.commit.max_unfolded_events) {
                tracing::error!("the fold has stopped; refusing appends");
                self.broken = true;
                for q in batch {
                    let _ = q.reply.send(Err(StoreError::Unavailable));
                }
                break;
            }
            self.commit_batch(batch, n_events);
        }
        // Whatever is still queued gets a definite answer.
        while let Ok(q) = rx.try_recv() {
            let _ = q.reply.send(Err(StoreError::Unavailable));
        }
    }

    fn commit_batch(&mut self, batch: Vec<Queued>, n_events: usize) {
        let started = Instant::now();
        let view = self.tail.view();
        let now = Time::now().as_micros();
        let mut frame = Frame::default();
        let mut staged: HashMap<(ProjectId, String), TenantState> = HashMap::new();
        // (reply, result, whether the result depends on this frame).
        let mut answers = Vec::with_capacity(batch.len());
        for Queued { job, reply } in batch {
            let first_seq = self.next_seq;
            let first_tenant = self.next_tenant_id;
            let mut writes = JobWrites::default();
            match self.apply_job(&view, &staged, &frame, job, now, &mut writes) {
                Ok(outcome) => {
                    let wrote = !writes.events.is_empty();
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
        if !frame.events.is_empty() {
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
            let bytes = frame.encode();
            if let Err(e) = self.journal.append(first_seq, &bytes) {
                tracing::error!(error = %e, "appending to the journal failed; no event of this group was acknowledged and the writer stops");
                self.broken = true;
                for (reply, res, wrote) in answers {
                    let res = if wrote {
                        Err(StoreError::Unavailable)
                    } else {
                        res
                    };
                    let _ = reply.send(res);
                }
                return;
            }
            self.tail.publish(frame);
            self.tenants.extend(staged);
            self.metrics.observe_commit(n_events, started.elapsed());
        }
        for (reply, res, _) in answers {
            let _ = reply.send(res);
        }
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
            receipts.push(Receipt {
                id: event.id,
                tenant: event.tenant.clone(),
                index: event.index,
                received_at: event.received_at,
                leaf_hash,
            });
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
        let pending = frame
            .idempotency
            .iter()
            .rev()
            .find(|i| i.project == project && i.key == key)
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
