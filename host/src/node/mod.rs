//! The host node: the twins one `wasmtwin host` runs, each with its
//! physical link, its worker and its shared view. The management API calls
//! [`Node::apply`] and [`Node::delete`]; the digital API reads through
//! [`Node::report`] and acts through [`Node::act`]. Specs, checkpoints,
//! journals and history live in the node's [`Store`], from which
//! [`Node::resume`] brings every twin back after a restart.

mod adoption;
mod bundle;
mod finished;
mod inbox;
pub(crate) mod local;
pub mod membership;
mod mobility;
mod precopy;
mod view;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use bundle::{Bundle, History, Outgoing};
pub(crate) use mobility::IMPORT_BATCH;
use view::ChangeFeed;
pub use view::{Change, PropertyView, TwinReport};
pub use worker::SwapReport;

use crate::checkpoint::{Checkpoint, ModelInfo};
use crate::digest::Digest;
use crate::monitoring::{Metrics, TwinLabel};
use crate::physical::doorbell::Doorbell;
use crate::physical::shared::SharedSession;
use crate::physical::{self, BrokerAddress, Link, Subscribing};
use crate::registry::{self, Location};
use crate::runtime::cpu::{self, CpuShare};
use crate::runtime::{
    ActionOutcome, AdapterComponent, Description, Limits, ModelComponent, Runtime, SharedAdapter,
};
use crate::signing::{KeyId, TrustPolicy};
use crate::spec::{Ceilings, ComponentRef, TwinSpec};
use crate::store::{Op, Point, Saved, Store};
use crate::twin::entanglement::{Entanglement, Status, Window};
use crate::twin::{RestorePolicy, Twin, TwinState};
use finished::Finished;
use view::Shared;
use worker::{ActJob, Dormant, HistoryPolicy, Job, ReconfigureJob, Start, Worker};

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
    /// The most any twin may ask for; specs asking more are refused.
    pub ceilings: Ceilings,
    /// The directories local component paths in specs may name.
    pub component_dirs: Vec<PathBuf>,
    /// How `oci://` components are pulled (plain-HTTP hosts, a private CA,
    /// credentials).
    pub registry: registry::Options,
    /// The fuel one CPU-second burns here, which turns CPU shares into fuel
    /// rates; `None` measures it as the node starts.
    pub fuel_per_cpu_second: Option<u64>,
    /// Change-stream subscribers (server-sent event streams) a twin may
    /// have at once; more are refused.
    pub max_subscribers: usize,
    /// The size limits on what clients send.
    pub inputs: crate::input::InputLimits,
    /// A twin that gets no message, action or other job for this long
    /// hibernates (its instances are dropped until one comes); `None`
    /// keeps every twin awake.
    pub hibernate_after: Option<std::time::Duration>,
    /// Whether the broker keeps the twins' sessions (subscriptions and
    /// backlogs) while the node is down, as a broker that outlives the node
    /// does. One that does not (`wasmtwin up`'s embedded broker starts
    /// empty with it) drops what is published before a resumed twin has
    /// subscribed again, so then each twin resumes only once its
    /// subscription is confirmed.
    pub broker_keeps_sessions: bool,
    /// Whether a sleeping twin parks its broker session (QoS 1 twins): it
    /// disconnects, the broker keeps what arrives for it, and the node's
    /// doorbell wakes it. A parked twin holds no socket and no MQTT
    /// client; waking it takes one more connection.
    pub park_sessions_asleep: bool,
    /// Whether the node's twins share one broker session per broker (see
    /// `physical::shared`), their messages kept in the node's inbox,
    /// rather than each holding its own.
    pub shared_session: bool,
    /// With a shared session, the most messages the node keeps for one
    /// twin that has not applied them; more are dropped (and counted).
    pub inbox_max: usize,
    /// Whether the node's twins take turns on a few instances of each
    /// adapter component (see `runtime::SharedAdapter`), rather than each
    /// holding its own while awake.
    pub share_adapters: bool,
    /// How long a move of a twin to this node may stay announced (`PUT
    /// /v1/migrations/{name}`) and not landed before a new move of that
    /// twin here may replace it: its conductor has stopped answering.
    /// Until then a second move is refused, so as not to take the place of
    /// one under way.
    pub arrival_timeout: std::time::Duration,
}

/// [`NodeConfig::inbox_max`] unless told otherwise: 100 s of a device
/// sending 1,000 messages a second, on disk.
pub const DEFAULT_INBOX_MAX: usize = 100_000;

/// [`NodeConfig::hibernate_after`] unless told otherwise: long enough that
/// a device reporting every few minutes keeps its twin awake, so only
/// twins with nothing to do pay the wake-up.
pub const DEFAULT_HIBERNATE_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// [`NodeConfig::arrival_timeout`] unless told otherwise: far longer than
/// a move takes, even one whose state and history are large.
pub const DEFAULT_ARRIVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// [`NodeConfig::max_subscribers`] unless told otherwise: each stream
/// holds a connection, and the node-wide connection limit (1,024) must
/// leave room for more than one twin's watchers.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 64;

/// How long a stopping twin may take to finish the call under way before
/// its worker is cancelled (nothing it had not made durable is
/// acknowledged, so the broker redelivers it to the next owner).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

struct Hosted {
    spec: TwinSpec,
    /// The model it ran before its last swap, for a rollback.
    previous_model: Option<ComponentRef>,
    jobs: mpsc::Sender<Job>,
    shared: Arc<Mutex<Shared>>,
    /// Its CPU share and use, which its worker charges.
    cpu: CpuShare,
    changes: ChangeFeed,
    link: Link,
    /// Set when the worker has finished.
    finished: Finished,
    /// Cancels the worker, should it not finish in time.
    task: tokio::task::AbortHandle,
}

