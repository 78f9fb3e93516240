//! `wasmtwin run` as plugin authors use it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmtwin_tests::{plugin, write_updates};

fn wasmtwin(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmtwin"))
        .args(args)
        .env("WASMTWIN_CACHE_DIR", cache)
        .env("WASMTWIN_LOG", "warn")
        .output()
        .expect("running wasmtwin")
}

fn stdout_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn final_state(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "wasmtwin failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = stdout_lines(output);
    lines
        .last()
        .and_then(|l| l.get("state"))
        .cloned()
        .expect("a final state line")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_split_run_through_a_checkpoint_ends_where_a_straight_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let prime = plugin("prime");
    let prime = prime.to_str().unwrap();
    let all = write_updates(dir.path(), "all.jsonl", 1..=1000);
    let first = write_updates(dir.path(), "first.jsonl", 1..=500);
    let second = write_updates(dir.path(), "second.jsonl", 501..=1000);
    let ckpt = dir.path().join("half.ckpt");
    let cache = dir.path().join("cache");

    let straight = wasmtwin(&cache, &["run", prime, "--updates", all.to_str().unwrap()]);
    let straight = final_state(&straight);
    assert_eq!(straight["updates_applied"], 1000);
    assert_eq!(straight["last_seq"], 1000);
    assert_eq!(straight["last_prime"], 7919);

    let half = wasmtwin(
        &cache,
        &[
            "run",
            prime,
            "--updates",
            first.to_str().unwrap(),
            "--checkpoint",
            ckpt.to_str().unwrap(),
        ],
    );
    assert_eq!(final_state(&half)["updates_applied"], 500);
    let rest = wasmtwin(
        &cache,
        &[
            "run",
            prime,
            "--updates",
            second.to_str().unwrap(),
            "--restore",
            ckpt.to_str().unwrap(),
        ],
    );
    assert_eq!(final_state(&rest), straight);
}

#[test]
fn prints_each_change_as_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let updates = write_updates(dir.path(), "u.jsonl", 1..=3);
    let out = wasmtwin(
        &dir.path().join("cache"),
        &[
            "run",
            plugin("prime").to_str().unwrap(),
            "--updates",
            updates.to_str().unwrap(),
            "--config",
            r#"{"primes": 10}"#,
        ],
    );
    let lines = stdout_lines(&out);
    // Four properties change per update, then the final state.
    assert_eq!(lines.len(), 3 * 4 + 1, "{lines:?}");
    assert_eq!(lines[0]["seq"], 1);
    assert!(
        lines
            .iter()
            .any(|l| l["property"] == "last_prime" && l["value"] == 29)
    );
}

#[test]
fn each_misbehaviour_exits_non_zero_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let updates = write_updates(dir.path(), "u.jsonl", 1..=5);
    let component = plugin("misbehave");
    for (mode, word) in [
        ("loop", "fuel"),
        ("hog", "memory"),
        ("panic", "trap"),
        ("trap", "trap"),
    ] {
        let started = Instant::now();
        let out = wasmtwin(
            &dir.path().join("cache"),
            &[
                "run",
                component.to_str().unwrap(),
                "--updates",
                updates.to_str().unwrap(),
                "--memory-limit",
                "16MiB",
                "--config",
                &format!(r#"{{"mode": "{mode}"}}"#),
            ],
        );
        let elapsed = started.elapsed();
        assert!(!out.status.success(), "{mode} should fail");
        let err = stderr(&out);
        let error_line = err
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(
            error_line.contains(word),
            "{mode}: expected `{word}` in: {err}"
        );
        assert!(
            error_line.contains("u.jsonl:1"),
            "{mode}: should name the line: {err}"
        );
        assert!(elapsed < Duration::from_secs(15), "{mode} took {elapsed:?}");
    }
}

