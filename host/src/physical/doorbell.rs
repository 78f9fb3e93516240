//! A node's doorbell: one plain MQTT connection per broker that listens,
//! at QoS 0, on the topics of the twins whose sessions are parked while
//! they sleep, and rings a twin when something arrives on one of them.
//! The message itself waits for the twin in the twin's own persistent
//! session at the broker, which the twin connects again to collect: a
//! sleeping twin then holds no socket and no MQTT client.
//!
//! A ring may be lost: QoS 0, and the doorbell's session is not
//! persistent. Each time the doorbell connects again it listens again and
//! rings every twin listening, which then collects whatever waits for it.
//! See docs/broker-sessions.md.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
use rumqttc::v5::mqttbytes::{QoS, matches};
use rumqttc::v5::{AsyncClient, Event, EventLoop, Incoming};
use tokio::sync::{Notify, Semaphore, oneshot};

use super::confirmations::{Confirmations, is_wild};
use super::{BrokerAddress, lock};

/// How long [`Doorbell::listen`] waits for the broker to confirm.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// Subscriptions or unsubscriptions that may wait for the connection.
const REQUESTS: usize = 1024;

/// Listeners that may wait for the broker's word at once; the others wait
/// their turn. A quarter of the requests, so that unsubscriptions, which
/// cannot wait, find room.
const LISTENING_AT_ONCE: usize = REQUESTS / 4;

/// Filters per SUBSCRIBE when the doorbell listens again for everyone.
const FILTERS_PER_SUBSCRIBE: usize = 512;

/// The doorbell of one broker; clones share it.
#[derive(Clone)]
pub struct Doorbell(Arc<Shared>);

struct Shared {
    client: AsyncClient,
    listening: Arc<Mutex<Listening>>,
    /// Turns to subscribe: many twins fall asleep, or resume asleep, at
    /// the same moment, more than the client's requests can hold.
    turns: Semaphore,
    /// The task driving the connection, which ends with the doorbell.
    task: tokio::task::AbortHandle,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What rang a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// A message on one of its topics; the smallest payload, in bytes, of
    /// those that rang since the listener last heard (a twin need not
    /// wake for messages over its largest payload).
    Message { smallest: usize },
    /// The doorbell connected again: something may have been published
    /// while it was away (each listener then collects in turn, not all
    /// at once).
    Maybe,
}

/// A listener's bell, and the smallest payload of the messages that rang
/// it (`usize::MAX`: none did).
struct Bell {
    rung: Notify,
    smallest: AtomicUsize,
}

impl Default for Bell {
    fn default() -> Self {
        Self {
            rung: Notify::new(),
            smallest: AtomicUsize::new(usize::MAX),
        }
    }
}

/// Who listens on what, and the subscriptions awaiting the broker's word.
#[derive(Default)]
struct Listening {
    /// The bells of each filter subscribed.
    filters: HashMap<String, Vec<(u64, Arc<Bell>)>>,
    /// How many of those filters have wildcards (each of which a topic is
    /// matched against; the others are looked up).
    wild: usize,
    /// Who waits for the broker's word on the subscriptions sent.
    confirmations: Confirmations,
    next_id: u64,
    /// Whether the doorbell was connected before (a new connection has
    /// lost every subscription of the last one, and perhaps rings).
    connected_before: bool,
}

/// A QoS 0 subscription to `path` that takes no retained message: only
/// what is published while the twin sleeps should wake it.
fn filter(path: &str) -> Filter {
    let mut filter = Filter::new(path, QoS::AtMostOnce);
    filter.retain_forward_rule = RetainForwardRule::Never;
    filter
}

impl Listening {
    fn add(&mut self, id: u64, topics: &[String], bell: &Arc<Bell>) {
        for topic in topics {
            let bells = self.filters.entry(topic.clone()).or_default();
            if bells.is_empty() && is_wild(topic) {
                self.wild += 1;
            }
            bells.push((id, bell.clone()));
        }
    }

