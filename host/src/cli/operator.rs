//! `wasmtwin operator` (the control plane inside Kubernetes) and `wasmtwin
//! drain` (a host pod's preStop hook).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tower::ServiceExt;
use wasmtwin::control::fleet::DRAINING;
use wasmtwin::operator::controller::{self, Context as Reconciling};
use wasmtwin::operator::lease::{self, Elector};
use wasmtwin::spec::DigitalTwin;

/// Arguments of `wasmtwin operator`.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Print the `DigitalTwin` CustomResourceDefinition (YAML) and exit.
    #[arg(long)]
    crd: bool,
    /// Address of the control plane's API, which hosts join; served while
    /// this replica leads (`/healthz` and `/readyz` always: a standby is
    /// ready in its role; its pod's `wasmtwin.dev/leader` label says which
    /// replica leads).
    #[arg(long, default_value = "0.0.0.0:7000")]
    http: SocketAddr,
    /// Where this replica keeps its control plane's store (checkpoints,
    /// event history, signing key).
    #[arg(long, value_name = "DIR", default_value = "wasmtwin-operator")]
    data: PathBuf,
    /// The namespace whose `DigitalTwin`s it manages and where its Lease
    /// is [default: the Kubernetes client configuration's].
    #[arg(long, env = "WASMTWIN_NAMESPACE")]
    namespace: Option<String>,
    /// This replica's name in the Lease (in a pod: its name) [default: the
    /// host name].
    #[arg(long, env = "WASMTWIN_IDENTITY")]
    identity: Option<String>,
    /// The Lease the replicas elect a leader through.
    #[arg(long, default_value = "wasmtwin-operator")]
    lease: String,
    /// Seconds a leader holds the Lease without renewing it; a replica
    /// takes over this long after the leader stopped.
    #[arg(long, value_name = "S", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(3..=3600))]
    lease_seconds: u64,
    /// Seconds a new leader listens to hosts' heartbeats before it places
    /// anything, so twins already running are found where they run.
    #[arg(long, value_name = "S", default_value_t = 5)]
    settle_seconds: u64,
    #[command(flatten)]
    auth: super::host::AuthArgs,
    #[command(flatten)]
    plane: super::control::PlaneArgs,
    #[command(flatten)]
    connections: super::host::ConnectionArgs,
    #[command(flatten)]
    tls: super::host::TlsArgs,
}

/// Until this replica leads: answers `/healthz`, `/readyz` once `standby`
/// is set (healthy in its role), and refuses the rest; then hands every
/// request to the control plane's router.
fn gate(leading: Arc<OnceLock<Router>>, standby: Arc<AtomicBool>) -> Router {
    Router::new().fallback(move |request: Request| {
        let (leading, standby) = (leading.clone(), standby.clone());
        async move {
            if let Some(router) = leading.get() {
                return match router.clone().oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
            }
            match request.uri().path() {
                "/healthz" => "ok\n".into_response(),
                "/readyz" if standby.load(Ordering::SeqCst) => "standby\n".into_response(),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not the leader: another replica of the operator serves the control plane\n",
                )
                    .into_response(),
            }
        }
    })
}

