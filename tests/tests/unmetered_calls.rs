//! A call into a guest whose fuel is not metered does no more on the host
//! than a metered call: it never asks its store for fuel. (It did, and got
//! an error every time: with `RUST_BACKTRACE` set, each captured a
//! backtrace, and an unmetered call took 2.5 times a metered one in the
//! runtime bench's "fuel off" column.) This binary counts the allocations
//! each thread makes, an error being one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use serde_json::json;
use wasmtwin::runtime::{Limits, ModelInstance, Runtime, RuntimeConfig, Update};
use wasmtwin_tests::{plugin_bytes, wait};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: the thread's counter may already be gone while the
        // thread winds down.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations on this thread (guest calls run on it, on their fibers)
/// per `on_update` of a `prime` instance, fuel metered or not.
fn allocations_per_call(fuel: bool) -> u64 {
    const CALLS: u64 = 100;
    let runtime = Runtime::new(RuntimeConfig {
        fuel,
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .expect("a runtime");
    let prime = runtime.load_model(&plugin_bytes("prime")).expect("prime");
    let mut instance =
        wait(ModelInstance::new(&runtime, &prime, "p", Limits::default())).expect("an instance");
    wait(instance.init(&json!({ "primes": 10 }))).expect("init");
    let update = |seq: u64| Update {
        seq,
        ts_ms: 1_700_000_000_000 + seq,
        property: "counter".into(),
        value: json!(seq),
    };
    wait(instance.on_update(&update(0))).expect("a first update");
    let before = ALLOCATIONS.with(Cell::get);
    for seq in 1..=CALLS {
        wait(instance.on_update(&update(seq))).expect("an update");
    }
    (ALLOCATIONS.with(Cell::get) - before) / CALLS
}

#[test]
fn an_unmetered_call_allocates_no_more_than_a_metered_one() {
    let metered = allocations_per_call(true);
    let unmetered = allocations_per_call(false);
    assert!(
        unmetered <= metered,
        "an unmetered call made {unmetered} allocations, a metered one {metered}"
    );
}
