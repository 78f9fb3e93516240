//! The [`Adapter`] trait a protocol adapter implements.

use crate::error::Error;
use crate::model::{Command, Update};

/// Translates between a device's wire format and updates/commands.
///
/// Adapters keep no state: the host may call them from several twins.
pub trait Adapter: 'static {
    /// Decodes one message received on `topic` into the updates it carries.
    fn decode(topic: &str, payload: &[u8]) -> Result<Vec<Update>, Error>;

    /// Encodes a command for the device.
    fn encode(command: &Command) -> Result<Vec<u8>, Error>;
}
