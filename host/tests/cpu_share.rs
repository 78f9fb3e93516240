//! A twin's CPU share (`spec.resources.cpu`): a twin over its share is
//! paused, its updates queue and its timeliness shows it, while a
//! neighbour without a share keeps its own; raising the share on the
//! running twin applies in place, and the twin catches up. The node runs
//! as a `wasmtwin host` process fed by an MQTT broker in this process.

mod common;

use std::time::{Duration, Instant};

use common::{Site, message};
use serde_json::{Value, json};
use wasmtwin_tests::cli::arg;
use wasmtwin_tests::node::wait_for;
use wasmtwin_tests::plugin;

/// A `prime` twin computing `primes` primes per update (100,000 is tens of
/// milliseconds of CPU), its timeliness measured over 2 s, with
/// `resources` (YAML under `spec.resources`).
fn prime_spec(name: &str, primes: u32, resources: &str) -> String {
    let extra = format!(
        "  requirements:\n    windowSeconds: 2\n    expectedRateHz: 5\n  resources:\n    deadlineMs: 20000\n{resources}"
    );
    common::spec(name, "good", &extra)
        .replace(arg(&plugin("misbehave")), arg(&plugin("prime")))
        .replace(
            "config: {mode: good}",
            &format!("config: {{primes: {primes}}}"),
        )
}

/// Publishes updates `seqs` to both twins at 5 Hz, as two devices would.
fn feed(site: &Site, seqs: std::ops::RangeInclusive<u64>) {
    let started = Instant::now();
    for (i, seq) in seqs.enumerate() {
        let due = started + Duration::from_millis(200) * i as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        site.publish("dev/hog", &[message(seq, json!(seq))]);
        site.publish("dev/calm", &[message(seq, json!(seq))]);
    }
}

fn p95_ms(twin: &Value) -> f64 {
    twin["entanglement"]["timelinessMs"]["p95"]
        .as_f64()
        .unwrap_or_else(|| panic!("no timeliness in {twin}"))
}

#[test]
fn a_twin_over_its_cpu_share_queues_its_neighbour_does_not_and_raising_it_live_recovers() {
    let started = Instant::now();
    let mut site = Site::start(&[]);
    let (status, body) = site.apply("hog", &prime_spec("hog", 100_000, "    cpu: lots\n"));
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("spec.resources.cpu") && body.contains("CPU quantity"),
        "{body}"
    );
    let (status, body) = site.apply("hog", &prime_spec("hog", 100_000, "    cpu: 50m\n"));
    assert_eq!(status, 200, "{body}");
    let (status, body) = site.apply("calm", &prime_spec("calm", 1_000, ""));
    assert_eq!(status, 200, "{body}");

    // 20 updates in 4 s: the hog needs several times its 50m to keep up.
    feed(&site, 1..=20);
    site.node.api.wait_for_updates("calm", 20);
    let calm = site.twin("calm");
    let hog = site.twin("hog");
    eprintln!("{:?} throttled: {hog}", started.elapsed());
    let throttled_p95 = p95_ms(&hog);
    let applied = hog["updatesApplied"].as_u64().unwrap_or(0);
    assert!((1..15).contains(&applied), "the hog queues: {hog}");
    assert!(throttled_p95 > 1000.0, "the hog's timeliness grows: {hog}");
    assert!(p95_ms(&calm) < 500.0, "the neighbour keeps its own: {calm}");
    let cpu = &hog["cpu"];
    assert_eq!(cpu["shareMillis"], 50, "{hog}");
    assert!(cpu["throttledSeconds"].as_f64() > Some(1.0), "{hog}");
    assert!(cpu["usedSeconds"].as_f64() > Some(0.0), "{hog}");
    let utilization = cpu["utilization"].as_f64().unwrap_or(0.0);
    assert!(
        (0.6..1.6).contains(&utilization),
        "the hog runs at its share: {hog}"
    );
    assert_eq!(calm["cpu"]["shareMillis"], Value::Null, "{calm}");
    assert_eq!(calm["cpu"]["utilization"], Value::Null, "{calm}");

    // Two cores for the hog, on the running twin: no restart, nothing
    // replayed or lost.
    let (status, body) = site.apply("hog", &prime_spec("hog", 100_000, "    cpu: \"2\"\n"));
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"], "updated", "{body}");
    let raised = site.twin("hog");
    assert!(
        raised["updatesApplied"].as_u64() >= Some(applied),
        "{raised}"
    );
    assert_eq!(raised["cpu"]["shareMillis"], 2000, "{raised}");
    eprintln!("{:?} raise: {}", started.elapsed(), raised["cpu"]);

    // Its backlog drains, then it keeps up with its device.
    wait_for(|| site.twin("hog")["lastSeq"] == 20, "the hog to catch up");
    eprintln!(
        "{:?} drained: {}",
        started.elapsed(),
        site.twin("hog")["cpu"]
    );
    feed(&site, 21..=32);
    wait_for(|| site.twin("hog")["lastSeq"] == 32, "the hog to keep up");
    let hog = site.twin("hog");
    eprintln!("{:?} raised: {hog}", started.elapsed());
    assert_eq!(hog["updatesApplied"], 32, "each update once: {hog}");
    assert_eq!(
        hog["properties"]["updates_applied"]["value"], 32,
        "the model's own count goes on from where it was: {hog}"
    );
    assert_eq!(hog["guestErrors"], 0, "{hog}");
    let recovered_p95 = p95_ms(&hog);
    assert!(
        recovered_p95 < 1000.0 && recovered_p95 < throttled_p95 / 2.0,
        "the hog's timeliness recovers ({throttled_p95} ms before): {hog}"
    );

    let (_, metrics) = site.node.api.get("/metrics");
    for series in [
        "wasmtwin_twin_cpu_seconds_total{twin=\"hog\"}",
        "wasmtwin_twin_cpu_seconds_total{twin=\"calm\"}",
        "wasmtwin_twin_cpu_throttled_seconds_total{twin=\"hog\"}",
        "wasmtwin_twin_cpu_share{twin=\"hog\"} 2",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    assert!(
        !metrics.contains("wasmtwin_twin_cpu_share{twin=\"calm\"}"),
        "no share, no series: {metrics}"
    );
    assert!(
        !metrics.contains("wasmtwin_twin_duplicates_total{twin=\"hog\"} 1"),
        "{metrics}"
    );

    // The new share is the stored spec: a restarted node keeps it.
    site.restart();
    let spec = site.node.api.json("/v1/twins/hog/spec");
    assert_eq!(spec["spec"]["resources"]["cpu"], "2", "{spec}");
    assert_eq!(site.twin("hog")["cpu"]["shareMillis"], 2000);
    eprintln!("{:?} done", started.elapsed());
}
