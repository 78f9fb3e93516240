//! `wasmtwin apply` and `wasmtwin get`: the management API from the
//! command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use wasmtwin::client::NodeClient;
use wasmtwin::spec::TwinSpec;

/// Where the node is and how to authenticate.
#[derive(Debug, Args)]
pub struct Target {
    /// The node's API, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL", env = "WASMTWIN_HOST")]
    host: String,
    /// Bearer token (also `WASMTWIN_TOKEN`).
    #[arg(long, env = "WASMTWIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Target {
    /// A client of the node.
    pub fn client(&self) -> NodeClient {
        NodeClient::new(&self.host, self.token.clone())
    }
}

/// Arguments of `wasmtwin apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The twin spec (YAML or JSON).
    #[arg(short = 'f', long = "file", value_name = "SPEC")]
    file: PathBuf,
    /// Start the twin anew if the spec changes more than its model's
    /// configuration, discarding its state and history (refused otherwise).
    #[arg(long, conflicts_with = "control")]
    replace: bool,
    #[command(flatten)]
    target: Either,
}

/// A node (`--host`) or the control plane (`--control`), which places the
/// twin itself and keeps it entangled.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Where {
    /// The node's API, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL", env = "WASMTWIN_HOST")]
    host: Option<String>,
    /// The control plane's API, e.g. http://127.0.0.1:7000.
    #[arg(long, value_name = "URL", env = "WASMTWIN_CONTROL")]
    control: Option<String>,
}

/// A node or the control plane, and the token.
#[derive(Debug, Args)]
pub struct Either {
    #[command(flatten)]
    at: Where,
    /// Bearer token (also `WASMTWIN_TOKEN`).
    #[arg(long, env = "WASMTWIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Either {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        match (&self.at.host, &self.at.control) {
            (Some(host), _) => NodeClient::new(host, self.token.clone()).request(method, path),
            (None, control) => super::control::ControlTarget {
                control: control.clone().unwrap_or_default(),
                token: self.token.clone(),
            }
            .request(method, path),
        }
    }
}

/// Arguments of `wasmtwin get`: `get twins`, `get twin NAME`, and from
/// the control plane `get nodes` and `get events`; the options before or
/// after.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to read: `twins` (every twin), `twin` (one twin's state and
    /// entanglement, by NAME), `nodes` or `events` (the control plane's).
    what: What,
    /// The twin's name, with `twin`.
    name: Option<String>,
    #[command(flatten)]
    target: Either,
}

#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
enum What {
    /// Every twin.
    Twins,
    /// One twin's state and entanglement.
    Twin,
    /// The control plane's nodes: zone, domain, state, capacity, paths.
    Nodes,
    /// The control plane's event history.
    Events,
}

pub async fn send(
    request: reqwest::RequestBuilder,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let response = request.send().await.context("reaching the node")?;
    let status = response.status();
    let body = response.text().await.context("reading the node's answer")?;
    Ok((status, body))
}

pub fn finish(status: reqwest::StatusCode, body: &str) -> anyhow::Result<ExitCode> {
    let pretty = serde_json::from_str::<serde_json::Value>(body)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| body.trim().to_string());
    if status.is_success() {
        println!("{pretty}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: the node answered {status}:\n{pretty}");
        Ok(ExitCode::FAILURE)
    }
}

pub fn io() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")
}

/// Sends a spec to the node.
pub fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    // Refuse a bad spec here, with every problem, before bothering the node.
    let spec =
        TwinSpec::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let mut path = format!("/v1/twins/{}", spec.name());
    if args.replace {
        path.push_str("?replace=true");
    }
    let (status, body) = io()?.block_on(send(
        args.target.request(reqwest::Method::PUT, &path).body(text),
    ))?;
    finish(status, &body)
}

/// Reads from the node.
pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let on_control = args.target.at.control.is_some();
    if matches!(args.what, What::Nodes | What::Events) && !on_control {
        anyhow::bail!("`get nodes` and `get events` ask the control plane: pass --control URL");
    }
    let path = match (args.what, &args.name) {
        (What::Nodes, _) => "/v1/nodes".to_string(),
        (What::Events, None) => "/v1/events".to_string(),
        (What::Events, Some(twin)) => format!("/v1/events?twin={twin}"),
        (What::Twins, None) => "/v1/twins".to_string(),
        (What::Twin, Some(name)) => format!("/v1/twins/{name}"),
        (What::Twins, Some(name)) => {
            anyhow::bail!("`get twins` lists every twin; for one, `get twin {name}`")
        }
        (What::Twin, None) => anyhow::bail!("`get twin` needs the twin's name: `get twin NAME`"),
    };
    let (status, body) = io()?.block_on(send(args.target.request(reqwest::Method::GET, &path)))?;
    finish(status, &body)
}
