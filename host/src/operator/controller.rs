//! The `DigitalTwin` controller: each custom resource is handed to the
//! embedded control plane, which places it on a host, keeps it entangled
//! and decides as it always does; the controller writes back what the
//! control plane knows (status, by server-side apply) and, through a
//! finalizer, takes a twin's last checkpoint before Kubernetes forgets it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{self, Event, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::status::{self, Known};
use crate::control::reconcile::{Control, Refusal};
use crate::spec::{API_VERSION, DigitalTwin, KIND, Metadata, TwinSpec};

/// The finalizer that holds a deleted `DigitalTwin` until its last
/// checkpoint is kept.
pub const FINALIZER: &str = "wasmtwin.dev/last-checkpoint";

/// The field manager of the status the operator applies.
pub const MANAGER: &str = "wasmtwin-operator";

/// What every reconcile needs.
pub struct Context {
    /// The Kubernetes API.
    pub client: Client,
    /// The embedded control plane.
    pub control: Arc<Control>,
    /// How often a running twin's status is refreshed (its measures change
    /// without any change to the resource).
    pub refresh: Duration,
}

/// Why a reconcile failed; it is tried again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer, or the work it guards, failed.
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// The control plane could not do what was asked.
    #[error("{0}")]
    Control(#[from] Refusal),
}

/// The twin spec a `DigitalTwin` declares: the same document `wasmtwin
/// apply` takes.
pub fn twin_spec(dt: &DigitalTwin) -> TwinSpec {
    TwinSpec {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: Metadata {
            name: dt.name_any(),
            labels: dt.labels().clone(),
        },
        spec: dt.spec.clone(),
    }
}

fn actor(dt: &DigitalTwin) -> String {
    format!(
        "kubernetes:{}/{}",
        dt.namespace().unwrap_or_default(),
        dt.name_any()
    )
}

/// Reconciles one `DigitalTwin`.
pub async fn reconcile(dt: Arc<DigitalTwin>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<DigitalTwin> = match dt.namespace() {
        Some(ns) => Api::namespaced(ctx.client.clone(), &ns),
        None => Api::default_namespaced(ctx.client.clone()),
    };
    finalizer(&api, FINALIZER, dt, |event| async {
        match event {
            Event::Apply(dt) => apply(&api, &dt, &ctx).await,
            Event::Cleanup(dt) => cleanup(&dt, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Hands the spec to the control plane and writes back what it knows.
async fn apply(api: &Api<DigitalTwin>, dt: &DigitalTwin, ctx: &Context) -> Result<Action, Error> {
    let spec = twin_spec(dt);
    let name = spec.name().to_string();
    let applied = match spec.validate() {
        Ok(()) => ctx.control.apply(spec, &actor(dt)).await,
        Err(problems) => Err(Refusal::Spec(problems)),
    };
    let report = ctx.control.report(&name);
    let known = match (&applied, &report) {
        (Ok(_), Some(report)) => Known::Report(report),
        (Err(refusal), _) => Known::Refused(&refusal.to_string()),
        (Ok(_), None) => return Ok(Action::requeue(Duration::from_secs(1))),
    };
    let refused = matches!(known, Known::Refused(_));
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let next = status::status(known, dt.meta().generation, dt.status.as_ref(), &now);
    if dt.status.as_ref() != Some(&next) {
        let patch = json!({
            "apiVersion": DigitalTwin::api_version(&()),
            "kind": DigitalTwin::kind(&()),
            "status": next,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    // A refused spec waits for the resource to change; a twin's measures
    // change by themselves.
    Ok(if refused {
        Action::await_change()
    } else {
        Action::requeue(ctx.refresh)
    })
}

/// Keeps the twin's last checkpoint, then lets Kubernetes delete it.
async fn cleanup(dt: &DigitalTwin, ctx: &Context) -> Result<Action, Error> {
    match ctx.control.retire(&dt.name_any(), &actor(dt)).await {
        Ok(retired) => {
            tracing::info!(twin = %dt.name_any(), checkpoint = ?retired.checkpoint, "deleted");
            Ok(Action::await_change())
        }
        // Refused, or applied by another leader's store: nothing to keep.
        Err(Refusal::NotFound(_)) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// After a failed reconcile: logged, tried again in a few seconds.
pub fn error_policy(dt: Arc<DigitalTwin>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(twin = %dt.name_any(), "reconciling: {error}");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the controller over the `DigitalTwin`s of `namespace` until the
/// future is dropped.
pub async fn run(ctx: Arc<Context>, namespace: &str) {
    let api: Api<DigitalTwin> = Api::namespaced(ctx.client.clone(), namespace);
    Controller::new(api, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("controller: {e}");
            }
        })
        .await;
}
