//! HTTP surface: the router, shared state, authentication and the RFC 9457
//! problem responses of the native API.
//!
//! Architecture invariant: only this module tree knows wire formats. Each
//! dialect is one file that owns its request/response types and converts
//! them to and from [`crate::model::Event`].

pub mod dialects;
pub mod native;
pub mod openapi;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use crate::config::Config;
use crate::ingest::{Violation, json_depth_ok};
use crate::keys;
use crate::metrics::Metrics;
use crate::store::{EventStore, Principal, StoreError};

/// How long an authentication result is cached; bounds how long a revoked
/// key keeps working on a running server.
const AUTH_CACHE_TTL: Duration = Duration::from_secs(2);
/// Cached authentication results before the cache is flushed.
const AUTH_CACHE_MAX: usize = 10_000;

/// Key digest → (principal or `None` for an unknown key, when cached).
type AuthCache = HashMap<[u8; 32], (Option<Principal>, Instant)>;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// Configuration in force.
    pub config: Arc<Config>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Signs checkpoints.
    pub log: Arc<crate::log::LogKey>,
    /// Per-credential rate limit.
    pub rate: Arc<crate::ratelimit::RateLimiter>,
    /// The ta-vivo dialect's project (id, name), when that dialect is on.
    pub tavivo_project: Option<(i64, String)>,
    /// Geo-IP databases, when configured.
    pub geo: Option<Arc<crate::ingest::enrich::GeoIp>>,
    /// User-agent parser with its cache.
    pub agents: Arc<crate::ingest::enrich::UserAgents>,
    auth_cache: Arc<Mutex<AuthCache>>,
}

impl AppState {
    /// State over a store.
    #[must_use]
    pub fn new(
        store: Arc<dyn EventStore>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        log: Arc<crate::log::LogKey>,
    ) -> Self {
        let rate = Arc::new(crate::ratelimit::RateLimiter::new(&config.rate_limit));
        Self {
            store,
            config,
            metrics,
            log,
            rate,
            tavivo_project: None,
            geo: None,
            agents: Arc::default(),
            auth_cache: Arc::default(),
        }
    }

    /// Charges one request to `who`: across every node when the store
    /// shares rate-limit state (PostgreSQL), else in this process. A store
    /// failure admits the request; the request then fails on its own.
    ///
    /// # Errors
    /// The `Retry-After` seconds when over the limit.
    pub async fn rate_check(&self, who: crate::ratelimit::Credential) -> Result<(), u64> {
        let Some((interval, tolerance)) = self.rate.params_us() else {
            return Ok(());
        };
        match self
            .store
            .shared_rate_limit(who.shared_key(), interval, tolerance)
        {
            Some(decision) => match decision.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(wait_us)) => Err(u64::try_from(wait_us)
                    .unwrap_or(1)
                    .div_ceil(1_000_000)
                    .max(1)),
                Err(e) => {
                    tracing::warn!(error = %e, "shared rate limit unavailable; admitting");
                    Ok(())
                }
            },
            None => self.rate.check(who),
        }
    }

    /// Resolves an API key to its project, caching briefly.
    ///
    /// # Errors
    /// Store failures.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Principal>, StoreError> {
        let hash = keys::hash_key(key);
        if let Some((p, at)) = self.auth_cache.lock().expect("lock").get(&hash)
            && at.elapsed() < AUTH_CACHE_TTL
        {
            return Ok(p.clone());
        }
        let principal = self.store.authenticate(hash).await?;
        let mut cache = self.auth_cache.lock().expect("lock");
        if cache.len() >= AUTH_CACHE_MAX {
            cache.clear();
        }
        cache.insert(hash, (principal.clone(), Instant::now()));
        Ok(principal)
    }
}

