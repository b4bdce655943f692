//! The benchmark in smoke mode, so it never rots. Nothing here asserts on
//! timing: only that every phase ran and every figure is reported.

use std::process::Command;

use serde_json::Value;

const KEYS: &[&str] = &[
    "/machine/cpu_model",
    "/http_ceiling/events_per_s",
    "/http_ceiling/latency/p50_ms",
    "/http_ceiling/latency/p99_ms",
    "/http_ceiling/latency/p999_ms",
    "/append_ceiling/events_per_s",
    "/http_ceiling_after/events_per_s",
    "/http_ceiling_after/latency/p99_ms",
    "/append_ceiling_after/events_per_s",
    "/ratios/ceiling_drift/http",
    "/ratios/ceiling_drift/append",
    "/trailkeep/single/events_per_s",
    "/trailkeep/single/latency/p99_ms",
    "/trailkeep/single/cpu_secs",
    "/trailkeep/single/peak_rss_mib",
    "/trailkeep/single/group_commits/events_per_commit",
    "/trailkeep/batch/group_commits/commit_ms_mean",
    "/trailkeep/batch/events_per_s",
    "/trailkeep/batch/latency/p999_ms",
    "/trailkeep/mixed/events_per_s",
    "/trailkeep/mixed/reads/requests_per_s",
    "/trailkeep/peak_rss_mib",
    "/trailkeep/dialects/loghub/events_per_s",
    "/trailkeep/dialects/logsh/latency/p99_ms",
    "/trailkeep/dialects/logzab/latency/p999_ms",
    "/trailkeep/dialects/auditr/cpu_us_per_event",
    "/trailkeep/dialects/tavivo/peak_rss_mib",
    "/trailkeep/dialects/logsh/disk/bytes_per_event",
    "/ratios/dialects_vs_http/loghub",
    "/ratios/dialects_vs_http/tavivo",
    "/trailkeep/disk/bytes_per_event",
    "/trailkeep/disk/raw_json_bytes_per_event",
    "/reads/events",
    "/reads/load/events_per_s",
    "/reads/fts_catchup_s",
    "/reads/disk_bytes_per_event",
    "/reads/actor/p50_ms",
    "/reads/action_prefix/p99_ms",
    "/reads/time_range/p99_ms",
    "/reads/full_text/p99_ms",
    "/reads/proof/p99_ms",
    "/reads/paging/page/p99_ms",
    "/reads/verify/events_per_s",
    "/reads/sha256/events_per_s",
    "/reads/peak_rss_mib",
    "/ratios/single_vs_http",
    "/ratios/batch_vs_append",
    "/ratios/verify_vs_sha256",
    "/ratios/single_p99_vs_http_p99",
    "/ratios/disk_vs_raw_json",
    "/bars/single_ge_0_6_http",
    "/bars/peak_rss_le_200_mib",
];

/// Figures present when PostgreSQL was reachable.
const PG_KEYS: &[&str] = &[
    "/postgres/single/events_per_s",
    "/postgres/single/latency/p50_ms",
    "/postgres/single/latency/p99_ms",
    "/postgres/single/latency/p999_ms",
    "/postgres/single/group_commits/events_per_commit",
    "/postgres/single/wal_bytes_per_event",
    "/postgres/batch/events_per_s",
    "/postgres/batch/latency/p999_ms",
    "/postgres/copy_ceiling/events_per_s",
    "/postgres/copy_ceiling/latency/p99_ms",
    "/postgres/copy_ceiling/wal_bytes_per_event",
    "/postgres/disk/trailkeep_bytes_per_event",
    "/postgres/disk/copy_bytes_per_event",
    "/postgres/peak_rss_mib",
    "/ratios/pg_batch_vs_copy",
    "/bars/pg_batch_ge_0_5_copy",
];

/// Runs the bench with `args` and an `--out` file; returns the summary.
fn run_bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("summary.json");
    let run = Command::new(env!("CARGO_BIN_EXE_trailkeep-bench"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "bench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

#[test]
fn smoke_run_reports_every_figure() {
    let s = run_bench(&["--smoke"]);
    for key in KEYS {
        let v = s.pointer(key).unwrap_or(&Value::Null);
        assert!(!v.is_null(), "{key} is missing or null in {s:#}");
    }
    // PostgreSQL is measured when reachable; otherwise the ratio is null and
    // the summary says why. Neither case may fail the run.
    assert!(
        s["ratios"]
            .as_object()
            .unwrap()
            .contains_key("pg_batch_vs_copy")
    );
    if s["postgres"]["available"] == true {
        for key in PG_KEYS {
            let v = s.pointer(key).unwrap_or(&Value::Null);
            assert!(!v.is_null(), "{key} is missing or null in {s:#}");
        }
        for key in [
            "/postgres/single/events",
            "/postgres/batch/events",
            "/postgres/copy_ceiling/events",
        ] {
            let n = s.pointer(key).and_then(Value::as_u64).unwrap_or(0);
            assert!(n > 0, "{key} = {n}, expected a positive count");
        }
        assert_eq!(s["postgres"]["identity"]["search_mismatches"], 0);
    } else {
        let why = s["postgres"]["skipped"].as_str().unwrap_or("");
        assert!(
            !why.is_empty(),
            "no reason for skipping PostgreSQL in {s:#}"
        );
        assert!(s["ratios"]["pg_batch_vs_copy"].is_null());
        eprintln!("PostgreSQL phases skipped: {why}");
    }
    for key in [
        "/http_ceiling/events",
        "/append_ceiling/events",
        "/http_ceiling_after/events",
        "/append_ceiling_after/events",
        "/trailkeep/single/events",
        "/trailkeep/batch/events",
        "/trailkeep/mixed/events",
        "/trailkeep/disk/events",
        "/trailkeep/dialects/loghub/events",
        "/trailkeep/dialects/logsh/events",
        "/trailkeep/dialects/logzab/events",
        "/trailkeep/dialects/auditr/events",
        "/trailkeep/dialects/tavivo/events",
        "/trailkeep/dialects/auditr/disk/bytes",
        "/reads/events",
        "/reads/verify/events",
        "/reads/sha256/events",
        "/reads/actor/samples",
        "/reads/proof/samples",
    ] {
        let n = s.pointer(key).and_then(Value::as_u64).unwrap_or(0);
        assert!(n > 0, "{key} = {n}, expected a positive count");
    }
    assert_eq!(
        s["reads"]["verify"]["events"],
        s["reads"]["sha256"]["events"]
    );
}

#[test]
fn a_run_without_sqlite_ingest_still_judges_the_disk_bar() {
    let s = run_bench(&["--smoke", "--no-postgres", "--skip", "sqlite"]);
    assert!(s["trailkeep"]["skipped"].is_string(), "{s:#}");
    assert!(s["trailkeep"]["single"].is_null(), "{s:#}");
    let ratio = s["ratios"]["reads_disk_vs_raw_json"].as_f64();
    assert!(ratio.is_some_and(|r| r > 0.0), "{s:#}");
    assert!(s["bars"]["disk_le_1_5x_raw_json"].is_boolean(), "{s:#}");
}
