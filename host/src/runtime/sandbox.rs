//! The `Store` of one component instance and the discipline of every call
//! into it: arm fuel and deadline, run, and turn each way the guest can fail
//! into a [`GuestError`] naming the twin and the cause. Models and adapters
//! both go through here, so their failures read the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Store, UpdateDeadline};

use super::Runtime;
use super::cpu::CpuShare;
use super::error::{Failure, GuestError};
use super::guest_state::GuestState;
use super::limits::Limits;

/// Calls the export `$method` of the interface handle `$api` through
/// `$sandbox`, under its limits: `begin`, the async call on the store,
/// `finish`. Its value is the call's answer and fuel, or the `GuestError`.
macro_rules! guest_call {
    ($sandbox:expr, $name:literal, $api:expr, $method:ident($($arg:expr),*)) => {{
        if let Some(pause) = $sandbox.throttle() {
            pause.await;
        }
        $sandbox.begin($name)?;
        let outcome = $api.$method($sandbox.store(), $($arg),*).await;
        $sandbox.finish($name, outcome)
    }};
}
pub(super) use guest_call;

/// Instantiates `$pre` (a `ModelPre` or `AdapterPre`) in `$sandbox` under
/// its limits; on failure, says what (`$what`) could not be instantiated.
macro_rules! instantiate {
    ($sandbox:expr, $pre:expr, $what:expr) => {{
        $sandbox.begin_instantiate();
        match $pre.instantiate_async($sandbox.store()).await {
            Ok(instance) => {
                $sandbox.settle();
                Ok(instance)
            }
            Err(e) => Err($sandbox.instantiate_failed(e)).with_context(|| $what),
        }
    }};
}
pub(super) use instantiate;

/// A store with limits, poisoned by the first failure that may have left the
/// guest inconsistent.
///
/// A call goes `begin` → the async export call on [`Sandbox::store`] →
/// `finish`, which turns the outcome into effects or a [`GuestError`].
pub(super) struct Sandbox {
    store: Store<GuestState>,
    limits: Limits,
    metered: bool,
    poisoned: bool,
}

/// The fuel a store has left, asked of a metered store only. Asking an
/// unmetered one makes an error, and with `RUST_BACKTRACE` set every error
/// captures a backtrace: several microseconds on every call.
fn fuel_left(metered: bool, get: impl FnOnce() -> wasmtime::Result<u64>) -> Option<u64> {
    if metered { get().ok() } else { None }
}

fn memory_limit(limits: &Limits) -> usize {
    usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX)
}

impl Sandbox {
    pub(super) fn new(runtime: &Runtime, twin: &str, limits: Limits) -> Self {
        let state = GuestState::new(Arc::from(twin), memory_limit(&limits));
        let mut store = Store::new(runtime.engine(), state);
        store.limiter(|state| &mut state.memory);
        let metered = runtime.meters_fuel();
        // At every epoch tick a running call either yields to the executor
        // (so other twins run on this thread meanwhile) or, past its
        // deadline, is interrupted, wherever it is. The fuel it burned
        // since the last tick is charged to the twin's CPU share; over its
        // share, it sleeps instead, in the middle of the call, until back
        // within it — but never past its deadline, which then interrupts
        // it at the next tick.
        store.epoch_deadline_callback(move |mut ctx| {
            let now = Instant::now();
            let deadline = ctx.data().deadline();
            if now >= deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            let pause = fuel_left(metered, || ctx.get_fuel())
                .and_then(|left| ctx.data_mut().charge_cpu(left));
            let next: Pin<Box<dyn Future<Output = ()> + Send>> = match pause {
                Some((cpu, wait)) => Box::pin(cpu.pause(wait.min(deadline - now))),
                None => Box::pin(tokio::task::yield_now()),
            };
            Ok(UpdateDeadline::YieldCustom(1, next))
        });
        Self {
            store,
            limits,
            metered,
            poisoned: false,
        }
    }

    /// The store, for the export call between `begin` and `finish`.
    pub(super) fn store(&mut self) -> &mut Store<GuestState> {
        &mut self.store
    }

    /// Arms the store for instantiation: a component's start-up code is
    /// guest code too, under the same limits as a call.
    pub(super) fn begin_instantiate(&mut self) {
        self.arm();
    }

    /// Explains a failed instantiation.
    pub(super) fn instantiate_failed(&mut self, e: wasmtime::Error) -> anyhow::Error {
        let failure = self.classify(&e);
        anyhow::Error::from(self.error("instantiate", failure))
    }

    pub(super) fn twin(&self) -> &str {
        self.store.data().twin()
    }

    pub(super) fn limits(&self) -> Limits {
        self.limits
    }

