//! `wasmtwin control` (the control plane), and the commands that talk to
//! it: `domain set`, `events`, `events verify`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use wasmtwin::control::fleet::Timeouts;
use wasmtwin::control::history;
use wasmtwin::control::reconcile::{Control, ControlConfig};
use wasmtwin::control::webhook::Webhooks;
use wasmtwin::signing;

/// Arguments of `wasmtwin control`.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Address of the control plane's HTTP API.
    #[arg(long, default_value = "127.0.0.1:7000")]
    http: std::net::SocketAddr,
    /// Where the control plane keeps desired state, checkpoints, the event
    /// history and its signing key.
    #[arg(long, value_name = "DIR", default_value = "wasmtwin-control")]
    data: PathBuf,
    #[command(flatten)]
    auth: super::host::AuthArgs,
    #[command(flatten)]
    plane: PlaneArgs,
    #[command(flatten)]
    connections: super::host::ConnectionArgs,
    #[command(flatten)]
    tls: super::host::TlsArgs,
}

/// How the control plane decides and whom it trusts; the operator takes the same.
#[derive(Debug, Args)]
pub struct PlaneArgs {
    /// The token the control plane calls nodes' APIs with (also
    /// `WASMTWIN_NODE_TOKEN`) [default: its own API token].
    #[arg(long, env = "WASMTWIN_NODE_TOKEN", hide_env_values = true)]
    node_token: Option<String>,
    /// Milliseconds without a heartbeat before a node is unreachable (its
    /// twins stay; nothing new goes there).
    #[arg(long, value_name = "MS", default_value_t = Timeouts::DEFAULT.unreachable_ms)]
    unreachable_after_ms: u64,
    /// Milliseconds without a heartbeat before a node is gone (its twins
    /// are restored elsewhere from their latest checkpoints).
    #[arg(long, value_name = "MS", default_value_t = Timeouts::DEFAULT.gone_ms)]
    gone_after_ms: u64,
    /// Milliseconds between checkpoints fetched from each running twin's
    /// node (what a twin restored after its node is gone starts from).
    #[arg(long, value_name = "MS", default_value_t = ControlConfig::CHECKPOINT_EVERY_MS)]
    checkpoint_every_ms: u64,
    /// Seconds between the security agent's checks of every node.
    #[arg(long, value_name = "S", default_value_t = 10)]
    security_every: u64,
    /// The key the event history is signed with (`wasmtwin keygen`
    /// writes one) [default: DATA/control-key/wasmtwin.key, created if
    /// missing].
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// A URL notifications are POSTed to (repeat for more).
    #[arg(long = "webhook", value_name = "URL")]
    webhooks: Vec<String>,
    /// A file holding the secret webhook bodies are HMAC-signed with.
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    #[command(flatten)]
    trust: super::TrustArgs,
    /// A directory local component paths in specs may name (repeat).
    #[arg(long = "component-dir", value_name = "DIR")]
    component_dirs: Vec<PathBuf>,
    #[command(flatten)]
    registry: super::host::RegistryArgs,
    /// Decide and record remedies for broken requirements (migrate, scale,
    /// roll back) without carrying them out: see what the control plane
    /// would do before letting it.
    #[arg(long)]
    observe_only: bool,
    /// Largest twin spec `apply` accepts, e.g. `1MiB` (a node's
    /// `--max-spec-size` bounds what it takes from the control plane).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = super::host::size)]
    max_spec_size: usize,
}

impl PlaneArgs {
    /// Refuses a token file without `--node-token`: the control plane would
    /// have no token to call nodes with.
    pub fn check_node_token(&self, auth: &wasmtwin::api::Auth) -> anyhow::Result<()> {
        if matches!(auth, wasmtwin::api::Auth::Tokens(_)) && self.node_token.is_none() {
            anyhow::bail!(
                "--tokens: also pass --node-token (or WASMTWIN_NODE_TOKEN), the admin token the control plane calls nodes with"
            );
        }
        Ok(())
    }

    /// How often the security agent checks every node.
    pub fn security_every(&self) -> Duration {
        Duration::from_secs(self.security_every)
    }

