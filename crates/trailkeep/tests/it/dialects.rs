//! The five seed dialects over real HTTP: each seed's own example, each
//! validation rule and auth failure with its exact status and body, and
//! visibility through the native API.

use serde_json::{Value, json};

use crate::support::{KEY, TestServer};

const JSON: (&str, &str) = ("content-type", "application/json");

async fn native_latest(s: &TestServer) -> Value {
    let (st, page) = s.get("/v1/events?limit=1", KEY).await;
    assert_eq!(st, 200);
    page["data"][0].clone()
}

async fn count(s: &TestServer) -> usize {
    s.list_all("", KEY).await.len()
}

// ---------------------------------------------------------------- LogHub

/// The seed's `JSON.stringify(...)` body, byte for byte.
const LOGHUB_EXAMPLE: &str = r#"{"actor":{"type":"user","data":{"name":"Jonathan Wick","email":"[email protected]","internal_id":"1"}},"action":"api.testing.tres","metadata":{"old":{"theme":"dark","organization_name":"continental"},"new":{"theme":"light","organization_name":"the continental"},"key":"value"},"tags":["production","..."],"external_id":"1","context":{"location":"190.0.0.12","user_agent":"Chrome..."}}"#;

#[tokio::test]
async fn loghub_seed_example_and_rules() {
    let s = TestServer::start().await;
    let h = [JSON, ("token", KEY), ("organization", "default")];
    let (st, body) = s.post_raw("/v1/event", &h, LOGHUB_EXAMPLE).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["code"], "CREATE_EVENT_OK");
    assert_eq!(body["status"], "ok");
    assert_eq!(body.as_object().unwrap().len(), 3);
    assert_eq!(body["data"].as_object().unwrap().len(), 2);
    let id = body["data"]["id"].as_str().unwrap();
    assert!(body["data"]["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    let e = native_latest(&s).await;
    assert_eq!(e["id"], id);
    assert_eq!(e["tenant"], "1");
    assert_eq!(e["action"], "api.testing.tres");
    assert_eq!(
        e["actor"],
        json!({"id": "1", "type": "user", "name": "Jonathan Wick", "email": "[email protected]"})
    );
    assert_eq!(e["tags"], json!(["production", "..."]));
    assert_eq!(e["metadata"]["old"]["theme"], "dark");
    assert_eq!(e["metadata"]["new"]["organization_name"], "the continental");
    assert_eq!(
        e["context"],
        json!({"ip": "190.0.0.12", "location": "190.0.0.12", "user_agent": "Chrome..."})
    );
    assert_eq!(e["source"]["dialect"], "loghub");
    assert_eq!(body["data"]["timestamp"].as_i64().unwrap(), {
        let t: jiff::Timestamp = e["received_at"].as_str().unwrap().parse().unwrap();
        t.as_millisecond()
    });

    // Organization by id works; numeric external_id is the same tenant as "1".
    let numeric = LOGHUB_EXAMPLE.replace(r#""external_id":"1""#, r#""external_id":1"#);
    let (st, _) = s
        .post_raw(
            "/v1/event",
            &[JSON, ("token", KEY), ("organization", "1")],
            numeric,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(native_latest(&s).await["tenant"], "1");
    // System actor with only a description.
    let system = r#"{"actor":{"type":"system","description":"Cron update prices"},"action":"prices.updated","metadata":{},"external_id":"acme","context":{}}"#;
    let (st, _) = s.post_raw("/v1/event", &h, system).await;
    assert_eq!(st, 200);
    let e = native_latest(&s).await;
    assert_eq!(
        (e["actor"]["id"].as_str(), e["actor"]["type"].as_str()),
        (Some("Cron update prices"), Some("system"))
    );

    let before = count(&s).await;
    let unauthorized = json!({"code": "UNAUTHORIZED", "status": "error", "message": "Invalid token or organization."});
    for headers in [
        vec![JSON, ("organization", "default")],
        vec![JSON, ("token", "tk_wrong"), ("organization", "default")],
        vec![JSON, ("token", KEY), ("organization", "someone-else")],
        vec![JSON, ("token", KEY)],
    ] {
        let (st, body) = s.post_raw("/v1/event", &headers, LOGHUB_EXAMPLE).await;
        assert_eq!((st, &body), (401, &unauthorized), "{headers:?}");
    }
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"actor":{"type":"user","data":{"internal_id":"1"}},"action":"a","metadata":{},"external_id":"1"}"#,
            &["/context"],
        ),
        (
            r#"{"actor":{"type":"user","data":{"internal_id":"1"}},"action":"a","external_id":"1","context":{}}"#,
            &["/metadata"],
        ),
        (
            r#"{"actor":{"type":"user","data":{"internal_id":"1"}},"metadata":{},"external_id":"1","context":{}}"#,
            &["/action"],
        ),
        (
            r#"{"actor":{"type":"user","data":{"internal_id":"1"}},"action":"a","metadata":{},"context":{}}"#,
            &["/external_id"],
        ),
        (
            r#"{"actor":{"type":"robot"},"action":"a","metadata":{},"external_id":1.5,"context":{}}"#,
            &["/actor/type", "/external_id"],
        ),
        (
            r#"{"actor":{"type":"user","data":{}},"action":"a","metadata":[],"external_id":"1","context":{},"tags":"x"}"#,
            &["/metadata", "/tags", "/actor/data/internal_id"],
        ),
    ];
    for (body, fields) in cases {
        let (st, res) = s.post_raw("/v1/event", &h, *body).await;
        assert_eq!(st, 400, "{body}");
        assert_eq!(
            (
                res["code"].as_str(),
                res["status"].as_str(),
                res["message"].as_str()
            ),
            (Some("BAD_REQUEST"), Some("error"), Some("Invalid event."))
        );
        let got: Vec<&str> = res["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        for f in *fields {
            assert!(got.contains(f), "{body}: missing {f} in {got:?}");
        }
    }
    let (st, res) = s.post_raw("/v1/event", &h, "{not json").await;
    assert_eq!((st, res["code"].as_str()), (400, Some("BAD_REQUEST")));
    assert_eq!(count(&s).await, before, "refused requests store nothing");
}

