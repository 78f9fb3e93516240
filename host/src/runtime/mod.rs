//! The WebAssembly runtime: one wasmtime [`Engine`] per process, compiled
//! components cached by digest, and one `Store` per twin instance with its
//! fuel, memory and deadline limits.
//!
//! Every call into a guest is async: it runs on a fiber that yields to the
//! caller's executor at each epoch tick ([`EPOCH_TICK`]), so a long call
//! never holds one of the twins' shared threads, and a deadline interrupts
//! it wherever it is. Drive the futures on a tokio runtime (or any
//! executor); from synchronous code, `block_on` them.
//!
//! The runtime knows components and limits, nothing of MQTT, HTTP or specs.

mod adapter;
pub mod bindings;
mod cache;
mod contract;
pub mod cpu;
mod error;
mod guest_output;
mod guest_state;
mod limits;
mod model;
mod sandbox;
mod shared_adapter;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

pub use adapter::{AdapterComponent, AdapterInstance};
pub use cache::{CacheOutcome, write_atomically};
pub use error::{Failure, GuestError};
pub use guest_state::GuestState;
pub use limits::Limits;
pub use model::{ActionOutcome, Description, ModelComponent, ModelInstance, Update, UpdateEffects};
pub use shared_adapter::{SharedAdapter, Turn};

use crate::digest::Digest;

/// How often the epoch advances: deadlines are enforced to this precision,
/// and a running call yields to other twins this often.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Virtual address space a node reserves for each linear memory by
/// default: the spec's default memory limit (64 MiB), so that a twin within
/// it never has its memory moved (a move copies it, page by page).
///
/// wasmtime's own default, 4 GiB, lets compiled code skip bounds checks.
/// Its price is density: every memory gets page tables of its own (about
/// 10 KiB an awake twin, which holds two), and 128 TiB of user address
/// space holds about 32,000 such memories, so a node could keep no more
/// than about 16,000 twins awake. With 64 MiB each access is checked in
/// code instead: about 5 % more time in a computing guest (README,
/// *Benchmarks*). `--memory-reservation 4GiB` restores wasmtime's default.
pub const DEFAULT_MEMORY_RESERVATION: u64 = 64 << 20;

/// wasmtime's own default reservation: from this size up, a 32-bit
/// memory's every index falls inside it and its guards, and compiled code
/// needs no bounds checks. A larger one gains nothing.
pub const UNCHECKED_RESERVATION: u64 = 4 << 30;

/// The guard after a bounds-checked memory. The checks do the work; the
/// guard only spares a check the addition of a small static offset.
const CHECKED_GUARD: u64 = 64 << 10;

/// How a [`Runtime`] is built.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Meter fuel, so every call can be bounded in work. Turning it off is
    /// only for measuring what metering costs.
    pub fuel: bool,
    /// Where to keep compiled components across processes; `None` keeps
    /// them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Virtual address space reserved for each linear memory, in bytes
    /// ([`DEFAULT_MEMORY_RESERVATION`]).
    pub memory_reservation: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            fuel: true,
            cache_dir: default_cache_dir(),
            memory_reservation: DEFAULT_MEMORY_RESERVATION,
        }
    }
}

/// `$XDG_CACHE_HOME/wasmtwin/components`, or `~/.cache/wasmtwin/components`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wasmtwin").join("components"))
}

/// The engine, its linkers and its compiled-component cache. Share one per
/// process (it is cheap to clone).
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    fuel: bool,
    cache: cache::ComponentCache,
    linker: Linker<GuestState>,
    /// Components linked and checked, by digest, which every twin of one
    /// shares: each twin linked its own before, 2.4 KiB a twin for its two.
    linked: Mutex<Linked>,
}

#[derive(Default)]
struct Linked {
    models: HashMap<Digest, ModelComponent>,
    adapters: HashMap<Digest, AdapterComponent>,
}

#[cfg(test)]
impl Runtime {
    /// A runtime that meters fuel, as a node's does, with no component
    /// cache on disk: what unit tests run guests on.
    pub(crate) fn for_tests() -> Self {
        Self::new(RuntimeConfig {
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .expect("a runtime")
    }
}

impl Runtime {
    /// Builds the engine and starts the epoch ticker that enforces deadlines.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(config.fuel)
            .epoch_interruption(true)
            .memory_reservation(config.memory_reservation);
        if config.memory_reservation < UNCHECKED_RESERVATION {
            wasm.memory_guard_size(CHECKED_GUARD);
        }
        let engine = Engine::new(&wasm)
            .map_err(anyhow::Error::from)
            .context("creating the wasm engine")?;
        let cache = cache::ComponentCache::new(&engine, config.cache_dir)?;

        // One linker serves both worlds: they import the same interfaces.
        // WASI is linked in its async form: the sync form blocks on a
        // runtime of its own inside every stream call, which panics on the
        // twins' threads (a guest's panic message is such a call).
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        bindings::model::Model::add_to_linker::<GuestState, HasSelf<GuestState>>(
            &mut linker,
            |s| s,
        )
        .map_err(anyhow::Error::from)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("starting the epoch thread")?;

        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                fuel: config.fuel,
                cache,
                linker,
                linked: Mutex::default(),
            }),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Whether calls are fuel-metered.
    pub fn meters_fuel(&self) -> bool {
        self.inner.fuel
    }

    pub(crate) fn linker(&self) -> &Linker<GuestState> {
        &self.inner.linker
    }

    /// Compiles `bytes` (or fetches the cached compilation), reporting how.
    pub fn compile(
        &self,
        bytes: &[u8],
    ) -> anyhow::Result<(Digest, wasmtime::component::Component, CacheOutcome)> {
        let digest = Digest::of(bytes);
        let started = Instant::now();
        let (component, outcome) = self
            .inner
            .cache
            .get_or_compile(&self.inner.engine, &digest, bytes)
            .with_context(|| format!("compiling component {digest}"))?;
        tracing::debug!(%digest, ?outcome, elapsed = ?started.elapsed(), "component ready");
        Ok((digest, component, outcome))
    }

    /// Forgets compiled components held in memory; the disk cache stays.
    pub fn clear_memory_cache(&self) {
        self.inner.cache.clear_memory();
        *self
            .inner
            .linked
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Linked::default();
    }

    /// Compiles `bytes` as a model component and checks it exports the
    /// model world.
    pub fn load_model(&self, bytes: &[u8]) -> anyhow::Result<ModelComponent> {
        let (digest, component, _) = self.compile(bytes)?;
        self.linked(
            digest,
            |linked| &mut linked.models,
            || ModelComponent::from_compiled(self, digest, &component),
        )
    }

    /// Compiles `bytes` as an adapter component and checks it exports the
    /// adapter world.
    pub fn load_adapter(&self, bytes: &[u8]) -> anyhow::Result<AdapterComponent> {
        let (digest, component, _) = self.compile(bytes)?;
        self.linked(
            digest,
            |linked| &mut linked.adapters,
            || AdapterComponent::from_compiled(self, digest, &component),
        )
    }

    /// The component of `digest` as `link` makes it, made once.
    fn linked<T: Clone>(
        &self,
        digest: Digest,
        kind: fn(&mut Linked) -> &mut HashMap<Digest, T>,
        link: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let lock = || {
            self.inner
                .linked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if let Some(known) = kind(&mut lock()).get(&digest) {
            return Ok(known.clone());
        }
        // Linked outside the lock: checking a component's contract takes
        // a while, and other components need not wait for it.
        let fresh = link()?;
        Ok(kind(&mut lock()).entry(digest).or_insert(fresh).clone())
    }
}
