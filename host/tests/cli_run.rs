//! `wasmtwin run` as plugin authors use it.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmtwin_tests::cli::{arg, ok, refused};
use wasmtwin_tests::{plugin, write_updates};

/// `wasmtwin run COMPONENT --updates UPDATES --allow-unsigned EXTRA...`
/// with its own component cache.
fn run(cache: &Path, component: &Path, updates: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        arg(component),
        "--updates",
        arg(updates),
        "--allow-unsigned",
    ];
    args.extend_from_slice(extra);
    wasmtwin_tests::cli::run(
        env!("CARGO_BIN_EXE_wasmtwin"),
        &args,
        &[("WASMTWIN_CACHE_DIR", arg(cache))],
    )
}

fn stdout_lines(output: &str) -> Vec<Value> {
    output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn final_state(output: Output) -> Value {
    let lines = stdout_lines(&ok(output));
    lines
        .last()
        .and_then(|l| l.get("state"))
        .cloned()
        .expect("a final state line")
}

#[test]
fn a_split_run_through_a_checkpoint_ends_where_a_straight_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let prime = plugin("prime");
    let all = write_updates(dir.path(), "all.jsonl", 1..=1000);
    let first = write_updates(dir.path(), "first.jsonl", 1..=500);
    let second = write_updates(dir.path(), "second.jsonl", 501..=1000);
    let ckpt = dir.path().join("half.ckpt");

    let straight = final_state(run(&cache, &prime, &all, &[]));
    assert_eq!(straight["updates_applied"], 1000);
    assert_eq!(straight["last_seq"], 1000);
    assert_eq!(straight["last_prime"], 7919);

    let half = final_state(run(&cache, &prime, &first, &["--checkpoint", arg(&ckpt)]));
    assert_eq!(half["updates_applied"], 500);
    let rest = final_state(run(&cache, &prime, &second, &["--restore", arg(&ckpt)]));
    assert_eq!(rest, straight);
}

#[test]
fn prints_each_change_as_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let updates = write_updates(dir.path(), "u.jsonl", 1..=3);
    let out = ok(run(
        &dir.path().join("cache"),
        &plugin("prime"),
        &updates,
        &["--config", r#"{"primes": 10}"#],
    ));
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
        let config = format!(r#"{{"mode": "{mode}"}}"#);
        let err = refused(run(
            &dir.path().join("cache"),
            &component,
            &updates,
            &["--memory-limit", "16MiB", "--config", &config],
        ));
        let elapsed = started.elapsed();
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
    let err = refused(run(
        &dir.path().join("cache"),
        &plugin("misbehave"),
        &updates,
        &[
            "--config",
            r#"{"mode": "loop"}"#,
            "--fuel-per-update",
            "100000000000000",
            "--deadline-ms",
            "300",
        ],
    ));
    assert!(err.contains("missed its deadline of 300 ms"), "{err}");
}

#[test]
fn damaged_or_foreign_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let updates = write_updates(dir.path(), "u.jsonl", 1..=3);
    let prime = plugin("prime");
    let ckpt = dir.path().join("p.ckpt");
    final_state(run(&cache, &prime, &updates, &["--checkpoint", arg(&ckpt)]));

    // Into another model.
    let err = refused(run(
        &cache,
        &plugin("machine"),
        &updates,
        &["--restore", arg(&ckpt)],
    ));
    assert!(err.contains("model `prime`"), "{err}");

    // One flipped byte anywhere.
    let mut bytes = std::fs::read(&ckpt).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    let damaged = dir.path().join("damaged.ckpt");
    std::fs::write(&damaged, &bytes).unwrap();
    let err = refused(run(&cache, &prime, &updates, &["--restore", arg(&damaged)]));
    assert!(
        err.contains("corrupted") || err.contains("malformed"),
        "{err}"
    );

    // Not a checkpoint at all.
    let err = refused(run(&cache, &prime, &updates, &["--restore", arg(&updates)]));
    assert!(err.contains("not a wasmtwin checkpoint"), "{err}");
}

#[test]
fn bad_input_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let prime = plugin("prime");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!("{}\n{{\"seq\": \"two\"}}\n", wasmtwin_tests::update_line(1)),
    )
    .unwrap();
    let ckpt = dir.path().join("never.ckpt");
    let err = refused(run(&cache, &prime, &bad, &["--checkpoint", arg(&ckpt)]));
    assert!(err.contains("bad.jsonl:2"), "{err}");
    assert!(!ckpt.exists(), "a failed run must not leave a checkpoint");

    let good = write_updates(dir.path(), "u.jsonl", 1..=1);
    for (config, expected) in [
        ("{primes: 3}", "--config is not valid JSON"),
        (r#"{"primes": 0}"#, "primes must be between 1 and"),
        (r#"{"prime": 3}"#, "unknown field `prime`"),
        ("[3]", "--config must be a JSON object"),
    ] {
        let err = refused(run(&cache, &prime, &good, &["--config", config]));
        assert!(err.contains(expected), "{config}: {err}");
    }
    let err = refused(run(&cache, &good, &good, &[]));
    assert!(err.contains("compiling component"), "{err}");
}

#[test]
fn help_documents_the_options() {
    let help = ok(wasmtwin_tests::cli::run(
        env!("CARGO_BIN_EXE_wasmtwin"),
        &["run", "--help"],
        &[],
    ));
    for option in [
        "--updates",
        "--config",
        "--fuel-per-update",
        "--memory-limit",
        "--checkpoint",
        "--restore",
        "--trust",
        "--allow-unsigned",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
    }
}

#[test]
fn a_refused_update_is_reported_once_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let updates = dir.path().join("u.jsonl");
    std::fs::write(
        &updates,
        concat!(
            r#"{"seq":1,"ts_ms":1,"property":"temperature","value":"hot"}"#,
            "\n",
            r#"{"seq":2,"ts_ms":2,"property":"temperature","value":20.5}"#,
            "\n"
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let lines = stdout_lines(&ok(run(&cache, &plugin("machine"), &updates, &[])));
    assert_eq!(
        lines[0],
        serde_json::json!({"seq": 1, "refused": "temperature must be a number, got \"hot\""})
    );
    assert_eq!(lines.last().unwrap()["state"]["temperature"], 20.5);
}
