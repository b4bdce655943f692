//! This node's writer: one task that groups queued appends into batches and
//! commits them one at a time, with the next batch prepared while the
//! current one commits.
//!
//! A batch has two phases, on its own connection and inside its own
//! transaction:
//!
//! - **Prepare**, for each group of jobs taken from the queue: idempotency
//!   checks, missing tenant rows, `seq` values, the full-text vectors
//!   (`to_tsvector('simple', …)`, computed by PostgreSQL in a `SELECT` and
//!   passed back in binary form, so the stored vector is the one PostgreSQL
//!   makes), the `event_tags` and `event_targets` rows (copied at once: they
//!   need only the `seq`), and the event and tree-node rows, built on the
//!   heads the batch expects to find: those the committing batch will leave,
//!   else this node's cache, else the committed rows. It takes no head lock
//!   and writes no event or tree node, so it runs while the previous batch
//!   commits.
//! - **Commit**, once the previous batch's `COMMIT` has returned: lock the
//!   heads (`SELECT … FOR UPDATE` in id order) and compare them with the
//!   expected ones. The prepared rows are kept only if every locked size is
//!   the expected size and the expected frontier was read from committed
//!   rows or equals the cache, which holds only frontiers of committed
//!   batches. Otherwise those rows are built again from the locked heads.
//!   Then a binary `COPY` into `events` and one into `tree_nodes`, the
//!   idempotency and outbox rows, the new heads, `COMMIT`, replies.
//!
//! Indexes therefore still come from heads this transaction holds locked,
//! and only one batch of a node is in its commit phase at a time. A failed
//! batch clears the cache, so the batch prepared behind it is built again.

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use deadpool_postgres::{Object, Pool};
use futures_util::SinkExt;
use tlog::{Frontier, Hash, NodeId};
use tokio::sync::{Notify, mpsc};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use super::{
    IDEMPOTENCY_TTL_MICROS, IdempotencyRow, Queued, Reply, load_frontier, pg_error, pool_error,
    tokenizable,
};
use crate::config::CommitConfig;
use crate::metrics::Metrics;
use crate::model::Time;
use crate::store::{AppendJob, AppendOutcome, Receipt, StoreError, StoredResponse};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The writer task's state between batches.
pub(super) struct Writer {
    pub(super) pool: Pool,
    pub(super) commit: CommitConfig,
    pub(super) metrics: Arc<Metrics>,
    /// Frontiers this node last committed, by tenant id. Trusted only when
    /// the locked head has the same size; cleared when a batch fails.
    pub(super) frontiers: HashMap<i64, Frontier>,
    /// Tenant ids by (project, name), learned by committed batches. Tenant
    /// rows are never deleted, so a known id needs no lookup.
    pub(super) tenant_ids: HashMap<(i64, String), i64>,
    /// The frontiers the batch now committing will leave if it succeeds.
    pub(super) in_flight: HashMap<i64, Frontier>,
    pub(super) outbox: Arc<Notify>,
}

/// A `tsvector` in PostgreSQL's binary form (`tsvector_send`), passed back
/// unchanged so the stored vector is exactly what `to_tsvector` made.
#[derive(Debug)]
struct TsVector(Vec<u8>);

impl<'a> FromSql<'a> for TsVector {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Self(raw.to_vec()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TS_VECTOR
    }
}

impl ToSql for TsVector {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TS_VECTOR
    }

    to_sql_checked!();
}

/// One queued job and what its batch's prepare phase found or fetched for it.
struct Prepared {
    job: AppendJob,
    reply: Reply,
    /// Replay or conflict decided from the idempotency records; such a job
    /// writes nothing.
    outcome: Option<AppendOutcome>,
    /// An earlier job of this batch that first used the same key for the
    /// same request; this job replays its response.
    dup_of: Option<usize>,
    /// Per event: tenant id, `seq` and full-text vector.
    tenant_ids: Vec<i64>,
    seqs: Vec<i64>,
    search: Vec<TsVector>,
    /// The receipts of the last build of this job's events.
    receipts: Vec<Receipt>,
}

