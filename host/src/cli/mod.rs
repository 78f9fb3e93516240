//! Command-line parsing and dispatch. Each subcommand lives in a module of
//! its own name; this file only wires them up.

mod client;
mod control;
mod experiment;
mod host;
mod keys;
mod local;
mod mobility;
mod open_files;
mod operator;
mod pt_sim;
mod registry;
mod run;
mod tokens;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use wasmtwin::runtime::{Runtime, RuntimeConfig, UNCHECKED_RESERVATION, default_cache_dir};
use wasmtwin::signing::TrustPolicy;
use wasmtwin::telemetry::{self, Export, Exporter};

/// Host trustworthy digital twins as signed, sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "wasmtwin", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log filter, e.g. `info` or `wasmtwin=debug` (also `WASMTWIN_LOG`).
    /// The embedded broker logs each connection at `info`: by default
    /// only its warnings show.
    #[arg(
        long,
        global = true,
        env = "WASMTWIN_LOG",
        default_value = "info,rumqttd=warn"
    )]
    log: String,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Where compiled components are cached [default: ~/.cache/wasmtwin/components].
    #[arg(long, global = true, env = "WASMTWIN_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile components afresh instead of using the on-disk cache.
    #[arg(long, global = true)]
    no_cache: bool,
    /// Export traces to this OpenTelemetry collector over OTLP/HTTP
    /// (`http://HOST:4318`, or the full `…/v1/traces` URL); off when absent.
    #[arg(
        long,
        global = true,
        env = "WASMTWIN_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    otlp_endpoint: Option<String>,
    /// The share of the traces started here that are exported (a trace
    /// continued from a caller follows the caller's choice).
    #[arg(
        long,
        global = true,
        env = "WASMTWIN_OTLP_SAMPLE_RATIO",
        value_name = "RATIO",
        default_value_t = 1.0,
        value_parser = ratio
    )]
    otlp_sample_ratio: f64,
    /// Address space reserved for each twin's linear memory (model and
    /// adapter each have one). Under 4GiB, compiled code checks every
    /// memory access (a computing guest takes about 5 % longer) and a node
    /// holds many more awake twins in less memory; 4GiB is wasmtime's own
    /// default, with no checks and room for about 16,000 awake twins. A
    /// memory that outgrows its reservation is moved by a copy.
    #[arg(
        long,
        global = true,
        env = "WASMTWIN_MEMORY_RESERVATION",
        value_name = "SIZE",
        default_value = "64MiB",
        value_parser = memory_reservation
    )]
    memory_reservation: u64,
}

