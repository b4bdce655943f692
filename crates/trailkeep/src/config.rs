//! Layered configuration: defaults, then an optional TOML file, then
//! `TRAILKEEP_*` environment variables (`__` separates nested keys, so
//! `limits.max_body_bytes` is `TRAILKEEP_LIMITS__MAX_BODY_BYTES`), then
//! command-line flags. Semantics are checked once, at startup, and every
//! error names both the config key and its environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest `limits.max_body_bytes` accepted: 256 MiB.
const MAX_BODY_BYTES: usize = 256 << 20;
/// Upper bound of `limits.max_short_field` (see `Config::validate`).
const MAX_SHORT_FIELD: usize = 512;

/// Environment variables that are read but are not config keys.
const NON_KEY_VARS: &[&str] = &["TRAILKEEP_API_KEY", "TRAILKEEP_CONFIG", "TRAILKEEP_LOG"];

/// The whole server configuration. Its `Debug` hides the password of a
/// PostgreSQL URL; secrets have [`Secret`]'s redacting `Debug`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`TRAILKEEP_LISTEN`; `PORT` alone means `0.0.0.0:PORT`).
    pub listen: String,
    /// Directory of the embedded store and the log signing key.
    pub data_dir: PathBuf,
    /// Store URL: `sqlite://PATH` (default `sqlite://<data_dir>/trailkeep.db`) or
    /// `postgres://USER@HOST/DB` (also from `DATABASE_URL`).
    pub store: Option<String>,
    /// Name of this log: the signing key name and the prefix of every
    /// checkpoint origin. No spaces or `+`.
    pub log_name: String,
    /// The log signing key as a Go-style signer key (`PRIVATE+KEY+…`); the
    /// documented production choice for several nodes. Unset: generated on
    /// first start (in the data dir, or in PostgreSQL's `settings`).
    pub log_signing_key: Option<Secret>,
    /// Request and field limits.
    pub limits: Limits,
    /// Group-commit tuning.
    pub commit: CommitConfig,
    /// Per-credential request rate limit.
    pub rate_limit: RateLimitConfig,
    /// Settings of individual dialects.
    pub dialects: DialectsConfig,
    /// Geo-IP enrichment (Auditr).
    pub geoip: GeoIpConfig,
    /// Notification webhook delivery.
    pub webhooks: WebhooksConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("store", &self.store.as_deref().map(redact_url))
            .field("log_name", &self.log_name)
            .field("log_signing_key", &self.log_signing_key)
            .field("limits", &self.limits)
            .field("commit", &self.commit)
            .field("rate_limit", &self.rate_limit)
            .field("dialects", &self.dialects)
            .field("geoip", &self.geoip)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

/// A store URL with any password replaced by `***`.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let sep = if tail.is_empty() && !rest.contains('/') {
                ""
            } else {
                "/"
            };
            format!("{scheme}://{user}:***@{host}{sep}{tail}")
        }
        _ => url.to_owned(),
    }
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Per-credential rate limit (GCRA). Off by default: a self-hosted service
/// should not refuse its owner unasked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second per credential; 0 turns limiting off.
    pub requests_per_second: u32,
    /// Sustained requests per minute, for limits below one a second; used
    /// when `requests_per_second` is 0.
    pub requests_per_minute: u32,
    /// Requests allowed at once above the sustained rate; 0 means equal to the rate.
    pub burst: u32,
}

/// Dialect settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DialectsConfig {
    /// The ta-vivo audit-log dialect (`/logs`).
    pub tavivo: TavivoConfig,
}

/// ta-vivo: JWT-authenticated `/logs`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TavivoConfig {
    /// HS256 secret (env `JWT_SECRET`, as in the original); unset turns `/logs` off.
    pub jwt_secret: Option<String>,
    /// Project that JWT-authenticated events belong to.
    pub project: String,
    /// Tenant of those events.
    pub tenant: String,
}

impl Default for TavivoConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            project: "default".into(),
            tenant: "tavivo".into(),
        }
    }
}

impl std::fmt::Debug for TavivoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TavivoConfig")
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("project", &self.project)
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// Geo-IP databases in MaxMind format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoIpConfig {
    /// Comma-separated `.mmdb` paths (IPv4 and IPv6 files may be separate); unset turns geo-IP off.
    pub city_db: Option<String>,
}

