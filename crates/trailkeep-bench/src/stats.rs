//! Percentiles, rates and the JSON shape of a load run's figures.

use serde_json::{Value, json};

use crate::http::{Kind, LoadResult};

/// The `q` quantile (0..=1) of sorted microsecond samples, in milliseconds;
/// `None` without samples.
#[must_use]
pub fn quantile_ms(sorted_us: &[u32], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "sample counts are far below 2^52 and q is in 0..=1"
    )]
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    Some(f64::from(sorted_us[rank - 1]) / 1000.0)
}

/// `n` per second over `secs`; 0 when no time passed.
#[must_use]
pub fn per_sec(n: u64, secs: f64) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "counts are far below 2^52")]
    let n = n as f64;
    if secs > 0.0 { n / secs } else { 0.0 }
}

/// `a / b`, or `None` when `b` is not positive.
#[must_use]
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

/// Latency percentiles of sorted microsecond samples as JSON.
#[must_use]
pub fn latency_json(sorted_us: &[u32]) -> Value {
    json!({
        "samples": sorted_us.len(),
        "p50_ms": quantile_ms(sorted_us, 0.50),
        "p99_ms": quantile_ms(sorted_us, 0.99),
        "p999_ms": quantile_ms(sorted_us, 0.999),
        "max_ms": sorted_us.last().map(|&us| f64::from(us) / 1000.0),
    })
}

fn per_event_us(secs: f64, events: u64) -> Option<f64> {
    (events > 0).then(|| secs * 1e6 / events as f64)
}

/// The figures of a load run for requests of `kind`.
#[must_use]
pub fn load_json(r: &LoadResult, kind: Kind) -> Value {
    let k = kind as usize;
    json!({
        "events_per_s": per_sec(r.events, r.secs),
        "requests_per_s": per_sec(r.requests[k], r.secs),
        "events": r.events,
        "requests": r.requests[k],
        "secs": r.secs,
        "latency": latency_json(&r.latencies_us[k]),
        "errors": r.errors,
        "first_error": r.first_error,
        "cpu_secs": r.cpu_secs,
        "cpu_cores_busy": if r.secs > 0.0 { r.cpu_secs / r.secs } else { 0.0 },
        "writer_cpu_secs": r.writer_cpu_secs,
        "writer_cores_busy": if r.secs > 0.0 { r.writer_cpu_secs / r.secs } else { 0.0 },
        "fold_cpu_secs": r.fold_cpu_secs,
        "fold_cores_busy": if r.secs > 0.0 { r.fold_cpu_secs / r.secs } else { 0.0 },
        // CPU per event does not depend on how much of the machine the run got.
        "cpu_us_per_event": per_event_us(r.cpu_secs, r.events),
        "writer_cpu_us_per_event": per_event_us(r.writer_cpu_secs, r.events),
        "fold_cpu_us_per_event": per_event_us(r.fold_cpu_secs, r.events),
        "postgres_cpu_secs": r.postgres_cpu_secs,
        "postgres_cores_busy": if r.secs > 0.0 { r.postgres_cpu_secs / r.secs } else { 0.0 },
        "storage_write_bytes": r.storage_write_bytes,
        "storage_write_bytes_per_event": if r.events > 0 { Some(per_sec(r.storage_write_bytes, r.events as f64)) } else { None },
    })
}
