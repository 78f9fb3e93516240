//! What a `DigitalTwin`'s status says: where the twin runs, how well it is
//! entangled there, the control plane's latest decision about it, and
//! conditions in the shape every Kubernetes tool reads
//! (`type/status/reason/message/lastTransitionTime`).
//!
//! The status is computed from the control plane's view alone, by a pure
//! function, and written whole by server-side apply: the operator owns
//! every field of it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::control::fleet::NodeState;
use crate::control::reconcile::TwinReport;
use crate::twin::entanglement::Status;

/// The status of a `DigitalTwin`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DigitalTwinStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending`, `Running`, `Unreachable` (its node stopped reporting: the
    /// twin is left there) or `Refused`.
    #[serde(default)]
    pub phase: String,
    /// The host the twin runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// That host's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// How well the twin is entangled, over its requirements' window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entanglement: Option<Entanglement>,
    /// The control plane's latest decision or notification about the twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<LastDecision>,
    /// `Accepted`, `Placed` and `Entangled`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Entanglement at the twin's latest report, rounded (two decimals, whole
/// milliseconds) so that a steady twin's status stays the same and costs
/// the API server no write: high-rate figures stay on the hosts' metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Entanglement {
    /// `entangled`, `degraded` or `disentangled`.
    pub status: String,
    /// Overall entanglement, in [0, 1].
    pub odte: f64,
    /// Timeliness at the required percentile, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeliness_ms: Option<f64>,
    /// Share of the expected updates received.
    pub reliability: f64,
    /// Share of the window the twin was available.
    pub availability: f64,
}

/// A decision of the control plane, from its event history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastDecision {
    /// When it was recorded (RFC 3339).
    pub time: String,
    /// `decision` or `notification`.
    pub kind: String,
    /// What and why, in words.
    pub summary: String,
    /// Its position in the event history (`wasmtwin events`).
    pub seq: u64,
}

/// A condition, as Kubernetes objects report them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Its name.
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word, for machines.
    pub reason: String,
    /// For people.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// What the operator knows about a twin when it writes its status.
pub enum Known<'a> {
    /// The control plane holds it.
    Report(&'a TwinReport),
    /// The control plane refused it.
    Refused(&'a str),
}

/// The status for `known`, at `generation`. A condition whose status did
/// not change keeps its transition time from `previous`.
pub fn status(
    known: Known<'_>,
    generation: Option<i64>,
    previous: Option<&DigitalTwinStatus>,
    now: &str,
) -> DigitalTwinStatus {
    let mut status = DigitalTwinStatus {
        observed_generation: generation,
        ..Default::default()
    };
    let report = match known {
        Known::Refused(why) => {
            status.phase = "Refused".into();
            status.conditions = vec![condition("Accepted", "False", "SpecRefused", why)];
            return stamped(status, previous, now);
        }
        Known::Report(report) => report,
    };
    status.last_decision = report.last.as_ref().map(|r| LastDecision {
        time: r.at.clone(),
        kind: r.kind.as_str().to_string(),
        summary: r.summary.clone(),
        seq: r.seq,
    });
    let mut conditions = vec![match &report.placed.refused {
        Some((_, why)) => condition("Accepted", "False", "NodeRefused", why),
        None => condition(
            "Accepted",
            "True",
            "Verified",
            "the control plane checked the model's digest and signature",
        ),
    }];
    let placed = report.placed.node.as_deref();
    let running = report
        .running
        .iter()
        .find(|r| Some(r.node.as_str()) == placed)
        .or(report.running.first());
    match running {
        Some(run) => {
            status.node = Some(run.node.clone());
            status.zone = Some(run.zone.clone());
            let e = &run.twin.entanglement;
            let hundredths = |x: f64| (x * 100.0).round() / 100.0;
            status.entanglement = Some(Entanglement {
                status: format!("{:?}", e.status).to_lowercase(),
                odte: hundredths(e.odte),
                timeliness_ms: e.timeliness_ms.map(|p| p.required.round()),
                reliability: hundredths(e.reliability),
                availability: hundredths(e.availability),
            });
            let here = format!("running on {} ({})", run.node, run.zone);
            if run.state == NodeState::Ready {
                status.phase = "Running".into();
                conditions.push(condition("Placed", "True", "Running", &here));
                conditions.push(match e.status {
                    Status::Entangled => condition(
                        "Entangled",
                        "True",
                        "RequirementsMet",
                        "every requirement is met",
                    ),
                    Status::Degraded | Status::Disentangled => condition(
                        "Entangled",
                        "False",
                        if e.status == Status::Degraded {
                            "Degraded"
                        } else {
                            "Disentangled"
                        },
                        &e.reasons.join("; "),
                    ),
                });
            } else {
                // A host that stopped reporting may still run the twin:
                // it is left in place, and nothing is claimed about it.
                status.phase = "Unreachable".into();
                let why = format!("{here}; its host stopped reporting, the twin is left there");
                conditions.push(condition("Placed", "True", "HostUnreachable", &why));
                conditions.push(condition("Entangled", "Unknown", "HostUnreachable", &why));
            }
        }
        None => {
            status.phase = if report.placed.refused.is_some() {
                "Refused"
            } else {
                "Pending"
            }
            .into();
            status.node = placed.map(String::from);
            let why = match placed {
                Some(node) => format!("placed on {node}, which does not report it running yet"),
                None => "no eligible host yet (see the last decision)".into(),
            };
            conditions.push(condition("Placed", "False", "NotRunning", &why));
            conditions.push(condition(
                "Entangled",
                "Unknown",
                "NotRunning",
                "the twin is not running",
            ));
        }
    }
    status.conditions = conditions;
    stamped(status, previous, now)
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        kind: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: String::new(),
    }
}

/// Sets each condition's transition time: the previous one's if its status
/// is unchanged, else `now`.
fn stamped(
    mut status: DigitalTwinStatus,
    previous: Option<&DigitalTwinStatus>,
    now: &str,
) -> DigitalTwinStatus {
    for c in &mut status.conditions {
        let before = previous
            .into_iter()
            .flat_map(|p| &p.conditions)
            .find(|p| p.kind == c.kind && p.status == c.status);
        c.last_transition_time =
            before.map_or_else(|| now.to_string(), |p| p.last_transition_time.clone());
    }
    status
}
