//! A fleet on this machine for the control plane's end-to-end tests and
//! benchmark: Mosquitto, `wasmtwin control`, `wasmtwin host` processes that
//! join it, each reaching the broker through its own fault-injecting proxy,
//! and a simulated device publishing numbered updates straight to the
//! broker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, MqttOptions, QoS};
use serde_json::{Value, json};

use crate::cli::arg;
use crate::faults::FaultProxy;
use crate::node::{Api, Node};
use crate::plugin;
use crate::servers::{Mosquitto, free_port};

/// The token every API of the fleet takes.
pub const TOKEN: &str = "control-plane-token-0123456789";

/// The arguments of a `wasmtwin host` named `name` in `zone` (edge nodes
/// in domain `plant-a`, mec in `metro-net`, cloud in `provider-x`), its
/// API on `http`, reaching the broker on `mqtt_port`, its store in `data`,
/// loading components from the plugins' directory and `components`, and
/// joining the control plane at `control`.
pub fn host_args(
    name: &str,
    zone: &str,
    http: u16,
    mqtt_port: u16,
    data: &Path,
    components: &Path,
    control: &str,
) -> Vec<String> {
    // Each zone's nodes are run by someone else.
    let domain = match zone {
        "edge" => "plant-a",
        "mec" => "metro-net",
        _ => "provider-x",
    };
    [
        "host",
        "--name",
        name,
        "--http",
        &format!("127.0.0.1:{http}"),
        "--mqtt",
        &format!("mqtt://127.0.0.1:{mqtt_port}"),
        "--data",
        arg(data),
        "--token",
        TOKEN,
        "--allow-unsigned",
        "--component-dir",
        arg(plugin("misbehave").parent().unwrap()),
        "--component-dir",
        arg(components),
        "--control",
        control,
        "--zone",
        zone,
        "--domain",
        domain,
        "--heartbeat-ms",
        "300",
    ]
    .map(String::from)
    .to_vec()
}

/// One `wasmtwin host` behind its own proxy to the broker.
pub struct Host {
    /// Its name (`--name`).
    pub name: String,
    zone: String,
    /// The process, while it runs.
    pub node: Option<Node>,
    /// Its link to the broker.
    pub proxy: FaultProxy,
    data: PathBuf,
    /// Its HTTP port.
    pub http: u16,
}

/// The control plane, its nodes and the broker.
pub struct Fleet {
    bin: String,
    /// The control plane's process and API.
    pub control: Node,
    /// The control plane's data directory.
    pub control_data: PathBuf,
    hosts: Vec<Host>,
    /// The broker.
    pub mosquitto: Mosquitto,
    dir: tempfile::TempDir,
    /// Arguments every process gets.
    global: Vec<String>,
}

impl Fleet {
    /// Mosquitto, the control plane and one node per `(name, zone)` (edge
    /// nodes in domain `plant-a`, mec in `metro-net`, cloud in
    /// `provider-x`), all
    /// run from the `wasmtwin` binary `bin`.
    pub fn start(bin: &str, nodes: &[(&str, &str)]) -> Self {
        Self::start_with(bin, nodes, &[])
    }

    /// [`Fleet::start`], with `extra` arguments for `wasmtwin control`.
    pub fn start_with(bin: &str, nodes: &[(&str, &str)], extra: &[&str]) -> Self {
        Self::launch(bin, nodes, extra, Vec::new())
    }

    /// [`Fleet::start`], every process exporting its traces to the OTLP
    /// collector at `otlp`.
    pub fn start_exporting(bin: &str, nodes: &[(&str, &str)], otlp: &str) -> Self {
        Self::launch(bin, nodes, &[], vec!["--otlp-endpoint".into(), otlp.into()])
    }

    /// Starts the fleet; `global` goes to every process.
    fn launch(bin: &str, nodes: &[(&str, &str)], extra: &[&str], global: Vec<String>) -> Self {
        let mosquitto = Mosquitto::start();
        let dir = tempfile::tempdir().unwrap();
        let control_data = dir.path().join("control");
        let http = free_port();
        let args: Vec<String> = [
            "control",
            "--http",
            &format!("127.0.0.1:{http}"),
            "--data",
            arg(&control_data),
            "--token",
            TOKEN,
            "--allow-unsigned",
            "--component-dir",
            arg(plugin("misbehave").parent().unwrap()),
            "--component-dir",
            arg(dir.path()),
            "--unreachable-after-ms",
            "2000",
            "--gone-after-ms",
            "5000",
            "--checkpoint-every-ms",
            "1000",
        ]
        .map(String::from)
        .to_vec()
        .into_iter()
        .chain(extra.iter().map(|a| a.to_string()))
        .chain(global.iter().cloned())
        .collect::<Vec<_>>();
        let control = Node::spawn(bin, &args, http, TOKEN);
        let mut fleet = Self {
            bin: bin.to_string(),
            control,
            control_data,
            hosts: Vec::new(),
            mosquitto,
            dir,
            global,
        };
        for (name, zone) in nodes {
            let host = Host {
                name: name.to_string(),
                zone: zone.to_string(),
                node: None,
                proxy: FaultProxy::plain(fleet.mosquitto.port).expect("starting the proxy"),
                data: fleet.dir.path().join(name),
                http: free_port(),
            };
            fleet.hosts.push(host);
            fleet.boot(name);
        }
        let want = nodes.len();
        fleet.wait(
            |f| {
                f.control.api.json("/v1/nodes").as_array().unwrap().len() == want
                    && f.nodes().iter().all(|n| n["paths"][0]["rttMs"].is_number())
            },
            "every node to join with a measured path",
            30,
        );
        fleet
    }

