//! trailkeep's benchmark: trailkeep measured against this machine's own
//! ceilings in one run, so the ratios hold even where absolute numbers
//! drift from run to run on shared machines.
//!
//! - [`ceilings`]: an axum server that only parses (HTTP ceiling), a
//!   single-threaded parse + SHA-256 + append + `fdatasync` loop (durable
//!   append ceiling), SHA-256 over export lines (verify ceiling).
//! - [`http`]: the load generator, raw HTTP/1.1 keep-alive over tokio TCP.
//! - [`server`]: trailkeep in process on a fresh data directory.
//! - [`dialects`]: single-event load on each seed dialect's endpoint.
//! - [`reads`]: reads at scale and `verify` throughput.
//! - [`fresh`]: full-text freshness while a load phase runs.
//! - [`pg`]: trailkeep on PostgreSQL beside a COPY BINARY ceiling.
//! - [`report`]: the summary JSON, its ratios and the printed table.

pub mod ceilings;
pub mod dialects;
pub mod events;
pub mod fresh;
pub mod http;
pub mod pg;
pub mod reads;
pub mod report;
pub mod server;
pub mod stats;
pub mod sys;

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use crate::http::{Kind, LoadSpec, Req, Source};
use crate::server::API_KEY;
use crate::stats::{load_json, per_sec};

/// How long and how large a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Everything for a moment with tiny counts, so tests keep the bench alive.
    Smoke,
    /// A few minutes.
    Quick,
    /// As long as it needs.
    Full,
}

/// The counts and time bounds of a run; every loop stops at whichever of
/// its count or time comes first.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The mode this plan is for.
    pub mode: Mode,
    /// Unmeasured time at the start of each load phase.
    pub warmup: Duration,
    /// Measured time of each load phase.
    pub phase: Duration,
    /// Most requests in one load phase.
    pub max_requests: u64,
    /// Most events the durable-append ceiling writes.
    pub append_events: u64,
    /// Events loaded for the reads phase.
    pub read_events: u64,
    /// Most time the reads phase's bulk load may take.
    pub load_time: Duration,
    /// Samples per read query kind.
    pub read_samples: usize,
    /// Most time per read query kind.
    pub read_time: Duration,
    /// Walks of up to 100 pages by cursor.
    pub page_walks: usize,
    /// Tenants exported and verified.
    pub verify_tenants: usize,
    /// Most verification passes over the bundles.
    pub verify_reps: u32,
    /// Verification passes stop once this much time is spent.
    pub verify_time: Duration,
    /// Most time to wait for full-text indexing to catch up.
    pub fts_wait: Duration,
    /// Keep the reads phase's data directory for inspection.
    pub keep_data: bool,
    /// The PostgreSQL to measure trailkeep on, or why not (`--no-postgres`).
    pub postgres: Result<String, String>,
    /// Skip trailkeep's ingest phases on SQLite (`--skip sqlite`); their
    /// figures and ratios are then `null`.
    pub skip_sqlite: bool,
    /// Skip the reads-at-scale phase (`--skip reads`).
    pub skip_reads: bool,
}

