//! The plans SQLite picks for listings: a time window is one ordered range
//! scan of `events_by_time`, never a sort of the window.

use super::*;

/// `EXPLAIN QUERY PLAN` of the key statement of `q`, one line per step.
fn plan(conn: &Connection, q: &EventQuery) -> Vec<String> {
    let (sql, args) = page_keys_sql(1, q);
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn conn() -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    schema::migrate_sqlite(&mut conn).unwrap();
    conn
}

fn window() -> EventQuery {
    EventQuery {
        since: Some(Time::from_micros(1_000)),
        until: Some(Time::from_micros(2_000)),
        limit: 50,
        ..EventQuery::default()
    }
}

#[test]
fn a_time_window_is_an_ordered_range_scan_of_events_by_time() {
    let conn = conn();
    let cursor = Some(Cursor::Time {
        occurred_at: 1_500,
        seq: 7,
    });
    for q in [
        window(),
        EventQuery {
            until: None,
            ..window()
        },
        EventQuery {
            since: None,
            ..window()
        },
        EventQuery {
            before: cursor,
            ..window()
        },
        EventQuery {
            until: None,
            before: cursor,
            ..window()
        },
    ] {
        let plan = plan(&conn, &q);
        eprintln!("{q:?}\n  {plan:?}");
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(
            plan[0].starts_with(
                "SEARCH events USING COVERING INDEX events_by_time (project_id=? AND occurred_at"
            ),
            "{plan:?}"
        );
    }
}

#[test]
fn filters_within_a_time_window_need_no_sort() {
    let conn = conn();
    for q in [
        EventQuery {
            actor: Some("ann".into()),
            ..window()
        },
        EventQuery {
            action: Some("user.login".into()),
            ..window()
        },
        EventQuery {
            action_prefix: Some("user.".into()),
            ..window()
        },
        EventQuery {
            tenant: Some("acme".into()),
            ..window()
        },
        EventQuery {
            tag: Some("web".into()),
            ..window()
        },
        EventQuery {
            target: Some("doc-1".into()),
            ..window()
        },
        EventQuery {
            text_terms: vec!["report".into()],
            ..window()
        },
        EventQuery {
            limit: 50,
            ..EventQuery::default()
        },
        EventQuery {
            actor: Some("ann".into()),
            limit: 50,
            ..EventQuery::default()
        },
    ] {
        let plan = plan(&conn, &q);
        eprintln!("{q:?}\n  {plan:?}");
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    }
}
