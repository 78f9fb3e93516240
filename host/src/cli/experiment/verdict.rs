//! What a run shows: per phase, the measures, the reaction and the time to
//! be entangled again (the summary table), and whether the platform did
//! what the paper says it should, for the reason it gives, and nothing
//! else (the checks behind the exit status).

use std::fmt::Write as _;

use super::plan::{Expected, Kind, Phase};
use super::recorder::{Event, Row};

/// One run's record.
pub struct RunRecord {
    /// `acting` or `observing`.
    pub name: &'static str,
    /// Its label in the figure and the table.
    pub label: &'static str,
    /// Whether the control plane only observed.
    pub observe_only: bool,
    pub rows: Vec<Row>,
    pub events: Vec<Event>,
}

/// One check and how it went.
#[derive(Debug, Clone)]
pub struct Check {
    pub ok: bool,
    pub what: String,
}

/// The slack, beyond one window, for "entangled again within one window":
/// the recorder's and the heartbeat's second each, and a little more.
const SLACK_S: f64 = 4.0;

/// Checks `run` against the paper's expectations, phase by phase.
pub fn check(phases: &[Phase], run: &RunRecord, window_s: f64, rate_hz: f64) -> Vec<Check> {
    let mut checks = Vec::new();
    for (index, phase) in phases.iter().enumerate() {
        let in_phase: Vec<&Event> = run.events.iter().filter(|e| e.phase == index).collect();
        let remedies: Vec<&&Event> = in_phase.iter().filter(|e| e.is_remedy()).collect();
        let notes: Vec<&&Event> = in_phase.iter().filter(|e| e.is_notification()).collect();
        let mut check = |ok: bool, what: String| {
            checks.push(Check {
                ok,
                what: format!("{} · {}: {what}", run.name, phase.title),
            })
        };
        let wanted = match phase.kind.expected() {
            Expected::Nothing => {
                // Observing only, the fault before was never remedied: while
                // the window still holds it, its remedy is decided again
                // (once a cooldown), or, the fault itself being gone, the
                // stakeholders are told that no remedy would help; neither
                // is a reaction to the baseline.
                let lingering = index
                    .checked_sub(1)
                    .and_then(|before| remedy_for(phases[before].kind.expected()))
                    .filter(|_| run.observe_only);
                let told: Vec<String> = remedies
                    .iter()
                    .chain(&notes)
                    .filter(|e| {
                        lingering.is_none_or(|(action, cause)| {
                            let same_fault = e.cause() == Some(cause)
                                && (e.is_notification() || e.action() == Some(action));
                            !same_fault
                        })
                    })
                    .map(|e| e.record.summary.clone())
                    .collect();
                check(
                    told.is_empty(),
                    if told.is_empty() {
                        "no decision, no notification".into()
                    } else {
                        format!("expected no reaction, got: {}", told.join(" | "))
                    },
                );
                continue;
            }
            Expected::Migrate | Expected::Scale => remedy_for(phase.kind.expected()),
            Expected::Notify => {
                let expected = phase.kind.rate(rate_hz);
                let named = notes.iter().find(|e| {
                    e.cause() == Some("physicalTwinChanged")
                        && e.cause_data()["rateHz"]
                            .as_f64()
                            .is_some_and(|r| (r - expected).abs() <= expected * 0.1)
                });
                check(
                    named.is_some(),
                    match named {
                        Some(e) => format!("notified: {}", e.record.summary),
                        None => format!(
                            "no notification naming the device's new rate ({expected:.2}/s)"
                        ),
                    },
                );
                check(
                    remedies.is_empty(),
                    if remedies.is_empty() {
                        "no migration, no scaling".into()
                    } else {
                        format!("expected no remedy, got: {}", summaries(&remedies))
                    },
                );
                continue;
            }
        };
        let Some((action, cause)) = wanted else {
            continue;
        };
        let decided = remedies
            .iter()
            .find(|e| e.action() == Some(action) && e.cause() == Some(cause));
        let others: Vec<&&Event> = remedies
            .iter()
            .filter(|e| e.action() != Some(action))
            .copied()
            .collect();
        check(
            others.is_empty(),
            if others.is_empty() {
                format!("no remedy but {action}")
            } else {
                format!("expected only {action}, also got: {}", summaries(&others))
            },
        );
        let Some(decided) = decided else {
            check(
                false,
                format!("no decision to {action} for a {cause} cause"),
            );
            continue;
        };
        if run.observe_only {
            check(
                !decided.carried_out(),
                format!(
                    "decided to {action} ({cause}) and, observing only, did not: {}",
                    decided.record.summary
                ),
            );
            continue;
        }
        // The action's outcome is the next action record of the run.
        let outcome = run
            .events
            .iter()
            .find(|e| e.record.seq > decided.record.seq && e.outcome().is_some());
        let Some((true, _)) = outcome.and_then(Event::outcome) else {
            check(
                false,
                format!("decided to {action} but it failed or never ended"),
            );
            continue;
        };
        let done_at = outcome.map_or(decided.t_s, |e| e.t_s);
        let again = run
            .rows
            .iter()
            .find(|r| r.t_s >= done_at && r.entangled())
            .map(|r| r.t_s - done_at);
        check(
            again.is_some_and(|s| s <= window_s + SLACK_S),
            match again {
                Some(s) => format!(
                    "{action} ({cause}) at {:.0} s; entangled again {s:.0} s later (window {window_s:.0} s): {}",
                    decided.t_s, decided.record.summary
                ),
                None => format!("{action} at {:.0} s, never entangled again", decided.t_s),
            },
        );
    }
    if run.observe_only {
        let acted: Vec<&Event> = run
            .events
            .iter()
            .filter(|e| {
                e.outcome().is_some()
                    && matches!(e.action(), Some("migrate" | "scale" | "rollback"))
            })
            .collect();
        checks.push(Check {
            ok: acted.is_empty(),
            what: format!(
                "{}: no remedy carried out{}",
                run.name,
                if acted.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", but: {}",
                        acted
                            .iter()
                            .map(|e| e.record.summary.as_str())
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                }
            ),
        });
    }
    checks
}

