//! What the node knows of a running twin, shared between its worker (which
//! writes it after every commit) and the APIs (which read it without
//! queueing behind updates).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::ModelInfo;
use crate::runtime::Description;
use crate::runtime::cpu::CpuReport;
use crate::twin::TwinState;
use crate::twin::entanglement::{Entanglement, Report};

/// The shared view of one twin.
pub struct Shared {
    /// The host's view of the twin's state.
    pub state: TwinState,
    /// The model running.
    pub model: ModelInfo,
    /// What the model offers.
    pub description: Description,
    /// Entanglement measures.
    pub entanglement: Entanglement,
    /// Failed calls into the twin's components.
    pub guest_errors: u64,
    /// The most recent failure, in words.
    pub last_error: Option<String>,
    /// Hibernating: no instance runs; the next job wakes it.
    pub asleep: bool,
}

/// What one applied message changed, as the change stream carries it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The PT's sequence number.
    pub seq: u64,
    /// When the PT produced it, ms since the Unix epoch.
    pub ts_ms: u64,
    /// When the twin committed it, ms since the Unix epoch.
    pub committed_ms: u64,
    /// The properties it changed, with their new values.
    pub changes: BTreeMap<String, Value>,
    /// The events the model raised.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventView>,
}

impl Change {
    /// A change at `seq`/`ts_ms`, committed at `committed_ms`, of these
    /// properties and events.
    pub fn new(
        seq: u64,
        ts_ms: u64,
        committed_ms: u64,
        changes: Vec<(String, Value)>,
        events: Vec<(String, Value)>,
    ) -> Self {
        Self {
            seq,
            ts_ms,
            committed_ms,
            changes: changes.into_iter().collect(),
            events: events
                .into_iter()
                .map(|(name, data)| EventView { name, data })
                .collect(),
        }
    }
}

/// An event a model raised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    /// The event's name.
    pub name: String,
    /// Its data.
    pub data: Value,
}

/// One property as applications see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyView {
    /// Current value.
    pub value: Value,
    /// Milliseconds since the PT produced the update behind the value.
    pub age_ms: u64,
    /// Sequence number of the update that set it.
    pub seq: u64,
}

/// A twin as the digital and management APIs return it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TwinReport {
    /// The twin's name.
    pub name: String,
    /// The model running.
    pub model: ModelInfo,
    /// Every property with its value and age.
    pub properties: BTreeMap<String, PropertyView>,
    /// Updates applied since creation.
    pub updates_applied: u64,
    /// Sequence number of the last update applied.
    pub last_seq: Option<u64>,
    /// Entanglement over the window ending now.
    pub entanglement: Report,
    /// Failed calls into the twin's components.
    pub guest_errors: u64,
    /// The most recent failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The twin's CPU share and use.
    pub cpu: CpuReport,
    /// Hibernating (idle past the node's `--hibernate-after`): its
    /// instance is dropped until a message, action or swap wakes it.
    pub hibernating: bool,
}

impl Shared {
    /// The report at `now_us`, evaluating the entanglement window.
    pub fn report(
        &mut self,
        name: &str,
        now_us: u64,
    ) -> (
        TwinReport,
        Option<Option<crate::twin::entanglement::Status>>,
    ) {
        let (entanglement, transition) = self.entanglement.evaluate(now_us);
        let now_ms = now_us / 1000;
        let properties = self
            .state
            .properties
            .iter()
            .map(|(name, value)| {
                let observed = self.state.changed.get(name).copied().unwrap_or_default();
                let view = PropertyView {
                    value: value.clone(),
                    age_ms: now_ms.saturating_sub(observed.ts_ms),
                    seq: observed.seq,
                };
                (name.clone(), view)
            })
            .collect();
        let report = TwinReport {
            name: name.to_string(),
            model: self.model.clone(),
            properties,
            updates_applied: self.state.updates_applied,
            last_seq: self.state.last_seq,
            entanglement,
            guest_errors: self.guest_errors,
            last_error: self.last_error.clone(),
            // The node fills it from the twin's CPU account.
            cpu: CpuReport::default(),
            hibernating: self.asleep,
        };
        (report, transition)
    }
}