// ---------------------------------------------------------------- Logsh

const LOGSH_EXAMPLE: &str = "{\n\"workspace\": \"logsh\",\n\"event\": \"user.signup\",\n\"description\": \"User signed up for the newsletter.\",\n\"icon\": \"👤\",\n\"notify\": false,\n\"metadata\": {\n\"user_id\": \"12345\",\n\"plan\": \"pro\"\n}\n}";

fn logsh_400() -> (&'static str, &'static str) {
    ("bad_request", "Invalid body parameters provided.")
}

#[tokio::test]
async fn logsh_seed_example_and_rules() {
    let s = TestServer::start().await;
    let auth = format!("Bearer {KEY}");
    let h = [JSON, ("authorization", auth.as_str())];
    let (st, body) = s.post_raw("/api/event", &h, LOGSH_EXAMPLE).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        (
            body["status"].as_u64(),
            body["name"].as_str(),
            body["message"].as_str()
        ),
        (Some(200), Some("ok"), Some("Event created."))
    );
    let e = native_latest(&s).await;
    assert_eq!(e["id"], body["id"]);
    assert_eq!(e["tenant"], "logsh");
    assert_eq!(e["action"], "user.signup");
    assert_eq!(e["description"], "User signed up for the newsletter.");
    assert_eq!(e["metadata"], json!({"user_id": "12345", "plan": "pro"}));
    assert_eq!(e["source"]["fields"]["icon"], "👤");
    assert_eq!(e["actor"]["type"], "machine");
    // Workspaces are case-insensitive: one tenant.
    let upper = LOGSH_EXAMPLE.replace("\"logsh\"", "\"Logsh\"");
    let (st, _) = s.post_raw("/api/event", &h, upper).await;
    assert_eq!(st, 200);
    assert_eq!(s.list_all("tenant=logsh", KEY).await.len(), 2);
    for icon in ["👍🏽", "🏳️‍🌈"] {
        let (st, b) = s
            .post(
                "/api/event",
                KEY,
                &json!({"workspace": "w", "event": "e", "description": "d", "icon": icon}),
            )
            .await;
        assert_eq!(st, 200, "{icon}: {b}");
    }

    let before = count(&s).await;
    let long = |n: usize| "x".repeat(n);
    let bad: Vec<(Value, &str)> = vec![
        (json!({"event": "e", "description": "d"}), "/workspace"),
        (
            json!({"workspace": long(36), "event": "e", "description": "d"}),
            "/workspace",
        ),
        (
            json!({"workspace": "w", "event": long(251), "description": "d"}),
            "/event",
        ),
        (
            json!({"workspace": "w", "event": "e", "description": long(151)}),
            "/description",
        ),
        (json!({"workspace": "w", "event": "e"}), "/description"),
        (
            json!({"workspace": "", "event": "e", "description": "d"}),
            "/workspace",
        ),
        (
            json!({"workspace": "w", "event": "e", "description": "d", "icon": "abc"}),
            "/icon",
        ),
        (
            json!({"workspace": "w", "event": "e", "description": "d", "icon": "👍👍"}),
            "/icon",
        ),
        (
            json!({"workspace": "w", "event": "e", "description": "d", "icon": ""}),
            "/icon",
        ),
        (
            json!({"workspace": "w", "event": "e", "description": "d", "notify": "yes"}),
            "/notify",
        ),
        (
            json!({"workspace": "w", "event": "e", "description": "d", "metadata": ["a"]}),
            "/metadata",
        ),
    ];
    for (body, field) in bad {
        let (st, res) = s.post("/api/event", KEY, &body).await;
        assert_eq!(st, 400, "{body}");
        assert_eq!(
            (
                res["status"].as_u64(),
                res["name"].as_str(),
                res["message"].as_str()
            ),
            (Some(400), Some(logsh_400().0), Some(logsh_400().1))
        );
        assert_eq!(res["errors"][0]["field"], field, "{body}: {res}");
    }
    // The exactly-at-limit values pass.
    let (st, _) = s
        .post(
            "/api/event",
            KEY,
            &json!({"workspace": long(35), "event": long(250), "description": long(150)}),
        )
        .await;
    assert_eq!(st, 200);
    let unauthorized = json!({"status": 401, "name": "unauthorized", "message": "Your Bearer Token is missing, invalid or expired."});
    for h in [
        vec![JSON],
        vec![JSON, ("authorization", "Bearer nope")],
        vec![JSON, ("authorization", "Basic abc")],
    ] {
        let (st, res) = s.post_raw("/api/event", &h, LOGSH_EXAMPLE).await;
        assert_eq!((st, res), (401, unauthorized.clone()));
    }
    assert_eq!(count(&s).await, before + 1);
}

