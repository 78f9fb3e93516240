//! `GET /v1/twins/{name}/stream`: the changes a twin applies, as
//! server-sent events. Each applied message is an `event: change` whose
//! data is its JSON (sequence number, PT timestamp, changed properties);
//! each event a model raises follows as `event: <its name>`. A subscriber
//! that falls more than a buffer behind gets `event: lagged` with how many
//! changes it missed, instead of the node holding them for it. When the
//! twin moves to another node, the stream ends with `event: moved` whose
//! `location` is the stream to reconnect to; a twin that stays (a failed
//! move) keeps streaming.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::twins::node_error;
use crate::node::{Change, Node, NodeError};

/// How long a stream whose twin stopped waits to learn where it went.
const MOVE_WAIT: Duration = Duration::from_secs(30);

pub async fn stream(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    match node.subscribe(&name) {
        Ok(changes) => Sse::new(events(node, name, changes))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response(),
        Err(e) => node_error(e),
    }
}

type Changes = tokio::sync::broadcast::Receiver<Change>;

fn events(
    node: Arc<Node>,
    name: String,
    changes: Changes,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Some(changes), move |changes| {
        let (node, name) = (node.clone(), name.clone());
        async move {
            let mut changes = changes?;
            let batch = match changes.recv().await {
                Ok(change) => sse_events(&change),
                Err(RecvError::Lagged(missed)) => {
                    vec![json_event("lagged", &json!({ "missed": missed }))]
                }
                Err(RecvError::Closed) => {
                    return match after_stop(&node, &name).await {
                        After::Moved(location) => Some((
                            stream::iter(vec![Ok(json_event(
                                "moved",
                                &json!({ "location": location }),
                            ))]),
                            None,
                        )),
                        After::Stayed(again) => Some((stream::iter(Vec::new()), Some(again))),
                        After::Gone => None,
                    };
                }
            };
            let batch: Vec<Result<Event, Infallible>> = batch.into_iter().map(Ok).collect();
            Some((stream::iter(batch), Some(changes)))
        }
    })
    .flatten()
}

/// What became of a twin whose change stream closed.
enum After {
    /// It lives elsewhere; this is its stream there.
    Moved(String),
    /// It is (again) here: a failed move, or a replacement.
    Stayed(Changes),
    /// Deleted.
    Gone,
}

async fn after_stop(node: &Node, name: &str) -> After {
    let deadline = tokio::time::Instant::now() + MOVE_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(to) = node.moved(name) {
            return After::Moved(format!(
                "{}/v1/twins/{name}/stream",
                to.trim_end_matches('/')
            ));
        }
        match node.subscribe(name) {
            Ok(changes) => return After::Stayed(changes),
            Err(NodeError::Moving(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => return After::Gone,
        }
    }
    After::Gone
}

fn sse_events(change: &Change) -> Vec<Event> {
    let mut events = vec![json_event("change", change)];
    for event in &change.events {
        events.push(json_event(&event.name, &event.data));
    }
    events
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Event::default().event(name).data(data)
}
