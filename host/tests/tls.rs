//! HTTPS on the APIs (`--tls-cert`, `--tls-key`): a node serves its APIs
//! over TLS to clients that trust its CA — curl with `--cacert`, and
//! wasmtwin's own clients with `WASMTWIN_CA` — and to no one else; plain
//! HTTP gets nothing.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use wasmtwin_tests::cli::{arg, run};
use wasmtwin_tests::servers::{TlsFiles, free_port};

const WASMTWIN: &str = env!("CARGO_BIN_EXE_wasmtwin");
const TOKEN: &str = "tls-token-0123456789abcdef";

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5"])
        .args(args)
        .output()
        .expect("running curl")
}

/// Kills the node when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs curl and openssl; run by .ci/run"]
fn the_apis_are_served_over_https_to_clients_that_trust_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::make(dir.path());
    let port = free_port();
    let _node = Killed(
        Command::new(WASMTWIN)
            .args([
                "host",
                "--http",
                &format!("127.0.0.1:{port}"),
                "--mqtt",
                "mqtt://127.0.0.1:1",
            ])
            .args([
                "--data",
                arg(&dir.path().join("node")),
                "--token",
                TOKEN,
                "--allow-unsigned",
            ])
            .args(["--tls-cert", arg(&tls.cert), "--tls-key", arg(&tls.key)])
            .env("WASMTWIN_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let https = format!("https://127.0.0.1:{port}");
    let ca = arg(&tls.ca);
    let started = Instant::now();
    while !curl(&["--fail", "--cacert", ca, &format!("{https}/healthz")])
        .status
        .success()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the node never answered over HTTPS"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let bearer = format!("Authorization: Bearer {TOKEN}");
    let twins = curl(&[
        "--fail",
        "--cacert",
        ca,
        "-H",
        &bearer,
        &format!("{https}/v1/twins"),
    ]);
    assert!(
        twins.status.success(),
        "{}",
        String::from_utf8_lossy(&twins.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&twins.stdout).trim(),
        r#"{"twins":[]}"#
    );

    // A client that does not trust the CA is refused; plain HTTP gets no answer.
    let untrusted = curl(&[&format!("{https}/healthz")]);
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
    let plain = curl(&["--fail", &format!("http://127.0.0.1:{port}/healthz")]);
    assert!(!plain.status.success(), "answered over plain HTTP");

    // wasmtwin's own clients trust the CA named by WASMTWIN_CA.
    let get = ["get", "twins", "--host", &https, "--token", TOKEN];
    let trusted = run(WASMTWIN, &get, &[("WASMTWIN_CA", ca)]);
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let without = run(WASMTWIN, &get, &[]);
    assert!(!without.status.success());
    let said = String::from_utf8_lossy(&without.stderr).to_lowercase();
    assert!(
        said.contains("certificate") || said.contains("reaching"),
        "{said}"
    );
}

#[test]
fn a_key_that_does_not_fit_or_a_missing_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let started = run(
        WASMTWIN,
        &[
            "host",
            "--http",
            "127.0.0.1:0",
            "--data",
            arg(dir.path()),
            "--token",
            TOKEN,
            "--allow-unsigned",
            "--tls-cert",
            arg(&cert),
            "--tls-key",
            arg(&dir.path().join("missing.pem")),
        ],
        &[],
    );
    assert!(!started.status.success());
    let said = String::from_utf8_lossy(&started.stderr);
    assert!(
        said.contains("--tls-cert") || said.contains("--tls-key"),
        "{said}"
    );
    let alone = run(
        WASMTWIN,
        &["host", "--tls-cert", arg(&cert), "--token", TOKEN],
        &[],
    );
    assert!(!alone.status.success());
    assert!(String::from_utf8_lossy(&alone.stderr).contains("--tls-key"));
}
