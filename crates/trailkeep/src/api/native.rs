//! The native API: the canonical event model on the wire, queries, and the
//! verifiable-log endpoints (checkpoints, proofs, export).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tlog::{Hash, HashReader, NodeId, TlogError};
use utoipa::ToSchema;

use super::{ApiError, AppState, bearer, json_body, json_bytes, json_value};
use crate::config::Limits;
use crate::ingest::Checker;
use crate::ingest::Violation;
use crate::ingest::validate::{new_event_id, serialized_len};
use crate::model::{Actor, ActorType, Context, LEAF_VERSION, Outcome, RequestInfo, Target};
use crate::model::{Event, Time};
use crate::store::{
    AppendJob, AppendOutcome, Cursor, EventQuery, Idempotency, Principal, Receipt, StoredResponse,
    TreeHead,
};
use serde_json::Map;

mod wire;

/// Routes of the native API.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/events", post(create_event).get(list_events))
        .route("/v1/events/batch", post(create_batch))
        .route("/v1/events/{id}", get(get_event))
        .route("/v1/events/{id}/proof", get(event_proof))
        .route("/v1/tenants/{tenant}/checkpoint", get(checkpoint))
        .route("/v1/tenants/{tenant}/consistency", get(consistency))
        .route("/v1/tenants/{tenant}/export", get(export))
        .route("/v1/webhooks", post(create_webhook).get(list_webhooks))
        .route("/v1/webhooks/{id}", axum::routing::delete(delete_webhook))
}

/// An event as sent to `POST /v1/events` (documentation of the wire shape).
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "describes the wire format for OpenAPI; parsing is field-by-field"
)]
pub struct EventIn {
    /// Tenant (end-customer scope); default `default`.
    tenant: Option<String>,
    /// What was done, e.g. `user.login`.
    action: String,
    /// RFC 3339; default: the time the server received it.
    occurred_at: Option<String>,
    /// Who did it.
    actor: ActorIn,
    /// What it was done to.
    targets: Option<Vec<TargetIn>>,
    /// `success` or `failure`.
    result: Option<String>,
    /// Human-readable description.
    description: Option<String>,
    /// Labels.
    tags: Option<Vec<String>>,
    /// Where and how.
    context: Option<ContextIn>,
    /// Any JSON object.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

/// The actor of an event; further string properties are kept.
#[derive(ToSchema)]
#[allow(dead_code, reason = "wire documentation")]
pub struct ActorIn {
    /// Caller's id of the actor.
    id: String,
    /// `user` (default), `system` or `machine`.
    r#type: Option<String>,
    /// Display name.
    name: Option<String>,
    /// Email.
    email: Option<String>,
}

/// A target of an event.
#[derive(ToSchema)]
#[allow(dead_code, reason = "wire documentation")]
pub struct TargetIn {
    /// Caller's id of the target.
    id: String,
    /// Kind of target.
    r#type: Option<String>,
    /// Display name.
    name: Option<String>,
}

/// Request context of an event.
#[derive(ToSchema)]
#[allow(dead_code, reason = "wire documentation")]
pub struct ContextIn {
    /// Client IP (IPv4 or IPv6).
    ip: Option<String>,
    /// Client user agent.
    user_agent: Option<String>,
    /// Free-form location.
    location: Option<String>,
    /// The HTTP request: `method`, `path`, `status`.
    #[schema(value_type = Option<Object>)]
    request: Option<Value>,
}

/// A batch of events.
#[derive(ToSchema)]
#[allow(dead_code, reason = "wire documentation")]
pub struct BatchIn {
    /// Up to `limits.max_batch_events` events; all are stored or none.
    events: Vec<EventIn>,
}

/// The receipt of one stored event.
#[derive(serde::Serialize, ToSchema)]
pub struct ReceiptOut {
    /// Event id (UUIDv7).
    id: String,
    /// Tenant.
    tenant: String,
    /// Leaf index in the tenant's log.
    index: u64,
    /// Receive time, RFC 3339.
    received_at: String,
    /// RFC 6962 leaf hash of the event's leaf encoding, standard base64.
    leaf_hash: String,
}

impl From<&Receipt> for ReceiptOut {
    fn from(r: &Receipt) -> Self {
        Self {
            id: r.id.to_string(),
            tenant: r.tenant.clone(),
            index: r.index,
            received_at: r.received_at.to_string(),
            leaf_hash: B64.encode(r.leaf_hash),
        }
    }
}

/// An inclusion proof.
#[derive(serde::Serialize, ToSchema)]
pub struct ProofOut {
    /// Leaf index.
    leaf_index: u64,
    /// Tree size the proof is for.
    tree_size: u64,
    /// Leaf hash, base64.
    leaf_hash: String,
    /// RFC 6962 audit path, base64.
    hashes: Vec<String>,
    /// Signed checkpoint of `tree_size`.
    checkpoint: String,
}

/// A consistency proof.
#[derive(serde::Serialize, ToSchema)]
pub struct ConsistencyOut {
    /// Old tree size.
    from: u64,
    /// New tree size.
    to: u64,
    /// RFC 6962 consistency proof, base64.
    hashes: Vec<String>,
}

async fn principal(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let key = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    let p = state
        .authenticate(key)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    if let Err(secs) = state
        .rate_check(crate::ratelimit::Credential::Key(p.key_id))
        .await
    {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "rate limit exceeded; retry later",
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    Ok(p)
}

fn idempotency_key(
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
) -> Result<Option<Idempotency>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?;
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(body);
    Ok(Some(Idempotency {
        key: key.to_owned(),
        request_hash: h.finalize().into(),
    }))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Sends a job and turns the outcome into the response `render` builds.
///
/// # Errors
/// Store failures and idempotency conflicts.
pub async fn append(
    state: &AppState,
    project: i64,
    events: Vec<Event>,
    idempotency: Option<Idempotency>,
    render: impl Fn(&[Receipt]) -> StoredResponse + Send + Sync + Clone + 'static,
) -> Result<StoredResponse, AppendError> {
    let nul: Vec<Violation> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            e.nul_in_indexed_text().map(|field| Violation {
                field: format!("/events/{i}/{}", field.replace('.', "/")),
                code: "invalid",
                message: "must not contain U+0000".into(),
            })
        })
        .collect();
    if !nul.is_empty() {
        return Err(AppendError::Invalid(nul));
    }
    let job = AppendJob {
        project,
        events,
        idempotency: idempotency
            .map(|i| (i, Box::new(render.clone()) as crate::store::RenderResponse)),
        notify: false,
    };
    match state.store.append(job).await.map_err(AppendError::Store)? {
        AppendOutcome::Committed(receipts) => Ok(render(&receipts)),
        AppendOutcome::Replayed(res) => Ok(res),
        AppendOutcome::IdempotencyConflict => Err(AppendError::IdempotencyConflict),
    }
}

