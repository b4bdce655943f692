//! Field validation shared by every dialect.
//!
//! A [`Checker`] walks a JSON object, records every [`Violation`] it finds
//! (never stopping at the first), and returns typed values for the fields
//! that passed. Dialects build their [`crate::model::Event`] from those.

use serde_json::{Map, Value};

use crate::config::Limits;
use crate::model::Time;

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

/// What is wrong with `s` as a string field of at most `max` characters
/// (code and message), or `None` when nothing is.
#[must_use]
pub fn string_problem(s: &str, max: usize) -> Option<(&'static str, String)> {
    if s.contains('\0') {
        // PostgreSQL text cannot hold U+0000; refusing it everywhere keeps
        // both stores answering the same.
        Some(("invalid", "must not contain U+0000".into()))
    } else {
        tag_problem(s, max)
    }
}

/// What is wrong with `s` as a tag of at most `max` characters, or `None`.
/// Tags are not checked for U+0000 here: the append refuses it in every
/// indexed text.
#[must_use]
pub fn tag_problem(s: &str, max: usize) -> Option<(&'static str, String)> {
    if s.is_empty() {
        Some(("empty", "must not be empty".into()))
    } else if s.len() > max && s.chars().count() > max {
        Some(("too_long", format!("must be at most {max} characters")))
    } else {
        None
    }
}

/// The length of `v` as compact JSON, counted without building it.
#[must_use]
pub fn serialized_len(v: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    serde_json::to_writer(&mut n, v).map_or(usize::MAX, |()| n.0)
}

/// Collects violations while reading fields of one JSON object.
pub struct Checker<'a> {
    /// Limits in force.
    pub limits: &'a Limits,
    /// Pointer prefix for every field reported (`""` or `/events/3`).
    pub prefix: String,
    /// Everything found so far.
    pub violations: Vec<Violation>,
    /// Treat `""` in an optional member as absent (dialects whose clients
    /// send empty strings for unknown values) instead of a violation.
    pub empty_as_absent: bool,
}

impl<'a> Checker<'a> {
    /// A checker reporting fields under `prefix`.
    #[must_use]
    pub fn new(limits: &'a Limits, prefix: impl Into<String>) -> Self {
        Self {
            limits,
            prefix: prefix.into(),
            violations: Vec::new(),
            empty_as_absent: false,
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
            Some(Value::String(s)) if s.is_empty() && self.empty_as_absent => None,
            Some(Value::String(s)) => match string_problem(s, max) {
                Some((code, message)) => {
                    self.fail(path, code, message);
                    None
                }
                None => Some(s.clone()),
            },
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
        match obj.get(field) {
            None | Some(Value::Null) => {
                self.fail(path, "required", "is required");
                None
            }
            Some(Value::String(s)) if s.is_empty() => {
                self.fail(path, "empty", "must not be empty");
                None
            }
            _ => self.opt_str(obj, field, path, max),
        }
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
                if serialized_len(o) > self.limits.max_metadata_bytes {
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
                        Value::String(s) => match tag_problem(s, max) {
                            Some((code, message)) => {
                                self.fail(&format!("{path}/{i}"), code, message)
                            }
                            None => out.push(s.clone()),
                        },
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

    #[test]
    fn depth_scan_ignores_brackets_in_strings() {
        assert!(json_depth_ok(br#"{"a":"[[[[[[[[[[[[[["}"#, 2));
        assert!(!json_depth_ok(br#"{"a":[[[1]]]}"#, 3));
        assert!(json_depth_ok(br#"{"a":[[1]],"b":"\"[[["}"#, 3));
    }
}
