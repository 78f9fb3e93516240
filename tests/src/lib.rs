//! Helpers shared by wasmtwin's end-to-end tests: the example plugins built
//! as components, and recorded update streams.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub mod cli;
pub use wasmtwin::faults;
pub mod fleet;
pub mod node;
pub mod otlp;
pub mod servers;

/// Runs a future (a guest call: they are async) to completion on this
/// thread, for tests and benchmarks written as plain functions.
pub fn wait<F: std::future::Future>(work: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(work))
}

/// The plugins in `plugins/`, by package name.
pub const PLUGINS: &[&str] = &["prime", "machine", "json-adapter", "misbehave", "legacy"];

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_path_buf()
}

/// Builds every plugin for `wasm32-wasip2` once per test process, exactly
/// as the README tells plugin authors to, and returns the directory of the
/// `.wasm` files.
fn built_plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(&root).args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--quiet",
        ]);
        for plugin in PLUGINS {
            command.args(["-p", plugin]);
        }
        let status = command
            .status()
            .expect("running cargo to build the plugins");
        assert!(status.success(), "building the plugins failed: {status}");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("wasm32-wasip2").join("release")
    })
}

/// The path of plugin `name`'s component, building it if needed.
pub fn plugin(name: &str) -> PathBuf {
    assert!(PLUGINS.contains(&name), "unknown plugin {name}");
    built_plugins().join(format!("{}.wasm", name.replace('-', "_")))
}

/// `prime` built as its next release (`--features next-release`: another
/// version, the same state layout), for hot-swap tests.
pub fn prime_next_release() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| variant("prime", "next-release"))
        .clone()
}

/// `misbehave` built as a faulty release (`--features broken-release`:
/// the same state layout, but `good` mode traps on every update), for
/// tests of rolling back a swap.
pub fn misbehave_broken_release() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| variant("misbehave", "broken-release"))
        .clone()
}

/// Builds plugin `name` with `feature` into a target directory of its
/// own; the component's path.
fn variant(name: &str, feature: &str) -> PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join(format!("{name}-{feature}"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .args(["-p", name, "--features", feature, "--target-dir"])
        .arg(&target)
        .status()
        .expect("running cargo to build a plugin variant");
    assert!(
        status.success(),
        "building {name} with {feature} failed: {status}"
    );
    target
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{name}.wasm"))
}

/// The bytes of plugin `name`'s component.
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    let path = plugin(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One recorded update line, as `wasmtwin run` reads them.
pub fn update_line(seq: u64) -> String {
    serde_json::json!({
        "seq": seq,
        "ts_ms": 1_700_000_000_000u64 + seq,
        "property": "counter",
        "value": seq * 3,
    })
    .to_string()
}

/// Writes updates `seqs` to `dir/name` in the `wasmtwin run` format.
pub fn write_updates(dir: &Path, name: &str, seqs: impl IntoIterator<Item = u64>) -> PathBuf {
    let path = dir.join(name);
    let text: String = seqs.into_iter().map(|s| update_line(s) + "\n").collect();
    std::fs::write(&path, text).expect("writing an updates file");
    path
}