/// Where a batch expects a tenant's log to stand when it commits.
struct Start {
    frontier: Frontier,
    /// Read from committed rows, not taken from this node's cache or from
    /// the batch committing before this one.
    from_db: bool,
}

/// A batch being filled and prepared: its own connection, inside an open
/// transaction.
struct Pending {
    client: Object,
    jobs: Vec<Prepared>,
    n_events: usize,
    /// When its first job was taken from the queue.
    opened: tokio::time::Instant,
    /// Keys first used inside this batch: (project, key) → (job, request hash).
    new_keys: HashMap<(i64, String), (usize, [u8; 32])>,
    /// The head each tenant is expected to have at commit, by tenant id.
    starts: HashMap<i64, Start>,
    /// The frontiers after this batch's events, built from `starts`.
    heads: HashMap<i64, Frontier>,
    /// Rows built from `starts`, used if the locked heads match them.
    built: Built,
    /// Tenant ids this batch looked up or created; trusted by later batches
    /// only once it commits, since a created row goes if it fails.
    learned: HashMap<(i64, String), i64>,
}

/// What a batch writes besides its heads and idempotency records.
struct Built {
    rows: EventRows,
    /// (project, msg id, payload) of each webhook notification.
    outbox: Vec<(i64, String, Vec<u8>)>,
}

impl Built {
    fn new() -> Self {
        Self {
            rows: EventRows::new(),
            outbox: Vec::new(),
        }
    }
}

/// What a finished commit phase hands back to the loop: the new frontiers
/// and the tenant ids the batch learned, or `None` when the batch failed
/// (its jobs were already answered).
type CommitDone = Option<(Vec<(i64, Frontier)>, HashMap<(i64, String), i64>)>;

/// What a finished prepare step hands back: the batch with the new jobs, or
/// the jobs to fail.
type PrepareDone = Result<Pending, Vec<Reply>>;

