//! `wasmtwin experiment`: the seed paper's experiment, shortened, must show
//! its three reactions for the paper's reasons and nothing else (the
//! command's own checks, which set its exit status), write its CSV files,
//! figure and summary within 1 GiB, and leave nothing running when it is
//! interrupted.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmtwin_tests::cli::{arg, refused, run};
use wasmtwin_tests::plugin;

const WASMTWIN: &str = env!("CARGO_BIN_EXE_wasmtwin");

/// One experiment at a time: a second one's start-up would load the
/// machine under the first one's measured baseline.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The directory of the built plugins.
fn plugins() -> std::path::PathBuf {
    let prime = plugin("prime");
    prime
        .parent()
        .expect("a plugin sits in a directory")
        .to_path_buf()
}

#[test]
#[ignore = "runs for six minutes and needs Debian's mosquitto; run by .ci/run"]
fn the_papers_reactions_happen_for_its_reasons_and_nothing_else() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().unwrap();
    let plugins = plugins();
    let output = run(
        WASMTWIN,
        &[
            "experiment",
            "--phase-seconds",
            "24",
            "--window-seconds",
            "10",
            "--out",
            arg(out.path()),
            "--plugins",
            arg(&plugins),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The event histories say why the control plane did what it did.
    let events = |run: &str| {
        std::fs::read_to_string(out.path().join(format!("{run}-events.csv"))).unwrap_or_default()
    };
    assert!(
        output.status.success(),
        "the experiment's checks failed:\n{stdout}\n{stderr}\nacting-events.csv:\n{}\nobserving-events.csv:\n{}",
        events("acting"),
        events("observing")
    );
    assert!(stdout.contains("broker: Mosquitto"), "{stdout}");
    let summary = std::fs::read_to_string(out.path().join("summary.md")).unwrap();
    assert!(!summary.contains('✗'), "{summary}");
    // Acting: one migration, one scaling, one notification naming 0.50/s.
    for expected in [
        "migrate edge→cloud",
        "scale to ",
        "notify: device sends 0.50/s",
        "would migrate edge→cloud, not done",
        "would scale to ",
    ] {
        assert!(summary.contains(expected), "no `{expected}` in:\n{summary}");
    }
    // A row a second, for both runs.
    for run in ["acting", "observing"] {
        let rows = std::fs::read_to_string(out.path().join(format!("{run}.csv"))).unwrap();
        let count = rows.lines().count() - 1;
        assert!(
            (7 * 24 - 3..=7 * 24 + 1).contains(&count),
            "{run}: {count} rows"
        );
        let events = std::fs::read_to_string(out.path().join(format!("{run}-events.csv"))).unwrap();
        assert!(events.lines().count() > 3, "{run}: {events}");
    }
    let png = std::fs::read(out.path().join("figure.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000);
    let svg = std::fs::read_to_string(out.path().join("figure.svg")).unwrap();
    assert!(svg.contains("phase 1: network slowdown") && svg.contains("observing only"));
    // Within 1 GiB, the broker included.
    let memory: f64 = summary
        .split("Peak memory: ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|mib| mib.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in:\n{summary}"));
    assert!(memory < 1024.0, "{memory} MiB");
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn ctrl_c_stops_it_and_leaves_nothing_running() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().unwrap();
    let plugins = plugins();
    let mut child = Command::new(WASMTWIN)
        .args(["experiment", "--phase-seconds", "60", "--out"])
        .arg(out.path())
        .arg("--plugins")
        .arg(&plugins)
        .env("WASMTWIN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut broker_pid = None;
    // Until the first phase has begun: the broker, nodes, control plane,
    // device and twin are all up.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(pid) = line.split("(pid ").nth(1) {
            broker_pid = pid.trim_end_matches(')').parse::<u32>().ok();
        }
        if line.contains("[acting]") {
            break;
        }
    }
    let broker_pid = broker_pid.expect("the experiment names Mosquitto's pid");
    assert!(std::path::Path::new(&format!("/proc/{broker_pid}")).exists());
    std::thread::sleep(Duration::from_secs(3));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "still running 20 s after Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(exit.code(), Some(130));
    // The broker is gone too (reaped by now, or at least dead).
    let gone = Instant::now() + Duration::from_secs(5);
    while let Ok(status) = std::fs::read_to_string(format!("/proc/{broker_pid}/status")) {
        if status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("Z"))
        {
            break;
        }
        assert!(
            Instant::now() < gone,
            "Mosquitto ({broker_pid}) outlived the experiment"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What was recorded before the interruption is kept.
    let rows = std::fs::read_to_string(out.path().join("acting.csv")).unwrap();
    assert!(rows.lines().count() >= 2, "{rows}");
}

#[test]
fn bad_pacing_and_missing_plugins_are_refused_before_anything_starts() {
    let out = tempfile::tempdir().unwrap();
    let short = refused(run(
        WASMTWIN,
        &[
            "experiment",
            "--phase-seconds",
            "5",
            "--out",
            arg(out.path()),
        ],
        &[],
    ));
    assert!(
        short.contains("--phase-seconds must be between 22"),
        "{short}"
    );
    let window = refused(run(
        WASMTWIN,
        &[
            "experiment",
            "--window-seconds",
            "1",
            "--out",
            arg(out.path()),
        ],
        &[],
    ));
    assert!(
        window.contains("--window-seconds must be between 5 and 300"),
        "{window}"
    );
    let missing = refused(run(
        WASMTWIN,
        &[
            "experiment",
            "--out",
            arg(out.path()),
            "--plugins",
            arg(&out.path().join("nowhere")),
        ],
        &[],
    ));
    assert!(missing.contains("build the plugins first"), "{missing}");
    // Nothing was written.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}
