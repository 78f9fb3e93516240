//! The orchestrator's decision: a pure function of one twin's desired
//! state, what its nodes observe, the eligible nodes and what the
//! orchestrator remembers of it (when its requirement broke, when it last
//! acted). No I/O, no clock: the standalone control plane and the
//! Kubernetes operator call the same function, and tests replay any
//! situation exactly.
//!
//! Hysteresis: a broken requirement must hold for the policy's
//! `holdSeconds` before anything is done; a cooldown of `cooldownSeconds`
//! follows each action, so the orchestrator never flaps. A model failing
//! after a swap is rolled back at once: a trap is not noise.

use serde::{Deserialize, Serialize};

use super::diagnose::{Cause, diagnose};
use super::fleet::{NodeEntry, NodeState, TwinObservation, spec_digest};
use super::placement::{Candidate, Ranking};
use super::repository::Desired;
use crate::spec::Remedy;

/// What the orchestrator remembers of one twin between two looks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// Since when a requirement has been broken, ms.
    pub broken_since_ms: Option<u64>,
    /// When the orchestrator last acted on the twin, ms.
    pub acted_ms: Option<u64>,
    /// The twin's guest-error count at the last look.
    pub errors_seen: u64,
    /// What the last notification was about (its cause's kind, or its
    /// text), so it is not repeated every look.
    pub notified: Option<String>,
}

/// Something to do to a twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "action")]
pub enum Action {
    /// Start it on `node` from its spec.
    Place { node: String },
    /// Start it again on `node`, which lost it, from its latest
    /// checkpoint (from its spec without one).
    Recreate { node: String },
    /// Start it on `node` from the latest checkpoint the control plane
    /// holds, its node `from` being gone.
    Restore { node: String, from: String },
    /// Apply the spec as it now is on `node`, where it runs.
    Update { node: String },
    /// Hot-swap its model on `node` to the spec's.
    Swap { node: String },
    /// Move it, live.
    Migrate { from: String, to: String },
    /// Set its CPU share on `node`.
    Scale { node: String, millis: u64 },
    /// Swap back to its previous model on `node`.
    Rollback { node: String },
    /// Stop it on `node` (it runs twice, or is no longer wanted).
    Stop { node: String },
    /// Nothing can be done: tell the stakeholders.
    Notify,
}

/// One decision, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// The diagnosed cause, when a requirement broke.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// Why, in words.
    pub reason: String,
}

/// Everything [`decide`] looks at for one twin.
pub struct Situation<'a> {
    /// The twin's name.
    pub name: &'a str,
    /// What the user asked for; `None` once deleted.
    pub desired: Option<&'a Desired>,
    /// The nodes (not gone) that report running it.
    pub running: Vec<(&'a NodeEntry, &'a TwinObservation)>,
    /// The node it was placed on, as the fleet knows it.
    pub placed: Option<&'a NodeEntry>,
    /// Eligible nodes for it, best first.
    pub ranking: Ranking<'a>,
    /// Why the node it runs on is no longer fit for it, if it is not.
    pub unfit_here: Option<String>,
    /// Whether the control plane holds a checkpoint of it.
    pub has_checkpoint: bool,
    /// What the orchestrator remembers of it.
    pub memory: &'a Memory,
    /// Now, ms since the Unix epoch.
    pub now_ms: u64,
}

/// What [`decide`] concluded: the decisions and the memory to keep.
#[derive(Debug, Default)]
pub struct Verdict {
    /// The decisions, in the order to carry them out.
    pub decisions: Vec<Decision>,
    /// What to remember for the next look.
    pub memory: Memory,
}

impl Verdict {
    fn push(&mut self, action: Action, cause: Option<Cause>, reason: String) {
        self.decisions.push(Decision {
            action,
            cause,
            reason,
        });
    }

    /// A notification, unless one of the same kind was the last sent (a
    /// cause's figures change at every look; saying it again would not).
    fn notify(&mut self, cause: Option<Cause>, reason: String) {
        let kind = match &cause {
            Some(cause) => cause.kind().to_string(),
            None => reason.clone(),
        };
        if self.memory.notified.as_ref() != Some(&kind) {
            self.memory.notified = Some(kind);
            self.push(Action::Notify, cause, reason);
        }
    }
}

