//! Regressions of the defects found by trying a node as a new user would
//! and attacking it: each test is named after its defect and failed before
//! the fix. The node runs as a `wasmtwin host` process fed by an MQTT broker
//! in this process (the embedded one `up` uses).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};
use wasmtwin_tests::cli::arg;
use wasmtwin_tests::node::{Node, wait_for};
use wasmtwin_tests::plugin;
use wasmtwin_tests::servers::free_port;

const TOKEN: &str = "defects-token-0123456789abcdef";

/// A broker and a `wasmtwin host` running unsigned test plugins.
struct Site {
    node: Node,
    mqtt: u16,
    data: PathBuf,
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Site {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mqtt = free_port();
        let listen: SocketAddr = format!("127.0.0.1:{mqtt}").parse().unwrap();
        wasmtwin::broker::start(listen).expect("the embedded broker");
        let data = dir.path().to_path_buf();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let node = host(&data, mqtt, &extra);
        Self {
            node,
            mqtt,
            data,
            extra,
            _dir: dir,
        }
    }

    /// Kills the node and starts it again on the same data.
    fn restart(&mut self) {
        let _ = self.node.child.kill();
        let _ = self.node.child.wait();
        self.node = host(&self.data, self.mqtt, &self.extra);
    }

    /// Applies a spec over the API: status and body.
    fn apply(&self, name: &str, spec: &str) -> (u16, String) {
        self.node.api.put(&format!("/v1/twins/{name}"), spec)
    }

    fn twin(&self, name: &str) -> Value {
        self.node.api.json(&format!("/v1/twins/{name}"))
    }

    /// Publishes `payloads` on `topic` at QoS 1 and waits for the broker's
    /// acknowledgements.
    fn publish(&self, topic: &str, payloads: &[Vec<u8>]) {
        let mut options = MqttOptions::new(format!("pub-{}", free_port()), "127.0.0.1", self.mqtt);
        options.set_max_packet_size(1 << 21, 1 << 21);
        let (client, mut connection) = Client::new(options, 64);
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
}

fn host(data: &Path, mqtt: u16, extra: &[String]) -> Node {
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
        "--token",
        TOKEN,
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().cloned());
    Node::spawn(env!("CARGO_BIN_EXE_wasmtwin"), &args, http, TOKEN)
}

