//! What can go wrong inside a guest, phrased so the operator knows which twin
//! failed and why.

use std::fmt;

/// Why a call into a twin's component failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The call used up its fuel budget (a runaway loop, or too little fuel
    /// for the work asked).
    Fuel {
        /// The budget that was exhausted.
        budget: u64,
    },
    /// The guest tried to grow its linear memory beyond the limit.
    Memory {
        /// The limit in bytes.
        limit: u64,
        /// What the guest asked for in bytes.
        requested: u64,
    },
    /// The call ran past its wall-clock deadline.
    Deadline {
        /// The deadline in milliseconds.
        millis: u64,
    },
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access).
    Trap {
        /// The trap and, if the guest printed one, its last words.
        message: String,
    },
    /// The guest returned an error: it refused the request.
    Refused {
        /// The guest's explanation.
        message: String,
    },
    /// The guest answered with something the host cannot accept.
    BadOutput {
        /// What was wrong with it.
        message: String,
    },
    /// The instance failed before and must be restored first.
    Poisoned,
}

impl Failure {
    /// Whether the instance is unusable afterwards and must be rebuilt from a
    /// snapshot. A refusal or a bad answer leaves it usable.
    pub fn poisons(&self) -> bool {
        !matches!(self, Failure::Refused { .. } | Failure::BadOutput { .. })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Fuel { budget } => write!(f, "ran out of fuel (budget {budget} per call)"),
            Failure::Memory { limit, requested } => write!(
                f,
                "exceeded its memory limit of {} (asked for {})",
                bytesize::ByteSize(*limit).display().iec(),
                bytesize::ByteSize(*requested).display().iec()
            ),
            Failure::Deadline { millis } => write!(f, "missed its deadline of {millis} ms"),
            Failure::Trap { message } => write!(f, "trapped: {message}"),
            Failure::Refused { message } => write!(f, "refused: {message}"),
            Failure::BadOutput { message } => write!(f, "returned bad output: {message}"),
            Failure::Poisoned => {
                f.write_str("failed earlier and must be restored from a snapshot first")
            }
        }
    }
}

/// A failed call into a twin's component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("twin `{twin}` {failure} (in {call})")]
pub struct GuestError {
    /// The twin whose component failed.
    pub twin: String,
    /// Which export was called, e.g. `on-update`.
    pub call: &'static str,
    /// What went wrong.
    pub failure: Failure,
}
