//! The physical interface: one MQTT session per twin, subscribed to its
//! PT's topics. Messages go to the twin's worker; the worker acknowledges a
//! QoS 1 message only once the state change it caused is committed, so a
//! crash never loses an acknowledged update. Commands go back the same way.
//!
//! Sessions speak MQTT 5 (devices may speak 3.1.1 or 5: the broker
//! translates): its user properties let a device send the W3C
//! `traceparent` of its own trace, which the message's trace continues.
//!
//! This module knows MQTT and nothing of HTTP or of models.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Publish};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

mod confirmations;
pub mod doorbell;
pub mod probe;
pub mod shared;

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

/// A message from the PT, with what is needed to acknowledge it. Queues
/// carry it boxed: a queue makes its first block of 32 slots with it, and
/// at 360 bytes a slot, each twin's two queues held 23 KiB unboxed.
#[derive(Debug)]
pub struct Inbound {
    /// The topic it arrived on.
    pub topic: String,
    /// The raw payload, for the adapter (empty when `oversized`).
    pub payload: Bytes,
    /// The size of a payload over the twin's maximum, which was dropped:
    /// the message is only to be acknowledged, in its turn, and counted.
    pub oversized: Option<usize>,
    /// When the node received it, µs since the Unix epoch.
    pub received_us: u64,
    /// The packet, to acknowledge once committed (QoS 1 only).
    pub packet: Option<Box<Publish>>,
    /// Which connection of its session it came on (they are counted from
    /// 0, one more each time a parked session connects again): it is
    /// acknowledged on that one only, whose packet ids it names.
    pub connection: u32,
    /// The session to acknowledge it on, when not the twin's own (a
    /// session adopted from a lost node, see `Node::restore_bundle`).
    pub via: Option<Link>,
    /// Its key in the node's inbox, when it came on a shared session (see
    /// `shared`): it was acknowledged once kept, and is removed from the
    /// inbox once applied, instead.
    pub inbox: Option<u64>,
    /// The message's trace, from receipt to acknowledgement (disabled
    /// unless traces are exported).
    pub span: tracing::Span,
}

/// The root span of a PT message's trace (its worker records the twin),
/// continuing the device's own trace when the message carries a
/// `traceparent` user property.
pub fn message_span(client_id: &str, publish: &Publish) -> tracing::Span {
    let span = crate::trace_span!(
        "pt.message",
        otel.kind = "consumer",
        messaging.system = "mqtt",
        messaging.client.id = %client_id,
        messaging.destination.name = %String::from_utf8_lossy(&publish.topic),
        messaging.message.body.size = publish.payload.len(),
        twin = tracing::field::Empty,
    );
    if let Some(properties) = &publish.properties {
        crate::telemetry::follow(
            &span,
            &crate::telemetry::UserProperties(&properties.user_properties),
        );
    }
    span
}

/// The handle a twin's worker uses: acknowledge and send commands, and
/// park the session while the twin sleeps.
///
/// Both go, in order, through a queue that a task of the session drains
/// into the MQTT client, waiting for room there rather than failing when
/// the client is busy (a dropped acknowledgement would hold the broker's
/// in-flight window shut for good). The queue needs no bound of its own:
/// acknowledgements are bounded by the messages the broker has in flight to
/// us, which the twin's bounded queues hold, and commands by the actions
/// admission control lets through.
#[derive(Clone)]
pub enum Link {
    /// The twin's own session.
    Own(Own),
    /// Its place in its node's shared session: acknowledgements are the
    /// node's inbox's business, and the session never parks.
    Shared(shared::Member),
}

/// A twin's own session (see [`Link`]).
#[derive(Clone)]
pub struct Own {
    outgoing: flume::Sender<Outgoing>,
    /// What the session should be; a session that is not connected
    /// follows it at once (it stops trying to reconnect for nobody).
    wanted: std::sync::Arc<tokio::sync::watch::Sender<Wanted>>,
    /// The task driving the session.
    session: tokio::task::AbortHandle,
    /// Whether the session is connected.
    connected: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

/// What a link wants of its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// Connected, receiving.
    Open,
    /// Disconnected with its MQTT client dropped, while the broker keeps
    /// the session and what arrives for it.
    Parked,
    /// Parked, but first connected once, in its turn, to collect what the
    /// broker kept meanwhile (see [`Link::collect`]); the session parks
    /// itself again once it has.
    Collect,
    /// Ended.
    Closed,
}