/// Frees `value` on a blocking thread, out of the way of what waits for
/// the caller: a twin's instances, or a snapshot of megabytes, take
/// milliseconds to unmap.
fn free_later<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(value))),
        Err(_) => drop(value),
    }
}

/// Where a twin that arrived recovers from, should its instance fail: the
/// checkpoint it arrived with (stored), and the messages applied on it
/// since (journalled).
struct Recovery {
    checkpoint: Arc<Checkpoint>,
    since: Vec<Vec<crate::runtime::Update>>,
}

/// A spec's components, verified and compiled, and the limits they run
/// under.
#[derive(Clone)]
struct Components {
    model: ModelComponent,
    adapter: crate::runtime::AdapterComponent,
    limits: Limits,
}

/// Components already loaded, by what specs name (see
/// [`Node::components_once`]).
type Loaded = HashMap<String, (ModelComponent, crate::runtime::AdapterComponent)>;

/// A twin ready to connect: components compiled, instance created (or,
/// for a twin that starts asleep, its checkpoint read).
struct Prepared {
    components: Components,
    twin: Start,
    /// The entanglement window it brings from another node, or from this
    /// node's last stop.
    window: Option<Window>,
}

/// Where a twin being started comes from.
enum Origin {
    /// A new twin, initialised with its spec's configuration.
    Fresh,
    /// What this node's store saved (after a restart, or an aborted move).
    Saved(Saved),
    /// A checkpoint from elsewhere (a bundle, a migration).
    Checkpoint(Arc<Checkpoint>),
}

/// What a twin's session subscribes to.
fn subscription(spec: &TwinSpec, turns: Option<physical::Turns>) -> physical::Subscription {
    physical::Subscription {
        topics: spec.spec.physical.topics.clone(),
        qos: spec.spec.physical.qos,
        max_payload: usize::try_from(spec.max_payload()).unwrap_or(usize::MAX),
        turns,
    }
}

/// Feeds messages that passed through another step first (an adopted
/// session's, see `adoption`) to `feed`.
async fn forward(mut inbound: mpsc::Receiver<Box<physical::Inbound>>, mut feed: Feed) {
    use physical::Deliver as _;
    while let Some(message) = inbound.recv().await {
        if feed.deliver(message).await.is_err() {
            break;
        }
    }
}

/// Hands a twin's messages to its job queue, keeping the first that
/// arrived. The session delivers to it directly: a task and a queue
/// between the two would be every twin's, asleep or awake.
struct Feed {
    jobs: mpsc::Sender<Job>,
    first: Arc<std::sync::OnceLock<(String, bytes::Bytes)>>,
}

impl physical::Deliver for Feed {
    async fn deliver(&mut self, message: Box<physical::Inbound>) -> Result<(), ()> {
        if self.first.get().is_none() && message.oversized.is_none() {
            let _ = self
                .first
                .set((message.topic.clone(), message.payload.clone()));
        }
        self.jobs.send(Job::Message(message)).await.map_err(drop)
    }

    fn is_closed(&self) -> bool {
        self.jobs.is_closed()
    }
}

/// A twin's MQTT session and the job queue it feeds.
struct Session {
    link: Link,
    /// Where its messages wait in the node's inbox, with a shared session.
    mailbox: Option<Arc<inbox::Mailbox>>,
    jobs: mpsc::Sender<Job>,
    queue: mpsc::Receiver<Job>,
    /// The first message that arrived (topic, payload): where a migrating
    /// twin's buffer starts.
    first: Arc<std::sync::OnceLock<(String, bytes::Bytes)>>,
    /// The twin's change stream, open before the twin starts so that
    /// applications can attach to a twin still arriving.
    changes: ChangeFeed,
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
    /// Only what a running twin takes in place changed (its CPU share,
    /// requirements, placement, policy or labels, perhaps with its
    /// configuration): applied without a restart.
    Updated,
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
    /// The twin lives on another node now, at this URL.
    #[error("the twin moved to {0}")]
    Moved(String),
    /// The twin is moving to another node; ask again shortly.
    #[error("twin `{0}` is moving to another node; retry shortly")]
    Moving(String),
    /// The twin has as many change-stream subscribers as it may.
    #[error(
        "twin `{twin}` already has {max} stream subscribers, the most it may (--max-subscribers); retry later"
    )]
    Subscribers { twin: String, max: usize },
    /// The request clashes with what is here.
    #[error("{0}")]
    Conflict(String),
}

/// A running node.
pub struct Node {
    config: NodeConfig,
    /// Where local component files are read from.
    local: local::ComponentDirs,
    runtime: Runtime,
    /// Runs the twins' workers: one thread per core, whatever the number
    /// of twins (10,000 idle twins cost no threads).
    workers: tokio::runtime::Handle,
    _workers: WorkerRuntime,
    store: Store,
    metrics: Arc<Metrics>,
    /// The fuel one CPU-second burns on this machine.
    fuel_per_cpu_second: u64,
    /// Boxed: an entry of hundreds of bytes would be paid for every empty
    /// slot of the map too (half of them, just after it grows).
    twins: Mutex<HashMap<String, Box<Hosted>>>,
    /// Twins that moved away, and the API of their new node.
    moved: Mutex<HashMap<String, String>>,
    /// Twins being handed over.
    in_transit: Mutex<HashMap<String, mobility::Leaving>>,
    /// Twins arriving from another node.
    incoming: Mutex<HashMap<String, mobility::Incoming>>,
    /// Snapshots of twins here sent ahead to a migration's target, which
    /// the handover's bundle then carries only the changes from.
    bases: Mutex<HashMap<String, precopy::Sent>>,
    /// One lock per twin name that management calls hold while they
    /// change that twin, so concurrent calls on one name take turns.
    changing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// The doorbell of each broker whose twins sleep with their sessions
    /// parked, by address.
    doorbells: Mutex<HashMap<(String, u16), Doorbell>>,
    /// Turns to connect for the sessions of sleeping twins collecting what
    /// their broker kept.
    turns: physical::Turns,
    /// Where messages of the shared sessions wait for their twins (with
    /// [`NodeConfig::shared_session`]).
    inbox: Option<Arc<inbox::Inbox>>,
    /// The shared session with each broker, by address.
    shared_sessions: Mutex<HashMap<(String, u16), SharedSession>>,
    /// The adapter instances its twins share, by component, while one of
    /// them holds them ([`NodeConfig::share_adapters`]).
    shared_adapters: Mutex<HashMap<Digest, Weak<SharedAdapter>>>,
    /// Whether the node is resuming its twins: shared sessions started
    /// meanwhile connect only once it is done, so that what their broker
    /// kept finds its twins.
    resuming: std::sync::atomic::AtomicBool,
}