/// A better path must at least halve the round trip, or save 20 ms.
fn clearly_better(candidate: Option<f64>, current: Option<f64>) -> bool {
    match (candidate, current) {
        (Some(c), Some(now)) => c <= now / 2.0 || c + 20.0 <= now,
        (Some(_), None) => true,
        _ => false,
    }
}

/// What to do about twin `situation.name`.
pub fn decide(situation: &Situation) -> Verdict {
    let mut verdict = Verdict {
        memory: situation.memory.clone(),
        decisions: Vec::new(),
    };
    let Some(desired) = situation.desired else {
        for (node, _) in &situation.running {
            let node = node.heartbeat.name.clone();
            verdict.push(Action::Stop { node }, None, "the twin was deleted".into());
        }
        return verdict;
    };
    let placed_name = desired.status.node.as_deref();
    // Never one twin in two places: keep the placed copy (or the first).
    let keep = situation
        .running
        .iter()
        .position(|(n, _)| Some(n.heartbeat.name.as_str()) == placed_name)
        .unwrap_or(0);
    for (i, (node, _)) in situation.running.iter().enumerate() {
        if i != keep {
            let reason = format!(
                "the twin runs on {} too; it belongs on {}",
                node.heartbeat.name,
                placed_name.unwrap_or("another node")
            );
            let node = node.heartbeat.name.clone();
            verdict.push(Action::Stop { node }, None, reason);
        }
    }
    match situation.running.get(keep) {
        None => place(situation, desired, &mut verdict),
        Some((node, twin)) => tend(situation, desired, node, twin, &mut verdict),
    }
    // After an action the twin is left to settle for the cooldown: its
    // window still holds what came before (a new twin's holds nothing). A
    // spec changed in place disturbs nothing the window holds: what the
    // change itself breaks is seen, and remedied, at once.
    if verdict.decisions.iter().any(|d| {
        !matches!(
            d.action,
            Action::Notify | Action::Place { .. } | Action::Update { .. }
        )
    }) {
        verdict.memory.acted_ms = Some(situation.now_ms);
        verdict.memory.broken_since_ms = None;
    }
    verdict
}

/// The twin runs nowhere: start it where it belongs, or elsewhere.
fn place(situation: &Situation, desired: &Desired, verdict: &mut Verdict) {
    if let Some((digest, _)) = &desired.status.refused
        && *digest == spec_digest(&desired.effective())
    {
        // Told already, when the node refused it; a new spec clears this.
        return;
    }
    let best = situation.ranking.eligible.first();
    match situation.placed {
        Some(node) if node.state == NodeState::Ready => {
            let node = node.heartbeat.name.clone();
            let reason = format!("the twin is missing from {node}, where it was placed");
            verdict.push(Action::Recreate { node }, None, reason);
        }
        Some(node) if node.state == NodeState::Unreachable => {
            // It may still run there: starting it elsewhere could run it
            // twice. Wait until the node is back or gone.
            let reason = format!(
                "its node {} is unreachable; waiting for it to return or be declared gone",
                node.heartbeat.name
            );
            verdict.notify(None, reason);
        }
        placed => match best {
            Some(best) => {
                let node = best.node.heartbeat.name.clone();
                match placed.filter(|_| situation.has_checkpoint) {
                    Some(gone) => {
                        let from = gone.heartbeat.name.clone();
                        let reason = format!(
                            "its node {from} is gone; restoring its latest checkpoint on {node}"
                        );
                        verdict.push(Action::Restore { node, from }, None, reason);
                    }
                    None => {
                        let reason = format!("placed on {node}, the best eligible node");
                        verdict.push(Action::Place { node }, None, reason);
                    }
                }
            }
            None => {
                let reason = format!(
                    "no eligible node for the twin: {}",
                    excluded(&situation.ranking)
                );
                verdict.notify(None, reason);
            }
        },
    }
}

fn excluded(ranking: &Ranking) -> String {
    if ranking.excluded.is_empty() {
        "no node has joined".into()
    } else {
        ranking.excluded.join("; ")
    }
}

