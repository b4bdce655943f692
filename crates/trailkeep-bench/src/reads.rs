//! Reads at scale: a fresh server loaded through the batch endpoint with
//! events across 100 tenants, then latencies of the indexed filters, full
//! text, deep paging and proofs, and `verify` throughput on export bundles
//! against SHA-256 over the same bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use trailkeep::model::Time;

use crate::Plan;
use crate::events;
use crate::http::{self, Conn, Kind, LoadSpec, Req, Source};
use crate::server::{self, API_KEY};
use crate::stats::{latency_json, load_json, per_sec};
use crate::sys;

/// A word only the last loaded batch holds, so a full-text query for it
/// shows when indexing has caught up.
const MARKER: &str = "zqxfinalbatchmarker";

async fn get_ok(conn: &mut Conn, path: &str) -> anyhow::Result<Vec<u8>> {
    let res = conn.send(&http::get(path, API_KEY)).await?;
    if res.status != 200 {
        bail!(
            "GET {path}: status {}: {}",
            res.status,
            String::from_utf8_lossy(&res.body)
        );
    }
    Ok(res.body)
}

/// Posts one batch and returns the ids of its receipts.
async fn post_batch(conn: &mut Conn, body: &[u8]) -> anyhow::Result<Vec<String>> {
    let res = conn
        .send(&http::post("/v1/events/batch", API_KEY, body))
        .await?;
    if res.status != 201 {
        bail!(
            "batch: status {}: {}",
            res.status,
            String::from_utf8_lossy(&res.body[..res.body.len().min(500)])
        );
    }
    let v: Value = serde_json::from_slice(&res.body)?;
    Ok(v["events"]
        .as_array()
        .context("batch response without events")?
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect())
}

/// Sends `path(i)` for `i` in `0..samples` (or until `max_time`) one at a
/// time and returns the sorted latencies in microseconds.
async fn sample(
    conn: &mut Conn,
    samples: usize,
    max_time: Duration,
    path: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<u32>> {
    let start = Instant::now();
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        if start.elapsed() >= max_time {
            break;
        }
        let req = http::get(&path(i), API_KEY);
        let sent = Instant::now();
        let res = conn.send(&req).await?;
        let us = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        if res.status != 200 {
            bail!(
                "GET {}: status {}: {}",
                path(i),
                res.status,
                String::from_utf8_lossy(&res.body)
            );
        }
        lat.push(us);
    }
    lat.sort_unstable();
    Ok(lat)
}

/// A time from `from` plus `frac` of the span to `to`, as RFC 3339.
fn time_at(from: Time, to: Time, frac: f64) -> String {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_precision_loss,
        reason = "microsecond spans of a benchmark fit in f64 exactly enough"
    )]
    let us = from.as_micros() + ((to.as_micros() - from.as_micros()) as f64 * frac) as i64;
    Time::from_micros(us).to_string()
}

