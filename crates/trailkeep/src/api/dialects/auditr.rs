//! Auditr: `POST /api/events` with `Authorization: Bearer`; answers 200
//! echoing the event plus `id`, `sha256` (the RFC 6962 leaf hash, hex),
//! `parent_org_id` (the key's project), geo-IP fields (when a database is
//! configured) and the caller's user agent.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::{Failure, append_one, authenticate, new_event, object_body};
use crate::api::{AppState, bearer, json_body};
use crate::ingest::Checker;
use crate::model::{Actor, ActorType, Outcome, Time};

/// Request members echoed back, in the seed's order.
const ECHOED: &[&str] = &[
    "org_id",
    "action",
    "action_result",
    "actor_id",
    "actor_type",
    "actor_email",
    "actor_name",
    "client_ip",
    "request_method",
    "request_path",
    "response_status",
    "occurred_at",
];

/// Auditr routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/events", post(create))
}

fn render(f: Failure) -> Response {
    let (error, message) = match &f {
        Failure::BadRequest { message, .. } => (
            "bad_request",
            message
                .clone()
                .unwrap_or_else(|| "Invalid request body.".into()),
        ),
        Failure::Unauthorized => ("unauthorized", "Missing or invalid bearer token.".into()),
        Failure::RateLimited(_) => ("rate_limit_exceeded", "Rate limit was exceeded.".into()),
        Failure::Unavailable => (
            "service_unavailable",
            "Service unavailable, retry shortly.".into(),
        ),
        Failure::Internal(_) => ("internal_error", "Internal error.".into()),
    };
    let mut body = json!({"error": error, "message": message});
    f.attach_errors(&mut body);
    f.respond(body)
}

async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&state, &headers, body).await {
        Ok(echo) => axum::Json(echo).into_response(),
        Err(f) => render(f),
    }
}

/// Parses ISO 8601 date-times: RFC 3339 with `Z` or an offset (`T` or a
/// space between date and time), or with no offset, read as UTC.
fn parse_occurred_at(s: &str) -> Option<Time> {
    if let Ok(t) = Time::parse_rfc3339(s) {
        return Some(t);
    }
    let dt: jiff::civil::DateTime = s.parse().ok()?;
    if !s.contains(':') {
        return None;
    }
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| Time::from_timestamp(z.timestamp()))
}

