//! A fleet in this process: the control plane and nodes that join it, as
//! `wasmtwin up` and `wasmtwin experiment` run them on one machine, with a
//! development key that signs the example plugins.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use wasmtwin::control::reconcile::Control;
use wasmtwin::control::reconcile::ControlConfig;
use wasmtwin::node::membership::{self, Membership};
use wasmtwin::node::{Node, NodeConfig};
use wasmtwin::physical::BrokerAddress;
use wasmtwin::runtime::{Runtime, write_atomically};
use wasmtwin::signing::{self, Metadata, TrustPolicy, TrustSet};

use super::host::ConnectionLimits;

/// The development key in `dir` (created there if missing), added to
/// `trust`.
pub fn dev_key(dir: &Path, trust: &mut TrustSet) -> anyhow::Result<SigningKey> {
    let key = if dir.join(signing::PRIVATE_KEY_FILE).exists() {
        signing::read_private(&dir.join(signing::PRIVATE_KEY_FILE))?
    } else {
        let key = signing::generate()?;
        signing::write_pair(dir, &key, false)?;
        tracing::info!(dir = %dir.display(), "created a development signing key");
        key
    };
    trust.add(key.verifying_key(), dir.join(signing::PUBLIC_KEY_FILE));
    Ok(key)
}

/// Where the example plugins were built (`up` and `experiment` sign them
/// with the development key).
#[derive(Debug, clap::Args)]
pub struct Plugins {
    /// Where the built plugins are (`machine.wasm`, `prime.wasm`,
    /// `json_adapter.wasm`).
    #[arg(
        long = "plugins",
        value_name = "DIR",
        default_value = "target/wasm32-wasip2/release"
    )]
    dir: PathBuf,
}

impl Plugins {
    /// Signs `plugin` with `key` into `out`; the signed file's path.
    pub fn sign(
        &self,
        plugin: &str,
        key: &SigningKey,
        publisher: &str,
        out: &Path,
    ) -> anyhow::Result<PathBuf> {
        sign_plugin(&self.dir, plugin, key, publisher, out)
    }
}

/// Signs `plugin` from `plugins` with `key` into `out`; the signed file's
/// path.
fn sign_plugin(
    plugins: &Path,
    plugin: &str,
    key: &SigningKey,
    publisher: &str,
    out: &Path,
) -> anyhow::Result<PathBuf> {
    let source = plugins.join(format!("{plugin}.wasm"));
    let bytes = std::fs::read(&source).with_context(|| {
        format!(
            "reading {} (build the plugins first: cargo build --release --target wasm32-wasip2 \
             -p machine -p json-adapter -p prime)",
            source.display()
        )
    })?;
    // Dated by the build, not the clock: the same build signs into the
    // same bytes (Ed25519 is deterministic), so `up` run again runs the
    // very component its control plane pinned the time before, instead of
    // one with another digest (which its security check would flag).
    let built = std::fs::metadata(&source)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| std::time::SystemTime::now());
    let metadata = Metadata {
        name: plugin.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        publisher: publisher.to_string(),
        signed_at: humantime::format_rfc3339_seconds(built).to_string(),
    };
    let signed = signing::sign(&bytes, key, &metadata)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join(format!("{plugin}.wasm"));
    write_atomically(&path, &signed)?;
    Ok(path)
}

/// What the fleet's members share.
pub struct Shared {
    /// The token every API takes (and the control plane calls nodes with).
    pub token: String,
    /// Which components run.
    pub trust: TrustSet,
    /// Directories local component paths may name.
    pub component_dirs: Vec<PathBuf>,
    /// The HTTP connection limits of every server.
    pub limits: ConnectionLimits,
}

