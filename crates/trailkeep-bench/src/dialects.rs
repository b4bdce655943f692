//! Single-event load on each seed dialect's ingestion endpoint (LogHub,
//! Logsh, LogZab, Auditr, ta-vivo), with bodies carrying the same facts as
//! the native templates in each dialect's own shape and auth.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};

use crate::http::{self, Kind};
use crate::server::API_KEY;
use crate::stats::{load_json, per_sec};
use crate::{CONNECTIONS, Plan, events, server, sys};

/// The HS256 secret the ta-vivo dialect is configured with for the run.
const TAVIVO_SECRET: &str = "trailkeep-bench-tavivo-secret";

/// One dialect's endpoint and how to build a request for template `i`.
struct Dialect {
    name: &'static str,
    /// The tenant its events land in, for the read-back check.
    tenant: fn(usize) -> String,
    request: fn(usize, &str) -> Vec<u8>,
}

/// A `POST` of `body` with `headers`.
fn raw(path: &str, headers: &[(&str, &str)], body: &Value) -> Vec<u8> {
    http::request("POST", path, headers, &to_vec(body))
}

/// A `POST` of `body` with `Authorization: Bearer <bearer>`.
fn with_bearer(path: &str, bearer: &str, body: &Value) -> Vec<u8> {
    http::post(path, bearer, &to_vec(body))
}

fn to_vec(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).expect("serializes")
}

fn loghub(i: usize, _: &str) -> Vec<u8> {
    let e = events::event(i, None);
    raw(
        "/v1/event",
        &[
            ("token", API_KEY),
            ("organization", trailkeep::DEFAULT_PROJECT),
        ],
        &json!({
            "actor": {"type": "user", "data": {
                "internal_id": e["actor"]["id"], "name": e["actor"]["name"], "email": e["actor"]["email"],
            }},
            "action": e["action"],
            "external_id": e["tenant"],
            "tags": e["tags"],
            "metadata": e["metadata"],
            "context": {"location": e["context"]["ip"], "user_agent": e["context"]["user_agent"]},
        }),
    )
}

fn logsh(i: usize, _: &str) -> Vec<u8> {
    let e = events::event(i, None);
    with_bearer(
        "/api/event",
        API_KEY,
        &json!({
            "workspace": e["tenant"],
            "event": e["action"],
            "description": e["description"],
            "icon": "👤",
            "notify": i.is_multiple_of(10),
            "metadata": e["metadata"],
        }),
    )
}

fn logzab(i: usize, _: &str) -> Vec<u8> {
    let e = events::event(i, None);
    let timezone = ["UTC", "Asia/Jakarta", "Europe/Berlin"][i % 3];
    raw(
        "/v1/addTrail",
        &[],
        &json!({
            "apiKey": API_KEY,
            "actor": {"unique_id": e["actor"]["id"], "name": e["actor"]["name"], "ip": e["context"]["ip"], "group": "staff"},
            "object": e["targets"][0]["id"],
            "action": e["action"],
            "timezone": timezone,
            "path": e["context"]["request"]["path"],
            "desc": e["description"],
            "tag": "#web #hris",
        }),
    )
}

fn auditr(i: usize, _: &str) -> Vec<u8> {
    let e = events::event(i, None);
    let bearer = format!("Bearer {API_KEY}");
    raw(
        "/api/events",
        &[
            ("authorization", &bearer),
            ("user-agent", "trailkeep-bench/1.0"),
        ],
        &json!({
            "org_id": e["tenant"],
            "action": e["action"],
            "action_result": e["result"],
            "actor_id": e["actor"]["id"],
            "actor_type": "user",
            "actor_email": e["actor"]["email"],
            "actor_name": e["actor"]["name"],
            "occurred_at": format!("2026-12-01T10:{:02}:{:02}.{:03}Z", i / 60 % 60, i % 60, i % 1000),
            "client_ip": e["context"]["ip"],
            "request_method": "POST",
            "request_path": e["context"]["request"]["path"],
            "response_status": 200,
        }),
    )
}

