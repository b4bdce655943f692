//! One storage conformance suite, run against SQLite and PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tlog::{Hash, NodeId};
use trailkeep::config::CommitConfig;
use trailkeep::metrics::Metrics;
use trailkeep::model::{Actor, ActorType, Event, LEAF_VERSION, Target, Time};
use trailkeep::store::{
    AppendJob, AppendOutcome, DeliveryResult, EventQuery, EventStore, Idempotency, StoredResponse,
};

use crate::support::fresh_schema;

fn event(tenant: &str, action: &str, actor: &str) -> Event {
    let now = Time::now();
    Event {
        v: LEAF_VERSION,
        id: trailkeep::ingest::validate::new_event_id(now),
        tenant: tenant.into(),
        index: 0,
        received_at: now,
        occurred_at: now,
        action: action.into(),
        actor: Actor {
            id: actor.into(),
            kind: ActorType::User,
            name: None,
            email: None,
            extra: serde_json::Map::new(),
        },
        targets: vec![Target {
            id: format!("doc-{action}"),
            kind: None,
            name: None,
        }],
        result: None,
        description: Some(format!("did {action} quickly")),
        tags: vec!["t1".into()],
        context: Default::default(),
        metadata: serde_json::Map::new(),
        source: None,
    }
}

fn job(project: i64, events: Vec<Event>) -> AppendJob {
    AppendJob {
        project,
        events,
        idempotency: None,
        notify: false,
    }
}

