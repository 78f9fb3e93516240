//! Leader election through a `coordination.k8s.io` Lease, as client-go
//! does it: a replica leads while the Lease names it and it renews
//! `renewTime` within `leaseDurationSeconds`; another takes the Lease over
//! only once that has expired. Every write replaces the object read, with
//! its `resourceVersion`, so of two replicas racing for a free Lease the
//! API server lets exactly one through (the other gets 409 Conflict).
//!
//! A leader that cannot renew steps down after two thirds of the duration,
//! before anyone else may take over: two replicas never both act.
//! (`kube-lease-manager` locks through server-side-apply field ownership
//! instead, which no mock API server can stand in for in our tests.)

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Who leads, as one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// This replica: it may act.
    Leader,
    /// Another replica, named by the Lease.
    Follower(String),
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    /// Competes for Lease `name` through `api` as `identity`, holding it
    /// for `duration` at each renewal.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    fn spec(&self, acquired: Timestamp, transitions: i32, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt: takes the Lease if it is missing, free or expired,
    /// renews it if it is ours.
    pub async fn try_acquire(&self) -> Result<Role, kube::Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let fresh = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, 0, now)),
            };
            return match self.api.create(&PostParams::default(), &fresh).await {
                Ok(_) => Ok(Role::Leader),
                // Another replica created it first.
                Err(kube::Error::Api(s)) if s.is_already_exists() => {
                    Ok(Role::Follower("another replica".into()))
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(seconds)) => renewed
                .saturating_add(SignedDuration::from_secs(i64::from(seconds)))
                .is_ok_and(|until| until < now),
            _ => true,
        };
        if !ours && !holder.is_empty() && !expired {
            return Ok(Role::Follower(holder));
        }
        let (acquired, transitions) = match (ours, &spec.acquire_time) {
            (true, Some(MicroTime(at))) => (*at, spec.lease_transitions.unwrap_or(0)),
            _ => (now, spec.lease_transitions.unwrap_or(0).saturating_add(1)),
        };
        let mut next = lease;
        next.spec = Some(self.spec(acquired, transitions, now));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(Role::Leader),
            // Written by another replica since we read it: it won.
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(Role::Follower(holder)),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads, trying every third of the duration.
    pub async fn acquire(&self) {
        let mut told = None;
        loop {
            match self.try_acquire().await {
                Ok(Role::Leader) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "leading");
                    return;
                }
                Ok(Role::Follower(holder)) => {
                    if told.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.name, %holder, "following: another replica leads");
                        told = Some(holder);
                    }
                }
                Err(e) => tracing::warn!(lease = %self.name, "reading the lease: {e}"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Waits to lead, then runs `work` for as long as this replica leads:
    /// `work` is dropped, and stops, the moment leading ends. Returns its
    /// output, or why leading ended first.
    pub async fn lead<F: std::future::Future>(&self, work: F) -> Result<F::Output, String> {
        self.acquire().await;
        tokio::select! {
            why = self.keep() => Err(why),
            out = work => Ok(out),
        }
    }

    /// Renews the Lease every third of the duration while this replica
    /// leads; returns why it stopped leading: the Lease was taken, or it
    /// could not be renewed for two thirds of the duration.
    pub async fn keep(&self) -> String {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire().await {
                Ok(Role::Leader) => renewed = Instant::now(),
                Ok(Role::Follower(holder)) => return format!("the lease is held by {holder}"),
                Err(e) => {
                    tracing::warn!(lease = %self.name, "renewing the lease: {e}");
                    if renewed.elapsed() >= self.duration * 2 / 3 {
                        return format!("the lease could not be renewed: {e}");
                    }
                }
            }
        }
    }
}

/// The label on the leading replica's pod, which the Service hosts send
/// their heartbeats to selects (`"true"`); every other replica's says
/// `"false"`. Readiness then means "healthy in its role", so both replicas
/// are ready: rolling updates and disruption budgets work as for any pod.
pub const LEADER_LABEL: &str = "wasmtwin.dev/leader";

/// Sets [`LEADER_LABEL`] on pod `pod` to `leader`.
pub async fn label_pod(api: &Api<Pod>, pod: &str, leader: bool) -> Result<(), kube::Error> {
    let patch = serde_json::json!({
        "metadata": { "labels": { LEADER_LABEL: leader.to_string() } }
    });
    api.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}
