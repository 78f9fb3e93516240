//! Why a twin is not entangled, from what its node observes: the parts of
//! its timeliness (transit, queue, model), how its updates arrive (rate,
//! sequence gaps), its CPU share and its model's failures.
//!
//! The paper's reference middleware redeploys a desynchronised twin to a
//! random other zone; moving cannot fix a slow model or a device that
//! changed, so the control plane names the cause first and acts on it.

use serde::{Deserialize, Serialize};

use super::fleet::TwinObservation;
use crate::spec::Requirements;

/// What broke a twin's entanglement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "cause"
)]
pub enum Cause {
    /// Updates take long on the way: the transit part dominates the
    /// required timeliness percentile.
    Network {
        /// PT → node at the required percentile, ms.
        transit_ms: f64,
        /// Queue + model at that percentile, ms.
        processing_ms: f64,
    },
    /// Updates wait for the model, or the model is slow.
    Compute {
        /// Queue at the required percentile, ms.
        queue_ms: f64,
        /// Model at the required percentile, ms.
        model_ms: f64,
        /// CPU used over the share (1 = all), if the twin has one.
        utilization: Option<f64>,
        /// Share of recent time it was paused for being over its share.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        throttled: Option<f64>,
    },
    /// The device sends fewer updates than declared, with no gaps in its
    /// sequence numbers: it changed, not the path.
    PhysicalTwinChanged {
        /// Updates per second received.
        rate_hz: f64,
        /// Updates per second the spec expects.
        expected_hz: f64,
    },
    /// Sequence numbers are missing: updates were lost on the way.
    Loss {
        /// Missing sequence numbers in the window.
        gaps: u64,
    },
    /// The model fails (traps, fuel, memory, deadline) and a swap left an
    /// earlier model to go back to.
    ModelFailing {
        /// Failures since the last look.
        new_errors: u64,
        /// The last failure.
        last_error: Option<String>,
    },
    /// Broken, but none of the above explains it (e.g. availability after
    /// restarts).
    Unknown {
        /// The node's own reasons.
        reasons: Vec<String>,
    },
}

impl Cause {
    /// A short name for logs, metrics and the benchmark.
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::Network { .. } => "network",
            Cause::Compute { .. } => "compute",
            Cause::PhysicalTwinChanged { .. } => "physical-twin-changed",
            Cause::Loss { .. } => "loss",
            Cause::ModelFailing { .. } => "model-failing",
            Cause::Unknown { .. } => "unknown",
        }
    }
}

/// A share of the expected rate below which a steady stream counts as a
/// changed device rather than noise.
const RATE_TOLERANCE: f64 = 0.85;

