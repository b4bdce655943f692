//! The tail: acknowledged group commits not folded into the database yet,
//! held in memory for reads and for the fold.
//!
//! Readers take a [`View`] (an immutable snapshot) *before* they open their
//! SQLite read transaction, and use the view only for events above the
//! `folded_seq` that transaction sees. The fold drops frames from the tail
//! only after its transaction has committed, so every event is in the view,
//! in the database, or in both, and never counted twice.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tlog::Hash;
use uuid::Uuid;

use super::super::{Cursor, EventQuery, ListOrder, ProjectId, StoredEvent, TreeHead};
use super::journal::{Frame, TailEvent};

/// A published frame with the lookups reads need.
#[derive(Debug)]
pub(super) struct Published {
    pub(super) frame: Frame,
    /// `(tenant id, leaf index)` to the event's position in `frame.events`.
    by_leaf: HashMap<(i64, u64), usize>,
}

impl Published {
    fn new(frame: Frame) -> Self {
        let by_leaf = frame
            .events
            .iter()
            .enumerate()
            .map(|(k, e)| ((e.tenant_id, e.index), k))
            .collect();
        Self { frame, by_leaf }
    }

    fn first_seq(&self) -> i64 {
        self.frame.events.first().map_or(0, |e| e.seq)
    }
}

/// An immutable snapshot of the tail, oldest frame first.
#[derive(Debug, Default, Clone)]
pub(super) struct View {
    frames: Vec<Arc<Published>>,
}

impl View {
    /// Every event with `seq > after`, oldest first.
    pub(super) fn events_after(&self, after: i64) -> impl DoubleEndedIterator<Item = &TailEvent> {
        self.frames
            .iter()
            .filter(move |p| p.frame.last_seq() > after)
            .flat_map(|p| p.frame.events.iter())
            .filter(move |e| e.seq > after)
    }

    /// The event with this `seq`.
    pub(super) fn by_seq(&self, seq: i64) -> Option<&TailEvent> {
        let k = self.frames.partition_point(|p| p.first_seq() <= seq);
        let p = self.frames.get(k.checked_sub(1)?)?;
        let events = &p.frame.events;
        events
            .binary_search_by_key(&seq, |e| e.seq)
            .ok()
            .map(|i| &events[i])
    }

    /// The event of a project with this id.
    pub(super) fn by_id(&self, project: ProjectId, id: Uuid) -> Option<&TailEvent> {
        self.events_after(0)
            .find(|e| e.id == id && e.project == project)
    }

    /// The event at leaf `index` of tenant `tenant_id`.
    pub(super) fn by_leaf(&self, tenant_id: i64, index: u64) -> Option<&TailEvent> {
        self.frames.iter().rev().find_map(|p| {
            p.by_leaf
                .get(&(tenant_id, index))
                .map(|&k| &p.frame.events[k])
        })
    }

    /// The stored node `(level, node_index)` of a tenant's tree, if the
    /// append that completed it is in the tail.
    pub(super) fn node(&self, tenant_id: i64, id: &tlog::NodeId) -> Option<Hash> {
        let leaf = u64::try_from(super::completing_leaf(id)?).ok()?;
        self.by_leaf(tenant_id, leaf)?
            .nodes
            .get(usize::from(id.level))
            .copied()
    }

    /// The newest head of a tenant in the tail.
    pub(super) fn head(&self, project: ProjectId, tenant: &str) -> Option<TreeHead> {
        self.frames.iter().rev().find_map(|p| {
            p.frame
                .heads
                .iter()
                .find(|h| h.project == project && &*h.name == tenant)
                .map(|h| TreeHead {
                    tenant_id: h.tenant_id,
                    size: h.size,
                    root: h.root,
                })
        })
    }

    /// The idempotency record of `(project, key)` written most recently.
    pub(super) fn idempotency(
        &self,
        project: ProjectId,
        key: &str,
    ) -> Option<&super::journal::IdemRecord> {
        self.frames.iter().rev().find_map(|p| {
            p.frame
                .idempotency
                .iter()
                .rev()
                .find(|i| i.project == project && i.key == key)
        })
    }

