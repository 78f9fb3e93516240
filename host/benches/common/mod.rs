//! Helpers the benchmarks share.

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
