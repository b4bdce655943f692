//! Prometheus text metrics: requests, ingested events, commit batch sizes
//! and commit latency. A handful of atomics and one small map; rendering
//! happens only when `/metrics` is scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the batch-size histogram, in events.
const BATCH_BUCKETS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];
/// Upper bounds of the commit-latency histogram, in microseconds.
const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

struct Histogram {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, bounds: &[u64; 12], v: u64) {
        if let Some(i) = bounds.iter().position(|&b| v <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, bounds: &[u64; 12], scale: f64) {
        let mut cumulative = 0;
        for (b, n) in bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *b as f64 / scale
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum.load(Ordering::Relaxed) as f64 / scale
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Process-wide metrics.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    events_ingested: AtomicU64,
    commits: Histogram,
    commit_latency: Histogram,
    /// Per background task: (events handled, microseconds spent).
    background: [(AtomicU64, AtomicU64); 2],
}

/// Work the writer does after acknowledging.
#[derive(Debug, Clone, Copy)]
pub enum Background {
    /// Moving acknowledged events from the tail into the indexes (SQLite).
    Fold = 0,
    /// Full-text indexing (SQLite).
    Fts = 1,
}

impl Background {
    fn label(self) -> &'static str {
        match self {
            Self::Fold => "fold",
            Self::Fts => "fts",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            events_ingested: AtomicU64::new(0),
            commits: Histogram::new(),
            commit_latency: Histogram::new(),
            background: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
        }
    }
}

impl Metrics {
    /// Counts one HTTP request by method, matched route and status.
    pub fn observe_request(&self, method: &str, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .expect("lock")
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }

    /// Records one group commit of `n_events` that took `took`.
    pub fn observe_commit(&self, n_events: usize, took: Duration) {
        self.events_ingested
            .fetch_add(n_events as u64, Ordering::Relaxed);
        self.commits.observe(&BATCH_BUCKETS, n_events as u64);
        self.commit_latency.observe(
            &LATENCY_BUCKETS_US,
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// Records one run of background work over `n_events` that took `took`.
    pub fn observe_background(&self, task: Background, n_events: u64, took: Duration) {
        let (events, micros) = &self.background[task as usize];
        events.fetch_add(n_events, Ordering::Relaxed);
        micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Prometheus text exposition format 0.0.4.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP trailkeep_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE trailkeep_http_requests_total counter\n");
        for ((method, route, status), n) in self.requests.lock().expect("lock").iter() {
            let _ = writeln!(
                out,
                "trailkeep_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP trailkeep_events_ingested_total Events durably committed.\n");
        out.push_str("# TYPE trailkeep_events_ingested_total counter\n");
        let _ = writeln!(
            out,
            "trailkeep_events_ingested_total {}",
            self.events_ingested.load(Ordering::Relaxed)
        );
        out.push_str("# HELP trailkeep_commit_batch_events Events per group commit.\n");
        out.push_str("# TYPE trailkeep_commit_batch_events histogram\n");
        self.commits.render(
            &mut out,
            "trailkeep_commit_batch_events",
            &BATCH_BUCKETS,
            1.0,
        );
        out.push_str(
            "# HELP trailkeep_commit_seconds Latency of one group commit, fsync included.\n",
        );
        out.push_str("# TYPE trailkeep_commit_seconds histogram\n");
        self.commit_latency.render(
            &mut out,
            "trailkeep_commit_seconds",
            &LATENCY_BUCKETS_US,
            1e6,
        );
        out.push_str("# HELP trailkeep_background_events_total Events handled by background work after acknowledgment.\n");
        out.push_str("# TYPE trailkeep_background_events_total counter\n");
        out.push_str(
            "# HELP trailkeep_background_seconds_total Time the writer spent on background work.\n",
        );
        out.push_str("# TYPE trailkeep_background_seconds_total counter\n");
        for task in [Background::Fold, Background::Fts] {
            let (events, micros) = &self.background[task as usize];
            let label = task.label();
            let _ = writeln!(
                out,
                "trailkeep_background_events_total{{task=\"{label}\"}} {}",
                events.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "trailkeep_background_seconds_total{{task=\"{label}\"}} {}",
                micros.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
        out
    }
}
