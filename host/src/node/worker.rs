//! A twin's worker: one task that owns the twin's component instances and
//! applies, in order, what its queue brings — PT messages, actions,
//! reconfigurations. Nothing else touches the instances, so the state
//! machine needs no locks and data flows one way: physical → adapter →
//! model → state and entanglement → the shared view.
//!
//! Every applied message is journalled in the node's store, and its MQTT
//! acknowledgement is sent only once that write is durable; every
//! [`CHECKPOINT_EVERY`] messages (more for a large state) a checkpoint
//! replaces the journal. A guest
//! failure that poisons the instance is recovered from the last checkpoint
//! plus the messages applied since, replayed; the update that failed is
//! dropped and counted, and the twin goes on.
//!
//! A twin that gets no work for the node's `hibernate_after` sleeps: its
//! state is already durable as its last checkpoint, so the worker drops
//! its instances and keeps only that checkpoint; the next job restores it
//! (reads are served from the shared view and wake nothing, and the twin's
//! entanglement, measured there, goes on being measured while it sleeps).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::precopy::REPLAY_MAX;
use super::view::{Change, ChangeFeed, Shared};
use crate::checkpoint::{Checkpoint, GUEST_SECTION, ModelInfo};
use crate::monitoring::{Metrics, TwinLabel};
use crate::physical::doorbell::{Doorbell, Listener, Ring};
use crate::physical::{Inbound, Link, now_us};
use crate::runtime::cpu::CpuShare;
use crate::runtime::{
    ActionOutcome, AdapterComponent, AdapterInstance, Description, GuestError, Limits,
    ModelComponent, Runtime, SharedAdapter, Turn, Update,
};
use crate::store::{Op, Store};
use crate::twin::entanglement::Timing;
use crate::twin::{Applied, RestorePolicy, Twin, TwinState};

/// Messages applied between two checkpoints, at least.
const CHECKPOINT_EVERY: usize = 256;
/// Checkpoints of a large state are further apart, so that they write about
/// this much per message applied at most: every 256 messages, a 16 MiB twin
/// fed 1,000 updates/s would write about 62 MiB/s (16 MiB × 1000 / 256),
/// and a handover would often wait for one of those writes to finish.
const CHECKPOINT_BYTES_PER_MESSAGE: usize = 1024;

/// Work for a twin's worker.
///
/// Every variant holds at most a pointer: each twin's queue is made with a
/// block of 32 slots of the largest job, idle or not.
pub enum Job {
    /// A message from the PT.
    Message(Box<Inbound>),
    /// An action asked for by an application.
    Act(Box<ActJob>),
    /// Stop: the twin is being replaced or deleted.
    Stop,
    /// A checkpoint of the twin as it is now; where it goes.
    Checkpoint(oneshot::Sender<Result<Checkpoint, String>>),
    /// A checkpoint that goes ahead of a handover, the *base*: from then on
    /// the worker keeps the messages it applies, so that the handover may
    /// send them for the target to replay on the base (see [`Handed`]).
    Base(oneshot::Sender<Result<Checkpoint, String>>),
    /// Apply messages until `until` (or, without one, nothing more), then
    /// checkpoint, answer and stop: the twin moves elsewhere. Not reaching
    /// it by the deadline answers an error and the twin goes on.
    Handover(Box<Handover>),
    /// Replace the model by this component, keeping the state.
    Swap(Box<SwapJob>),
    /// A new model configuration.
    Reconfigure(Box<ReconfigureJob>),
}

/// An action asked for by an application.
pub struct ActJob {
    /// The action's name.
    pub name: String,
    /// Its input.
    pub input: Value,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ActionOutcome, String>>,
}

/// A hot swap.
pub struct SwapJob {
    /// The new model, compiled.
    pub model: ModelComponent,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<SwapReport, String>>,
}

