//! The twin spec: one declarative document (YAML or JSON, the same schema
//! as the Kubernetes custom resource) that says which model a twin runs,
//! where its physical twin publishes, what the application requires of it
//! and what it may consume.
//!
//! Parsing is two steps: serde reads the shape (unknown fields refused),
//! then [`TwinSpec::validate`] checks the values and reports every problem
//! at once, each with its field path, so an operator fixes a spec in one go.

mod validate;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use validate::{Ceilings, Problem, SpecError, is_dns_label};

use crate::input::{MAX_NESTING, MESSAGE_MAX, Syntax, cap, check_nesting};

/// The `apiVersion` this release reads and writes.
pub const API_VERSION: &str = "wasmtwin.dev/v1alpha1";
/// The `kind` of a twin spec.
pub const KIND: &str = "DigitalTwin";

/// A whole twin spec document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TwinSpec {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    /// The twin's name and labels.
    pub metadata: Metadata,
    /// What the twin is.
    pub spec: Spec,
}

/// Identity of the twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Unique on a node; a DNS label (lower-case letters, digits, `-`).
    pub name: String,
    /// Free-form labels, e.g. `site: plant-1`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What the twin is: its model, physical twin, requirements, limits,
/// placement and policy.
// Also the `spec` of the Kubernetes custom resource `DigitalTwin`, whose
// CustomResourceDefinition is derived from these types: `wasmtwin apply`
// and a cluster take one schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, kube::CustomResource)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Each printer column repeats `type_ = "string"`, which clippy takes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "wasmtwin.dev",
    version = "v1alpha1",
    kind = "DigitalTwin",
    namespaced,
    status = "crate::operator::status::DigitalTwinStatus",
    shortname = "dt",
    category = "wasmtwin",
    doc = "A digital twin: the model that runs it, its physical twin, what the application requires of their entanglement, and where and how it may be kept so.",
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "ODTE",
        type_ = "number",
        json_path = ".status.entanglement.odte"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct Spec {
    /// The model component and its configuration.
    pub model: ModelSpec,
    /// How the physical twin is reached.
    pub physical: PhysicalSpec,
    /// What the application requires of the twin's entanglement.
    #[serde(default)]
    pub requirements: Requirements,
    /// Per-update limits.
    #[serde(default)]
    pub resources: Resources,
    /// Where the twin may run.
    #[serde(default)]
    pub placement: Placement,
    /// What the control plane may do when a requirement breaks.
    #[serde(default)]
    pub policy: Policy,
    /// How many instances serve the twin.
    #[serde(default = "one")]
    pub replicas: u32,
    /// How long the property history is kept.
    #[serde(default)]
    pub history: History,
}

fn one() -> u32 {
    1
}

/// A component reference, one of three kinds:
/// - a path to a `.wasm` file on the node, inside one of its
///   `--component-dir` directories (relative paths are the node's working
///   directory's);
/// - `file://DIR[:TAG]`: an OCI image-layout *directory* (what
///   `wasmtwin publish file://…` writes), not a file;
/// - `oci://HOST[:PORT]/REPO[:TAG]`: an OCI registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentRef {
    /// Where to get the component: a path, `file://DIR[:TAG]` or
    /// `oci://HOST/REPO[:TAG]`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The expected `sha256:` digest of its bytes; a different component is
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSpec {
    /// The component.
    #[serde(flatten)]
    pub component: ComponentRef,
    /// The publisher whose signature this twin requires: one of the node's
    /// trusted keys (`--trust`), named by the file it was loaded from or by
    /// its key id. Absent, any key the node trusts will do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher_key: Option<String>,
    /// The model's configuration (passed to `init`).
    #[serde(default = "empty_object")]
    #[schemars(schema_with = "any_object")]
    pub config: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Any JSON object, kept whole: Kubernetes drops the fields of a custom
/// resource its schema does not name, unless told to keep them.
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A quantity as Kubernetes schemas declare one (`int-or-string`): `2`, or
/// text such as `"250m"` or `"0.5"`. The parser also takes an unquoted
/// fraction; the schema cannot say so and stay structural.
fn quantity(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [{ "type": "integer" }, { "type": "string" }],
        "x-kubernetes-int-or-string": true
    })
}

