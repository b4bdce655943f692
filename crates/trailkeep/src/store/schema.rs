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
