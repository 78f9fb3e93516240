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

/// CPU seconds process `pid` ("self" for this one) has used so far, all
/// its threads, user and system: `/proc/PID/stat`'s utime and stime, in
/// Linux's clock ticks of 10 ms (USER_HZ is 100), so figures are whole
/// hundredths.
pub fn cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which may hold spaces; utime
            // and stime are the 14th and 15th of the whole line.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
            Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
        })
        .unwrap_or(0.0)
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