impl Plan {
    /// The plan for `mode`.
    #[must_use]
    pub fn new(mode: Mode) -> Self {
        let secs = Duration::from_secs;
        match mode {
            Mode::Smoke => Self {
                mode,
                warmup: Duration::ZERO,
                phase: Duration::from_millis(400),
                max_requests: 5_000,
                append_events: 5_000,
                read_events: 5_000,
                load_time: secs(30),
                read_samples: 5,
                read_time: secs(2),
                page_walks: 1,
                verify_tenants: 2,
                verify_reps: 1,
                verify_time: secs(1),
                fts_wait: secs(10),
                keep_data: false,
                postgres: Ok(pg::url_from_env()),
                skip_sqlite: false,
                skip_reads: false,
            },
            Mode::Quick => Self {
                mode,
                warmup: secs(1),
                phase: secs(10),
                max_requests: 5_000_000,
                append_events: 1_000_000,
                read_events: 200_000,
                load_time: secs(600),
                read_samples: 300,
                read_time: secs(10),
                page_walks: 5,
                verify_tenants: 10,
                verify_reps: 5,
                verify_time: secs(3),
                fts_wait: secs(300),
                keep_data: false,
                postgres: Ok(pg::url_from_env()),
                skip_sqlite: false,
                skip_reads: false,
            },
            Mode::Full => Self {
                mode,
                warmup: secs(2),
                phase: secs(30),
                max_requests: 20_000_000,
                append_events: 5_000_000,
                read_events: 10_000_000,
                load_time: secs(3600),
                read_samples: 1000,
                read_time: secs(30),
                page_walks: 10,
                verify_tenants: 20,
                verify_reps: 5,
                verify_time: secs(10),
                fts_wait: secs(900),
                keep_data: false,
                postgres: Ok(pg::url_from_env()),
                skip_sqlite: false,
                skip_reads: false,
            },
        }
    }

    fn spec(&self, connections: usize) -> LoadSpec {
        LoadSpec {
            connections,
            warmup: self.warmup,
            measure: self.phase,
            max_requests: self.max_requests,
        }
    }
}

/// Keep-alive connections for single-event and mixed load.
pub const CONNECTIONS: usize = 64;
/// Connections for batched load.
pub const BATCH_CONNECTIONS: usize = 4;

pub(crate) fn rotate(reqs: Vec<Arc<[u8]>>, kind: Kind, events: u64) -> Source {
    Arc::new(move |_, n| Req {
        bytes: reqs[usize::try_from(n).unwrap_or(0) % reqs.len()].clone(),
        kind,
        events,
    })
}

pub(crate) fn fail_on_errors(phase: &str, r: &http::LoadResult) -> anyhow::Result<()> {
    if r.events == 0 {
        bail!("{phase}: no event was acknowledged ({:?})", r.first_error);
    }
    Ok(())
}

