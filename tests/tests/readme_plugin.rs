//! The README's "Writing a model" walkthrough works as written: its
//! `Cargo.toml` and `src/lib.rs` build into a component that the runtime
//! runs, giving the output the README promises.

use std::process::Command;

use serde_json::json;
use wasmtwin::runtime::{Limits, Runtime, RuntimeConfig, Update};
use wasmtwin::twin::Twin;
use wasmtwin_tests::workspace_root;

/// The fenced code blocks of `lang` in the README, indentation removed.
fn blocks(readme: &str, lang: &str, containing: &str) -> String {
    let fence = format!("```{lang}\n");
    readme
        .split(&fence)
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains(containing))
        .map(|block| {
            block
                .lines()
                .map(|l| l.strip_prefix("   ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|| panic!("README has no {lang} block containing {containing}"))
}

#[tokio::test]
async fn the_readme_walkthrough_builds_and_runs() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("thermostat");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    let manifest = blocks(&readme, "toml", "name = \"thermostat\"")
        .replace("../wasmtwin/sdk", &root.join("sdk").display().to_string());
    std::fs::write(krate.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(
        krate.join("src/lib.rs"),
        blocks(&readme, "rust", "Thermostat"),
    )
    .unwrap();

    // A target directory of its own, kept between runs so only the first
    // run compiles serde and wit-bindgen.
    let target = root.join("target").join("readme-plugin");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&krate)
        .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "the README's plugin does not build");

    let bytes = std::fs::read(target.join("wasm32-wasip2/release/thermostat.wasm")).unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let component = runtime.load_model(&bytes).unwrap();
    let mut twin = Twin::create(&runtime, &component, "t", Limits::default(), &json!({}))
        .await
        .unwrap();
    for (seq, t) in [(1, 19.5), (2, 22.0)] {
        let update = Update {
            seq,
            ts_ms: seq,
            property: "temperature".into(),
            value: json!(t),
        };
        twin.apply(&update).await.unwrap();
    }
    // The final state the README shows.
    let state = serde_json::to_value(&twin.state().properties).unwrap();
    assert_eq!(state, json!({"heating": false, "temperature": 22.0}));
}
