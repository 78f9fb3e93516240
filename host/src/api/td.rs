//! `GET /v1/twins/{name}/td`: the twin as a W3C WoT Thing Description 1.1,
//! built from what its model describes. Every form points at this node's
//! own routes, so a generic WoT consumer can read and observe each
//! property, invoke each action and subscribe to each event without
//! knowing our API.
//!
//! Observations and events use the HTTP binding's `sse` subprotocol: one
//! Server-Sent Events stream per affordance, each notification an unnamed
//! message whose data is JSON (so the form's `contentType` is the
//! payload's, `application/json`). Clients built on `EventSource` cannot
//! set an `Authorization` header, so those forms state their own security,
//! the bearer token in the `access_token` query parameter (RFC 6750 §2.3).

use serde_json::{Map, Value, json};

use crate::checkpoint::ModelInfo;
use crate::runtime::Description;

/// How the node protects its APIs, as a TD states it.
#[derive(Debug, Clone, Copy)]
pub enum Security {
    /// `Authorization: Bearer TOKEN` (or, on event streams, the
    /// `access_token` query parameter).
    Bearer,
    /// No authentication (`--insecure-dev`).
    None,
}

const TD_CONTEXT: &str = "https://www.w3.org/2022/wot/td/v1.1";

/// The query parameter that carries the bearer token on event streams.
pub const ACCESS_TOKEN: &str = "access_token";

/// The Thing Description of twin `name`, whose routes are under `base`
/// (an absolute URL ending in `/`).
pub fn thing_description(
    name: &str,
    base: &str,
    model: &ModelInfo,
    description: &Description,
    security: Security,
) -> Value {
    let (scheme_name, definitions, stream_security) = match security {
        Security::Bearer => (
            "bearer_sc",
            json!({
                "bearer_sc": { "scheme": "bearer", "in": "header", "name": "Authorization" },
                "bearer_query_sc": { "scheme": "bearer", "in": "query", "name": ACCESS_TOKEN },
            }),
            Some(json!(["bearer_query_sc"])),
        ),
        Security::None => (
            "nosec_sc",
            json!({ "nosec_sc": { "scheme": "nosec" } }),
            None,
        ),
    };
    // A form of an event stream of this node.
    let sse_form = |href: String, ops: [&str; 2]| {
        let mut form = json!({
            "href": href,
            "op": ops,
            "subprotocol": "sse",
            "contentType": "application/json",
            "htv:methodName": "GET",
        });
        if let Some(security) = &stream_security {
            form["security"] = security.clone();
        }
        form
    };
    let properties: Map<String, Value> = description
        .properties
        .iter()
        .map(|p| {
            let mut affordance = json!({
                "title": p.name,
                // Until the model first sets it, a property reads `null`.
                "oneOf": [{ "type": p.kind }, { "type": "null" }],
                "readOnly": true,
                "observable": true,
                "forms": [
                    {
                        "href": format!("properties/{}", p.name),
                        "op": ["readproperty"],
                        "contentType": "application/json",
                        "htv:methodName": "GET",
                    },
                    sse_form(
                        format!("properties/{}/observe", p.name),
                        ["observeproperty", "unobserveproperty"],
                    ),
                ],
            });
            if !p.description.is_empty() {
                affordance["description"] = json!(p.description);
            }
            if !p.unit.is_empty() {
                affordance["unit"] = json!(p.unit);
            }
            (p.name.clone(), affordance)
        })
        .collect();
    let actions: Map<String, Value> = description
        .actions
        .iter()
        .map(|a| {
            // The model's schemas, as it declared them (a schema that is
            // not JSON is left out rather than published broken).
            let schema = |text: &Option<String>| {
                text.as_deref()
                    .and_then(|text| serde_json::from_str::<Value>(text).ok())
            };
            let mut affordance = json!({
                "title": a.name,
                "description": a.description,
                "safe": false,
                "idempotent": false,
                // The node answers once the action is done.
                "synchronous": true,
                "output": outcome_schema(schema(&a.output)),
                "forms": [{
                    "href": format!("actions/{}", a.name),
                    "op": ["invokeaction"],
                    "contentType": "application/json",
                    "htv:methodName": "POST",
                }],
            });
            if let Some(input) = schema(&a.input) {
                affordance["input"] = input;
            }
            (a.name.clone(), affordance)
        })
        .collect();
    let events: Map<String, Value> = description
        .events
        .iter()
        .map(|e| {
            let affordance = json!({
                "title": e.name,
                "description": e.description,
                "forms": [sse_form(
                    format!("events/{}", e.name),
                    ["subscribeevent", "unsubscribeevent"],
                )],
            });
            (e.name.clone(), affordance)
        })
        .collect();
    json!({
        "@context": [TD_CONTEXT, { "htv": "http://www.w3.org/2011/http#" }],
        "@type": "Thing",
        "id": format!("urn:wasmtwin:twin:{name}"),
        "title": name,
        "description": format!(
            "Digital twin `{name}` running model {} {} ({})",
            model.name, model.version, model.component
        ),
        "version": { "instance": model.version },
        "base": base,
        "securityDefinitions": definitions,
        "security": [scheme_name],
        "properties": properties,
        "actions": actions,
        "events": events,
    })
}

