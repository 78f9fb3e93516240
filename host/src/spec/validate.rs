//! Checks a parsed spec's values and reports every problem with its path.

use std::fmt;
use std::str::FromStr;

use super::{API_VERSION, ComponentRef, KIND, TwinSpec};
use crate::digest::Digest;
use crate::runtime::Limits;

/// One thing wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, e.g. `spec.requirements.reliability` (empty for the document).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem at `path`. Both may quote the spec, so each is capped at
    /// [`MESSAGE_MAX`](crate::input::MESSAGE_MAX) bytes: a huge value in
    /// a spec is not echoed back whole.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: crate::input::cap_message(path),
            message: crate::input::cap_message(message),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a spec was refused: all its problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Every problem found, in document order.
    pub problems: Vec<Problem>,
}

impl SpecError {
    pub(super) fn single(problem: Problem) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "invalid twin spec ({count} problem{})",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// Collects problems while walking the spec.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn into_result(self) -> Result<(), SpecError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(SpecError {
                problems: self.problems,
            })
        }
    }

    fn check(&mut self, ok: bool, path: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(Problem::new(path, message()));
        }
    }

    fn fraction(&mut self, value: f64, path: &str) {
        self.check((0.0..=1.0).contains(&value), path, || {
            format!("must be between 0 and 1, got {value}")
        });
    }

    fn component(&mut self, component: &ComponentRef, path: &str) {
        let reference = &component.reference;
        self.check(!reference.trim().is_empty(), &format!("{path}.ref"), || {
            "must not be empty".into()
        });
        if reference.contains("://") {
            let known = reference.starts_with("file://") || reference.starts_with("oci://");
            self.check(known, &format!("{path}.ref"), || {
                format!("`{reference}` must be a path, file://… or oci://…")
            });
        }
        if let Some(digest) = &component.digest {
            let parsed = Digest::from_str(digest);
            self.check(parsed.is_ok(), &format!("{path}.digest"), || {
                parsed.err().unwrap_or_default()
            });
        }
    }
}

/// Whether `name` is a DNS label: 1 to 63 lower-case letters, digits or `-`,
/// neither first nor last a `-` (as Kubernetes names resources).
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_topic_filter(filter: &str) -> bool {
    !filter.is_empty()
        && !filter.contains('\0')
        && filter.split('/').enumerate().all(|(i, level)| {
            let last = i == filter.split('/').count() - 1;
            match level {
                "#" => last,
                "+" => true,
                other => !other.contains('#') && !other.contains('+'),
            }
        })
}

impl TwinSpec {
    /// Checks every value; returns all problems found.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut c = Checker::default();
        c.check(self.api_version == API_VERSION, "apiVersion", || {
            format!("must be `{API_VERSION}`, got `{}`", self.api_version)
        });
        c.check(self.kind == KIND, "kind", || {
            format!("must be `{KIND}`, got `{}`", self.kind)
        });
        let name = &self.metadata.name;
        c.check(is_dns_label(name), "metadata.name", || {
            format!("`{name}` must be 1-63 lower-case letters, digits or `-`, not starting or ending with `-`")
        });

        let spec = &self.spec;
        c.component(&spec.model.component, "spec.model");
        c.check(spec.model.config.is_object(), "spec.model.config", || {
            "must be an object".into()
        });

        let physical = &spec.physical;
        if let Some(broker) = &physical.broker {
            let ok = broker.starts_with("mqtt://") || broker.starts_with("mqtts://");
            c.check(ok, "spec.physical.broker", || {
                format!("`{broker}` must be mqtt://HOST:PORT or mqtts://HOST:PORT")
            });
        }
        c.check(!physical.topics.is_empty(), "spec.physical.topics", || {
            "must list at least one topic".into()
        });
        for (i, topic) in physical.topics.iter().enumerate() {
            c.check(
                is_topic_filter(topic),
                &format!("spec.physical.topics[{i}]"),
                || format!("`{topic}` is not a valid MQTT topic filter"),
            );
        }
        if let Some(topic) = &physical.command_topic {
            let ok = !topic.is_empty() && !topic.contains(['+', '#']);
            c.check(ok, "spec.physical.commandTopic", || {
                format!("`{topic}` must be a topic name without wildcards")
            });
        }
        c.check(physical.qos <= 1, "spec.physical.qos", || {
            format!("must be 0 or 1, got {}", physical.qos)
        });
        c.component(&physical.adapter, "spec.physical.adapter");
        let payload = physical.max_payload.parse::<bytesize::ByteSize>();
        c.check(
            payload.as_ref().is_ok_and(|p| p.as_u64() >= 64),
            "spec.physical.maxPayload",
            || {
                format!(
                    "`{}` must be a size of at least 64B, e.g. 256KiB",
                    physical.max_payload
                )
            },
        );

        let r = &spec.requirements;
        let p = r.timeliness.percentile;
        c.check(
            p > 0.0 && p <= 100.0,
            "spec.requirements.timeliness.percentile",
            || format!("must be in (0, 100], got {p}"),
        );
        c.check(
            r.timeliness.bound_ms > 0,
            "spec.requirements.timeliness.boundMs",
            || "must be positive".into(),
        );
        c.fraction(r.reliability, "spec.requirements.reliability");
        c.fraction(r.availability, "spec.requirements.availability");
        c.fraction(r.odte, "spec.requirements.odte");
        c.check(
            (1..=86_400).contains(&r.window_seconds),
            "spec.requirements.windowSeconds",
            || format!("must be between 1 and 86400, got {}", r.window_seconds),
        );
        let rate = r.expected_rate_hz;
        c.check(
            rate > 0.0 && rate <= 100_000.0,
            "spec.requirements.expectedRateHz",
            || format!("must be above 0 and at most 100000, got {rate}"),
        );

