//! Full-text freshness under load: while a load phase runs, one probe at a
//! time posts an event whose description holds a word of its own and polls
//! `q=` for it, timing acknowledgment to searchable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::events;
use crate::http::{self, Conn};
use crate::server::API_KEY;

/// Time between probes.
const EVERY: Duration = Duration::from_millis(250);
/// Time between polls of one probe.
const POLL: Duration = Duration::from_millis(10);
/// A probe not found within this long is counted as missed.
const GIVE_UP: Duration = Duration::from_secs(10);

/// Probes until `stop` is set; returns the lags in seconds, sorted, and the
/// number of probes that were never found within [`GIVE_UP`].
///
/// # Errors
/// When the server refuses a probe or a search.
pub async fn probe(addr: SocketAddr, stop: Arc<AtomicBool>) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut conn = Conn::connect(addr).await?;
    let (mut lags, mut missed) = (Vec::new(), 0);
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let next = Instant::now() + EVERY;
        // Letters only, so both stores' tokenizers keep it one term.
        let marker = format!("zqfresh{}", letters(n));
        let body = serde_json::to_vec(&events::event(n * 7, Some(&marker)))?;
        let res = conn.send(&http::post("/v1/events", API_KEY, &body)).await?;
        if res.status != 201 {
            bail!("freshness probe: status {}", res.status);
        }
        let acked = Instant::now();
        let search = http::get(&format!("/v1/events?q={marker}&limit=1"), API_KEY);
        loop {
            let res = conn.send(&search).await?;
            let v: Value = serde_json::from_slice(&res.body).unwrap_or(json!({}));
            if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
                lags.push(acked.elapsed().as_secs_f64());
                break;
            }
            if acked.elapsed() > GIVE_UP {
                missed += 1;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        n += 1;
        tokio::time::sleep_until(next.into()).await;
    }
    lags.sort_by(f64::total_cmp);
    Ok((lags, missed))
}

/// Runs `load` with a [`probe`] beside it and returns what `load` returned
/// with the probe's figures as [`json`].
///
/// # Errors
/// When the probe fails.
pub async fn during<T>(
    addr: SocketAddr,
    load: impl Future<Output = T>,
) -> anyhow::Result<(T, Value)> {
    let stop = Arc::new(AtomicBool::new(false));
    let probing = tokio::spawn(probe(addr, stop.clone()));
    let out = load.await;
    stop.store(true, Ordering::SeqCst);
    let (lags, missed) = probing.await??;
    Ok((out, json(&lags, missed)))
}

/// `n` written in the letters a to z.
fn letters(mut n: usize) -> String {
    let mut out = String::new();
    loop {
        out.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            return out;
        }
    }
}

/// The figures of one probe run.
#[must_use]
pub fn json(lags: &[f64], missed: u64) -> Value {
    let at =
        |q: f64| (!lags.is_empty()).then(|| lags[((lags.len() - 1) as f64 * q).round() as usize]);
    json!({
        "probes": lags.len() as u64 + missed,
        "missed": missed,
        "p50_s": at(0.5),
        "max_s": lags.last(),
    })
}
