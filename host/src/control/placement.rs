//! Which nodes may run a twin, best first: its zones (in its order of
//! preference), its trust domains and their minimum trust, its
//! anti-affinity, then the node's path to the twin's broker and its free
//! CPU.

use std::collections::BTreeMap;

use super::fleet::{BrokerPath, NodeEntry};
use crate::spec::TwinSpec;

/// A node that may run the twin.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// The node.
    pub node: &'a NodeEntry,
    /// Its round trip to the twin's broker, ms, if measured.
    pub rtt_ms: Option<f64>,
}

/// The eligible nodes, best first, and why each other node is not.
#[derive(Debug, Default)]
pub struct Ranking<'a> {
    /// Eligible nodes, best first.
    pub eligible: Vec<Candidate<'a>>,
    /// `node: reason` for every node left out.
    pub excluded: Vec<String>,
}

/// What placement needs to know besides the nodes.
pub struct Context<'a> {
    /// Trust level of each domain the operator rated (unrated: 0).
    pub trust: &'a BTreeMap<String, u32>,
    /// The labels of the twins placed on each node, other than the one
    /// being placed.
    pub labels_on: &'a dyn Fn(&str) -> Vec<BTreeMap<String, String>>,
}

/// The broker a twin's updates come through, as nodes name it in their
/// paths (`HOST:PORT`); `None` for the node's own default broker.
pub fn broker_of(spec: &TwinSpec) -> Option<String> {
    let url = spec.spec.physical.broker.as_deref()?;
    let address: crate::physical::BrokerAddress = url.parse().ok()?;
    Some(format!("{}:{}", address.host, address.port))
}

/// `node`'s measured path to the broker `spec`'s updates come through
/// (its own default broker, listed first, when the spec names none).
pub fn path<'a>(spec: &TwinSpec, node: &'a NodeEntry) -> Option<&'a BrokerPath> {
    let paths = &node.heartbeat.paths;
    match broker_of(spec) {
        Some(broker) => paths.iter().find(|p| p.broker == broker),
        None => paths.first(),
    }
}

/// `node`'s measured round trip to `spec`'s broker, ms.
pub fn rtt(spec: &TwinSpec, node: &NodeEntry) -> Option<f64> {
    path(spec, node).and_then(|p| p.rtt_ms)
}

/// Why `node` may not run `spec`, if it may not (schedulability aside).
pub fn unfit(spec: &TwinSpec, node: &NodeEntry, context: &Context) -> Option<String> {
    let placement = &spec.spec.placement;
    let beat = &node.heartbeat;
    if !placement.zones.contains(&beat.zone) {
        return Some(format!(
            "zone {} is not among the twin's zones {:?}",
            beat.zone, placement.zones
        ));
    }
    if !placement.domains.is_empty() && !placement.domains.contains(&beat.domain) {
        return Some(format!(
            "domain {} is not among the twin's domains {:?}",
            beat.domain, placement.domains
        ));
    }
    let trust = context.trust.get(&beat.domain).copied().unwrap_or(0);
    if trust < placement.min_trust {
        return Some(format!(
            "domain {} has trust {trust}, below the twin's minimum {}",
            beat.domain, placement.min_trust
        ));
    }
    let avoid = &placement.anti_affinity;
    if !avoid.is_empty()
        && (context.labels_on)(&beat.name)
            .iter()
            .any(|labels| avoid.iter().all(|(k, v)| labels.get(k) == Some(v)))
    {
        return Some(format!("it runs a twin labelled {avoid:?} (anti-affinity)"));
    }
    None
}

