//! `trailkeep import --from sqlite://… --to postgres://…`: moves an embedded
//! deployment to PostgreSQL in one transaction. Rows keep their ids, leaves
//! are copied byte for byte and tree nodes verbatim, so every checkpoint
//! signed before the move still verifies after it. The signing key moves
//! along (into `settings`) unless the database already has one.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};

use crate::model::Event;
use crate::store::postgres;

/// Rows per `unnest` insert.
const CHUNK: usize = 2000;

/// Copies everything; returns a one-line summary.
///
/// # Errors
/// When either store cannot be opened, the destination already holds
/// events, or any copy fails (then nothing is written).
pub async fn sqlite_to_postgres(from: &str, to: &str) -> anyhow::Result<String> {
    let path = PathBuf::from(
        from.strip_prefix("sqlite://")
            .context("--from must be sqlite://PATH")?,
    );
    anyhow::ensure!(
        postgres::is_postgres_url(to),
        "--to must be postgres://USER@HOST/DB"
    );
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    // A running server holds acknowledged events in its journal that the
    // tables do not have yet; held for the whole copy, the lock keeps one
    // from starting meanwhile.
    let _lock = crate::store::sqlite::try_lock(&path)?.with_context(|| {
        format!(
            "{} is in use by a running trailkeep server; stop it before importing",
            path.display()
        )
    })?;
    // Fold what a stopped or crashed server left in the journal, so the
    // tables copied below hold every acknowledged event.
    drop(crate::store::sqlite::fold_journal(&path)?);
    let src = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", path.display()))?;
    let pool = postgres::pool(to)?;
    postgres::migrate(&pool).await?;
    let mut client = pool.get().await.context("connecting to PostgreSQL")?;
    let tx = client.transaction().await?;
    let existing: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM projects)",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(
        existing == 0,
        "the destination already holds projects or events; import into a fresh database, before any node starts on it"
    );

    let mut counts = Vec::new();
    for (table, columns) in TABLES {
        let n = copy_table(&src, &tx, table, columns)
            .await
            .with_context(|| format!("copying {table}"))?;
        counts.push(format!("{n} {table}"));
    }
    for table in [
        "projects",
        "api_keys",
        "tenants",
        "events",
        "webhooks",
        "webhook_outbox",
    ] {
        let col = if table == "events" { "seq" } else { "id" };
        tx.execute(
            &format!("SELECT setval(pg_get_serial_sequence('{table}', '{col}'), GREATEST((SELECT MAX({col}) FROM {table}), 1))"),
            &[],
        )
        .await?;
    }
    let key_note = match signing_key_file(&path) {
        Some(key) => {
            let key = key.trim().to_owned();
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('log_signing_key', $1) ON CONFLICT (key) DO NOTHING",
                &[&key],
            )
            .await?;
            let stored: String = tx
                .query_one(
                    "SELECT value FROM settings WHERE key = 'log_signing_key'",
                    &[],
                )
                .await?
                .get(0);
            if stored == key {
                "signing key moved"
            } else {
                "the database already had a different signing key: kept it"
            }
        }
        None => "no signing key file next to the store",
    };
    tx.commit().await?;
    Ok(format!("imported {}; {key_note}", counts.join(", ")))
}

/// The `log-signing.key` beside the database file, as `serve` writes it.
fn signing_key_file(db: &Path) -> Option<String> {
    std::fs::read_to_string(db.parent()?.join("log-signing.key")).ok()
}

/// How a column is carried from SQLite to PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    /// `INTEGER` → `bigint`.
    Int8,
    /// `INTEGER` → `integer`.
    Int4,
    /// `INTEGER` → `smallint`.
    Int2,
    /// `TEXT` → `text`.
    Text,
    /// `BLOB` → `bytea`.
    Bytes,
    /// 16-byte `BLOB` → `uuid`.
    Uuid,
}

use Kind::{Bytes, Int2, Int4, Int8, Text, Uuid};

/// Every table, in foreign-key order, with its columns. `events.search` is
/// derived from the leaf, not copied.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "projects",
        &[("id", Int8), ("name", Text), ("created_at", Int8)],
    ),
    (
        "api_keys",
        &[
            ("id", Int8),
            ("project_id", Int8),
            ("key_hash", Bytes),
            ("prefix", Text),
            ("created_at", Int8),
            ("revoked_at", Int8),
        ],
    ),
    (
        "tenants",
        &[
            ("id", Int8),
            ("project_id", Int8),
            ("name", Text),
            ("size", Int8),
            ("root", Bytes),
            ("created_at", Int8),
        ],
    ),
    (
        "events",
        &[
            ("seq", Int8),
            ("id", Uuid),
            ("project_id", Int8),
            ("tenant_id", Int8),
            ("idx", Int8),
            ("occurred_at", Int8),
            ("action", Text),
            ("actor_id", Text),
            ("result", Text),
            ("leaf", Bytes),
        ],
    ),
    (
        "event_tags",
        &[("project_id", Int8), ("tag", Text), ("seq", Int8)],
    ),
    (
        "event_targets",
        &[("project_id", Int8), ("target_id", Text), ("seq", Int8)],
    ),
    (
        "tree_nodes",
        &[
            ("tenant_id", Int8),
            ("level", Int2),
            ("idx", Int8),
            ("hash", Bytes),
        ],
    ),
    (
        "idempotency",
        &[
            ("project_id", Int8),
            ("key", Text),
            ("request_hash", Bytes),
            ("status", Int4),
            ("response", Bytes),
            ("created_at", Int8),
        ],
    ),
    (
        "webhooks",
        &[
            ("id", Int8),
            ("project_id", Int8),
            ("url", Text),
            ("description", Text),
            ("secret", Text),
            ("created_at", Int8),
            ("deleted_at", Int8),
        ],
    ),
    (
        "webhook_outbox",
        &[
            ("id", Int8),
            ("webhook_id", Int8),
            ("msg_id", Text),
            ("payload", Bytes),
            ("attempts", Int4),
            ("next_attempt_at", Int8),
            ("last_status", Int4),
            ("last_error", Text),
            ("delivered_at", Int8),
            ("failed_at", Int8),
            ("created_at", Int8),
        ],
    ),
];

