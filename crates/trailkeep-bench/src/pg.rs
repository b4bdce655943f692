//! trailkeep on PostgreSQL beside a COPY BINARY ceiling (issue 6, item 5).
//!
//! trailkeep runs on a fresh schema `tk_bench_<random>` with the same
//! single-event and batched ingest phases as on SQLite. The ceiling then
//! copies rows identical to what trailkeep's writer stores (built from a
//! sample of stored rows with trailkeep's own model) with `COPY … FROM STDIN
//! BINARY`, 1000 rows per COPY and per transaction, on one client, into an
//! empty `events` table of a second schema created `LIKE` trailkeep's
//! (indexes included, checked). Both schemas are dropped at the end.

use std::collections::HashMap;
use std::error::Error;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use trailkeep::ingest::validate::new_event_id;
use trailkeep::model::{Event, Time};
use trailkeep::store::postgres::tls;

use crate::http::{self, Kind};
use crate::stats::{latency_json, load_json, per_sec};
use crate::{BATCH_CONNECTIONS, CONNECTIONS, Plan, server, sys};

/// The PostgreSQL the bench uses unless [`URL_ENV`] says otherwise.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Environment variable overriding [`DEFAULT_URL`].
pub const URL_ENV: &str = "TRAILKEEP_BENCH_POSTGRES_URL";
/// Rows per COPY, and per transaction, in the ceiling.
pub const COPY_ROWS: usize = 1000;

/// The columns trailkeep's writer fills in `events`, in COPY order.
const COLUMNS: &str =
    "seq, id, project_id, tenant_id, idx, occurred_at, action, actor_id, result, leaf, search";
const TYPES: [Type; 11] = [
    Type::INT8,
    Type::UUID,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::TS_VECTOR,
];

/// The PostgreSQL URL from [`URL_ENV`], or [`DEFAULT_URL`].
#[must_use]
pub fn url_from_env() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.into())
}

/// `url` with its search path set to `schema`, as trailkeep's tests do.
#[must_use]
pub fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// Connects to `url` within 5 s, or says why not. The URL's `sslmode` and
/// `sslrootcert` apply as in trailkeep's own pool, so the COPY ceiling and
/// trailkeep reach the database over the same transport.
///
/// # Errors
/// The reason PostgreSQL is unreachable, as text for the report.
pub async fn connect(url: &str) -> Result<Client, String> {
    let (config, tls) = tls::config(url).map_err(|e| e.to_string())?;
    let connected = tokio::time::timeout(Duration::from_secs(5), config.connect(tls)).await;
    match connected {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            Ok(client)
        }
        Ok(Err(e)) => Err(format!(
            "{e}{}",
            e.source().map(|s| format!(": {s}")).unwrap_or_default()
        )),
        Err(_) => Err("connecting timed out after 5 s".into()),
    }
}

/// The summary section of a run without PostgreSQL, saying why.
#[must_use]
pub fn skipped(why: &str) -> Value {
    json!({ "available": false, "skipped": why })
}

fn random_suffix() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Runs trailkeep's ingest phases on PostgreSQL at `url` and the COPY
/// ceiling; returns the `postgres` section of the summary, or a skipped one
/// (with the reason, also printed) when PostgreSQL is unreachable.
///
/// # Errors
/// When PostgreSQL is reachable but a phase fails.
pub async fn run(
    plan: &Plan,
    url: &str,
    singles: Vec<Arc<[u8]>>,
    batches: Vec<Arc<[u8]>>,
) -> anyhow::Result<Value> {
    let admin = match connect(url).await {
        Ok(c) => c,
        Err(why) => {
            let why = format!("PostgreSQL unreachable ({why})");
            eprintln!("      skipped: {why}");
            return Ok(skipped(&why));
        }
    };
    let suffix = random_suffix();
    let tk = format!("tk_bench_{suffix}");
    let copy = format!("tk_bench_{suffix}_copy");
    admin
        .batch_execute(&format!("CREATE SCHEMA {tk}; CREATE SCHEMA {copy}"))
        .await
        .context("creating the bench schemas")?;
    let result = measure(plan, url, &admin, &tk, &copy, singles, batches).await;
    if let Err(e) = admin
        .batch_execute(&format!(
            "DROP SCHEMA {copy} CASCADE; DROP SCHEMA {tk} CASCADE"
        ))
        .await
    {
        eprintln!("warning: could not drop schemas {tk} and {copy}: {e}");
    }
    result
}

