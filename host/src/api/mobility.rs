//! Routes for a twin's movements: its checkpoint bundle out and in, the
//! steps of a live migration on either node, and model hot-swap. Twins that
//! moved away are answered with a redirect to their new node.

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::body::{self, too_large};
use super::twins::{error, node_error};
use crate::node::{IMPORT_BATCH, Node, NodeError, Outgoing};
use crate::spec::ComponentRef;
use crate::store::{HistoryMark, HistoryRow};

/// The media type of a history copy: one JSON row per line.
const ROWS_TYPE: &str = "application/x-ndjson";

/// Longest history row accepted, so an endless line cannot exhaust memory.
const ROW_MAX: usize = 1 << 20;

/// The media type of checkpoint bundles.
pub const BUNDLE_TYPE: &str = "application/vnd.wasmtwin.checkpoint";

pub fn routes() -> Router<Arc<Node>> {
    // Everything that takes a twin's state in or out: peers only, when the
    // node asks for certificates.
    let moving = Router::new()
        .route("/v1/twins/{name}/checkpoint", get(checkpoint).put(restore))
        .route("/v1/twins/{name}/handover", post(handover))
        .route("/v1/twins/{name}/history/rows", get(history_rows))
        .route("/v1/twins/{name}/base", get(base))
        .route("/v1/twins/{name}/resume", post(resume))
        .route("/v1/twins/{name}/moved", post(moved))
        .route(
            "/v1/migrations/{name}",
            put(receive).get(first_buffered).post(accept).delete(refuse),
        )
        .route("/v1/migrations/{name}/history", put(import_history))
        .route("/v1/migrations/{name}/base", put(hold_base))
        .route("/v1/migrations/{name}/session", post(listen))
        .route_layer(axum::middleware::from_fn(super::peers::certified));
    Router::new()
        .route("/v1/twins/{name}/swap", post(swap))
        .merge(moving)
}

/// Middleware: a read or action on a twin that moved away is redirected
/// (308, same method and body) to the same path on its new node.
pub async fn redirect_moved(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method();
    if method == Method::GET || method == Method::POST {
        let path = request.uri().path();
        let mut parts = path.trim_start_matches('/').splitn(4, '/');
        // A twin coming back is served here (its stream opens while it
        // arrives), not sent away to where it is leaving.
        if let (Some("v1"), Some("twins"), Some(name)) = (parts.next(), parts.next(), parts.next())
            && !node.arriving(name)
            && let Some(to) = node.moved(name)
        {
            let query = request
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let location = format!("{}{path}{query}", to.trim_end_matches('/'));
            return (
                StatusCode::PERMANENT_REDIRECT,
                [(header::LOCATION, location.clone())],
                Json(json!({ "error": format!("twin `{name}` moved"), "location": location })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// A response body of the chunks a blocking writer sends, as they come.
fn streamed(mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>) -> axum::body::Body {
    let chunks = futures_util::stream::poll_fn(move |cx| chunks.poll_recv(cx))
        .map(Ok::<_, std::convert::Infallible>);
    axum::body::Body::from_stream(chunks)
}

/// A bundle as it streams out, its length announced.
fn bundle(outgoing: Outgoing) -> Response {
    (
        [
            (header::CONTENT_TYPE, BUNDLE_TYPE.to_string()),
            (header::CONTENT_LENGTH, outgoing.len.to_string()),
        ],
        streamed(outgoing.chunks),
    )
        .into_response()
}

/// A request body as a blocking reader, for bundles read as they arrive
/// (on a blocking thread). More than `limit` bytes is an error, and
/// marks the reader's `too_large` flag so the answer can be 413.
struct BodyReader {
    chunks: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
    read: usize,
    limit: usize,
    too_large: Arc<AtomicBool>,
}

impl BodyReader {
    /// A reader of `body`, and the flag it raises if the body is too large.
    fn new(body: axum::body::Body, limit: usize) -> (Self, Arc<AtomicBool>) {
        let (tx, chunks) = tokio::sync::mpsc::channel(8);
        let mut stream = body.into_data_stream();
        tokio::spawn(async move {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| e.to_string());
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        let too_large = Arc::new(AtomicBool::new(false));
        let reader = Self {
            chunks,
            current: Bytes::new(),
            read: 0,
            limit,
            too_large: too_large.clone(),
        };
        (reader, too_large)
    }
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(format!("receiving: {e}"))),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        self.read += n;
        if self.read > self.limit {
            self.too_large.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "the bundle is larger than the {} accepted",
                body::human(self.limit)
            )));
        }
        Ok(n)
    }
}

/// A bundle whose announced length is over `limit` is refused before a
/// byte of it is read.
fn bundle_too_large(body: &axum::body::Body, limit: usize) -> Option<Response> {
    use axum::body::HttpBody;
    (body.size_hint().lower() > limit as u64).then(|| too_large("bundle", limit))
}

/// Runs blocking node work off the I/O threads; errors become statuses.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(match e.downcast::<NodeError>() {
            Ok(e) => node_error(e),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
        }),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
