//! The node's inbox: where messages received on a shared broker session
//! (see `physical::shared`) are kept, durable, before the broker's
//! acknowledgement, until their twin has applied them.
//!
//! Each message is written to the store for each twin it goes to, and
//! acknowledged once that write is durable; the twin's worker removes it
//! in the transaction that journals it. The broker's window therefore
//! waits on the node's disk, never on a twin: a twin that falls behind (its
//! queue full) leaves its messages in the store alone, and reads them from
//! there once it has caught up with its queue. A twin that starts after a
//! restart or in another's place reads what waits for it first.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::lock;
use super::worker::Job;
use crate::physical::Inbound;
use crate::physical::shared::{Acknowledge, Keep, Received};
use crate::store::{Op, Store};

/// Messages a worker reads from the store at a time.
const READ_AT_ONCE: usize = 256;

/// A message as the inbox keeps it: when it came (µs since the Unix
/// epoch, 8 bytes), the size of a payload over the twin's maximum (8
/// bytes, `u64::MAX` when within it; such a payload is not kept), the
/// topic's length (4 bytes) and the topic, then the payload. Little-endian.
struct Kept<'a> {
    received_us: u64,
    oversized: Option<u64>,
    topic: &'a str,
    payload: &'a [u8],
}

impl<'a> Kept<'a> {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(20 + self.topic.len() + self.payload.len());
        bytes.extend_from_slice(&self.received_us.to_le_bytes());
        bytes.extend_from_slice(&self.oversized.unwrap_or(u64::MAX).to_le_bytes());
        bytes.extend_from_slice(&(self.topic.len() as u32).to_le_bytes());
        bytes.extend_from_slice(self.topic.as_bytes());
        bytes.extend_from_slice(self.payload);
        bytes
    }

    fn decode(bytes: &'a [u8]) -> Option<Self> {
        let number = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        let (received_us, oversized) = (number(0)?, number(8)?);
        let length = u32::from_le_bytes(bytes.get(16..20)?.try_into().ok()?) as usize;
        let topic = std::str::from_utf8(bytes.get(20..20usize.checked_add(length)?)?).ok()?;
        Some(Self {
            received_us,
            oversized: (oversized != u64::MAX).then_some(oversized),
            topic,
            payload: &bytes[20 + length..],
        })
    }
}

/// The inbox of a node's twins that take their messages from a shared
/// session; the [`Keep`] of those sessions.
pub struct Inbox {
    store: Store,
    /// The most messages kept for one twin; more are dropped, as a broker
    /// drops what a session's queue has no room for.
    max_per_twin: usize,
    /// Messages dropped so.
    dropped: prometheus_client::metrics::counter::Counter,
    /// The key the next message kept gets: keys order a twin's messages.
    next_key: AtomicU64,
    mailboxes: Mutex<HashMap<Arc<str>, Arc<Mailbox>>>,
    /// The twins the store held messages for as the node started, whose
    /// first mailbox has not opened yet.
    waiting: Mutex<HashSet<String>>,
}

/// Where a twin's messages go.
pub struct Mailbox {
    name: Arc<str>,
    jobs: mpsc::Sender<Job>,
    /// The first message that came (topic, payload): where a migrating
    /// twin's buffer starts.
    first: Arc<std::sync::OnceLock<(String, Bytes)>>,
    behind: Mutex<Behind>,
    /// Messages kept for the twin since the mailbox opened and not yet
    /// applied (what an earlier mailbox kept is not counted).
    pending: AtomicUsize,
    /// Whether the inbox was full, and said so.
    full: AtomicBool,
}

/// How far a twin's queue lags what was kept for it.
struct Behind {
    /// The key from which messages are in the store only, not in the
    /// twin's queue; `None` when the queue holds everything.
    from: Option<u64>,
    /// The key of the last message kept for the twin.
    newest: u64,
}

