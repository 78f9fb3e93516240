//! The OCI artifact that carries a component: its config, layer and
//! manifest, built once and stored the same way in a registry or a layout.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_wasm::{ToConfig, WasmConfig};

use crate::digest::Digest;

/// Media type of the artifact's config.
pub const CONFIG_MEDIA_TYPE: &str = oci_wasm::WASM_MANIFEST_CONFIG_MEDIA_TYPE;
/// Media type of the layer holding the component.
pub const LAYER_MEDIA_TYPE: &str = oci_wasm::WASM_LAYER_MEDIA_TYPE;
/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = oci_wasm::WASM_MANIFEST_MEDIA_TYPE;

/// A component packaged for an OCI store.
pub struct Artifact {
    pub layer: ImageLayer,
    pub config: Config,
    pub manifest: OciImageManifest,
}

impl Artifact {
    /// Packages `component`; refuses bytes that are not a component.
    pub fn for_component(component: &[u8]) -> anyhow::Result<Self> {
        let (wasm_config, layer) = WasmConfig::from_raw_component(component.to_vec(), None)
            .context("the file is not a WebAssembly component")?;
        let config = wasm_config.to_config()?;
        let mut annotations = BTreeMap::new();
        annotations.insert(
            "org.opencontainers.image.created".to_string(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        );
        let mut manifest =
            OciImageManifest::build(std::slice::from_ref(&layer), &config, Some(annotations));
        manifest.media_type = Some(MANIFEST_MEDIA_TYPE.to_string());
        Ok(Self {
            layer,
            config,
            manifest,
        })
    }

    /// The layer's digest, as the manifest names it.
    pub fn layer_digest(&self) -> String {
        self.layer.sha256_digest()
    }
}

/// Picks the component layer out of a pulled manifest, refusing artifacts
/// that are not Wasm.
pub fn component_layer(
    manifest: &OciImageManifest,
) -> anyhow::Result<&oci_client::manifest::OciDescriptor> {
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        bail!(
            "the artifact's config is `{}`, not a Wasm component (`{CONFIG_MEDIA_TYPE}`)",
            manifest.config.media_type
        );
    }
    let layers: Vec<_> = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == LAYER_MEDIA_TYPE)
        .collect();
    match layers.as_slice() {
        [layer] => Ok(layer),
        [] => bail!("the artifact has no `{LAYER_MEDIA_TYPE}` layer"),
        _ => bail!(
            "the artifact has {} `{LAYER_MEDIA_TYPE}` layers; expected one",
            layers.len()
        ),
    }
}

/// Checks `bytes` against the digest and size a descriptor promised.
pub fn check_blob(bytes: &[u8], digest: &str, size: i64) -> anyhow::Result<()> {
    if i64::try_from(bytes.len()).ok() != Some(size) {
        bail!(
            "the layer is {} bytes, but its manifest says {size}",
            bytes.len()
        );
    }
    let actual = Digest::of(bytes).to_string();
    if actual != digest {
        bail!("the layer's digest is {actual}, but its manifest says {digest}");
    }
    Ok(())
}
