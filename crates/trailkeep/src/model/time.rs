//! Timestamps: microseconds since the Unix epoch, UTC, written in RFC 3339
//! with exactly six fractional digits and a `Z` suffix
//! (`2026-11-23T16:44:05.000000Z`). One fixed text form keeps the leaf
//! encoding byte-stable.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with microsecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(i64);

impl Time {
    /// The current time, truncated to microseconds.
    #[must_use]
    pub fn now() -> Self {
        Self(jiff::Timestamp::now().as_microsecond())
    }

    /// From microseconds since the epoch.
    #[must_use]
    pub const fn from_micros(us: i64) -> Self {
        Self(us)
    }

    /// Microseconds since the epoch.
    #[must_use]
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Milliseconds since the epoch.
    #[must_use]
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// From a jiff timestamp, truncating below a microsecond.
    #[must_use]
    pub fn from_timestamp(ts: jiff::Timestamp) -> Self {
        Self(ts.as_microsecond())
    }

    /// As a jiff timestamp.
    #[must_use]
    pub fn to_timestamp(self) -> jiff::Timestamp {
        jiff::Timestamp::from_microsecond(self.0).expect("stored times are in jiff's range")
    }

    /// Parses RFC 3339 (an offset is required; any precision accepted,
    /// truncated to microseconds).
    ///
    /// # Errors
    /// A message suitable for a validation error.
    pub fn parse_rfc3339(s: &str) -> Result<Self, String> {
        s.parse::<jiff::Timestamp>()
            .map(Self::from_timestamp)
            .map_err(|_| {
                "must be an RFC 3339 date-time with an offset, e.g. 2026-01-02T03:04:05Z".to_owned()
            })
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            self.to_timestamp().strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        )
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}
