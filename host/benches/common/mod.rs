//! Helpers the benchmarks share.

// Each benchmark is its own crate and uses some of them, none all.
#![allow(dead_code)]

/// `WASMTWIN_BENCH_QUICK` asks for a small smoke run (CI).
pub fn quick() -> bool {
    std::env::var_os("WASMTWIN_BENCH_QUICK").is_some()
}

/// Now, in ms since the Unix epoch (a PT timestamp).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A KiB figure of `/proc/self/<file>`, by the label of its line.
fn proc_kib(file: &str, label: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/self/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(label))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory as `ps` shows it: a page mapped in many places, as the
/// component's copy-on-write memory image is in every instance, counts
/// once for each.
pub fn rss_kib() -> u64 {
    proc_kib("status", "VmRSS:")
}

/// What the machine pays for this process: each resident page divided
/// among the mappings sharing it (PSS), plus the page tables mapping
/// them, which RSS leaves out.
pub fn paid_kib() -> u64 {
    proc_kib("smaps_rollup", "Pss:") + proc_kib("status", "VmPTE:")
}