/// Webhook delivery: retries with exponential backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Attempts before a delivery is marked failed.
    pub max_attempts: u32,
    /// Delay before the first retry, doubled after each failure.
    pub backoff_base_ms: u64,
    /// Longest delay between attempts.
    pub backoff_max_ms: u64,
    /// Timeout of one attempt.
    pub timeout_ms: u64,
    /// Let API keys register webhooks on loopback, private and link-local
    /// addresses (refused by default: any key holder could otherwise make
    /// the server POST into its own network).
    pub allow_private_targets: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        // 5 s doubling to a 6 h cap over 20 attempts spans about two days,
        // in the spirit of Standard Webhooks' multi-day retry schedule.
        Self {
            max_attempts: 20,
            backoff_base_ms: 5000,
            backoff_max_ms: 6 * 3_600_000,
            timeout_ms: 15_000,
            allow_private_targets: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("trailkeep-data"),
            store: None,
            log_name: "trailkeep.local".into(),
            log_signing_key: None,
            limits: Limits::default(),
            commit: CommitConfig::default(),
            rate_limit: RateLimitConfig::default(),
            dialects: DialectsConfig::default(),
            geoip: GeoIpConfig::default(),
            webhooks: WebhooksConfig::default(),
        }
    }
}

/// Explicit limits on what a request may carry. Every one is enforced and
/// tested; a request over any limit is refused whole and stores nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body in bytes (default 1 MiB).
    pub max_body_bytes: usize,
    /// Most events in one batch request.
    pub max_batch_events: usize,
    /// Deepest JSON nesting of a request body.
    pub max_json_depth: usize,
    /// Longest identifier-like field in characters (tenant, action, ids, tags).
    pub max_short_field: usize,
    /// Longest free-text field in characters (description, names, paths).
    pub max_text_field: usize,
    /// Largest `metadata` object, serialized, in bytes.
    pub max_metadata_bytes: usize,
    /// Most tags on one event.
    pub max_tags: usize,
    /// Most targets on one event.
    pub max_targets: usize,
    /// Largest `limit` a list request may ask for.
    pub max_page_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_batch_events: 1000,
            max_json_depth: 32,
            max_short_field: 256,
            max_text_field: 8192,
            max_metadata_bytes: 64 * 1024,
            max_tags: 64,
            max_targets: 64,
            max_page_size: 1000,
        }
    }
}

/// How the single writer groups appends into transactions.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommitConfig {
    /// Most events in one transaction.
    pub max_batch_events: usize,
    /// After draining the queue, how long the writer waits for more work
    /// before committing a batch smaller than `max_batch_events`, in
    /// microseconds. 0 commits whatever has queued.
    pub window_us: u64,
    /// Most append requests waiting for the writer; beyond it requests get 503.
    pub queue_capacity: usize,
    /// SQLite: acknowledged events waiting in the tail past which the fold
    /// moves them into the database even while appends keep arriving.
    pub fold_at_events: usize,
    /// SQLite: the fold runs at least this often while events wait, in
    /// milliseconds; full-text search trails acknowledgment by about this
    /// much.
    pub fold_interval_ms: u64,
    /// SQLite: how long the fold waits with no new acknowledgment before it
    /// folds, in milliseconds. Longer than the usual gap between group
    /// commits under load, so such a gap does not start a small fold: each
    /// fold rewrites every index page it touches, and small folds rewrite the
    /// same pages more often.
    pub fold_idle_ms: u64,
    /// SQLite: most events held in memory, written to the journal and
    /// waiting for their sync or acknowledged and waiting for the fold; at
    /// this many the writer waits for syncs and the fold before it appends
    /// more, which bounds memory (about 1.5 KB an event) when ingest outruns
    /// the fold or the journal's syncs.
    pub max_unfolded_events: usize,
    /// SQLite: leaf bytes past which a group commit takes no further job
    /// (its journal frame is full); the jobs left go into the next group.
    pub max_frame_bytes: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 4096,
            window_us: 200,
            queue_capacity: 16 * 1024,
            fold_at_events: 4 * 1024,
            fold_interval_ms: 250,
            fold_idle_ms: 50,
            max_unfolded_events: 8 * 1024,
            max_frame_bytes: 64 << 20,
        }
    }
}

