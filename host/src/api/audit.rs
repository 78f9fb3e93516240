//! The audit trail of a node that runs alone (no `--control`): every
//! management call — who (the token's name under `--tokens`, else the
//! caller's `X-Wasmtwin-Actor`), what (method and path) and the result
//! (status) — appended to a hash-chained event history in the node's store,
//! sealed with the node's key (`DATA/node-key`). `GET /v1/events` reads it;
//! `wasmtwin events verify --data DIR` checks it. Under a control plane,
//! calls made through it are in the control plane's history instead.
//!
//! Reads are not recorded, and neither are actions (an application's
//! calls, at its own rate; they reach the device as commands, and the
//! twin's metrics count them); a twin's whole state leaving the node
//! (checkpoint, history rows) is.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::auth::ACTOR;
use super::roles::{Role, twin_of};
use crate::control::api::{EventsQuery, list_events};
use crate::control::history::{Entry, History, Kind};
use crate::node::Node;

/// `GET /v1/events`: the node's audit records.
pub fn routes(history: Arc<History>) -> Router<Arc<Node>> {
    Router::new().route(
        "/v1/events",
        get(move |Query(query): Query<EventsQuery>| async move { list_events(&history, &query) }),
    )
}

/// Whether a call is recorded: anything but a read or an action, and the
/// reads that take a twin's whole state.
fn audited(method: &Method, path: &str) -> bool {
    let read = *method == Method::GET || *method == Method::HEAD;
    let action = path.contains("/actions/");
    (!read && !action) || (read && Role::needed(method, path) == Role::Admin)
}

/// Middleware: records each audited call once answered, before the answer
/// goes out (a call the node cannot record is still answered, and logged).
pub async fn record(State(history): State<Arc<History>>, request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    if !audited(&method, &path) {
        return next.run(request).await;
    }
    let actor = request
        .headers()
        .get(ACTOR)
        .and_then(|v| v.to_str().ok())
        .map_or("api".to_string(), |v| crate::input::cap(v.to_string(), 128));
    let response = next.run(request).await;
    let status = response.status();
    let mut entry = Entry::new(
        Kind::Management,
        format!("{actor}: {method} {path} answered {status}"),
    )
    .actor(&actor)
    .data(json!({ "method": method.as_str(), "path": path, "status": status.as_u16() }));
    if let Some(twin) = twin_of(&path) {
        entry = entry.twin(twin);
    }
    match tokio::task::spawn_blocking(move || history.append(entry)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!("recording a management call in the audit history: {e:#}"),
        Err(e) => tracing::error!("recording a management call in the audit history: {e}"),
    }
    response
}

#[cfg(test)]
mod tests {
    use super::audited;
    use axum::http::Method;

    #[test]
    fn management_and_state_leaving_are_audited_reads_and_actions_are_not() {
        for (method, path) in [
            (Method::PUT, "/v1/twins/m1"),
            (Method::DELETE, "/v1/twins/m1"),
            (Method::POST, "/v1/twins/m1/swap"),
            (Method::GET, "/v1/twins/m1/checkpoint"),
            (Method::GET, "/v1/twins/m1/history/rows"),
            (Method::GET, "/v1/twins/m1/base"),
            (Method::PUT, "/v1/migrations/m1"),
        ] {
            assert!(audited(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::GET, "/v1/twins"),
            (Method::GET, "/v1/twins/m1/history"),
            (Method::GET, "/v1/twins/m1/stream"),
            (Method::POST, "/v1/twins/m1/actions/reset"),
            (Method::GET, "/v1/events"),
        ] {
            assert!(!audited(&method, path), "{method} {path}");
        }
    }
}
