//! What the node knows of a running twin, shared between its worker (which
//! writes it after every commit) and the APIs (which read it without
//! queueing behind updates).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

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
    pub description: Arc<Description>,
    /// Entanglement measures.
    pub entanglement: Entanglement,
    /// Failed calls into the twin's components.
    pub guest_errors: u64,
    /// The most recent failure, in words.
    pub last_error: Option<String>,
    /// Hibernating: no instance runs; the next job wakes it.
    pub asleep: bool,
}

/// Changes a slow stream subscriber may fall behind by before it is told
/// it missed some.
const CHANGE_BUFFER: usize = 256;

/// A twin's change stream. Its buffer of [`CHANGE_BUFFER`] changes is made
/// when the first subscriber comes: made with the twin, it was a quarter of
/// what a sleeping twin costs (26 KiB), for streams most twins never have.
/// Clones share one stream.
#[derive(Clone, Default)]
pub struct ChangeFeed(Arc<OnceLock<broadcast::Sender<Change>>>);

impl ChangeFeed {
    /// A new subscriber, which gets every change published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.0
            .get_or_init(|| broadcast::channel(CHANGE_BUFFER).0)
            .subscribe()
    }

    /// How many subscribers it has now.
    pub fn subscribers(&self) -> usize {
        self.0.get().map_or(0, broadcast::Sender::receiver_count)
    }

    /// Sends `change` to the subscribers there are (none is not an error).
    pub fn publish(&self, change: Change) {
        if let Some(sender) = self.0.get() {
            let _ = sender.send(change);
        }
    }

    /// Whether its buffer has been made.
    #[cfg(test)]
    fn is_allocated(&self) -> bool {
        self.0.get().is_some()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_feed_makes_its_buffer_for_its_first_subscriber() {
        let feed = ChangeFeed::default();
        let change = || Change::new(1, 2, 3, vec![("v".into(), Value::from(1))], Vec::new());
        // Nobody listening: nothing is kept, and nothing fails.
        feed.publish(change());
        assert!(!feed.is_allocated());
        assert_eq!(feed.subscribers(), 0);

        let mut early = feed.clone().subscribe();
        assert!(feed.is_allocated());
        let mut late = feed.subscribe();
        assert_eq!(feed.subscribers(), 2);
        feed.publish(change());
        for stream in [&mut early, &mut late] {
            assert_eq!(stream.try_recv().map(|c| c.seq), Ok(1));
        }
        drop(early);
        assert_eq!(feed.subscribers(), 1);
    }
}
