//! `/v1/twins…`: reading twins and their history, asking for actions,
//! applying and deleting specs.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body;
use super::td::{Security, thing_description};
use crate::input::cap_message;
use crate::node::{Node, NodeError, TwinReport};
use crate::spec::{SpecError, TwinSpec};

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/twins", get(list))
        .route("/v1/twins/{name}", get(read).put(apply).delete(delete))
        .route("/v1/twins/{name}/spec", get(spec))
        .route("/v1/twins/{name}/td", get(td))
        .route("/v1/twins/{name}/properties/{property}", get(property))
        .route("/v1/twins/{name}/history", get(history))
        .route("/v1/twins/{name}/actions/{action}", post(act))
}

/// An error answer. Its message may quote the request, so it is capped at
/// [`MESSAGE_MAX`](crate::input::MESSAGE_MAX) bytes.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": cap_message(message) }))).into_response()
}

pub(super) fn node_error(e: NodeError) -> Response {
    match e {
        NodeError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        NodeError::Overloaded(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            Json(json!({ "error": cap_message(e.to_string()) })),
        )
            .into_response(),
        NodeError::Refused(_) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        NodeError::Conflict(_) => error(StatusCode::CONFLICT, e.to_string()),
        NodeError::Moving(_) | NodeError::Subscribers { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({ "error": cap_message(e.to_string()) })),
        )
            .into_response(),
        NodeError::Moved(ref location) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location.clone())],
            Json(json!({ "error": cap_message(e.to_string()), "location": location })),
        )
            .into_response(),
    }
}

async fn list(State(node): State<Arc<Node>>) -> Response {
    let twins: Vec<Value> = node
        .names()
        .into_iter()
        .filter_map(|name| node.report(&name).ok())
        .map(|r| {
            json!({
                "name": r.name,
                "model": r.model.name,
                "updatesApplied": r.updates_applied,
                "status": r.entanglement.status,
            })
        })
        .collect();
    Json(json!({ "twins": twins })).into_response()
}

/// What an application may require of a read: of the whole twin
/// (`GET /v1/twins/{name}`) or of one property (`…/properties/{p}`, the
/// route the TD's forms point at). A read that the twin does not meet is
/// answered `412 Precondition Failed` with the reasons, not with stale data
/// passed off as fresh.
#[derive(Debug, Deserialize)]
struct ReadRequirements {
    /// What is read must have changed within this many milliseconds.
    max_age_ms: Option<u64>,
    /// The twin's reliability must be at least this.
    min_reliability: Option<f64>,
}

impl ReadRequirements {
    /// Why `report` does not meet these requirements, read whole or, with
    /// `only`, for that one property; empty when it meets them.
    fn unmet(&self, report: &TwinReport, only: Option<&str>) -> Vec<String> {
        let mut unmet = Vec::new();
        if let Some(max_age) = self.max_age_ms {
            match only {
                None if report.properties.is_empty() => {
                    unmet.push("the twin has no state yet".to_string());
                }
                Some(property) if !report.properties.contains_key(property) => {
                    unmet.push(format!("`{property}` has no value yet"));
                }
                _ => {
                    let stale: Vec<&str> = report
                        .properties
                        .iter()
                        .filter(|(name, p)| {
                            only.is_none_or(|only| only == name.as_str()) && p.age_ms > max_age
                        })
                        .map(|(name, _)| name.as_str())
                        .collect();
                    if !stale.is_empty() {
                        unmet.push(format!("older than {max_age} ms: {}", stale.join(", ")));
                    }
                }
            }
        }
        if let Some(min) = self.min_reliability
            && report.entanglement.reliability < min
        {
            unmet.push(format!(
                "reliability is {:.3}, below the {min} asked for",
                report.entanglement.reliability
            ));
        }
        unmet
    }
}

/// The answer to a read whose requirements are not met: the reasons, and
/// what was read under `key`.
fn requirements_unmet(reasons: Vec<String>, key: &str, read: Value) -> Response {
    (
        StatusCode::PRECONDITION_FAILED,
        Json(json!({
            "error": "the twin does not meet the requirements of this read",
            "reasons": reasons,
            key: read,
        })),
    )
        .into_response()
}

