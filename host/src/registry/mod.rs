//! Publishing components to, and pulling them from, OCI registries and
//! plain OCI image-layout directories, as CNCF Wasm OCI artifacts: config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer.
//!
//! Pulling checks the layer's digest; whether the component may run is for
//! the caller's trust policy to decide.

mod artifact;
mod auth;
mod layout;
mod oci;
mod progress;

pub use progress::bar as progress_bar;

use std::path::PathBuf;

use anyhow::{Context, bail};

pub use artifact::{CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE};
pub use auth::Credentials;

use crate::digest::Digest;

/// Where a component is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `oci://HOST[:PORT]/REPO[:TAG]`: a registry speaking the OCI
    /// distribution API.
    Registry {
        /// The image reference, e.g. `127.0.0.1:5000/twins/prime:1.0`.
        reference: String,
    },
    /// `file://DIR[:TAG]`: an OCI image-layout directory, for sites with no
    /// registry (the tag is after the last `:` of the last path segment).
    Layout {
        /// The layout's directory.
        dir: PathBuf,
        /// The tag.
        tag: String,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Registry { reference } => write!(f, "oci://{reference}"),
            Location::Layout { dir, tag } => write!(f, "file://{}:{tag}", dir.display()),
        }
    }
}

impl std::str::FromStr for Location {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        if let Some(rest) = text.strip_prefix("oci://") {
            if rest.is_empty() || !rest.contains('/') {
                bail!(
                    "`{text}` must name a registry and a repository: oci://HOST[:PORT]/REPO[:TAG]"
                );
            }
            // Let the OCI reference grammar judge the rest.
            oci_client::Reference::try_from(rest)
                .map_err(|e| anyhow::anyhow!("`{text}` is not a valid reference: {e}"))?;
            return Ok(Location::Registry {
                reference: rest.to_string(),
            });
        }
        if let Some(rest) = text.strip_prefix("file://") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') && !tag.is_empty() => (dir, tag),
                _ => (rest, "latest"),
            };
            if dir.is_empty() {
                bail!("`{text}` names no directory: file://DIR[:TAG]");
            }
            if !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                || tag.len() > 128
            {
                bail!("`{tag}` is not a valid tag (letters, digits, `.`, `_`, `-`; at most 128)");
            }
            return Ok(Location::Layout {
                dir: PathBuf::from(dir),
                tag: tag.to_string(),
            });
        }
        bail!("`{text}` must start with oci:// (a registry) or file:// (a directory)")
    }
}

/// How to talk to a registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Use plain HTTP (for a registry on a trusted local network).
    pub insecure: bool,
    /// Registries (`host[:port]`) reached over plain HTTP while the others
    /// use HTTPS (a node's `--registry-insecure`).
    pub insecure_hosts: Vec<String>,
    /// PEM certificates of further CAs that may sign a registry's
    /// certificate (a private CA), besides the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Who to log in as.
    pub credentials: Credentials,
}

/// What a push stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Digest of the component layer (the component's bytes).
    pub layer: Digest,
    /// Digest of the manifest, which names this exact artifact.
    pub manifest: String,
}

/// Publishes `component` at `location`.
pub fn publish(
    location: &Location,
    component: &[u8],
    options: &Options,
) -> anyhow::Result<Published> {
    let artifact = artifact::Artifact::for_component(component)?;
    match location {
        Location::Registry { reference } => {
            runtime()?.block_on(oci::push(reference, &artifact, options))
        }
        Location::Layout { dir, tag } => layout::push(dir, tag, &artifact),
    }
}

/// Fetches the component at `location`, checking its digest.
pub fn pull(location: &Location, options: &Options) -> anyhow::Result<Vec<u8>> {
    let bytes = match location {
        Location::Registry { reference } => runtime()?.block_on(oci::pull(reference, options))?,
        Location::Layout { dir, tag } => layout::pull(dir, tag)?,
    };
    Ok(bytes)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(
            "oci://127.0.0.1:5000/twins/prime:1.0"
                .parse::<Location>()
                .unwrap(),
            Location::Registry {
                reference: "127.0.0.1:5000/twins/prime:1.0".into()
            }
        );
        assert_eq!(
            "file:///srv/wasm/prime:1.0".parse::<Location>().unwrap(),
            Location::Layout {
                dir: "/srv/wasm/prime".into(),
                tag: "1.0".into()
            }
        );
        assert_eq!(
            "file://./store".parse::<Location>().unwrap(),
            Location::Layout {
                dir: "./store".into(),
                tag: "latest".into()
            }
        );
        for bad in [
            "prime.wasm",
            "oci://",
            "oci://host",
            "oci://HOST/UPPER",
            "file://",
            "file:///x:bad tag",
            "http://x/y",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad} should be refused");
        }
    }
}