/// Why an append was not acknowledged.
#[derive(Debug)]
pub enum AppendError {
    /// The store failed.
    Store(crate::store::StoreError),
    /// The idempotency key was used with a different request.
    IdempotencyConflict,
    /// A field holds text no store can index.
    Invalid(Vec<Violation>),
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Store(e) => e.into(),
            AppendError::Invalid(v) => ApiError::validation(v),
            AppendError::IdempotencyConflict => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request in the last 24 hours",
            ),
        }
    }
}

/// Store one event.
#[utoipa::path(post, path = "/v1/events", request_body = EventIn,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key; replays the original response for 24 h")),
    responses((status = 201, body = ReceiptOut), (status = 401), (status = 413), (status = 422)),
    security(("bearer" = [])))]
async fn create_event(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let bytes = json_bytes(&state.config, body)?;
    let limits = &state.config.limits;
    let now = Time::now();
    // Err holds the parsed body for the general path, which words every
    // violation; the fast path takes only what that path would accept.
    let parsed = match wire::event(&bytes, limits, now) {
        Some(event) => Ok(event),
        None => Err(json_value(&bytes)?),
    };
    let idem = idempotency_key(&headers, "/v1/events", &bytes)?;
    let event = match parsed {
        Ok(event) => event,
        Err(value) => native_event(&value, limits, "", now).map_err(ApiError::validation)?,
    };
    let res = append(&state, p.project, vec![event], idem, |r: &[Receipt]| {
        StoredResponse {
            status: 201,
            body: serde_json::to_vec(&ReceiptOut::from(&r[0])).expect("serializes"),
        }
    })
    .await?;
    Ok(json_response(
        StatusCode::from_u16(res.status).unwrap_or(StatusCode::CREATED),
        res.body,
    ))
}

/// Store many events atomically.
#[utoipa::path(post, path = "/v1/events/batch", request_body = BatchIn,
    responses((status = 201, description = "`{\"events\": [receipt, ...]}`"), (status = 401), (status = 413), (status = 422)),
    security(("bearer" = [])))]