async fn committed(store: &dyn EventStore, j: AppendJob) -> Vec<trailkeep::store::Receipt> {
    match store.append(j).await.unwrap() {
        AppendOutcome::Committed(r) => r,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Reads the nodes a tlog computation needs through the store, then runs it.
async fn with_nodes<T>(
    store: &dyn EventStore,
    tenant_id: i64,
    f: impl Fn(&dyn tlog::HashReader) -> Result<T, tlog::TlogError>,
) -> T {
    struct Rec(std::sync::Mutex<Vec<NodeId>>);
    impl tlog::HashReader for Rec {
        fn read_hashes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, tlog::TlogError> {
            self.0.lock().unwrap().extend_from_slice(ids);
            Ok(vec![[0; 32]; ids.len()])
        }
    }
    let rec = Rec(Default::default());
    let _ = f(&rec);
    let ids = rec.0.into_inner().unwrap();
    let hashes = store.read_nodes(tenant_id, ids.clone()).await.unwrap();
    let map: HashMap<NodeId, Hash> = ids.into_iter().zip(hashes).collect();
    f(&map).unwrap()
}

/// The contract every store keeps. `projects` are two project ids and the
/// SHA-256 of a key of the first.
async fn check_store(store: Arc<dyn EventStore>, p1: i64, p2: i64, key_hash: [u8; 32]) {
    let s = store.as_ref();
    // Contiguous indexes per tenant, across jobs and inside one job.
    let r1 = committed(
        s,
        job(
            p1,
            vec![
                event("a", "x1", "ann"),
                event("b", "x2", "bob"),
                event("a", "x3", "ann"),
            ],
        ),
    )
    .await;
    assert_eq!(
        r1.iter()
            .map(|r| (r.tenant.as_str(), r.index))
            .collect::<Vec<_>>(),
        [("a", 0), ("b", 0), ("a", 1)]
    );
    let r2 = committed(s, job(p1, vec![event("a", "x4", "cat")])).await;
    assert_eq!(r2[0].index, 2);
    let other = committed(s, job(p2, vec![event("a", "y1", "dan")])).await;
    assert_eq!(other[0].index, 0, "tenants are per project");

    // Concurrent appends into one tenant stay contiguous.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            committed(
                store.as_ref(),
                job(p1, vec![event("hot", &format!("h{i}"), "x")]),
            )
            .await[0]
                .index
        }));
    }
    let mut got: Vec<u64> = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (0..24).collect::<Vec<_>>());

    // Idempotency: same key and hash replays, a different hash conflicts.
    let idem = |hash: u8| Idempotency {
        key: "k1".into(),
        request_hash: [hash; 32],
    };
    let render: trailkeep::store::RenderResponse =
        Box::new(|r: &[trailkeep::store::Receipt]| StoredResponse {
            status: 201,
            body: format!("index {}", r[0].index).into_bytes(),
        });
    let first = s
        .append(AppendJob {
            project: p1,
            events: vec![event("a", "once", "ann")],
            idempotency: Some((idem(1), render)),
            notify: false,
        })
        .await
        .unwrap();
    let AppendOutcome::Replayed(first) = first else {
        panic!("an idempotent append answers with its stored response")
    };
    assert_eq!(first.body, b"index 3");
    let again = s
        .append(AppendJob {
            project: p1,
            events: vec![event("a", "once", "ann")],
            idempotency: Some((idem(1), Box::new(|_: &[_]| unreachable!()))),
            notify: false,
        })
        .await
        .unwrap();
    assert!(matches!(again, AppendOutcome::Replayed(r) if r == first));
    let conflict = s
        .append(AppendJob {
            project: p1,
            events: vec![event("a", "twice", "ann")],
            idempotency: Some((idem(2), Box::new(|_: &[_]| unreachable!()))),
            notify: false,
        })
        .await
        .unwrap();
    assert!(matches!(conflict, AppendOutcome::IdempotencyConflict));

    // Queries: newest first, filters, project isolation, keyset paging.
    tokio::time::sleep(Duration::from_millis(500)).await; // deferred full-text indexing
    let actions = |page: &trailkeep::store::Page| -> Vec<String> {
        page.events
            .iter()
            .map(|e| Event::from_leaf(&e.leaf).unwrap().action)
            .collect()
    };
    let q = |f: fn(&mut EventQuery)| {
        let mut q = EventQuery {
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    assert_eq!(
        actions(
            &s.query(p1, q(|q| q.tenant = Some("a".into())))
                .await
                .unwrap()
        ),
        ["once", "x4", "x3", "x1"]
    );
    assert_eq!(
        actions(
            &s.query(p1, q(|q| q.actor = Some("ann".into())))
                .await
                .unwrap()
        ),
        ["once", "x3", "x1"]
    );
    assert_eq!(
        actions(
            &s.query(p1, q(|q| q.target = Some("doc-x2".into())))
                .await
                .unwrap()
        ),
        ["x2"]
    );
    assert_eq!(
        actions(
            &s.query(p1, q(|q| q.action_prefix = Some("x".into())))
                .await
                .unwrap()
        ),
        ["x4", "x3", "x2", "x1"]
    );
    assert_eq!(
        actions(
            &s.query(
                p1,
                q(|q| q.text_terms = vec!["x3".into(), "quickly".into()])
            )
            .await
            .unwrap()
        ),
        ["x3"]
    );
    assert_eq!(actions(&s.query(p2, q(|_| {})).await.unwrap()), ["y1"]);
    // An action prefix pages by seq like any filter (SQLite splits it per action).
    let prefix = |before| EventQuery {
        action_prefix: Some("x".into()),
        limit: 3,
        before,
        ..Default::default()
    };
    let first = s.query(p1, prefix(None)).await.unwrap();
    assert_eq!(actions(&first), ["x4", "x3", "x2"]);
    let rest = s.query(p1, prefix(first.next_before)).await.unwrap();
    assert_eq!(
        (actions(&rest), rest.next_before),
        (vec!["x1".to_owned()], None)
    );
    let page = s
        .query(
            p1,
            EventQuery {
                tenant: Some("a".into()),
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(actions(&page), ["once", "x4"]);
    let next = s
        .query(
            p1,
            EventQuery {
                tenant: Some("a".into()),
                limit: 2,
                before: page.next_before,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(actions(&next), ["x3", "x1"]);
    assert!(next.next_before.is_none());
    let by_index = s
        .query(
            p1,
            EventQuery {
                tenant: Some("a".into()),
                before_index: Some(2),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(actions(&by_index), ["x3", "x1"]);

    // Reads by id are scoped to the project.
    assert!(s.get(p1, r1[0].id).await.unwrap().is_some());
    assert!(s.get(p2, r1[0].id).await.unwrap().is_none());

    // The tree: stored leaves hash to stored nodes, proofs verify.
    let head = s.tree_head(p1, "a".into()).await.unwrap().unwrap();
    assert_eq!(head.size, 4);
    let rows = s.scan_tenant(head.tenant_id, 0, head.size).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    let mut frontier = tlog::Frontier::empty();
    for r in &rows {
        assert_eq!(tlog::leaf_hash(&r.leaf), r.leaf_hash);
        frontier.append(r.leaf_hash);
    }
    assert_eq!(frontier.root(), head.root);
    for r in &rows {
        let proof = with_nodes(s, head.tenant_id, |rd| {
            tlog::inclusion_proof(r.index, head.size, rd)
        })
        .await;
        tlog::verify_inclusion(r.index, head.size, &r.leaf_hash, &proof, &head.root).unwrap();
    }
    let root2 = with_nodes(s, head.tenant_id, |rd| tlog::tree_hash(2, rd)).await;
    let cons = with_nodes(s, head.tenant_id, |rd| tlog::consistency_proof(2, 4, rd)).await;
    tlog::verify_consistency(2, 4, &cons, &root2, &head.root).unwrap();
    assert!(s.tree_head(p1, "nobody".into()).await.unwrap().is_none());

    // Keys.
    let principal = s.authenticate(key_hash).await.unwrap().unwrap();
    assert_eq!(principal.project, p1);
    assert!(s.authenticate([7; 32]).await.unwrap().is_none());

    // Webhooks and the outbox.
    let hook = s
        .create_webhook(p1, "http://127.0.0.1:9/h".into(), None)
        .await
        .unwrap();
    assert!(
        hook.secret
            .as_deref()
            .is_some_and(|x| x.starts_with("whsec_"))
    );
    assert!(s.list_webhooks(p1).await.unwrap()[0].secret.is_none());
    assert!(s.list_webhooks(p2).await.unwrap().is_empty());
    let notified = committed(
        s,
        AppendJob {
            project: p1,
            events: vec![event("a", "ping", "ann")],
            idempotency: None,
            notify: true,
        },
    )
    .await;
    // The notification is durable with the event; SQLite queues it for
    // delivery when the event is folded, PostgreSQL in the event's own
    // transaction, so wait a bounded moment for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let due = loop {
        let due = s.due_deliveries(Time::now(), 10).await.unwrap();
        if !due.is_empty() || std::time::Instant::now() > deadline {
            break due;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].msg_id, notified[0].id.to_string());
    let later = Time::from_micros(Time::now().as_micros() + 60_000_000);
    s.record_delivery(
        due[0].id,
        DeliveryResult::Retry {
            at: later,
            status: Some(500),
            error: "boom".into(),
        },
    )
    .await
    .unwrap();
    assert!(s.due_deliveries(Time::now(), 10).await.unwrap().is_empty());
    let again = s.due_deliveries(later, 10).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 1));
    s.record_delivery(again[0].id, DeliveryResult::Delivered)
        .await
        .unwrap();
    assert!(s.due_deliveries(later, 10).await.unwrap().is_empty());
    assert!(s.delete_webhook(p1, hook.id).await.unwrap());
    assert!(!s.delete_webhook(p1, hook.id).await.unwrap());
    s.ping().await.unwrap();
}

/// Listings with a time window are in event-time order (`occurred_at`
/// DESC, then seq DESC) and page by that pair; without one, in arrival
/// order. `p` is a project with no events yet.
async fn check_time_order(s: &dyn EventStore, p: i64) {
    use trailkeep::store::{Cursor, ListOrder, Page};
    const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
    /// `T0` plus `m` minutes.
    fn min(m: i64) -> Time {
        Time::from_micros(T0 + m * 60_000_000)
    }
    /// Minutes [0, 9), changed by `f`.
    fn window(f: impl FnOnce(&mut EventQuery)) -> EventQuery {
        let mut q = EventQuery {
            since: Some(min(0)),
            until: Some(min(9)),
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        q
    }
    // Arrival order e0..e9; occurred_at out of order, with ties at minute 2.
    let spec: &[(&str, &str, &str, i64)] = &[
        ("e0", "u.login", "ann", 3),
        ("e1", "u.logout", "bob", 1),
        ("e2", "v.read", "ann", 2),
        ("e3", "u.login", "bob", 2),
        ("e4", "v.read", "ann", 2),
        ("e5", "u.logout", "ann", 0),
        ("e6", "u.login", "cat", 9),
        ("e7", "v.read", "bob", 2),
        ("e8", "u.login", "ann", -1),
        ("e9", "u.logout", "ann", 2),
    ];
    for (name, action, actor, m) in spec {
        let mut e = event("time", action, actor);
        e.occurred_at = min(*m);
        e.description = Some(format!("{name} happened"));
        e.tags = vec![format!("tag-{actor}")];
        committed(s, job(p, vec![e])).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // deferred full-text indexing
    let names = |page: &Page| -> Vec<String> {
        page.events
            .iter()
            .map(|e| {
                let d = Event::from_leaf(&e.leaf).unwrap().description.unwrap();
                d.split(' ').next().unwrap().to_owned()
            })
            .collect()
    };
    // Every page size walks the same sequence, each event once.
    let walk = |q: EventQuery| async move {
        let mut out = Vec::new();
        let mut q = q;
        loop {
            let page = s.query(p, q.clone()).await.unwrap();
            out.extend(names(&page));
            match page.next_before {
                Some(c) => {
                    assert_eq!(c.order(), q.order(), "the cursor is of the listing's kind");
                    q.before = Some(c);
                }
                None => return out,
            }
        }
    };
    let in_window = ["e0", "e9", "e7", "e4", "e3", "e2", "e1", "e5"];
    assert_eq!(window(|_| {}).order(), ListOrder::Time);
    for limit in [100, 1, 2, 3] {
        let q = window(|q| q.limit = limit);
        assert_eq!(walk(q).await, in_window, "time window, limit {limit}");
    }
    // Without a time filter: arrival order, seq cursors.
    let all = EventQuery {
        limit: 2,
        ..Default::default()
    };
    assert_eq!(
        walk(all.clone()).await,
        ["e9", "e8", "e7", "e6", "e5", "e4", "e3", "e2", "e1", "e0"]
    );
    assert!(matches!(
        s.query(p, all).await.unwrap().next_before,
        Some(Cursor::Seq(_))
    ));
    // One bound alone also orders by time.
    let since_only = EventQuery {
        since: Some(min(2)),
        limit: 2,
        ..Default::default()
    };
    assert_eq!(
        walk(since_only).await,
        ["e6", "e0", "e9", "e7", "e4", "e3", "e2"]
    );
    let until_only = EventQuery {
        until: Some(min(2)),
        limit: 1,
        ..Default::default()
    };
    assert_eq!(walk(until_only).await, ["e1", "e5", "e8"]);
    // The page after a cursor inside a tie, and a cursor at `until`.
    let first = s.query(p, window(|q| q.limit = 3)).await.unwrap();
    assert_eq!(names(&first), ["e0", "e9", "e7"]);
    let Some(Cursor::Time { occurred_at, .. }) = first.next_before else {
        panic!(
            "a time-ordered page has a time cursor: {:?}",
            first.next_before
        )
    };
    assert_eq!(occurred_at, min(2).as_micros());
    let rest = s
        .query(p, window(|q| q.before = first.next_before))
        .await
        .unwrap();
    assert_eq!(names(&rest), ["e4", "e3", "e2", "e1", "e5"]);
    assert!(rest.next_before.is_none());
    // Filters combined with the window keep the time order.
    for (what, q, want) in [
        (
            "prefix",
            window(|q| q.action_prefix = Some("u.".into())),
            &["e0", "e9", "e3", "e1", "e5"][..],
        ),
        (
            "exact action",
            window(|q| q.action = Some("v.read".into())),
            &["e7", "e4", "e2"][..],
        ),
        (
            "actor",
            window(|q| q.actor = Some("ann".into())),
            &["e0", "e9", "e4", "e2", "e5"][..],
        ),
        (
            "tag",
            window(|q| q.tag = Some("tag-bob".into())),
            &["e7", "e3", "e1"][..],
        ),
        (
            "target",
            window(|q| q.target = Some("doc-u.logout".into())),
            &["e9", "e1", "e5"][..],
        ),
        (
            "tenant",
            window(|q| q.tenant = Some("time".into())),
            &in_window[..],
        ),
        (
            "full text",
            window(|q| q.text_terms = vec!["happened".into()]),
            &in_window[..],
        ),
        (
            "full text, one event",
            window(|q| q.text_terms = vec!["e3".into()]),
            &["e3"][..],
        ),
    ] {
        for limit in [100, 1, 2] {
            let q = EventQuery { limit, ..q.clone() };
            assert_eq!(walk(q).await, want, "{what}, limit {limit}");
        }
    }
    // A prefix without a window merges by seq.
    let prefix = EventQuery {
        action_prefix: Some("u.".into()),
        limit: 2,
        ..Default::default()
    };
    assert_eq!(
        walk(prefix).await,
        ["e9", "e8", "e6", "e5", "e3", "e1", "e0"]
    );
    // Tenant paging by leaf index stays in index (arrival) order.
    let by_index = EventQuery {
        tenant: Some("time".into()),
        before_index: Some(4),
        limit: 10,
        ..Default::default()
    };
    let page = s.query(p, by_index).await.unwrap();
    assert_eq!(names(&page), ["e3", "e2", "e1", "e0"]);
}

fn commit() -> CommitConfig {
    CommitConfig::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let conn = trailkeep::store::sqlite::open_admin(&db).unwrap();
    use trailkeep::store::sqlite::admin;
    admin::add_key(&conn, "p1", "key-one").unwrap();
    let p1 = admin::project_id(&conn, "p1").unwrap().unwrap();
    let p2 = admin::ensure_project(&conn, "p2").unwrap();
    let p3 = admin::ensure_project(&conn, "p3").unwrap();
    let store =
        trailkeep::store::sqlite::SqliteStore::open(&db, &commit(), Arc::new(Metrics::default()))
            .unwrap();
    let store = Arc::new(store);
    check_time_order(store.as_ref(), p3).await;
    check_store(store, p1, p2, trailkeep::keys::hash_key("key-one")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conformance() {
    let Some(url) = fresh_schema().await else {
        return;
    };
    let store =
        trailkeep::store::postgres::PgStore::open(&url, &commit(), Arc::new(Metrics::default()))
            .await
            .unwrap();
    use trailkeep::store::postgres::admin;
    let c = store.pool().get().await.unwrap();
    admin::add_key(&c, "p1", "key-one").await.unwrap();
    let p1 = admin::project_id(&c, "p1").await.unwrap().unwrap();
    let p2 = admin::ensure_project(&c, "p2").await.unwrap();
    let p3 = admin::ensure_project(&c, "p3").await.unwrap();
    drop(c);
    let store = Arc::new(store);
    check_time_order(store.as_ref(), p3).await;
    check_store(store, p1, p2, trailkeep::keys::hash_key("key-one")).await;
}

#[test]
fn a_sqlite_store_newer_than_this_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    drop(trailkeep::store::sqlite::open_admin(&db).unwrap());
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = trailkeep::store::sqlite::open_admin(&db).expect_err("a newer schema is refused");
    assert!(err.to_string().contains("refusing to downgrade"), "{err}");
}

#[test]
fn beside_a_running_server_the_cli_never_migrates() {
    use trailkeep::store::sqlite::{admin, open_admin, try_lock};
    let dir = tempfile::tempdir().unwrap();
    let version = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    // At this build's version the CLI works beside a server (which holds the lock).
    let current_db = dir.path().join("current.db");
    drop(open_admin(&current_db).unwrap());
    let current = version(&current_db);
    let lock = try_lock(&current_db)
        .unwrap()
        .expect("nobody holds the lock");
    admin::ensure_project(&open_admin(&current_db).unwrap(), "beside").unwrap();
    drop(lock);
    // A database at an older version (here none yet) held by a server: the
    // CLI refuses instead of migrating under it.
    let old_db = dir.path().join("old.db");
    drop(rusqlite::Connection::open(&old_db).unwrap());
    let lock = try_lock(&old_db).unwrap().expect("nobody holds the lock");
    let err = open_admin(&old_db).expect_err("an older schema beside a server");
    assert!(
        format!("{:#}", anyhow::Error::from(err)).contains("served by a running server"),
        "the error says why"
    );
    assert_eq!(version(&old_db), 0, "nothing was migrated");
    // Once the server is gone, the same command migrates.
    drop(lock);
    drop(open_admin(&old_db).unwrap());
    assert_eq!(version(&old_db), current);
    // A newer schema than this build's is refused beside a server too.
    rusqlite::Connection::open(&current_db)
        .unwrap()
        .pragma_update(None, "user_version", current + 1)
        .unwrap();
    let _lock = try_lock(&current_db)
        .unwrap()
        .expect("nobody holds the lock");
    let err = open_admin(&current_db).expect_err("a newer schema beside a server");
    assert!(err.to_string().contains("refusing to downgrade"), "{err}");
}

#[tokio::test]
async fn a_postgres_schema_newer_than_this_build_is_refused() {
    let Some(url) = fresh_schema().await else {
        return;
    };
    let pool = trailkeep::store::postgres::pool(&url).unwrap();
    trailkeep::store::postgres::migrate(&pool).await.unwrap();
    let c = pool.get().await.unwrap();
    c.execute(
        "INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)",
        &[],
    )
    .await
    .unwrap();
    let err = trailkeep::store::postgres::migrate(&pool)
        .await
        .expect_err("a newer schema is refused");
    assert!(err.to_string().contains("refusing to downgrade"), "{err}");
}

/// A PostgreSQL store that commits one job per batch, on a schema whose
/// `events` table takes 300 ms over each row of a `slow.*` action and fails
/// `slow.fail`, so the batch queued behind a slow one is prepared (and its
/// rows built from the heads the slow one would leave) while it commits.
async fn slow_postgres() -> Option<(trailkeep::store::postgres::PgStore, i64)> {
    let url = fresh_schema().await?;
    let config = CommitConfig {
        max_batch_events: 1,
        ..CommitConfig::default()
    };
    let store =
        trailkeep::store::postgres::PgStore::open(&url, &config, Arc::new(Metrics::default()))
            .await
            .unwrap();
    let c = store.pool().get().await.unwrap();
    c.batch_execute(
        "CREATE FUNCTION slow_events() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.action LIKE 'slow.%' THEN PERFORM pg_sleep(0.3); END IF;
             IF NEW.action = 'slow.fail' THEN RAISE EXCEPTION 'injected failure'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER slow_events BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow_events();",
    )
    .await
    .unwrap();
    let project = trailkeep::store::postgres::admin::ensure_project(&c, "p")
        .await
        .unwrap();
    Some((store, project))
}

/// Appends `first`, then `second` while `first` is still committing.
async fn one_behind_another(
    store: &Arc<trailkeep::store::postgres::PgStore>,
    first: AppendJob,
    second: AppendJob,
) -> (
    Result<AppendOutcome, trailkeep::store::StoreError>,
    Result<AppendOutcome, trailkeep::store::StoreError>,
) {
    let s = store.clone();
    let a = tokio::spawn(async move { s.append(first).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = store.append(second).await;
    (a.await.unwrap(), b)
}

async fn assert_fsck_clean(store: &trailkeep::store::postgres::PgStore, events: u64) {
    let (n, findings) = trailkeep::store::postgres::fsck(store.pool())
        .await
        .unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(n, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_does_not_shift_the_batch_prepared_behind_it() {
    let Some((store, p)) = slow_postgres().await else {
        return;
    };
    let store = Arc::new(store);
    let r = committed(store.as_ref(), job(p, vec![event("t", "a0", "u")])).await;
    assert_eq!(r[0].index, 0);
    let (failed, next) = one_behind_another(
        &store,
        job(p, vec![event("t", "slow.fail", "u")]),
        job(p, vec![event("t", "after", "u")]),
    )
    .await;
    assert!(
        matches!(failed, Err(trailkeep::store::StoreError::Unavailable)),
        "{failed:?}"
    );
    // Built at index 2 on the failed batch's heads, then rebuilt at 1.
    match next.unwrap() {
        AppendOutcome::Committed(r) => assert_eq!(r[0].index, 1),
        other => panic!("expected a commit, got {other:?}"),
    }
    let r = committed(store.as_ref(), job(p, vec![event("t", "a2", "u")])).await;
    assert_eq!(r[0].index, 2);
    let head = store.tree_head(p, "t".into()).await.unwrap().unwrap();
    assert_eq!(head.size, 3);
    // A tenant created by a failed batch is created again by the next one.
    let (failed, next) = one_behind_another(
        &store,
        job(p, vec![event("new", "slow.fail", "u")]),
        job(p, vec![event("new", "after", "u")]),
    )
    .await;
    assert!(failed.is_err(), "{failed:?}");
    match next.unwrap() {
        AppendOutcome::Committed(r) => assert_eq!(r[0].index, 0),
        other => panic!("expected a commit, got {other:?}"),
    }
    let r = committed(store.as_ref(), job(p, vec![event("new", "again", "u")])).await;
    assert_eq!(r[0].index, 1);
    assert_fsck_clean(&store, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_prepared_behind_a_slow_one_continues_its_log() {
    let Some((store, p)) = slow_postgres().await else {
        return;
    };
    let store = Arc::new(store);
    committed(store.as_ref(), job(p, vec![event("t", "a0", "u")])).await;
    let (slow, next) = one_behind_another(
        &store,
        job(
            p,
            vec![event("t", "slow.ok", "u"), event("fresh", "slow.ok", "u")],
        ),
        job(
            p,
            vec![event("t", "after", "u"), event("fresh", "after", "u")],
        ),
    )
    .await;
    let index_of = |o: AppendOutcome| match o {
        AppendOutcome::Committed(r) => r.iter().map(|r| r.index).collect::<Vec<_>>(),
        other => panic!("expected a commit, got {other:?}"),
    };
    assert_eq!(index_of(slow.unwrap()), [1, 0]);
    assert_eq!(index_of(next.unwrap()), [2, 1]);
    assert_fsck_clean(&store, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_in_overlapping_batches_is_stored_once() {
    let Some((store, p)) = slow_postgres().await else {
        return;
    };
    let store = Arc::new(store);
    let keyed = |action: &str| {
        let mut j = job(p, vec![event("t", action, "u")]);
        j.idempotency = Some((
            Idempotency {
                key: "k".into(),
                request_hash: [7; 32],
            },
            Box::new(|r: &[trailkeep::store::Receipt]| StoredResponse {
                status: 201,
                body: format!("index {}", r[0].index).into_bytes(),
            }),
        ));
        j
    };
    let (first, second) = one_behind_another(&store, keyed("slow.ok"), keyed("retry")).await;
    let expected = StoredResponse {
        status: 201,
        body: b"index 0".to_vec(),
    };
    for (outcome, which) in [(first, "first"), (second, "retry")] {
        match outcome.unwrap() {
            AppendOutcome::Replayed(r) => assert_eq!(r, expected, "{which}"),
            other => panic!("{which}: expected the stored response, got {other:?}"),
        }
    }
    assert_fsck_clean(&store, 1).await;
}