/// A new model configuration.
pub struct ReconfigureJob {
    /// The configuration.
    pub config: Value,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Everything a worker needs.
pub struct Worker {
    pub name: String,
    pub runtime: Runtime,
    pub model: ModelComponent,
    pub adapter: AdapterComponent,
    /// The node's instances of the adapter, when its twins share them
    /// (`--share-adapters`); else the twin makes its own as it wakes.
    pub shared_adapter: Option<Arc<SharedAdapter>>,
    pub limits: Limits,
    /// The twin's CPU share, which every instance it runs is charged to.
    pub cpu: CpuShare,
    pub link: Link,
    pub command_topic: Option<String>,
    /// The largest payload the twin takes (for the message that says why
    /// a larger one was dropped).
    pub max_payload: u64,
    pub shared: Arc<Mutex<Shared>>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub changes: ChangeFeed,
    pub history: HistoryPolicy,
    /// The last checkpoint, to recover from if the instance fails (given
    /// at start when the node already stored it)…
    pub recovery: Option<Arc<Checkpoint>>,
    /// …followed by the messages applied since.
    pub since_recovery: Vec<Vec<Update>>,
    /// The messages applied since the base of a handover went ahead, while
    /// they replay on it to this state: not after anything else changed the
    /// guest (an action, a reconfiguration, a swap, a recovery), nor past
    /// [`REPLAY_MAX`].
    pub since_base: Option<Vec<Vec<Update>>>,
    /// Idle this long, the twin hibernates; `None` keeps it awake.
    pub hibernate_after: Option<std::time::Duration>,
    /// What rings the twin asleep, which then parks its session; `None`
    /// keeps the session connected.
    pub bell: Option<Bell>,
    /// Where its messages wait in the node's inbox, when they come on a
    /// shared session.
    pub mailbox: Option<Arc<super::inbox::Mailbox>>,
}

/// Where a sleeping twin listens for messages while its session is parked.
pub struct Bell {
    /// Its broker's doorbell.
    pub doorbell: Doorbell,
    /// The topics it subscribes to.
    pub topics: Vec<String>,
}

/// How a worker starts its twin. (Made once per twin start, and gone
/// once the worker has its instance, if any: the size difference between
/// its variants costs nothing worth a box.)
#[allow(clippy::large_enum_variant)]
pub enum Start {
    /// Awake, running this instance.
    Awake(Twin),
    /// Asleep: the twin is its stored checkpoint until a job wakes it.
    Asleep(Dormant),
}

/// A twin that starts asleep, and what the node shows of it meanwhile.
pub struct Dormant {
    /// Its state, the checkpoint's.
    pub state: TwinState,
    /// The model it runs.
    pub model: ModelInfo,
    /// What the model offers.
    pub description: Arc<Description>,
    /// Its stored checkpoint: its recovery point.
    pub checkpoint: Arc<Checkpoint>,
}

impl Start {
    /// The host's view of the twin.
    pub fn state(&self) -> &TwinState {
        match self {
            Start::Awake(twin) => twin.state(),
            Start::Asleep(dormant) => &dormant.state,
        }
    }

    /// The model it runs.
    pub fn model(&self) -> &ModelInfo {
        match self {
            Start::Awake(twin) => twin.model(),
            Start::Asleep(dormant) => &dormant.model,
        }
    }

    /// What the model offers.
    pub fn description(&self) -> &Arc<Description> {
        match self {
            Start::Awake(twin) => twin.description(),
            Start::Asleep(dormant) => &dormant.description,
        }
    }

    /// The checkpoint a sleeping twin is.
    pub fn checkpoint(&self) -> Option<Arc<Checkpoint>> {
        match self {
            Start::Awake(_) => None,
            Start::Asleep(dormant) => Some(dormant.checkpoint.clone()),
        }
    }
}

/// What `boxed` holds, its box freed at once: an async fn frees a box it
/// took by value, even emptied, only when it ends.
#[allow(clippy::boxed_local)] // taking the box is the point
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// The twin's instances, while it is awake. (Boxed: the worker's task,
/// which every twin keeps, asleep too, would otherwise keep room for it.)
struct Live {
    twin: Twin,
    adapter: Adapter,
}

/// The adapter a live twin decodes and encodes with.
enum Adapter {
    Own(AdapterInstance),
    Shared(Arc<SharedAdapter>),
}

/// What the queue brought next. (Not boxed: it lives for one turn of the
/// loop, and a box would cost every message an allocation.)
#[allow(clippy::large_enum_variant)]
enum Next {
    Job(Job),
    /// The queue closed: the twin is gone.
    Closed,
    /// The pending handover's deadline passed.
    Late,
    /// Nothing came for the hibernation delay.
    Idle,
    /// The doorbell rang for the twin asleep: something waits, or may
    /// wait, for its parked session.
    Rung(Ring),
}

/// The next job, or why none came: the pending handover's deadline, else
/// the idle delay, bounds the wait, and the doorbell a parked session
/// listens at may end it.
async fn next(
    jobs: &mut mpsc::Receiver<Job>,
    handover: Option<Instant>,
    idle: Option<std::time::Duration>,
    parked: Option<&Listener>,
) -> Next {
    let Some(listener) = parked else {
        return next_job(jobs, handover, idle).await;
    };
    tokio::select! {
        biased;
        next = next_job(jobs, handover, idle) => next,
        ring = listener.rung() => Next::Rung(ring),
    }
}

/// The next job, or why none came before the handover's deadline or the
/// idle delay.
async fn next_job(
    jobs: &mut mpsc::Receiver<Job>,
    handover: Option<Instant>,
    idle: Option<std::time::Duration>,
) -> Next {
    let received = |job: Option<Job>| job.map_or(Next::Closed, Next::Job);
    match (handover, idle) {
        (Some(deadline), _) => tokio::time::timeout_at(deadline.into(), jobs.recv())
            .await
            .map_or(Next::Late, received),
        (None, Some(idle)) => tokio::time::timeout(idle, jobs.recv())
            .await
            .map_or(Next::Idle, received),
        (None, None) => received(jobs.recv().await),
    }
}

impl Job {
    /// Answers a job that cannot be carried out (its twin could not be
    /// woken): a message stays unacknowledged, so the broker keeps it.
    fn refuse(self, why: &str) {
        let why = why.to_string();
        match self {
            Job::Message(_) | Job::Stop => {}
            Job::Act(act) => drop(act.reply.send(Err(why))),
            Job::Checkpoint(reply) | Job::Base(reply) => drop(reply.send(Err(why))),
            Job::Handover(handover) => drop(handover.reply.send(Err(why))),
            Job::Swap(swap) => drop(swap.reply.send(Err(why))),
            Job::Reconfigure(job) => drop(job.reply.send(Err(why))),
        }
    }
}

/// A handover: the twin moves once it has applied `until`.
pub struct Handover {
    /// The last sequence number this node must apply.
    pub until: Option<u64>,
    /// When to give up waiting for it.
    pub deadline: Instant,
    /// Whether the target holds the base restored and may replay what was
    /// applied since, rather than restore a snapshot.
    pub replay: bool,
    /// Where the twin's final state goes.
    pub reply: oneshot::Sender<Result<Handed, String>>,
}

/// A twin's final state on the node it leaves.
pub enum Handed {
    /// Its checkpoint.
    Checkpoint(Checkpoint),
    /// Its host-side state (a checkpoint without a guest snapshot) and
    /// every message it applied since the base went ahead, in order: the
    /// guest's state is the base's with those replayed. No snapshot is
    /// taken, so the pause no longer grows with the state.
    Replay {
        host: Checkpoint,
        messages: Vec<Vec<Update>>,
    },
}

impl Handover {
    fn reached(&self, last_seq: Option<u64>) -> bool {
        Self::reaches(self.until, last_seq)
    }

