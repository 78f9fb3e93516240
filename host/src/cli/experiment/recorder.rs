//! The recorder: every second, the twin's measures as its node reports
//! them; and every record of the control plane's event history as it is
//! written. Both go to CSV files, and feed the figure and the verdict.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;
use wasmtwin::control::history::{Kind as RecordKind, Record};
use wasmtwin::node::TwinReport;
use wasmtwin::twin::entanglement::Status;

use super::figure::MarkKind;

/// One second of a run.
#[derive(Debug, Clone)]
pub struct Row {
    /// Seconds since the run's first phase began.
    pub t_s: f64,
    /// The phase it falls in (index into the schedule).
    pub phase: usize,
    /// The node running the twin (`None` while none reports it).
    pub node: Option<String>,
    /// The twin's verdict over its window.
    pub status: Option<Status>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub reliability: f64,
    pub availability: f64,
    pub odte: f64,
    pub updates_applied: u64,
    /// Cores used recently, the share, and the share of time paused.
    pub cpu_cores: f64,
    pub share_cores: Option<f64>,
    pub throttled: Option<f64>,
}

impl Row {
    /// The row for `report` from `node`, or an empty one with no node.
    pub fn new(t_s: f64, phase: usize, hosting: Option<(&str, TwinReport)>) -> Self {
        let Some((node, report)) = hosting else {
            return Row {
                t_s,
                phase,
                node: None,
                status: None,
                p50_ms: None,
                p99_ms: None,
                reliability: 0.0,
                availability: 0.0,
                odte: 0.0,
                updates_applied: 0,
                cpu_cores: 0.0,
                share_cores: None,
                throttled: None,
            };
        };
        let e = &report.entanglement;
        Row {
            t_s,
            phase,
            node: Some(node.to_string()),
            status: Some(e.status),
            p50_ms: e.timeliness_ms.map(|t| t.p50),
            p99_ms: e.timeliness_ms.map(|t| t.p99),
            reliability: e.reliability,
            availability: e.availability,
            odte: e.odte,
            updates_applied: report.updates_applied,
            cpu_cores: report.cpu.recent_cores,
            share_cores: report.cpu.share_millis.map(|m| f64::from(m) / 1000.0),
            throttled: report.cpu.throttled,
        }
    }

    /// The verdict in words (`entangled`, `degraded`, `disentangled`), or
    /// `absent` while no node reports the twin.
    pub fn status_text(&self) -> String {
        self.status
            .map_or("absent".into(), |s| format!("{s:?}").to_lowercase())
    }

    /// Whether every requirement held.
    pub fn entangled(&self) -> bool {
        self.status == Some(Status::Entangled)
    }
}

/// What the control plane did, as its event history recorded it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Seconds since the run's first phase began (when it was recorded).
    pub t_s: f64,
    pub phase: usize,
    /// The history's own record.
    pub record: Record,
}

impl Event {
    /// The action a decision took (`migrate`, `scale`, `place`…), if this
    /// is a decision or an action's outcome.
    pub fn action(&self) -> Option<&str> {
        self.record.data["action"]["action"].as_str()
    }

    /// The diagnosed cause's kind (`network`, `compute`…), if any.
    pub fn cause(&self) -> Option<&str> {
        self.record.data["cause"]["cause"].as_str()
    }

    /// The diagnosed cause's fields.
    pub fn cause_data(&self) -> &Value {
        &self.record.data["cause"]
    }

    /// A decision to remedy broken requirements (it names a cause).
    pub fn is_remedy(&self) -> bool {
        self.record.kind == RecordKind::Decision && self.cause().is_some()
    }

    /// Whether the decision was carried out (not so when the control plane
    /// only observes).
    pub fn carried_out(&self) -> bool {
        self.record.data["carriedOut"].as_bool().unwrap_or(true)
    }

    pub fn is_notification(&self) -> bool {
        self.record.kind == RecordKind::Notification
    }

    /// An action's outcome: whether it succeeded and how long it took.
    pub fn outcome(&self) -> Option<(bool, f64)> {
        (self.record.kind == RecordKind::Action).then(|| {
            (
                self.record.data["ok"].as_bool().unwrap_or(false),
                self.record.data["ms"].as_f64().unwrap_or(0.0),
            )
        })
    }
}

impl Event {
    /// A remedy or a notification, in a few words (`migrate edge→cloud`,
    /// `scale to 130m`, `notify: device sends 0.50/s`); `None` for other
    /// records.
    pub fn reaction(&self) -> Option<(MarkKind, String)> {
        if self.is_notification() {
            let text = match self.cause_data()["rateHz"].as_f64() {
                Some(rate) => format!("notify: device sends {rate:.2}/s"),
                None => format!("notify: {}", self.cause().unwrap_or("unknown")),
            };
            return Some((MarkKind::Notify, text));
        }
        if !self.is_remedy() {
            return None;
        }
        let action = &self.record.data["action"];
        Some(match self.action() {
            Some("migrate") => (
                MarkKind::Migrate,
                format!(
                    "migrate {}→{}",
                    action["from"].as_str().unwrap_or("?"),
                    action["to"].as_str().unwrap_or("?")
                ),
            ),
            Some("scale") => (
                MarkKind::Scale,
                format!("scale to {}m", action["millis"].as_u64().unwrap_or(0)),
            ),
            other => (MarkKind::Other, other.unwrap_or("act").to_string()),
        })
    }
}

/// Writes `rows` as CSV, with the phases' titles.
pub fn write_rows(path: &Path, rows: &[Row], titles: &[String]) -> anyhow::Result<()> {
    let mut out = String::from(
        "t_s,phase,node,status,timeliness_p50_ms,timeliness_p99_ms,reliability,availability,odte,\
         updates_applied,cpu_cores,cpu_share_cores,cpu_throttled\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    for row in rows {
        out.push_str(&format!(
            "{:.1},{},{},{},{},{},{:.4},{:.4},{:.4},{},{:.4},{},{}\n",
            row.t_s,
            csv_field(titles.get(row.phase).map_or("", String::as_str)),
            row.node.as_deref().unwrap_or(""),
            row.status_text(),
            opt(row.p50_ms),
            opt(row.p99_ms),
            row.reliability,
            row.availability,
            row.odte,
            row.updates_applied,
            row.cpu_cores,
            opt(row.share_cores),
            opt(row.throttled),
        ));
    }
    write(path, &out)
}

/// Writes every history record of the run as CSV.
pub fn write_events(path: &Path, events: &[Event], titles: &[String]) -> anyhow::Result<()> {
    let mut out = String::from("t_s,phase,seq,kind,action,cause,carried_out,summary\n");
    for event in events {
        out.push_str(&format!(
            "{:.1},{},{},{},{},{},{},{}\n",
            event.t_s,
            csv_field(titles.get(event.phase).map_or("", String::as_str)),
            event.record.seq,
            event.record.kind.as_str(),
            event.action().unwrap_or(""),
            event.cause().unwrap_or(""),
            if event.record.kind == RecordKind::Decision {
                event.carried_out().to_string()
            } else {
                String::new()
            },
            csv_field(&event.record.summary),
        ));
    }
    write(path, &out)
}

/// A CSV field, quoted when it has to be.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn a_second_without_the_twin_is_written_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.csv");
        let titles = vec!["baseline".to_string()];
        write_rows(&path, &[Row::new(1.0, 0, None)], &titles).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with("1.0,baseline,,absent,,,"), "{line}");
        assert!(!Row::new(1.0, 0, None).entangled());
    }
}