async fn create_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let bytes = json_bytes(&state.config, body)?;
    // A parsed event takes about ten times the memory of its JSON (7 KB for
    // a 600-byte event), so a well-formed batch is parsed one event at a
    // time; anything else takes the general path, which words every error.
    let items = batch_items(&bytes);
    let value: Option<Value> = match items {
        Some(_) => None,
        None => Some(json_value(&bytes)?),
    };
    let idem = idempotency_key(&headers, "/v1/events/batch", &bytes)?;
    let limits = &state.config.limits;
    let now = Time::now();
    let events = match (&items, &value) {
        (Some(items), _) => batch_events(items.len(), limits, |i| {
            let raw = items[i].get();
            if let Some(event) = wire::event(raw.as_bytes(), limits, now) {
                return Ok(Ok(event));
            }
            let value = json_value(raw.as_bytes())?;
            Ok(native_event(&value, limits, &format!("/events/{i}"), now))
        })?,
        (None, value) => {
            let Some(items) = value
                .as_ref()
                .and_then(|v| v.get("events"))
                .and_then(Value::as_array)
            else {
                return Err(ApiError::validation(vec![Violation {
                    field: "/events".into(),
                    code: "required",
                    message: "must be an array of events".into(),
                }]));
            };
            batch_events(items.len(), limits, |i| {
                Ok(native_event(
                    &items[i],
                    limits,
                    &format!("/events/{i}"),
                    now,
                ))
            })?
        }
    };
    // The body is not needed while the commit is awaited; the events are.
    drop((items, value));
    drop(bytes);
    let res = append(&state, p.project, events, idem, |r: &[Receipt]| {
        StoredResponse {
            status: 201,
            body: serde_json::to_vec(&serde_json::json!({
                "events": r.iter().map(ReceiptOut::from).collect::<Vec<_>>()
            }))
            .expect("serializes"),
        }
    })
    .await?;
    Ok(json_response(
        StatusCode::from_u16(res.status).unwrap_or(StatusCode::CREATED),
        res.body,
    ))
}

/// The items of a batch body `{"events": [...]}` as raw JSON, when the body
/// is an object with an `events` array and no other or repeated member at
/// the top. Other members go to the general path, which ignores them once
/// it has parsed them: skipped here, they would not be checked as JSON.
fn batch_items(bytes: &[u8]) -> Option<Vec<&serde_json::value::RawValue>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Top<'a> {
        #[serde(borrow)]
        events: Option<&'a serde_json::value::RawValue>,
    }
    let top: Top<'_> = serde_json::from_slice(bytes).ok()?;
    serde_json::from_str(top.events?.get()).ok()
}

/// Validates `n` batch items into events, item `i` validated by `item(i)`;
/// every violation of every item is reported together.
fn batch_events(
    n: usize,
    limits: &crate::config::Limits,
    item: impl Fn(usize) -> Result<Result<Event, Vec<Violation>>, ApiError>,
) -> Result<Vec<crate::model::Event>, ApiError> {
    if n == 0 || n > limits.max_batch_events {
        return Err(ApiError::validation(vec![Violation {
            field: "/events".into(),
            code: "batch_size",
            message: format!("must hold 1 to {} events", limits.max_batch_events),
        }]));
    }
    let mut events = Vec::with_capacity(n);
    let mut violations = Vec::new();
    for i in 0..n {
        match item(i)? {
            Ok(e) => events.push(e),
            Err(v) => violations.extend(v),
        }
    }
    if !violations.is_empty() {
        return Err(ApiError::validation(violations));
    }
    Ok(events)
}

/// `s:{seq}` for an arrival-ordered listing, `t:{occurred_at micros}:{seq}`
/// for a time-ordered one, base64url without padding. The `s:` form is the
/// one every earlier cursor has, so those stay valid.
fn encode_cursor(c: Cursor) -> String {
    URL_SAFE_NO_PAD.encode(match c {
        Cursor::Seq(seq) => format!("s:{seq}"),
        Cursor::Time { occurred_at, seq } => format!("t:{occurred_at}:{seq}"),
    })
}

