//! The canonical event model and its leaf encoding.
//!
//! Architecture invariant: only `api/*` knows wire formats. Every dialect
//! converts its request into an [`Event`]; serde derives here exist only for
//! the canonical leaf encoding (`docs/design.md`, "Leaf encoding v1"), which
//! is also the JSON the native API returns.

mod time;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use time::Time;

/// Version byte of the leaf encoding written by this build.
pub const LEAF_VERSION: u8 = 1;

/// Who performed an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ActorType {
    /// A human user.
    #[default]
    User,
    /// The application itself (cron jobs, migrations).
    System,
    /// A machine identity (service account, API client).
    Machine,
}

/// Whether the action succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The action took effect.
    Success,
    /// The action was attempted and refused or failed.
    Failure,
}

impl Outcome {
    /// Stable text form, as stored and filtered on.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// The actor of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    /// The caller's identifier for the actor; required.
    pub id: String,
    /// Kind of actor.
    #[serde(rename = "type", default)]
    pub kind: ActorType,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Further caller-supplied attributes (group, device, ...), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A resource the action was applied to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// The caller's identifier for the target.
    pub id: String,
    /// Kind of target, for example `document`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The HTTP request that caused the event, as reported by the caller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Response status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl RequestInfo {
    fn is_empty(&self) -> bool {
        self.method.is_none() && self.path.is_none() && self.status.is_none()
    }
}

/// Where and how the action happened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// Client IP address (validated as IPv4 or IPv6 when a dialect requires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Client user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Free-form location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Request details.
    #[serde(default, skip_serializing_if = "RequestInfo::is_empty")]
    pub request: RequestInfo,
}

impl Context {
    /// True when no field is set; such a context is omitted from the leaf.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ip.is_none()
            && self.user_agent.is_none()
            && self.location.is_none()
            && self.request.is_empty()
    }
}

/// How an event arrived, for dialects whose fields have no canonical home.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Dialect name: `native`, `loghub`, `logsh`, `logzab`, `auditr`, `tavivo`.
    pub dialect: String,
    /// The authenticated principal when it differs from the actor (JWT subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Dialect-specific fields kept verbatim (time zone, icon, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

/// One stored audit event; its serde form is leaf encoding v1.
///
/// Field order is part of the encoding: do not reorder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Leaf encoding version; always [`LEAF_VERSION`] for new events.
    pub v: u8,
    /// Server-assigned UUIDv7.
    pub id: Uuid,
    /// The tenant whose log holds the event.
    pub tenant: String,
    /// Position in the tenant's log, contiguous from 0, assigned at commit.
    pub index: u64,
    /// When the server received the request.
    pub received_at: Time,
    /// When the action happened, per the caller (default: `received_at`).
    pub occurred_at: Time,
    /// What was done, for example `user.login`.
    pub action: String,
    /// Who did it.
    pub actor: Actor,
    /// What it was done to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// Whether it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Where and how.
    #[serde(default, skip_serializing_if = "Context::is_empty")]
    pub context: Context,
    /// Free-form caller data; keys are sorted in the encoding.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Dialect of origin and its extra fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

impl Event {
    /// The canonical leaf bytes: compact JSON of this struct. Contains no
    /// raw newline, so an export can hold one leaf per line.
    #[must_use]
    pub fn leaf(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Event always serializes")
    }

    /// Decodes leaf bytes.
    ///
    /// # Errors
    /// When the bytes are not a v1 leaf.
    pub fn from_leaf(leaf: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(leaf)
    }

    /// The first indexed text field holding U+0000, which PostgreSQL `text`
    /// columns refuse (tenant, action, actor id, tags, target ids); checked
    /// before any append so both stores refuse the same input.
    #[must_use]
    pub fn nul_in_indexed_text(&self) -> Option<&'static str> {
        let has = |s: &str| s.contains('\0');
        if has(&self.tenant) {
            Some("tenant")
        } else if has(&self.action) {
            Some("action")
        } else if has(&self.actor.id) {
            Some("actor.id")
        } else if self.tags.iter().any(|t| has(t)) {
            Some("tags")
        } else if self.targets.iter().any(|t| has(&t.id)) {
            Some("targets.id")
        } else {
            None
        }
    }

    /// The text indexed for full-text search: action, description, actor
    /// name and email, target ids and names, and metadata string values.
    #[must_use]
    pub fn search_text(&self) -> String {
        let mut out = String::new();
        let mut push = |s: &str| {
            out.push_str(s);
            out.push(' ');
        };
        push(&self.action);
        if let Some(d) = &self.description {
            push(d);
        }
        push(&self.actor.id);
        for s in [&self.actor.name, &self.actor.email].into_iter().flatten() {
            push(s);
        }
        for t in &self.targets {
            push(&t.id);
            for s in [&t.kind, &t.name].into_iter().flatten() {
                push(s);
            }
        }
        fn walk(v: &Value, push: &mut dyn FnMut(&str)) {
            match v {
                Value::String(s) => push(s),
                Value::Number(n) => push(&n.to_string()),
                Value::Array(a) => a.iter().for_each(|x| walk(x, push)),
                Value::Object(o) => o.values().for_each(|x| walk(x, push)),
                Value::Bool(_) | Value::Null => {}
            }
        }
        for v in self.metadata.values() {
            walk(v, &mut push);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_round_trips_and_has_no_newline() {
        let mut metadata = Map::new();
        metadata.insert("z".into(), Value::String("multi\nline".into()));
        metadata.insert("a".into(), serde_json::json!({"n": 1.5}));
        let e = Event {
            v: LEAF_VERSION,
            id: Uuid::now_v7(),
            tenant: "acme".into(),
            index: 7,
            received_at: Time::from_micros(1_700_000_000_123_456),
            occurred_at: Time::from_micros(1_700_000_000_000_000),
            action: "user.login".into(),
            actor: Actor {
                id: "u1".into(),
                kind: ActorType::User,
                name: Some("Ann".into()),
                email: None,
                extra: Map::new(),
            },
            targets: vec![],
            result: Some(Outcome::Success),
            description: None,
            tags: vec!["prod".into()],
            context: Context::default(),
            metadata,
            source: None,
        };
        let leaf = e.leaf();
        assert!(!leaf.contains(&b'\n'));
        assert!(leaf.starts_with(b"{\"v\":1,\"id\":\""));
        let text = String::from_utf8(leaf.clone()).unwrap();
        assert!(
            text.contains("\"received_at\":\"2023-11-14T22:13:20.123456Z\""),
            "{text}"
        );
        assert!(text.find("\"a\":").unwrap() < text.find("\"z\":").unwrap());
        assert_eq!(Event::from_leaf(&leaf).unwrap(), e);
        assert!(e.search_text().contains("multi\nline"));
    }
}