struct CheckpointQuery {
    /// Carry the model and adapter components in the bundle.
    #[serde(default)]
    components: bool,
}

async fn checkpoint(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(query): Query<CheckpointQuery>,
) -> Response {
    match node.export(&name, query.components).await {
        Ok(bytes) => bundle(bytes),
        Err(e) => node_error(e),
    }
}

/// `PUT /v1/twins/{name}/checkpoint`'s options.
#[derive(Debug, Deserialize)]
struct RestoreQuery {
    /// Take the place of a twin of that name running here.
    #[serde(default)]
    replace: bool,
    /// The node the twin ran on before it was lost: its broker session's
    /// backlog is applied first.
    adopt: Option<String>,
}

async fn restore(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(query): Query<RestoreQuery>,
    body: axum::body::Body,
) -> Response {
    let limit = node.inputs().bundle_bytes;
    if let Some(response) = bundle_too_large(&body, limit) {
        return response;
    }
    let (reader, too_large_flag) = BodyReader::new(body, limit);
    let twin = name.clone();
    if let Some(from) = &query.adopt
        && (from.is_empty()
            || from.len() > 64
            || !from
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return super::twins::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "adopt must name a node: letters, digits, `-` or `_`",
        );
    }
    let restored =
        blocking(move || node.restore_bundle(&twin, reader, query.replace, query.adopt.as_deref()))
            .await;
    match restored {
        Ok(()) => (StatusCode::CREATED, Json(json!({ "twin": name }))).into_response(),
        Err(_) if too_large_flag.load(Ordering::Relaxed) => too_large("bundle", limit),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HandoverQuery {
    /// Apply messages up to this sequence number before handing over.
    until: Option<u64>,
    /// The bundle carries only the history rows after this mark.
    history_after: Option<HistoryMark>,
    /// The digest of the snapshot the target holds (`GET .../base`): the
    /// bundle carries the guest snapshot's changes from it.
    base: Option<String>,
    /// The target restored that snapshot: the bundle may carry, instead,
    /// the messages applied since, for the target to replay on it.
    #[serde(default)]
    replay: bool,
}

async fn handover(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(query): Query<HandoverQuery>,
) -> Response {
    let handed = node.handover(
        &name,
        query.until,
        query.history_after,
        query.base.as_deref(),
        query.replay,
    );
    match handed.await {
        Ok(bytes) => bundle(bytes),
        Err(e) => node_error(e),
    }
}

/// A snapshot of the twin's guest state and its entanglement window (a
/// checkpoint of the two sections) for a migration's target to hold ahead
/// of the handover (the node keeps it until then).
async fn base(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    match node.base(&name).await {
        Ok(snapshot) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            snapshot,
        )
            .into_response(),
        Err(e) => node_error(e),
    }
}

