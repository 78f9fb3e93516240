//! A twin's changes as server-sent events.
//!
//! `GET /v1/twins/{name}/stream`: every change. Each applied message is an
//! `event: change` whose data is its JSON (sequence number, PT timestamp,
//! changed properties); each event a model raises follows as
//! `event: <its name>`.
//!
//! For WoT consumers (the `sse` subprotocol of the TD's forms), one stream
//! per affordance whose notifications are unnamed messages carrying just
//! the data: `GET /v1/twins/{name}/events/{event}` (each time the model
//! raises the event, its data) and
//! `GET /v1/twins/{name}/properties/{property}/observe` (each time the
//! property changes, its new value).
//!
//! All are built on the twin's change broadcast. A subscriber that falls
//! more than a buffer behind gets `event: lagged` with how many changes it
//! missed, instead of the node holding them for it. When the twin moves to
//! another node, a stream ends with `event: moved` whose `location` is the
//! same stream there; a twin that stays (a failed move) keeps streaming.
//! (Named events are invisible to an `EventSource`'s `onmessage`, so these
//! two never pass for a notification.)

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::twins::{error, node_error};
use crate::node::{Change, Node, NodeError};
use crate::runtime::Description;

/// How long a stream whose twin stopped waits to learn where it went.
const MOVE_WAIT: Duration = Duration::from_secs(30);

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/twins/{name}/stream", get(stream))
        .route("/v1/twins/{name}/events/{event}", get(event))
        .route(
            "/v1/twins/{name}/properties/{property}/observe",
            get(observe),
        )
}

/// Whether `path` is one of the event streams above: long-lived requests,
/// which admission does not count and which may carry their token in the
/// query (clients built on `EventSource` cannot set headers).
pub fn is_event_stream(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "twins", name, "stream"] => !name.is_empty(),
        ["v1", "twins", name, "events", event] => !name.is_empty() && !event.is_empty(),
        ["v1", "twins", name, "properties", property, "observe"] => {
            !name.is_empty() && !property.is_empty()
        }
        _ => false,
    }
}

/// What a subscriber is sent of each change.
#[derive(Debug, Clone)]
enum Feed {
    /// Everything, as named events.
    All,
    /// The data of each occurrence of one event, unnamed.
    Event(String),
    /// Each new value of one property, unnamed.
    Property(String),
}

impl Feed {
    /// The stream's path under `/v1/twins/{name}/`.
    fn route(&self) -> String {
        match self {
            Feed::All => "stream".into(),
            Feed::Event(event) => format!("events/{event}"),
            Feed::Property(property) => format!("properties/{property}/observe"),
        }
    }

    fn render(&self, change: &Change) -> Vec<Event> {
        match self {
            Feed::All => {
                let mut events = vec![json_event("change", change)];
                for event in &change.events {
                    events.push(json_event(&event.name, &event.data));
                }
                events
            }
            Feed::Event(name) => change
                .events
                .iter()
                .filter(|e| &e.name == name)
                .map(|e| data_event(&e.data))
                .collect(),
            Feed::Property(name) => change
                .changes
                .get(name)
                .map(data_event)
                .into_iter()
                .collect(),
        }
    }
}

async fn stream(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    subscribe(node, name, Feed::All)
}

async fn event(
    State(node): State<Arc<Node>>,
    Path((name, event)): Path<(String, String)>,
) -> Response {
    let described = described(&node, &name, |d| d.events.iter().any(|e| e.name == event));
    match described {
        Ok(true) => subscribe(node, name, Feed::Event(event)),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("twin `{name}`'s model describes no event `{event}`"),
        ),
        Err(e) => node_error(e),
    }
}

async fn observe(
    State(node): State<Arc<Node>>,
    Path((name, property)): Path<(String, String)>,
) -> Response {
    let described = described(&node, &name, |d| {
        d.properties.iter().any(|p| p.name == property)
    });
    match described {
        Ok(true) => subscribe(node, name, Feed::Property(property)),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("twin `{name}`'s model describes no property `{property}`"),
        ),
        Err(e) => node_error(e),
    }
}

/// Whether twin `name`'s model describes what `test` looks for. A twin
/// still arriving from another node cannot say yet; its streams open (as
/// its change stream does) and carry what the twin applies once here.
fn described(
    node: &Node,
    name: &str,
    test: impl FnOnce(&Description) -> bool,
) -> Result<bool, NodeError> {
    match node.description(name) {
        Ok(description) => Ok(test(&description)),
        Err(NodeError::Moving(_)) if node.arriving(name) => Ok(true),
        Err(e) => Err(e),
    }
}

fn subscribe(node: Arc<Node>, name: String, feed: Feed) -> Response {
    match node.subscribe(&name) {
        Ok(changes) => Sse::new(events(node, name, feed, changes))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response(),
        Err(e) => node_error(e),
    }
}

type Changes = tokio::sync::broadcast::Receiver<Change>;

fn events(
    node: Arc<Node>,
    name: String,
    feed: Feed,
    changes: Changes,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Some(changes), move |changes| {
        let (node, name, feed) = (node.clone(), name.clone(), feed.clone());
        async move {
            let mut changes = changes?;
            let batch = match changes.recv().await {
                Ok(change) => feed.render(&change),
                Err(RecvError::Lagged(missed)) => {
                    vec![json_event("lagged", &json!({ "missed": missed }))]
                }
                Err(RecvError::Closed) => {
                    return match after_stop(&node, &name, &feed).await {
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
    /// It lives elsewhere; this is the same stream there.
    Moved(String),
    /// It is (again) here: a failed move, or a replacement.
    Stayed(Changes),
    /// Deleted.
    Gone,
}

async fn after_stop(node: &Node, name: &str, feed: &Feed) -> After {
    let deadline = tokio::time::Instant::now() + MOVE_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(to) = node.moved(name) {
            return After::Moved(format!(
                "{}/v1/twins/{name}/{}",
                to.trim_end_matches('/'),
                feed.route()
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

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default().event(name).data(json_text(data))
}

/// An unnamed message whose data is `data` as JSON.
fn data_event(data: &impl serde::Serialize) -> Event {
    Event::default().data(json_text(data))
}

fn json_text(data: &impl serde::Serialize) -> String {
    serde_json::to_string(data).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    use super::is_event_stream;

    #[test]
    fn event_streams_are_told_by_their_path() {
        for path in [
            "/v1/twins/m/stream",
            "/v1/twins/m/events/health_changed",
            "/v1/twins/m/properties/temperature/observe",
        ] {
            assert!(is_event_stream(path), "{path}");
        }
        for path in [
            "/v1/twins/m",
            "/v1/twins/m/properties/temperature",
            "/v1/twins/m/events",
            "/v1/twins//stream",
            "/v1/twins/m/actions/stop",
            "/v1/twins/m/history",
            "/v1/twins/m/properties/observe",
            "/v1/migrations/m/stream/x",
        ] {
            assert!(!is_event_stream(path), "{path}");
        }
    }
}