/// Builds the whole router.
pub fn app(state: AppState) -> Router {
    // One shared allocation: axum clones the state for every extractor of
    // every request, and an `Arc` clone is one atomic increment.
    let state = Arc::new(state);
    let body_limit = state.config.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve))
        .merge(native::routes())
        .merge(dialects::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let res = next.run(req).await;
    state
        .metrics
        .observe_request(method.as_str(), route, res.status().as_u16());
    if let Some(cause) = res.extensions().get::<InternalCause>() {
        tracing::error!(route, cause = %cause.0, "internal error");
    }
    res
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "not ready\n",
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The cause of a 5xx, kept out of the response body and logged by the
/// request middleware.
#[derive(Clone, Debug)]
pub struct InternalCause(pub String);

/// An RFC 9457 problem of the native API.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code; also the last segment of `type`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub detail: String,
    /// Per-field violations, all of them.
    pub errors: Vec<Violation>,
    /// Seconds for `Retry-After`, on 429 and 503.
    pub retry_after: Option<u64>,
    /// Logged, never sent.
    pub cause: Option<String>,
}

impl ApiError {
    /// A problem without field errors.
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            cause: None,
        }
    }

    /// 422 with every violation.
    #[must_use]
    pub fn validation(errors: Vec<Violation>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("the request has {} invalid field(s)", errors.len()),
        );
        e.errors = errors;
        e
    }

    /// 401.
    #[must_use]
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }

    /// 404.
    #[must_use]
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded => {
                let mut err = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the write queue is full; retry shortly",
                );
                err.retry_after = Some(1);
                err
            }
            StoreError::Unavailable => {
                let mut err = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store is unavailable; retry shortly",
                );
                err.retry_after = Some(1);
                err
            }
            other => {
                let mut err = Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                );
                err.cause = Some(format!("{other}: {:?}", std::error::Error::source(&other)));
                err
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": format!("urn:trailkeep:problem:{}", self.code),
            "title": self.title(),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if !self.errors.is_empty() {
            body["errors"] = serde_json::to_value(&self.errors).expect("violations serialize");
        }
        let mut res = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(cause) = self.cause {
            res.extensions_mut().insert(InternalCause(cause));
        }
        res
    }
}

/// The bearer token of a request, if well-formed.
#[must_use]
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Why a body could not be turned into JSON.
#[derive(Debug)]
pub enum BodyError {
    /// Over `limits.max_body_bytes`.
    TooLarge(usize),
    /// Nested deeper than `limits.max_json_depth`.
    TooDeep(usize),
    /// Not JSON; the parser's message.
    Malformed(String),
    /// The body could not be read.
    Unreadable(String),
}

/// Reads a JSON body under the configured limits.
///
/// # Errors
/// A [`BodyError`] naming the limit or the parse failure.
pub fn json_body(
    config: &Config,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Bytes, Value), BodyError> {
    let bytes = json_bytes(config, body)?;
    let value = json_value(&bytes)?;
    Ok((bytes, value))
}

/// The parse of [`json_body`], for bytes [`json_bytes`] already checked.
///
/// # Errors
/// [`BodyError::Malformed`] with the parser's message.
pub fn json_value(bytes: &[u8]) -> Result<Value, BodyError> {
    serde_json::from_slice(bytes).map_err(|e| BodyError::Malformed(e.to_string()))
}

/// The checks of [`json_body`] but the parse: size and nesting depth.
///
/// # Errors
/// As [`json_body`], except for malformed JSON, which this does not look for.
pub fn json_bytes(
    config: &Config,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, BodyError> {
    let bytes = match body {
        Ok(b) => b,
        Err(BytesRejection::FailedToBufferBody(e))
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            return Err(BodyError::TooLarge(config.limits.max_body_bytes));
        }
        Err(e) => return Err(BodyError::Unreadable(e.body_text())),
    };
    if !json_depth_ok(&bytes, config.limits.max_json_depth) {
        return Err(BodyError::TooDeep(config.limits.max_json_depth));
    }
    Ok(bytes)
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(max) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body exceeds {max} bytes"),
            ),
            BodyError::TooDeep(max) => Self::new(
                StatusCode::BAD_REQUEST,
                "too_deep",
                format!("JSON nesting exceeds {max} levels"),
            ),
            BodyError::Malformed(msg) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {msg}"),
            ),
            BodyError::Unreadable(msg) => {
                Self::new(StatusCode::BAD_REQUEST, "unreadable_body", msg)
            }
        }
    }
}
