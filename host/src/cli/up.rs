//! `wasmtwin up`: everything on one machine with one command — an embedded
//! MQTT broker, the control plane, two nodes (`edge` and `cloud`) that join
//! it, a demo motor twin signed with a development key, which the control
//! plane places and keeps entangled, and a simulated motor feeding it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use std::time::Duration;

use wasmtwin::control::fleet::Timeouts;
use wasmtwin::control::reconcile::ControlConfig;
use wasmtwin::node::membership::{self, Membership};
use wasmtwin::node::{Node, NodeConfig};
use wasmtwin::physical::BrokerAddress;
use wasmtwin::runtime::write_atomically;
use wasmtwin::signing::{self, Metadata, TrustPolicy, TrustSet};
use wasmtwin::sim::{self, SimConfig};
use wasmtwin::spec::TwinSpec;

/// Arguments of `wasmtwin up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address of the edge node's HTTP APIs.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Address of the cloud node's HTTP APIs.
    #[arg(long, default_value = "127.0.0.1:8081")]
    cloud_http: SocketAddr,
    /// Address of the control plane's HTTP API.
    #[arg(long, default_value = "127.0.0.1:7000")]
    control_http: SocketAddr,
    /// Address of the embedded MQTT broker.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// Bearer token for the APIs [default: a new random one, printed].
    #[arg(long, env = "WASMTWIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the development key, signed components, the control plane's
    /// store and each node's are kept; twins found there are resumed.
    #[arg(long, value_name = "DIR", default_value = "wasmtwin-data")]
    data: PathBuf,
    /// Where the built plugins are (`machine.wasm`, `json_adapter.wasm`).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "target/wasm32-wasip2/release"
    )]
    plugins: PathBuf,
    /// Telemetry messages per second from the simulated motor.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Publisher keys to trust besides the development key (a public key
    /// file, or a directory of them), so twins of your own signed
    /// components can run here too.
    #[arg(long, value_name = "PATH")]
    trust: Option<PathBuf>,
    /// Another directory local component paths in specs may name, besides
    /// DATA/components (repeat for more).
    #[arg(long = "component-dir", value_name = "DIR")]
    component_dirs: Vec<PathBuf>,
    #[command(flatten)]
    connections: super::host::ConnectionArgs,
}

