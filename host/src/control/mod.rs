//! The control plane (`wasmtwin control`): its event history.
pub mod history;