/// Awaits the future in `slot`, or never completes when there is none.
async fn in_slot<T>(slot: &mut Option<BoxFuture<T>>) -> T {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Writer {
    /// Runs until the queue closes and everything taken from it is answered.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        let window = Duration::from_micros(self.commit.window_us);
        let max = self.commit.max_batch_events;
        let mut committing: Option<BoxFuture<CommitDone>> = None;
        let mut preparing: Option<BoxFuture<PrepareDone>> = None;
        let mut pending: Option<Pending> = None;
        let mut closed = false;
        loop {
            // The batch commits once the previous one is done and either it
            // is full, the queue has closed, or its window has passed.
            if committing.is_none() && preparing.is_none() {
                let ready = pending.as_ref().is_some_and(|p| {
                    closed || p.n_events >= max || p.opened + window <= tokio::time::Instant::now()
                });
                if ready && let Some(p) = pending.take() {
                    self.in_flight = p.heads.clone();
                    committing = Some(Box::pin(self.start_commit(p)));
                }
            }
            if closed && committing.is_none() && preparing.is_none() && pending.is_none() {
                return;
            }
            let can_take =
                !closed && preparing.is_none() && pending.as_ref().is_none_or(|p| p.n_events < max);
            let window_end = match (&committing, &preparing, &pending) {
                (None, None, Some(p)) => Some(p.opened + window),
                _ => None,
            };
            tokio::select! {
                done = in_slot(&mut committing) => {
                    committing = None;
                    self.in_flight.clear();
                    match done {
                        Some((frontiers, ids)) => {
                            self.frontiers.extend(frontiers);
                            self.tenant_ids.extend(ids);
                        }
                        None => self.frontiers.clear(),
                    }
                }
                done = in_slot(&mut preparing) => {
                    preparing = None;
                    match done {
                        Ok(p) => pending = Some(p),
                        Err(replies) => {
                            for reply in replies {
                                let _ = reply.send(Err(StoreError::Unavailable));
                            }
                        }
                    }
                }
                q = rx.recv(), if can_take => {
                    let Some(first) = q else {
                        closed = true;
                        continue;
                    };
                    let mut n = pending.as_ref().map_or(0, |p| p.n_events) + first.job.events.len();
                    let mut chunk = vec![first];
                    while n < max {
                        let Ok(q) = rx.try_recv() else { break };
                        n += q.job.events.len();
                        chunk.push(q);
                    }
                    preparing = Some(Box::pin(self.start_prepare(pending.take(), chunk)));
                }
                () = tokio::time::sleep_until(window_end.unwrap_or_else(tokio::time::Instant::now)), if window_end.is_some() => {}
            }
        }
    }

    /// The prepare step for `chunk`, added to `pending` (or to a new batch).
    fn start_prepare(
        &self,
        pending: Option<Pending>,
        chunk: Vec<Queued>,
    ) -> impl Future<Output = PrepareDone> + Send + 'static {
        let pool = self.pool.clone();
        let taken = tokio::time::Instant::now();
        let known: HashMap<(i64, String), i64> = chunk
            .iter()
            .flat_map(|q| {
                q.job
                    .events
                    .iter()
                    .map(move |e| (q.job.project, e.tenant.clone()))
            })
            .filter_map(|k| {
                let id = self
                    .tenant_ids
                    .get(&k)
                    .or_else(|| pending.as_ref().and_then(|p| p.learned.get(&k)));
                id.map(|id| (k, *id))
            })
            .collect();
        // Tenants new to this batch start where the committing batch will
        // leave them, or else where this node last committed them.
        let starts: HashMap<i64, Frontier> = known
            .values()
            .filter(|id| pending.as_ref().is_none_or(|p| !p.starts.contains_key(id)))
            .filter_map(|id| {
                self.in_flight
                    .get(id)
                    .or_else(|| self.frontiers.get(id))
                    .map(|f| (*id, f.clone()))
            })
            .collect();
        async move {
            let mut pending = match pending {
                Some(p) => p,
                None => match open(&pool).await {
                    Ok(client) => Pending {
                        client,
                        jobs: Vec::new(),
                        n_events: 0,
                        opened: taken,
                        new_keys: HashMap::new(),
                        starts: HashMap::new(),
                        heads: HashMap::new(),
                        built: Built::new(),
                        learned: HashMap::new(),
                    },
                    Err(e) => {
                        warn(&e);
                        return Err(chunk.into_iter().map(|q| q.reply).collect());
                    }
                },
            };
            match prepare(&mut pending, chunk, known, starts).await {
                Ok(()) => Ok(pending),
                Err((e, chunk_replies)) => {
                    warn(&e);
                    let mut replies: Vec<Reply> = pending.jobs.drain(..).map(|p| p.reply).collect();
                    replies.extend(chunk_replies);
                    discard(pending.client);
                    Err(replies)
                }
            }
        }
    }

    /// The commit phase of `p`, given the cached frontiers of its tenants.
    fn start_commit(&self, p: Pending) -> impl Future<Output = CommitDone> + Send + 'static {
        let cached: HashMap<i64, Frontier> = p
            .jobs
            .iter()
            .filter(|j| j.outcome.is_none())
            .flat_map(|j| j.tenant_ids.iter())
            .filter_map(|id| self.frontiers.get(id).map(|f| (*id, f.clone())))
            .collect();
        let metrics = self.metrics.clone();
        let outbox = self.outbox.clone();
        async move {
            let started = Instant::now();
            let n_events = p.n_events;
            let notify = p.jobs.iter().any(|j| j.job.notify);
            let Pending {
                client,
                mut jobs,
                starts,
                heads,
                built,
                learned,
                ..
            } = p;
            let speculated = Speculated {
                starts,
                heads,
                built,
            };
            match commit(&client, &mut jobs, cached, speculated).await {
                Ok((outcomes, frontiers)) => {
                    metrics.observe_commit(n_events, started.elapsed());
                    if notify {
                        outbox.notify_one();
                    }
                    for (job, outcome) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(outcome));
                    }
                    Some((frontiers, learned))
                }
                Err(e) => {
                    warn(&e);
                    discard(client);
                    for job in jobs {
                        let _ = job.reply.send(Err(StoreError::Unavailable));
                    }
                    None
                }
            }
        }
    }
}

fn warn(e: &StoreError) {
    tracing::warn!(error = %e, cause = ?std::error::Error::source(e), "group commit failed; no event in it was acknowledged");
}