/// The control plane, serving on `listener`, its state in `data`.
pub fn control(
    data: &Path,
    listener: TcpListener,
    shared: &Shared,
    checkpoint_every: Duration,
    observe_only: bool,
) -> anyhow::Result<Arc<Control>> {
    let control = wasmtwin::control::open(
        data,
        None,
        ControlConfig {
            node_token: Some(shared.token.clone()),
            checkpoint_every,
            observe_only,
            ..ControlConfig::new(
                TrustPolicy::Require(shared.trust.clone()),
                shared.component_dirs.clone(),
            )
        },
        None,
    )?;
    super::control::start(&control, Duration::from_secs(10));
    let auth = wasmtwin::api::Auth::Token(shared.token.clone());
    let app = wasmtwin::control::api::router(control.clone(), auth);
    tokio::spawn(super::host::serve_router(
        app,
        listener,
        shared.limits,
        None,
    ));
    Ok(control)
}

/// One node to start.
pub struct NodePlan<'a> {
    /// Its name, which is also where its store is under the data directory.
    pub name: &'a str,
    /// Its zone.
    pub zone: &'a str,
    /// The broker it reaches (directly, or through a link).
    pub broker: BrokerAddress,
    /// Where its HTTP APIs listen.
    pub listener: TcpListener,
    /// Fuel per CPU-second, when already measured on this machine.
    pub fuel_per_cpu_second: Option<u64>,
    /// Whether its twins share one broker session (`--broker-session node`).
    pub shared_session: bool,
}

/// Starts a node from `plan`, resumes the twins its store holds, serves its
/// APIs and has it join the control plane at `control_url`.
pub async fn node(
    runtime: &Runtime,
    data: &Path,
    plan: NodePlan<'_>,
    shared: &Shared,
    control_url: &str,
) -> anyhow::Result<Arc<Node>> {
    let url = format!(
        "http://{}",
        plan.listener
            .local_addr()
            .context("the node's HTTP address")?
    );
    let node = Arc::new(Node::new(
        NodeConfig {
            name: plan.name.into(),
            broker: plan.broker,
            policy: TrustPolicy::Require(shared.trust.clone()),
            queue_capacity: 1024,
            ceilings: wasmtwin::spec::Ceilings::default(),
            component_dirs: shared.component_dirs.clone(),
            registry: Default::default(),
            fuel_per_cpu_second: plan.fuel_per_cpu_second,
            max_subscribers: wasmtwin::node::DEFAULT_MAX_SUBSCRIBERS,
            inputs: Default::default(),
            hibernate_after: Some(wasmtwin::node::DEFAULT_HIBERNATE_AFTER),
            // The embedded broker starts empty with the process: a device
            // restarted with it must not publish before the twin listens.
            broker_keeps_sessions: false,
            park_sessions_asleep: true,
            shared_session: plan.shared_session,
            inbox_max: wasmtwin::node::DEFAULT_INBOX_MAX,
            share_adapters: false,
            arrival_timeout: wasmtwin::node::DEFAULT_ARRIVAL_TIMEOUT,
        },
        runtime.clone(),
        wasmtwin::store::Store::open(&data.join(plan.name))?,
    )?);
    super::host::resume(&node).await?;
    let auth = wasmtwin::api::Auth::Token(shared.token.clone());
    tokio::spawn(super::host::serve(
        node.clone(),
        plan.listener,
        auth,
        super::host::DEFAULT_MAX_REQUESTS,
        shared.limits,
        None,
        None,
    ));
    tokio::spawn(membership::run(
        node.clone(),
        Membership {
            control: control_url.to_string(),
            token: Some(shared.token.clone()),
            zone: plan.zone.into(),
            domain: "local".into(),
            labels: Default::default(),
            url,
            every: Duration::from_secs(1),
        },
    ));
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defect_a_plugin_signed_again_keeps_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        // A component header and one section is all signing reads.
        let mut component = b"\0asm\x0d\0\x01\0".to_vec();
        component.extend([1, 3, 0xaa, 0xbb, 0xcc]);
        std::fs::write(plugins.join("machine.wasm"), component).unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let sign = |out: &str| {
            let path =
                sign_plugin(&plugins, "machine", &key, "test", &dir.path().join(out)).unwrap();
            std::fs::read(path).unwrap()
        };
        let first = sign("a");
        // A later second (signed_at has seconds) must not change a byte.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(
            first == sign("b"),
            "signing the same build twice gave two components"
        );
    }
}