        let res = &spec.resources;
        c.check(
            res.fuel_per_update > 0,
            "spec.resources.fuelPerUpdate",
            || "must be positive".into(),
        );
        let memory = res.memory.parse::<bytesize::ByteSize>();
        c.check(
            memory.as_ref().is_ok_and(|m| m.as_u64() >= 1 << 20),
            "spec.resources.memory",
            || {
                format!(
                    "`{}` must be a size of at least 1MiB, e.g. 64MiB",
                    res.memory
                )
            },
        );
        c.check(res.deadline_ms > 0, "spec.resources.deadlineMs", || {
            "must be positive".into()
        });
        if let Some(cpu) = &res.cpu {
            let parsed = crate::runtime::cpu::parse_millis(cpu);
            c.check(parsed.is_ok(), "spec.resources.cpu", || {
                parsed.err().unwrap_or_default()
            });
        }

        let placement = &spec.placement;
        for (i, zone) in placement.zones.iter().enumerate() {
            c.check(
                super::ZONES.contains(&zone.as_str()),
                &format!("spec.placement.zones[{i}]"),
                || format!("`{zone}` must be edge, mec or cloud"),
            );
        }
        c.check(!placement.zones.is_empty(), "spec.placement.zones", || {
            "must list at least one zone".into()
        });
        for (i, domain) in placement.domains.iter().enumerate() {
            // `domains` listed zones before zones had a field of their own.
            let message = if super::ZONES.contains(&domain.as_str()) {
                format!("`{domain}` is a zone: list it under spec.placement.zones")
            } else {
                format!("`{domain}` must be a DNS label, like a node's --domain")
            };
            c.check(
                is_dns_label(domain) && !super::ZONES.contains(&domain.as_str()),
                &format!("spec.placement.domains[{i}]"),
                || message,
            );
        }
        let policy = &spec.policy;
        c.check(
            policy
                .max_cpu
                .as_deref()
                .is_none_or(|q| crate::runtime::cpu::parse_millis(q).is_ok()),
            "spec.policy.maxCpu",
            || {
                format!(
                    "`{}` must be a CPU quantity such as 500m or 2",
                    policy.max_cpu.as_deref().unwrap_or_default()
                )
            },
        );
        c.check(
            policy.hold_seconds <= 3600,
            "spec.policy.holdSeconds",
            || "must be at most 3600".into(),
        );
        c.check(
            policy.cooldown_seconds <= 86_400,
            "spec.policy.cooldownSeconds",
            || "must be at most 86400".into(),
        );
        c.check((1..=64).contains(&spec.replicas), "spec.replicas", || {
            format!("must be between 1 and 64, got {}", spec.replicas)
        });

        let retention = humantime::parse_duration(&spec.history.retention);
        c.check(retention.is_ok(), "spec.history.retention", || {
            format!(
                "`{}` is not a duration such as 1h or 7d",
                spec.history.retention
            )
        });
        c.check(
            spec.history.max_points > 0,
            "spec.history.maxPoints",
            || "must be positive".into(),
        );

        c.into_result()
    }

    /// Checks the spec against what a node allows any twin: its per-call
    /// limits and its largest message payload. Every excess is reported
    /// with its path and the node's flag that sets the maximum.
    pub fn check_ceilings(&self, ceilings: &Ceilings) -> Result<(), SpecError> {
        let mut c = Checker::default();
        let (asked, max) = (self.limits(), ceilings.limits);
        c.check(
            asked.fuel_per_call <= max.fuel_per_call,
            "spec.resources.fuelPerUpdate",
            || {
                format!(
                    "{} is above this node's maximum of {} (--max-fuel-per-update)",
                    asked.fuel_per_call, max.fuel_per_call
                )
            },
        );
        c.check(
            asked.memory_bytes <= max.memory_bytes,
            "spec.resources.memory",
            || {
                format!(
                    "{} is above this node's maximum of {} (--max-memory)",
                    self.spec.resources.memory,
                    bytesize::ByteSize(max.memory_bytes).display().iec()
                )
            },
        );
        c.check(
            asked.deadline <= max.deadline,
            "spec.resources.deadlineMs",
            || {
                format!(
                    "{} is above this node's maximum of {} (--max-deadline-ms)",
                    self.spec.resources.deadline_ms,
                    max.deadline.as_millis()
                )
            },
        );
        c.check(
            self.max_payload() <= ceilings.payload_bytes,
            "spec.physical.maxPayload",
            || {
                format!(
                    "{} is above this node's maximum of {} (--max-payload)",
                    self.spec.physical.max_payload,
                    bytesize::ByteSize(ceilings.payload_bytes).display().iec()
                )
            },
        );
        c.into_result()
    }
}

/// The most any twin on a node may ask for; specs asking more are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceilings {
    /// The largest per-call limits.
    pub limits: Limits,
    /// The largest `spec.physical.maxPayload`, in bytes.
    pub payload_bytes: u64,
}

impl Default for Ceilings {
    /// Room for ten times the heaviest model we run (the paper's `prime`
    /// at 25,000 primes per update stays within 10^9 fuel), while any call
    /// still ends within 30 s, and so does stopping or deleting a twin.
    fn default() -> Self {
        Self {
            limits: Limits {
                fuel_per_call: 10_000_000_000,
                memory_bytes: 1 << 30,
                deadline: std::time::Duration::from_secs(30),
            },
            payload_bytes: 16 << 20,
        }
    }
}
