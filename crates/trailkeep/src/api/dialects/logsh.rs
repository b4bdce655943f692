//! Logsh: `POST /api/event` with `Authorization: Bearer`. Errors use the
//! seed's table exactly: `{status, name, message}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use unicode_segmentation::UnicodeSegmentation as _;

use super::{Failure, append_one, authenticate, new_event, object_body};
use crate::api::{AppState, bearer, json_body};
use crate::ingest::Checker;
use crate::model::{Actor, ActorType};

/// Longest workspace name, per the seed.
const MAX_WORKSPACE: usize = 35;
/// Longest event name, per the seed.
const MAX_EVENT: usize = 250;
/// Longest description, per the seed.
const MAX_DESCRIPTION: usize = 150;

/// Logsh routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/event", post(create))
}

fn render(f: Failure) -> Response {
    let (name, message) = match &f {
        Failure::BadRequest { .. } => ("bad_request", "Invalid body parameters provided."),
        Failure::Unauthorized => (
            "unauthorized",
            "Your Bearer Token is missing, invalid or expired.",
        ),
        Failure::RateLimited(_) => ("rate_limit_exceeded", "Rate limit was exceeded."),
        Failure::Unavailable => ("service_unavailable", "Service unavailable, retry shortly."),
        Failure::Internal(_) => ("internal_error", "Internal error."),
    };
    let mut body = json!({"status": f.status().as_u16(), "name": name, "message": message});
    f.attach_errors(&mut body);
    f.respond(body)
}

/// True when `s` is exactly one emoji (one grapheme cluster that is an emoji).
#[must_use]
pub fn is_one_emoji(s: &str) -> bool {
    let mut clusters = s.graphemes(true);
    let (Some(one), None) = (clusters.next(), clusters.next()) else {
        return false;
    };
    emojis::get(one).is_some()
        || (!one.is_ascii() && emojis::get(&format!("{one}\u{FE0F}")).is_some())
}

async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&state, &headers, body).await {
        Ok(id) => {
            axum::Json(json!({"status": 200, "name": "ok", "message": "Event created.", "id": id}))
                .into_response()
        }
        Err(f) => render(f),
    }
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, Failure> {
    let principal = authenticate(state, bearer(headers)).await?;
    let (_, value) = json_body(&state.config, body)?;
    let mut c = Checker::new(&state.config.limits, "");
    let obj = object_body(&value)?;
    let workspace = c.req_str(obj, "workspace", "workspace", MAX_WORKSPACE);
    let event_name = c.req_str(obj, "event", "event", MAX_EVENT);
    let description = c.req_str(obj, "description", "description", MAX_DESCRIPTION);
    for (field, value) in [
        ("workspace", &workspace),
        ("event", &event_name),
        ("description", &description),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            c.fail(field, "empty", "must not be blank");
        }
    }
    let icon = c.opt_str(obj, "icon", "icon", 64);
    if let Some(icon) = &icon
        && !is_one_emoji(icon)
    {
        c.fail("icon", "invalid", "must be exactly one emoji");
    }
    let notify = match obj.get("notify") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            c.fail("notify", "type", "must be a boolean");
            false
        }
    };
    let metadata = c.metadata(obj.get("metadata"), "metadata");
    let (Some(workspace), Some(event_name), Some(description)) =
        (workspace, event_name, description)
    else {
        return Err(Failure::invalid(c.violations));
    };
    if !c.violations.is_empty() {
        return Err(Failure::invalid(c.violations));
    }
    let actor = Actor {
        id: format!("apikey:{}", principal.key_id),
        kind: ActorType::Machine,
        name: None,
        email: None,
        extra: serde_json::Map::new(),
    };
    let mut event = new_event("logsh", workspace.to_lowercase(), event_name, actor);
    event.description = Some(description);
    event.metadata = metadata;
    let fields = &mut event
        .source
        .as_mut()
        .expect("dialect events have a source")
        .fields;
    fields.insert("workspace".into(), Value::String(workspace));
    if let Some(icon) = icon {
        fields.insert("icon".into(), Value::String(icon));
    }
    if notify {
        fields.insert("notify".into(), Value::Bool(true));
    }
    let receipt = append_one(state, principal.project, event, notify).await?;
    Ok(receipt.id.to_string())
}

#[cfg(test)]
mod tests {
    use super::is_one_emoji;

    #[test]
    fn one_emoji_means_one_grapheme_that_is_an_emoji() {
        for ok in ["👤", "👍🏽", "🏳️‍🌈", "🇯🇵", "1️⃣", "❤", "❤️"] {
            assert!(is_one_emoji(ok), "{ok}");
        }
        for bad in ["abc", "👍👍", ":+1:", "1", "", "a👍"] {
            assert!(!is_one_emoji(bad), "{bad}");
        }
    }
}