enum Outgoing {
    // Boxed, as `Inbound` is: the queue's first block of 32 slots is made
    // with it, and every twin has one.
    /// A packet, and the connection it came on.
    Ack(Box<Publish>, u32),
    /// Topic and payload.
    Command(Box<(String, Vec<u8>)>),
    /// Disconnect, after what came before, until the session opens again.
    Park,
    /// The client of the session's next connection, once it opens again
    /// (sent by the session itself: one queue fewer per twin, and it comes
    /// before any acknowledgement of a message that connection received).
    Client(AsyncClient),
    Disconnect,
}

impl Link {
    /// Whether the session is connected to its broker now.
    pub fn is_connected(&self) -> bool {
        match self {
            Link::Own(own) => own.is_connected(),
            Link::Shared(member) => member.is_connected(),
        }
    }

    /// Whether the session has ended (after [`Link::close`], or when the
    /// twin it fed is gone).
    pub fn is_ended(&self) -> bool {
        match self {
            Link::Own(own) => own.session.is_finished(),
            Link::Shared(member) => member.has_left(),
        }
    }

    /// Acknowledges a committed message, received on `connection` (see
    /// [`Inbound::connection`]).
    pub fn ack(&self, packet: Box<Publish>, connection: u32) {
        match self {
            Link::Own(own) => own.ack(packet, connection),
            // Acknowledged once kept (see `Inbound::inbox`).
            Link::Shared(_) => {}
        }
    }

    /// Publishes a command to the device (QoS 1).
    pub fn send(&self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Link::Own(own) => own.send(topic, payload),
            Link::Shared(member) => member.send(topic, payload),
        }
    }

    /// Disconnects an own session, after the acknowledgements and commands
    /// queued before, and drops its MQTT client until [`Link::unpark`]:
    /// the broker keeps the session, and what arrives for it, meanwhile.
    /// Acknowledgements queued while it is parked are dropped (the broker
    /// sends their messages again on the next connection); commands wait
    /// for that connection. A shared session does not park.
    pub fn park(&self) {
        if let Link::Own(own) = self {
            own.park();
        }
    }

    /// Connects a parked session again.
    pub fn unpark(&self) {
        if let Link::Own(own) = self {
            own.unpark();
        }
    }

    /// Whether the session is parked (and not collecting).
    pub fn is_parked(&self) -> bool {
        matches!(self, Link::Own(own) if own.is_parked())
    }

    /// Has a parked session connect once, in its turn (see
    /// [`Subscription::turns`]), to collect what its broker kept for it:
    /// after a restart, or when a ring may have been missed. It parks again
    /// as soon as the broker has answered its subscription with nothing
    /// before, and stays connected if something came (until the twin is
    /// idle and parks it, as any other).
    pub fn collect(&self) {
        if let Link::Own(own) = self {
            own.collect();
        }
    }

    /// Closes the session (after the acknowledgements and commands queued
    /// before), or leaves the shared one: the twin is gone.
    pub fn close(&self) {
        match self {
            Link::Own(own) => own.close(),
            Link::Shared(member) => member.leave(),
        }
    }

    /// The twin's worker is done with the link: its own session closes,
    /// and the broker keeps what comes for it meanwhile. A place in the
    /// shared session stays until the node closes it, so that what comes
    /// is kept for the twin should it run here again (a move that fails).
    pub fn release(&self) {
        if let Link::Own(own) = self {
            own.close();
        }
    }
}

impl Own {
    fn new(
        client: AsyncClient,
        (outgoing, queue): (flume::Sender<Outgoing>, flume::Receiver<Outgoing>),
        wanted: std::sync::Arc<tokio::sync::watch::Sender<Wanted>>,
        session: tokio::task::AbortHandle,
        connected: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        tokio::spawn(drain(client, queue));
        Self {
            outgoing,
            wanted,
            session,
            connected,
        }
    }

    fn is_connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn ack(&self, packet: Box<Publish>, connection: u32) {
        if self
            .outgoing
            .send(Outgoing::Ack(packet, connection))
            .is_err()
        {
            tracing::debug!("not acknowledging a message: the session is closed");
        }
    }