/// A pool connection with a transaction begun on it.
async fn open(pool: &Pool) -> Result<Object, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    if let Err(e) = client.batch_execute("BEGIN").await {
        discard(client);
        return Err(pg_error(e));
    }
    Ok(client)
}

/// Closes a connection whose transaction failed or is in an unknown state
/// instead of returning it to the pool; PostgreSQL rolls the transaction back.
fn discard(client: Object) {
    drop(Object::take(client));
}

/// Prepares `chunk` inside `pending`'s transaction: idempotency, tenant ids,
/// `seq` values, full-text vectors and rows built on the expected heads. On
/// failure, returns the replies of the chunk's jobs (the batch is lost).
async fn prepare(
    pending: &mut Pending,
    chunk: Vec<Queued>,
    known: HashMap<(i64, String), i64>,
    starts: HashMap<i64, Frontier>,
) -> Result<(), (StoreError, Vec<Reply>)> {
    let first = pending.jobs.len();
    let mut jobs: Vec<Prepared> = chunk
        .into_iter()
        .map(|q| Prepared {
            job: q.job,
            reply: q.reply,
            outcome: None,
            dup_of: None,
            tenant_ids: Vec::new(),
            seqs: Vec::new(),
            search: Vec::new(),
            receipts: Vec::new(),
        })
        .collect();
    match prepare_jobs(pending, first, &mut jobs, known, starts).await {
        Ok(()) => {
            pending.n_events += jobs.iter().map(|j| j.job.events.len()).sum::<usize>();
            pending.jobs.extend(jobs);
            Ok(())
        }
        Err(e) => Err((e, jobs.into_iter().map(|j| j.reply).collect())),
    }
}