impl Inbox {
    /// The inbox of the node whose store is `store`.
    pub fn new(
        store: Store,
        max_per_twin: usize,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> anyhow::Result<Self> {
        let (last, waiting) = store.inbox_summary()?;
        Ok(Self {
            store,
            max_per_twin,
            dropped,
            next_key: AtomicU64::new(last + 1),
            mailboxes: Mutex::new(HashMap::new()),
            waiting: Mutex::new(waiting),
        })
    }

    /// Takes twin `name`'s messages into `jobs` from now on, replacing any
    /// mailbox it had. It starts behind, its worker first reading what the
    /// store kept for it, when the store may hold some: the twin it replaces
    /// left some, or the node started with some. Any other twin starts
    /// caught up, so that a node restarting with many twins reads the inbox
    /// only for those few. (A twin's mailbox goes, `forget`, only as what
    /// was kept for it is cleared.)
    pub fn open(
        &self,
        name: &str,
        jobs: mpsc::Sender<Job>,
        first: Arc<std::sync::OnceLock<(String, Bytes)>>,
    ) -> Arc<Mailbox> {
        let name: Arc<str> = name.into();
        // Under the lock, which keys are given under: the last one given.
        let mut mailboxes = lock(&self.mailboxes);
        let waits = lock(&self.waiting).remove(&*name) || mailboxes.contains_key(&name);
        let mailbox = Arc::new(Mailbox {
            name: name.clone(),
            jobs,
            first,
            behind: Mutex::new(Behind {
                from: waits.then_some(0),
                newest: self.next_key.load(Ordering::Relaxed) - 1,
            }),
            pending: AtomicUsize::new(0),
            full: AtomicBool::new(false),
        });
        mailboxes.insert(name, mailbox.clone());
        mailbox
    }

    /// Stops taking messages for twin `name` (deleted, or moved away);
    /// what was kept stays in the store until the twin's end is written.
    /// A twin stopped to start anew keeps its mailbox until the new one
    /// replaces it, so that what arrives meanwhile waits for the new twin.
    pub fn forget(&self, name: &str) {
        lock(&self.mailboxes).remove(name);
    }
}

impl Keep for Inbox {
    fn keep(&self, received: Received, ack: Option<Acknowledge>) {
        let Received {
            topic,
            payload,
            received_us,
            span,
            to,
        } = received;
        let mut ops = Vec::with_capacity(to.len());
        let mut deliveries = Vec::with_capacity(to.len());
        {
            let mailboxes = lock(&self.mailboxes);
            for recipient in to {
                let Some(mailbox) = mailboxes.get(&recipient.twin) else {
                    // Its twin is gone: the message is for nobody.
                    continue;
                };
                if !mailbox.room(self.max_per_twin) {
                    self.dropped.inc();
                    continue;
                }
                let key = self.next_key.fetch_add(1, Ordering::Relaxed);
                let size = payload.len();
                let oversized = (size > recipient.max_payload).then_some(size);
                let kept = Kept {
                    received_us,
                    oversized: oversized.map(|s| s as u64),
                    topic: &topic,
                    payload: if oversized.is_some() { &[] } else { &payload },
                };
                ops.push(Op::Inbox {
                    name: recipient.twin.clone(),
                    key,
                    message: kept.encode(),
                });
                deliveries.push((mailbox.clone(), key, oversized));
            }
        }
        // Behind what was queued before, so acknowledgements go out in the
        // order messages came, those for nobody included.
        let done = ack.map(|ack| {
            Box::new(move |written: Result<(), String>| {
                if written.is_ok() {
                    ack();
                }
            }) as crate::store::Done
        });
        self.store.write(ops, done);
        for (mailbox, key, oversized) in deliveries {
            let payload = match oversized {
                Some(_) => Bytes::new(),
                None => payload.clone(),
            };
            let message = inbound(topic.clone(), payload, oversized, received_us, key);
            mailbox.offer(Box::new(Inbound {
                span: span.clone(),
                ..message
            }));
        }
    }
}

impl Mailbox {
    /// Whether another message may be kept for the twin (counted if so).
    fn room(&self, max: usize) -> bool {
        if self.pending.load(Ordering::Relaxed) >= max {
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(twin = %self.name, max, "the twin's inbox is full (--inbox-max): messages for it are dropped until it catches up");
            }
            return false;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The twin applied (or dropped) a message it took from here.
    pub fn taken(&self) {
        let left = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .unwrap_or(0);
        if self.full.load(Ordering::Relaxed) && left == 1 {
            self.full.store(false, Ordering::Relaxed);
        }
    }

    /// Hands the message kept under its key to the twin's queue, unless
    /// the twin is behind (it then reads it from the store in its turn) or
    /// its queue is full (from then on it is behind).
    fn offer(&self, message: Box<Inbound>) {
        let key = message.inbox.unwrap_or_default();
        if self.first.get().is_none() && message.oversized.is_none() {
            let _ = self
                .first
                .set((message.topic.clone(), message.payload.clone()));
        }
        let mut behind = lock(&self.behind);
        behind.newest = key;
        if behind.from.is_some() {
            return;
        }
        if self.jobs.try_send(Job::Message(message)).is_err() {
            behind.from = Some(key);
        }
    }

    /// Whether messages wait for the twin in the store.
    pub fn is_behind(&self) -> bool {
        lock(&self.behind).from.is_some()
    }

    /// The next messages the twin must apply from the store, in order, once
    /// its queue holds nothing older: after the store has written what was
    /// kept for it so far. Empty when it is not behind, when more came while
    /// it read (it stays behind), or when the store could not be read (it
    /// stays behind, and reads again).
    pub async fn backlog(&self, store: &Store) -> Vec<Box<Inbound>> {
        let Some((from, newest)) = ({
            let behind = lock(&self.behind);
            behind.from.map(|from| (from, behind.newest))
        }) else {
            return Vec::new();
        };
        // Every message kept up to `newest` is queued ahead of this.
        if let Err(e) = store.written(Vec::new()).await {
            return unread(&self.name, &e).await;
        }
        let (reading, name) = (store.clone(), self.name.clone());
        let read =
            tokio::task::spawn_blocking(move || reading.inbox(&name, from, READ_AT_ONCE)).await;
        let kept = match read {
            Ok(Ok(kept)) => kept,
            Ok(Err(e)) => return unread(&self.name, &e).await,
            Err(e) => return unread(&self.name, &anyhow::anyhow!(e)).await,
        };
        // Read to the end, everything kept up to `newest` was read.
        let all = kept.len() < READ_AT_ONCE;
        // (The read may see messages kept after `newest`, not offered yet.)
        let next = match kept.last() {
            Some((key, _)) if !all => key + 1,
            Some((key, _)) => key.max(&newest) + 1,
            None => newest + 1,
        };
        {
            let mut behind = lock(&self.behind);
            // Caught up, unless more came meanwhile (they are in the store
            // only: read next time), or something was read that is still
            // to be offered (it would come through the queue a second time).
            let ahead = next > newest + 1;
            behind.from = (!all || ahead || behind.newest != newest).then_some(next);
        }
        let mut messages = Vec::with_capacity(kept.len());
        for (key, bytes) in kept {
            let Some(kept) = Kept::decode(&bytes) else {
                tracing::error!(twin = %self.name, key, "a message kept for the twin is unreadable, and dropped");
                store.write(
                    vec![Op::Taken {
                        name: self.name.to_string(),
                        key,
                    }],
                    None,
                );
                continue;
            };
            messages.push(Box::new(inbound(
                kept.topic.to_string(),
                Bytes::copy_from_slice(kept.payload),
                kept.oversized.map(|s| s as usize),
                kept.received_us,
                key,
            )));
        }
        messages
    }
}

/// What a twin gets when its inbox cannot be read: nothing, after a pause
/// (it stays behind, and reads again).
async fn unread(name: &str, error: &anyhow::Error) -> Vec<Box<Inbound>> {
    const RETRY: std::time::Duration = std::time::Duration::from_millis(100);
    tracing::warn!(twin = %name, "cannot read the twin's inbox; retrying in {RETRY:?}: {error:#}");
    tokio::time::sleep(RETRY).await;
    Vec::new()
}

/// A message kept in the inbox under `key`, as its twin takes it (untraced
/// until given a span).
fn inbound(
    topic: String,
    payload: Bytes,
    oversized: Option<usize>,
    received_us: u64,
    key: u64,
) -> Inbound {
    Inbound {
        topic,
        payload,
        oversized,
        received_us,
        packet: None,
        connection: 0,
        via: None,
        inbox: Some(key),
        span: tracing::Span::none(),
    }
}
