//! Pre-copy: a migration sends a snapshot of the twin's state to the
//! target while the twin still runs, and the handover's bundle carries only
//! what changed since. Two `wasmtwin host` processes on the embedded broker.

mod common;

use common::{Site, TOKEN, message, spec};
use reqwest::Method;
use serde_json::{Value, json};
use wasmtwin::api::BUNDLE_TYPE;
use wasmtwin::checkpoint::{Checkpoint, GUEST_SECTION};
use wasmtwin::client::{NodeClient, Precopy, Step, migrate_observed};
use wasmtwin::node::Bundle;
use wasmtwin::twin::entanglement::{Entanglement, Timing};
use wasmtwin_tests::cli::arg;
use wasmtwin_tests::faults::{Direction, FaultProxy};
use wasmtwin_tests::node::{Api, Node, wait_for};
use wasmtwin_tests::plugin;

/// A `prime` twin `p` whose state is padded to 256 KiB, fed from `dev/p`.
fn padded_prime() -> String {
    spec("p", "good", "")
        .replace(arg(&plugin("misbehave")), arg(&plugin("prime")))
        .replace(
            "config: {mode: good}",
            "config: {primes: 10, state_kib: 256}",
        )
}

/// The site (node A, the broker) and a second node B on the same broker;
/// a padded `prime` twin on A has applied two messages.
fn two_nodes() -> (Site, Node) {
    two_nodes_with(&padded_prime())
}

/// [`two_nodes`] with a twin `p` of `spec`.
fn two_nodes_with(spec: &str) -> (Site, Node) {
    let site = Site::start(&[]);
    let b = another_node(&site, "b", &[]);
    let (status, body) = site.apply("p", spec);
    assert_eq!(status, 200, "{body}");
    site.publish("dev/p", &[message(1, json!(1)), message(2, json!(2))]);
    site.node.api.wait_for_updates("p", 2);
    (site, b)
}

/// Another node on the site's broker, named `name`, with `extra`
/// arguments.
fn another_node(site: &Site, name: &str, extra: &[&str]) -> Node {
    let data = site.data.join(name);
    std::fs::create_dir_all(&data).unwrap();
    // Named apart: a node's broker sessions carry its name.
    let args: Vec<String> = ["--name", name]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect();
    common::host(&data, site.mqtt, &args)
}

/// `wasmtwin migrate p` with `extra` arguments: the bundle's size it
/// reports.
fn migrate(from: &Node, to: &Node, extra: &[&str]) -> u64 {
    let args = [
        &[
            "migrate",
            "p",
            "--from",
            &from.api.base,
            "--to",
            &to.api.base,
        ][..],
        extra,
        &["--token", TOKEN],
    ]
    .concat();
    let out = wasmtwin_tests::cli::ok(wasmtwin_tests::cli::run(
        env!("CARGO_BIN_EXE_wasmtwin"),
        &args,
        &[],
    ));
    let bytes = out
        .split(" byte bundle")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok());
    bytes.unwrap_or_else(|| panic!("no bundle size in {out}"))
}

/// The twin's updates applied and last sequence number on `node`.
fn progress(node: &Node) -> (Value, Value) {
    let twin = node.api.json("/v1/twins/p");
    (
        twin["properties"]["updates_applied"]["value"].clone(),
        twin["lastSeq"].clone(),
    )
}

