//! A node's shared broker session: one persistent MQTT 5 connection per
//! broker (client id `wasmtwin-{node}`) carrying every twin's
//! subscriptions, instead of one session per twin.
//!
//! Each topic filter is subscribed once, with a subscription identifier
//! derived from the filter itself, so that messages the broker kept across
//! a restart still name it; a message goes to the twins of the filters its
//! identifiers name (a broker sends one copy per overlapping subscription,
//! and routing each copy by its topic alone would hand a twin every copy).
//!
//! What the session receives it hands to its node's [`Keep`], which makes
//! the message durable for every twin it goes to and then acknowledges it:
//! acknowledgements go out in the order messages came, and never wait for
//! a twin to apply anything, so one slow twin does not hold the broker's
//! window shut for the others. See docs/broker-sessions.md.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use rumqttc::v5::mqttbytes::v5::{Filter, Publish, SubscribeProperties};
use rumqttc::v5::mqttbytes::{QoS, matches};
use rumqttc::v5::{AsyncClient, Event, EventLoop, Incoming};
use tokio::sync::{Semaphore, oneshot, watch};

use super::confirmations::{Confirmations, is_wild};
use super::{BrokerAddress, lock, message_span, now_us};

/// How long [`SharedSession::join`] waits for the broker to confirm a new
/// subscription.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// How long a twin's routes outlive it (see [`Member::leave`]).
const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// Commands the shared session may have unacknowledged at once; more wait.
const COMMANDS_IN_FLIGHT: u16 = 1024;

/// Requests that may wait for the connection (subscriptions, commands and
/// acknowledgements queue behind their own tasks, not here).
const REQUESTS: usize = 1024;

/// Subscriptions that may wait for the broker's word at once; the others
/// wait their turn (a restart subscribes every filter again).
const SUBSCRIBING_AT_ONCE: usize = REQUESTS / 4;

/// What the node does with each message: keeps it for its twins, then
/// acknowledges it.
pub trait Keep: Send + Sync + 'static {
    /// Makes `received` durable for each of its twins, then calls `ack`
    /// (QoS 1 only), and hands it to them. Called in the order messages
    /// arrive, and must not wait: the session reads nothing else
    /// meanwhile.
    fn keep(&self, received: Received, ack: Option<Acknowledge>);
}

/// Acknowledges one message, once it is durable.
pub type Acknowledge = Box<dyn FnOnce() + Send>;

/// A message received on the shared session, and the twins it goes to.
pub struct Received {
    /// The topic it arrived on.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// When the node received it, µs since the Unix epoch.
    pub received_us: u64,
    /// Its trace (see [`message_span`]).
    pub span: tracing::Span,
    /// The twins it goes to, none twice.
    pub to: Vec<Recipient>,
}

/// A twin a message goes to.
#[derive(Clone)]
pub struct Recipient {
    /// The twin's name.
    pub twin: Arc<str>,
    /// The largest payload it takes.
    pub max_payload: usize,
}

/// The shared session with one broker; clones share it.
#[derive(Clone)]
pub struct SharedSession(Arc<Inner>);

