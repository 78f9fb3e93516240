//! wasmtwin hosts trustworthy digital twins as signed, sandboxed WebAssembly
//! components.
//!
//! An update flows one way through the modules named after its steps:
//! [`runtime`] runs the twin's model component under fuel, memory and
//! deadline limits; [`twin`] keeps what the host knows of the twin around
//! it (properties, last sequence applied); [`checkpoint`] writes and reads
//! its state so it can resume elsewhere.

pub mod api;
pub mod broker;
pub mod checkpoint;
pub mod client;
pub mod control;
pub mod digest;
pub mod faults;
pub mod input;
pub mod monitoring;
pub mod node;
pub mod operator;
pub mod physical;
pub mod registry;
pub mod runtime;
pub mod signing;
pub mod sim;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod twin;
