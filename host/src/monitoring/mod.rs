//! The monitoring interface: per-twin Prometheus metrics, named as the
//! architecture promises, exposed at `/metrics`.

pub mod exposition;

pub use exposition::Format;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use std::sync::atomic::AtomicU64;

/// The label every per-twin metric carries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TwinLabel {
    /// The twin's name.
    pub twin: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The label of node-wide request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// The request's priority class: `action`, `read` or `history`;
    /// `stream` for an event stream refused (`--max-subscribers`).
    pub class: &'static str,
}

/// A ratio gauge.
pub type Ratio = Gauge<f64, AtomicU64>;

/// A counter of seconds.
pub type Seconds = Counter<f64, AtomicU64>;

/// All metrics of a node.
pub struct Metrics {
    registry: Registry,
    /// Every per-twin family, to forget a twin's series.
    per_twin: Vec<Box<dyn TwinSeries>>,
    /// PT timestamp → state committed.
    pub timeliness: Family<TwinLabel, Histogram, fn() -> Histogram>,
    /// Time spent in the model per update.
    pub model_seconds: Family<TwinLabel, Histogram, fn() -> Histogram>,
    /// Updates applied.
    pub updates: Family<TwinLabel, Counter>,
    /// Duplicates dropped.
    pub duplicates: Family<TwinLabel, Counter>,
    /// Fuel burned by the model.
    pub fuel: Family<TwinLabel, Counter>,
    /// Guest failures (traps, limits, refusals, bad output).
    pub guest_errors: Family<TwinLabel, Counter>,
    /// Requests refused because the twin's queue was full.
    pub shed: Family<TwinLabel, Counter>,
    /// Messages dropped for a payload over the twin's maximum.
    pub oversized: Family<TwinLabel, Counter>,
    /// Times the device was seen to restart its sequence numbers.
    pub sequence_restarts: Family<TwinLabel, Counter>,
    /// Messages waiting for the twin.
    pub queue_depth: Family<TwinLabel, Gauge>,
    /// Received over expected updates, in the window.
    pub reliability: Family<TwinLabel, Ratio>,
    /// Overall entanglement (ODTE).
    pub odte: Family<TwinLabel, Ratio>,
    /// 1 when the twin meets its requirements.
    pub entangled: Family<TwinLabel, Gauge>,
    /// CPU-seconds the twin's components used (fuel over the node's fuel
    /// per CPU-second).
    pub cpu_seconds: Family<TwinLabel, Seconds>,
    /// Seconds the twin was paused for being over its CPU share.
    pub cpu_throttled_seconds: Family<TwinLabel, Seconds>,
    /// The twin's CPU share, in cores; no series while unlimited.
    pub cpu_share: Family<TwinLabel, Ratio>,
    /// HTTP requests shed by admission control, by priority class.
    pub requests_shed: Family<ClassLabel, Counter>,
    /// Twins hibernating now.
    pub hibernating: Gauge,
    /// From a job arriving for a hibernating twin to its instance restored.
    pub wake_seconds: Histogram,
    /// The node's MQTT sessions connected to their broker now.
    pub broker_sessions: Gauge,
    /// Sessions of sleeping twins collecting what their broker kept.
    pub sessions_collecting: Gauge,
    /// Messages twins read back from the node's inbox, not from their
    /// queue (shared sessions).
    pub inbox_read: Counter,
    /// Messages not kept for a twin whose inbox was full.
    pub inbox_dropped: Counter,
    /// Adapter instances made for twins to share (`--share-adapters`).
    pub shared_adapters_made: Counter,
}

/// A per-twin family, as far as forgetting a twin goes.
trait TwinSeries: Send + Sync {
    fn forget(&self, label: &TwinLabel);
}

impl<M, C> TwinSeries for Family<TwinLabel, M, C>
where
    M: Send + Sync,
    C: MetricConstructor<M> + Send + Sync,
{
    fn forget(&self, label: &TwinLabel) {
        self.remove(label);
    }
}

/// Registers per-twin families and keeps them, so that one list serves
/// both exposing them and forgetting a twin's series.
struct PerTwin<'a> {
    registry: &'a mut Registry,
    families: Vec<Box<dyn TwinSeries>>,
}