/// Runs every phase of `plan` and returns the summary (see [`report`]).
///
/// # Errors
/// When a server cannot be started or a phase stores nothing.
pub async fn run(plan: &Plan) -> anyhow::Result<Value> {
    let bodies = events::single_bodies();
    let raw_json_bytes_per_event = per_sec(
        bodies.iter().map(|b| b.len() as u64).sum(),
        bodies.len() as f64,
    );
    let singles: Vec<Arc<[u8]>> = bodies
        .iter()
        .map(|b| http::post("/v1/events", API_KEY, b).into())
        .collect();
    let batches: Vec<Arc<[u8]>> = (0..4)
        .map(|k| {
            http::post(
                "/v1/events/batch",
                API_KEY,
                &events::batch_body(k * 250, None),
            )
            .into()
        })
        .collect();
    let pg_inputs = (singles.clone(), batches.clone());
    let actor_reads: Vec<Arc<[u8]>> = (0..events::TEMPLATES)
        .map(|i| {
            http::get(
                &format!("/v1/events?actor={}&limit=50", events::actor_id(i)),
                API_KEY,
            )
            .into()
        })
        .collect();

    eprintln!("[1/5] HTTP ceiling");
    let http_ceiling = measure_http_ceiling(plan, &singles).await?;
    eprintln!("[2/5] durable-append ceiling");
    let append = measure_append_ceiling(plan, &bodies).await?;

    let trailkeep = if plan.skip_sqlite {
        eprintln!("[3/5] trailkeep ingest on SQLite skipped");
        // The raw JSON size is the bodies', so the reads phase's disk figure
        // is still judged against it.
        json!({
            "skipped": "--skip sqlite given",
            "disk": {"raw_json_bytes_per_event": raw_json_bytes_per_event},
        })
    } else {
        eprintln!("[3/5] trailkeep ingest");
        let mut t = ingest_sqlite(
            plan,
            &singles,
            batches,
            actor_reads,
            raw_json_bytes_per_event,
        )
        .await?;
        eprintln!("[3/5] trailkeep ingest: seed dialects");
        let dialects = dialects::run(plan).await?;
        let peak = dialects
            .as_object()
            .into_iter()
            .flat_map(|d| d.values())
            .filter_map(|d| d["peak_rss_mib"].as_f64())
            .fold(t["peak_rss_mib"].as_f64().unwrap_or(0.0), f64::max);
        t["peak_rss_mib"] = json!(peak);
        t["dialects"] = dialects;
        t
    };
    // The machine is shared, so both ceilings are measured again right
    // after trailkeep's ingest phases; the ratios use the mean of the two
    // and report how far they drifted.
    let after = if plan.skip_sqlite {
        None
    } else {
        eprintln!("[3/5] ceilings again, after trailkeep's ingest");
        Some((
            measure_http_ceiling(plan, &singles).await?,
            measure_append_ceiling(plan, &bodies).await?,
        ))
    };

    let postgres = match &plan.postgres {
        Ok(url) => {
            eprintln!("[4/5] trailkeep ingest on PostgreSQL, COPY BINARY ceiling");
            pg::run(plan, url, pg_inputs.0, pg_inputs.1).await?
        }
        Err(why) => {
            eprintln!("[4/5] PostgreSQL skipped: {why}");
            pg::skipped(why)
        }
    };

    let reads = if plan.skip_reads {
        eprintln!("[5/5] reads at scale skipped");
        json!({"skipped": "--skip reads given"})
    } else {
        eprintln!("[5/5] reads at scale ({} events)", plan.read_events);
        reads::run(plan).await?
    };

    let ceilings = report::Ceilings {
        http: load_json(&http_ceiling, Kind::Write),
        append: append_json(&append),
        http_after: after
            .as_ref()
            .map_or(Value::Null, |(h, _)| load_json(h, Kind::Write)),
        append_after: after.as_ref().map_or(Value::Null, |(_, a)| append_json(a)),
    };
    Ok(report::summary(plan, ceilings, trailkeep, postgres, reads))
}

/// The HTTP ceiling: a parse-only server loaded like trailkeep's single phase.
async fn measure_http_ceiling(
    plan: &Plan,
    singles: &[Arc<[u8]>],
) -> anyhow::Result<http::LoadResult> {
    let ceiling = ceilings::start_http_ceiling().await?;
    let r = http::run_load(
        ceiling.addr,
        &plan.spec(CONNECTIONS),
        rotate(singles.to_vec(), Kind::Write, 1),
    )
    .await?;
    ceiling.stop().await?;
    fail_on_errors("HTTP ceiling", &r)?;
    Ok(r)
}

/// The durable-append ceiling over a fresh temporary directory.
async fn measure_append_ceiling(
    plan: &Plan,
    bodies: &[Vec<u8>],
) -> anyhow::Result<ceilings::AppendResult> {
    let dir = tempfile::Builder::new()
        .prefix("trailkeep-bench-append-")
        .tempdir()?;
    let bodies = bodies.to_vec();
    let path = dir.path().to_owned();
    let (max, time) = (plan.append_events, plan.phase);
    let r = tokio::task::spawn_blocking(move || {
        ceilings::durable_append(&bodies, &path, events::BATCH, max, time)
    })
    .await??;
    drop(dir);
    Ok(r)
}

fn append_json(a: &ceilings::AppendResult) -> Value {
    json!({
        "events_per_s": per_sec(a.events, a.secs),
        "events": a.events,
        "fdatasyncs": a.syncs,
        "bytes": a.bytes,
        "storage_write_bytes_per_event": per_sec(a.storage_write_bytes, a.events as f64),
        "secs": a.secs,
    })
}