// ---------------------------------------------------------------- LogZab

/// The body of the seed's curl example, byte for byte (key replaced).
const LOGZAB_CURL: &str = "{\n\"apiKey\" : \"KEY\",\n\"actor\" : {\"unique_id\" : \"4123\",\n\"name\" : \"John Doe\",\n\"group\" : \"IT Dept\",\n\"ip\" : \"36.68.17.182\",\n\"device\" : \"Macbook Pro 13\",\n\"location\" : \"Jakarta, ID\"\n},\n\"object\" : \"Employee\",\n\"timezone\" : \"Asia/Jakarta\",\n\"action\" : \"update\",\n\"path\" : \"hris.local.net/employee\",\n\"desc\" : \"Updating employee data: Jackson\",\n\"tag\" : \"#hris #webapp\"\n}";

#[tokio::test]
async fn logzab_seed_example_and_rules() {
    let s = TestServer::start().await;
    let body = LOGZAB_CURL.replace("KEY", KEY);
    let (st, res) = s.post_raw("/v1/addTrail", &[JSON], body.clone()).await;
    assert_eq!(st, 200, "{res}");
    assert_eq!(
        (res["status"].as_str(), res["message"].as_str()),
        (Some("success"), Some("Audit trail added."))
    );
    let e = native_latest(&s).await;
    assert_eq!(e["id"], res["data"]["id"]);
    assert_eq!(e["tenant"], "default");
    assert_eq!(e["action"], "update");
    assert_eq!(
        e["actor"],
        json!({"id": "4123", "type": "user", "name": "John Doe", "group": "IT Dept", "device": "Macbook Pro 13"})
    );
    assert_eq!(e["targets"], json!([{"id": "Employee"}]));
    assert_eq!(e["tags"], json!(["hris", "webapp"]));
    assert_eq!(
        e["context"],
        json!({"ip": "36.68.17.182", "location": "Jakarta, ID", "request": {"path": "hris.local.net/employee"}})
    );
    assert_eq!(e["description"], "Updating employee data: Jackson");
    assert_eq!(e["source"]["fields"]["timezone"], "Asia/Jakarta");
    let local = e["source"]["fields"]["local_time"].as_str().unwrap();
    assert!(local.ends_with("+07:00"), "{local}");
    let instant: jiff::Timestamp = local.parse().unwrap();
    assert_eq!(
        instant.to_string(),
        e["occurred_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .to_string()
    );
    assert_eq!(s.list_all("tag=hris", KEY).await.len(), 1);

    // The seed's Python and PHP samples send single-quoted pseudo-JSON.
    let python = body.replace('"', "'");
    let (st, res) = s.post_raw("/v1/addTrail", &[JSON], python).await;
    assert_eq!(st, 400);
    assert_eq!(res["status"], "error");
    assert!(
        res["message"].as_str().unwrap().contains("single quotes"),
        "{res}"
    );

    let before = count(&s).await;
    let base: Value = serde_json::from_str(&body).unwrap();
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        if v.is_null() {
            b.as_object_mut().unwrap().remove(k);
        } else {
            b[k] = v;
        }
        b
    };
    let cases = [
        (with("timezone", json!("Mars/Olympus")), "/timezone"),
        (with("object", Value::Null), "/object"),
        (with("action", Value::Null), "/action"),
        (with("actor", json!({"name": "x"})), "/actor/unique_id"),
        (with("actor", json!({"unique_id": "1"})), "/actor/name"),
        (with("tag", json!(5)), "/tag"),
    ];
    for (b, field) in cases {
        let (st, res) = s.post("/v1/addTrail", KEY, &b).await;
        assert_eq!(st, 400, "{b}");
        assert_eq!(
            (res["status"].as_str(), res["message"].as_str()),
            (Some("error"), Some("Invalid body parameters."))
        );
        assert_eq!(res["errors"][0]["field"], field, "{res}");
    }
    for key in [json!("wrong"), Value::Null] {
        let (st, res) = s.post("/v1/addTrail", KEY, &with("apiKey", key)).await;
        assert_eq!(
            (st, res),
            (
                401,
                json!({"status": "error", "message": "Invalid or missing apiKey."})
            )
        );
    }
    // Custom actions, comma-separated tags and JSON descriptions are accepted.
    let custom = with("action", json!("approve_leave"));
    let custom = {
        let mut c = custom;
        c["tag"] = json!("hr, approvals");
        c["desc"] = json!({"employee": "Jackson", "days": 3});
        c
    };
    let (st, _) = s.post("/v1/addTrail", KEY, &custom).await;
    assert_eq!(st, 200);
    let e = native_latest(&s).await;
    assert_eq!(e["tags"], json!(["hr", "approvals"]));
    assert_eq!(
        e["metadata"]["desc"],
        json!({"employee": "Jackson", "days": 3})
    );
    assert_eq!(count(&s).await, before + 1);
}