/// The decision (action, cause) that remedies what the paper expects to
/// be remedied.
fn remedy_for(expected: Expected) -> Option<(&'static str, &'static str)> {
    match expected {
        Expected::Migrate => Some(("migrate", "network")),
        Expected::Scale => Some(("scale", "compute")),
        Expected::Nothing | Expected::Notify => None,
    }
}

fn summaries(events: &[&&Event]) -> String {
    events
        .iter()
        .map(|e| e.record.summary.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// One line of the summary table: a phase and what followed it.
#[derive(Debug, Clone)]
pub struct Line {
    pub phase: String,
    pub run: &'static str,
    pub p99_max_ms: Option<f64>,
    pub reliability_min: f64,
    pub odte_min: f64,
    /// Seconds (samples) with a requirement broken.
    pub seconds_broken: usize,
    pub reaction: String,
    /// From the first broken second to the last, plus one; `None` if the
    /// twin was still broken at the end.
    pub entangled_again_s: Option<f64>,
}

/// The summary of each fault phase and the baseline after it (where its
/// effects end), and of the first baseline, for `run`.
pub fn summarize(phases: &[Phase], run: &RunRecord) -> Vec<Line> {
    let mut lines = Vec::new();
    for (index, phase) in phases.iter().enumerate() {
        if phase.kind == Kind::Baseline && index != 0 {
            continue;
        }
        let last = if phase.kind == Kind::Baseline {
            index
        } else {
            (index + 1).min(phases.len() - 1)
        };
        let rows: Vec<&Row> = run
            .rows
            .iter()
            .filter(|r| (index..=last).contains(&r.phase))
            .collect();
        let broken: Vec<&&Row> = rows.iter().filter(|r| !r.entangled()).collect();
        let entangled_again_s = match (broken.first(), broken.last(), rows.last()) {
            (None, _, _) => Some(0.0),
            (Some(first), Some(last), Some(end)) if end.entangled() => {
                Some(last.t_s + 1.0 - first.t_s)
            }
            _ => None,
        };
        let reaction: Vec<String> = run
            .events
            .iter()
            .filter(|e| e.phase == index && e.reaction().is_some())
            .map(|e| reaction(e, run.observe_only))
            .collect();
        lines.push(Line {
            phase: if last > index {
                format!("{} (+ baseline after)", phase.title)
            } else {
                phase.title.clone()
            },
            run: run.label,
            p99_max_ms: rows.iter().filter_map(|r| r.p99_ms).reduce(f64::max),
            reliability_min: rows.iter().map(|r| r.reliability).fold(1.0, f64::min),
            odte_min: rows.iter().map(|r| r.odte).fold(1.0, f64::min),
            seconds_broken: broken.len(),
            reaction: if reaction.is_empty() {
                "none".into()
            } else {
                reaction.join("; ")
            },
            entangled_again_s,
        });
    }
    lines
}

/// A decision or notification in a few words, with when, and whether it
/// was only decided.
fn reaction(event: &Event, observe_only: bool) -> String {
    let what = event.reaction().map_or_else(String::new, |(_, text)| text);
    let at = format!("at {:.0} s", event.t_s);
    if observe_only && event.is_remedy() && !event.carried_out() {
        format!("would {what}, not done ({at})")
    } else {
        format!("{what} ({at})")
    }
}

/// The table in Markdown.
pub fn table(lines: &[Line]) -> String {
    let mut out = String::from(
        "| phase | run | timeliness p99, max (ms) | reliability, min | ODTE, min | seconds broken | reaction | entangled again after |\n\
         |---|---|---:|---:|---:|---:|---|---:|\n",
    );
    for line in lines {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {:.2} | {} | {} | {} |",
            line.phase,
            line.run,
            line.p99_max_ms.map_or("–".into(), |v| format!("{v:.0}")),
            line.reliability_min,
            line.odte_min,
            line.seconds_broken,
            line.reaction,
            match line.entangled_again_s {
                Some(0.0) => "never broken".into(),
                Some(s) => format!("{s:.0} s"),
                None => "still broken".into(),
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use wasmtwin::control::history::{Kind as RecordKind, Record};
    use wasmtwin::twin::entanglement::Status;

    use super::super::plan::schedule;
    use super::*;

    fn event(t_s: f64, seq: u64, kind: RecordKind, data: Value) -> Event {
        let phases = schedule(30);
        Event {
            t_s,
            phase: phases.iter().position(|p| t_s < p.end_s).unwrap_or(6),
            record: Record {
                seq,
                at: String::new(),
                kind,
                twin: Some("prime".into()),
                node: None,
                actor: None,
                summary: format!("record {seq}"),
                data,
                prev: String::new(),
                hash: String::new(),
            },
        }
    }

    fn migrate(t_s: f64, seq: u64, carried_out: bool) -> Event {
        event(
            t_s,
            seq,
            RecordKind::Decision,
            json!({
                "action": { "action": "migrate", "from": "edge", "to": "cloud" },
                "cause": { "cause": "network" },
                "carriedOut": carried_out,
            }),
        )
    }

    fn rows(entangled: impl Fn(f64) -> bool) -> Vec<Row> {
        (1..=210)
            .map(|t| {
                let t_s = f64::from(t);
                let mut row = Row::new(t_s, ((t - 1) / 30) as usize, None);
                row.status = Some(if entangled(t_s) {
                    Status::Entangled
                } else {
                    Status::Disentangled
                });
                row
            })
            .collect()
    }

    fn record(observe_only: bool, events: Vec<Event>, rows: Vec<Row>) -> RunRecord {
        RunRecord {
            name: if observe_only { "observing" } else { "acting" },
            label: "run",
            observe_only,
            rows,
            events,
        }
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.what.as_str())
            .collect()
    }

    #[test]
    fn a_migration_that_entangles_the_twin_within_a_window_passes_phase_one() {
        let phases = schedule(30);
        let events = vec![
            migrate(34.0, 1, true),
            event(
                35.0,
                2,
                RecordKind::Action,
                json!({ "action": { "action": "migrate" }, "ok": true, "ms": 900.0 }),
            ),
        ];
        let run = record(false, events, rows(|t| !(31.0..44.0).contains(&t)));
        let checks = check(&phases, &run, 10.0, 1.0);
        let phase_one: Vec<&Check> = checks
            .iter()
            .filter(|c| c.what.contains("phase 1"))
            .collect();
        assert!(phase_one.iter().all(|c| c.ok), "{phase_one:?}");
        // Still broken 20 s after the move: more than a window.
        let slow = record(
            false,
            run.events.clone(),
            rows(|t| !(31.0..56.0).contains(&t)),
        );
        let checks = check(&phases, &slow, 10.0, 1.0);
        assert!(
            failed(&checks)
                .iter()
                .any(|c| c.contains("entangled again 21 s later")),
            "{checks:?}"
        );
    }

    #[test]
    fn a_notification_in_a_baseline_fails_and_an_observers_repeat_does_not() {
        let phases = schedule(30);
        let told = event(
            70.0,
            1,
            RecordKind::Notification,
            json!({ "cause": { "cause": "unknown" } }),
        );
        let run = record(false, vec![told], rows(|_| true));
        let checks = check(&phases, &run, 10.0, 1.0);
        assert!(
            failed(&checks)
                .iter()
                .any(|c| c.contains("baseline: expected no reaction")),
            "{checks:?}"
        );
        // Observing: the migration decided again in the baseline after
        // phase 1, and the notification that no node has a better path once
        // the link is good again, are the same fault, not a new reaction.
        let network_note = event(
            63.0,
            2,
            RecordKind::Notification,
            json!({ "cause": { "cause": "network" } }),
        );
        let observed = record(
            true,
            vec![
                migrate(34.0, 1, false),
                migrate(62.0, 2, false),
                network_note,
            ],
            rows(|_| true),
        );
        let checks = check(&phases, &observed, 10.0, 1.0);
        assert!(
            !failed(&checks).iter().any(|c| c.contains("baseline")),
            "{checks:?}"
        );
        // Another cause in that baseline is still a reaction to it.
        let other = event(
            63.0,
            2,
            RecordKind::Notification,
            json!({ "cause": { "cause": "unknown" } }),
        );
        let observed = record(true, vec![migrate(34.0, 1, false), other], rows(|_| true));
        let checks = check(&phases, &observed, 10.0, 1.0);
        assert!(
            failed(&checks)
                .iter()
                .any(|c| c.contains("baseline: expected no reaction")),
            "{checks:?}"
        );
        // A withheld decision that was carried out anyway is caught.
        let acted = record(
            true,
            vec![
                migrate(34.0, 1, true),
                event(
                    35.0,
                    2,
                    RecordKind::Action,
                    json!({ "action": { "action": "migrate" }, "ok": true }),
                ),
            ],
            rows(|_| true),
        );
        let checks = check(&phases, &acted, 10.0, 1.0);
        assert!(
            failed(&checks)
                .iter()
                .any(|c| c.contains("no remedy carried out")),
            "{checks:?}"
        );
    }

    #[test]
    fn the_summary_counts_broken_seconds_and_the_time_to_recover() {
        let phases = schedule(30);
        let run = record(
            false,
            vec![migrate(34.0, 1, true)],
            rows(|t| !(31.0..44.0).contains(&t)),
        );
        let lines = summarize(&phases, &run);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[1].seconds_broken, 13);
        assert_eq!(lines[1].entangled_again_s, Some(13.0));
        assert!(
            lines[1].reaction.contains("migrate edge→cloud (at 34 s)"),
            "{lines:?}"
        );
        assert_eq!(lines[0].entangled_again_s, Some(0.0));
        assert!(table(&lines).contains("| never broken |"));
    }
}
