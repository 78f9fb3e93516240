//! Traces end to end: a control plane and two nodes, each a `wasmtwin`
//! process exporting over OTLP/HTTP to a receiver built on the protocol's
//! own Python definitions, Mosquitto, and a device publishing to it. What
//! arrives must be whole traces with the right parents: one per PT
//! message, from receipt to acknowledgement; one per control-plane
//! decision, whose requests to the nodes continue it (W3C `traceparent`),
//! so a migration is one trace across three processes; a device's own
//! trace, sent as an MQTT 5 user property, continued by its message's.

mod common;

use serde_json::{Value, json};
use wasmtwin_tests::fleet::{Device, Fleet};
use wasmtwin_tests::otlp::OtlpReceiver;

const WASMTWIN: &str = env!("CARGO_BIN_EXE_wasmtwin");

/// The spans of `spans` in trace `trace`.
fn in_trace<'a>(spans: &'a [Value], trace: &Value) -> Vec<&'a Value> {
    spans.iter().filter(|s| &s["traceId"] == trace).collect()
}

/// Trace `trace` as an indented tree, each span with the process it came
/// from (named by `process`), its start after the trace's first span and
/// its duration: what docs/observability.md shows (run with --nocapture).
fn tree(spans: &[Value], trace: &Value, process: &dyn Fn(&Value) -> String) -> String {
    let mut spans = in_trace(spans, trace);
    spans.sort_by_key(|s| s["startNs"].as_u64());
    let origin = spans
        .first()
        .and_then(|s| s["startNs"].as_u64())
        .unwrap_or(0);
    let ms = |ns: u64| ns as f64 / 1e6;
    fn below(
        out: &mut String,
        spans: &[&Value],
        parent: &Value,
        depth: usize,
        line: &dyn Fn(&Value) -> String,
    ) {
        for span in spans.iter().filter(|s| &s["parentSpanId"] == parent) {
            out.push_str(&format!("{}{}\n", "  ".repeat(depth), line(span)));
            below(out, spans, &span["spanId"], depth + 1, line);
        }
    }
    let line = |s: &Value| {
        let (start, end) = (
            s["startNs"].as_u64().unwrap_or(0),
            s["endNs"].as_u64().unwrap_or(0),
        );
        format!(
            "{}  [{}]  +{:.2} ms, {:.2} ms",
            s["name"].as_str().unwrap_or("?"),
            process(s),
            ms(start.saturating_sub(origin)),
            ms(end.saturating_sub(start))
        )
    };
    let roots: Vec<&Value> = spans
        .iter()
        .copied()
        .filter(|s| !spans.iter().any(|p| p["spanId"] == s["parentSpanId"]))
        .collect();
    let mut out = String::new();
    for root in roots {
        out.push_str(&format!("{}\n", line(root)));
        below(&mut out, &spans, &root["spanId"], 1, &line);
    }
    out
}

/// A PT message's span and the spans of its stages, if one whole trace has
/// arrived for twin `twin`: decode, model call, commit and acknowledgement
/// its children, the change stream's delivery a child of the model call.
fn message_trace(spans: &[Value], twin: &str) -> Option<(Value, Vec<Value>)> {
    const CHILDREN: [&str; 4] = ["adapter.decode", "model.apply", "store.commit", "mqtt.ack"];
    spans
        .iter()
        .filter(|s| s["name"] == "pt.message" && s["attributes"]["twin"] == twin)
        .find_map(|root| {
            let trace: Vec<Value> = in_trace(spans, &root["traceId"])
                .into_iter()
                .filter(|s| s["spanId"] != root["spanId"])
                .cloned()
                .collect();
            let child = |name: &str| {
                trace
                    .iter()
                    .find(|s| s["name"] == name && s["parentSpanId"] == root["spanId"])
            };
            let model = child("model.apply")?;
            let delivered = trace
                .iter()
                .any(|s| s["name"] == "changes.publish" && s["parentSpanId"] == model["spanId"]);
            (delivered && CHILDREN.iter().all(|name| child(name).is_some()))
                .then(|| (root.clone(), trace.clone()))
        })
}

