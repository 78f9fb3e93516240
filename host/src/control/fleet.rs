//! Infrastructure knowledge: what each node says of itself in its
//! heartbeats (where it is, who runs it, its capacity, its path to each
//! broker, the twins it runs and how well they are entangled), and what the
//! control plane concludes from their timing: a node is *ready*, or
//! *unreachable* (heartbeats missed, it may come back: its twins are left
//! where they are), or *gone* (silent for longer: its twins are restored
//! elsewhere).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::twin::entanglement::Report;

/// What a node sends every heartbeat (`PUT /v1/nodes/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// The node's name (`wasmtwin host --name`), unique in the fleet.
    pub name: String,
    /// Its HTTP API, as the control plane should call it.
    pub url: String,
    /// Where on the continuum: `edge`, `mec` or `cloud`.
    pub zone: String,
    /// Who runs it: the trust domain (`--domain`).
    pub domain: String,
    /// Free-form labels (`--labels k=v`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What it has and uses.
    pub capacity: Capacity,
    /// Its measured path to each broker its twins use.
    #[serde(default)]
    pub paths: Vec<BrokerPath>,
    /// The twins it runs.
    #[serde(default)]
    pub twins: Vec<TwinObservation>,
}

/// A node's resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// CPU cores.
    pub cores: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Twins running.
    pub twins: u32,
    /// CPU shares granted to its twins (`resources.cpu`), in millicores.
    pub cpu_granted_millis: u64,
    /// CPU its twins used over the last seconds, in cores.
    pub cpu_used: f64,
}

impl Capacity {
    /// Millicores not yet granted to any twin.
    pub fn free_millis(&self) -> u64 {
        (u64::from(self.cores) * 1000).saturating_sub(self.cpu_granted_millis)
    }
}

/// The round trip of a node's own probe messages through a broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerPath {
    /// `HOST:PORT` of the broker.
    pub broker: String,
    /// Median round trip of the recent probes, ms; `None` before any came
    /// back.
    pub rtt_ms: Option<f64>,
    /// Of the recent probes, how many never came back.
    pub lost: u32,
    /// How many recent probes the figures cover.
    pub probes: u32,
}

/// One twin as its node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TwinObservation {
    /// The twin's name.
    pub name: String,
    /// SHA-256 of the spec it runs (see [`spec_digest`]).
    pub spec_digest: String,
    /// The model component running.
    pub model_digest: Digest,
    /// Updates applied since it was created.
    pub updates_applied: u64,
    /// Failed calls into its components since it started on this node.
    pub guest_errors: u64,
    /// The last of those failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Whether a swap left an earlier model to roll back to.
    pub can_roll_back: bool,
    /// Its CPU share in millicores, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_share_millis: Option<u64>,
    /// CPU used over its share recently (1 = all of it); `None` without a
    /// share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_utilization: Option<f64>,
    /// Share of the last few seconds it was paused for being over its
    /// share; `None` without a share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttled: Option<f64>,
    /// Its entanglement over the window ending at the heartbeat.
    pub entanglement: Report,
}

/// The digest by which a node and the control plane agree that a twin
/// runs the spec it should: SHA-256 of the spec's JSON.
pub fn spec_digest(spec: &crate::spec::TwinSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    Digest::of(&json).to_string()
}

/// How the reason of a drain's cordon starts (`wasmtwin drain`).
pub const DRAINING: &str = "draining";

/// What the control plane thinks of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeats arrive.
    Ready,
    /// Heartbeats missed: maybe a network partition, maybe a restart. Its
    /// twins stay placed there (moving them could run one twin twice);
    /// nothing new goes there.
    Unreachable,
    /// Silent long enough to be taken for dead: its twins are restored
    /// elsewhere, and if it comes back it is told to stop them.
    Gone,
}

/// How long silences must last to change a node's state.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Silence after which a node is unreachable, ms.
    pub unreachable_ms: u64,
    /// Silence after which a node is gone, ms.
    pub gone_ms: u64,
}

impl Timeouts {
    /// `wasmtwin control`'s: unreachable after 5 s, gone after 30 s.
    pub const DEFAULT: Self = Self {
        unreachable_ms: 5_000,
        gone_ms: 30_000,
    };
}

/// One node as the control plane knows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    /// Its last heartbeat.
    pub heartbeat: Heartbeat,
    /// When that heartbeat arrived, ms since the Unix epoch.
    pub seen_ms: u64,
    /// Ready, unreachable or gone.
    pub state: NodeState,
    /// Cordoned nodes get no new twins (the security agent cordons a node
    /// that ran what it should not).
    pub cordoned: Option<String>,
}

impl NodeEntry {
    /// Whether new twins may go there.
    pub fn schedulable(&self) -> bool {
        self.state == NodeState::Ready && self.cordoned.is_none()
    }
}