/// Signs `plugin` from `plugins` with the development key into `out`.
fn sign_plugin(
    plugins: &Path,
    plugin: &str,
    key: &ed25519_dalek::SigningKey,
    out: &Path,
) -> anyhow::Result<PathBuf> {
    let source = plugins.join(format!("{plugin}.wasm"));
    let bytes = std::fs::read(&source).with_context(|| {
        format!(
            "reading {} (build the plugins first: cargo build --release --target wasm32-wasip2 -p machine -p json-adapter)",
            source.display()
        )
    })?;
    let metadata = Metadata {
        name: plugin.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        publisher: "wasmtwin up (development key)".to_string(),
        signed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let signed = signing::sign(&bytes, key, &metadata)?;
    let path = out.join(format!("{plugin}.wasm"));
    write_atomically(&path, &signed)?;
    Ok(path)
}

/// The demo twin's spec. It names no broker: the twin uses the node's, so
/// a run with another `--mqtt` resumes the same twin there.
fn demo_spec(model: &Path, adapter: &Path, rate: f64) -> anyhow::Result<TwinSpec> {
    let text = serde_json::json!({
        "apiVersion": wasmtwin::spec::API_VERSION,
        "kind": wasmtwin::spec::KIND,
        "metadata": { "name": "motor-1", "labels": { "demo": "true" } },
        "spec": {
            "placement": { "zones": ["edge", "cloud"] },
            "model": { "ref": model.display().to_string(), "config": {} },
            "physical": {
                "topics": ["plant/motor-1/telemetry"],
                "commandTopic": "plant/motor-1/commands",
                "adapter": { "ref": adapter.display().to_string() },
            },
            "requirements": { "expectedRateHz": rate },
        },
    })
    .to_string();
    TwinSpec::parse(&text).map_err(Into::into)
}

/// Runs everything until Ctrl-C.
pub fn run(global: &super::GlobalArgs, args: UpArgs) -> anyhow::Result<ExitCode> {
    if !(args.rate > 0.0 && args.rate <= 10_000.0) {
        anyhow::bail!("--rate must be in (0, 10000]");
    }
    let key_dir = args.data.join("dev-key");
    let key = if key_dir.join(signing::PRIVATE_KEY_FILE).exists() {
        signing::read_private(&key_dir.join(signing::PRIVATE_KEY_FILE))?
    } else {
        let key = signing::generate()?;
        signing::write_pair(&key_dir, &key, false)?;
        tracing::info!(dir = %key_dir.display(), "created a development signing key");
        key
    };
    let components = args.data.join("components");
    std::fs::create_dir_all(&components)
        .with_context(|| format!("creating {}", components.display()))?;
    let model = sign_plugin(&args.plugins, "machine", &key, &components)?;
    let adapter = sign_plugin(&args.plugins, "json_adapter", &key, &components)?;
    // This node trusts the development key, and the keys --trust names.
    let mut trust = match &args.trust {
        Some(path) => TrustSet::load(path)?,
        None => TrustSet::default(),
    };
    trust.add(key.verifying_key(), key_dir.join(signing::PUBLIC_KEY_FILE));

    let token = match args.token {
        Some(token) => token,
        None => super::host::new_token()?,
    };
    let listeners = [
        super::host::listen(args.control_http)?,
        super::host::listen(args.http)?,
        super::host::listen(args.cloud_http)?,
    ];
    wasmtwin::broker::start(args.mqtt)?;
    let runtime = global.runtime()?;
    let broker = BrokerAddress {
        host: args.mqtt.ip().to_string(),
        port: args.mqtt.port(),
        tls: false,
        credentials: None,
        ca_pem: None,
    };
    let component_dirs: Vec<PathBuf> = std::iter::once(components.clone())
        .chain(args.component_dirs)
        .collect();
    let spec = demo_spec(&model, &adapter, args.rate)?;
    let io = tokio::runtime::Runtime::new().context("starting the I/O runtime")?;
    io.block_on(async move {
        let [control_listener, edge_listener, cloud_listener] = listeners;
        let control = wasmtwin::control::open(
            &args.data.join("control"),
            None,
            ControlConfig {
                timeouts: Timeouts {
                    unreachable_ms: 5_000,
                    gone_ms: 30_000,
                },
                node_token: Some(token.clone()),
                checkpoint_every: Duration::from_secs(5),
                policy: TrustPolicy::Require(trust.clone()),
                component_dirs: component_dirs.clone(),
                registry: Default::default(),
                observe_only: false,
            },
            None,
        )?;
        super::control::start(&control, Duration::from_secs(10));
        let control_url = format!("http://{}", args.control_http);
        let mut nodes = Vec::new();
        for (name, zone, http) in [("edge", "edge", args.http), ("cloud", "cloud", args.cloud_http)] {
            let node = Arc::new(Node::new(
                NodeConfig {
                    name: name.into(),
                    broker: broker.clone(),
                    policy: TrustPolicy::Require(trust.clone()),
                    queue_capacity: 1024,
                    ceilings: wasmtwin::spec::Ceilings::default(),
                    component_dirs: component_dirs.clone(),
                    registry: Default::default(),
                    fuel_per_cpu_second: None,
                },
                runtime.clone(),
                wasmtwin::store::Store::open(&args.data.join(name))?,
            )?);
            super::host::resume(&node).await?;
            tokio::spawn(membership::run(
                node.clone(),
                Membership {
                    control: control_url.clone(),
                    token: Some(token.clone()),
                    zone: zone.into(),
                    domain: "local".into(),
                    labels: Default::default(),
                    url: format!("http://{http}"),
                    every: Duration::from_secs(1),
                },
            ));
            nodes.push(node);
        }
        // Serving first: the nodes' heartbeats reach the control plane
        // through its API, and placing the twin waits for them.
        let limits = args.connections.resolve();
        let auth = wasmtwin::api::Auth::Token(token.clone());
        let max = super::host::DEFAULT_MAX_REQUESTS;
        let app = wasmtwin::control::api::router(control.clone(), auth.clone());
        let servers = [
            tokio::spawn(super::host::serve_router(app, control_listener, limits)),
            tokio::spawn(super::host::serve(nodes[0].clone(), edge_listener, auth.clone(), max, limits)),
            tokio::spawn(super::host::serve(nodes[1].clone(), cloud_listener, auth, max, limits)),
        ];
        // The control plane places the demo twin (a run with another
        // --rate updates its requirements).
        control
            .apply(spec, "wasmtwin up")
            .await
            .map_err(|e| anyhow::anyhow!("the demo twin: {e}"))?;
        let (host, first_seq) = placed(&nodes).await?;
        let edge_base = format!("http://{}", args.http);
        tokio::spawn(async move {
            let config = SimConfig {
                broker,
                client_id: "pt-sim-motor-1".into(),
                topic: "plant/motor-1/telemetry".into(),
                command_topic: Some("plant/motor-1/commands".into()),
                rate_hz: args.rate,
                count: None,
                first_seq,
            };
            if let Err(e) = sim::run(config).await {
                tracing::error!("the simulated motor stopped: {e:#}");
            }
        });
        let base = format!("http://{}", if host == "cloud" { args.cloud_http } else { args.http });
        println!("wasmtwin is up. Ctrl-C stops everything.");
        println!("  MQTT broker:    mqtt://{}", args.mqtt);
        println!("  control plane:  {control_url}   (wasmtwin get nodes|twins|events --control {control_url})");
        println!("  nodes:          edge {edge_base}, cloud http://{}", args.cloud_http);
        println!("  API:            {base}/v1/twins   (Authorization: Bearer {token})");
        println!("  demo twin:      {base}/v1/twins/motor-1   (placed on {host} by the control plane)");
        println!("  metrics:        {base}/metrics");
        println!("  try:            curl -H 'Authorization: Bearer {token}' {base}/v1/twins/motor-1");
        println!(
            "                  curl -X POST -H 'Authorization: Bearer {token}' {base}/v1/twins/motor-1/actions/stop"
        );
        println!(
            "                  curl -N -H 'Authorization: Bearer {token}' {base}/v1/twins/motor-1/stream"
        );
        println!("                  WASMTWIN_TOKEN={token} wasmtwin events --follow --control {control_url}");
        println!("  history:        {base}/v1/twins/motor-1/history?property=temperature");
        println!("  description:    {base}/v1/twins/motor-1/td");
        // Each server stops at Ctrl-C.
        for server in servers {
            server.await.context("an HTTP server")??;
        }
        if let Err(e) = control.history().seal_now() {
            tracing::error!("sealing the event history: {e:#}");
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Waits for the control plane to start the demo twin on one of `nodes`;
/// that node's name, and the sequence number the simulated motor goes on
/// from (a real device keeps its counter across restarts too).
async fn placed(nodes: &[Arc<Node>]) -> anyhow::Result<(String, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        for (node, name) in nodes.iter().zip(["edge", "cloud"]) {
            if let Ok(report) = node.report("motor-1") {
                return Ok((name.to_string(), report.last_seq.map_or(1, |seq| seq + 1)));
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the control plane did not start the demo twin within a minute (see the log)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
