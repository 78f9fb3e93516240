//! `wasmtwin up` end to end: embedded broker, node, signed demo twin and
//! simulated motor, driven through the HTTP APIs and `wasmtwin apply`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wasmtwin_tests::cli::{arg, ok};
use wasmtwin_tests::node::{Api, Node, wait_for};
use wasmtwin_tests::plugin;
use wasmtwin_tests::servers::free_port;

const TOKEN: &str = "test-token-0123456789abcdef";

/// `wasmtwin up` on free ports, with its data in `data`.
struct Up {
    node: Node,
    mqtt: u16,
}

impl std::ops::Deref for Up {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.node.api
    }
}

impl Up {
    fn start(data: &Path) -> Self {
        Self::start_on(data, free_port(), free_port(), 20)
    }

    fn start_on(data: &Path, http_port: u16, mqtt: u16, rate: u32) -> Self {
        Self::start_with(data, http_port, mqtt, rate, &[])
    }

    fn start_with(data: &Path, http_port: u16, mqtt: u16, rate: u32, extra: &[&str]) -> Self {
        // Builds the plugins `up` needs.
        let plugins = plugin("machine").parent().unwrap().to_path_buf();
        let args = [
            "up",
            "--token",
            TOKEN,
            "--rate",
            &rate.to_string(),
            "--data",
            arg(data),
            "--plugins",
            arg(&plugins),
            "--http",
            &format!("127.0.0.1:{http_port}"),
            "--mqtt",
            &format!("127.0.0.1:{mqtt}"),
            "--cloud-http",
            &format!("127.0.0.1:{}", free_port()),
            "--control-http",
            &format!("127.0.0.1:{}", free_port()),
            "--cache-dir",
            arg(&data.join("cache")),
        ]
        .map(String::from);
        let args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        let node = Node::spawn(env!("CARGO_BIN_EXE_wasmtwin"), &args, http_port, TOKEN);
        // The control plane places the demo twin once the nodes have
        // joined: on the edge node, whose API this is.
        wait_for(
            || node.api.get("/v1/twins/motor-1").0 == 200,
            "the control plane to place the demo twin on the edge node",
        );
        Self { node, mqtt }
    }

    fn wait_for(&self, condition: impl FnMut() -> bool, what: &str) {
        wait_for(condition, what);
    }

    /// Stops the motor by the twin's action, which its adapter encodes
    /// as a command; waits until the motor's telemetry says it stopped.
    fn stop_motor(&self) {
        let stop = self
            .http
            .post(format!("{}/v1/twins/motor-1/actions/stop", self.base))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        assert_eq!(stop.status().as_u16(), 200);
        self.wait_for(
            || self.json("/v1/twins/motor-1")["properties"]["running"]["value"] == false,
            "the motor to stop",
        );
    }

    /// The edge node's metrics.
    fn metrics(&self) -> String {
        reqwest::blocking::get(format!("{}/metrics", self.base))
            .unwrap()
            .text()
            .unwrap()
    }

    /// `wasmtwin apply` of `text` (written to a file in `dir`) to the edge
    /// node.
    fn apply(&self, dir: &Path, text: &str) -> std::process::Output {
        let file = dir.join("applied.yaml");
        std::fs::write(&file, text).unwrap();
        wasmtwin_tests::cli::run(
            env!("CARGO_BIN_EXE_wasmtwin"),
            &[
                "apply",
                "-f",
                arg(&file),
                "--host",
                &self.base,
                "--token",
                TOKEN,
            ],
            &[],
        )
    }
}

/// A second motor's spec, of `up`'s signed components in `data`, its model
/// configured with `config`.
fn motor_2(data: &Path, mqtt: u16, config: &str) -> String {
    let components = data.join("components");
    format!(
        r#"apiVersion: wasmtwin.dev/v1alpha1
kind: DigitalTwin
metadata:
  name: motor-2
spec:
  model:
    ref: {}
    config: {config}
  physical:
    broker: mqtt://127.0.0.1:{mqtt}
    topics: [plant/motor-2/telemetry]
    adapter:
      ref: {}
"#,
        components.join("machine.wasm").display(),
        components.join("json_adapter.wasm").display()
    )
}