/// The physical twin's side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhysicalSpec {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`; the node's broker when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Topics (MQTT filters) the device publishes its updates on.
    pub topics: Vec<String>,
    /// Topic the device listens on for commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_topic: Option<String>,
    /// MQTT quality of service, 0 or 1. With 1, an update is acknowledged
    /// only after the twin committed its state change.
    #[serde(default = "one_u8")]
    pub qos: u8,
    /// The adapter that decodes the device's payloads.
    pub adapter: ComponentRef,
    /// The largest message payload the twin takes (e.g. `256KiB`); a
    /// larger message is acknowledged, dropped, counted and logged, and
    /// the twin goes on. At most the node's `--max-payload`.
    #[serde(default = "default_max_payload")]
    pub max_payload: String,
}

fn default_max_payload() -> String {
    "1MiB".into()
}

fn one_u8() -> u8 {
    1
}

/// The application's requirements on entanglement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Requirements {
    /// Timeliness: the `percentile`-th percentile must be within `boundMs`.
    pub timeliness: Timeliness,
    /// Minimum share of expected updates received, in [0, 1].
    pub reliability: f64,
    /// Minimum share of the window the twin was available, in [0, 1].
    pub availability: f64,
    /// Minimum overall entanglement (ODTE), in [0, 1].
    pub odte: f64,
    /// The sliding window the measures cover, in seconds.
    pub window_seconds: u32,
    /// How many updates per second the physical twin should send.
    pub expected_rate_hz: f64,
}

impl Default for Requirements {
    /// The research paper's artefact settings: timeliness bound 1 s at the
    /// 95th percentile, 30 s window, entangled at ODTE 0.9, 1 update/s.
    fn default() -> Self {
        Self {
            timeliness: Timeliness::default(),
            reliability: 0.9,
            availability: 0.9,
            odte: 0.9,
            window_seconds: 30,
            expected_rate_hz: 1.0,
        }
    }
}

/// A timeliness requirement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Timeliness {
    /// Which percentile is bounded, in (0, 100].
    pub percentile: f64,
    /// The bound, in milliseconds.
    pub bound_ms: u64,
}

impl Default for Timeliness {
    fn default() -> Self {
        Self {
            percentile: 95.0,
            bound_ms: 1000,
        }
    }
}

/// Per-update limits on the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Resources {
    /// Fuel each update may burn.
    pub fuel_per_update: u64,
    /// Linear memory, e.g. `64MiB`.
    pub memory: String,
    /// Wall-clock time per call, in milliseconds.
    pub deadline_ms: u64,
    /// The twin's CPU share, in cores as Kubernetes writes them: `250m`
    /// (a quarter of a core), `0.5`, `1`, `2`. Enforced as a rate of fuel
    /// (the node measures the fuel one CPU-second burns when it starts):
    /// a twin over its share is paused, in the middle of a call too, and
    /// its updates queue. Absent, the twin is not limited. Changing only
    /// this on a running twin applies in place, without a restart.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cpu_quantity"
    )]
    #[schemars(schema_with = "quantity")]
    pub cpu: Option<String>,
}

/// A quantity as Kubernetes specs write it: a string (`250m`, `"2"`) or,
/// unquoted in YAML, a number (`2`, `0.5`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Quantity {
    /// `250m`, `0.5`, `2`.
    Text(String),
    /// `0.5`, `2`.
    Number(serde_json::Number),
}

/// Reads a [`Quantity`] as its text, which validation then checks.
fn cpu_quantity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Quantity>::deserialize(d)?.map(|q| match q {
        Quantity::Text(text) => text,
        Quantity::Number(number) => number.to_string(),
    }))
}