/// Sets this replica's pod's leader label, retrying until it is set; a
/// replica that is not a pod (run outside a cluster) has none to set.
async fn label(pods: &Api<Pod>, pod: &str, leader: bool) {
    loop {
        match lease::label_pod(pods, pod, leader).await {
            Ok(()) => return,
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                tracing::warn!(%pod, "no such pod: no leader label to set (outside a cluster?)");
                return;
            }
            Err(e) => tracing::warn!(%pod, "setting the leader label: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Runs the operator until it is stopped or stops leading.
pub fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    if args.crd {
        print!("{}", wasmtwin::operator::crd_yaml()?);
        return Ok(ExitCode::SUCCESS);
    }
    let auth = args.auth.resolve(false)?;
    args.plane.check_node_token(&auth)?;
    let tls = args.tls.resolve()?;
    let token = auth.token();
    let listener = super::host::listen(args.http)?;
    let io = tokio::runtime::Runtime::new().context("starting the I/O runtime")?;
    io.block_on(async {
        let client = kube::Client::try_default().await.context(
            "connecting to the Kubernetes API (in a pod: its service account; elsewhere: KUBECONFIG)",
        )?;
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let identity = match &args.identity {
            Some(identity) => identity.clone(),
            None => hostname()?,
        };
        super::host::watch_tokens(&auth);
        let leading = Arc::new(OnceLock::new());
        let standby = Arc::new(AtomicBool::new(false));
        tokio::spawn(super::host::serve_router(
            gate(leading.clone(), standby.clone()),
            listener,
            args.connections.resolve(),
            tls,
        ));
        // A replica restarted after leading still carries the leader's
        // label: it is cleared before the replica is ready, or the Service
        // would send it heartbeats it refuses.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        tokio::select! {
            () = label(&pods, &identity, false) => standby.store(true, Ordering::SeqCst),
            () = super::host::stop_asked() => return Ok(ExitCode::SUCCESS),
        }
        let elector = Elector::new(
            Api::namespaced(client.clone(), &namespace),
            &args.lease,
            &identity,
            Duration::from_secs(args.lease_seconds),
        );
        let leader = async {
            let control = args.plane.open(&args.data, token)?;
            // Desired state is the cluster's: what this replica's store
            // holds from an earlier term and no resource declares goes.
            let twins: Api<DigitalTwin> = Api::namespaced(client.clone(), &namespace);
            let declared: BTreeSet<String> = twins
                .list(&ListParams::default())
                .await
                .context("listing DigitalTwins")?
                .items
                .iter()
                .map(kube::ResourceExt::name_any)
                .collect();
            for name in control.names() {
                if !declared.contains(&name) {
                    control.delete(&name, "operator (no DigitalTwin declares it)")?;
                }
            }
            let _ = leading.set(wasmtwin::control::api::router(control.clone(), auth));
            label(&pods, &identity, true).await;
            tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
            super::control::start(&control, args.plane.security_every());
            let ctx = Arc::new(Reconciling {
                client: client.clone(),
                control: control.clone(),
                refresh: Duration::from_secs(5),
            });
            let _sealed = Sealed(control);
            controller::run(ctx, &namespace).await;
            anyhow::Ok(())
        };
        // Exiting is how a replica stops acting: Kubernetes restarts it,
        // and it follows.
        tokio::select! {
            led = elector.lead(leader) => match led {
                Ok(result) => result.map(|()| ExitCode::FAILURE),
                Err(why) => {
                    tracing::error!("stepping down: {why}");
                    Ok(ExitCode::FAILURE)
                }
            },
            () = super::host::stop_asked() => Ok(ExitCode::SUCCESS),
        }
    })
}

/// Seals the control plane's event history when the leader's work ends,
/// however it ends.
struct Sealed(Arc<wasmtwin::control::reconcile::Control>);

impl Drop for Sealed {
    fn drop(&mut self) {
        if let Err(e) = self.0.history().seal_now() {
            tracing::error!("sealing the event history: {e:#}");
        }
    }
}

fn hostname() -> anyhow::Result<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .context("no --identity (WASMTWIN_IDENTITY) and no HOSTNAME to name this replica by")
}

/// Arguments of `wasmtwin drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node to drain (in a host pod: its name).
    #[arg(long, env = "WASMTWIN_NODE_NAME")]
    node: String,
    /// The control plane's API, e.g. http://wasmtwin-control:7000.
    #[arg(long, value_name = "URL", env = "WASMTWIN_CONTROL")]
    control: String,
    /// Bearer token of the control plane (also `WASMTWIN_CONTROL_TOKEN`,
    /// as for `wasmtwin host`).
    #[arg(long, env = "WASMTWIN_CONTROL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds to wait for the node's twins to move away.
    #[arg(long, value_name = "S", default_value_t = 45)]
    timeout: u64,
}

/// Cordons a node and waits until the control plane has moved its twins
/// away, live, with their state: a host pod's preStop hook.
pub fn drain(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let client = wasmtwin::client::NodeClient::new(&args.control, args.token.clone());
    let node = &args.node;
    let io = super::client::io()?;
    let cordon = client
        .request(reqwest::Method::PUT, &format!("/v1/nodes/{node}/cordon"))
        .header("X-Wasmtwin-Actor", "wasmtwin drain")
        .json(&serde_json::json!({ "reason": format!("{DRAINING}: its pod is stopping") }));
    let (status, body) = io.block_on(super::client::send(cordon))?;
    if !status.is_success() {
        eprintln!(
            "error: the control plane answered {status} to the cordon: {}",
            body.trim()
        );
        return Ok(ExitCode::FAILURE);
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let (status, body) = io.block_on(super::client::send(
            client.request(reqwest::Method::GET, "/v1/nodes"),
        ))?;
        let nodes: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let left: Vec<String> = nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["name"] == node.as_str())
            .flat_map(|n| n["twins"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(String::from))
            .collect();
        if status.is_success() && left.is_empty() {
            println!("node {node} drained: no twin runs there");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "error: after {} s, node {node} still runs {} (control plane: {status})",
                args.timeout,
                if left.is_empty() {
                    "unknown twins".to_string()
                } else {
                    left.join(", ")
                }
            );
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
