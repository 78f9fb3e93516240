//! What the node tests share: an MQTT broker in the test process (the
//! embedded one `up` uses) and a `wasmtwin host` running the unsigned test
//! plugins, fed by publishing to it. Each test file uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};
use wasmtwin_tests::cli::arg;
use wasmtwin_tests::faults::FaultProxy;
use wasmtwin_tests::node::{Api, Node};
use wasmtwin_tests::plugin;
use wasmtwin_tests::servers::free_port;

pub const TOKEN: &str = "defects-token-0123456789abcdef";

/// A broker and a `wasmtwin host` running unsigned test plugins.
pub struct Site {
    pub node: Node,
    pub mqtt: u16,
    /// Where the node reaches the broker: `mqtt`, or a proxy's port.
    node_mqtt: u16,
    pub data: PathBuf,
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Site {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_under(&[], extra)
    }

    /// [`Site::start`], the node run by `prefix`: a command that runs the
    /// rest of its arguments (`prlimit …`).
    pub fn start_under(prefix: &[&str], extra: &[&str]) -> Self {
        Self::start_via(prefix, extra, |broker| broker)
    }

    /// [`Site::start`], the node reaching the broker through a
    /// fault-injecting proxy (the test's own messages go straight to it).
    pub fn start_behind_proxy(extra: &[&str]) -> (Self, FaultProxy) {
        let mut proxy = None;
        let site = Self::start_via(&[], extra, |broker| {
            let started = FaultProxy::plain(broker).expect("starting the proxy");
            let port = started.port;
            proxy = Some(started);
            port
        });
        (site, proxy.expect("the proxy"))
    }

    /// Starts the broker, then the node on the broker port that `route`
    /// makes of the broker's.
    fn start_via(prefix: &[&str], extra: &[&str], route: impl FnOnce(u16) -> u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mqtt = wasmtwin::broker::start(([127, 0, 0, 1], 0).into())
            .expect("the embedded broker")
            .port();
        let data = dir.path().to_path_buf();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let node_mqtt = route(mqtt);
        let node = host_under(prefix, &data, node_mqtt, &extra);
        Self {
            node,
            mqtt,
            node_mqtt,
            data,
            extra,
            _dir: dir,
        }
    }

    /// Kills the node and starts it again on the same data.
    pub fn restart(&mut self) {
        let extra = self.extra.clone();
        self.restart_with(&extra);
    }

    /// Kills the node and starts it again on the same data, with `extra`
    /// arguments from now on.
    pub fn restart_with(&mut self, extra: &[String]) {
        self.restart_under(&[], extra);
    }

    /// [`Site::restart_with`], the node run by `prefix` (see
    /// [`Site::start_under`]).
    pub fn restart_under(&mut self, prefix: &[&str], extra: &[String]) {
        let _ = self.node.child.kill();
        let _ = self.node.child.wait();
        self.extra = extra.to_vec();
        self.node = host_under(prefix, &self.data, self.node_mqtt, &self.extra);
    }

    /// Applies a spec over the API: status and body.
    pub fn apply(&self, name: &str, spec: &str) -> (u16, String) {
        self.node.api.put(&format!("/v1/twins/{name}"), spec)
    }

    pub fn twin(&self, name: &str) -> Value {
        self.node.api.json(&format!("/v1/twins/{name}"))
    }

    /// Publishes `payloads` on `topic` at QoS 1 and waits for the broker's
    /// acknowledgements.
    pub fn publish(&self, topic: &str, payloads: &[Vec<u8>]) {
        publish(self.mqtt, topic, payloads);
    }
}

/// Publishes `payloads` on `topic` at QoS 1 to the broker at `port` and
/// waits for its acknowledgements.
pub fn publish(port: u16, topic: &str, payloads: &[Vec<u8>]) {
    let mut options = MqttOptions::new(format!("pub-{}", free_port()), "127.0.0.1", port);
    options.set_max_packet_size(1 << 21, 1 << 21);
    // The client's queue takes them all before its connection is driven.
    let (client, mut connection) = Client::new(options, payloads.len().max(1));
    for payload in payloads {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload.clone())
            .unwrap();
    }
    let mut acked = 0;
    for event in connection.iter() {
        if let Ok(Event::Incoming(Incoming::PubAck(_))) = event {
            acked += 1;
            if acked == payloads.len() {
                break;
            }
        }
        assert!(event.is_ok(), "publishing: {event:?}");
    }
    let _ = client.disconnect();
}

pub fn host(data: &Path, mqtt: u16, extra: &[String]) -> Node {
    host_under(&[], data, mqtt, extra)
}

/// [`host`], run by `prefix` (see [`Site::start_under`]).
pub fn host_under(prefix: &[&str], data: &Path, mqtt: u16, extra: &[String]) -> Node {
    let http = free_port();
    let mut args: Vec<String> = [
        "host",
        "--http",
        &format!("127.0.0.1:{http}"),
        "--mqtt",
        &format!("mqtt://127.0.0.1:{mqtt}"),
        "--data",
        arg(&data.join("node")),
        "--cache-dir",
        arg(&data.join("cache")),
        "--allow-unsigned",
        "--component-dir",
        arg(plugin("misbehave")
            .parent()
            .expect("the plugins' directory")),
        "--component-dir",
        arg(data),
    ]
    .map(String::from)
    .to_vec();
    // A token file replaces the one token.
    if !extra.iter().any(|a| a == "--tokens") {
        args.extend(["--token".to_string(), TOKEN.to_string()]);
    }
    args.extend(extra.iter().cloned());
    let bin = env!("CARGO_BIN_EXE_wasmtwin");
    match prefix.split_first() {
        None => Node::spawn(bin, &args, http, TOKEN),
        Some((runner, rest)) => {
            let mut all: Vec<String> = rest.iter().map(|a| a.to_string()).collect();
            all.push(bin.to_string());
            all.extend(args);
            Node::spawn(runner, &all, http, TOKEN)
        }
    }
}

/// A spec of twin `name` running the `misbehave` model in `mode`, fed from
/// `dev/NAME`; `extra` is YAML appended under `spec:`.
pub fn spec(name: &str, mode: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: wasmtwin.dev/v1alpha1
kind: DigitalTwin
metadata:
  name: {name}
spec:
  model:
    ref: {}
    config: {{mode: {mode}}}
  physical:
    topics: [dev/{name}]
    adapter:
      ref: {}
{extra}"#,
        arg(&plugin("misbehave")),
        arg(&plugin("json-adapter")),
    )
}

/// A spec of twin `name` running the `machine` model, fed from `dev/NAME`.
pub fn machine_spec(name: &str) -> String {
    spec(name, "good", "")
        .replace(arg(&plugin("misbehave")), arg(&plugin("machine")))
        .replace("config: {mode: good}", "config: {}")
}

/// The value of a sample (`name`, labels included) in a node's metrics.
pub fn sample(api: &Api, name: &str) -> Option<f64> {
    let (status, text) = api.get("/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The value of an unlabelled sample in a node's metrics.
pub fn metric_of(api: &Api, name: &str) -> f64 {
    sample(api, name).unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// A JSON telemetry message.
pub fn message(seq: u64, value: Value) -> Vec<u8> {
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    serde_json::to_vec(&json!({ "seq": seq, "ts_ms": ts_ms, "x": value })).unwrap()
}

pub fn created(site: &Site, name: &str, spec: &str) {
    let (status, body) = site.apply(name, spec);
    assert_eq!(status, 200, "{body}");
}
