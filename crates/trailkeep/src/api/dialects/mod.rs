//! Drop-in ingestion APIs of hosted audit-log services. Each dialect is one
//! file that owns its wire types, validation messages and response shapes,
//! and converts requests into the canonical [`crate::model::Event`]. The
//! design and every judgment call are in `docs/dialects.md`.

pub mod auditr;
pub mod loghub;
pub mod logsh;
pub mod logzab;
pub mod tavivo;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{AppState, BodyError};
use crate::ingest::Violation;
use crate::model::{Event, LEAF_VERSION, Source, Time};
use crate::ratelimit::Credential;
use crate::store::{AppendJob, AppendOutcome, Principal, Receipt, StoreError};

/// Routes of every dialect.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .merge(loghub::routes())
        .merge(logsh::routes())
        .merge(logzab::routes())
        .merge(auditr::routes())
        .merge(tavivo::routes())
}

/// Why a dialect request failed, before it is put in the dialect's shape.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The body or a field is invalid.
    BadRequest {
        /// A specific message, when the dialect's fixed one is not enough.
        message: Option<String>,
        /// Every violation found.
        errors: Vec<Violation>,
    },
    /// Missing or invalid credentials.
    Unauthorized,
    /// Over the rate limit; seconds to wait.
    RateLimited(u64),
    /// The store is overloaded or down.
    Unavailable,
    /// A bug or a broken store; the cause is logged, never sent.
    Internal(String),
}

impl Failure {
    pub(crate) fn invalid(errors: Vec<Violation>) -> Self {
        Self::BadRequest {
            message: None,
            errors,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Sends `body` with this failure's status, `Retry-After` where due,
    /// and the internal cause in the response extensions for the log.
    pub(crate) fn respond(self, body: Value) -> Response {
        let mut res = (self.status(), axum::Json(body)).into_response();
        match self {
            Self::RateLimited(secs) => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Self::Unavailable => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            Self::Internal(cause) => {
                res.extensions_mut().insert(super::InternalCause(cause));
            }
            _ => {}
        }
        res
    }

    /// Adds `errors: [{field, code, message}]` to a 400 body that has any.
    pub(crate) fn attach_errors(&self, body: &mut Value) {
        if let Self::BadRequest { errors, .. } = self
            && !errors.is_empty()
        {
            body["errors"] = serde_json::to_value(errors).expect("violations serialize");
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded | StoreError::Unavailable => Self::Unavailable,
            other => Self::Internal(format!("{other}: {:?}", std::error::Error::source(&other))),
        }
    }
}

impl From<BodyError> for Failure {
    fn from(e: BodyError) -> Self {
        let message = match e {
            BodyError::TooLarge(max) => format!("Request body exceeds {max} bytes."),
            BodyError::TooDeep(max) => format!("Request body nests JSON deeper than {max} levels."),
            BodyError::Malformed(msg) => format!("Request body is not valid JSON: {msg}"),
            BodyError::Unreadable(msg) => format!("Request body could not be read: {msg}"),
        };
        Self::BadRequest {
            message: Some(message),
            errors: Vec::new(),
        }
    }
}

/// Resolves an API key and charges the rate limit.
pub(crate) async fn authenticate(
    state: &AppState,
    key: Option<&str>,
) -> Result<Principal, Failure> {
    authenticate_if(state, key, |_| true).await
}

/// Resolves an API key, applies a further credential check, and only then
/// charges the rate limit, so failed authentication never uses quota.
pub(crate) async fn authenticate_if(
    state: &AppState,
    key: Option<&str>,
    accept: impl FnOnce(&Principal) -> bool,
) -> Result<Principal, Failure> {
    let key = key.filter(|k| !k.is_empty()).ok_or(Failure::Unauthorized)?;
    let principal = state
        .authenticate(key)
        .await?
        .ok_or(Failure::Unauthorized)?;
    if !accept(&principal) {
        return Err(Failure::Unauthorized);
    }
    state
        .rate_check(Credential::Key(principal.key_id))
        .await
        .map_err(Failure::RateLimited)?;
    Ok(principal)
}

/// A canonical event with the server-assigned fields filled in; the
/// dialect sets the rest.
pub(crate) fn new_event(
    dialect: &str,
    tenant: String,
    action: String,
    actor: crate::model::Actor,
) -> Event {
    let now = Time::now();
    Event {
        v: LEAF_VERSION,
        id: crate::ingest::validate::new_event_id(now),
        tenant,
        index: 0,
        received_at: now,
        occurred_at: now,
        action,
        actor,
        targets: Vec::new(),
        result: None,
        description: None,
        tags: Vec::new(),
        context: crate::model::Context::default(),
        metadata: serde_json::Map::new(),
        source: Some(Source {
            dialect: dialect.to_owned(),
            principal: None,
            fields: serde_json::Map::new(),
        }),
    }
}

/// Durably appends one event and returns its receipt.
pub(crate) async fn append_one(
    state: &AppState,
    project: i64,
    event: Event,
    notify: bool,
) -> Result<Receipt, Failure> {
    if let Some(field) = event.nul_in_indexed_text() {
        return Err(Failure::invalid(vec![Violation {
            field: "/".into(),
            code: "invalid",
            message: format!("text must not contain U+0000 (canonical field {field})"),
        }]));
    }
    let job = AppendJob {
        project,
        events: vec![event],
        idempotency: None,
        notify,
    };
    match state.store.append(job).await? {
        AppendOutcome::Committed(mut receipts) if receipts.len() == 1 => Ok(receipts.remove(0)),
        other => Err(Failure::Internal(format!(
            "unexpected append outcome {other:?}"
        ))),
    }
}

/// The request body as a JSON object, or the dialect-neutral 400 saying it
/// is not one (field `/`).
pub(crate) fn object_body(value: &Value) -> Result<&serde_json::Map<String, Value>, Failure> {
    value.as_object().ok_or_else(|| {
        Failure::invalid(vec![Violation {
            field: "/".into(),
            code: "type",
            message: "the body must be a JSON object".into(),
        }])
    })
}

/// A string or JSON integer as text (ids that some clients send as numbers).
pub(crate) fn string_or_integer(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}