    fn send(&self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.outgoing
            .send(Outgoing::Command(Box::new((topic.to_string(), payload))))
            .map_err(|_| anyhow::anyhow!("cannot publish on {topic}: the session is closed"))
    }

    fn park(&self) {
        let parked = self
            .wanted
            .send_if_modified(|wanted| replace_if(wanted, Wanted::Open, Wanted::Parked));
        if parked {
            let _ = self.outgoing.send(Outgoing::Park);
        }
    }

    fn unpark(&self) {
        self.wanted.send_if_modified(|wanted| {
            replace_if(wanted, Wanted::Parked, Wanted::Open)
                || replace_if(wanted, Wanted::Collect, Wanted::Open)
        });
    }

    fn is_parked(&self) -> bool {
        *self.wanted.borrow() == Wanted::Parked
    }

    fn collect(&self) {
        self.wanted
            .send_if_modified(|wanted| replace_if(wanted, Wanted::Parked, Wanted::Collect));
    }

    fn close(&self) {
        let _ = self.outgoing.send(Outgoing::Disconnect);
        self.wanted.send_replace(Wanted::Closed);
    }
}

/// Sets `wanted` to `to` if it is `from`; whether it did.
fn replace_if(wanted: &mut Wanted, from: Wanted, to: Wanted) -> bool {
    let replaced = *wanted == from;
    if replaced {
        *wanted = to;
    }
    replaced
}

/// Drains a link's queue into its session's MQTT client, and into the
/// session's next client each time it parks and opens again.
async fn drain(mut client: AsyncClient, queue: flume::Receiver<Outgoing>) {
    // The connection `client` is of.
    let mut connection = 0;
    while let Ok(item) = queue.recv_async().await {
        let park = matches!(item, Outgoing::Park);
        // Whether it was sent (not the client's error, hundreds of bytes,
        // which the task would keep across the awaits below).
        let sent = match item {
            Outgoing::Ack(packet, on) if on == connection => ack(&client, &packet).await.is_ok(),
            // An earlier connection's packet id names nothing, or another
            // message, on this one; the broker sent that message again.
            Outgoing::Ack(..) => true,
            Outgoing::Command(command) => publish(&client, *command).await.is_ok(),
            Outgoing::Park => Box::pin(client.disconnect()).await.is_ok(),
            Outgoing::Client(next) => {
                (client, connection) = (next, connection + 1);
                true
            }
            Outgoing::Disconnect => {
                let _ = Box::pin(client.disconnect()).await;
                break;
            }
        };
        // A client refuses once its event loop is gone: its session parked
        // (perhaps before this queue reached the park) or ended.
        if park || !sent {
            drop(client);
            match reopened(&queue).await {
                Some(next) => {
                    client = next;
                    connection += 1;
                }
                None => break,
            }
        }
    }
}

/// The client of a parked session's next connection, once there is one,
/// with the commands queued meanwhile sent on it; `None` once the link has
/// ended.
async fn reopened(queue: &flume::Receiver<Outgoing>) -> Option<AsyncClient> {
    let mut held = Vec::new();
    let client = loop {
        match queue.recv_async().await.ok()? {
            Outgoing::Client(client) => break client,
            Outgoing::Command(command) => held.push(command),
            // The old connection's: the broker sends them again.
            Outgoing::Ack(..) | Outgoing::Park => {}
            Outgoing::Disconnect => return None,
        }
    };
    for command in held {
        publish(&client, *command).await.ok()?;
    }
    Some(client)
}

// The drain's future, kept by every twin, is as large as the largest one
// it awaits, and the client's own futures are hundreds of bytes: they are
// boxed, and an acknowledgement awaits one only when the client's request
// queue is full.

/// Acknowledges `packet` on `client`.
async fn ack(client: &AsyncClient, packet: &Publish) -> Result<(), rumqttc::v5::ClientError> {
    // (Not a match: its scrutinee, the refused request, would be kept
    // across the await.)
    if client.try_ack(packet).is_ok() {
        return Ok(());
    }
    Box::pin(client.ack(packet)).await
}