fn decode_cursor(c: &str) -> Option<Cursor> {
    let raw = URL_SAFE_NO_PAD.decode(c).ok()?;
    let text = std::str::from_utf8(&raw).ok()?;
    if let Some(seq) = text.strip_prefix("s:") {
        return Some(Cursor::Seq(seq.parse().ok()?));
    }
    let (occurred_at, seq) = text.strip_prefix("t:")?.split_once(':')?;
    Some(Cursor::Time {
        occurred_at: occurred_at.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

/// Splits free text into the terms the full-text index holds: runs of
/// letters and digits, lower-cased (both stores tokenize this way).
#[must_use]
pub fn search_terms(q: &str) -> Vec<String> {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn parse_query(params: &HashMap<String, String>, max_page: usize) -> Result<EventQuery, ApiError> {
    const KNOWN: &[&str] = &[
        "tenant", "actor", "action", "target", "tag", "result", "since", "until", "q", "limit",
        "cursor",
    ];
    let mut errors = Vec::new();
    let mut bad = |field: &str, code: &'static str, message: String| {
        errors.push(Violation {
            field: field.to_owned(),
            code,
            message,
        });
    };
    for k in params.keys() {
        if !KNOWN.contains(&k.as_str()) {
            bad(
                k,
                "unknown_parameter",
                format!(
                    "unknown query parameter; expected one of {}",
                    KNOWN.join(", ")
                ),
            );
        }
    }
    for (k, v) in params {
        if v.contains('\0') {
            bad(k, "invalid", "must not contain U+0000".into());
        }
    }
    let mut q = EventQuery {
        limit: 50,
        ..EventQuery::default()
    };
    let non_empty = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
    q.tenant = non_empty("tenant");
    q.actor = non_empty("actor");
    q.target = non_empty("target");
    q.tag = non_empty("tag");
    if let Some(a) = non_empty("action") {
        match a.strip_suffix('*') {
            Some(prefix) => q.action_prefix = Some(prefix.to_owned()),
            None => q.action = Some(a),
        }
    }
    if let Some(r) = non_empty("result") {
        if r == "success" || r == "failure" {
            q.result = Some(r);
        } else {
            bad("result", "invalid", "must be success or failure".into());
        }
    }
    for (k, slot) in [("since", &mut q.since), ("until", &mut q.until)] {
        if let Some(v) = non_empty(k) {
            match Time::parse_rfc3339(&v) {
                Ok(t) => *slot = Some(t),
                Err(m) => bad(k, "invalid", m),
            }
        }
    }
    if let Some(text) = non_empty("q") {
        q.text_terms = search_terms(&text);
    }
    if let Some(l) = params.get("limit") {
        match l.parse::<usize>() {
            Ok(n) if (1..=max_page).contains(&n) => q.limit = n,
            _ => bad(
                "limit",
                "invalid",
                format!("must be an integer from 1 to {max_page}"),
            ),
        }
    }
    if let Some(c) = non_empty("cursor") {
        // A cursor pages only the kind of listing it came from: the time
        // filters pick the order, so they must be given again alike.
        match decode_cursor(&c).filter(|c| c.order() == q.order()) {
            Some(cursor) => q.before = Some(cursor),
            None => bad(
                "cursor",
                "invalid",
                "is not a cursor returned by this API".into(),
            ),
        }
    }
    if errors.is_empty() {
        Ok(q)
    } else {
        let mut e = ApiError::validation(errors);
        e.status = StatusCode::BAD_REQUEST;
        e.code = "invalid_query";
        Err(e)
    }
}

/// List events, newest first.
///
/// Without `since` or `until` the order is arrival order (newest arrival
/// first). With either, it is event time: `occurred_at` descending, events
/// with equal `occurred_at` newest arrival first. A `cursor` continues only
/// a listing of the same kind, so repeat the filters of the first page.
#[utoipa::path(get, path = "/v1/events",
    params(
        ("tenant" = Option<String>, Query, description = "Exact tenant"),
        ("actor" = Option<String>, Query, description = "Exact actor id"),
        ("action" = Option<String>, Query, description = "Exact action, or a prefix ending in `*` (`user.*`)"),
        ("target" = Option<String>, Query, description = "Exact target id"),
        ("tag" = Option<String>, Query, description = "Exact tag"),
        ("result" = Option<String>, Query, description = "success or failure"),
        ("since" = Option<String>, Query, description = "occurred_at >= since (RFC 3339); orders the listing by occurred_at"),
        ("until" = Option<String>, Query, description = "occurred_at < until (RFC 3339); orders the listing by occurred_at"),
        ("q" = Option<String>, Query, description = "Full text: every word must appear"),
        ("limit" = Option<usize>, Query, description = "Page size, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page, with the same filters; a cursor from a listing with `since`/`until` used without them, or the reverse, is refused (400)"),
    ),
    responses((status = 200, description = "`{\"data\": [event, ...], \"next_cursor\": string|null}`"), (status = 400), (status = 401)),
    security(("bearer" = [])))]
async fn list_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let query = parse_query(&params, state.config.limits.max_page_size)?;
    let page = state.store.query(p.project, query).await?;
    let mut body =
        Vec::with_capacity(page.events.iter().map(|e| e.leaf.len() + 1).sum::<usize>() + 64);
    body.extend_from_slice(b"{\"data\":[");
    for (i, e) in page.events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.leaf);
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    match page.next_before {
        Some(c) => body.extend_from_slice(format!("\"{}\"}}", encode_cursor(c)).as_bytes()),
        None => body.extend_from_slice(b"null}"),
    }
    Ok(json_response(StatusCode::OK, body))
}

