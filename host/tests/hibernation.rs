//! Hibernation: a twin with nothing to do drops its Wasm instances and
//! keeps only its last checkpoint; the next message, action or swap wakes
//! it with its state intact, reads, checkpoints and a move to another node
//! do not, and its entanglement is measured while it sleeps. The node runs
//! as a `wasmtwin host` process with a short `--hibernate-after`.

mod common;

use std::time::Duration;

use common::{Site, TOKEN, created, machine_spec, message, metric_of};
use serde_json::{Value, json};
use wasmtwin_tests::cli::arg;
use wasmtwin_tests::faults::FaultProxy;
use wasmtwin_tests::node::{Api, wait_for};
use wasmtwin_tests::plugin;

/// A telemetry message of the motor.
fn reading(seq: u64, temperature: f64) -> Vec<u8> {
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    serde_json::to_vec(&json!({ "seq": seq, "ts_ms": ts_ms, "temperature": temperature })).unwrap()
}

/// The value of an unlabelled sample in the site's node's metrics.
fn metric(site: &Site, name: &str) -> f64 {
    metric_of(&site.node.api, name)
}

fn asleep(site: &Site, name: &str) -> bool {
    site.twin(name)["hibernating"] == true
}

fn wait_asleep(site: &Site, name: &str) {
    wait_for(|| asleep(site, name), "the twin to hibernate");
}

/// Waits until twin `name`, the site's only one, sleeps with its session
/// parked.
fn wait_parked(site: &Site, name: &str) {
    wait_for(
        || asleep(site, name) && metric(site, "wasmtwin_node_broker_sessions_connected") == 0.0,
        "the sleeping twin to park its session",
    );
}

/// Creates the motor, sends it its first reading and waits until it sleeps
/// with its session parked.
fn parked_motor(site: &Site) {
    created(site, "motor", &machine_spec("motor"));
    site.publish("dev/motor", &[reading(1, 20.0)]);
    site.node.api.wait_for_updates("motor", 1);
    wait_parked(site, "motor");
}

/// Sends the motor's next two readings, a normal one and then an alarm,
/// through the node `api` that hosts it now, and checks that the model
/// remembered the first alarm: the second counts 2 (a fresh instance would
/// count 1), after 3 updates in all.
fn second_alarm_counts_two(site: &Site, api: &Api, what: &str) {
    site.publish("dev/motor", &[reading(2, 50.0), reading(3, 96.0)]);
    wait_for(|| api.json("/v1/twins/motor")["lastSeq"] == 3, what);
    let twin = api.json("/v1/twins/motor");
    assert_eq!(twin["properties"]["alarms"]["value"], 2, "{twin}");
    assert_eq!(twin["updatesApplied"], 3, "{twin}");
}

