//! `wasmtwin host`: the long-running node, and the pieces `up` reuses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Args;
use wasmtwin::api::{self, Auth};
use wasmtwin::node::Node;
use wasmtwin::physical::BrokerAddress;
use wasmtwin::spec::Ceilings;
use wasmtwin::store::Store;

/// How the management and digital APIs are protected.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// Bearer token the APIs require (also `WASMTWIN_TOKEN`).
    #[arg(long, env = "WASMTWIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Serve the APIs without authentication (local development only).
    #[arg(long)]
    insecure_dev: bool,
}

impl AuthArgs {
    /// The configured authentication; a token is required unless
    /// `--insecure-dev`, or `generate` makes one.
    pub fn resolve(&self, generate: bool) -> anyhow::Result<Auth> {
        if self.insecure_dev {
            tracing::warn!(
                "THE API IS OPEN TO ANYONE WHO CAN REACH IT (--insecure-dev); never do this outside development"
            );
            return Ok(Auth::Open);
        }
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("reading the token file {}", file.display()))?
                .trim()
                .to_string(),
            (None, None) if generate => new_token()?,
            (None, None) => anyhow::bail!(
                "no API token: pass --token, --token-file or WASMTWIN_TOKEN (or --insecure-dev)"
            ),
        };
        if token.len() < 16 {
            anyhow::bail!("the API token must be at least 16 characters");
        }
        Ok(Auth::Token(token))
    }
}

/// 32 random bytes in hex.
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    Ok(hex::encode(bytes))
}

/// Reads a PEM file of CA certificates.
fn read_pem(file: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let pem =
        std::fs::read(file).with_context(|| format!("reading the CA file {}", file.display()))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        anyhow::bail!("{} is not a PEM file", file.display());
    }
    Ok(pem)
}

/// How the node logs in to its MQTT brokers.
#[derive(Debug, Args)]
pub struct MqttArgs {
    /// The MQTT broker twins use unless their spec names one
    /// (`mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for TLS).
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:1883")]
    mqtt: BrokerAddress,
    /// User name to log in to the broker with.
    #[arg(long, value_name = "NAME", env = "WASMTWIN_MQTT_USERNAME")]
    mqtt_username: Option<String>,
    /// File holding the broker password (also `WASMTWIN_MQTT_PASSWORD`).
    #[arg(long, value_name = "FILE", requires = "mqtt_username")]
    mqtt_password_file: Option<PathBuf>,
    /// PEM file of the CA certificates that may sign the broker's TLS
    /// certificate [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    mqtt_ca: Option<PathBuf>,
}

impl MqttArgs {
    /// The broker address with its login and trust.
    pub fn resolve(&self) -> anyhow::Result<BrokerAddress> {
        let mut broker = self.mqtt.clone();
        if let Some(user) = &self.mqtt_username {
            let password = match &self.mqtt_password_file {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading the MQTT password file {}", file.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                None => std::env::var("WASMTWIN_MQTT_PASSWORD").map_err(|_| {
                    anyhow::anyhow!(
                        "--mqtt-username needs a password: --mqtt-password-file or WASMTWIN_MQTT_PASSWORD"
                    )
                })?,
            };
            broker.credentials = Some((user.clone(), password));
        }
        if let Some(file) = &self.mqtt_ca {
            if !broker.tls {
                anyhow::bail!("--mqtt-ca needs an mqtts:// broker URL");
            }
            broker.ca_pem = Some(read_pem(file)?);
        }
        Ok(broker)
    }
}

/// Arguments of `wasmtwin host`.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Address of the HTTP APIs.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    #[command(flatten)]
    mqtt: MqttArgs,
    /// Where the node keeps its twins (specs, checkpoints, history); the
    /// twins found there are resumed at start.
    #[arg(long, value_name = "DIR", default_value = "wasmtwin-data")]
    data: PathBuf,
    /// The node's name, part of its MQTT client ids.
    #[arg(long, default_value = "node")]
    name: String,
    #[command(flatten)]
    trust: super::TrustArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// PT messages a twin may have waiting before its session stops reading.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    /// Digital and management requests served at once; beyond this, history
    /// queries are shed first, then reads, then actions (503 + Retry-After).
    #[arg(long, default_value_t = DEFAULT_MAX_REQUESTS)]
    max_requests: usize,
    #[command(flatten)]
    ceilings: CeilingArgs,
    /// A directory local component paths in specs may name (repeat for
    /// more); without one, components come from registries only.
    #[arg(long = "component-dir", value_name = "DIR")]
    component_dirs: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// How the node pulls `oci://` components. Credentials come from
