//! The `Store` of one component instance and the discipline of every call
//! into it: arm fuel and deadline, run, and turn each way the guest can fail
//! into a [`GuestError`] naming the twin and the cause. Models and adapters
//! both go through here, so their failures read the same.

use std::sync::Arc;

use wasmtime::Store;

use super::error::{Failure, GuestError};
use super::guest_state::GuestState;
use super::limits::Limits;
use super::{EPOCH_TICK, Runtime};

/// A store with limits, poisoned by the first failure that may have left the
/// guest inconsistent.
pub(super) struct Sandbox {
    store: Store<GuestState>,
    limits: Limits,
    metered: bool,
    poisoned: bool,
}

fn memory_limit(limits: &Limits) -> usize {
    usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX)
}

impl Sandbox {
    pub(super) fn new(runtime: &Runtime, twin: &str, limits: Limits) -> Self {
        let state = GuestState::new(Arc::from(twin), memory_limit(&limits));
        let mut store = Store::new(runtime.engine(), state);
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_trap();
        Self {
            store,
            limits,
            metered: runtime.meters_fuel(),
            poisoned: false,
        }
    }

    /// Instantiates under the same limits as a call: a component's start-up
    /// code is guest code too.
    pub(super) fn instantiate<T>(
        &mut self,
        f: impl FnOnce(&mut Store<GuestState>) -> wasmtime::Result<T>,
    ) -> anyhow::Result<T> {
        self.arm();
        f(&mut self.store).map_err(|e| {
            let failure = self.classify(&e);
            anyhow::Error::from(self.error("instantiate", failure))
        })
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

    /// Sets the fuel and deadline for the next call; returns the budget.
    fn arm(&mut self) -> u64 {
        self.store.data_mut().start_call();
        if self.metered {
            // Fails only when metering is off, which `metered` rules out.
            let _ = self.store.set_fuel(self.limits.fuel_per_call);
        }
        let ticks = self
            .limits
            .deadline
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis())
            .max(1);
        self.store
            .set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        self.limits.fuel_per_call
    }

    /// Runs one export; returns its answer and the fuel it burned.
    pub(super) fn call<R>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut Store<GuestState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<(R, u64), GuestError> {
        if self.poisoned {
            return Err(self.error(name, Failure::Poisoned));
        }
        let budget = self.arm();
        let outcome = f(&mut self.store);
        let fuel = if self.metered {
            budget.saturating_sub(self.store.get_fuel().unwrap_or(0))
        } else {
            0
        };
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
