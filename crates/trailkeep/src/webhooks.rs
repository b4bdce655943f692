//! Notification webhooks, signed per Standard Webhooks, delivered at least
//! once from the durable outbox that the writer fills in each event's own
//! transaction.
//!
//! Signing: `webhook-id` is the message id (the same on every attempt, so
//! receivers can de-duplicate), `webhook-timestamp` the Unix seconds of the
//! attempt, and `webhook-signature` is `v1,` + base64(HMAC-SHA256(key,
//! "{id}.{timestamp}.{body}")) where the key is the base64 part of the
//! secret after `whsec_`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::WebhooksConfig;
use crate::model::Time;
use crate::store::{Delivery, DeliveryResult, EventStore};

/// Prefix of webhook secrets, as in the Standard Webhooks spec.
pub const SECRET_PREFIX: &str = "whsec_";
/// Deliveries fetched per poll.
const BATCH: usize = 64;
/// Poll period when nothing wakes the worker.
const POLL: Duration = Duration::from_secs(1);

/// The body of every attempt to deliver one event's notification:
/// `{"type":"event.notify","timestamp":"<received_at>","data":<leaf>}`.
#[must_use]
pub fn notification_payload(received_at: Time, leaf: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(leaf.len() + 80);
    payload.extend_from_slice(
        format!("{{\"type\":\"event.notify\",\"timestamp\":\"{received_at}\",\"data\":").as_bytes(),
    );
    payload.extend_from_slice(leaf);
    payload.push(b'}');
    payload
}

/// True for addresses inside the machine or its private networks:
/// loopback, RFC 1918, link-local (cloud metadata), CGNAT, unspecified,
/// and IPv6 unique-local.
#[must_use]
pub fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(std::net::IpAddr::V4(v4)))
        }
    }
}

/// Resolves a webhook URL's host and refuses private targets.
///
/// # Errors
/// A message for the caller when the URL is invalid, does not resolve, or
/// points at a private address.
pub async fn check_target(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "must be an http or https URL".to_owned())?;
    let host = parsed
        .host_str()
        .ok_or("must name a host")?
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|_| format!("host {host} does not resolve"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("host {host} does not resolve"));
    }
    if addrs.iter().any(|a| is_private(a.ip())) {
        return Err("points at a loopback, private or link-local address (set webhooks.allow_private_targets to allow)".into());
    }
    Ok(())
}

/// A new random signing secret.
///
/// # Panics
/// When the operating system has no randomness to give.
#[must_use]
pub fn generate_secret() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the OS random source works");
    format!("{SECRET_PREFIX}{}", B64.encode(raw))
}

/// The `webhook-signature` value for one attempt.
///
/// # Errors
/// When the secret is not `whsec_` + base64.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = B64
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .map_err(|_| "webhook secret is not base64".to_owned())?;
    let mut mac = <Hmac<Sha256>>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// Runs deliveries until `shutdown` resolves. Attempts run one at a time
/// in order of due time; a result is recorded only after the answer, so a
/// crash mid-attempt means a resend with the same `webhook-id`.
pub async fn run(
    store: Arc<dyn EventStore>,
    config: WebhooksConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // Redirects are failures (Standard Webhooks): following one would turn
    // the POST into a GET and could mark an undelivered message delivered.
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(config.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; notifications stay queued");
            return;
        }
    };
    let signal = store.outbox_signal();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let due = match store.due_deliveries(Time::now(), BATCH).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhook outbox");
                Vec::new()
            }
        };
        let n_due = due.len();
        for d in due {
            let result = attempt(&client, &config, &d).await;
            if let Err(e) = store.record_delivery(d.id, result).await {
                tracing::warn!(error = %e, "cannot record a webhook attempt; it will be retried");
            }
        }
        if n_due == BATCH {
            continue;
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = signal.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn attempt(
    client: &reqwest::Client,
    config: &WebhooksConfig,
    d: &Delivery,
) -> DeliveryResult {
    let ts = Time::now().as_micros() / 1_000_000;
    let msg_id = format!("msg_{}", d.msg_id);
    let outcome = match sign(&d.secret, &msg_id, ts, &d.payload) {
        Err(e) => Err((None, e)),
        Ok(signature) => {
            let res = client
                .post(&d.url)
                .header("content-type", "application/json")
                .header("webhook-id", &msg_id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body(d.payload.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err((
                    Some(r.status().as_u16()),
                    format!("receiver answered {}", r.status()),
                )),
                Err(e) => Err((None, format!("request failed: {e}"))),
            }
        }
    };
    match outcome {
        Ok(()) => DeliveryResult::Delivered,
        Err((status, error)) => {
            let attempts = d.attempts + 1;
            // 410 Gone: the receiver asks never to be sent this again.
            if attempts >= config.max_attempts || status == Some(410) {
                return DeliveryResult::Failed { status, error };
            }
            let factor = 1u64 << (attempts - 1).min(30);
            let delay_ms = jitter(
                config
                    .backoff_base_ms
                    .saturating_mul(factor)
                    .min(config.backoff_max_ms),
            );
            let delay_us = i64::try_from(delay_ms.saturating_mul(1000)).unwrap_or(i64::MAX);
            DeliveryResult::Retry {
                at: Time::from_micros(Time::now().as_micros().saturating_add(delay_us)),
                status,
                error,
            }
        }
    }
}

/// `ms` ± 20 %, so receivers recovering from an outage are not hit by
/// every retry at once.
fn jitter(ms: u64) -> u64 {
    let mut raw = [0u8; 2];
    if getrandom::fill(&mut raw).is_err() {
        return ms;
    }
    let unit = f64::from(u16::from_le_bytes(raw)) / f64::from(u16::MAX); // 0..=1
    (ms as f64 * (0.8 + 0.4 * unit)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn signature_matches_the_standard_webhooks_reference() {
        // Standard Webhooks reference test vector (standard-webhooks spec repo).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sig = sign(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(generate_secret().starts_with(SECRET_PREFIX));
    }
}
