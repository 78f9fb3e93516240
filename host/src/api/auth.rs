//! Bearer-token authentication of the management and digital APIs.
//!
//! The token travels in the `Authorization: Bearer` header. Event streams
//! (`super::stream`) also take it in the `access_token` query parameter
//! (RFC 6750 §2.3), as their Thing Description forms state: clients built
//! on `EventSource`, browsers' and node-wot's among them, cannot set
//! headers. No other route does, so tokens stay out of ordinary URLs.

use std::collections::HashMap;

use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::stream::is_event_stream;
use super::td::ACCESS_TOKEN;

/// Who may call the protected routes.
#[derive(Clone)]
pub enum Auth {
    /// Callers must present this token.
    Token(String),
    /// Anyone (`--insecure-dev`).
    Open,
}

impl Auth {
    /// The token callers must present, if any.
    pub fn token(&self) -> Option<String> {
        match self {
            Auth::Token(token) => Some(token.clone()),
            Auth::Open => None,
        }
    }
}

/// Refuses requests without the right bearer token with 401.
pub async fn require(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    if let Auth::Token(expected) = &auth {
        let from_header = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(str::to_string);
        let presented = from_header.or_else(|| query_token(&request));
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

/// The token in the query of an event stream's `GET`, if any.
fn query_token(request: &Request) -> Option<String> {
    if request.method() != Method::GET || !is_event_stream(request.uri().path()) {
        return None;
    }
    let query = Query::<HashMap<String, String>>::try_from_uri(request.uri()).ok()?;
    query.0.get(ACCESS_TOKEN).cloned()
}

/// The token of an `Authorization: Bearer TOKEN` value. The scheme is
/// case-insensitive (RFC 7235, section 2.1: `bearer`, `BEARER` are the same
/// scheme) and may be followed by more than one space.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR  abc"] {
            assert_eq!(bearer_token(value), Some("abc"), "{value}");
        }
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc", ""] {
            assert_eq!(bearer_token(value), None, "{value}");
        }
    }
}
