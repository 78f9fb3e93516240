//! The seed paper's twin model: every status update of the device costs
//! the computation of the first N prime numbers before the state changes,
//! so the work a twin does per update is a knob (`{"primes": N}`) that can
//! be turned at runtime.
//! `{"state_kib": K}` pads the state with K KiB, to measure what moving a
//! twin of a given size costs; `{"state_encoding": "binary"}` writes its
//! snapshots in the SDK's binary encoding instead of JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wasmtwin_sdk::{
    ActionInfo, Effects, Error, Model, Outcome, PropertyInfo, StateEncoding, Update,
};

/// The largest N accepted, so a typo cannot make every update take minutes.
pub const MAX_PRIMES: u32 = 10_000_000;

/// The twin's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prime {
    /// How many primes each update computes.
    primes: u32,
    /// Updates applied since the twin was created.
    updates_applied: u64,
    /// Sequence number of the last update applied.
    last_seq: Option<u64>,
    /// Value carried by the last update applied.
    last_value: Value,
    /// The largest prime computed for the last update.
    last_prime: u64,
    /// Padding that makes the state `state_kib` KiB larger.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    ballast: String,
    /// How snapshots are written (absent from JSON ones: older releases
    /// wrote JSON only).
    #[serde(default, skip_serializing_if = "Encoding::is_json")]
    state_encoding: Encoding,
}

/// `state_encoding`: the SDK's encodings, as the configuration names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Json,
    Binary,
}

impl Encoding {
    fn is_json(&self) -> bool {
        *self == Encoding::Json
    }
}

/// The largest state padding accepted, in KiB.
pub const MAX_STATE_KIB: u32 = 64 * 1024;

/// `{"primes": N, "state_kib": K, "state_encoding": "json" | "binary"}`;
/// N defaults to 1000, K to 0, the encoding to JSON.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    primes: u32,
    state_kib: u32,
    state_encoding: Encoding,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            primes: 1000,
            state_kib: 0,
            state_encoding: Encoding::Json,
        }
    }
}

impl Config {
    /// The primes per update, the state padding and the encoding, if the
    /// first two are in range.
    fn checked(self) -> Result<(u32, String, Encoding), Error> {
        if self.primes == 0 || self.primes > MAX_PRIMES {
            return Err(Error::new(format!(
                "primes must be between 1 and {MAX_PRIMES}, got {}",
                self.primes
            )));
        }
        if self.state_kib > MAX_STATE_KIB {
            return Err(Error::new(format!(
                "state_kib must be at most {MAX_STATE_KIB}, got {}",
                self.state_kib
            )));
        }
        let ballast = "x".repeat(self.state_kib as usize * 1024);
        Ok((self.primes, ballast, self.state_encoding))
    }
}

/// Returns the `n`-th prime (the largest of the first `n`), found by trial
/// division by the primes before it, the way the paper's model spends CPU.
pub fn nth_prime(n: u32) -> u64 {
    let mut found: Vec<u64> = Vec::with_capacity(n as usize);
    let mut candidate = 2u64;
    while found.len() < n as usize {
        if found
            .iter()
            .take_while(|&&p| p * p <= candidate)
            .all(|&p| !candidate.is_multiple_of(p))
        {
            found.push(candidate);
        }
        candidate += 1;
    }
    found.last().copied().unwrap_or(0)
}

impl Model for Prime {
    type Config = Config;
    const NAME: &'static str = "prime";
    const VERSION: &'static str = if cfg!(feature = "next-release") {
        "0.2.0-next"
    } else {
        env!("CARGO_PKG_VERSION")
    };
    const PROPERTIES: &'static [PropertyInfo] = &[
        PropertyInfo::new(
            "updates_applied",
            "integer",
            "Updates applied since creation",
        ),
        PropertyInfo::new(
            "last_seq",
            "integer",
            "Sequence number of the last update applied",
        ),
        PropertyInfo::new("last_value", "object", "Value of the last update applied"),
        PropertyInfo::new(
            "last_prime",
            "integer",
            "Largest prime computed for the last update",
        ),
    ];
    const ACTIONS: &'static [ActionInfo] = &[ActionInfo::new(
        "status",
        "Returns the update count and the configured work per update",
    )
    .output(
        r#"{"type": "object", "properties": {"updates_applied": {"type": "integer"}, "primes": {"type": "integer"}}}"#,
    )];

    fn init(config: Config) -> Result<Self, Error> {
        let (primes, ballast, state_encoding) = config.checked()?;
        Ok(Prime {
            primes,
            updates_applied: 0,
            last_seq: None,
            last_value: Value::Null,
            last_prime: 0,
            ballast,
            state_encoding,
        })
    }

    fn reconfigure(&mut self, config: Config) -> Result<(), Error> {
        (self.primes, self.ballast, self.state_encoding) = config.checked()?;
        Ok(())
    }

    fn state_encoding(&self) -> StateEncoding {
        match self.state_encoding {
            Encoding::Json => StateEncoding::Json,
            Encoding::Binary => StateEncoding::Binary,
        }
    }

    fn on_update(&mut self, update: &Update, effects: &mut Effects) -> Result<(), Error> {
        // The work is per status update of the device (one sequence
        // number), as in the paper, however many properties it carries.
        if self.last_seq != Some(update.seq) {
            self.last_prime = nth_prime(self.primes);
        }
        self.updates_applied += 1;
        self.last_seq = Some(update.seq);
        self.last_value = update.value.clone();
        effects.set("updates_applied", self.updates_applied);
        effects.set("last_seq", update.seq);
        effects.set("last_value", self.last_value.clone());
        effects.set("last_prime", self.last_prime);
        Ok(())
    }

    fn on_action(
        &mut self,
        name: &str,
        _input: &Value,
        _outcome: &mut Outcome,
    ) -> Result<Value, Error> {
        match name {
            "status" => Ok(json!({
                "updates_applied": self.updates_applied,
                "primes": self.primes,
            })),
            other => Err(Error::new(format!("prime has no action `{other}`"))),
        }
    }
}