impl Default for Resources {
    fn default() -> Self {
        let limits = crate::runtime::Limits::default();
        Self {
            fuel_per_update: limits.fuel_per_call,
            memory: "64MiB".into(),
            deadline_ms: u64::try_from(limits.deadline.as_millis()).unwrap_or(u64::MAX),
            cpu: None,
        }
    }
}

/// Where the twin may run: *zones* say where on the edge-to-cloud
/// continuum, *domains* say who runs the infrastructure (a plant, a
/// provider, a region) and how far the platform's operator trusts them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Placement {
    /// Zones the twin may run in, in order of preference: `edge`, `mec`,
    /// `cloud`.
    pub zones: Vec<String>,
    /// Trust domains the twin may run in (node `--domain`); empty: any.
    pub domains: Vec<String>,
    /// Lowest trust level of the node's domain (`wasmtwin domain set`).
    pub min_trust: u32,
    /// Labels of twins this one must not share a node with: it avoids
    /// every other twin whose `metadata.labels` include all of them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub anti_affinity: BTreeMap<String, String>,
}

/// The zones of the continuum, edge first.
pub const ZONES: [&str; 3] = ["edge", "mec", "cloud"];

impl Default for Placement {
    fn default() -> Self {
        Self {
            zones: ZONES.iter().map(|z| z.to_string()).collect(),
            domains: Vec::new(),
            min_trust: 0,
            anti_affinity: BTreeMap::new(),
        }
    }
}

/// What the control plane may do for the twin when a requirement breaks,
/// and how patient it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Policy {
    /// The actions allowed; notifying is always done.
    pub actions: Vec<Remedy>,
    /// The largest CPU share scaling may grant (e.g. `2`, `500m`); absent,
    /// as much as the node has free.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cpu: Option<String>,
    /// How long a broken requirement must hold before acting, in seconds.
    pub hold_seconds: u32,
    /// How long after acting on the twin before acting again, in seconds.
    pub cooldown_seconds: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            actions: vec![
                Remedy::Migrate,
                Remedy::Scale,
                Remedy::Rollback,
                Remedy::Notify,
            ],
            max_cpu: None,
            hold_seconds: 10,
            cooldown_seconds: 60,
        }
    }
}

/// Something the control plane can do about a broken requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Remedy {
    /// Move the twin, live, to a node with a better path or more room.
    Migrate,
    /// Raise the twin's CPU share on its node.
    Scale,
    /// Swap back to the previous model.
    Rollback,
    /// Tell the stakeholders (event history, `/v1/events`, webhooks).
    Notify,
}

/// History retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct History {
    /// How long points are kept, e.g. `1h`, `7d`.
    pub retention: String,
    /// At most this many points per twin; the oldest go first.
    pub max_points: u64,
}

impl Default for History {
    fn default() -> Self {
        Self {
            retention: "24h".into(),
            max_points: 100_000,
        }
    }
}

