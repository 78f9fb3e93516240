//! The [`Model`] trait a twin model implements, and the values it works with.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::describe::{ActionInfo, EventInfo, PropertyInfo};
use crate::error::Error;

/// One observation from the physical twin, as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Update {
    /// Sequence number given by the device. The host never delivers the same
    /// number twice, and delivers them in increasing order.
    pub seq: u64,
    /// When the device produced the update, in milliseconds since the Unix
    /// epoch.
    pub ts_ms: u64,
    /// The property the update is about.
    pub property: String,
    /// The observed value.
    pub value: Value,
}

/// A message for the physical device, produced by an action.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Command {
    /// What the device should do, e.g. `stop`.
    pub name: String,
    /// Its arguments.
    pub payload: Value,
}

/// What applying one update did: the properties that changed and the events
/// that happened. The host publishes them to applications in this order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    changes: Vec<(String, Value)>,
    events: Vec<(String, Value)>,
}

impl Effects {
    /// Records that `property` now has `value`.
    pub fn set(&mut self, property: impl Into<String>, value: impl Into<Value>) {
        self.changes.push((property.into(), value.into()));
    }

    /// Records that the event `name` happened, with `data` describing it.
    pub fn emit(&mut self, name: impl Into<String>, data: impl Into<Value>) {
        self.events.push((name.into(), data.into()));
    }

    /// The property changes recorded so far, in order.
    pub fn changes(&self) -> &[(String, Value)] {
        &self.changes
    }

    /// The events recorded so far, in order.
    pub fn events(&self) -> &[(String, Value)] {
        &self.events
    }
}

/// What an action does besides its reply: the commands it sends to the
/// physical device, and the properties it changes and events it raises.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    commands: Vec<Command>,
    effects: Effects,
}

impl Outcome {
    /// Records that `property` now has `value` (e.g. `reset` clearing an
    /// alarm count); the host applies it before it replies.
    pub fn set(&mut self, property: impl Into<String>, value: impl Into<Value>) {
        self.effects.set(property, value);
    }

    /// Records that the event `name` happened, with `data`.
    pub fn emit(&mut self, name: impl Into<String>, data: impl Into<Value>) {
        self.effects.emit(name, data);
    }

    /// The property changes and events recorded so far.
    pub fn effects(&self) -> &Effects {
        &self.effects
    }

    /// Queues `name` with `payload` for the device. The host sends queued
    /// commands, in order, once the action has succeeded.
    pub fn send(&mut self, name: impl Into<String>, payload: impl Into<Value>) {
        self.commands.push(Command {
            name: name.into(),
            payload: payload.into(),
        });
    }

    /// The commands queued so far.
    pub fn commands(&self) -> &[Command] {
        &self.commands
    }
}

/// A twin model: a plain Rust type holding the twin's whole state.
///
/// The type is its own snapshot: the SDK serialises it with serde when the
/// host checkpoints the twin and deserialises it on restore, so a model gets
/// checkpointing, live migration and hot-swap without writing any of it.
///
/// Keep every piece of state in the type (including configuration that must
/// survive a restore). An `Err` from [`on_update`](Model::on_update),
/// [`reconfigure`](Model::reconfigure) or [`on_action`](Model::on_action)
/// tells the host the request was refused, so check inputs before changing
/// `self`.
///
/// See the crate documentation for a complete example.
pub trait Model: Serialize + DeserializeOwned + Sized + 'static {
    /// The configuration `init` and `reconfigure` take. `{}` must
    /// deserialise to the defaults (use `#[serde(default)]`).
    type Config: DeserializeOwned;

    /// The model's name, e.g. `"prime"`.
    const NAME: &'static str;
    /// The model's release, usually `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// Version of the state's layout. Raise it when a field changes meaning
    /// or type, and teach [`upgrade`](Model::upgrade) to read the old one.
    const STATE_VERSION: u32 = 1;
    /// The properties the model sets, for discovery.
    const PROPERTIES: &'static [PropertyInfo] = &[];
    /// The actions [`on_action`](Model::on_action) accepts.
    const ACTIONS: &'static [ActionInfo] = &[];
    /// The events the model emits.
    const EVENTS: &'static [EventInfo] = &[];

    /// Starts a fresh twin.
    fn init(config: Self::Config) -> Result<Self, Error>;

    /// Applies one update from the device.
    fn on_update(&mut self, update: &Update, effects: &mut Effects) -> Result<(), Error>;

    /// Changes the configuration of a running twin. Refused unless the model
    /// overrides it.
    fn reconfigure(&mut self, config: Self::Config) -> Result<(), Error> {
        let _ = config;
        Err(Error::new(format!("{} cannot be reconfigured", Self::NAME)))
    }

    /// Carries out the action `name`; the returned value goes back to the
    /// application that asked. Unknown actions are refused unless the model
    /// overrides it.
    fn on_action(
        &mut self,
        name: &str,
        input: &Value,
        outcome: &mut Outcome,
    ) -> Result<Value, Error> {
        let _ = (input, outcome);
        Err(Error::new(format!("{} has no action `{name}`", Self::NAME)))
    }

    /// How this state's snapshots are written. Snapshots of either encoding
    /// are read back whatever the model writes now, so changing it needs no
    /// new [`STATE_VERSION`](Model::STATE_VERSION).
    fn state_encoding(&self) -> StateEncoding {
        StateEncoding::Json
    }

    /// Rebuilds the state from a snapshot taken at an older
    /// [`STATE_VERSION`](Model::STATE_VERSION), given as JSON (a binary
    /// snapshot is converted). Refused unless the model overrides it.
    fn upgrade(state: Value, from_version: u32) -> Result<Self, Error> {
        let _ = state;
        Err(Error::new(format!(
            "{} cannot read state version {from_version} (it writes version {})",
            Self::NAME,
            Self::STATE_VERSION
        )))
    }
}

