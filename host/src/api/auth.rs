//! Bearer-token authentication of the management and digital APIs.
//!
//! The token travels in the `Authorization: Bearer` header. Event streams
//! (`super::stream`) also take it in the `access_token` query parameter
//! (RFC 6750 §2.3), as their Thing Description forms state: clients built
//! on `EventSource`, browsers' and node-wot's among them, cannot set
//! headers. No other route does, so tokens stay out of ordinary URLs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::roles::Tokens;
use super::stream::is_event_stream;
use super::td::ACCESS_TOKEN;

/// Who may call the protected routes.
#[derive(Clone)]
pub enum Auth {
    /// Callers must present this token, which may do anything.
    Token(String),
    /// Callers must present one of the file's tokens, each with a role
    /// and maybe a set of twins (see [`super::roles`]).
    Tokens(Arc<Tokens>),
    /// Anyone (`--insecure-dev`).
    Open,
}

impl Auth {
    /// The one token callers must present, if there is one.
    pub fn token(&self) -> Option<String> {
        match self {
            Auth::Token(token) => Some(token.clone()),
            Auth::Tokens(_) | Auth::Open => None,
        }
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"wasmtwin\"")],
        "a valid bearer token is required\n",
    )
        .into_response()
}

/// Refuses requests without a valid bearer token with 401, and with a
/// token file, a call beyond the token's role or twins with 403, naming why.
pub async fn require(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    match &auth {
        Auth::Open => {}
        Auth::Token(expected) => {
            // Compared in constant time so the token cannot be guessed by timing.
            let valid = presented(&request)
                .is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())));
            if !valid {
                return unauthorized();
            }
        }
        Auth::Tokens(tokens) => {
            // Looked up by its hash: the time taken says nothing of the token.
            let Some(grant) = presented(&request).and_then(|p| tokens.grant(&p)) else {
                return unauthorized();
            };
            if let Some(why) = grant.refuses(request.method(), request.uri().path()) {
                return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
            }
            // The history records the token's holder, whatever the caller
            // says of itself.
            let claimed = request
                .headers()
                .get(ACTOR)
                .and_then(|v| v.to_str().ok())
                .map(|c| {
                    format!(
                        "{} (token {})",
                        crate::input::cap(c.to_string(), 96),
                        grant.name
                    )
                })
                .unwrap_or_else(|| format!("token {}", grant.name));
            if let Ok(value) = header::HeaderValue::from_str(&claimed) {
                request.headers_mut().insert(ACTOR, value);
            }
        }
    }
    next.run(request).await
}

/// The header in which callers name themselves for the event history.
pub const ACTOR: &str = "x-wasmtwin-actor";

/// The token a request carries: its `Authorization` header's, or an event
/// stream's query parameter.
fn presented(request: &Request) -> Option<String> {
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_string);
    from_header.or_else(|| query_token(request))
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