/// The twin runs on `node`: keep its spec current, its node fit, and its
/// requirements met.
fn tend(
    situation: &Situation,
    desired: &Desired,
    node: &NodeEntry,
    twin: &TwinObservation,
    verdict: &mut Verdict,
) {
    let here = node.heartbeat.name.clone();
    let spec = desired.effective();
    let policy = &spec.spec.policy;
    let allowed = |remedy: Remedy| policy.actions.contains(&remedy);
    let errors_seen = verdict.memory.errors_seen;
    verdict.memory.errors_seen = twin.guest_errors;

    let digest = spec_digest(&spec);
    if twin.spec_digest != digest {
        if desired
            .status
            .refused
            .as_ref()
            .is_some_and(|(refused, _)| *refused == digest)
        {
            return;
        }
        let model_changed = desired
            .status
            .model_digest
            .as_ref()
            .is_some_and(|d| *d != twin.model_digest.to_string());
        let (action, reason) = if model_changed {
            (Action::Swap { node: here }, "the spec names another model")
        } else {
            (Action::Update { node: here }, "the spec changed")
        };
        verdict.push(action, None, reason.into());
        return;
    }

    if let Some(why) = &situation.unfit_here {
        let reason = format!("{here} may no longer run the twin: {why}");
        match situation.ranking.eligible.first() {
            Some(to) if allowed(Remedy::Migrate) => {
                let to = to.node.heartbeat.name.clone();
                verdict.push(Action::Migrate { from: here, to }, None, reason);
            }
            _ => verdict.notify(
                None,
                format!(
                    "{reason}; no eligible node to move it to ({})",
                    excluded(&situation.ranking)
                ),
            ),
        }
        return;
    }

    // Once rolled back, the twin runs the model it had: its failures are
    // not the new model's, and rolling back again would swap the failing
    // one back in.
    let mut twin = twin.clone();
    twin.can_roll_back &= desired.status.model_override.is_none();
    let Some(cause) = diagnose(&twin, &spec.spec.requirements, errors_seen) else {
        verdict.memory.broken_since_ms = None;
        verdict.memory.notified = None;
        return;
    };
    let now = situation.now_ms;
    let since = *verdict.memory.broken_since_ms.get_or_insert(now);
    let cooling = verdict
        .memory
        .acted_ms
        .is_some_and(|at| now < at + u64::from(policy.cooldown_seconds) * 1000);
    // A model failing after a swap is rolled back at once, even within
    // the cooldown the swap itself started.
    let urgent = matches!(cause, Cause::ModelFailing { .. });
    // A breakage without a known cause is given a window more before it is
    // reported: measures that lag (a device's new rate is known only after
    // a few of its updates) may yet name the cause.
    // Nor is it reported once a known cause was, while the breakage lasts:
    // it is what the window still holds of that cause (a device back to its
    // rate leaves a window short of updates).
    let hold_seconds = match cause {
        Cause::Unknown { .. } if verdict.memory.notified.is_some() => return,
        Cause::Unknown { .. } => policy.hold_seconds + spec.spec.requirements.window_seconds,
        _ => policy.hold_seconds,
    };
    let held = now < since + u64::from(hold_seconds) * 1000;
    if !urgent && (cooling || held) {
        return;
    }
    remedy(situation, &spec, node, &twin, cause, &allowed, verdict);
}