    /// Forgets listener `id`; the filters nobody listens on any more.
    fn remove(&mut self, id: u64, topics: &[String]) -> Vec<String> {
        let mut unused = Vec::new();
        for topic in topics {
            let Some(bells) = self.filters.get_mut(topic) else {
                continue;
            };
            bells.retain(|(listener, _)| *listener != id);
            if bells.is_empty() {
                self.filters.remove(topic);
                if is_wild(topic) {
                    self.wild -= 1;
                }
                unused.push(topic.clone());
            }
        }
        unused
    }

    /// Rings every bell whose filter `topic` matches: the exact filter is
    /// looked up, and only when some filter has wildcards are the filters
    /// matched one by one (a node may have 100,000 twins asleep).
    fn ring(&self, topic: &str, payload: usize) {
        let exact = self.filters.get(topic);
        let wild = (self.wild > 0).then(|| {
            self.filters
                .iter()
                .filter(|(filter, _)| is_wild(filter) && matches(topic, filter))
                .map(|(_, bells)| bells)
        });
        for (_, bell) in exact
            .into_iter()
            .chain(wild.into_iter().flatten())
            .flatten()
        {
            bell.smallest.fetch_min(payload, Ordering::Relaxed);
            bell.rung.notify_one();
        }
    }

    /// Rings every bell for what may have been missed.
    fn ring_all(&self) {
        for (_, bell) in self.filters.values().flatten() {
            bell.rung.notify_one();
        }
    }
}

impl Doorbell {
    /// Connects a doorbell to `broker` as `client_id`, in the background
    /// (reconnecting until it is dropped).
    pub fn start(broker: &BrokerAddress, client_id: &str) -> Self {
        let (client, eventloop) = super::client(super::options(broker, client_id, true), REQUESTS);
        let listening = Arc::new(Mutex::new(Listening::default()));
        let task = tokio::spawn(drive(
            client.clone(),
            Box::new(eventloop),
            listening.clone(),
            client_id.to_string(),
        ))
        .abort_handle();
        Self(Arc::new(Shared {
            client,
            listening,
            turns: Semaphore::new(LISTENING_AT_ONCE),
            task,
        }))
    }

    /// Listens on `topics` until the listener is dropped, once the broker
    /// has confirmed: from then on, anything published on them rings it.
    /// Waits its turn first when many listen at once.
    pub async fn listen(&self, topics: &[String]) -> anyhow::Result<Listener> {
        let _turn = self.0.turns.acquire().await?;
        let bell = Arc::new(Bell::default());
        let (confirmed, confirmation) = oneshot::channel();
        let id = {
            let mut listening = lock(&self.0.listening);
            let id = listening.next_id;
            listening.next_id += 1;
            // In the order the client numbers them: under the lock.
            if let Err(e) = self
                .0
                .client
                .try_subscribe_many(topics.iter().map(|t| filter(t)))
            {
                bail!("the doorbell cannot subscribe: {e}");
            }
            listening.confirmations.sent(Some(confirmed));
            listening.add(id, topics, &bell);
            id
        };
        let listener = Listener {
            doorbell: self.clone(),
            id,
            topics: topics.to_vec(),
            bell,
        };
        match tokio::time::timeout(LISTEN_WAIT, confirmation).await {
            Ok(Ok(true)) => Ok(listener),
            Ok(Ok(false)) => bail!("the broker refused the doorbell's subscription"),
            Ok(Err(_)) => bail!("the doorbell's connection was lost before the broker confirmed"),
            Err(_) => {
                bail!("the broker did not confirm the doorbell's subscription in {LISTEN_WAIT:?}")
            }
        }
    }
}

/// Listens on some topics at a doorbell until dropped.
pub struct Listener {
    doorbell: Doorbell,
    id: u64,
    topics: Vec<String>,
    bell: Arc<Bell>,
}

