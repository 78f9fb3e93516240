//! The control plane (`wasmtwin control`): its event history and the webhooks that carry it out.
pub mod history;
pub mod webhook;
