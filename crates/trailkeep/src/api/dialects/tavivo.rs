//! ta-vivo audit-log: `POST /logs` and `GET /logs` with
//! `Authorization: Bearer <JWT>`, HS256 only, verified with `JWT_SECRET`.
//!
//! The JWT check is written out here rather than taken from a JWT crate:
//! the algorithm is pinned to HS256, so the whole check is one HMAC and a
//! few claim comparisons, and the RSA/EC stacks such crates compile are
//! never needed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::{Failure, append_one, new_event, object_body};
use crate::api::{AppState, json_body};
use crate::ingest::Checker;
use crate::model::{Actor, ActorType, Event, Time};
use crate::ratelimit::Credential;
use crate::store::EventQuery;

/// ta-vivo routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/logs", post(create).get(list).fallback(method_not_allowed))
}

async fn method_not_allowed(State(state): State<Arc<AppState>>) -> Response {
    if state.config.dialects.tavivo.jwt_secret.is_none() {
        return render(Refusal::Disabled);
    }
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(json!({"message": "Method not allowed"})),
    )
        .into_response()
}

/// Why a request was refused, in ta-vivo's shapes.
enum Refusal {
    Disabled,
    MissingToken,
    InvalidJwt,
    Other(Failure),
}

impl From<Failure> for Refusal {
    fn from(f: Failure) -> Self {
        Self::Other(f)
    }
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Other(e.into())
    }
}

fn render(r: Refusal) -> Response {
    match r {
        Refusal::Disabled => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "Not found"})),
        )
            .into_response(),
        Refusal::MissingToken => (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Forbidden\n",
        )
            .into_response(),
        Refusal::InvalidJwt => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "Invalid JWT"})),
        )
            .into_response(),
        Refusal::Other(f) => {
            let mut body = match &f {
                Failure::BadRequest { message, .. } => {
                    json!({"message": message.clone().unwrap_or_else(|| "Invalid body".into())})
                }
                Failure::Unauthorized => json!({"message": "Invalid JWT"}),
                Failure::RateLimited(_) => json!({"message": "Rate limit was exceeded."}),
                Failure::Unavailable => json!({"message": "Service unavailable"}),
                Failure::Internal(_) => json!({"message": "Internal error"}),
            };
            f.attach_errors(&mut body);
            f.respond(body)
        }
    }
}

/// Verifies an HS256 JWT and returns its claims.
///
/// # Errors
/// When the token is malformed, not HS256, badly signed, expired, or not
/// yet valid (`nbf`, `iat` in the future).
pub fn verify_hs256(
    token: &str,
    secret: &[u8],
    now_secs: i64,
) -> Result<Map<String, Value>, InvalidJwt> {
    verify_inner(token, secret, now_secs).map_err(|()| InvalidJwt)
}

/// A token that failed verification; deliberately says no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidJwt;

fn verify_inner(token: &str, secret: &[u8], now_secs: i64) -> Result<Map<String, Value>, ()> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(());
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| ())
    };
    let header: Value = serde_json::from_slice(&decode(h)?).map_err(|_| ())?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(());
    }
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).map_err(|_| ())?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&decode(s)?).map_err(|_| ())?;
    let Value::Object(claims) = serde_json::from_slice(&decode(p)?).map_err(|_| ())? else {
        return Err(());
    };
    let number = |k: &str| claims.get(k).map(|v| v.as_f64().ok_or(()));
    if let Some(exp) = number("exp")
        && exp? < now_secs as f64
    {
        return Err(());
    }
    for k in ["nbf", "iat"] {
        if let Some(t) = number(k)
            && t? > now_secs as f64
        {
            return Err(());
        }
    }
    Ok(claims)
}

