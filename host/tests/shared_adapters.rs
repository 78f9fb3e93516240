//! Twins of a node sharing one adapter instance (`--share-adapters`): each
//! gets its own updates, in order, and a payload that makes the shared
//! instance fail costs only the twin it came for. Run on the embedded
//! broker, so no server needs installing.

mod common;

use common::{Site, created, machine_spec, message, metric_of, spec};
use serde_json::json;
use wasmtwin_tests::node::wait_for;

/// The adapter instances the site's node made for its twins to share.
fn made(site: &Site) -> f64 {
    metric_of(&site.node.api, "wasmtwin_node_shared_adapters_made_total")
}

/// A `machine` telemetry message of temperature `celsius`.
fn reading(seq: u64, celsius: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({ "seq": seq, "ts_ms": 1, "temperature": celsius })).unwrap()
}

#[test]
fn twins_sharing_an_adapter_each_apply_their_own_messages_in_order() {
    let site = Site::start(&["--share-adapters"]);
    for name in ["a", "b"] {
        created(&site, name, &machine_spec(name));
    }
    // Interleaved, so that the twins' turns on the instance alternate.
    for chunk in 0..5u64 {
        let seqs = chunk * 10 + 1..=chunk * 10 + 10;
        let readings = |offset| {
            seqs.clone()
                .map(|s| reading(s, offset + s))
                .collect::<Vec<_>>()
        };
        site.publish("dev/a", &readings(0));
        site.publish("dev/b", &readings(100));
    }
    for (name, offset) in [("a", 0), ("b", 100)] {
        site.node.api.wait_for_updates(name, 50);
        let history = site.node.api.json(&format!(
            "/v1/twins/{name}/history?property=temperature&limit=1000"
        ));
        let points: Vec<(u64, u64)> = history["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|p| (p["seq"].as_u64().unwrap(), p["value"].as_u64().unwrap()))
            .collect();
        // Its own device's readings, each once, in order.
        assert_eq!(
            points,
            (1..=50).map(|s| (s, offset + s)).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(site.twin(name)["guestErrors"], 0);
    }
    // Shared instances served them (a node that does not share makes
    // none), no more than it has twins.
    let made = made(&site);
    assert!((1.0..=2.0).contains(&made), "{made}");
}

#[test]
fn a_payload_that_breaks_the_shared_adapter_costs_only_its_own_twin() {
    let site = Site::start(&["--share-adapters"]);
    // `tight`'s calls get little fuel: enough for a small payload, not
    // for decoding a large one, which runs out and poisons the instance.
    let tight = "  resources:\n    fuelPerUpdate: 2000000\n";
    created(&site, "tight", &spec("tight", "good", tight));
    created(&site, "roomy", &spec("roomy", "good", ""));
    site.publish("dev/tight", &[message(1, json!(1))]);
    site.node.api.wait_for_updates("tight", 1);

    let mut large = json!({ "seq": 2, "ts_ms": 1 });
    if let Some(fields) = large.as_object_mut() {
        fields.extend((0..20_000).map(|i| (format!("p{i}"), json!(i))));
    }
    site.publish("dev/tight", &[serde_json::to_vec(&large).unwrap()]);
    wait_for(
        || site.twin("tight")["guestErrors"] == 1,
        "the large payload to fail for tight",
    );
    let failed = site.twin("tight");
    let error = failed["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("twin `tight`") && error.contains("ran out of fuel"),
        "{failed}"
    );

    // The next turn makes a new instance; both twins go on.
    site.publish(
        "dev/roomy",
        &(1..=5).map(|s| message(s, json!(s))).collect::<Vec<_>>(),
    );
    site.publish("dev/tight", &[message(3, json!(3))]);
    site.node.api.wait_for_updates("roomy", 5);
    site.node.api.wait_for_updates("tight", 2);
    assert_eq!(site.twin("roomy")["guestErrors"], 0);
    assert_eq!(site.node.api.history_seqs("tight", "applied"), vec![1, 3]);
}
