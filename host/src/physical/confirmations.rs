//! Which subscription a broker's SUBACK answers, for a connection that
//! sends many (the doorbell, a node's shared session).
//!
//! A client numbers a SUBSCRIBE only as its event loop sends it, and
//! rumqttc numbers from 1 again past its limit of messages in flight,
//! subscriptions and unsubscriptions included: several subscriptions
//! waiting at once may share a packet id. A broker answers them in the
//! order sent, so each id keeps its waiters in that order. (Keyed by id
//! alone, the 17th waiter on the doorbell took the first's place.)

use std::collections::{HashMap, VecDeque};

use rumqttc::v5::mqttbytes::v5::{SubAck, SubscribeReasonCode};
use tokio::sync::oneshot;

/// Who waits for the broker's word on each subscription sent; `None` for
/// those nobody waits on.
#[derive(Default)]
pub struct Confirmations {
    /// Sent to the client, in order, until its event loop numbers them.
    unnumbered: VecDeque<Option<oneshot::Sender<bool>>>,
    /// Numbered and not yet answered, by packet id, in the order sent.
    numbered: HashMap<u16, VecDeque<Option<oneshot::Sender<bool>>>>,
}

impl Confirmations {
    /// A subscription was handed to the client (call in the order they
    /// are, under the lock that orders them).
    pub fn sent(&mut self, waiting: Option<oneshot::Sender<bool>>) {
        self.unnumbered.push_back(waiting);
    }

    /// The client sent the next subscription under `pkid`.
    pub fn numbered(&mut self, pkid: u16) {
        if let Some(waiting) = self.unnumbered.pop_front() {
            self.numbered.entry(pkid).or_default().push_back(waiting);
        }
    }

    /// The broker answered; tells the subscription's waiter whether every
    /// filter was granted.
    pub fn answered(&mut self, ack: &SubAck) {
        let Some(same_id) = self.numbered.get_mut(&ack.pkid) else {
            return;
        };
        let waiting = same_id.pop_front().flatten();
        if same_id.is_empty() {
            self.numbered.remove(&ack.pkid);
        }
        if let Some(waiting) = waiting {
            let granted = ack
                .return_codes
                .iter()
                .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
            let _ = waiting.send(granted);
        }
    }

    /// The connection was lost: what it sent will not be answered (its
    /// waiters are told so, by their senders dropped); whether anything
    /// was waiting. What the client has not sent yet goes on the next one.
    pub fn lost(&mut self) -> bool {
        let unanswered = !self.numbered.is_empty();
        self.numbered.clear();
        unanswered
    }
}

/// Whether a topic filter has wildcards.
pub fn is_wild(filter: &str) -> bool {
    filter.contains(['+', '#'])
}
