//! The host node: the twins one `wasmtwin host` runs, each with its
//! physical link, its worker and its shared view. The management API calls
//! [`Node::apply`] and [`Node::delete`]; the digital API reads through
//! [`Node::report`] and acts through [`Node::act`]. Specs, checkpoints,
//! journals and history live in the node's [`Store`], from which
//! [`Node::resume`] brings every twin back after a restart.

mod view;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use view::{Change, PropertyView, TwinReport};

use crate::checkpoint::Checkpoint;
use crate::digest::Digest;
use crate::monitoring::{Metrics, TwinLabel};
use crate::physical::{self, BrokerAddress, Link};
use crate::registry::{self, Location};
use crate::runtime::{ActionOutcome, Description, Limits, ModelComponent, Runtime};
use crate::signing::{TrustPolicy, TrustSet};
use crate::spec::{ComponentRef, TwinSpec};
use crate::store::{Op, Point, Saved, Store};
use crate::twin::entanglement::{Entanglement, Status};
use crate::twin::{RestorePolicy, Twin};
use view::Shared;
use worker::{HistoryPolicy, Job, Worker};

/// Changes a slow stream subscriber may fall behind by before it is told
/// it missed some.
const CHANGE_BUFFER: usize = 256;

/// How a node is set up.
pub struct NodeConfig {
    /// The node's name, part of every MQTT client id.
    pub name: String,
    /// The broker twins use unless their spec names another.
    pub broker: BrokerAddress,
    /// Which components may run.
    pub policy: TrustPolicy,
    /// Messages a twin may have waiting before its MQTT session stops
    /// reading (back-pressure onto the broker).
    pub queue_capacity: usize,
}

struct Hosted {
    spec: TwinSpec,
    jobs: mpsc::Sender<Job>,
    shared: Arc<Mutex<Shared>>,
    changes: broadcast::Sender<Change>,
    link: Link,
    /// Signalled when the worker has finished.
    finished: std::sync::mpsc::Receiver<()>,
}

/// A twin ready to connect: components compiled, instance created.
struct Prepared {
    model: ModelComponent,
    adapter: crate::runtime::AdapterComponent,
    limits: Limits,
    twin: Twin,
}

/// The workers' runtime, shut down without waiting when the node goes (a
/// runtime cannot be dropped from async code, where nodes end).
struct WorkerRuntime(Option<tokio::runtime::Runtime>);

impl Drop for WorkerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn spec_op(spec: &TwinSpec) -> anyhow::Result<Op> {
    Ok(Op::Spec {
        name: spec.name().to_string(),
        json: serde_json::to_string(spec).context("serialising the spec")?,
    })
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Applied {
    /// A new twin.
    Created,
    /// The same spec was already running.
    Unchanged,
    /// Only the model's configuration changed; applied in place.
    Reconfigured,
    /// Another spec was running; the twin was started anew.
    Replaced,
}

/// Errors the APIs map to statuses.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No twin of that name.
    #[error("no twin named `{0}`")]
    NotFound(String),
    /// The twin's queue is full.
    #[error("twin `{0}` is overloaded; retry later")]
    Overloaded(String),
    /// The twin refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A running node.
pub struct Node {
    config: NodeConfig,
    runtime: Runtime,
    /// Runs the twins' workers: one thread per core, whatever the number
    /// of twins (10,000 idle twins cost no threads).
    workers: tokio::runtime::Handle,
    _workers: WorkerRuntime,
    store: Store,
    metrics: Arc<Metrics>,
    twins: Mutex<HashMap<String, Hosted>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// A node with no twins running yet; [`Node::resume`] starts those its
    /// store remembers.
    pub fn new(config: NodeConfig, runtime: Runtime, store: Store) -> anyhow::Result<Self> {
        let workers = tokio::runtime::Builder::new_multi_thread()
            .thread_name("twin-worker")
            .enable_time()
            .build()
            .context("starting the twins' worker threads")?;
        Ok(Self {
            config,
            runtime,
            workers: workers.handle().clone(),
            _workers: WorkerRuntime(Some(workers)),
            store,
            metrics: Arc::new(Metrics::default()),
            twins: Mutex::new(HashMap::new()),
        })
    }