/// The cluster's WAL insert position in bytes (`pg_current_wal_lsn()`), so
/// a difference is the WAL every session wrote in between.
#[derive(Clone, Copy, Debug, Default)]
struct Wal {
    bytes: f64,
}

impl Wal {
    async fn read(c: &Client) -> anyhow::Result<Self> {
        let row = c
            .query_one(
                "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::float8",
                &[],
            )
            .await?;
        Ok(Self { bytes: row.get(0) })
    }

    /// WAL written since `earlier` per event, for `events` events.
    fn per_event_since(&self, earlier: &Self, events: u64) -> Value {
        #[allow(clippy::cast_precision_loss, reason = "counts are far below 2^52")]
        let n = events as f64;
        json!({
            "wal_bytes_per_event": (n > 0.0).then(|| (self.bytes - earlier.bytes) / n),
        })
    }
}

async fn measure(
    plan: &Plan,
    url: &str,
    admin: &Client,
    tk: &str,
    copy: &str,
    singles: Vec<Arc<[u8]>>,
    batches: Vec<Arc<[u8]>>,
) -> anyhow::Result<Value> {
    let settings: serde_json::Map<String, Value> = admin
        .query(
            "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'synchronous_commit', 'fsync', 'full_page_writes', 'wal_level', 'shared_buffers', 'max_wal_size', 'commit_delay') ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), Value::String(r.get(1))))
        .collect();

    let tk_server = server::start_with(Some(with_search_path(url, tk))).await?;
    let addr = tk_server.addr;
    let commits_0 = server::Commits::scrape(addr).await?;
    let wal_0 = Wal::read(admin).await?;
    let _ = sys::reset_peak_rss();
    let single = http::run_load(
        addr,
        &plan.spec(CONNECTIONS),
        crate::rotate(singles, Kind::Write, 1),
    )
    .await?;
    let single_rss = sys::peak_rss_bytes();
    crate::fail_on_errors("PostgreSQL single", &single)?;
    let commits_1 = server::Commits::scrape(addr).await?;
    let wal_1 = Wal::read(admin).await?;
    let _ = sys::reset_peak_rss();
    let batch = http::run_load(
        addr,
        &plan.spec(BATCH_CONNECTIONS),
        crate::rotate(batches, Kind::Write, crate::events::BATCH as u64),
    )
    .await?;
    let batch_rss = sys::peak_rss_bytes();
    crate::fail_on_errors("PostgreSQL batch", &batch)?;
    let commits_2 = server::Commits::scrape(addr).await?;
    let wal_2 = Wal::read(admin).await?;
    tk_server.stop().await?.close()?;

    let mut single_json = crate::with_rss(
        load_json(&single, Kind::Write),
        sys::mib(single_rss),
        commits_1.since(&commits_0),
    );
    merge(
        &mut single_json,
        wal_1.per_event_since(&wal_0, single.acked_events),
    );
    let mut batch_json = crate::with_rss(
        load_json(&batch, Kind::Write),
        sys::mib(batch_rss),
        commits_2.since(&commits_1),
    );
    merge(
        &mut batch_json,
        wal_2.per_event_since(&wal_1, batch.acked_events),
    );

    let templates = sample(admin, tk).await?;
    let indexes = same_indexes(admin, tk, copy).await?;
    let mut client = connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("second connection: {e}"))?;
    let ceiling = copy_ceiling(plan, &mut client, admin, copy, &templates).await?;
    let identity = identity(admin, tk, copy, templates.len(), indexes).await?;
    let disk = disk(admin, tk, copy).await?;
    Ok(json!({
        "available": true,
        "settings": settings,
        "single": single_json,
        "batch": batch_json,
        "peak_rss_mib": sys::mib(single_rss.max(batch_rss)),
        "copy_ceiling": ceiling,
        "identity": identity,
        "disk": disk,
    }))
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// One distinct stored event: what trailkeep wrote for one template.
struct Template {
    project: i64,
    tenant: i64,
    event: Event,
    /// The stored `search` column in `tsvector`'s binary form.
    search: Vec<u8>,
}

/// The latest stored row of every template (each has its own actor), decoded
/// with trailkeep's model. Fails when a leaf does not re-encode to the very
/// bytes stored, since the ceiling's rows are built by re-encoding.
async fn sample(admin: &Client, tk: &str) -> anyhow::Result<Vec<Template>> {
    let rows = admin
        .query(
            &format!(
                "SELECT DISTINCT ON (actor_id) project_id, tenant_id, leaf, tsvectorsend(search)
                 FROM {tk}.events ORDER BY actor_id, seq DESC"
            ),
            &[],
        )
        .await?;
    let mut templates = Vec::with_capacity(rows.len());
    for row in rows {
        let leaf: Vec<u8> = row.get(2);
        let event = Event::from_leaf(&leaf).context("decoding a stored leaf")?;
        if event.leaf() != leaf {
            bail!(
                "a stored leaf does not re-encode to the same bytes; the ceiling's rows would differ"
            );
        }
        templates.push(Template {
            project: row.get(0),
            tenant: row.get(1),
            event,
            search: row.get(3),
        });
    }
    if templates.is_empty() {
        bail!("trailkeep stored no event on PostgreSQL");
    }
    Ok(templates)
}

/// Creates `copy.events` like trailkeep's, indexes included, and checks that
/// both tables have the same index definitions; returns them.
async fn same_indexes(admin: &Client, tk: &str, copy: &str) -> anyhow::Result<Vec<String>> {
    admin
        .batch_execute(&format!(
            "CREATE TABLE {copy}.events (LIKE {tk}.events INCLUDING ALL)"
        ))
        .await?;
    let defs = |schema: &str| {
        let schema = schema.to_owned();
        async move {
            let rows = admin
                .query(
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'events'",
                    &[&schema],
                )
                .await?;
            let mut defs: Vec<String> = rows
                .iter()
                .map(|r| {
                    let d: String = r.get(0);
                    // "CREATE [UNIQUE] INDEX name ON schema.events USING …": drop the name and schema.
                    let unique = d.starts_with("CREATE UNIQUE");
                    let on = d
                        .split_once(" ON ")
                        .map_or(d.as_str(), |(_, on)| on)
                        .replace(&format!("{schema}."), "");
                    format!("{}{on}", if unique { "UNIQUE " } else { "" })
                })
                .collect();
            defs.sort();
            anyhow::Ok(defs)
        }
    };
    let (a, b) = (defs(tk).await?, defs(copy).await?);
    if a != b || a.is_empty() {
        bail!("the ceiling's table has other indexes than trailkeep's: {a:?} vs {b:?}");
    }
    Ok(a)
}

/// `tsvector` bytes as PostgreSQL's `tsvector_send` produced them.
#[derive(Debug)]
struct TsVectorBinary<'a>(&'a [u8]);

