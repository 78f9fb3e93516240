//! `wasmtwin host`: the long-running node, and the pieces `up` reuses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wasmtwin::api::{self, Auth};
use wasmtwin::node::Node;
use wasmtwin::physical::BrokerAddress;

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

/// Arguments of `wasmtwin host`.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Address of the HTTP APIs.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The MQTT broker twins use unless their spec names one.
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:1883")]
    mqtt: BrokerAddress,
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
}

/// Serves `node` on `http` until Ctrl-C.
pub async fn serve(node: Arc<Node>, http: SocketAddr, auth: Auth) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("listening on {http}"))?;
    let evaluator = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            evaluator.evaluate_all();
        }
    });
    tracing::info!(%http, "HTTP APIs listening");
    axum::serve(listener, api::router(node, auth))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("stopping");
        })
        .await
        .context("serving HTTP")
}

/// Runs the node.
pub fn run(global: &super::GlobalArgs, args: HostArgs) -> anyhow::Result<ExitCode> {
    let policy = args.trust.policy()?;
    let auth = args.auth.resolve(false)?;
    let runtime = global.runtime()?;
    let io = tokio::runtime::Runtime::new().context("starting the I/O runtime")?;
    io.block_on(async {
        let node = Arc::new(Node::new(
            wasmtwin::node::NodeConfig {
                name: args.name,
                broker: args.mqtt,
                policy,
                queue_capacity: args.queue,
            },
            runtime,
        ));
        serve(node, args.http, auth).await
    })?;
    Ok(ExitCode::SUCCESS)
}