/// One event.
#[utoipa::path(get, path = "/v1/events/{id}", params(("id" = String, Path, description = "Event id")),
    responses((status = 200, description = "The event (its leaf encoding)"), (status = 404)), security(("bearer" = [])))]
async fn get_event(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::not_found("event"))?;
    let e = state
        .store
        .get(p.project, id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    Ok(json_response(StatusCode::OK, e.leaf))
}

/// Collects the node ids a tlog computation asks for, answering zeros.
struct Recorder(std::sync::Mutex<Vec<NodeId>>);

impl HashReader for Recorder {
    fn read_hashes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, TlogError> {
        self.0.lock().expect("lock").extend_from_slice(ids);
        Ok(vec![[0u8; 32]; ids.len()])
    }
}

/// Runs a pure tlog computation over stored nodes: once to learn which
/// nodes it reads, one batched store read, then again over those nodes.
async fn with_nodes<T>(
    state: &AppState,
    tenant_id: i64,
    f: impl Fn(&dyn HashReader) -> Result<T, TlogError>,
) -> Result<T, ApiError> {
    let recorder = Recorder(std::sync::Mutex::default());
    f(&recorder).map_err(tlog_error)?;
    let ids = recorder.0.into_inner().expect("lock");
    let hashes = state.store.read_nodes(tenant_id, ids.clone()).await?;
    let map: HashMap<NodeId, Hash> = ids.into_iter().zip(hashes).collect();
    f(&map).map_err(tlog_error)
}

fn tlog_error(e: TlogError) -> ApiError {
    match e {
        TlogError::OutOfRange { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "out_of_range", e.to_string())
        }
        other => {
            let mut err = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            );
            err.cause = Some(other.to_string());
            err
        }
    }
}

async fn head(state: &AppState, p: &Principal, tenant: &str) -> Result<TreeHead, ApiError> {
    state
        .store
        .tree_head(p.project, tenant.to_owned())
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))
}

async fn signed_checkpoint(
    state: &AppState,
    p: &Principal,
    tenant: &str,
    head: &TreeHead,
    size: u64,
) -> Result<String, ApiError> {
    let root = if size == head.size {
        head.root
    } else {
        with_nodes(state, head.tenant_id, |r| tlog::tree_hash(size, r)).await?
    };
    Ok(state
        .log
        .sign(state.log.origin(&p.project_name, tenant), size, root))
}

fn size_param(params: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(key)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                let mut e = ApiError::validation(vec![Violation {
                    field: key.into(),
                    code: "invalid",
                    message: "must be a non-negative integer".into(),
                }]);
                e.status = StatusCode::BAD_REQUEST;
                e.code = "invalid_query";
                e
            })
        })
        .transpose()
}

/// The tenant's latest signed checkpoint (C2SP tlog-checkpoint, signed note).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/checkpoint", params(("tenant" = String, Path)),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404)), security(("bearer" = [])))]
async fn checkpoint(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let h = head(&state, &p, &tenant).await?;
    let note = signed_checkpoint(&state, &p, &tenant, &h, h.size).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

/// Inclusion proof of an event in its tenant's log.
#[utoipa::path(get, path = "/v1/events/{id}/proof",
    params(("id" = String, Path), ("tree_size" = Option<u64>, Query, description = "Default: the latest size")),
    responses((status = 200, body = ProofOut), (status = 400), (status = 404)), security(("bearer" = [])))]