    /// Starts every twin the store remembers, each from its last checkpoint
    /// plus its journal. A twin that cannot start is logged and left in the
    /// store (a corrected spec applied later replaces it); the names of the
    /// twins resumed are returned.
    pub fn resume(&self) -> anyhow::Result<Vec<String>> {
        let mut resumed = Vec::new();
        for (name, saved) in self.store.saved()? {
            let started = TwinSpec::parse(&saved.spec)
                .map_err(anyhow::Error::from)
                .and_then(|spec| {
                    let prepared = self.prepare(&spec, Some(saved))?;
                    self.launch(&spec, prepared)
                });
            match started {
                Ok(hosted) => {
                    lock(&self.twins).insert(name.clone(), hosted);
                    tracing::info!(twin = %name, "twin resumed from the store");
                    resumed.push(name);
                }
                Err(e) => tracing::error!(twin = %name, "cannot resume the twin: {e:#}"),
            }
        }
        Ok(resumed)
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Fetches a component named in a spec, checks its digest and its
    /// signature, and returns its bytes.
    fn fetch(
        &self,
        component: &ComponentRef,
        publisher_key: Option<&str>,
        what: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let reference = &component.reference;
        let bytes = if reference.contains("://") {
            let location: Location = reference.parse()?;
            registry::pull(&location, &registry::Options::default())
                .with_context(|| format!("fetching the {what} {reference}"))?
        } else {
            std::fs::read(PathBuf::from(reference))
                .with_context(|| format!("reading the {what} {reference}"))?
        };
        if let Some(expected) = &component.digest {
            let actual = Digest::of(&bytes).to_string();
            if &actual != expected {
                bail!(
                    "the {what} {reference} has digest {actual}, but the spec requires {expected}"
                );
            }
        }
        let verified = self.config.policy.check(&bytes, reference)?;
        if let (Some(key), Some(verified)) = (publisher_key, verified) {
            let trust = TrustSet::load(std::path::Path::new(key))
                .with_context(|| format!("spec.model.publisherKey {key}"))?;
            let wanted = trust.keys().iter().map(|k| k.id).collect::<Vec<_>>();
            if !verified.signers.iter().any(|s| wanted.contains(s)) {
                bail!(
                    "the {what} {reference} is not signed by the publisher key {key} the spec requires"
                );
            }
        }
        Ok(bytes)
    }

    /// Creates or replaces a twin from `spec`. Applying the same spec
    /// twice changes nothing; a spec that differs only in the model's
    /// configuration reconfigures the running twin. Nothing changes if the
    /// spec's components cannot be fetched, verified or started.
    pub fn apply(&self, spec: TwinSpec) -> anyhow::Result<Applied> {
        spec.validate()?;
        let name = spec.name().to_string();
        let replacing = {
            let twins = lock(&self.twins);
            match twins.get(&name) {
                Some(hosted) if hosted.spec == spec => return Ok(Applied::Unchanged),
                Some(hosted) => {
                    let mut only_config = hosted.spec.clone();
                    only_config.spec.model.config = spec.spec.model.config.clone();
                    if only_config == spec {
                        let jobs = hosted.jobs.clone();
                        drop(twins);
                        self.reconfigure(&name, jobs, spec.spec.model.config.clone())?;
                        self.store.write_now(vec![spec_op(&spec)?])?;
                        if let Some(hosted) = lock(&self.twins).get_mut(&name) {
                            hosted.spec = spec;
                        }
                        return Ok(Applied::Reconfigured);
                    }
                    true
                }
                None => false,
            }
        };
        // Everything that can fail happens before the old twin stops.
        let prepared = self.prepare(&spec, None)?;
        if replacing {
            // The old session and the new one share a client id, and the
            // old twin's last writes must land before the new twin's.
            self.stop(&name);
        }
        // A replaced twin starts anew: nothing of the old one is kept.
        self.store
            .write_now(vec![Op::Forget { name: name.clone() }, spec_op(&spec)?])?;
        let hosted = self.launch(&spec, prepared)?;
        lock(&self.twins).insert(name.clone(), hosted);
        tracing::info!(twin = %name, replacing, "twin started");
        Ok(if replacing {
            Applied::Replaced
        } else {
            Applied::Created
        })
    }

    fn reconfigure(
        &self,
        name: &str,
        jobs: mpsc::Sender<Job>,
        config: Value,
    ) -> anyhow::Result<()> {
        let (reply, answer) = oneshot::channel();
        jobs.blocking_send(Job::Reconfigure { config, reply })
            .map_err(|_| NodeError::NotFound(name.to_string()))?;
        answer
            .blocking_recv()
            .map_err(|_| NodeError::NotFound(name.to_string()))?
            .map_err(|e| NodeError::Refused(e).into())
    }

    /// Fetches, verifies and compiles a spec's components and creates its
    /// twin — fresh, or from what the store saved — without connecting it
    /// to anything.
    fn prepare(&self, spec: &TwinSpec, saved: Option<Saved>) -> anyhow::Result<Prepared> {
        let name = spec.name();
        let model_bytes = self.fetch(
            &spec.spec.model.component,
            spec.spec.model.publisher_key.as_deref(),
            "model",
        )?;
        let adapter_bytes = self.fetch(&spec.spec.physical.adapter, None, "adapter")?;
        let model = self.runtime.load_model(&model_bytes)?;
        let adapter = self.runtime.load_adapter(&adapter_bytes)?;
        let resources = &spec.spec.resources;
        let limits = Limits {
            fuel_per_call: resources.fuel_per_update,
            memory_bytes: resources
                .memory
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .unwrap_or(64 << 20),
            deadline: std::time::Duration::from_millis(resources.deadline_ms),
        };
        let twin = match saved {
            Some(saved) => self.restore(&model, name, limits, spec, saved)?,
            None => Twin::create(&self.runtime, &model, name, limits, &spec.spec.model.config)?,
        };
        Ok(Prepared {
            model,
            adapter,
            limits,
            twin,
        })
    }

    /// A twin as the store saved it: its last checkpoint (into the
    /// component the spec names now, which may be a newer build of the same
    /// model) plus the messages journalled since.
    fn restore(
        &self,
        model: &ModelComponent,
        name: &str,
        limits: Limits,
        spec: &TwinSpec,
        saved: Saved,
    ) -> anyhow::Result<Twin> {
        let mut twin = match &saved.checkpoint {
            Some(bytes) => {
                let checkpoint = Checkpoint::read_from(bytes.as_slice())
                    .with_context(|| format!("twin `{name}`'s stored checkpoint"))?;
                Twin::restore(
                    &self.runtime,
                    model,
                    &checkpoint,
                    limits,
                    RestorePolicy::Upgrade,
                )?
            }
            None => Twin::create(&self.runtime, model, name, limits, &spec.spec.model.config)?,
        };
        for message in &saved.journal {
            if let Err(e) = twin.apply_message(message) {
                tracing::warn!(twin = %name, "replaying the journal: {e}");
            }
        }
        Ok(twin)
    }

    /// Connects a prepared twin to its broker and starts its worker.
    fn launch(&self, spec: &TwinSpec, prepared: Prepared) -> anyhow::Result<Hosted> {
        let name = spec.name().to_string();
        let Prepared {
            model,
            adapter,
            limits,
            twin,
        } = prepared;
        let broker = match &spec.spec.physical.broker {
            Some(url) => url
                .parse::<BrokerAddress>()?
                .with_login_of(&self.config.broker),
            None => self.config.broker.clone(),
        };
        let shared = Arc::new(Mutex::new(Shared {
            state: twin.state().clone(),
            model: twin.model().clone(),
            description: twin.description().clone(),
            entanglement: Entanglement::new(spec.spec.requirements.clone(), physical::now_us()),
            guest_errors: 0,
            last_error: None,
        }));
        let (jobs, queue) = mpsc::channel(self.config.queue_capacity);
        // PT messages share the job queue; actions queue behind them.
        let (inbound_tx, mut inbound_rx) = mpsc::channel(self.config.queue_capacity);
        let client_id = format!("wasmtwin-{}-{name}", self.config.name);
        let link = physical::connect(
            &broker,
            &client_id,
            spec.spec.physical.topics.clone(),
            spec.spec.physical.qos,
            inbound_tx,
        )?;
        let forward = jobs.clone();
        tokio::spawn(async move {
            while let Some(message) = inbound_rx.recv().await {
                if forward.send(Job::Message(message)).await.is_err() {
                    break;
                }
            }
        });
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let history = &spec.spec.history;
        let worker = Worker {
            name: name.clone(),
            runtime: self.runtime.clone(),
            model,
            adapter,
            limits,
            twin,
            link: link.clone(),
            command_topic: spec.spec.physical.command_topic.clone(),
            shared: shared.clone(),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
            changes: changes.clone(),
            history: HistoryPolicy {
                retention: humantime::parse_duration(&history.retention)
                    .unwrap_or(std::time::Duration::MAX),
                max_rows: history.max_points,
            },
        };
        let (done, finished) = std::sync::mpsc::channel();
        self.workers.spawn(async move {
            worker.run(queue).await;
            let _ = done.send(());
        });
        Ok(Hosted {
            spec: spec.clone(),
            jobs,
            shared,
            changes,
            link,
            finished,
        })
    }

    /// Stops a twin's worker and session and waits for the worker to end;
    /// what it had not yet applied stays unacknowledged at the broker.
    fn stop(&self, name: &str) -> Option<TwinSpec> {
        let hosted = lock(&self.twins).remove(name)?;
        hosted.link.close();
        let _ = hosted.jobs.try_send(Job::Stop);
        drop(hosted.jobs);
        // Disconnected without a word: the worker panicked.
        if hosted.finished.recv().is_err() {
            tracing::error!(twin = %name, "the twin's worker panicked");
        }
        self.metrics.forget(name);
        Some(hosted.spec)
    }

    /// Stops and removes a twin, and forgets it.
    pub fn delete(&self, name: &str) -> Result<(), NodeError> {
        self.stop(name)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        self.store
            .write_now(vec![Op::Forget {
                name: name.to_string(),
            }])
            .map_err(|e| NodeError::Refused(format!("{e:#}")))?;
        tracing::info!(twin = %name, "twin deleted");
        Ok(())
    }

    /// The names of the twins, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.twins).keys().cloned().collect();
        names.sort();
        names
    }