/// Ranks every node for `spec`: eligible ones by zone preference, then
/// round trip to the broker (unmeasured last), then most free CPU.
pub fn rank<'a>(
    spec: &TwinSpec,
    nodes: impl Iterator<Item = &'a NodeEntry>,
    context: &Context,
) -> Ranking<'a> {
    let mut ranking = Ranking::default();
    for node in nodes {
        let name = &node.heartbeat.name;
        if let Some(reason) = &node.cordoned {
            ranking
                .excluded
                .push(format!("{name}: cordoned ({reason})"));
        } else if !node.schedulable() {
            ranking
                .excluded
                .push(format!("{name}: {:?}", node.state).to_lowercase());
        } else if let Some(reason) = unfit(spec, node, context) {
            ranking.excluded.push(format!("{name}: {reason}"));
        } else {
            let rtt_ms = rtt(spec, node);
            ranking.eligible.push(Candidate { node, rtt_ms });
        }
    }
    let zones = &spec.spec.placement.zones;
    let zone_rank = |c: &Candidate| {
        zones
            .iter()
            .position(|z| *z == c.node.heartbeat.zone)
            .unwrap_or(usize::MAX)
    };
    ranking.eligible.sort_by(|a, b| {
        zone_rank(a)
            .cmp(&zone_rank(b))
            .then(
                a.rtt_ms
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.rtt_ms.unwrap_or(f64::INFINITY)),
            )
            .then(
                b.node
                    .heartbeat
                    .capacity
                    .free_millis()
                    .cmp(&a.node.heartbeat.capacity.free_millis()),
            )
            .then(a.node.heartbeat.name.cmp(&b.node.heartbeat.name))
    });
    ranking.excluded.sort();
    ranking
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::fleet::NodeState;
    use super::super::fleet::tests::heartbeat;
    use super::*;

    pub(crate) fn node(name: &str, zone: &str, domain: &str, rtt: f64) -> NodeEntry {
        NodeEntry {
            heartbeat: heartbeat(name, zone, domain, rtt, vec![]),
            seen_ms: 0,
            state: NodeState::Ready,
            cordoned: None,
        }
    }

    #[test]
    fn zones_come_in_the_twins_order_then_the_better_path() {
        let nodes = [
            node("cloud-1", "cloud", "provider", 5.0),
            node("edge-slow", "edge", "plant-a", 80.0),
            node("edge-fast", "edge", "plant-a", 2.0),
            node("mec-1", "mec", "plant-a", 1.0),
        ];
        let mut spec = crate::spec::minimal();
        spec.spec.placement.zones = vec!["edge".into(), "cloud".into()];
        let trust = BTreeMap::new();
        let none = |_: &str| Vec::new();
        let context = Context {
            trust: &trust,
            labels_on: &none,
        };
        let ranking = rank(&spec, nodes.iter(), &context);
        let names: Vec<&str> = ranking
            .eligible
            .iter()
            .map(|c| c.node.heartbeat.name.as_str())
            .collect();
        assert_eq!(names, ["edge-fast", "edge-slow", "cloud-1"]);
        assert_eq!(ranking.excluded.len(), 1);
        assert!(
            ranking.excluded[0].starts_with("mec-1: zone mec"),
            "{ranking:?}"
        );
    }

    #[test]
    fn domains_trust_and_anti_affinity_exclude_with_a_reason() {
        let nodes = [
            node("a", "edge", "plant-a", 1.0),
            node("b", "edge", "plant-b", 1.0),
            node("c", "edge", "provider", 1.0),
        ];
        let mut spec = crate::spec::minimal();
        spec.spec.placement.domains = vec!["plant-a".into(), "plant-b".into()];
        spec.spec.placement.min_trust = 2;
        spec.spec.placement.anti_affinity = [("line".to_string(), "press".to_string())].into();
        let trust = [("plant-a".to_string(), 3), ("plant-b".to_string(), 1)].into();
        let on_a = |node: &str| {
            if node == "a" {
                vec![[("line".to_string(), "press".to_string())].into()]
            } else {
                vec![]
            }
        };
        let context = Context {
            trust: &trust,
            labels_on: &on_a,
        };
        let ranking = rank(&spec, nodes.iter(), &context);
        assert!(ranking.eligible.is_empty());
        assert_eq!(ranking.excluded.len(), 3);
        assert!(ranking.excluded[0].contains("anti-affinity"), "{ranking:?}");
        assert!(
            ranking.excluded[1].contains("trust 1, below"),
            "{ranking:?}"
        );
        assert!(ranking.excluded[2].contains("not among the twin's domains"));
    }
}
