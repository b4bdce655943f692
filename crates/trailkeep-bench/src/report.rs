//! The summary: every figure, the ratios the benchmark issue sets bars on,
//! whether each bar is met, and the table printed at the end of a run.

use serde_json::{Value, json};

use crate::stats::ratio;
use crate::{Mode, Plan};

fn num(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// Whether full-text search found every probe within 1 s of its
/// acknowledgment during the single and batch phases; `None` when not measured.
fn search_fresh(trailkeep: &Value) -> Option<bool> {
    let phases = ["single", "batch"].map(|p| &trailkeep[p]["search_freshness"]);
    if phases.iter().any(|f| !f.is_object()) {
        return None;
    }
    Some(
        phases
            .iter()
            .all(|f| f["missed"] == 0 && f["max_s"].as_f64().is_some_and(|m| m <= 1.0)),
    )
}

/// Events the read bars of issue 6 are set at.
const READ_BAR_EVENTS: u64 = 10_000_000;

/// Whether every query in `queries` (each a path into the reads section)
/// had its p99 within `ms`, when the reads phase ran at [`READ_BAR_EVENTS`]
/// or more; `None` otherwise. A query that was not measured fails the bar.
fn read_bar(plan: &Plan, reads: &Value, queries: &[&[&str]], ms: f64) -> Option<bool> {
    if plan.read_events < READ_BAR_EVENTS || !reads["events"].is_u64() {
        return None;
    }
    Some(queries.iter().all(|q| {
        let p99 = num(reads, &[*q, &["p99_ms"]].concat());
        p99.is_finite() && p99 <= ms
    }))
}

/// `{dialect: events/s ÷ ceiling}` for every dialect measured, else `null`.
fn dialect_ratios(trailkeep: &Value, ceiling: f64) -> Value {
    trailkeep["dialects"].as_object().map_or(Value::Null, |d| {
        d.iter()
            .map(|(name, v)| {
                (
                    name.clone(),
                    json!(ratio(num(v, &["events_per_s"]), ceiling)),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    })
}

/// Both ceilings, measured before trailkeep's ingest phases and (unless
/// those were skipped, else `null`) again after them.
pub struct Ceilings {
    /// The HTTP ceiling before trailkeep's ingest.
    pub http: Value,
    /// The durable-append ceiling before trailkeep's ingest.
    pub append: Value,
    /// The HTTP ceiling after trailkeep's ingest.
    pub http_after: Value,
    /// The durable-append ceiling after trailkeep's ingest.
    pub append_after: Value,
}

/// The mean of the figure at `path` in `before` and `after`, or the one
/// that was measured.
fn bracketed(before: &Value, after: &Value, path: &[&str]) -> f64 {
    let (b, a) = (num(before, path), num(after, path));
    if a.is_finite() { (a + b) / 2.0 } else { b }
}

/// Assembles the summary from each phase's figures.
#[must_use]
pub fn summary(
    plan: &Plan,
    ceilings: Ceilings,
    trailkeep: Value,
    postgres: Value,
    reads: Value,
) -> Value {
    let Ceilings {
        http,
        append,
        http_after,
        append_after,
    } = ceilings;
    let http_eps = bracketed(&http, &http_after, &["events_per_s"]);
    let append_eps = bracketed(&append, &append_after, &["events_per_s"]);
    let single_eps = num(&trailkeep, &["single", "events_per_s"]);
    let batch_eps = num(&trailkeep, &["batch", "events_per_s"]);
    let single_p99 = num(&trailkeep, &["single", "latency", "p99_ms"]);
    let http_p99 = bracketed(&http, &http_after, &["latency", "p99_ms"]);
    let disk = num(&trailkeep, &["disk", "bytes_per_event"]);
    let raw = num(&trailkeep, &["disk", "raw_json_bytes_per_event"]);
    let reads_disk = num(&reads, &["disk_bytes_per_event"]);
    // Every load phase that ran: SQLite ingest, PostgreSQL ingest, reads.
    let rss = num(&trailkeep, &["peak_rss_mib"])
        .max(num(&postgres, &["peak_rss_mib"]))
        .max(num(&reads, &["peak_rss_mib"]));
    let ratios = json!({
        // Against the mean of each ceiling's two measurements.
        "single_vs_http": ratio(single_eps, http_eps),
        "batch_vs_append": ratio(batch_eps, append_eps),
        "verify_vs_sha256": ratio(num(&reads, &["verify", "events_per_s"]), num(&reads, &["sha256", "events_per_s"])),
        "pg_batch_vs_copy": ratio(num(&postgres, &["batch", "events_per_s"]), num(&postgres, &["copy_ceiling", "events_per_s"])),
        "single_p99_vs_http_p99": ratio(single_p99, http_p99),
        // Each seed dialect's single-event endpoint against the same ceiling.
        "dialects_vs_http": dialect_ratios(&trailkeep, http_eps),
        // Each ceiling after trailkeep's ingest over the same before it: how
        // much the machine itself moved during the run.
        "ceiling_drift": {
            "http": ratio(num(&http_after, &["events_per_s"]), num(&http, &["events_per_s"])),
            "append": ratio(num(&append_after, &["events_per_s"]), num(&append, &["events_per_s"])),
        },
        "disk_vs_raw_json": ratio(disk, raw),
        "reads_disk_vs_raw_json": ratio(reads_disk, raw),
    });
    let at_least = |key: &str, bar: f64| ratios[key].as_f64().map(|r| r >= bar);
    let at_most = |key: &str, bar: f64| ratios[key].as_f64().map(|r| r <= bar);
    let bars = json!({
        "single_ge_0_6_http": at_least("single_vs_http", 0.6),
        "single_p99_le_3x_http_p99": at_most("single_p99_vs_http_p99", 3.0),
        "batch_ge_0_5_append": at_least("batch_vs_append", 0.5),
        "verify_ge_0_5_sha256": at_least("verify_vs_sha256", 0.5),
        "peak_rss_le_200_mib": rss.is_finite().then_some(rss <= 200.0),
        "disk_le_1_5x_raw_json": at_most("reads_disk_vs_raw_json", 1.5),
        "pg_batch_ge_0_5_copy": at_least("pg_batch_vs_copy", 0.5),
        "search_fresh_within_1_s": search_fresh(&trailkeep),
        // The read bars are absolute and set at 10 M events: a smaller load
        // (`--quick`, `--smoke`) says nothing about them.
        "reads_indexed_p99_le_10_ms": read_bar(
            plan,
            &reads,
            &[&["actor"], &["action_prefix"], &["time_range"], &["paging", "page"]],
            10.0,
        ),
        "reads_full_text_p99_le_50_ms": read_bar(plan, &reads, &[&["full_text"]], 50.0),
        "reads_proof_p99_le_2_ms": read_bar(plan, &reads, &[&["proof"]], 2.0),
    });
    json!({
        "mode": match plan.mode { Mode::Smoke => "smoke", Mode::Quick => "quick", Mode::Full => "full" },
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "machine": crate::sys::machine(),
        "plan": {
            "connections": crate::CONNECTIONS,
            "batch_connections": crate::BATCH_CONNECTIONS,
            "warmup_s": plan.warmup.as_secs_f64(),
            "phase_s": plan.phase.as_secs_f64(),
            "read_events": plan.read_events,
            "read_samples": plan.read_samples,
        },
        "http_ceiling": http,
        "append_ceiling": append,
        "http_ceiling_after": http_after,
        "append_ceiling_after": append_after,
        "trailkeep": trailkeep,
        "postgres": postgres,
        "reads": reads,
        "ratios": ratios,
        "bars": bars,
    })
}

fn fmt(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 1000.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    }
}

/// Renders the summary as a plain-text table.
#[must_use]
pub fn table(s: &Value) -> String {
    let mut out = String::new();
    let mut row = |name: &str, v: &Value| {
        out.push_str(&format!(
            "{name:<34} {:>12} {:>9} {:>9} {:>9} {:>8} {:>8}\n",
            fmt(&v["events_per_s"]),
            fmt(&v["latency"]["p50_ms"]),
            fmt(&v["latency"]["p99_ms"]),
            fmt(&v["latency"]["p999_ms"]),
            fmt(&v["cpu_cores_busy"]),
            fmt(&v["peak_rss_mib"]),
        ));
    };
    let header = format!(
        "{:<34} {:>12} {:>9} {:>9} {:>9} {:>8} {:>8}\n",
        "phase", "events/s", "p50 ms", "p99 ms", "p99.9 ms", "cores", "RSS MiB"
    );
    let t = &s["trailkeep"];
    row("HTTP ceiling (parse only, 64 conn)", &s["http_ceiling"]);
    row("durable-append ceiling (1 thread)", &s["append_ceiling"]);
    if s["http_ceiling_after"].is_object() {
        row("HTTP ceiling, after trailkeep", &s["http_ceiling_after"]);
        row(
            "durable-append, after trailkeep",
            &s["append_ceiling_after"],
        );
    }
    row("trailkeep single (64 conn)", &t["single"]);
    row("trailkeep batch x1000 (4 conn)", &t["batch"]);
    row("trailkeep mixed writes (64 conn)", &t["mixed"]);
    let mut reads_row = t["mixed"]["reads"].clone();
    reads_row["events_per_s"] = reads_row["requests_per_s"].clone();
    row("trailkeep mixed reads (req/s)", &reads_row);
    if let Some(dialects) = t["dialects"].as_object() {
        for (name, d) in dialects {
            row(&format!("dialect {name} (64 conn)"), d);
        }
    }
    let pg = &s["postgres"];
    if pg["available"] == true {
        row("pg trailkeep single (64 conn)", &pg["single"]);
        row("pg trailkeep batch x1000 (4 conn)", &pg["batch"]);
        row("pg COPY BINARY x1000 (1 client)", &pg["copy_ceiling"]);
    }
    let r = &s["reads"];
    row(
        &format!("bulk load x1000 ({} events)", r["events"]),
        &r["load"],
    );
    let mut out = header + &out;
    out.push_str(&format!(
        "\nreads at scale: {} events across {} tenants\n",
        r["events"], r["tenants"]
    ));
    out.push_str(&format!(
        "{:<34} {:>9} {:>9}\n",
        "query", "p50 ms", "p99 ms"
    ));
    for (name, key) in [
        ("filter by actor", "actor"),
        ("action prefix", "action_prefix"),
        ("time range (1 % of span)", "time_range"),
        ("full text q", "full_text"),
        ("inclusion proof", "proof"),
    ] {
        out.push_str(&format!(
            "{name:<34} {:>9} {:>9}\n",
            fmt(&r[key]["p50_ms"]),
            fmt(&r[key]["p99_ms"])
        ));
    }
    out.push_str(&format!(
        "{:<34} {:>9} {:>9}   (deepest {}, walk mean {} ms)\n",
        "page by cursor (limit 50)",
        fmt(&r["paging"]["page"]["p50_ms"]),
        fmt(&r["paging"]["page"]["p99_ms"]),
        r["paging"]["deepest_page"],
        fmt(&r["paging"]["walk_mean_ms"]),
    ));
    for phase in ["single", "batch", "mixed"] {
        let c = &t[phase]["group_commits"];
        out.push_str(&format!(
            "{phase}: {} group commits ({} events, {} ms each); writer thread {} cores busy; {} bytes to storage per event\n",
            fmt(&c["commits"]),
            fmt(&c["events_per_commit"]),
            fmt(&c["commit_ms_mean"]),
            fmt(&t[phase]["writer_cores_busy"]),
            fmt(&t[phase]["storage_write_bytes_per_event"])
        ));
        out.push_str(&format!(
            "{phase}: writer time per event: commit {} us, fold {} us, full text {} us\n",
            fmt(&c["commit_us_per_event"]),
            fmt(&c["fold_us_per_event"]),
            fmt(&c["fts_us_per_event"]),
        ));
        out.push_str(&format!(
            "{phase}: CPU per event: process {} us, writer thread {} us, fold thread {} us; RSS {} MiB before, {} MiB peak\n",
            fmt(&t[phase]["cpu_us_per_event"]),
            fmt(&t[phase]["writer_cpu_us_per_event"]),
            fmt(&t[phase]["fold_cpu_us_per_event"]),
            fmt(&t[phase]["rss_before_mib"]),
            fmt(&t[phase]["peak_rss_mib"]),
        ));
        let f = &t[phase]["search_freshness"];
        if f.is_object() {
            out.push_str(&format!(
                "{phase}: search finds a new event after p50 {} s, max {} s ({} probes, {} missed)\n",
                fmt(&f["p50_s"]),
                fmt(&f["max_s"]),
                f["probes"],
                f["missed"],
            ));
        }
    }
    if let Some(dialects) = t["dialects"].as_object() {
        let per_event: Vec<String> = dialects
            .iter()
            .map(|(name, d)| format!("{name} {} B", fmt(&d["disk"]["bytes_per_event"])))
            .collect();
        out.push_str(&format!(
            "dialects: disk per event after close: {}\n",
            per_event.join(", ")
        ));
    }
    out.push_str(&format!(
        "durable-append ceiling: {} bytes to storage per event\n",
        fmt(&s["append_ceiling"]["storage_write_bytes_per_event"])
    ));
    if pg["available"] == true {
        for phase in ["single", "batch"] {
            let p = &pg[phase];
            let c = &p["group_commits"];
            out.push_str(&format!(
                "pg {phase}: {} group commits ({} events, {} ms each); postgres {} cores busy; {} WAL bytes per event\n",
                fmt(&c["commits"]),
                fmt(&c["events_per_commit"]),
                fmt(&c["commit_ms_mean"]),
                fmt(&p["postgres_cores_busy"]),
                fmt(&p["wal_bytes_per_event"]),
            ));
        }
        let c = &pg["copy_ceiling"];
        out.push_str(&format!(
            "pg COPY ceiling: {} rows per transaction (latency per transaction); postgres {} cores busy; {} WAL bytes per event\n",
            c["rows_per_copy"],
            fmt(&c["postgres_cores_busy"]),
            fmt(&c["wal_bytes_per_event"]),
        ));
        out.push_str(&format!(
            "pg disk per event: trailkeep {} B (events, tree_nodes, event_tags, event_targets), COPY table {} B\n",
            fmt(&pg["disk"]["trailkeep_bytes_per_event"]),
            fmt(&pg["disk"]["copy_bytes_per_event"]),
        ));
    } else {
        out.push_str(&format!(
            "PostgreSQL: not measured: {}\n",
            pg["skipped"].as_str().unwrap_or("unknown reason")
        ));
    }
    out.push_str(&format!(
        "full-text catch-up after load: {} s\n",
        fmt(&r["fts_catchup_s"])
    ));
    out.push_str(&format!(
        "verify {} events/s vs SHA-256 {} events/s\n",
        fmt(&r["verify"]["events_per_s"]),
        fmt(&r["sha256"]["events_per_s"])
    ));
    out.push_str(&format!(
        "disk per event: ingest run {} B, reads run {} B; raw JSON {} B\n",
        fmt(&t["disk"]["bytes_per_event"]),
        fmt(&r["disk_bytes_per_event"]),
        fmt(&t["disk"]["raw_json_bytes_per_event"]),
    ));
    out.push_str("\nratios (bar)\n");
    for (key, bar) in [
        ("single_vs_http", ">= 0.6"),
        ("single_p99_vs_http_p99", "<= 3"),
        ("batch_vs_append", ">= 0.5"),
        ("verify_vs_sha256", ">= 0.5"),
        ("reads_disk_vs_raw_json", "<= 1.5"),
        ("disk_vs_raw_json", "(ingest run)"),
        ("pg_batch_vs_copy", ">= 0.5"),
    ] {
        out.push_str(&format!(
            "{key:<34} {:>9}   {bar}\n",
            fmt(&s["ratios"][key])
        ));
    }
    if let Some(d) = s["ratios"]["dialects_vs_http"].as_object() {
        for (name, r) in d {
            out.push_str(&format!(
                "{:<34} {:>9}   (no bar)\n",
                format!("{name}_vs_http"),
                fmt(r)
            ));
        }
    }
    for (name, key) in [("http", "HTTP"), ("append", "durable-append")] {
        out.push_str(&format!(
            "{:<34} {:>9}   (after / before; ratios use the mean)\n",
            format!("{key} ceiling drift"),
            fmt(&s["ratios"]["ceiling_drift"][name])
        ));
    }
    out.push_str(&format!("bars met: {}\n", s["bars"]));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{Ceilings, summary};
    use crate::{Mode, Plan};

    fn no_ceilings() -> Ceilings {
        Ceilings {
            http: json!({}),
            append: json!({}),
            http_after: Value::Null,
            append_after: Value::Null,
        }
    }

    fn rss_bar(trailkeep: f64, postgres: Option<f64>, reads: f64) -> Option<bool> {
        let postgres = postgres.map_or_else(
            || json!({"available": false, "skipped": "test"}),
            |mib| json!({"available": true, "peak_rss_mib": mib}),
        );
        let s = summary(
            &Plan::new(Mode::Smoke),
            no_ceilings(),
            json!({"peak_rss_mib": trailkeep}),
            postgres,
            json!({"peak_rss_mib": reads}),
        );
        s["bars"]["peak_rss_le_200_mib"].as_bool()
    }

    #[test]
    fn the_rss_bar_counts_the_postgresql_phases() {
        assert_eq!(rss_bar(150.0, Some(190.0), 120.0), Some(true));
        assert_eq!(rss_bar(150.0, Some(225.0), 120.0), Some(false));
        assert_eq!(rss_bar(150.0, None, 120.0), Some(true));
        assert_eq!(rss_bar(150.0, None, 250.0), Some(false));
    }

    #[test]
    fn ratios_use_the_mean_of_both_ceilings_and_report_their_drift() {
        let ceiling = |eps: f64, p99: f64| json!({"events_per_s": eps, "latency": {"p99_ms": p99}});
        let trailkeep = json!({
            "single": {"events_per_s": 30.0, "latency": {"p99_ms": 6.0}},
            "batch": {"events_per_s": 50.0},
        });
        let run = |ceilings| {
            summary(
                &Plan::new(Mode::Smoke),
                ceilings,
                trailkeep.clone(),
                json!({"available": false, "skipped": "test"}),
                json!({}),
            )
        };
        let s = run(Ceilings {
            http: ceiling(100.0, 1.0),
            append: json!({"events_per_s": 200.0}),
            http_after: ceiling(50.0, 3.0),
            append_after: json!({"events_per_s": 300.0}),
        });
        let r = &s["ratios"];
        assert_eq!(r["single_vs_http"], json!(0.4), "30 / mean(100, 50)");
        assert_eq!(r["single_p99_vs_http_p99"], json!(3.0), "6 / mean(1, 3)");
        assert_eq!(r["batch_vs_append"], json!(0.2), "50 / mean(200, 300)");
        assert_eq!(r["ceiling_drift"]["http"], json!(0.5));
        assert_eq!(r["ceiling_drift"]["append"], json!(1.5));
        // Without a second measurement, the first one alone, and no drift.
        let s = run(Ceilings {
            http: ceiling(100.0, 1.0),
            append: json!({"events_per_s": 200.0}),
            http_after: Value::Null,
            append_after: Value::Null,
        });
        assert_eq!(s["ratios"]["single_vs_http"], json!(0.3));
        assert_eq!(s["ratios"]["batch_vs_append"], json!(0.25));
        assert!(s["ratios"]["ceiling_drift"]["http"].is_null());
    }

    #[test]
    fn read_bars_hold_only_at_ten_million_events() {
        let reads = |proof_p99: f64| {
            json!({
                "events": 10_000_000,
                "actor": {"p99_ms": 0.9},
                "action_prefix": {"p99_ms": 0.9},
                "time_range": {"p99_ms": 5.7},
                "full_text": {"p99_ms": 42.0},
                "proof": {"p99_ms": proof_p99},
                "paging": {"page": {"p99_ms": 1.0}},
            })
        };
        let bars = |mode, reads| {
            summary(
                &Plan::new(mode),
                no_ceilings(),
                json!({}),
                json!({"available": false, "skipped": "test"}),
                reads,
            )["bars"]
                .clone()
        };
        let b = bars(Mode::Full, reads(3.3));
        assert_eq!(b["reads_indexed_p99_le_10_ms"], json!(true));
        assert_eq!(b["reads_full_text_p99_le_50_ms"], json!(true));
        assert_eq!(b["reads_proof_p99_le_2_ms"], json!(false));
        assert_eq!(
            bars(Mode::Full, reads(1.9))["reads_proof_p99_le_2_ms"],
            json!(true)
        );
        // A missing query fails its bar rather than passing it.
        let mut partial = reads(1.0);
        partial.as_object_mut().unwrap().remove("time_range");
        assert_eq!(
            bars(Mode::Full, partial)["reads_indexed_p99_le_10_ms"],
            json!(false)
        );
        // Quick runs load 200 000 events; skipped reads have no events at all.
        assert!(bars(Mode::Quick, reads(1.0))["reads_proof_p99_le_2_ms"].is_null());
        assert!(bars(Mode::Full, json!({"skipped": "test"}))["reads_proof_p99_le_2_ms"].is_null());
    }
}
