//! `/v1/twins…`: reading twins, asking for actions, applying and deleting
//! specs.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::node::{Node, NodeError};
use crate::spec::{SpecError, TwinSpec};

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/twins", get(list))
        .route("/v1/twins/{name}", get(read).put(apply).delete(delete))
        .route("/v1/twins/{name}/spec", get(spec))
        .route("/v1/twins/{name}/actions/{action}", post(act))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn node_error(e: NodeError) -> Response {
    match e {
        NodeError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        NodeError::Overloaded(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        NodeError::Refused(_) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
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

/// What an application may require of a read.
#[derive(Debug, Deserialize)]
struct ReadRequirements {
    /// Every property must have changed within this many milliseconds.
    max_age_ms: Option<u64>,
    /// The twin's reliability must be at least this.
    min_reliability: Option<f64>,
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
    let mut unmet = Vec::new();
    if let Some(max_age) = req.max_age_ms {
        let stale: Vec<&String> = report
            .properties
            .iter()
            .filter(|(_, p)| p.age_ms > max_age)
            .map(|(n, _)| n)
            .collect();
        if report.properties.is_empty() {
            unmet.push("the twin has no state yet".to_string());
        } else if !stale.is_empty() {
            unmet.push(format!(
                "older than {max_age} ms: {}",
                stale
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if let Some(min) = req.min_reliability
        && report.entanglement.reliability < min
    {
        unmet.push(format!(
            "reliability is {:.3}, below the {min} asked for",
            report.entanglement.reliability
        ));
    }
    if unmet.is_empty() {
        Json(report).into_response()
    } else {
        // The application's precondition is not met: say so rather than
        // pass stale data off as fresh.
        (
            StatusCode::PRECONDITION_FAILED,
            Json(json!({ "error": "the twin does not meet the requirements of this read", "reasons": unmet, "twin": report })),
        )
            .into_response()
    }
}

async fn spec(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    match node.spec(&name) {
        Ok(spec) => Json(spec).into_response(),
        Err(e) => node_error(e),
    }
}

async fn apply(State(node): State<Arc<Node>>, Path(name): Path<String>, body: String) -> Response {
    let spec = match TwinSpec::parse(&body) {
        Ok(spec) => spec,
        Err(e) => return spec_error(e),
    };
    if spec.name() != name {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "metadata.name is `{}`, but the URL names `{name}`",
                spec.name()
            ),
        );
    }
    // Fetching and compiling components blocks; keep it off the I/O threads.
    let result = tokio::task::spawn_blocking(move || node.apply(spec)).await;
    match result {
        Ok(Ok(applied)) => Json(json!({ "twin": name, "result": applied })).into_response(),
        Ok(Err(e)) => match e.downcast::<SpecError>() {
            Ok(spec_error_value) => spec_error(spec_error_value),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
        },
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn spec_error(e: SpecError) -> Response {
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
    match node.delete(&name) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => node_error(e),
    }
}

async fn act(
    State(node): State<Arc<Node>>,
    Path((name, action)): Path<(String, String)>,
    body: String,
) -> Response {
    let input = if body.trim().is_empty() {
        Value::Null
    } else {
        match serde_json::from_str(&body) {
            Ok(value) => value,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the action's input is not JSON: {e}"),
                );
            }
        }
    };
    match node.act(&name, &action, input).await {
        Ok(outcome) => {
            let commands: Vec<Value> = outcome
                .commands
                .iter()
                .map(|(name, payload)| json!({ "name": name, "payload": payload }))
                .collect();
            Json(json!({ "result": outcome.result, "commands": commands })).into_response()
        }
        Err(e) => node_error(e),
    }
}