/// Flags given on the command line; they override everything else.
#[derive(Clone, Default)]
pub struct Overrides {
    /// `--config`.
    pub config_file: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--store`.
    pub store: Option<String>,
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overrides")
            .field("config_file", &self.config_file)
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("store", &self.store.as_deref().map(redact_url))
            .finish()
    }
}

/// The environment variable that sets config key `key` (`a.b_c` → `TRAILKEEP_A__B_C`).
#[must_use]
pub fn env_var_for(key: &str) -> String {
    format!("TRAILKEEP_{}", key.replace('.', "__").to_ascii_uppercase())
}

impl Config {
    /// Loads the layered configuration from `env` (pairs of name and value)
    /// and the overrides. Returns the config and warnings to log.
    ///
    /// # Errors
    /// An unreadable file, an unknown key or a bad value, naming the config
    /// key and the environment variable.
    pub fn load(
        overrides: &Overrides,
        env: &[(String, String)],
    ) -> anyhow::Result<(Self, Vec<String>)> {
        let mut warnings = Vec::new();
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let file = overrides
            .config_file
            .clone()
            .or_else(|| get("TRAILKEEP_CONFIG").map(PathBuf::from));
        let mut table = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read config file {} (--config / TRAILKEEP_CONFIG): {e}",
                        path.display()
                    )
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    anyhow::anyhow!("config file {} is not valid TOML: {e}", path.display())
                })?
            }
            None => toml::Table::new(),
        };
        if let Some(port) = get("PORT")
            && get("TRAILKEEP_LISTEN").is_none()
        {
            table.insert(
                "listen".into(),
                toml::Value::String(format!("0.0.0.0:{port}")),
            );
        }
        if let Some(url) = get("DATABASE_URL")
            && get("TRAILKEEP_STORE").is_none()
        {
            table.insert("store".into(), toml::Value::String(url));
        }
        // An empty secret would let anyone sign tokens: it counts as unset.
        if let Some(secret) = get("JWT_SECRET").filter(|s| !s.is_empty()) {
            insert_path(
                &mut table,
                &["dialects".into(), "tavivo".into(), "jwt_secret".into()],
                toml::Value::String(secret),
            );
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("TRAILKEEP_") else {
                continue;
            };
            if NON_KEY_VARS.contains(&name.as_str()) || name.starts_with("TRAILKEEP_TEST_") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if !is_known_key(&path) {
                warnings.push(format!("ignoring unknown environment variable {name}"));
                continue;
            }
            // Secrets stay strings whatever they look like, so a type error
            // can never echo one.
            let secret = matches!(
                path.last().map(String::as_str),
                Some("jwt_secret" | "log_signing_key")
            );
            let value = if secret {
                toml::Value::String(value.clone())
            } else {
                parse_env_value(value)
            };
            insert_path(&mut table, &path, value);
        }
        let mut config: Self = Self::deserialize(toml::Value::Table(table)).map_err(|e| {
            let msg = e.to_string();
            // toml names the offending key as "in `a.b`"; name its variable too.
            let key = msg
                .split("in `")
                .nth(1)
                .and_then(|rest| rest.split('`').next());
            match key {
                Some(key) => anyhow::anyhow!(
                    "invalid config key `{key}` (env {}): {}",
                    env_var_for(key),
                    msg.lines().next().unwrap_or_default()
                ),
                None => anyhow::anyhow!(
                    "invalid configuration: {msg} (check the config file and TRAILKEEP_* variables)"
                ),
            }
        })?;
        if let Some(v) = &overrides.listen {
            config.listen.clone_from(v);
        }
        if let Some(v) = &overrides.data_dir {
            config.data_dir.clone_from(v);
        }
        if let Some(v) = &overrides.store {
            config.store = Some(v.clone());
        }
        config.validate()?;
        Ok((config, warnings))
    }

    /// Loads from the process environment.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_env(overrides: &Overrides) -> anyhow::Result<(Self, Vec<String>)> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load(overrides, &env)
    }

    fn validate(&self) -> anyhow::Result<()> {
        fn bad(key: &str, why: &str) -> anyhow::Error {
            anyhow::anyhow!(
                "invalid config key `{key}` (env {}): {why}",
                env_var_for(key)
            )
        }
        self.listen.parse::<SocketAddr>().map_err(|_| {
            bad(
                "listen",
                "expected HOST:PORT with an IP address, e.g. 127.0.0.1:8080",
            )
        })?;
        if self.log_name.is_empty()
            || self.log_name.contains('+')
            || self.log_name.chars().any(char::is_whitespace)
        {
            return Err(bad("log_name", "must be non-empty with no spaces or '+'"));
        }
        if let Some(url) = &self.store
            && !url.starts_with("sqlite://")
            && !crate::store::postgres::is_postgres_url(url)
        {
            return Err(bad(
                "store",
                "expected sqlite://PATH or postgres://USER@HOST/DB",
            ));
        }
        let l = &self.limits;
        for (key, v, min) in [
            ("limits.max_body_bytes", l.max_body_bytes, 256),
            ("limits.max_batch_events", l.max_batch_events, 1),
            ("limits.max_json_depth", l.max_json_depth, 4),
            ("limits.max_short_field", l.max_short_field, 8),
            ("limits.max_text_field", l.max_text_field, 8),
            ("limits.max_metadata_bytes", l.max_metadata_bytes, 2),
            ("limits.max_page_size", l.max_page_size, 1),
            ("commit.max_batch_events", self.commit.max_batch_events, 1),
            ("commit.queue_capacity", self.commit.queue_capacity, 1),
            ("commit.fold_at_events", self.commit.fold_at_events, 1),
            (
                "commit.max_unfolded_events",
                self.commit.max_unfolded_events,
                1,
            ),
            ("commit.max_frame_bytes", self.commit.max_frame_bytes, 1),
        ] {
            if v < min {
                return Err(bad(key, &format!("must be at least {min}")));
            }
        }
        // One request is one job, and a job goes into one journal frame
        // whole; frames are read back only up to 1 GiB.
        for (key, v) in [
            ("limits.max_body_bytes", l.max_body_bytes),
            ("commit.max_frame_bytes", self.commit.max_frame_bytes),
        ] {
            if v > MAX_BODY_BYTES {
                return Err(bad(key, &format!("must be at most {MAX_BODY_BYTES}")));
            }
        }
        // Identifier-like fields are indexed (B-tree keys); 512 characters
        // of UTF-8 stay under PostgreSQL's ~2.7 KB index-row limit.
        if l.max_short_field > MAX_SHORT_FIELD {
            return Err(bad(
                "limits.max_short_field",
                &format!("must be at most {MAX_SHORT_FIELD}"),
            ));
        }
        Ok(())
    }

    /// The PostgreSQL URL, when the store is PostgreSQL.
    #[must_use]
    pub fn postgres_url(&self) -> Option<&str> {
        self.store
            .as_deref()
            .filter(|u| crate::store::postgres::is_postgres_url(u))
    }

    /// The SQLite database file this config points at.
    #[must_use]
    pub fn sqlite_path(&self) -> PathBuf {
        match &self.store {
            Some(url) => PathBuf::from(url.trim_start_matches("sqlite://")),
            None => self.data_dir.join("trailkeep.db"),
        }
    }

    /// Where the log signing key lives.
    #[must_use]
    pub fn signing_key_path(&self) -> PathBuf {
        self.data_dir.join("log-signing.key")
    }

    /// The data directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