/// Acts on a diagnosed cause.
fn remedy(
    situation: &Situation,
    spec: &crate::spec::TwinSpec,
    node: &NodeEntry,
    twin: &TwinObservation,
    cause: Cause,
    allowed: &dyn Fn(Remedy) -> bool,
    verdict: &mut Verdict,
) {
    let here = node.heartbeat.name.clone();
    let others: Vec<&Candidate> = situation
        .ranking
        .eligible
        .iter()
        .filter(|c| c.node.heartbeat.name != here)
        .collect();
    let current_rtt = super::placement::rtt(spec, node);
    match &cause {
        Cause::Network { transit_ms, .. } => {
            let better = others
                .iter()
                .filter(|c| clearly_better(c.rtt_ms, current_rtt))
                .min_by(|a, b| {
                    a.rtt_ms
                        .unwrap_or(f64::INFINITY)
                        .total_cmp(&b.rtt_ms.unwrap_or(f64::INFINITY))
                });
            match better {
                Some(to) if allowed(Remedy::Migrate) => {
                    let reason = format!(
                        "updates spend {transit_ms:.0} ms on the way to {here} (its broker round trip {}); {} has {}",
                        ms(current_rtt),
                        to.node.heartbeat.name,
                        ms(to.rtt_ms)
                    );
                    let to = to.node.heartbeat.name.clone();
                    verdict.push(Action::Migrate { from: here, to }, Some(cause), reason);
                }
                found => {
                    let why = if found.is_some() {
                        "the policy does not allow migrating"
                    } else {
                        "no eligible node has a clearly better path to the broker"
                    };
                    let reason =
                        format!("updates spend {transit_ms:.0} ms on the way to {here}; {why}");
                    verdict.notify(Some(cause), reason);
                }
            }
        }
        Cause::Compute { .. } => {
            compute(spec, node, twin, &others, cause.clone(), allowed, verdict)
        }
        Cause::PhysicalTwinChanged {
            rate_hz,
            expected_hz,
        } => {
            let reason = format!(
                "the device sends {rate_hz:.2} updates/s with no gaps in its sequence numbers, \
                 where the spec expects {expected_hz}: the device changed, and moving or scaling \
                 the twin cannot help; if this is its new rate, set \
                 spec.requirements.expectedRateHz: {rate_hz:.2}"
            );
            verdict.notify(Some(cause), reason);
        }
        Cause::Loss { gaps } => {
            let lossy = super::placement::path(spec, node).is_some_and(|p| p.lost > 0);
            let better = others.iter().find(|c| {
                clearly_better(c.rtt_ms, current_rtt)
                    || (lossy && c.node.heartbeat.paths.iter().all(|p| p.lost == 0))
            });
            match better {
                Some(to) if allowed(Remedy::Migrate) && (lossy || current_rtt.is_some()) => {
                    let reason = format!(
                        "{gaps} updates lost on the way to {here}, whose path to the broker {}; moving to {}",
                        if lossy { "loses probes" } else { "is slow" },
                        to.node.heartbeat.name
                    );
                    let to = to.node.heartbeat.name.clone();
                    verdict.push(
                        Action::Migrate { from: here, to },
                        Some(cause.clone()),
                        reason.clone(),
                    );
                    verdict.notify(Some(cause), reason);
                }
                _ => {
                    let reason = format!(
                        "{gaps} updates lost between the device and {here}; no node has a better path"
                    );
                    verdict.notify(Some(cause), reason);
                }
            }
        }
        Cause::ModelFailing {
            new_errors,
            last_error,
        } => {
            let reason = format!(
                "the model failed {new_errors} more time(s) since it was swapped in (last: {})",
                last_error.as_deref().unwrap_or("unknown")
            );
            if allowed(Remedy::Rollback) {
                verdict.push(
                    Action::Rollback { node: here },
                    Some(cause.clone()),
                    format!("{reason}; rolling back to the previous model"),
                );
            }
            verdict.notify(Some(cause), reason);
        }
        Cause::Unknown { reasons } => {
            let reason = format!("requirements broken: {}", reasons.join("; "));
            verdict.notify(Some(cause), reason);
        }
    }
}