/// Authenticates and rate-limits; returns the token's principal claim.
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let secret = state
        .config
        .dialects
        .tavivo
        .jwt_secret
        .as_deref()
        .ok_or(Refusal::Disabled)?;
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
    if token.is_empty() {
        return Err(Refusal::MissingToken);
    }
    let claims = verify_hs256(
        token,
        secret.as_bytes(),
        Time::now().as_micros() / 1_000_000,
    )
    .map_err(|InvalidJwt| Refusal::InvalidJwt)?;
    state
        .rate_check(Credential::Jwt)
        .await
        .map_err(|s| Refusal::Other(Failure::RateLimited(s)))?;
    Ok(["sub", "id", "userId"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(super::string_or_integer)))
}

fn member<'v>(obj: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The stored row, as the original serializes it.
fn row(event: &Event) -> Value {
    let user_id = event
        .actor
        .id
        .parse::<u64>()
        .map_or_else(|_| Value::String(event.actor.id.clone()), Value::from);
    let shape = event
        .source
        .as_ref()
        .and_then(|s| s.fields.get("metaData_shape"))
        .and_then(Value::as_str);
    let meta = match shape {
        Some("null") => Value::Null,
        Some("wrapped") => event
            .metadata
            .get("metaData")
            .cloned()
            .unwrap_or(Value::Null),
        _ => Value::Object(event.metadata.clone()),
    };
    json!({
        "id": event.index + 1,
        "userId": user_id,
        "action": event.action,
        "metaData": meta,
        "CreatedAt": event.received_at.to_string(),
        "UpdatedAt": event.received_at.to_string(),
    })
}

async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle_create(&state, &headers, body).await {
        Ok(row) => (StatusCode::CREATED, axum::Json(row)).into_response(),
        Err(r) => render(r),
    }
}