async fn read(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(req): Query<ReadRequirements>,
) -> Response {
    let report = match node.report(&name) {
        Ok(report) => report,
        Err(e) => return node_error(e),
    };
    let unmet = req.unmet(&report, None);
    if unmet.is_empty() {
        Json(report).into_response()
    } else {
        requirements_unmet(unmet, "twin", json!(report))
    }
}

/// One property's current value, bare (as a WoT consumer reads it); its
/// age and sequence number travel in headers. A property the model
/// describes but has not set yet reads `null`; one it does not describe is
/// not found.
async fn property(
    State(node): State<Arc<Node>>,
    Path((name, property)): Path<(String, String)>,
    Query(req): Query<ReadRequirements>,
) -> Response {
    let report = match node.report(&name) {
        Ok(report) => report,
        Err(e) => return node_error(e),
    };
    let current = report.properties.get(&property);
    if current.is_none() {
        match node.description(&name) {
            Ok(d) if d.properties.iter().any(|p| p.name == property) => {}
            Ok(_) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "twin `{name}`'s model ({}) describes no property `{property}`",
                        report.model.name
                    ),
                );
            }
            Err(e) => return node_error(e),
        }
    }
    let unmet = req.unmet(&report, Some(&property));
    if !unmet.is_empty() {
        return requirements_unmet(unmet, "property", json!(property));
    }
    match current {
        Some(p) => (
            [
                ("x-wasmtwin-age-ms", p.age_ms.to_string()),
                ("x-wasmtwin-seq", p.seq.to_string()),
            ],
            Json(p.value.clone()),
        )
            .into_response(),
        None => Json(Value::Null).into_response(),
    }
}

async fn td(
    State(node): State<Arc<Node>>,
    axum::Extension(security): axum::Extension<Security>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (report, description) = match node
        .report(&name)
        .and_then(|r| Ok((r, node.description(&name)?)))
    {
        Ok(found) => found,
        Err(e) => return node_error(e),
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let base = format!("http://{host}/v1/twins/{name}/");
    let td = thing_description(&name, &base, &report.model, &description, security);
    (
        [(header::CONTENT_TYPE, "application/td+json")],
        td.to_string(),
    )
        .into_response()
}

/// A history query.
#[derive(Debug, Deserialize)]
struct HistoryQuery {
    /// The property.
    property: Option<String>,
    /// Oldest PT timestamp: ms since the Unix epoch or RFC 3339.
    from: Option<String>,
    /// Newest PT timestamp, likewise.
    to: Option<String>,
    /// Most points returned.
    limit: Option<usize>,
    /// `oldest` (the default: the oldest points, oldest first) or `newest`
    /// (the newest points, newest first).
    order: Option<Order>,
}

/// Which end of a history range a query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Order {
    Oldest,
    Newest,
}

/// A time given as ms since the Unix epoch or as RFC 3339.
fn parse_time(text: &str, what: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .ok_or_else(|| {
            format!("`{what}` must be ms since the Unix epoch or an RFC 3339 time, got `{text}`")
        })
}