/// Publishes a command to the device (QoS 1).
async fn publish(
    client: &AsyncClient,
    (topic, payload): (String, Vec<u8>),
) -> Result<(), rumqttc::v5::ClientError> {
    Box::pin(client.publish(topic, QoS::AtLeastOnce, false, payload)).await
}

/// The value behind `mutex`, even if a holder panicked (what it guards
/// stays consistent between statements).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Current time in µs since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The largest packet MQTT can carry (its remaining length is at most
/// 268,435,455 bytes) plus the fixed header.
const MQTT_MAX_PACKET: u32 = 268_435_455 + 5;

/// Commands a twin's session may have unacknowledged at once; more wait
/// in its queue.
const OUTGOING_INFLIGHT: u16 = 16;

/// The session expiry interval MQTT 5 reads as "never".
const SESSION_NEVER_EXPIRES: u32 = u32::MAX;

/// What a twin's session subscribes to, and what it takes.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Topic filters.
    pub topics: Vec<String>,
    /// 0 or 1.
    pub qos: u8,
    /// The largest payload passed on; larger ones are dropped.
    pub max_payload: usize,
    /// The turns a session takes to connect when it collects
    /// ([`Link::collect`]), shared by a node's sessions so that thousands
    /// collecting at once hold a few sockets at a time; `None` connects
    /// at once.
    pub turns: Option<Turns>,
}

/// Whether [`connect`] waits for the broker to confirm the subscription.
#[derive(Debug, Clone)]
pub enum Subscribing {
    /// Wait: a new session, which misses what is published before.
    Confirmed,
    /// Don't: a session the broker already holds, with its subscription,
    /// which keeps what is published meanwhile (a node resuming its twins
    /// connects them all at once instead of one round trip each).
    InBackground,
    /// Don't connect yet: a session the broker already holds, of a twin
    /// that resumes asleep. It waits parked until [`Link::collect`] (once
    /// the twin's doorbell listens), then collects in its turn. A
    /// restarted node so connects its sleeping twins a few at a time, and
    /// its limit on open files bounds only the twins awake, not all it
    /// holds.
    Parked,
}

/// Turns to connect for the sessions collecting what their broker kept,
/// and a count of those collecting (waiting for a turn or connected).
#[derive(Debug, Clone)]
pub struct Turns {
    turns: std::sync::Arc<Semaphore>,
    collecting: Gauge,
}

impl Turns {
    /// At most `at_once` sessions connecting at once; `collecting` counts
    /// those collecting.
    pub fn new(at_once: usize, collecting: Gauge) -> Self {
        Self {
            turns: std::sync::Arc::new(Semaphore::new(at_once)),
            collecting,
        }
    }
}

/// A session's collection, until its broker has answered its
/// subscription: counted meanwhile.
struct Collection {
    turns: Turns,
    /// Its turn to connect, once it has one.
    turn: Option<OwnedSemaphorePermit>,
}

impl Collection {
    fn new(turns: &Turns) -> Self {
        turns.collecting.inc();
        Self {
            turns: turns.clone(),
            turn: None,
        }
    }
}

impl Drop for Collection {
    fn drop(&mut self) {
        self.turns.collecting.dec();
    }
}

/// How long [`connect`] waits for the broker to confirm the subscription
/// before returning anyway (the session keeps trying in the background).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// Where a session hands the messages it receives.
pub trait Deliver: Send + 'static {
    /// Hands `message` over, waiting while there is no room (which holds
    /// the connection, so the broker keeps the rest); an error once nothing
    /// takes messages any more.
    fn deliver(
        &mut self,
        message: Box<Inbound>,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send;

    /// Whether nothing takes messages any more.
    fn is_closed(&self) -> bool;
}

impl Deliver for mpsc::Sender<Box<Inbound>> {
    async fn deliver(&mut self, message: Box<Inbound>) -> Result<(), ()> {
        self.send(message).await.map_err(drop)
    }

    fn is_closed(&self) -> bool {
        mpsc::Sender::is_closed(self)
    }
}

