//! A hosted twin: its model instance plus what the host knows around it —
//! the current value of every property and the last sequence number
//! applied, which is how duplicates are dropped and how a restored twin
//! knows where to resume.

pub mod entanglement;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::{Checkpoint, GUEST_SECTION, ModelInfo, TWIN_SECTION};
use crate::runtime::{
    ActionOutcome, Description, GuestError, Limits, ModelComponent, ModelInstance, Runtime, Update,
    UpdateEffects,
};

/// The host's view of a twin, saved in every checkpoint beside the guest's
/// own snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinState {
    /// Current value of each property the model has set.
    pub properties: BTreeMap<String, Value>,
    /// Sequence number of the last update applied.
    pub last_seq: Option<u64>,
    /// The PT timestamp (ms since the Unix epoch) of the last update
    /// applied: an update numbered at or below `last_seq` but produced
    /// after it cannot be a redelivery, so the device restarted its count.
    #[serde(default)]
    pub last_ts_ms: Option<u64>,
    /// Updates applied since the twin was created.
    pub updates_applied: u64,
    /// For each property, the PT timestamp (ms since the Unix epoch) and
    /// sequence number of the update that last changed it: how old the
    /// observation behind its value is.
    #[serde(default)]
    pub changed: BTreeMap<String, Observed>,
}

impl TwinState {
    /// The host's view a checkpoint carries.
    pub fn of(checkpoint: &Checkpoint) -> anyhow::Result<Self> {
        serde_json::from_slice(
            checkpoint
                .section(TWIN_SECTION)
                .context("checkpoint has no twin state")?,
        )
        .context("checkpoint's twin state is malformed")
    }
}

/// The update behind a property's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    /// When the PT produced the update, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Its sequence number.
    pub seq: u64,
}

/// What happened to an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Applied; these are its effects.
    Changed(UpdateEffects),
    /// Dropped: its sequence number was not above the last one applied.
    Duplicate {
        /// The last sequence number applied.
        last_seq: u64,
    },
}

/// Whether a checkpoint may be restored into a different component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestorePolicy {
    /// Only into the exact component (same digest) that wrote it.
    #[default]
    SameComponent,
    /// Into any release of the same model that reads its state version.
    Upgrade,
}

/// A running twin.
pub struct Twin {
    name: String,
    instance: ModelInstance,
    model: ModelInfo,
    /// Shared with the node's view of the twin: a model's description takes
    /// about 1 KiB.
    description: Arc<Description>,
    state: TwinState,
}

/// What `component` is and offers, asked of `instance` (one of its own)
/// unless the component knows already.
async fn model_info(
    component: &ModelComponent,
    instance: &mut ModelInstance,
) -> Result<(ModelInfo, Arc<Description>), GuestError> {
    let description = component.description(instance).await?;
    Ok((info(component, &description), description))
}

/// What `component` is, by its `description`.
fn info(component: &ModelComponent, description: &Description) -> ModelInfo {
    ModelInfo {
        name: description.name.clone(),
        version: description.version.clone(),
        component: component.digest(),
        state_version: description.state_version,
    }
}

impl Twin {
    /// Creates a fresh twin named `name` running `component`, initialised
    /// with `config`.
    pub async fn create(
        runtime: &Runtime,
        component: &ModelComponent,
        name: &str,
        limits: Limits,
        config: &Value,
    ) -> anyhow::Result<Self> {
        let mut instance = ModelInstance::new(runtime, component, name, limits).await?;
        let (model, description) = model_info(component, &mut instance).await?;
        instance.init(config).await?;
        Ok(Self {
            name: name.to_string(),
            instance,
            model,
            description,
            state: TwinState::default(),
        })
    }