impl ToSql for TsVectorBinary<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TS_VECTOR
    }

    to_sql_checked!();
}

/// One row of the ceiling, built as trailkeep's writer builds it.
struct Row {
    template: usize,
    seq: i64,
    id: uuid::Uuid,
    idx: i64,
    occurred_at: i64,
    leaf: Vec<u8>,
}

/// Builds the ceiling's rows in the order of the templates, as trailkeep's
/// writer does for new events: a fresh UUIDv7 id and one receive time per
/// request of [`COPY_ROWS`] events, the tenant's next index, and the leaf
/// re-encoded by the model.
struct Rows<'a> {
    templates: &'a [Template],
    next: usize,
    seq: i64,
    sizes: HashMap<i64, i64>,
}

impl Rows<'_> {
    fn chunk(&mut self, n: usize) -> Vec<Row> {
        let now = Time::now();
        (0..n)
            .map(|_| {
                let template = self.next % self.templates.len();
                self.next += 1;
                let t = &self.templates[template];
                let mut e = t.event.clone();
                if e.occurred_at == e.received_at {
                    e.occurred_at = now;
                }
                e.received_at = now;
                e.id = new_event_id(now);
                let size = self.sizes.entry(t.tenant).or_insert(0);
                e.index = u64::try_from(*size).unwrap_or(0);
                *size += 1;
                self.seq += 1;
                Row {
                    template,
                    seq: self.seq,
                    id: e.id,
                    idx: e.index as i64,
                    occurred_at: e.occurred_at.as_micros(),
                    leaf: e.leaf(),
                }
            })
            .collect()
    }
}