/// The twin's model or its queue is slow: raise its share if the node has
/// room (and the policy allows it), else move it to a node that has.
fn compute(
    spec: &crate::spec::TwinSpec,
    node: &NodeEntry,
    twin: &TwinObservation,
    others: &[&Candidate],
    cause: Cause,
    allowed: &dyn Fn(Remedy) -> bool,
    verdict: &mut Verdict,
) {
    let Cause::Compute {
        queue_ms,
        model_ms,
        utilization,
        throttled,
    } = cause
    else {
        return;
    };
    let here = node.heartbeat.name.clone();
    let ceiling = spec
        .spec
        .policy
        .max_cpu
        .as_deref()
        .and_then(|q| crate::runtime::cpu::parse_millis(q).ok())
        .map_or(u64::MAX, u64::from);
    let Some(share) = twin.cpu_share_millis else {
        let reason = format!(
            "updates wait for the model on {here}, which has no CPU share to raise (utilization {})",
            utilization.map_or("unknown".into(), |u| format!("{u:.2}"))
        );
        verdict.notify(Some(cause), reason);
        return;
    };
    // More CPU helps a twin that uses most of its share, or that its share
    // held back a tenth of the time or more (bursty work: one update a
    // second, each slowed down by the share, uses little on average).
    let held_back = throttled.is_some_and(|t| t >= 0.1);
    if utilization.is_some_and(|u| u < 0.8) && !held_back {
        let reason = format!(
            "updates wait for the model on {here}, which uses {:.0} % of its {share}m share and is not held back by it: more CPU would not help",
            utilization.unwrap_or(0.0) * 100.0
        );
        verdict.notify(Some(cause), reason);
        return;
    }
    let wanted = wanted_share(spec, twin, share, queue_ms + model_ms).min(ceiling);
    let room = share + node.heartbeat.capacity.free_millis();
    if wanted > share && allowed(Remedy::Scale) && room >= wanted {
        let reason = format!(
            "updates wait for the model, which uses all of its {share}m CPU share on {here}; raising it to {wanted}m"
        );
        verdict.push(
            Action::Scale {
                node: here,
                millis: wanted,
            },
            Some(cause),
            reason,
        );
        return;
    }
    let roomy = others
        .iter()
        .find(|c| c.node.heartbeat.capacity.free_millis() >= wanted);
    match roomy {
        Some(to) if wanted > share && allowed(Remedy::Migrate) => {
            let reason = format!(
                "the model needs more than its {share}m CPU share and {here} has no room; moving to {}",
                to.node.heartbeat.name
            );
            let to = to.node.heartbeat.name.clone();
            verdict.push(Action::Migrate { from: here, to }, Some(cause), reason);
        }
        _ if room >= share + 10 && wanted > share && allowed(Remedy::Scale) => {
            // Nowhere has enough: all this node has is still closer to it.
            let most = room / 10 * 10;
            let reason = format!(
                "updates wait for the model, which its {share}m CPU share on {here} holds back; \
                 it needs about {wanted}m and no eligible node has that free: raising it to {most}m, all {here} has"
            );
            verdict.push(
                Action::Scale {
                    node: here,
                    millis: most,
                },
                Some(cause),
                reason,
            );
        }
        _ => {
            let reason = if wanted <= share {
                format!(
                    "the model needs more than its {share}m CPU share, the most spec.policy.maxCpu allows"
                )
            } else {
                format!(
                    "the model needs more than its {share}m CPU share and no eligible node has {wanted}m free (or the policy forbids)"
                )
            };
            verdict.notify(Some(cause), reason);
        }
    }
}

/// The share (millicores) at which the twin's processing, now
/// `processing_ms` at `share`, would take half of what the timeliness bound
/// leaves after transit (the rest is room for jitter): one step to enough,
/// rather than doubling once per cooldown; at least double, rounded up to
/// 10m. Processing time scales as one over the share for work the share
/// holds back, which is the work at issue here.
fn wanted_share(
    spec: &crate::spec::TwinSpec,
    twin: &TwinObservation,
    share: u64,
    processing_ms: f64,
) -> u64 {
    let bound = spec.spec.requirements.timeliness.bound_ms as f64;
    let transit = twin.entanglement.parts.transit_ms.unwrap_or(0.0);
    let budget = (bound - transit) / 2.0;
    let needed = if budget > 0.0 && processing_ms.is_finite() {
        (share as f64 * processing_ms / budget)
            .ceil()
            .min(f64::from(crate::runtime::cpu::MAX_MILLIS)) as u64
    } else {
        0
    };
    needed.max(share.saturating_mul(2)).div_ceil(10) * 10
}

fn ms(rtt: Option<f64>) -> String {
    rtt.map_or("unmeasured".into(), |r| format!("{r:.1} ms"))
}

#[cfg(test)]
mod tests {
    use super::super::diagnose::tests::observed;
    use super::super::placement::tests::node;
    use super::*;
    use crate::twin::entanglement::Parts;

    fn desired() -> Desired {
        let mut spec = crate::spec::minimal();
        spec.spec.policy.hold_seconds = 5;
        spec.spec.policy.cooldown_seconds = 30;
        let mut desired = Desired {
            spec,
            generation: 1,
            status: Default::default(),
        };
        desired.status.node = Some("edge-1".into());
        desired
    }

