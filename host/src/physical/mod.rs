//! The physical interface: one MQTT session per twin, subscribed to its
//! PT's topics. Messages go to the twin's worker; the worker acknowledges a
//! QoS 1 message only once the state change it caused is committed, so a
//! crash never loses an acknowledged update. Commands go back the same way.
//!
//! This module knows MQTT and nothing of HTTP or of models.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

/// Where a broker is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether to use TLS (`mqtts://`).
    pub tls: bool,
    /// User name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// PEM certificates of the CAs that may sign the broker's certificate
    /// (`mqtts://` only); the system's roots when absent.
    pub ca_pem: Option<Vec<u8>>,
}

impl BrokerAddress {
    /// This address with `other`'s login and trust (the node's MQTT
    /// settings apply to the brokers specs name).
    pub fn with_login_of(mut self, other: &BrokerAddress) -> Self {
        self.credentials = other.credentials.clone();
        self.ca_pem = other.ca_pem.clone();
        self
    }
}

impl std::str::FromStr for BrokerAddress {
    type Err = anyhow::Error;

    /// Parses `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            bail!("`{text}` must be mqtt://HOST:PORT or mqtts://HOST:PORT");
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .with_context(|| format!("`{port}` is not a port"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            bail!("`{text}` names no host");
        }
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
            credentials: None,
            ca_pem: None,
        })
    }
}

/// A message from the PT, with what is needed to acknowledge it.
#[derive(Debug)]
pub struct Inbound {
    /// The topic it arrived on.
    pub topic: String,
    /// The raw payload, for the adapter.
    pub payload: Bytes,
    /// When the node received it, µs since the Unix epoch.
    pub received_us: u64,
    /// The packet, to acknowledge once committed (QoS 1 only).
    pub packet: Option<rumqttc::Publish>,
}

/// The handle a twin's worker uses: acknowledge and send commands.
///
/// Both go, in order, through a queue that a task of the session drains
/// into the MQTT client, waiting for room there rather than failing when
/// the client is busy (a dropped acknowledgement would hold the broker's
/// in-flight window shut for good). The queue needs no bound of its own:
/// acknowledgements are bounded by the messages the broker has in flight to
/// us, which the twin's bounded queues hold, and commands by the actions
/// admission control lets through.
#[derive(Clone)]
pub struct Link {
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

enum Outgoing {
    Ack(rumqttc::Publish),
    Command { topic: String, payload: Vec<u8> },
    Disconnect,
}

impl Link {
    fn new(client: AsyncClient) -> Self {
        let (outgoing, mut queue) = mpsc::unbounded_channel();
        let sender = client.clone();
        tokio::spawn(async move {
            while let Some(item) = queue.recv().await {
                let sent = match item {
                    Outgoing::Ack(packet) => sender.ack(&packet).await,
                    Outgoing::Command { topic, payload } => {
                        sender
                            .publish(topic, QoS::AtLeastOnce, false, payload)
                            .await
                    }
                    Outgoing::Disconnect => {
                        let _ = sender.disconnect().await;
                        break;
                    }
                };
                if sent.is_err() {
                    break; // the session is closed
                }
            }
        });
        Self { outgoing }
    }

    /// Acknowledges a committed message.
    pub fn ack(&self, packet: &rumqttc::Publish) {
        if self.outgoing.send(Outgoing::Ack(packet.clone())).is_err() {
            tracing::debug!("not acknowledging a message: the session is closed");
        }
    }

    /// Publishes a command to the device (QoS 1).
    pub fn send(&self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.outgoing
            .send(Outgoing::Command {
                topic: topic.to_string(),
                payload,
            })
            .map_err(|_| anyhow::anyhow!("cannot publish on {topic}: the session is closed"))
    }

