//! A running instance of a protocol adapter component.

use anyhow::Context;
use serde_json::Value;

use super::Runtime;
use super::bindings::adapter::{Adapter, AdapterPre};
use super::bindings::types;
use super::cpu::CpuShare;
use super::error::{Failure, GuestError};
use super::limits::Limits;
use super::model::Update;
use super::sandbox::{Sandbox, guest_call, instantiate};
use crate::digest::Digest;

/// A compiled adapter component, ready to instantiate.
#[derive(Clone)]
pub struct AdapterComponent {
    digest: Digest,
    pre: AdapterPre<super::GuestState>,
}

impl AdapterComponent {
    /// Links an already compiled component.
    pub(super) fn from_compiled(
        runtime: &Runtime,
        digest: crate::digest::Digest,
        component: &wasmtime::component::Component,
    ) -> anyhow::Result<Self> {
        let pre = runtime
            .linker()
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("component {digest} needs imports wasmtwin does not grant"))?;
        super::contract::check(runtime, component, &digest, "adapter-api")?;
        let pre = AdapterPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "component {digest} is not a wasmtwin adapter (world wasmtwin:twin/adapter)"
                )
            })?;
        Ok(Self { digest, pre })
    }

    /// The digest of the component's bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

/// A live adapter instance serving one twin.
pub struct AdapterInstance {
    sandbox: Sandbox,
    adapter: Adapter,
}

impl AdapterInstance {
    /// Instantiates `component` on behalf of `twin`.
    pub async fn new(
        runtime: &Runtime,
        component: &AdapterComponent,
        twin: &str,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let mut sandbox = Sandbox::new(runtime, twin, limits);
        let adapter = instantiate!(
            sandbox,
            component.pre,
            format!(
                "instantiating adapter {} for twin `{twin}`",
                component.digest
            )
        )?;
        Ok(Self { sandbox, adapter })
    }

    /// Whether a failure made the instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.sandbox.is_poisoned()
    }

    /// Charges later calls to the twin's CPU share, and pauses them when
    /// the twin is over it.
    pub fn set_cpu(&mut self, cpu: CpuShare) {
        self.sandbox.set_cpu(cpu);
    }

    /// Holds later calls to `limits` (an instance that twins share takes
    /// each one's in turn).
    pub(super) fn set_limits(&mut self, limits: Limits) {
        self.sandbox.set_limits(limits);
    }

    /// The fuel the last call burned, whether it succeeded or not.
    pub(super) fn fuel_spent(&self) -> u64 {
        self.sandbox.fuel_spent()
    }

    /// Decodes a raw payload received on `topic` into updates.
    pub async fn decode(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Update>, GuestError> {
        let api = self.adapter.wasmtwin_twin_adapter_api();
        let (updates, _) = guest_call!(self.sandbox, "decode", api, call_decode(topic, payload))?;
        updates
            .into_iter()
            .map(|u| {
                let value: Value =
                    serde_json::from_str(&u.value).map_err(|e| Failure::BadOutput {
                        message: format!(
                            "the value of property `{}` is not valid JSON ({e})",
                            u.property
                        ),
                    })?;
                Ok(Update {
                    seq: u.seq,
                    ts_ms: u.ts_ms,
                    property: u.property,
                    value,
                })
            })
            .collect::<Result<Vec<_>, Failure>>()
            .map_err(|failure| self.sandbox.error("decode", failure))
    }

    /// Encodes a command for the device.
    pub async fn encode(&mut self, name: &str, payload: &Value) -> Result<Vec<u8>, GuestError> {
        let command = types::Command {
            name: name.to_string(),
            payload: payload.to_string(),
        };
        let api = self.adapter.wasmtwin_twin_adapter_api();
        guest_call!(self.sandbox, "encode", api, call_encode(&command)).map(|(bytes, _)| bytes)
    }
}