/// A spec of twin `name` running the `misbehave` model in `mode`, fed from
/// `dev/NAME`; `extra` is YAML appended under `spec:`.
fn spec(name: &str, mode: &str, extra: &str) -> String {
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
fn machine_spec(name: &str) -> String {
    spec(name, "good", "")
        .replace(arg(&plugin("misbehave")), arg(&plugin("machine")))
        .replace("config: {mode: good}", "config: {}")
}

/// A JSON telemetry message.
fn message(seq: u64, value: Value) -> Vec<u8> {
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    serde_json::to_vec(&json!({ "seq": seq, "ts_ms": ts_ms, "x": value })).unwrap()
}

fn created(site: &Site, name: &str, spec: &str) {
    let (status, body) = site.apply(name, spec);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn defect_01_a_guest_that_panics_on_a_node_is_reported_and_its_twin_goes_on() {
    let site = Site::start(&[]);
    created(&site, "fragile", &spec("fragile", "fragile", ""));
    site.publish(
        "dev/fragile",
        &[
            message(1, json!(1.0)),
            message(2, json!("not a number")),
            message(3, json!(3.0)),
        ],
    );
    site.node.api.wait_for_updates("fragile", 2);
    wait_for(
        || site.twin("fragile")["lastSeq"] == 3,
        "the twin to apply the message after the panic",
    );
    let twin = site.twin("fragile");
    assert_eq!(twin["updatesApplied"], 2, "{twin}");
    assert_eq!(twin["properties"]["last_value"]["value"], 3.0, "{twin}");
    assert!(twin["guestErrors"].as_u64() >= Some(1), "{twin}");
    let error = twin["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("fragile") && error.contains("trapped") && error.contains("panicked"),
        "{error}"
    );
    // The worker is alive: checkpoints and actions are served.
    let (status, body) = site.node.api.get("/v1/twins/fragile/checkpoint");
    assert_eq!(status, 200, "{body}");
    let (status, body) = site.node.api.post("/v1/twins/fragile/actions/anything", "");
    assert_ne!(status, 429, "{body}");
}

#[test]
fn defect_02_a_message_over_the_payload_limit_is_dropped_and_the_twin_goes_on() {
    let site = Site::start(&[]);
    let limited =
        spec("big", "fragile", "").replace("  physical:\n", "  physical:\n    maxPayload: 1KiB\n");
    created(&site, "big", &limited);
    let oversized = message(2, json!("x".repeat(4096)));
    site.publish(
        "dev/big",
        &[message(1, json!(1.0)), oversized, message(3, json!(3.0))],
    );
    wait_for(
        || site.twin("big")["lastSeq"] == 3,
        "the message after the oversized one",
    );
    let twin = site.twin("big");
    assert_eq!(twin["updatesApplied"], 2, "{twin}");
    let error = twin["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("maxPayload"), "{error}");
    let (_, metrics) = site.node.api.get("/metrics");
    assert!(
        metrics.contains("wasmtwin_twin_oversized_messages_total{twin=\"big\"} 1"),
        "{metrics}"
    );
    // A spec may not ask for more than the node allows.
    let greedy = limited.replace("maxPayload: 1KiB", "maxPayload: 1GiB");
    let (status, body) = site.apply("big", &greedy);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("spec.physical.maxPayload") && body.contains("--max-payload"));
}

#[test]
fn defect_03_concurrent_applies_of_one_new_name_make_one_twin() {
    let site = Site::start(&[]);
    let text = spec("race", "good", "");
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| site.apply("race", &text)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let results: Vec<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            let body: Value = serde_json::from_str(body).unwrap();
            body["result"].as_str().unwrap().to_string()
        })
        .collect();
    let created = results.iter().filter(|r| *r == "created").count();
    let unchanged = results.iter().filter(|r| *r == "unchanged").count();
    assert_eq!((created, unchanged), (1, 5), "{results:?}");
    site.publish("dev/race", &[message(1, json!(1))]);
    site.node.api.wait_for_updates("race", 1);
    let (status, body) = site.node.api.delete("/v1/twins/race");
    assert_eq!(status, 204, "{body}");
    assert_eq!(site.node.api.json("/v1/twins")["twins"], json!([]));
}

#[test]
fn defect_04_node_ceilings_bound_every_twin_and_a_deleted_twin_stays_deleted() {
    let mut site = Site::start(&[
        "--max-deadline-ms",
        "8000",
        "--max-fuel-per-update",
        "1000000000000",
    ]);
    // Asking for more than the node allows is refused, with every excess.
    let greedy = spec(
        "greedy",
        "loop",
        "  resources:\n    fuelPerUpdate: 18446744073709551615\n    deadlineMs: 18446744073709551615\n",
    );
    let (status, body) = site.apply("greedy", &greedy);
    assert_eq!(status, 422, "{body}");
    for expected in [
        "spec.resources.fuelPerUpdate",
        "--max-fuel-per-update",
        "spec.resources.deadlineMs",
        "--max-deadline-ms",
    ] {
        assert!(body.contains(expected), "{expected}: {body}");
    }
    assert_eq!(site.node.api.json("/v1/twins")["twins"], json!([]));

    // Two twins that loop until their deadline on every message, on a node
    // with one worker thread per core, and a healthy neighbour.
    let looping = "  resources:\n    fuelPerUpdate: 1000000000000\n    deadlineMs: 8000\n";
    for name in ["loop-a", "loop-b"] {
        created(&site, name, &spec(name, "loop", looping));
        let messages: Vec<Vec<u8>> = (1..=4).map(|seq| message(seq, json!(seq))).collect();
        site.publish(&format!("dev/{name}"), &messages);
    }
    created(&site, "calm", &spec("calm", "good", ""));
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    site.publish("dev/calm", &[message(1, json!(1))]);
    site.node.api.wait_for_updates("calm", 1);
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "the neighbour waited {:?} behind the looping twins",
        sent.elapsed()
    );

    // Deleting a twin in the middle of a call completes promptly.
    let asked = Instant::now();
    let (status, body) = site.node.api.delete("/v1/twins/loop-a");
    assert_eq!(status, 204, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(6),
        "delete took {:?}",
        asked.elapsed()
    );
    site.restart();
    let names: Vec<Value> = site.node.api.json("/v1/twins")["twins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, [json!("calm"), json!("loop-b")]);
}