    /// Closes the session, after the acknowledgements and commands queued
    /// before.
    pub fn close(&self) {
        let _ = self.outgoing.send(Outgoing::Disconnect);
    }
}

/// Current time in µs since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// How long [`connect`] waits for the broker to confirm the subscription
/// before returning anyway (the session keeps trying in the background).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// Connects `client_id` to `broker`, subscribes to `topics` at `qos`, and
/// forwards every message to `inbound`. The session is persistent, so a
/// restarted node gets what it had not acknowledged. Reconnects with
/// exponential backoff until the returned link is closed.
///
/// Returns once the broker has confirmed the subscription (or delivered a
/// message), so nothing published after that is missed (or after [`SUBSCRIBE_WAIT`], with a
/// warning, when the broker cannot be reached yet). Blocks: call it off the
/// async threads.
pub fn connect(
    broker: &BrokerAddress,
    client_id: &str,
    topics: Vec<String>,
    qos: u8,
    inbound: mpsc::Sender<Inbound>,
) -> anyhow::Result<Link> {
    let options = options(broker, client_id, false);
    let (client, eventloop) = AsyncClient::new(options, 256);
    let qos = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (subscribed, confirmed) = std::sync::mpsc::channel();
    let session = Session {
        client: client.clone(),
        topics,
        qos,
        inbound,
        client_id: client_id.to_string(),
        subscribed: Some(subscribed),
    };
    tokio::spawn(session.drive(eventloop));
    if confirmed.recv_timeout(SUBSCRIBE_WAIT).is_err() {
        tracing::warn!(
            client = %client_id,
            broker = %format!("{}:{}", broker.host, broker.port),
            "the broker has not confirmed the subscription yet; still trying"
        );
    }
    Ok(Link::new(client))
}

/// Session options for `client_id` at `broker`; a persistent session
/// unless `clean`.
fn options(broker: &BrokerAddress, client_id: &str, clean: bool) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_clean_session(clean)
        .set_manual_acks(true)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(100);
    if let Some((user, password)) = &broker.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    if broker.tls {
        options.set_transport(match &broker.ca_pem {
            Some(ca) => rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: None,
            }),
            None => rumqttc::Transport::tls_with_default_config(),
        });
    }
    options
}

/// Makes the broker discard the persistent session of `client_id` (its
/// subscriptions and the messages queued for it), by connecting once with
/// a clean session: done when a twin has moved to another node, so the
/// broker stops keeping its messages here.
pub async fn forget_session(broker: BrokerAddress, client_id: String) {
    let (client, mut eventloop) = AsyncClient::new(options(&broker, &client_id, true), 10);
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    let _ = client.disconnect().await;
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match done {
        Ok(Ok(())) => tracing::debug!(client = %client_id, "broker session discarded"),
        Ok(Err(e)) => tracing::warn!(client = %client_id, "cannot discard the broker session: {e}"),
        Err(_) => {
            tracing::warn!(client = %client_id, "cannot discard the broker session: timed out")
        }
    }
}

/// One twin's MQTT session, driven by its event loop.
struct Session {
    client: AsyncClient,
    topics: Vec<String>,
    qos: QoS,
    inbound: mpsc::Sender<Inbound>,
    client_id: String,
    /// Told once the subscription is confirmed, then dropped.
    subscribed: Option<std::sync::mpsc::Sender<()>>,
}

impl Session {
    /// Tells `connect` the subscription is in place (the first time only).
    fn confirm(&mut self) {
        if let Some(subscribed) = self.subscribed.take() {
            let _ = subscribed.send(());
        }
    }

    async fn drive(mut self, mut eventloop: EventLoop) {
        let client_id = self.client_id.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!(client = %client_id, "connected to the broker");
                    let filters = self
                        .topics
                        .iter()
                        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), self.qos));
                    if let Err(e) = self.client.subscribe_many(filters).await {
                        tracing::warn!(client = %client_id, "cannot subscribe: {e}");
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => self.confirm(),
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    // A message proves the subscription too: a persistent
                    // session's backlog may fill the queue before the
                    // SUBACK is read.
                    self.confirm();
                    let packet = (publish.qos != QoS::AtMostOnce).then(|| publish.clone());
                    let message = Inbound {
                        topic: publish.topic,
                        payload: publish.payload,
                        received_us: now_us(),
                        packet,
                    };
                    // A full queue holds the event loop, and with it the TCP
                    // connection: the broker keeps the rest.
                    if self.inbound.send(message).await.is_err() {
                        return; // the twin is gone
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    if self.inbound.is_closed() {
                        return;
                    }
                    tracing::warn!(client = %client_id, "broker connection lost: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
