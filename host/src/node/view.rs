//! What the node knows of a running twin, shared between its worker (which
//! writes it after every commit) and the APIs (which read it without
//! queueing behind updates).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::ModelInfo;
use crate::twin::TwinState;
use crate::twin::entanglement::{Entanglement, Report};

/// The shared view of one twin.
pub struct Shared {
    /// The host's view of the twin's state.
    pub state: TwinState,
    /// When each property last changed (ms since the Unix epoch) and the
    /// update that changed it.
    pub changed: BTreeMap<String, (u64, u64)>,
    /// The model running.
    pub model: ModelInfo,
    /// Entanglement measures.
    pub entanglement: Entanglement,
    /// Failed calls into the twin's components.
    pub guest_errors: u64,
    /// The most recent failure, in words.
    pub last_error: Option<String>,
}

/// One property as applications see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyView {
    /// Current value.
    pub value: Value,
    /// Milliseconds since it last changed.
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
                let (at, seq) = self.changed.get(name).copied().unwrap_or((now_ms, 0));
                let view = PropertyView {
                    value: value.clone(),
                    age_ms: now_ms.saturating_sub(at),
                    seq,
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
        };
        (report, transition)
    }
}
