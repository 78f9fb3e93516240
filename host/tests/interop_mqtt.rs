//! Interoperability with real servers: `wasmtwin host` against Debian's
//! Mosquitto (plain, and TLS with a password), fed by `mosquitto_pub` and
//! watched by `mosquitto_sub`; and Debian's Prometheus scraping `/metrics`.
//! `.ci/run` installs the packages and runs these with `--ignored`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use wasmtwin_tests::cli::{arg, ok};
use wasmtwin_tests::node::{Node, wait_for};
use wasmtwin_tests::plugin;
use wasmtwin_tests::servers::{Mosquitto, Prometheus, free_port};

const TOKEN: &str = "interop-token-0123456789";
const BIN: &str = env!("CARGO_BIN_EXE_wasmtwin");

fn wasmtwin(args: &[&str]) -> String {
    ok(wasmtwin_tests::cli::run(BIN, args, &[]))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A publisher key and the machine model and JSON adapter signed with it.
struct Signed {
    trust: PathBuf,
    model: PathBuf,
    adapter: PathBuf,
}

fn sign_plugins(dir: &Path) -> Signed {
    let keys = dir.join("keys");
    wasmtwin(&["keygen", "--out", arg(&keys)]);
    let sign = |plugin_name: &str, file: &str| {
        let out = dir.join(file);
        wasmtwin(&[
            "sign",
            arg(&plugin(plugin_name)),
            "--key",
            arg(&keys.join("wasmtwin.key")),
            "--out",
            arg(&out),
        ]);
        out
    };
    Signed {
        trust: keys.join("wasmtwin.pub"),
        model: sign("machine", "machine.wasm"),
        adapter: sign("json-adapter", "json_adapter.wasm"),
    }
}

/// Starts `wasmtwin host` on `broker` with `extra` arguments.
fn host(dir: &Path, signed: &Signed, broker: &str, extra: &[String]) -> Node {
    let http = free_port();
    let mut args: Vec<String> = [
        "host",
        "--http",
        &format!("127.0.0.1:{http}"),
        "--mqtt",
        broker,
        "--data",
        arg(&dir.join("node")),
        "--trust",
        arg(&signed.trust),
        "--token",
        TOKEN,
        "--cache-dir",
        arg(&dir.join("cache")),
    ]
    .map(String::from)
    .to_vec();
    args.extend_from_slice(extra);
    Node::spawn(BIN, &args, http, TOKEN)
}

/// Applies a machine twin `name` listening on `plant/{name}/telemetry`.
fn apply(node: &Node, dir: &Path, signed: &Signed, name: &str, requirements: &str) {
    let spec = format!(
        r#"apiVersion: wasmtwin.dev/v1alpha1
kind: DigitalTwin
metadata:
  name: {name}
spec:
  model:
    ref: {}
  physical:
    topics: [plant/{name}/telemetry]
    commandTopic: plant/{name}/commands
    adapter:
      ref: {}
  requirements: {requirements}
"#,
        signed.model.display(),
        signed.adapter.display()
    );
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, spec).unwrap();
    let out = wasmtwin(&[
        "apply",
        "-f",
        arg(&file),
        "--host",
        &node.api.base,
        "--token",
        TOKEN,
    ]);
    assert!(out.contains("created"), "{out}");
}

/// A `mosquitto_pub` reading one message per line from its standard input.
struct Publisher {
    child: std::process::Child,
}

impl Publisher {
    fn start(broker: &Mosquitto, login: Option<(&str, &str)>, topic: &str) -> Self {
        let child = Command::new("mosquitto_pub")
            .args(broker.client_args(login))
            .args(["-q", "1", "-t", topic, "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting mosquitto_pub (apt-get install mosquitto-clients)");
        Self { child }
    }

    fn send(&mut self, seq: u64, temperature: f64) {
        let line = format!(
            r#"{{"seq": {seq}, "ts_ms": {}, "temperature": {temperature}, "rpm": 1450, "running": true}}"#,
            now_ms()
        );
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "mosquitto_pub failed");
    }
}

