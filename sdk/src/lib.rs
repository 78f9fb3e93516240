//! Write wasmtwin twin models and protocol adapters as WebAssembly components.
//!
//! A **model** is a plain Rust type holding a twin's state. Derive serde's
//! `Serialize` and `Deserialize` for it, implement [`Model`], and invoke
//! [`export_model!`]. Built for `wasm32-wasip2` it becomes a component the
//! wasmtwin host can run, checkpoint, migrate and hot-swap; built natively
//! the same code runs in ordinary unit tests and benchmarks.
//!
//! # A complete model
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use wasmtwin_sdk::{ActionInfo, Effects, Error, Model, Outcome, PropertyInfo, Update};
//! use serde_json::{json, Value};
//!
//! /// A tank whose level the device reports; alarms above a threshold.
//! #[derive(Serialize, Deserialize)]
//! pub struct Tank {
//!     level: f64,
//!     high: f64,
//!     alarm: bool,
//! }
//!
//! #[derive(Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! pub struct Config {
//!     high: f64,
//! }
//!
//! impl Default for Config {
//!     fn default() -> Self {
//!         Config { high: 90.0 }
//!     }
//! }
//!
//! impl Model for Tank {
//!     type Config = Config;
//!     const NAME: &'static str = "tank";
//!     const VERSION: &'static str = "0.1.0";
//!     const PROPERTIES: &'static [PropertyInfo] = &[
//!         PropertyInfo::new("level", "number", "Fill level").unit("%"),
//!         PropertyInfo::new("alarm", "boolean", "Level above the threshold"),
//!     ];
//!     const ACTIONS: &'static [ActionInfo] = &[
//!         ActionInfo::new("drain", "Open the drain valve").output(r#"{"type": "string"}"#),
//!     ];
//!
//!     fn init(config: Config) -> Result<Self, Error> {
//!         Ok(Tank { level: 0.0, high: config.high, alarm: false })
//!     }
//!
//!     fn on_update(&mut self, update: &Update, effects: &mut Effects) -> Result<(), Error> {
//!         if update.property != "level" {
//!             return Ok(()); // not ours to model
//!         }
//!         let level = update.value.as_f64().ok_or("level must be a number")?;
//!         self.level = level;
//!         effects.set("level", level);
//!         let alarm = level > self.high;
//!         if alarm != self.alarm {
//!             self.alarm = alarm;
//!             effects.set("alarm", alarm);
//!             effects.emit("alarm", json!({ "raised": alarm, "level": level }));
//!         }
//!         Ok(())
//!     }
//!
//!     fn on_action(&mut self, name: &str, _input: &Value, outcome: &mut Outcome) -> Result<Value, Error> {
//!         match name {
//!             "drain" => {
//!                 outcome.send("valve", json!({ "open": true }));
//!                 Ok(json!("draining"))
//!             }
//!             other => Err(Error::new(format!("tank has no action `{other}`"))),
//!         }
//!     }
//! }
//!
//! // Generates the component's exports when built for wasm32-wasip2;
//! // expands to nothing in native builds.
//! wasmtwin_sdk::export_model!(Tank);
//!
//! // The same code runs natively, e.g. in a unit test:
//! let mut tank = Tank::init(Config::default()).unwrap();
//! let mut effects = Effects::default();
//! let update = Update { seq: 1, ts_ms: 0, property: "level".into(), value: json!(95.0) };
//! tank.on_update(&update, &mut effects).unwrap();
//! assert_eq!(effects.events().len(), 1);
//! ```
//!
//! The crate of a plugin is a `cdylib` (and an `rlib` for native tests):
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! wasmtwin-sdk = { path = "../wasmtwin/sdk" }
//! serde = { version = "1", features = ["derive"] }
//! serde_json = "1"
//! ```
//!
//! and `cargo build --release --target wasm32-wasip2` gives
//! `target/wasm32-wasip2/release/<name>.wasm`, which `wasmtwin run` runs.
//!
//! # State and upgrades
//!
//! Snapshots are the model serialised as JSON and tagged with
//! [`Model::STATE_VERSION`]. When a new release changes the layout, raise the
//! version and implement [`Model::upgrade`] to read the old JSON: the host can
//! then swap the new model in under a running twin.
//!
//! A model with a large state (thousands of samples, a long string, a byte
//! buffer) can return [`StateEncoding::Binary`] from
//! [`Model::state_encoding`]: its snapshots are then MessagePack, quicker to
//! write and read, which shortens the pause of a migration or a hot-swap.
//! Both encodings are always read, so a model can change its choice in any
//! release, and `upgrade` gets a binary snapshot as JSON all the same.
//!
//! # Adapters
//!
//! An adapter turns a device's payloads into [`Update`]s and [`Command`]s into
//! payloads: implement [`Adapter`] on a unit struct and invoke
//! [`export_adapter!`].