/// The single, batch and mixed phases on a fresh SQLite server.
async fn ingest_sqlite(
    plan: &Plan,
    singles: &[Arc<[u8]>],
    batches: Vec<Arc<[u8]>>,
    actor_reads: Vec<Arc<[u8]>>,
    raw_json_bytes_per_event: f64,
) -> anyhow::Result<Value> {
    let tk = server::start().await?;
    let commits_0 = server::Commits::scrape(tk.addr).await?;
    let rss_before = [sys::reset_peak_rss(), 0, 0];
    let (single, single_fresh) = fresh::during(
        tk.addr,
        http::run_load(
            tk.addr,
            &plan.spec(CONNECTIONS),
            rotate(singles.to_vec(), Kind::Write, 1),
        ),
    )
    .await?;
    let single = single?;
    let single_rss = sys::peak_rss_bytes();
    fail_on_errors("single", &single)?;
    let commits_1 = server::Commits::scrape(tk.addr).await?;
    let rss_before = [rss_before[0], sys::reset_peak_rss(), 0];
    let (batch, batch_fresh) = fresh::during(
        tk.addr,
        http::run_load(
            tk.addr,
            &plan.spec(BATCH_CONNECTIONS),
            rotate(batches, Kind::Write, events::BATCH as u64),
        ),
    )
    .await?;
    let batch = batch?;
    let batch_rss = sys::peak_rss_bytes();
    fail_on_errors("batch", &batch)?;
    let commits_2 = server::Commits::scrape(tk.addr).await?;
    let rss_before = [rss_before[0], rss_before[1], sys::reset_peak_rss()];
    let singles = singles.to_vec();
    let mixed_source: Source = Arc::new(move |_, n| {
        let i = usize::try_from(n).unwrap_or(0);
        if i % 10 == 9 {
            Req {
                bytes: actor_reads[(i / 10) % actor_reads.len()].clone(),
                kind: Kind::Read,
                events: 0,
            }
        } else {
            Req {
                bytes: singles[i % singles.len()].clone(),
                kind: Kind::Write,
                events: 1,
            }
        }
    });
    let mixed = http::run_load(tk.addr, &plan.spec(CONNECTIONS), mixed_source).await?;
    let mixed_rss = sys::peak_rss_bytes();
    fail_on_errors("mixed", &mixed)?;
    let commits_3 = server::Commits::scrape(tk.addr).await?;
    let stored = single.acked_events + batch.acked_events + mixed.acked_events;
    let dir = tk.stop().await?;
    let disk_bytes = sys::dir_bytes(dir.path());
    drop(dir);

    let mut mixed_json = load_json(&mixed, Kind::Write);
    mixed_json["reads"] = load_json(&mixed, Kind::Read);
    let mut single_json = with_rss(
        load_json(&single, Kind::Write),
        sys::mib(single_rss),
        commits_1.since(&commits_0),
    );
    let mut batch_json = with_rss(
        load_json(&batch, Kind::Write),
        sys::mib(batch_rss),
        commits_2.since(&commits_1),
    );
    let mut mixed_json = with_rss(mixed_json, sys::mib(mixed_rss), commits_3.since(&commits_2));
    // What the process held when the phase began, so peak minus this is the phase's own.
    for (v, before) in [&mut single_json, &mut batch_json, &mut mixed_json]
        .into_iter()
        .zip(rss_before)
    {
        v["rss_before_mib"] = json!(sys::mib(before));
    }
    single_json["search_freshness"] = single_fresh;
    batch_json["search_freshness"] = batch_fresh;
    Ok(json!({
        "single": single_json,
        "batch": batch_json,
        "mixed": mixed_json,
        "peak_rss_mib": sys::mib(single_rss.max(batch_rss).max(mixed_rss)),
        "disk": {
            "events": stored,
            "bytes": disk_bytes,
            "bytes_per_event": per_sec(disk_bytes, stored as f64),
            "raw_json_bytes_per_event": raw_json_bytes_per_event,
        },
    }))
}

fn with_rss(mut v: Value, rss_mib: f64, commits: Value) -> Value {
    v["peak_rss_mib"] = json!(rss_mib);
    v["group_commits"] = commits;
    v
}