/// A number from 0 to 1.
fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{text}` is not a number from 0 to 1")),
    }
}

/// `--memory-reservation`: a whole number of WebAssembly pages, up to 4GiB.
fn memory_reservation(text: &str) -> Result<u64, String> {
    const PAGE: u64 = 64 << 10;
    let bytes = text
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("`{text}` is not a size like 64MiB or 4GiB: {e}"))?
        .as_u64();
    if bytes == 0 || bytes % PAGE != 0 {
        return Err(format!(
            "`{text}` is not a whole, non-zero number of 64KiB WebAssembly pages"
        ));
    }
    if bytes > UNCHECKED_RESERVATION {
        return Err(format!("`{text}` is over 4GiB, the most a memory can use"));
    }
    Ok(bytes)
}

/// Which components may run.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Trusted publisher keys: a public key file or a directory of them.
    #[arg(long, value_name = "PATH", env = "WASMTWIN_TRUST")]
    trust: Option<PathBuf>,
    /// Accept components without verifying their signatures (development
    /// only; every load is logged as a warning).
    #[arg(long)]
    allow_unsigned: bool,
}

impl TrustArgs {
    /// The policy these flags ask for.
    pub fn policy(&self) -> anyhow::Result<TrustPolicy> {
        TrustPolicy::from_args(self.trust.as_deref(), self.allow_unsigned)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start everything on this machine: embedded broker, node, demo twin
    /// and a simulated motor.
    Up(up::UpArgs),
    /// Run a node that hosts twins.
    Host(Box<host::HostArgs>),
    /// Run the control plane, which places twins on nodes and keeps them
    /// entangled.
    Control(Box<control::ControlArgs>),
    /// Run the control plane inside Kubernetes: `DigitalTwin` resources in,
    /// their status out, one leader among the replicas.
    Operator(Box<operator::OperatorArgs>),
    /// Cordon a node and wait until its twins have moved away (a host
    /// pod's preStop hook).
    Drain(operator::DrainArgs),
    /// Create or update a twin from a spec, on a node or the control plane.
    Apply(client::ApplyArgs),
    /// Read twins (from a node or the control plane), nodes or events.
    Get(client::GetArgs),
    /// Read the control plane's event history, or verify it.
    Events(control::EventsArgs),
    /// Set a trust domain's trust level on the control plane.
    Domain(control::DomainArgs),
    /// Save a running twin's checkpoint bundle (state, spec, history).
    Checkpoint(mobility::CheckpointArgs),
    /// Start a twin on a node from a checkpoint bundle.
    Restore(mobility::RestoreArgs),
    /// Move a twin to another node while it runs, losing no update.
    ///
    /// The target verifies the components, copies the history and listens
    /// to the device; then the source stops the twin and hands it over. If
    /// a step fails, the twin stays on (or resumes on) the source and the
    /// error says which step. If the target's answer to the handover is
    /// lost, the command asks the target whether the twin landed and ends
    /// the move accordingly; should the target not answer within 30 s, the
    /// twin stays stopped on the source (so that it never runs on both)
    /// until the move is ended with `--end`. One move of a twin at a
    /// time: a second is refused with 409.
    Migrate(mobility::MigrateArgs),
    /// Replace a twin's model while it runs (or roll back).
    Swap(mobility::SwapArgs),
    /// Simulate a motor publishing telemetry over MQTT.
    PtSim(pt_sim::PtSimArgs),
    /// Reproduce the seed paper's experiment (network slowdown, heavier
    /// model, slower device) with and without the control plane, and draw
    /// its figure.
    Experiment(experiment::ExperimentArgs),
    /// Run a model component against recorded updates (for plugin authors).
    Run(run::RunArgs),
    /// Create, revoke or list API tokens with roles (`--tokens FILE`).
    Token(tokens::TokenArgs),
    /// Create a publisher key pair.
    Keygen(keys::KeygenArgs),
    /// Sign a component (or counter-sign a signed one).
    Sign(keys::SignArgs),
    /// Check a component's signature against trusted keys.
    Verify(keys::VerifyArgs),
    /// Push a component to an OCI registry or image-layout directory.
    Publish(registry::PublishArgs),
    /// Fetch a component, check its digest and signature, and save it.
    Pull(registry::PullArgs),
}

/// Sends logs to standard error, leaving standard output to command
/// results, and traces to the OTLP collector if one is named: the
/// exporter to shut down at exit.
pub fn init_logging(global: &GlobalArgs) -> anyhow::Result<Option<Exporter>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let export = global
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| Export::new(endpoint, global.otlp_sample_ratio))
        .transpose()
        .context("--otlp-endpoint")?;
    let traces = telemetry::filter_directives(export.is_some());
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{},{traces}", global.log))
        .unwrap_or_else(|e| {
            eprintln!("warning: ignoring log filter `{}`: {e}", global.log);
            tracing_subscriber::EnvFilter::new(format!("info,{traces}"))
        });
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = match global.log_format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs
            .json()
            .event_format(telemetry::WithTraceIds(
                tracing_subscriber::fmt::format().json(),
            ))
            .boxed(),
    };
    let (exporter, tracer) = match &export {
        Some(export) => {
            let (exporter, tracer) = Exporter::start(export)?;
            (Some(exporter), Some(tracer))
        }
        None => (None, None),
    };
    let traces = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // The attributes are ours; where in the code, and on which
            // thread, only make every span larger.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(wasmtwin::broker::QuietCleanEnds)
        .with(logs)
        .with(traces)
        .init();
    if let Some(export) = &export {
        tracing::info!(endpoint = %export.endpoint, ratio = export.sample_ratio, "exporting traces over OTLP");
    }
    Ok(exporter)
}

impl GlobalArgs {
    pub fn runtime(&self) -> anyhow::Result<Runtime> {
        Runtime::new(RuntimeConfig {
            fuel: true,
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir.clone().or_else(default_cache_dir)
            },
            memory_reservation: self.memory_reservation,
        })
    }
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Up(args) => up::run(&self.global, args),
            Command::Host(args) => host::run(&self.global, *args),
            Command::Control(args) => control::run(*args),
            Command::Events(args) => control::events(args),
            Command::Domain(args) => control::domain(args),
            Command::Operator(args) => operator::run(*args),
            Command::Drain(args) => operator::drain(args),
            Command::Apply(args) => client::apply(args),
            Command::Get(args) => client::get(args),
            Command::Checkpoint(args) => mobility::checkpoint(args),
            Command::Restore(args) => mobility::restore(args),
            Command::Migrate(args) => mobility::migrate(args),
            Command::Swap(args) => mobility::swap(args),
            Command::PtSim(args) => pt_sim::run(args),
            Command::Experiment(args) => experiment::run(&self.global, args),
            Command::Run(args) => run::run(&self.global, args),
            Command::Token(args) => tokens::run(args),
            Command::Keygen(args) => keys::keygen(args),
            Command::Sign(args) => keys::sign(args),
            Command::Verify(args) => keys::verify(args),
            Command::Publish(args) => registry::publish(args),
            Command::Pull(args) => registry::pull(args),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_parses_its_own_help() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn a_memory_reservation_is_whole_webassembly_pages() {
        assert_eq!(super::memory_reservation("64MiB"), Ok(64 << 20));
        assert_eq!(super::memory_reservation("4GiB"), Ok(4 << 30));
        for bad in ["0", "100000", "1.5KiB", "lots", "-1MiB", "8GiB"] {
            let error = super::memory_reservation(bad).expect_err(bad);
            assert!(error.contains(bad), "{error}");
        }
    }
}