    pub(super) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        self.store
            .data_mut()
            .memory
            .set_limit(memory_limit(&limits));
    }

    pub(super) fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The fuel the last call (or instantiation) burned of its budget.
    pub(super) fn fuel_spent(&self) -> u64 {
        let left = fuel_left(self.metered, || self.store.get_fuel());
        left.map_or(0, |left| self.limits.fuel_per_call.saturating_sub(left))
    }

    /// Charges this instance's calls to the twin's CPU share from now on.
    pub(super) fn set_cpu(&mut self, cpu: CpuShare) {
        if self.metered {
            // Compiled code keeps its fuel count in a register and writes
            // it back only at calls, returns and when its fuel runs out,
            // not at epoch checks: a loop without calls would show the
            // epoch callback no fuel burned. Fuel that "runs out" every
            // millisecond of CPU (wasmtime then yields and refuels, within
            // the call's budget) keeps the count the callback reads at
            // most that stale, for a yield costing microseconds.
            let _ = self
                .store
                .fuel_async_yield_interval(Some(cpu.fuel_per_millisecond()));
        }
        self.store.data_mut().set_cpu(cpu);
    }

    /// The pause owed before the next call, if the twin is over its CPU
    /// share: a twin in debt queues between calls as well as in them.
    pub(super) fn throttle(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let cpu = self.store.data().cpu()?;
        let wait = cpu.debt();
        (!wait.is_zero()).then(|| cpu.pause(wait))
    }

    /// Charges what the call burned since the last tick to the twin's CPU
    /// share (the next call waits out any debt).
    pub(super) fn settle(&mut self) {
        if let Some(left) = fuel_left(self.metered, || self.store.get_fuel()) {
            let _ = self.store.data_mut().charge_cpu(left);
        }
    }

    /// Sets the fuel and deadline for the next call.
    fn arm(&mut self) {
        let deadline = Instant::now()
            .checked_add(self.limits.deadline)
            .unwrap_or_else(far_future);
        self.store.data_mut().start_call(deadline);
        if self.metered {
            // Fails only when metering is off, which `metered` rules out.
            let _ = self.store.set_fuel(self.limits.fuel_per_call);
            self.store
                .data_mut()
                .set_fuel_mark(self.limits.fuel_per_call);
        }
        // The callback decides at each tick: yield, or interrupt.
        self.store.set_epoch_deadline(1);
    }

    /// Starts a call of the export `name`: refuses a poisoned instance,
    /// else arms the limits.
    pub(super) fn begin(&mut self, name: &'static str) -> Result<(), GuestError> {
        if self.poisoned {
            return Err(self.error(name, Failure::Poisoned));
        }
        self.arm();
        Ok(())
    }

    /// Ends the call `begin` started: its answer and the fuel it burned, or
    /// the failure (which poisons the instance if the guest trapped).
    pub(super) fn finish<R>(
        &mut self,
        name: &'static str,
        outcome: wasmtime::Result<Result<R, String>>,
    ) -> Result<(R, u64), GuestError> {
        self.settle();
        let fuel = self.fuel_spent();
        match outcome {
            Ok(Ok(value)) => Ok((value, fuel)),
            Ok(Err(message)) => Err(self.error(name, Failure::Refused { message })),
            Err(e) => {
                let failure = self.classify(&e);
                // A trapped component instance cannot be entered again.
                self.poisoned = true;
                Err(self.error(name, failure))
            }
        }
    }

    pub(super) fn error(&self, call: &'static str, failure: Failure) -> GuestError {
        GuestError {
            twin: self.twin().to_string(),
            call,
            failure,
        }
    }

    fn classify(&self, error: &wasmtime::Error) -> Failure {
        let state = self.store.data();
        if let Some(requested) = state.memory.refused {
            return Failure::Memory {
                limit: self.limits.memory_bytes,
                requested: requested as u64,
            };
        }
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::OutOfFuel) => Failure::Fuel {
                budget: self.limits.fuel_per_call,
            },
            Some(wasmtime::Trap::Interrupt) => Failure::Deadline {
                millis: u64::try_from(self.limits.deadline.as_millis()).unwrap_or(u64::MAX),
            },
            Some(trap) => {
                // wasmtime's text starts "wasm trap: "; ours says "trapped".
                let text = trap.to_string();
                let text = text.strip_prefix("wasm trap: ").unwrap_or(&text);
                Failure::Trap {
                    message: match state.stderr.take_last_words() {
                        Some(words) => format!("{text} (guest said: {words})"),
                        None => text.to_string(),
                    },
                }
            }
            None => Failure::Trap {
                message: format!("{error:#}"),
            },
        }
    }
}

/// A deadline no call reaches (`Instant` has no maximum).
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(100 * 365 * 24 * 3600)
}