const KNOWN_KEYS: &[&[&str]] = &[
    &["listen"],
    &["data_dir"],
    &["store"],
    &["log_name"],
    &["log_signing_key"],
    &["limits", "max_body_bytes"],
    &["limits", "max_batch_events"],
    &["limits", "max_json_depth"],
    &["limits", "max_short_field"],
    &["limits", "max_text_field"],
    &["limits", "max_metadata_bytes"],
    &["limits", "max_tags"],
    &["limits", "max_targets"],
    &["limits", "max_page_size"],
    &["commit", "max_batch_events"],
    &["commit", "window_us"],
    &["commit", "queue_capacity"],
    &["commit", "fold_at_events"],
    &["commit", "fold_interval_ms"],
    &["commit", "fold_idle_ms"],
    &["commit", "max_unfolded_events"],
    &["commit", "max_frame_bytes"],
    &["rate_limit", "requests_per_second"],
    &["rate_limit", "burst"],
    &["rate_limit", "requests_per_minute"],
    &["dialects", "tavivo", "jwt_secret"],
    &["dialects", "tavivo", "project"],
    &["dialects", "tavivo", "tenant"],
    &["geoip", "city_db"],
    &["webhooks", "max_attempts"],
    &["webhooks", "backoff_base_ms"],
    &["webhooks", "backoff_max_ms"],
    &["webhooks", "timeout_ms"],
    &["webhooks", "allow_private_targets"],
];