    /// The listing keys of up to `limit + 1` events above `after` that match
    /// `q`, in the query's order. Full text is not matched here (see
    /// `run_query`).
    pub(super) fn page_keys(&self, project: ProjectId, q: &EventQuery, after: i64) -> Vec<Cursor> {
        let order = q.order();
        let matching = self
            .events_after(after)
            .rev()
            .filter(|e| matches(e, project, q))
            .map(|e| Cursor::at(order, e.seq, e.occurred_at));
        match order {
            // Seqs grow through the tail, so newest first is already the order.
            ListOrder::Seq => matching.take(q.limit + 1).collect(),
            ListOrder::Time => {
                let mut keys: Vec<Cursor> = matching.collect();
                keys.sort_unstable_by(|a, b| b.cmp(a));
                keys.truncate(q.limit + 1);
                keys
            }
        }
    }
}

/// Whether a tail event passes every filter of `q` but full text; the same
/// conditions as the SQL of `page_keys_sql`.
fn matches(e: &TailEvent, project: ProjectId, q: &EventQuery) -> bool {
    let opt = |filter: &Option<String>, value: &str| filter.as_deref().is_none_or(|f| f == value);
    e.project == project
        && opt(&q.tenant, &e.tenant)
        && opt(&q.actor, &e.actor_id)
        && opt(&q.action, &e.action)
        && q.action_prefix
            .as_deref()
            .is_none_or(|p| e.action.starts_with(p))
        && q.target
            .as_deref()
            .is_none_or(|t| e.targets.iter().any(|x| x == t))
        && q.tag
            .as_deref()
            .is_none_or(|t| e.tags.iter().any(|x| x == t))
        && q.result
            .as_deref()
            .is_none_or(|r| e.result.is_some_and(|x| x.as_str() == r))
        && q.since.is_none_or(|s| e.occurred_at >= s.as_micros())
        && q.until.is_none_or(|u| e.occurred_at < u.as_micros())
        && q.before_index.is_none_or(|b| e.index < b)
        && match q.before {
            None => true,
            Some(Cursor::Seq(b)) => e.seq < b,
            Some(Cursor::Time { occurred_at, seq }) => (e.occurred_at, e.seq) < (occurred_at, seq),
        }
}

impl TailEvent {
    /// This event as a read returns it.
    pub(super) fn stored(&self) -> StoredEvent {
        StoredEvent {
            seq: self.seq,
            tenant_id: self.tenant_id,
            index: self.index,
            leaf_hash: self.leaf_hash(),
            leaf: self.leaf.clone(),
        }
    }
}

/// What [`Tail::wait_for_room`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Room {
    /// The tail has room.
    Ready,
    /// The fold (or the journal's sync) made no room in time; it may be failing.
    Stalled,
    /// The fold has stopped for good.
    Gone,
}

/// What the fold should do next, from [`Tail::next_fold`].
pub(super) enum FoldWork {
    /// Fold these frames (oldest first).
    Fold(Vec<Arc<Published>>),
    /// The tail is empty and the store is closing.
    Done,
}

/// When the fold runs: the `commit.fold_*` settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct FoldPolicy {
    /// Fold once this many events wait, even while appends keep arriving.
    pub(super) at_events: usize,
    /// Fold at least this often while events wait.
    pub(super) interval: Duration,
    /// Fold once no frame has been published for this long.
    pub(super) idle: Duration,
    /// Most events one fold takes.
    pub(super) chunk: usize,
    /// The writer waits before appending while this many events wait,
    /// written or published.
    pub(super) max_unfolded: usize,
}

#[derive(Debug)]
struct State {
    view: Arc<View>,
    /// Events published and not folded yet.
    unfolded: usize,
    /// Events in frames the writer has written and the syncer has not
    /// published yet; they are held in memory as well.
    written: usize,
    last_publish: Instant,
    last_fold: Instant,
    /// The writer is waiting for room.
    starved: bool,
    closing: bool,
    /// The fold has stopped for good; the writer must not wait for it.
    fold_gone: bool,
    /// The last fold failed.
    failing: bool,
}