#[test]
fn a_migration_hands_over_the_changes_from_a_snapshot_sent_ahead() {
    let (site, b) = two_nodes();
    let before = progress(&site.node);

    // Pre-copied (the default): the 256 KiB of state went ahead, and the
    // bundle carries a few bytes of it.
    let precopied = migrate(&site.node, &b, &[]);
    assert!(precopied < 64 << 10, "a {precopied}-byte bundle");
    assert_eq!(progress(&b), before, "the state arrived whole");
    site.publish("dev/p", &[message(3, json!(3))]);
    b.api.wait_for_updates("p", 3);
    // The window went ahead too, and was rebuilt from it: it still holds
    // the two updates applied on A.
    let twin = b.api.json("/v1/twins/p");
    assert_eq!(twin["entanglement"]["updatesInWindow"], 3, "{twin}");

    // The whole state in the bundle, as before.
    let whole = migrate(&b, &site.node, &["--no-precopy"]);
    assert!(whole > 256 << 10, "a {whole}-byte bundle");
    site.publish("dev/p", &[message(4, json!(4))]);
    site.node.api.wait_for_updates("p", 4);
    let (applied, last) = progress(&site.node);
    assert_eq!((applied, last), (json!(4), json!(4)));
}

/// The steps of `wasmtwin migrate` by hand, so that the target can be
/// handed a delta against a snapshot it does not hold.
#[test]
fn a_delta_against_a_snapshot_the_target_does_not_hold_is_refused_and_the_twin_resumes() {
    let (site, b) = two_nodes();
    let a = &site.node.api;
    let http = reqwest::blocking::Client::new();
    told_of_the_twin(a, &b);

    // The source keeps the snapshot it sends; the target is given another.
    let ahead = a.bytes("/v1/twins/p/base");
    assert!(ahead.len() > 256 << 10, "{} bytes", ahead.len());
    let mut other = Checkpoint::read_from(&ahead[..]).unwrap();
    let guest = other.section(GUEST_SECTION).unwrap();
    let digest = blake3::hash(guest).to_hex().to_string();
    for (section, body) in &mut other.sections {
        if section == GUEST_SECTION {
            body[0] ^= 1;
        }
    }
    // What is not a checkpoint is refused, naming why.
    let (status, body) = b.api.put("/v1/migrations/p/base", "another snapshot");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not a wasmtwin checkpoint"), "{body}");
    let held = http
        .put(format!("{}/v1/migrations/p/base", b.api.base))
        .bearer_auth(TOKEN)
        .body(other.to_bytes().unwrap())
        .send()
        .unwrap();
    assert_eq!(held.status(), 200);
    let held: Value = held.json().unwrap();
    assert_ne!(held["base"], digest.as_str());

    // The source hands over a delta against its own.
    let bundle = handover(a, &format!("?base={digest}"));
    assert!(bundle.len() < 64 << 10, "a delta: {} bytes", bundle.len());

    // The target cannot rebuild the state from it: refused, nothing runs.
    refused_by_target(&b, bundle, "is against snapshot");

    // The twin resumes on the source with its state, and goes on.
    let (status, body) = a.post("/v1/twins/p/resume?withdrawn=true", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(progress(&site.node), (json!(2), json!(2)));
    site.publish("dev/p", &[message(3, json!(3))]);
    a.wait_for_updates("p", 3);
}

/// Two handovers of one twin at once: the second is refused, and the move
/// under way stays on record. (A second used to take the first's place at
/// the worker, and the end of the one it displaced cleared that record: the
/// twin, stopped for its move, was then "not found" on its source, and a
/// move that landed would have left its broker session behind.)
#[test]
fn a_second_handover_while_one_is_under_way_is_refused() {
    let (site, _b) = two_nodes();
    // Both wait for message 3 at the worker, whichever comes first.
    let handovers: Vec<_> = (0..2)
        .map(|_| {
            let api = Api::new(site.node.api.base.clone(), TOKEN);
            std::thread::spawn(move || {
                let (status, body) = api.post("/v1/twins/p/handover?until=3", "");
                let refusal = (status != 200).then_some(body);
                (status, refusal)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(1));
    site.publish("dev/p", &[message(3, json!(3))]);
    let mut answers: Vec<_> = handovers.into_iter().map(|h| h.join().unwrap()).collect();
    answers.sort();
    assert_eq!(answers[0], (200, None), "one handed over");
    assert_eq!(answers[1].0, 409, "one refused: {:?}", answers[1].1);
    let refusal = answers[1].1.as_deref().unwrap_or_default();
    assert!(refusal.contains("handed over already"), "{refusal}");

    // The twin is moving, not gone.
    let (status, body) = site.node.api.get("/v1/twins/p");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("moving"), "{body}");
    // Nothing took it: it resumes here, and goes on.
    let (status, body) = site.node.api.post("/v1/twins/p/resume?withdrawn=true", "");
    assert_eq!(status, 200, "{body}");
    site.publish("dev/p", &[message(4, json!(4))]);
    site.node.api.wait_for_updates("p", 4);
    assert_eq!(progress(&site.node), (json!(4), json!(4)));
}

/// A twin in a move is made anew or deleted on neither of its nodes: not
/// by a spec, a checkpoint restored, a second move to the same target or a
/// deletion (which answered "no twin" and let the move go on). A spec used
/// to start it anew on the node it was leaving (stopped there, it was in
/// neither node's list of twins), over the stored state a failed move
/// resumes from, and on the one it was arriving at, where the twin that
/// landed then took the fresh one's place and left its worker running. A
/// second arrival used to take the first one's place.
#[test]
fn a_twin_in_a_move_is_made_anew_or_deleted_on_neither_node() {
    let (site, b) = two_nodes();
    let a = &site.node.api;
    let spec = padded_prime();
    let checkpoint = a.bytes("/v1/twins/p/checkpoint");
    let restore = |api: &Api| {
        let path = "/v1/twins/p/checkpoint?replace=true";
        api.send_bytes(Method::PUT, path, BUNDLE_TYPE, checkpoint.clone())
    };
    let arrival = a.get("/v1/twins/p/spec").1;
    let (status, body) = b.api.put("/v1/migrations/p", &arrival);
    assert_eq!(status, 200, "{body}");
    for (status, body) in [
        b.api.put("/v1/twins/p", &spec),
        restore(&b.api),
        b.api.put("/v1/migrations/p", &arrival),
        b.api.delete("/v1/twins/p"),
    ] {
        assert_eq!(status, 409, "{body}");
        assert!(body.contains("arriving here"), "{body}");
    }

    let (status, _) = a.post("/v1/twins/p/handover", "");
    assert_eq!(status, 200);
    for (status, body) in [site.apply("p", &spec), restore(a), a.delete("/v1/twins/p")] {
        assert_eq!(status, 409, "{body}");
        assert!(body.contains("being handed over"), "{body}");
    }

    // The move called off, the twin goes on where it was, state and all.
    let (status, body) = b.api.delete("/v1/migrations/p");
    assert_eq!(status, 204, "{body}");
    let (status, body) = a.post("/v1/twins/p/resume?withdrawn=true", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(progress(&site.node), (json!(2), json!(2)));
    site.publish("dev/p", &[message(3, json!(3))]);
    a.wait_for_updates("p", 3);
    let (status, body) = b.api.put("/v1/twins/p", &spec);
    assert_eq!(status, 200, "{body}");
}

/// A move whose conductor stopped before the end no longer refuses every
/// later move of its twin to that node: past the node's
/// `--arrival-timeout`, a new one replaces it.
#[test]
fn an_arrival_left_by_a_stopped_conductor_is_replaced_after_the_arrival_timeout() {
    let (site, _b) = two_nodes();
    let c = another_node(&site, "c", &["--arrival-timeout", "2s"]);
    let arrival = site.node.api.get("/v1/twins/p/spec").1;
    let (status, body) = c.api.put("/v1/migrations/p", &arrival);
    assert_eq!(status, 200, "{body}");
    // Its conductor stops there. Another, at once, is refused…
    let (status, body) = c.api.put("/v1/migrations/p", &arrival);
    assert_eq!(status, 409, "{body}");
    // …and past the timeout moves the twin.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    migrate(&site.node, &c, &[]);
    assert_eq!(progress(&c), (json!(2), json!(2)));
    site.publish("dev/p", &[message(3, json!(3))]);
    c.api.wait_for_updates("p", 3);
}

/// Two conductors move one twin at once, to two nodes, their handovers
/// sent together: one moves it, and the other is refused and leaves it
/// be. The one refused used to resume the twin on its source, so that the
/// other could not record its move there: the twin ran on its source again
/// after it had started on the target.
#[test]
fn of_two_conductors_moving_a_twin_at_once_one_moves_it() {
    let (site, b) = two_nodes();
    let c = another_node(&site, "c", &[]);
    let client = |node: &Node| NodeClient::new(&node.api.base, Some(TOKEN.to_string()));
    let from = client(&site.node);
    let together = tokio::sync::Barrier::new(2);
    let conduct = async |to: &Node| {
        let to = client(to);
        let handing_over = async |step| {
            if step == Step::HandingOver {
                together.wait().await;
            }
        };
        migrate_observed("p", &from, &to, Precopy::Replay, handing_over).await
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (to_b, to_c) = runtime.block_on(async { tokio::join!(conduct(&b), conduct(&c)) });

    let (moved, stayed, refusal) = match (to_b, to_c) {
        (Ok(_), Err(e)) => (&b, &c, e),
        (Err(e), Ok(_)) => (&c, &b, e),
        outcomes => panic!("not one move and one refusal: {outcomes:?}"),
    };
    let refusal = format!("{refusal:#}");
    assert!(refusal.contains("in another move"), "{refusal}");
    // It runs where it moved, state and all, and nowhere else.
    assert_eq!(progress(moved), (json!(2), json!(2)));
    assert_eq!(stayed.api.get("/v1/twins/p").0, 404);
    redirects_to(&site.node, &moved.api.base);
    site.publish("dev/p", &[message(3, json!(3))]);
    moved.api.wait_for_updates("p", 3);
    redirects_to(&site.node, &moved.api.base);
}

/// Asserts that `node` answers for twin `p` with a redirect to the node
/// at `to`: the twin moved there, and does not run here.
fn redirects_to(node: &Node, to: &str) {
    let answer = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/v1/twins/p", node.api.base))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 308, "the source redirects to the twin");
    let location = answer.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(to), "{location}");
}

#[test]
fn the_snapshot_routes_refuse_what_they_cannot_serve() {
    let (site, b) = two_nodes();
    // No such twin on the source.
    let (status, body) = site.node.api.get("/v1/twins/nobody/base");
    assert_eq!(status, 404, "{body}");
    // Nothing arriving on the target.
    let (status, body) = b.api.put("/v1/migrations/nobody/base", "bytes");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nothing is arriving"), "{body}");
    wait_for(
        || site.node.api.get("/v1/twins/p").0 == 200,
        "the twin still to run on its node",
    );
}

/// A window that is only the rest of one sent ahead means something only
/// on a migration's target: a bundle restored with one is refused, and
/// the twin is as it was.
#[test]
fn a_restored_bundle_whose_window_is_only_the_samples_since_is_refused() {
    let site = Site::start(&[]);
    let (status, body) = site.apply("p", &padded_prime());
    assert_eq!(status, 200, "{body}");
    site.publish("dev/p", &[message(1, json!(1))]);
    site.node.api.wait_for_updates("p", 1);
    let api = &site.node.api;
    let bytes = api.bytes("/v1/twins/p/checkpoint");
    let mut bundle = Bundle::from_bytes(&bytes).unwrap();

    // A window of two samples, sent as the one recorded after a first.
    let mut e = Entanglement::new(Default::default(), 1_000_000);
    let record = |e: &mut Entanglement, seq: u64| {
        let at = 1_000_000 + seq * 1000;
        let timing = Timing {
            received_us: at,
            started_us: at,
        };
        e.record(seq, at / 1000, timing, at + 10);
    };
    record(&mut e, 1);
    let then = e.mark();
    record(&mut e, 2);
    let window = e.leave(1_010_000).since(e.mark(), then, [7; 32]).unwrap();
    bundle.entanglement = Some(window);

    let answer = api
        .http
        .put(format!("{}/v1/twins/p/checkpoint?replace=true", api.base))
        .bearer_auth(TOKEN)
        .body(bundle.to_bytes().unwrap())
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 422);
    let text = answer.text().unwrap();
    assert!(text.contains("none was sent here"), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    // The twin goes on as it was.
    site.publish("dev/p", &[message(2, json!(2))]);
    api.wait_for_updates("p", 2);
    assert_eq!(progress(&site.node), (json!(2), json!(2)));
}

/// Node `b`, the target of a migration by hand, told of twin `p` (its spec
/// on the source `a`) and listening to its device.
fn told_of_the_twin(a: &Api, b: &Node) {
    let (status, body) = b.api.put("/v1/migrations/p", &a.get("/v1/twins/p/spec").1);
    assert_eq!(status, 200, "{body}");
    let (status, body) = b.api.post("/v1/migrations/p/session", "");
    assert_eq!(status, 200, "{body}");
}

/// The target of a migration by hand, told of twin `p` and listening to
/// its device, given what the source (`site`'s node) sends ahead: the
/// target's answer (the snapshot's digest, and whether it restored it).
fn target_holding_the_base(site: &Site, b: &Node) -> Value {
    let a = &site.node.api;
    told_of_the_twin(a, b);
    let ahead = a.bytes("/v1/twins/p/base");
    let (status, held) = b.api.send_bytes(
        Method::PUT,
        "/v1/migrations/p/base",
        "application/octet-stream",
        ahead,
    );
    assert_eq!(status, 200, "{held}");
    serde_json::from_str(&held).unwrap()
}

/// The source's handover of `p` against what the target holds, replaying.
fn handed_over(site: &Site, held: &Value) -> Vec<u8> {
    let base = held["base"].as_str().unwrap();
    handover(&site.node.api, &format!("?base={base}&replay=true"))
}

/// The bundle of `p` that the source `a` hands over when asked with
/// `query`.
fn handover(a: &Api, query: &str) -> Vec<u8> {
    let bundle = a
        .http
        .post(format!("{}/v1/twins/p/handover{query}", a.base))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(bundle.status(), 200);
    bundle.bytes().unwrap().to_vec()
}

/// The target's answer to `bundle`.
fn accepted(b: &Node, bundle: Vec<u8>) -> (u16, String) {
    b.api
        .send_bytes(Method::POST, "/v1/migrations/p", BUNDLE_TYPE, bundle)
}

/// Asserts that the target refuses `bundle`, saying `why`, and runs
/// nothing.
fn refused_by_target(b: &Node, bundle: Vec<u8>, why: &str) {
    let (status, text) = accepted(b, bundle);
    assert!(status >= 400, "{status} {text}");
    assert!(text.contains(why), "{text}");
    assert_eq!(
        b.api.get("/v1/twins/p").0,
        404,
        "nothing runs on the target"
    );
}

/// The names of a bundle's checkpoint sections.
fn sections(bundle: &[u8]) -> Vec<String> {
    let bundle = Bundle::from_bytes(bundle).unwrap();
    bundle
        .checkpoint
        .sections
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn the_target_replays_on_the_snapshot_it_restored_what_the_source_applied_since() {
    let (site, b) = two_nodes();
    let held = target_holding_the_base(&site, &b);
    assert_eq!(held["replay"], true, "{held}");
    // Applied on the source after its snapshot went ahead.
    site.publish("dev/p", &[message(3, json!(3)), message(4, json!(4))]);
    site.node.api.wait_for_updates("p", 4);

    let bundle = handed_over(&site, &held);
    let names = sections(&bundle);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert!(names.contains(&"guest-replay"), "{names:?}");
    assert!(
        !names.contains(&"guest") && !names.contains(&"guest-delta"),
        "{names:?}"
    );
    // Two messages, not 256 KiB of state.
    let size = bundle.len();
    assert!(size < 16 << 10, "a {size}-byte bundle");

    let (status, text) = accepted(&b, bundle);
    assert_eq!(status, 200, "{text}");
    assert_eq!(progress(&b), (json!(4), json!(4)));
    site.publish("dev/p", &[message(5, json!(5))]);
    b.api.wait_for_updates("p", 5);
    assert_eq!(progress(&b), (json!(5), json!(5)));
}

#[test]
fn a_replay_that_does_not_reach_the_source_s_state_is_refused_and_the_twin_resumes() {
    let (site, b) = two_nodes();
    let held = target_holding_the_base(&site, &b);
    site.publish("dev/p", &[message(3, json!(3)), message(4, json!(4))]);
    site.node.api.wait_for_updates("p", 4);
    let mut bundle = Bundle::from_bytes(&handed_over(&site, &held)).unwrap();

    // The last message to replay goes missing.
    for (name, body) in &mut bundle.checkpoint.sections {
        if name == "guest-replay" {
            let mut messages: Vec<Value> = serde_json::from_slice(&body[32..]).unwrap();
            assert_eq!(messages.len(), 2, "{messages:?}");
            messages.pop();
            body.truncate(32);
            body.extend(serde_json::to_vec(&messages).unwrap());
        }
    }
    refused_by_target(
        &b,
        bundle.to_bytes().unwrap(),
        "not the source's update Some(4)",
    );

    let (status, body) = site.node.api.post("/v1/twins/p/resume?withdrawn=true", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(progress(&site.node), (json!(4), json!(4)));
}

/// An action may change the guest outside the messages it applies:
/// replaying those on the snapshot sent ahead would lose what it did, so
/// the handover carries the state's changes instead.
#[test]
fn after_an_action_the_handover_carries_the_state_s_changes_not_a_replay() {
    let (site, b) = two_nodes_with(&common::machine_spec("p"));
    let reading = |seq: u64, celsius: f64| {
        let ts_ms = 1_700_000_000_000 + seq;
        serde_json::to_vec(&json!({ "seq": seq, "ts_ms": ts_ms, "temperature": celsius })).unwrap()
    };
    let alarms =
        |node: &Node| node.api.json("/v1/twins/p")["properties"]["alarms"]["value"].clone();
    // Overheating: one alarm raised, before the snapshot goes ahead.
    site.publish("dev/p", &[reading(3, 95.0)]);
    site.node.api.wait_for_updates("p", 3);
    assert_eq!(alarms(&site.node), 1);
    let held = target_holding_the_base(&site, &b);
    // Then an operator resets the alarms, and the motor cools down.
    let (status, body) = site.node.api.post("/v1/twins/p/actions/reset", "{}");
    assert_eq!(status, 200, "{body}");
    site.publish("dev/p", &[reading(4, 50.0)]);
    site.node.api.wait_for_updates("p", 4);

    let bundle = handed_over(&site, &held);
    let names = sections(&bundle);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert!(names.contains(&"guest-delta"), "{names:?}");
    assert!(!names.contains(&"guest-replay"), "{names:?}");
    let (status, text) = accepted(&b, bundle);
    assert_eq!(status, 200, "{text}");
    assert_eq!(alarms(&b), 0);
    assert_eq!(b.api.json("/v1/twins/p")["lastSeq"], 4);
}

/// Moves `p` from the site's node to `b` through a proxy in front of `b`
/// that holds back `b`'s answers from the handover on; once the twin runs
/// on `b`, `then` is done to the proxy and the held answer's connection is
/// cut. The conductor's outcome, and the proxy.
fn answer_lost(
    site: &Site,
    b: &Node,
    then: impl Fn(&FaultProxy) + Send + Sync,
) -> (anyhow::Result<wasmtwin::client::Migration>, FaultProxy) {
    let port = b.api.base.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = FaultProxy::plain(port).expect("starting the proxy");
    let from = NodeClient::new(&site.node.api.base, Some(TOKEN.to_string()));
    let to = NodeClient::new(&proxy.url(), Some(TOKEN.to_string()));
    let handing_over = async |step| {
        if step == Step::HandingOver {
            proxy.delay(Direction::Down, 120_000);
        }
    };
    let moved = std::thread::scope(|scope| {
        let cutter = scope.spawn(|| {
            wait_for(
                || b.api.get("/v1/twins/p").0 == 200,
                "the twin to land on the target",
            );
            then(&proxy);
            assert!(proxy.cut_all() > 0, "nothing was cut");
        });
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let moved = runtime.block_on(migrate_observed(
            "p",
            &from,
            &to,
            Precopy::Replay,
            handing_over,
        ));
        cutter.join().unwrap();
        moved
    });
    (moved, proxy)
}

/// The target's answer to the bundle is lost after the twin landed there
/// (the connection cut on its way back). The conductor used to take that
/// for a failed landing and resume the twin on its source: it then ran on
/// both nodes. It asks the target now, learns the twin runs there, and
/// records the move.
#[test]
fn a_lost_answer_from_a_target_the_twin_landed_on_leaves_it_there_alone() {
    let (site, b) = two_nodes();
    let (moved, proxy) = answer_lost(&site, &b, FaultProxy::heal);
    moved.expect("the move, its answer lost, still succeeds");
    // It runs on the target, and the source only redirects to it.
    site.publish("dev/p", &[message(3, json!(3))]);
    b.api.wait_for_updates("p", 3);
    assert_eq!(progress(&b), (json!(3), json!(3)));
    // (Where the conductor reached it: through the proxy.)
    redirects_to(&site.node, &proxy.url());
    // A landed twin's arrival cannot be withdrawn, and the target says why.
    let (status, body) = b.api.delete("/v1/migrations/p");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("has arrived and runs here"), "{body}");
    assert_eq!(b.api.get("/v1/twins/p").0, 200);
}

/// The target's answer is lost after the twin landed, and the target
/// answers nothing more: the conductor cannot learn whether the twin
/// landed, so it leaves it stopped on its source (it runs on the target)
/// and says how to end the move, which then ends as it says.
#[test]
fn a_target_silent_after_a_lost_answer_leaves_the_twin_stopped_on_its_source() {
    let (site, b) = two_nodes();
    let (moved, _proxy) = answer_lost(&site, &b, |proxy| proxy.refuse(true));
    let error = format!(
        "{:#}",
        moved.expect_err("the move cannot know it succeeded")
    );
    assert!(error.contains("stays stopped on"), "{error}");
    assert!(error.contains("--end"), "{error}");
    let (status, body) = site.node.api.get("/v1/twins/p");
    assert_eq!(
        status, 503,
        "neither running nor moved on its source: {body}"
    );
    site.publish("dev/p", &[message(3, json!(3))]);
    b.api.wait_for_updates("p", 3);
    // Ended as the error says.
    let ended = wasmtwin_tests::cli::ok(end_move(&site.node.api, &b.api.base));
    assert!(ended.contains("has recorded the move"), "{ended}");
    redirects_to(&site.node, &b.api.base);
}

/// `wasmtwin migrate p --end` from node `a` to the node at `to`.
fn end_move(a: &Api, to: &str) -> std::process::Output {
    let args = [
        "migrate", "p", "--from", &a.base, "--to", to, "--end", "--token", TOKEN,
    ];
    wasmtwin_tests::cli::run(env!("CARGO_BIN_EXE_wasmtwin"), &args, &[])
}

/// A move's conductor stopped once the bundle had reached the target,
/// where the twin runs now. Resuming it on its source by hand used to start
/// it there too. The source now asks that its arrival be withdrawn first,
/// and the target, refusing to withdraw it, says the twin runs there.
#[test]
fn a_twin_whose_bundle_left_resumes_only_once_its_arrival_is_withdrawn() {
    let (site, b) = two_nodes();
    let a = &site.node.api;
    told_of_the_twin(a, &b);
    let (status, body) = accepted(&b, handover(a, ""));
    assert_eq!(status, 200, "{body}");

    let (status, body) = a.post("/v1/twins/p/resume", "");
    assert_eq!(status, 409, "the twin would run on both nodes: {body}");
    assert!(body.contains("withdrawn=true"), "{body}");
    let (status, body) = b.api.delete("/v1/migrations/p");
    assert_eq!(status, 409, "{body}");
    let to = json!({ "to": b.api.base }).to_string();
    let (status, body) = a.post("/v1/twins/p/moved", &to);
    assert_eq!(status, 200, "{body}");
    redirects_to(&site.node, &b.api.base);
    site.publish("dev/p", &[message(3, json!(3))]);
    b.api.wait_for_updates("p", 3);
}

/// A source node that restarted once its twin's bundle had left started
/// the twin again from its store, beside the one that landed on the target:
/// the twin ran on two nodes. The handover is now in the store before the
/// twin stops, and a restart keeps the twin stopped until its move ends.
#[test]
fn a_source_restarted_after_the_bundle_left_does_not_run_the_twin_again() {
    let (mut site, b) = two_nodes();
    told_of_the_twin(&site.node.api, &b);
    let bundle = handover(&site.node.api, "");
    site.restart();

    let a = &site.node.api;
    let (status, body) = a.get("/v1/twins/p");
    assert_eq!(status, 503, "the twin runs on its source again: {body}");
    let (status, body) = accepted(&b, bundle);
    assert_eq!(status, 200, "{body}");
    site.publish("dev/p", &[message(3, json!(3))]);
    b.api.wait_for_updates("p", 3);
    let (status, body) = a.post("/v1/twins/p/resume", "");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("--end"), "{body}");
    let ended = wasmtwin_tests::cli::ok(end_move(a, &b.api.base));
    assert!(ended.contains("has recorded the move"), "{ended}");
    redirects_to(&site.node, &b.api.base);
    // Ending it again finds it ended.
    let again = wasmtwin_tests::cli::ok(end_move(a, &b.api.base));
    assert!(again.contains("has recorded the move"), "{again}");
}

/// The other end of the same restart: the bundle never landed, the move is
/// ended (its arrival withdrawn), and the twin resumes on its source, for
/// good (a second restart starts it as any other).
#[test]
fn a_source_restarted_during_a_move_resumes_the_twin_once_its_arrival_is_withdrawn() {
    let (mut site, b) = two_nodes();
    told_of_the_twin(&site.node.api, &b);
    drop(handover(&site.node.api, ""));
    site.restart();

    // A target that does not answer cannot say where the twin is: nothing
    // changes.
    let unreachable = format!("http://127.0.0.1:{}", wasmtwin_tests::servers::free_port());
    let error = wasmtwin_tests::cli::refused(end_move(&site.node.api, &unreachable));
    assert!(error.contains("nothing changed"), "{error}");
    assert_eq!(site.node.api.get("/v1/twins/p").0, 503);
    let ended = wasmtwin_tests::cli::ok(end_move(&site.node.api, &b.api.base));
    assert!(ended.contains("did not land"), "{ended}");
    assert_eq!(
        b.api.get("/v1/migrations/p").0,
        404,
        "the arrival is withdrawn"
    );
    site.publish("dev/p", &[message(3, json!(3))]);
    site.node.api.wait_for_updates("p", 3);
    site.restart();
    site.publish("dev/p", &[message(4, json!(4))]);
    site.node.api.wait_for_updates("p", 4);
    assert_eq!(progress(&site.node), (json!(4), json!(4)));
}
