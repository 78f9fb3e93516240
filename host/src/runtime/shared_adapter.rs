//! A few adapter instances that the twins of a node take turns on
//! (`wasmtwin host --share-adapters`), instead of one each.
//!
//! An adapter translates payloads; the twin's state lives in its model. An
//! instance of its own costs an awake twin about 24 KiB (its core
//! instances, store, fiber stack, memory pages and their page tables;
//! README, *Shared adapters*), a third of what the twin holds; shared, the
//! node pays it [`INSTANCES_PER_THREAD`] times per thread and adapter
//! component. The price is isolation between the twins that share them:
//! an adapter that keeps something from one call to the next would carry
//! it from one twin's payload to another's, so only adapters that keep
//! nothing should be shared (the SDK's `json-adapter` keeps nothing).
//!
//! Each turn runs under the twin's limits (fuel, deadline, memory), so one
//! twin's turn holds an instance for its deadline at most. The fuel a
//! turn burned is charged to the twin's CPU share when it ends, and a twin
//! over its share waits out its debt before its next turn, not during one,
//! so that it never pauses while others wait for the instance. A turn that
//! traps leaves its instance poisoned; the next turn on it makes a new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::Runtime;
use super::adapter::{AdapterComponent, AdapterInstance};
use super::cpu::CpuShare;
use super::error::{Failure, GuestError};
use super::limits::Limits;
use super::model::Update;

/// Instances of one adapter made for each of the machine's threads. A turn
/// may wait inside the guest, its instance held, while the thread runs
/// another twin: 1,000 twins bursting through two instances on two
/// threads (`WASMTWIN_BENCH_CHILD=burst:1000:PORT:4`, the ingest bench)
/// kept three quarters of the throughput of instances of their own, and
/// through sixteen as much.
const INSTANCES_PER_THREAD: usize = 8;

/// The instances of one adapter component that a node's twins share.
pub struct SharedAdapter {
    runtime: Runtime,
    component: AdapterComponent,
    /// What its logs name instead of a twin.
    name: Arc<str>,
    /// Each made at the first turn that finds it free.
    instances: Box<[Mutex<Option<AdapterInstance>>]>,
    /// Where a turn that finds every instance busy waits, in rotation.
    next: AtomicUsize,
    /// Counts the instances made.
    made: Counter,
}

/// The twin whose turn it is: its name, limits and CPU share.
pub struct Turn<'a> {
    pub twin: &'a str,
    pub limits: Limits,
    pub cpu: &'a CpuShare,
}

impl SharedAdapter {
    /// Instances of `component` to share, [`INSTANCES_PER_THREAD`] for
    /// each of the machine's threads, each made at the first turn that
    /// needs it; `made` counts them.
    pub fn new(runtime: &Runtime, component: &AdapterComponent, made: Counter) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let count = threads.saturating_mul(INSTANCES_PER_THREAD);
        Self {
            runtime: runtime.clone(),
            component: component.clone(),
            name: Arc::from(format!("shared adapter {}", component.digest())),
            instances: (0..count).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            made,
        }
    }

    /// Decodes a payload `turn`'s twin received on `topic`.
    pub async fn decode(
        &self,
        turn: &Turn<'_>,
        topic: &str,
        payload: &[u8],
    ) -> Result<Vec<Update>, GuestError> {
        let mut adapter = self.take(turn).await?;
        let outcome = adapter.decode(topic, payload).await;
        settle(turn, &adapter, outcome)
    }

    /// Encodes a command of `turn`'s twin for its device.
    pub async fn encode(
        &self,
        turn: &Turn<'_>,
        name: &str,
        payload: &Value,
    ) -> Result<Vec<u8>, GuestError> {
        let mut adapter = self.take(turn).await?;
        let outcome = adapter.encode(name, payload).await;
        settle(turn, &adapter, outcome)
    }

    /// Waits out the twin's CPU debt, then takes a free instance (or waits
    /// for one), made anew if there is none or the last turn poisoned it,
    /// and sets it to the twin's limits.
    async fn take(
        &self,
        turn: &Turn<'_>,
    ) -> Result<MappedMutexGuard<'_, AdapterInstance>, GuestError> {
        let debt = turn.cpu.debt();
        if !debt.is_zero() {
            turn.cpu.pause(debt).await;
        }
        let free = self.instances.iter().find_map(|slot| slot.try_lock().ok());
        let mut instance = match free {
            Some(instance) => instance,
            None => {
                let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len();
                self.instances[slot].lock().await
            }
        };
        // A poisoned instance is dropped here, even if no new one comes.
        let adapter = match instance.take().filter(|adapter| !adapter.is_poisoned()) {
            Some(adapter) => adapter,
            None => {
                let fresh =
                    AdapterInstance::new(&self.runtime, &self.component, &self.name, turn.limits)
                        .await
                        .map_err(|e| GuestError {
                            twin: turn.twin.to_string(),
                            call: "instantiate",
                            failure: Failure::Trap {
                                message: format!("{e:#}"),
                            },
                        })?;
                self.made.inc();
                fresh
            }
        };
        let mut adapter = MutexGuard::map(instance, |slot| slot.insert(adapter));
        adapter.set_limits(turn.limits);
        Ok(adapter)
    }
}

/// Charges the fuel a turn burned to its twin, failed or not, and names
/// the twin in its error (the instance's own name is the adapter's).
fn settle<T>(
    turn: &Turn<'_>,
    adapter: &AdapterInstance,
    outcome: Result<T, GuestError>,
) -> Result<T, GuestError> {
    turn.cpu.charge(adapter.fuel_spent());
    outcome.map_err(|mut error| {
        error.twin = turn.twin.to_string();
        error
    })
}
