//! A twin as W3C WoT consumers use it (defect 15): every property the TD
//! advertises reads (`null` until the model sets it), and property reads
//! honour the application's requirements.

mod common;

use std::time::Duration;

use common::{Site, created, machine_spec};
use serde_json::{Value, json};
use wasmtwin_tests::node::wait_for;

/// A telemetry message of the machine's device.
fn telemetry(seq: u64, fields: Value) -> Vec<u8> {
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut message = json!({ "seq": seq, "ts_ms": ts_ms });
    if let (Some(message), Some(fields)) = (message.as_object_mut(), fields.as_object()) {
        message.extend(fields.clone());
    }
    serde_json::to_vec(&message).unwrap()
}

/// A node with a machine twin `motor` fed from `dev/motor`, commanding it
/// on `dev/motor/commands`.
fn motor() -> Site {
    let site = Site::start(&[]);
    let spec = machine_spec("motor").replace(
        "    topics: [dev/motor]\n",
        "    topics: [dev/motor]\n    commandTopic: dev/motor/commands\n",
    );
    assert!(spec.contains("commandTopic"), "{spec}");
    created(&site, "motor", &spec);
    site
}

#[test]
fn defect_15_a_described_property_reads_null_until_set_and_an_unknown_one_is_not_found() {
    let site = motor();
    let api = &site.node.api;
    // Nothing applied yet: every property the TD advertises still reads.
    let td = api.json("/v1/twins/motor/td");
    let properties = td["properties"].as_object().unwrap();
    assert!(properties.contains_key("health"), "{td}");
    for name in properties.keys() {
        let (status, body) = api.get(&format!("/v1/twins/motor/properties/{name}"));
        assert_eq!((status, body.as_str()), (200, "null"), "{name}");
    }
    let (status, body) = api.get("/v1/twins/motor/properties/colour");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("describes no property `colour`"), "{body}");
    assert_eq!(api.get("/v1/twins/nobody/properties/rpm").0, 404);

    site.publish("dev/motor", &[telemetry(1, json!({ "temperature": 60.5 }))]);
    wait_for(
        || api.get("/v1/twins/motor/properties/temperature").1 == "60.5",
        "the temperature",
    );
    assert_eq!(api.get("/v1/twins/motor/properties/rpm").1, "null");
}

#[test]
fn defect_15_property_reads_honour_max_age_and_min_reliability() {
    let site = motor();
    let api = &site.node.api;
    // A property with no value cannot be fresh.
    let (status, body) = api.get("/v1/twins/motor/properties/temperature?max_age_ms=60000");
    assert_eq!(status, 412, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["reasons"], json!(["`temperature` has no value yet"]));
    assert_eq!(answer["property"], "temperature");

    site.publish("dev/motor", &[telemetry(1, json!({ "temperature": 70.0 }))]);
    wait_for(
        || api.get("/v1/twins/motor/properties/temperature").1 == "70.0",
        "the temperature",
    );
    let (status, body) = api.get("/v1/twins/motor/properties/temperature?max_age_ms=60000");
    assert_eq!((status, body.as_str()), (200, "70.0"));
    // Only the property read counts: rpm has no value, temperature is fresh.
    let (status, _) = api.get("/v1/twins/motor?max_age_ms=60000");
    assert_eq!(status, 200, "the twin has values for what it was sent");
    std::thread::sleep(Duration::from_millis(50));
    let (status, body) = api.get("/v1/twins/motor/properties/temperature?max_age_ms=1");
    assert_eq!(status, 412, "{body}");
    assert!(body.contains("older than 1 ms: temperature"), "{body}");

    let (status, body) = api.get("/v1/twins/motor/properties/temperature?min_reliability=1.5");
    assert_eq!(status, 412, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let reasons = answer["reasons"].as_array().unwrap();
    assert!(
        reasons[0]
            .as_str()
            .unwrap()
            .contains("below the 1.5 asked for"),
        "{answer}"
    );
    // The twin read gives the same reason, from the same check.
    let (status, body) = api.get("/v1/twins/motor?min_reliability=1.5");
    assert_eq!(status, 412, "{body}");
    let twin: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(twin["reasons"], answer["reasons"]);
    assert_eq!(twin["twin"]["name"], "motor");
    let (status, _) = api.get("/v1/twins/motor/properties/temperature?min_reliability=0");
    assert_eq!(status, 200);
    assert_eq!(
        api.get("/v1/twins/motor/properties/temperature?max_age_ms=soon")
            .0,
        400
    );
}
