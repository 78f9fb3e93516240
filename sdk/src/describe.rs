//! What a model offers: its properties, actions and events.

use serde::Serialize;

use crate::model::Model;

/// A property the model sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PropertyInfo {
    /// Its name, as used in [`Effects::set`](crate::Effects::set).
    pub name: &'static str,
    /// A JSON Schema type: `number`, `integer`, `string`, `boolean`,
    /// `object` or `array`.
    pub kind: &'static str,
    /// Unit of measure (UCUM code such as `Cel`, `mm/s`), or `""`.
    pub unit: &'static str,
    /// One line for humans.
    pub description: &'static str,
}

impl PropertyInfo {
    /// A property of the given JSON Schema type, with no unit.
    pub const fn new(name: &'static str, kind: &'static str, description: &'static str) -> Self {
        Self {
            name,
            kind,
            unit: "",
            description,
        }
    }

    /// The same property measured in `unit`.
    pub const fn unit(self, unit: &'static str) -> Self {
        Self { unit, ..self }
    }
}

/// An action the model accepts.
///
/// ```
/// use wasmtwin_sdk::ActionInfo;
/// const SET_SPEED: ActionInfo = ActionInfo::new("set_speed", "Set the target speed")
///     .input(r#"{"type": "object", "properties": {"rpm": {"type": "number", "minimum": 0}}, "required": ["rpm"]}"#)
///     .output(r#"{"type": "string"}"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ActionInfo {
    /// Its name, as passed to [`Model::on_action`].
    pub name: &'static str,
    /// One line for humans.
    pub description: &'static str,
    /// JSON Schema of its input (a JSON document), or `None` when it takes
    /// none. Thing Descriptions publish it, so generic clients can call the
    /// action.
    pub input: Option<&'static str>,
    /// JSON Schema of its reply, or `None`.
    pub output: Option<&'static str>,
}

impl ActionInfo {
    /// An action that takes no input and replies nothing of note.
    pub const fn new(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            input: None,
            output: None,
        }
    }

    /// The same action taking input described by the JSON Schema `schema`.
    pub const fn input(self, schema: &'static str) -> Self {
        Self {
            input: Some(schema),
            ..self
        }
    }

    /// The same action replying with what the JSON Schema `schema` describes.
    pub const fn output(self, schema: &'static str) -> Self {
        Self {
            output: Some(schema),
            ..self
        }
    }
}

/// An event the model emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EventInfo {
    /// Its name, as used in [`Effects::emit`](crate::Effects::emit).
    pub name: &'static str,
    /// One line for humans.
    pub description: &'static str,
}

/// Everything a model offers, as the host's `describe` call returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Description {
    /// [`Model::NAME`].
    pub name: &'static str,
    /// [`Model::VERSION`].
    pub version: &'static str,
    /// [`Model::STATE_VERSION`].
    pub state_version: u32,
    /// [`Model::PROPERTIES`].
    pub properties: &'static [PropertyInfo],
    /// [`Model::ACTIONS`].
    pub actions: &'static [ActionInfo],
    /// [`Model::EVENTS`].
    pub events: &'static [EventInfo],
}

/// The description of model `M`, built from its constants.
pub fn describe<M: Model>() -> Description {
    Description {
        name: M::NAME,
        version: M::VERSION,
        state_version: M::STATE_VERSION,
        properties: M::PROPERTIES,
        actions: M::ACTIONS,
        events: M::EVENTS,
    }
}
