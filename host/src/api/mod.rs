//! The node's HTTP interfaces: digital (applications read twins and ask for
//! actions), management (the platform applies and deletes specs) and
//! monitoring (`/metrics`, `/healthz`, `/readyz`).
//!
//! Management and digital routes need `Authorization: Bearer TOKEN`;
//! monitoring routes are open so Prometheus and probes can reach them.

mod admission;
mod audit;
mod auth;
mod body;
mod mobility;
pub mod peers;
pub mod roles;
mod stream;
mod td;
pub(crate) mod twins;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

pub use admission::Admission;
pub use auth::{Auth, require};
pub use body::SMALL_MAX;
pub use mobility::BUNDLE_TYPE;
pub use td::thing_description;

use crate::control::history::History;
use crate::node::Node;

/// Builds the router for `node`, admitting at most `max_requests` digital
/// and management requests at once, recording management calls in `audit`
/// if the node keeps its own history (it runs alone).
pub fn router(
    node: Arc<Node>,
    auth: Auth,
    max_requests: usize,
    audit: Option<Arc<History>>,
) -> Router {
    let security = match auth {
        Auth::Open => td::Security::None,
        Auth::Token(_) | Auth::Tokens(_) => td::Security::Bearer,
    };
    let admission = Admission::new(max_requests, node.metrics().clone());
    // Layers run outside in: authentication before admission, so an
    // unauthenticated flood cannot take places.
    let routes = twins::routes()
        .merge(stream::routes())
        .merge(mobility::routes());
    // Inside authentication: the actor is the token's holder.
    let routes = match audit {
        Some(history) => routes
            .merge(audit::routes(history.clone()))
            .layer(axum::middleware::from_fn_with_state(history, audit::record)),
        None => routes,
    };
    let protected = routes
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            mobility::redirect_moved,
        ))
        .layer(axum::Extension(security))
        .layer(axum::middleware::from_fn_with_state(
            admission,
            admission::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(auth, auth::require));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .merge(protected)
        .layer(axum::middleware::from_fn(body::cap_rejections))
        .with_state(node)
}

async fn metrics(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    node.evaluate_all();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::monitoring::Format::negotiate(accept);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
        node.metrics().encode_as(format),
    )
}
