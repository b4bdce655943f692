//! Numbered schema migrations. SQLite records the applied version in
//! `PRAGMA user_version`; a database newer than this build is refused.

use rusqlite::{Connection, Transaction, params};

use super::StoreError;

/// One migration: SQL, or Rust where SQL cannot express it.
enum Migration {
    Sql(&'static str),
    Rust(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

/// Migrations in order; migration `i` brings the schema to version `i + 1`.
const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration::Sql(include_str!("sql/sqlite_001_init.sql")),
    Migration::Sql(include_str!("sql/sqlite_002_webhooks.sql")),
    Migration::Sql(include_str!("sql/sqlite_003_actions.sql")),
    Migration::Sql(include_str!("sql/sqlite_004_tail.sql")),
    Migration::Sql(include_str!("sql/sqlite_005_journal.sql")),
    Migration::Rust(inline_tree_nodes),
    Migration::Sql(include_str!("sql/sqlite_007_leaf_dicts.sql")),
];

/// Schema v6: each event row holds the tree nodes its append completed
/// (`events.nodes`, 32 bytes a level from level 0), and `tree_nodes` goes.
/// A separate `tree_nodes` row per node cost the fold two more B-tree
/// inserts per event, at about 1 700 insertion points for 100 tenants.
/// SQLite cannot concatenate blobs, so the move is done here.
fn inline_tree_nodes(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE events ADD COLUMN nodes BLOB")?;
    {
        // Node (level, i) was completed by the append of leaf ((i + 1) << level) - 1.
        let mut select = tx.prepare(
            "SELECT tenant_id, ((idx + 1) << level) - 1 AS leaf, hash FROM tree_nodes
             ORDER BY tenant_id, leaf, level",
        )?;
        let mut update =
            tx.prepare("UPDATE events SET nodes = ?1 WHERE tenant_id = ?2 AND idx = ?3")?;
        let mut rows = select.query([])?;
        let mut current: Option<(i64, i64)> = None;
        let mut nodes: Vec<u8> = Vec::new();
        while let Some(row) = rows.next()? {
            let key = (row.get::<_, i64>(0)?, row.get::<_, i64>(1)?);
            if current != Some(key) {
                if let Some((tenant, leaf)) = current {
                    update.execute(params![nodes, tenant, leaf])?;
                }
                current = Some(key);
                nodes.clear();
            }
            nodes.extend_from_slice(row.get_ref(2)?.as_blob()?);
        }
        if let Some((tenant, leaf)) = current {
            update.execute(params![nodes, tenant, leaf])?;
        }
    }
    tx.execute_batch("DROP TABLE tree_nodes")
}

/// The schema version this build writes.
pub(crate) const SQLITE_SCHEMA_VERSION: i64 = SQLITE_MIGRATIONS.len() as i64;

/// The schema version of the database `conn` is open on, refused when it is
/// newer than this build.
pub(crate) fn sqlite_version(conn: &Connection) -> Result<i64, StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SQLITE_SCHEMA_VERSION {
        return Err(StoreError::Corrupted(format!(
            "database schema version {current} is newer than this build ({SQLITE_SCHEMA_VERSION}); refusing to downgrade"
        )));
    }
    Ok(current)
}

/// Applies every pending migration, each in its own transaction.
pub(crate) fn migrate_sqlite(conn: &mut Connection) -> Result<i64, StoreError> {
    let current = sqlite_version(conn)?;
    for (i, sql) in SQLITE_MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        match sql {
            Migration::Sql(sql) => tx.execute_batch(sql)?,
            Migration::Rust(f) => f(&tx)?,
        }
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(SQLITE_SCHEMA_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies the pending migrations up to `version` only.
    fn migrate_to(conn: &mut Connection, version: usize) {
        let current: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        for m in &SQLITE_MIGRATIONS[current..version] {
            match m {
                Migration::Sql(sql) => conn.execute_batch(sql).unwrap(),
                Migration::Rust(f) => {
                    let tx = conn.transaction().unwrap();
                    f(&tx).unwrap();
                    tx.commit().unwrap();
                }
            }
        }
        conn.pragma_update(None, "user_version", version as i64)
            .unwrap();
    }

    /// Migration 6 moves every stored node into the row of the event whose
    /// append completed it.
    #[test]
    fn migration_6_inlines_tree_nodes() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 5);
        conn.execute_batch("INSERT INTO projects VALUES (1, 'p', 0); INSERT INTO tenants VALUES (1, 1, 't', 4, x'00', 0);")
            .unwrap();
        // Leaves 0..4 of one tenant complete (0,0); (0,1) (1,0); (0,2); (0,3) (1,1) (2,0).
        let nodes: &[(i64, i64, u8)] = &[
            (0, 0, 1),
            (0, 1, 2),
            (1, 0, 3),
            (0, 2, 4),
            (0, 3, 5),
            (1, 1, 6),
            (2, 0, 7),
        ];
        for &(level, idx, byte) in nodes {
            conn.execute(
                "INSERT INTO tree_nodes VALUES (1, ?1, ?2, ?3)",
                params![level, idx, vec![byte; 32]],
            )
            .unwrap();
        }
        for idx in 0..4 {
            conn.execute(
                "INSERT INTO events (seq, id, project_id, tenant_id, idx, occurred_at, action, actor_id, leaf) VALUES (?1, ?2, 1, 1, ?3, 0, 'a', 'u', x'7b7d')",
                params![idx + 1, vec![idx as u8; 16], idx],
            )
            .unwrap();
        }
        migrate_sqlite(&mut conn).unwrap();
        let got: Vec<Vec<u8>> = conn
            .prepare("SELECT nodes FROM events ORDER BY idx")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want = |bytes: &[u8]| bytes.iter().flat_map(|b| [*b; 32]).collect::<Vec<u8>>();
        assert_eq!(
            got,
            [want(&[1]), want(&[2, 3]), want(&[4]), want(&[5, 6, 7])]
        );
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'tree_nodes'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
    }

    /// A v4 database whose tail still holds acknowledged events (a server
    /// stopped by a crash) keeps every one of them through migration 5.
    #[test]
    fn migration_5_folds_a_v4_tail() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 4);
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
        migrate_to(&mut conn, 5);
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
