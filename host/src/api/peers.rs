//! Mutual TLS on the routes that move a twin's state into or out of a node
//! (and a node's heartbeats to the control plane): with `--tls-client-ca`,
//! a token is not enough there; the caller must also present a certificate
//! signed by that CA, as nodes and control planes do with their own
//! `--tls-cert`. So someone who learnt a token still cannot push a twin,
//! or a node that is not one, into the fleet.

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use super::twins::error;

/// What the connection a request came on proved about its client; the
/// server loop sets it on every request.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The server asks for client certificates (`--tls-client-ca`).
    pub required: bool,
    /// The client presented one that the CA signed (verified in the TLS
    /// handshake, which fails on any other certificate).
    pub certified: bool,
}

/// Middleware: refuses a request whose connection needed a certificate
/// and did not present one. (A request served without the server loop,
/// as in unit tests, carries no [`Peer`] and passes.)
pub async fn certified(request: Request, next: Next) -> Response {
    match request.extensions().get::<Peer>() {
        Some(peer) if peer.required && !peer.certified => {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or(request.uri().path(), MatchedPath::as_str);
            error(
                StatusCode::FORBIDDEN,
                format!(
                    "{} {route} needs a client certificate signed by this server's \
                     --tls-client-ca (mutual TLS): nodes and control planes present their \
                     --tls-cert; wasmtwin commands, WASMTWIN_CLIENT_CERT and WASMTWIN_CLIENT_KEY",
                    request.method()
                ),
            )
        }
        _ => next.run(request).await,
    }
}
