//! What a signature says about a component besides who signed it: its name,
//! version, publisher and signing time, in a custom section of its own that
//! the signature covers.

use serde::{Deserialize, Serialize};

/// Name of the custom section holding the metadata.
pub const SECTION: &str = "wasmtwin:metadata";

/// Signed facts about a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The component's name, e.g. `prime`.
    pub name: String,
    /// Its release, e.g. `0.1.0`.
    pub version: String,
    /// Who published it.
    pub publisher: String,
    /// When it was signed (RFC 3339, UTC).
    pub signed_at: String,
}