/// How a model's snapshots are written (see [`Model::state_encoding`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateEncoding {
    /// JSON: a checkpoint's state can be read with any tool. The default.
    #[default]
    Json,
    /// MessagePack with field names, after a marker no JSON text starts
    /// with. Self-describing like JSON, so [`Model::upgrade`] still gets a
    /// `Value`; but strings and byte runs are copied rather than escaped
    /// and numbers are not printed, which makes large states quicker to
    /// snapshot and restore (and so to migrate and hot-swap).
    Binary,
}

/// What a binary snapshot starts with: a NUL (no JSON text starts with
/// one) and the encoding's name, for whoever dumps a checkpoint.
const BINARY_MARKER: &[u8] = b"\0wasmtwin-state:msgpack\n";

/// Serialises a model's state the way the host stores it.
pub fn snapshot<M: Model>(model: &M) -> Result<Vec<u8>, Error> {
    let failed = |e: &dyn std::fmt::Display| Error::new(format!("cannot serialise state: {e}"));
    match model.state_encoding() {
        StateEncoding::Json => serde_json::to_vec(model).map_err(|e| failed(&e)),
        StateEncoding::Binary => {
            let mut bytes = BINARY_MARKER.to_vec();
            rmp_serde::encode::write_named(&mut bytes, model).map_err(|e| failed(&e))?;
            Ok(bytes)
        }
    }
}

/// Decodes a snapshot's bytes, in whichever encoding they were written.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.strip_prefix(BINARY_MARKER) {
        Some(body) => rmp_serde::from_slice(body).map_err(|e| format!("(binary) {e}")),
        None => serde_json::from_slice(bytes).map_err(|e| format!("(JSON) {e}")),
    }
}

/// Rebuilds a model from `snapshot`'s bytes taken at `state_version`,
/// upgrading older layouts through [`Model::upgrade`].
pub fn restore<M: Model>(bytes: &[u8], state_version: u32) -> Result<M, Error> {
    let current = M::STATE_VERSION;
    if state_version > current {
        return Err(Error::new(format!(
            "snapshot has state version {state_version}, newer than the {current} this {} {} reads",
            M::NAME,
            M::VERSION
        )));
    }
    if state_version == current {
        return decode(bytes)
            .map_err(|e| Error::new(format!("snapshot does not match the state layout: {e}")));
    }
    let value: Value =
        decode(bytes).map_err(|e| Error::new(format!("snapshot cannot be read: {e}")))?;
    M::upgrade(value, state_version)
}

