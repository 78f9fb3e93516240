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