#[test]
#[ignore = "needs Debian's mosquitto and PyPI's opentelemetry-proto; run by .ci/run"]
fn a_message_and_a_migration_each_leave_one_trace_across_processes() {
    let receiver = OtlpReceiver::start();
    let fleet = Fleet::start_exporting(
        WASMTWIN,
        &[("edge-a", "edge"), ("edge-b", "edge")],
        &receiver.url(),
    );
    let pid_of = |node: &str| {
        u64::from(
            fleet
                .host(node)
                .node
                .as_ref()
                .expect("the node runs")
                .child
                .id(),
        )
    };
    let control_pid = u64::from(fleet.control.child.id());
    let process = |s: &Value| -> String {
        ["edge-a", "edge-b"]
            .into_iter()
            .find(|n| s["pid"] == pid_of(n))
            .map_or_else(|| "control plane".to_string(), |n| format!("node {n}"))
    };
    let spec = common::spec(
        "tr",
        "good",
        "  requirements:\n    expectedRateHz: 5\n  placement:\n    zones: [edge]\n",
    );
    fleet.apply("tr", &spec);
    fleet.wait(|f| f.running_on("tr").is_some(), "tr to be placed", 30);
    let first = fleet.running_on("tr").unwrap();
    let device = Device::start(fleet.mosquitto.port, "dev/tr", 5.0);
    fleet.api_of("tr").wait_for_updates("tr", 3);

    // One message: receipt, decode, model call, change stream, commit and
    // acknowledgement, on the node that runs the twin.
    fleet.wait(
        |_| message_trace(&receiver.spans(), "tr").is_some(),
        "a PT message's whole trace",
        20,
    );
    let (root, stages) = message_trace(&receiver.spans(), "tr").unwrap();
    println!(
        "One PT message:\n{}",
        tree(&receiver.spans(), &root["traceId"], &process)
    );
    assert_eq!(root["pid"], pid_of(&first), "{root}");
    assert_eq!(
        root["parentSpanId"], "",
        "a device's message starts a trace"
    );
    assert_eq!(root["kind"], 5, "consumer: {root}");
    assert_eq!(root["attributes"]["messaging.destination.name"], "dev/tr");
    for stage in &stages {
        assert_eq!(stage["pid"], root["pid"], "{stage}");
    }

    // The placement: the control plane's decision, continued by the node's
    // request span, named by route and not by twin.
    let placement = |spans: &[Value]| {
        let decision = spans.iter().find(|s| {
            s["name"] == "control.decision"
                && s["attributes"]["twin"] == "tr"
                && s["attributes"]["action"] == "place"
        })?;
        let on_node = in_trace(spans, &decision["traceId"])
            .into_iter()
            .find(|s| s["pid"] == pid_of(&first))?;
        Some((decision.clone(), on_node.clone()))
    };
    fleet.wait(
        |_| placement(&receiver.spans()).is_some(),
        "the placement's trace",
        20,
    );
    let (placed, applied) = placement(&receiver.spans()).unwrap();
    assert_eq!(placed["pid"], control_pid);
    assert_eq!(applied["parentSpanId"], placed["spanId"], "{applied}");
    assert_eq!(applied["name"], "PUT /v1/twins/{name}", "{applied}");
    assert_eq!(applied["attributes"]["url.path"], "/v1/twins/tr");

    // Draining the node: the control plane migrates the twin, and every
    // request of the move, to either node, is a child of its decision.
    let (status, body) = fleet.control.api.put(
        &format!("/v1/nodes/{first}/cordon"),
        r#"{"reason": "trace test"}"#,
    );
    assert_eq!(status, 200, "{body}");
    fleet.wait(
        |f| f.running_on("tr").is_some_and(|n| n != first),
        "tr to move away from the cordoned node",
        40,
    );
    let second = fleet.running_on("tr").unwrap();
    let decided = |spans: &[Value]| {
        spans
            .iter()
            .find(|s| s["name"] == "control.decision" && s["attributes"]["action"] == "migrate")
            .cloned()
    };
    let both_nodes = |spans: &[Value]| {
        decided(spans).is_some_and(|d| {
            let trace = in_trace(spans, &d["traceId"]);
            [pid_of(&first), pid_of(&second)]
                .iter()
                .all(|pid| trace.iter().any(|s| s["pid"] == *pid))
        })
    };
    fleet.wait(
        |_| both_nodes(&receiver.spans()),
        "the migration's spans from both nodes",
        20,
    );
    // The last spans of the move (the target's) may still be on their way.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let spans = receiver.spans();
    let migration = decided(&spans).unwrap();
    println!(
        "One migration:\n{}",
        tree(&spans, &migration["traceId"], &process)
    );
    assert_eq!(migration["pid"], control_pid);
    assert_eq!(migration["parentSpanId"], "", "a decision starts a trace");
    assert_eq!(migration["attributes"]["ok"], true, "{migration}");
    let on_nodes: Vec<&Value> = in_trace(&spans, &migration["traceId"])
        .into_iter()
        .filter(|s| s["pid"] != control_pid)
        .collect();
    for span in &on_nodes {
        assert_eq!(span["parentSpanId"], migration["spanId"], "{span}");
        assert_eq!(span["kind"], 2, "server: {span}");
    }
    let routes = |pid: u64| -> Vec<String> {
        on_nodes
            .iter()
            .filter(|s| s["pid"] == pid)
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        routes(pid_of(&first)).contains(&"POST /v1/twins/{name}/handover".to_string()),
        "{:?}",
        routes(pid_of(&first))
    );
    assert!(
        routes(pid_of(&second)).contains(&"POST /v1/migrations/{name}".to_string()),
        "{:?}",
        routes(pid_of(&second))
    );
    // The event history names the trace of the decision.
    let recorded = fleet
        .decided("tr", "decision")
        .into_iter()
        .find(|e| e["data"]["action"]["action"] == "migrate")
        .expect("the migration's decision in the history");
    assert_eq!(recorded["data"]["traceId"], migration["traceId"]);

    // A device with a trace of its own (Mosquitto's client, over MQTT 5,
    // the node's session over 5 too): the message's trace continues it.
    // Last, as its sequence number leaps ahead of the device's.
    let (device_trace, device_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let published = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &fleet.mosquitto.port.to_string()])
        .args(["-V", "mqttv5", "-q", "1", "-t", "dev/tr"])
        .arg("-m")
        .arg(String::from_utf8(common::message(1_000_000, json!(1))).unwrap())
        .args(["-D", "publish", "user-property", "traceparent"])
        .arg(format!("00-{device_trace}-{device_span}-01"))
        .output()
        .expect("mosquitto_pub runs");
    assert!(published.status.success(), "{published:?}");
    let continued = |spans: &[Value]| {
        spans
            .iter()
            .find(|s| s["name"] == "pt.message" && s["traceId"] == device_trace)
            .cloned()
    };
    fleet.wait(
        |_| continued(&receiver.spans()).is_some(),
        "the device's own trace to be continued",
        20,
    );
    let root = continued(&receiver.spans()).unwrap();
    assert_eq!(root["parentSpanId"], device_span, "{root}");
    assert_eq!(root["attributes"]["twin"], "tr", "{root}");
    drop(device);
}
