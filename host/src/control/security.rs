//! The security agent (C6): checks, periodically, that every node runs the
//! model components the control plane verified and placed (their digests
//! were checked against its trust policy when the twin was applied), and
//! that each node's domain is still trusted enough for its twins. A node
//! that runs anything else is cordoned, and its twins evacuated by the
//! orchestrator to eligible nodes; a domain whose trust fell below a twin's
//! minimum makes that twin move (the orchestrator sees its node unfit).
//! Every finding goes to the event history.
//!
//! What a node reports is its own account: a node that lies about its
//! digests defeats this check, which catches a node that was tampered
//! with by the front door (a swap or apply that did not come through the
//! control plane), not one whose operator is hostile. Remote attestation
//! would be the answer to that.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::fleet::{NodeState, spec_digest};
use super::reconcile::Control;

/// One finding: a node, what is wrong, the evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The node.
    pub node: String,
    /// What is wrong, in words.
    pub summary: String,
    /// The twin concerned.
    pub twin: String,
    /// The digest expected and the one found.
    pub expected: String,
    /// The digest the node runs.
    pub found: String,
}

/// Checks every ready node once; cordons those that run unplaced models.
pub fn check(control: &Control) -> Vec<Finding> {
    let findings = control.with_state(|fleet, twins, _domains| {
        let mut findings = Vec::new();
        for node in fleet.nodes() {
            if node.state != NodeState::Ready || node.cordoned.is_some() {
                continue;
            }
            for twin in &node.heartbeat.twins {
                let Some(desired) = twins.get(&twin.name) else {
                    continue;
                };
                let Some(expected) = &desired.status.model_digest else {
                    continue;
                };
                // Mid-change (a swap or update on its way) the digests
                // legitimately differ; the spec digest says when it is done.
                let current = twin.spec_digest == spec_digest(&desired.effective());
                let found = twin.model_digest.to_string();
                if current && found != *expected {
                    findings.push(Finding {
                        node: node.heartbeat.name.clone(),
                        summary: format!(
                            "node {} runs model {found} for twin {}, not the {expected} the control plane verified and placed",
                            node.heartbeat.name, twin.name
                        ),
                        twin: twin.name.clone(),
                        expected: expected.clone(),
                        found,
                    });
                }
            }
        }
        for finding in &findings {
            fleet.cordon(&finding.node, Some(finding.summary.clone()));
        }
        findings
    });
    for finding in &findings {
        control.finding(
            &finding.node,
            finding.summary.clone(),
            json!({
                "twin": finding.twin,
                "expected": finding.expected,
                "found": finding.found,
                "action": "cordoned; its twins are evacuated",
            }),
        );
    }
    findings
}

/// Runs [`check`] every `every`.
pub async fn run(control: Arc<Control>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        check(&control);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::fleet::tests::heartbeat;
    use crate::control::fleet::{Heartbeat, Timeouts, TwinObservation};
    use crate::control::history::Kind;
    use crate::control::reconcile::ControlConfig;
    use crate::digest::Digest;
    use crate::twin::entanglement::Entanglement;
    use wasmtwin_tests::plugin;

    fn beat(node: &str, twins: Vec<TwinObservation>) -> Heartbeat {
        heartbeat(node, "edge", "plant-a", 1.0, twins)
    }

    /// A node reports, under the spec the control plane placed, a model
    /// other than the one it verified: the agent records a finding and
    /// cordons the node, and the orchestrator moves the twin away.
    #[tokio::test]
    async fn a_node_running_another_model_is_cordoned_and_its_twin_moved() {
        let dir = tempfile::tempdir().unwrap();
        let config = ControlConfig {
            timeouts: Timeouts {
                unreachable_ms: 60_000,
                gone_ms: 120_000,
            },
            checkpoint_every: Duration::from_secs(3600),
            ..ControlConfig::new(
                crate::signing::TrustPolicy::from_args(None, true).unwrap(),
                vec![plugin("misbehave").parent().unwrap().to_path_buf()],
            )
        };
        let control = crate::control::open(dir.path(), None, config, None).unwrap();
        let mut spec = crate::spec::minimal();
        spec.spec.model.component.reference = plugin("misbehave").display().to_string();
        control.apply(spec.clone(), "test").await.unwrap();
        let now = crate::physical::now_us();
        let (report, _) = Entanglement::new(spec.spec.requirements.clone(), now).evaluate(now);
        let observed = TwinObservation {
            name: "p".into(),
            spec_digest: spec_digest(&spec),
            model_digest: Digest::of(b"not the model that was placed"),
            updates_applied: 0,
            guest_errors: 0,
            last_error: None,
            can_roll_back: false,
            cpu_share_millis: None,
            cpu_utilization: None,
            cpu_throttled: None,
            entanglement: report,
        };
        control.heartbeat(beat("edge-1", vec![observed]));
        control.heartbeat(beat("edge-2", vec![]));
        control.tick();
        let findings = check(&control);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].node, "edge-1");
        assert!(
            check(&control).is_empty(),
            "a cordoned node is not checked again"
        );
        let nodes = control.nodes();
        assert!(nodes[0]["cordoned"].is_string(), "{nodes:?}");
        control.tick();
        // The decision is recorded before acting (the fake node's API is
        // unreachable, so the move itself fails).
        let mut decided = Vec::new();
        for _ in 0..50 {
            decided = control.history().records(0, None, 100).unwrap();
            if decided.iter().any(|r| r.kind == Kind::Decision) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            decided
                .iter()
                .any(|r| r.kind == Kind::Finding && r.node.as_deref() == Some("edge-1"))
        );
        let decision = decided.iter().find(|r| r.kind == Kind::Decision).unwrap();
        assert_eq!(decision.data["action"]["action"], "migrate", "{decision:?}");
        assert_eq!(decision.data["action"]["to"], "edge-2");
        assert!(
            decision.summary.contains("cordoned"),
            "{}",
            decision.summary
        );
    }
}
