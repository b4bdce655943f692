//! Logsh `notify: true` → Standard Webhooks deliveries from the durable
//! outbox, checked by a real HTTP receiver on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::Mac as _;
use serde_json::{Value, json};

use crate::support::{KEY, TestServer};

#[derive(Default)]
struct Receiver {
    attempts: Mutex<Vec<(HeaderMap, Vec<u8>)>>,
    fail_first: usize,
}

async fn receiver(fail_first: usize) -> (String, Arc<Receiver>, tokio::task::JoinHandle<()>) {
    let state = Arc::new(Receiver {
        attempts: Mutex::default(),
        fail_first,
    });
    let st = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let st = st.clone();
            async move {
                let mut a = st.attempts.lock().unwrap();
                a.push((headers, body.to_vec()));
                if a.len() <= st.fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, state, task)
}

async fn wait_for(r: &Receiver, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while r.attempts.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} attempts arrived",
            r.attempts.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Verifies a Standard Webhooks signature independently of trailkeep.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let id = headers["webhook-id"].to_str().unwrap();
    let ts = headers["webhook-timestamp"].to_str().unwrap();
    let mut mac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let want = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .any(|s| s == want)
}

async fn add_hook(s: &TestServer, url: &str) -> String {
    let (st, hook) = s
        .post(
            "/v1/webhooks",
            KEY,
            &json!({"url": url, "description": "ops"}),
        )
        .await;
    assert_eq!(st, 201, "{hook}");
    hook["secret"].as_str().unwrap().to_owned()
}

fn notify_event(action: &str) -> Value {
    json!({"workspace": "Ops", "event": action, "description": "deploy", "notify": true})
}

#[tokio::test]
async fn signed_notification_is_retried_until_the_receiver_accepts() {
    let (url, rx, _task) = receiver(2).await;
    let s = TestServer::start_with(|c| {
        c.webhooks.backoff_base_ms = 100;
        c.webhooks.allow_private_targets = true;
    })
    .await;
    let secret = add_hook(&s, &url).await;
    let (st, listed) = s.get("/v1/webhooks", KEY).await;
    assert_eq!(st, 200);
    assert_eq!(listed[0]["url"], url.as_str());
    assert!(listed[0].get("secret").is_none(), "secrets are shown once");
    let (st, created) = s
        .post("/api/event", KEY, &notify_event("deploy.done"))
        .await;
    assert_eq!(st, 200, "{created}");
    wait_for(&rx, 3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let attempts = rx.attempts.lock().unwrap();
    assert_eq!(
        attempts.len(),
        3,
        "delivered on the third attempt, then no more"
    );
    let first_id = attempts[0].0["webhook-id"].clone();
    for (headers, body) in attempts.iter() {
        assert!(verify(&secret, headers, body), "signature verifies");
        assert_eq!(
            headers["webhook-id"], first_id,
            "the id is stable across retries"
        );
        assert_eq!(body, &attempts[0].1, "the body is stable across retries");
    }
    let payload: Value = serde_json::from_slice(&attempts[0].1).unwrap();
    assert_eq!(payload["type"], "event.notify");
    assert_eq!(payload["data"]["id"], created["id"]);
    assert_eq!(payload["data"]["tenant"], "ops");
    assert!(!verify(
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &attempts[0].0,
        &attempts[0].1
    ));
}

#[tokio::test]
async fn a_restart_between_attempts_still_delivers() {
    let (url, rx, _task) = receiver(1).await;
    let s = TestServer::start_with(|c| {
        c.webhooks.backoff_base_ms = 1500;
        c.webhooks.allow_private_targets = true;
    })
    .await;
    let secret = add_hook(&s, &url).await;
    // An event without notify, and one with, to a project that has a webhook.
    let (st, _) = s
        .post(
            "/api/event",
            KEY,
            &json!({"workspace": "ops", "event": "quiet", "description": "d"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s.post("/api/event", KEY, &notify_event("loud")).await;
    assert_eq!(st, 200);
    wait_for(&rx, 1).await;
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |c| {
        c.webhooks.backoff_base_ms = 1500;
        c.webhooks.allow_private_targets = true;
    })
    .await;
    wait_for(&rx, 2).await;
    {
        let attempts = rx.attempts.lock().unwrap();
        assert_eq!(attempts.len(), 2);
        assert!(verify(&secret, &attempts[1].0, &attempts[1].1));
        let first: Value = serde_json::from_slice(&attempts[0].1).unwrap();
        assert_eq!(
            first["data"]["action"], "loud",
            "an event without notify queues nothing"
        );
        let payload: Value = serde_json::from_slice(&attempts[1].1).unwrap();
        assert_eq!(payload["data"]["action"], "loud");
    }
    // Removing the webhook stops further notifications.
    let (st, hooks) = s.get("/v1/webhooks", KEY).await;
    assert_eq!(st, 200);
    let id = hooks[0]["id"].as_i64().unwrap();
    let res = s
        .client
        .delete(format!("{}/v1/webhooks/{id}", s.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = s
        .client
        .delete(format!("{}/v1/webhooks/{id}", s.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let (st, _) = s
        .post("/api/event", KEY, &notify_event("after-removal"))
        .await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.attempts.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn webhook_urls_are_validated() {
    let s = TestServer::start().await;
    // By default an API key cannot point the server at its own network.
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/h",
        "http://localhost:8080/x",
    ] {
        let (st, res) = s.post("/v1/webhooks", KEY, &json!({"url": url})).await;
        assert_eq!(
            (st, res["errors"][0]["code"].as_str()),
            (422, Some("forbidden_target")),
            "{url}: {res}"
        );
    }
    for url in [json!("ftp://x"), json!("not a url"), json!(5), Value::Null] {
        let (st, res) = s.post("/v1/webhooks", KEY, &json!({"url": url})).await;
        assert_eq!(
            (st, res["code"].as_str()),
            (422, Some("validation_failed")),
            "{url}"
        );
    }
}
