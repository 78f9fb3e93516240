//! Converts between the WIT types and the SDK's, on behalf of the code the
//! export macros generate. Not part of the public API.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::bindings::model::wasmtwin::twin::types as wit;
use crate::model::{self as sdk, Model};
use crate::{Adapter, Effects, Error, Outcome, Update};

/// Where the macro keeps the model instance.
pub type Slot<M> = LocalKey<RefCell<Option<M>>>;

fn with_model<M: Model, R>(
    slot: &'static Slot<M>,
    f: impl FnOnce(&mut M) -> Result<R, Error>,
) -> Result<R, String> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(model) => f(model).map_err(|e| e.to_string()),
        None => Err(format!("{} was called before init or restore", M::NAME)),
    })
}

fn store<M: Model>(slot: &'static Slot<M>, model: M) -> Result<(), String> {
    slot.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_some() {
            return Err(format!("{} is already initialised", M::NAME));
        }
        *cell = Some(model);
        Ok(())
    })
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::new(format!("{what} is not valid JSON: {e}")))
}

fn to_json(value: &serde_json::Value) -> String {
    value.to_string()
}

pub fn init<M: Model>(slot: &'static Slot<M>, config: String) -> Result<(), String> {
    let config = sdk::parse_config::<M>(&config).map_err(|e| e.to_string())?;
    let model = M::init(config).map_err(|e| e.to_string())?;
    store(slot, model)
}

pub fn reconfigure<M: Model>(slot: &'static Slot<M>, config: String) -> Result<(), String> {
    with_model(slot, |model| {
        model.reconfigure(sdk::parse_config::<M>(&config)?)
    })
}

pub fn on_update<M: Model>(
    slot: &'static Slot<M>,
    update: wit::Update,
) -> Result<wit::Effects, String> {
    with_model(slot, |model| {
        let value = parse_json("the update's value", &update.value)?;
        let update = Update {
            seq: update.seq,
            ts_ms: update.ts_ms,
            property: update.property,
            value,
        };
        let mut effects = Effects::default();
        model.on_update(&update, &mut effects)?;
        Ok(wit::Effects {
            changes: to_wit_changes(effects.changes()),
            events: to_wit_events(effects.events()),
        })
    })
}

fn to_wit_changes(changes: &[(String, serde_json::Value)]) -> Vec<wit::StateChange> {
    changes
        .iter()
        .map(|(property, value)| wit::StateChange {
            property: property.clone(),
            value: to_json(value),
        })
        .collect()
}

fn to_wit_events(events: &[(String, serde_json::Value)]) -> Vec<wit::Event> {
    events
        .iter()
        .map(|(name, data)| wit::Event {
            name: name.clone(),
            data: to_json(data),
        })
        .collect()
}

fn to_wit_command(command: &crate::Command) -> wit::Command {
    wit::Command {
        name: command.name.clone(),
        payload: to_json(&command.payload),
    }
}

pub fn on_action<M: Model>(
    slot: &'static Slot<M>,
    name: String,
    input: String,
) -> Result<wit::ActionOutcome, String> {
    with_model(slot, |model| {
        let input = if input.trim().is_empty() {
            serde_json::Value::Null
        } else {
            parse_json("the action's input", &input)?
        };
        let mut outcome = Outcome::default();
        let result = model.on_action(&name, &input, &mut outcome)?;
        Ok(wit::ActionOutcome {
            reply: to_json(&result),
            commands: outcome.commands().iter().map(to_wit_command).collect(),
            changes: to_wit_changes(outcome.effects().changes()),
            events: to_wit_events(outcome.effects().events()),
        })
    })
}

pub fn snapshot<M: Model>(slot: &'static Slot<M>) -> Result<Vec<u8>, String> {
    with_model(slot, |model| sdk::snapshot(model))
}

pub fn restore<M: Model>(
    slot: &'static Slot<M>,
    state: Vec<u8>,
    state_version: u32,
) -> Result<(), String> {
    let model = sdk::restore::<M>(&state, state_version).map_err(|e| e.to_string())?;
    store(slot, model)
}

pub fn describe<M: Model>() -> wit::Description {
    let d = crate::describe::<M>();
    wit::Description {
        name: d.name.to_string(),
        version: d.version.to_string(),
        state_version: d.state_version,
        properties: d
            .properties
            .iter()
            .map(|p| wit::PropertyInfo {
                name: p.name.to_string(),
                kind: p.kind.to_string(),
                unit: p.unit.to_string(),
                description: p.description.to_string(),
            })
            .collect(),
        actions: d
            .actions
            .iter()
            .map(|a| wit::ActionInfo {
                name: a.name.to_string(),
                description: a.description.to_string(),
                input: a.input.map(str::to_string),
                output: a.output.map(str::to_string),
            })
            .collect(),
        events: d
            .events
            .iter()
            .map(|e| wit::EventInfo {
                name: e.name.to_string(),
                description: e.description.to_string(),
            })
            .collect(),
    }
}

pub fn decode<A: Adapter>(topic: String, payload: Vec<u8>) -> Result<Vec<wit::Update>, String> {
    let updates = A::decode(&topic, &payload).map_err(|e| e.to_string())?;
    Ok(updates
        .into_iter()
        .map(|u| wit::Update {
            seq: u.seq,
            ts_ms: u.ts_ms,
            property: u.property,
            value: to_json(&u.value),
        })
        .collect())
}

pub fn encode<A: Adapter>(command: wit::Command) -> Result<Vec<u8>, String> {
    let payload =
        parse_json("the command's payload", &command.payload).map_err(|e| e.to_string())?;
    A::encode(&crate::Command {
        name: command.name,
        payload,
    })
    .map_err(|e| e.to_string())
}
