//! The orchestrator's loop: observe (heartbeats), decide ([`decide`], pure),
//! act (through the nodes' APIs), record (the event history).
//!
//! Reconciling costs in proportion to what changed: a heartbeat marks only
//! the twins whose observation is worth a look (not entangled, new,
//! missing, changed), a node changing state marks its twins, an apply
//! marks its twin; each tick decides for the marked twins alone. A twin
//! being acted on is not decided again until the action has finished and
//! its node has reported since, so a decision never rests on an
//! observation older than the last action.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::decide::{Action, Decision, Memory, Situation, decide};
use super::fleet::{Fleet, Heartbeat, NodeState, Timeouts, TwinObservation};
use super::history::{Entry, History, Kind, Record};
use super::placement::{self, Ranking};
use super::repository::{Desired, Placed, Repository};
use super::webhook::Webhooks;
use crate::client::NodeClient;
use crate::digest::Digest;
use crate::node::local::ComponentDirs;
use crate::physical::now_us;
use crate::signing::TrustPolicy;
use crate::spec::{ComponentRef, SpecError, TwinSpec};

/// How the control plane behaves.
pub struct ControlConfig {
    /// When a silent node is unreachable, and when gone.
    pub timeouts: Timeouts,
    /// The token the control plane calls nodes' APIs with.
    pub node_token: Option<String>,
    /// How often a running twin's checkpoint is fetched from its node.
    pub checkpoint_every: Duration,
    /// Which components the control plane places (it checks signatures
    /// itself before telling a node to run one).
    pub policy: TrustPolicy,
    /// Directories local component paths may name.
    pub component_dirs: Vec<PathBuf>,
    /// How `oci://` components are pulled.
    pub registry: crate::registry::Options,
    /// Decide and record the remedies for broken requirements (migrate,
    /// scale, roll back) without carrying them out: what the platform would
    /// have done, next to what happens without it. Placing twins, repairing
    /// drift and notifying go on.
    pub observe_only: bool,
    /// The largest spec `apply` takes, in bytes.
    pub spec_bytes: usize,
}

impl ControlConfig {
    /// How often running twins' checkpoints are fetched unless told.
    pub const CHECKPOINT_EVERY_MS: u64 = 5_000;

