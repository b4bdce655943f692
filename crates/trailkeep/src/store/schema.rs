//! Numbered schema migrations. SQLite records the applied version in
//! `PRAGMA user_version`; a database newer than this build is refused.

use rusqlite::Connection;

use super::StoreError;

/// Migrations in order; migration `i` brings the schema to version `i + 1`.
const SQLITE_MIGRATIONS: &[&str] = &[
    include_str!("sql/sqlite_001_init.sql"),
    include_str!("sql/sqlite_002_webhooks.sql"),
    include_str!("sql/sqlite_003_actions.sql"),
    include_str!("sql/sqlite_004_tail.sql"),
    include_str!("sql/sqlite_005_journal.sql"),
];

/// The schema version this build writes.
pub(crate) const SQLITE_SCHEMA_VERSION: i64 = SQLITE_MIGRATIONS.len() as i64;

/// Applies every pending migration, each in its own transaction.
pub(crate) fn migrate_sqlite(conn: &mut Connection) -> Result<i64, StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SQLITE_SCHEMA_VERSION {
        return Err(StoreError::Corrupted(format!(
            "database schema version {current} is newer than this build ({SQLITE_SCHEMA_VERSION}); refusing to downgrade"
        )));
    }
    for (i, sql) in SQLITE_MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(SQLITE_SCHEMA_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v4 database whose tail still holds acknowledged events (a server
    /// stopped by a crash) keeps every one of them through migration 5.
    #[test]
    fn migration_5_folds_a_v4_tail() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &SQLITE_MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        conn.execute_batch(
            "INSERT INTO projects VALUES (1, 'p', 0);
             INSERT INTO tenants VALUES (1, 1, 't', 2, x'00', 0);
             INSERT INTO events (seq, id, project_id, tenant_id, idx, occurred_at, action, actor_id, result, leaf)
                 VALUES (1, x'01', 1, 1, 0, 10, 'a.x', 'u', NULL, x'7b7d');
             INSERT INTO tree_nodes VALUES (1, 0, 0, x'aa');
             INSERT INTO event_actions VALUES (1, 'a.x');
             INSERT INTO events_tail VALUES (2, x'02', 1, 1, 1, 20, 'b.y', 'v', 'success',
                 x'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbcccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc',
                 '[\"web\",\"sso\"]', '[\"doc-1\"]');
             INSERT INTO events_tail_leaves VALUES (2, x'7b2278223a317d');",
        )
        .unwrap();
        migrate_sqlite(&mut conn).unwrap();
        let rows = |sql: &str| -> Vec<String> {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(
            rows(
                "SELECT seq || ' ' || idx || ' ' || action || ' ' || hex(leaf) FROM events ORDER BY seq"
            ),
            ["1 0 a.x 7B7D", "2 1 b.y 7B2278223A317D"]
        );
        assert_eq!(
            rows(
                "SELECT level || ' ' || idx || ' ' || hex(hash) FROM tree_nodes ORDER BY level, idx"
            ),
            [
                "0 0 AA",
                &format!("0 1 {}", "BB".repeat(32)),
                &format!("1 0 {}", "CC".repeat(32))
            ]
        );
        assert_eq!(
            rows("SELECT tag FROM event_tags ORDER BY tag"),
            ["sso", "web"]
        );
        assert_eq!(rows("SELECT target_id FROM event_targets"), ["doc-1"]);
        assert_eq!(
            rows("SELECT action FROM event_actions ORDER BY action"),
            ["a.x", "b.y"]
        );
        assert_eq!(
            rows("SELECT CAST(value AS TEXT) FROM meta WHERE key = 'folded_seq'"),
            ["2"]
        );
        assert!(rows("SELECT name FROM sqlite_master WHERE name LIKE 'events_tail%'").is_empty());
    }
}