/// woothee's answer, or for HTTP libraries (which it names only by kind,
/// as `("HTTP Library", "curl")`) the first product token `name/version`.
fn product_of(parsed: Option<(String, String)>, ua: &str) -> Option<(String, String)> {
    match parsed {
        Some((name, _)) if name == "HTTP Library" => None,
        other => other,
    }
    .or_else(|| {
        let token = ua.split_whitespace().next()?;
        let (name, version) = token.split_once('/')?;
        (!name.is_empty() && !version.is_empty()).then(|| (name.to_owned(), version.to_owned()))
    })
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, Failure> {
    let principal = authenticate(state, bearer(headers)).await?;
    let (_, value) = json_body(&state.config, body)?;
    let limits = &state.config.limits;
    let (short, text) = (limits.max_short_field, limits.max_text_field);
    let mut c = Checker::new(limits, "");
    c.empty_as_absent = true;
    let obj = object_body(&value)?;
    let org_id = c.req_str(obj, "org_id", "org_id", short);
    let action = c.req_str(obj, "action", "action", short);
    let result = match c
        .req_str(obj, "action_result", "action_result", short)
        .as_deref()
    {
        Some("success") => Some(Outcome::Success),
        Some("failure") => Some(Outcome::Failure),
        Some(_) => {
            c.fail("action_result", "invalid", "must be success or failure");
            None
        }
        None => None,
    };
    let actor_id = c.req_str(obj, "actor_id", "actor_id", short);
    let kind = match c.req_str(obj, "actor_type", "actor_type", short).as_deref() {
        Some("user") => Some(ActorType::User),
        Some("machine") => Some(ActorType::Machine),
        Some(_) => {
            c.fail("actor_type", "invalid", "must be user or machine");
            None
        }
        None => None,
    };
    let occurred_at = match c.req_str(obj, "occurred_at", "occurred_at", 64) {
        Some(s) => {
            let t = parse_occurred_at(&s);
            if t.is_none() {
                c.fail(
                    "occurred_at",
                    "invalid",
                    "must be an ISO 8601 date-time, e.g. 2023-11-07T05:31:56Z",
                );
            }
            t
        }
        None => None,
    };
    let email = c.opt_str(obj, "actor_email", "actor_email", text);
    let name = c.opt_str(obj, "actor_name", "actor_name", text);
    let client_ip = c.opt_str(obj, "client_ip", "client_ip", short);
    let parsed_ip = client_ip
        .as_deref()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    if client_ip.is_some() && parsed_ip.is_none() {
        c.fail("client_ip", "invalid", "must be an IPv4 or IPv6 address");
    }
    let method = c.opt_str(obj, "request_method", "request_method", 16);
    let path = c.opt_str(obj, "request_path", "request_path", text);
    let status = match obj.get("response_status") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(s) if (100..=999).contains(&s) => Some(s as u16),
            _ => {
                c.fail(
                    "response_status",
                    "invalid",
                    "must be an integer from 100 to 999",
                );
                None
            }
        },
    };
    let (Some(org_id), Some(action), Some(result), Some(actor_id), Some(kind), Some(occurred_at)) =
        (org_id, action, result, actor_id, kind, occurred_at)
    else {
        return Err(Failure::invalid(c.violations));
    };
    if !c.violations.is_empty() {
        return Err(Failure::invalid(c.violations));
    }
    let actor = Actor {
        id: actor_id,
        kind,
        name,
        email,
        extra: Map::new(),
    };
    let mut event = new_event("auditr", org_id, action, actor);
    event.result = Some(result);
    event.occurred_at = occurred_at;
    event.context.ip = client_ip;
    event.context.request = crate::model::RequestInfo {
        method,
        path,
        status,
    };
    let geo = parsed_ip.and_then(|ip| state.geo.as_ref().and_then(|g| g.lookup(ip)));
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty());
    let parsed_agent = agent.and_then(|ua| product_of(state.agents.parse(ua), ua));
    let mut computed = Map::new();
    computed.insert(
        "parent_org_id".into(),
        Value::String(principal.project_name.clone()),
    );
    computed.insert(
        "client_geo_lat".into(),
        geo.as_ref()
            .and_then(|g| g.latitude)
            .map_or(Value::Null, Value::from),
    );
    computed.insert(
        "client_geo_lon".into(),
        geo.as_ref()
            .and_then(|g| g.longitude)
            .map_or(Value::Null, Value::from),
    );
    computed.insert(
        "client_city".into(),
        geo.as_ref()
            .and_then(|g| g.city.clone())
            .map_or(Value::Null, Value::String),
    );
    computed.insert(
        "client_region_code".into(),
        geo.as_ref()
            .and_then(|g| g.region_code.clone())
            .map_or(Value::Null, Value::String),
    );
    computed.insert(
        "client_subdivision_1_code".into(),
        geo.as_ref()
            .and_then(|g| g.subdivision_1_code.clone())
            .map_or(Value::Null, Value::String),
    );
    computed.insert(
        "user_agent_name".into(),
        parsed_agent
            .as_ref()
            .map_or(Value::Null, |a| Value::String(a.0.clone())),
    );
    computed.insert(
        "user_agent_version".into(),
        parsed_agent
            .as_ref()
            .map_or(Value::Null, |a| Value::String(a.1.clone())),
    );
    let fields = &mut event
        .source
        .as_mut()
        .expect("dialect events have a source")
        .fields;
    fields.extend(computed.clone());
    if let Some(ua) = agent {
        fields.insert("user_agent".into(), Value::String(ua.to_owned()));
    }
    let receipt = append_one(state, principal.project, event, false).await?;
    let mut echo = Map::new();
    echo.insert("id".into(), Value::String(receipt.id.to_string()));
    echo.insert(
        "sha256".into(),
        Value::String(
            receipt
                .leaf_hash
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        ),
    );
    echo.extend(computed);
    for k in ECHOED {
        if let Some(v) = obj.get(*k) {
            echo.insert((*k).to_owned(), v.clone());
        }
    }
    Ok(Value::Object(echo))
}

#[cfg(test)]
mod tests {
    use super::parse_occurred_at;

    #[test]
    fn occurred_at_accepts_iso_forms() {
        let z = parse_occurred_at("2023-11-07T05:31:56Z").unwrap();
        assert_eq!(parse_occurred_at("2023-11-07T05:31:56").unwrap(), z);
        assert_eq!(parse_occurred_at("2023-11-07 05:31:56Z").unwrap(), z);
        assert_eq!(parse_occurred_at("2023-11-07T07:31:56+02:00").unwrap(), z);
        assert!(parse_occurred_at("2023-11-07").is_none());
        assert!(parse_occurred_at("yesterday").is_none());
    }
}