fn is_known_key(path: &[String]) -> bool {
    KNOWN_KEYS
        .iter()
        .any(|k| k.len() == path.len() && k.iter().zip(path).all(|(a, b)| a == b))
}

fn parse_env_value(value: &str) -> toml::Value {
    if let Ok(i) = value.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match value {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(value.to_owned()),
    }
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = path.split_last().expect("paths are non-empty");
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\n[limits]\nmax_batch_events = 5\nmax_tags = 3\n",
        )
        .unwrap();
        let o = Overrides {
            config_file: Some(file),
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let (c, warnings) = Config::load(
            &o,
            &env(&[
                ("TRAILKEEP_LISTEN", "127.0.0.1:2"),
                ("TRAILKEEP_LIMITS__MAX_TAGS", "9"),
                ("TRAILKEEP_BOGUS", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:3");
        assert_eq!(c.limits.max_batch_events, 5);
        assert_eq!(c.limits.max_tags, 9);
        assert_eq!(
            warnings,
            vec!["ignoring unknown environment variable TRAILKEEP_BOGUS".to_owned()]
        );
    }

    #[test]
    fn secrets_stay_strings_and_urls_are_redacted() {
        let (c, _) = Config::load(
            &Overrides::default(),
            &env(&[
                ("JWT_SECRET", "123456"),
                ("TRAILKEEP_STORE", "postgres://u:hunter2@db/x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.dialects.tavivo.jwt_secret.as_deref(), Some("123456"));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("123456"),
            "{shown}"
        );
        assert!(shown.contains("postgres://u:***@db/x"), "{shown}");
        let err = Config::load(
            &Overrides::default(),
            &env(&[("TRAILKEEP_LIMITS__MAX_SHORT_FIELD", "4096")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("at most 512"), "{err}");
    }

    #[test]
    fn port_sets_listen_unless_trailkeep_listen_is_set() {
        let (c, _) = Config::load(&Overrides::default(), &env(&[("PORT", "9000")])).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        let (c, _) = Config::load(
            &Overrides::default(),
            &env(&[("PORT", "9000"), ("TRAILKEEP_LISTEN", "127.0.0.1:7")]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:7");
    }

    #[test]
    fn errors_name_key_and_env_var() {
        let load_err = |vars: &[(&str, &str)]| {
            Config::load(&Overrides::default(), &env(vars))
                .unwrap_err()
                .to_string()
        };
        let msg = load_err(&[("TRAILKEEP_LIMITS__MAX_BODY_BYTES", "3")]);
        assert!(
            msg.contains("limits.max_body_bytes")
                && msg.contains("TRAILKEEP_LIMITS__MAX_BODY_BYTES"),
            "{msg}"
        );
        let msg = load_err(&[("TRAILKEEP_LIMITS__MAX_BODY_BYTES", "268435457")]);
        assert!(msg.contains("must be at most 268435456"), "{msg}");
        let msg = load_err(&[("TRAILKEEP_COMMIT__MAX_FRAME_BYTES", "268435457")]);
        assert!(
            msg.contains("commit.max_frame_bytes") && msg.contains("must be at most 268435456"),
            "{msg}"
        );
        let msg = load_err(&[("TRAILKEEP_LISTEN", "nope")]);
        assert!(msg.contains("TRAILKEEP_LISTEN"), "{msg}");
        let msg = load_err(&[("TRAILKEEP_LIMITS__MAX_TAGS", "many")]);
        assert!(
            msg.contains("`limits.max_tags`") && msg.contains("TRAILKEEP_LIMITS__MAX_TAGS"),
            "{msg}"
        );
    }
}