/// Connects `client_id` to `broker`, subscribes to `topics` at `qos`, and
/// delivers every message to `inbound`. The session is persistent, so a
/// restarted node gets what it had not acknowledged. Reconnects with
/// exponential backoff until the returned link is closed. `connected`
/// counts it while it is connected.
///
/// With [`Subscribing::Confirmed`], returns once the broker has confirmed
/// the subscription (or delivered a message), so nothing published after
/// that is missed (or after [`SUBSCRIBE_WAIT`], with a warning, when the
/// broker cannot be reached yet); this blocks: call it off the async
/// threads.
pub fn connect(
    broker: &BrokerAddress,
    client_id: &str,
    subscription: Subscription,
    inbound: impl Deliver,
    subscribing: Subscribing,
    connected: Gauge,
) -> anyhow::Result<Link> {
    let Subscription {
        topics,
        qos,
        max_payload,
        turns,
    } = subscription;
    let (client, eventloop) = client(options(broker, client_id, false), SESSION_REQUESTS);
    let qos = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (subscribed, confirmed) = std::sync::mpsc::channel();
    // Counted at once, so that a node's count is right as soon as it has
    // resumed its twins.
    let (collection, first) = match subscribing {
        Subscribing::Parked => (turns.as_ref().map(Collection::new), Wanted::Parked),
        Subscribing::Confirmed | Subscribing::InBackground => (None, Wanted::Open),
    };
    let (wanted, wanted_rx) = tokio::sync::watch::channel(first);
    let wanted = std::sync::Arc::new(wanted);
    let outgoing = flume::unbounded();
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let session = Session {
        wanted: wanted_rx,
        connection: 0,
        client: Some(client.clone()),
        outgoing: outgoing.0.clone(),
        broker: broker.clone(),
        topics,
        qos,
        inbound,
        max_payload,
        client_id: client_id.to_string(),
        subscribed: Some(subscribed),
        connected: Counted::new(connected, up.clone()),
        backoff: FIRST_BACKOFF,
        turns,
        collection,
        delivered: false,
        link_wants: std::sync::Arc::downgrade(&wanted),
    };
    let session = tokio::spawn(Box::new(session).drive(Box::new(eventloop))).abort_handle();
    if matches!(subscribing, Subscribing::Confirmed)
        && confirmed.recv_timeout(SUBSCRIBE_WAIT).is_err()
    {
        tracing::warn!(
            client = %client_id,
            broker = %format!("{}:{}", broker.host, broker.port),
            "the broker has not confirmed the subscription yet; still trying"
        );
    }
    Ok(Link::Own(Own::new(client, outgoing, wanted, session, up)))
}

/// Requests a twin's session may have waiting for its event loop.
const SESSION_REQUESTS: usize = 256;

/// A client and its event loop, `requests` of which may wait to be sent.
pub(crate) fn client(options: MqttOptions, requests: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, requests);
    // The event loop starts with room for 100 events of ~400 bytes each
    // (39 KiB, more than the rest of an idle session); it holds one or two
    // at a time, so it grows to what it needs instead.
    eventloop.state.events = std::collections::VecDeque::new();
    (client, eventloop)
}

/// Session options for `client_id` at `broker`; a persistent session
/// unless `clean`.
pub(crate) fn options(broker: &BrokerAddress, client_id: &str, clean: bool) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_clean_start(clean)
        // MQTT 5 ends a session at disconnection unless told otherwise; a
        // persistent one must outlive a node's restart, however long.
        .set_session_expiry_interval((!clean).then_some(SESSION_NEVER_EXPIRES))
        .set_manual_acks(true)
        // The client takes any packet MQTT allows: a broker must not send
        // a packet over the announced maximum, and drops it for this
        // session instead, so a lower one would lose updates silently.
        // Payloads over the twin's own maximum are dropped after reading
        // (bound memory with the broker's `message_size_limit`).
        .set_max_packet_size(Some(MQTT_MAX_PACKET))
        // The client keeps a slot per publish it may have in flight, and an
        // MQTT 5 publish with its properties takes hundreds of bytes: a
        // twin's session sends only commands, which admission control
        // keeps few, so a small window saves tens of KiB per twin.
        .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT);
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
    let (client, mut eventloop) = client(options(&broker, &client_id, true), 10);
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
struct Session<D> {
    /// The client of the current connection; none while parked.
    client: Option<AsyncClient>,
    /// Where the client of each new connection goes: the link's queue.
    outgoing: flume::Sender<Outgoing>,
    /// Where to connect again after parking. (Not the client's options,
    /// which take hundreds of bytes more, every sleeping twin.)
    broker: BrokerAddress,
    topics: Vec<String>,
    qos: QoS,
    inbound: D,
    /// Larger payloads are dropped, not delivered.
    max_payload: usize,
    client_id: String,
    /// Told once the subscription is confirmed, then dropped.
    subscribed: Option<std::sync::mpsc::Sender<()>>,
    /// What the link wants of the session.
    wanted: tokio::sync::watch::Receiver<Wanted>,
    /// The current connection, counted as the link's sender counts them.
    connection: u32,
    /// Whether it is connected, counted in the node's gauge.
    connected: Counted,
    /// How long to wait before connecting again after a failure.
    backoff: Duration,
    /// Turns to take when collecting (see [`Link::collect`]).
    turns: Option<Turns>,
    /// While it collects, until its broker has answered its subscription.
    collection: Option<Collection>,
    /// Whether a message came on the current connection.
    delivered: bool,
    /// What the link wants, to park itself once it has collected (weak:
    /// the session must still see the link gone).
    link_wants: std::sync::Weak<tokio::sync::watch::Sender<Wanted>>,
}