    /// Resumes a twin from `checkpoint`, running `component`.
    ///
    /// Refused, with the reason, when the checkpoint comes from another
    /// model, from a newer state layout than the component reads, or (under
    /// [`RestorePolicy::SameComponent`]) from another build of the model.
    pub async fn restore(
        runtime: &Runtime,
        component: &ModelComponent,
        checkpoint: &Checkpoint,
        limits: Limits,
        policy: RestorePolicy,
    ) -> anyhow::Result<Self> {
        let guest = checkpoint
            .section(GUEST_SECTION)
            .context("checkpoint has no guest snapshot")?;
        let state = TwinState::of(checkpoint)?;
        let mut instance = ModelInstance::new(runtime, component, &checkpoint.twin, limits).await?;
        let (model, description) = model_info(component, &mut instance).await?;
        let from = &checkpoint.model;
        if from.name != model.name {
            bail!(
                "checkpoint of twin `{}` was taken from model `{}`, but this component is model `{}`",
                checkpoint.twin,
                from.name,
                model.name
            );
        }
        if from.state_version > model.state_version {
            bail!(
                "checkpoint has state version {}, newer than the {} that {} {} reads",
                from.state_version,
                model.state_version,
                model.name,
                model.version
            );
        }
        if from.component != model.component && policy == RestorePolicy::SameComponent {
            bail!(
                "checkpoint was taken from component {} ({} {}), not {} ({} {}); \
                 allow an upgrade (`wasmtwin run --upgrade`) to restore it into another build \
                 that reads its state version",
                from.component,
                from.name,
                from.version,
                model.component,
                model.name,
                model.version
            );
        }
        instance.restore(guest, from.state_version).await?;
        Ok(Self {
            name: checkpoint.twin.clone(),
            instance,
            model,
            description,
            state,
        })
    }

    /// What `component` is (its model, release and state layout) and what
    /// it offers, asked (the first time) of an instance made for that and
    /// dropped.
    pub async fn describe(
        runtime: &Runtime,
        component: &ModelComponent,
        limits: Limits,
    ) -> anyhow::Result<(ModelInfo, Arc<Description>)> {
        if let Some(known) = component.known_description() {
            return Ok((info(component, &known), known));
        }
        let mut instance = ModelInstance::new(runtime, component, "describe", limits).await?;
        Ok(model_info(component, &mut instance).await?)
    }

    /// The twin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model it runs.
    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// What the model offers: properties, actions, events.
    pub fn description(&self) -> &Arc<Description> {
        &self.description
    }

    /// The host's view of the twin.
    pub fn state(&self) -> &TwinState {
        &self.state
    }

    /// Applies `update` unless its sequence number was already applied
    /// (see [`Twin::duplicate_of`]). A refusal leaves the twin as it was,
    /// sequence number included.
    pub async fn apply(&mut self, update: &Update) -> Result<Applied, GuestError> {
        if let Some(last_seq) = self.duplicate_of(update) {
            return Ok(Applied::Duplicate { last_seq });
        }
        let effects = self.instance.on_update(update).await?;
        self.commit(update, &effects);
        Ok(Applied::Changed(effects))
    }

    /// Applies the updates one PT message carries (they share its sequence
    /// number) unless the message was already applied. Updates the model
    /// refuses are returned beside the effects and skipped; the message
    /// still counts as applied. A failure that poisons the instance stops
    /// the message and is returned as the error.
    pub async fn apply_message(
        &mut self,
        updates: &[Update],
    ) -> Result<(Applied, Vec<GuestError>), GuestError> {
        let Some(first) = updates.first() else {
            return Ok((Applied::Changed(UpdateEffects::default()), Vec::new()));
        };
        if let Some(last_seq) = self.duplicate_of(first) {
            return Ok((Applied::Duplicate { last_seq }, Vec::new()));
        }
        let mut effects = UpdateEffects::default();
        let mut refused = Vec::new();
        for update in updates {
            match self.instance.on_update(update).await {
                Ok(more) => {
                    effects.changes.extend(more.changes);
                    effects.events.extend(more.events);
                    effects.fuel += more.fuel;
                }
                Err(e) if !e.failure.poisons() => refused.push(e),
                Err(e) => return Err(e),
            }
        }
        self.commit(first, &effects);
        Ok((Applied::Changed(effects), refused))
    }

