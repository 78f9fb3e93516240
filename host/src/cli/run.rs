//! `wasmtwin run`: feed a model component recorded updates and print what it
//! does, the way a plugin author tries a model before publishing it.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use clap::Args;
use serde_json::{Value, json};
use wasmtwin::checkpoint::Checkpoint;
use wasmtwin::runtime::{Failure, Limits, Update, write_atomically};
use wasmtwin::twin::{Applied, RestorePolicy, Twin};

use super::GlobalArgs;

/// Arguments of `wasmtwin run`.
#[derive(Debug, Args)]
#[command(after_help = "\
Each line of the updates file is {\"seq\": N, \"ts_ms\": N, \"property\": \"name\", \"value\": <json>}.
Output, one JSON object per line: {\"seq\", \"property\", \"value\"} for each state change,
{\"seq\", \"event\", \"data\"} for each event, {\"seq\", \"refused\"} when the model refuses an
update, and last {\"state\": {...}} with every property's final value.

Examples (a signed component with --trust KEYS, or your own build with --allow-unsigned):
  wasmtwin run prime.wasm --updates recording.jsonl --config '{\"primes\": 25000}' --trust keys/
  wasmtwin run prime.wasm --updates first-half.jsonl --checkpoint half.ckpt --allow-unsigned
  wasmtwin run prime.wasm --updates second-half.jsonl --restore half.ckpt --allow-unsigned")]
pub struct RunArgs {
    /// The model component (.wasm) to run.
    component: PathBuf,
    /// Updates to apply, one JSON object per line; `-` reads standard input.
    #[arg(long, value_name = "FILE.jsonl")]
    updates: PathBuf,
    /// The model's configuration, a JSON object (ignored with --restore
    /// unless given explicitly, when it reconfigures the restored model).
    #[arg(long, value_name = "JSON")]
    config: Option<String>,
    /// Fuel (about one per WebAssembly instruction) each update may burn.
    #[arg(long, value_name = "N", default_value_t = Limits::default().fuel_per_call)]
    fuel_per_update: u64,
    /// Linear memory the model may hold, e.g. `16MiB`.
    #[arg(long, value_name = "SIZE", default_value = "64MiB")]
    memory_limit: ByteSize,
    /// Wall-clock time each call may take, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    deadline_ms: u64,
    /// Write a checkpoint here after the last update.
    #[arg(long, value_name = "OUT")]
    checkpoint: Option<PathBuf>,
    /// Start from this checkpoint instead of a fresh model.
    #[arg(long, value_name = "IN")]
    restore: Option<PathBuf>,
    /// With --restore: accept a checkpoint written by another build of the
    /// same model, if this build reads its state version.
    #[arg(long, requires = "restore")]
    upgrade: bool,
    /// The twin's name in logs and errors [default: the checkpoint's, or the
    /// component's file name].
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    trust: super::TrustArgs,
}

fn parse_config(text: &str) -> anyhow::Result<Value> {
    let value: Value = serde_json::from_str(text).context("--config is not valid JSON")?;
    if !value.is_object() {
        bail!("--config must be a JSON object, got {value}");
    }
    Ok(value)
}

fn open_updates(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let file =
        File::open(path).with_context(|| format!("opening updates file {}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

fn read_checkpoint(path: &Path) -> anyhow::Result<Checkpoint> {
    let file =
        File::open(path).with_context(|| format!("opening checkpoint {}", path.display()))?;
    Checkpoint::read_from(BufReader::new(file))
        .with_context(|| format!("reading checkpoint {}", path.display()))
}

fn emit(out: &mut impl Write, value: &Value) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Runs the subcommand.
pub fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    // Check every input before doing any work.
    let config = args.config.as_deref().map(parse_config).transpose()?;
    let checkpoint = args.restore.as_deref().map(read_checkpoint).transpose()?;
    let mut updates = open_updates(&args.updates)?;
    let policy = args.trust.policy()?;
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading component {}", args.component.display()))?;
    policy.check(&bytes, &args.component.display().to_string())?;

    let limits = Limits {
        fuel_per_call: args.fuel_per_update,
        memory_bytes: args.memory_limit.as_u64(),
        deadline: Duration::from_millis(args.deadline_ms),
    };
    let runtime = global.runtime()?;
    // Guest calls are async (they yield at every epoch tick); one thread
    // drives them here, as there is nothing else to run meanwhile.
    let guest = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("starting the guest runtime")?;
    let component = runtime
        .load_model(&bytes)
        .with_context(|| format!("loading {}", args.component.display()))?;
    let mut twin = match &checkpoint {
        Some(checkpoint) => {
            let policy = if args.upgrade {
                RestorePolicy::Upgrade
            } else {
                RestorePolicy::SameComponent
            };
            let mut twin = guest.block_on(Twin::restore(
                &runtime, &component, checkpoint, limits, policy,
            ))?;
            if let Some(config) = &config {
                guest.block_on(twin.reconfigure(config))?;
            }
            twin
        }
        None => {
            let name = args.name.clone().unwrap_or_else(|| {
                args.component
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "twin".into())
            });
            guest.block_on(Twin::create(
                &runtime,
                &component,
                &name,
                limits,
                config.as_ref().unwrap_or(&json!({})),
            ))?
        }
    };

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut line = String::new();
    let mut line_no = 0u64;
    loop {
        line.clear();
        line_no += 1;
        let read = updates
            .read_line(&mut line)
            .with_context(|| format!("{}:{line_no}: cannot read", args.updates.display()))?;
        if read == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let update: Update = serde_json::from_str(&line)
            .with_context(|| format!("{}:{line_no}: not an update", args.updates.display()))?;
        let applied = guest
            .block_on(twin.apply(&update))
            .map_err(anyhow::Error::from);
        match applied {
            Ok(Applied::Changed(effects)) => {
                for (property, value) in effects.changes {
                    emit(
                        &mut out,
                        &json!({ "seq": update.seq, "property": property, "value": value }),
                    )?;
                }
                for (name, data) in effects.events {
                    emit(
                        &mut out,
                        &json!({ "seq": update.seq, "event": name, "data": data }),
                    )?;
                }
            }
            Ok(Applied::Duplicate { last_seq }) => {
                tracing::warn!(
                    seq = update.seq,
                    last_seq,
                    "skipping an update that was already applied"
                );
            }
            Err(e) => match e
                .downcast_ref::<wasmtwin::runtime::GuestError>()
                .map(|g| &g.failure)
            {
                Some(Failure::Refused { message }) => {
                    emit(&mut out, &json!({ "seq": update.seq, "refused": message }))?;
                }
                _ => {
                    out.flush()?;
                    return Err(e.context(format!(
                        "{}:{line_no}: update {}",
                        args.updates.display(),
                        update.seq
                    )));
                }
            },
        }
    }

    if let Some(path) = &args.checkpoint {
        let bytes = guest.block_on(twin.checkpoint())?.to_bytes()?;
        write_atomically(path, &bytes)
            .with_context(|| format!("writing checkpoint {}", path.display()))?;
        tracing::info!(path = %path.display(), bytes = bytes.len(), "checkpoint written");
    }
    emit(&mut out, &json!({ "state": twin.state().properties }))?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