// Lets the generated bindings name this crate the same way from inside it
// and from the plugin crates that expand its macros.
extern crate self as wasmtwin_sdk;

mod adapter;
mod describe;
mod error;
mod host;
mod model;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod glue;

pub use adapter::Adapter;
pub use describe::{ActionInfo, Description, EventInfo, PropertyInfo, describe};
pub use error::Error;
pub use host::{Level, debug, info, log, now_ms, warn};
pub use model::{
    Command, Effects, Model, Outcome, StateEncoding, Update, parse_config, restore, snapshot,
};

/// Used by the code the export macros generate. Not part of the API.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private {
    pub use crate::glue;
    pub use wit_bindgen;
}

/// Exports the [`Model`] implemented by `$ty` as the component's `model`
/// world. Expands to nothing when not building for `wasm32`.
#[macro_export]
macro_rules! export_model {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::glue;
            use $crate::bindings::model::exports::wasmtwin::twin::model_api::Guest;
            use $crate::bindings::model::wasmtwin::twin::types as wit;

            ::std::thread_local! {
                static MODEL: ::core::cell::RefCell<::core::option::Option<$ty>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct WasmtwinModel;

            impl Guest for WasmtwinModel {
                fn init(config: String) -> Result<(), String> {
                    glue::init::<$ty>(&MODEL, config)
                }
                fn reconfigure(config: String) -> Result<(), String> {
                    glue::reconfigure::<$ty>(&MODEL, config)
                }
                fn on_update(update: wit::Update) -> Result<wit::Effects, String> {
                    glue::on_update::<$ty>(&MODEL, update)
                }
                fn on_action(name: String, input: String) -> Result<wit::ActionOutcome, String> {
                    glue::on_action::<$ty>(&MODEL, name, input)
                }
                fn snapshot() -> Result<Vec<u8>, String> {
                    glue::snapshot::<$ty>(&MODEL)
                }
                fn restore(state: Vec<u8>, state_version: u32) -> Result<(), String> {
                    glue::restore::<$ty>(&MODEL, state, state_version)
                }
                fn describe() -> wit::Description {
                    glue::describe::<$ty>()
                }
            }

            $crate::bindings::model::export_model_world!(
                WasmtwinModel with_types_in $crate::bindings::model
            );
        };
    };
}

/// Exports the [`Adapter`] implemented by `$ty` as the component's `adapter`
/// world. Expands to nothing when not building for `wasm32`.
#[macro_export]
macro_rules! export_adapter {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::glue;
            use $crate::bindings::adapter::exports::wasmtwin::twin::adapter_api::Guest;
            use $crate::bindings::model::wasmtwin::twin::types as wit;

            struct WasmtwinAdapter;

            impl Guest for WasmtwinAdapter {
                fn decode(topic: String, payload: Vec<u8>) -> Result<Vec<wit::Update>, String> {
                    glue::decode::<$ty>(topic, payload)
                }
                fn encode(command: wit::Command) -> Result<Vec<u8>, String> {
                    glue::encode::<$ty>(command)
                }
            }

            $crate::bindings::adapter::export_adapter_world!(
                WasmtwinAdapter with_types_in $crate::bindings::adapter
            );
        };
    };
}
