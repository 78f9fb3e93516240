//! The node's measured network path to a broker: it publishes a small
//! numbered probe message to a topic of its own every second, and
//! times its return through the broker. The control plane compares these
//! round trips between nodes to tell a slow path from a slow model, and to
//! choose where a twin's updates would arrive sooner.
//!
//! Probes go over a session of their own (clean, QoS 0), on the same
//! network path as the twins' sessions: through the same broker address,
//! and any proxy in front of it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Event, Incoming};

use super::BrokerAddress;
use crate::control::fleet::BrokerPath;

/// How many recent probes a path's figures cover: few, so that a path
/// that slowed down shows it within three probes.
const RECENT: usize = 5;
/// A probe not back within this long counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Outcomes {
    /// Probes sent and not yet back: number → when sent.
    pending: HashMap<u64, Instant>,
    /// The latest outcomes: a round trip in ms, or `None` for a loss.
    recent: VecDeque<Option<f64>>,
}

impl Outcomes {
    fn push(&mut self, outcome: Option<f64>) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(outcome);
    }

    /// Moves probes out for longer than [`LOST_AFTER`] to the losses.
    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, sent)| now.duration_since(**sent) >= LOST_AFTER)
            .map(|(n, _)| *n)
            .collect();
        for n in late {
            self.pending.remove(&n);
            self.push(None);
        }
    }
}

/// Probes of one broker, running until dropped.
pub struct Probe {
    broker: String,
    outcomes: Arc<Mutex<Outcomes>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(outcomes: &Mutex<Outcomes>) -> std::sync::MutexGuard<'_, Outcomes> {
    outcomes.lock().unwrap_or_else(|p| p.into_inner())
}

impl Probe {
    /// Starts probing `broker` every `every` as node `node`.
    pub fn start(broker: &BrokerAddress, node: &str, every: Duration) -> Self {
        let label = format!("{}:{}", broker.host, broker.port);
        let mut nonce = [0u8; 4];
        // Two processes with one node name must not share a session.
        let _ = getrandom::fill(&mut nonce);
        let client_id = format!("wasmtwin-probe-{node}-{}", hex::encode(nonce));
        let topic = format!("wasmtwin/probe/{node}/{}", hex::encode(nonce));
        let (client, mut eventloop) = super::client(super::options(broker, &client_id, true), 16);
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let seen = outcomes.clone();
        // The event loop and the ticks run side by side, never one
        // cancelling the other: a tick that cancelled a poll still
        // connecting made the session connect again, and again on every
        // tick while connecting took longer than the period.
        let task = tokio::spawn(async move {
            let subscribed = AtomicBool::new(false);
            let receive = async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            let asked = client.subscribe(&topic, QoS::AtMostOnce).await.is_ok();
                            subscribed.store(asked, Ordering::Relaxed);
                        }
                        Ok(Event::Incoming(Incoming::Publish(p))) => {
                            let back = Instant::now();
                            let number = std::str::from_utf8(&p.payload)
                                .ok()
                                .and_then(|t| t.parse::<u64>().ok());
                            let mut outcomes = lock(&seen);
                            if let Some(sent) = number.and_then(|n| outcomes.pending.remove(&n)) {
                                outcomes
                                    .push(Some(back.duration_since(sent).as_secs_f64() * 1000.0));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!("probe session to the broker: {e}");
                            subscribed.store(false, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            };
            let send = async {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut next = 0u64;
                loop {
                    tick.tick().await;
                    lock(&seen).expire(Instant::now());
                    if subscribed.load(Ordering::Relaxed) {
                        next += 1;
                        lock(&seen).pending.insert(next, Instant::now());
                        let _ =
                            client.try_publish(&topic, QoS::AtMostOnce, false, next.to_string());
                    }
                }
            };
            tokio::join!(receive, send);
        })
        .abort_handle();
        Self {
            broker: label,
            outcomes,
            task,
        }
    }

    /// The path's figures now.
    pub fn path(&self) -> BrokerPath {
        let outcomes = lock(&self.outcomes);
        let mut rtts: Vec<f64> = outcomes.recent.iter().flatten().copied().collect();
        rtts.sort_by(f64::total_cmp);
        BrokerPath {
            broker: self.broker.clone(),
            rtt_ms: rtts.get(rtts.len() / 2).copied(),
            lost: outcomes.recent.iter().filter(|o| o.is_none()).count() as u32,
            probes: outcomes.recent.len() as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe connected twice at start: its first tick, due at once,
    /// cancelled the poll that was still connecting (and so did every
    /// tick while connecting took longer than the period).
    #[tokio::test(flavor = "multi_thread")]
    async fn defect_a_probe_connects_once_at_start() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // A "broker" that accepts every CONNECT (MQTT 5 CONNACK, success),
        // later than the probe's period, as one across a slow network
        // would, and counts the connections.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    if socket.read(&mut buffer).await.unwrap_or(0) > 0 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let _ = socket.write_all(&[0x20, 0x03, 0x00, 0x00, 0x00]).await;
                    }
                    while socket.read(&mut buffer).await.unwrap_or(0) > 0 {}
                });
            }
        });
        let broker: BrokerAddress = format!("mqtt://127.0.0.1:{port}").parse().unwrap();
        let _probe = Probe::start(&broker, "n", Duration::from_millis(200));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn late_probes_are_losses_and_only_the_recent_count() {
        let mut outcomes = Outcomes::default();
        let start = Instant::now();
        outcomes.pending.insert(1, start);
        outcomes.pending.insert(2, start + Duration::from_secs(4));
        outcomes.expire(start + LOST_AFTER);
        assert_eq!(outcomes.recent, [None]);
        assert!(outcomes.pending.contains_key(&2));
        for i in 0..RECENT {
            outcomes.push(Some(i as f64));
        }
        assert_eq!(outcomes.recent.len(), RECENT);
        assert!(
            outcomes.recent.iter().all(Option::is_some),
            "the loss aged out"
        );
    }
}
