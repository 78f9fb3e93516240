//! A model that misbehaves on purpose, to prove the sandbox holds. With
//! config `{"mode": "loop" | "hog" | "panic" | "trap"}` its first update
//! loops forever, allocates without bound, panics, or traps; `fragile`
//! behaves until an update's value is not a number, which it `unwrap()`s
//! as an ordinary plugin might. Built with `broken-release`, `good` traps
//! too: a new release with a bug, to swap in and roll back.

use serde::{Deserialize, Serialize};
use wasmtwin_sdk::{Effects, Error, Model, Update};

/// How to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Spin forever: stopped by fuel or the deadline.
    Loop,
    /// Allocate without bound: stopped by the memory limit.
    Hog,
    /// Panic: a trap whose message carries the panic text.
    Panic,
    /// Execute `unreachable`.
    Trap,
    /// Try to reach outside the sandbox (files, environment, network) and
    /// report what it got, so tests can check nothing was granted.
    Probe,
    /// Behave (so tests can check a healthy instance beside the others).
    Good,
    /// Sum the updates' values, panicking (an `unwrap()`) on one that is
    /// not a number.
    Fragile,
}

/// `{"mode": ...}`, default `good`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    mode: Mode,
}

impl Default for Config {
    fn default() -> Self {
        Config { mode: Mode::Good }
    }
}

/// The state: the mode and how many updates survived.
#[derive(Debug, Serialize, Deserialize)]
pub struct Misbehave {
    mode: Mode,
    applied: u64,
}

#[inline(never)]
fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

#[inline(never)]
fn hog() -> usize {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really used, not just reserved.
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

impl Model for Misbehave {
    type Config = Config;
    const NAME: &'static str = "misbehave";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn init(config: Config) -> Result<Self, Error> {
        Ok(Misbehave {
            mode: config.mode,
            applied: 0,
        })
    }

    fn on_update(&mut self, update: &Update, effects: &mut Effects) -> Result<(), Error> {
        match self.mode {
            Mode::Loop => spin(),
            Mode::Hog => {
                hog();
            }
            Mode::Panic => panic!("misbehave was told to panic"),
            Mode::Trap => trap(),
            Mode::Probe => probe(effects),
            Mode::Good if cfg!(feature = "broken-release") => trap(),
            Mode::Good => {}
            Mode::Fragile => {
                let value = update.value.as_f64().unwrap();
                effects.set("last_value", value);
            }
        }
        self.applied += 1;
        effects.set("applied", self.applied);
        Ok(())
    }
}

fn probe(effects: &mut Effects) {
    let file = match std::fs::read_to_string("/etc/hostname") {
        Ok(text) => format!("read {} bytes", text.len()),
        Err(e) => format!("denied: {e}"),
    };
    effects.set("file", file);
    effects.set("env_vars", std::env::vars().count() as u64);
    let net = match std::net::TcpStream::connect("127.0.0.1:1") {
        Ok(_) => "connected".to_string(),
        Err(e) => format!("denied: {e}"),
    };
    effects.set("net", net);
}

#[cfg(target_arch = "wasm32")]
fn trap() {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() {
    std::process::abort()
}

wasmtwin_sdk::export_model!(Misbehave);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_mode_applies_updates() {
        let mut model = Misbehave::init(Config::default()).unwrap();
        let update = Update {
            seq: 1,
            ts_ms: 0,
            property: "x".into(),
            value: serde_json::json!(1),
        };
        let mut effects = Effects::default();
        model.on_update(&update, &mut effects).unwrap();
        assert_eq!(
            effects.changes(),
            &[("applied".to_string(), serde_json::json!(1))]
        );
    }
}