impl TwinSpec {
    /// Parses a YAML or JSON document and validates it; every problem found
    /// is reported with its field path.
    ///
    /// A document nesting `[`/`{` deeper than [`MAX_NESTING`] levels is
    /// refused before the parser sees it (libyaml takes time quadratic in
    /// that depth). Parsing a large document still takes a while: servers
    /// call this off their I/O threads.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        check_nesting(text, Syntax::Yaml, MAX_NESTING)
            .map_err(|e| SpecError::single(Problem::new("", e.to_string())))?;
        let spec: TwinSpec = serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()));
            // The parser's message may quote the input (an unknown field,
            // a string of the wrong type): capped, leaving room for the
            // location.
            // The parser's own text ends with the position too: said once.
            let mut message = e.to_string();
            if let (Some(_), Some(cut)) = (&at, message.rfind(" at line ")) {
                message.truncate(cut);
            }
            let message = cap(message, MESSAGE_MAX - 64);
            SpecError::single(Problem::new(
                "",
                format!("{message}{}", at.unwrap_or_default()),
            ))
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// A spec as a node stored it (the JSON it wrote itself), read with
    /// the JSON parser, which is several times faster than the YAML one on
    /// the same text: a node resuming tens of thousands of twins reads
    /// every spec (`cargo bench -p wasmtwin --bench ingest` compares
    /// them). Validated again, since the rules may have changed since it
    /// was stored.
    pub fn from_stored(json: &str) -> Result<Self, SpecError> {
        let spec: TwinSpec = serde_json::from_str(json).map_err(|e| {
            SpecError::single(Problem::new(
                "",
                cap(format!("the stored spec: {e}"), MESSAGE_MAX),
            ))
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// The twin's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The limits each call into the twin's components runs under (the
    /// spec is validated, so every size parses).
    pub fn limits(&self) -> crate::runtime::Limits {
        let resources = &self.spec.resources;
        let defaults = crate::runtime::Limits::default();
        crate::runtime::Limits {
            fuel_per_call: resources.fuel_per_update,
            memory_bytes: size(&resources.memory).unwrap_or(defaults.memory_bytes),
            deadline: std::time::Duration::from_millis(resources.deadline_ms),
        }
    }

    /// The twin's CPU share in millicores; `None` is unlimited (the spec
    /// is validated, so a share given parses).
    pub fn cpu_millis(&self) -> Option<u32> {
        let cpu = self.spec.resources.cpu.as_deref()?;
        crate::runtime::cpu::parse_millis(cpu).ok()
    }

    /// The largest payload the twin takes, in bytes.
    pub fn max_payload(&self) -> u64 {
        size(&self.spec.physical.max_payload).unwrap_or(1 << 20)
    }
}

/// The JSON Schema of the twin spec (draft 2020-12), generated from these
/// types and their documentation: editors validate and complete specs with
/// it, and `deploy/twin-spec.schema.json` is it, written out.
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(TwinSpec)).unwrap_or(Value::Null)
}

/// The field paths where two specs differ (`spec.model.ref`, …), sorted
/// by key at each level; an array that differs is named whole.
pub fn differences(running: &TwinSpec, other: &TwinSpec) -> Vec<String> {
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    let null = Value::Null;
                    let inner = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(
                        &inner,
                        a.get(key).unwrap_or(&null),
                        b.get(key).unwrap_or(&null),
                        out,
                    );
                }
            }
            (a, b) if a != b => out.push(path.to_string()),
            _ => {}
        }
    }
    let as_json = |spec: &TwinSpec| serde_json::to_value(spec).unwrap_or(Value::Null);
    let mut out = Vec::new();
    walk("", &as_json(running), &as_json(other), &mut out);
    out
}

/// A size such as `64MiB`, in bytes.
fn size(text: &str) -> Option<u64> {
    text.parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64())
}

