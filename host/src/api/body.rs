//! Request bodies read whole, each route with its own size limit, and the
//! answers that refuse them: 413 naming the limit, 400 for JSON nesting
//! deeper than [`MAX_NESTING`](crate::input::MAX_NESTING) or otherwise
//! malformed, with messages that quote at most a little of the input.

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::twins::error;
use crate::input::{MAX_NESTING, Syntax, cap_message, check_nesting};

/// Largest small JSON request (a swap, a move) accepted.
pub const SMALL_MAX: usize = 64 << 10;

/// `bytes` for people: `1 MiB`, `64 KiB`, `100 bytes`.
pub fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// The 413 answer for a `what` over `limit` bytes.
pub fn too_large(what: &str, limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the {what} is larger than the {} accepted", human(limit)),
    )
}

/// Reads a whole body of at most `limit` bytes; a larger one is refused
/// as soon as its length (announced or read) exceeds it.
pub async fn bytes(body: Body, limit: usize, what: &str) -> Result<Vec<u8>, Response> {
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large(what, limit));
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the {what}: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large(what, limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Reads a whole body of at most `limit` bytes as UTF-8 text (see
/// [`bytes`]).
pub async fn text(body: Body, limit: usize, what: &str) -> Result<String, Response> {
    String::from_utf8(bytes(body, limit, what).await?)
        .map_err(|_| error(StatusCode::BAD_REQUEST, format!("the {what} is not UTF-8")))
}

/// Parses JSON `text` after checking its nesting; the error says why not.
pub fn json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, String> {
    check_nesting(text, Syntax::Json, MAX_NESTING)
        .map_err(|e| format!("the {what} is refused: {e}"))?;
    serde_json::from_str(text).map_err(|e| format!("the {what} is not valid: {e}"))
}

/// Reads a whole JSON body of at most `limit` bytes; errors are answers.
pub async fn json_body<T: DeserializeOwned>(
    body: Body,
    limit: usize,
    what: &str,
) -> Result<T, Response> {
    let text = text(body, limit, what).await?;
    json(&text, what).map_err(|message| error(StatusCode::BAD_REQUEST, message))
}

/// Middleware: a plain-text error answer (axum's own rejections of a path,
/// query or body, which may quote the request) longer than
/// [`MESSAGE_MAX`](crate::input::MESSAGE_MAX) is cut to it.
pub async fn cap_rejections(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    let long = response.body().size_hint().lower() > crate::input::MESSAGE_MAX as u64;
    if !(status.is_client_error() || status.is_server_error()) || !plain || !long {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The rejection is already in memory; a bound all the same.
    let text = match axum::body::to_bytes(body, 1 << 24).await {
        Ok(bytes) => cap_message(String::from_utf8_lossy(&bytes).into_owned()),
        Err(_) => "the request was refused".to_string(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    (parts, text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_well() {
        assert_eq!(human(1 << 20), "1 MiB");
        assert_eq!(human(SMALL_MAX), "64 KiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
