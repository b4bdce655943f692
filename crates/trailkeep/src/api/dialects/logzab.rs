//! LogZab: `POST /v1/addTrail`, the API key inside the body as `apiKey`.
//! The seed documents no response; see `docs/dialects.md` for the shapes.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::{Failure, append_one, authenticate, new_event, object_body, string_or_integer};
use crate::api::{AppState, BodyError, json_body};
use crate::ingest::Checker;
use crate::model::{Actor, ActorType, Target};

/// LogZab routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/addTrail", post(create))
}

fn render(f: Failure) -> Response {
    let message = match &f {
        Failure::BadRequest { message, .. } => message
            .clone()
            .unwrap_or_else(|| "Invalid body parameters.".into()),
        Failure::Unauthorized => "Invalid or missing apiKey.".into(),
        Failure::RateLimited(_) => "Rate limit was exceeded.".into(),
        Failure::Unavailable => "Service unavailable.".into(),
        Failure::Internal(_) => "internal error".into(),
    };
    let mut body = json!({"status": "error", "message": message});
    f.attach_errors(&mut body);
    f.respond(body)
}

async fn create(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&state, body).await {
        Ok(id) => axum::Json(
            json!({"status": "success", "message": "Audit trail added.", "data": {"id": id}}),
        )
        .into_response(),
        Err(f) => render(f),
    }
}

/// True when a JSON parse failure looks like the seed's single-quoted
/// Python/PHP samples.
fn single_quoted(bytes: &[u8]) -> bool {
    let mut prev = b'{';
    for &b in bytes {
        if b == b'\'' && matches!(prev, b'{' | b',' | b':' | b'[') {
            return true;
        }
        if !b.is_ascii_whitespace() {
            prev = b;
        }
    }
    false
}

