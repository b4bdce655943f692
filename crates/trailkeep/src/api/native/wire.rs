//! The native event format's fast path: a typed parse that borrows the
//! body's strings and builds the [`Event`] directly, for the shape that
//! well-formed requests have, without a `serde_json::Value` tree in between.
//!
//! It never words an error. A body it does not take (not an object, an
//! unknown or repeated member at any level, a wrong type, an actor with
//! attributes beyond `id`, `type`, `name` and `email`, or any limit
//! exceeded) goes to [`super::native_event`], which reports every violation.
//! So the answer to every request is the general path's: this one only skips
//! work when that path would accept the event, and yields the same event it
//! would (the tests compare the two on every case they have). The limits
//! themselves are `ingest::validate`'s, shared by both.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::Limits;
use crate::ingest::validate::{new_event_id, serialized_len, string_problem, tag_problem};
use crate::model::{
    Actor, ActorType, Context, Event, LEAF_VERSION, Outcome, RequestInfo, Target, Time,
};

/// `bytes` (one native event) as the event [`super::native_event`] would
/// make of it, or `None` when that path must decide.
pub(super) fn event(bytes: &[u8], limits: &Limits, received_at: Time) -> Option<Event> {
    let Obj(w) = serde_json::from_slice::<Obj<WireEvent<'_>>>(bytes).ok()?;
    let short = limits.max_short_field;
    let text = limits.max_text_field;
    let tenant = opt(w.tenant, short)?.unwrap_or_else(|| "default".into());
    let action = string(w.action?, short)?;
    let occurred_at = match opt(w.occurred_at, 64)? {
        None => received_at,
        Some(s) => Time::parse_rfc3339(&s).ok()?,
    };
    let a = w.actor?.0;
    let actor = Actor {
        id: string(a.id?, short)?,
        kind: match a.kind.as_ref().map(|Str(s)| s.as_ref()) {
            None | Some("user") => ActorType::User,
            Some("system") => ActorType::System,
            Some("machine") => ActorType::Machine,
            Some(_) => return None,
        },
        name: opt(a.name, text)?,
        email: opt(a.email, text)?,
        extra: Map::new(),
    };
    // The general path measures the (here empty) extra attributes too.
    if serialized_len(&actor.extra) > limits.max_metadata_bytes {
        return None;
    }
    let targets = match w.targets {
        None => Vec::new(),
        Some(items) if items.len() > limits.max_targets => return None,
        Some(items) => {
            let mut out = Vec::with_capacity(items.len());
            for Obj(t) in items {
                out.push(Target {
                    id: string(t.id?, short)?,
                    kind: opt(t.kind, short)?,
                    name: opt(t.name, text)?,
                });
            }
            out
        }
    };
    let result = match opt(w.result, short)?.as_deref() {
        None => None,
        Some("success") => Some(Outcome::Success),
        Some("failure") => Some(Outcome::Failure),
        Some(_) => return None,
    };
    let description = opt(w.description, text)?;
    let tags = match w.tags {
        None => Vec::new(),
        Some(items) if items.len() > limits.max_tags => return None,
        Some(items) => {
            let mut out = Vec::with_capacity(items.len());
            for Str(s) in items {
                if tag_problem(&s, short).is_some() {
                    return None;
                }
                out.push(s.into_owned());
            }
            out
        }
    };
    let context = match w.context {
        None => Context::default(),
        Some(Obj(c)) => {
            let ip = opt(c.ip, short)?;
            if let Some(ip) = &ip
                && ip.parse::<std::net::IpAddr>().is_err()
            {
                return None;
            }
            let request = match c.request {
                None => RequestInfo::default(),
                Some(Obj(r)) => RequestInfo {
                    method: opt(r.method, short)?,
                    path: opt(r.path, text)?,
                    status: match r.status {
                        None => None,
                        Some(s @ 100..=599) => Some(s as u16),
                        Some(_) => return None,
                    },
                },
            };
            Context {
                ip,
                user_agent: opt(c.user_agent, text)?,
                location: opt(c.location, text)?,
                request,
            }
        }
    };
    let metadata = match w.metadata {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return None,
    };
    if serialized_len(&metadata) > limits.max_metadata_bytes {
        return None;
    }
    Some(Event {
        v: LEAF_VERSION,
        id: new_event_id(received_at),
        tenant,
        index: 0,
        received_at,
        occurred_at,
        action,
        actor,
        targets,
        result,
        description,
        tags,
        context,
        metadata,
        source: None,
    })
}

/// `s` as an owned field value when it passes the string rules.
fn string(Str(s): Str<'_>, max: usize) -> Option<String> {
    match string_problem(&s, max) {
        None => Some(s.into_owned()),
        Some(_) => None,
    }
}

/// An optional field: `Some(None)` when absent or null, `None` when present
/// and against the rules.
fn opt(s: Option<Str<'_>>, max: usize) -> Option<Option<String>> {
    match s {
        None => Some(None),
        Some(s) => string(s, max).map(Some),
    }
}

/// The members of a native event; any other member sends the body to the
/// general path, which reports it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent<'a> {
    #[serde(borrow)]
    tenant: Option<Str<'a>>,
    #[serde(borrow)]
    action: Option<Str<'a>>,
    #[serde(borrow)]
    occurred_at: Option<Str<'a>>,
    #[serde(borrow)]
    actor: Option<Obj<WireActor<'a>>>,
    #[serde(borrow)]
    targets: Option<Vec<Obj<WireTarget<'a>>>>,
    #[serde(borrow)]
    result: Option<Str<'a>>,
    #[serde(borrow)]
    description: Option<Str<'a>>,
    #[serde(borrow)]
    tags: Option<Vec<Str<'a>>>,
    #[serde(borrow)]
    context: Option<Obj<WireContext<'a>>>,
    /// Read as a `Value`, as the general path reads it: serde_json's `Value`
    /// parser treats some keys specially, and a `Map` parser would not.
    metadata: Option<Value>,
}

/// An actor without further attributes (those take the general path, which
/// keeps them in `extra`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireActor<'a> {
    #[serde(borrow)]
    id: Option<Str<'a>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    email: Option<Str<'a>>,
}

/// A target. The general path ignores further members; here they decline
/// the body, because skipping a value checks less than parsing it does
/// (UTF-8, surrogates, number range).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTarget<'a> {
    #[serde(borrow)]
    id: Option<Str<'a>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    name: Option<Str<'a>>,
}

/// The context; further members decline the body, as for [`WireTarget`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireContext<'a> {
    #[serde(borrow)]
    ip: Option<Str<'a>>,
    #[serde(borrow)]
    user_agent: Option<Str<'a>>,
    #[serde(borrow)]
    location: Option<Str<'a>>,
    #[serde(borrow)]
    request: Option<Obj<WireRequest<'a>>>,
}

/// The HTTP request of the context; further members decline the body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest<'a> {
    #[serde(borrow)]
    method: Option<Str<'a>>,
    #[serde(borrow)]
    path: Option<Str<'a>>,
    status: Option<u64>,
}

/// A JSON string, borrowed from the body unless it holds escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(s))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s))
            }
        }
        d.deserialize_str(V).map(Str)
    }
}

/// `T` read from a JSON object only: derived struct parsers also take an
/// array of the members' values, which the general path refuses.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(PhantomData)).map(Obj)
    }
}

#[cfg(test)]
mod tests;