#[test]
fn a_deadline_stops_what_fuel_allows() {
    let dir = tempfile::tempdir().unwrap();
    let updates = write_updates(dir.path(), "u.jsonl", 1..=1);
    let out = wasmtwin(
        &dir.path().join("cache"),
        &[
            "run",
            plugin("misbehave").to_str().unwrap(),
            "--updates",
            updates.to_str().unwrap(),
            "--config",
            r#"{"mode": "loop"}"#,
            "--fuel-per-update",
            "100000000000000",
            "--deadline-ms",
            "300",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("deadline"), "{}", stderr(&out));
}

#[test]
fn damaged_or_foreign_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let updates = write_updates(dir.path(), "u.jsonl", 1..=3);
    let updates = updates.to_str().unwrap();
    let prime = plugin("prime");
    let machine = plugin("machine");
    let ckpt = dir.path().join("p.ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    final_state(&wasmtwin(
        &cache,
        &[
            "run",
            prime.to_str().unwrap(),
            "--updates",
            updates,
            "--checkpoint",
            ckpt_s,
        ],
    ));

    // Into another model.
    let out = wasmtwin(
        &cache,
        &[
            "run",
            machine.to_str().unwrap(),
            "--updates",
            updates,
            "--restore",
            ckpt_s,
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("model `prime`"), "{}", stderr(&out));

    // One flipped byte anywhere.
    let mut bytes = std::fs::read(&ckpt).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    let damaged = dir.path().join("damaged.ckpt");
    std::fs::write(&damaged, &bytes).unwrap();
    let out = wasmtwin(
        &cache,
        &[
            "run",
            prime.to_str().unwrap(),
            "--updates",
            updates,
            "--restore",
            damaged.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("corrupted") || err.contains("malformed"),
        "{err}"
    );

    // Not a checkpoint at all.
    let out = wasmtwin(
        &cache,
        &[
            "run",
            prime.to_str().unwrap(),
            "--updates",
            updates,
            "--restore",
            updates,
        ],
    );
    assert!(
        stderr(&out).contains("not a wasmtwin checkpoint"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let prime = plugin("prime");
    let prime = prime.to_str().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!("{}\n{{\"seq\": \"two\"}}\n", wasmtwin_tests::update_line(1)),
    )
    .unwrap();
    let ckpt = dir.path().join("never.ckpt");
    let out = wasmtwin(
        &cache,
        &[
            "run",
            prime,
            "--updates",
            bad.to_str().unwrap(),
            "--checkpoint",
            ckpt.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.jsonl:2"), "{}", stderr(&out));
    assert!(!ckpt.exists(), "a failed run must not leave a checkpoint");

    let good = write_updates(dir.path(), "u.jsonl", 1..=1);
    let out = wasmtwin(
        &cache,
        &[
            "run",
            prime,
            "--updates",
            good.to_str().unwrap(),
            "--config",
            "{primes: 3}",
        ],
    );
    assert!(
        stderr(&out).contains("--config is not valid JSON"),
        "{}",
        stderr(&out)
    );
    let out = wasmtwin(
        &cache,
        &[
            "run",
            prime,
            "--updates",
            good.to_str().unwrap(),
            "--config",
            r#"{"primes": 0}"#,
        ],
    );
    assert!(
        stderr(&out).contains("primes must be between 1 and"),
        "{}",
        stderr(&out)
    );
    let out = wasmtwin(
        &cache,
        &[
            "run",
            prime,
            "--updates",
            good.to_str().unwrap(),
            "--config",
            r#"{"prime": 3}"#,
        ],
    );
    assert!(
        stderr(&out).contains("unknown field `prime`"),
        "{}",
        stderr(&out)
    );
    let out = wasmtwin(
        &cache,
        &[
            "run",
            good.to_str().unwrap(),
            "--updates",
            good.to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&out).contains("compiling component"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_documents_the_options() {
    let out = wasmtwin(Path::new("/nonexistent"), &["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--updates",
        "--config",
        "--fuel-per-update",
        "--memory-limit",
        "--checkpoint",
        "--restore",
        "--allow-unsigned",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
    }
}