async fn event_proof(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::not_found("event"))?;
    let stored = state
        .store
        .get(p.project, id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let event = Event::from_leaf(&stored.leaf).map_err(|e| {
        let mut err = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        );
        err.cause = Some(format!("undecodable leaf: {e}"));
        err
    })?;
    let h = head(&state, &p, &event.tenant).await?;
    let size = size_param(&params, "tree_size")?.unwrap_or(h.size);
    if size <= event.index || size > h.size {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "out_of_range",
            format!("tree_size must be in {}..={}", event.index + 1, h.size),
        ));
    }
    let index = event.index;
    let hashes = with_nodes(&state, h.tenant_id, |r| {
        tlog::inclusion_proof(index, size, r)
    })
    .await?;
    let checkpoint = signed_checkpoint(&state, &p, &event.tenant, &h, size).await?;
    Ok(axum::Json(ProofOut {
        leaf_index: index,
        tree_size: size,
        leaf_hash: B64.encode(tlog::leaf_hash(&stored.leaf)),
        hashes: hashes.iter().map(|h| B64.encode(h)).collect(),
        checkpoint,
    })
    .into_response())
}

/// Consistency proof between two sizes of a tenant's log.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/consistency",
    params(("tenant" = String, Path), ("from" = u64, Query), ("to" = Option<u64>, Query, description = "Default: the latest size")),
    responses((status = 200, body = ConsistencyOut), (status = 400), (status = 404)), security(("bearer" = [])))]
async fn consistency(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let h = head(&state, &p, &tenant).await?;
    let from = size_param(&params, "from")?.unwrap_or(0);
    let to = size_param(&params, "to")?.unwrap_or(h.size);
    if from > to || to > h.size {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "out_of_range",
            format!("need from <= to <= {}", h.size),
        ));
    }
    let hashes = with_nodes(&state, h.tenant_id, |r| {
        tlog::consistency_proof(from, to, r)
    })
    .await?;
    Ok(axum::Json(ConsistencyOut {
        from,
        to,
        hashes: hashes.iter().map(|h| B64.encode(h)).collect(),
    })
    .into_response())
}

/// Rows per store read while exporting.
const EXPORT_CHUNK: u64 = 1000;

/// Every event of a tenant, one leaf per line, then the checkpoint.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/export",
    params(("tenant" = String, Path), ("format" = Option<String>, Query, description = "Only `ndjson`")),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 404)), security(("bearer" = [])))]