/// Every node the control plane has heard of.
#[derive(Debug, Default)]
pub struct Fleet {
    nodes: HashMap<String, NodeEntry>,
}

/// What changed in the fleet, for the reconciler to look at again.
#[derive(Debug, Default, PartialEq)]
pub struct Changed {
    /// Twins whose observation says they may need something done.
    pub twins: Vec<String>,
    /// Nodes whose state changed, old → new.
    pub nodes: Vec<(String, Option<NodeState>, NodeState)>,
}

impl Fleet {
    /// Takes a heartbeat received at `now_ms`. The twins whose
    /// observation is worth a look (not entangled, new, gone from the
    /// report, changed spec or model) are returned, so a quiet healthy
    /// fleet costs nothing to reconcile.
    pub fn heartbeat(&mut self, beat: Heartbeat, now_ms: u64) -> Changed {
        let mut changed = Changed::default();
        let previous = self.nodes.remove(&beat.name);
        let old_state = previous.as_ref().map(|p| p.state);
        if old_state != Some(NodeState::Ready) {
            changed
                .nodes
                .push((beat.name.clone(), old_state, NodeState::Ready));
        }
        let before: HashMap<&str, &TwinObservation> = previous
            .as_ref()
            .map(|p| {
                p.heartbeat
                    .twins
                    .iter()
                    .map(|t| (t.name.as_str(), t))
                    .collect()
            })
            .unwrap_or_default();
        for twin in &beat.twins {
            let worth_a_look = match before.get(twin.name.as_str()) {
                None => true,
                Some(old) => {
                    twin.entanglement.status != crate::twin::entanglement::Status::Entangled
                        || old.entanglement.status != twin.entanglement.status
                        || old.spec_digest != twin.spec_digest
                        || old.model_digest != twin.model_digest
                        || old.guest_errors != twin.guest_errors
                }
            };
            if worth_a_look {
                changed.twins.push(twin.name.clone());
            }
        }
        for name in before.keys() {
            if !beat.twins.iter().any(|t| t.name == *name) {
                changed.twins.push(name.to_string());
            }
        }
        // A drain's cordon ends when the node is back after a silence: the
        // pod it was draining stopped and a new one took its name.
        let cordoned = previous
            .and_then(|p| p.cordoned)
            .filter(|why| old_state == Some(NodeState::Ready) || !why.starts_with(DRAINING));
        self.nodes.insert(
            beat.name.clone(),
            NodeEntry {
                heartbeat: beat,
                seen_ms: now_ms,
                state: NodeState::Ready,
                cordoned,
            },
        );
        changed
    }

    /// Ages every node's last heartbeat at `now_ms`; the nodes whose state
    /// changed, with their twins.
    ///
    /// A node is taken for gone only while another is still heard from: if
    /// every node falls silent at once, the likelier story is that the
    /// control plane lost its own connection, and restoring (or, in an
    /// operator, deleting) every twin elsewhere would be the worst answer.
    /// They stay unreachable, their twins where they are.
    pub fn age(&mut self, now_ms: u64, timeouts: Timeouts) -> Changed {
        let mut changed = Changed::default();
        let anyone_heard = self
            .nodes
            .values()
            .any(|n| now_ms.saturating_sub(n.seen_ms) < timeouts.unreachable_ms);
        for (name, node) in &mut self.nodes {
            let silent = now_ms.saturating_sub(node.seen_ms);
            let state = if silent >= timeouts.gone_ms && anyone_heard {
                NodeState::Gone
            } else if silent >= timeouts.unreachable_ms {
                NodeState::Unreachable
            } else {
                NodeState::Ready
            };
            if state != node.state {
                changed.nodes.push((name.clone(), Some(node.state), state));
                changed
                    .twins
                    .extend(node.heartbeat.twins.iter().map(|t| t.name.clone()));
                node.state = state;
            }
        }
        changed
    }

    /// Marks a node so that no new twin goes there; the reason is kept.
    pub fn cordon(&mut self, name: &str, reason: Option<String>) -> bool {
        match self.nodes.get_mut(name) {
            Some(node) => {
                node.cordoned = reason;
                true
            }
            None => false,
        }
    }

