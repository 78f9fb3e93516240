//! The resources a twin's component may use on each call.

use std::time::Duration;

/// Per-call limits for one twin's component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel (roughly, WebAssembly instructions) one call may burn. Ignored
    /// by a runtime built without fuel metering.
    pub fuel_per_call: u64,
    /// Bytes of linear memory the instance may hold in total.
    pub memory_bytes: u64,
    /// Wall-clock time one call may take, enforced by epoch interruption at
    /// the runtime's tick granularity.
    pub deadline: Duration,
}

impl Default for Limits {
    /// Generous enough for the `prime` model at 25,000 primes per update
    /// (the paper's heaviest phase), tight enough that a runaway guest is
    /// stopped within about a second.
    fn default() -> Self {
        Self {
            fuel_per_call: 1_000_000_000,
            memory_bytes: 64 * 1024 * 1024,
            deadline: Duration::from_secs(5),
        }
    }
}
