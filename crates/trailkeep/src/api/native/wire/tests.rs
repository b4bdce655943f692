//! The fast path against the general one, on every case below: where the
//! fast path yields an event, the general path must accept the body and
//! yield the same event; where the general path accepts a plain body, the
//! fast path must take it.

use serde_json::{Value, json};

use super::super::native_event;
use crate::config::Limits;
use crate::model::Time;

fn limits() -> Limits {
    Limits {
        max_short_field: 12,
        max_text_field: 40,
        max_metadata_bytes: 120,
        max_tags: 3,
        max_targets: 2,
        ..Limits::default()
    }
}

fn base() -> Value {
    json!({
        "tenant": "acme",
        "action": "user.login",
        "occurred_at": "2026-11-30T10:00:00.5Z",
        "actor": {"id": "user-1", "type": "user", "name": "Ann Abbott", "email": "ann@example.com"},
        "targets": [{"id": "doc-1", "type": "document", "name": "Plan"}],
        "result": "success",
        "description": "Ann ran user.login",
        "tags": ["web", "sso"],
        "context": {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0", "location": "Berlin",
                    "request": {"method": "POST", "path": "/login", "status": 200}},
        "metadata": {"plan": "pro", "seats": 3, "nested": {"a": [1, 2.5, null, true]}},
    })
}

/// Sets the member at `path` (slash-separated) of `v`, or removes it when
/// `to` is `None`.
fn set(mut v: Value, path: &str, to: Option<Value>) -> Value {
    let mut parts: Vec<&str> = path.split('/').collect();
    let last = parts.pop().expect("a path");
    let mut at = &mut v;
    for p in parts {
        at = match p.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[p],
        };
    }
    match (at, to) {
        (Value::Array(a), Some(to)) => a[last.parse::<usize>().expect("an index")] = to,
        (Value::Array(a), None) => {
            a.remove(last.parse::<usize>().expect("an index"));
        }
        (Value::Object(o), Some(to)) => {
            o.insert(last.into(), to);
        }
        (Value::Object(o), None) => {
            o.remove(last);
        }
        (at, to) => panic!("cannot set {path} in {at} to {to:?}"),
    }
    v
}

/// Bodies the general path accepts that the fast path leaves to it: further
/// members, which the general path keeps (actor) or ignores, and repeated ones.
fn general_only() -> Vec<(String, Vec<u8>)> {
    let b = serde_json::to_vec(&base()).unwrap();
    let text = String::from_utf8(b).unwrap();
    let with =
        |member: &str, value: Value| serde_json::to_vec(&set(base(), member, Some(value))).unwrap();
    vec![
        (
            "actor attribute".into(),
            with("actor/group", json!("admins")),
        ),
        ("target member".into(), with("targets/0/extra", json!(1))),
        (
            "context member".into(),
            with("context/zone", json!({"deep": [1]})),
        ),
        (
            "request member".into(),
            with("context/request/query", json!("a=1")),
        ),
        (
            "repeated member".into(),
            text.replacen("{\"tenant\"", "{\"action\":\"x.y\",\"tenant\"", 1)
                .into_bytes(),
        ),
    ]
}