    /// The spec a twin runs.
    pub fn spec(&self, name: &str) -> Result<TwinSpec, NodeError> {
        lock(&self.twins)
            .get(name)
            .map(|h| h.spec.clone())
            .ok_or_else(|| NodeError::NotFound(name.to_string()))
    }

    /// A twin's state and entanglement now; updates its gauges and logs a
    /// change of entanglement status.
    pub fn report(&self, name: &str) -> Result<TwinReport, NodeError> {
        let shared = lock(&self.twins)
            .get(name)
            .map(|h| h.shared.clone())
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let (report, transition) = lock(&shared).report(name, physical::now_us());
        let label = TwinLabel {
            twin: name.to_string(),
        };
        let e = &report.entanglement;
        self.metrics
            .reliability
            .get_or_create(&label)
            .set(e.reliability);
        self.metrics.odte.get_or_create(&label).set(e.odte);
        self.metrics
            .entangled
            .get_or_create(&label)
            .set(i64::from(e.status == Status::Entangled));
        if let Some(from) = transition {
            let from = from
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| "new".into());
            if e.status == Status::Entangled {
                tracing::info!(twin = %name, %from, to = ?e.status, "entanglement changed");
            } else {
                tracing::warn!(twin = %name, %from, to = ?e.status, reasons = ?e.reasons, "entanglement changed");
            }
        }
        Ok(report)
    }