// ---------------------------------------------------------------- ta-vivo

fn jwt(header: &str, claims: &str, secret: &[u8]) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B;
    use hmac::Mac as _;
    let (h, p) = (B.encode(header), B.encode(claims));
    let mut mac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(secret).unwrap();
    mac.update(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", B.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn tavivo_jwt_logs() {
    let secret = "ta-vivo-secret";
    let s = TestServer::start_with(|c| c.dialects.tavivo.jwt_secret = Some(secret.into())).await;
    let token = jwt(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#"{"sub":"7","email":"a@b.c"}"#,
        secret.as_bytes(),
    );
    let auth = format!("Bearer {token}");
    let h = [JSON, ("authorization", auth.as_str())];
    let seed = r#"{"userId": 1, "action": "update", "metaData": {"old": {"name": "a"}, "edited": {"name": "b"}}}"#;
    let (st, row) = s.post_raw("/logs", &h, seed).await;
    assert_eq!(st, 201, "{row}");
    assert_eq!(row["id"], 1);
    assert_eq!(row["userId"], 1);
    assert_eq!(row["action"], "update");
    assert_eq!(
        row["metaData"],
        json!({"old": {"name": "a"}, "edited": {"name": "b"}})
    );
    assert_eq!(row["CreatedAt"], row["UpdatedAt"]);
    let (_, native) = s.get("/v1/events?tenant=tavivo&limit=1", KEY).await;
    assert_eq!(
        row["CreatedAt"], native["data"][0]["received_at"],
        "CreatedAt is the stored receive time"
    );
    let (st, row2) = s
        .post_raw(
            "/logs",
            &h,
            r#"{"userId": 2, "action": "delete", "metaData": null}"#,
        )
        .await;
    assert_eq!(
        (st, row2["id"].as_u64(), row2["metaData"].clone()),
        (201, Some(2), Value::Null)
    );
    // Visible natively, with the JWT subject recorded beside the body's userId.
    let events = s.list_all("tenant=tavivo", KEY).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["actor"]["id"], "1");
    assert_eq!(events[1]["source"]["principal"], "7");
    assert_eq!(events[1]["metadata"]["edited"]["name"], "b");
    // GET /logs lists newest first, filterable.
    let res = s
        .client
        .get(format!("{}/logs", s.base))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    let (st, rows) = crate::support::read(res).await;
    assert_eq!(st, 200);
    assert_eq!(
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 1]
    );
    let res = s
        .client
        .get(format!("{}/logs?userId=1", s.base))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    let (_, rows) = crate::support::read(res).await;
    assert_eq!(rows.as_array().unwrap().len(), 1);
    let res = s
        .client
        .get(format!("{}/logs?limit=1", s.base))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["link"],
        "</logs?before=2&limit=1>; rel=\"next\""
    );

    // Auth failures: missing → 403; invalid, none, RS256, expired → 400.
    let res = s
        .client
        .post(format!("{}/logs", s.base))
        .body(seed)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.text().await.unwrap(), "Forbidden\n");
    let invalid = json!({"message": "Invalid JWT"});
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    for bad in [
        "garbage".to_owned(),
        jwt(r#"{"alg":"HS256"}"#, r#"{"id":7}"#, b"wrong-secret"),
        format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"id":7}"#)),
        format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"id":7}"#),
            b64("sig")
        ),
        jwt(
            r#"{"alg":"HS256"}"#,
            r#"{"id":7,"exp":1000}"#,
            secret.as_bytes(),
        ),
    ] {
        let a = format!("Bearer {bad}");
        let (st, res) = s
            .post_raw("/logs", &[JSON, ("authorization", a.as_str())], seed)
            .await;
        assert_eq!((st, res), (400, invalid.clone()), "{bad}");
    }
    let (st, res) = s.post_raw("/logs", &h, r#"{"action": "x"}"#).await;
    assert_eq!(st, 400);
    assert_eq!(res["errors"][0]["field"], "/userId");
    let res = s
        .client
        .put(format!("{}/logs", s.base))
        .send()
        .await
        .unwrap();
    let (st, res) = crate::support::read(res).await;
    assert_eq!((st, res), (405, json!({"message": "Method not allowed"})));
    assert_eq!(s.list_all("tenant=tavivo", KEY).await.len(), 2);
}