/// Splits `#hris #webapp` or `hris, webapp` into tags.
#[must_use]
pub fn parse_tags(raw: &str) -> Vec<String> {
    let parts: Vec<&str> = if raw.contains(',') {
        raw.split(',').collect()
    } else {
        raw.split_whitespace().collect()
    };
    let mut out: Vec<String> = Vec::new();
    for p in parts {
        let t = p.trim().trim_start_matches('#').trim();
        if !t.is_empty() && !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    out
}

async fn handle(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<String, Failure> {
    let raw = body.as_ref().ok().cloned();
    let (_, value) = json_body(&state.config, body).map_err(|e| match e {
        BodyError::Malformed(_) if raw.as_deref().is_some_and(single_quoted) => Failure::BadRequest {
            message: Some(
                "Request body is not valid JSON: keys and strings must use double quotes (\"), not single quotes ('). Build the body with json.dumps / json_encode."
                    .into(),
            ),
            errors: Vec::new(),
        },
        other => other.into(),
    })?;
    if !value.is_object() {
        return Err(Failure::BadRequest {
            message: Some("The body must be a JSON object.".into()),
            errors: Vec::new(),
        });
    }
    let key = value.get("apiKey").and_then(Value::as_str);
    let principal = authenticate(state, key).await?;
    let limits = &state.config.limits;
    let (short, text) = (limits.max_short_field, limits.max_text_field);
    let mut c = Checker::new(limits, "");
    c.empty_as_absent = true;
    let obj = object_body(&value)?;
    let action = c.req_str(obj, "action", "action", short);
    let mut metadata = Map::new();
    let object = match obj.get("object") {
        None | Some(Value::Null) => {
            c.fail("object", "required", "is required");
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            c.fail("object", "empty", "must not be empty");
            None
        }
        Some(Value::String(s)) if s.chars().count() > short => {
            c.fail(
                "object",
                "too_long",
                format!("must be at most {short} characters"),
            );
            None
        }
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(Value::Object(o)) => {
            metadata.insert("object".into(), Value::Object(o.clone()));
            Some(
                ["id", "name", "type"]
                    .iter()
                    .find_map(|k| o.get(*k).and_then(Value::as_str))
                    .map(str::to_owned),
            )
        }
        Some(_) => {
            c.fail("object", "type", "must be a string or an object");
            None
        }
    };
    let mut context = crate::model::Context::default();
    let mut extra = Map::new();
    let mut email = None;
    let actor = match obj.get("actor") {
        Some(Value::Object(a)) => {
            let id = match a.get("unique_id") {
                None | Some(Value::Null) => {
                    c.fail("actor/unique_id", "required", "is required");
                    None
                }
                Some(v) => match string_or_integer(v) {
                    Some(s) if !s.trim().is_empty() && s.chars().count() <= short => Some(s),
                    _ => {
                        c.fail("actor/unique_id", "invalid", format!("must be a non-empty string of at most {short} characters or an integer"));
                        None
                    }
                },
            };
            let name = c.req_str(a, "name", "actor/name", text);
            for k in ["group", "device"] {
                if let Some(v) = c.opt_str(a, k, &format!("actor/{k}"), short) {
                    extra.insert(k.into(), Value::String(v));
                }
            }
            if let Some(ip) = c.opt_str(a, "ip", "actor/ip", short) {
                if ip.parse::<std::net::IpAddr>().is_ok() {
                    context.ip = Some(ip);
                } else {
                    extra.insert("ip".into(), Value::String(ip));
                }
            }
            context.location = c.opt_str(a, "location", "actor/location", short);
            email = c.opt_str(a, "email", "actor/email", text);
            for (k, v) in a {
                if !matches!(
                    k.as_str(),
                    "unique_id"
                        | "name"
                        | "group"
                        | "device"
                        | "ip"
                        | "location"
                        | "id"
                        | "type"
                        | "email"
                ) {
                    extra.insert(k.clone(), v.clone());
                }
            }
            id.zip(name)
        }
        None | Some(Value::Null) => {
            c.fail("actor", "required", "is required");
            None
        }
        Some(_) => {
            c.fail("actor", "type", "must be an object");
            None
        }
    };
    let timezone = match c.opt_str(obj, "timezone", "timezone", short) {
        None => Some(jiff::tz::TimeZone::UTC),
        Some(name) => match jiff::tz::TimeZone::get(&name) {
            Ok(tz) => Some(tz),
            Err(_) => {
                c.fail(
                    "timezone",
                    "invalid",
                    "must be an IANA time zone name such as Asia/Jakarta",
                );
                None
            }
        },
    };
    context.request.path = c.opt_str(obj, "path", "path", text);
    let mut description = None;
    match obj.get("desc") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.chars().count() > text => c.fail(
            "desc",
            "too_long",
            format!("must be at most {text} characters"),
        ),
        Some(Value::String(s)) => {
            let trimmed = s.trim_start();
            if (trimmed.starts_with('{') || trimmed.starts_with('['))
                && let Ok(v @ (Value::Object(_) | Value::Array(_))) =
                    serde_json::from_str::<Value>(s)
            {
                metadata.insert("desc".into(), v);
            }
            description = Some(s.clone());
        }
        Some(v @ (Value::Object(_) | Value::Array(_))) => {
            metadata.insert("desc".into(), v.clone());
            description = Some(v.to_string());
        }
        Some(_) => c.fail("desc", "type", "must be text or a JSON document"),
    }
    let (tags, raw_tag) = match obj.get("tag") {
        None | Some(Value::Null) => (Vec::new(), None),
        Some(Value::String(s)) => (parse_tags(s), Some(s.clone())),
        Some(Value::Array(items)) => {
            if !items.iter().all(Value::is_string) {
                c.fail("tag", "type", "must be a string or an array of strings");
            }
            let mut out: Vec<String> = Vec::new();
            for t in items.iter().filter_map(Value::as_str) {
                let t = t.trim().trim_start_matches('#').trim();
                if !t.is_empty() && !out.iter().any(|o| o == t) {
                    out.push(t.to_owned());
                }
            }
            (out, None)
        }
        Some(_) => {
            c.fail("tag", "type", "must be a string or an array of strings");
            (Vec::new(), None)
        }
    };
    if tags.len() > limits.max_tags {
        c.fail(
            "tag",
            "too_many",
            format!("at most {} tags", limits.max_tags),
        );
    }
    if tags.iter().any(|t| t.chars().count() > short) {
        c.fail(
            "tag",
            "too_long",
            format!("each tag must be at most {short} characters"),
        );
    }
    let (Some(action), Some(object), Some((id, name)), Some(tz)) =
        (action, object, actor, timezone)
    else {
        return Err(Failure::invalid(c.violations));
    };
    if !c.violations.is_empty() {
        return Err(Failure::invalid(c.violations));
    }
    let actor = Actor {
        id,
        kind: ActorType::User,
        name: Some(name),
        email,
        extra,
    };
    let mut event = new_event("logzab", "default".into(), action, actor);
    if let Some(object) = object {
        event.targets.push(Target {
            id: object,
            kind: None,
            name: None,
        });
    }
    event.context = context;
    event.description = description;
    event.tags = tags;
    event.metadata = metadata;
    let local = event.occurred_at.to_timestamp().to_zoned(tz.clone());
    let fields = &mut event
        .source
        .as_mut()
        .expect("dialect events have a source")
        .fields;
    fields.insert(
        "timezone".into(),
        Value::String(tz.iana_name().unwrap_or("UTC").to_owned()),
    );
    fields.insert(
        "local_time".into(),
        Value::String(local.strftime("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string()),
    );
    if let Some(raw) = raw_tag {
        fields.insert("tag".into(), Value::String(raw));
    }
    let receipt = append_one(state, principal.project, event, false).await?;
    Ok(receipt.id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_on_commas_or_spaces_and_drop_hashes() {
        assert_eq!(parse_tags("#hris #webapp"), ["hris", "webapp"]);
        assert_eq!(
            parse_tags("web app, hris,#x, ,hris"),
            ["web app", "hris", "x"]
        );
        assert!(parse_tags("  ").is_empty());
    }

    #[test]
    fn detects_single_quoted_pseudo_json() {
        assert!(single_quoted(b"{\n'apiKey' : 'x'}"));
        assert!(!single_quoted(br#"{"desc": "it's fine"}"#));
    }
}