    /// The last sequence number applied, if `update` repeats an update
    /// already applied: it is numbered at or below that one and was not
    /// produced later. One numbered lower but produced later means the
    /// device restarted its count (or jumped ahead once): it is applied,
    /// and numbering goes on from it.
    fn duplicate_of(&self, update: &Update) -> Option<u64> {
        let last = self.state.last_seq.filter(|&last| update.seq <= last)?;
        let restarted = self
            .state
            .last_ts_ms
            .is_some_and(|last_ts| update.ts_ms > last_ts);
        (!restarted).then_some(last)
    }

    fn commit(&mut self, update: &Update, effects: &UpdateEffects) {
        let observed = Observed {
            ts_ms: update.ts_ms,
            seq: update.seq,
        };
        self.set_properties(&effects.changes, observed);
        self.state.last_seq = Some(update.seq);
        self.state.last_ts_ms = Some(update.ts_ms);
        self.state.updates_applied += 1;
    }

    /// Changes the limits later calls run under (vertical scaling).
    pub fn set_limits(&mut self, limits: Limits) {
        self.instance.set_limits(limits);
    }

    /// Charges later calls to the twin's CPU share (vertical scaling of
    /// its CPU: the share itself can change while the twin runs).
    pub fn set_cpu(&mut self, cpu: crate::runtime::cpu::CpuShare) {
        self.instance.set_cpu(cpu);
    }

    /// Changes the model's configuration.
    pub async fn reconfigure(&mut self, config: &Value) -> Result<(), GuestError> {
        self.instance.reconfigure(config).await
    }

    /// Carries out an action.
    /// Carries out an action; the properties it changes take their new
    /// values now (observed now, after the last update applied).
    pub async fn act(&mut self, action: &str, input: &Value) -> Result<ActionOutcome, GuestError> {
        let outcome = self.instance.on_action(action, input).await?;
        let observed = Observed {
            ts_ms: now_ms(),
            seq: self.state.last_seq.unwrap_or(0),
        };
        self.set_properties(&outcome.changes, observed);
        Ok(outcome)
    }

    /// Gives each changed property its new value, `observed` behind it.
    fn set_properties(&mut self, changes: &[(String, Value)], observed: Observed) {
        for (property, value) in changes {
            self.state
                .properties
                .insert(property.clone(), value.clone());
            self.state.changed.insert(property.clone(), observed);
        }
    }

    /// Captures everything needed to resume the twin.
    pub async fn checkpoint(&mut self) -> anyhow::Result<Checkpoint> {
        let guest = self.instance.snapshot().await?;
        let mut checkpoint = self.host_checkpoint()?;
        checkpoint.sections.insert(0, (GUEST_SECTION.into(), guest));
        Ok(checkpoint)
    }

    /// A checkpoint of the host's view alone, without the guest's snapshot
    /// (which a handover that replays updates does without).
    pub fn host_checkpoint(&self) -> anyhow::Result<Checkpoint> {
        let twin = serde_json::to_vec(&self.state).context("serialising the twin state")?;
        Ok(Checkpoint {
            twin: self.name.clone(),
            created_ms: now_ms(),
            model: self.model.clone(),
            sections: vec![(TWIN_SECTION.into(), twin)],
        })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every twin of a component shares one description, asked of the
    /// guest once: a copy each was 2 KiB a sleeping twin, and a guest call
    /// every wake-up.
    #[tokio::test]
    async fn twins_of_one_component_share_its_description() {
        let runtime = Runtime::for_tests();
        let machine = runtime
            .load_model(&wasmtwin_tests::plugin_bytes("machine"))
            .unwrap();
        let config = serde_json::json!({});
        let limits = Limits::default();
        let mut first = Twin::create(&runtime, &machine, "a", limits, &config)
            .await
            .unwrap();
        let second = Twin::create(&runtime, &machine, "b", limits, &config)
            .await
            .unwrap();
        let checkpoint = first.checkpoint().await.unwrap();
        let restored = Twin::restore(
            &runtime,
            &machine,
            &checkpoint,
            limits,
            RestorePolicy::SameComponent,
        )
        .await
        .unwrap();
        let (_, described) = Twin::describe(&runtime, &machine, limits).await.unwrap();
        for other in [second.description(), restored.description(), &described] {
            assert!(Arc::ptr_eq(first.description(), other));
        }
    }
}
