//! The monitoring interface: per-twin Prometheus metrics, named as the
//! architecture promises, exposed at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
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
    /// The request's priority class: `action`, `read` or `history`.
    pub class: &'static str,
}

/// A ratio gauge.
pub type Ratio = Gauge<f64, AtomicU64>;

/// All metrics of a node.
pub struct Metrics {
    registry: Registry,
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
    /// Messages waiting for the twin.
    pub queue_depth: Family<TwinLabel, Gauge>,
    /// Received over expected updates, in the window.
    pub reliability: Family<TwinLabel, Ratio>,
    /// Overall entanglement (ODTE).
    pub odte: Family<TwinLabel, Ratio>,
    /// 1 when the twin meets its requirements.
    pub entangled: Family<TwinLabel, Gauge>,
    /// HTTP requests shed by admission control, by priority class.
    pub requests_shed: Family<ClassLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let metrics = Self {
            timeliness: Family::new_with_constructor(latency_histogram),
            model_seconds: Family::new_with_constructor(latency_histogram),
            updates: Family::default(),
            duplicates: Family::default(),
            fuel: Family::default(),
            guest_errors: Family::default(),
            shed: Family::default(),
            queue_depth: Family::default(),
            reliability: Family::default(),
            odte: Family::default(),
            entangled: Family::default(),
            requests_shed: Family::default(),
            registry: Registry::default(),
        };
        root.sub_registry_with_prefix("wasmtwin_node").register(
            "requests_shed",
            "HTTP requests refused by admission control under overload",
            metrics.requests_shed.clone(),
        );
        let registry = root.sub_registry_with_prefix("wasmtwin_twin");
        registry.register(
            "timeliness_seconds",
            "From the PT producing an update to the twin committing its state change",
            metrics.timeliness.clone(),
        );
        registry.register(
            "model_seconds",
            "Time the model took per update",
            metrics.model_seconds.clone(),
        );
        registry.register("updates", "Updates applied", metrics.updates.clone());
        registry.register(
            "duplicates",
            "Updates dropped as already applied",
            metrics.duplicates.clone(),
        );
        registry.register(
            "fuel_consumed",
            "Fuel burned by the model",
            metrics.fuel.clone(),
        );
        registry.register(
            "guest_errors",
            "Failed calls into the twin's components",
            metrics.guest_errors.clone(),
        );
        registry.register(
            "shed_requests",
            "Requests refused because the twin was overloaded",
            metrics.shed.clone(),
        );
        registry.register(
            "queue_depth",
            "PT messages waiting for the twin",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "reliability_ratio",
            "Updates received over expected, in the window",
            metrics.reliability.clone(),
        );
        registry.register(
            "odte_ratio",
            "Overall DT entanglement in the window",
            metrics.odte.clone(),
        );
        registry.register(
            "entangled",
            "1 while the twin meets its requirements",
            metrics.entangled.clone(),
        );
        Self {
            registry: root,
            ..metrics
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Forgets a deleted twin's series.
    pub fn forget(&self, twin: &str) {
        let label = TwinLabel {
            twin: twin.to_string(),
        };
        self.timeliness.remove(&label);
        self.model_seconds.remove(&label);
        self.updates.remove(&label);
        self.duplicates.remove(&label);
        self.fuel.remove(&label);
        self.guest_errors.remove(&label);
        self.shed.remove(&label);
        self.queue_depth.remove(&label);
        self.reliability.remove(&label);
        self.odte.remove(&label);
        self.entangled.remove(&label);
    }
}