wasmtwin_sdk::export_model!(Prime);

#[cfg(test)]
mod tests {
    use super::*;

    fn update(seq: u64) -> Update {
        Update {
            seq,
            ts_ms: 1_700_000_000_000 + seq,
            property: "counter".into(),
            value: json!(seq * 2),
        }
    }

    #[test]
    fn nth_prime_matches_known_values() {
        assert_eq!(nth_prime(1), 2);
        assert_eq!(nth_prime(10), 29);
        assert_eq!(nth_prime(1000), 7919);
    }

    fn primes(primes: u32) -> Config {
        Config {
            primes,
            ..Config::default()
        }
    }

    #[test]
    fn pads_the_state_as_configured() {
        let model = Prime::init(Config {
            primes: 1,
            state_kib: 3,
            ..Config::default()
        })
        .unwrap();
        let bytes = wasmtwin_sdk::snapshot(&model).unwrap();
        assert!(bytes.len() > 3 * 1024 && bytes.len() < 3 * 1024 + 200);
        let too_big = Config {
            primes: 1,
            state_kib: MAX_STATE_KIB + 1,
            ..Config::default()
        };
        assert!(Prime::init(too_big).is_err());
    }

    #[test]
    fn counts_updates_and_keeps_the_last() {
        let mut model = Prime::init(primes(10)).unwrap();
        let mut effects = Effects::default();
        model.on_update(&update(1), &mut effects).unwrap();
        model.on_update(&update(2), &mut effects).unwrap();
        assert_eq!(model.updates_applied, 2);
        assert_eq!(model.last_seq, Some(2));
        assert_eq!(model.last_value, json!(4));
        assert_eq!(model.last_prime, 29);
    }

    #[test]
    fn computes_once_per_status_update_whatever_it_carries() {
        let mut model = Prime::init(primes(10)).unwrap();
        let mut effects = Effects::default();
        model.on_update(&update(1), &mut effects).unwrap();
        model.primes = 1;
        // Another property of the same status update: no new work.
        model.on_update(&update(1), &mut effects).unwrap();
        assert_eq!(model.last_prime, 29);
        model.on_update(&update(2), &mut effects).unwrap();
        assert_eq!(model.last_prime, 2);
    }

    #[test]
    fn refuses_zero_primes_and_keeps_the_old_setting() {
        let mut model = Prime::init(Config::default()).unwrap();
        assert!(model.reconfigure(primes(0)).is_err());
        assert_eq!(model.primes, 1000);
        assert!(Prime::init(primes(MAX_PRIMES + 1)).is_err());
    }

    #[test]
    fn snapshot_round_trips() {
        let mut model = Prime::init(Config {
            primes: 5,
            state_kib: 2,
            ..Config::default()
        })
        .unwrap();
        model
            .on_update(&update(7), &mut Effects::default())
            .unwrap();
        let bytes = wasmtwin_sdk::snapshot(&model).unwrap();
        let back: Prime = wasmtwin_sdk::restore(&bytes, Prime::STATE_VERSION).unwrap();
        assert_eq!(back, model);
        let err = wasmtwin_sdk::restore::<Prime>(&bytes, Prime::STATE_VERSION + 1).unwrap_err();
        assert!(err.message().contains("newer"), "{err}");
    }

    #[test]
    fn a_binary_configured_twin_snapshots_in_binary_and_can_go_back_to_json() {
        let config = |encoding: &str| -> Config {
            serde_json::from_value(json!({"state_kib": 4, "state_encoding": encoding})).unwrap()
        };
        let mut model = Prime::init(config("binary")).unwrap();
        model
            .on_update(&update(3), &mut Effects::default())
            .unwrap();
        let binary = wasmtwin_sdk::snapshot(&model).unwrap();
        assert_eq!(binary.first(), Some(&0), "the SDK's binary marker");
        let back: Prime = wasmtwin_sdk::restore(&binary, Prime::STATE_VERSION).unwrap();
        assert_eq!(back, model, "the encoding itself survives a restore");
        model.reconfigure(config("json")).unwrap();
        let json = wasmtwin_sdk::snapshot(&model).unwrap();
        assert_eq!(json.first(), Some(&b'{'));
        assert!(
            !String::from_utf8_lossy(&json).contains("state_encoding"),
            "a JSON snapshot keeps the layout older releases wrote"
        );
        assert!(serde_json::from_value::<Config>(json!({"state_encoding": "yaml"})).is_err());
    }
}