    /// One node.
    pub fn get(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.get(name)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// Where twin `name` runs, by its nodes' own account (one entry,
    /// unless something went wrong).
    pub fn running(&self, name: &str) -> Vec<(&NodeEntry, &TwinObservation)> {
        self.nodes
            .values()
            .filter_map(|node| {
                node.heartbeat
                    .twins
                    .iter()
                    .find(|t| t.name == name)
                    .map(|t| (node, t))
            })
            .collect()
    }

    /// The nodes not gone that report running twin `name`: where it may
    /// still run (an unreachable node's report stands).
    pub fn reporting(&self, name: &str) -> Vec<(&NodeEntry, &TwinObservation)> {
        let mut running = self.running(name);
        running.retain(|(node, _)| node.state != NodeState::Gone);
        running
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 2-core node's heartbeat: `name` in `zone` and `domain`, its
    /// default broker `rtt_ms` away, running `twins`.
    pub(crate) fn heartbeat(
        name: &str,
        zone: &str,
        domain: &str,
        rtt_ms: f64,
        twins: Vec<TwinObservation>,
    ) -> Heartbeat {
        Heartbeat {
            name: name.into(),
            url: format!("http://{name}"),
            zone: zone.into(),
            domain: domain.into(),
            labels: BTreeMap::new(),
            capacity: Capacity {
                cores: 2,
                ..Capacity::default()
            },
            paths: vec![BrokerPath {
                broker: "127.0.0.1:1883".into(),
                rtt_ms: Some(rtt_ms),
                lost: 0,
                probes: 5,
            }],
            twins,
        }
    }

    fn beat(name: &str) -> Heartbeat {
        heartbeat(name, "edge", "plant-a", 1.0, vec![])
    }

    const T: Timeouts = Timeouts {
        unreachable_ms: 6_000,
        gone_ms: 30_000,
    };

    #[test]
    fn a_silent_node_is_unreachable_before_it_is_gone_and_ready_when_it_returns() {
        let mut fleet = Fleet::default();
        let joined = fleet.heartbeat(beat("a"), 1_000);
        assert_eq!(joined.nodes, [("a".into(), None, NodeState::Ready)]);
        fleet.heartbeat(beat("b"), 1_000);
        fleet.heartbeat(beat("b"), 5_000);
        assert!(fleet.age(5_000, T).nodes.is_empty());
        let late = fleet.age(7_000, T);
        assert_eq!(
            late.nodes,
            [("a".into(), Some(NodeState::Ready), NodeState::Unreachable)]
        );
        assert!(!fleet.get("a").unwrap().schedulable());
        fleet.heartbeat(beat("b"), 30_000);
        let dead = fleet.age(31_000, T);
        assert_eq!(
            dead.nodes,
            [("a".into(), Some(NodeState::Unreachable), NodeState::Gone)]
        );
        let back = fleet.heartbeat(beat("a"), 32_000);
        assert_eq!(
            back.nodes,
            [("a".into(), Some(NodeState::Gone), NodeState::Ready)]
        );
    }

    /// The failure an operator had: it lost its own connection, took every
    /// host for dead and deleted their workloads.
    #[test]
    fn when_every_node_falls_silent_none_is_taken_for_gone() {
        let mut fleet = Fleet::default();
        fleet.heartbeat(beat("a"), 1_000);
        fleet.heartbeat(beat("b"), 1_000);
        let silent = fleet.age(60_000, T);
        assert!(
            silent
                .nodes
                .iter()
                .all(|(_, _, to)| *to == NodeState::Unreachable),
            "{silent:?}"
        );
        assert_eq!(silent.nodes.len(), 2);
        // One node heard again: the other's silence is its own.
        fleet.heartbeat(beat("b"), 61_000);
        let changed = fleet.age(61_000, T);
        assert!(changed.nodes.contains(&(
            "a".into(),
            Some(NodeState::Unreachable),
            NodeState::Gone
        )));
    }

    #[test]
    fn a_cordon_survives_heartbeats() {
        let mut fleet = Fleet::default();
        fleet.heartbeat(beat("a"), 0);
        assert!(fleet.cordon("a", Some("ran an unsigned model".into())));
        fleet.heartbeat(beat("a"), 1_000);
        assert!(!fleet.get("a").unwrap().schedulable());
        assert!(!fleet.cordon("nope", None));
        // Even a restart's: a finding stays until someone lifts it.
        fleet.heartbeat(beat("b"), 9_000);
        fleet.age(9_000, T);
        fleet.heartbeat(beat("a"), 10_000);
        assert!(!fleet.get("a").unwrap().schedulable());
    }

    #[test]
    fn a_drained_node_back_after_a_silence_is_schedulable_again() {
        let mut fleet = Fleet::default();
        fleet.heartbeat(beat("a"), 0);
        fleet.heartbeat(beat("b"), 0);
        assert!(fleet.cordon("a", Some(format!("{DRAINING}: its pod is stopping"))));
        fleet.heartbeat(beat("a"), 1_000);
        assert!(!fleet.get("a").unwrap().schedulable(), "still draining");
        fleet.heartbeat(beat("b"), 8_000);
        fleet.age(8_000, T);
        assert_eq!(fleet.get("a").unwrap().state, NodeState::Unreachable);
        fleet.heartbeat(beat("a"), 9_000);
        assert!(fleet.get("a").unwrap().schedulable());
    }
}
