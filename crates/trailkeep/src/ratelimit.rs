//! Per-credential rate limiting with GCRA (one stored theoretical arrival
//! time per credential). This limiter is in memory, per process; with
//! PostgreSQL the same algorithm runs in the database so that a limit holds
//! across nodes (`EventStore::shared_rate_limit`, `AppState::rate_check`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// Entries kept before expired ones are pruned.
const PRUNE_AT: usize = 10_000;

/// Who a request's quota belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// An API key, by id.
    Key(i64),
    /// The ta-vivo JWT secret (one shared credential).
    Jwt,
}

impl Credential {
    /// The key under which shared stores keep this credential's state.
    #[must_use]
    pub fn shared_key(self) -> String {
        match self {
            Self::Key(id) => format!("key:{id}"),
            Self::Jwt => "jwt".into(),
        }
    }
}

/// A GCRA limiter; `None` inside when limiting is off.
pub struct RateLimiter {
    params: Option<(Duration, Duration)>,
    tat: Mutex<HashMap<Credential, Instant>>,
}

impl RateLimiter {
    /// A limiter per the config (off when `requests_per_second` is 0).
    #[must_use]
    pub fn new(config: &RateLimitConfig) -> Self {
        let (per, count) = if config.requests_per_second > 0 {
            (Duration::from_secs(1), config.requests_per_second)
        } else {
            (Duration::from_secs(60), config.requests_per_minute)
        };
        let params = (count > 0).then(|| {
            let interval = per / count;
            let burst = if config.burst == 0 {
                count
            } else {
                config.burst
            };
            (interval, interval * burst)
        });
        Self {
            params,
            tat: Mutex::new(HashMap::new()),
        }
    }

    /// The GCRA emission interval and tolerance in microseconds, when on.
    #[must_use]
    pub fn params_us(&self) -> Option<(i64, i64)> {
        self.params.map(|(i, t)| {
            (
                i64::try_from(i.as_micros()).unwrap_or(i64::MAX),
                i64::try_from(t.as_micros()).unwrap_or(i64::MAX),
            )
        })
    }

    /// Admits one request, or returns the whole seconds to wait (at least 1).
    ///
    /// # Errors
    /// The `Retry-After` seconds when over the limit.
    pub fn check(&self, who: Credential) -> Result<(), u64> {
        let Some((interval, tolerance)) = self.params else {
            return Ok(());
        };
        let now = Instant::now();
        let mut tat = self.tat.lock().expect("lock");
        if tat.len() > PRUNE_AT {
            tat.retain(|_, t| *t > now);
        }
        let current = tat.get(&who).copied().unwrap_or(now).max(now);
        let next = current + interval;
        if next > now + tolerance {
            let wait = next - (now + tolerance);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        tat.insert(who, next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_burst_then_refuses_with_retry_after() {
        let rl = RateLimiter::new(&RateLimitConfig {
            requests_per_minute: 2,
            burst: 3,
            ..Default::default()
        });
        for _ in 0..3 {
            rl.check(Credential::Key(1)).unwrap();
        }
        // One slot refills every 30 s; the next opens 30 s after the burst.
        let wait = rl.check(Credential::Key(1)).unwrap_err();
        assert!((29..=30).contains(&wait), "{wait}");
        rl.check(Credential::Key(2)).unwrap();
        let off = RateLimiter::new(&RateLimitConfig::default());
        for _ in 0..10_000 {
            off.check(Credential::Jwt).unwrap();
        }
    }
}