#[test]
fn an_idle_twin_hibernates_and_wakes_with_its_state_for_messages_and_actions() {
    let site = Site::start(&["--hibernate-after", "500ms"]);
    created(&site, "motor", &machine_spec("motor"));
    site.publish("dev/motor", &[reading(1, 95.0)]);
    site.node.api.wait_for_updates("motor", 1);
    wait_asleep(&site, "motor");
    assert_eq!(metric(&site, "wasmtwin_node_twins_hibernating"), 1.0);
    // (On a slow machine the new twin may have slept before its first
    // message came: count wake-ups from here.)
    let woken = metric(&site, "wasmtwin_node_wake_seconds_count");

    // Reads and checkpoints are served from what the node keeps: they
    // wake nothing.
    let twin = site.twin("motor");
    assert_eq!(twin["properties"]["alarms"]["value"], 1, "{twin}");
    let (status, body) = site.node.api.get("/v1/twins/motor/checkpoint");
    assert_eq!(status, 200, "{body}");
    assert!(asleep(&site, "motor"));
    assert_eq!(metric(&site, "wasmtwin_node_wake_seconds_count"), woken);

    // Each message wakes it, and the model remembers what it saw before it
    // slept: a second alarm counts 2, which a fresh instance would count 1.
    for (seq, temperature) in [(2, 50.0), (3, 96.0)] {
        site.publish("dev/motor", &[reading(seq, temperature)]);
        wait_for(
            || site.twin("motor")["lastSeq"] == seq,
            "the twin to wake and apply the message",
        );
        wait_asleep(&site, "motor");
    }
    let twin = site.twin("motor");
    assert_eq!(twin["properties"]["alarms"]["value"], 2, "{twin}");
    assert_eq!(twin["properties"]["health"]["value"], "alarm", "{twin}");
    assert_eq!(twin["updatesApplied"], 3, "{twin}");
    assert_eq!(
        metric(&site, "wasmtwin_node_wake_seconds_count"),
        woken + 2.0
    );

    // An action wakes it too, and changes its state durably.
    let (status, body) = site.node.api.post("/v1/twins/motor/actions/reset", "");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"], json!({"cleared": 2}), "{answer}");
    assert_eq!(
        metric(&site, "wasmtwin_node_wake_seconds_count"),
        woken + 3.0
    );
    wait_asleep(&site, "motor");
    site.publish("dev/motor", &[reading(4, 97.0)]);
    wait_for(
        || site.twin("motor")["lastSeq"] == 4,
        "the message after the action",
    );
    let twin = site.twin("motor");
    assert_eq!(twin["properties"]["alarms"]["value"], 0, "{twin}");
    assert_eq!(twin["guestErrors"], 0, "{twin}");
}

#[test]
fn a_sleeping_twin_whose_device_falls_silent_is_reported_disentangled() {
    let site = Site::start(&["--hibernate-after", "200ms"]);
    let spec =
        machine_spec("motor") + "  requirements:\n    expectedRateHz: 10\n    windowSeconds: 2\n";
    created(&site, "motor", &spec);
    for seq in 1..=20 {
        site.publish("dev/motor", &[reading(seq, 60.0)]);
        std::thread::sleep(Duration::from_millis(100));
    }
    site.node.api.wait_for_updates("motor", 20);
    // The device stops: the twin sleeps, and its entanglement, measured by
    // the node and not by the instance, shows the silence.
    wait_asleep(&site, "motor");
    wait_for(
        || {
            let twin = site.twin("motor");
            twin["hibernating"] == true
                && twin["entanglement"]["status"] == "disentangled"
                && twin["entanglement"]["reliability"].as_f64() < Some(0.5)
        },
        "the sleeping twin to be reported disentangled, its reliability falling",
    );
    let (_, metrics) = site.node.api.get("/metrics");
    assert!(
        metrics.contains("wasmtwin_twin_entangled{twin=\"motor\"} 0"),
        "{metrics}"
    );
}

/// Twin `p` of the `prime` model at `model`, asleep after two updates.
fn prime_asleep_after_two(site: &Site, model: &std::path::Path) {
    let spec = common::spec("p", "good", "")
        .replace(arg(&plugin("misbehave")), arg(model))
        .replace("config: {mode: good}", "config: {primes: 10}");
    created(site, "p", &spec);
    site.publish("dev/p", &[message(1, json!(1.0)), message(2, json!(2.0))]);
    site.node.api.wait_for_updates("p", 2);
    wait_asleep(site, "p");
}

/// Sends twin `p` its third update and checks that it runs the next
/// release and that the model's own count, kept across what came
/// between, is 3.
fn third_update_counts_three(site: &Site, what: &str) {
    site.publish("dev/p", &[message(3, json!(3.0))]);
    wait_for(|| site.twin("p")["lastSeq"] == 3, what);
    let twin = site.twin("p");
    assert_eq!(twin["properties"]["updates_applied"]["value"], 3, "{twin}");
    assert_eq!(twin["model"]["version"], "0.2.0-next", "{twin}");
    assert_eq!(twin["guestErrors"], 0, "{twin}");
}