impl PerTwin<'_> {
    fn add<F>(&mut self, name: &str, help: &str, family: &F)
    where
        F: Metric + TwinSeries + Clone,
    {
        self.registry.register(name, help, family.clone());
        self.families.push(Box::new(family.clone()));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let requests_shed = Family::default();
        let node = root.sub_registry_with_prefix("wasmtwin_node");
        node.register(
            "requests_shed",
            "HTTP requests refused by admission control under overload, and event streams refused over a twin's --max-subscribers",
            requests_shed.clone(),
        );
        let hibernating = Gauge::default();
        // 50 µs to about 0.4 s.
        let wake_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 14));
        node.register(
            "twins_hibernating",
            "Twins hibernating (idle past --hibernate-after: instance dropped, state kept as its last checkpoint)",
            hibernating.clone(),
        );
        node.register(
            "wake_seconds",
            "From a job arriving for a hibernating twin to its instance restored and ready",
            wake_seconds.clone(),
        );
        let broker_sessions = Gauge::default();
        node.register(
            "broker_sessions_connected",
            "MQTT sessions connected to their broker now: one per twin (or, with --broker-session node, one per broker), and one more for each lost node's backlog being adopted",
            broker_sessions.clone(),
        );
        let sessions_collecting = Gauge::default();
        node.register(
            "broker_sessions_collecting",
            "Sessions of sleeping twins collecting what their broker kept for them (after a restart, or when their doorbell reconnected), waiting for one of the turns that let a few connect at a time or connected",
            sessions_collecting.clone(),
        );
        let inbox_read = Counter::default();
        node.register(
            "inbox_read",
            "Messages twins read from the node's inbox rather than their queue (--broker-session node): those kept while a twin's queue was full, or before it started",
            inbox_read.clone(),
        );
        let inbox_dropped = Counter::default();
        node.register(
            "inbox_dropped",
            "Messages not kept for a twin that already had --inbox-max messages waiting in the node's inbox (--broker-session node): dropped, as a broker drops what a session's queue has no room for",
            inbox_dropped.clone(),
        );
        let shared_adapters_made = Counter::default();
        node.register(
            "shared_adapters_made",
            "Adapter instances made for the node's twins to share (--share-adapters): a few per adapter component in use (eight per thread at most, as many as turns ever overlapped), and one more after each call that left its instance unusable",
            shared_adapters_made.clone(),
        );
        let (timeliness, model_seconds) = (
            Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        );
        let (updates, duplicates, fuel, guest_errors, shed) = Default::default();
        let (oversized, sequence_restarts) = Default::default();
        let (queue_depth, entangled, reliability, odte) = Default::default();
        let (cpu_seconds, cpu_throttled_seconds, cpu_share) = Default::default();
        let mut per_twin = PerTwin {
            registry: root.sub_registry_with_prefix("wasmtwin_twin"),
            families: Vec::new(),
        };
        per_twin.add(
            "timeliness_seconds",
            "From the PT producing an update to the twin committing its state change",
            &timeliness,
        );
        per_twin.add(
            "model_seconds",
            "Time the model took per update",
            &model_seconds,
        );
        per_twin.add("updates", "Updates applied", &updates);
        per_twin.add(
            "duplicates",
            "Updates dropped as already applied",
            &duplicates,
        );
        per_twin.add("fuel_consumed", "Fuel burned by the model", &fuel);
        per_twin.add(
            "guest_errors",
            "Failed calls into the twin's components",
            &guest_errors,
        );
        per_twin.add(
            "shed_requests",
            "Requests refused because the twin was overloaded",
            &shed,
        );
        per_twin.add(
            "oversized_messages",
            "PT messages dropped (acknowledged, not applied) for a payload over spec.physical.maxPayload",
            &oversized,
        );
        per_twin.add(
            "sequence_restarts",
            "Times the device restarted its sequence numbers (a lower number with a later timestamp)",
            &sequence_restarts,
        );
        per_twin.add(
            "queue_depth",
            "PT messages waiting for the twin",
            &queue_depth,
        );
        per_twin.add(
            "reliability_ratio",
            "Updates received over expected, in the window",
            &reliability,
        );
        per_twin.add("odte_ratio", "Overall DT entanglement in the window", &odte);
        per_twin.add(
            "entangled",
            "1 while the twin meets its requirements",
            &entangled,
        );
        per_twin.add(
            "cpu_seconds",
            "CPU-seconds the twin's components used (fuel burned over the node's calibrated fuel per CPU-second)",
            &cpu_seconds,
        );
        per_twin.add(
            "cpu_throttled_seconds",
            "Seconds the twin was paused for being over its CPU share (spec.resources.cpu)",
            &cpu_throttled_seconds,
        );
        per_twin.add(
            "cpu_share",
            "The twin's CPU share in cores (spec.resources.cpu); absent while unlimited",
            &cpu_share,
        );
        let per_twin = per_twin.families;
        Self {
            registry: root,
            per_twin,
            timeliness,
            model_seconds,
            updates,
            duplicates,
            fuel,
            guest_errors,
            shed,
            oversized,
            sequence_restarts,
            queue_depth,
            reliability,
            odte,
            entangled,
            cpu_seconds,
            cpu_throttled_seconds,
            cpu_share,
            requests_shed,
            hibernating,
            wake_seconds,
            broker_sessions,
            sessions_collecting,
            inbox_read,
            inbox_dropped,
            shared_adapters_made,
        }
    }
}