#[tokio::test]
async fn tavivo_is_off_without_a_secret() {
    let s = TestServer::start().await;
    let (st, res) = s
        .post("/logs", KEY, &json!({"userId": 1, "action": "a"}))
        .await;
    assert_eq!((st, res), (404, json!({"message": "Not found"})));
}

// ---------------------------------------------------------------- rate limits

/// Path, headers, body and the dialect's expected 429 body.
type RateCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, Value);

#[tokio::test]
async fn over_the_rate_limit_each_dialect_answers_429_in_its_shape() {
    let s = TestServer::start_with(|c| {
        // One request a minute after a burst of two: no refill can happen
        // while the test runs, however slow the machine.
        c.rate_limit.requests_per_minute = 1;
        c.rate_limit.burst = 2;
        c.dialects.tavivo.jwt_secret = Some("k".into());
    })
    .await;
    let auth = format!("Bearer {KEY}");
    let token = format!("Bearer {}", jwt(r#"{"alg":"HS256"}"#, "{}", b"k"));
    let logzab = LOGZAB_CURL.replace("KEY", KEY);
    let cases: Vec<RateCase<'_>> = vec![
        (
            "/api/event",
            vec![JSON, ("authorization", auth.as_str())],
            LOGSH_EXAMPLE.into(),
            json!({"status": 429, "name": "rate_limit_exceeded", "message": "Rate limit was exceeded."}),
        ),
        (
            "/v1/event",
            vec![JSON, ("token", KEY), ("organization", "default")],
            LOGHUB_EXAMPLE.into(),
            json!({"code": "RATE_LIMIT_EXCEEDED", "status": "error", "message": "Rate limit was exceeded."}),
        ),
        (
            "/v1/addTrail",
            vec![JSON],
            logzab,
            json!({"status": "error", "message": "Rate limit was exceeded."}),
        ),
        (
            "/api/events",
            vec![JSON, ("authorization", auth.as_str())],
            AUDITR_EXAMPLE.into(),
            json!({"error": "rate_limit_exceeded", "message": "Rate limit was exceeded."}),
        ),
        (
            "/logs",
            vec![JSON, ("authorization", token.as_str())],
            r#"{"userId":1,"action":"a"}"#.into(),
            json!({"message": "Rate limit was exceeded."}),
        ),
    ];
    // The API key is one credential across dialects: its burst of 2 is spent first.
    let (st, _) = s
        .post(
            "/v1/events",
            KEY,
            &json!({"action": "a", "actor": {"id": "u"}}),
        )
        .await;
    assert_eq!(st, 201);
    let (st, _) = s
        .post(
            "/v1/events",
            KEY,
            &json!({"action": "a", "actor": {"id": "u"}}),
        )
        .await;
    assert_eq!(st, 201, "under the limit nothing is refused");
    // A wrong LogHub organization is a 401 even with the quota spent: failed
    // authentication is answered before the limit is charged.
    let (st, res) = s
        .post_raw(
            "/v1/event",
            &[JSON, ("token", KEY), ("organization", "nope")],
            LOGHUB_EXAMPLE,
        )
        .await;
    assert_eq!((st, res["code"].as_str()), (401, Some("UNAUTHORIZED")));
    for (path, headers, body, want) in &cases {
        if *path == "/logs" {
            for _ in 0..2 {
                let (st, _) = s.post_raw(path, headers, body.clone()).await;
                assert_eq!(st, 201, "the JWT credential has its own quota");
            }
        }
        let res = headers
            .iter()
            .fold(s.client.post(format!("{}{path}", s.base)), |r, (k, v)| {
                r.header(*k, *v)
            })
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let retry: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((59..=60).contains(&retry), "{path}: Retry-After {retry}");
        let (st, got) = crate::support::read(res).await;
        assert_eq!((st, &got), (429, want), "{path}");
    }
    let (st, p) = s
        .post(
            "/v1/events",
            KEY,
            &json!({"action": "a", "actor": {"id": "u"}}),
        )
        .await;
    assert_eq!((st, p["code"].as_str()), (429, Some("rate_limited")));
}

// ---------------------------------------------------------------- Auditr

/// The seed's curl `--data`, placeholders replaced by realistic values.
const AUDITR_EXAMPLE: &str = r#"{
  "org_id": "org_42",
  "action": "user.login",
  "action_result": "success",
  "actor_id": "u_1001",
  "actor_type": "user",
  "actor_email": "jsmith@example.com",
  "actor_name": "Jane Smith",
  "client_ip": "81.2.69.10",
  "request_method": "POST",
  "request_path": "/login",
  "response_status": 123,
  "occurred_at": "2023-11-07T05:31:56Z"
}"#;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