#[test]
fn up_serves_a_demo_twin_that_follows_the_simulated_motor() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());

    // The twin follows the motor.
    up.wait_for(
        || up.json("/v1/twins/motor-1")["updatesApplied"].as_u64() >= Some(20),
        "20 updates",
    );
    let twin = up.json("/v1/twins/motor-1");
    for property in ["temperature", "vibration", "rpm", "running"] {
        assert!(
            twin["properties"][property]["value"].is_number()
                || twin["properties"][property]["value"].is_boolean(),
            "{property}: {twin}"
        );
    }
    assert_eq!(twin["properties"]["running"]["value"], true);
    assert_eq!(twin["model"]["name"], "machine");
    let applied = twin["updatesApplied"].as_u64().unwrap();
    assert_eq!(
        twin["lastSeq"].as_u64(),
        Some(applied),
        "every message applied once, in order"
    );
    assert!(
        twin["entanglement"]["timelinessMs"]["p99"].is_number(),
        "{twin}"
    );

    // No token, wrong token: 401.
    let bare = up.http.get(format!("{}/v1/twins", up.base)).send().unwrap();
    assert_eq!(bare.status().as_u16(), 401);
    let wrong = up
        .http
        .get(format!("{}/v1/twins", up.base))
        .bearer_auth("x".repeat(26))
        .send()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    // An action becomes a device command, which the motor obeys.
    up.stop_motor();
    let (status, body) = up.get("/v1/twins/motor-1/actions/fly");
    assert_eq!(status, 405, "{body}");

    // The README's `get` commands, options after the subcommand.
    let get = |args: &[&str]| {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--host", &up.base, "--token", TOKEN]);
        wasmtwin_tests::cli::run(env!("CARGO_BIN_EXE_wasmtwin"), &all, &[])
    };
    assert!(ok(get(&["twins"])).contains("motor-1"));
    assert!(ok(get(&["twin", "motor-1"])).contains("entanglement"));
    let err = wasmtwin_tests::cli::refused(get(&["twin"]));
    assert!(err.contains("get twin NAME"), "{err}");

    // A read whose requirement the twin cannot meet says so.
    let (status, body) = up.get("/v1/twins/motor-1?min_reliability=1.5");
    assert_eq!(status, 412, "{body}");
    assert!(body.contains("below the 1.5 asked for"), "{body}");
    assert_eq!(up.get("/v1/twins/nope").0, 404);

    // Metrics.
    let metrics = up.metrics();
    for name in [
        "wasmtwin_twin_updates_total{twin=\"motor-1\"}",
        "wasmtwin_twin_timeliness_seconds_bucket",
        "wasmtwin_twin_reliability_ratio{twin=\"motor-1\"}",
        "wasmtwin_twin_entangled{twin=\"motor-1\"}",
        "wasmtwin_twin_fuel_consumed_total{twin=\"motor-1\"}",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
}

/// `up --broker-session node`: the edge node's twins share one session
/// with the embedded broker, which carries the motor's telemetry in and
/// the twin's commands out.
#[test]
fn up_with_a_session_per_node_follows_the_motor_and_commands_it() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start_with(
        dir.path(),
        free_port(),
        free_port(),
        20,
        &["--broker-session", "node"],
    );
    up.wait_for(
        || up.json("/v1/twins/motor-1")["updatesApplied"].as_u64() >= Some(20),
        "20 updates",
    );
    let twin = up.json("/v1/twins/motor-1");
    assert_eq!(twin["lastSeq"], twin["updatesApplied"], "{twin}");
    // A second twin shares the edge node's session (with a session each,
    // there would be two).
    assert!(ok(up.apply(dir.path(), &motor_2(dir.path(), up.mqtt, "{}"))).contains("\"created\""));
    let metrics = up.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l == "wasmtwin_node_broker_sessions_connected 1"),
        "the edge node's two twins hold one session:\n{metrics}"
    );
    up.stop_motor();
}