/// The shared tail: the writer publishes, readers take views, the fold
/// takes frames and drops them once they are in the database.
#[derive(Debug)]
pub(super) struct Tail {
    state: Mutex<State>,
    changed: Condvar,
}

impl Tail {
    /// An empty tail.
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(State {
                view: Arc::default(),
                unfolded: 0,
                written: 0,
                last_publish: now,
                last_fold: now,
                starved: false,
                closing: false,
                fold_gone: false,
                failing: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current snapshot.
    pub(super) fn view(&self) -> Arc<View> {
        self.lock().view.clone()
    }

    /// Counts `n` events of a frame just written, until [`Tail::publish`]
    /// moves them to the unfolded ones: the writer calls it before it hands
    /// the frame to the syncer.
    pub(super) fn wrote(&self, n: usize) {
        self.lock().written += n;
    }

    /// Takes back [`Tail::wrote`] for a frame that will never be published
    /// (its sync failed), waking a writer that waits for room.
    pub(super) fn unwrote(&self, n: usize) {
        let mut s = self.lock();
        s.written = s.written.saturating_sub(n);
        drop(s);
        self.changed.notify_all();
    }

    /// Makes a durable frame visible to readers and the fold.
    pub(super) fn publish(&self, frame: Frame) {
        let n = frame.events.len();
        let published = Arc::new(Published::new(frame));
        let mut s = self.lock();
        let mut frames = Vec::with_capacity(s.view.frames.len() + 1);
        frames.extend(s.view.frames.iter().cloned());
        frames.push(published);
        s.view = Arc::new(View { frames });
        debug_assert!(
            s.written >= n,
            "published a frame that was not counted as written"
        );
        s.written = s.written.saturating_sub(n);
        s.unfolded += n;
        s.last_publish = Instant::now();
        drop(s);
        self.changed.notify_all();
    }

    /// Blocks the writer while `max_unfolded` events wait for the fold,
    /// counting those written and not yet published, for at most `stall`.
    /// Publishing only moves events from written to unfolded; the fold is
    /// what makes room, and a waiting writer has it run at once.
    pub(super) fn wait_for_room(&self, max_unfolded: usize, stall: Duration) -> Room {
        let deadline = Instant::now() + stall;
        let mut s = self.lock();
        while s.unfolded + s.written >= max_unfolded && !s.fold_gone {
            let now = Instant::now();
            if now >= deadline {
                s.starved = false;
                return Room::Stalled;
            }
            s.starved = true;
            self.changed.notify_all();
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        s.starved = false;
        if s.fold_gone { Room::Gone } else { Room::Ready }
    }

    /// Whether the last fold failed (the store is then not ready).
    pub(super) fn fold_failing(&self) -> bool {
        self.lock().failing
    }

    /// Blocks the fold until frames are due, per `policy`.
    pub(super) fn next_fold(&self, policy: &FoldPolicy) -> FoldWork {
        let mut s = self.lock();
        loop {
            let now = Instant::now();
            if s.unfolded > 0 {
                let due = s.closing
                    || s.starved
                    || s.unfolded >= policy.at_events.min(policy.max_unfolded)
                    || now.duration_since(s.last_fold) >= policy.interval
                    || now.duration_since(s.last_publish) >= policy.idle;
                if due {
                    let mut n = 0;
                    let frames = s
                        .view
                        .frames
                        .iter()
                        .take_while(|p| {
                            let take = n == 0 || n + p.frame.events.len() <= policy.chunk;
                            n += p.frame.events.len();
                            take
                        })
                        .cloned()
                        .collect();
                    return FoldWork::Fold(frames);
                }
                let wait = (s.last_fold + policy.interval)
                    .min(s.last_publish + policy.idle)
                    .saturating_duration_since(now)
                    .max(Duration::from_micros(100));
                s = self
                    .changed
                    .wait_timeout(s, wait)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            } else if s.closing {
                return FoldWork::Done;
            } else {
                s = self
                    .changed
                    .wait(s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
    }

    /// Drops the frames up to `folded_seq` after the fold committed them,
    /// or only notes the attempt when the fold failed (`None`).
    pub(super) fn folded(&self, folded_seq: Option<i64>) {
        let mut s = self.lock();
        s.last_fold = Instant::now();
        s.failing = folded_seq.is_none();
        if let Some(hi) = folded_seq {
            let keep: Vec<Arc<Published>> = s
                .view
                .frames
                .iter()
                .filter(|p| p.frame.last_seq() > hi)
                .cloned()
                .collect();
            s.unfolded = keep.iter().map(|p| p.frame.events.len()).sum();
            s.view = Arc::new(View { frames: keep });
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Asks the fold to fold everything and stop.
    pub(super) fn close(&self) {
        self.lock().closing = true;
        self.changed.notify_all();
    }

    /// Whether [`Tail::close`] was called.
    pub(super) fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Marks the fold as stopped, waking a writer that waits for room.
    pub(super) fn fold_gone(&self) {
        self.lock().fold_gone = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::super::journal::tests::frame;
    use super::*;

    const NOW: Duration = Duration::ZERO;
    const SHORT: Duration = Duration::from_millis(20);

    /// Written frames are in memory as much as published ones, so they
    /// count against `max_unfolded` from the moment they are written until
    /// a fold drops them.
    #[test]
    fn written_frames_count_against_the_room() {
        let tail = Tail::new();
        tail.wrote(3);
        assert_eq!(tail.wait_for_room(4, NOW), Room::Ready);
        tail.wrote(1);
        assert_eq!(tail.wait_for_room(4, SHORT), Room::Stalled);
        let f = frame(1, 4);
        let hi = f.last_seq();
        tail.publish(f);
        assert_eq!(
            tail.wait_for_room(4, SHORT),
            Room::Stalled,
            "publishing makes no room"
        );
        assert_eq!(
            tail.wait_for_room(5, NOW),
            Room::Ready,
            "published events count once"
        );
        tail.folded(Some(hi));
        assert_eq!(tail.wait_for_room(1, NOW), Room::Ready);
    }

    /// A writer waiting only on written frames waits for their publication
    /// and is let go by the fold that follows, not by the stall timeout.
    #[test]
    fn a_writer_waiting_on_written_frames_is_released_by_the_fold() {
        let tail = Arc::new(Tail::new());
        tail.wrote(4);
        let policy = FoldPolicy {
            at_events: usize::MAX,
            interval: Duration::from_secs(3600),
            idle: Duration::from_secs(3600),
            chunk: 1024,
            // Only the waiting writer (`starved`) may make the fold due.
            max_unfolded: usize::MAX,
        };
        let started = Instant::now();
        let fold = {
            let tail = tail.clone();
            std::thread::spawn(move || {
                let FoldWork::Fold(frames) = tail.next_fold(&policy) else {
                    panic!("nothing to fold");
                };
                let hi = frames.last().map(|p| p.frame.last_seq());
                tail.folded(hi);
            })
        };
        let syncer = {
            let tail = tail.clone();
            std::thread::spawn(move || {
                std::thread::sleep(SHORT);
                tail.publish(frame(1, 4));
            })
        };
        assert_eq!(tail.wait_for_room(4, Duration::from_secs(10)), Room::Ready);
        let waited = started.elapsed();
        assert!(waited >= SHORT, "did not wait for the written frame");
        assert!(
            waited < Duration::from_secs(5),
            "released by the stall timeout"
        );
        syncer.join().unwrap();
        fold.join().unwrap();
    }

    /// A frame whose sync failed is never published; taking it back wakes
    /// the writer at once instead of after the stall timeout.
    #[test]
    fn a_frame_whose_sync_failed_no_longer_counts() {
        let tail = Arc::new(Tail::new());
        tail.wrote(4);
        let started = Instant::now();
        let syncer = {
            let tail = tail.clone();
            std::thread::spawn(move || {
                std::thread::sleep(SHORT);
                tail.unwrote(4);
            })
        };
        assert_eq!(tail.wait_for_room(4, Duration::from_secs(10)), Room::Ready);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "released by the stall timeout"
        );
        syncer.join().unwrap();
    }
}