/// Runs the reads-at-scale phase and returns its figures.
///
/// # Errors
/// When the server fails or answers a request with an error.
#[allow(
    clippy::too_many_lines,
    reason = "one linear script of measurements reads best in order"
)]
pub async fn run(plan: &Plan) -> anyhow::Result<Value> {
    let _ = sys::reset_peak_rss();
    let tk = server::start().await?;
    let mut conn = Conn::connect(tk.addr).await?;
    let t_from = Time::now();
    let first_ids = post_batch(&mut conn, &events::batch_body(0, None)).await?;

    // Bulk load: the same batch bodies as the ingest phase, 4 connections.
    let bulk_batches = (plan.read_events / events::BATCH as u64).saturating_sub(2);
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
    let source: Source = Arc::new(move |_, n| Req {
        bytes: batches[usize::try_from(n).unwrap_or(0) % batches.len()].clone(),
        kind: Kind::Write,
        events: events::BATCH as u64,
    });
    let load = http::run_load(
        tk.addr,
        &LoadSpec {
            connections: 4,
            warmup: Duration::ZERO,
            measure: plan.load_time,
            max_requests: bulk_batches,
        },
        source,
    )
    .await?;
    if load.errors > 0 {
        bail!("bulk load failed: {:?}", load.first_error);
    }
    let last_ids = post_batch(&mut conn, &events::batch_body(0, Some(MARKER))).await?;
    let acked = Instant::now();
    let t_to = Time::now();
    let loaded = load.acked_events + 2 * events::BATCH as u64;

    // Full-text freshness: how long until the last batch is searchable.
    let fts_catchup_s = loop {
        let body = get_ok(&mut conn, &format!("/v1/events?q={MARKER}&limit=1")).await?;
        if body.windows(5).any(|w| w == b"\"id\":") {
            break Some(acked.elapsed().as_secs_f64());
        }
        if acked.elapsed() > plan.fts_wait {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let disk_live_bytes = sys::dir_bytes(tk.dir.path());

    let n = plan.read_samples;
    let t = plan.read_time;
    let actor = sample(&mut conn, n, t, |i| {
        format!("/v1/events?actor={}&limit=50", events::actor_id(i * 37))
    })
    .await?;
    let action = sample(&mut conn, n, t, |i| {
        let prefix = events::ACTION_PREFIXES[i % events::ACTION_PREFIXES.len()];
        format!("/v1/events?action={prefix}&limit=50")
    })
    .await?;
    let time_range = sample(&mut conn, n, t, |i| {
        // A window of 1 % of the load's span, at a spread of positions.
        #[allow(clippy::cast_precision_loss, reason = "small sample index")]
        let at = (i as f64 * 0.618_034).fract() * 0.99;
        format!(
            "/v1/events?since={}&until={}&limit=50",
            time_at(t_from, t_to, at),
            time_at(t_from, t_to, at + 0.01)
        )
    })
    .await?;
    let text = sample(&mut conn, n, t, |i| {
        format!(
            "/v1/events?q={}&limit=50",
            events::actor_name(i * 37).replace(' ', "%20")
        )
    })
    .await?;
    let ids: Vec<&String> = first_ids.iter().chain(&last_ids).collect();
    let proof = sample(&mut conn, n, t, |i| {
        format!("/v1/events/{}/proof", ids[(i * 7919) % ids.len()])
    })
    .await?;

    // Paging 100 pages deep (limit 50) through the whole project, newest first.
    let mut pages = Vec::new();
    let mut walks_ms = Vec::new();
    let mut deepest = 0usize;
    let paging_start = Instant::now();
    for _ in 0..plan.page_walks {
        if paging_start.elapsed() >= plan.read_time {
            break;
        }
        let walk_start = Instant::now();
        let mut cursor: Option<String> = None;
        let mut depth = 0;
        while depth < 100 {
            let path = match &cursor {
                Some(c) => format!("/v1/events?limit=50&cursor={c}"),
                None => "/v1/events?limit=50".to_owned(),
            };
            let sent = Instant::now();
            let body = get_ok(&mut conn, &path).await?;
            pages.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            depth += 1;
            let v: Value = serde_json::from_slice(&body)?;
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        deepest = deepest.max(depth);
        walks_ms.push(walk_start.elapsed().as_secs_f64() * 1000.0);
    }
    pages.sort_unstable();

    // Everything up to here is trailkeep under load and queries; what follows
    // holds whole export bundles in the bench's own memory to verify them.
    let peak_rss = sys::peak_rss_bytes();
    let _ = sys::reset_peak_rss();

    // Export bundles, then verify them in process against SHA-256 of the lines.
    let mut bundles = Vec::new();
    for tenant in 0..plan.verify_tenants {
        let path = format!("/v1/tenants/{}/export", events::tenant(tenant));
        bundles.push(get_ok(&mut conn, &path).await?);
    }
    let bundle_bytes: usize = bundles.iter().map(Vec::len).sum();
    let (mut verified, mut verify_secs) = (0u64, 0.0);
    let mut reps = 0;
    while reps < plan.verify_reps && (reps == 0 || verify_secs < plan.verify_time.as_secs_f64()) {
        let start = Instant::now();
        for b in &bundles {
            let v = trailkeep::export::verify_bundle(b, &tk.verifier, None)
                .map_err(|e| anyhow::anyhow!("verify failed: {e}"))?;
            verified += v.events;
        }
        verify_secs += start.elapsed().as_secs_f64();
        reps += 1;
    }
    let (mut hashed, mut sha_secs) = (0u64, 0.0);
    for _ in 0..reps {
        let start = Instant::now();
        // Every line but each bundle's checkpoint line is an event.
        hashed += crate::ceilings::sha256_lines(&bundles) - bundles.len() as u64;
        sha_secs += start.elapsed().as_secs_f64();
    }
    let verify_peak_rss = sys::peak_rss_bytes();
    drop(conn);
    // Closing drains indexing and truncates the WAL: what stays on disk.
    let dir = tk.stop().await?;
    let disk_bytes = sys::dir_bytes(dir.path());
    let disk_files = sys::file_sizes(dir.path());
    let kept = if plan.keep_data {
        let path = dir.keep();
        eprintln!("reads data directory kept at {}", path.display());
        Some(path.display().to_string())
    } else {
        None
    };

    Ok(json!({
        "events": loaded,
        "tenants": events::TENANTS,
        "load": load_json(&load, Kind::Write),
        "fts_catchup_s": fts_catchup_s,
        "disk_bytes": disk_bytes,
        "disk_bytes_per_event": per_sec(disk_bytes, loaded as f64),
        "disk_live_bytes_per_event": per_sec(disk_live_bytes, loaded as f64),
        "disk_files": disk_files,
        "kept_data_dir": kept,
        "actor": latency_json(&actor),
        "action_prefix": latency_json(&action),
        "time_range": latency_json(&time_range),
        "full_text": latency_json(&text),
        "proof": latency_json(&proof),
        "paging": {
            "page": latency_json(&pages),
            "walks": walks_ms.len(),
            "deepest_page": deepest,
            "walk_mean_ms": if walks_ms.is_empty() { 0.0 } else { walks_ms.iter().sum::<f64>() / walks_ms.len() as f64 },
        },
        "verify": {
            "bundles": bundles.len(),
            "bundle_bytes": bundle_bytes,
            "events": verified,
            "secs": verify_secs,
            "events_per_s": per_sec(verified, verify_secs),
            // The bench holds every bundle in memory: not a figure of trailkeep's.
            "peak_rss_mib": crate::sys::mib(verify_peak_rss),
        },
        "sha256": {
            "events": hashed,
            "secs": sha_secs,
            "events_per_s": per_sec(hashed, sha_secs),
        },
        // The bulk load and the queries, before any bundle is exported.
        "peak_rss_mib": crate::sys::mib(peak_rss),
    }))
}