    /// Opens the control plane on `data`; `token` is its own API token.
    pub fn open(&self, data: &Path, token: Option<String>) -> anyhow::Result<Arc<Control>> {
        if self.unreachable_after_ms == 0 || self.gone_after_ms <= self.unreachable_after_ms {
            anyhow::bail!(
                "--gone-after-ms ({}) must be longer than --unreachable-after-ms ({}), which must be positive",
                self.gone_after_ms,
                self.unreachable_after_ms
            );
        }
        if self.checkpoint_every_ms == 0 || self.security_every == 0 {
            anyhow::bail!("--checkpoint-every-ms and --security-every must be positive");
        }
        let webhooks = if self.webhooks.is_empty() {
            None
        } else {
            let secret = self
                .webhook_secret_file
                .as_deref()
                .map(|file| {
                    std::fs::read(file)
                        .with_context(|| format!("reading the webhook secret {}", file.display()))
                })
                .transpose()?;
            Some(Webhooks::new(self.webhooks.clone(), secret)?)
        };
        let config = ControlConfig {
            timeouts: Timeouts {
                unreachable_ms: self.unreachable_after_ms,
                gone_ms: self.gone_after_ms,
            },
            node_token: self.node_token.clone().or(token),
            checkpoint_every: Duration::from_millis(self.checkpoint_every_ms),
            policy: self.trust.policy()?,
            component_dirs: self.component_dirs.clone(),
            registry: self.registry.resolve()?,
            observe_only: self.observe_only,
            spec_bytes: self.max_spec_size,
        };
        wasmtwin::control::open(data, self.key.as_deref(), config, webhooks)
    }
}

/// Starts a control plane's loops (orchestrator, checkpoints, security
/// agent) on the current runtime.
pub fn start(control: &Arc<Control>, security_every: Duration) {
    tokio::spawn(control.clone().run());
    tokio::spawn(wasmtwin::control::security::run(
        control.clone(),
        security_every,
    ));
}

/// Runs the control plane until Ctrl-C or SIGTERM.
pub fn run(args: ControlArgs) -> anyhow::Result<ExitCode> {
    let auth = args.auth.resolve(false)?;
    args.plane.check_node_token(&auth)?;
    let tls = args.tls.resolve()?;
    let token = auth.token();
    let listener = super::host::listen(args.http)?;
    let io = tokio::runtime::Runtime::new().context("starting the I/O runtime")?;
    io.block_on(async {
        super::host::watch_tokens(&auth);
        let control = args.plane.open(&args.data, token)?;
        start(&control, args.plane.security_every());
        let app = wasmtwin::control::api::router(control.clone(), auth);
        let served =
            super::host::serve_router(app, listener, args.connections.resolve(), tls).await;
        if let Err(e) = control.history().seal_now() {
            tracing::error!("sealing the event history: {e:#}");
        }
        served
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Where the control plane is and how to authenticate.
#[derive(Debug, Args)]
pub struct ControlTarget {
    /// The control plane's API, e.g. http://127.0.0.1:7000.
    #[arg(long, value_name = "URL", env = "WASMTWIN_CONTROL")]
    pub control: String,
    /// Bearer token (also `WASMTWIN_TOKEN`).
    #[arg(long, env = "WASMTWIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ControlTarget {
    /// A request to `path` on the control plane, authenticated and
    /// naming the caller for the event history.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        wasmtwin::client::NodeClient::new(&self.control, self.token.clone())
            .request(method, path)
            .header("X-Wasmtwin-Actor", format!("{who} (cli)"))
    }
}

/// Arguments of `wasmtwin domain`.
#[derive(Debug, Args)]
pub struct DomainArgs {
    #[command(subcommand)]
    command: DomainCommand,
}

#[derive(Debug, Subcommand)]
enum DomainCommand {
    /// Set a trust domain's trust level (twins need at least their
    /// spec.placement.minTrust).
    Set {
        /// The domain, as nodes name it (`--domain`).
        name: String,
        /// Its trust level.
        #[arg(long)]
        trust: u32,
        #[command(flatten)]
        target: ControlTarget,
    },
}

/// `wasmtwin domain set`.
pub fn domain(args: DomainArgs) -> anyhow::Result<ExitCode> {
    let DomainCommand::Set {
        name,
        trust,
        target,
    } = args.command;
    let request = target
        .request(reqwest::Method::PUT, &format!("/v1/domains/{name}"))
        .json(&serde_json::json!({ "trust": trust }));
    let (status, body) = super::client::io()?.block_on(super::client::send(request))?;
    super::client::finish(status, &body)
}

/// Arguments of `wasmtwin events`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EventsArgs {
    #[command(subcommand)]
    verify: Option<EventsCommand>,
    /// Only the events about this twin.
    #[arg(long)]
    twin: Option<String>,
    /// Keep printing events as they happen.
    #[arg(long, short)]
    follow: bool,
    /// Print each event as one JSON line rather than a line of text.
    #[arg(long)]
    json: bool,
    /// The control plane's API, e.g. http://127.0.0.1:7000.
    #[arg(long, value_name = "URL", env = "WASMTWIN_CONTROL")]
    control: Option<String>,
    /// Bearer token (also `WASMTWIN_TOKEN`).
    #[arg(long, env = "WASMTWIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Check the history's hash chain and signatures; names the first
    /// record edited, removed or reordered.
    Verify(VerifyArgs),
}

/// Arguments of `wasmtwin events verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The control plane's data directory, or that of a node that ran alone
    /// (it must not be running: the store is opened directly). Without it,
    /// `--control` is asked for every record over the API.
    #[arg(long, value_name = "DIR", conflicts_with = "control")]
    data: Option<PathBuf>,
    /// The history's public key [default: DATA/control-key/wasmtwin.pub,
    /// or DATA/node-key/wasmtwin.pub for a node].
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The control plane's API, to verify a copy of its records.
    #[arg(long, value_name = "URL", env = "WASMTWIN_CONTROL")]
    control: Option<String>,
    /// Bearer token (also `WASMTWIN_TOKEN`).
    #[arg(long, env = "WASMTWIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// `wasmtwin events` and `wasmtwin events verify`.
pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    if let Some(EventsCommand::Verify(verify)) = args.verify {
        return verify_history(verify);
    }
    let target = ControlTarget {
        control: args
            .control
            .context("`wasmtwin events` needs --control URL (or WASMTWIN_CONTROL)")?,
        token: args.token,
    };
    super::client::io()?.block_on(print_events(
        &target,
        args.twin.as_deref(),
        args.follow,
        args.json,
    ))
}

