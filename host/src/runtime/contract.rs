//! Which version of the WIT contract (`wit/twin.wit`) a component was
//! built against, so that one built against another version is refused
//! with what to do about it rather than a list of missing functions.

use anyhow::bail;
use wasmtime::component::Component;

use super::Runtime;
use crate::digest::Digest;

/// The WIT package this host speaks.
pub const PACKAGE: &str = "wasmtwin:twin";
/// Its version.
pub const VERSION: &str = "0.2.0";

/// Refuses `component` if it exports `interface` (`model-api`,
/// `adapter-api`) of another version of the package than this host's.
pub fn check(
    runtime: &Runtime,
    component: &Component,
    digest: &Digest,
    interface: &str,
) -> anyhow::Result<()> {
    let prefix = format!("{PACKAGE}/{interface}@");
    let ty = component.component_type();
    for (name, _) in ty.exports(runtime.engine()) {
        if let Some(version) = name.strip_prefix(&prefix)
            && version != VERSION
        {
            bail!(
                "component {digest} was built against {PACKAGE}@{version}, but this host speaks \
                 {PACKAGE}@{VERSION}: rebuild it with the current wasmtwin-sdk"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_is_the_wit_files() {
        let wit = include_str!("../../../wit/twin.wit");
        let declared = format!("package {}@{};", super::PACKAGE, super::VERSION);
        assert!(
            wit.contains(&declared),
            "wit/twin.wit does not declare {declared}"
        );
    }
}
