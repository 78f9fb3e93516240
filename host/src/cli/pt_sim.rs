//! `wasmtwin pt-sim`: a simulated motor publishing telemetry.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use wasmtwin::physical::BrokerAddress;
use wasmtwin::sim::{self, SimConfig};

/// Arguments of `wasmtwin pt-sim`.
#[derive(Debug, Args)]
#[command(after_help = "\
Telemetry is JSON: {\"seq\", \"ts_ms\", \"temperature\", \"vibration\", \"rpm\", \"running\"}.
Commands on --command-topic are JSON {\"command\": NAME, \"payload\": {...}}:
stop, start, set_speed {\"rpm\": N}, set_rate {\"hz\": N} (changes the rate at runtime).")]
pub struct PtSimArgs {
    /// The broker.
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:1883")]
    broker: BrokerAddress,
    /// Topic to publish telemetry on.
    #[arg(long)]
    topic: String,
    /// Topic to receive commands on.
    #[arg(long)]
    command_topic: Option<String>,
    /// Messages per second.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Stop after this many messages [default: run until Ctrl-C].
    #[arg(long)]
    count: Option<u64>,
    /// First sequence number.
    #[arg(long, default_value_t = 1)]
    first_seq: u64,
    /// MQTT client id.
    #[arg(long, default_value = "wasmtwin-pt-sim")]
    client_id: String,
    /// Broker user name (the password comes from WASMTWIN_MQTT_PASSWORD).
    #[arg(long)]
    username: Option<String>,
}

/// Runs the simulator.
pub fn run(args: PtSimArgs) -> anyhow::Result<ExitCode> {
    if !(args.rate > 0.0 && args.rate <= 10_000.0) {
        anyhow::bail!("--rate must be in (0, 10000]");
    }
    let mut broker = args.broker;
    if let Some(user) = args.username {
        let password = std::env::var("WASMTWIN_MQTT_PASSWORD").unwrap_or_default();
        broker.credentials = Some((user, password));
    }
    let config = SimConfig {
        broker,
        client_id: args.client_id,
        topic: args.topic,
        command_topic: args.command_topic,
        rate_hz: args.rate,
        count: args.count,
        first_seq: args.first_seq,
    };
    let io = tokio::runtime::Runtime::new().context("starting the I/O runtime")?;
    let sent = io.block_on(async {
        tokio::select! {
            sent = sim::run(config) => sent,
            _ = tokio::signal::ctrl_c() => Ok(0),
        }
    })?;
    if sent > 0 {
        println!("published {sent} messages");
    }
    Ok(ExitCode::SUCCESS)
}