    /// Whether a twin at `last_seq` has applied everything up to `until`.
    fn reaches(until: Option<u64>, last_seq: Option<u64>) -> bool {
        until.is_none_or(|until| last_seq.unwrap_or(0) >= until)
    }

    fn fail(self, last_seq: Option<u64>) {
        let _ = self.reply.send(Err(format!(
            "the twin did not reach update {} in time (it is at {}); it stays here",
            self.until.unwrap_or(0),
            last_seq.map_or("none".into(), |s| s.to_string())
        )));
    }
}

/// What a hot swap did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SwapReport {
    /// The model before.
    pub from: crate::checkpoint::ModelInfo,
    /// The model now.
    pub to: crate::checkpoint::ModelInfo,
    /// How long updates waited: checkpoint of the old instance and restore
    /// into the new one, µs.
    pub pause_us: u64,
}

/// How long a twin's history is kept.
#[derive(Debug, Clone, Copy)]
pub struct HistoryPolicy {
    /// Points older than this are dropped.
    pub retention: std::time::Duration,
    /// At most this many rows are kept.
    pub max_rows: u64,
}

impl Worker {
    fn label(&self) -> TwinLabel {
        TwinLabel {
            twin: self.name.clone(),
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, error: &str) {
        tracing::warn!(twin = %self.name, "{error}");
        self.metrics.guest_errors.get_or_create(&self.label()).inc();
        let mut shared = self.shared();
        shared.guest_errors += 1;
        shared.last_error = Some(error.to_string());
    }

    /// A fresh adapter instance. (The future owns what it needs: a worker
    /// is not `Sync`, so no `&self` may be held across an await.)
    fn new_adapter(
        &self,
    ) -> impl Future<Output = anyhow::Result<AdapterInstance>> + Send + 'static {
        let (runtime, adapter) = (self.runtime.clone(), self.adapter.clone());
        let (name, limits, cpu) = (self.name.clone(), self.limits, self.cpu.clone());
        async move {
            let mut instance = AdapterInstance::new(&runtime, &adapter, &name, limits).await?;
            instance.set_cpu(cpu);
            Ok(instance)
        }
    }

    /// A twin's instances, its adapter created beside it (or the node's
    /// shared one), both charged to the twin's CPU share.
    async fn live(&mut self, mut twin: Twin) -> anyhow::Result<Box<Live>> {
        twin.set_cpu(self.cpu.clone());
        let adapter = match &self.shared_adapter {
            Some(shared) => Adapter::Shared(shared.clone()),
            None => Adapter::Own(self.new_adapter().await?),
        };
        Ok(Box::new(Live { twin, adapter }))
    }