/// The cause of `twin`'s broken requirements, if any is broken;
/// `errors_seen` is its guest-error count at the last look.
pub fn diagnose(
    twin: &TwinObservation,
    requirements: &Requirements,
    errors_seen: u64,
) -> Option<Cause> {
    let report = &twin.entanglement;
    let parts = &report.parts;
    let new_errors = twin.guest_errors.saturating_sub(errors_seen);
    // A failing model comes first: its dropped updates also look like
    // loss, and its traps like a slow model.
    if new_errors > 0 && twin.can_roll_back {
        return Some(Cause::ModelFailing {
            new_errors,
            last_error: twin.last_error.clone(),
        });
    }
    let timely = report
        .timeliness_ms
        .is_none_or(|t| t.required <= requirements.timeliness.bound_ms as f64);
    let reliable = report.reliability >= requirements.reliability;
    if timely && reliable {
        return (report.odte < requirements.odte
            || report.availability < requirements.availability)
            .then(|| Cause::Unknown {
                reasons: report.reasons.clone(),
            });
    }
    if !reliable {
        // Gaps above noise (one in a hundred) mean losses on the way; a
        // slower steady stream means the device changed.
        if parts.gaps as f64 > report.updates_expected * 0.01 {
            return Some(Cause::Loss { gaps: parts.gaps });
        }
        if parts.rate_hz < requirements.expected_rate_hz * RATE_TOLERANCE {
            return Some(Cause::PhysicalTwinChanged {
                rate_hz: parts.rate_hz,
                expected_hz: requirements.expected_rate_hz,
            });
        }
    }
    if !timely {
        let transit = parts.transit_ms.unwrap_or(0.0);
        let queue = parts.queue_ms.unwrap_or(0.0);
        let model = parts.model_ms.unwrap_or(0.0);
        return Some(if transit > queue + model {
            Cause::Network {
                transit_ms: transit,
                processing_ms: queue + model,
            }
        } else {
            Cause::Compute {
                queue_ms: queue,
                model_ms: model,
                utilization: twin.cpu_utilization,
                throttled: twin.cpu_throttled,
            }
        });
    }
    Some(Cause::Unknown {
        reasons: report.reasons.clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::twin::entanglement::{Parts, Percentiles, Report, Status};

    /// A twin whose window says `timeliness_ms` at every percentile, split
    /// as `parts`, with `reliability`.
    pub(crate) fn observed(timeliness_ms: f64, reliability: f64, parts: Parts) -> TwinObservation {
        let entangled = timeliness_ms <= 1000.0 && reliability >= 0.9;
        TwinObservation {
            name: "p".into(),
            spec_digest: String::new(),
            model_digest: Digest::of(b"model"),
            updates_applied: 100,
            guest_errors: 0,
            last_error: None,
            can_roll_back: false,
            cpu_share_millis: None,
            cpu_utilization: None,
            cpu_throttled: None,
            entanglement: Report {
                timeliness_ms: Some(Percentiles {
                    p50: timeliness_ms,
                    p95: timeliness_ms,
                    p99: timeliness_ms,
                    required: timeliness_ms,
                }),
                timeliness_share: if timeliness_ms <= 1000.0 { 1.0 } else { 0.0 },
                reliability,
                availability: 1.0,
                odte: if entangled { 1.0 } else { 0.0 },
                updates_in_window: 30,
                updates_expected: 30.0,
                status: if entangled {
                    Status::Entangled
                } else {
                    Status::Disentangled
                },
                reasons: vec![],
                parts,
            },
        }
    }

    fn parts(transit: f64, queue: f64, model: f64, rate: f64, gaps: u64) -> Parts {
        Parts {
            transit_ms: Some(transit),
            queue_ms: Some(queue),
            model_ms: Some(model),
            rate_hz: rate,
            gaps,
        }
    }

    fn req() -> Requirements {
        Requirements::default()
    }

    #[test]
    fn an_entangled_twin_has_no_cause() {
        let twin = observed(20.0, 1.0, parts(10.0, 1.0, 9.0, 1.0, 0));
        assert_eq!(diagnose(&twin, &req(), 0), None);
    }

    #[test]
    fn slow_transit_is_the_network_and_slow_processing_is_compute() {
        let twin = observed(1500.0, 1.0, parts(1400.0, 50.0, 50.0, 1.0, 0));
        assert_eq!(diagnose(&twin, &req(), 0).unwrap().kind(), "network");
        let mut twin = observed(1500.0, 1.0, parts(10.0, 1000.0, 490.0, 1.0, 0));
        twin.cpu_utilization = Some(1.0);
        assert_eq!(
            diagnose(&twin, &req(), 0),
            Some(Cause::Compute {
                queue_ms: 1000.0,
                model_ms: 490.0,
                utilization: Some(1.0),
                throttled: None,
            })
        );
    }

    #[test]
    fn a_slower_steady_device_is_not_loss() {
        let twin = observed(20.0, 0.5, parts(10.0, 1.0, 9.0, 0.5, 0));
        assert_eq!(
            diagnose(&twin, &req(), 0),
            Some(Cause::PhysicalTwinChanged {
                rate_hz: 0.5,
                expected_hz: 1.0
            })
        );
        let lossy = observed(20.0, 0.8, parts(10.0, 1.0, 9.0, 0.8, 6));
        assert_eq!(diagnose(&lossy, &req(), 0), Some(Cause::Loss { gaps: 6 }));
    }

    #[test]
    fn new_failures_after_a_swap_come_first() {
        let mut twin = observed(20.0, 0.5, parts(10.0, 1.0, 9.0, 0.5, 15));
        twin.guest_errors = 7;
        twin.can_roll_back = true;
        assert_eq!(diagnose(&twin, &req(), 3).unwrap().kind(), "model-failing");
        // Failures already seen, or nothing to roll back to: not this.
        assert_eq!(diagnose(&twin, &req(), 7).unwrap().kind(), "loss");
        twin.can_roll_back = false;
        assert_eq!(diagnose(&twin, &req(), 3).unwrap().kind(), "loss");
    }
}