    /// A scratch directory the control plane and nodes load components
    /// from.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts node `name` (again).
    pub fn boot(&mut self, name: &str) {
        let control = self.control.api.base.clone();
        let dir = self.dir.path().to_path_buf();
        let bin = self.bin.clone();
        let host = self.host_mut(name);
        let mut args = host_args(
            &host.name,
            &host.zone,
            host.http,
            host.proxy.port,
            &host.data,
            &dir,
            &control,
        );
        args.extend(self.global.iter().cloned());
        let host = self.host_mut(name);
        host.node = Some(Node::spawn(&bin, &args, host.http, TOKEN));
    }

    pub fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts.iter_mut().find(|h| h.name == name).unwrap()
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }

    pub fn nodes(&self) -> Vec<Value> {
        self.control
            .api
            .json("/v1/nodes")
            .as_array()
            .unwrap()
            .clone()
    }

    /// Polls `condition` every 200 ms for up to `seconds`.
    pub fn wait(&self, condition: impl Fn(&Self) -> bool, what: &str, seconds: u64) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events:\n{}",
                self.event_lines()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Applies `spec` on the control plane.
    pub fn apply(&self, name: &str, spec: &str) {
        let (status, body) = self.control.api.put(&format!("/v1/twins/{name}"), spec);
        assert!(status == 200 || status == 201, "{status}: {body}");
    }

    /// The control plane's view of twin `name`.
    pub fn twin(&self, name: &str) -> Value {
        self.control.api.json(&format!("/v1/twins/{name}"))
    }

    /// Where twin `name` runs, by its nodes' reports.
    pub fn running_on(&self, name: &str) -> Option<String> {
        let twin = self.twin(name);
        let running = twin["running"].as_array()?;
        (running.len() == 1).then(|| running[0]["node"].as_str().unwrap().to_string())
    }

    /// The entanglement status of twin `name` where it runs.
    pub fn status(&self, name: &str) -> Option<String> {
        self.twin(name)["running"][0]["status"]
            .as_str()
            .map(String::from)
    }

    /// The API of the node twin `name` runs on.
    pub fn api_of(&self, name: &str) -> Api {
        let node = self.running_on(name).expect("the twin runs somewhere");
        Api::new(format!("http://127.0.0.1:{}", self.host(&node).http), TOKEN)
    }

    pub fn events(&self) -> Vec<Value> {
        self.control
            .api
            .json("/v1/events?limit=10000")
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn event_lines(&self) -> String {
        let (_, body) = self.control.api.get("/v1/events?limit=10000");
        let events: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        events
            .iter()
            .map(|e| format!("  {} {} {}", e["seq"], e["kind"], e["summary"]))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The decisions (and notifications) about twin `name` so far.
    pub fn decided(&self, name: &str, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["kind"] == kind && e["twin"] == name)
            .collect()
    }
}

/// A device publishing `{seq, ts_ms, x}` at QoS 1 straight to the broker,
/// at a rate the test can change.
pub struct Device {
    sent: Arc<AtomicU64>,
    period_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    /// Publishes to the broker at `port`, on `topic`, `rate_hz` a second.
    pub fn start(port: u16, topic: &str, rate_hz: f64) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let period_us = Arc::new(AtomicU64::new((1e6 / rate_hz) as u64));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, period, stopping) = (sent.clone(), period_us.clone(), stop.clone());
        let topic = topic.to_string();
        let thread = std::thread::spawn(move || {
            let options = MqttOptions::new(format!("device-{}", free_port()), "127.0.0.1", port);
            let (client, mut connection) = Client::new(options, 1024);
            std::thread::spawn(move || for _ in connection.iter() {});
            let mut next = Instant::now();
            while !stopping.load(Ordering::SeqCst) {
                let seq = count.load(Ordering::SeqCst) + 1;
                let ts_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                let payload = json!({ "seq": seq, "ts_ms": ts_ms, "x": seq }).to_string();
                client
                    .publish(&topic, QoS::AtLeastOnce, false, payload)
                    .unwrap();
                count.store(seq, Ordering::SeqCst);
                next += Duration::from_micros(period.load(Ordering::SeqCst));
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(500));
        });
        Self {
            sent,
            period_us,
            stop,
            thread: Some(thread),
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops publishing: how many messages it published, all told. (Read
    /// before it stops, a count may miss one still being published.)
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.sent()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    pub fn set_rate(&self, rate_hz: f64) {
        self.period_us
            .store((1e6 / rate_hz) as u64, Ordering::SeqCst);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.halt();
    }
}