#[tokio::test]
async fn auditr_seed_example_and_rules() {
    let geo_dir = tempfile::tempdir().unwrap();
    let db = geo_dir.path().join("city-ipv4.mmdb");
    std::fs::write(&db, trailkeep::ingest::enrich::fixture::flat_ipv4_db()).unwrap();
    let db_path = db.to_str().unwrap().to_owned();
    let s = TestServer::start_with(|c| c.geoip.city_db = Some(db_path)).await;
    let auth = format!("Bearer {KEY}");
    let h = [
        JSON,
        ("authorization", auth.as_str()),
        ("user-agent", CHROME),
    ];
    let (st, res) = s.post_raw("/api/events", &h, AUDITR_EXAMPLE).await;
    assert_eq!(st, 200, "{res}");
    let sent: Value = serde_json::from_str(AUDITR_EXAMPLE).unwrap();
    for (k, v) in sent.as_object().unwrap() {
        assert_eq!(&res[k], v, "{k} is echoed as sent");
    }
    assert_eq!(res["parent_org_id"], "default");
    assert_eq!(
        (
            res["client_geo_lat"].as_f64(),
            res["client_geo_lon"].as_f64()
        ),
        (Some(51.5), Some(-0.1))
    );
    assert_eq!(res["client_city"], "London");
    assert_eq!(res["client_region_code"], "England");
    assert_eq!(res["client_subdivision_1_code"], "England");
    assert_eq!(res["user_agent_name"], "Chrome");
    assert_eq!(res["user_agent_version"], "120.0.0.0");
    let id = res["id"].as_str().unwrap();
    // sha256 is the event's RFC 6962 leaf hash, in hex.
    let (_, leaf) = s.get_text(&format!("/v1/events/{id}"), KEY).await;
    let hex: String = tlog::leaf_hash(leaf.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(res["sha256"], hex);
    let e: Value = serde_json::from_str(&leaf).unwrap();
    assert_eq!(e["tenant"], "org_42");
    assert_eq!(e["occurred_at"], "2023-11-07T05:31:56.000000Z");
    assert_eq!(e["result"], "success");
    assert_eq!(
        e["actor"],
        json!({"id": "u_1001", "type": "user", "name": "Jane Smith", "email": "jsmith@example.com"})
    );
    assert_eq!(
        e["context"],
        json!({"ip": "81.2.69.10", "request": {"method": "POST", "path": "/login", "status": 123}})
    );
    assert_eq!(e["source"]["fields"]["client_city"], "London");

    // Unknown IP: geo members are null; curl's agent is its product token.
    let other = AUDITR_EXAMPLE.replace("81.2.69.10", "2001:db8::7");
    let (st, res) = s
        .post_raw(
            "/api/events",
            &[
                JSON,
                ("authorization", auth.as_str()),
                ("user-agent", "curl/8.5.0"),
            ],
            other,
        )
        .await;
    assert_eq!(st, 200);
    assert!(res["client_city"].is_null() && res["client_geo_lat"].is_null());
    assert_eq!(
        (
            res["user_agent_name"].as_str(),
            res["user_agent_version"].as_str()
        ),
        (Some("curl"), Some("8.5.0"))
    );

    let before = count(&s).await;
    let base = sent.clone();
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        if v.is_null() {
            b.as_object_mut().unwrap().remove(k);
        } else {
            b[k] = v;
        }
        b
    };
    let cases = [
        (with("org_id", Value::Null), "/org_id"),
        (with("action_result", json!("maybe")), "/action_result"),
        (with("actor_type", json!("system")), "/actor_type"),
        (with("occurred_at", json!("2023-11-07")), "/occurred_at"),
        (with("occurred_at", Value::Null), "/occurred_at"),
        (with("client_ip", json!("999.0.0.1")), "/client_ip"),
        (with("response_status", json!("200")), "/response_status"),
        (with("actor_id", json!(7)), "/actor_id"),
    ];
    for (b, field) in cases {
        let (st, res) = s.post("/api/events", KEY, &b).await;
        assert_eq!(st, 400, "{b}");
        assert_eq!(
            (res["error"].as_str(), res["message"].as_str()),
            (Some("bad_request"), Some("Invalid request body."))
        );
        assert_eq!(res["errors"][0]["field"], field, "{res}");
    }
    let (st, res) = s.post_raw("/api/events", &[JSON], AUDITR_EXAMPLE).await;
    assert_eq!(
        (st, res),
        (
            401,
            json!({"error": "unauthorized", "message": "Missing or invalid bearer token."})
        )
    );
    // Offset-less ISO times are read as UTC.
    let (st, _) = s
        .post(
            "/api/events",
            KEY,
            &with("occurred_at", json!("2023-11-07T05:31:56")),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        native_latest(&s).await["occurred_at"],
        "2023-11-07T05:31:56.000000Z"
    );
    assert_eq!(count(&s).await, before + 1);
}