/// One column's values for a chunk of rows.
enum Column {
    Int8(Vec<Option<i64>>),
    Int4(Vec<Option<i32>>),
    Int2(Vec<Option<i16>>),
    Text(Vec<Option<String>>),
    Bytes(Vec<Option<Vec<u8>>>),
    Uuid(Vec<Option<uuid::Uuid>>),
}

impl Column {
    fn new(kind: Kind) -> Self {
        match kind {
            Int8 => Self::Int8(Vec::new()),
            Int4 => Self::Int4(Vec::new()),
            Int2 => Self::Int2(Vec::new()),
            Text => Self::Text(Vec::new()),
            Bytes => Self::Bytes(Vec::new()),
            Uuid => Self::Uuid(Vec::new()),
        }
    }

    fn pg_type(kind: Kind) -> &'static str {
        match kind {
            Int8 => "bigint[]",
            Int4 => "integer[]",
            Int2 => "smallint[]",
            Text => "text[]",
            Bytes => "bytea[]",
            Uuid => "uuid[]",
        }
    }

    fn push(&mut self, row: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<()> {
        match self {
            Self::Int8(v) => v.push(row.get(i)?),
            Self::Int4(v) => v.push(row.get(i)?),
            Self::Int2(v) => v.push(row.get(i)?),
            Self::Text(v) => v.push(row.get(i)?),
            Self::Bytes(v) => v.push(row.get(i)?),
            Self::Uuid(v) => {
                let raw: Option<Vec<u8>> = row.get(i)?;
                v.push(raw.map(|b| uuid::Uuid::from_slice(&b)).transpose()?);
            }
        }
        Ok(())
    }

    fn sql(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Self::Int8(v) => v,
            Self::Int4(v) => v,
            Self::Int2(v) => v,
            Self::Text(v) => v,
            Self::Bytes(v) => v,
            Self::Uuid(v) => v,
        }
    }
}

/// Copies one table `CHUNK` rows at a time with one `unnest` insert per
/// chunk; returns the row count.
async fn copy_table(
    src: &Connection,
    tx: &deadpool_postgres::Transaction<'_>,
    table: &str,
    columns: &[(&str, Kind)],
) -> anyhow::Result<usize> {
    let names = columns.iter().map(|c| c.0).collect::<Vec<_>>().join(", ");
    let params: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, k))| format!("${}::{}", i + 1, Column::pg_type(*k)))
        .collect();
    let is_events = table == "events";
    let insert = if is_events {
        // The search vector is derived from each leaf, as the writer does.
        format!(
            "INSERT INTO events ({names}, search) SELECT {names}, to_tsvector('simple', q) FROM unnest({}, ${}::text[]) AS u({names}, q)",
            params.join(", "),
            columns.len() + 1,
        )
    } else {
        format!(
            "INSERT INTO {table} ({names}) SELECT * FROM unnest({})",
            params.join(", ")
        )
    };
    let statement = tx.prepare(&insert).await?;
    let leaf_at = columns.iter().position(|c| c.0 == "leaf");
    let leaves = crate::store::sqlite::Leaves::default();
    let select = if table == "tree_nodes" {
        // SQLite keeps each event's nodes in its row (`events.nodes`, 32 bytes
        // a level from level 0); PostgreSQL has a row per node.
        "WITH RECURSIVE levels(level) AS (SELECT 0 UNION ALL SELECT level + 1 FROM levels WHERE level < 63)
         SELECT e.tenant_id, levels.level, e.idx >> levels.level, substr(e.nodes, levels.level * 32 + 1, 32)
         FROM events e JOIN levels ON levels.level * 32 < length(e.nodes)"
            .to_owned()
    } else {
        format!("SELECT {names} FROM {table}")
    };
    let mut stmt = src.prepare(&select)?;
    let mut rows = stmt.query([])?;
    let mut total = 0;
    loop {
        let mut cols: Vec<Column> = columns.iter().map(|c| Column::new(c.1)).collect();
        let mut search: Vec<String> = Vec::new();
        let mut n = 0;
        while n < CHUNK {
            let Some(row) = rows.next()? else { break };
            for (i, col) in cols.iter_mut().enumerate() {
                match (&mut *col, is_events && leaf_at == Some(i)) {
                    // SQLite may keep the leaf compressed; PostgreSQL stores the bytes.
                    (Column::Bytes(v), true) => {
                        let leaf = leaves.decode(src, row.get(i)?)?;
                        let text = Event::from_leaf(&leaf)
                            .map(|e| e.search_text())
                            .unwrap_or_default();
                        search.push(postgres::tokenizable(&text));
                        v.push(Some(leaf));
                    }
                    _ => col.push(row, i)?,
                }
            }
            n += 1;
        }
        if n == 0 {
            return Ok(total);
        }
        let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            cols.iter().map(Column::sql).collect();
        if is_events {
            args.push(&search);
        }
        tx.execute(&statement, &args).await?;
        total += n;
    }
}