async fn handle_create(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, Refusal> {
    let principal = authorize(state, headers).await?;
    let (project, _) = state.tavivo_project.clone().ok_or(Refusal::Disabled)?;
    let (_, value) = json_body(&state.config, body).map_err(Failure::from)?;
    let limits = &state.config.limits;
    let mut c = Checker::new(limits, "");
    let obj = object_body(&value)?;
    let user_id = match member(obj, "userId") {
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        None | Some(Value::Null) => {
            c.fail("userId", "required", "is required");
            None
        }
        Some(_) => {
            c.fail("userId", "type", "must be a non-negative integer");
            None
        }
    };
    let action = match member(obj, "action") {
        Some(Value::String(s))
            if !s.trim().is_empty() && s.chars().count() <= limits.max_short_field =>
        {
            Some(s.clone())
        }
        None | Some(Value::Null) => {
            c.fail("action", "required", "is required");
            None
        }
        Some(_) => {
            c.fail(
                "action",
                "invalid",
                format!(
                    "must be a non-empty string of at most {} characters",
                    limits.max_short_field
                ),
            );
            None
        }
    };
    let meta = member(obj, "metaData").cloned().unwrap_or(Value::Null);
    let (metadata, shape) = match meta {
        Value::Object(o) => (o, None),
        Value::Null => (Map::new(), Some("null")),
        other => (
            Map::from_iter([("metaData".to_owned(), other)]),
            Some("wrapped"),
        ),
    };
    if crate::ingest::validate::serialized_len(&metadata) > limits.max_metadata_bytes {
        c.fail(
            "metaData",
            "too_large",
            format!(
                "must be at most {} bytes serialized",
                limits.max_metadata_bytes
            ),
        );
    }
    let (Some(user_id), Some(action)) = (user_id, action) else {
        return Err(Failure::invalid(c.violations).into());
    };
    if !c.violations.is_empty() {
        return Err(Failure::invalid(c.violations).into());
    }
    let actor = Actor {
        id: user_id,
        kind: ActorType::User,
        name: None,
        email: None,
        extra: Map::new(),
    };
    let mut event = new_event(
        "tavivo",
        state.config.dialects.tavivo.tenant.clone(),
        action,
        actor,
    );
    event.metadata = metadata;
    let source = event.source.as_mut().expect("dialect events have a source");
    source.principal = principal;
    if let Some(shape) = shape {
        source
            .fields
            .insert("metaData_shape".into(), Value::String(shape.into()));
    }
    let mut stored = event.clone();
    let receipt = append_one(state, project, event, false).await?;
    stored.index = receipt.index;
    Ok(row(&stored))
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    match handle_list(&state, &headers, &params).await {
        Ok(res) => res,
        Err(r) => render(r),
    }
}

async fn handle_list(
    state: &AppState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Response, Refusal> {
    authorize(state, headers).await?;
    let (project, _) = state.tavivo_project.clone().ok_or(Refusal::Disabled)?;
    let bad = |m: &str| {
        Refusal::Other(Failure::BadRequest {
            message: Some(m.to_owned()),
            errors: Vec::new(),
        })
    };
    let limit = match params.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=state.config.limits.max_page_size).contains(n))
            .ok_or_else(|| bad("limit must be a positive integer within the page size limit"))?,
    };
    let before_index = match params.get("before") {
        None => None,
        Some(b) => Some(
            b.parse::<u64>()
                .ok()
                .filter(|b| *b >= 1)
                .ok_or_else(|| bad("before must be a row id"))?
                - 1,
        ),
    };
    let actor = match params.get("userId") {
        None => None,
        Some(u) => Some(
            u.parse::<u64>()
                .map_err(|_| bad("userId must be an integer"))?
                .to_string(),
        ),
    };
    let query = EventQuery {
        tenant: Some(state.config.dialects.tavivo.tenant.clone()),
        actor,
        action: params.get("action").cloned(),
        before_index,
        limit,
        ..EventQuery::default()
    };
    let page = state.store.query(project, query).await?;
    let mut rows = Vec::with_capacity(page.events.len());
    let mut last_id = None;
    for e in &page.events {
        let event = Event::from_leaf(&e.leaf)
            .map_err(|err| Failure::Internal(format!("undecodable leaf: {err}")))?;
        last_id = Some(event.index + 1);
        rows.push(row(&event));
    }
    let mut res = axum::Json(Value::Array(rows)).into_response();
    if let (Some(_), Some(last)) = (page.next_before, last_id)
        && let Ok(v) = HeaderValue::from_str(&format!(
            "</logs?before={last}&limit={limit}>; rel=\"next\""
        ))
    {
        res.headers_mut().insert(header::LINK, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, claims: &str, secret: &[u8]) -> String {
        let h = URL_SAFE_NO_PAD.encode(header);
        let p = URL_SAFE_NO_PAD.encode(claims);
        let mut mac = <Hmac<Sha256>>::new_from_slice(secret).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        format!(
            "{h}.{p}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn only_valid_unexpired_hs256_tokens_pass() {
        let now = 1_700_000_000;
        let ok = token(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"sub":"42","exp":1700000100}"#,
            b"s3cret",
        );
        assert_eq!(verify_hs256(&ok, b"s3cret", now).unwrap()["sub"], "42");
        assert!(verify_hs256(&ok, b"other", now).is_err());
        assert!(
            verify_hs256(&ok, b"s3cret", 1_700_000_100).is_ok(),
            "valid through its exp second, as golang-jwt"
        );
        assert!(
            verify_hs256(&ok, b"s3cret", 1_700_000_101).is_err(),
            "expired"
        );
        let hs512 = token(r#"{"alg":"HS512"}"#, r#"{"sub":"42"}"#, b"s3cret");
        assert!(verify_hs256(&hs512, b"s3cret", now).is_err());
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"1"}"#)
        );
        assert!(verify_hs256(&none, b"s3cret", now).is_err());
        let future = token(r#"{"alg":"HS256"}"#, r#"{"nbf":1800000000}"#, b"s3cret");
        assert!(verify_hs256(&future, b"s3cret", now).is_err());
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(verify_hs256(junk, b"s3cret", now).is_err(), "{junk}");
        }
    }
}