    /// The twin's turn on a shared adapter.
    fn turn(&self) -> Turn<'_> {
        Turn {
            twin: &self.name,
            limits: self.limits,
            cpu: &self.cpu,
        }
    }

    /// Decodes a message with the twin's adapter, a fresh one if its own
    /// failed before.
    async fn decode(
        &mut self,
        adapter: &mut Adapter,
        message: &Inbound,
    ) -> Result<Vec<Update>, GuestError> {
        match adapter {
            Adapter::Own(own) => {
                if own.is_poisoned() {
                    match self.new_adapter().await {
                        Ok(fresh) => *own = fresh,
                        Err(e) => self.failed(&format!("{e:#}")),
                    }
                }
                own.decode(&message.topic, &message.payload).await
            }
            Adapter::Shared(shared) => {
                shared
                    .decode(&self.turn(), &message.topic, &message.payload)
                    .await
            }
        }
    }

    /// Serves the queue until it closes, a stop, or a handover. Runs on the
    /// node's twin runtime, whose threads exist for this CPU-bound work: a
    /// call into the guest is awaited, yielding the thread to other twins
    /// at every epoch tick, and bounded by its fuel and deadline.
    ///
    /// The worker and its instance (`None` for a twin that starts asleep)
    /// come boxed: an async fn's future keeps its arguments twice, and
    /// every twin keeps this one.
    pub async fn run(mut self: Box<Self>, awake: Option<Box<Twin>>, mut jobs: mpsc::Receiver<Job>) {
        let mut live = match awake {
            Some(twin) => {
                let mut live = match Box::pin(self.live(unbox(twin))).await {
                    Ok(live) => live,
                    Err(e) => return self.failed(&format!("{e:#}")),
                };
                // The starting point, durable before the first message: a
                // new twin, or a resumed one with its journal replayed. A
                // twin that arrived from another node brings its own (the
                // node stored the bundle).
                if self.recovery.is_none() {
                    Box::pin(self.new_recovery_point(&mut live.twin, Vec::new(), None)).await;
                }
                Some(live)
            }
            // The node's view counts it asleep already.
            None => None,
        };
        let mut handover: Option<Handover> = None;
        // Where the twin listens while its session is parked (asleep). A
        // twin resumed asleep starts there, once it has collected.
        let mut parked: Option<Listener> = match live {
            Some(_) => None,
            None => Box::pin(self.collect()).await,
        };
        // Messages read from the inbox, applied before the queue's next.
        let mut backlog = std::collections::VecDeque::new();
        loop {
            // Behind first, then the queue empty: once the twin is behind,
            // nothing more enters its queue, so what it holds is older than
            // the inbox's and goes first. (The other way round, the queue
            // could take messages between the two looks.)
            if backlog.is_empty()
                && let Some(mailbox) = self.mailbox.as_ref().filter(|m| m.is_behind())
                && jobs.is_empty()
            {
                backlog.extend(mailbox.backlog(&self.store).await);
                self.metrics.inbox_read.inc_by(backlog.len() as u64);
                // More came while it read, in the inbox alone: nothing
                // would bring it through the queue.
                if backlog.is_empty() && mailbox.is_behind() {
                    continue;
                }
            }
            // Idle, an awake twin sleeps, and a sleeping one parks its session.
            let idle = self
                .hibernate_after
                .filter(|_| live.is_some() || (self.bell.is_some() && parked.is_none()));
            let deadline = handover.as_ref().map(|h| h.deadline);
            let came = match backlog.pop_front() {
                Some(message) => Next::Job(Job::Message(message)),
                None => next(&mut jobs, deadline, idle, parked.as_ref()).await,
            };
            let job = match came {
                Next::Job(job) => job,
                // Something waits for the twin: it wakes while its session
                // connects again to fetch it, rather than after, so a
                // wake-up costs the longer of the two, not their sum. (Not
                // for messages over its largest payload, which wake nothing.)
                Next::Rung(Ring::Message { smallest }) => {
                    self.unpark(&mut parked);
                    if live.is_none() && smallest as u64 <= self.max_payload {
                        match Box::pin(self.wake()).await {
                            Ok(woken) => live = Some(woken),
                            // The message's own turn wakes it again, and
                            // says why if it cannot.
                            Err(e) => {
                                tracing::debug!(twin = %self.name, "waking on a ring: {e:#}")
                            }
                        }
                    }
                    continue;
                }
                // The doorbell was away: the session collects in its turn,
                // still parked as far as the twin goes.
                Next::Rung(Ring::Maybe) => {
                    self.link.collect();
                    continue;
                }
                Next::Closed => break,
                Next::Late => {
                    let last_seq = live.as_ref().and_then(|l| l.twin.state().last_seq);
                    if let Some(h) = handover.take() {
                        h.fail(last_seq);
                    }
                    // The move is off: nothing will replay what follows.
                    self.since_base = None;
                    continue;
                }
                Next::Idle => {
                    if let Some(awake) = live.take() {
                        live = Box::pin(self.hibernate(awake)).await;
                    }
                    if live.is_none() && parked.is_none() {
                        parked = Box::pin(self.park()).await;
                    }
                    continue;
                }
            };
            self.metrics
                .queue_depth
                .get_or_create(&self.label())
                .set(jobs.len() as i64);
            let job = match (job, &self.recovery, &live) {
                (Job::Stop, ..) => break,
                // Asleep, the twin is its recovery point: no need to wake it.
                (Job::Checkpoint(reply), Some(recovery), None) => {
                    let _ = reply.send(Ok(recovery.as_ref().clone()));
                    continue;
                }
                (Job::Base(reply), Some(recovery), None) => {
                    self.since_base = Some(Vec::new());
                    let _ = reply.send(Ok(recovery.as_ref().clone()));
                    continue;
                }
                // Nor to hand it over, when that point is as far as the
                // target needs: the move's pause then has no restore and no
                // snapshot in it.
                (Job::Handover(handover), Some(recovery), None)
                    if Handover::reaches(handover.until, self.shared().state.last_seq) =>
                {
                    let _ = handover
                        .reply
                        .send(Ok(Handed::Checkpoint(recovery.as_ref().clone())));
                    break;
                }
                // A message over its maxPayload needs nothing of the twin,
                // awake or asleep: a flood of them wakes nothing.
                // (A session that brought one is connected: unparked, it
                // parks again once idle, as any other.)
                (Job::Message(message), ..) if message.oversized.is_some() => {
                    self.unpark(&mut parked);
                    self.drop_oversized(*message);
                    continue;
                }
                (job, ..) => job,
            };
            // What wakes the twin needs its session too.
            self.unpark(&mut parked);
            let awake = match live {
                Some(ref mut awake) => awake,
                None => match Box::pin(self.wake()).await {
                    Ok(woken) => live.insert(woken),
                    Err(e) => {
                        let why = format!("waking the twin: {e:#}");
                        self.failed(&why);
                        job.refuse(&why);
                        continue;
                    }
                },
            };
            if matches!(job, Job::Act(_) | Job::Reconfigure(_) | Job::Swap(_)) {
                // These change the guest outside the messages it applies.
                self.since_base = None;
            }
            match job {
                Job::Message(message) => Box::pin(self.on_message(awake, *message)).await,
                Job::Stop => break,
                Job::Act(act) => {
                    let ActJob { name, input, reply } = *act;
                    Box::pin(self.act(awake, &name, &input, reply)).await;
                }
                Job::Reconfigure(job) => {
                    let ReconfigureJob { config, reply } = *job;
                    let result = Box::pin(awake.twin.reconfigure(&config))
                        .await
                        .map_err(|e| e.to_string());
                    if result.is_ok() {
                        // The configuration is part of the state.
                        Box::pin(self.new_recovery_point(&mut awake.twin, Vec::new(), None)).await;
                    }
                    let _ = reply.send(result);
                }
                Job::Checkpoint(reply) => {
                    let checkpoint = Box::pin(awake.twin.checkpoint()).await;
                    let _ = reply.send(checkpoint.map_err(|e| format!("{e:#}")));
                }
                Job::Base(reply) => {
                    let checkpoint = Box::pin(awake.twin.checkpoint()).await;
                    self.since_base = checkpoint.is_ok().then(Vec::new);
                    let _ = reply.send(checkpoint.map_err(|e| format!("{e:#}")));
                }
                Job::Swap(swap) => {
                    let SwapJob { model, reply } = *swap;
                    let _ = reply.send(Box::pin(self.swap(&mut awake.twin, model)).await);
                }
                Job::Handover(h) => handover = Some(*h),
            }
            if let Some(h) = handover.take_if(|h| h.reached(awake.twin.state().last_seq)) {
                // The last state this node applies; the worker stops here.
                // (Should the move fail, the store's last checkpoint plus
                // its journal bring the twin back to this same state.)
                let handed = match self.since_base.take().filter(|_| h.replay) {
                    Some(messages) => awake
                        .twin
                        .host_checkpoint()
                        .map(|host| Handed::Replay { host, messages }),
                    None => Box::pin(awake.twin.checkpoint())
                        .await
                        .map(Handed::Checkpoint),
                };
                let _ = h.reply.send(handed.map_err(|e| format!("{e:#}")));
                // The twin goes on elsewhere: its instances are freed off
                // the pause, which waits for this worker to end.
                super::free_later(live.take());
                break;
            }
        }
        // A twin stopped asleep leaves the node's count.
        self.set_asleep(false);
        self.link.release();
    }

    /// Lets an idle twin sleep: its state, made the recovery point if it
    /// is not already, is all that stays; its instances are dropped.
    /// Returns the twin still awake if that checkpoint could not be taken.
    async fn hibernate(&mut self, mut live: Box<Live>) -> Option<Box<Live>> {
        // A recovery point written by another build (the one the twin
        // arrived with from another node) would not restore into this one.
        let current = self.recovery.as_ref().is_some_and(|recovery| {
            self.since_recovery.is_empty()
                && recovery.model.component == live.twin.model().component
        });
        if !current {
            self.new_recovery_point(&mut live.twin, Vec::new(), None)
                .await;
            if !self.since_recovery.is_empty() || self.recovery.is_none() {
                return Some(live);
            }
        }
        drop(live);
        // A Vec keeps its capacity when cleared: up to a checkpoint
        // interval's worth of message slots per sleeping twin.
        self.since_recovery = Vec::new();
        self.set_asleep(true);
        tracing::debug!(twin = %self.name, "hibernating");
        None
    }

    /// Parks a sleeping twin's session, once its doorbell listens on its
    /// topics: from then on, what arrives for the twin waits at the broker
    /// and rings the doorbell. (Whatever the session received before it
    /// disconnected is still handled: a message wakes the twin, whose
    /// acknowledgement then goes nowhere, and the broker sends it again,
    /// dropped as a duplicate, once the session is back.) `None` when the
    /// session is not connected, or the doorbell cannot listen: the session
    /// then stays as it is until the twin is idle again.
    async fn park(&self) -> Option<Listener> {
        let bell = self.bell.as_ref()?;
        // Not before the session has connected again since it was rung:
        // the broker sends what waited for it right after connecting, and
        // parking first would leave that there with no ring to come for it.
        if !self.link.is_connected() {
            return None;
        }
        match bell.doorbell.listen(&bell.topics).await {
            Ok(listener) => {
                self.link.park();
                tracing::debug!(twin = %self.name, "session parked");
                Some(listener)
            }
            Err(e) => {
                tracing::warn!(twin = %self.name, "the session stays connected while the twin sleeps: {e:#}");
                None
            }
        }
    }

    /// Lets the session of a twin resumed asleep collect what its broker
    /// kept while the node was down, once the doorbell listens for the
    /// twin (so that nothing published after the collection goes
    /// unnoticed); the listener, `None` when the session was not waiting
    /// parked. Should the doorbell not listen, the session connects and
    /// stays so until the twin is idle.
    async fn collect(&self) -> Option<Listener> {
        if !self.link.is_parked() {
            return None;
        }
        let listening = match &self.bell {
            Some(bell) => bell.doorbell.listen(&bell.topics).await,
            None => Err(anyhow::anyhow!("the twin has no doorbell")),
        };
        match listening {
            Ok(listener) => {
                self.link.collect();
                Some(listener)
            }
            Err(e) => {
                tracing::warn!(twin = %self.name, "the session connects and stays so: {e:#}");
                self.link.unpark();
                None
            }
        }
    }

    /// Connects a parked session again (its doorbell stops listening for
    /// the twin).
    fn unpark(&self, parked: &mut Option<Listener>) {
        if parked.take().is_some() {
            self.link.unpark();
            tracing::debug!(twin = %self.name, "session unparked");
        }
    }

    /// Wakes a hibernating twin: its recovery point restored into a new
    /// instance, with whatever the journal holds after it replayed.
    async fn wake(&mut self) -> anyhow::Result<Box<Live>> {
        let started = Instant::now();
        let twin = self.restored().await?;
        let live = self.live(twin).await?;
        self.set_asleep(false);
        self.metrics
            .wake_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(twin = %self.name, took = ?started.elapsed(), "woken");
        Ok(live)
    }

    /// Marks the twin asleep or awake, in its view and the node's count.
    fn set_asleep(&self, asleep: bool) {
        let mut shared = self.shared();
        if shared.asleep != asleep {
            shared.asleep = asleep;
            self.metrics.hibernating.inc_by(if asleep { 1 } else { -1 });
        }
    }

    /// Applies one PT message and makes it durable; its acknowledgement
    /// waits for that.
    async fn on_message(&mut self, live: &mut Live, message: Inbound) {
        let span = message.span.clone();
        span.record("twin", self.name.as_str());
        self.handle_message(live, message).instrument(span).await;
    }

    /// [`Worker::on_message`], inside the message's span.
    async fn handle_message(&mut self, live: &mut Live, message: Inbound) {
        let Live { twin, adapter } = live;
        let mut ops = Vec::new();
        let decoded = self
            .decode(adapter, &message)
            .instrument(crate::trace_span!("adapter.decode"))
            .await;
        match decoded {
            Ok(updates) => {
                let applied = self
                    .apply(twin, &updates, message.received_us)
                    .instrument(crate::trace_span!("model.apply", updates = updates.len()))
                    .await;
                if let Some(op) = applied {
                    ops.push(op);
                    self.keep_for_replay(&updates);
                    self.since_recovery.push(updates);
                }
            }
            Err(e) => self.failed(&format!("dropping a message on {}: {e}", message.topic)),
        }
        ops.extend(self.taken(&message));
        let ack = self.acknowledgement(message);
        if self.since_recovery.len() >= self.checkpoint_interval() {
            self.new_recovery_point(twin, ops, None).await;
            // The checkpoint's writes carry this message's too.
            self.store.write(Vec::new(), ack);
        } else {
            self.store.write(ops, ack);
        }
    }

    /// Keeps an applied message for the handover, while one may replay it.
    fn keep_for_replay(&mut self, updates: &[Update]) {
        if let Some(since) = &mut self.since_base {
            if since.len() < REPLAY_MAX {
                since.push(updates.to_vec());
            } else {
                self.since_base = None;
            }
        }
    }

    /// Drops a message over the twin's maxPayload, whose payload the
    /// session already dropped: counted, said, and acknowledged in its
    /// turn, after what was written before, so the broker forgets it.
    fn drop_oversized(&self, message: Inbound) {
        let size = message.oversized.unwrap_or_default();
        message.span.record("twin", self.name.as_str());
        self.metrics.oversized.get_or_create(&self.label()).inc();
        self.failed(&format!(
            "dropping a message of {} on {}: over the twin's maxPayload of {}",
            bytesize::ByteSize(size as u64).display().iec(),
            message.topic,
            bytesize::ByteSize(self.max_payload).display().iec()
        ));
        let taken = self.taken(&message).into_iter().collect();
        self.store.write(taken, self.acknowledgement(message));
    }

    /// What removes `message` from the node's inbox, in the transaction
    /// that journals it, when it was kept there.
    fn taken(&self, message: &Inbound) -> Option<Op> {
        let key = message.inbox?;
        if let Some(mailbox) = &self.mailbox {
            mailbox.taken();
        }
        Some(Op::Taken {
            name: self.name.clone(),
            key,
        })
    }

    /// What acknowledges `message` once the writes queued with it are
    /// durable (nothing for a QoS 0 message that is not traced).
    fn acknowledgement(&self, message: Inbound) -> Option<crate::store::Done> {
        let link = message.via.unwrap_or_else(|| self.link.clone());
        // The commit span lasts until the write is durable (queueing
        // included); the acknowledgement, a span of its own, follows it.
        let traced = !message.span.is_disabled();
        let commit = crate::trace_span!("store.commit");
        let (span, packet, connection) = (message.span, message.packet, message.connection);
        (packet.is_some() || traced).then(|| {
            Box::new(move |written: Result<(), String>| {
                drop(commit);
                if let (Ok(()), Some(packet)) = (written, packet) {
                    let _acking = crate::trace_span!(parent: &span, "mqtt.ack").entered();
                    link.ack(packet, connection);
                }
            }) as crate::store::Done
        })
    }

    /// Messages to apply between two checkpoints, by the size of the last.
    fn checkpoint_interval(&self) -> usize {
        let state = self
            .recovery
            .as_ref()
            .and_then(|c| c.section(GUEST_SECTION))
            .map_or(0, <[u8]>::len);
        CHECKPOINT_EVERY.max(state / CHECKPOINT_BYTES_PER_MESSAGE)
    }

    /// Takes a checkpoint, makes it durable together with `ops`, and
    /// recovers from it (plus what follows) if the instance fails.
    /// `done` is told once they are durable.
    async fn new_recovery_point(
        &mut self,
        twin: &mut Twin,
        mut ops: Vec<Op>,
        done: Option<crate::store::Done>,
    ) -> Option<Arc<Checkpoint>> {
        let checkpoint = self.checkpoint(twin, &mut ops).await;
        self.store.write(ops, done);
        if let Some(c) = &checkpoint {
            self.recovery = Some(c.clone());
            self.since_recovery.clear();
        }
        checkpoint
    }

    /// Replaces the model between two updates: the old instance's
    /// checkpoint is restored into the new component; if that fails, the
    /// old instance goes on as if nothing happened.
    async fn swap(&mut self, twin: &mut Twin, model: ModelComponent) -> Result<SwapReport, String> {
        let started = Instant::now();
        let checkpoint = twin.checkpoint().await.map_err(|e| format!("{e:#}"))?;
        let mut swapped = Twin::restore(
            &self.runtime,
            &model,
            &checkpoint,
            self.limits,
            RestorePolicy::Upgrade,
        )
        .await
        .map_err(|e| format!("the new model refused the twin's state: {e:#}"))?;
        swapped.set_cpu(self.cpu.clone());
        let from = twin.model().clone();
        *twin = swapped;
        self.model = model;
        let pause = started.elapsed();
        {
            let mut shared = self.shared();
            shared.model = twin.model().clone();
            shared.description = twin.description().clone();
        }
        self.new_recovery_point(twin, Vec::new(), None).await;
        tracing::info!(twin = %self.name, from = %from.component, to = %twin.model().component, ?pause, "model swapped");
        Ok(SwapReport {
            from,
            to: twin.model().clone(),
            pause_us: u64::try_from(pause.as_micros()).unwrap_or(u64::MAX),
        })
    }

    /// Takes a checkpoint and adds its store writes (checkpoint, journal
    /// truncation, history pruning) to `ops`.
    async fn checkpoint(&mut self, twin: &mut Twin, ops: &mut Vec<Op>) -> Option<Arc<Checkpoint>> {
        match twin.checkpoint().await {
            Ok(checkpoint) => {
                let checkpoint = Arc::new(checkpoint);
                let retention_ms =
                    u64::try_from(self.history.retention.as_millis()).unwrap_or(u64::MAX);
                ops.push(Op::Checkpoint {
                    name: self.name.clone(),
                    checkpoint: checkpoint.clone(),
                    through_seq: twin.state().last_seq,
                });
                ops.push(Op::Prune {
                    name: self.name.clone(),
                    before_ms: (now_us() / 1000).saturating_sub(retention_ms),
                    max_rows: self.history.max_rows,
                });
                Some(checkpoint)
            }
            Err(e) => {
                self.failed(&format!("{e:#}"));
                None
            }
        }
    }

    /// Applies one PT message; if it changed the state, returns the store
    /// write that records it.
    async fn apply(&mut self, twin: &mut Twin, updates: &[Update], received_us: u64) -> Option<Op> {
        let update = updates.first()?;
        let started = Instant::now();
        let timing = Timing {
            received_us,
            started_us: now_us(),
        };
        let previous_seq = twin.state().last_seq;
        match twin.apply_message(updates).await {
            Ok((Applied::Changed(effects), refused)) => {
                for error in refused {
                    self.failed(&error.to_string());
                }
                let committed_us = now_us();
                let label = self.label();
                self.metrics.updates.get_or_create(&label).inc();
                self.metrics.fuel.get_or_create(&label).inc_by(effects.fuel);
                self.metrics
                    .model_seconds
                    .get_or_create(&label)
                    .observe(started.elapsed().as_secs_f64());
                // Applied although numbered at or below the last one: the
                // device restarted its count (see `Twin::duplicate_of`).
                let restarted = previous_seq.filter(|&previous| update.seq <= previous);
                if let Some(previous) = restarted {
                    tracing::warn!(twin = %self.name, previous, seq = update.seq, "the device restarted its sequence numbers");
                    self.metrics.sequence_restarts.get_or_create(&label).inc();
                }
                let mut shared = self.shared();
                shared.state = twin.state().clone();
                if let Some(previous) = restarted {
                    shared
                        .entanglement
                        .restarted(previous, update.seq, committed_us);
                }
                let timeliness_us =
                    shared
                        .entanglement
                        .record(update.seq, update.ts_ms, timing, committed_us);
                drop(shared);
                self.metrics
                    .timeliness
                    .get_or_create(&label)
                    .observe(timeliness_us as f64 / 1e6);
                for (event, data) in &effects.events {
                    tracing::info!(twin = %self.name, seq = update.seq, %event, %data, "event");
                }
                let change = Change::new(
                    update.seq,
                    update.ts_ms,
                    committed_us / 1000,
                    effects.changes,
                    effects.events,
                );
                let op = Op::Applied {
                    name: self.name.clone(),
                    seq: update.seq,
                    ts_ms: update.ts_ms,
                    updates: updates.to_vec(),
                    changes: change.changes.clone(),
                };
                let _delivering =
                    crate::trace_span!("changes.publish", subscribers = self.changes.subscribers())
                        .entered();
                self.changes.publish(change);
                Some(op)
            }
            Ok((Applied::Duplicate { .. }, _)) => {
                self.metrics.duplicates.get_or_create(&self.label()).inc();
                None
            }
            Err(error) => {
                self.failed(&error.to_string());
                if error.failure.poisons() {
                    self.recover(twin, &error).await;
                }
                None
            }
        }
    }

    /// Rebuilds the twin from the last checkpoint and the updates applied
    /// since, after the instance failed.
    async fn recover(&mut self, twin: &mut Twin, error: &GuestError) {
        // Rebuilt, the state is no longer one the base replays to for sure.
        self.since_base = None;
        self.shared().entanglement.set_available(false, now_us());
        match self.restored().await {
            Ok(restored) => {
                *twin = restored;
                tracing::info!(twin = %self.name, replayed = self.since_recovery.len(), "recovered from the last checkpoint");
            }
            Err(e) => self.failed(&format!("cannot recover after `{error}`: {e:#}")),
        }
        self.shared().entanglement.set_available(true, now_us());
    }

    /// The twin as of now, rebuilt from its recovery point and the messages
    /// applied since (replayed; a failing one ends the replay, counted).
    async fn restored(&mut self) -> anyhow::Result<Twin> {
        let from = self
            .recovery
            .clone()
            .context("no checkpoint to restore the twin from")?;
        let mut twin = Twin::restore(
            &self.runtime,
            &self.model,
            &from,
            self.limits,
            RestorePolicy::SameComponent,
        )
        .await?;
        twin.set_cpu(self.cpu.clone());
        for message in &self.since_recovery {
            if let Err(e) = twin.apply_message(message).await {
                self.failed(&format!("replay after recovery failed: {e}"));
                break;
            }
        }
        Ok(twin)
    }

    /// Carries out an action and answers `reply` once what it changed is
    /// durable: an action may change the twin's state (WIT 0.2.0), outside
    /// the journal of PT messages, so a checkpoint records it.
    async fn act(
        &mut self,
        live: &mut Live,
        name: &str,
        input: &Value,
        reply: oneshot::Sender<Result<ActionOutcome, String>>,
    ) {
        let outcome = match live.twin.act(name, input).await {
            Ok(outcome) => outcome,
            Err(e) => {
                if e.failure.poisons() {
                    self.failed(&e.to_string());
                    self.recover(&mut live.twin, &e).await;
                }
                let _ = reply.send(Err(e.to_string()));
                return;
            }
        };
        if !outcome.changes.is_empty() || !outcome.events.is_empty() {
            self.shared().state = live.twin.state().clone();
            for (event, data) in &outcome.events {
                tracing::info!(twin = %self.name, action = name, %event, %data, "event");
            }
            let now_ms = now_us() / 1000;
            self.changes.publish(Change::new(
                live.twin.state().last_seq.unwrap_or(0),
                now_ms,
                now_ms,
                outcome.changes.clone(),
                outcome.events.clone(),
            ));
        }
        let sent = self.send_commands(&mut live.adapter, &outcome).await;
        let answer = sent.map(|()| outcome);
        let done: crate::store::Done = Box::new(move |written| {
            let _ = reply.send(written.and(answer));
        });
        self.new_recovery_point(&mut live.twin, Vec::new(), Some(done))
            .await;
    }

    /// Encodes an action's commands and sends them to the device.
    async fn send_commands(
        &mut self,
        adapter: &mut Adapter,
        outcome: &ActionOutcome,
    ) -> Result<(), String> {
        if !outcome.commands.is_empty() {
            let topic = self
                .command_topic
                .as_deref()
                .ok_or("the action produced commands, but the spec has no physical.commandTopic")?;
            for (command, payload) in &outcome.commands {
                let bytes = match adapter {
                    Adapter::Own(own) => own.encode(command, payload).await,
                    Adapter::Shared(shared) => shared.encode(&self.turn(), command, payload).await,
                }
                .map_err(|e| e.to_string())?;
                self.link.send(topic, bytes).map_err(|e| format!("{e:#}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Every twin's job queue is made with a block of 32 slots: a job
    /// that carries a message or a model inline makes that 5.9 KiB a twin,
    /// one that carries an action's name and input 2 KiB.
    #[test]
    fn a_job_is_small() {
        assert!(size_of::<super::Job>() <= 16, "{}", size_of::<super::Job>());
    }
}