/// The wait after a first connection failure; it doubles with each one
/// after, up to [`LAST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LAST_BACKOFF: Duration = Duration::from_secs(10);

/// What a session does next. (Not boxed: it lives for one turn of the
/// loop, and a box would cost every event an allocation.)
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Handle an event of its connection.
    Event(Result<Event, ConnectionError>),
    /// Park, as its link wants.
    Park,
    /// End, as its link wants.
    End,
}

/// What a session does about a [`Step`]: small, so that what it awaits
/// meanwhile does not keep the step's event (hundreds of bytes) in the
/// task's future, which every twin has.
enum Then {
    /// Wait for the next step.
    Next,
    /// Subscribe to its topics (connected).
    Subscribe,
    /// Hand a message to the twin.
    Deliver(Box<Inbound>),
    /// Wait before connecting again.
    Retry,
    /// Park: it collected, and nothing waited.
    Park,
    /// Disconnected on purpose: drop the connection and wait to open again.
    Reopen,
    /// End.
    End,
}

/// Whether a session is connected, kept in step with a gauge of connected
/// sessions until the session ends.
struct Counted {
    gauge: Gauge,
    /// Whether it is connected, which its link reads too.
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Counted {
    fn new(gauge: Gauge, up: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self { gauge, up }
    }

    fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&mut self, up: bool) {
        if self.up.swap(up, std::sync::atomic::Ordering::Relaxed) != up {
            self.gauge.inc_by(if up { 1 } else { -1 });
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.set(false);
    }
}

impl<D: Deliver> Session<D> {
    /// Tells `connect` the subscription is in place (the first time only).
    fn confirm(&mut self) {
        if let Some(subscribed) = self.subscribed.take() {
            let _ = subscribed.send(());
        }
    }

    /// What the link wants now; closed once no link is left.
    fn wanted(&self) -> Wanted {
        if self.wanted.has_changed().is_err() {
            return Wanted::Closed;
        }
        *self.wanted.borrow()
    }

    /// The next event; or, while not connected, parking or the end as soon
    /// as the link wants them (connected, the link's own disconnect request
    /// comes after the acknowledgements queued before it).
    async fn next(&mut self, eventloop: &mut EventLoop) -> Step {
        // Boxed: the future of a poll is most of a session's task, which
        // every twin has, and it need not live between two events.
        if self.connected.is_up() {
            return Step::Event(Box::pin(eventloop.poll()).await);
        }
        loop {
            match self.wanted() {
                Wanted::Open => {}
                Wanted::Collect => {
                    if self.collection.is_none()
                        && let Some(turns) = &self.turns
                    {
                        self.collection = Some(Collection::new(turns));
                    }
                    if let Some(collection) = &mut self.collection
                        && collection.turn.is_none()
                    {
                        let turns = collection.turns.turns.clone();
                        tokio::select! {
                            turn = Box::pin(turns.acquire_owned()) => collection.turn = turn.ok(),
                            // Unparked meanwhile: no need to wait.
                            _ = self.wanted.changed() => continue,
                        }
                    }
                }
                Wanted::Parked => return Step::Park,
                Wanted::Closed => return Step::End,
            }
            tokio::select! {
                event = Box::pin(eventloop.poll()) => return Step::Event(event),
                _ = self.wanted.changed() => {}
            }
        }
    }