#[test]
fn apply_creates_reconfigures_and_refuses_bad_specs() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    let components = dir.path().join("components");
    let spec = |config: &str| motor_2(dir.path(), up.mqtt, config);
    let apply = |text: &str| up.apply(dir.path(), text);
    assert!(ok(apply(&spec("{}"))).contains("\"created\""));
    assert!(ok(apply(&spec("{}"))).contains("\"unchanged\""));
    assert!(ok(apply(&spec("{temperature_alarm: 80}"))).contains("\"reconfigured\""));
    // The model refuses a bad configuration; the twin keeps running.
    let out = apply(&spec("{vibration_warning: 9, vibration_alarm: 1}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vibration_warning"));

    // Every problem of a bad spec, with its path, before the node is asked.
    let out = apply(
        &spec("{}")
            .replace("motor-2", "Motor 2")
            .replace("plant/Motor 2/telemetry", "a/#/b"),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("metadata.name") && err.contains("spec.physical.topics[0]"),
        "{err}"
    );

    // An unsigned model is refused by the node, which keeps what it had.
    let unsigned_model = components.join("unsigned-machine.wasm");
    std::fs::copy(plugin("machine"), &unsigned_model).unwrap();
    let unsigned = spec("{}").replace(
        &components.join("machine.wasm").display().to_string(),
        arg(&unsigned_model),
    );
    let out = apply(&unsigned.replace("config: {}", "config: {max_rpm: 100}"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsigned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = up.json("/v1/twins");
    assert_eq!(names["twins"].as_array().unwrap().len(), 2, "{names}");

    // The spec as the node runs it.
    let running = up.json("/v1/twins/motor-2/spec");
    assert_eq!(running["spec"]["model"]["config"]["temperature_alarm"], 80);

    // Another topic is another twin: replaced, and it starts anew.
    let moved = spec("{}").replace("[plant/motor-2/telemetry]", "[plant/motor-2b/telemetry]");
    assert!(ok(apply(&moved)).contains("\"replaced\""));
    let running = up.json("/v1/twins/motor-2/spec");
    assert_eq!(
        running["spec"]["physical"]["topics"][0],
        "plant/motor-2b/telemetry"
    );
    assert_eq!(up.json("/v1/twins/motor-2")["updatesApplied"], 0);
    let (status, _) = up.get("/v1/twins/motor-2");
    assert_eq!(status, 200);
    let deleted = up
        .http
        .delete(format!("{}/v1/twins/motor-2", up.base))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(up.get("/v1/twins/motor-2").0, 404);
}

/// Reads server-sent events from `response` until `n` of kind `event` came,
/// returning their data.
fn read_events(response: reqwest::blocking::Response, event: &str, n: usize) -> Vec<Value> {
    use std::io::BufRead;
    let mut found = Vec::new();
    let mut current = String::new();
    for line in std::io::BufReader::new(response).lines() {
        let line = line.expect("reading the event stream");
        if let Some(name) = line.strip_prefix("event: ") {
            current = name.to_string();
        } else if let Some(data) = line.strip_prefix("data: ")
            && current == event
        {
            found.push(serde_json::from_str(data).unwrap());
            if found.len() == n {
                break;
            }
        }
    }
    found
}

#[test]
fn history_stream_and_thing_description() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    up.wait_for(
        || up.json("/v1/twins/motor-1")["updatesApplied"].as_u64() >= Some(10),
        "10 updates",
    );

    // History: every applied message's temperature, in order, within range.
    let all = up.json("/v1/twins/motor-1/history?property=temperature");
    let points = all["points"].as_array().unwrap();
    assert!(points.len() >= 10, "{all}");
    let seqs: Vec<u64> = points.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let middle = points[points.len() / 2]["tsMs"].as_u64().unwrap();
    let later = up.json(&format!(
        "/v1/twins/motor-1/history?property=temperature&from={middle}"
    ));
    let later = later["points"].as_array().unwrap();
    assert!(later.iter().all(|p| p["tsMs"].as_u64().unwrap() >= middle));
    assert!(later.len() < points.len() + 5);
    let rfc3339 = up.json(
        "/v1/twins/motor-1/history?property=temperature&from=2001-01-01T00:00:00Z&to=2002-01-01T00:00:00Z",
    );
    assert_eq!(rfc3339["points"], serde_json::json!([]));
    // The newest points, newest first.
    let newest = up.json("/v1/twins/motor-1/history?property=temperature&limit=3&order=newest");
    let newest: Vec<u64> = newest["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(newest.len(), 3);
    assert!(newest.windows(2).all(|w| w[0] > w[1]), "{newest:?}");
    assert!(newest[0] >= *seqs.last().unwrap(), "{newest:?} {seqs:?}");
    let (status, body) = up.get("/v1/twins/motor-1/history?property=temperature&from=yesterday");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`from`"), "{body}");
    assert_eq!(up.get("/v1/twins/motor-1/history").0, 400);

    // The change stream: sequence numbers go up one at a time.
    let stream = up
        .http
        .get(format!("{}/v1/twins/motor-1/stream", up.base))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(20))
        .send()
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let changes = read_events(stream, "change", 3);
    let seqs: Vec<u64> = changes.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs[1], seqs[0] + 1, "{changes:?}");
    assert!(changes[0]["changes"]["temperature"].is_number());

    // The Thing Description, followed as a generic WoT consumer would:
    // nothing below knows our routes, only what the TD says.
    let td = up.json("/v1/twins/motor-1/td");
    assert_eq!(td["@context"][0], "https://www.w3.org/2022/wot/td/v1.1");
    assert_eq!(td["title"], "motor-1");
    let scheme = td["security"][0].as_str().unwrap();
    assert_eq!(td["securityDefinitions"][scheme]["scheme"], "bearer");
    let base = reqwest::Url::parse(td["base"].as_str().unwrap()).unwrap();
    let properties = td["properties"].as_object().unwrap();
    for property in ["temperature", "vibration", "rpm", "running"] {
        let affordance = &properties[property];
        let form = &affordance["forms"][0];
        assert!(
            form["op"]
                .as_array()
                .unwrap()
                .contains(&"readproperty".into())
        );
        let url = base.join(form["href"].as_str().unwrap()).unwrap();
        let value: Value = up
            .http
            .get(url)
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .json()
            .unwrap();
        // The property's type, or null until the model sets it.
        let kind = &affordance["oneOf"][0]["type"];
        assert_eq!(affordance["oneOf"][1]["type"], "null");
        let fits = match kind.as_str().unwrap() {
            "number" => value.is_number(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            other => panic!("unexpected type {other}"),
        };
        assert!(fits, "{property} = {value} is not a {kind}");
    }
    let stop = &td["actions"]["stop"]["forms"][0];
    assert_eq!(stop["htv:methodName"], "POST");
    let invoked = up
        .http
        .post(base.join(stop["href"].as_str().unwrap()).unwrap())
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(invoked.status().as_u16(), 200);
    up.wait_for(
        || up.json("/v1/twins/motor-1/properties/running") == false,
        "the motor to stop",
    );
    let events = td["events"].as_object().unwrap();
    assert!(!events.is_empty(), "{td}");
    for (_, event) in events {
        assert_eq!(event["forms"][0]["subprotocol"], "sse");
    }
}

