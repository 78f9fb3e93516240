//! A node whose twins share one broker session (`--broker-session node`),
//! against Mosquitto: each twin gets what its filters match, once, even
//! where filters overlap; a node killed mid-stream applies every message
//! once after its restart; and a twin that falls behind holds up no other,
//! then catches up from the node's inbox in order.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{host, message, metric_of, publish, sample, spec};
use serde_json::json;
use wasmtwin_tests::node::{Node, wait_for};
use wasmtwin_tests::servers::Mosquitto;

/// A node of one shared session, on the broker at `port`.
fn shared_node(data: &Path, port: u16, extra: &[&str]) -> Node {
    let mut args = vec!["--broker-session".to_string(), "node".to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    host(data, port, &args)
}

/// The value of an unlabelled sample in a node's metrics.
fn metric(node: &Node, name: &str) -> f64 {
    metric_of(&node.api, name)
}

/// The updates `twin` dropped as already applied (none counted yet: 0).
fn duplicates(node: &Node, twin: &str) -> f64 {
    sample(
        &node.api,
        &format!("wasmtwin_twin_duplicates_total{{twin=\"{twin}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A `misbehave` twin in `mode` on `topics`, with `extra` under `spec:`.
fn twin_spec(name: &str, mode: &str, topics: &str, extra: &str) -> String {
    spec(name, mode, extra).replace(
        &format!("topics: [dev/{name}]"),
        &format!("topics: [{topics}]"),
    )
}

fn create(node: &Node, name: &str, spec: &str) {
    let (status, body) = node.api.put(&format!("/v1/twins/{name}"), spec);
    assert_eq!(status, 200, "{body}");
}

fn applied(node: &Node, name: &str) -> u64 {
    node.api.json(&format!("/v1/twins/{name}"))["updatesApplied"]
        .as_u64()
        .expect("a count of updates")
}

fn messages(seqs: std::ops::RangeInclusive<u64>) -> Vec<Vec<u8>> {
    seqs.map(|seq| message(seq, json!(seq))).collect()
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn twins_share_one_broker_session_and_each_gets_what_its_filters_match_once() {
    let broker = Mosquitto::start();
    each_twin_gets_what_its_filters_match_once(broker.port);
}

/// The same on `wasmtwin up`'s embedded broker (rumqttd), which names
/// subscriptions in what it sends as Mosquitto does.
#[test]
fn the_embedded_broker_serves_a_shared_session_as_mosquitto_does() {
    let broker = wasmtwin::broker::start(([127, 0, 0, 1], 0).into()).expect("the embedded broker");
    each_twin_gets_what_its_filters_match_once(broker.port());
}

/// Three twins of one shared session on the broker at `port`, two of whose
/// filters overlap the third's.
fn each_twin_gets_what_its_filters_match_once(port: u16) {
    let data = tempfile::tempdir().unwrap();
    let node = shared_node(data.path(), port, &[]);
    create(&node, "a", &twin_spec("a", "good", "plant/a/t", ""));
    create(&node, "b", &twin_spec("b", "good", "plant/b/t", ""));
    // Overlaps both: the broker sends each message on plant/a/t twice,
    // once per subscription.
    create(&node, "all", &twin_spec("all", "good", "plant/+/t", ""));
    assert_eq!(
        metric(&node, "wasmtwin_node_broker_sessions_connected"),
        1.0
    );
    publish(port, "plant/a/t", &messages(1..=20));
    publish(port, "plant/b/t", &messages(1..=10));
    // `all` sees both devices' sequences: 1..=20 then 1..=10 restarts
    // the count, so it applies what is new to it.
    node.api.wait_for_updates("a", 20);
    node.api.wait_for_updates("b", 10);
    node.api.wait_for_updates("all", 20);
    // Once each: no twin got a copy meant for another filter. Routed on
    // its topic alone, each copy on plant/a/t would reach `a` as well as
    // `all`, and `a` would drop the second as a duplicate.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(applied(&node, "a"), 20);
    assert_eq!(applied(&node, "b"), 10);
    assert_eq!(duplicates(&node, "a"), 0.0);
    assert_eq!(duplicates(&node, "b"), 0.0);
    assert_eq!(
        node.api.history_seqs("a", "applied"),
        (1..=20).collect::<Vec<_>>()
    );
    // A deleted twin's filter goes; the others keep theirs.
    assert_eq!(node.api.delete("/v1/twins/b").0, 204);
    publish(port, "plant/a/t", &messages(21..=25));
    node.api.wait_for_updates("a", 25);
    assert_eq!(
        metric(&node, "wasmtwin_node_broker_sessions_connected"),
        1.0
    );
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_node_killed_mid_stream_applies_every_message_once_after_its_restart() {
    let broker = Mosquitto::start();
    let data = tempfile::tempdir().unwrap();
    let mut node = shared_node(data.path(), broker.port, &[]);
    create(&node, "k", &twin_spec("k", "good", "dev/k", ""));
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        for chunk in messages(1..=600).chunks(20) {
            publish(port, "dev/k", chunk);
        }
    });
    wait_for(|| applied(&node, "k") >= 100, "k to apply 100 updates");
    let _ = node.child.kill();
    let _ = node.child.wait();
    publisher.join().unwrap();
    node = shared_node(data.path(), broker.port, &[]);
    node.api.wait_for_updates("k", 600);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(applied(&node, "k"), 600, "every message applied once");
    assert_eq!(
        node.api.history_seqs("k", "applied"),
        (1..=600).collect::<Vec<_>>(),
        "in order, none twice"
    );
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_twin_that_falls_behind_holds_up_no_other() {
    let broker = Mosquitto::start();
    let data = tempfile::tempdir().unwrap();
    // A queue of 4: the slow twin's fills at once; and at most 150
    // messages kept for a twin.
    let node = shared_node(
        data.path(),
        broker.port,
        &["--queue", "4", "--inbox-max", "150"],
    );
    // Every message loops until its 20 ms deadline (and is dropped).
    let slow = "  resources:\n    fuelPerUpdate: 10000000000\n    deadlineMs: 20\n";
    create(&node, "slow", &twin_spec("slow", "loop", "dev/slow", slow));
    create(&node, "fast", &twin_spec("fast", "good", "dev/fast", ""));
    publish(broker.port, "dev/slow", &messages(1..=300));
    // With one window for the whole node (Mosquitto's 20 messages in
    // flight), a twin holding its messages unacknowledged until applied
    // would stall the broker's deliveries to every twin: the fast one
    // applies at once instead.
    let sent = Instant::now();
    publish(broker.port, "dev/fast", &messages(1..=100));
    node.api.wait_for_updates("fast", 100);
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "the fast twin waited {:?} behind the slow one",
        sent.elapsed()
    );
    let errors = || {
        node.api.json("/v1/twins/slow")["guestErrors"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        errors() < 150,
        "the slow twin is still behind ({})",
        errors()
    );
    // What its inbox had no room for was dropped and counted; the rest
    // reaches it.
    let dropped = metric(&node, "wasmtwin_node_inbox_dropped_total") as u64;
    assert!((100..=150).contains(&dropped), "{dropped} dropped");
    wait_for(
        || errors() + dropped == 300,
        "the slow twin to take every message kept",
    );
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_twin_behind_catches_up_from_the_inbox_in_order_across_a_restart() {
    let broker = Mosquitto::start();
    let data = tempfile::tempdir().unwrap();
    let args = ["--queue", "4"];
    let mut node = shared_node(data.path(), broker.port, &args);
    // A hundredth of a core: it applies far slower than the node keeps.
    let throttled = "  resources:\n    cpu: 10m\n";
    create(&node, "t", &twin_spec("t", "good", "dev/t", throttled));
    publish(broker.port, "dev/t", &messages(1..=300));
    // Every message is kept, and acknowledged: the broker holds nothing
    // for the node any more, while the twin has applied only part.
    let behind = applied(&node, "t");
    assert!(
        behind < 300,
        "the twin kept up ({behind}): nothing was behind"
    );
    let _ = node.child.kill();
    let _ = node.child.wait();
    node = shared_node(data.path(), broker.port, &args);
    node.api.wait_for_updates("t", 300);
    assert!(metric(&node, "wasmtwin_node_inbox_read_total") > 0.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(applied(&node, "t"), 300);
    assert_eq!(
        node.api.history_seqs("t", "applied"),
        (1..=300).collect::<Vec<_>>(),
        "in order, none twice"
    );
}