async fn export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    if params.get("format").is_some_and(|f| f != "ndjson") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_format",
            "format must be ndjson",
        ));
    }
    let h = head(&state, &p, &tenant).await?;
    let checkpoint = signed_checkpoint(&state, &p, &tenant, &h, h.size).await?;
    let stream = crate::export::stream(
        state.store.clone(),
        h.tenant_id,
        h.size,
        checkpoint,
        EXPORT_CHUNK,
    );
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Validates one native-API event object and builds the canonical event
/// (index 0 until the store assigns it).
///
/// # Errors
/// Every violation found.
pub(crate) fn native_event(
    value: &Value,
    limits: &Limits,
    prefix: &str,
    received_at: Time,
) -> Result<Event, Vec<Violation>> {
    let mut c = Checker::new(limits, prefix);
    let Some(obj) = value.as_object() else {
        c.violations.push(Violation {
            field: if prefix.is_empty() {
                "/".into()
            } else {
                prefix.into()
            },
            code: "type",
            message: "an event must be a JSON object".into(),
        });
        return Err(c.violations);
    };
    let short = limits.max_short_field;
    let text = limits.max_text_field;
    const KNOWN: &[&str] = &[
        "tenant",
        "action",
        "occurred_at",
        "actor",
        "targets",
        "result",
        "description",
        "tags",
        "context",
        "metadata",
    ];
    for key in obj.keys() {
        if !KNOWN.contains(&key.as_str()) {
            c.fail(
                key,
                "unknown_field",
                format!("unknown field; expected one of {}", KNOWN.join(", ")),
            );
        }
    }
    let tenant = c
        .opt_str(obj, "tenant", "tenant", short)
        .unwrap_or_else(|| "default".into());
    let action = c.req_str(obj, "action", "action", short);
    let occurred_at = c.opt_time(obj, "occurred_at", "occurred_at");
    let actor = match obj.get("actor") {
        None | Some(Value::Null) => {
            c.fail("actor", "required", "is required");
            None
        }
        Some(Value::Object(a)) => {
            let id = c.req_str(a, "id", "actor/id", short);
            let kind = match a.get("type") {
                None | Some(Value::Null) => Some(ActorType::User),
                Some(Value::String(s)) => match s.as_str() {
                    "user" => Some(ActorType::User),
                    "system" => Some(ActorType::System),
                    "machine" => Some(ActorType::Machine),
                    _ => {
                        c.fail(
                            "actor/type",
                            "invalid",
                            "must be one of user, system, machine",
                        );
                        None
                    }
                },
                Some(_) => {
                    c.fail("actor/type", "type", "must be a string");
                    None
                }
            };
            let name = c.opt_str(a, "name", "actor/name", text);
            let email = c.opt_str(a, "email", "actor/email", text);
            let mut extra = Map::new();
            for (k, v) in a {
                if !matches!(k.as_str(), "id" | "type" | "name" | "email") {
                    extra.insert(k.clone(), v.clone());
                }
            }
            if serialized_len(&extra) > limits.max_metadata_bytes {
                c.fail("actor", "too_large", "extra actor attributes are too large");
            }
            match (id, kind) {
                (Some(id), Some(kind)) => Some(Actor {
                    id,
                    kind,
                    name,
                    email,
                    extra,
                }),
                _ => None,
            }
        }
        Some(_) => {
            c.fail("actor", "type", "must be an object");
            None
        }
    };
    let targets = match obj.get("targets") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() > limits.max_targets => {
            c.fail(
                "targets",
                "too_many",
                format!("at most {} targets", limits.max_targets),
            );
            Vec::new()
        }
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let Some(t) = item.as_object() else {
                    c.fail(&format!("targets/{i}"), "type", "must be an object");
                    continue;
                };
                let id = c.req_str(t, "id", &format!("targets/{i}/id"), short);
                let kind = c.opt_str(t, "type", &format!("targets/{i}/type"), short);
                let name = c.opt_str(t, "name", &format!("targets/{i}/name"), text);
                if let Some(id) = id {
                    out.push(Target { id, kind, name });
                }
            }
            out
        }
        Some(_) => {
            c.fail("targets", "type", "must be an array of objects");
            Vec::new()
        }
    };
    let result = match c.opt_str(obj, "result", "result", short).as_deref() {
        None => None,
        Some("success") => Some(Outcome::Success),
        Some("failure") => Some(Outcome::Failure),
        Some(_) => {
            c.fail("result", "invalid", "must be success or failure");
            None
        }
    };
    let description = c.opt_str(obj, "description", "description", text);
    let tags = c.tags(obj.get("tags"), "tags");
    let context = match c.opt_obj(obj, "context", "context") {
        None => Context::default(),
        Some(ctx) => {
            let ip = c.opt_str(ctx, "ip", "context/ip", short);
            if let Some(ip) = &ip
                && ip.parse::<std::net::IpAddr>().is_err()
            {
                c.fail("context/ip", "invalid", "must be an IPv4 or IPv6 address");
            }
            let user_agent = c.opt_str(ctx, "user_agent", "context/user_agent", text);
            let location = c.opt_str(ctx, "location", "context/location", text);
            let request = match c.opt_obj(ctx, "request", "context/request") {
                None => RequestInfo::default(),
                Some(r) => {
                    let method = c.opt_str(r, "method", "context/request/method", short);
                    let path = c.opt_str(r, "path", "context/request/path", text);
                    let status = match r.get("status") {
                        None | Some(Value::Null) => None,
                        Some(v) => match v.as_u64() {
                            Some(s) if (100..=599).contains(&s) => Some(s as u16),
                            _ => {
                                c.fail(
                                    "context/request/status",
                                    "invalid",
                                    "must be an integer from 100 to 599",
                                );
                                None
                            }
                        },
                    };
                    RequestInfo {
                        method,
                        path,
                        status,
                    }
                }
            };
            Context {
                ip,
                user_agent,
                location,
                request,
            }
        }
    };
    let metadata = c.metadata(obj.get("metadata"), "metadata");
    let event = match (action, actor) {
        (Some(action), Some(actor)) => Some(Event {
            v: LEAF_VERSION,
            id: new_event_id(received_at),
            tenant,
            index: 0,
            received_at,
            occurred_at: occurred_at.unwrap_or(received_at),
            action,
            actor,
            targets,
            result,
            description,
            tags,
            context,
            metadata,
            source: None,
        }),
        _ => None,
    };
    c.finish(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_every_violation_at_once() {
        let limits = Limits {
            max_short_field: 8,
            ..Limits::default()
        };
        let v = json!({"action": 5, "actor": {"type": "robot"}, "tags": ["ok", "", 3], "result": "maybe",
                       "context": {"ip": "1.2.3"}, "occurred_at": "yesterday", "extra": 1, "tenant": "waytoolongname"});
        let errs = native_event(&v, &limits, "", Time::now()).unwrap_err();
        let fields: Vec<(&str, &str)> = errs.iter().map(|e| (e.field.as_str(), e.code)).collect();
        for want in [
            ("/extra", "unknown_field"),
            ("/tenant", "too_long"),
            ("/action", "type"),
            ("/occurred_at", "invalid"),
            ("/actor/id", "required"),
            ("/actor/type", "invalid"),
            ("/result", "invalid"),
            ("/tags/1", "empty"),
            ("/tags/2", "type"),
            ("/context/ip", "invalid"),
        ] {
            assert!(fields.contains(&want), "missing {want:?} in {fields:?}");
        }
    }

    #[test]
    fn cursors_keep_their_wire_format() {
        // `s:` is the format of every cursor issued before time ordering.
        assert_eq!(encode_cursor(Cursor::Seq(42)), "czo0Mg");
        assert_eq!(decode_cursor("czo0Mg"), Some(Cursor::Seq(42)));
        let t = Cursor::Time {
            occurred_at: -5,
            seq: 7,
        };
        assert_eq!(URL_SAFE_NO_PAD.decode(encode_cursor(t)).unwrap(), b"t:-5:7");
        assert_eq!(decode_cursor(&encode_cursor(t)), Some(t));
        for bad in ["t:1", "t:1:2:3", "t:x:2", "s:", "u:1", "s:1:2"] {
            assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode(bad)), None, "{bad}");
        }
    }
}