/// Parses a configuration document; an empty document means the defaults.
pub fn parse_config<M: Model>(config: &str) -> Result<M::Config, Error> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    // The position is left out: the host hands over the configuration
    // re-serialised, so a line and column would point into text the user
    // never wrote.
    serde_json::from_str(text).map_err(|e| {
        let text = e.to_string();
        let what = match text.rfind(" at line ") {
            Some(at) => &text[..at],
            None => &text,
        };
        Error::new(format!("invalid config for {}: {what}", M::NAME))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// Release 1 of a counter kept `count`.
    #[derive(Serialize, Deserialize)]
    struct CounterV1 {
        count: u64,
    }

    /// Release 2 renamed it and added a field.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct CounterV2 {
        total: u64,
        unit: String,
    }

    impl Model for CounterV1 {
        type Config = serde_json::Value;
        const NAME: &'static str = "counter";
        const VERSION: &'static str = "1.0.0";

        fn init(_: Self::Config) -> Result<Self, Error> {
            Ok(CounterV1 { count: 0 })
        }

        fn on_update(&mut self, _: &Update, _: &mut Effects) -> Result<(), Error> {
            self.count += 1;
            Ok(())
        }
    }

    impl Model for CounterV2 {
        type Config = serde_json::Value;
        const NAME: &'static str = "counter";
        const VERSION: &'static str = "2.0.0";
        const STATE_VERSION: u32 = 2;

        fn init(_: Self::Config) -> Result<Self, Error> {
            Ok(CounterV2 {
                total: 0,
                unit: "updates".into(),
            })
        }

        fn on_update(&mut self, _: &Update, _: &mut Effects) -> Result<(), Error> {
            self.total += 1;
            Ok(())
        }

        fn upgrade(state: Value, from_version: u32) -> Result<Self, Error> {
            match from_version {
                1 => Ok(CounterV2 {
                    total: state["count"]
                        .as_u64()
                        .ok_or("version 1 state lacks `count`")?,
                    unit: "updates".into(),
                }),
                other => Err(Error::new(format!("cannot read state version {other}"))),
            }
        }
    }

    #[test]
    fn a_newer_release_restores_an_older_snapshot() {
        let old = snapshot(&CounterV1 { count: 41 }).unwrap();
        let new: CounterV2 = restore(&old, CounterV1::STATE_VERSION).unwrap();
        assert_eq!(
            new,
            CounterV2 {
                total: 41,
                unit: "updates".into()
            }
        );
        // Its own snapshots restore as they are.
        let again: CounterV2 = restore(&snapshot(&new).unwrap(), 2).unwrap();
        assert_eq!(again, new);
    }

    #[test]
    fn an_older_release_refuses_a_newer_snapshot() {
        let new = snapshot(&CounterV2 {
            total: 1,
            unit: "x".into(),
        })
        .unwrap();
        let err = restore::<CounterV1>(&new, 2).err().unwrap();
        assert!(err.message().contains("newer"), "{err}");
        // And a model without `upgrade` refuses older layouts it cannot read.
        let err = restore::<CounterV1>(br#"{"count": 1}"#, 0).err().unwrap();
        assert!(
            err.message().contains("cannot read state version 0"),
            "{err}"
        );
        let err = parse_config::<CounterV1>("{oops").err().unwrap();
        assert!(
            err.message().contains("invalid config for counter"),
            "{err}"
        );
    }

    /// A model with a large state that chooses its encoding at runtime.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Samples {
        values: Vec<f64>,
        label: String,
        binary: bool,
    }

    impl Model for Samples {
        type Config = serde_json::Value;
        const NAME: &'static str = "samples";
        const VERSION: &'static str = "1.0.0";

        fn init(_: Self::Config) -> Result<Self, Error> {
            Ok(Samples {
                values: (0..10_000).map(|i| f64::from(i) / 7.0).collect(),
                label: "é\"\\".repeat(1000),
                binary: true,
            })
        }

        fn on_update(&mut self, _: &Update, _: &mut Effects) -> Result<(), Error> {
            Ok(())
        }

        fn state_encoding(&self) -> StateEncoding {
            if self.binary {
                StateEncoding::Binary
            } else {
                StateEncoding::Json
            }
        }
    }

    #[test]
    fn a_binary_snapshot_is_marked_smaller_and_restores_exactly() {
        let model = Samples::init(Value::Null).unwrap();
        let binary = snapshot(&model).unwrap();
        assert!(binary.starts_with(BINARY_MARKER));
        let json = serde_json::to_vec(&model).unwrap();
        assert!(
            // Floats: 9 bytes each against ~18 characters.
            binary.len() * 10 < json.len() * 6,
            "binary {} bytes, JSON {}",
            binary.len(),
            json.len()
        );
        let back: Samples = restore(&binary, 1).unwrap();
        assert_eq!(back, model, "floats and escapes survive as they were");
    }

    #[test]
    fn either_encoding_is_read_whatever_the_model_writes_now() {
        let mut model = Samples::init(Value::Null).unwrap();
        model.binary = false;
        let json = snapshot(&model).unwrap();
        assert_eq!(json.first(), Some(&b'{'), "JSON stays the default's text");
        let back: Samples = restore(&json, 1).unwrap();
        assert_eq!(back, model);
        model.binary = true;
        let back: Samples = restore(&snapshot(&model).unwrap(), 1).unwrap();
        assert_eq!(back, model);
    }

    #[test]
    fn an_older_binary_snapshot_is_upgraded_through_json() {
        let mut old = BINARY_MARKER.to_vec();
        old.extend(rmp_serde::to_vec_named(&CounterV1 { count: 41 }).unwrap());
        let new: CounterV2 = restore(&old, 1).unwrap();
        assert_eq!(new.total, 41);
    }

    #[test]
    fn a_damaged_binary_snapshot_is_refused_naming_its_encoding() {
        let mut damaged = BINARY_MARKER.to_vec();
        damaged.extend([0xc1, 0x00, 0xff]);
        let err = restore::<Samples>(&damaged, 1).unwrap_err();
        assert!(
            err.message()
                .starts_with("snapshot does not match the state layout: (binary)"),
            "{err}"
        );
        let err = restore::<CounterV2>(&damaged, 1).unwrap_err();
        assert!(
            err.message()
                .starts_with("snapshot cannot be read: (binary)"),
            "{err}"
        );
    }

    #[test]
    fn config_errors_do_not_point_into_text_the_user_never_wrote() {
        let err = parse_config::<CounterV1>(r#"{"step": "#).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("invalid config for counter"), "{text}");
        assert!(!text.contains("line"), "{text}");
    }
}
