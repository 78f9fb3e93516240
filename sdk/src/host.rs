//! What the host offers a plugin: a structured log and a clock.
//!
//! Compiled natively (unit tests, benchmarks) the log goes to standard error
//! and the clock is the system clock, so model code runs unchanged.

/// How important a log record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Useful when debugging the model.
    Debug,
    /// Normal operation worth recording.
    Info,
    /// Something unexpected that the model handled.
    Warn,
    /// Something the model could not handle.
    Error,
}

/// Writes a log record with key/value fields to the host's log, where it is
/// tagged with the twin's name.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    imp::log(level, message, fields)
}

/// Logs `message` at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message, &[])
}

/// Logs `message` at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message, &[])
}

/// Logs `message` at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message, &[])
}

/// The host's wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::bindings::model::wasmtwin::twin::{clock, log as wit_log};

    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let level = match level {
            Level::Trace => wit_log::Level::Trace,
            Level::Debug => wit_log::Level::Debug,
            Level::Info => wit_log::Level::Info,
            Level::Warn => wit_log::Level::Warn,
            Level::Error => wit_log::Level::Error,
        };
        let fields: Vec<wit_log::Field> = fields
            .iter()
            .map(|(key, value)| wit_log::Field {
                key: (*key).to_string(),
                value: (*value).to_string(),
            })
            .collect();
        wit_log::write(level, message, &fields);
    }

    pub fn now_ms() -> u64 {
        clock::now_ms()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;

    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: String = fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        eprintln!("{level:?}: {message}{fields}");
    }

    pub fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}