/// Copies `rows` in one transaction with one `COPY … FROM STDIN BINARY`.
async fn copy_once(
    client: &mut Client,
    statement: &str,
    templates: &[Template],
    rows: &[Row],
) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    let sink = tx.copy_in(statement).await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &TYPES));
    for r in rows {
        let t = &templates[r.template];
        let e = &t.event;
        let result = e.result.map(trailkeep::model::Outcome::as_str);
        writer
            .as_mut()
            .write(&[
                &r.seq,
                &r.id,
                &t.project,
                &t.tenant,
                &r.idx,
                &r.occurred_at,
                &e.action,
                &e.actor.id,
                &result,
                &r.leaf,
                &TsVectorBinary(&t.search),
            ])
            .await?;
    }
    writer.finish().await?;
    tx.commit().await?;
    Ok(())
}

/// The COPY BINARY ceiling: [`COPY_ROWS`] rows per COPY and per transaction,
/// one client, bounded like every load phase by time and count. Only the
/// time inside transactions is measured; building the rows is not.
async fn copy_ceiling(
    plan: &Plan,
    client: &mut Client,
    admin: &Client,
    copy: &str,
    templates: &[Template],
) -> anyhow::Result<Value> {
    let statement = format!("COPY {copy}.events ({COLUMNS}) FROM STDIN BINARY");
    let mut rows = Rows {
        templates,
        next: 0,
        seq: 0,
        sizes: HashMap::new(),
    };
    let max = plan.append_events;
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.phase;
    let mut copied = 0u64;
    while Instant::now() < measure_from && copied < max {
        let chunk = rows.chunk(COPY_ROWS);
        copy_once(client, &statement, templates, &chunk).await?;
        copied += chunk.len() as u64;
    }
    let wal_0 = Wal::read(admin).await?;
    let pg_0 = sys::processes_cpu_secs("postgres");
    let cpu_0 = sys::cpu_secs();
    let (mut events, mut in_tx, mut building) = (0u64, Duration::ZERO, Duration::ZERO);
    let mut latencies_us = Vec::new();
    while Instant::now() < end && copied < max {
        let built = Instant::now();
        let chunk = rows.chunk(COPY_ROWS);
        let sent = Instant::now();
        copy_once(client, &statement, templates, &chunk).await?;
        let done = Instant::now();
        building += sent - built;
        in_tx += done - sent;
        latencies_us.push(u32::try_from((done - sent).as_micros()).unwrap_or(u32::MAX));
        copied += chunk.len() as u64;
        events += chunk.len() as u64;
    }
    let cpu = sys::cpu_secs() - cpu_0;
    let pg_cpu = sys::processes_cpu_since(&pg_0, &sys::processes_cpu_secs("postgres"));
    let wal_1 = Wal::read(admin).await?;
    if events == 0 {
        bail!("COPY ceiling: nothing was measured");
    }
    latencies_us.sort_unstable();
    let secs = in_tx.as_secs_f64();
    let mut v = json!({
        "events_per_s": per_sec(events, secs),
        "events": events,
        "transactions": latencies_us.len(),
        "rows_per_copy": COPY_ROWS,
        "secs": secs,
        "row_building_secs": building.as_secs_f64(),
        "wall_events_per_s": per_sec(events, (in_tx + building).as_secs_f64()),
        "latency": latency_json(&latencies_us),
        "cpu_secs": cpu,
        "cpu_cores_busy": if secs > 0.0 { cpu / secs } else { 0.0 },
        "postgres_cpu_secs": pg_cpu,
        "postgres_cores_busy": if secs > 0.0 { pg_cpu / secs } else { 0.0 },
    });
    merge(&mut v, wal_1.per_event_since(&wal_0, events));
    Ok(v)
}

