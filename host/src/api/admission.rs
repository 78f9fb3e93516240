//! Admission control: a node-wide bound on requests in flight, with room
//! kept for the more important ones. Actions (and management) may use all
//! of it, reads three quarters, history queries half; so as load rises,
//! history is refused first, then reads, and actions last. A refused
//! request gets `503 Service Unavailable` with `Retry-After`, and memory
//! stays bounded whatever the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::monitoring::{ClassLabel, Metrics};

/// A request's priority, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Actions on twins and management changes.
    Action,
    /// Reads of current state and descriptions.
    Read,
    /// History queries.
    History,
}

impl Class {
    /// The class of a request to `path` with `method`.
    pub fn of(method: &Method, path: &str) -> Self {
        if path.ends_with("/history") {
            Class::History
        } else if method == Method::GET || method == Method::HEAD {
            Class::Read
        } else {
            Class::Action
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Action => "action",
            Class::Read => "read",
            Class::History => "history",
        }
    }

    /// Requests in flight above which this class is refused.
    fn limit(self, capacity: usize) -> usize {
        match self {
            Class::Action => capacity,
            Class::Read => capacity * 3 / 4,
            Class::History => capacity / 2,
        }
        .max(1)
    }
}

/// The node's admission state.
#[derive(Clone)]
pub struct Admission {
    capacity: usize,
    in_flight: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// A request admitted; leaving frees its place.
pub struct Permit {
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// Admits at most `capacity` requests at once.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            capacity: capacity.max(1),
            in_flight: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }

    /// A place for a request of `class`, if there is room for that class.
    pub fn try_admit(&self, class: Class) -> Option<Permit> {
        let limit = class.limit(self.capacity);
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            Some(Permit {
                in_flight: self.in_flight.clone(),
            })
        } else {
            self.metrics
                .requests_shed
                .get_or_create(&ClassLabel {
                    class: class.name(),
                })
                .inc();
            None
        }
    }
}

/// Middleware: admits or sheds each request by its class. Event streams are
/// long-lived and bounded per subscriber, so they are not counted.
pub async fn admit(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if super::stream::is_event_stream(path) {
        return next.run(request).await;
    }
    let class = Class::of(request.method(), path);
    match admission.try_admit(class) {
        Some(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(json!({
                "error": format!(
                    "the node is overloaded; {} requests are shed first, retry later",
                    class.name()
                ),
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_classes_are_shed_first() {
        let admission = Admission::new(4, Arc::new(Metrics::default()));
        let history = admission.try_admit(Class::History).unwrap();
        let _h2 = admission.try_admit(Class::History).unwrap();
        assert!(
            admission.try_admit(Class::History).is_none(),
            "history may use half"
        );
        let read = admission.try_admit(Class::Read).unwrap();
        assert!(
            admission.try_admit(Class::Read).is_none(),
            "reads may use three quarters"
        );
        let _action = admission.try_admit(Class::Action).unwrap();
        assert!(admission.try_admit(Class::Action).is_none(), "full");
        drop(read);
        drop(history);
        assert!(
            admission.try_admit(Class::Read).is_some(),
            "places come back"
        );
        let text = admission.metrics.encode();
        assert!(
            text.contains(r#"wasmtwin_node_requests_shed_total{class="history"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn requests_are_classed_by_route() {
        assert_eq!(
            Class::of(&Method::GET, "/v1/twins/a/history"),
            Class::History
        );
        assert_eq!(Class::of(&Method::GET, "/v1/twins/a"), Class::Read);
        assert_eq!(
            Class::of(&Method::POST, "/v1/twins/a/actions/stop"),
            Class::Action
        );
        assert_eq!(Class::of(&Method::PUT, "/v1/twins/a"), Class::Action);
    }
}
