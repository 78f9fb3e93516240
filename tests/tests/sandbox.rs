//! A misbehaving plugin harms only its own twin, the error says which twin
//! and why, and nothing outside the sandbox is reachable.

use std::time::{Duration, Instant};

use serde_json::json;
use wasmtwin::runtime::{Failure, GuestError, Limits, Runtime, RuntimeConfig, Update};
use wasmtwin::twin::{Applied, RestorePolicy, Twin};
use wasmtwin_tests::plugin_bytes;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        fuel: true,
        cache_dir: None,
    })
    .expect("runtime")
}

fn update(seq: u64) -> Update {
    Update {
        seq,
        ts_ms: 1_700_000_000_000 + seq,
        property: "counter".into(),
        value: json!(seq),
    }
}

/// A `prime` twin computing `primes` primes per update.
fn prime_twin(runtime: &Runtime, name: &str, primes: u32) -> Twin {
    let prime = runtime.load_model(&plugin_bytes("prime")).unwrap();
    Twin::create(
        runtime,
        &prime,
        name,
        Limits::default(),
        &json!({ "primes": primes }),
    )
    .unwrap()
}

fn guest_error(result: anyhow::Result<Applied>) -> GuestError {
    let err = result.expect_err("the update should fail");
    err.downcast::<GuestError>().expect("a guest error")
}

fn misbehaving(runtime: &Runtime, mode: &str, limits: Limits) -> Twin {
    let component = runtime.load_model(&plugin_bytes("misbehave")).unwrap();
    Twin::create(
        runtime,
        &component,
        &format!("bad-{mode}"),
        limits,
        &json!({ "mode": mode }),
    )
    .unwrap()
}

/// Recognises one kind of failure.
type IsFailure = fn(&Failure) -> bool;

#[test]
fn each_misbehaviour_is_stopped_and_named_while_a_neighbour_keeps_working() {
    let runtime = runtime();
    let mut good = prime_twin(&runtime, "good", 100);
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };

    let cases: [(&str, IsFailure, &str); 4] = [
        ("loop", |f| matches!(f, Failure::Fuel { .. }), "fuel"),
        ("hog", |f| matches!(f, Failure::Memory { .. }), "memory"),
        ("panic", |f| matches!(f, Failure::Trap { .. }), "trap"),
        ("trap", |f| matches!(f, Failure::Trap { .. }), "trap"),
    ];
    for (seq, (mode, is_expected, word)) in (1u64..).zip(cases) {
        let mut bad = misbehaving(&runtime, mode, limits);
        let started = Instant::now();
        let err = guest_error(bad.apply(&update(1)).map_err(Into::into));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{mode} took {:?}",
            started.elapsed()
        );
        assert!(
            is_expected(&err.failure),
            "{mode}: unexpected failure {err}"
        );
        assert_eq!(err.twin, format!("bad-{mode}"));
        let text = err.to_string();
        assert!(
            text.contains(word) && text.contains(&format!("bad-{mode}")),
            "{text}"
        );

        // The failed instance refuses further work until restored...
        let again = guest_error(bad.apply(&update(2)).map_err(Into::into));
        assert_eq!(again.failure, Failure::Poisoned);
        // ...and the neighbour is untouched.
        assert!(matches!(
            good.apply(&update(seq)).unwrap(),
            Applied::Changed(_)
        ));
    }
    assert_eq!(good.state().updates_applied, 4);
}

#[test]
fn panics_are_reported_with_the_guest_message() {
    let runtime = runtime();
    let mut bad = misbehaving(&runtime, "panic", Limits::default());
    let err = guest_error(bad.apply(&update(1)).map_err(Into::into));
    assert!(
        err.to_string().contains("misbehave was told to panic"),
        "{err}"
    );
}

#[test]
fn the_deadline_stops_a_loop_when_fuel_would_not() {
    let runtime = runtime();
    let limits = Limits {
        fuel_per_call: u64::MAX / 2,
        deadline: Duration::from_millis(200),
        ..Limits::default()
    };
    let mut bad = misbehaving(&runtime, "loop", limits);
    let started = Instant::now();
    let err = guest_error(bad.apply(&update(1)).map_err(Into::into));
    assert!(
        matches!(err.failure, Failure::Deadline { millis: 200 }),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_failed_twin_resumes_from_its_last_checkpoint() {
    let runtime = runtime();
    let prime = runtime.load_model(&plugin_bytes("prime")).unwrap();
    let mut twin = prime_twin(&runtime, "p", 500);
    for seq in 1..=10 {
        twin.apply(&update(seq)).unwrap();
    }
    let checkpoint = twin.checkpoint().unwrap();

    // Starve the next call of fuel: the instance fails and is poisoned.
    let mut starved = Twin::restore(
        &runtime,
        &prime,
        &checkpoint,
        Limits::default(),
        RestorePolicy::SameComponent,
    )
    .unwrap();
    starved.set_limits(Limits {
        fuel_per_call: 1_000,
        ..Limits::default()
    });
    let err = guest_error(starved.apply(&update(11)).map_err(Into::into));
    assert!(
        matches!(err.failure, Failure::Fuel { budget: 1_000 }),
        "{err}"
    );
    assert_eq!(
        starved.state().last_seq,
        Some(10),
        "a failed update must not count"
    );

    let mut resumed = Twin::restore(
        &runtime,
        &prime,
        &checkpoint,
        Limits::default(),
        RestorePolicy::SameComponent,
    )
    .unwrap();
    resumed.apply(&update(11)).unwrap();
    assert_eq!(resumed.state().updates_applied, 11);
    assert_eq!(resumed.state().properties["last_seq"], json!(11));
}

#[test]
fn nothing_outside_the_sandbox_is_granted() {
    let runtime = runtime();
    let mut probe = misbehaving(&runtime, "probe", Limits::default());
    probe.apply(&update(1)).unwrap();
    let props = &probe.state().properties;
    assert!(
        props["file"].as_str().unwrap().starts_with("denied"),
        "{props:?}"
    );
    assert_eq!(props["env_vars"], json!(0));
    assert!(
        props["net"].as_str().unwrap().starts_with("denied"),
        "{props:?}"
    );
}

#[test]
fn duplicates_are_dropped_by_sequence_number() {
    let runtime = runtime();
    let mut twin = prime_twin(&runtime, "p", 10);
    for seq in [1, 2, 2, 1, 3] {
        twin.apply(&update(seq)).unwrap();
    }
    assert_eq!(twin.state().updates_applied, 3);
    assert_eq!(twin.state().properties["updates_applied"], json!(3));
}

#[test]
fn a_refusal_leaves_the_twin_usable() {
    let runtime = runtime();
    let mut twin = prime_twin(&runtime, "p", 10);
    let err = twin.reconfigure(&json!({"primes": 0})).unwrap_err();
    assert!(matches!(err.failure, Failure::Refused { .. }), "{err}");
    assert!(err.to_string().contains("primes must be between"), "{err}");
    twin.apply(&update(1)).unwrap();
    twin.reconfigure(&json!({"primes": 20})).unwrap();
    let outcome = twin.act("status", &json!(null)).unwrap();
    assert_eq!(outcome.result, json!({"updates_applied": 1, "primes": 20}));
}