    fn slow_path() -> TwinObservation {
        let mut twin = observed(
            1500.0,
            1.0,
            Parts {
                transit_ms: Some(1450.0),
                queue_ms: Some(10.0),
                model_ms: Some(40.0),
                rate_hz: 1.0,
                gaps: 0,
            },
        );
        twin.spec_digest = spec_digest(&desired().effective());
        twin
    }

    struct World {
        desired: Desired,
        nodes: Vec<NodeEntry>,
        twin: TwinObservation,
    }

    impl World {
        fn new() -> Self {
            Self {
                desired: desired(),
                nodes: vec![
                    node("edge-1", "edge", "plant-a", 150.0),
                    node("cloud-1", "cloud", "provider", 3.0),
                ],
                twin: slow_path(),
            }
        }

        fn decide(&self, memory: &Memory, now_ms: u64) -> Verdict {
            let ranking = Ranking {
                eligible: self
                    .nodes
                    .iter()
                    .map(|n| Candidate {
                        node: n,
                        rtt_ms: n.heartbeat.paths[0].rtt_ms,
                    })
                    .collect(),
                excluded: vec![],
            };
            decide(&Situation {
                name: "p",
                desired: Some(&self.desired),
                running: vec![(&self.nodes[0], &self.twin)],
                placed: Some(&self.nodes[0]),
                ranking,
                unfit_here: None,
                has_checkpoint: true,
                memory,
                now_ms,
            })
        }
    }

    #[test]
    fn a_slow_path_migrates_after_the_hold_and_not_again_within_the_cooldown() {
        let world = World::new();
        let first = world.decide(&Memory::default(), 1_000);
        assert!(first.decisions.is_empty(), "held: {:?}", first.decisions);
        assert_eq!(first.memory.broken_since_ms, Some(1_000));
        let held = world.decide(&first.memory, 6_000);
        assert_eq!(
            held.decisions[0].action,
            Action::Migrate {
                from: "edge-1".into(),
                to: "cloud-1".into()
            },
            "{:?}",
            held.decisions
        );
        assert_eq!(held.decisions[0].cause.as_ref().unwrap().kind(), "network");
        let again = world.decide(&held.memory, 20_000);
        assert!(
            again.decisions.is_empty(),
            "cooling down: {:?}",
            again.decisions
        );
    }

    #[test]
    fn a_requirement_that_recovers_within_the_hold_changes_nothing() {
        let mut world = World::new();
        let first = world.decide(&Memory::default(), 1_000);
        world.twin.entanglement = observed(20.0, 1.0, Parts::default()).entanglement;
        let fine = world.decide(&first.memory, 3_000);
        assert!(fine.decisions.is_empty());
        assert_eq!(fine.memory.broken_since_ms, None);
    }

    #[test]
    fn without_a_better_path_it_notifies_once() {
        let mut world = World::new();
        world.nodes[1] = node("cloud-1", "cloud", "provider", 140.0);
        let first = world.decide(&Memory::default(), 0);
        let second = world.decide(&first.memory, 10_000);
        assert_eq!(second.decisions.len(), 1);
        assert_eq!(second.decisions[0].action, Action::Notify);
        assert!(
            second.decisions[0]
                .reason
                .contains("no eligible node has a clearly better path"),
            "{:?}",
            second.decisions
        );
        let third = world.decide(&second.memory, 20_000);
        assert!(
            third.decisions.is_empty(),
            "said once: {:?}",
            third.decisions
        );
    }

    #[test]
    fn a_starved_twin_gets_more_cpu_where_the_node_has_room() {
        let mut world = World::new();
        world.twin.entanglement = observed(
            1500.0,
            1.0,
            Parts {
                transit_ms: Some(2.0),
                queue_ms: Some(1200.0),
                model_ms: Some(298.0),
                rate_hz: 1.0,
                gaps: 0,
            },
        )
        .entanglement;
        world.twin.cpu_share_millis = Some(100);
        world.twin.cpu_utilization = Some(0.98);
        let first = world.decide(&Memory::default(), 0);
        let act = world.decide(&first.memory, 6_000);
        // 1498 ms of processing at 100m, where the 1000 ms bound leaves
        // 998 after transit: enough is 100m × 1498 / 499, in one step.
        assert_eq!(
            act.decisions[0].action,
            Action::Scale {
                node: "edge-1".into(),
                millis: 310
            }
        );
        // The policy caps the share: at the cap, only a notification.
        world.desired.spec.spec.policy.max_cpu = Some("100m".into());
        world.twin.spec_digest = spec_digest(&world.desired.effective());
        let capped = world.decide(&first.memory, 6_000);
        assert_eq!(capped.decisions[0].action, Action::Notify);
        assert!(capped.decisions[0].reason.contains("maxCpu"));
    }