    /// Waits, parked, until the link wants the session open again, then
    /// returns the event loop of its next connection (its client handed to
    /// the link); `None` once the link is closed instead. The connection's
    /// event loop and client are dropped by then: a sleeping twin keeps
    /// neither.
    async fn reopen(&mut self) -> Option<Box<EventLoop>> {
        self.connected.set(false);
        self.client = None;
        if self.wanted() == Wanted::Parked {
            tracing::debug!(client = %self.client_id, "session parked");
        }
        let wanted = *self
            .wanted
            .wait_for(|wanted| *wanted != Wanted::Parked)
            .await
            .ok()?;
        if wanted == Wanted::Closed {
            return None;
        }
        let options = options(&self.broker, &self.client_id, false);
        let (client, eventloop) = client(options, SESSION_REQUESTS);
        self.outgoing.send(Outgoing::Client(client.clone())).ok()?;
        self.client = Some(client);
        self.connection += 1;
        Some(Box::new(eventloop))
    }

    /// A message received, as its twin takes it. (Made outside `drive`, whose
    /// future, kept by every twin, would otherwise keep room for its parts.)
    fn inbound(&mut self, publish: Publish) -> Box<Inbound> {
        // A message proves the subscription too: a persistent session's
        // backlog may fill the queue before the SUBACK is read.
        self.confirm();
        self.delivered = true;
        let packet = (publish.qos != QoS::AtMostOnce).then(|| Box::new(publish.clone()));
        let size = publish.payload.len();
        let oversized = (size > self.max_payload).then_some(size);
        Box::new(Inbound {
            span: message_span(&self.client_id, &publish),
            // Brokers pass on only UTF-8 topics (MQTT requires them); an
            // alias is resolved by the client.
            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
            payload: if oversized.is_some() {
                Bytes::new()
            } else {
                publish.payload
            },
            oversized,
            received_us: now_us(),
            packet,
            connection: self.connection,
            via: None,
            inbox: None,
        })
    }

