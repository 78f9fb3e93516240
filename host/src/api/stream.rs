//! `GET /v1/twins/{name}/stream`: the changes a twin applies, as
//! server-sent events. Each applied message is an `event: change` whose
//! data is its JSON (sequence number, PT timestamp, changed properties);
//! each event a model raises follows as `event: <its name>`. A subscriber
//! that falls more than a buffer behind gets `event: lagged` with how many
//! changes it missed, instead of the node holding them for it.

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
use crate::node::{Change, Node};

pub async fn stream(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    match node.subscribe(&name) {
        Ok(changes) => Sse::new(events(changes))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response(),
        Err(e) => node_error(e),
    }
}

fn events(
    changes: tokio::sync::broadcast::Receiver<Change>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(changes, |mut changes| async move {
        let batch = match changes.recv().await {
            Ok(change) => sse_events(&change),
            Err(RecvError::Lagged(missed)) => {
                vec![json_event("lagged", &json!({ "missed": missed }))]
            }
            Err(RecvError::Closed) => return None,
        };
        Some((stream::iter(batch.into_iter().map(Ok)), changes))
    })
    .flatten()
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
