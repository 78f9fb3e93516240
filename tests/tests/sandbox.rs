//! A misbehaving plugin harms only its own twin, the error says which twin
//! and why, and nothing outside the sandbox is reachable; a memory that
//! outgrows its address space is moved, not lost.

use std::time::{Duration, Instant};

use serde_json::json;
use wasmtwin::runtime::{Failure, GuestError, Limits, Runtime, RuntimeConfig, Update};
use wasmtwin::twin::{Applied, RestorePolicy, Twin};
use wasmtwin_tests::plugin_bytes;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
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
async fn prime_twin(runtime: &Runtime, name: &str, primes: u32) -> Twin {
    let prime = runtime.load_model(&plugin_bytes("prime")).unwrap();
    Twin::create(
        runtime,
        &prime,
        name,
        Limits::default(),
        &json!({ "primes": primes }),
    )
    .await
    .unwrap()
}

/// A twin restored from `checkpoint` of the same component.
async fn restored(
    runtime: &Runtime,
    model: &wasmtwin::runtime::ModelComponent,
    checkpoint: &wasmtwin::checkpoint::Checkpoint,
) -> Twin {
    Twin::restore(
        runtime,
        model,
        checkpoint,
        Limits::default(),
        RestorePolicy::SameComponent,
    )
    .await
    .unwrap()
}

fn guest_error(result: anyhow::Result<Applied>) -> GuestError {
    let err = result.expect_err("the update should fail");
    err.downcast::<GuestError>().expect("a guest error")
}

async fn misbehaving(runtime: &Runtime, mode: &str, limits: Limits) -> Twin {
    let component = runtime.load_model(&plugin_bytes("misbehave")).unwrap();
    Twin::create(
        runtime,
        &component,
        &format!("bad-{mode}"),
        limits,
        &json!({ "mode": mode }),
    )
    .await
    .unwrap()
}

/// Recognises one kind of failure.
type IsFailure = fn(&Failure) -> bool;

#[tokio::test]
async fn each_misbehaviour_is_stopped_and_named_while_a_neighbour_keeps_working() {
    let runtime = runtime();
    let mut good = prime_twin(&runtime, "good", 100).await;
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
        let mut bad = misbehaving(&runtime, mode, limits).await;
        let started = Instant::now();
        let err = guest_error(bad.apply(&update(1)).await.map_err(Into::into));
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
        let again = guest_error(bad.apply(&update(2)).await.map_err(Into::into));
        assert_eq!(again.failure, Failure::Poisoned);
        // ...and the neighbour is untouched.
        assert!(matches!(
            good.apply(&update(seq)).await.unwrap(),
            Applied::Changed(_)
        ));
    }
    assert_eq!(good.state().updates_applied, 4);
}

#[tokio::test]
async fn panics_are_reported_with_the_guest_message() {
    let runtime = runtime();
    let mut bad = misbehaving(&runtime, "panic", Limits::default()).await;
    let err = guest_error(bad.apply(&update(1)).await.map_err(Into::into));
    assert!(
        err.to_string().contains("misbehave was told to panic"),
        "{err}"
    );
}

#[tokio::test]
async fn the_deadline_stops_a_loop_when_fuel_would_not() {
    let runtime = runtime();
    let limits = Limits {
        fuel_per_call: u64::MAX / 2,
        deadline: Duration::from_millis(200),
        ..Limits::default()
    };
    let mut bad = misbehaving(&runtime, "loop", limits).await;
    let started = Instant::now();
    let err = guest_error(bad.apply(&update(1)).await.map_err(Into::into));
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

#[tokio::test]
async fn a_failed_twin_resumes_from_its_last_checkpoint() {
    let runtime = runtime();
    let prime = runtime.load_model(&plugin_bytes("prime")).unwrap();
    let mut twin = prime_twin(&runtime, "p", 500).await;
    for seq in 1..=10 {
        twin.apply(&update(seq)).await.unwrap();
    }
    let checkpoint = twin.checkpoint().await.unwrap();

    // Starve the next call of fuel: the instance fails and is poisoned.
    let mut starved = restored(&runtime, &prime, &checkpoint).await;
    starved.set_limits(Limits {
        fuel_per_call: 1_000,
        ..Limits::default()
    });
    let err = guest_error(starved.apply(&update(11)).await.map_err(Into::into));
    assert!(
        matches!(err.failure, Failure::Fuel { budget: 1_000 }),
        "{err}"
    );
    assert_eq!(
        starved.state().last_seq,
        Some(10),
        "a failed update must not count"
    );

    let mut resumed = restored(&runtime, &prime, &checkpoint).await;
    resumed.apply(&update(11)).await.unwrap();
    assert_eq!(resumed.state().updates_applied, 11);
    assert_eq!(resumed.state().properties["last_seq"], json!(11));
}

#[tokio::test]
async fn nothing_outside_the_sandbox_is_granted() {
    let runtime = runtime();
    let mut probe = misbehaving(&runtime, "probe", Limits::default()).await;
    probe.apply(&update(1)).await.unwrap();
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

#[tokio::test]
async fn duplicates_are_dropped_by_sequence_number() {
    let runtime = runtime();
    let mut twin = prime_twin(&runtime, "p", 10).await;
    for seq in [1, 2, 2, 1, 3] {
        twin.apply(&update(seq)).await.unwrap();
    }
    assert_eq!(twin.state().updates_applied, 3);
    assert_eq!(twin.state().properties["updates_applied"], json!(3));
}

#[tokio::test]
async fn a_refusal_leaves_the_twin_usable() {
    let runtime = runtime();
    let mut twin = prime_twin(&runtime, "p", 10).await;
    let err = twin.reconfigure(&json!({"primes": 0})).await.unwrap_err();
    assert!(matches!(err.failure, Failure::Refused { .. }), "{err}");
    assert!(err.to_string().contains("primes must be between"), "{err}");
    twin.apply(&update(1)).await.unwrap();
    twin.reconfigure(&json!({"primes": 20})).await.unwrap();
    let outcome = twin.act("status", &json!(null)).await.unwrap();
    assert_eq!(outcome.result, json!({"updates_applied": 1, "primes": 20}));
}

/// A linear memory that outgrows the address space reserved for it is moved
/// to a larger reservation by a copy; the twin's state survives the move,
/// its snapshot and its restore into a memory that starts small again.
#[tokio::test]
async fn a_memory_that_outgrows_its_reservation_keeps_its_contents() {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: None,
        memory_reservation: 1 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let prime = runtime.load_model(&plugin_bytes("prime")).unwrap();
    // Eight MiB of state padding: eight times the reservation.
    let config = json!({ "primes": 10, "state_kib": 8192 });
    let mut twin = Twin::create(&runtime, &prime, "big", Limits::default(), &config)
        .await
        .unwrap();
    twin.apply(&update(1)).await.unwrap();
    let checkpoint = twin.checkpoint().await.unwrap();
    let bytes = |c: &wasmtwin::checkpoint::Checkpoint| -> usize {
        c.sections.iter().map(|(_, body)| body.len()).sum()
    };
    assert!(bytes(&checkpoint) > 8 << 20, "{} bytes", bytes(&checkpoint));

    let mut again = restored(&runtime, &prime, &checkpoint).await;
    again.apply(&update(2)).await.unwrap();
    assert_eq!(again.state().updates_applied, 2);
    assert_eq!(again.state().properties["last_seq"], json!(2));
    let next = again.checkpoint().await.unwrap();
    assert_eq!(
        bytes(&next),
        bytes(&checkpoint),
        "the padding came back whole"
    );
}
