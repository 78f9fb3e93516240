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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ActionInfo {
    /// Its name, as passed to [`Model::on_action`].
    pub name: &'static str,
    /// One line for humans.
    pub description: &'static str,
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
