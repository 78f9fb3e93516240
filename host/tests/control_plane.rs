//! The control plane end to end: `wasmtwin control`, three `wasmtwin host`
//! processes that join it (two at the edge, one in the cloud), Mosquitto,
//! and our fault-injecting proxy between each node and the broker. A
//! simulated device publishes numbered updates straight to Mosquitto; each
//! test breaks one thing and checks that the control plane finds the
//! cause, does the right thing (or rightly nothing), and that no update is
//! applied twice.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use wasmtwin_tests::cli::arg;
use wasmtwin_tests::faults::Direction;
use wasmtwin_tests::fleet::{Device, Fleet};
use wasmtwin_tests::node::Api;
use wasmtwin_tests::plugin;

const WASMTWIN: &str = env!("CARGO_BIN_EXE_wasmtwin");

/// A webhook receiver: answers 200 to every POST and keeps the bodies
/// with their `X-Wasmtwin-Signature`.
struct Hook {
    port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>,
}

/// A webhook body and its signature header.
type Delivery = (Vec<u8>, String);

impl Hook {
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let (mut length, mut signature) = (0, String::new());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("x-wasmtwin-signature:") {
                        signature = line["x-wasmtwin-signature:".len()..].trim().to_string();
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                keep.lock().unwrap().push((body, signature));
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Self { port, received }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The delivery of the record `wanted` picks, waiting for it.
    fn find(&self, wanted: impl Fn(&Value) -> bool) -> Delivery {
        let found = || {
            self.received
                .lock()
                .unwrap()
                .iter()
                .find(|(body, _)| serde_json::from_slice(body).is_ok_and(|r: Value| wanted(&r)))
                .cloned()
        };
        wasmtwin_tests::node::wait_for(|| found().is_some(), "the webhook delivery");
        found().unwrap()
    }
}

/// Twin `name` running `model` (a path) with `config`, fed from `dev/NAME`
/// at `rate` updates/s; fast hysteresis so tests are short.
fn spec(name: &str, model: &str, config: &str, rate: f64, extra: &str) -> String {
    let requirements = format!(
        "  requirements:
    timeliness: {{percentile: 95, boundMs: 150}}
    expectedRateHz: {rate}
    windowSeconds: 8
  placement:
    zones: [edge, cloud]
  policy:
    holdSeconds: 2
    cooldownSeconds: 20
{extra}"
    );
    common::spec(name, "good", &requirements)
        .replace(arg(&plugin("misbehave")), model)
        .replace("config: {mode: good}", &format!("config: {config}"))
}

fn good(name: &str, rate: f64) -> String {
    spec(name, arg(&plugin("misbehave")), "{mode: good}", rate, "")
}

/// The sequence numbers twin `name` applied, by its history of
/// `property`: every one once, in order.
fn applied_once(api: &Api, name: &str, property: &str) -> Vec<u64> {
    let seqs = api.history_seqs(name, property);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "an update was applied twice or out of order: {seqs:?}"
    );
    seqs
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_slow_network_path_moves_the_twin_to_a_node_with_a_good_one() {
    let fleet = Fleet::start(
        WASMTWIN,
        &[("edge-a", "edge"), ("edge-b", "edge"), ("cloud-a", "cloud")],
    );
    fleet.apply("t1", &good("t1", 10.0));
    fleet.wait(|f| f.running_on("t1").is_some(), "t1 to be placed", 30);
    let device = Device::start(fleet.mosquitto.port, "dev/t1", 10.0);
    fleet.wait(
        |f| f.status("t1").as_deref() == Some("entangled"),
        "t1 entangled",
        30,
    );
    let first = fleet.running_on("t1").unwrap();
    // 200 ms each way between that node and the broker.
    fleet.host(&first).proxy.delay(Direction::Both, 200);
    fleet.wait(
        |f| f.running_on("t1").is_some_and(|n| n != first),
        "t1 to move away from the slow path",
        60,
    );
    let decision = fleet
        .decided("t1", "decision")
        .into_iter()
        .find(|d| d["data"]["action"]["action"] == "migrate")
        .expect("a migrate decision");
    assert_eq!(decision["data"]["cause"]["cause"], "network", "{decision}");
    assert_eq!(decision["data"]["action"]["from"], first.as_str());
    fleet.wait(
        |f| f.status("t1").as_deref() == Some("entangled"),
        "t1 entangled again on its new node",
        60,
    );
    let sent = device.stop();
    let api = fleet.api_of("t1");
    api.wait_for_updates("t1", sent);
    let seqs = applied_once(&api, "t1", "applied");
    assert_eq!(seqs.len() as u64, sent, "every update applied once");
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_device_that_halves_its_rate_is_reported_and_the_twin_stays() {
    // Notifications also go to a webhook, their bodies HMAC-signed.
    let hook = Hook::start();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "hook-secret").unwrap();
    let fleet = Fleet::start_with(
        WASMTWIN,
        &[("edge-a", "edge"), ("cloud-a", "cloud")],
        &[
            "--webhook",
            &hook.url(),
            "--webhook-secret-file",
            arg(secret.path()),
        ],
    );
    fleet.apply("t2", &good("t2", 4.0));
    fleet.wait(|f| f.running_on("t2").is_some(), "t2 to be placed", 30);
    let device = Device::start(fleet.mosquitto.port, "dev/t2", 4.0);
    fleet.wait(
        |f| f.status("t2").as_deref() == Some("entangled"),
        "t2 entangled",
        30,
    );
    let home = fleet.running_on("t2").unwrap();
    device.set_rate(2.0);
    // (A device that starts after its twin can break reliability for a
    // moment before: that is notified too, as what it is.)
    let changed = |f: &Fleet| {
        f.decided("t2", "notification")
            .into_iter()
            .find(|n| n["data"]["cause"]["cause"] == "physicalTwinChanged")
    };
    fleet.wait(
        |f| changed(f).is_some(),
        "a notification that the device changed",
        60,
    );
    let notice = &changed(&fleet).unwrap();
    let summary = notice["summary"].as_str().unwrap();
    // The rate it names is the device's new one (its timestamps, to the
    // scheduling jitter of a loaded machine), and the spec change to match.
    let rate = notice["data"]["cause"]["rateHz"].as_f64().unwrap();
    assert!((rate - 2.0).abs() < 0.2, "{notice}");
    assert!(
        summary.contains(&format!("{rate:.2} updates/s")),
        "names the new rate: {summary}"
    );
    assert!(
        summary.contains(&format!("expectedRateHz: {rate:.2}")),
        "{summary}"
    );
    // Moving or scaling cannot help: neither happened.
    std::thread::sleep(Duration::from_secs(3));
    assert!(fleet.decided("t2", "decision").iter().all(|d| {
        !matches!(
            d["data"]["action"]["action"].as_str(),
            Some("migrate" | "scale")
        )
    }));
    assert_eq!(fleet.running_on("t2").as_deref(), Some(home.as_str()));
    let (body, signature) = hook.find(|record| record["summary"] == notice["summary"]);
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"hook-secret").unwrap();
    hmac::Mac::update(&mut mac, &body);
    let expected = format!(
        "sha256={}",
        hex::encode(hmac::Mac::finalize(mac).into_bytes())
    );
    assert_eq!(signature, expected, "the body's HMAC");
    let sent = device.stop();
    let api = fleet.api_of("t2");
    api.wait_for_updates("t2", sent);
    assert_eq!(applied_once(&api, "t2", "applied").len() as u64, sent);
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_killed_node_s_twin_resumes_elsewhere_with_what_the_broker_held() {
    let mut fleet = Fleet::start(WASMTWIN, &[("edge-a", "edge"), ("edge-b", "edge")]);
    fleet.apply("t3", &good("t3", 10.0));
    fleet.wait(|f| f.running_on("t3").is_some(), "t3 to be placed", 30);
    let device = Device::start(fleet.mosquitto.port, "dev/t3", 10.0);
    let first = fleet.running_on("t3").unwrap();
    // A checkpoint or two shipped to the control plane.
    std::thread::sleep(Duration::from_secs(3));
    let mut killed = fleet.host_mut(&first).node.take().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let at_kill = device.sent();
    fleet.wait(
        |f| f.running_on("t3").is_some_and(|n| n != first),
        "t3 restored on the other node",
        60,
    );
    let restore = fleet
        .decided("t3", "decision")
        .into_iter()
        .find(|d| d["data"]["action"]["action"] == "restore")
        .expect("a restore decision");
    assert_eq!(restore["data"]["action"]["from"], first.as_str());
    std::thread::sleep(Duration::from_secs(2));
    let sent = device.stop();
    let api = fleet.api_of("t3");
    api.wait_for_updates("t3", 1);
    fleet.wait(
        |_| api.json("/v1/twins/t3")["lastSeq"].as_u64() == Some(sent),
        "the restored twin to catch up with the device",
        30,
    );
    let seqs = applied_once(&api, "t3", "applied");
    // Everything published after the node died was held by the broker
    // (its persistent session) and applied; what is missing is at most
    // what the dead node applied after the last checkpoint it shipped.
    let after_kill: Vec<u64> = seqs.iter().copied().filter(|s| *s > at_kill).collect();
    assert_eq!(
        after_kill,
        ((at_kill + 1)..=sent).collect::<Vec<_>>(),
        "an update the broker held was lost"
    );
    let lost = sent - seqs.len() as u64;
    assert!(
        lost <= 25,
        "{lost} updates lost: more than ~2 s of them at 10/s"
    );
    drop(fleet);
}

/// A host pod's preStop hook: `wasmtwin drain` returns once the control
/// plane has moved the node's twin away live, every update applied once.
#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_drained_node_s_twin_moves_away_before_drain_returns() {
    let fleet = Fleet::start(WASMTWIN, &[("edge-a", "edge"), ("edge-b", "edge")]);
    fleet.apply("t8", &good("t8", 10.0));
    fleet.wait(|f| f.running_on("t8").is_some(), "t8 to be placed", 30);
    let device = Device::start(fleet.mosquitto.port, "dev/t8", 10.0);
    let first = fleet.running_on("t8").unwrap();
    let control = fleet.control.api.base.clone();
    let out = wasmtwin_tests::cli::run(
        WASMTWIN,
        &[
            "drain",
            "--node",
            &first,
            "--control",
            &control,
            "--timeout",
            "40",
        ],
        &[("WASMTWIN_CONTROL_TOKEN", wasmtwin_tests::fleet::TOKEN)],
    );
    let said = wasmtwin_tests::cli::ok(out);
    assert!(said.contains("drained"), "{said}");
    // Gone from the drained node; its new node reports it at its next
    // heartbeat.
    fleet.wait(
        |f| f.running_on("t8").is_some(),
        "t8 reported on its new node",
        10,
    );
    let now = fleet.running_on("t8").unwrap();
    assert_ne!(now, first, "drain returned with the twin still there");
    let sent = device.stop();
    let api = fleet.api_of("t8");
    api.wait_for_updates("t8", sent);
    let seqs = applied_once(&api, "t8", "applied");
    assert_eq!(seqs.len() as u64, sent, "every update applied once");
    let node = fleet
        .nodes()
        .into_iter()
        .find(|n| n["name"] == first.as_str())
        .unwrap();
    assert!(
        node["cordoned"].as_str().unwrap().starts_with("draining"),
        "{node}"
    );
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_model_that_traps_after_a_swap_is_rolled_back() {
    let fleet = Fleet::start(WASMTWIN, &[("edge-a", "edge")]);
    fleet.apply("t4", &good("t4", 5.0));
    fleet.wait(|f| f.running_on("t4").is_some(), "t4 to be placed", 30);
    let device = Device::start(fleet.mosquitto.port, "dev/t4", 5.0);
    fleet.wait(
        |f| f.status("t4").as_deref() == Some("entangled"),
        "t4 entangled",
        30,
    );
    let original = fleet.twin("t4")["running"][0]["modelDigest"].clone();
    let broken = wasmtwin_tests::misbehave_broken_release();
    std::fs::copy(&broken, fleet.dir().join("misbehave-broken.wasm")).unwrap();
    let broken_ref = fleet.dir().join("misbehave-broken.wasm");
    fleet.apply("t4", &spec("t4", arg(&broken_ref), "{mode: good}", 5.0, ""));
    fleet.wait(
        |f| {
            f.decided("t4", "decision")
                .iter()
                .any(|d| d["data"]["action"]["action"] == "rollback")
        },
        "a rollback of t4",
        60,
    );
    fleet.wait(
        |f| f.twin("t4")["running"][0]["modelDigest"] == original,
        "t4 back on its original model",
        30,
    );
    let swap = fleet
        .decided("t4", "decision")
        .into_iter()
        .find(|d| d["data"]["action"]["action"] == "swap")
        .expect("the new model was swapped in first");
    assert!(swap["seq"].as_u64() > Some(0));
    let notice = fleet
        .decided("t4", "notification")
        .into_iter()
        .find(|n| n["data"]["cause"]["cause"] == "modelFailing")
        .expect("a notification of the failing model");
    assert!(
        notice["summary"].as_str().unwrap().contains("failed"),
        "{notice}"
    );
    // Rolled back for good: no swap to the broken model again.
    std::thread::sleep(Duration::from_secs(3));
    let swaps = fleet
        .decided("t4", "decision")
        .iter()
        .filter(|d| d["data"]["action"]["action"] == "swap")
        .count();
    assert_eq!(swaps, 1, "{}", fleet.event_lines());
    let rollbacks = fleet
        .decided("t4", "decision")
        .iter()
        .filter(|d| d["data"]["action"]["action"] == "rollback")
        .count();
    assert_eq!(rollbacks, 1, "rolled back once: {}", fleet.event_lines());
    drop(device);
    let api = fleet.api_of("t4");
    applied_once(&api, "t4", "applied");
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn an_edited_event_history_fails_verification_naming_the_record() {
    let mut fleet = Fleet::start(WASMTWIN, &[("edge-a", "edge")]);
    fleet.apply("t5", &good("t5", 2.0));
    fleet.wait(|f| f.running_on("t5").is_some(), "t5 to be placed", 30);
    let records = fleet.events().len();
    assert!(records >= 3, "{}", fleet.event_lines());
    let data = fleet.control_data.clone();
    // The control plane holds its store open: stop it, then read.
    fleet.control.child.kill().unwrap();
    fleet.control.child.wait().unwrap();
    let verify = |data: &PathBuf| {
        std::process::Command::new(WASMTWIN)
            .args(["events", "verify", "--data", arg(data)])
            .output()
            .unwrap()
    };
    let clean = verify(&data);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("intact"));
    // Edit the second record's summary in the store, as an intruder would.
    {
        use redb::ReadableTable;
        let db = redb::Database::open(data.join("control.redb")).unwrap();
        let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
        let write = db.begin_write().unwrap();
        {
            let mut events = write.open_table(table).unwrap();
            let edited = {
                let bytes = events.get(2).unwrap().unwrap();
                let mut record: Value = serde_json::from_slice(bytes.value()).unwrap();
                record["summary"] = json!("nothing happened here");
                serde_json::to_vec(&record).unwrap()
            };
            events.insert(2, edited.as_slice()).unwrap();
        }
        write.commit().unwrap();
    }
    let tampered = verify(&data);
    assert!(!tampered.status.success());
    let said = String::from_utf8_lossy(&tampered.stderr);
    assert!(said.contains("record 2"), "{said}");
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_twin_starved_by_its_cpu_share_gets_a_larger_one() {
    let fleet = Fleet::start(WASMTWIN, &[("edge-a", "edge")]);
    // 100,000 primes an update, twice a second: more than a 50m share
    // computes, so updates queue.
    let starved = spec(
        "t6",
        arg(&plugin("prime")),
        "{primes: 100000}",
        2.0,
        "  resources:\n    cpu: 50m\n    deadlineMs: 20000\n",
    )
    .replace("boundMs: 150", "boundMs: 1000")
    .replace("cooldownSeconds: 20", "cooldownSeconds: 6")
    .replace(
        "    holdSeconds: 2\n",
        "    holdSeconds: 2\n    maxCpu: \"2\"\n",
    );
    fleet.apply("t6", &starved);
    fleet.wait(|f| f.running_on("t6").is_some(), "t6 to be placed", 30);
    let device = Device::start(fleet.mosquitto.port, "dev/t6", 2.0);
    fleet.wait(
        |f| {
            f.decided("t6", "decision")
                .iter()
                .any(|d| d["data"]["action"]["action"] == "scale")
        },
        "t6's CPU share to be raised",
        90,
    );
    let scale = fleet
        .decided("t6", "decision")
        .into_iter()
        .find(|d| d["data"]["action"]["action"] == "scale")
        .unwrap();
    assert_eq!(scale["data"]["cause"]["cause"], "compute", "{scale}");
    // In one step to enough: the share at which its processing would take
    // half of what the bound leaves after transit, at least double.
    let cause = &scale["data"]["cause"];
    let processing = cause["queueMs"].as_f64().unwrap() + cause["modelMs"].as_f64().unwrap();
    let observed = &scale["data"]["observed"]["running"][0]["entanglement"]["parts"];
    let budget = (1000.0 - observed["transitMs"].as_f64().unwrap_or(0.0)) / 2.0;
    let enough = ((50.0 * processing / budget).ceil() as u64)
        .max(100)
        .div_ceil(10)
        * 10;
    assert_eq!(scale["data"]["action"]["millis"], enough, "{scale}");
    fleet.wait(
        |f| f.status("t6").as_deref() == Some("entangled"),
        "t6 entangled again with its larger share",
        120,
    );
    assert!(
        fleet
            .decided("t6", "decision")
            .iter()
            .all(|d| d["data"]["action"]["action"] != "migrate"),
        "{}",
        fleet.event_lines()
    );
    let sent = device.stop();
    let api = fleet.api_of("t6");
    api.wait_for_updates("t6", sent);
    applied_once(&api, "t6", "last_seq");
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_twin_leaves_a_domain_no_longer_trusted_enough() {
    let fleet = Fleet::start(WASMTWIN, &[("edge-a", "edge"), ("cloud-a", "cloud")]);
    let domain = |name: &str, trust: u32| {
        let (status, body) = fleet.control.api.put(
            &format!("/v1/domains/{name}"),
            &json!({ "trust": trust }).to_string(),
        );
        assert_eq!(status, 200, "{body}");
    };
    domain("plant-a", 3);
    domain("provider-x", 3);
    let twin = good("t7", 5.0).replace(
        "    zones: [edge, cloud]\n",
        "    zones: [edge, cloud]\n    minTrust: 2\n",
    );
    fleet.apply("t7", &twin);
    fleet.wait(
        |f| f.running_on("t7").as_deref() == Some("edge-a"),
        "t7 on the edge",
        30,
    );
    let device = Device::start(fleet.mosquitto.port, "dev/t7", 5.0);
    domain("plant-a", 1);
    fleet.wait(
        |f| f.running_on("t7").as_deref() == Some("cloud-a"),
        "t7 moved out of the untrusted domain",
        60,
    );
    let moved = fleet
        .decided("t7", "decision")
        .into_iter()
        .find(|d| d["data"]["action"]["action"] == "migrate")
        .unwrap();
    assert!(
        moved["summary"]
            .as_str()
            .unwrap()
            .contains("trust 1, below the twin's minimum 2"),
        "{moved}"
    );
    let management = fleet.events();
    assert!(
        management
            .iter()
            .any(|e| e["kind"] == "management" && e["data"]["domain"] == "plant-a"),
        "the trust change is recorded with who made it"
    );
    let sent = device.stop();
    let api = fleet.api_of("t7");
    api.wait_for_updates("t7", sent);
    assert_eq!(applied_once(&api, "t7", "applied").len() as u64, sent);
}
