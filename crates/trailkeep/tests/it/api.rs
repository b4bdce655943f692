//! The native API over real HTTP.

use serde_json::{Value, json};

use crate::support::{KEY, TestServer, event};

#[tokio::test]
async fn ingest_single_then_read_back() {
    let s = TestServer::start().await;
    let body = json!({
        "tenant": "acme", "action": "user.login", "occurred_at": "2026-01-02T03:04:05Z",
        "actor": {"id": "u1", "type": "user", "name": "Ann", "email": "ann@example.com", "dept": "ops"},
        "targets": [{"id": "doc-1", "type": "document", "name": "Plan"}],
        "result": "success", "description": "Ann logged in", "tags": ["web", "prod"],
        "context": {"ip": "2001:db8::1", "user_agent": "curl/8", "location": "Lisbon", "request": {"method": "POST", "path": "/login", "status": 200}},
        "metadata": {"b": 1, "a": {"nested": true}}
    });
    let (status, receipt) = s.post("/v1/events", KEY, &body).await;
    assert_eq!(status, 201, "{receipt}");
    assert_eq!(receipt["tenant"], "acme");
    assert_eq!(receipt["index"], 0);
    assert_eq!(receipt["leaf_hash"].as_str().unwrap().len(), 44);
    let id = receipt["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    let (status, got) = s.get(&format!("/v1/events/{id}"), KEY).await;
    assert_eq!(status, 200);
    assert_eq!(got["id"], id);
    assert_eq!(got["received_at"], receipt["received_at"]);
    assert_eq!(got["occurred_at"], "2026-01-02T03:04:05.000000Z");
    assert_eq!(
        got["actor"],
        json!({"id": "u1", "type": "user", "name": "Ann", "email": "ann@example.com", "dept": "ops"})
    );
    assert_eq!(got["targets"], body["targets"]);
    assert_eq!(got["context"], body["context"]);
    assert_eq!(got["metadata"], body["metadata"]);
    assert_eq!(got["tags"], body["tags"]);
    let (status, _) = s
        .get("/v1/events/0190a0a0-0000-7000-8000-000000000000", KEY)
        .await;
    assert_eq!(status, 404);
    // Defaults: tenant `default`, occurred_at = received_at, actor type user.
    let (_, r) = s.post("/v1/events", KEY, &event("a", "x")).await;
    let (_, got) = s
        .get(&format!("/v1/events/{}", r["id"].as_str().unwrap()), KEY)
        .await;
    assert_eq!(got["tenant"], "default");
    assert_eq!(got["occurred_at"], got["received_at"]);
    assert_eq!(got["actor"]["type"], "user");
}

#[tokio::test]
async fn batch_is_all_or_nothing_with_per_item_errors() {
    let s = TestServer::start_with(|c| c.limits.max_batch_events = 3).await;
    let bad =
        json!({"events": [event("ok", "a"), {"actor": {"id": "b"}}, {"action": "x", "actor": {}}]});
    let (status, err) = s.post("/v1/events/batch", KEY, &bad).await;
    assert_eq!(status, 422);
    assert_eq!(err["code"], "validation_failed");
    let fields: Vec<&str> = err["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["/events/1/action", "/events/2/actor/id"]);
    assert!(
        s.list_all("", KEY).await.is_empty(),
        "a refused batch stores nothing"
    );

    // Bodies in other shapes get the same answers whichever way they are parsed.
    let auth = (
        "authorization",
        "Bearer tk_test_key_for_integration_tests_0000000000",
    );
    let json_ct = ("content-type", "application/json");
    let shapes: &[(&str, u16, &str)] = &[
        (r#"{"events": 5}"#, 422, "validation_failed"),
        (r#"{"events": null}"#, 422, "validation_failed"),
        (
            r#"[{"action": "a", "actor": {"id": "u"}}]"#,
            422,
            "validation_failed",
        ),
        (r#"{"events": []}"#, 422, "validation_failed"),
        (
            r#"{"events": [{"action": "a", "actor": {"id": "u"}}"#,
            400,
            "invalid_json",
        ),
        // A repeated key: the last one counts, as everywhere else.
        (
            r#"{"events": [{"actor": {"id": "u"}}], "events": [{"tenant": "dup", "action": "dup", "actor": {"id": "u"}}]}"#,
            201,
            "",
        ),
    ];
    for (body, status, code) in shapes {
        let (st, res) = s
            .post_raw(
                "/v1/events/batch",
                &[auth, json_ct],
                body.as_bytes().to_vec(),
            )
            .await;
        assert_eq!(st, *status, "{body}: {res}");
        if !code.is_empty() {
            assert_eq!(res["code"], *code, "{body}: {res}");
        }
    }
    assert_eq!(s.list_all("action=dup", KEY).await.len(), 1);
    // Malformed JSON is reported before a bad idempotency key.
    let (st, res) = s
        .post_raw(
            "/v1/events/batch",
            &[auth, json_ct, ("idempotency-key", "")],
            b"{\"events\": [".to_vec(),
        )
        .await;
    assert_eq!(
        (st, res["code"].as_str()),
        (400, Some("invalid_json")),
        "{res}"
    );

    let too_many =
        json!({"events": [event("a", "a"), event("a", "a"), event("a", "a"), event("a", "a")]});
    let (status, err) = s.post("/v1/events/batch", KEY, &too_many).await;
    assert_eq!(status, 422);
    assert_eq!(err["errors"][0]["code"], "batch_size");

    let ok = json!({"events": [event("a", "1"), event("b", "2"), {"tenant": "t2", "action": "c", "actor": {"id": "3"}}]});
    let (status, res) = s.post("/v1/events/batch", KEY, &ok).await;
    assert_eq!(status, 201, "{res}");
    let idx: Vec<(String, u64)> = res["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tenant"].as_str().unwrap().to_owned(),
                r["index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        idx,
        [
            ("default".into(), 0),
            ("default".into(), 1),
            ("t2".into(), 0)
        ]
    );
}

#[tokio::test]
async fn idempotent_retry_returns_the_original_and_stores_once() {
    let s = TestServer::start().await;
    let body = serde_json::to_vec(&event("pay", "u")).unwrap();
    let headers = [
        (
            "authorization",
            "Bearer tk_test_key_for_integration_tests_0000000000",
        ),
        ("idempotency-key", "k-1"),
        ("content-type", "application/json"),
    ];
    let (s1, first) = s.post_raw("/v1/events", &headers, body.clone()).await;
    let (s2, second) = s.post_raw("/v1/events", &headers, body.clone()).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first, second);
    assert_eq!(s.list_all("", KEY).await.len(), 1);
    let other = serde_json::to_vec(&event("refund", "u")).unwrap();
    let (s3, err) = s.post_raw("/v1/events", &headers, other).await;
    assert_eq!(s3, 422);
    assert_eq!(err["code"], "idempotency_key_reused");
    assert_eq!(s.list_all("", KEY).await.len(), 1);
    // The same key on the batch route is a different request.
    let batch = serde_json::to_vec(&json!({"events": [event("pay", "u")]})).unwrap();
    let (s4, _) = s.post_raw("/v1/events/batch", &headers, batch).await;
    assert_eq!(s4, 422);

    // Concurrent retries with one new key, in one group commit or in groups
    // sequenced while the first is still being synced: one event is stored
    // and every retry gets its response.
    for round in 0..8 {
        let body = serde_json::to_vec(&event(&format!("race{round}"), "u")).unwrap();
        let key = format!("k-race-{round}");
        let raced = [headers[0], ("idempotency-key", key.as_str()), headers[2]];
        let tries = (0..24).map(|_| s.post_raw("/v1/events", &raced, body.clone()));
        let answers = futures_util::future::join_all(tries).await;
        for (status, answer) in &answers {
            assert_eq!((*status, answer), (201, &answers[0].1));
        }
        assert_eq!(s.list_all("", KEY).await.len(), 2 + round);
    }
}

async fn seed(s: &TestServer) {
    let events = json!({"events": [
        {"tenant": "a", "action": "user.login", "actor": {"id": "ann", "name": "Ann Lee"}, "result": "success", "tags": ["web"], "occurred_at": "2026-01-01T00:00:00Z", "metadata": {"plan": "gold"}},
        {"tenant": "a", "action": "user.logout", "actor": {"id": "ann"}, "result": "success", "occurred_at": "2026-01-02T00:00:00Z"},
        {"tenant": "b", "action": "document.delete", "actor": {"id": "bob", "email": "bob@corp.example"}, "result": "failure", "targets": [{"id": "doc-9", "name": "Quarterly report"}], "tags": ["api", "web"], "occurred_at": "2026-01-03T00:00:00Z", "description": "tried to remove the report at the Café"},
        {"tenant": "b", "action": "userx.create", "actor": {"id": "cat"}, "occurred_at": "2026-01-04T00:00:00Z"}
    ]});
    let (status, res) = s.post("/v1/events/batch", KEY, &events).await;
    assert_eq!(status, 201, "{res}");
}

async fn actions(s: &TestServer, query: &str) -> Vec<String> {
    s.list_all(query, KEY)
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_filter_selects_exactly_its_events() {
    let s = TestServer::start().await;
    seed(&s).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await; // full-text indexing is deferred (< 1 s)
    let cases: &[(&str, &[&str])] = &[
        (
            "",
            &[
                "userx.create",
                "document.delete",
                "user.logout",
                "user.login",
            ],
        ),
        ("tenant=a", &["user.logout", "user.login"]),
        ("actor=ann", &["user.logout", "user.login"]),
        ("action=user.login", &["user.login"]),
        ("action=user.*", &["user.logout", "user.login"]),
        ("target=doc-9", &["document.delete"]),
        ("tag=web", &["document.delete", "user.login"]),
        ("result=failure", &["document.delete"]),
        (
            "since=2026-01-02T00:00:00Z",
            &["userx.create", "document.delete", "user.logout"],
        ),
        ("until=2026-01-02T00:00:00Z", &["user.login"]),
        (
            "since=2026-01-02T00:00:00Z&until=2026-01-04T00:00:00Z",
            &["document.delete", "user.logout"],
        ),
        ("q=quarterly", &["document.delete"]),
        ("q=REMOVE report", &["document.delete"]),
        ("q=bob@corp.example", &["document.delete"]),
        ("q=gold", &["user.login"]),
        ("q=user.logout", &["user.logout"]),
        ("q=lee", &["user.login"]),
        ("q=Café", &["document.delete"]),
        ("q=cafe", &[]),
        ("q=nothing-like-this", &[]),
        ("tenant=b&tag=web&result=failure", &["document.delete"]),
        ("tenant=nobody", &[]),
    ];
    for (query, want) in cases {
        assert_eq!(actions(&s, query).await, *want, "query {query:?}");
    }
}

/// On SQLite, acknowledged events wait in the tail (the journal, and
/// memory) before they are folded into the database; every filter but full
/// text sees them there too, merged
/// with folded events in the listing's order, page by page.
#[tokio::test]
async fn every_filter_sees_events_that_are_not_folded_yet() {
    let s = TestServer::start().await;
    seed(&s).await;
    // Stopping folds the seed; the restarted server holds new events in the tail.
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |c| {
        c.commit.fold_at_events = 1_000_000;
        c.commit.fold_interval_ms = 3_600_000;
        c.commit.fold_idle_ms = 3_600_000;
    })
    .await;
    let late = json!({"events": [
        {"tenant": "a", "action": "user.login", "actor": {"id": "ann"}, "result": "success", "tags": ["web"], "targets": [{"id": "doc-9"}], "occurred_at": "2026-01-02T12:00:00Z"},
        {"tenant": "c", "action": "billing.paid", "actor": {"id": "dan"}, "occurred_at": "2025-12-31T00:00:00Z"}
    ]});
    let (status, res) = s.post("/v1/events/batch", KEY, &late).await;
    assert_eq!(status, 201, "{res}");
    if s.pg_url().is_none() {
        let conn = rusqlite::Connection::open(s.db_path()).unwrap();
        let folded: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(folded, 4, "the late events must still be in the tail");
    }
    let cases: &[(&str, &[&str])] = &[
        (
            "",
            &[
                "billing.paid",
                "user.login",
                "userx.create",
                "document.delete",
                "user.logout",
                "user.login",
            ],
        ),
        ("tenant=a", &["user.login", "user.logout", "user.login"]),
        ("actor=ann", &["user.login", "user.logout", "user.login"]),
        ("action=user.login", &["user.login", "user.login"]),
        (
            "action=user.*",
            &["user.login", "user.logout", "user.login"],
        ),
        ("action=billing.*", &["billing.paid"]),
        ("target=doc-9", &["user.login", "document.delete"]),
        ("tag=web", &["user.login", "document.delete", "user.login"]),
        ("result=failure", &["document.delete"]),
        ("tenant=c", &["billing.paid"]),
        (
            "since=2026-01-02T00:00:00Z",
            &[
                "userx.create",
                "document.delete",
                "user.login",
                "user.logout",
            ],
        ),
        (
            "until=2026-01-02T00:00:00Z",
            &["user.login", "billing.paid"],
        ),
        (
            "since=2026-01-02T00:00:00Z&until=2026-01-04T00:00:00Z",
            &["document.delete", "user.login", "user.logout"],
        ),
        ("tenant=b&tag=web&result=failure", &["document.delete"]),
    ];
    for (query, want) in cases {
        assert_eq!(actions(&s, query).await, *want, "query {query:?}");
        // One event per page walks across the tail and the folded events.
        let mut paged = Vec::new();
        let mut cursor = String::new();
        loop {
            let (st, page) = s
                .get(&format!("/v1/events?limit=1&{query}{cursor}"), KEY)
                .await;
            assert_eq!(st, 200, "{page}");
            for e in page["data"].as_array().unwrap() {
                paged.push(e["action"].as_str().unwrap().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(paged, *want, "paging {query:?}");
    }
}

#[tokio::test]
async fn cursor_pages_are_stable_while_events_arrive() {
    let s = TestServer::start().await;
    for i in 0..25 {
        s.post("/v1/events", KEY, &event(&format!("a{i}"), "u"))
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/events?limit=10&cursor={c}"),
            None => "/v1/events?limit=10".to_owned(),
        };
        let (status, page) = s.get(&path, KEY).await;
        assert_eq!(status, 200);
        pages += 1;
        for e in page["data"].as_array().unwrap() {
            seen.push(e["action"].as_str().unwrap().to_owned());
        }
        // New events arrive between pages; they are newer than the cursor.
        s.post("/v1/events", KEY, &event("late", "u")).await;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..25).rev().map(|i| format!("a{i}")).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn a_key_never_sees_another_projects_events() {
    let s = TestServer::start().await;
    let other = s.create_key("other").await;
    let (_, mine) = s
        .post(
            "/v1/events",
            KEY,
            &json!({"tenant": "shared-name", "action": "secret", "actor": {"id": "a"}}),
        )
        .await;
    let (status, theirs) = s
        .post(
            "/v1/events",
            &other,
            &json!({"tenant": "shared-name", "action": "theirs", "actor": {"id": "b"}}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        theirs["index"], 0,
        "tenants are per project: same name, separate log"
    );
    assert_eq!(actions(&s, "").await, ["secret"]);
    let listed: Vec<String> = s
        .list_all("", &other)
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["theirs"]);
    let (status, _) = s
        .get(
            &format!("/v1/events/{}", mine["id"].as_str().unwrap()),
            &other,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .get(
            &format!("/v1/events/{}/proof", mine["id"].as_str().unwrap()),
            &other,
        )
        .await;
    assert_eq!(status, 404);
    // A revoked key stops working (after the short auth cache).
    s.revoke_keys("other").await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, err) = s.get("/v1/events", &other).await;
    assert_eq!(status, 401);
    assert_eq!(err["code"], "unauthorized");
}

fn problem(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], want_status);
    assert_eq!(body["type"], format!("urn:trailkeep:problem:{code}"));
}

#[tokio::test]
async fn each_bad_input_class_gets_its_exact_error_and_stores_nothing() {
    let s = TestServer::start_with(|c| {
        c.limits.max_body_bytes = 2048;
        c.limits.max_json_depth = 6;
        c.limits.max_short_field = 32;
        c.limits.max_metadata_bytes = 100;
        c.limits.max_tags = 2;
    })
    .await;
    s.post("/v1/events", KEY, &event("kept", "u")).await;
    let json_ct = ("content-type", "application/json");
    let auth = (
        "authorization",
        "Bearer tk_test_key_for_integration_tests_0000000000",
    );

    let (st, b) = s
        .post_raw(
            "/v1/events",
            &[json_ct],
            serde_json::to_vec(&event("a", "u")).unwrap(),
        )
        .await;
    problem(st, &b, 401, "unauthorized");
    let (st, b) = s
        .post_raw(
            "/v1/events",
            &[json_ct, ("authorization", "Bearer nope")],
            serde_json::to_vec(&event("a", "u")).unwrap(),
        )
        .await;
    problem(st, &b, 401, "unauthorized");
    let (st, b) = s
        .post_raw("/v1/events", &[json_ct, auth], "{\"action\": ")
        .await;
    problem(st, &b, 400, "invalid_json");
    let (st, b) = s
        .post_raw(
            "/v1/events",
            &[json_ct, auth],
            "{'action': 'single quotes'}",
        )
        .await;
    problem(st, &b, 400, "invalid_json");
    let big = json!({"action": "a", "actor": {"id": "u"}, "description": "x".repeat(3000)});
    let (st, b) = s
        .post_raw(
            "/v1/events",
            &[json_ct, auth],
            serde_json::to_vec(&big).unwrap(),
        )
        .await;
    problem(st, &b, 413, "body_too_large");
    let deep = json!({"action": "a", "actor": {"id": "u"}, "metadata": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}});
    let (st, b) = s
        .post_raw(
            "/v1/events",
            &[json_ct, auth],
            serde_json::to_vec(&deep).unwrap(),
        )
        .await;
    problem(st, &b, 400, "too_deep");
    let (st, b) = s
        .post(
            "/v1/events",
            KEY,
            &json!({"action": "a\u{0}b", "actor": {"id": "u"}}),
        )
        .await;
    problem(st, &b, 422, "validation_failed");
    assert_eq!(b["errors"][0]["field"], "/action");
    let (st, b) = s.post("/v1/events", KEY, &json!([1, 2])).await;
    problem(st, &b, 422, "validation_failed");
    let many = json!({
        "action": "a".repeat(33), "actor": {"id": "u", "type": "robot"}, "tags": ["1", "2", "3"],
        "metadata": {"blob": "y".repeat(120)}, "result": "meh", "context": {"ip": "not-an-ip", "request": {"status": 42}},
        "occurred_at": "2026-13-01", "targets": [{"name": "no id"}], "surprise": true
    });
    let (st, b) = s.post("/v1/events", KEY, &many).await;
    problem(st, &b, 422, "validation_failed");
    let got: Vec<(String, String)> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("/surprise", "unknown_field"),
        ("/action", "too_long"),
        ("/occurred_at", "invalid"),
        ("/actor/type", "invalid"),
        ("/targets/0/id", "required"),
        ("/result", "invalid"),
        ("/tags", "too_many"),
        ("/context/ip", "invalid"),
        ("/context/request/status", "invalid"),
        ("/metadata", "too_large"),
    ] {
        assert!(
            got.contains(&(want.0.to_owned(), want.1.to_owned())),
            "missing {want:?} in {got:?}"
        );
    }
    let (st, b) = s
        .get(
            "/v1/events?limit=0&result=maybe&since=soon&cursor=zzz&bogus=1",
            KEY,
        )
        .await;
    problem(st, &b, 400, "invalid_query");
    assert_eq!(b["errors"].as_array().unwrap().len(), 5, "{b}");
    let (st, b) = s
        .post("/v1/events/batch", KEY, &json!({"events": "no"}))
        .await;
    problem(st, &b, 422, "validation_failed");
    // A member beside `events` is ignored, but only once it is known to be JSON.
    let beside = br#"{"events": [{"action": "a", "actor": {"id": "u"}}], "note": 1e400}"#;
    let (st, b) = s
        .post_raw("/v1/events/batch", &[json_ct, auth], beside.to_vec())
        .await;
    problem(st, &b, 400, "invalid_json");
    let bad_idem = [json_ct, auth, ("idempotency-key", "")];
    let (st, b) = s
        .post_raw(
            "/v1/events",
            &bad_idem,
            serde_json::to_vec(&event("a", "u")).unwrap(),
        )
        .await;
    problem(st, &b, 400, "invalid_idempotency_key");

    assert_eq!(
        actions(&s, "").await,
        ["kept"],
        "no refused request stored anything"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = TestServer::start().await;
    for _ in 0..3 {
        s.post("/v1/events", KEY, &event("a", "u")).await;
    }
    let (st, body) = s.get_text("/healthz", "").await;
    assert_eq!((st, body.as_str()), (200, "ok\n"));
    let (st, _) = s.get_text("/readyz", "").await;
    assert_eq!(st, 200);
    let (st, m) = s.get_text("/metrics", "").await;
    assert_eq!(st, 200);
    assert!(m.contains("trailkeep_events_ingested_total 3"), "{m}");
    assert!(
        m.contains(
            "trailkeep_http_requests_total{method=\"POST\",route=\"/v1/events\",status=\"201\"} 3"
        ),
        "{m}"
    );
    assert!(m.contains("trailkeep_commit_batch_events_count"), "{m}");
    assert!(m.contains("trailkeep_commit_seconds_bucket"), "{m}");
}

#[tokio::test]
async fn openapi_document_is_served_and_matches_the_checked_in_copy() {
    let s = TestServer::start().await;
    let (st, served) = s.get_text("/openapi.json", "").await;
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/events"]["post"].is_object());
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(path, &served).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == served,
        "openapi.json is stale: run `UPDATE_EXPECT=1 cargo test openapi` and commit it"
    );
}

/// Arrival order e0..e7, `occurred_at` out of order with three ties at
/// 2026-01-01T02:00Z; the action is `u.<name>` or `v.<name>`.
async fn seed_out_of_time_order(s: &TestServer) {
    for (name, family, hour) in [
        ("e0", "u", 3),
        ("e1", "u", 1),
        ("e2", "v", 2),
        ("e3", "u", 2),
        ("e4", "v", 5),
        ("e5", "u", 0),
        ("e6", "v", 2),
        ("e7", "u", 4),
    ] {
        let body = json!({
            "action": format!("{family}.{name}"), "actor": {"id": "ann"},
            "occurred_at": format!("2026-01-01T{hour:02}:00:00Z"),
            "description": format!("{name} happened"),
        });
        let (status, res) = s.post("/v1/events", KEY, &body).await;
        assert_eq!(status, 201, "{res}");
    }
}

/// The actions of a listing, following cursors `limit` events at a time.
async fn paged(s: &TestServer, query: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/v1/events?limit={limit}&{query}{cursor}");
        let (status, body) = s.get(&path, KEY).await;
        assert_eq!(status, 200, "{path}: {body}");
        let data = body["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        out.extend(
            data.iter()
                .map(|e| e["action"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

const WINDOW: &str = "since=2026-01-01T01:00:00Z&until=2026-01-01T05:00:00Z";

#[tokio::test]
async fn a_time_window_lists_by_event_time_and_pages_through_ties() {
    let s = TestServer::start().await;
    seed_out_of_time_order(&s).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await; // full-text indexing is deferred (< 1 s)
    let by_time = ["u.e7", "u.e0", "v.e6", "u.e3", "v.e2", "u.e1"];
    for limit in [1, 2, 50] {
        assert_eq!(paged(&s, WINDOW, limit).await, by_time, "limit {limit}");
    }
    // Without a time filter: arrival order.
    let by_arrival = [
        "u.e7", "v.e6", "u.e5", "v.e4", "u.e3", "v.e2", "u.e1", "u.e0",
    ];
    for limit in [1, 3] {
        assert_eq!(paged(&s, "", limit).await, by_arrival, "limit {limit}");
    }
    // One bound is enough to order by time.
    assert_eq!(
        paged(&s, "until=2026-01-01T02:00:01Z", 2).await,
        ["v.e6", "u.e3", "v.e2", "u.e1", "u.e5"]
    );
    assert_eq!(
        paged(&s, "since=2026-01-01T03:00:00Z", 1).await,
        ["v.e4", "u.e7", "u.e0"]
    );
    // Filters within the window keep its order, the split prefix included.
    let cases: &[(&str, &[&str])] = &[
        ("action=u.*", &["u.e7", "u.e0", "u.e3", "u.e1"]),
        ("action=v.*", &["v.e6", "v.e2"]),
        ("actor=ann", &by_time),
        ("q=happened", &by_time),
        ("q=e3", &["u.e3"]),
        ("q=happened&action=u.*", &["u.e7", "u.e0", "u.e3", "u.e1"]),
    ];
    for (filter, want) in cases {
        for limit in [1, 2, 50] {
            assert_eq!(
                paged(&s, &format!("{WINDOW}&{filter}"), limit).await,
                *want,
                "{filter}, limit {limit}"
            );
        }
    }
    assert_eq!(
        paged(&s, "action=u.*", 2).await,
        ["u.e7", "u.e5", "u.e3", "u.e1", "u.e0"],
        "a prefix without a window is in arrival order"
    );
}

#[tokio::test]
async fn a_cursor_only_continues_a_listing_of_its_own_order() {
    let s = TestServer::start().await;
    seed_out_of_time_order(&s).await;
    let cursor = |body: &Value| body["next_cursor"].as_str().unwrap().to_owned();
    let (_, by_time) = s.get(&format!("/v1/events?limit=1&{WINDOW}"), KEY).await;
    let (_, by_seq) = s.get("/v1/events?limit=1", KEY).await;
    let (time_cursor, seq_cursor) = (cursor(&by_time), cursor(&by_seq));
    assert_ne!(time_cursor, seq_cursor);
    for path in [
        format!("/v1/events?cursor={time_cursor}"),
        format!("/v1/events?cursor={time_cursor}&action=u.*"),
        format!("/v1/events?cursor={seq_cursor}&{WINDOW}"),
        format!("/v1/events?cursor={seq_cursor}&since=2026-01-01T00:00:00Z"),
    ] {
        let (st, b) = s.get(&path, KEY).await;
        problem(st, &b, 400, "invalid_query");
        assert_eq!(b["errors"][0]["field"], "cursor", "{path}: {b}");
        assert_eq!(
            b["errors"][0]["message"], "is not a cursor returned by this API",
            "{path}: {b}"
        );
    }
    // Each continues its own kind.
    let (st, b) = s
        .get(&format!("/v1/events?cursor={time_cursor}&{WINDOW}"), KEY)
        .await;
    assert_eq!((st, b["data"][0]["action"].as_str()), (200, Some("u.e0")));
    let (st, b) = s.get(&format!("/v1/events?cursor={seq_cursor}"), KEY).await;
    assert_eq!((st, b["data"][0]["action"].as_str()), (200, Some("v.e6")));
}