    /// What to do about `step`. (Not async: see [`Then`].)
    fn then(&mut self, step: Step) -> Then {
        let event = match step {
            // Only a parking or closing link asks for a disconnection.
            Step::Park | Step::Event(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => {
                return Then::Reopen;
            }
            Step::Event(event) => event,
            Step::End => return Then::End,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                self.connected.set(true);
                self.delivered = false;
                self.backoff = FIRST_BACKOFF;
                tracing::info!(client = %self.client_id, "connected to the broker");
                Then::Subscribe
            }
            Ok(Event::Incoming(Incoming::SubAck(_))) => {
                self.confirm();
                // The broker sends what it kept for the session as it
                // connects, before it answers the subscription that
                // follows: collected. Nothing came, it parks again (the
                // doorbell listens by now); something did, its twin wakes
                // and unparks it.
                self.collection = None;
                let park_again = !self.delivered
                    && self.link_wants.upgrade().is_some_and(|wants| {
                        wants.send_if_modified(|w| replace_if(w, Wanted::Collect, Wanted::Parked))
                    });
                if park_again { Then::Park } else { Then::Next }
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => Then::Deliver(self.inbound(publish)),
            Ok(_) => Then::Next,
            Err(e) => {
                self.connected.set(false);
                if self.inbound.is_closed() || self.wanted() == Wanted::Closed {
                    return Then::End;
                }
                tracing::warn!(
                    client = %self.client_id,
                    "broker connection lost: {e}; retrying in {:?}",
                    self.backoff
                );
                Then::Retry
            }
        }
    }

    /// Drives the session until it ends. (The session and its event loop
    /// come boxed: an async fn's future keeps its arguments twice, and this
    /// one is every twin's.)
    async fn drive(mut self: Box<Self>, mut eventloop: Box<EventLoop>) {
        loop {
            let step = self.next(&mut eventloop).await;
            match self.then(step) {
                Then::Next => {}
                Then::Subscribe => {
                    let filters = self.topics.iter().map(|t| Filter::new(t.clone(), self.qos));
                    if let Some(client) = &self.client {
                        // Boxed, as the other rare steps: see `Session::next`.
                        if let Err(e) = Box::pin(client.subscribe_many(filters)).await {
                            tracing::warn!(client = %self.client_id, "cannot subscribe: {e}");
                        }
                    }
                }
                Then::Deliver(message) => {
                    // A full queue holds the event loop, and with it the TCP
                    // connection: the broker keeps the rest.
                    if self.inbound.deliver(message).await.is_err() {
                        return; // the twin is gone
                    }
                }
                Then::Park => {
                    // Through the link's queue, as the link parks it: the
                    // drain disconnects, and the connection's end reopens.
                    let _ = self.outgoing.send(Outgoing::Park);
                }
                Then::Retry => {
                    // Waits out the backoff, or less should the link want
                    // something else meanwhile (`next` looks).
                    let _ = tokio::time::timeout(self.backoff, self.wanted.changed()).await;
                    self.backoff = (self.backoff * 2).min(LAST_BACKOFF);
                }
                Then::Reopen => {
                    drop(eventloop);
                    match Box::pin(self.reopen()).await {
                        Some(next) => eventloop = next,
                        None => return,
                    }
                }
                Then::End => break,
            }
        }
        tracing::debug!(client = %self.client_id, "session closed while not connected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every twin has a queue of messages and one of acknowledgements,
    /// each made with a block of 32 slots: a slot grown back to a whole
    /// message is kilobytes a twin (23 KiB when it was).
    #[test]
    fn a_twins_queues_have_small_slots() {
        assert!(size_of::<Box<Inbound>>() <= 8);
        assert!(size_of::<Outgoing>() <= 16, "{}", size_of::<Outgoing>());
    }

    /// Every twin, asleep too, keeps its session's task and its link's
    /// sending task, each as large as the largest state of its future: an
    /// event or a client's future kept across an await made them 2.7 KiB
    /// and 1 KiB.
    #[tokio::test]
    async fn a_twins_session_tasks_are_small() {
        let broker: BrokerAddress = "mqtt://127.0.0.1:1".parse().unwrap();
        let (client, eventloop) = client(options(&broker, "small", false), 1);
        let (outgoing, queue) = flume::unbounded();
        let (_wanted, wanted) = tokio::sync::watch::channel(Wanted::Open);
        let (inbound, _keep) = mpsc::channel::<Box<Inbound>>(1);
        let session = Session {
            wanted,
            connection: 0,
            client: Some(client.clone()),
            outgoing,
            broker,
            topics: vec!["t".into()],
            qos: QoS::AtLeastOnce,
            inbound,
            max_payload: 1024,
            client_id: "small".into(),
            subscribed: None,
            connected: Counted::new(Gauge::default(), Default::default()),
            backoff: FIRST_BACKOFF,
            turns: None,
            collection: None,
            delivered: false,
            link_wants: std::sync::Weak::new(),
        };
        let drive = Box::new(session).drive(Box::new(eventloop));
        assert!(size_of_val(&drive) <= 640, "{}", size_of_val(&drive));
        let drain = drain(client, queue);
        assert!(size_of_val(&drain) <= 384, "{}", size_of_val(&drain));
    }

    /// A closed twin's session stops even when its broker cannot be
    /// reached (it used to reconnect there for the rest of the run).
    #[tokio::test(flavor = "multi_thread")]
    async fn defect_13_a_closed_link_stops_reconnecting_to_an_unreachable_broker() {
        // A "broker" that hangs up on every connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let broker: BrokerAddress = format!("mqtt://127.0.0.1:{port}").parse().unwrap();
        let (inbound, _keep) = mpsc::channel(1);
        let subscription = Subscription {
            topics: vec!["t".into()],
            qos: 1,
            max_payload: 1024,
            turns: None,
        };
        let link = tokio::task::spawn_blocking(move || {
            connect(
                &broker,
                "gone",
                subscription,
                inbound,
                Subscribing::Confirmed,
                Gauge::default(),
            )
        })
        .await
        .unwrap()
        .unwrap();
        assert!(!link.is_ended(), "the session should still be retrying");
        link.close();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !link.is_ended() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            link.is_ended(),
            "the session went on after its link was closed"
        );
    }
}