async fn prepare_jobs(
    pending: &mut Pending,
    first: usize,
    jobs: &mut [Prepared],
    mut known: HashMap<(i64, String), i64>,
    mut starts: HashMap<i64, Frontier>,
) -> Result<(), StoreError> {
    let client = &pending.client;
    let now = Time::now().as_micros();

    // 1. Idempotency: replay or refuse before anything is written.
    for (i, p) in jobs.iter_mut().enumerate() {
        let job_idx = first + i;
        let Some((idem, _)) = &p.job.idempotency else {
            continue;
        };
        let project = p.job.project;
        if let Some(&(first_use, hash)) = pending.new_keys.get(&(project, idem.key.clone())) {
            // A key first used inside this batch: replay the first job's
            // response (or conflict), as separate transactions would.
            if hash == idem.request_hash {
                p.dup_of = Some(first_use);
            }
            p.outcome = Some(AppendOutcome::IdempotencyConflict);
            continue;
        }
        // Serializes one key across nodes (and across this node's
        // overlapping batches) until this batch commits, so a second
        // transaction waits and then sees the first one's record.
        let lock_key = format!("{project}:{}", idem.key);
        exec(
            client,
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&lock_key],
        )
        .await?;
        let row = query(
            client,
            "SELECT request_hash, status, response, created_at FROM idempotency WHERE project_id = $1 AND key = $2",
            &[&project, &idem.key],
        )
        .await?
        .into_iter()
        .next();
        if let Some(row) = row {
            let created_at: i64 = row.get(3);
            if now - created_at < IDEMPOTENCY_TTL_MICROS {
                let hash: Vec<u8> = row.get(0);
                p.outcome = Some(if hash == idem.request_hash {
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
                    client,
                    "DELETE FROM idempotency WHERE project_id = $1 AND key = $2",
                    &[&project, &idem.key],
                )
                .await?;
            }
        }
        if p.outcome.is_none() {
            pending
                .new_keys
                .insert((project, idem.key.clone()), (job_idx, idem.request_hash));
        }
    }

    // 2. Tenant ids (creating missing tenants), seqs and full-text vectors,
    // sent together.
    let new_jobs = || jobs.iter().filter(|p| p.outcome.is_none());
    let mut missing: Vec<(i64, String)> = new_jobs()
        .flat_map(|p| {
            p.job
                .events
                .iter()
                .map(|e| (p.job.project, e.tenant.clone()))
        })
        .filter(|k| !known.contains_key(k))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    missing.sort();
    let n_new: i64 = new_jobs().map(|p| p.job.events.len() as i64).sum();
    let texts: Vec<String> = new_jobs()
        .flat_map(|p| p.job.events.iter().map(|e| tokenizable(&e.search_text())))
        .collect();
    let projects: Vec<i64> = missing.iter().map(|k| k.0).collect();
    let names: Vec<&str> = missing.iter().map(|k| k.1.as_str()).collect();
    let empty_root: &[u8] = &tlog::empty_root();
    let tenants = async {
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        exec(
            client,
            "INSERT INTO tenants (project_id, name, size, root, created_at)
             SELECT p, n, 0, $3, $4 FROM unnest($1::bigint[], $2::text[]) AS t(p, n)
             ON CONFLICT (project_id, name) DO NOTHING",
            &[&projects, &names, &empty_root, &now],
        )
        .await?;
        query(
            client,
            "SELECT t.id, t.project_id, t.name FROM tenants t
             JOIN unnest($1::bigint[], $2::text[]) AS k(p, n) ON t.project_id = k.p AND t.name = k.n",
            &[&projects, &names],
        )
        .await
    };
    let seqs = async {
        if n_new == 0 {
            return Ok(Vec::new());
        }
        query(
            client,
            "SELECT nextval(s.id) FROM (SELECT pg_get_serial_sequence('events', 'seq')::regclass AS id) s,
                    generate_series(1, $1::bigint)",
            &[&n_new],
        )
        .await
    };
    let vectors = async {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        query(
            client,
            "SELECT to_tsvector('simple', q) FROM unnest($1::text[]) WITH ORDINALITY AS u(q, o) ORDER BY o",
            &[&texts],
        )
        .await
    };
    let (tenant_rows, seq_rows, vector_rows) = tokio::try_join!(tenants, seqs, vectors)?;
    for row in tenant_rows {
        let key = (row.get::<_, i64>(1), row.get::<_, String>(2));
        let id: i64 = row.get(0);
        known.insert(key.clone(), id);
        pending.learned.insert(key, id);
    }
    if seq_rows.len() as i64 != n_new || vector_rows.len() != texts.len() {
        return Err(StoreError::Corrupted(
            "PostgreSQL returned another number of seqs or vectors than asked for".into(),
        ));
    }
    let mut seqs = seq_rows.iter().map(|r| r.get::<_, i64>(0));
    let mut vectors = vector_rows.iter().map(|r| r.get::<_, TsVector>(0));
    for p in jobs.iter_mut().filter(|p| p.outcome.is_none()) {
        let n = p.job.events.len();
        p.seqs = seqs.by_ref().take(n).collect();
        p.search = vectors.by_ref().take(n).collect();
        p.tenant_ids = p
            .job
            .events
            .iter()
            .map(|e| {
                known
                    .get(&(p.job.project, e.tenant.clone()))
                    .copied()
                    .ok_or_else(|| StoreError::Corrupted("a tenant row was not created".into()))
            })
            .collect::<Result<_, _>>()?;
    }

    // 3. Tags and targets need only the seq, so they are copied now, ahead
    // of the head locks; they commit or roll back with the batch.
    let mut tags = CopyRows::new(SEQ_INDEX_TYPES);
    let mut targets = CopyRows::new(SEQ_INDEX_TYPES);
    for p in jobs.iter().filter(|p| p.outcome.is_none()) {
        let project = p.job.project;
        for (e, seq) in p.job.events.iter().zip(&p.seqs) {
            for t in e.tags.iter().collect::<HashSet<_>>() {
                tags.row(&[&project, t, seq])?;
            }
            for t in e.targets.iter().map(|t| &t.id).collect::<HashSet<_>>() {
                targets.row(&[&project, t, seq])?;
            }
        }
    }
    tags.send(
        client,
        "COPY event_tags (project_id, tag, seq) FROM STDIN BINARY",
    )
    .await?;
    targets
        .send(
            client,
            "COPY event_targets (project_id, target_id, seq) FROM STDIN BINARY",
        )
        .await?;

    // 4. Build the other rows from the expected heads; tenants with none
    // yet are read from committed rows, without a lock.
    let mut fresh: Vec<i64> = jobs
        .iter()
        .filter(|p| p.outcome.is_none())
        .flat_map(|p| p.tenant_ids.iter().copied())
        .filter(|id| !pending.starts.contains_key(id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    fresh.sort_unstable();
    let unread: Vec<i64> = fresh
        .iter()
        .copied()
        .filter(|id| !starts.contains_key(id))
        .collect();
    let mut from_db = HashSet::new();
    if !unread.is_empty() {
        let rows = query(
            client,
            "SELECT id, size FROM tenants WHERE id = ANY($1::bigint[])",
            &[&unread],
        )
        .await?;
        for row in rows {
            let (id, size): (i64, i64) = (row.get(0), row.get(1));
            let size = u64::try_from(size)
                .map_err(|_| StoreError::Corrupted("negative tree size".into()))?;
            starts.insert(id, load_frontier(client, id, size).await?);
            from_db.insert(id);
        }
    }
    for id in fresh {
        let frontier = starts
            .remove(&id)
            .ok_or_else(|| StoreError::Corrupted("a tenant row was not found".into()))?;
        pending.heads.insert(id, frontier.clone());
        pending.starts.insert(
            id,
            Start {
                frontier,
                from_db: from_db.contains(&id),
            },
        );
    }
    build(jobs, &mut pending.heads, &mut pending.built)?;
    Ok(())
}

/// What the prepare phase built, and from which heads.
struct Speculated {
    starts: HashMap<i64, Start>,
    heads: HashMap<i64, Frontier>,
    built: Built,
}

/// Assigns indexes from `heads` to the new events of `jobs` and appends
/// their rows to `out`; `heads` ends as the frontiers after them.
fn build(
    jobs: &mut [Prepared],
    heads: &mut HashMap<i64, Frontier>,
    out: &mut Built,
) -> Result<(), StoreError> {
    for p in jobs.iter_mut().filter(|p| p.outcome.is_none()) {
        let project = p.job.project;
        let mut receipts = Vec::with_capacity(p.job.events.len());
        let per_event = p
            .job
            .events
            .iter_mut()
            .zip(&p.tenant_ids)
            .zip(p.seqs.iter().zip(&p.search));
        for ((event, tenant_id), (seq, search)) in per_event {
            let frontier = heads
                .get_mut(tenant_id)
                .ok_or_else(|| StoreError::Corrupted("no head for a tenant of the batch".into()))?;
            event.index = frontier.size();
            let leaf = event.leaf();
            let leaf_hash = tlog::leaf_hash(&leaf);
            for (id, hash) in frontier.append(leaf_hash) {
                out.rows.node(*tenant_id, id, &hash)?;
            }
            if p.job.notify {
                let payload = crate::webhooks::notification_payload(event.received_at, &leaf);
                out.outbox.push((project, event.id.to_string(), payload));
            }
            out.rows
                .event(*seq, project, *tenant_id, event, &leaf, search)?;
            receipts.push(Receipt::of(event, leaf_hash));
        }
        p.receipts = receipts;
    }
    Ok(())
}

/// The commit phase: lock the heads, keep the speculated rows if every
/// locked head is the one they were built on (else build again from the
/// locked heads), write, `COMMIT`. Returns every job's outcome and the new
/// frontiers.
async fn commit(
    client: &Object,
    jobs: &mut [Prepared],
    cached: HashMap<i64, Frontier>,
    speculated: Speculated,
) -> Result<(Vec<AppendOutcome>, Vec<(i64, Frontier)>), StoreError> {
    let now = Time::now().as_micros();
    // 1. Lock the head of every tenant touched, in id order.
    let mut ids: Vec<i64> = speculated.starts.keys().copied().collect();
    ids.sort_unstable();
    let mut locked: Vec<(i64, u64)> = Vec::with_capacity(ids.len());
    if !ids.is_empty() {
        let rows = query(
            client,
            "SELECT id, size FROM tenants WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await?;
        if rows.len() != ids.len() {
            return Err(StoreError::Corrupted(
                "a tenant row vanished before its lock".into(),
            ));
        }
        for row in rows {
            let (id, size): (i64, i64) = (row.get(0), row.get(1));
            let size = u64::try_from(size)
                .map_err(|_| StoreError::Corrupted("negative tree size".into()))?;
            locked.push((id, size));
        }
    }

    // 2. A speculated start is trusted only when its size is the locked size
    // and it was read from committed rows or equals this node's cache,
    // which holds only frontiers of committed batches.
    let trusted = locked.iter().all(|(id, size)| {
        speculated.starts.get(id).is_some_and(|s| {
            s.frontier.size() == *size && (s.from_db || cached.get(id) == Some(&s.frontier))
        })
    });
    let (heads, built) = if trusted {
        (speculated.heads, speculated.built)
    } else {
        drop(speculated);
        let mut heads: HashMap<i64, Frontier> = HashMap::with_capacity(locked.len());
        for (id, size) in locked {
            let frontier = match cached.get(&id) {
                Some(f) if f.size() == size => f.clone(),
                _ => load_frontier(client, id, size).await?,
            };
            heads.insert(id, frontier);
        }
        let mut built = Built::new();
        build(jobs, &mut heads, &mut built)?;
        (heads, built)
    };

    let mut idem_rows: Vec<IdempotencyRow> = Vec::new();
    let mut outcomes: Vec<Option<AppendOutcome>> = Vec::with_capacity(jobs.len());
    for p in jobs.iter_mut() {
        if let Some(o) = p.outcome.take() {
            outcomes.push(Some(o));
            continue;
        }
        let receipts = std::mem::take(&mut p.receipts);
        outcomes.push(Some(match p.job.idempotency.take() {
            Some((idem, render)) => {
                let response = render(&receipts);
                idem_rows.push((
                    p.job.project,
                    idem.key,
                    idem.request_hash.to_vec(),
                    i32::from(response.status),
                    response.body.clone(),
                ));
                AppendOutcome::Replayed(response)
            }
            None => AppendOutcome::Committed(receipts),
        }));
    }
    let Built {
        rows,
        outbox: outbox_rows,
    } = built;

    // 3. Write everything and the new heads, then commit.
    let (mut head_ids, mut sizes, mut roots) = (Vec::new(), Vec::new(), Vec::new());
    for (id, frontier) in &heads {
        head_ids.push(*id);
        sizes.push(frontier.size() as i64);
        roots.push(frontier.root().to_vec());
    }
    let idem = async {
        for (project, key, hash, status, body) in &idem_rows {
            exec(client, "INSERT INTO idempotency (project_id, key, request_hash, status, response, created_at) VALUES ($1, $2, $3, $4, $5, $6)", &[project, key, hash, status, body, &now]).await?;
        }
        Ok::<_, StoreError>(())
    };
    let outbox = async {
        for (project, msg_id, payload) in &outbox_rows {
            exec(client, "INSERT INTO webhook_outbox (webhook_id, msg_id, payload, attempts, next_attempt_at, created_at)
                 SELECT id, $1, $2, 0, $3, $3 FROM webhooks WHERE project_id = $4 AND deleted_at IS NULL", &[msg_id, payload, &now, project]).await?;
        }
        Ok::<_, StoreError>(())
    };
    let heads_update = async {
        if head_ids.is_empty() {
            return Ok(0);
        }
        exec(
            client,
            "UPDATE tenants t SET size = u.size, root = u.root
             FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS u(id, size, root) WHERE t.id = u.id",
            &[&head_ids, &sizes, &roots],
        )
        .await
    };
    // A COPY holds the connection until it ends, so the small statements
    // are sent after it, back to back.
    rows.write(client).await?;
    tokio::try_join!(idem, outbox, heads_update)?;
    client.batch_execute("COMMIT").await.map_err(pg_error)?;

    for (job_idx, p) in jobs.iter().enumerate() {
        if let Some(first) = p.dup_of
            && let Some(AppendOutcome::Replayed(response)) = &outcomes[first]
        {
            outcomes[job_idx] = Some(AppendOutcome::Replayed(response.clone()));
        }
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.expect("every job has an outcome"))
        .collect();
    Ok((outcomes, heads.into_iter().collect()))
}

/// Runs a statement prepared once per connection (deadpool caches it), so
/// each call is one round trip instead of a parse and an execute.
async fn exec(
    client: &Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.execute(&stmt, params).await.map_err(pg_error)
}

/// As [`exec`], for queries.
async fn query(
    client: &Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.query(&stmt, params).await.map_err(pg_error)
}

/// Rows in PostgreSQL's binary `COPY` format, encoded as they are added, so
/// a `COPY` sends one prepared buffer.
struct CopyRows {
    types: &'static [Type],
    buf: BytesMut,
    rows: usize,
}

impl CopyRows {
    fn new(types: &'static [Type]) -> Self {
        let mut buf = BytesMut::new();
        // Signature, flags, header extension length.
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0);
        buf.put_i32(0);
        Self {
            types,
            buf,
            rows: 0,
        }
    }

    fn row(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<(), StoreError> {
        let fields = i16::try_from(values.len()).expect("a handful of columns");
        self.buf.put_i16(fields);
        for (value, ty) in values.iter().zip(self.types) {
            let at = self.buf.len();
            self.buf.put_i32(0);
            let len = match value
                .to_sql_checked(ty, &mut self.buf)
                .map_err(StoreError::Backend)?
            {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(self.buf.len() - at - 4)
                    .map_err(|_| StoreError::Corrupted("a value over 2 GiB".into()))?,
            };
            self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        self.rows += 1;
        Ok(())
    }

    /// Sends the rows with `sql`, a `COPY … FROM STDIN BINARY`.
    async fn send(mut self, client: &Object, sql: &str) -> Result<(), StoreError> {
        if self.rows == 0 {
            return Ok(());
        }
        self.buf.put_i16(-1);
        let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
        let sink = client.copy_in(&stmt).await.map_err(pg_error)?;
        let mut sink = std::pin::pin!(sink);
        sink.send(self.buf.freeze()).await.map_err(pg_error)?;
        sink.finish().await.map_err(pg_error)?;
        Ok(())
    }
}

const EVENT_TYPES: &[Type] = &[
    Type::INT8,
    Type::UUID,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::TS_VECTOR,
];
const NODE_TYPES: &[Type] = &[Type::INT8, Type::INT2, Type::INT8, Type::BYTEA];
const SEQ_INDEX_TYPES: &[Type] = &[Type::INT8, Type::TEXT, Type::INT8];

/// The rows of a batch for `events` and `tree_nodes`, which depend on the
/// indexes (`event_tags` and `event_targets` are copied while preparing).
struct EventRows {
    events: CopyRows,
    nodes: CopyRows,
}

impl EventRows {
    fn new() -> Self {
        Self {
            events: CopyRows::new(EVENT_TYPES),
            nodes: CopyRows::new(NODE_TYPES),
        }
    }

    fn event(
        &mut self,
        seq: i64,
        project: i64,
        tenant: i64,
        e: &crate::model::Event,
        leaf: &[u8],
        search: &TsVector,
    ) -> Result<(), StoreError> {
        self.events.row(&[
            &seq,
            &e.id,
            &project,
            &tenant,
            &(e.index as i64),
            &e.occurred_at.as_micros(),
            &e.action,
            &e.actor.id,
            &e.result.map(crate::model::Outcome::as_str),
            &leaf,
            search,
        ])
    }

    fn node(&mut self, tenant: i64, id: NodeId, hash: &Hash) -> Result<(), StoreError> {
        self.nodes.row(&[
            &tenant,
            &i16::from(id.level),
            &(id.index as i64),
            &hash.as_slice(),
        ])
    }

    /// Copies the rows into the two tables, one binary `COPY` each.
    async fn write(self, client: &Object) -> Result<(), StoreError> {
        self.events
            .send(client, "COPY events (seq, id, project_id, tenant_id, idx, occurred_at, action, actor_id, result, leaf, search) FROM STDIN BINARY")
            .await?;
        self.nodes
            .send(
                client,
                "COPY tree_nodes (tenant_id, level, idx, hash) FROM STDIN BINARY",
            )
            .await
    }
}
