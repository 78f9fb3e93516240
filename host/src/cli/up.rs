//! `wasmtwin up`: everything on one machine with one command — an embedded
//! MQTT broker, the control plane, two nodes (`edge` and `cloud`) that join
//! it, a demo motor twin signed with a development key, which the control
//! plane places and keeps entangled, and a simulated motor feeding it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wasmtwin::node::Node;
use wasmtwin::physical::BrokerAddress;
use wasmtwin::signing::TrustSet;
use wasmtwin::sim::{self, SimConfig};
use wasmtwin::spec::TwinSpec;

use super::local;

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
    #[command(flatten)]
    plugins: local::Plugins,
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
    /// How the nodes' twins hold their sessions with the embedded broker:
    /// `twin`, a session of its own for each twin; or `node`, one shared
    /// session per node (see `wasmtwin host --help` and
    /// docs/broker-sessions.md).
    #[arg(long, value_enum, default_value = "twin", value_name = "KIND")]
    broker_session: super::host::BrokerSession,
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
    super::open_files::raise();
    // The nodes trust the development key, and the keys --trust names.
    let mut trust = match &args.trust {
        Some(path) => TrustSet::load(path)?,
        None => TrustSet::default(),
    };
    let key = local::dev_key(&args.data.join("dev-key"), &mut trust)?;
    let components = args.data.join("components");
    let publisher = "wasmtwin up (development key)";
    let model = args.plugins.sign("machine", &key, publisher, &components)?;
    let adapter = args
        .plugins
        .sign("json_adapter", &key, publisher, &components)?;

    let token = match args.token {
        Some(token) => token,
        None => super::host::new_token()?,
    };
    let listeners = [
        super::host::listen(args.control_http)?,
        super::host::listen(args.http)?,
        super::host::listen(args.cloud_http)?,
    ];
    let mqtt = wasmtwin::broker::start(args.mqtt)?;
    let runtime = global.runtime()?;
    let broker = BrokerAddress {
        host: mqtt.ip().to_string(),
        port: mqtt.port(),
        tls: false,
        credentials: None,
        ca_pem: None,
    };
    let shared = local::Shared {
        token: token.clone(),
        trust,
        component_dirs: std::iter::once(components.clone())
            .chain(args.component_dirs)
            .collect(),
        limits: args.connections.resolve(),
    };
    let spec = demo_spec(&model, &adapter, args.rate)?;
    let io = tokio::runtime::Runtime::new().context("starting the I/O runtime")?;
    io.block_on(async move {
        let [control_listener, edge_listener, cloud_listener] = listeners;
        // Serving first: the nodes' heartbeats reach the control plane
        // through its API, and placing the twin waits for them.
        let control = local::control(
            &args.data.join("control"),
            control_listener,
            &shared,
            Duration::from_secs(5),
            false,
        )?;
        let control_url = format!("http://{}", args.control_http);
        // Both nodes share this machine's cores: one measure of its speed.
        let fuel_per_cpu_second = Some(wasmtwin::runtime::cpu::calibrate(&runtime)?);
        let mut nodes = Vec::new();
        for (name, listener) in [("edge", edge_listener), ("cloud", cloud_listener)] {
            let plan = local::NodePlan {
                name,
                zone: name,
                broker: broker.clone(),
                listener,
                fuel_per_cpu_second,
                shared_session: args.broker_session == super::host::BrokerSession::Node,
            };
            nodes.push(local::node(&runtime, &args.data, plan, &shared, &control_url).await?);
        }
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
        println!("  MQTT broker:    mqtt://{mqtt}");
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
        super::host::stop_asked().await;
        for node in &nodes {
            super::host::keep_windows(node).await;
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
