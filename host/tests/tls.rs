//! HTTPS on the APIs (`--tls-cert`, `--tls-key`): a node serves its APIs
//! over TLS to clients that trust its CA — curl with `--cacert`, and
//! wasmtwin's own clients with `WASMTWIN_CA` — and to no one else; plain
//! HTTP gets nothing.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use wasmtwin_tests::cli::{arg, run};
use wasmtwin_tests::plugin;
use wasmtwin_tests::servers::{TlsFiles, free_port};

mod common;

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

/// A `wasmtwin host` on `port` serving HTTPS with `tls`'s certificate,
/// its data under `dir`, reaching the broker on `mqtt`, with `extra`
/// arguments.
fn node(dir: &Path, port: u16, mqtt: u16, tls: &TlsFiles, extra: &[&str]) -> Killed {
    Killed(
        Command::new(WASMTWIN)
            .args([
                "host",
                "--http",
                &format!("127.0.0.1:{port}"),
                "--mqtt",
                &format!("mqtt://127.0.0.1:{mqtt}"),
            ])
            .args([
                "--data",
                arg(&dir.join(format!("node-{port}"))),
                "--token",
                TOKEN,
                "--allow-unsigned",
                "--component-dir",
                arg(plugin("misbehave").parent().unwrap()),
            ])
            .args(["--tls-cert", arg(&tls.cert), "--tls-key", arg(&tls.key)])
            .args(["--name", &format!("node-{port}")])
            .args(extra)
            .env("WASMTWIN_LOG", "warn")
            .env("WASMTWIN_CA", &tls.ca)
            .spawn()
            .unwrap(),
    )
}

/// Waits until `https` answers `/healthz` to a client trusting `ca`.
fn wait_for_https(https: &str, ca: &str) {
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
}

#[test]
#[ignore = "needs curl and openssl; run by .ci/run"]
fn the_apis_are_served_over_https_to_clients_that_trust_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::make(dir.path());
    let port = free_port();
    let _node = node(dir.path(), port, 1, &tls, &[]);
    let https = format!("https://127.0.0.1:{port}");
    let ca = arg(&tls.ca);
    wait_for_https(&https, ca);

    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (status, twins) = curl_json(&format!("{https}/v1/twins"), ca, &bearer);
    assert_eq!(status, 200, "{twins}");
    assert_eq!(twins.trim(), r#"{"twins":[]}"#);

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

#[test]
#[ignore = "needs curl and openssl; run by .ci/run"]
fn a_twin_s_state_moves_only_between_callers_with_a_certificate_of_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::make(&dir.path().join("fleet"));
    let outsider = TlsFiles::make(&dir.path().join("outsider"));
    let mqtt = wasmtwin::broker::start(([127, 0, 0, 1], 0).into())
        .expect("the embedded broker")
        .port();
    let peers = ["--tls-client-ca", arg(&tls.ca)];
    let (a, b) = (free_port(), free_port());
    let _a = node(dir.path(), a, mqtt, &tls, &peers);
    let _b = node(dir.path(), b, mqtt, &tls, &peers);
    let (a, b) = (
        format!("https://127.0.0.1:{a}"),
        format!("https://127.0.0.1:{b}"),
    );
    let ca = arg(&tls.ca);
    wait_for_https(&a, ca);
    wait_for_https(&b, ca);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let spec = dir.path().join("t.yaml");
    std::fs::write(&spec, common::spec("t", "good", "")).unwrap();
    let put = |url: &str, file: &Path, extra: &[&str]| curl_put(url, file, ca, &bearer, extra);
    // Management takes a token alone.
    let (status, said) = put(&format!("{a}/v1/twins/t"), &spec, &[]);
    assert!(status == 201 || status == 200, "{status}: {said}");

    // Taking its state out needs a certificate of the CA as well.
    let bundle = dir.path().join("t.bundle");
    let checkpoint = [
        "checkpoint",
        "t",
        "--host",
        &a,
        "--token",
        TOKEN,
        "-o",
        arg(&bundle),
    ];
    let refused = run(WASMTWIN, &checkpoint, &[("WASMTWIN_CA", ca)]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("403")
            && said.contains("needs a client certificate signed by this server's --tls-client-ca"),
        "{said}"
    );
    let certified = [
        ("WASMTWIN_CA", ca),
        ("WASMTWIN_CLIENT_CERT", arg(&tls.cert)),
        ("WASMTWIN_CLIENT_KEY", arg(&tls.key)),
    ];
    let taken = run(WASMTWIN, &checkpoint, &certified);
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    assert!(std::fs::metadata(&bundle).unwrap().len() > 0);
    // So does the snapshot a migration sends ahead.
    let (status, said) = curl_json(&format!("{a}/v1/twins/t/base"), ca, &bearer);
    assert!(
        status == 403 && said.contains("--tls-client-ca"),
        "{status}: {said}"
    );

    // Pushing it into another node: a token alone gets 403, naming why; a
    // certificate of another CA does not get through the handshake.
    let restore = format!("{b}/v1/twins/t/checkpoint");
    let (status, said) = put(&restore, &bundle, &[]);
    assert!(
        status == 403 && said.contains("--tls-client-ca"),
        "{status}: {said}"
    );
    let (status, said) = put(
        &restore,
        &bundle,
        &["--cert", arg(&outsider.cert), "--key", arg(&outsider.key)],
    );
    assert_eq!(status, 0, "a foreign certificate got through: {said}");
    let (status, _) = curl_json(&format!("{b}/v1/twins"), ca, &bearer);
    assert_eq!(status, 200, "reads take a token alone");
    let (status, _) = curl_json(&format!("{b}/v1/twins/t"), ca, &bearer);
    assert_eq!(status, 404, "nothing was pushed into the node");

    // Between callers that present the CA's certificate, the twin moves.
    let migrate = ["migrate", "t", "--from", &a, "--to", &b, "--token", TOKEN];
    let moved = run(WASMTWIN, &migrate, &certified);
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let (status, twin) = curl_json(&format!("{b}/v1/twins/t"), ca, &bearer);
    assert_eq!(status, 200, "{twin}");
}

