//! A running instance of a twin's model component, and the calls the host
//! makes into it, each bounded by the twin's [`Limits`].

use std::sync::{Arc, OnceLock};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use wasmtime::component::Component;

use super::Runtime;
use super::bindings::model::{Model, ModelPre};
use super::bindings::types;
use super::cpu::CpuShare;
use super::error::{Failure, GuestError};
use super::guest_state::GuestState;
use super::limits::Limits;
use super::sandbox::{Sandbox, guest_call, instantiate};
use crate::digest::Digest;

/// A compiled model component, ready to instantiate many times.
#[derive(Clone)]
pub struct ModelComponent {
    digest: Digest,
    pre: ModelPre<GuestState>,
    /// What the model offers, asked of its first instance (see
    /// [`ModelComponent::description`]); shared by its clones.
    described: Arc<OnceLock<Arc<Description>>>,
}

impl ModelComponent {
    /// Wraps an already compiled component.
    pub fn from_compiled(
        runtime: &Runtime,
        digest: Digest,
        component: &Component,
    ) -> anyhow::Result<Self> {
        let pre = runtime
            .linker()
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("component {digest} needs imports wasmtwin does not grant"))?;
        super::contract::check(runtime, component, &digest, "model-api")?;
        let pre = ModelPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("component {digest} is not a wasmtwin model (world wasmtwin:twin/model)")
            })?;
        Ok(Self {
            digest,
            pre,
            described: Arc::default(),
        })
    }

    /// The digest of the component's bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// What the model offers, asked of `instance` (one of this component's)
    /// only if no instance was asked before. `describe` takes no
    /// configuration, so every instance of a component gives the same
    /// answer; asking once spares every instance made after (a wake-up, a
    /// recovery) a guest call, and lets every twin of a component share one
    /// description, which takes about 2 KiB.
    pub async fn description(
        &self,
        instance: &mut ModelInstance,
    ) -> Result<Arc<Description>, GuestError> {
        if let Some(known) = self.described.get() {
            return Ok(known.clone());
        }
        let description = Arc::new(instance.describe().await?);
        Ok(self.described.get_or_init(|| description).clone())
    }

    /// What the model offers, if an instance was asked already.
    pub fn known_description(&self) -> Option<Arc<Description>> {
        self.described.get().cloned()
    }
}

/// One update, as the host hands it to a model.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Update {
    /// The PT's sequence number.
    pub seq: u64,
    /// When the PT produced it, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The property it is about.
    pub property: String,
    /// The observed value.
    pub value: Value,
}

/// What one update did, with the guest's JSON parsed and checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateEffects {
    /// Properties that changed, in order.
    pub changes: Vec<(String, Value)>,
    /// Events that happened, in order.
    pub events: Vec<(String, Value)>,
    /// Fuel the call burned (0 without metering).
    pub fuel: u64,
}

/// What an action produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutcome {
    /// The answer for the application.
    pub result: Value,
    /// Commands for the device, in order.
    pub commands: Vec<(String, Value)>,
    /// Properties the action changed, in order.
    pub changes: Vec<(String, Value)>,
    /// Events the action raised, in order.
    pub events: Vec<(String, Value)>,
}

/// What a model offers (its `describe` answer).
pub type Description = types::Description;

/// A live instance of a model, owned by one twin.
pub struct ModelInstance {
    sandbox: Sandbox,
    model: Model,
    component: Digest,
}

fn parse_json(what: &str, text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| Failure::BadOutput {
        message: format!("{what} is not valid JSON ({e})"),
    })
}

fn parse_changes(changes: Vec<types::StateChange>) -> Result<Vec<(String, Value)>, Failure> {
    changes
        .into_iter()
        .map(|c| {
            let value = parse_json(&format!("the value of property `{}`", c.property), &c.value)?;
            Ok((c.property, value))
        })
        .collect()
}

fn parse_events(events: Vec<types::Event>) -> Result<Vec<(String, Value)>, Failure> {
    events
        .into_iter()
        .map(|e| {
            let data = parse_json(&format!("the data of event `{}`", e.name), &e.data)?;
            Ok((e.name, data))
        })
        .collect()
}

