//! Field validation shared by every dialect.
//!
//! A [`Checker`] walks a JSON object, records every [`Violation`] it finds
//! (never stopping at the first), and returns typed values for the fields
//! that passed. Dialects build their [`crate::model::Event`] from those.

use serde_json::{Map, Value};

use crate::config::Limits;
use crate::model::{
    Actor, ActorType, Context, Event, LEAF_VERSION, Outcome, RequestInfo, Target, Time,
};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Violation {
    /// JSON pointer to the field, for example `/actor/id` or `/events/3/action`.
    pub field: String,
    /// Stable machine-readable code: `required`, `type`, `too_long`, `invalid`, ...
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

/// Returns false when `body` nests arrays/objects deeper than `max`.
/// Runs before parsing so that a deeply nested body costs O(n) and no stack.
#[must_use]
pub fn json_depth_ok(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Collects violations while reading fields of one JSON object.
pub struct Checker<'a> {
    /// Limits in force.
    pub limits: &'a Limits,
    /// Pointer prefix for every field reported (`""` or `/events/3`).
    pub prefix: String,
    /// Everything found so far.
    pub violations: Vec<Violation>,
}

impl<'a> Checker<'a> {
    /// A checker reporting fields under `prefix`.
    #[must_use]
    pub fn new(limits: &'a Limits, prefix: impl Into<String>) -> Self {
        Self {
            limits,
            prefix: prefix.into(),
            violations: Vec::new(),
        }
    }

    /// Records a violation at `field` (relative to the prefix).
    pub fn fail(&mut self, field: &str, code: &'static str, message: impl Into<String>) {
        self.violations.push(Violation {
            field: format!("{}/{}", self.prefix, field),
            code,
            message: message.into(),
        });
    }

    /// An optional string of at most `max` characters. Non-strings and
    /// empty strings are violations; `null` counts as absent.
    pub fn opt_str(
        &mut self,
        obj: &Map<String, Value>,
        field: &str,
        path: &str,
        max: usize,
    ) -> Option<String> {
        match obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                if s.is_empty() {
                    self.fail(path, "empty", "must not be empty");
                    None
                } else if s.chars().count() > max {
                    self.fail(
                        path,
                        "too_long",
                        format!("must be at most {max} characters"),
                    );
                    None
                } else {
                    Some(s.clone())
                }
            }
            Some(_) => {
                self.fail(path, "type", "must be a string");
                None
            }
        }
    }

    /// A required string of at most `max` characters.
    pub fn req_str(
        &mut self,
        obj: &Map<String, Value>,
        field: &str,
        path: &str,
        max: usize,
    ) -> Option<String> {
        if matches!(obj.get(field), None | Some(Value::Null)) {
            self.fail(path, "required", "is required");
            return None;
        }
        self.opt_str(obj, field, path, max)
    }

    /// An optional object.
    pub fn opt_obj<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        field: &str,
        path: &str,
    ) -> Option<&'v Map<String, Value>> {
        match obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => {
                self.fail(path, "type", "must be an object");
                None
            }
        }
    }

    /// A metadata object within the size limit.
    pub fn metadata(&mut self, value: Option<&Value>, path: &str) -> Map<String, Value> {
        match value {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(o)) => {
                let size = serde_json::to_vec(o).map_or(usize::MAX, |v| v.len());
                if size > self.limits.max_metadata_bytes {
                    self.fail(
                        path,
                        "too_large",
                        format!(
                            "must be at most {} bytes serialized",
                            self.limits.max_metadata_bytes
                        ),
                    );
                    Map::new()
                } else {
                    o.clone()
                }
            }
            Some(_) => {
                self.fail(path, "type", "must be an object");
                Map::new()
            }
        }
    }

    /// A list of tags, each a non-empty short string.
    pub fn tags(&mut self, value: Option<&Value>, path: &str) -> Vec<String> {
        let max = self.limits.max_short_field;
        match value {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                if items.len() > self.limits.max_tags {
                    self.fail(
                        path,
                        "too_many",
                        format!("at most {} tags", self.limits.max_tags),
                    );
                    return Vec::new();
                }
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if s.is_empty() => {
                            self.fail(&format!("{path}/{i}"), "empty", "must not be empty")
                        }
                        Value::String(s) if s.chars().count() > max => {
                            self.fail(
                                &format!("{path}/{i}"),
                                "too_long",
                                format!("must be at most {max} characters"),
                            );
                        }
                        Value::String(s) => out.push(s.clone()),
                        _ => self.fail(&format!("{path}/{i}"), "type", "must be a string"),
                    }
                }
                out
            }
            Some(_) => {
                self.fail(path, "type", "must be an array of strings");
                Vec::new()
            }
        }
    }

    /// An optional RFC 3339 timestamp.
    pub fn opt_time(&mut self, obj: &Map<String, Value>, field: &str, path: &str) -> Option<Time> {
        let s = self.opt_str(obj, field, path, 64)?;
        match Time::parse_rfc3339(&s) {
            Ok(t) => Some(t),
            Err(msg) => {
                self.fail(path, "invalid", msg);
                None
            }
        }
    }

    /// Ends the check: the value when nothing was violated.
    ///
    /// # Errors
    /// Every violation recorded.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, Vec<Violation>> {
        match value {
            Some(v) if self.violations.is_empty() => Ok(v),
            _ => Err(self.violations),
        }
    }
}

/// Validates one native-API event object and builds the canonical event
/// (index 0 until the store assigns it).
///
/// # Errors
/// Every violation found.
pub fn native_event(
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
            if serde_json::to_vec(&extra).map_or(usize::MAX, |v| v.len())
                > limits.max_metadata_bytes
            {
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

/// A UUIDv7 whose timestamp is `at`.
#[must_use]
pub fn new_event_id(at: Time) -> uuid::Uuid {
    let ms = u64::try_from(at.as_millis()).unwrap_or(0);
    let ts =
        uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    uuid::Uuid::new_v7(ts)
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
    fn depth_scan_ignores_brackets_in_strings() {
        assert!(json_depth_ok(br#"{"a":"[[[[[[[[[[[[[["}"#, 2));
        assert!(!json_depth_ok(br#"{"a":[[[1]]]}"#, 3));
        assert!(json_depth_ok(br#"{"a":[[1]],"b":"\"[[["}"#, 3));
    }
}