struct Inner {
    client: AsyncClient,
    routes: Arc<Mutex<Routes>>,
    turns: Semaphore,
    /// Whether the connection may be made: a restarting node opens its
    /// session once its twins are back, so that what the broker kept for
    /// them finds them.
    open: watch::Sender<bool>,
    connected: Arc<AtomicBool>,
    /// Acknowledgements and commands, in order, to the connection.
    outgoing: flume::Sender<Outgoing>,
    tasks: [tokio::task::AbortHandle; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

enum Outgoing {
    Ack(Box<Publish>, u32),
    Command(Box<(String, Vec<u8>)>),
}

/// One twin's place in the shared session: what its link holds.
#[derive(Clone)]
pub struct Member {
    session: SharedSession,
    id: u64,
    twin: Arc<str>,
    topics: Arc<[String]>,
    left: Arc<AtomicBool>,
}

/// The twins of one filter, and how it is subscribed.
struct Filtered {
    id: usize,
    qos: QoS,
    members: Vec<(u64, Recipient, QoS)>,
}

/// Who listens on what, and the subscriptions awaiting the broker's word.
#[derive(Default)]
struct Routes {
    filters: HashMap<String, Filtered>,
    /// The filters of each subscription identifier (two filters may share
    /// one: identifiers are hashes).
    by_id: HashMap<usize, Vec<String>>,
    /// How many filters have wildcards.
    wild: usize,
    /// Who waits for the broker's word on the subscriptions sent.
    confirmations: Confirmations,
    next_member: u64,
    /// The current connection, counted from 0.
    connection: u32,
}

/// The subscription identifier of `filter`: the same in every run, so
/// that what the broker kept before a restart still names it (1 to
/// 268,435,455, MQTT's range).
pub fn subscription_id(filter: &str) -> usize {
    let hash = blake3::hash(filter.as_bytes());
    let mut first = [0u8; 4];
    first.copy_from_slice(&hash.as_bytes()[..4]);
    (u32::from_le_bytes(first) % 268_435_455) as usize + 1
}

fn qos_of(qos: u8) -> QoS {
    if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

impl Routes {
    /// The twins a copy of a message on `topic` goes to: those of the
    /// filters its identifiers name, or without any, of every filter the
    /// topic matches.
    fn recipients(&self, topic: &str, ids: &[usize]) -> Vec<Recipient> {
        let mut to: Vec<Recipient> = Vec::new();
        let mut add = |filtered: &Filtered| {
            for (_, recipient, _) in &filtered.members {
                if !to.iter().any(|r| r.twin == recipient.twin) {
                    to.push(recipient.clone());
                }
            }
        };
        let named: Vec<&Filtered> = ids
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .flatten()
            .filter(|filter| matches(topic, filter))
            .filter_map(|filter| self.filters.get(filter))
            .collect();
        if !named.is_empty() {
            named.into_iter().for_each(&mut add);
            return to;
        }
        if let Some(exact) = self.filters.get(topic) {
            add(exact);
        }
        if self.wild > 0 {
            for (filter, filtered) in &self.filters {
                if is_wild(filter) && matches(topic, filter) {
                    add(filtered);
                }
            }
        }
        to
    }

    /// Adds member `id` on `topics`; the filters to subscribe (new, or
    /// needing a higher QoS), with theirs.
    fn add(
        &mut self,
        id: u64,
        recipient: &Recipient,
        topics: &[String],
        qos: QoS,
    ) -> Vec<(String, QoS)> {
        let mut subscribe = Vec::new();
        for topic in topics {
            let filtered = self
                .filters
                .entry(topic.clone())
                .or_insert_with(|| Filtered {
                    id: subscription_id(topic),
                    qos: QoS::AtMostOnce,
                    members: Vec::new(),
                });
            if filtered.members.is_empty() {
                let by_id = self.by_id.entry(filtered.id).or_default();
                by_id.push(topic.clone());
                if is_wild(topic) {
                    self.wild += 1;
                }
                filtered.qos = qos;
                subscribe.push((topic.clone(), qos));
            } else if qos > filtered.qos {
                filtered.qos = qos;
                subscribe.push((topic.clone(), qos));
            }
            filtered.members.push((id, recipient.clone(), qos));
        }
        subscribe
    }

    /// Forgets member `id`; the filters nobody uses any more.
    fn remove(&mut self, id: u64, topics: &[String]) -> Vec<String> {
        let mut unused = Vec::new();
        for topic in topics {
            let Some(filtered) = self.filters.get_mut(topic) else {
                continue;
            };
            filtered.members.retain(|(member, ..)| *member != id);
            if filtered.members.is_empty() {
                let sub_id = filtered.id;
                self.filters.remove(topic);
                if let Some(named) = self.by_id.get_mut(&sub_id) {
                    named.retain(|f| f != topic);
                    if named.is_empty() {
                        self.by_id.remove(&sub_id);
                    }
                }
                if is_wild(topic) {
                    self.wild -= 1;
                }
                unused.push(topic.clone());
            }
        }
        unused
    }
}

/// A subscription to `filter` with its identifier. Retained messages come
/// only for a subscription the session did not hold already, so that
/// subscribing again (after a restart) does not replay them.
fn subscribe(client: &AsyncClient, filter: &str, qos: QoS) -> Result<(), String> {
    let mut f = Filter::new(filter, qos);
    f.retain_forward_rule = rumqttc::v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe;
    let properties = SubscribeProperties {
        id: Some(subscription_id(filter)),
        user_properties: Vec::new(),
    };
    client
        .try_subscribe_many_with_properties([f], properties)
        .map_err(|e| e.to_string())
}

impl SharedSession {
    /// A shared session with `broker` as `client_id`, persistent; it
    /// connects once [`SharedSession::open`] is called, and reconnects
    /// until dropped. `connected` counts it while connected.
    pub fn start(
        broker: &BrokerAddress,
        client_id: &str,
        keep: Arc<dyn Keep>,
        connected: Gauge,
    ) -> Self {
        let mut options = super::options(broker, client_id, false);
        // Commands of every twin share it (the client keeps a slot for
        // each, allocated up front).
        options.set_outgoing_inflight_upper_limit(COMMANDS_IN_FLIGHT);
        let (client, eventloop) = super::client(options, REQUESTS);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (open, opened) = watch::channel(false);
        let up = Arc::new(AtomicBool::new(false));
        let (outgoing, queue) = flume::unbounded();
        let drive = tokio::spawn(drive(Drive {
            client: client.clone(),
            eventloop: Box::new(eventloop),
            routes: routes.clone(),
            keep,
            client_id: client_id.to_string(),
            up: up.clone(),
            gauge: connected,
            outgoing: outgoing.clone(),
            opened,
        }))
        .abort_handle();
        let send = tokio::spawn(send(client.clone(), routes.clone(), queue)).abort_handle();
        Self(Arc::new(Inner {
            client,
            routes,
            turns: Semaphore::new(SUBSCRIBING_AT_ONCE),
            open,
            connected: up,
            outgoing,
            tasks: [drive, send],
        }))
    }

    /// Lets the session connect (again: a no-op).
    pub fn open(&self) {
        self.0.open.send_replace(true);
    }

    /// Whether it is connected now.
    pub fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }

    /// Routes what arrives on `topics` to `twin` from now on, subscribing
    /// to the filters the session does not hold yet. With `confirmed`,
    /// returns once the broker has confirmed those (so nothing published
    /// after is missed); else at once (a restarted node's session, which
    /// the broker kept with its subscriptions).
    pub async fn join(
        &self,
        twin: &str,
        topics: &[String],
        qos: u8,
        max_payload: usize,
        confirmed: bool,
    ) -> anyhow::Result<Member> {
        let recipient = Recipient {
            twin: twin.into(),
            max_payload,
        };
        let qos = qos_of(qos);
        let _turn = self.0.turns.acquire().await?;
        let mut waiting = Vec::new();
        let id = {
            let mut routes = lock(&self.0.routes);
            let id = routes.next_member;
            routes.next_member += 1;
            let open = *self.0.open.borrow();
            // In the order the client numbers them: under the lock. A
            // session not open yet subscribes to everything as it connects.
            for (filter, qos) in routes.add(id, &recipient, topics, qos) {
                if !open {
                    continue;
                }
                if let Err(e) = subscribe(&self.0.client, &filter, qos) {
                    routes.remove(id, topics);
                    bail!("the node's broker session cannot subscribe to `{filter}`: {e}");
                }
                let (tx, rx) = oneshot::channel();
                routes.confirmations.sent(Some(tx));
                waiting.push((filter, rx));
            }
            id
        };
        let member = Member {
            session: self.clone(),
            id,
            twin: recipient.twin,
            topics: topics.into(),
            left: Arc::new(AtomicBool::new(false)),
        };
        if !confirmed {
            return Ok(member);
        }
        for (filter, confirmation) in waiting {
            match tokio::time::timeout(JOIN_WAIT, confirmation).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    member.leave();
                    bail!("the broker refused the subscription to `{filter}`");
                }
                // Lost with its connection: the next one subscribes again.
                Ok(Err(_)) | Err(_) => tracing::warn!(
                    twin = %member.twin,
                    %filter,
                    "the broker has not confirmed the subscription yet; still trying"
                ),
            }
        }
        Ok(member)
    }
}