#[test]
fn a_killed_node_resumes_its_twins_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt) = (free_port(), free_port());
    let mut up = Up::start_on(dir.path(), http_port, mqtt, 200);
    up.wait_for(
        || up.json("/v1/twins/motor-1")["updatesApplied"].as_u64() >= Some(300),
        "300 updates (past the first checkpoint)",
    );
    let _ = up.node.child.kill(); // SIGKILL: no clean shutdown
    let _ = up.node.child.wait();
    let before = up.json_or_none("/v1/twins/motor-1");
    assert!(before.is_none(), "the node is down");
    drop(up);

    let up = Up::start_on(dir.path(), http_port, mqtt, 200);
    let resumed = up.json("/v1/twins/motor-1");
    let applied = resumed["updatesApplied"].as_u64().unwrap();
    assert!(applied >= 256, "state came back: {resumed}");
    up.wait_for(
        || up.json("/v1/twins/motor-1")["updatesApplied"].as_u64() >= Some(applied + 20),
        "20 more updates after the restart",
    );
    let twin = up.json("/v1/twins/motor-1");
    assert_eq!(
        twin["lastSeq"], twin["updatesApplied"],
        "no gap and no duplicate across the crash: {twin}"
    );
    let seqs = up.history_seqs("motor-1", "temperature");
    assert!(
        seqs.len() as u64 >= applied,
        "history survived: {}",
        seqs.len()
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_checkpoint_bundle_restores_the_twin_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    up.wait_for(
        || up.json("/v1/twins/motor-1")["updatesApplied"].as_u64() >= Some(10),
        "10 updates",
    );
    let bundle = dir.path().join("motor-1.ckpt");
    let wasmtwin = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--host", &up.base, "--token", TOKEN]);
        wasmtwin_tests::cli::run(env!("CARGO_BIN_EXE_wasmtwin"), &all, &[])
    };
    let out = ok(wasmtwin(&[
        "checkpoint",
        "motor-1",
        "-o",
        arg(&bundle),
        "--with-component",
    ]));
    assert!(out.contains("components included"), "{out}");
    let saved = std::fs::read(&bundle).unwrap();

    // The twin goes; the bundle brings it back with its state and history.
    let deleted = up
        .http
        .delete(format!("{}/v1/twins/motor-1", up.base))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert!(ok(wasmtwin(&["restore", arg(&bundle)])).contains("restored"));
    let twin = up.json("/v1/twins/motor-1");
    assert!(twin["updatesApplied"].as_u64() >= Some(10), "{twin}");
    let history = up.json("/v1/twins/motor-1/history?property=rpm");
    assert!(history["points"].as_array().unwrap().len() >= 10);

    // Restoring over a running twin needs --replace.
    let err = wasmtwin_tests::cli::refused(wasmtwin(&["restore", arg(&bundle)]));
    assert!(err.contains("already runs here"), "{err}");

    // One flipped byte: refused before the node is asked, with the reason.
    let mut damaged = saved.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x55;
    let bad = dir.path().join("damaged.ckpt");
    std::fs::write(&bad, &damaged).unwrap();
    let err = wasmtwin_tests::cli::refused(wasmtwin(&["restore", arg(&bad), "--replace"]));
    assert!(
        err.contains("corrupted") || err.contains("malformed"),
        "{err}"
    );
    // Sent straight to the API, it is refused there too, and nothing changes.
    let response = up
        .http
        .put(format!(
            "{}/v1/twins/motor-1/checkpoint?replace=true",
            up.base
        ))
        .bearer_auth(TOKEN)
        .body(damaged)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    assert!(up.json("/v1/twins/motor-1")["updatesApplied"].as_u64() >= Some(10));
}