/// `GET url` with a token: the status (0 without an HTTP answer) and the
/// body.
fn curl_json(url: &str, ca: &str, bearer: &str) -> (u16, String) {
    answered(curl(&[
        "--cacert",
        ca,
        "-H",
        bearer,
        "-w",
        "\\n%{http_code}",
        url,
    ]))
}

/// `PUT url` with `file` as the body, a token and `extra` curl arguments:
/// the status (0 without an HTTP answer) and the body.
fn curl_put(url: &str, file: &Path, ca: &str, bearer: &str, extra: &[&str]) -> (u16, String) {
    let data = format!("@{}", arg(file));
    let mut args = vec![
        "--cacert",
        ca,
        "-H",
        bearer,
        "-X",
        "PUT",
        "-w",
        "\\n%{http_code}",
    ];
    args.extend(["--data-binary", &data]);
    args.extend(extra);
    args.push(url);
    answered(curl(&args))
}

/// The status curl's `-w '\\n%{http_code}'` ended its output with, and the
/// body before it.
fn answered(out: Output) -> (u16, String) {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
#[ignore = "needs curl and openssl; run by .ci/run"]
fn only_a_node_with_a_certificate_of_the_ca_joins_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::make(&dir.path().join("fleet"));
    let mqtt = wasmtwin::broker::start(([127, 0, 0, 1], 0).into())
        .expect("the embedded broker")
        .port();
    let port = free_port();
    let control = format!("https://127.0.0.1:{port}");
    let _control = Killed(
        Command::new(WASMTWIN)
            .args(["control", "--http", &format!("127.0.0.1:{port}")])
            .args(["--data", arg(&dir.path().join("control")), "--token", TOKEN])
            .args(["--allow-unsigned", "--component-dir"])
            .arg(plugin("misbehave").parent().unwrap())
            .args(["--tls-cert", arg(&tls.cert), "--tls-key", arg(&tls.key)])
            .args(["--tls-client-ca", arg(&tls.ca)])
            .env("WASMTWIN_LOG", "warn")
            .env("WASMTWIN_CA", &tls.ca)
            .spawn()
            .unwrap(),
    );
    let ca = arg(&tls.ca);
    wait_for_https(&control, ca);
    let joining = [
        "--control",
        &control,
        "--zone",
        "edge",
        "--heartbeat-ms",
        "300",
    ];
    // A node with the CA's certificate, and one with none (its token is
    // right, and it trusts the control plane's certificate).
    let certified = free_port();
    let _certified = node(dir.path(), certified, mqtt, &tls, &joining);
    let stranger = free_port();
    let _stranger = Killed(
        Command::new(WASMTWIN)
            .args(["host", "--http", &format!("127.0.0.1:{stranger}")])
            .args(["--mqtt", &format!("mqtt://127.0.0.1:{mqtt}")])
            .args(["--name", "stranger", "--token", TOKEN, "--allow-unsigned"])
            .args(["--data", arg(&dir.path().join("stranger"))])
            .args(joining)
            .env("WASMTWIN_LOG", "warn")
            .env("WASMTWIN_CA", &tls.ca)
            .spawn()
            .unwrap(),
    );
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let names = || {
        let (_, body) = curl_json(&format!("{control}/v1/nodes"), ca, &bearer);
        let nodes: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        nodes
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n["name"].as_str().map(String::from))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let started = Instant::now();
    while names().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no node joined"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Ten of the stranger's heartbeats later, it is still not a node.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(names(), vec![format!("node-{certified}")]);

    // The control plane calls the node over HTTPS (its advertised URL says
    // so) and places a twin there.
    let spec = dir.path().join("t.yaml");
    std::fs::write(&spec, common::spec("t", "good", "")).unwrap();
    let (status, said) = curl_put(&format!("{control}/v1/twins/t"), &spec, ca, &bearer, &[]);
    assert!(status == 201 || status == 200, "{status}: {said}");
    let node = format!("https://127.0.0.1:{certified}");
    let started = Instant::now();
    while curl_json(&format!("{node}/v1/twins/t"), ca, &bearer).0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the twin was not placed on the node"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
