//! Decodes JSON telemetry `{"seq": N, "ts_ms": N, "<property>": value, ...}`
//! into one update per property, and encodes commands as
//! `{"command": name, "payload": ...}`.

use serde_json::{Map, Value, json};
use wasmtwin_sdk::{Adapter, Command, Error, Update};

/// The JSON telemetry adapter.
pub struct JsonAdapter;

fn field_u64(object: &Map<String, Value>, name: &str) -> Result<u64, Error> {
    match object.get(name) {
        Some(value) => value.as_u64().ok_or_else(|| {
            Error::new(format!(
                "`{name}` must be a non-negative integer, got {value}"
            ))
        }),
        None => Err(Error::new(format!("missing `{name}`"))),
    }
}

impl Adapter for JsonAdapter {
    fn decode(_topic: &str, payload: &[u8]) -> Result<Vec<Update>, Error> {
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| Error::new(format!("payload is not JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(Error::new("payload must be a JSON object"));
        };
        let seq = field_u64(&object, "seq")?;
        let ts_ms = field_u64(&object, "ts_ms")?;
        let updates: Vec<Update> = object
            .into_iter()
            .filter(|(key, _)| key != "seq" && key != "ts_ms")
            .map(|(property, value)| Update {
                seq,
                ts_ms,
                property,
                value,
            })
            .collect();
        if updates.is_empty() {
            return Err(Error::new(
                "payload carries no property besides `seq` and `ts_ms`",
            ));
        }
        Ok(updates)
    }

    fn encode(command: &Command) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(&json!({ "command": command.name, "payload": command.payload }))
            .map_err(|e| Error::new(format!("cannot encode command: {e}")))
    }
}

wasmtwin_sdk::export_adapter!(JsonAdapter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_update_per_property() {
        let updates = JsonAdapter::decode(
            "t",
            br#"{"seq":3,"ts_ms":10,"temperature":71.5,"running":true}"#,
        )
        .unwrap();
        assert_eq!(updates.len(), 2);
        assert!(updates.iter().all(|u| u.seq == 3 && u.ts_ms == 10));
        assert!(
            updates
                .iter()
                .any(|u| u.property == "temperature" && u.value == json!(71.5))
        );
    }

    #[test]
    fn names_what_is_wrong() {
        let err = JsonAdapter::decode("t", br#"{"ts_ms":10,"x":1}"#).unwrap_err();
        assert!(err.message().contains("missing `seq`"), "{err}");
        let err = JsonAdapter::decode("t", br#"{"seq":-1,"ts_ms":10,"x":1}"#).unwrap_err();
        assert!(err.message().contains("`seq`"), "{err}");
        let err = JsonAdapter::decode("t", b"not json").unwrap_err();
        assert!(err.message().contains("not JSON"), "{err}");
        let err = JsonAdapter::decode("t", br#"{"seq":1,"ts_ms":1}"#).unwrap_err();
        assert!(err.message().contains("no property"), "{err}");
    }

    #[test]
    fn encodes_commands() {
        let bytes = JsonAdapter::encode(&Command {
            name: "stop".into(),
            payload: json!({"reason": "overheat"}),
        })
        .unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            json!({"command": "stop", "payload": {"reason": "overheat"}})
        );
    }
}
