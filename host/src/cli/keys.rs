//! `wasmtwin keygen`, `sign` and `verify`: publisher keys and signed
//! components.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use wasmtwin::runtime::write_atomically;
use wasmtwin::signing::{self, KeyId, Metadata, TrustSet};

/// Arguments of `wasmtwin keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory for `wasmtwin.key` (private, mode 0600) and `wasmtwin.pub`.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace keys that already exist there.
    #[arg(long)]
    force: bool,
}

/// Writes a new key pair.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = signing::generate()?;
    let (private, public) = signing::write_pair(&args.out, &key, args.force)?;
    println!("private key: {}", private.display());
    println!("public key:  {}", public.display());
    println!("key id:      {}", KeyId::of(&key.verifying_key()));
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `wasmtwin sign`.
#[derive(Debug, Args)]
#[command(
    disable_version_flag = true,
    after_help = "\
Signing an already signed component adds a signature (e.g. an operator
counter-signing a publisher's release); the content and its metadata stay as
they are, so earlier signatures remain valid."
)]
pub struct SignArgs {
    /// The component to sign.
    component: PathBuf,
    /// The private key (PKCS#8 PEM, as `keygen` writes it).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Where to write the signed component [default: replace COMPONENT].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Name recorded in the signed metadata [default: the file name].
    #[arg(long)]
    name: Option<String>,
    /// Version recorded in the signed metadata.
    #[arg(long, default_value = "0.0.0")]
    version: String,
    /// Publisher recorded in the signed metadata [default: the key id].
    #[arg(long)]
    publisher: Option<String>,
}

/// Signs a component.
pub fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let key = signing::read_private(&args.key)?;
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let metadata = Metadata {
        name: args.name.unwrap_or_else(|| {
            args.component
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
        version: args.version,
        publisher: args
            .publisher
            .unwrap_or_else(|| KeyId::of(&key.verifying_key()).to_string()),
        signed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let signed = signing::sign(&bytes, &key, &metadata)
        .with_context(|| format!("signing {}", args.component.display()))?;
    let out = args.out.unwrap_or(args.component);
    write_atomically(&out, &signed).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "signed {} with key {}",
        out.display(),
        KeyId::of(&key.verifying_key())
    );
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `wasmtwin verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The component to check.
    component: PathBuf,
    /// A trusted public key, or a directory of them (`*.pub`, `*.pem`).
    #[arg(long, value_name = "PATH", env = "WASMTWIN_TRUST")]
    trust: PathBuf,
}

/// Verifies a component; exits 1 with the reason when it does not verify.
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let trust = TrustSet::load(&args.trust)?;
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let verified = signing::verify(&bytes, &trust)
        .with_context(|| format!("{} does not verify", args.component.display()))?;
    let (name, version, publisher, signed_at) = match &verified.metadata {
        Some(m) => (
            m.name.as_str(),
            m.version.as_str(),
            m.publisher.as_str(),
            m.signed_at.as_str(),
        ),
        None => ("(none)", "(none)", "(none)", "(none)"),
    };
    println!("verified:  {}", args.component.display());
    println!("publisher: {publisher}");
    println!("name:      {name} {version}");
    println!("signed at: {signed_at}");
    let ids: Vec<String> = verified.signers.iter().map(ToString::to_string).collect();
    println!("key id:    {}", ids.join(", "));
    println!("digest:    {}", verified.digest);
    Ok(ExitCode::SUCCESS)
}
