//! The control plane (`wasmtwin control`), the paper's Trustworthiness
//! Management Platform: it keeps every twin entangled by itself.
//!
//! Data flows one way, as in a Kubernetes reconciler: nodes report
//! ([`fleet`], the infrastructure knowledge; the monitoring agent is the
//! nodes' own measures); the [`reconcile`] loop takes each twin whose
//! report or desired state ([`repository`]) changed, ranks the nodes that
//! may run it ([`placement`]), finds why a requirement broke
//! ([`diagnose`]) and decides what to do ([`decide`], a pure function the
//! Kubernetes operator shares); then acts through the nodes' APIs and
//! appends every observation, decision, action and management call to the
//! tamper-evident [`history`], which [`webhook`]s carry out. The
//! [`security`] agent checks what nodes run.

pub mod api;
pub mod decide;
pub mod diagnose;
pub mod fleet;
pub mod history;
pub mod placement;
pub mod reconcile;
pub mod repository;
pub mod security;
pub mod webhook;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use history::History;
use reconcile::{Control, ControlConfig};
use repository::Repository;
use webhook::Webhooks;

use crate::signing;

/// A history's signing key: `--key`, or the one in `dir`, created on
/// first start.
fn signing_key(key: Option<&Path>, dir: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    if let Some(file) = key {
        return signing::read_private(file);
    }
    let file = dir.join(signing::PRIVATE_KEY_FILE);
    if file.exists() {
        return signing::read_private(&file);
    }
    let key = signing::generate()?;
    signing::write_pair(dir, &key, false)?;
    tracing::info!(dir = %dir.display(), "created the event history's signing key");
    Ok(key)
}

/// Where a node that runs alone keeps its audit history's key, under its
/// data directory.
pub const NODE_KEY_DIR: &str = "node-key";

/// The audit history of a node that runs alone, in its store (the node's
/// data directory `data`), signed with the key in `data/node-key`.
pub fn node_history(store: &crate::store::Store, data: &Path) -> anyhow::Result<Arc<History>> {
    let key = signing_key(None, &data.join(NODE_KEY_DIR))?;
    Ok(Arc::new(History::open(store.database(), key, 100)?))
}

/// Opens a control plane's store in `data` (created if need be), its
/// history signed with `key` (or the one kept in `data`).
pub fn open(
    data: &Path,
    key: Option<&Path>,
    config: ControlConfig,
    webhooks: Option<Webhooks>,
) -> anyhow::Result<Arc<Control>> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let key = signing_key(key, &data.join("control-key"))?;
    let repo = Repository::open(data)?;
    let history = History::open(repo.database(), key, 100)?;
    Ok(Arc::new(Control::new(repo, history, webhooks, config)?))
}
