//! The per-instance state a `Store` owns: the twin's name, its memory guard,
//! an empty WASI context, and the host imports of the WIT contract (log and
//! clock). Every capability a guest gets is granted here and nowhere else.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::model::wasmtwin::twin::{clock, log};
use super::cpu::CpuShare;
use super::guest_output::GuestOutput;

/// The most log records a guest may write per call; more are counted and
/// dropped so a chatty plugin cannot flood the host's log.
const LOG_RECORDS_PER_CALL: u32 = 256;
/// Longest log message kept, in bytes.
const LOG_MESSAGE_MAX: usize = 4096;

/// Tracks a guest's linear memory against its limit.
///
/// The total across all of an instance's memories counts, so a component
/// cannot escape the limit by declaring several memories.
#[derive(Debug)]
pub struct MemoryGuard {
    limit: usize,
    in_use: usize,
    /// The size a refused growth asked for, kept to explain the failure.
    pub refused: Option<usize>,
}

impl MemoryGuard {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            in_use: 0,
            refused: None,
        }
    }

    /// Changes the limit for later growth; memory already held stays.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }
}

impl wasmtime::ResourceLimiter for MemoryGuard {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.in_use - current.min(self.in_use) + desired;
        if after > self.limit {
            self.refused = Some(after);
            // An error (not `Ok(false)`) traps at once: a Rust guest would
            // otherwise abort with a vaguer "allocation failed" message.
            return Err(wasmtime::format_err!("memory limit exceeded"));
        }
        self.in_use = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a legitimate model needs few.
        Ok(desired <= 100_000)
    }
}

/// What a twin's `Store` carries.
pub struct GuestState {
    twin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    /// The memory limit, consulted by wasmtime on every growth.
    pub memory: MemoryGuard,
    /// The guest's standard error, kept to explain panics.
    pub stderr: GuestOutput,
    log_records: u32,
    logs_dropped: u64,
    /// When the call under way must end.
    deadline: Instant,
    /// The twin's CPU account, once its worker gives it one.
    cpu: Option<CpuShare>,
    /// Fuel left when the call's use was last charged to `cpu`.
    fuel_mark: u64,
}

impl GuestState {
    /// State for one instance of `twin`'s component, with `memory_limit`
    /// bytes of linear memory.
    pub fn new(twin: Arc<str>, memory_limit: usize) -> Self {
        let stderr = GuestOutput::new(twin.clone());
        // Nothing is granted: no preopened directories, no environment, no
        // arguments, no network (TCP/UDP and name lookup denied). Standard
        // output and error go to the host's log.
        let wasi = WasiCtx::builder()
            .stdout(stderr.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            twin,
            wasi,
            table: ResourceTable::new(),
            memory: MemoryGuard::new(memory_limit),
            stderr,
            log_records: 0,
            logs_dropped: 0,
            deadline: Instant::now(),
            cpu: None,
            fuel_mark: 0,
        }
    }

    /// Charges the twin's CPU account with what the guest burned since
    /// the last charge, `fuel_left` being the store's fuel now; returns
    /// the account and how long the twin must pause, if it must.
    pub(super) fn charge_cpu(&mut self, fuel_left: u64) -> Option<(CpuShare, std::time::Duration)> {
        let burned = self.fuel_mark.saturating_sub(fuel_left);
        self.fuel_mark = fuel_left;
        let cpu = self.cpu.as_ref()?;
        let wait = cpu.charge(burned);
        (!wait.is_zero()).then(|| (cpu.clone(), wait))
    }

    /// Starts charging from `fuel` (the store's fuel as a call starts).
    pub(super) fn set_fuel_mark(&mut self, fuel: u64) {
        self.fuel_mark = fuel;
    }

    /// The twin's CPU account, if it has one.
    pub(super) fn cpu(&self) -> Option<&CpuShare> {
        self.cpu.as_ref()
    }

    /// Charges this instance's calls to `cpu` from now on.
    pub(super) fn set_cpu(&mut self, cpu: CpuShare) {
        self.cpu = Some(cpu);
    }

    /// The twin this state belongs to.
    pub fn twin(&self) -> &str {
        &self.twin
    }

    /// Resets the per-call budgets and sets the call's deadline; called
    /// before each call into the guest.
    pub fn start_call(&mut self, deadline: Instant) {
        self.log_records = 0;
        self.memory.refused = None;
        self.deadline = deadline;
    }

    /// When the call under way must end.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// How many log records were dropped for exceeding the budget.
    pub fn logs_dropped(&self) -> u64 {
        self.logs_dropped
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl log::Host for GuestState {
    fn write(&mut self, level: log::Level, message: String, fields: Vec<log::Field>) {
        if self.log_records >= LOG_RECORDS_PER_CALL {
            self.logs_dropped += 1;
            return;
        }
        self.log_records += 1;
        let message = truncate(message, LOG_MESSAGE_MAX);
        let fields: String = fields
            .iter()
            .map(|f| format!(" {}={}", f.key, f.value))
            .collect::<String>();
        let fields = truncate(fields, LOG_MESSAGE_MAX);
        let twin = &*self.twin;
        match level {
            log::Level::Trace => tracing::trace!(twin, "{message}{fields}"),
            log::Level::Debug => tracing::debug!(twin, "{message}{fields}"),
            log::Level::Info => tracing::info!(twin, "{message}{fields}"),
            log::Level::Warn => tracing::warn!(twin, "{message}{fields}"),
            log::Level::Error => tracing::error!(twin, "{message}{fields}"),
        }
    }
}

impl clock::Host for GuestState {
    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

impl super::bindings::types::Host for GuestState {}