impl Member {
    /// The twin this is of.
    pub fn twin(&self) -> &Arc<str> {
        &self.twin
    }

    /// Whether the shared session is connected.
    pub fn is_connected(&self) -> bool {
        self.session.is_connected()
    }

    /// Whether the twin has left (see [`Member::leave`]).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Relaxed)
    }

    /// Publishes a command (QoS 1) on the shared session.
    pub fn send(&self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.session
            .0
            .outgoing
            .send(Outgoing::Command(Box::new((topic.to_string(), payload))))
            .map_err(|_| {
                anyhow::anyhow!("cannot publish on {topic}: the node's broker session is closed")
            })
    }

    /// Stops routing to the twin, and unsubscribes from the filters nobody
    /// else uses, after [`LEAVE_GRACE`]: a twin started anew (replaced,
    /// restored, or resumed after a failed move) joins again meanwhile,
    /// and what is published between its two lives is kept for the new
    /// one rather than unsubscribed from. Again is a no-op.
    pub fn leave(&self) {
        if self.left.swap(true, Ordering::Relaxed) {
            return;
        }
        let member = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move {
                tokio::time::sleep(LEAVE_GRACE).await;
                member.remove();
            })),
            Err(_) => member.remove(),
        }
    }

    fn remove(&self) {
        let inner = &self.session.0;
        let mut routes = lock(&inner.routes);
        let unused = routes.remove(self.id, &self.topics);
        if !*inner.open.borrow() {
            return;
        }
        // Under the lock, so that a later subscription to the same filter
        // goes after this.
        for topic in unused {
            if let Err(e) = inner.client.try_unsubscribe(topic.clone()) {
                // Then its messages come for nobody, and are acknowledged.
                tracing::debug!(%topic, "the node's broker session cannot unsubscribe: {e}");
            }
        }
    }
}

