//! What one run of the experiment starts in this process: the control
//! plane, two nodes in different zones each reaching the broker through a
//! fault-injecting link of its own, the `prime` twin, and the simulated
//! device publishing to the broker directly.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::json;
use wasmtwin::control::reconcile::Control;
use wasmtwin::faults::{Direction, FaultProxy};
use wasmtwin::node::Node;
use wasmtwin::node::TwinReport;
use wasmtwin::physical::BrokerAddress;
use wasmtwin::runtime::Runtime;
use wasmtwin::sim::{self, SimConfig};
use wasmtwin::spec::TwinSpec;

use super::plan::{Kind, Settings};
use crate::cli::local;

/// The nodes: name and zone, in the control plane's order of preference.
pub const NODES: [&str; 2] = ["edge", "cloud"];

/// The MQTT broker every run uses.
pub enum Broker {
    /// Mosquitto, a child of this process (killed when this is dropped,
    /// and by the kernel if this process dies first).
    Mosquitto { child: Child, port: u16 },
    /// The embedded broker, when Mosquitto is not installed.
    Embedded { port: u16 },
}

impl Broker {
    /// Mosquitto when it is installed, else the embedded broker; `dir`
    /// receives Mosquitto's configuration and log.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let Some(mosquitto) = find_mosquitto() else {
            let listening = wasmtwin::broker::start(([127, 0, 0, 1], 0).into())?;
            return Ok(Broker::Embedded {
                port: listening.port(),
            });
        };
        let port = free_port()?;
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log = std::fs::File::create(dir.join("mosquitto.log"))
            .with_context(|| format!("creating {}", dir.join("mosquitto.log").display()))?;
        let mut command = Command::new(&mosquitto);
        command
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("the broker's log")?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the child asks the kernel to
        // kill it when this process dies, even by SIGKILL, so an
        // interrupted experiment leaves no broker behind.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", mosquitto.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().context("watching Mosquitto")? {
                anyhow::bail!(
                    "Mosquitto exited ({status}) before listening; see {}",
                    dir.join("mosquitto.log").display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("Mosquitto did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Broker::Mosquitto { child, port })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        match self {
            Broker::Mosquitto { port, .. } | Broker::Embedded { port } => *port,
        }
    }

    /// What it is, for the output.
    pub fn describe(&self) -> String {
        match self {
            Broker::Mosquitto { child, port } => {
                format!("Mosquitto on 127.0.0.1:{port} (pid {})", child.id())
            }
            Broker::Embedded { port } => format!("embedded broker on 127.0.0.1:{port}"),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Mosquitto { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Mosquitto's path, if installed (Debian puts it in /usr/sbin, which is
/// not always on a user's PATH).
fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("mosquitto"))
        .find(|candidate| candidate.is_file())
}

/// A port nothing listens on now.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}

fn loopback(port: u16) -> BrokerAddress {
    BrokerAddress {
        host: "127.0.0.1".into(),
        port,
        tls: false,
        credentials: None,
        ca_pem: None,
    }
}

/// What a run is.
pub struct RunConfig<'a> {
    /// Where its stores and event history go.
    pub data: &'a Path,
    /// The twin's name (one per run: the runs share the broker).
    pub twin: &'a str,
    /// The signed model and adapter.
    pub model: &'a Path,
    pub adapter: &'a Path,
    /// The device's declared rate.
    pub rate_hz: f64,
    /// The requirements' window.
    pub window_seconds: u32,
    /// The share and the bound.
    pub settings: Settings,
    /// Whether the control plane only observes.
    pub observe_only: bool,
    /// The node's fuel per CPU-second, measured once for every run.
    pub fuel_per_cpu_second: u64,
}

/// One run's testbed.
pub struct Testbed {
    pub control: Arc<Control>,
    /// The nodes, in [`NODES`] order, each with its link to the broker.
    pub nodes: Vec<(String, Arc<Node>, FaultProxy)>,
    twin: String,
    spec: TwinSpec,
    device: AsyncClient,
    command_topic: String,
}

