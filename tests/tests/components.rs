//! The example plugins behave the same as Wasm components as they do
//! natively: describe, adapters, actions, and the compile cache.

use serde_json::json;
use wasmtwin::runtime::{
    AdapterInstance, CacheOutcome, Failure, Limits, ModelInstance, Runtime, RuntimeConfig,
};
use wasmtwin_tests::plugin_bytes;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// An instance of the `machine` model, not yet initialised.
async fn machine() -> ModelInstance {
    let runtime = runtime();
    let component = runtime.load_model(&plugin_bytes("machine")).unwrap();
    ModelInstance::new(&runtime, &component, "m", Limits::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn machine_describes_itself() {
    let mut instance = machine().await;
    let d = instance.describe().await.unwrap();
    assert_eq!(d.name, "machine");
    assert_eq!(d.state_version, 1);
    let temperature = d
        .properties
        .iter()
        .find(|p| p.name == "temperature")
        .unwrap();
    assert_eq!(
        (temperature.kind.as_str(), temperature.unit.as_str()),
        ("number", "Cel")
    );
    assert!(d.actions.iter().any(|a| a.name == "stop"));
    assert!(d.events.iter().any(|e| e.name == "health_changed"));
}

#[tokio::test]
async fn machine_actions_produce_device_commands() {
    let mut instance = machine().await;
    instance.init(&json!({})).await.unwrap();
    let outcome = instance
        .on_action("stop", &json!({"reason": "test"}))
        .await
        .unwrap();
    assert_eq!(
        outcome.commands,
        vec![("stop".to_string(), json!({"reason": "test"}))]
    );
    let err = instance
        .on_action("set_speed", &json!({"rpm": -5}))
        .await
        .unwrap_err();
    assert!(matches!(err.failure, Failure::Refused { .. }), "{err}");
}

#[tokio::test]
async fn json_adapter_decodes_and_encodes() {
    let runtime = runtime();
    let component = runtime.load_adapter(&plugin_bytes("json-adapter")).unwrap();
    let mut adapter = AdapterInstance::new(&runtime, &component, "m", Limits::default())
        .await
        .unwrap();
    let updates = adapter
        .decode(
            "plant/motor-1/telemetry",
            br#"{"seq":7,"ts_ms":1000,"temperature":71.5,"running":true}"#,
        )
        .await
        .unwrap();
    assert_eq!(updates.len(), 2);
    assert!(updates.iter().all(|u| u.seq == 7 && u.ts_ms == 1000));
    let err = adapter.decode("t", b"{garbage").await.unwrap_err();
    assert!(err.to_string().contains("not JSON"), "{err}");
    let payload = adapter
        .encode("stop", &json!({"reason": "x"}))
        .await
        .unwrap();
    let decoded: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        decoded,
        json!({"command": "stop", "payload": {"reason": "x"}})
    );
}

#[test]
fn a_model_is_not_an_adapter_and_vice_versa() {
    let runtime = runtime();
    let err = runtime.load_adapter(&plugin_bytes("prime")).err().unwrap();
    assert!(
        format!("{err:#}").contains("not a wasmtwin adapter"),
        "{err:#}"
    );
    let err = runtime
        .load_model(&plugin_bytes("json-adapter"))
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("not a wasmtwin model"),
        "{err:#}"
    );
    let err = runtime.load_model(b"\0asm\x01\0\0\0").err().unwrap();
    assert!(
        format!("{err:#}").contains("compiling component"),
        "{err:#}"
    );
}

#[test]
fn compiled_components_are_cached_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = plugin_bytes("prime");
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().join("cache")),
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(config.clone()).unwrap();
    assert_eq!(runtime.compile(&bytes).unwrap().2, CacheOutcome::Compiled);
    assert_eq!(runtime.compile(&bytes).unwrap().2, CacheOutcome::Memory);
    let fresh = Runtime::new(config).unwrap();
    let (digest, _, outcome) = fresh.compile(&bytes).unwrap();
    assert_eq!(outcome, CacheOutcome::Disk);
    assert_eq!(digest, wasmtwin::digest::Digest::of(&bytes));

    // A damaged cache entry is ignored and rewritten, not trusted.
    for entry in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    fresh.clear_memory_cache();
    assert_eq!(fresh.compile(&bytes).unwrap().2, CacheOutcome::Compiled);
}

#[test]
fn defect_16_a_component_built_against_the_old_contract_is_refused_saying_to_rebuild() {
    let runtime = runtime();
    let err = runtime
        .load_model(&plugin_bytes("legacy"))
        .err()
        .expect("a 0.1.0 component must be refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("wasmtwin:twin@0.1.0")
            && text.contains("wasmtwin:twin@0.2.0")
            && text.contains("rebuild it with the current wasmtwin-sdk"),
        "{text}"
    );
}

#[tokio::test]
async fn defect_16_an_action_changes_the_state_and_declares_its_schemas() {
    let mut instance = machine().await;
    instance.init(&json!({})).await.unwrap();
    let d = instance.describe().await.unwrap();
    let set_speed = d.actions.iter().find(|a| a.name == "set_speed").unwrap();
    let input: serde_json::Value =
        serde_json::from_str(set_speed.input.as_deref().unwrap()).unwrap();
    assert_eq!(input["required"], json!(["rpm"]));
    let outcome = instance.on_action("reset", &json!(null)).await.unwrap();
    assert_eq!(outcome.changes, [("alarms".to_string(), json!(0))]);
    assert_eq!(outcome.result, json!({"cleared": 0}));
}