/// Twin `p`: a `prime.wasm` model fed from `d/p`, everything else default.
#[cfg(test)]
pub(crate) fn minimal() -> TwinSpec {
    TwinSpec::parse(
        r#"{"apiVersion": "wasmtwin.dev/v1alpha1", "kind": "DigitalTwin",
            "metadata": {"name": "p"},
            "spec": {"model": {"ref": "prime.wasm"},
                     "physical": {"topics": ["d/p"], "adapter": {"ref": "json_adapter.wasm"}}}}"#,
    )
    .expect("the minimal spec parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/motor-7.yaml"
        );
        std::fs::read_to_string(path).expect("the example spec")
    }

    #[test]
    fn the_example_parses_and_round_trips_through_json() {
        let spec = TwinSpec::parse(&example()).unwrap();
        assert_eq!(spec.name(), "motor-7");
        assert_eq!(spec.spec.requirements.timeliness.bound_ms, 1000);
        assert_eq!(spec.spec.model.config["vibration_alarm"], 7.1);
        assert_eq!(spec.cpu_millis(), Some(500));
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(TwinSpec::parse(&json).unwrap(), spec);
        assert_eq!(TwinSpec::from_stored(&json).unwrap(), spec);
    }

    #[test]
    fn a_stored_spec_is_validated_again() {
        let spec = TwinSpec::parse(&example()).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        let broken = json.replace("\"motor-7\"", "\"Motor 7\"");
        assert_ne!(broken, json);
        let err = TwinSpec::from_stored(&broken).unwrap_err().to_string();
        assert!(err.contains("metadata.name"), "{err}");
        let err = TwinSpec::from_stored("{\"apiVersion\": 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the stored spec"), "{err}");
    }

    /// The schema users' editors read stays the one the code accepts.
    #[test]
    fn the_published_json_schema_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/twin-spec.schema.json"
        );
        let generated = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
        if std::env::var_os("WASMTWIN_WRITE_SCHEMA").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let published = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            published == generated,
            "deploy/twin-spec.schema.json is stale: run \
             WASMTWIN_WRITE_SCHEMA=1 cargo test -p wasmtwin --lib the_published_json_schema"
        );
        let schema = json_schema();
        assert_eq!(schema["title"], "TwinSpec");
        assert!(schema["properties"]["spec"].is_object(), "{schema}");
    }

    #[test]
    fn differences_are_named_by_field_path() {
        let running = minimal();
        let mut other = minimal();
        other.spec.model.component.reference = "prime-2.wasm".into();
        other.spec.requirements.reliability = 0.5;
        assert_eq!(
            differences(&running, &other),
            ["spec.model.ref", "spec.requirements.reliability"]
        );
        assert!(differences(&running, &running).is_empty());
    }

    #[test]
    fn a_minimal_spec_takes_the_defaults() {
        let spec = minimal();
        assert_eq!(spec.spec.requirements, Requirements::default());
        assert_eq!(spec.spec.replicas, 1);
        assert_eq!(spec.spec.physical.qos, 1);
        assert_eq!(spec.cpu_millis(), None, "unlimited unless given");
        // Unquoted in YAML, as Kubernetes users write it, a number will do.
        for (written, millis) in [("2", 2000), ("0.5", 500), ("\"250m\"", 250)] {
            let yaml = example().replace("cpu: 500m", &format!("cpu: {written}"));
            assert_eq!(TwinSpec::parse(&yaml).unwrap().cpu_millis(), Some(millis));
        }
        assert!(spec.spec.model.config.is_object());
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let bad = example()
            .replace("name: motor-7", "name: Motor_7")
            .replace("qos: 1 ", "qos: 2 ")
            .replace("reliability: 0.9 ", "reliability: 1.5 ")
            .replace("memory: 64MiB", "memory: lots")
            .replace("cpu: 500m", "cpu: -1m")
            .replace("[edge, mec, cloud]", "[edge, moon]")
            .replace("domains: [plant-1]", "domains: [mec]")
            .replace("[plant-1/motor-7/telemetry]", "[plant-1/#/telemetry]")
            .replace("retention: 24h", "retention: forever");
        let err = TwinSpec::parse(&bad).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.name",
                "spec.physical.topics[0]",
                "spec.physical.qos",
                "spec.requirements.reliability",
                "spec.resources.memory",
                "spec.resources.cpu",
                "spec.placement.zones[1]",
                "spec.placement.domains[0]",
                "spec.history.retention",
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(text.starts_with("invalid twin spec (9 problems)"), "{text}");
        assert!(
            text.contains("spec.resources.cpu: `-1m` must be a CPU quantity such as 250m"),
            "{text}"
        );
        assert!(
            text.contains("spec.placement.zones[1]: `moon` must be edge, mec or cloud"),
            "{text}"
        );
    }

    #[test]
    fn shape_errors_name_the_field_and_line() {
        let err = TwinSpec::parse(&example().replace("qos: 1 ", "qos: high ")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("qos") && text.contains("line"), "{text}");
        assert_eq!(text.matches("line").count(), 1, "the position once: {text}");
        let err = TwinSpec::parse(&example().replace("replicas: 1", "replicaz: 1")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `replicaz`"),
            "{err}"
        );
    }
}