impl Testbed {
    /// Starts everything, has the control plane place the twin, and starts
    /// the device once the twin runs.
    pub async fn start(
        runtime: &Runtime,
        broker: &Broker,
        shared: &local::Shared,
        run: &RunConfig<'_>,
    ) -> anyhow::Result<Self> {
        let listener = |what: &str| {
            super::super::host::listen(([127, 0, 0, 1], 0).into())
                .with_context(|| format!("the {what}'s HTTP listener"))
        };
        let control_listener = listener("control plane")?;
        let control_url = format!("http://{}", control_listener.local_addr()?);
        let control = local::control(
            &run.data.join("control"),
            control_listener,
            shared,
            Duration::from_secs(5),
            run.observe_only,
        )?;
        let mut nodes = Vec::new();
        for name in NODES {
            let link = FaultProxy::plain(broker.port()).context("starting a node's link")?;
            link.set(Direction::Both, Kind::Baseline.link());
            let plan = local::NodePlan {
                name,
                zone: name,
                broker: loopback(link.port),
                listener: listener(name)?,
                fuel_per_cpu_second: Some(run.fuel_per_cpu_second),
                shared_session: false,
            };
            let node = local::node(runtime, run.data, plan, shared, &control_url).await?;
            nodes.push((name.to_string(), node, link));
        }
        let topic = format!("plant/{}/status", run.twin);
        let command_topic = format!("plant/{}/commands", run.twin);
        let spec = twin_spec(run, &topic)?;
        control
            .apply(spec.clone(), "wasmtwin experiment")
            .await
            .map_err(|e| anyhow::anyhow!("the experiment's twin: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !nodes
            .iter()
            .any(|(_, node, _)| node.report(run.twin).is_ok())
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the control plane did not start the twin within a minute (see the log)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let device = start_device(broker.port(), run, &topic, &command_topic)?;
        Ok(Self {
            control,
            nodes,
            twin: run.twin.to_string(),
            spec,
            device,
            command_topic,
        })
    }

    /// The node the twin runs on and its report.
    pub fn hosting(&self) -> Option<(&str, TwinReport)> {
        self.nodes
            .iter()
            .find_map(|(name, node, _)| Some((name.as_str(), node.report(&self.twin).ok()?)))
    }

    /// Puts every link at `kind`'s setting, but for the twin's own node's
    /// link, which gets `own`'s.
    pub fn set_links(&self, own: Kind, others: Kind) {
        let here = self.hosting().map(|(name, _)| name.to_string());
        for (name, _, link) in &self.nodes {
            let kind = if Some(name) == here.as_ref() {
                own
            } else {
                others
            };
            link.set(Direction::Both, kind.link());
        }
    }

    /// Changes the model's work per update through the control plane, as
    /// `wasmtwin apply` would.
    pub async fn set_primes(&mut self, primes: u32) -> anyhow::Result<()> {
        self.spec.spec.model.config = json!({ "primes": primes });
        self.control
            .apply(self.spec.clone(), "wasmtwin experiment")
            .await
            .map_err(|e| anyhow::anyhow!("setting {primes} primes: {e}"))?;
        Ok(())
    }

    /// Changes the device's rate through its own command topic, as a
    /// technician would.
    pub async fn set_rate(&self, hz: f64) -> anyhow::Result<()> {
        let command = json!({ "command": "set_rate", "payload": { "hz": hz } });
        self.device
            .publish(
                self.command_topic.clone(),
                QoS::AtLeastOnce,
                false,
                command.to_string(),
            )
            .await
            .context("telling the device its new rate")
    }
}

/// The twin: the `prime` model fed by the JSON adapter, placed preferably
/// at the edge, with the paper's requirements and the chosen share.
fn twin_spec(run: &RunConfig<'_>, topic: &str) -> anyhow::Result<TwinSpec> {
    let window = run.window_seconds;
    let text = json!({
        "apiVersion": wasmtwin::spec::API_VERSION,
        "kind": wasmtwin::spec::KIND,
        "metadata": { "name": run.twin, "labels": { "experiment": "paper-figure-3" } },
        "spec": {
            "placement": { "zones": NODES },
            "model": {
                "ref": run.model.display().to_string(),
                "config": { "primes": super::plan::PRIMES_BASELINE },
            },
            "physical": {
                "topics": [topic],
                "adapter": { "ref": run.adapter.display().to_string() },
            },
            "requirements": {
                "timeliness": { "percentile": 99.0, "boundMs": run.settings.bound_ms },
                "reliability": 0.9,
                "availability": 0.9,
                "odte": 0.9,
                "windowSeconds": window,
                "expectedRateHz": run.rate_hz,
            },
            "resources": { "cpu": format!("{}m", run.settings.share_millis) },
            // Acts after 3 s of broken requirements; then waits two windows,
            // long enough for the measures to show the action's effect
            // (the slow updates before it leave the window).
            "policy": { "maxCpu": "1", "holdSeconds": 3, "cooldownSeconds": 2 * window },
        },
    })
    .to_string();
    TwinSpec::parse(&text).map_err(Into::into)
}

/// The device: the simulated motor publishing status updates to the broker
/// directly at the declared rate, taking commands on `command_topic`; and a
/// client to send it commands with.
fn start_device(
    port: u16,
    run: &RunConfig<'_>,
    topic: &str,
    command_topic: &str,
) -> anyhow::Result<AsyncClient> {
    let config = SimConfig {
        broker: loopback(port),
        client_id: format!("{}-device", run.twin),
        topic: topic.to_string(),
        command_topic: Some(command_topic.to_string()),
        rate_hz: run.rate_hz,
        count: None,
        first_seq: 1,
    };
    tokio::spawn(async move {
        if let Err(e) = sim::run(config).await {
            tracing::error!("the simulated device stopped: {e:#}");
        }
    });
    let options = MqttOptions::new(format!("{}-technician", run.twin), "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    tokio::spawn(async move {
        loop {
            if let Err(e) = eventloop.poll().await {
                tracing::warn!("the technician's connection to the broker: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    Ok(client)
}
