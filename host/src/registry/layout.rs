//! An OCI image-layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) as a repository, so air-gapped sites can carry
//! components on a disk and other OCI tools can read it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};

use super::Published;
use super::artifact::{Artifact, MANIFEST_MEDIA_TYPE, check_blob, component_layer};
use crate::digest::Digest;
use crate::runtime::write_atomically;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

fn blob_path(dir: &Path, digest: &str) -> anyhow::Result<std::path::PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .with_context(|| format!("`{digest}` is not a sha256 digest"))?;
    Ok(dir.join("blobs").join("sha256").join(hex))
}

fn write_blob(dir: &Path, bytes: &[u8]) -> anyhow::Result<String> {
    let digest = Digest::of(bytes).to_string();
    let path = blob_path(dir, &digest)?;
    if !path.exists() {
        write_atomically(&path, bytes)?;
    }
    Ok(digest)
}

fn read_index(dir: &Path) -> anyhow::Result<OciImageIndex> {
    let path = dir.join("index.json");
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an OCI image index", path.display()))
}

pub fn push(dir: &Path, tag: &str, artifact: &Artifact) -> anyhow::Result<Published> {
    std::fs::create_dir_all(dir.join("blobs").join("sha256"))
        .with_context(|| format!("creating the layout {}", dir.display()))?;
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        write_atomically(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    write_blob(dir, &artifact.layer.data)?;
    write_blob(dir, &artifact.config.data)?;
    let manifest_bytes = serde_json::to_vec(&artifact.manifest)?;
    let manifest_digest = write_blob(dir, &manifest_bytes)?;

    let mut index = if dir.join("index.json").exists() {
        read_index(dir)?
    } else {
        OciImageIndex {
            schema_version: 2,
            media_type: Some(INDEX_MEDIA_TYPE.to_string()),
            manifests: Vec::new(),
            artifact_type: None,
            annotations: None,
        }
    };
    // A tag names one manifest: drop the one it named before.
    index.manifests.retain(|m| {
        m.annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .map(String::as_str)
            != Some(tag)
    });
    index.manifests.push(oci_client::manifest::ImageIndexEntry {
        media_type: MANIFEST_MEDIA_TYPE.to_string(),
        digest: manifest_digest.clone(),
        size: manifest_bytes.len() as i64,
        platform: None,
        artifact_type: None,
        annotations: Some(BTreeMap::from([(REF_NAME.to_string(), tag.to_string())])),
    });
    write_atomically(&dir.join("index.json"), &serde_json::to_vec_pretty(&index)?)?;
    Ok(Published {
        layer: Digest::of(&artifact.layer.data),
        manifest: manifest_digest,
    })
}

fn read_blob(dir: &Path, descriptor: &OciDescriptor) -> anyhow::Result<Vec<u8>> {
    let path = blob_path(dir, &descriptor.digest)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading blob {}", path.display()))?;
    check_blob(&bytes, &descriptor.digest, descriptor.size)?;
    Ok(bytes)
}

pub fn pull(dir: &Path, tag: &str) -> anyhow::Result<Vec<u8>> {
    let index = read_index(dir)?;
    let entry = index.manifests.iter().find(|m| {
        m.annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .map(String::as_str)
            == Some(tag)
    });
    let Some(entry) = entry else {
        bail!("{} has no tag `{tag}`", dir.display());
    };
    let manifest_bytes = read_blob(
        dir,
        &OciDescriptor {
            media_type: entry.media_type.clone(),
            digest: entry.digest.clone(),
            size: entry.size,
            ..OciDescriptor::default()
        },
    )?;
    let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes)
        .context("the tagged manifest is not an OCI image manifest")?;
    let layer = component_layer(&manifest)?;
    read_blob(dir, layer)
}