fn tavivo(i: usize, token: &str) -> Vec<u8> {
    let e = events::event(i, None);
    with_bearer(
        "/logs",
        token,
        &json!({"userId": i, "action": e["action"], "metaData": e["metadata"]}),
    )
}

/// An HS256 JWT for `claims`, signed with `secret`.
fn jwt(claims: &Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(to_vec(claims));
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

const DIALECTS: [Dialect; 5] = [
    Dialect {
        name: "loghub",
        tenant: events::tenant,
        request: loghub,
    },
    Dialect {
        name: "logsh",
        tenant: events::tenant,
        request: logsh,
    },
    Dialect {
        name: "logzab",
        tenant: |_| "default".into(),
        request: logzab,
    },
    Dialect {
        name: "auditr",
        tenant: events::tenant,
        request: auditr,
    },
    Dialect {
        name: "tavivo",
        tenant: |_| "tavivo".into(),
        request: tavivo,
    },
];

/// Whether the newest event of `tenant` reads back through the native API
/// with `source.dialect` = `dialect`.
async fn reads_back(
    addr: std::net::SocketAddr,
    tenant: &str,
    dialect: &str,
) -> anyhow::Result<bool> {
    let mut conn = http::Conn::connect(addr).await?;
    let res = conn
        .send(&http::get(
            &format!("/v1/events?tenant={tenant}&limit=1"),
            API_KEY,
        ))
        .await?;
    let v: Value = serde_json::from_slice(&res.body).unwrap_or(Value::Null);
    Ok(v["data"][0]["source"]["dialect"] == dialect)
}

/// Loads each dialect's endpoint in turn, each on a fresh SQLite server (so
/// its bytes on disk are its own), with [`CONNECTIONS`] connections for half
/// a phase each.
///
/// # Errors
/// When a server cannot start, a dialect acknowledges nothing or fails a
/// request, or its events do not read back through the native API.
pub async fn run(plan: &Plan) -> anyhow::Result<Value> {
    let token = jwt(
        &json!({"sub": "trailkeep-bench", "userId": 1}),
        TAVIVO_SECRET,
    );
    let mut spec = plan.spec(CONNECTIONS);
    spec.measure /= 2;
    let mut out = serde_json::Map::new();
    for d in &DIALECTS {
        let reqs: Vec<Arc<[u8]>> = (0..events::TEMPLATES)
            .map(|i| (d.request)(i, &token).into())
            .collect();
        let tk = server::start_config(|c| {
            c.dialects.tavivo.jwt_secret = Some(TAVIVO_SECRET.into());
        })
        .await?;
        let before = sys::reset_peak_rss();
        let r = http::run_load(tk.addr, &spec, crate::rotate(reqs, Kind::Write, 1)).await?;
        let peak = sys::peak_rss_bytes();
        crate::fail_on_errors(d.name, &r)?;
        if r.errors > 0 {
            anyhow::bail!(
                "{}: {} requests failed, first: {:?}",
                d.name,
                r.errors,
                r.first_error
            );
        }
        // Request 0 goes first and carries template 0, and the server holds
        // only this dialect's events.
        if !reads_back(tk.addr, &(d.tenant)(0), d.name).await? {
            anyhow::bail!(
                "{}: its newest event does not read back with source.dialect",
                d.name
            );
        }
        let dir = tk.stop().await?;
        let disk_bytes = sys::dir_bytes(dir.path());
        drop(dir);
        let mut v = load_json(&r, Kind::Write);
        v["rss_before_mib"] = json!(sys::mib(before));
        v["peak_rss_mib"] = json!(sys::mib(peak));
        v["disk"] = json!({
            "events": r.acked_events,
            "bytes": disk_bytes,
            "bytes_per_event": per_sec(disk_bytes, r.acked_events as f64),
        });
        out.insert(d.name.into(), v);
    }
    Ok(Value::Object(out))
}