/// The acknowledgement of a message received on `connection`, through
/// the session's queue (so in the order the node calls them).
fn acknowledgement(
    outgoing: &flume::Sender<Outgoing>,
    packet: Box<Publish>,
    connection: u32,
) -> Acknowledge {
    let outgoing = outgoing.clone();
    Box::new(move || {
        let _ = outgoing.send(Outgoing::Ack(packet, connection));
    })
}

/// Sends acknowledgements and commands, in order, on the current
/// connection. An acknowledgement of an earlier connection is dropped: its
/// packet id names nothing, or another message, on this one, and the
/// broker sent the message again (kept already, it is kept again, and the
/// twin drops it as a duplicate).
async fn send(client: AsyncClient, routes: Arc<Mutex<Routes>>, queue: flume::Receiver<Outgoing>) {
    while let Ok(item) = queue.recv_async().await {
        let result = match item {
            Outgoing::Ack(packet, connection) => {
                if connection != lock(&routes).connection {
                    continue;
                }
                if client.try_ack(&packet).is_ok() {
                    continue;
                }
                client.ack(&packet).await
            }
            Outgoing::Command(command) => {
                let (topic, payload) = *command;
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::warn!("the node's broker session cannot send: {e}");
        }
    }
}

/// What drives the connection.
struct Drive {
    client: AsyncClient,
    eventloop: Box<EventLoop>,
    routes: Arc<Mutex<Routes>>,
    keep: Arc<dyn Keep>,
    client_id: String,
    up: Arc<AtomicBool>,
    gauge: Gauge,
    outgoing: flume::Sender<Outgoing>,
    opened: watch::Receiver<bool>,
}

impl Drive {
    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.gauge.inc_by(if up { 1 } else { -1 });
        }
    }

    /// Hands a message to the node, routed to its twins.
    fn received(&self, publish: Publish) {
        // Brokers pass on only UTF-8 topics (MQTT requires them); an alias
        // is resolved by the client.
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let ids = publish
            .properties
            .as_ref()
            .map(|p| p.subscription_identifiers.clone())
            .unwrap_or_default();
        let (to, connection) = {
            let routes = lock(&self.routes);
            (routes.recipients(&topic, &ids), routes.connection)
        };
        let span = message_span(&self.client_id, &publish);
        let ack = (publish.qos != QoS::AtMostOnce)
            .then(|| acknowledgement(&self.outgoing, Box::new(publish.clone()), connection));
        self.keep.keep(
            Received {
                topic,
                payload: publish.payload,
                received_us: now_us(),
                span,
                to,
            },
            ack,
        );
    }

    /// After a connection without the session's state at the broker, or
    /// with subscriptions the last one left unanswered: every filter is
    /// subscribed again, in the background (one SUBSCRIBE each, for its
    /// identifier).
    fn subscribe_again(&self) {
        let filters: Vec<(String, QoS)> = {
            let routes = lock(&self.routes);
            routes
                .filters
                .iter()
                .map(|(f, x)| (f.clone(), x.qos))
                .collect()
        };
        let (client, routes) = (self.client.clone(), self.routes.clone());
        tokio::spawn(async move {
            for (filter, qos) in filters {
                loop {
                    let sent = {
                        let mut routes = lock(&routes);
                        // Gone meanwhile, or subscribed by a join since.
                        if !routes.filters.contains_key(&filter) {
                            break;
                        }
                        let sent = subscribe(&client, &filter, qos);
                        if sent.is_ok() {
                            routes.confirmations.sent(None);
                        }
                        sent
                    };
                    match sent {
                        Ok(()) => break,
                        // The client's queue is full: wait for room.
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }
        });
    }
}

/// Drives the shared session's connection until it is dropped.
async fn drive(mut d: Drive) {
    // Not before the node is ready for what the broker kept.
    let _ = d.opened.wait_for(|open| *open).await;
    let mut backoff = Duration::from_millis(100);
    loop {
        match Box::pin(d.eventloop.poll()).await {
            Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                backoff = Duration::from_millis(100);
                // Subscriptions sent on the last connection will not be
                // answered (their joins are told so, and the filters are
                // subscribed again); those not sent yet go on this one.
                let unanswered = lock(&d.routes).confirmations.lost();
                d.set_up(true);
                tracing::info!(client = %d.client_id, "the node's broker session is connected");
                if !connack.session_present || unanswered {
                    d.subscribe_again();
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Subscribe(pkid))) => {
                lock(&d.routes).confirmations.numbered(pkid);
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                lock(&d.routes).confirmations.answered(&ack);
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => d.received(publish),
            Ok(_) => {}
            Err(e) => {
                if d.up.load(Ordering::Relaxed) {
                    lock(&d.routes).connection += 1;
                }
                d.set_up(false);
                tracing::warn!(client = %d.client_id, "the node's broker session was lost: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient(twin: &str) -> Recipient {
        Recipient {
            twin: twin.into(),
            max_payload: 1024,
        }
    }

    fn names(to: &[Recipient]) -> Vec<&str> {
        let mut names: Vec<&str> = to.iter().map(|r| &*r.twin).collect();
        names.sort();
        names
    }

    #[test]
    fn a_copy_goes_to_the_twins_of_the_filters_its_identifiers_name() {
        let mut routes = Routes::default();
        routes.add(
            1,
            &recipient("a"),
            &["plant/m1/state".into()],
            QoS::AtLeastOnce,
        );
        routes.add(
            2,
            &recipient("b"),
            &["plant/+/state".into()],
            QoS::AtLeastOnce,
        );
        let exact = subscription_id("plant/m1/state");
        let wild = subscription_id("plant/+/state");
        // One copy per overlapping subscription, each to its own twins.
        assert_eq!(names(&routes.recipients("plant/m1/state", &[exact])), ["a"]);
        assert_eq!(names(&routes.recipients("plant/m1/state", &[wild])), ["b"]);
        // One copy naming both goes to both, once each.
        assert_eq!(
            names(&routes.recipients("plant/m1/state", &[exact, wild])),
            ["a", "b"]
        );
        // Without an identifier (or one nobody knows), by topic.
        assert_eq!(names(&routes.recipients("plant/m1/state", &[])), ["a", "b"]);
        assert_eq!(names(&routes.recipients("plant/m2/state", &[7])), ["b"]);
        assert!(routes.recipients("other", &[]).is_empty());
    }

    #[test]
    fn a_filter_is_subscribed_once_and_dropped_with_its_last_twin() {
        let mut routes = Routes::default();
        let t = vec!["t".to_string()];
        assert_eq!(routes.add(1, &recipient("a"), &t, QoS::AtMostOnce).len(), 1);
        // Shared at the same QoS: nothing to subscribe; a higher QoS
        // subscribes again.
        assert!(
            routes
                .add(2, &recipient("b"), &t, QoS::AtMostOnce)
                .is_empty()
        );
        assert_eq!(
            routes.add(3, &recipient("c"), &t, QoS::AtLeastOnce),
            vec![("t".to_string(), QoS::AtLeastOnce)]
        );
        assert!(routes.remove(1, &t).is_empty());
        assert!(routes.remove(2, &t).is_empty());
        assert_eq!(routes.remove(3, &t), t);
        assert!(routes.filters.is_empty() && routes.by_id.is_empty());
    }

    #[test]
    fn subscription_ids_are_stable_and_in_mqtts_range() {
        let id = subscription_id("plant/+/state");
        assert_eq!(id, subscription_id("plant/+/state"));
        assert!((1..=268_435_455).contains(&id));
        assert_ne!(id, subscription_id("plant/#"));
    }
}
