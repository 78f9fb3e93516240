//! Restoring a twin whose node was lost, without losing what the broker
//! still holds for it: the lost node's persistent session at the broker
//! kept every update the device published since that node last
//! acknowledged one. The restoring node subscribes with its own session
//! first (from then on, everything waits there too), then resumes the lost
//! node's session and feeds its backlog to the twin, in order, until it
//! reaches the first message its own session holds (the barrier: the rest
//! is in both); then its own session takes over and the lost node's
//! session is discarded. Nothing is applied twice: the twin drops
//! sequence numbers it has already applied.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Feed, Job, Node, Session, forward, subscription};
use crate::physical::{self, Deliver as _, Inbound, Link, Subscribing};
use crate::spec::TwinSpec;

/// Without a barrier, the lost session's backlog is taken as delivered
/// once it has been quiet this long.
const QUIET: Duration = Duration::from_secs(1);
/// The longest a backlog is drained before the twin's own session takes
/// over anyway.
const DRAIN_MAX: Duration = Duration::from_secs(30);
/// How long acknowledgements of the backlog may take before the lost
/// session is discarded.
const ACK_GRACE: Duration = Duration::from_secs(5);

impl Node {
    /// Opens a restored twin's session after adopting node `from`'s
    /// session of it (see the module documentation). Blocks until both
    /// sessions are subscribed.
    pub(super) fn connect_adopting(&self, spec: &TwinSpec, from: &str) -> anyhow::Result<Session> {
        let (broker, client_id) = self.session_of(spec)?;
        let capacity = self.config.queue_capacity;
        let (jobs, queue) = mpsc::channel(capacity);
        let (own_tx, own_rx) = mpsc::channel(capacity);
        let link = physical::connect(
            &broker,
            &client_id,
            subscription(spec, Some(self.turns.clone())),
            own_tx,
            Subscribing::Confirmed,
            self.metrics.broker_sessions.clone(),
        )?;
        let lost_id = format!("wasmtwin-{from}-{}", spec.name());
        let (lost_tx, lost_rx) = mpsc::channel(capacity);
        let lost = physical::connect(
            &broker,
            &lost_id,
            subscription(spec, None),
            lost_tx,
            Subscribing::Confirmed,
            self.metrics.broker_sessions.clone(),
        )?;
        let first = Arc::new(std::sync::OnceLock::new());
        let mut feed = Feed {
            jobs: jobs.clone(),
            first: first.clone(),
        };
        let (name, from) = (spec.name().to_string(), from.to_string());
        tokio::spawn(async move {
            let (barrier, own_rx, adopted) = drain(lost_rx, own_rx, &lost, &feed.jobs).await;
            tracing::info!(twin = %name, %from, adopted, "took over the lost node's broker session");
            if let Some(barrier) = barrier
                && feed.deliver(barrier).await.is_err()
            {
                return;
            }
            tokio::spawn(async move {
                tokio::time::sleep(ACK_GRACE).await;
                lost.close();
                physical::forget_session(broker, lost_id).await;
            });
            forward(own_rx, feed).await;
        });
        Ok(Session {
            link,
            mailbox: None,
            jobs,
            queue,
            first,
            changes: super::ChangeFeed::default(),
        })
    }
}

fn same(a: &Inbound, b: &Inbound) -> bool {
    a.topic == b.topic && a.payload == b.payload && a.oversized == b.oversized
}

/// Feeds the lost session's messages (acknowledged on it) to the twin until
/// one equals the first message of the twin's own session, or the lost
/// session is quiet with nothing of our own yet. Returns that first own
/// message (to apply next), the own session's queue, and how many messages
/// were adopted.
async fn drain(
    mut lost: mpsc::Receiver<Box<Inbound>>,
    mut own: mpsc::Receiver<Box<Inbound>>,
    via: &Link,
    jobs: &mpsc::Sender<Job>,
) -> (Option<Box<Inbound>>, mpsc::Receiver<Box<Inbound>>, u64) {
    let mut barrier: Option<Box<Inbound>> = None;
    let mut adopted = 0;
    let deadline = tokio::time::Instant::now() + DRAIN_MAX;
    while tokio::time::Instant::now() < deadline {
        if barrier.is_none() {
            barrier = own.try_recv().ok();
        }
        let Ok(Some(mut message)) = tokio::time::timeout(QUIET, lost.recv()).await else {
            // Quiet (or gone): the backlog is delivered.
            break;
        };
        if barrier.as_ref().is_some_and(|b| same(b, &message)) {
            break;
        }
        message.via = Some(via.clone());
        adopted += 1;
        if jobs.send(Job::Message(message)).await.is_err() {
            break;
        }
    }
    (barrier, own, adopted)
}