async fn hold_base(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Response {
    let limit = node.inputs().bundle_bytes;
    let ahead = match body::bytes(body, limit, "snapshot").await {
        Ok(ahead) => ahead,
        Err(response) => return response,
    };
    // Checked and hashed off the async threads.
    match blocking(move || Ok(node.hold_base(&name, ahead.into())?)).await {
        Ok((digest, restored)) => {
            Json(json!({ "base": digest, "replay": restored })).into_response()
        }
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct ResumeQuery {
    /// The caller withdrew the twin's arrival on its target.
    #[serde(default)]
    withdrawn: bool,
}

async fn resume(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(query): Query<ResumeQuery>,
) -> Response {
    match blocking(move || node.resume_twin(&name, query.withdrawn)).await {
        Ok(()) => Json(json!({ "resumed": true })).into_response(),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct MovedBody {
    /// The API of the twin's new node.
    to: String,
}

async fn moved(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Response {
    let body: MovedBody = match body::json_body(body, body::SMALL_MAX, "request").await {
        Ok(body) => body,
        Err(response) => return response,
    };
    if !(body.to.starts_with("http://") || body.to.starts_with("https://")) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`to` must be an http(s) URL, got `{}`", body.to),
        );
    }
    match blocking(move || node.mark_moved(&name, &body.to)).await {
        Ok(()) => Json(json!({ "moved": true })).into_response(),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapBody {
    /// The new model (a path, `file://` or `oci://`)…
    #[serde(rename = "ref")]
    reference: Option<String>,
    /// …with its expected digest.
    digest: Option<String>,
    /// Or back to the model before the last swap.
    #[serde(default)]
    rollback: bool,
}

async fn swap(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Response {
    let body: SwapBody = match body::json_body(body, body::SMALL_MAX, "request").await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let to = match (body.reference, body.rollback) {
        (Some(reference), false) => Some(ComponentRef {
            reference,
            digest: body.digest,
        }),
        (None, true) => None,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give either `ref` (and optionally `digest`) or `rollback: true`",
            );
        }
    };
    match node.swap(&name, to).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => node_error(e),
    }
}

async fn receive(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Response {
    let spec = match super::twins::spec_named(body, &name, node.inputs().spec_bytes).await {
        Ok(spec) => spec,
        Err(response) => return response,
    };
    match blocking(move || node.receive(spec)).await {
        Ok(()) => Json(json!({ "receiving": name })).into_response(),
        Err(response) => response,
    }
}

async fn listen(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    match blocking(move || node.listen(&name)).await {
        Ok(()) => Json(json!({ "listening": true })).into_response(),
        Err(response) => response,
    }
}

async fn first_buffered(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    match blocking(move || Ok(node.first_buffered(&name)?)).await {
        Ok(first) => Json(json!({ "firstSeq": first })).into_response(),
        Err(response) => response,
    }
}

async fn accept(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Response {
    let limit = node.inputs().bundle_bytes;
    if let Some(response) = bundle_too_large(&body, limit) {
        return response;
    }
    let twin = name.clone();
    let (reader, too_large_flag) = BodyReader::new(body, limit);
    match blocking(move || node.accept(&twin, reader)).await {
        Ok(()) => Json(json!({ "arrived": name })).into_response(),
        Err(_) if too_large_flag.load(Ordering::Relaxed) => too_large("bundle", limit),
        Err(response) => response,
    }
}

async fn refuse(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    // Off the async threads: it waits for a landing under way.
    match blocking(move || Ok(node.refuse(&name)?)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct RowsQuery {
    /// Only the rows after this mark (`TS:SEQ`).
    after: Option<HistoryMark>,
}

/// A twin's history rows, streamed as JSON lines from one snapshot of the
/// store, for a target to copy ahead of a handover.
async fn history_rows(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(query): Query<RowsQuery>,
) -> Response {
    // A few chunks in flight: the store is read as fast as the client takes.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (started, first) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let mut started = Some(started);
        let result = node.history_lines(&name, query.after, |chunk| {
            if let Some(started) = started.take() {
                let _ = started.send(Ok(()));
            }
            tx.blocking_send(chunk).is_ok()
        });
        match (result, started) {
            // Nothing was sent yet: the error can still be the answer.
            (Err(e), Some(started)) => {
                let _ = started.send(Err(e));
            }
            (Err(e), None) => tracing::warn!(twin = %name, "history copy cut short: {e:#}"),
            (Ok(_), Some(started)) => {
                let _ = started.send(Ok(()));
            }
            (Ok(_), None) => {}
        }
    });
    match first.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return match e.downcast::<NodeError>() {
                Ok(e) => node_error(e),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
            };
        }
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the history reader stopped",
            );
        }
    }
    ([(header::CONTENT_TYPE, ROWS_TYPE)], streamed(rx)).into_response()
}

/// Stores the history rows of a twin arriving, as they stream in, a batch
/// at a time; answers how many came and the mark of the last.
async fn import_history(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Response {
    let limit = node.inputs().bundle_bytes;
    if let Some(response) = bundle_too_large(&body, limit) {
        return response;
    }
    let mut stream = body.into_data_stream();
    let mut received = 0usize;
    let mut pending: Vec<u8> = Vec::new();
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let mut count = 0u64;
    let mut last = None;
    loop {
        let chunk = match stream.next().await {
            Some(Ok(chunk)) => Some(chunk),
            Some(Err(e)) => {
                return error(StatusCode::BAD_REQUEST, format!("reading the history: {e}"));
            }
            None => None,
        };
        let done = chunk.is_none();
        if let Some(chunk) = &chunk {
            received += chunk.len();
            if received > limit {
                return too_large("history copy", limit);
            }
        }
        match chunk {
            Some(chunk) => pending.extend_from_slice(&chunk),
            // A last line without its newline.
            None if !pending.is_empty() => pending.push(b'\n'),
            None => {}
        }
        let complete = pending
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        if complete == 0 && pending.len() > ROW_MAX {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a history row is longer than {ROW_MAX} bytes"),
            );
        }
        for line in pending[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            match serde_json::from_slice::<HistoryRow>(line) {
                Ok(row) => batch.push(row),
                Err(e) => {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!(
                            "history row {} is malformed: {e}",
                            count + batch.len() as u64 + 1
                        ),
                    );
                }
            }
        }
        pending.drain(..complete);
        if batch.len() >= IMPORT_BATCH || (done && !batch.is_empty()) {
            let rows = std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH));
            count += rows.len() as u64;
            last = rows.last().map(|r| HistoryMark {
                ts_ms: r.ts_ms,
                seq: r.seq,
            });
            let (node, name) = (node.clone(), name.clone());
            if let Err(response) = blocking(move || node.import_history(&name, rows)).await {
                return response;
            }
        }
        if done {
            break;
        }
    }
    Json(json!({ "rows": count, "through": last.map(|m| m.to_string()) })).into_response()
}