    #[test]
    fn a_bursty_twin_held_back_by_its_share_gets_more_cpu_and_an_idle_one_does_not() {
        let mut world = World::new();
        world.desired.spec.spec.requirements.timeliness.bound_ms = 200;
        world.twin.entanglement = observed(
            620.0,
            1.0,
            Parts {
                transit_ms: Some(20.0),
                queue_ms: Some(0.0),
                model_ms: Some(600.0),
                rate_hz: 1.0,
                gaps: 0,
            },
        )
        .entanglement;
        world.twin.spec_digest = spec_digest(&world.desired.effective());
        world.twin.cpu_share_millis = Some(200);
        // One update a second, each 600 ms at its share: 12 % of the share
        // on average, but paused half the time.
        world.twin.cpu_utilization = Some(0.12);
        world.twin.cpu_throttled = Some(0.5);
        let first = world.decide(&Memory::default(), 0);
        let act = world.decide(&first.memory, 6_000);
        // 600 ms at 200m must become 90 ms (half of 200 − 20): 1340m.
        assert_eq!(
            act.decisions[0].action,
            Action::Scale {
                node: "edge-1".into(),
                millis: 1340
            },
            "{:?}",
            act.decisions
        );
        // A bound of 100 needs 3000m, more than the node's two cores (and
        // no other node has them): all it has.
        world.desired.spec.spec.requirements.timeliness.bound_ms = 100;
        world.twin.spec_digest = spec_digest(&world.desired.effective());
        let most = world.decide(&first.memory, 6_000);
        let Action::Scale { millis, .. } = most.decisions[0].action else {
            panic!("{:?}", most.decisions);
        };
        assert!(millis > 1340 && millis <= 2200, "{millis}");
        assert!(
            most.decisions[0].reason.contains("about 3000m"),
            "{:?}",
            most.decisions
        );
        // The same slowness with no pause is not the share's doing.
        world.twin.cpu_throttled = Some(0.0);
        let idle = world.decide(&first.memory, 6_000);
        assert_eq!(idle.decisions[0].action, Action::Notify);
        assert!(
            idle.decisions[0].reason.contains("not held back"),
            "{:?}",
            idle.decisions
        );
    }

    #[test]
    fn a_breakage_of_unknown_cause_waits_a_window_more_before_it_is_reported() {
        let mut world = World::new();
        let parts = Parts {
            transit_ms: Some(10.0),
            queue_ms: Some(1.0),
            model_ms: Some(9.0),
            rate_hz: 1.0,
            gaps: 0,
        };
        world.twin.entanglement = observed(20.0, 1.0, parts).entanglement;
        world.twin.entanglement.availability = 0.5;
        let policy = &world.desired.spec.spec.policy;
        let hold_ms = u64::from(policy.hold_seconds) * 1000;
        let window_ms = u64::from(world.desired.spec.spec.requirements.window_seconds) * 1000;
        let first = world.decide(&Memory::default(), 0);
        let held = world.decide(&first.memory, hold_ms + 1_000);
        assert!(held.decisions.is_empty(), "{:?}", held.decisions);
        let told = world.decide(&first.memory, hold_ms + window_ms);
        assert_eq!(told.decisions.len(), 1, "{:?}", told.decisions);
        assert_eq!(told.decisions[0].action, Action::Notify);
        // What is left of a breakage whose cause was reported is not.
        let explained = Memory {
            notified: Some("physicalTwinChanged".into()),
            ..first.memory.clone()
        };
        let quiet = world.decide(&explained, hold_ms + window_ms);
        assert!(quiet.decisions.is_empty(), "{:?}", quiet.decisions);
    }