async fn history(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let Some(property) = query.property else {
        return error(StatusCode::BAD_REQUEST, "`property` is required");
    };
    let times = (|| {
        let from = query
            .from
            .as_deref()
            .map(|t| parse_time(t, "from"))
            .transpose()?;
        let to = query
            .to
            .as_deref()
            .map(|t| parse_time(t, "to"))
            .transpose()?;
        Ok::<_, String>((from.unwrap_or(0), to.unwrap_or(u64::MAX)))
    })();
    let (from, to) = match times {
        Ok(times) => times,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if from > to {
        return error(StatusCode::BAD_REQUEST, "`from` is after `to`");
    }
    let limit = query.limit.unwrap_or(1000);
    let max = node.inputs().history_points;
    if limit == 0 || limit > max {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`limit` must be between 1 and {max} (--max-history-points)"),
        );
    }
    // The store reads from disk; keep it off the I/O threads.
    let read = {
        let property = property.clone();
        let name = name.clone();
        let newest_first = query.order == Some(Order::Newest);
        tokio::task::spawn_blocking(move || {
            node.history(&name, &property, from, to, limit, newest_first)
        })
        .await
    };
    match read {
        Ok(Ok(points)) => {
            let points: Vec<Value> = points
                .into_iter()
                .map(|p| json!({ "tsMs": p.ts_ms, "seq": p.seq, "value": p.value }))
                .collect();
            Json(json!({ "twin": name, "property": property, "points": points })).into_response()
        }
        Ok(Err(e)) => node_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn spec(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    match node.spec(&name) {
        Ok(spec) => Json(spec).into_response(),
        Err(e) => node_error(e),
    }
}

/// `?replace=true`: a spec or bundle may take the place of the twin of
/// that name running here, discarding its state and history.
#[derive(Debug, Deserialize)]
pub(super) struct ReplaceQuery {
    #[serde(default)]
    pub(super) replace: bool,
}

async fn apply(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(query): Query<ReplaceQuery>,
    body: axum::body::Body,
) -> Response {
    let spec = match spec_named(body, &name, node.inputs().spec_bytes).await {
        Ok(spec) => spec,
        Err(response) => return response,
    };
    // Fetching and compiling components blocks; keep it off the I/O threads.
    let result = tokio::task::spawn_blocking(move || node.apply(spec, query.replace)).await;
    match result {
        Ok(Ok(applied)) => Json(json!({ "twin": name, "result": applied })).into_response(),
        Ok(Err(e)) => match e.downcast::<SpecError>() {
            Ok(spec_error_value) => spec_error(spec_error_value),
            Err(e) => match e.downcast::<NodeError>() {
                Ok(e) => node_error(e),
                Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
            },
        },
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The spec a request's body holds, which must be of twin `name`: read
/// within the spec size limit and parsed off the I/O threads (parsing a
/// megabyte of YAML takes a while, and those threads serve every other
/// request and drive the twins' MQTT sessions).
pub(crate) async fn spec_named(
    body: axum::body::Body,
    name: &str,
    limit: usize,
) -> Result<TwinSpec, Response> {
    let text = body::text(body, limit, "spec").await?;
    let spec = match tokio::task::spawn_blocking(move || TwinSpec::parse(&text)).await {
        Ok(Ok(spec)) => spec,
        Ok(Err(e)) => return Err(spec_error(e)),
        Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    if spec.name() != name {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "metadata.name is `{}`, but the URL names `{name}`",
                spec.name()
            ),
        ));
    }
    Ok(spec)
}

pub(crate) fn spec_error(e: SpecError) -> Response {
    let problems: Vec<Value> = e
        .problems
        .iter()
        .map(|p| json!({ "path": p.path, "message": p.message }))
        .collect();
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "error": "invalid twin spec", "problems": problems })),
    )
        .into_response()
}

async fn delete(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    // Waits for the twin's worker to finish: off the I/O threads.
    match tokio::task::spawn_blocking(move || node.delete(&name)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => node_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn act(
    State(node): State<Arc<Node>>,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Body,
) -> Response {
    let limit = node.inputs().action_bytes;
    let text = match body::text(body, limit, "action's input").await {
        Ok(text) => text,
        Err(response) => return response,
    };
    // A megabyte of JSON at most, its nesting checked first: parsed here in
    // a few milliseconds.
    let input = if text.trim().is_empty() {
        Value::Null
    } else {
        match body::json(&text, "action's input") {
            Ok(value) => value,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        }
    };
    match node.act(&name, &action, input).await {
        Ok(outcome) => {
            let commands: Vec<Value> = outcome
                .commands
                .iter()
                .map(|(name, payload)| json!({ "name": name, "payload": payload }))
                .collect();
            let changes: serde_json::Map<String, Value> = outcome.changes.into_iter().collect();
            let events: Vec<Value> = outcome
                .events
                .iter()
                .map(|(name, data)| json!({ "name": name, "data": data }))
                .collect();
            Json(json!({
                "result": outcome.result,
                "commands": commands,
                "changes": changes,
                "events": events,
            }))
            .into_response()
        }
        Err(e) => node_error(e),
    }
}