#[test]
fn a_history_copy_for_an_arriving_twin_refuses_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    // A second twin like the demo's, announced as arriving.
    let mut spec = up.json("/v1/twins/motor-1/spec");
    spec["metadata"]["name"] = "motor-2".into();
    let put = |path: &str, body: Vec<u8>| {
        let response = up
            .http
            .put(format!("{}{path}", up.base))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.text().unwrap_or_default(),
        )
    };
    let (status, body) = put("/v1/migrations/motor-2", spec.to_string().into_bytes());
    assert_eq!(status, 200, "{body}");

    let good = r#"{"tsMs": 1000, "seq": 1, "changes": {"rpm": 1450}}"#;
    let (status, body) = put(
        "/v1/migrations/motor-2/history",
        format!("{good}\nnot a row\n").into_bytes(),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("history row 2 is malformed"), "{body}");
    let (status, body) = put(
        "/v1/migrations/motor-2/history",
        vec![b'x'; (1 << 20) + (64 << 10)],
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("longer than"), "{body}");
    let (status, body) = put("/v1/migrations/motor-9/history", good.as_bytes().to_vec());
    assert_eq!(status, 404, "nothing is arriving: {body}");
    let (status, body) = put("/v1/migrations/motor-2/history", good.as_bytes().to_vec());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""rows":1"#), "{body}");

    let refused = up
        .http
        .delete(format!("{}/v1/migrations/motor-2", up.base))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 204);
}

