//! `GET /v1/twins/{name}/td`: the twin as a W3C WoT Thing Description 1.1,
//! built from what its model describes. Every form points at this node's
//! own routes, so a generic WoT consumer can read each property, invoke
//! each action and subscribe to each event without knowing our API.

use serde_json::{Map, Value, json};

use crate::checkpoint::ModelInfo;
use crate::runtime::Description;

/// How the node protects its APIs, as a TD states it.
#[derive(Debug, Clone, Copy)]
pub enum Security {
    /// `Authorization: Bearer TOKEN`.
    Bearer,
    /// No authentication (`--insecure-dev`).
    None,
}

const TD_CONTEXT: &str = "https://www.w3.org/2022/wot/td/v1.1";

/// The Thing Description of twin `name`, whose routes are under `base`
/// (an absolute URL ending in `/`).
pub fn thing_description(
    name: &str,
    base: &str,
    model: &ModelInfo,
    description: &Description,
    security: Security,
) -> Value {
    let (scheme_name, scheme) = match security {
        Security::Bearer => (
            "bearer_sc",
            json!({ "scheme": "bearer", "in": "header", "name": "Authorization" }),
        ),
        Security::None => ("nosec_sc", json!({ "scheme": "nosec" })),
    };
    let properties: Map<String, Value> = description
        .properties
        .iter()
        .map(|p| {
            let mut affordance = json!({
                "title": p.name,
                "type": p.kind,
                "readOnly": true,
                "forms": [{
                    "href": format!("properties/{}", p.name),
                    "op": ["readproperty"],
                    "contentType": "application/json",
                    "htv:methodName": "GET",
                }],
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
            let mut affordance = json!({
                "title": a.name,
                "description": a.description,
                "safe": false,
                "idempotent": false,
                "forms": [{
                    "href": format!("actions/{}", a.name),
                    "op": ["invokeaction"],
                    "contentType": "application/json",
                    "htv:methodName": "POST",
                }],
            });
            // The model's schemas, as it declared them (a schema that is
            // not JSON is left out rather than published broken).
            for (key, schema) in [("input", &a.input), ("output", &a.output)] {
                if let Some(schema) = schema
                    .as_deref()
                    .and_then(|text| serde_json::from_str::<Value>(text).ok())
                {
                    affordance[key] = schema;
                }
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
                "forms": [{
                    "href": "stream",
                    "op": ["subscribeevent", "unsubscribeevent"],
                    "subprotocol": "sse",
                    "contentType": "text/event-stream",
                    "htv:methodName": "GET",
                }],
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
        "securityDefinitions": { scheme_name: scheme },
        "security": [scheme_name],
        "properties": properties,
        "actions": actions,
        "events": events,
    })
}