    /// A control plane that places components from `component_dirs`
    /// under `policy`, with `wasmtwin control`'s defaults for the rest:
    /// [`Timeouts::DEFAULT`], [`Self::CHECKPOINT_EVERY_MS`], the nodes'
    /// default largest spec, remedies carried out.
    pub fn new(policy: TrustPolicy, component_dirs: Vec<PathBuf>) -> Self {
        Self {
            timeouts: Timeouts::DEFAULT,
            node_token: None,
            checkpoint_every: Duration::from_millis(Self::CHECKPOINT_EVERY_MS),
            policy,
            component_dirs,
            registry: Default::default(),
            observe_only: false,
            spec_bytes: crate::input::InputLimits::default().spec_bytes,
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Applied {
    /// A new twin.
    Created,
    /// A changed spec.
    Updated,
    /// The same spec again.
    Unchanged,
}

/// Why a management call was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The spec has problems, each with its path.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No such twin or node.
    #[error("{0}")]
    NotFound(String),
    /// Anything else, e.g. a model whose signature is not trusted.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// The control plane.
pub struct Control {
    repo: Repository,
    history: History,
    webhooks: Option<Webhooks>,
    config: ControlConfig,
    local: ComponentDirs,
    state: Mutex<State>,
    /// Applies take turns: each reads the stored twin, checks the model
    /// (which takes a while) and writes it back.
    applying: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    fleet: Fleet,
    twins: BTreeMap<String, Desired>,
    domains: BTreeMap<String, u32>,
    memory: HashMap<String, Memory>,
    /// Twins to decide for at the next tick.
    dirty: BTreeSet<String>,
    /// Twins being acted on.
    busy: BTreeSet<String>,
    /// Twins acted on, with when the action finished: not decided again
    /// before their node reports after that.
    settling: HashMap<String, u64>,
    /// Deleted twins still to stop wherever they run.
    deleted: BTreeSet<String>,
    /// Updates applied at the last checkpoint shipped, per twin.
    shipped: HashMap<String, u64>,
    /// Failed actions in a row, per twin, and when to try again.
    failures: HashMap<String, u32>,
    retry_at: HashMap<String, u64>,
    /// The latest decision or notification about each twin.
    last: HashMap<String, Record>,
}

/// A twin as the control plane knows it: what it decided, where the twin
/// runs, the latest decision about it (what the Kubernetes operator writes
/// into a `DigitalTwin`'s status).
#[derive(Debug, Clone)]
pub struct TwinReport {
    /// The control plane's own decisions about it.
    pub placed: Placed,
    /// Each node not gone that reports running it.
    pub running: Vec<Running>,
    /// Its latest decision or notification.
    pub last: Option<Record>,
}

/// A twin on one node.
#[derive(Debug, Clone)]
pub struct Running {
    /// The node's name.
    pub node: String,
    /// Its zone.
    pub zone: String,
    /// Whether it still reports.
    pub state: NodeState,
    /// The twin as it last reported it.
    pub twin: TwinObservation,
}

/// What [`Control::retire`] kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// The last checkpoint's file, if the twin had one.
    pub checkpoint: Option<PathBuf>,
}

fn now_ms() -> u64 {
    now_us() / 1000
}

impl Control {
    /// Opens the control plane's store in `dir`; `history` shares its
    /// database.
    pub fn new(
        repo: Repository,
        history: History,
        webhooks: Option<Webhooks>,
        config: ControlConfig,
    ) -> anyhow::Result<Self> {
        let twins = repo.twins()?;
        let domains = repo.domains()?;
        let dirty = twins.keys().cloned().collect();
        Ok(Self {
            local: ComponentDirs::open(&config.component_dirs)?,
            repo,
            history,
            webhooks,
            config,
            state: Mutex::new(State {
                twins,
                domains,
                dirty,
                ..State::default()
            }),
            applying: tokio::sync::Mutex::new(()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest spec `apply` takes, in bytes.
    pub fn spec_limit(&self) -> usize {
        self.config.spec_bytes
    }

    /// The event history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Appends to the history and sends notifications out by webhook.
    fn record(&self, entry: Entry) -> Option<Record> {
        match self.history.append(entry) {
            Ok(record) => {
                if matches!(record.kind, Kind::Decision | Kind::Notification)
                    && let Some(twin) = &record.twin
                {
                    self.state().last.insert(twin.clone(), record.clone());
                }
                if record.kind == Kind::Notification
                    && let Some(hooks) = &self.webhooks
                {
                    hooks.deliver(&record);
                }
                Some(record)
            }
            Err(e) => {
                tracing::error!("appending to the event history: {e:#}");
                None
            }
        }
    }

    /// Takes a node's heartbeat.
    pub fn heartbeat(&self, beat: Heartbeat) {
        let changed = {
            let mut state = self.state();
            let changed = state.fleet.heartbeat(beat, now_ms());
            state.dirty.extend(changed.twins);
            for (node, _, _) in &changed.nodes {
                let twins = placed_on(&state.twins, node);
                state.dirty.extend(twins);
            }
            changed.nodes
        };
        for (node, from, to) in changed {
            let summary = match from {
                None => format!("node {node} joined"),
                Some(from) => format!("node {node} is {to:?} again (was {from:?})").to_lowercase(),
            };
            self.record(
                Entry::new(Kind::Observation, summary)
                    .node(node)
                    .data(json!({ "from": from, "to": to })),
            );
        }
    }

    /// Stores `spec` as the desired state of its twin; `actor` made the
    /// call. The model is fetched and its signature checked first, so a
    /// twin no node would run is refused now.
    pub async fn apply(&self, spec: TwinSpec, actor: &str) -> Result<Applied, Refusal> {
        let _turn = self.applying.lock().await;
        let name = spec.name().to_string();
        let existing = self.state().twins.get(&name).cloned();
        let applied = match &existing {
            None => Applied::Created,
            Some(d) if d.spec == spec => Applied::Unchanged,
            Some(_) => Applied::Updated,
        };
        if applied == Applied::Unchanged {
            return Ok(applied);
        }
        let model = spec.spec.model.component.clone();
        let digest = self.verify_model(&spec, &model).await?;
        let mut desired = existing.clone().unwrap_or(Desired {
            spec: spec.clone(),
            generation: 0,
            status: Default::default(),
        });
        if existing
            .as_ref()
            .is_some_and(|d| d.spec.spec.model.component != model)
        {
            // A new model: whatever was rolled back from is moot.
            desired.status.model_override = None;
        }
        desired.spec = spec;
        desired.generation += 1;
        desired.status.model_digest = Some(digest);
        desired.status.refused = None;
        self.repo.put(&desired)?;
        let generation = desired.generation;
        {
            let mut state = self.state();
            state.deleted.remove(&name);
            state.twins.insert(name.clone(), desired);
            state.dirty.insert(name.clone());
        }
        self.record(
            Entry::new(
                Kind::Management,
                format!("{actor} applied twin {name} (generation {generation})"),
            )
            .twin(name)
            .actor(actor)
            .data(json!({ "result": applied, "generation": generation })),
        );
        Ok(applied)
    }

    /// Fetches a twin's model as a node would, checks its digest and
    /// signature against the control plane's trust policy, and returns
    /// its digest: the one the security agent expects nodes to run.
    async fn verify_model(&self, spec: &TwinSpec, model: &ComponentRef) -> anyhow::Result<String> {
        let reference = model.reference.clone();
        let bytes = if reference.contains("://") {
            let location: crate::registry::Location = reference.parse()?;
            let options = self.config.registry.clone();
            tokio::task::spawn_blocking(move || crate::registry::pull(&location, &options))
                .await
                .context("fetching the model")?
                .with_context(|| format!("fetching the model {reference}"))?
        } else {
            self.local
                .read(&reference)
                .context("reading the model (the control plane's --component-dir)")?
        };
        let digest = Digest::of(&bytes).to_string();
        if let Some(expected) = &model.digest
            && *expected != digest
        {
            anyhow::bail!(
                "spec.model: {reference} has digest {digest}, but the spec requires {expected}"
            );
        }
        self.config
            .policy
            .check(&bytes, &reference)
            .with_context(|| format!("twin {}: checking the model's signature", spec.name()))?;
        Ok(digest)
    }

    /// Deletes a twin: stopped on its node, forgotten here.
    pub fn delete(&self, name: &str, actor: &str) -> Result<(), Refusal> {
        {
            let mut state = self.state();
            if state.twins.remove(name).is_none() {
                return Err(Refusal::NotFound(format!("no twin named `{name}`")));
            }
            state.deleted.insert(name.to_string());
            state.dirty.insert(name.to_string());
            state.memory.remove(name);
            state.last.remove(name);
        }
        self.repo.remove(name)?;
        self.record(
            Entry::new(Kind::Management, format!("{actor} deleted twin {name}"))
                .twin(name)
                .actor(actor),
        );
        Ok(())
    }

    /// Deletes a twin as the Kubernetes operator's finalizer does, keeping
    /// its state: the last checkpoint is fetched from the node it runs on
    /// and kept as `checkpoints/retired/NAME.bundle` (a twin no node runs
    /// keeps its latest shipped one), then the twin is deleted. A twin whose
    /// node is unreachable is not deleted yet: its latest state is there,
    /// so the call fails, to be tried again once the node reports (or is
    /// gone, when the latest shipped checkpoint is all there is).
    pub async fn retire(&self, name: &str, actor: &str) -> Result<Retired, Refusal> {
        let running: Option<(String, NodeState)> = {
            let state = self.state();
            if !state.twins.contains_key(name) {
                return Err(Refusal::NotFound(format!("no twin named `{name}`")));
            }
            state
                .fleet
                .reporting(name)
                .into_iter()
                .next()
                .map(|(node, _)| (node.heartbeat.name.clone(), node.state))
        };
        match running {
            Some((node, NodeState::Ready)) => {
                let mut bundle = Vec::new();
                self.client(&node)?
                    .checkpoint(name, false, &mut bundle)
                    .await
                    .with_context(|| format!("taking twin {name}'s last checkpoint on {node}"))?;
                self.repo.keep_checkpoint(name, &bundle)?;
            }
            Some((node, _)) => {
                return Err(Refusal::Other(anyhow::anyhow!(
                    "twin {name} runs on {node}, which is unreachable: its last checkpoint waits for it"
                )));
            }
            None => {}
        }
        let checkpoint = self.repo.retire_checkpoint(name)?;
        let summary = match &checkpoint {
            Some(path) => format!("kept twin {name}'s last checkpoint in {}", path.display()),
            None => format!("twin {name} had no checkpoint to keep"),
        };
        self.record(
            Entry::new(Kind::Management, summary)
                .twin(name)
                .actor(actor),
        );
        self.delete(name, actor)?;
        Ok(Retired { checkpoint })
    }

    /// Sets a domain's trust level; every twin is looked at again, since
    /// some may no longer trust where they run.
    pub fn set_domain(&self, domain: &str, trust: u32, actor: &str) -> Result<(), Refusal> {
        self.repo.set_domain(domain, trust)?;
        {
            let mut state = self.state();
            state.domains.insert(domain.to_string(), trust);
            let all: Vec<String> = state.twins.keys().cloned().collect();
            state.dirty.extend(all);
        }
        self.record(
            Entry::new(
                Kind::Management,
                format!("{actor} set the trust of domain {domain} to {trust}"),
            )
            .actor(actor)
            .data(json!({ "domain": domain, "trust": trust })),
        );
        Ok(())
    }

    /// Cordons a node (no new twins; its twins move away), or lifts the
    /// cordon with `None`.
    pub fn cordon(&self, node: &str, reason: Option<String>, actor: &str) -> Result<(), Refusal> {
        {
            let mut state = self.state();
            if !state.fleet.cordon(node, reason.clone()) {
                return Err(Refusal::NotFound(format!("no node named `{node}`")));
            }
            let twins = placed_on(&state.twins, node);
            state.dirty.extend(twins);
        }
        let summary = match &reason {
            Some(why) => format!("{actor} cordoned node {node}: {why}"),
            None => format!("{actor} lifted the cordon of node {node}"),
        };
        self.record(
            Entry::new(Kind::Management, summary)
                .node(node)
                .actor(actor),
        );
        Ok(())
    }

    /// Domain trust levels.
    pub fn domains(&self) -> BTreeMap<String, u32> {
        self.state().domains.clone()
    }

    /// Every node as the control plane sees it.
    pub fn nodes(&self) -> Vec<Value> {
        let state = self.state();
        let mut nodes: Vec<Value> = state
            .fleet
            .nodes()
            .map(|n| {
                let beat = &n.heartbeat;
                json!({
                    "name": beat.name,
                    "url": beat.url,
                    "zone": beat.zone,
                    "domain": beat.domain,
                    "trust": state.domains.get(&beat.domain).copied().unwrap_or(0),
                    "labels": beat.labels,
                    "state": n.state,
                    "cordoned": n.cordoned,
                    "capacity": beat.capacity,
                    "paths": beat.paths,
                    "twins": beat.twins.iter().map(|t| &t.name).collect::<Vec<_>>(),
                    "lastHeartbeatMs": n.seen_ms,
                })
            })
            .collect();
        nodes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        nodes
    }

    /// Every twin: desired state, where it runs and how well it is
    /// entangled there.
    pub fn twins(&self) -> Vec<Value> {
        let state = self.state();
        state
            .twins
            .iter()
            .map(|(name, desired)| twin_view(&state, name, desired))
            .collect()
    }

    /// One twin.
    pub fn twin(&self, name: &str) -> Option<Value> {
        let state = self.state();
        let desired = state.twins.get(name)?;
        Some(twin_view(&state, name, desired))
    }

    /// One twin's placement, where it runs and the latest decision about it.
    pub fn report(&self, name: &str) -> Option<TwinReport> {
        let state = self.state();
        let desired = state.twins.get(name)?;
        let running = state
            .fleet
            .reporting(name)
            .into_iter()
            .map(|(node, twin)| Running {
                node: node.heartbeat.name.clone(),
                zone: node.heartbeat.zone.clone(),
                state: node.state,
                twin: twin.clone(),
            })
            .collect();
        Some(TwinReport {
            placed: desired.status.clone(),
            running,
            last: state.last.get(name).cloned(),
        })
    }

    /// The names of every twin.
    pub fn names(&self) -> Vec<String> {
        self.state().twins.keys().cloned().collect()
    }

    /// One pass: ages the fleet, decides for every marked twin, and starts
    /// acting on the decisions. Returns how many twins it decided for.
    pub fn tick(self: &Arc<Self>) -> usize {
        let now = now_ms();
        let mut plans = Vec::new();
        let decided;
        let mut node_changes = Vec::new();
        let mut found = Vec::new();
        {
            let mut state = self.state();
            let state = &mut *state;
            let aged = state.fleet.age(now, self.config.timeouts);
            state.dirty.extend(aged.twins);
            for (node, from, to) in aged.nodes {
                let twins = placed_on(&state.twins, &node);
                state.dirty.extend(twins);
                node_changes.push((node, from, to));
            }
            let (ready, waiting): (Vec<String>, Vec<String>) = std::mem::take(&mut state.dirty)
                .into_iter()
                .partition(|name| {
                    !state.busy.contains(name)
                        && !settling(state, name)
                        && state.retry_at.get(name).is_none_or(|at| *at <= now)
                });
            // Looked at again once the action has finished and settled.
            state.dirty.extend(waiting);
            decided = ready.len();
            for name in ready {
                // Where a twin runs, its node's report is the truth (a
                // person may have moved it, or the control plane lost its
                // own record): the placement follows.
                if let Some(desired) = state.twins.get(&name)
                    && let [(node, _)] = state.fleet.running(&name)[..]
                    && node.state != NodeState::Gone
                    && desired.status.node.as_deref() != Some(node.heartbeat.name.as_str())
                {
                    found.push((name.clone(), node.heartbeat.name.clone()));
                }
                let memory = state.memory.get(&name).cloned().unwrap_or_default();
                let verdict = {
                    let situation = situation(state, &name, &memory, now);
                    decide(&situation)
                };
                let broken = verdict.memory.broken_since_ms.is_some();
                state.memory.insert(name.clone(), verdict.memory);
                if broken {
                    // Held: look again next tick until the hold is over.
                    state.dirty.insert(name.clone());
                }
                if verdict.decisions.is_empty() {
                    continue;
                }
                state.busy.insert(name.clone());
                let observed = observation(state, &name);
                plans.push((name, verdict.decisions, observed));
            }
        }
        for (name, node) in found {
            if let Err(e) = self.update_status(&name, |d| d.status.node = Some(node.clone())) {
                tracing::error!(twin = %name, "recording where it runs: {e:#}");
            }
        }
        for (node, from, to) in node_changes {
            self.record(
                Entry::new(
                    Kind::Observation,
                    format!("node {node} is {to:?} (was {from:?})").to_lowercase(),
                )
                .node(node)
                .data(json!({ "from": from, "to": to })),
            );
        }
        for (name, decisions, observed) in plans {
            let control = self.clone();
            tokio::spawn(async move {
                control.carry_out(&name, decisions, observed).await;
            });
        }
        decided
    }

    /// Records and carries out one twin's decisions, in order; stops at
    /// the first that fails.
    async fn carry_out(self: &Arc<Self>, name: &str, decisions: Vec<Decision>, observed: Value) {
        for decision in decisions {
            if decision.action == Action::Notify {
                self.record(
                    Entry::new(Kind::Notification, decision.reason.clone())
                        .twin(name)
                        .data(json!({ "cause": decision.cause, "observed": observed })),
                );
                continue;
            }
            // A remedy for broken requirements is the decision with a cause.
            let withheld = self.config.observe_only && decision.cause.is_some();
            // The root of the trace every request of the action joins, on
            // the nodes too; the history names it.
            let action = json!(decision.action);
            let span = crate::trace_span!(
                "control.decision",
                twin = %name,
                action = %action["action"].as_str().unwrap_or_default(),
                reason = %decision.reason,
                carried_out = !withheld,
                ok = tracing::field::Empty,
            );
            let mut data = json!({
                "action": action,
                "cause": decision.cause,
                "observed": observed,
                "carriedOut": !withheld,
            });
            if let Some((trace, _)) = crate::telemetry::ids_of(&span) {
                data["traceId"] = json!(trace);
            }
            self.record(
                Entry::new(Kind::Decision, decision.reason.clone())
                    .twin(name)
                    .data(data),
            );
            if withheld {
                continue;
            }
            let started = std::time::Instant::now();
            let outcome = self
                .act(name, &decision.action)
                .instrument(span.clone())
                .await;
            span.record("ok", outcome.is_ok());
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let (summary, ok) = match &outcome {
                Ok(done) => (done.clone(), true),
                Err(e) => (format!("failed: {e:#}"), false),
            };
            self.record(
                Entry::new(Kind::Action, summary)
                    .twin(name)
                    .data(json!({ "action": decision.action, "ok": ok, "ms": ms })),
            );
            if let Err(e) = outcome {
                self.failed(name, &decision, &e);
                break;
            }
            self.state().failures.remove(name);
        }
        let mut state = self.state();
        state.busy.remove(name);
        state.settling.insert(name.to_string(), now_ms());
        state.dirty.insert(name.to_string());
    }

    /// After an action failed: a node that refused the twin's spec will
    /// refuse it again, so the spec is marked refused (not tried again
    /// until it changes) and the stakeholders told; anything else (a node
    /// that cannot be reached…) is tried again, backing off.
    fn failed(&self, name: &str, decision: &Decision, e: &anyhow::Error) {
        let refused = e
            .downcast_ref::<crate::client::Refused>()
            .filter(|r| r.status.is_client_error() && r.status != reqwest::StatusCode::CONFLICT);
        let spec_change = matches!(
            decision.action,
            Action::Place { .. }
                | Action::Recreate { .. }
                | Action::Update { .. }
                | Action::Swap { .. }
        );
        if let (Some(refused), true) = (refused, spec_change) {
            let spec = self.desired(name).map(|d| d.effective());
            if let Ok(spec) = spec {
                let digest = super::fleet::spec_digest(&spec);
                let why = refused.reason.clone();
                if let Err(e) = self.update_status(name, |d| d.status.refused = Some((digest, why)))
                {
                    tracing::error!(twin = %name, "storing a refusal: {e:#}");
                }
            }
            self.record(
                Entry::new(
                    Kind::Notification,
                    format!(
                        "the node refused twin {name}'s spec: {}; apply a corrected spec",
                        refused.reason
                    ),
                )
                .twin(name),
            );
            return;
        }
        let mut state = self.state();
        let failures = state.failures.entry(name.to_string()).or_insert(0);
        *failures += 1;
        let backoff = 500u64 << (*failures).min(7);
        state
            .retry_at
            .insert(name.to_string(), now_ms() + backoff.min(60_000));
    }

    fn client(&self, node: &str) -> anyhow::Result<NodeClient> {
        let state = self.state();
        let entry = state
            .fleet
            .get(node)
            .with_context(|| format!("node {node} is unknown"))?;
        Ok(NodeClient::new(
            &entry.heartbeat.url,
            self.config.node_token.clone(),
        ))
    }

    fn desired(&self, name: &str) -> anyhow::Result<Desired> {
        self.state()
            .twins
            .get(name)
            .cloned()
            .with_context(|| format!("twin {name} is no longer desired"))
    }

    /// Changes a twin's control-plane status, durably.
    fn update_status(&self, name: &str, change: impl FnOnce(&mut Desired)) -> anyhow::Result<()> {
        let mut state = self.state();
        let Some(desired) = state.twins.get_mut(name) else {
            return Ok(());
        };
        change(desired);
        self.repo.put(desired)
    }

    /// Carries out one action; what it did, in words.
    async fn act(&self, name: &str, action: &Action) -> anyhow::Result<String> {
        match action {
            Action::Place { node } => {
                let spec = self.desired(name)?.effective();
                self.client(node)?.apply(&spec, false).await?;
                self.update_status(name, |d| d.status.node = Some(node.clone()))?;
                Ok(format!("started on {node}"))
            }
            Action::Recreate { node } | Action::Restore { node, .. } => {
                let client = self.client(node)?;
                let lost = match action {
                    Action::Restore { from, .. } => Some(from.as_str()),
                    _ => None,
                };
                let done = match self.repo.checkpoint(name)? {
                    Some(bundle) => {
                        client.restore(name, bundle, false, lost).await?;
                        format!("restored on {node} from its latest checkpoint")
                    }
                    None => {
                        client
                            .apply(&self.desired(name)?.effective(), false)
                            .await?;
                        format!("started afresh on {node} (no checkpoint was held)")
                    }
                };
                self.update_status(name, |d| d.status.node = Some(node.clone()))?;
                Ok(done)
            }
            Action::Update { node } => {
                let spec = self.desired(name)?.effective();
                match self.client(node)?.apply(&spec, false).await {
                    Ok(answer) => Ok(format!("{node} applied the spec: {}", answer["result"])),
                    Err(e) => {
                        let digest = super::fleet::spec_digest(&spec);
                        let why = format!("{e:#}");
                        self.update_status(name, |d| d.status.refused = Some((digest, why)))?;
                        Err(e)
                    }
                }
            }
            Action::Swap { node } => {
                let model = self.desired(name)?.effective().spec.model.component;
                self.client(node)?
                    .swap(name, Some((&model.reference, model.digest.as_deref())))
                    .await?;
                Ok(format!("{node} swapped the model to {}", model.reference))
            }
            Action::Rollback { node } => {
                let client = self.client(node)?;
                client.swap(name, None).await?;
                let previous = client.spec(name).await?.spec.model.component;
                let digest = self
                    .verify_model(&self.desired(name)?.spec, &previous)
                    .await
                    .ok();
                self.update_status(name, |d| {
                    d.status.model_override = Some(previous.clone());
                    if digest.is_some() {
                        d.status.model_digest = digest;
                    }
                })?;
                Ok(format!(
                    "{node} rolled the model back to {}",
                    previous.reference
                ))
            }
            Action::Migrate { from, to } => {
                let (source, target) = (self.client(from)?, self.client(to)?);
                let moved = crate::client::migrate(name, &source, &target).await?;
                self.update_status(name, |d| d.status.node = Some(to.clone()))?;
                Ok(format!(
                    "moved from {from} to {to} live: paused {:.1} ms",
                    moved.pause.as_secs_f64() * 1000.0
                ))
            }
            Action::Scale { node, millis } => {
                let mut spec = self.desired(name)?.effective();
                spec.spec.resources.cpu = Some(format!("{millis}m"));
                self.client(node)?.apply(&spec, false).await?;
                self.update_status(name, |d| d.status.cpu_millis = Some(*millis))?;
                Ok(format!("CPU share on {node} set to {millis}m"))
            }
            Action::Stop { node } => {
                self.client(node)?.delete(name).await?;
                Ok(format!("stopped on {node}"))
            }
            Action::Notify => Ok(String::new()),
        }
    }

    /// Fetches the checkpoint of every placed twin that applied updates
    /// since the last one, a few at a time; run every `checkpoint_every`.
    pub async fn ship_checkpoints(self: &Arc<Self>) {
        let due: Vec<(String, String, u64)> = {
            let state = self.state();
            state
                .twins
                .iter()
                .filter_map(|(name, desired)| {
                    let node = desired.status.node.as_ref()?;
                    let entry = state.fleet.get(node)?;
                    let twin = entry.heartbeat.twins.iter().find(|t| &t.name == name)?;
                    let last = state.shipped.get(name).copied();
                    (entry.state == NodeState::Ready && last != Some(twin.updates_applied))
                        .then(|| (name.clone(), node.clone(), twin.updates_applied))
                })
                .collect()
        };
        for (name, node, applied) in due {
            let shipped = async {
                let mut bundle = Vec::new();
                self.client(&node)?
                    .checkpoint(&name, false, &mut bundle)
                    .await?;
                self.repo.keep_checkpoint(&name, &bundle)
            };
            match shipped.await {
                Ok(()) => {
                    self.state().shipped.insert(name, applied);
                }
                Err(e) => tracing::warn!(twin = %name, %node, "fetching a checkpoint: {e:#}"),
            }
        }
    }

    /// Marks every twin to be looked at in the next tick: a periodic
    /// safety net under the change-driven marking.
    pub fn resync(&self) {
        let mut state = self.state();
        let all: Vec<String> = state.twins.keys().cloned().collect();
        state.dirty.extend(all);
    }

    /// Runs the loops: a tick every 500 ms, checkpoints every
    /// `checkpoint_every`, a seal of the history and a resync every minute.
    pub async fn run(self: Arc<Self>) {
        let shipper = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(shipper.config.checkpoint_every);
            loop {
                every.tick().await;
                shipper.ship_checkpoints().await;
            }
        });
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut sealed = std::time::Instant::now();
        loop {
            tick.tick().await;
            self.tick();
            if sealed.elapsed() >= Duration::from_secs(60) {
                sealed = std::time::Instant::now();
                self.resync();
                if let Err(e) = self.history.seal_now() {
                    tracing::error!("sealing the event history: {e:#}");
                }
            }
        }
    }

    /// Marks nodes for the security agent's findings; see [`super::security`].
    pub(super) fn with_state<T>(
        &self,
        f: impl FnOnce(&mut Fleet, &BTreeMap<String, Desired>, &BTreeMap<String, u32>) -> T,
    ) -> T {
        let mut state = self.state();
        let state = &mut *state;
        f(&mut state.fleet, &state.twins, &state.domains)
    }

    /// Records a finding of the security agent and looks at the node's
    /// twins again.
    pub(super) fn finding(&self, node: &str, summary: String, data: Value) {
        {
            let mut state = self.state();
            let twins = placed_on(&state.twins, node);
            state.dirty.extend(twins);
        }
        self.record(Entry::new(Kind::Finding, summary).node(node).data(data));
    }
}

/// Whether `name` was acted on and its node has not reported since.
fn settling(state: &mut State, name: &str) -> bool {
    let Some(&finished) = state.settling.get(name) else {
        return false;
    };
    let node = state.twins.get(name).and_then(|d| d.status.node.clone());
    let reported = node
        .and_then(|n| state.fleet.get(&n).map(|e| e.seen_ms > finished))
        .unwrap_or(true);
    if reported {
        state.settling.remove(name);
    }
    !reported
}

/// The twins placed on `node`.
fn placed_on(twins: &BTreeMap<String, Desired>, node: &str) -> Vec<String> {
    twins
        .iter()
        .filter(|(_, d)| d.status.node.as_deref() == Some(node))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Everything `decide` needs to know about twin `name`.
fn situation<'a>(
    state: &'a State,
    name: &'a str,
    memory: &'a Memory,
    now_ms: u64,
) -> Situation<'a> {
    let desired = if state.deleted.contains(name) {
        None
    } else {
        state.twins.get(name)
    };
    let running = state.fleet.reporting(name);
    let placed = desired
        .and_then(|d| d.status.node.as_deref())
        .and_then(|n| state.fleet.get(n));
    let labels_on = |node: &str| {
        state
            .twins
            .iter()
            .filter(|(other, d)| *other != name && d.status.node.as_deref() == Some(node))
            .map(|(_, d)| d.spec.metadata.labels.clone())
            .collect()
    };
    let context = placement::Context {
        trust: &state.domains,
        labels_on: &labels_on,
    };
    let (ranking, unfit_here) = match desired {
        Some(d) => {
            let spec = d.effective();
            let here = placed.filter(|n| n.state == NodeState::Ready);
            let unfit_here = here.and_then(|n| {
                n.cordoned
                    .as_ref()
                    .map(|why| format!("it is cordoned ({why})"))
                    .or_else(|| placement::unfit(&spec, n, &context))
            });
            (
                placement::rank(&spec, state.fleet.nodes(), &context),
                unfit_here,
            )
        }
        None => (Ranking::default(), None),
    };
    Situation {
        name,
        desired,
        running,
        placed,
        ranking,
        unfit_here,
        has_checkpoint: state.shipped.contains_key(name),
        memory,
        now_ms,
    }
}

/// What the nodes report of twin `name`, for the history.
fn observation(state: &State, name: &str) -> Value {
    let running: Vec<Value> = state
        .fleet
        .running(name)
        .into_iter()
        .map(|(node, twin)| {
            json!({
                "node": node.heartbeat.name,
                "nodeState": node.state,
                "entanglement": twin.entanglement,
                "guestErrors": twin.guest_errors,
                "cpuShareMillis": twin.cpu_share_millis,
                "cpuUtilization": twin.cpu_utilization,
                "cpuThrottled": twin.cpu_throttled,
                "path": node.heartbeat.paths.first(),
            })
        })
        .collect();
    json!({ "running": running })
}

fn twin_view(state: &State, name: &str, desired: &Desired) -> Value {
    let running: Vec<Value> = state
        .fleet
        .reporting(name)
        .into_iter()
        .map(|(node, twin)| {
            let e = &twin.entanglement;
            json!({
                "node": node.heartbeat.name,
                "zone": node.heartbeat.zone,
                "nodeState": node.state,
                "status": e.status,
                "odte": e.odte,
                "timelinessMs": e.timeliness_ms,
                "reliability": e.reliability,
                "availability": e.availability,
                "parts": e.parts,
                "reasons": e.reasons,
                "updatesApplied": twin.updates_applied,
                "cpuShareMillis": twin.cpu_share_millis,
                "modelDigest": twin.model_digest,
            })
        })
        .collect();
    json!({
        "name": name,
        "generation": desired.generation,
        "placed": desired.status,
        "running": running,
    })
}