    #[test]
    fn a_spec_changed_in_place_starts_no_cooldown() {
        let mut world = World::new();
        world.desired.spec.spec.model.config = serde_json::json!({ "primes": 25000 });
        let verdict = world.decide(&Memory::default(), 0);
        assert!(
            matches!(
                verdict.decisions[..],
                [Decision {
                    action: Action::Update { .. },
                    ..
                }]
            ),
            "{:?}",
            verdict.decisions
        );
        assert_eq!(verdict.memory.acted_ms, None);
    }

    #[test]
    fn a_device_that_slowed_down_is_reported_not_moved() {
        let mut world = World::new();
        world.twin.entanglement = observed(
            20.0,
            0.5,
            Parts {
                transit_ms: Some(10.0),
                queue_ms: Some(1.0),
                model_ms: Some(9.0),
                rate_hz: 0.5,
                gaps: 0,
            },
        )
        .entanglement;
        let first = world.decide(&Memory::default(), 0);
        let act = world.decide(&first.memory, 6_000);
        assert_eq!(act.decisions.len(), 1);
        assert_eq!(act.decisions[0].action, Action::Notify);
        assert!(
            act.decisions[0].reason.contains("0.50 updates/s"),
            "{:?}",
            act.decisions
        );
        assert!(act.decisions[0].reason.contains("expectedRateHz: 0.50"));
    }

    #[test]
    fn a_model_failing_after_a_swap_is_rolled_back_at_once() {
        let mut world = World::new();
        world.twin.entanglement = observed(20.0, 1.0, Parts::default()).entanglement;
        world.twin.guest_errors = 3;
        world.twin.can_roll_back = true;
        // Even within the cooldown the swap started.
        let just_swapped = Memory {
            acted_ms: Some(0),
            ..Memory::default()
        };
        let act = world.decide(&just_swapped, 1_000);
        assert_eq!(
            act.decisions[0].action,
            Action::Rollback {
                node: "edge-1".into()
            }
        );
        assert_eq!(act.decisions[1].action, Action::Notify);
        // Rolled back: late failures of the new model (or any later ones)
        // never swap it back in.
        world.desired.status.model_override = Some(world.desired.spec.spec.model.component.clone());
        world.twin.spec_digest = spec_digest(&world.desired.effective());
        world.twin.guest_errors = 5;
        let after = world.decide(&act.memory, 2_000);
        assert!(
            after
                .decisions
                .iter()
                .all(|d| !matches!(d.action, Action::Rollback { .. })),
            "{:?}",
            after.decisions
        );
    }

    #[test]
    fn a_twin_in_two_places_is_stopped_where_it_does_not_belong() {
        let world = World::new();
        let twice = decide(&Situation {
            name: "p",
            desired: Some(&world.desired),
            running: vec![
                (&world.nodes[1], &world.twin),
                (&world.nodes[0], &world.twin),
            ],
            placed: Some(&world.nodes[0]),
            ranking: Ranking::default(),
            unfit_here: None,
            has_checkpoint: false,
            memory: &Memory::default(),
            now_ms: 0,
        });
        assert_eq!(
            twice.decisions[0].action,
            Action::Stop {
                node: "cloud-1".into()
            }
        );
    }

    #[test]
    fn a_twin_on_a_gone_node_is_restored_elsewhere_and_waits_while_it_is_unreachable() {
        let world = World::new();
        let look = |nodes: &[NodeEntry], memory: &Memory| {
            decide(&Situation {
                name: "p",
                desired: Some(&world.desired),
                running: vec![],
                placed: Some(&nodes[0]),
                ranking: Ranking {
                    eligible: vec![Candidate {
                        node: &nodes[1],
                        rtt_ms: Some(3.0),
                    }],
                    excluded: vec![],
                },
                unfit_here: None,
                has_checkpoint: true,
                memory,
                now_ms: 0,
            })
        };
        let mut nodes = world.nodes.clone();
        nodes[0].state = NodeState::Unreachable;
        let waiting = look(&nodes, &Memory::default());
        assert_eq!(waiting.decisions[0].action, Action::Notify);
        nodes[0].state = NodeState::Gone;
        let gone = look(&nodes, &waiting.memory);
        assert_eq!(
            gone.decisions[0].action,
            Action::Restore {
                node: "cloud-1".into(),
                from: "edge-1".into()
            }
        );
    }
}