#[test]
fn a_sleeping_twin_is_swapped_to_a_new_release_with_its_state() {
    let site = Site::start(&["--hibernate-after", "300ms"]);
    prime_asleep_after_two(&site, &plugin("prime"));

    let next = site.data.join("prime-next.wasm");
    std::fs::copy(wasmtwin_tests::prime_next_release(), &next).unwrap();
    let (status, body) = site.node.api.post(
        "/v1/twins/p/swap",
        &json!({ "ref": arg(&next) }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let twin = site.twin("p");
    assert_eq!(twin["model"]["version"], "0.2.0-next", "{twin}");

    // The new release took the state the sleeping twin kept: the model's
    // own count of updates goes on from 2.
    wait_asleep(&site, "p");
    third_update_counts_three(&site, "the message after the swap");
}

/// A node restarted after its twin's component was replaced by a newer
/// release: the twin cannot start asleep on a checkpoint of the older
/// build, so it starts in the new release, restored from that checkpoint.
#[test]
fn a_restarted_node_starts_an_upgraded_sleeping_twin_from_its_checkpoint() {
    let mut site = Site::start(&["--hibernate-after", "300ms"]);
    let model = site.data.join("prime.wasm");
    std::fs::copy(plugin("prime"), &model).unwrap();
    prime_asleep_after_two(&site, &model);
    // The checkpoint taken as it fell asleep reaches the disk.
    std::thread::sleep(Duration::from_millis(300));

    std::fs::copy(wasmtwin_tests::prime_next_release(), &model).unwrap();
    site.restart();
    let twin = site.twin("p");
    assert_eq!(twin["model"]["version"], "0.2.0-next", "{twin}");
    assert_eq!(twin["properties"]["updates_applied"]["value"], 2, "{twin}");
    third_update_counts_three(&site, "the message after the restart");
}

#[test]
fn a_restarted_node_serves_its_sleeping_twins_without_waking_them() {
    let mut site = Site::start(&["--hibernate-after", "300ms"]);
    created(&site, "motor", &machine_spec("motor"));
    site.publish("dev/motor", &[reading(1, 95.0)]);
    site.node.api.wait_for_updates("motor", 1);
    wait_asleep(&site, "motor");
    // The checkpoint taken as it fell asleep reaches the disk.
    std::thread::sleep(Duration::from_millis(300));

    // Restarted with a delay no test reaches: the twin sleeps because it
    // started asleep, not because it fell asleep again.
    site.restart_with(&["--hibernate-after".into(), "1h".into()]);
    // Served from the stored checkpoint, with no instance made.
    let twin = site.twin("motor");
    assert_eq!(twin["hibernating"], true, "{twin}");
    assert_eq!(twin["properties"]["alarms"]["value"], 1, "{twin}");
    assert_eq!(twin["model"]["name"], "machine", "{twin}");
    let (status, td) = site.node.api.get("/v1/twins/motor/td");
    assert_eq!(status, 200, "{td}");
    assert!(td.contains("\"reset\""), "{td}");
    assert_eq!(metric(&site, "wasmtwin_node_twins_hibernating"), 1.0);
    assert_eq!(metric(&site, "wasmtwin_node_wake_seconds_count"), 0.0);
    // Its broker session connects once in the background, in its turn,
    // finds nothing waiting and parks again.
    wait_for(
        || {
            metric(&site, "wasmtwin_node_broker_sessions_collecting") == 0.0
                && metric(&site, "wasmtwin_node_broker_sessions_connected") == 0.0
        },
        "the twin's broker session to collect and park again",
    );

    // Its first messages wake it with the state it had.
    second_alarm_counts_two(
        &site,
        &site.node.api,
        "the twin to wake and apply both messages",
    );
    assert_eq!(metric(&site, "wasmtwin_node_wake_seconds_count"), 1.0);
}

#[test]
fn a_sleeping_twin_moves_to_another_node_without_being_woken() {
    let site = Site::start(&["--hibernate-after", "300ms"]);
    let second = site.data.join("second");
    std::fs::create_dir_all(&second).unwrap();
    // Named apart: a node's broker sessions carry its name.
    let target = common::host(
        &second,
        site.mqtt,
        &["--name", "second", "--hibernate-after", "300ms"].map(String::from),
    );
    created(&site, "motor", &machine_spec("motor"));
    site.publish("dev/motor", &[reading(1, 95.0)]);
    site.node.api.wait_for_updates("motor", 1);
    wait_asleep(&site, "motor");
    let woken = metric(&site, "wasmtwin_node_wake_seconds_count");

    let moved = wasmtwin_tests::cli::run(
        env!("CARGO_BIN_EXE_wasmtwin"),
        &[
            "migrate",
            "motor",
            "--from",
            &site.node.api.base,
            "--to",
            &target.api.base,
            "--token",
            TOKEN,
        ],
        &[],
    );
    let out = wasmtwin_tests::cli::ok(moved);
    assert!(out.contains("moved"), "{out}");
    // The source handed over the checkpoint it kept as the twin fell
    // asleep: no instance was made to take another.
    assert_eq!(metric(&site, "wasmtwin_node_wake_seconds_count"), woken);
    assert_eq!(metric(&site, "wasmtwin_node_twins_hibernating"), 0.0);
    // The session moved with the twin.
    assert_eq!(
        metric_of(&target.api, "wasmtwin_node_broker_sessions_connected"),
        1.0
    );
    wait_for(
        || metric(&site, "wasmtwin_node_broker_sessions_connected") == 0.0,
        "the source's session to close",
    );

    // On the target the twin goes on from that state: a second alarm
    // counts 2.
    let twin = target.api.json("/v1/twins/motor");
    assert_eq!(twin["properties"]["alarms"]["value"], 1, "{twin}");
    second_alarm_counts_two(&site, &target.api, "the target to apply the next messages");
    let twin = target.api.json("/v1/twins/motor");
    assert_eq!(twin["guestErrors"], 0, "{twin}");
}

/// What a hostile or broken device sends a sleeping twin: payloads over
/// its maxPayload are dropped without waking it (a flood of them costs an
/// acknowledgement each, not a restore); malformed ones wake it, are
/// refused by its adapter, and leave its state as it was.
#[test]
fn a_sleeping_twin_shrugs_off_oversized_and_malformed_messages() {
    let site = Site::start(&["--hibernate-after", "300ms"]);
    let limited =
        machine_spec("motor").replace("  physical:\n", "  physical:\n    maxPayload: 1KiB\n");
    created(&site, "motor", &limited);
    site.publish("dev/motor", &[reading(1, 95.0)]);
    site.node.api.wait_for_updates("motor", 1);
    wait_asleep(&site, "motor");
    let woken = metric(&site, "wasmtwin_node_wake_seconds_count");

    let flood: Vec<Vec<u8>> = (0..50).map(|_| vec![b'x'; 4096]).collect();
    site.publish("dev/motor", &flood);
    wait_for(
        || site.twin("motor")["guestErrors"] == 50,
        "the oversized messages to be counted",
    );
    let oversized = "wasmtwin_twin_oversized_messages_total{twin=\"motor\"}";
    assert_eq!(metric(&site, oversized), 50.0);
    assert!(asleep(&site, "motor"));
    assert_eq!(metric(&site, "wasmtwin_node_wake_seconds_count"), woken);
    let twin = site.twin("motor");
    let error = twin["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("maxPayload"), "{error}");

    site.publish(
        "dev/motor",
        &[b"{not json".to_vec(), vec![0xff, 0xfe, 0x00]],
    );
    wait_for(
        || site.twin("motor")["guestErrors"] == 52,
        "the malformed messages to be refused",
    );
    // The refusals changed nothing: the next alarm still counts 2.
    second_alarm_counts_two(&site, &site.node.api, "the messages after the hostile ones");
}

#[test]
fn a_sleeping_twin_parks_its_session_and_its_doorbell_brings_back_every_message() {
    let site = Site::start(&["--hibernate-after", "300ms"]);
    created(&site, "motor", &machine_spec("motor"));
    site.publish("dev/motor", &[reading(1, 20.0)]);
    site.node.api.wait_for_updates("motor", 1);
    let mut last = 1;
    for _ in 0..3 {
        // Asleep, the twin holds no broker connection.
        wait_parked(&site, "motor");
        // The first of a burst rings the doorbell; the twin connects again
        // and the broker hands it the rest, which waited meanwhile.
        let burst: Vec<_> = (last + 1..=last + 20)
            .map(|seq| reading(seq, 20.0))
            .collect();
        site.publish("dev/motor", &burst);
        last += 20;
        wait_for(
            || site.twin("motor")["lastSeq"] == last,
            "the twin to wake and apply the burst",
        );
        let twin = site.twin("motor");
        assert_eq!(twin["updatesApplied"], last, "{twin}");
        assert_eq!(twin["guestErrors"], 0, "{twin}");
    }
}

/// Lets connections through the proxy again, and checks that the motor
/// applies the alarm (seq 2) held back meanwhile, and nothing twice.
fn alarm_comes_through(site: &Site, proxy: &FaultProxy, what: &str) {
    proxy.refuse(false);
    wait_for(|| site.twin("motor")["lastSeq"] == 2, what);
    let twin = site.twin("motor");
    assert_eq!(twin["properties"]["alarms"]["value"], 1, "{twin}");
    assert_eq!(twin["updatesApplied"], 2, "{twin}");
}

/// The doorbell rings at QoS 0 on a session the broker does not keep: what
/// is published while it is cut off rings nothing. Once it is back it rings
/// every parked twin, which collects what waited for it.
#[test]
fn a_parked_twin_gets_what_was_published_while_its_doorbell_was_cut_off() {
    let (site, proxy) = Site::start_behind_proxy(&["--hibernate-after", "300ms"]);
    parked_motor(&site);
    proxy.refuse(true);
    assert!(proxy.cut_all() >= 1, "the doorbell was not connected");
    site.publish("dev/motor", &[reading(2, 96.0)]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(site.twin("motor")["lastSeq"], 1, "nothing could ring yet");
    alarm_comes_through(&site, &proxy, "the doorbell to reconnect and wake the twin");
}

/// A ring says a message waits: the twin wakes while its session connects
/// again to fetch it, not only once the message has come (a wake-up used
/// to cost the new instance plus the new connection; now the longer of the
/// two).
#[test]
fn a_rung_twin_wakes_while_its_session_connects_again() {
    // Awake for 2 s once woken, long enough to be seen so.
    let (site, proxy) = Site::start_behind_proxy(&["--hibernate-after", "2s"]);
    parked_motor(&site);
    // The doorbell's connection stays; the session's next one is refused.
    proxy.refuse(true);
    site.publish("dev/motor", &[reading(2, 96.0)]);
    wait_for(
        || site.twin("motor")["hibernating"] == false,
        "the rung twin to wake before its message could come",
    );
    assert_eq!(site.twin("motor")["lastSeq"], 1, "the session is still out");
    alarm_comes_through(
        &site,
        &proxy,
        "the session to connect and bring the message",
    );
}

/// A rung twin whose session cannot connect again yet must not park again
/// when it falls idle: what rang it waits at the broker, and nothing would
/// ring for it again.
#[test]
fn a_rung_twin_parks_again_only_once_its_session_is_back() {
    let (site, proxy) = Site::start_behind_proxy(&["--hibernate-after", "100ms"]);
    parked_motor(&site);
    // The doorbell's connection stays; the session's next one is refused
    // for a while, over several idle delays.
    proxy.refuse(true);
    site.publish("dev/motor", &[reading(2, 96.0)]);
    std::thread::sleep(Duration::from_millis(1000));
    proxy.refuse(false);
    wait_for(
        || site.twin("motor")["lastSeq"] == 2,
        "the rung twin to collect the message",
    );
    let twin = site.twin("motor");
    assert_eq!(twin["properties"]["alarms"]["value"], 1, "{twin}");
}

/// A restarted node used to connect every twin's session at once, asleep
/// or not, and keep it connected until the twin was idle again: a node
/// holding more sleeping twins than it may open files ran out of them (its
/// sessions failing and retrying, its API refusing connections). Now the
/// sessions of twins resumed asleep connect a few at a time, each collects
/// what its broker kept and parks again; only a twin with something
/// waiting stays connected, awake.
#[test]
fn defect_19_a_node_with_more_sleeping_twins_than_files_restarts_collecting_them_in_turn() {
    const TWINS: usize = 300;
    let mut site = Site::start(&["--hibernate-after", "200ms"]);
    parked_machines(&site, TWINS);
    // The checkpoints they fell asleep on reach the disk.
    std::thread::sleep(Duration::from_millis(500));
    let _ = site.node.child.kill();
    let _ = site.node.child.wait();

    // While the node is down, the broker keeps m7's reading for it.
    site.publish("dev/m7", &[reading(1, 96.0)]);
    // 192 open files, for 300 twins.
    site.restart_under(
        &["prlimit", "--nofile=192:192", "--"],
        &["--hibernate-after".into(), "1h".into()],
    );
    wait_for(
        || metric(&site, "wasmtwin_node_broker_sessions_collecting") == 0.0,
        "every session to connect once and collect",
    );
    wait_for(
        || site.twin("m7")["lastSeq"] == 1,
        "m7 to collect the reading kept for it",
    );
    assert_eq!(site.twin("m7")["properties"]["alarms"]["value"], 1);
    // Only m7, awake, keeps its connection; the rest parked again.
    wait_for(
        || metric(&site, "wasmtwin_node_broker_sessions_connected") == 1.0,
        "the sessions with nothing waiting to park again",
    );
    assert_eq!(
        metric(&site, "wasmtwin_node_twins_hibernating"),
        (TWINS - 1) as f64
    );
    // A parked one is rung by its doorbell, as any sleeping twin.
    site.publish("dev/m250", &[reading(1, 20.0)]);
    wait_for(
        || site.twin("m250")["lastSeq"] == 1,
        "m250 to be rung and apply its reading",
    );
}

/// Creates `count` machine twins m0, m1…, and waits until every one
/// sleeps with its session parked.
fn parked_machines(site: &Site, count: usize) {
    for i in 0..count {
        created(site, &format!("m{i}"), &machine_spec(&format!("m{i}")));
    }
    wait_for(
        || {
            metric(site, "wasmtwin_node_twins_hibernating") == count as f64
                && metric(site, "wasmtwin_node_broker_sessions_connected") == 0.0
        },
        "every twin to sleep with its session parked",
    );
}

/// A doorbell back from a cut rings every parked twin, since something
/// may have been published meanwhile. Each used to connect its session
/// at once and keep it until idle for `--hibernate-after`: a node with
/// more sleeping twins than it may open files ran out of them. Now each
/// collects in turn and parks again, and only the twin something waited
/// for stays connected, awake.
#[test]
fn defect_20_a_doorbell_back_from_a_cut_has_its_parked_twins_collect_in_turn() {
    const TWINS: usize = 300;
    let (mut site, proxy) = Site::start_behind_proxy(&["--hibernate-after", "200ms"]);
    parked_machines(&site, TWINS);
    // Idle for good from now on, with 192 open files for 300 twins.
    site.restart_under(
        &["prlimit", "--nofile=192:192", "--"],
        &["--hibernate-after".into(), "1h".into()],
    );
    wait_for(
        || {
            metric(&site, "wasmtwin_node_broker_sessions_collecting") == 0.0
                && metric(&site, "wasmtwin_node_broker_sessions_connected") == 0.0
        },
        "every session to collect after the restart and park again",
    );

    // The doorbell is cut off while m5's reading is published.
    proxy.refuse(true);
    assert!(proxy.cut_all() >= 1, "the doorbell was not connected");
    site.publish("dev/m5", &[reading(1, 96.0)]);
    std::thread::sleep(Duration::from_millis(500));
    proxy.refuse(false);
    wait_for(
        || site.twin("m5")["lastSeq"] == 1,
        "m5 to collect the reading published while the doorbell was away",
    );
    wait_for(
        || {
            metric(&site, "wasmtwin_node_broker_sessions_collecting") == 0.0
                && metric(&site, "wasmtwin_node_broker_sessions_connected") == 1.0
        },
        "the other sessions to collect in turn and park again",
    );
    assert_eq!(
        metric(&site, "wasmtwin_node_twins_hibernating"),
        (TWINS - 1) as f64
    );
}
