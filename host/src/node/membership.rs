//! A node's membership of a control plane (`wasmtwin host --control URL`):
//! every heartbeat it reports where it is (zone, domain, labels), what it
//! has (cores, memory, CPU shares granted and used), its measured path to
//! each broker its twins use, and every twin it runs with its
//! entanglement: the monitoring agent of the paper's platform.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::{Node, lock};
use crate::control::fleet::{Capacity, Heartbeat, TwinObservation, spec_digest};
use crate::physical::BrokerAddress;
use crate::physical::probe::Probe;

/// Where a node reports, and what it says of itself.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The control plane's API, e.g. `http://127.0.0.1:7000`.
    pub control: String,
    /// The token the control plane's API wants.
    pub token: Option<String>,
    /// `edge`, `mec` or `cloud`.
    pub zone: String,
    /// The trust domain: who runs this node.
    pub domain: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// This node's API as the control plane should call it.
    pub url: String,
    /// Time between heartbeats.
    pub every: Duration,
}

impl Node {
    /// What this node says of its twins now.
    pub fn observations(&self) -> Vec<TwinObservation> {
        let hosted: Vec<(String, crate::spec::TwinSpec, bool)> = lock(&self.twins)
            .iter()
            .map(|(name, h)| (name.clone(), h.spec.clone(), h.previous_model.is_some()))
            .collect();
        hosted
            .into_iter()
            .filter_map(|(name, spec, can_roll_back)| {
                let report = self.report(&name).ok()?;
                Some(TwinObservation {
                    spec_digest: spec_digest(&spec),
                    model_digest: report.model.component,
                    updates_applied: report.updates_applied,
                    guest_errors: report.guest_errors,
                    last_error: report.last_error,
                    can_roll_back,
                    cpu_share_millis: spec.cpu_millis().map(u64::from),
                    cpu_utilization: report.cpu.utilization,
                    cpu_throttled: report.cpu.throttled,
                    entanglement: report.entanglement,
                    name,
                })
            })
            .collect()
    }

    /// The brokers this node's twins use: its own first.
    fn brokers(&self) -> Vec<BrokerAddress> {
        let mut brokers = vec![self.config.broker.clone()];
        for hosted in lock(&self.twins).values() {
            if let Ok((broker, _)) = self.session_of(&hosted.spec)
                && !brokers
                    .iter()
                    .any(|b| b.host == broker.host && b.port == broker.port)
            {
                brokers.push(broker);
            }
        }
        brokers
    }

    /// What this node has and has granted.
    fn capacity(&self, twins: &[TwinObservation]) -> Capacity {
        Capacity {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: memory_bytes(),
            twins: twins.len() as u32,
            cpu_granted_millis: twins.iter().filter_map(|t| t.cpu_share_millis).sum(),
            cpu_used: self.cpu_in_use(),
        }
    }
}

/// Total memory, from `/proc/meminfo` (0 where there is none).
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// Sends heartbeats until the process ends; a control plane that cannot
/// be reached is logged (once per outage) and tried again at the next beat.
pub async fn run(node: Arc<Node>, membership: Membership) {
    let http = crate::client::http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let url = format!(
        "{}/v1/nodes/{}",
        membership.control.trim_end_matches('/'),
        node.config.name
    );
    let mut probes: HashMap<String, Probe> = HashMap::new();
    let mut tick = tokio::time::interval(membership.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let paths = node
            .brokers()
            .iter()
            .map(|broker| {
                let label = format!("{}:{}", broker.host, broker.port);
                probes
                    .entry(label)
                    .or_insert_with(|| {
                        Probe::start(broker, &node.config.name, Duration::from_secs(1))
                    })
                    .path()
            })
            .collect();
        let reporter = node.clone();
        let Ok(twins) = tokio::task::spawn_blocking(move || reporter.observations()).await else {
            continue;
        };
        let beat = Heartbeat {
            name: node.config.name.clone(),
            url: membership.url.clone(),
            zone: membership.zone.clone(),
            domain: membership.domain.clone(),
            labels: membership.labels.clone(),
            capacity: node.capacity(&twins),
            paths,
            twins,
        };
        let mut request = http.put(&url).json(&beat);
        if let Some(token) = &membership.token {
            request = request.bearer_auth(token);
        }
        let sent = match request.send().await {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => Err(format!(
                "answered {}: {}",
                answer.status(),
                answer.text().await.unwrap_or_default().trim()
            )),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(()) if failing => {
                tracing::info!(control = %membership.control, "reporting to the control plane again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(control = %membership.control, "cannot report to the control plane: {e}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