#[test]
#[ignore = "needs Debian's mosquitto and mosquitto-clients; run by .ci/run"]
fn mosquitto_feeds_a_twin_carries_its_commands_and_reveals_disentanglement() {
    let broker = Mosquitto::start();
    let dir = broker.dir().to_path_buf();
    let signed = sign_plugins(&dir);
    let node = host(
        &dir,
        &signed,
        &format!("mqtt://127.0.0.1:{}", broker.port),
        &[],
    );
    apply(
        &node,
        &dir,
        &signed,
        "press-1",
        "{expectedRateHz: 20, windowSeconds: 3}",
    );

    // Updates from an independent client, at the declared 20 per second.
    let mut publisher = Publisher::start(&broker, None, "plant/press-1/telemetry");
    for seq in 1..=60 {
        publisher.send(seq, 20.0 + seq as f64 / 10.0);
        std::thread::sleep(Duration::from_millis(50));
    }
    node.api.wait_for_updates("press-1", 60);
    let twin = node.api.json("/v1/twins/press-1");
    assert_eq!(twin["lastSeq"], 60, "{twin}");
    assert_eq!(twin["updatesApplied"], 60, "each once: {twin}");
    assert_eq!(twin["properties"]["temperature"]["value"], 26.0);
    assert_eq!(twin["entanglement"]["status"], "entangled", "{twin}");

    // A command an action produces reaches an independent subscriber.
    let subscriber = Command::new("mosquitto_sub")
        .args(broker.client_args(None))
        .args([
            "-q",
            "1",
            "-t",
            "plant/press-1/commands",
            "-C",
            "1",
            "-W",
            "20",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500)); // let it subscribe
    let (status, body) = node.api.post("/v1/twins/press-1/actions/stop", "");
    assert_eq!(status, 200, "{body}");
    let received = subscriber.wait_with_output().unwrap();
    let command: Value = serde_json::from_slice(&received.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&received.stdout)));
    assert_eq!(command["command"], "stop", "{command}");

    // The device slows to 2 updates/s: the twin says it is no longer
    // entangled, and why.
    for seq in 61..=70 {
        publisher.send(seq, 30.0);
        std::thread::sleep(Duration::from_millis(500));
    }
    publisher.finish();
    let twin = node.api.json("/v1/twins/press-1");
    assert_ne!(twin["entanglement"]["status"], "entangled", "{twin}");
    let reasons = twin["entanglement"]["reasons"].to_string();
    assert!(reasons.contains("reliability"), "{reasons}");
    let (status, body) = node.api.get("/v1/twins/press-1?min_reliability=0.9");
    assert_eq!(status, 412, "{body}");
}

#[test]
#[ignore = "needs Debian's mosquitto, mosquitto-clients and openssl; run by .ci/run"]
fn mosquitto_over_tls_with_a_password() {
    let (user, password) = ("plant-node", "s3cret-broker-password");
    let broker = Mosquitto::start_secured(user, password);
    let dir = broker.dir().to_path_buf();
    let signed = sign_plugins(&dir);
    let password_file = dir.join("mqtt-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let tls = broker.tls.as_ref().unwrap();
    let node = host(
        &dir,
        &signed,
        &format!("mqtts://127.0.0.1:{}", broker.port),
        &[
            "--mqtt-username".into(),
            user.into(),
            "--mqtt-password-file".into(),
            arg(&password_file).into(),
            "--mqtt-ca".into(),
            arg(&tls.ca).into(),
        ],
    );
    apply(&node, &dir, &signed, "press-2", "{}");
    let mut publisher =
        Publisher::start(&broker, Some((user, password)), "plant/press-2/telemetry");
    for seq in 1..=5 {
        publisher.send(seq, 40.0);
    }
    publisher.finish();
    node.api.wait_for_updates("press-2", 5);
    assert_eq!(node.api.json("/v1/twins/press-2")["lastSeq"], 5);
}

#[test]
#[ignore = "needs Debian's prometheus and mosquitto; run by .ci/run"]
fn prometheus_scrapes_the_metrics() {
    let broker = Mosquitto::start();
    let dir = broker.dir().to_path_buf();
    let signed = sign_plugins(&dir);
    let node = host(
        &dir,
        &signed,
        &format!("mqtt://127.0.0.1:{}", broker.port),
        &[],
    );
    apply(&node, &dir, &signed, "press-3", "{}");
    let mut publisher = Publisher::start(&broker, None, "plant/press-3/telemetry");
    for seq in 1..=7 {
        publisher.send(seq, 50.0);
    }
    publisher.finish();
    node.api.wait_for_updates("press-3", 7);

    let target = node.api.base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target);
    let query = |q: &str| -> Value {
        reqwest::blocking::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/query", prometheus.port))
            .query(&[("query", q)])
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null)
    };
    let value = |q: &str| -> Option<String> {
        query(q)["data"]["result"][0]["value"][1]
            .as_str()
            .map(String::from)
    };
    wait_for(
        || value(r#"up{job="wasmtwin"}"#).as_deref() == Some("1"),
        "Prometheus to scrape the node",
    );
    wait_for(
        || value(r#"wasmtwin_twin_updates_total{twin="press-3"}"#).as_deref() == Some("7"),
        "the twin's update counter in Prometheus",
    );
    let buckets = query(r#"wasmtwin_twin_timeliness_seconds_bucket{twin="press-3"}"#);
    assert!(
        buckets["data"]["result"].as_array().map(Vec::len) > Some(5),
        "{buckets}"
    );
}