    /// A stream of the changes a twin applies from now on.
    pub fn subscribe(&self, name: &str) -> Result<broadcast::Receiver<Change>, NodeError> {
        lock(&self.twins)
            .get(name)
            .map(|h| h.changes.subscribe())
            .ok_or_else(|| NodeError::NotFound(name.to_string()))
    }

    /// What a twin's model offers.
    pub fn description(&self, name: &str) -> Result<Description, NodeError> {
        let shared = lock(&self.twins)
            .get(name)
            .map(|h| h.shared.clone())
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let description = lock(&shared).description.clone();
        Ok(description)
    }

    /// A property's history between two PT timestamps (ms), oldest first.
    pub fn history(
        &self,
        name: &str,
        property: &str,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<Point>, NodeError> {
        if !lock(&self.twins).contains_key(name) {
            return Err(NodeError::NotFound(name.to_string()));
        }
        self.store
            .history(name, property, from_ms, to_ms, limit)
            .map_err(|e| NodeError::Refused(format!("reading the history: {e:#}")))
    }

    /// Evaluates every twin (metrics and transition logs stay current
    /// without readers).
    pub fn evaluate_all(&self) {
        for name in self.names() {
            let _ = self.report(&name);
        }
    }

    /// Carries out an action, waiting for its outcome.
    pub async fn act(
        &self,
        name: &str,
        action: &str,
        input: Value,
    ) -> Result<ActionOutcome, NodeError> {
        let jobs = lock(&self.twins)
            .get(name)
            .map(|h| h.jobs.clone())
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let (reply, answer) = oneshot::channel();
        let job = Job::Act {
            name: action.to_string(),
            input,
            reply,
        };
        jobs.try_send(job).map_err(|_| {
            self.metrics
                .shed
                .get_or_create(&TwinLabel {
                    twin: name.to_string(),
                })
                .inc();
            NodeError::Overloaded(name.to_string())
        })?;
        answer
            .await
            .map_err(|_| NodeError::NotFound(name.to_string()))?
            .map_err(NodeError::Refused)
    }
}
