//! The control plane's HTTP API: the management interface (apply, delete,
//! read twins and nodes, domain trust, cordons), the nodes' heartbeats,
//! and the event history (`GET /v1/events`, as JSON or, for
//! `Accept: text/event-stream`, as server-sent events that follow it).
//!
//! Every route but `/healthz` and `/readyz` needs the bearer token. Calls
//! that change something are recorded in the history with who made them:
//! the caller's `X-Wasmtwin-Actor` header (a name, not a credential; the
//! token is), `api` without one.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;

use super::fleet::Heartbeat;
use super::history::History;
use super::reconcile::{Applied, Control, Refusal};
use crate::api::twins::{error, spec_error, spec_named};
use crate::api::{Auth, require};

/// Largest heartbeat: a node with 10,000 twins sends about 10 MB.
const HEARTBEAT_MAX: usize = 64 << 20;

/// The control plane's router.
pub fn router(control: Arc<Control>, auth: Auth) -> Router {
    let protected = Router::new()
        .route("/v1/nodes", get(nodes))
        .route(
            "/v1/nodes/{name}",
            // Only a node may say it is one: with --tls-client-ca, its
            // certificate too.
            put(heartbeat)
                .layer(axum::extract::DefaultBodyLimit::max(HEARTBEAT_MAX))
                .layer(axum::middleware::from_fn(crate::api::peers::certified)),
        )
        .route("/v1/nodes/{name}/cordon", put(cordon).delete(uncordon))
        .route("/v1/domains", get(domains))
        .route("/v1/domains/{name}", put(set_domain))
        .route("/v1/twins", get(twins))
        .route("/v1/twins/{name}", get(twin).put(apply).delete(delete))
        .route("/v1/events", get(events))
        .layer(axum::middleware::from_fn_with_state(auth, require));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .merge(protected)
        .with_state(control)
}

fn actor(headers: &HeaderMap) -> String {
    headers
        .get("x-wasmtwin-actor")
        .and_then(|v| v.to_str().ok())
        .map(|v| crate::input::cap(v.to_string(), 128))
        .unwrap_or_else(|| "api".into())
}

/// A small JSON body, whatever its `Content-Type` says (`curl -d` sends
/// a form's): a body that is not the JSON expected is refused naming why.
fn small_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not the JSON expected: {e}"))
}

fn refusal(e: Refusal) -> Response {
    match e {
        Refusal::Spec(e) => spec_error(e),
        Refusal::NotFound(why) => error(StatusCode::NOT_FOUND, why),
        Refusal::Other(e) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
    }
}

async fn heartbeat(
    State(control): State<Arc<Control>>,
    Path(name): Path<String>,
    Json(beat): Json<Heartbeat>,
) -> Response {
    if beat.name != name {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the heartbeat is from `{}`, but the URL names `{name}`",
                beat.name
            ),
        );
    }
    if !crate::spec::ZONES.contains(&beat.zone.as_str()) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("zone `{}` must be edge, mec or cloud", beat.zone),
        );
    }
    control.heartbeat(beat);
    Json(json!({ "ok": true })).into_response()
}

async fn nodes(State(control): State<Arc<Control>>) -> Response {
    Json(control.nodes()).into_response()
}

#[derive(Deserialize)]
struct CordonBody {
    reason: String,
}

async fn cordon(
    State(control): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body: CordonBody = match small_json(&body) {
        Ok(body) => body,
        Err(why) => return error(StatusCode::UNPROCESSABLE_ENTITY, why),
    };
    let reason = crate::input::cap(body.reason, 512);
    match control.cordon(&name, Some(reason), &actor(&headers)) {
        Ok(()) => Json(json!({ "node": name, "cordoned": true })).into_response(),
        Err(e) => refusal(e),
    }
}

async fn uncordon(
    State(control): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match control.cordon(&name, None, &actor(&headers)) {
        Ok(()) => Json(json!({ "node": name, "cordoned": false })).into_response(),
        Err(e) => refusal(e),
    }
}

async fn domains(State(control): State<Arc<Control>>) -> Response {
    Json(control.domains()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainBody {
    trust: u32,
}

async fn set_domain(
    State(control): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body: DomainBody = match small_json(&body) {
        Ok(body) => body,
        Err(why) => return error(StatusCode::UNPROCESSABLE_ENTITY, why),
    };
    if !crate::spec::is_dns_label(&name) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "domain `{}` must be a DNS label",
                crate::input::cap(name, 64)
            ),
        );
    }
    match control.set_domain(&name, body.trust, &actor(&headers)) {
        Ok(()) => Json(json!({ "domain": name, "trust": body.trust })).into_response(),
        Err(e) => refusal(e),
    }
}

async fn twins(State(control): State<Arc<Control>>) -> Response {
    Json(control.twins()).into_response()
}

async fn twin(State(control): State<Arc<Control>>, Path(name): Path<String>) -> Response {
    match control.twin(&name) {
        Some(view) => Json(view).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no twin named `{name}`")),
    }
}

async fn apply(
    State(control): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let spec = match spec_named(body, &name, control.spec_limit()).await {
        Ok(spec) => spec,
        Err(response) => return response,
    };
    match control.apply(spec, &actor(&headers)).await {
        Ok(applied) => {
            let status = if applied == Applied::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(json!({ "twin": name, "result": applied }))).into_response()
        }
        Err(e) => refusal(e),
    }
}

async fn delete(
    State(control): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match control.delete(&name, &actor(&headers)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refusal(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventsQuery {
    /// Records after this sequence number.
    #[serde(default)]
    after: u64,
    /// Only those about this twin.
    twin: Option<String>,
    /// At most this many (JSON only).
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    1000
}

async fn events(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Response {
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_stream {
        return Sse::new(follow(control, query))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response();
    }
    list_events(control.history(), &query)
}

/// The records `query` asks for, as JSON.
pub(crate) fn list_events(history: &History, query: &EventsQuery) -> Response {
    let limit = query.limit.min(10_000);
    match history.records(query.after, query.twin.as_deref(), limit) {
        Ok(records) => Json(records).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// The records after `query.after`, then every new one as it is appended;
/// a follower that falls behind reads the gap back from the store, so it
/// misses nothing. The stream ends when the client goes away (the sender
/// fails).
fn follow(
    control: Arc<Control>,
    query: EventsQuery,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let mut live = control.history().subscribe();
        let twin = query.twin.as_deref();
        let mut after = query.after;
        loop {
            // The backlog (and any gap a lagging follower left) from the
            // store, then the live records past it.
            loop {
                let backlog = control
                    .history()
                    .records(after, twin, 1000)
                    .unwrap_or_default();
                let caught_up = backlog.len() < 1000;
                for record in backlog {
                    after = record.seq;
                    if tx.send(event(&record)).await.is_err() {
                        return;
                    }
                }
                if caught_up {
                    break;
                }
            }
            loop {
                match live.recv().await {
                    Ok(record) if record.seq > after => {
                        after = record.seq;
                        let wanted = twin.is_none_or(|t| record.twin.as_deref() == Some(t));
                        if wanted && tx.send(event(&record)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    })
}

fn event(record: &super::history::Record) -> Event {
    Event::default()
        .id(record.seq.to_string())
        .event(record.kind.as_str())
        .data(serde_json::to_string(record).unwrap_or_default())
}
