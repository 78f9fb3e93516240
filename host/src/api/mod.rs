//! The node's HTTP interfaces: digital (applications read twins and ask for
//! actions), management (the platform applies and deletes specs) and
//! monitoring (`/metrics`, `/healthz`, `/readyz`).
//!
//! Management and digital routes need `Authorization: Bearer TOKEN`;
//! monitoring routes are open so Prometheus and probes can reach them.

mod auth;
mod twins;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

pub use auth::Auth;

use crate::node::Node;

/// Builds the router for `node`.
pub fn router(node: Arc<Node>, auth: Auth) -> Router {
    let protected =
        twins::routes().layer(axum::middleware::from_fn_with_state(auth, auth::require));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .merge(protected)
        .with_state(node)
}

async fn metrics(axum::extract::State(node): axum::extract::State<Arc<Node>>) -> impl IntoResponse {
    node.evaluate_all();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics().encode(),
    )
}