/// A webhook as listed (the secret appears only in the creation reply).
#[derive(serde::Serialize, ToSchema)]
pub struct WebhookOut {
    /// Webhook id.
    id: i64,
    /// Target URL.
    url: String,
    /// Description.
    description: Option<String>,
    /// Signing secret (`whsec_…`), only when just created.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// Creation time.
    created_at: String,
}

impl From<crate::store::Webhook> for WebhookOut {
    fn from(w: crate::store::Webhook) -> Self {
        Self {
            id: w.id,
            url: w.url,
            description: w.description,
            secret: w.secret,
            created_at: w.created_at.to_string(),
        }
    }
}

/// A webhook to create.
#[derive(ToSchema)]
#[allow(dead_code, reason = "wire documentation")]
pub struct WebhookIn {
    /// `http` or `https` URL that receives notifications.
    url: String,
    /// Free text.
    description: Option<String>,
}

/// Add a notification webhook; the reply shows its signing secret once.
#[utoipa::path(post, path = "/v1/webhooks", request_body = WebhookIn,
    responses((status = 201, body = WebhookOut), (status = 401), (status = 422)), security(("bearer" = [])))]
async fn create_webhook(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let (_, value) = json_body(&state.config, body)?;
    let mut c = Checker::new(&state.config.limits, "");
    let empty = Map::new();
    let obj = value.as_object().unwrap_or(&empty);
    let url = c.req_str(obj, "url", "url", state.config.limits.max_text_field);
    if let Some(u) = &url
        && (!(u.starts_with("http://") || u.starts_with("https://"))
            || reqwest::Url::parse(u).is_err())
    {
        c.fail("url", "invalid", "must be an http or https URL");
    }
    let description = c.opt_str(
        obj,
        "description",
        "description",
        state.config.limits.max_text_field,
    );
    if let Some(u) = url
        .as_deref()
        .filter(|_| c.violations.is_empty() && !state.config.webhooks.allow_private_targets)
        && let Err(why) = crate::webhooks::check_target(u).await
    {
        c.fail("url", "forbidden_target", why);
    }
    let url = c.finish(url).map_err(ApiError::validation)?;
    let hook = state
        .store
        .create_webhook(p.project, url, description)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(WebhookOut::from(hook))).into_response())
}

/// The project's webhooks.
#[utoipa::path(get, path = "/v1/webhooks", responses((status = 200, body = [WebhookOut])), security(("bearer" = [])))]
async fn list_webhooks(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let hooks: Vec<WebhookOut> = state
        .store
        .list_webhooks(p.project)
        .await?
        .into_iter()
        .map(WebhookOut::from)
        .collect();
    Ok(axum::Json(hooks).into_response())
}

/// Remove a webhook; its pending notifications are dropped.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", params(("id" = i64, Path)),
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    if state.store.delete_webhook(p.project, id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("webhook"))
    }
}
