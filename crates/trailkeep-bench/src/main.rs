//! `trailkeep-bench --smoke | --quick | --full [--out PATH] [--keep-data]
//! [--no-postgres] [--skip sqlite,reads]`: runs the benchmark, prints a table and writes the
//! summary JSON (default `target/bench/summary.json` under the workspace
//! root). `--keep-data` keeps the reads phase's data directory for
//! inspection. PostgreSQL (`TRAILKEEP_BENCH_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`) is measured when reachable,
//! unless `--no-postgres` is given. `--skip` leaves out trailkeep's SQLite
//! ingest phases and/or the reads phase, for quicker runs while working on
//! one part; the figures it skips are `null` in the summary.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use trailkeep_bench::{Mode, Plan};

const USAGE: &str = "usage: trailkeep-bench --smoke | --quick | --full [--out PATH] [--keep-data] [--no-postgres] [--skip sqlite,reads]";

fn main() -> anyhow::Result<()> {
    let mut mode = None;
    let mut out = None;
    let mut keep_data = false;
    let mut no_postgres = false;
    let mut skip = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => mode = Some(Mode::Smoke),
            "--quick" => mode = Some(Mode::Quick),
            "--full" => mode = Some(Mode::Full),
            "--keep-data" => keep_data = true,
            "--no-postgres" => no_postgres = true,
            "--skip" => {
                for part in args.next().context(USAGE)?.split(',') {
                    match part {
                        "sqlite" | "reads" => skip.push(part.to_owned()),
                        other => bail!("unknown phase {other} for --skip\n{USAGE}"),
                    }
                }
            }
            "--out" => out = Some(PathBuf::from(args.next().context(USAGE)?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let Some(mode) = mode else {
        bail!("{USAGE}");
    };
    let out = out.unwrap_or_else(|| {
        // The workspace root is two levels above this crate's manifest.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .unwrap_or_else(|| std::path::Path::new("."));
        root.join("target/bench/summary.json")
    });
    let mut plan = Plan {
        keep_data,
        skip_sqlite: skip.iter().any(|s| s == "sqlite"),
        skip_reads: skip.iter().any(|s| s == "reads"),
        ..Plan::new(mode)
    };
    if no_postgres {
        plan.postgres = Err("--no-postgres given".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(trailkeep_bench::run(&plan))?;
    print!("{}", trailkeep_bench::report::table(&summary));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("summary written to {}", out.display());
    Ok(())
}
