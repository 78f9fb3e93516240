//! `wasmtwin publish` and `wasmtwin pull`: distributing components through
//! OCI registries and image-layout directories.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use wasmtwin::registry::{self, Location, Options};
use wasmtwin::runtime::write_atomically;

const REFERENCES: &str = "\
References:
  oci://HOST[:PORT]/REPO[:TAG]   an OCI registry (HTTPS; --insecure for plain HTTP)
  file://DIR[:TAG]               an OCI image-layout directory (tag defaults to `latest`)

Credentials come from WASMTWIN_REGISTRY_USERNAME and WASMTWIN_REGISTRY_PASSWORD,
else from the docker configuration (~/.docker/config.json or $DOCKER_CONFIG),
else none.";

/// Arguments of `wasmtwin publish`.
#[derive(Debug, Args)]
#[command(after_help = REFERENCES)]
pub struct PublishArgs {
    /// The (signed) component to publish.
    component: PathBuf,
    /// Where to publish it.
    reference: Location,
    /// Talk plain HTTP to the registry (a local or test registry only).
    #[arg(long)]
    insecure: bool,
}

/// Publishes a component.
pub fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let options = Options {
        insecure: args.insecure,
        ..Options::default()
    };
    let published = registry::publish(&args.reference, &bytes, &options)
        .with_context(|| format!("publishing {}", args.component.display()))?;
    println!("published {}", args.component.display());
    println!("component: {}", published.layer);
    println!("manifest:  {}", published.manifest);
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `wasmtwin pull`.
#[derive(Debug, Args)]
#[command(after_help = REFERENCES)]
pub struct PullArgs {
    /// What to fetch.
    reference: Location,
    /// Where to write the component.
    #[arg(short, long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    trust: super::TrustArgs,
    /// Talk plain HTTP to the registry (a local or test registry only).
    #[arg(long)]
    insecure: bool,
}

/// Pulls a component, checks its digest and signature, and writes it.
pub fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let policy = args.trust.policy()?;
    let options = Options {
        insecure: args.insecure,
        ..Options::default()
    };
    let bytes = registry::pull(&args.reference, &options)?;
    // Nothing is written unless the component is acceptable.
    let verified = policy.check(&bytes, &args.reference.to_string())?;
    write_atomically(&args.out, &bytes)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("pulled {} bytes to {}", bytes.len(), args.out.display());
    if let Some(verified) = verified {
        println!("digest:    {}", verified.digest);
        let ids: Vec<String> = verified.signers.iter().map(ToString::to_string).collect();
        println!("signed by: {}", ids.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