#[tokio::test]
async fn logzab_tag_arrays_and_empty_optional_members() {
    let s = TestServer::start().await;
    let mut body: Value = serde_json::from_str(&LOGZAB_CURL.replace("KEY", KEY)).unwrap();
    body["tag"] = json!(["#hris", "web app", "#hris", " "]);
    body["actor"]["group"] = json!("");
    let (st, res) = s.post("/v1/addTrail", KEY, &body).await;
    assert_eq!(st, 200, "{res}");
    let e = native_latest(&s).await;
    assert_eq!(e["tags"], json!(["hris", "web app"]));
    assert!(
        e["actor"].get("group").is_none(),
        "an empty optional member counts as absent"
    );
    body["tag"] = json!(["ok", 3]);
    let (st, res) = s.post("/v1/addTrail", KEY, &body).await;
    assert_eq!(
        (st, res["errors"][0]["field"].as_str()),
        (400, Some("/tag"))
    );
    let (st, res) = s.post_raw("/v1/addTrail", &[JSON], "[]").await;
    assert_eq!(
        (st, res["status"].as_str()),
        (400, Some("error")),
        "a non-object body is a 400, not a 401"
    );
}

#[tokio::test]
async fn actor_keys_that_collide_with_canonical_ones_do_not_break_the_leaf() {
    let s = TestServer::start().await;
    let mut body: Value = serde_json::from_str(&LOGZAB_CURL.replace("KEY", KEY)).unwrap();
    body["actor"]["id"] = json!("other-id");
    body["actor"]["type"] = json!("robot");
    body["actor"]["email"] = json!("john@example.com");
    let (st, res) = s.post("/v1/addTrail", KEY, &body).await;
    assert_eq!(st, 200, "{res}");
    let id = res["data"]["id"].as_str().unwrap().to_owned();
    let (st, proof) = s.get(&format!("/v1/events/{id}/proof"), KEY).await;
    assert_eq!(st, 200, "the stored leaf decodes: {proof}");
    let e = native_latest(&s).await;
    assert_eq!(
        (e["actor"]["id"].as_str(), e["actor"]["email"].as_str()),
        (Some("4123"), Some("john@example.com"))
    );
    let h = [JSON, ("token", KEY), ("organization", "default")];
    let loghub = LOGHUB_EXAMPLE.replace(
        r#""internal_id":"1""#,
        r#""internal_id":"1","id":"x","type":"admin""#,
    );
    let (st, res) = s.post_raw("/v1/event", &h, loghub).await;
    assert_eq!(st, 200, "{res}");
    let (st, _) = s
        .get(
            &format!("/v1/events/{}/proof", res["data"]["id"].as_str().unwrap()),
            KEY,
        )
        .await;
    assert_eq!(st, 200);
}
