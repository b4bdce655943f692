//! LogHub: `POST /v1/event` with headers `token` (API key) and
//! `organization` (the key's project, by name or id). Success body exactly
//! `{"code":"CREATE_EVENT_OK","status":"ok","data":{"id","timestamp"}}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::{Failure, append_one, authenticate_if, new_event, object_body, string_or_integer};
use crate::api::{AppState, json_body};
use crate::ingest::Checker;
use crate::model::{Actor, ActorType};

/// LogHub routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/event", post(create))
}

fn render(f: Failure) -> Response {
    let (code, message) = match &f {
        Failure::BadRequest { message, .. } => (
            "BAD_REQUEST",
            message.clone().unwrap_or_else(|| "Invalid event.".into()),
        ),
        Failure::Unauthorized => ("UNAUTHORIZED", "Invalid token or organization.".into()),
        Failure::RateLimited(_) => ("RATE_LIMIT_EXCEEDED", "Rate limit was exceeded.".into()),
        Failure::Unavailable => (
            "SERVICE_UNAVAILABLE",
            "Service unavailable, retry shortly.".into(),
        ),
        Failure::Internal(_) => ("INTERNAL_ERROR", "Internal error.".into()),
    };
    let mut body = json!({"code": code, "status": "error", "message": message});
    f.attach_errors(&mut body);
    f.respond(body)
}

async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&state, &headers, body).await {
        Ok((id, ms)) => axum::Json(
            json!({"code": "CREATE_EVENT_OK", "status": "ok", "data": {"id": id, "timestamp": ms}}),
        )
        .into_response(),
        Err(f) => render(f),
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(String, i64), Failure> {
    let organization = header(headers, "organization").unwrap_or_default();
    let principal = authenticate_if(state, header(headers, "token"), |p| {
        !organization.is_empty()
            && (organization == p.project_name || organization == p.project.to_string())
    })
    .await?;
    let (_, value) = json_body(&state.config, body)?;
    let limits = &state.config.limits;
    let (short, text) = (limits.max_short_field, limits.max_text_field);
    let mut c = Checker::new(limits, "");
    c.empty_as_absent = true;
    let obj = object_body(&value)?;
    let action = c.req_str(obj, "action", "action", short);
    if matches!(obj.get("metadata"), None | Some(Value::Null)) {
        c.fail("metadata", "required", "is required");
    }
    let metadata = c.metadata(obj.get("metadata"), "metadata");
    let tenant = match obj.get("external_id") {
        None | Some(Value::Null) => {
            c.fail("external_id", "required", "is required");
            None
        }
        Some(v) => match string_or_integer(v) {
            Some(s) if s.trim().is_empty() => {
                c.fail("external_id", "empty", "must not be empty");
                None
            }
            Some(s) if s.chars().count() > short => {
                c.fail(
                    "external_id",
                    "too_long",
                    format!("must be at most {short} characters"),
                );
                None
            }
            Some(s) => Some((s, if v.is_string() { "string" } else { "number" })),
            None => {
                c.fail("external_id", "type", "must be a string or an integer");
                None
            }
        },
    };
    let tags = c.tags(obj.get("tags"), "tags");
    let mut context_extra = Map::new();
    let (location, user_agent) = match obj.get("context") {
        None | Some(Value::Null) => {
            c.fail("context", "required", "is required");
            (None, None)
        }
        Some(Value::Object(ctx)) => {
            for (k, v) in ctx {
                if k != "location" && k != "user_agent" {
                    context_extra.insert(k.clone(), v.clone());
                }
            }
            (
                c.opt_str(ctx, "location", "context/location", short),
                c.opt_str(ctx, "user_agent", "context/user_agent", text),
            )
        }
        Some(_) => {
            c.fail("context", "type", "must be an object");
            (None, None)
        }
    };
    let actor = actor(&mut c, obj.get("actor"), short, text);
    let (Some(action), Some((tenant, external_id_type)), Some(actor)) = (action, tenant, actor)
    else {
        return Err(Failure::invalid(c.violations));
    };
    if !c.violations.is_empty() {
        return Err(Failure::invalid(c.violations));
    }
    let mut event = new_event("loghub", tenant, action, actor);
    event.metadata = metadata;
    event.tags = tags;
    if let Some(loc) = &location
        && loc.parse::<std::net::IpAddr>().is_ok()
    {
        event.context.ip = Some(loc.clone());
    }
    event.context.location = location;
    event.context.user_agent = user_agent;
    let fields = &mut event
        .source
        .as_mut()
        .expect("dialect events have a source")
        .fields;
    fields.insert(
        "external_id_type".into(),
        Value::String(external_id_type.into()),
    );
    if !context_extra.is_empty() {
        fields.insert("context".into(), Value::Object(context_extra));
    }
    let received_ms = event.received_at.as_millis();
    let receipt = append_one(state, principal.project, event, false).await?;
    Ok((receipt.id.to_string(), received_ms))
}

fn actor(c: &mut Checker<'_>, value: Option<&Value>, short: usize, text: usize) -> Option<Actor> {
    let a = match value {
        None | Some(Value::Null) => {
            c.fail("actor", "required", "is required");
            return None;
        }
        Some(Value::Object(a)) => a,
        Some(_) => {
            c.fail("actor", "type", "must be an object");
            return None;
        }
    };
    let kind = match a.get("type").and_then(Value::as_str) {
        Some("user") => ActorType::User,
        Some("system") => ActorType::System,
        Some(_) => {
            c.fail("actor/type", "invalid", "must be user or system");
            return None;
        }
        None => {
            c.fail("actor/type", "required", "is required (user or system)");
            return None;
        }
    };
    let empty = Map::new();
    let data = match a.get("data") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(d)) => d,
        Some(_) => {
            c.fail("actor/data", "type", "must be an object");
            return None;
        }
    };
    let name = c.opt_str(data, "name", "actor/data/name", text);
    let email = c.opt_str(data, "email", "actor/data/email", text);
    let internal_id = match data.get("internal_id") {
        None | Some(Value::Null) => None,
        Some(v) => match string_or_integer(v) {
            Some(s) if !s.is_empty() && s.chars().count() <= short => Some(s),
            _ => {
                c.fail(
                    "actor/data/internal_id",
                    "invalid",
                    format!(
                        "must be a non-empty string of at most {short} characters or an integer"
                    ),
                );
                return None;
            }
        },
    };
    let description = c
        .opt_str(a, "description", "actor/description", short)
        .or_else(|| c.opt_str(data, "description", "actor/data/description", short));
    let mut extra = Map::new();
    for (k, v) in data {
        // Keys of the actor object itself stay out of `extra`: the leaf
        // flattens `extra` into the actor, and a repeated key would make it
        // undecodable.
        if !matches!(
            k.as_str(),
            "name" | "email" | "internal_id" | "description" | "id" | "type"
        ) {
            extra.insert(k.clone(), v.clone());
        }
    }
    let id = match kind {
        ActorType::System => description
            .or(internal_id)
            .unwrap_or_else(|| "system".into()),
        _ => match internal_id
            .or_else(|| email.clone())
            .or_else(|| name.clone())
        {
            Some(id) if id.chars().count() > short => {
                c.fail(
                    "actor/data",
                    "too_long",
                    format!("the actor id (internal_id, else email, else name) must be at most {short} characters"),
                );
                return None;
            }
            Some(id) => id,
            None => {
                c.fail(
                    "actor/data/internal_id",
                    "required",
                    "a user actor needs data.internal_id (or an email or name)",
                );
                return None;
            }
        },
    };
    Some(Actor {
        id,
        kind,
        name,
        email,
        extra,
    })
}