#[test]
fn up_on_a_busy_port_says_so_before_announcing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = busy.local_addr().unwrap().to_string();
    let plugins = plugin("machine").parent().unwrap().to_path_buf();
    let out = wasmtwin_tests::cli::run(
        env!("CARGO_BIN_EXE_wasmtwin"),
        &[
            "up",
            "--token",
            TOKEN,
            "--data",
            arg(dir.path()),
            "--plugins",
            arg(&plugins),
            "--http",
            &http,
            "--mqtt",
            &format!("127.0.0.1:{}", free_port()),
            "--cloud-http",
            &format!("127.0.0.1:{}", free_port()),
            "--control-http",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("listening on {http}")), "{err}");
}

/// A new user's own model, signed with their own key, runs on `up` when
/// `up` trusts the key and may read the directory.
#[test]
fn up_runs_a_users_own_signed_model() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("mine");
    let run = |args: &[&str]| {
        ok(wasmtwin_tests::cli::run(
            env!("CARGO_BIN_EXE_wasmtwin"),
            args,
            &[],
        ))
    };
    run(&["keygen", "--out", arg(&mine.join("keys"))]);
    let model = mine.join("counter.wasm");
    run(&[
        "sign",
        arg(&plugin("misbehave")),
        "--key",
        arg(&mine.join("keys/wasmtwin.key")),
        "--out",
        arg(&model),
    ]);
    let data = dir.path().join("data");
    let up = Up::start_with(
        &data,
        free_port(),
        free_port(),
        20,
        &[
            "--trust",
            arg(&mine.join("keys/wasmtwin.pub")),
            "--component-dir",
            arg(&mine),
        ],
    );
    let spec = |name: &str, publisher: &str| {
        format!(
            "apiVersion: wasmtwin.dev/v1alpha1\nkind: DigitalTwin\nmetadata: {{name: {name}}}\n\
             spec:\n  model: {{ref: {}, publisherKey: {publisher}}}\n  physical:\n    \
             topics: [mine/telemetry]\n    adapter: {{ref: {}}}\n",
            arg(&model),
            arg(&data.join("components/json_adapter.wasm")),
        )
    };
    let mine_pub = mine.join("keys/wasmtwin.pub");
    let (status, body) = up.put("/v1/twins/mine", &spec("mine", arg(&mine_pub)));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("created"), "{body}");
    // The publisher key is one of the node's trusted keys; a spec cannot
    // make the node open a file of its choosing.
    let dev_pub = data.join("dev-key/wasmtwin.pub");
    let (status, body) = up.put("/v1/twins/other", &spec("other", arg(&dev_pub)));
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("is not signed by the publisher key"),
        "{body}"
    );
    let (status, body) = up.put("/v1/twins/probe", &spec("probe", "/etc/hostname"));
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("not one of this node's trusted keys"),
        "{body}"
    );
}