#[test]
fn defect_09_a_bundle_of_another_twin_is_refused_before_anything_changes() {
    let site = Site::start(&[]);
    created(&site, "cr", &spec("cr", "good", ""));
    site.publish("dev/cr", &[message(1, json!(1)), message(2, json!(2))]);
    site.node.api.wait_for_updates("cr", 2);
    let bundle = site
        .node
        .api
        .http
        .get(format!("{}/v1/twins/cr/checkpoint", site.node.api.base))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let answer = site
        .node
        .api
        .http
        .put(format!(
            "{}/v1/twins/other/checkpoint?replace=true",
            site.node.api.base
        ))
        .bearer_auth(TOKEN)
        .body(bundle)
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 422);
    let body = answer.text().unwrap();
    assert!(body.contains("not `other`"), "{body}");
    let names = site.node.api.json("/v1/twins");
    assert_eq!(names["twins"].as_array().unwrap().len(), 1, "{names}");
    assert_eq!(site.twin("cr")["updatesApplied"], 2);
}

#[test]
fn defect_12_a_spec_that_would_discard_a_twins_state_needs_replace() {
    let site = Site::start(&[]);
    created(&site, "kept", &spec("kept", "good", ""));
    site.publish("dev/kept", &[message(1, json!(1)), message(2, json!(2))]);
    site.node.api.wait_for_updates("kept", 2);
    // The same model at another path: the spec's model differs.
    let copy = site.data.join("misbehave-copy.wasm");
    std::fs::copy(plugin("misbehave"), &copy).unwrap();
    let other = spec("kept", "good", "").replace(arg(&plugin("misbehave")), arg(&copy));
    let (status, body) = site.apply("kept", &other);
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("spec.model.ref") && body.contains("replace"),
        "{body}"
    );
    assert_eq!(site.twin("kept")["updatesApplied"], 2, "nothing changed");
    let (status, body) = site.node.api.put("/v1/twins/kept?replace=true", &other);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("replaced"), "{body}");
    assert_eq!(site.twin("kept")["updatesApplied"], 0);
}

#[test]
fn defect_11_a_device_that_restarts_its_count_is_recognised_not_silenced() {
    let site = Site::start(&[]);
    created(&site, "counter", &spec("counter", "good", ""));
    let at = |seq: u64, ts_ms: u64| {
        serde_json::to_vec(&json!({ "seq": seq, "ts_ms": ts_ms, "x": seq })).unwrap()
    };
    let t0 = 1_900_000_000_000u64;
    site.publish(
        "dev/counter",
        &[
            at(1, t0),
            at(2, t0 + 1),
            at(u64::MAX, t0 + 2),
            // A redelivery of an applied message: dropped.
            at(2, t0 + 1),
            // Numbered lower but produced later: the device restarted.
            at(3, t0 + 3),
            at(4, t0 + 4),
        ],
    );
    wait_for(
        || site.twin("counter")["lastSeq"] == 4,
        "the updates after the restart",
    );
    let twin = site.twin("counter");
    assert_eq!(twin["updatesApplied"], 5, "{twin}");
    let reasons = twin["entanglement"]["reasons"].to_string();
    assert!(reasons.contains("restarted its sequence numbers"), "{twin}");
    let (_, metrics) = site.node.api.get("/metrics");
    assert!(
        metrics.contains("wasmtwin_twin_sequence_restarts_total{twin=\"counter\"} 1"),
        "{metrics}"
    );
}

#[test]
fn defect_16_an_action_changes_the_twins_state_at_once_and_durably() {
    let mut site = Site::start(&[]);
    created(&site, "motor", &machine_spec("motor"));
    let hot = |seq: u64, t: f64| {
        serde_json::to_vec(&json!({ "seq": seq, "ts_ms": seq, "temperature": t })).unwrap()
    };
    site.publish("dev/motor", &[hot(1, 95.0)]);
    wait_for(
        || site.twin("motor")["properties"]["alarms"]["value"] == 1,
        "the alarm count",
    );
    let (status, body) = site.node.api.post("/v1/twins/motor/actions/reset", "");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"], json!({"cleared": 1}), "{answer}");
    assert_eq!(answer["changes"], json!({"alarms": 0}), "{answer}");
    // Applied at once, not at the next update…
    assert_eq!(site.twin("motor")["properties"]["alarms"]["value"], 0);
    // …and durable: a restarted node has it.
    site.restart();
    assert_eq!(site.twin("motor")["properties"]["alarms"]["value"], 0);
}
