//! The host node: the twins one `wasmtwin host` runs, each with its
//! physical link, its worker and its shared view. The management API calls
//! [`Node::apply`] and [`Node::delete`]; the digital API reads through
//! [`Node::report`] and acts through [`Node::act`].

mod view;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub use view::{PropertyView, TwinReport};

use crate::digest::Digest;
use crate::monitoring::{Metrics, TwinLabel};
use crate::physical::{self, BrokerAddress, Link};
use crate::registry::{self, Location};
use crate::runtime::{ActionOutcome, Limits, Runtime};
use crate::signing::{TrustPolicy, TrustSet};
use crate::spec::{ComponentRef, TwinSpec};
use crate::twin::Twin;
use crate::twin::entanglement::{Entanglement, Status};
use view::Shared;
use worker::{Job, Worker};

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
    link: Link,
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
    metrics: Arc<Metrics>,
    twins: Mutex<HashMap<String, Hosted>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// A node with no twins yet.
    pub fn new(config: NodeConfig, runtime: Runtime) -> Self {
        Self {
            config,
            runtime,
            metrics: Arc::new(Metrics::default()),
            twins: Mutex::new(HashMap::new()),
        }
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
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
        let hosted = self.start(&spec)?;
        if let Some(old) = lock(&self.twins).insert(name.clone(), hosted) {
            old.link.close();
        }
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

    fn start(&self, spec: &TwinSpec) -> anyhow::Result<Hosted> {
        let name = spec.name().to_string();
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
        let twin = Twin::create(
            &self.runtime,
            &model,
            &name,
            limits,
            &spec.spec.model.config,
        )?;
        let broker = match &spec.spec.physical.broker {
            Some(url) => url.parse()?,
            None => self.config.broker.clone(),
        };
        let shared = Arc::new(Mutex::new(Shared {
            state: twin.state().clone(),
            changed: Default::default(),
            model: twin.model().clone(),
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
        };
        std::thread::Builder::new()
            .name(format!("twin-{name}"))
            .spawn(move || worker.run(queue))
            .context("starting the twin's worker")?;
        Ok(Hosted {
            spec: spec.clone(),
            jobs,
            shared,
            link,
        })
    }

    /// Stops and removes a twin.
    pub fn delete(&self, name: &str) -> Result<(), NodeError> {
        let hosted = lock(&self.twins)
            .remove(name)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        hosted.link.close();
        self.metrics.forget(name);
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
