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
