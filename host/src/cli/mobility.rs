//! `wasmtwin checkpoint`, `restore`, `migrate` and `swap`: a twin's
//! movements, from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use wasmtwin::client::{self, NodeClient};
use wasmtwin::node::Bundle;

use super::client::{Target, io};

/// Arguments of `wasmtwin checkpoint`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// The twin.
    name: String,
    /// Where to write the bundle.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Put the model and adapter components in the bundle too, so it can be
    /// restored where they cannot be fetched.
    #[arg(long)]
    with_component: bool,
    #[command(flatten)]
    target: Target,
}

/// Arguments of `wasmtwin restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The bundle (from `wasmtwin checkpoint`).
    file: PathBuf,
    /// Overwrite a twin of the same name on the node.
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    target: Target,
}

/// Arguments of `wasmtwin migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The twin.
    name: String,
    /// The node it runs on now.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The node it moves to.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Bearer token for both nodes (also `WASMTWIN_TOKEN`).
    #[arg(long, env = "WASMTWIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Token for the source node, if it differs.
    #[arg(long, hide_env_values = true)]
    from_token: Option<String>,
    /// Token for the target node, if it differs.
    #[arg(long, hide_env_values = true)]
    to_token: Option<String>,
    /// Hand over the whole state in the pause, rather than sending a
    /// snapshot ahead and only what changed since (which takes a second
    /// snapshot, and holds a copy of the state on both nodes until then).
    #[arg(long)]
    no_precopy: bool,
    /// Send a snapshot ahead, but hand over the state's changes since,
    /// rather than the messages applied since for the target to replay on
    /// it (for a model whose state is not a function of the updates it
    /// applies: one that reads the clock or draws random numbers).
    #[arg(long, conflicts_with = "no_precopy")]
    no_replay: bool,
    /// Do not move the twin: end a move of it that was left unfinished
    /// (its conductor stopped, or the target's answer was lost). The
    /// arrival on the target is withdrawn; if the twin runs there, the
    /// source records the move, else the twin resumes on the source.
    #[arg(long, conflicts_with_all = ["no_precopy", "no_replay"])]
    end: bool,
}

/// Arguments of `wasmtwin swap`.
#[derive(Debug, Args)]
pub struct SwapArgs {
    /// The twin.
    name: String,
    /// The new model: a path on the node, `file://` or `oci://`.
    #[arg(long, value_name = "REF", required_unless_present = "rollback")]
    model: Option<String>,
    /// The new model's expected digest.
    #[arg(long, requires = "model")]
    digest: Option<String>,
    /// Swap back to the model that ran before the last swap.
    #[arg(long, conflicts_with = "model")]
    rollback: bool,
    #[command(flatten)]
    target: Target,
}

/// Saves a running twin's bundle, streamed to a file next to the output,
/// checked, then moved into place.
pub fn checkpoint(args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let client = args.target.client();
    let dir = match args.output.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let len = io()?.block_on(client.checkpoint(&args.name, args.with_component, &mut file))?;
    file.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", args.output.display()))?;
    let parsed = Bundle::read(std::io::BufReader::new(file.reopen()?))
        .context("the node sent a damaged bundle")?;
    file.persist(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "{}: twin `{}`, model {} {}, {} history rows{}, {len} bytes",
        args.output.display(),
        args.name,
        parsed.checkpoint.model.name,
        parsed.checkpoint.model.version,
        parsed.history.rows().unwrap_or(0),
        if parsed.components.is_some() {
            ", components included"
        } else {
            ""
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// Starts a twin on a node from a bundle.
pub fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let open = || {
        std::fs::File::open(&args.file).with_context(|| format!("reading {}", args.file.display()))
    };
    // Refuse a damaged bundle here, with the reason, before the node is asked.
    let parsed = Bundle::read(std::io::BufReader::new(open()?))
        .with_context(|| format!("{} is not a usable bundle", args.file.display()))?;
    let name = parsed.spec.name().to_string();
    io()?.block_on(
        args.target
            .client()
            .restore_file(&name, open()?, args.replace),
    )?;
    println!("twin `{name}` restored");
    Ok(ExitCode::SUCCESS)
}

/// Moves a twin between nodes, live.
pub fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let from = NodeClient::new(&args.from, args.from_token.or(args.token.clone()));
    let to = NodeClient::new(&args.to, args.to_token.or(args.token));
    if args.end {
        let name = &args.name;
        match io()?.block_on(client::end_move(name, &from, &to))? {
            client::Ended::OnTarget => println!(
                "twin `{name}` runs on {}; {} has recorded the move",
                to.base(),
                from.base()
            ),
            client::Ended::OnSource => println!(
                "twin `{name}` did not land on {} (its arrival there is withdrawn); it runs on {}",
                to.base(),
                from.base()
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = async |step| match step {
        client::Step::TargetReady => {
            eprintln!(
                "{}: components verified, history copied, listening",
                to.base()
            )
        }
        client::Step::HandingOver => eprintln!("{}: handing the twin over", from.base()),
    };
    let precopy = if args.no_precopy {
        client::Precopy::Nothing
    } else if args.no_replay {
        client::Precopy::State
    } else {
        client::Precopy::Replay
    };
    let moved = io()?.block_on(client::migrate_observed(
        &args.name, &from, &to, precopy, report,
    ))?;
    println!(
        "twin `{}` moved from {} to {}: updates paused {:.1} ms, {:.1} ms in all, {} byte bundle{}",
        args.name,
        from.base(),
        to.base(),
        moved.pause.as_secs_f64() * 1e3,
        moved.total.as_secs_f64() * 1e3,
        moved.bundle_bytes,
        moved
            .first_buffered
            .map(|seq| format!(", the target went on from update {seq}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// Replaces a twin's model while it runs.
pub fn swap(args: SwapArgs) -> anyhow::Result<ExitCode> {
    let to = args
        .model
        .as_deref()
        .map(|model| (model, args.digest.as_deref()));
    let report = io()?.block_on(args.target.client().swap(&args.name, to))?;
    println!(
        "twin `{}` now runs {} {} ({}); updates paused {} µs",
        args.name,
        report["to"]["name"].as_str().unwrap_or("?"),
        report["to"]["version"].as_str().unwrap_or("?"),
        report["to"]["component"].as_str().unwrap_or("?"),
        report["pauseUs"]
    );
    Ok(ExitCode::SUCCESS)
}