/// Evidence that the ceiling copied what trailkeep stores: row counts, mean
/// leaf sizes, the same `search` per template, the same indexes.
async fn identity(
    admin: &Client,
    tk: &str,
    copy: &str,
    templates: usize,
    indexes: Vec<String>,
) -> anyhow::Result<Value> {
    let stats = |schema: &str| {
        let q = format!(
            "SELECT count(*), avg(octet_length(leaf))::float8, avg(octet_length(tsvectorsend(search)))::float8 FROM {schema}.events"
        );
        async move {
            let r = admin.query_one(&q, &[]).await?;
            anyhow::Ok(json!({
                "rows": r.get::<_, i64>(0),
                "leaf_bytes_mean": r.get::<_, Option<f64>>(1),
                "search_bytes_mean": r.get::<_, Option<f64>>(2),
            }))
        }
    };
    let mismatched: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT DISTINCT ON (actor_id) project_id, actor_id, search
                                       FROM {copy}.events WHERE seq <= $1 ORDER BY actor_id) c
                 WHERE NOT EXISTS (SELECT 1 FROM {tk}.events t
                                   WHERE t.project_id = c.project_id AND t.actor_id = c.actor_id AND t.search = c.search)"
            ),
            &[&(templates as i64)],
        )
        .await?
        .get(0);
    if mismatched > 0 {
        bail!("{mismatched} templates have another search column in the ceiling's table");
    }
    Ok(json!({
        "templates": templates,
        "trailkeep": stats(tk).await?,
        "copy": stats(copy).await?,
        "search_mismatches": mismatched,
        "indexes": indexes,
    }))
}

/// Bytes on disk (`pg_total_relation_size`, indexes and TOAST included) per
/// row of trailkeep's four event-side tables and of the ceiling's table.
async fn disk(admin: &Client, tk: &str, copy: &str) -> anyhow::Result<Value> {
    admin
        .batch_execute(&format!("ANALYZE {tk}.events; ANALYZE {copy}.events"))
        .await?;
    let mut out = serde_json::Map::new();
    let mut tk_total = 0.0;
    let mut tk_events = 0i64;
    for (schema, table) in [
        (tk, "events"),
        (tk, "tree_nodes"),
        (tk, "event_tags"),
        (tk, "event_targets"),
        (copy, "events"),
    ] {
        let r = admin
            .query_one(
                &format!(
                    "SELECT count(*), pg_total_relation_size('{schema}.{table}')::float8 FROM {schema}.{table}"
                ),
                &[],
            )
            .await?;
        let (rows, bytes): (i64, f64) = (r.get(0), r.get(1));
        let key = if schema == copy {
            "copy_events".to_owned()
        } else {
            tk_total += bytes;
            if table == "events" {
                tk_events = rows;
            }
            format!("trailkeep_{table}")
        };
        out.insert(key, json!({ "rows": rows, "bytes": bytes }));
    }
    #[allow(clippy::cast_precision_loss, reason = "row counts are far below 2^52")]
    let per_event = if tk_events > 0 {
        Some(tk_total / tk_events as f64)
    } else {
        None
    };
    out.insert("trailkeep_bytes_per_event".into(), json!(per_event));
    let copy_per_event = match (
        out["copy_events"]["bytes"].as_f64(),
        out["copy_events"]["rows"].as_f64(),
    ) {
        (Some(b), Some(r)) if r > 0.0 => Some(b / r),
        _ => None,
    };
    out.insert("copy_bytes_per_event".into(), json!(copy_per_event));
    Ok(Value::Object(out))
}
