//! Bearer-token authentication of the management and digital APIs.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// Who may call the protected routes.
#[derive(Clone)]
pub enum Auth {
    /// Callers must present this token.
    Token(String),
    /// Anyone (`--insecure-dev`).
    Open,
}

/// Refuses requests without the right bearer token with 401.
pub async fn require(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    if let Auth::Token(expected) = &auth {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in constant time so the token cannot be guessed by timing.
        let valid = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())));
        if !valid {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"wasmtwin\"")],
                "a valid bearer token is required\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}