impl ModelInstance {
    /// Instantiates `component` for `twin`. Nothing of the model runs until
    /// [`init`](Self::init) or [`restore`](Self::restore).
    pub async fn new(
        runtime: &Runtime,
        component: &ModelComponent,
        twin: &str,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let mut sandbox = Sandbox::new(runtime, twin, limits);
        let model = instantiate!(
            sandbox,
            component.pre,
            format!(
                "instantiating component {} for twin `{twin}`",
                component.digest
            )
        )?;
        Ok(Self {
            sandbox,
            model,
            component: component.digest,
        })
    }

    /// The digest of the component this instance runs.
    pub fn component(&self) -> Digest {
        self.component
    }

    /// The twin this instance belongs to.
    pub fn twin(&self) -> &str {
        self.sandbox.twin()
    }

    /// The limits each call runs under.
    pub fn limits(&self) -> Limits {
        self.sandbox.limits()
    }

    /// Changes the limits for later calls (vertical scaling).
    pub fn set_limits(&mut self, limits: Limits) {
        self.sandbox.set_limits(limits);
    }

    /// Whether a failure made the instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.sandbox.is_poisoned()
    }

    /// Charges later calls to the twin's CPU share, and pauses them when
    /// the twin is over it.
    pub fn set_cpu(&mut self, cpu: CpuShare) {
        self.sandbox.set_cpu(cpu);
    }

    /// Starts a fresh twin from its JSON configuration.
    pub async fn init(&mut self, config: &Value) -> Result<(), GuestError> {
        let config = config.to_string();
        let api = self.model.wasmtwin_twin_model_api();
        guest_call!(self.sandbox, "init", api, call_init(&config)).map(|_| ())
    }

    /// Reconfigures the running twin.
    pub async fn reconfigure(&mut self, config: &Value) -> Result<(), GuestError> {
        let config = config.to_string();
        let api = self.model.wasmtwin_twin_model_api();
        guest_call!(self.sandbox, "reconfigure", api, call_reconfigure(&config)).map(|_| ())
    }

    /// Applies one update.
    pub async fn on_update(&mut self, update: &Update) -> Result<UpdateEffects, GuestError> {
        let wit_update = types::Update {
            seq: update.seq,
            ts_ms: update.ts_ms,
            property: update.property.clone(),
            value: update.value.to_string(),
        };
        let api = self.model.wasmtwin_twin_model_api();
        let (effects, fuel) =
            guest_call!(self.sandbox, "on-update", api, call_on_update(&wit_update))?;
        let parsed = (|| {
            Ok(UpdateEffects {
                changes: parse_changes(effects.changes)?,
                events: parse_events(effects.events)?,
                fuel,
            })
        })();
        parsed.map_err(|failure| self.sandbox.error("on-update", failure))
    }

    /// Carries out an action.
    pub async fn on_action(
        &mut self,
        name: &str,
        input: &Value,
    ) -> Result<ActionOutcome, GuestError> {
        let input = input.to_string();
        let api = self.model.wasmtwin_twin_model_api();
        let (outcome, _) =
            guest_call!(self.sandbox, "on-action", api, call_on_action(name, &input))?;
        let parsed = (|| {
            let result = parse_json("the action's result", &outcome.reply)?;
            let commands = outcome
                .commands
                .into_iter()
                .map(|c| {
                    let payload =
                        parse_json(&format!("the payload of command `{}`", c.name), &c.payload)?;
                    Ok((c.name, payload))
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            Ok(ActionOutcome {
                result,
                commands,
                changes: parse_changes(outcome.changes)?,
                events: parse_events(outcome.events)?,
            })
        })();
        parsed.map_err(|failure| self.sandbox.error("on-action", failure))
    }

    /// Serialises the guest's state.
    pub async fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        let api = self.model.wasmtwin_twin_model_api();
        guest_call!(self.sandbox, "snapshot", api, call_snapshot()).map(|(bytes, _)| bytes)
    }

    /// Rebuilds the guest's state from a snapshot taken at `state_version`.
    pub async fn restore(&mut self, state: &[u8], state_version: u32) -> Result<(), GuestError> {
        let api = self.model.wasmtwin_twin_model_api();
        guest_call!(
            self.sandbox,
            "restore",
            api,
            call_restore(state, state_version)
        )
        .map(|_| ())
    }

    /// What the model offers.
    pub async fn describe(&mut self) -> Result<Description, GuestError> {
        self.sandbox.begin("describe")?;
        let outcome = self
            .model
            .wasmtwin_twin_model_api()
            .call_describe(self.sandbox.store())
            .await
            .map(Ok);
        self.sandbox.finish("describe", outcome).map(|(d, _)| d)
    }
}