impl Metrics {
    /// The OpenMetrics exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The exposition of every metric in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::PrometheusText => exposition::to_prometheus_text(&self.encode()),
        }
    }

    /// Brings a twin's CPU series up to its account (its counters only
    /// ever grow by what was used since).
    pub fn cpu(&self, label: &TwinLabel, cpu: &crate::runtime::cpu::CpuReport) {
        let catch_up = |counter: &Seconds, total: f64| {
            let behind = total - counter.get();
            if behind > 0.0 {
                counter.inc_by(behind);
            }
        };
        catch_up(&self.cpu_seconds.get_or_create(label), cpu.used_seconds);
        catch_up(
            &self.cpu_throttled_seconds.get_or_create(label),
            cpu.throttled_seconds,
        );
        match cpu.share_millis {
            Some(millis) => {
                self.cpu_share
                    .get_or_create(label)
                    .set(f64::from(millis) / 1000.0);
            }
            None => {
                self.cpu_share.remove(label);
            }
        }
    }

    /// Forgets a deleted twin's series.
    pub fn forget(&self, twin: &str) {
        let label = TwinLabel {
            twin: twin.to_string(),
        };
        for family in &self.per_twin {
            family.forget(&label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alerting rules and the dashboard users are given name only
    /// series a node exposes.
    #[test]
    fn every_metric_the_alerting_rules_and_dashboard_name_is_exposed() {
        let rules = concat!(
            include_str!("../../../deploy/prometheus/alerts.yml"),
            include_str!("../../../deploy/grafana/wasmtwin-fleet.json")
        );
        let metrics = Metrics::default();
        let label = TwinLabel { twin: "t".into() };
        // One value in every per-twin series, as a running twin has.
        metrics.entangled.get_or_create(&label).set(1);
        metrics.odte.get_or_create(&label).set(1.0);
        metrics.reliability.get_or_create(&label).set(1.0);
        metrics.guest_errors.get_or_create(&label).inc();
        metrics.oversized.get_or_create(&label).inc();
        metrics.updates.get_or_create(&label).inc();
        metrics.duplicates.get_or_create(&label).inc();
        metrics.shed.get_or_create(&label).inc();
        metrics.fuel.get_or_create(&label).inc();
        metrics.queue_depth.get_or_create(&label).set(0);
        metrics.timeliness.get_or_create(&label).observe(0.01);
        metrics.model_seconds.get_or_create(&label).observe(0.001);
        metrics
            .requests_shed
            .get_or_create(&ClassLabel { class: "read" })
            .inc();
        metrics.cpu(
            &label,
            &crate::runtime::cpu::CpuReport {
                share_millis: Some(100),
                used_seconds: 1.0,
                throttled_seconds: 0.5,
                ..Default::default()
            },
        );
        let exposed = metrics.encode();
        let named: std::collections::BTreeSet<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("wasmtwin_"))
            .collect();
        assert!(named.len() >= 15, "{named:?}");
        for name in named {
            assert!(
                exposed.lines().any(|l| l.starts_with(&format!("{name}{{"))),
                "deploy/prometheus/alerts.yml or deploy/grafana names {name}, which the node does not expose:\n{exposed}"
            );
        }
    }
}