async fn print_events(
    target: &ControlTarget,
    twin: Option<&str>,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut path = "/v1/events?limit=10000".to_string();
    if let Some(twin) = twin {
        path.push_str(&format!("&twin={twin}"));
    }
    let mut request = target.request(reqwest::Method::GET, &path);
    if follow {
        request = request.header(reqwest::header::ACCEPT, "text/event-stream");
    }
    let mut response = request.send().await.context("reaching the control plane")?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("the control plane answered {status}: {}", body.trim());
    }
    let show = |record: history::Record| {
        if json {
            println!("{}", serde_json::to_string(&record).unwrap_or_default());
        } else {
            println!(
                "{:>6}  {}  {:<12} {:<10} {}",
                record.seq,
                record.at,
                record.kind.as_str(),
                record
                    .twin
                    .as_deref()
                    .or(record.node.as_deref())
                    .unwrap_or("-"),
                record.summary
            );
        }
    };
    if !follow {
        let records: Vec<history::Record> = response.json().await.context("reading the events")?;
        records.into_iter().for_each(show);
        return Ok(ExitCode::SUCCESS);
    }
    // Server-sent events: `data:` lines carry one record each.
    let mut pending = String::new();
    while let Some(chunk) = response.chunk().await.context("following the events")? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if let Some(data) = line.trim_end().strip_prefix("data:")
                && let Ok(record) = serde_json::from_str::<history::Record>(data.trim_start())
            {
                show(record);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The store holding a history in a data directory, and the directory of
/// its key: a control plane's, or the audit history of a node that ran
/// alone.
fn history_store(data: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let control = data.join("control.redb");
    if control.exists() {
        return Ok((control, data.join("control-key")));
    }
    let node = data.join("wasmtwin.redb");
    if node.exists() {
        return Ok((node, data.join(wasmtwin::control::NODE_KEY_DIR)));
    }
    anyhow::bail!(
        "{} holds neither a control plane's store nor a node's",
        data.display()
    )
}

fn verify_history(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = args.data.as_deref().map(history_store).transpose()?;
    let key_file = match (&args.key, &store) {
        (Some(key), _) => key.clone(),
        (None, Some((_, keys))) => keys.join(signing::PUBLIC_KEY_FILE),
        (None, None) => {
            anyhow::bail!("--key FILE (the control plane's public key) is needed with --control")
        }
    };
    let key = signing::read_public(&key_file)?;
    let outcome = match (&store, &args.control) {
        (Some((path, _)), _) => {
            let db = redb::Database::open(path).with_context(|| {
                format!(
                    "opening {} (is the control plane or node still running?)",
                    path.display()
                )
            })?;
            history::verify_db(&db, &key, None)?
        }
        (None, Some(control)) => {
            let target = ControlTarget {
                control: control.clone(),
                token: args.token.clone(),
            };
            let records = super::client::io()?.block_on(all_records(&target))?;
            history::verify_records(records, &key, None)
        }
        (None, None) => anyhow::bail!("say which history: --data DIR or --control URL"),
    };
    match outcome {
        Ok(verified) => {
            println!(
                "the event history is intact: {} records, {} signed seals, {} records after the last seal",
                verified.records, verified.seals, verified.unsealed_tail
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(tamper) => {
            eprintln!("error: the event history was tampered with: {tamper}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Every record, page by page.
async fn all_records(target: &ControlTarget) -> anyhow::Result<Vec<history::Record>> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |r: &history::Record| r.seq);
        let path = format!("/v1/events?after={after}&limit=10000");
        let response = target
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .context("reaching the control plane")?
            .error_for_status()?;
        let page: Vec<history::Record> = response.json().await.context("reading the events")?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}