/// Every case: the base event changed in one place, and a few raw bodies.
fn cases() -> Vec<(String, Vec<u8>)> {
    let long_short = "x".repeat(12);
    let long_text = "é".repeat(40);
    let mut values: Vec<(String, Value)> = vec![("base".into(), base())];
    let fields = [
        "tenant",
        "action",
        "occurred_at",
        "actor",
        "actor/id",
        "actor/type",
        "actor/name",
        "actor/email",
        "targets",
        "targets/0",
        "targets/0/id",
        "targets/0/type",
        "targets/0/name",
        "result",
        "description",
        "tags",
        "tags/0",
        "context",
        "context/ip",
        "context/user_agent",
        "context/location",
        "context/request",
        "context/request/method",
        "context/request/path",
        "context/request/status",
        "metadata",
    ];
    let replacements = [
        json!(null),
        json!(""),
        json!(5),
        json!(-1),
        json!(2.5),
        json!(true),
        json!([]),
        json!({}),
        json!(["a", "b"]),
        json!(long_short),
        json!(format!("{long_short}x")),
        json!(long_text),
        json!(format!("{long_text}é")),
        json!("a\u{0}b"),
        json!("say \"hi\"\n"),
        json!("user"),
        json!("machine"),
        json!("system"),
        json!("failure"),
        json!("maybe"),
        json!("2026-11-30T10:00:00+02:00"),
        json!("yesterday"),
        json!("::1"),
        json!("1.2.3"),
        json!(99),
        json!(100),
        json!(599),
        json!(600),
        json!([{"id": "a"}, {"id": "b"}]),
        json!([{"id": "a"}, {"id": "b"}, {"id": "c"}]),
        json!(["a", "b", "c"]),
        json!(["a", "b", "c", "d"]),
        json!(["a", ""]),
        json!({"id": "u", "name": "n"}),
        json!({"a": "x".repeat(100)}),
        json!({"a": "x".repeat(200)}),
    ];
    for f in fields {
        values.push((format!("{f} removed"), set(base(), f, None)));
        for r in &replacements {
            values.push((format!("{f} = {r}"), set(base(), f, Some(r.clone()))));
        }
    }
    values.push((
        "unknown member".into(),
        set(base(), "extra", Some(json!(1))),
    ));
    let mut out: Vec<(String, Vec<u8>)> = values
        .into_iter()
        .map(|(name, v)| (name, serde_json::to_vec(&v).unwrap()))
        .collect();
    let pretty = serde_json::to_vec_pretty(&base()).unwrap();
    let escaped = String::from_utf8(serde_json::to_vec(&base()).unwrap())
        .unwrap()
        .replace("Ann Abbott", "\\u00c5nn \\/ Abbott");
    out.extend([
        ("pretty".into(), pretty),
        ("escaped strings".into(), escaped.into_bytes()),
        ("array".into(), b"[1, 2]".to_vec()),
        (
            "event as array".into(),
            br#"["acme", "user.login"]"#.to_vec(),
        ),
        (
            "actor as array".into(),
            br#"{"action": "a.b", "actor": ["u"]}"#.to_vec(),
        ),
        ("trailing garbage".into(), b"{\"action\": \"a\"} x".to_vec()),
        ("empty".into(), Vec::new()),
        (
            "minimal".into(),
            br#"{"action": "a.b", "actor": {"id": "u"}}"#.to_vec(),
        ),
    ]);
    // Values that only a full parse checks, in members the general path
    // ignores, and serde_json's raw-value key, which its `Value` parser
    // reads specially.
    let body = |member: &str, value: &str| {
        let v = set(base(), member, Some(json!("PLACEHOLDER")));
        String::from_utf8(serde_json::to_vec(&v).unwrap())
            .unwrap()
            .replace("\"PLACEHOLDER\"", value)
            .into_bytes()
    };
    let raw_key = "\"$serde_json::private::RawValue\"";
    for (member, value) in [
        ("context/zone", "1e400".to_owned()),
        ("context/request/q", "[-1e999]".to_owned()),
        ("targets/0/q", "\"\\udc00\"".to_owned()),
        ("actor/q", "\"\\ud800\"".to_owned()),
        ("metadata", format!("{{{raw_key}:\"{{\\\"a\\\":1}}\"}}")),
        ("metadata", format!("{{{raw_key}:\"[1]\"}}")),
        ("metadata", format!("{{{raw_key}:\"{{\"}}")),
        ("metadata/a", format!("{{{raw_key}:\"7\"}}")),
        ("context", format!("{{{raw_key}:\"7\"}}")),
        ("context/request", format!("{{{raw_key}:\"[]\"}}")),
        ("targets/0", format!("{{{raw_key}:\"7\",\"id\":\"t\"}}")),
    ] {
        out.push((format!("{member} = {value} (raw)"), body(member, &value)));
    }
    let mut bad_utf8 = body("context/zone", "\"Z\"");
    let z = bad_utf8.iter().position(|&b| b == b'Z').unwrap();
    bad_utf8.splice(z..=z, [0xff, 0xfe]);
    out.push(("invalid UTF-8 in an unknown member".into(), bad_utf8));
    out.extend(general_only());
    out
}

/// Whether every member of `v` (an event the general path accepted) is one
/// the fast path reads: further members of the actor, targets, context and
/// request are left to the general path.
fn plain(v: &Value) -> bool {
    let only = |v: &Value, known: &[&str]| {
        v.as_object()
            .is_none_or(|o| o.keys().all(|k| known.contains(&k.as_str())))
    };
    only(&v["actor"], &["id", "type", "name", "email"])
        && v["targets"]
            .as_array()
            .is_none_or(|t| t.iter().all(|t| only(t, &["id", "type", "name"])))
        && only(&v["context"], &["ip", "user_agent", "location", "request"])
        && only(&v["context"]["request"], &["method", "path", "status"])
}

#[test]
fn fast_path_matches_the_general_path() {
    let limits = limits();
    let at = Time::now();
    let general_only: Vec<String> = general_only().into_iter().map(|(n, _)| n).collect();
    let (mut fast_taken, mut general_accepted) = (0, 0);
    for (name, body) in cases() {
        let fast = super::event(&body, &limits, at);
        let value = serde_json::from_slice::<Value>(&body).ok();
        let general = value.as_ref().map(|v| native_event(v, &limits, "", at));
        let accepted = matches!(general, Some(Ok(_)));
        let plain = accepted
            && !general_only.contains(&name)
            && plain(value.as_ref().expect("parsed when accepted"));
        general_accepted += usize::from(accepted);
        if let Some(mut fast) = fast {
            fast_taken += 1;
            let Some(Ok(general)) = general else {
                panic!("{name}: the fast path took a body the general path refuses: {general:?}");
            };
            fast.id = general.id;
            assert_eq!(fast, general, "{name}");
            assert_eq!(fast.leaf(), general.leaf(), "{name}");
        } else {
            assert!(
                !plain,
                "{name}: the fast path left a plain valid body to the general path"
            );
        }
    }
    // The cases must exercise both outcomes, or the test proves nothing.
    assert!(fast_taken > 100, "fast path took only {fast_taken} bodies");
    assert!(
        general_accepted > fast_taken,
        "no body was accepted by the general path alone"
    );
}