impl Listener {
    /// Returns once something was published on one of the topics, or the
    /// doorbell connected again and may have missed it; which of the two.
    pub async fn rung(&self) -> Ring {
        self.bell.rung.notified().await;
        match self.bell.smallest.swap(usize::MAX, Ordering::Relaxed) {
            usize::MAX => Ring::Maybe,
            smallest => Ring::Message { smallest },
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let shared = &self.doorbell.0;
        let mut listening = lock(&shared.listening);
        let unused = listening.remove(self.id, &self.topics);
        // Under the lock, so that a later listener's subscription to the
        // same filter goes after this.
        for topic in unused {
            if let Err(e) = shared.client.try_unsubscribe(topic.clone()) {
                // Then it rings twins that are awake, which ignore it.
                tracing::debug!(%topic, "the doorbell cannot unsubscribe: {e}");
            }
        }
    }
}

/// Drives a doorbell's connection until the doorbell is dropped.
async fn drive(
    client: AsyncClient,
    mut eventloop: Box<EventLoop>,
    listening: Arc<Mutex<Listening>>,
    client_id: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match Box::pin(eventloop.poll()).await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                tracing::debug!(client = %client_id, "the doorbell is connected");
                let mut listening = lock(&listening);
                if std::mem::replace(&mut listening.connected_before, true) {
                    listen_again(&client, &mut listening);
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Subscribe(pkid))) => {
                lock(&listening).confirmations.numbered(pkid);
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                lock(&listening).confirmations.answered(&ack);
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                // Brokers pass on only UTF-8 topics.
                if let Ok(topic) = std::str::from_utf8(&publish.topic) {
                    lock(&listening).ring(topic, publish.payload.len());
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(client = %client_id, "the doorbell's connection was lost: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// After a reconnection: the subscriptions awaiting the last connection's
/// word will not get it, the new session subscribes to every filter
/// again, and every listener is rung for what it may have missed.
fn listen_again(client: &AsyncClient, listening: &mut Listening) {
    listening.confirmations.lost();
    let filters: Vec<String> = listening.filters.keys().cloned().collect();
    for chunk in filters.chunks(FILTERS_PER_SUBSCRIBE) {
        match client.try_subscribe_many(chunk.iter().map(|t| filter(t))) {
            Ok(()) => listening.confirmations.sent(None),
            Err(e) => tracing::warn!("the doorbell cannot subscribe again: {e}"),
        }
    }
    listening.ring_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rang(bell: &Arc<Bell>) -> bool {
        // A stored permit makes `notified` ready at once.
        let notified = bell.rung.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable()
    }

    #[test]
    fn a_topic_rings_the_bells_of_the_filters_it_matches_and_no_other() {
        let mut listening = Listening::default();
        let (a, b, c) = (
            Arc::new(Bell::default()),
            Arc::new(Bell::default()),
            Arc::new(Bell::default()),
        );
        listening.add(1, &["plant/m1/state".into()], &a);
        listening.add(2, &["plant/+/state".into()], &b);
        listening.add(3, &["other/#".into()], &c);
        listening.ring("plant/m1/state", 4096);
        listening.ring("plant/m1/state", 12);
        assert!(rang(&a) && rang(&b));
        // Whether the twin must wake depends on the smallest that rang.
        assert_eq!(a.smallest.load(Ordering::Relaxed), 12);
        assert!(!rang(&c));
        // Forgetting a listener leaves the others.
        assert_eq!(
            listening.remove(2, &["plant/+/state".into()]),
            vec!["plant/+/state".to_string()]
        );
        assert_eq!(listening.wild, 1);
        listening.ring("plant/m2/state", 12);
        assert!(!rang(&a) && !rang(&b));
    }

    #[test]
    fn a_filter_shared_by_two_listeners_stays_until_both_are_gone() {
        let mut listening = Listening::default();
        let bell = Arc::new(Bell::default());
        listening.add(1, &["t".into()], &bell);
        listening.add(2, &["t".into()], &bell);
        assert!(listening.remove(1, &["t".into()]).is_empty());
        assert_eq!(listening.remove(2, &["t".into()]), vec!["t".to_string()]);
        assert!(listening.filters.is_empty());
    }
}