/// WASMTWIN_REGISTRY_USERNAME and WASMTWIN_REGISTRY_PASSWORD, else the
/// docker configuration, as for `wasmtwin pull`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// A registry (`HOST[:PORT]`) to reach over plain HTTP (a local or test
    /// registry only; repeat for more).
    #[arg(long = "registry-insecure", value_name = "HOST[:PORT]")]
    insecure_hosts: Vec<String>,
    /// PEM file of a CA that may sign registries' certificates, besides
    /// the system's roots.
    #[arg(long, value_name = "FILE")]
    registry_ca: Option<PathBuf>,
}

impl RegistryArgs {
    /// The pull options these flags set.
    pub fn resolve(&self) -> anyhow::Result<wasmtwin::registry::Options> {
        let ca_pem = self.registry_ca.as_deref().map(read_pem).transpose()?;
        Ok(wasmtwin::registry::Options {
            insecure_hosts: self.insecure_hosts.clone(),
            ca_pem,
            ..Default::default()
        })
    }
}

/// The most any twin on the node may ask for; specs asking more are
/// refused with the field and the flag.
#[derive(Debug, Args)]
pub struct CeilingArgs {
    /// Largest `spec.resources.fuelPerUpdate` a twin may ask for.
    #[arg(long, value_name = "FUEL", default_value_t = Ceilings::default().limits.fuel_per_call)]
    max_fuel_per_update: u64,
    /// Largest `spec.resources.memory` a twin may ask for.
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    max_memory: bytesize::ByteSize,
    /// Largest `spec.resources.deadlineMs`: no call into a twin runs longer,
    /// so stopping or deleting a twin never waits longer either.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    max_deadline_ms: u64,
    /// Largest `spec.physical.maxPayload` a twin may ask for.
    #[arg(long, value_name = "SIZE", default_value = "16MiB")]
    max_payload: bytesize::ByteSize,
}

impl CeilingArgs {
    /// The ceilings these flags set.
    pub fn resolve(&self) -> Ceilings {
        Ceilings {
            limits: wasmtwin::runtime::Limits {
                fuel_per_call: self.max_fuel_per_update,
                memory_bytes: self.max_memory.as_u64(),
                deadline: Duration::from_millis(self.max_deadline_ms),
            },
            payload_bytes: self.max_payload.as_u64(),
        }
    }
}

/// Requests in flight a node admits unless told otherwise.
pub const DEFAULT_MAX_REQUESTS: usize = 256;

/// Serves `node` on `http` until Ctrl-C.
pub async fn serve(
    node: Arc<Node>,
    http: SocketAddr,
    auth: Auth,
    max_requests: usize,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("listening on {http}"))?
        // Small answers go out at once: with Nagle's algorithm and delayed
        // ACKs each request/response exchange could wait ~40 ms.
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        });
    let evaluator = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            evaluator.evaluate_all();
        }
    });
    tracing::info!(%http, "HTTP APIs listening");
    axum::serve(listener, api::router(node, auth, max_requests))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("stopping");
        })
        .await
        .context("serving HTTP")
}

/// Starts the twins the node's store remembers.
pub async fn resume(node: &Arc<Node>) -> anyhow::Result<()> {
    let resuming = node.clone();
    let resumed = tokio::task::spawn_blocking(move || resuming.resume())
        .await
        .context("resuming twins")??;
    if !resumed.is_empty() {
        tracing::info!(twins = resumed.len(), "resumed twins from the store");
    }
    Ok(())
}

/// Runs the node.
pub fn run(global: &super::GlobalArgs, args: HostArgs) -> anyhow::Result<ExitCode> {
    let policy = args.trust.policy()?;
    let auth = args.auth.resolve(false)?;
    let broker = args.mqtt.resolve()?;
    let store = Store::open(&args.data)?;
    let runtime = global.runtime()?;
    let io = tokio::runtime::Runtime::new().context("starting the I/O runtime")?;
    io.block_on(async {
        let node = Arc::new(Node::new(
            wasmtwin::node::NodeConfig {
                name: args.name,
                broker,
                policy,
                queue_capacity: args.queue,
                ceilings: args.ceilings.resolve(),
                component_dirs: args.component_dirs,
                registry: args.registry.resolve()?,
            },
            runtime,
            store,
        )?);
        resume(&node).await?;
        serve(node, args.http, auth, args.max_requests).await
    })?;
    Ok(ExitCode::SUCCESS)
}
