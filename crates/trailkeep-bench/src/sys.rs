//! What the process and the machine report about themselves: CPU time and
//! peak RSS from `/proc/self`, directory sizes, and the machine description.

use std::path::Path;

/// Clock ticks per second of `/proc/self/stat` times. `USER_HZ` is fixed at
/// 100 in Linux's user-space ABI on x86-64 and arm64.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// User plus system CPU seconds this process has used so far, or 0 when
/// `/proc/self/stat` is unreadable.
#[must_use]
pub fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat").map_or(0.0, |s| stat_cpu_secs(&s))
}

/// CPU seconds used so far by this process's threads whose name starts
/// with `prefix` (Linux truncates thread names to 15 bytes).
#[must_use]
pub fn thread_cpu_secs(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|s| stat_cpu_secs(&s))
        .sum()
}

/// utime + stime of a `stat` file's text, in seconds.
fn stat_cpu_secs(stat: &str) -> f64 {
    // The command name (field 2) may hold spaces; fields after it start at
    // field 3, so utime (field 14) and stime (field 15) are at 11 and 12.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    #[allow(
        clippy::cast_precision_loss,
        reason = "tick counts stay far below 2^52"
    )]
    let secs = (ticks(11) + ticks(12)) as f64 / CLOCK_TICKS_PER_SEC;
    secs
}

/// Bytes this process has caused to be sent to the storage layer
/// (`write_bytes` of `/proc/self/io`); 0 when unreadable.
#[must_use]
pub fn storage_write_bytes() -> u64 {
    read_kib_field("/proc/self/io", "write_bytes:")
}

/// Returns freed heap memory to the system and resets the peak resident set
/// size (`VmHWM`) to the current RSS, so the next [`peak_rss_bytes`] covers
/// only what follows; returns that RSS in bytes. Best effort.
pub fn reset_peak_rss() -> u64 {
    // The bench is one process that starts and stops several servers, and
    // glibc keeps what they freed in its arenas; a deployed server is one per
    // process and never holds an earlier server's garbage. Returning it
    // first makes a phase's peak start from what is live.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory; it has no
    // preconditions and may run beside other threads' allocations.
    unsafe {
        libc::malloc_trim(0);
    }
    // Writing 5 to clear_refs resets VmHWM (Linux 4.0+).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    rss_bytes()
}

/// Peak resident set size (`VmHWM`) in bytes since the last
/// [`reset_peak_rss`] or process start; 0 when unreadable.
#[must_use]
pub fn peak_rss_bytes() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

/// `bytes` in MiB.
#[must_use]
#[allow(clippy::cast_precision_loss, reason = "byte counts are far below 2^52")]
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Current resident set size (`VmRSS`) in bytes; 0 when unreadable.
#[must_use]
pub fn rss_bytes() -> u64 {
    proc_status_kib("VmRSS:") * 1024
}

fn proc_status_kib(key: &str) -> u64 {
    read_kib_field("/proc/self/status", key)
}

/// The first number after `key` on a line of `path` (kiB in `/proc/*/status`
/// and `meminfo`, bytes in `/proc/self/io`).
fn read_kib_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Total length of the regular files under `dir`, recursively.
#[must_use]
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Sizes of the files directly in `dir`, by name.
#[must_use]
pub fn file_sizes(dir: &Path) -> serde_json::Map<String, serde_json::Value> {
    let mut sizes = serde_json::Map::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(m) = entry.metadata()
            && m.is_file()
        {
            sizes.insert(
                entry.file_name().to_string_lossy().into_owned(),
                m.len().into(),
            );
        }
    }
    sizes
}

/// The machine: CPU model (as `lscpu` names it), usable cores, memory.
#[must_use]
pub fn machine() -> serde_json::Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem_total_kib = read_kib_field("/proc/meminfo", "MemTotal:");
    serde_json::json!({
        "cpu_model": cpu_model,
        "cores": cores,
        "mem_total_mib": mem_total_kib / 1024,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// CPU seconds used so far by every process named `comm`, by pid, for
/// processes this user may read (for example the machine's PostgreSQL).
#[must_use]
pub fn processes_cpu_secs(comm: &str) -> std::collections::HashMap<u32, f64> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return std::collections::HashMap::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(p.path().join("comm")).ok()?;
            if name.trim_end() != comm {
                return None;
            }
            let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
            Some((pid, stat_cpu_secs(&stat)))
        })
        .collect()
}

/// CPU seconds the processes of `after` used since `before` (both from
/// [`processes_cpu_secs`]); processes that exited in between are missed,
/// processes started in between count whole.
#[must_use]
pub fn processes_cpu_since(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, secs)| (secs - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}