/// The schema of what the action route answers: the model's reply
/// (`result`, of the model's declared schema when it declared one) and what
/// the action did.
fn outcome_schema(result: Option<Value>) -> Value {
    json!({
        "type": "object",
        "properties": {
            "result": result.unwrap_or_else(|| json!({})),
            "commands": {
                "type": "array",
                "description": "Commands sent to the device",
                "items": { "type": "object", "properties": { "name": { "type": "string" }, "payload": {} } },
            },
            "changes": { "type": "object", "description": "Properties the action set, with their new values" },
            "events": {
                "type": "array",
                "description": "Events the action raised",
                "items": { "type": "object", "properties": { "name": { "type": "string" }, "data": {} } },
            },
        },
        "required": ["result", "commands", "changes", "events"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::runtime::bindings::types::{ActionInfo, EventInfo, PropertyInfo};

    fn description() -> Description {
        Description {
            name: "machine".into(),
            version: "1.0.0".into(),
            state_version: 1,
            properties: vec![PropertyInfo {
                name: "temperature".into(),
                kind: "number".into(),
                unit: "Cel".into(),
                description: "Winding temperature".into(),
            }],
            actions: vec![ActionInfo {
                name: "set_speed".into(),
                description: "Set the target speed".into(),
                input: Some(r#"{"type": "object", "required": ["rpm"]}"#.into()),
                output: Some(r#"{"type": "object"}"#.into()),
            }],
            events: vec![EventInfo {
                name: "health_changed".into(),
                description: "Health moved".into(),
            }],
        }
    }

    fn model() -> ModelInfo {
        ModelInfo {
            name: "machine".into(),
            version: "1.0.0".into(),
            component: Digest::of(b"machine"),
            state_version: 1,
        }
    }

    #[test]
    fn properties_are_observable_and_may_be_null() {
        let td = thing_description(
            "m",
            "http://h/v1/twins/m/",
            &model(),
            &description(),
            Security::Bearer,
        );
        let p = &td["properties"]["temperature"];
        assert_eq!(p["observable"], true);
        assert_eq!(
            p["oneOf"],
            json!([{ "type": "number" }, { "type": "null" }])
        );
        let observe = &p["forms"][1];
        assert_eq!(observe["href"], "properties/temperature/observe");
        assert_eq!(
            observe["op"],
            json!(["observeproperty", "unobserveproperty"])
        );
        assert_eq!(observe["subprotocol"], "sse");
        assert_eq!(observe["contentType"], "application/json");
        assert_eq!(observe["security"], json!(["bearer_query_sc"]));
        assert_eq!(
            td["securityDefinitions"]["bearer_query_sc"],
            json!({ "scheme": "bearer", "in": "query", "name": "access_token" })
        );
        let event = &td["events"]["health_changed"]["forms"][0];
        assert_eq!(event["href"], "events/health_changed");
        assert_eq!(event["op"], json!(["subscribeevent", "unsubscribeevent"]));
        let action = &td["actions"]["set_speed"];
        assert_eq!(action["input"]["required"], json!(["rpm"]));
        assert_eq!(
            action["output"]["properties"]["result"],
            json!({ "type": "object" })
        );
    }

    #[test]
    fn an_open_node_states_no_security_on_streams() {
        let td = thing_description("m", "http://h/", &model(), &description(), Security::None);
        assert_eq!(td["security"], json!(["nosec_sc"]));
        assert!(td["events"]["health_changed"]["forms"][0]["security"].is_null());
    }
}
