//! A twin's worker: one task that owns the twin's component instances and
//! applies, in order, what its queue brings — PT messages, actions,
//! reconfigurations. Nothing else touches the instances, so the state
//! machine needs no locks and data flows one way: physical → adapter →
//! model → state and entanglement → the shared view.
//!
//! Every applied message is journalled in the node's store, and its MQTT
//! acknowledgement is sent only once that write is durable; every
//! [`CHECKPOINT_EVERY`] messages a checkpoint replaces the journal. A guest
//! failure that poisons the instance is recovered from the last checkpoint
//! plus the messages applied since, replayed; the update that failed is
//! dropped and counted, and the twin goes on.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::view::{Change, EventView, Shared};
use crate::checkpoint::Checkpoint;
use crate::monitoring::{Metrics, TwinLabel};
use crate::physical::{Inbound, Link, now_us};
use crate::runtime::{
    ActionOutcome, AdapterComponent, AdapterInstance, GuestError, Limits, ModelComponent, Runtime,
    Update,
};
use crate::store::{Op, Store};
use crate::twin::{Applied, RestorePolicy, Twin};

/// Messages applied between two checkpoints.
const CHECKPOINT_EVERY: usize = 256;

/// Work for a twin's worker.
pub enum Job {
    /// A message from the PT.
    Message(Inbound),
    /// An action asked for by an application.
    Act {
        /// The action's name.
        name: String,
        /// Its input.
        input: Value,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<ActionOutcome, String>>,
    },
    /// Stop: the twin is being replaced or deleted.
    Stop,
    /// A new model configuration.
    Reconfigure {
        /// The configuration.
        config: Value,
        /// Where the result goes.
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Everything a worker needs.
pub struct Worker {
    pub name: String,
    pub runtime: Runtime,
    pub model: ModelComponent,
    pub adapter: AdapterComponent,
    pub limits: Limits,
    pub twin: Twin,
    pub link: Link,
    pub command_topic: Option<String>,
    pub shared: Arc<Mutex<Shared>>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub changes: broadcast::Sender<Change>,
    pub history: HistoryPolicy,
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

    fn new_adapter(&self) -> anyhow::Result<AdapterInstance> {
        AdapterInstance::new(&self.runtime, &self.adapter, &self.name, self.limits)
    }

    /// Serves the queue until it closes. Runs on the node's twin runtime,
    /// whose threads exist for this CPU-bound work: a call into the guest
    /// runs inline, bounded by its fuel and deadline.
    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut adapter = match self.new_adapter() {
            Ok(adapter) => adapter,
            Err(e) => return self.failed(&format!("{e:#}")),
        };
        // The starting point, durable before the first message: a new twin,
        // or a resumed one with its journal replayed.
        let mut ops = Vec::new();
        let mut checkpoint = self.checkpoint(&mut ops);
        self.store.write(ops, None);
        let mut since_checkpoint: Vec<Vec<Update>> = Vec::new();
        while let Some(job) = jobs.recv().await {
            self.metrics
                .queue_depth
                .get_or_create(&self.label())
                .set(jobs.len() as i64);
            match job {
                Job::Message(message) => {
                    let mut ops = Vec::new();
                    if adapter.is_poisoned() {
                        match self.new_adapter() {
                            Ok(fresh) => adapter = fresh,
                            Err(e) => self.failed(&format!("{e:#}")),
                        }
                    }
                    match adapter.decode(&message.topic, &message.payload) {
                        Ok(updates) => {
                            if let Some(op) =
                                self.apply(&updates, checkpoint.as_ref(), &since_checkpoint)
                            {
                                ops.push(op);
                                since_checkpoint.push(updates);
                            }
                        }
                        Err(e) => {
                            self.failed(&format!("dropping a message on {}: {e}", message.topic))
                        }
                    }
                    if since_checkpoint.len() >= CHECKPOINT_EVERY
                        && let Some(c) = self.checkpoint(&mut ops)
                    {
                        checkpoint = Some(c);
                        since_checkpoint.clear();
                    }
                    // Acknowledged only once the message's effects (or its
                    // refusal for good) are durable.
                    let ack = message.packet.map(|packet| {
                        let link = self.link.clone();
                        Box::new(move |written: Result<(), String>| {
                            if written.is_ok() {
                                link.ack(&packet);
                            }
                        }) as crate::store::Done
                    });
                    self.store.write(ops, ack);
                }
                Job::Stop => break,
                Job::Act { name, input, reply } => {
                    let outcome = self.act(&mut adapter, &name, &input);
                    let _ = reply.send(outcome);
                }
                Job::Reconfigure { config, reply } => {
                    let result = self.twin.reconfigure(&config).map_err(|e| e.to_string());
                    if result.is_ok() {
                        // The configuration is part of the state: start a
                        // new recovery point.
                        let mut ops = Vec::new();
                        if let Some(c) = self.checkpoint(&mut ops) {
                            checkpoint = Some(c);
                            since_checkpoint.clear();
                        }
                        self.store.write(ops, None);
                    }
                    let _ = reply.send(result);
                }
            }
        }
        self.link.close();
    }

    /// Takes a checkpoint and adds its store writes (checkpoint, journal
    /// truncation, history pruning) to `ops`.
    fn checkpoint(&mut self, ops: &mut Vec<Op>) -> Option<Checkpoint> {
        let taken = self.twin.checkpoint().and_then(|c| Ok((c.to_bytes()?, c)));
        match taken {
            Ok((bundle, checkpoint)) => {
                let retention_ms =
                    u64::try_from(self.history.retention.as_millis()).unwrap_or(u64::MAX);
                ops.push(Op::Checkpoint {
                    name: self.name.clone(),
                    bundle,
                    through_seq: self.twin.state().last_seq,
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
    fn apply(
        &mut self,
        updates: &[Update],
        checkpoint: Option<&Checkpoint>,
        replay: &[Vec<Update>],
    ) -> Option<Op> {
        let update = updates.first()?;
        let started = Instant::now();
        match self.twin.apply_message(updates) {
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
                let mut shared = self.shared();
                shared.state = self.twin.state().clone();
                let timeliness_us =
                    shared
                        .entanglement
                        .record(update.seq, update.ts_ms, committed_us);
                drop(shared);
                self.metrics
                    .timeliness
                    .get_or_create(&label)
                    .observe(timeliness_us as f64 / 1e6);
                for (event, data) in &effects.events {
                    tracing::info!(twin = %self.name, seq = update.seq, %event, %data, "event");
                }
                let change = Change {
                    seq: update.seq,
                    ts_ms: update.ts_ms,
                    committed_ms: committed_us / 1000,
                    changes: effects.changes.into_iter().collect(),
                    events: effects
                        .events
                        .into_iter()
                        .map(|(name, data)| EventView { name, data })
                        .collect(),
                };
                let op = Op::Applied {
                    name: self.name.clone(),
                    seq: update.seq,
                    ts_ms: update.ts_ms,
                    updates: updates.to_vec(),
                    changes: change.changes.clone(),
                };
                // Nobody listening is not an error.
                let _ = self.changes.send(change);
                Some(op)
            }
            Ok((Applied::Duplicate { .. }, _)) => {
                self.metrics.duplicates.get_or_create(&self.label()).inc();
                None
            }
            Err(error) => {
                self.failed(&error.to_string());
                if error.failure.poisons() {
                    self.recover(&error, checkpoint, replay);
                }
                None
            }
        }
    }

    /// Rebuilds the twin from the last checkpoint and the updates applied
    /// since, after the instance failed.
    fn recover(
        &mut self,
        error: &GuestError,
        checkpoint: Option<&Checkpoint>,
        replay: &[Vec<Update>],
    ) {
        let Some(from) = checkpoint else {
            return self.failed(&format!("cannot recover after `{error}`: no checkpoint"));
        };
        self.shared().entanglement.set_available(false, now_us());
        let restored = Twin::restore(
            &self.runtime,
            &self.model,
            from,
            self.limits,
            RestorePolicy::SameComponent,
        );
        match restored {
            Ok(mut twin) => {
                for message in replay.iter() {
                    if let Err(e) = twin.apply_message(message) {
                        self.failed(&format!("replay after recovery failed: {e}"));
                        break;
                    }
                }
                self.twin = twin;
                tracing::info!(twin = %self.name, replayed = replay.len(), "recovered from the last checkpoint");
            }
            Err(e) => self.failed(&format!("cannot recover after `{error}`: {e:#}")),
        }
        self.shared().entanglement.set_available(true, now_us());
    }

    fn act(
        &mut self,
        adapter: &mut AdapterInstance,
        name: &str,
        input: &Value,
    ) -> Result<ActionOutcome, String> {
        let outcome = self.twin.act(name, input).map_err(|e| e.to_string())?;
        if !outcome.commands.is_empty() {
            let topic = self
                .command_topic
                .as_deref()
                .ok_or("the action produced commands, but the spec has no physical.commandTopic")?;
            for (command, payload) in &outcome.commands {
                let bytes = adapter
                    .encode(command, payload)
                    .map_err(|e| e.to_string())?;
                self.link.send(topic, bytes).map_err(|e| format!("{e:#}"))?;
            }
        }
        Ok(outcome)
    }
}
