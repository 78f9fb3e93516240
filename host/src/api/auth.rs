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
            .and_then(bearer_token);
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
