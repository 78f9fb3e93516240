//! Push and pull through the OCI distribution API.

use anyhow::{Context, bail};
use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciManifest;
use oci_client::{Client, Reference, RegistryOperation};

use super::artifact::{Artifact, check_blob, component_layer};
use super::{Options, Published, progress};
use crate::digest::Digest;

/// Upload chunk size: small enough for a smooth progress bar, large enough
/// that a component takes few round trips.
const CHUNK: usize = 256 * 1024;

fn client(options: &Options) -> Client {
    let protocol = if options.insecure {
        ClientProtocol::Http
    } else if options.insecure_hosts.is_empty() {
        ClientProtocol::Https
    } else {
        ClientProtocol::HttpsExcept(options.insecure_hosts.clone())
    };
    let extra_root_certificates = options
        .ca_pem
        .iter()
        .map(|pem| Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.clone(),
        })
        .collect();
    Client::new(ClientConfig {
        protocol,
        extra_root_certificates,
        ..ClientConfig::default()
    })
}

fn parse(reference: &str) -> anyhow::Result<Reference> {
    Reference::try_from(reference)
        .map_err(|e| anyhow::anyhow!("`{reference}` is not a valid reference: {e}"))
}

pub async fn push(
    reference: &str,
    artifact: &Artifact,
    options: &Options,
) -> anyhow::Result<Published> {
    let image = parse(reference)?;
    let client = client(options);
    let auth = options.credentials.resolve(image.resolve_registry());
    client
        .auth(&image, &auth, RegistryOperation::Push)
        .await
        .with_context(|| format!("logging in to {}", image.resolve_registry()))?;

    let layer_digest = artifact.layer_digest();
    if client
        .blob_exists(&image, &layer_digest)
        .await
        .unwrap_or(false)
    {
        tracing::info!(digest = %layer_digest, "the registry already has the component; not uploading it again");
    } else {
        let data = artifact.layer.data.clone();
        let bar = progress::bar("pushing", Some(data.len() as u64));
        let chunks: Vec<bytes::Bytes> = (0..data.len())
            .step_by(CHUNK)
            .map(|start| data.slice(start..(start + CHUNK).min(data.len())))
            .collect();
        let counted = bar.clone();
        let stream = futures_util::stream::iter(chunks).map(move |chunk| {
            counted.inc(chunk.len() as u64);
            Ok(chunk)
        });
        client
            .push_blob_stream(&image, stream, &layer_digest)
            .await
            .with_context(|| format!("uploading the component to {reference}"))?;
        bar.finish_and_clear();
    }
    let config_digest = artifact.manifest.config.digest.clone();
    client
        .push_blob(&image, artifact.config.data.clone(), &config_digest)
        .await
        .with_context(|| format!("uploading the config to {reference}"))?;
    client
        .push_manifest(&image, &OciManifest::Image(artifact.manifest.clone()))
        .await
        .with_context(|| format!("uploading the manifest to {reference}"))?;
    // The digest the registry itself gives the manifest, which is what a
    // pull by digest must name.
    let manifest = client
        .fetch_manifest_digest(&image, &auth)
        .await
        .with_context(|| format!("reading back the manifest digest of {reference}"))?;
    Ok(Published {
        layer: Digest::of(&artifact.layer.data),
        manifest,
    })
}

pub async fn pull(reference: &str, options: &Options) -> anyhow::Result<Vec<u8>> {
    let image = parse(reference)?;
    let client = client(options);
    let auth = options.credentials.resolve(image.resolve_registry());
    let (manifest, _digest) = client
        .pull_image_manifest(&image, &auth)
        .await
        .with_context(|| format!("fetching the manifest of {reference}"))?;
    let layer = component_layer(&manifest)?.clone();
    let size = u64::try_from(layer.size).unwrap_or(0);
    let mut stream = client
        .pull_blob_stream(&image, &layer)
        .await
        .with_context(|| format!("fetching the component of {reference}"))?;
    let bar = progress::bar("pulling", Some(stream.content_length.unwrap_or(size)));
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = stream.stream.next().await {
        let chunk = chunk.with_context(|| format!("downloading the component of {reference}"))?;
        bar.inc(chunk.len() as u64);
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > size {
            bail!("the registry sent more than the {size} bytes the manifest promised");
        }
    }
    bar.finish_and_clear();
    check_blob(&bytes, &layer.digest, layer.size)?;
    Ok(bytes)
}