/// Sessions of sleeping twins that connect at once to collect what their
/// broker kept (after a restart, or when their doorbell reconnected):
/// enough to keep a broker on loopback busy, and far below any limit on
/// open files.
const COLLECTING_AT_ONCE: usize = 64;

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
        let fuel_per_cpu_second = match config.fuel_per_cpu_second {
            Some(given) => given.max(1),
            // Only a runtime built to measure what metering costs lacks
            // fuel; no call is charged there, so shares are not enforced.
            None if !runtime.meters_fuel() => {
                tracing::warn!("the runtime does not meter fuel: CPU shares are not enforced");
                1
            }
            None => {
                let started = std::time::Instant::now();
                let measured = cpu::calibrate(&runtime).context("measuring fuel per CPU-second")?;
                tracing::info!(fuel_per_cpu_second = measured, took = ?started.elapsed(), "calibrated CPU shares (--fuel-per-cpu-second sets it instead)");
                measured
            }
        };
        let metrics = Arc::new(Metrics::default());
        let inbox = match config.shared_session {
            true => Some(Arc::new(inbox::Inbox::new(
                store.clone(),
                config.inbox_max,
                metrics.inbox_dropped.clone(),
            )?)),
            false => None,
        };
        Ok(Self {
            local: local::ComponentDirs::open(&config.component_dirs)?,
            config,
            runtime,
            workers: workers.handle().clone(),
            _workers: WorkerRuntime(Some(workers)),
            store,
            turns: physical::Turns::new(COLLECTING_AT_ONCE, metrics.sessions_collecting.clone()),
            metrics,
            fuel_per_cpu_second,
            twins: Mutex::new(HashMap::new()),
            moved: Mutex::new(HashMap::new()),
            in_transit: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
            bases: Mutex::new(HashMap::new()),
            changing: Mutex::new(HashMap::new()),
            doorbells: Mutex::new(HashMap::new()),
            inbox,
            shared_sessions: Mutex::new(HashMap::new()),
            shared_adapters: Mutex::new(HashMap::new()),
            resuming: Default::default(),
        })
    }

    /// Runs `change` while no other management call changes twin `name`:
    /// six concurrent applies of one new name create one twin, and the
    /// other five find it there.
    fn exclusively<T>(&self, name: &str, change: impl FnOnce() -> T) -> T {
        let turn = lock(&self.changing)
            .entry(name.to_string())
            .or_default()
            .clone();
        let result = {
            let _held = lock(&turn);
            change()
        };
        let mut changing = lock(&self.changing);
        // Only the map and this call hold it: nobody else waits.
        if Arc::strong_count(&turn) == 2 {
            changing.remove(name);
        }
        result
    }

    /// Starts every twin the store remembers, each from its last checkpoint
    /// plus its journal. A twin that cannot start is logged and left in the
    /// store (a corrected spec applied later replaces it); the names of the
    /// twins resumed are returned. A twin stopped for a handover whose move
    /// has not ended stays stopped: its bundle may run on the target.
    pub fn resume(&self) -> anyhow::Result<Vec<String>> {
        self.resuming
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let resumed = self.resume_twins();
        // Every twin routes now: what the brokers kept can come.
        self.resuming
            .store(false, std::sync::atomic::Ordering::Relaxed);
        for session in lock(&self.shared_sessions).values() {
            session.open();
        }
        resumed
    }

    fn resume_twins(&self) -> anyhow::Result<Vec<String>> {
        lock(&self.moved).extend(self.store.moved()?);
        // Taken back once: after a crash from here on, windows start anew
        // rather than from a stop before this start.
        let mut windows = self.store.windows()?;
        if !windows.is_empty() {
            self.store.write_now(vec![Op::ClearWindows])?;
        }
        let leaving = self.store.leaving()?;
        let mut resumed = Vec::new();
        let mut loaded = Loaded::new();
        for (name, saved) in self.store.saved()? {
            let window = windows.remove(&name).and_then(|bytes| {
                Window::decode(&bytes)
                    .inspect_err(|e| {
                        tracing::warn!(twin = %name, "its entanglement window kept at the last stop is unreadable, so it starts anew: {e:#}")
                    })
                    .ok()
            });
            if let Some(&since_ms) = leaving.get(&name) {
                match TwinSpec::from_stored(&saved.spec) {
                    Ok(spec) => self.still_leaving(&name, spec, window, since_ms),
                    Err(e) => {
                        tracing::error!(twin = %name, "cannot read the spec of a twin in a move: {e:#}")
                    }
                }
                continue;
            }
            let started = TwinSpec::from_stored(&saved.spec)
                .map_err(anyhow::Error::from)
                .and_then(|spec| {
                    let components = self.components_once(&spec, &mut loaded)?;
                    let mut prepared =
                        self.prepare_with(&spec, components, Origin::Saved(saved))?;
                    prepared.window = window;
                    let asleep = matches!(prepared.twin, Start::Asleep(_));
                    let subscribing = if !self.config.broker_keeps_sessions {
                        Subscribing::Confirmed
                    } else if asleep && self.bell_of(&spec).is_some() {
                        // Its session connects in its turn and parks again.
                        Subscribing::Parked
                    } else {
                        // The broker kept its session, subscription included.
                        Subscribing::InBackground
                    };
                    let session = self.connect(&spec, subscribing)?;
                    Ok(self.start(&spec, prepared, session, None))
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

    /// The size limits on what its clients send.
    pub fn inputs(&self) -> crate::input::InputLimits {
        self.config.inputs
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Fetches a component named in a spec and checks it.
    fn fetch(
        &self,
        component: &ComponentRef,
        publisher_key: Option<&str>,
        what: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let reference = &component.reference;
        let bytes = if reference.contains("://") {
            let location: Location = reference.parse()?;
            registry::pull(&location, &self.config.registry)
                .with_context(|| format!("fetching the {what} {reference}"))?
        } else {
            self.local
                .read(reference)
                .with_context(|| format!("reading the {what}"))?
        };
        self.check(&bytes, component, publisher_key, what)?;
        Ok(bytes)
    }

    /// Checks a component's bytes against the spec's digest, the node's
    /// trust policy and the spec's publisher key, before anything runs.
    fn check(
        &self,
        bytes: &[u8],
        component: &ComponentRef,
        publisher_key: Option<&str>,
        what: &str,
    ) -> anyhow::Result<()> {
        let reference = &component.reference;
        if let Some(expected) = &component.digest {
            let actual = Digest::of(bytes).to_string();
            if &actual != expected {
                bail!(
                    "the {what} {reference} has digest {actual}, but the spec requires {expected}"
                );
            }
        }
        let verified = self.config.policy.check(bytes, reference)?;
        if let (Some(key), Some(verified), TrustPolicy::Require(trust)) =
            (publisher_key, verified, &self.config.policy)
        {
            // The key is one of this node's trusted keys, named by the file
            // it was loaded from or by its id: a node opens no key file a
            // spec names.
            let wanted: Vec<KeyId> = trust
                .keys()
                .iter()
                .filter(|k| k.source == std::path::Path::new(key) || k.id.to_string() == key)
                .map(|k| k.id)
                .collect();
            if wanted.is_empty() {
                bail!(
                    "spec.model.publisherKey `{key}` is not one of this node's trusted keys \
                     (--trust): name one by the file it was loaded from or by its key id"
                );
            }
            if !verified.signers.iter().any(|s| wanted.contains(s)) {
                let ids = |ids: &[KeyId]| {
                    ids.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                bail!(
                    "the {what} {reference} is not signed by the publisher key {key} ({}); \
                     it is signed by {}",
                    ids(&wanted),
                    ids(&verified.signers)
                );
            }
        }
        Ok(())
    }

    /// Creates or replaces a twin from `spec`. Applying the same spec
    /// twice changes nothing; a spec that differs only in the model's
    /// configuration reconfigures the running twin. Any other difference
    /// starts the twin anew, which discards its state and history: that is
    /// refused, naming what differs, for a twin that has applied updates
    /// unless `replace` says to. Nothing changes if the spec's components
    /// cannot be fetched, verified or started.
    pub fn apply(&self, spec: TwinSpec, replace: bool) -> anyhow::Result<Applied> {
        spec.validate()?;
        spec.check_ceilings(&self.config.ceilings)?;
        let name = spec.name().to_string();
        self.exclusively(&name, || self.apply_now(spec, replace))
    }

    fn apply_now(&self, spec: TwinSpec, replace: bool) -> anyhow::Result<Applied> {
        let name = spec.name().to_string();
        self.not_in_a_move(&name)?;
        let replacing = {
            let twins = lock(&self.twins);
            match twins.get(&name) {
                Some(hosted) if hosted.spec == spec => return Ok(Applied::Unchanged),
                Some(hosted) => {
                    // What a running twin takes in place: its model's
                    // configuration, its CPU share, its requirements (the
                    // window is measured against the new ones from now),
                    // and what only the control plane reads (placement,
                    // policy, labels).
                    let mut in_place = hosted.spec.clone();
                    in_place.metadata.labels = spec.metadata.labels.clone();
                    in_place.spec.model.config = spec.spec.model.config.clone();
                    in_place.spec.resources.cpu = spec.spec.resources.cpu.clone();
                    in_place.spec.requirements = spec.spec.requirements.clone();
                    in_place.spec.placement = spec.spec.placement.clone();
                    in_place.spec.policy = spec.spec.policy.clone();
                    if in_place == spec {
                        let config_changed =
                            hosted.spec.spec.model.config != spec.spec.model.config;
                        let (jobs, cpu) = (hosted.jobs.clone(), hosted.cpu.clone());
                        let requirements = (hosted.spec.spec.requirements
                            != spec.spec.requirements)
                            .then(|| (hosted.shared.clone(), spec.spec.requirements.clone()));
                        drop(twins);
                        if config_changed {
                            self.reconfigure(&name, jobs, spec.spec.model.config.clone())?;
                        }
                        // Durable first: a restart keeps the new share.
                        self.store.write_now(vec![spec_op(&spec)?])?;
                        if let Some((shared, requirements)) = requirements {
                            lock(&shared).entanglement.set_requirements(requirements);
                        }
                        let share = spec.cpu_millis();
                        if cpu.millis() != share {
                            cpu.set_millis(share);
                            tracing::info!(twin = %name, cpu = ?spec.spec.resources.cpu, "CPU share changed");
                        }
                        if let Some(hosted) = lock(&self.twins).get_mut(&name) {
                            hosted.spec = spec;
                        }
                        return Ok(if config_changed {
                            Applied::Reconfigured
                        } else {
                            Applied::Updated
                        });
                    }
                    let applied = lock(&hosted.shared).state.updates_applied;
                    if applied > 0 && !replace {
                        return Err(NodeError::Conflict(format!(
                            "twin `{name}` differs from this spec in {}; applying it would start \
                             the twin anew and discard its state and history ({applied} updates \
                             applied). Apply with replace (`wasmtwin apply --replace`, \
                             `?replace=true`) to do so, or change its model with `wasmtwin swap`, \
                             which keeps the state",
                            crate::spec::differences(&hosted.spec, &spec).join(", ")
                        ))
                        .into());
                    }
                    true
                }
                None => false,
            }
        };
        // Everything that can fail happens before the old twin stops.
        let prepared = self.prepare(&spec, Origin::Fresh)?;
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
        lock(&self.moved).remove(&name);
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
        jobs.blocking_send(Job::Reconfigure(Box::new(ReconfigureJob { config, reply })))
            .map_err(|_| NodeError::NotFound(name.to_string()))?;
        answer
            .blocking_recv()
            .map_err(|_| NodeError::NotFound(name.to_string()))?
            .map_err(|e| NodeError::Refused(e).into())
    }

    /// [`Node::components`], fetched, verified and compiled once for all
    /// the specs that name the same ones: a node resuming thousands of
    /// twins of one model reads it once.
    fn components_once(&self, spec: &TwinSpec, loaded: &mut Loaded) -> anyhow::Result<Components> {
        let named = (
            &spec.spec.model.component,
            &spec.spec.model.publisher_key,
            &spec.spec.physical.adapter,
        );
        let key = serde_json::to_string(&named).context("naming a spec's components")?;
        if let Some((model, adapter)) = loaded.get(&key) {
            spec.check_ceilings(&self.config.ceilings)?;
            return Ok(Components {
                model: model.clone(),
                adapter: adapter.clone(),
                limits: spec.limits(),
            });
        }
        let components = self.components(spec, None)?;
        loaded.insert(key, (components.model.clone(), components.adapter.clone()));
        Ok(components)
    }

    /// Fetches (unless `carried` brings them), verifies and compiles a
    /// spec's components.
    fn components(
        &self,
        spec: &TwinSpec,
        carried: Option<(Vec<u8>, Vec<u8>)>,
    ) -> anyhow::Result<Components> {
        // Every way a twin starts here comes through this check.
        spec.check_ceilings(&self.config.ceilings)?;
        let (model_bytes, adapter_bytes) = match carried {
            Some((model, adapter)) => {
                let key = spec.spec.model.publisher_key.as_deref();
                self.check(&model, &spec.spec.model.component, key, "model")?;
                self.check(&adapter, &spec.spec.physical.adapter, None, "adapter")?;
                (model, adapter)
            }
            None => (
                self.fetch(
                    &spec.spec.model.component,
                    spec.spec.model.publisher_key.as_deref(),
                    "model",
                )?,
                self.fetch(&spec.spec.physical.adapter, None, "adapter")?,
            ),
        };
        Ok(Components {
            model: self.runtime.load_model(&model_bytes)?,
            adapter: self.runtime.load_adapter(&adapter_bytes)?,
            limits: spec.limits(),
        })
    }

    /// Fetches, verifies and compiles a spec's components and creates its
    /// twin from `origin`, without connecting it to anything.
    fn prepare(&self, spec: &TwinSpec, origin: Origin) -> anyhow::Result<Prepared> {
        self.prepare_with(spec, self.components(spec, None)?, origin)
    }

    /// [`Node::prepare`] with the spec's components at hand.
    fn prepare_with(
        &self,
        spec: &TwinSpec,
        components: Components,
        origin: Origin,
    ) -> anyhow::Result<Prepared> {
        let twin = match self.dormant(spec, &components, origin)? {
            Ok(dormant) => Start::Asleep(dormant),
            Err(origin) => {
                Start::Awake(self.run_guest(self.make_twin(spec, &components, origin))?)
            }
        };
        Ok(Prepared {
            components,
            twin,
            window: None,
        })
    }

    /// The twin `origin` describes. A checkpoint is restored into the
    /// component the spec names now, which may be a newer build of the same
    /// model; a store's journal is replayed after it.
    async fn make_twin(
        &self,
        spec: &TwinSpec,
        components: &Components,
        origin: Origin,
    ) -> anyhow::Result<Twin> {
        let name = spec.name();
        let (model, limits) = (&components.model, components.limits);
        let restore = async |checkpoint: &Checkpoint| {
            if checkpoint.twin != name {
                bail!(
                    "the checkpoint is of twin `{}`, not `{name}`",
                    checkpoint.twin
                );
            }
            Twin::restore(
                &self.runtime,
                model,
                checkpoint,
                limits,
                RestorePolicy::Upgrade,
            )
            .await
        };
        let saved = match origin {
            Origin::Checkpoint(checkpoint) => return restore(&checkpoint).await,
            Origin::Fresh => None,
            Origin::Saved(saved) => Some(saved),
        };
        let checkpoint = match saved.as_ref().and_then(|s| s.checkpoint.as_ref()) {
            Some(bytes) => Some(
                Checkpoint::read_from(bytes.as_slice())
                    .with_context(|| format!("twin `{name}`'s stored checkpoint"))?,
            ),
            None => None,
        };
        let mut twin = match &checkpoint {
            Some(checkpoint) => restore(checkpoint).await?,
            None => {
                Twin::create(&self.runtime, model, name, limits, &spec.spec.model.config).await?
            }
        };
        for message in saved.iter().flat_map(|s| &s.journal) {
            if let Err(e) = twin.apply_message(message).await {
                tracing::warn!(twin = %name, "replaying the journal: {e}");
            }
        }
        Ok(twin)
    }

    /// A saved twin that may start asleep, so that a node holding many
    /// twins serves again without instantiating any: hibernation is on,
    /// its journal is empty (its checkpoint is all of it) and the
    /// checkpoint was written by the component its spec runs now. A twin
    /// that must wake is given back as its origin, with the checkpoint
    /// read here if it was, so that it is not read twice.
    fn dormant(
        &self,
        spec: &TwinSpec,
        components: &Components,
        origin: Origin,
    ) -> anyhow::Result<Result<Dormant, Origin>> {
        let bytes = match &origin {
            Origin::Saved(Saved {
                checkpoint: Some(bytes),
                journal,
                ..
            }) if journal.is_empty() && self.config.hibernate_after.is_some() => bytes,
            _ => return Ok(Err(origin)),
        };
        let checkpoint = Checkpoint::read_from(bytes.as_slice())
            .with_context(|| format!("twin `{}`'s stored checkpoint", spec.name()))?;
        if checkpoint.twin != spec.name() || checkpoint.model.component != components.model.digest()
        {
            // With no journal to replay after it, the checkpoint is all
            // the saved twin is.
            return Ok(Err(Origin::Checkpoint(Arc::new(checkpoint))));
        }
        let state = TwinState::of(&checkpoint)?;
        let (model, description) = self.describe(components)?;
        Ok(Ok(Dormant {
            state,
            model,
            description,
            checkpoint: Arc::new(checkpoint),
        }))
    }

    /// What a spec's model component is and offers (asked of the guest
    /// once per component).
    fn describe(&self, components: &Components) -> anyhow::Result<(ModelInfo, Arc<Description>)> {
        self.run_guest(Twin::describe(
            &self.runtime,
            &components.model,
            components.limits,
        ))
    }

    /// Runs guest code (instantiation, restore, replay) from the blocking
    /// threads the management calls run on.
    fn run_guest<F: std::future::Future>(&self, work: F) -> F::Output {
        self.workers.block_on(work)
    }

    /// Opens a twin's MQTT session into a job queue that no worker reads
    /// yet: until one does, messages wait there and then at the broker.
    fn connect(&self, spec: &TwinSpec, subscribing: Subscribing) -> anyhow::Result<Session> {
        let (broker, client_id) = self.session_of(spec)?;
        // PT messages share the job queue; actions queue behind them.
        let (jobs, queue) = mpsc::channel(self.config.queue_capacity);
        let first = Arc::new(std::sync::OnceLock::new());
        let (link, mailbox) = match &self.inbox {
            Some(inbox) => {
                let mailbox = inbox.open(spec.name(), jobs.clone(), first.clone());
                let session = self.shared_session(&broker, inbox);
                let physical = &spec.spec.physical;
                let member = tokio::runtime::Handle::current().block_on(session.join(
                    spec.name(),
                    &physical.topics,
                    physical.qos,
                    usize::try_from(spec.max_payload()).unwrap_or(usize::MAX),
                    !matches!(subscribing, Subscribing::InBackground),
                ))?;
                (Link::Shared(member), Some(mailbox))
            }
            None => {
                let feed = Feed {
                    jobs: jobs.clone(),
                    first: first.clone(),
                };
                let link = physical::connect(
                    &broker,
                    &client_id,
                    subscription(spec, Some(self.turns.clone())),
                    feed,
                    subscribing,
                    self.metrics.broker_sessions.clone(),
                )?;
                (link, None)
            }
        };
        Ok(Session {
            link,
            mailbox,
            jobs,
            queue,
            first,
            changes: ChangeFeed::default(),
        })
    }

    /// The instances of `component` the node's twins share: those they
    /// hold, or new ones.
    fn shared_adapter(&self, component: &AdapterComponent) -> Arc<SharedAdapter> {
        let mut shared = lock(&self.shared_adapters);
        if let Some(held) = shared.get(&component.digest()).and_then(Weak::upgrade) {
            return held;
        }
        shared.retain(|_, adapter| adapter.strong_count() > 0);
        let fresh = Arc::new(SharedAdapter::new(
            &self.runtime,
            component,
            self.metrics.shared_adapters_made.clone(),
        ));
        shared.insert(component.digest(), Arc::downgrade(&fresh));
        fresh
    }

    /// The node's shared session with `broker`, started if it is the
    /// first twin there (and open at once, unless the node is resuming).
    fn shared_session(&self, broker: &BrokerAddress, inbox: &Arc<inbox::Inbox>) -> SharedSession {
        lock(&self.shared_sessions)
            .entry((broker.host.clone(), broker.port))
            .or_insert_with(|| {
                let session = SharedSession::start(
                    broker,
                    &format!("wasmtwin-{}", self.config.name),
                    inbox.clone(),
                    self.metrics.broker_sessions.clone(),
                );
                if !self.resuming.load(std::sync::atomic::Ordering::Relaxed) {
                    session.open();
                }
                session
            })
            .clone()
    }

    /// The broker a twin's session is with, and its client id there.
    fn session_of(&self, spec: &TwinSpec) -> anyhow::Result<(BrokerAddress, String)> {
        let broker = match &spec.spec.physical.broker {
            Some(url) => url
                .parse::<BrokerAddress>()?
                .with_login_of(&self.config.broker),
            None => self.config.broker.clone(),
        };
        Ok((
            broker,
            format!("wasmtwin-{}-{}", self.config.name, spec.name()),
        ))
    }

    /// What rings a twin of `spec` while it sleeps with its session
    /// parked: its broker's doorbell and its topics. None when it keeps its
    /// session connected asleep: hibernation is off, or it takes QoS 0
    /// messages, which brokers do not keep for a session while it is away.
    fn bell_of(&self, spec: &TwinSpec) -> Option<worker::Bell> {
        self.config.hibernate_after?;
        // A shared session stays connected: a sleeping twin holds no
        // connection of its own anyway.
        if !self.config.park_sessions_asleep
            || spec.spec.physical.qos == 0
            || self.config.shared_session
        {
            return None;
        }
        let (broker, _) = self.session_of(spec).ok()?;
        let doorbell = lock(&self.doorbells)
            .entry((broker.host.clone(), broker.port))
            .or_insert_with(|| {
                Doorbell::start(&broker, &format!("wasmtwin-{}.doorbell", self.config.name))
            })
            .clone();
        Some(worker::Bell {
            doorbell,
            topics: spec.spec.physical.topics.clone(),
        })
    }

    /// Has the broker discard the twin's persistent session here (it lives
    /// elsewhere now), in the background; or drops what the node's inbox
    /// kept for it.
    fn forget_session(&self, spec: &TwinSpec) {
        // A shared session is the other twins' too: what it kept for the
        // twin goes instead.
        if let Some(inbox) = &self.inbox {
            inbox.forget(spec.name());
            let name = spec.name().to_string();
            self.store.write(vec![Op::ClearInbox { name }], None);
            return;
        }
        if let Ok((broker, client_id)) = self.session_of(spec) {
            tokio::spawn(physical::forget_session(broker, client_id));
        }
    }

    /// Starts the worker of a prepared twin on its session; `stored` is the
    /// checkpoint of its current state if the store already has it.
    fn start(
        &self,
        spec: &TwinSpec,
        prepared: Prepared,
        session: Session,
        recovery: Option<Recovery>,
    ) -> Box<Hosted> {
        let Prepared {
            components,
            twin,
            window,
        } = prepared;
        let requirements = spec.spec.requirements.clone();
        let entanglement = match window {
            Some(window) => Entanglement::resume(requirements, window, physical::now_us()),
            None => Entanglement::new(requirements, physical::now_us()),
        };
        let asleep = matches!(twin, Start::Asleep(_));
        let shared = Arc::new(Mutex::new(Shared {
            state: twin.state().clone(),
            model: twin.model().clone(),
            description: twin.description().clone(),
            entanglement,
            guest_errors: 0,
            last_error: None,
            asleep,
        }));
        // Counted from the start, before its worker runs, so that a resumed
        // node's count is right as soon as it serves.
        if asleep {
            self.metrics.hibernating.inc();
        }
        let changes = session.changes;
        let history = &spec.spec.history;
        let cpu = CpuShare::new(self.fuel_per_cpu_second, spec.cpu_millis());
        let worker = Worker {
            name: spec.name().to_string(),
            runtime: self.runtime.clone(),
            model: components.model,
            shared_adapter: self
                .config
                .share_adapters
                .then(|| self.shared_adapter(&components.adapter)),
            adapter: components.adapter,
            limits: components.limits,
            cpu: cpu.clone(),
            link: session.link.clone(),
            command_topic: spec.spec.physical.command_topic.clone(),
            max_payload: spec.max_payload(),
            shared: shared.clone(),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
            changes: changes.clone(),
            history: HistoryPolicy {
                retention: humantime::parse_duration(&history.retention)
                    .unwrap_or(std::time::Duration::MAX),
                max_rows: history.max_points,
            },
            recovery: recovery
                .as_ref()
                .map(|r| r.checkpoint.clone())
                .or_else(|| twin.checkpoint()),
            since_recovery: recovery.map(|r| r.since).unwrap_or_default(),
            since_base: None,
            hibernate_after: self.config.hibernate_after,
            bell: self.bell_of(spec),
            mailbox: session.mailbox,
        };
        let finished = Finished::default();
        let finishing = finished.finishing();
        let queue = session.queue;
        // Boxed before the task takes them: see `Worker::run`.
        let awake = match twin {
            Start::Awake(twin) => Some(Box::new(twin)),
            Start::Asleep(_) => None,
        };
        let worker = Box::new(worker);
        let task = self
            .workers
            .spawn(async move {
                let _finishing = finishing;
                worker.run(awake, queue).await;
            })
            .abort_handle();
        Box::new(Hosted {
            spec: spec.clone(),
            previous_model: None,
            jobs: session.jobs,
            shared,
            cpu,
            changes,
            link: session.link,
            finished,
            task,
        })
    }

    /// Connects a prepared twin to its broker and starts its worker.
    fn launch(&self, spec: &TwinSpec, prepared: Prepared) -> anyhow::Result<Box<Hosted>> {
        let session = self.connect(spec, Subscribing::Confirmed)?;
        Ok(self.start(spec, prepared, session, None))
    }

    /// Keeps every twin's entanglement window in the store as the node
    /// stops. At the next start each goes on from it, the time between
    /// counted as an outage: a restart neither wipes how the twin was
    /// measured nor hides its downtime. (After a crash, windows start anew.)
    /// The number kept.
    pub fn keep_windows(&self) -> anyhow::Result<usize> {
        let mut ops = Vec::new();
        let running = self
            .names()
            .into_iter()
            .filter_map(|name| Some((name.clone(), self.window(&name)?.0)));
        // A twin stopped for a handover keeps its window too: should its
        // move fail, it resumes here after the restart.
        for (name, window) in running.chain(self.leaving_windows()) {
            match window.encode() {
                Ok(window) => ops.push(Op::Window { name, window }),
                Err(e) => {
                    tracing::warn!(twin = %name, "its entanglement window cannot be kept: {e:#}")
                }
            }
        }
        let kept = ops.len();
        self.store.write_now(ops)?;
        Ok(kept)
    }

    /// Stops every twin's worker and session, as the end of the process
    /// would, but waiting for each worker; their broker sessions and what
    /// the store holds stay for the next start. For a node that ends while
    /// its process goes on (a benchmark hosting several nodes in turn):
    /// dropping a node does not stop its twins, whose tasks hold it.
    /// Blocks: call it off the async threads.
    pub fn shutdown(&self) {
        for name in self.names() {
            self.stop(&name);
        }
    }

    /// Stops a twin's worker and session and waits for the worker to end;
    /// what it had not yet applied stays unacknowledged at the broker.
    fn stop(&self, name: &str) -> Option<TwinSpec> {
        let (spec, link) = self.stop_keeping_link(name)?;
        link.close();
        Some(spec)
    }

    /// [`Node::stop`], but the twin keeps its place in a shared session
    /// (its own session closes), returned: what comes for it is kept until
    /// the link is closed, should the twin run here again.
    fn stop_keeping_link(&self, name: &str) -> Option<(TwinSpec, Link)> {
        lock(&self.bases).remove(name);
        let hosted = lock(&self.twins).remove(name)?;
        hosted.link.release();
        let _ = hosted.jobs.try_send(Job::Stop);
        drop(hosted.jobs);
        // The worker finishes the call under way (or, queue full, its
        // queue); past the grace it is cancelled, which loses nothing: what
        // it had not made durable was not acknowledged.
        if !hosted.finished.wait(STOP_GRACE) {
            tracing::warn!(twin = %name, "the twin's worker did not stop within {STOP_GRACE:?}; cancelling it");
            hosted.task.abort();
            // Cancelled, its task drops what it held at its next turn.
            hosted.finished.wait_forever();
        }
        self.metrics.forget(name);
        Some((hosted.spec, hosted.link))
    }

    /// Stops and removes a twin (or the marker of one that moved away),
    /// and forgets it; on a blocking thread of the node's runtime.
    pub fn delete(&self, name: &str) -> Result<(), NodeError> {
        self.exclusively(name, || self.delete_now(name))
    }

    fn delete_now(&self, name: &str) -> Result<(), NodeError> {
        // Stopped for its move, it is not in `twins`: "not found" would be
        // false, and the move would go on, or resume it, anyway.
        self.not_in_a_move(name)?;
        let stopped = self.stop(name);
        // Its persistent session at the broker goes too, before a new twin
        // of that name could open it: left there, it would queue the
        // device's messages for nobody, and hand that stale backlog to the
        // next twin so named. (Called on a blocking thread.)
        if let Some(spec) = &stopped
            && !self.config.shared_session
            && let Ok((broker, client_id)) = self.session_of(spec)
        {
            tokio::runtime::Handle::current().block_on(physical::forget_session(broker, client_id));
        }
        let was_here = stopped.is_some();
        let had_moved = lock(&self.moved).remove(name).is_some();
        if !was_here && !had_moved {
            return Err(NodeError::NotFound(name.to_string()));
        }
        if let Some(inbox) = &self.inbox {
            inbox.forget(name);
        }
        self.store
            .write_now(vec![
                Op::Forget {
                    name: name.to_string(),
                },
                Op::ClearInbox {
                    name: name.to_string(),
                },
            ])
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
            .ok_or_else(|| self.missing(name))
    }

    /// A twin's state and entanglement now; updates its gauges and logs a
    /// change of entanglement status.
    pub fn report(&self, name: &str) -> Result<TwinReport, NodeError> {
        let (shared, cpu) = lock(&self.twins)
            .get(name)
            .map(|h| (h.shared.clone(), h.cpu.clone()))
            .ok_or_else(|| self.missing(name))?;
        let (mut report, transition) = lock(&shared).report(name, physical::now_us());
        report.cpu = cpu.report();
        let label = TwinLabel {
            twin: name.to_string(),
        };
        self.metrics.cpu(&label, &report.cpu);
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

    /// A stream of the changes a twin applies from now on (also of a twin
    /// still arriving from another node).
    pub fn subscribe(&self, name: &str) -> Result<broadcast::Receiver<Change>, NodeError> {
        if let Some(hosted) = lock(&self.twins).get(name) {
            // Checked and taken under the twins' lock: concurrent
            // subscribers cannot both take the last place.
            let max = self.config.max_subscribers;
            if hosted.changes.subscribers() >= max {
                self.metrics
                    .requests_shed
                    .get_or_create(&crate::monitoring::ClassLabel { class: "stream" })
                    .inc();
                return Err(NodeError::Subscribers {
                    twin: name.to_string(),
                    max,
                });
            }
            return Ok(hosted.changes.subscribe());
        }
        self.subscribe_arriving(name)
            .ok_or_else(|| self.missing(name))
    }

    /// What a twin's model offers.
    pub fn description(&self, name: &str) -> Result<Arc<Description>, NodeError> {
        let shared = lock(&self.twins)
            .get(name)
            .map(|h| h.shared.clone())
            .ok_or_else(|| self.missing(name))?;
        let description = lock(&shared).description.clone();
        Ok(description)
    }

    /// A property's history between two PT timestamps (ms): the oldest
    /// `limit` points oldest first, or the newest newest first.
    pub fn history(
        &self,
        name: &str,
        property: &str,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<Point>, NodeError> {
        if !lock(&self.twins).contains_key(name) {
            return Err(self.missing(name));
        }
        // History is written behind the twin; include everything applied
        // until now.
        self.store
            .flush()
            .and_then(|()| {
                self.store
                    .history(name, property, from_ms, to_ms, limit, newest_first)
            })
            .map_err(|e| NodeError::Refused(format!("reading the history: {e:#}")))
    }

    /// The fuel one CPU-second burns on this node (measured at start or
    /// given by `--fuel-per-cpu-second`).
    pub fn fuel_per_cpu_second(&self) -> u64 {
        self.fuel_per_cpu_second
    }

    /// Cores all twins used together over the last few seconds.
    pub fn cpu_in_use(&self) -> f64 {
        lock(&self.twins)
            .values()
            .map(|h| h.cpu.recent_cores())
            .sum()
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
            .ok_or_else(|| self.missing(name))?;
        let (reply, answer) = oneshot::channel();
        let job = Job::Act(Box::new(ActJob {
            name: action.to_string(),
            input,
            reply,
        }));
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
            .map_err(|_| self.missing(name))?
            .map_err(NodeError::Refused)
    }
}
