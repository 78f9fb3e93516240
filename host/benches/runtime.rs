//! Runtime benchmarks: what running a twin's model as a sandboxed Wasm
//! component costs, against the same model compiled natively in the same
//! run. `cargo bench -p wasmtwin --bench runtime` prints a Markdown table.
//!
//! Set `WASMTWIN_BENCH_QUICK=1` for a fast smoke run (fewer repetitions).

use std::time::{Duration, Instant};

use prime::Prime;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;
use serde_json::json;
use wasmtwin::runtime::{
    CacheOutcome, Limits, ModelInstance, Runtime, RuntimeConfig, UNCHECKED_RESERVATION, Update,
};
use wasmtwin_sdk::{Effects, Model};
use wasmtwin_tests::wait;

mod common;

use common::{paid_kib, quick, rss_kib};

/// The median of `samples`.
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn update(seq: u64) -> Update {
    Update {
        seq,
        ts_ms: 1_700_000_000_000 + seq,
        property: "counter".into(),
        value: json!(seq),
    }
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1.0 {
        format!("{} ns", d.as_nanos())
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

/// Median per-update time over `batches` batches of `per_batch` updates.
fn per_update(batches: usize, per_batch: u64, mut apply: impl FnMut(u64)) -> Duration {
    let mut seq = 0;
    apply(0); // warm up
    let mut samples: Vec<Duration> = (0..batches)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..per_batch {
                seq += 1;
                apply(seq);
            }
            started.elapsed() / per_batch as u32
        })
        .collect();
    median(&mut samples)
}

fn runtime(fuel: bool, cache_dir: Option<std::path::PathBuf>) -> Runtime {
    Runtime::new(RuntimeConfig {
        fuel,
        cache_dir,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// wasmtime's default reservation of 4 GiB per linear memory, under which
/// compiled code needs no bounds checks: the baseline for what a node's
/// smaller default costs a computing guest.
fn unchecked_runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: None,
        memory_reservation: UNCHECKED_RESERVATION,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn wasm_instance(runtime: &Runtime, bytes: &[u8], primes: u32) -> ModelInstance {
    let component = runtime.load_model(bytes).expect("prime loads");
    let mut instance = wait(ModelInstance::new(
        runtime,
        &component,
        "bench",
        Limits::default(),
    ))
    .expect("instantiate");
    wait(instance.init(&json!({ "primes": primes }))).expect("init");
    instance
}

fn bench_per_update(bytes: &[u8]) {
    let (batches, per_batch) = if quick() { (5, 20) } else { (31, 100) };
    println!(
        "\n### Per-update cost of `prime` (median of {batches} batches of {per_batch} updates)\n"
    );
    println!(
        "| primes per update | native | wasm, fuel off | wasm, fuel on | fuel on, 4 GiB reservation | fuel on / native | fuel on / fuel off | fuel on / 4 GiB reservation |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let metered = runtime(true, None);
    let unmetered = runtime(false, None);
    let unchecked = unchecked_runtime();
    for primes in [10u32, 1000, 25_000] {
        let per_batch = if primes >= 25_000 {
            per_batch / 10
        } else {
            per_batch
        };
        let config = serde_json::from_value(json!({ "primes": primes })).expect("config");
        let mut native = Prime::init(config).expect("native init");
        let native_t = per_update(batches, per_batch, |seq| {
            let mut effects = Effects::default();
            let u = update(seq);
            let u = wasmtwin_sdk::Update {
                seq: u.seq,
                ts_ms: u.ts_ms,
                property: u.property,
                value: u.value,
            };
            native.on_update(&u, &mut effects).expect("native update");
            std::hint::black_box(effects);
        });
        let mut off = wasm_instance(&unmetered, bytes, primes);
        let off_t = per_update(batches, per_batch, |seq| {
            std::hint::black_box(wait(off.on_update(&update(seq))).expect("update"));
        });
        let mut on = wasm_instance(&metered, bytes, primes);
        let on_t = per_update(batches, per_batch, |seq| {
            std::hint::black_box(wait(on.on_update(&update(seq))).expect("update"));
        });
        let mut spacious = wasm_instance(&unchecked, bytes, primes);
        let spacious_t = per_update(batches, per_batch, |seq| {
            std::hint::black_box(wait(spacious.on_update(&update(seq))).expect("update"));
        });
        println!(
            "| {primes} | {} | {} | {} | {} | {:.2}× | {:.2}× | {:.2}× |",
            fmt(native_t),
            fmt(off_t),
            fmt(on_t),
            fmt(spacious_t),
            on_t.as_secs_f64() / native_t.as_secs_f64(),
            on_t.as_secs_f64() / off_t.as_secs_f64(),
            on_t.as_secs_f64() / spacious_t.as_secs_f64()
        );
    }
}

fn bench_compile_and_instantiate(bytes: &[u8]) {
    let rounds = if quick() { 3 } else { 9 };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cold = Vec::new();
    let mut disk = Vec::new();
    let mut memory = Vec::new();
    for round in 0..rounds {
        let cache = dir.path().join(format!("cache-{round}"));
        let rt = runtime(true, Some(cache.clone()));
        let started = Instant::now();
        let (_, _, outcome) = rt.compile(bytes).expect("compile");
        cold.push(started.elapsed());
        assert_eq!(outcome, CacheOutcome::Compiled);
        let started = Instant::now();
        let (_, _, outcome) = rt.compile(bytes).expect("compile");
        memory.push(started.elapsed());
        assert_eq!(outcome, CacheOutcome::Memory);
        let fresh = runtime(true, Some(cache));
        let started = Instant::now();
        let (_, _, outcome) = fresh.compile(bytes).expect("compile");
        disk.push(started.elapsed());
        assert_eq!(outcome, CacheOutcome::Disk);
    }
    let (cold, disk, memory) = (median(&mut cold), median(&mut disk), median(&mut memory));
    println!(
        "\n### Compiling `prime` ({} KiB), median of {rounds}\n",
        bytes.len() / 1024
    );
    println!("| cold compile | from disk cache | from memory cache | cold / disk |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {:.0}× |",
        fmt(cold),
        fmt(disk),
        fmt(memory),
        cold.as_secs_f64() / disk.as_secs_f64()
    );

    let rt = runtime(true, None);
    let component = rt.load_model(bytes).expect("load");
    let count = if quick() { 20 } else { 200 };
    let mut samples: Vec<Duration> = (0..count)
        .map(|_| {
            let started = Instant::now();
            let mut instance = wait(ModelInstance::new(&rt, &component, "i", Limits::default()))
                .expect("instantiate");
            wait(instance.init(&json!({}))).expect("init");
            started.elapsed()
        })
        .collect();
    let instantiate = median(&mut samples);
    let mut native: Vec<Duration> = (0..count)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(Prime::init(Default::default()).expect("init"));
            started.elapsed()
        })
        .collect();
    println!("\n### Starting a twin (median of {count})\n");
    println!("| wasm: instantiate + init | native: init |");
    println!("|---:|---:|");
    println!("| {} | {} |", fmt(instantiate), fmt(median(&mut native)));
}

fn bench_idle_memory(bytes: &[u8]) {
    let count = if quick() { 100 } else { 1000 };
    let rt = runtime(true, None);
    let component = rt.load_model(bytes).expect("load");
    // Instantiate once first so shared code and engine state are resident.
    let _warm = wasm_instance(&rt, bytes, 1000);
    let (before, paid_before) = (rss_kib(), paid_kib());
    let instances: Vec<ModelInstance> = (0..count)
        .map(|i| {
            let mut instance = wait(ModelInstance::new(
                &rt,
                &component,
                &format!("idle-{i}"),
                Limits::default(),
            ))
            .expect("instantiate");
            wait(instance.init(&json!({}))).expect("init");
            instance
        })
        .collect();
    let (after, paid_after) = (rss_kib(), paid_kib());
    let per_instance = after.saturating_sub(before) as f64 / count as f64;
    let paid_per_instance = paid_after.saturating_sub(paid_before) as f64 / count as f64;
    let before_native = rss_kib();
    let natives: Vec<Prime> = (0..count)
        .map(|_| Prime::init(Default::default()).expect("init"))
        .collect();
    let native_per = rss_kib().saturating_sub(before_native) as f64 / count as f64;
    println!("\n### Resident memory of {count} idle `prime` twins\n");
    // Paid: PSS plus page tables, what the machine pays (see ingest.rs).
    println!(
        "| wasm, per instance (RSS) | paid (PSS + page tables) | native, per model | wasm total (RSS) |"
    );
    println!("|---:|---:|---:|---:|");
    println!(
        "| {per_instance:.1} KiB | {paid_per_instance:.1} KiB | {native_per:.2} KiB | {:.1} MiB |",
        after.saturating_sub(before) as f64 / 1024.0
    );
    drop(instances);
    drop(natives);
}

/// The spans one PT message creates on its way through a node, as the
/// node creates them (physical, worker): the message, decode, model call
/// and change stream, commit, acknowledgement.
fn one_message_spans(message: &Publish) {
    let root = wasmtwin::physical::message_span("bench-client", message);
    root.record("twin", "bench");
    let _in_message = root.enter();
    drop(wasmtwin::trace_span!("adapter.decode").entered());
    {
        let _model = wasmtwin::trace_span!("model.apply", updates = 1usize).entered();
        drop(wasmtwin::trace_span!("changes.publish", subscribers = 0usize).entered());
    }
    drop(wasmtwin::trace_span!("store.commit"));
    drop(wasmtwin::trace_span!(parent: &root, "mqtt.ack").entered());
}

/// What tracing adds to a message's path: its spans with no subscriber at
/// all (the code before traces), with the node's filter when traces are
/// off (the default), and recorded as OpenTelemetry spans (sampled, not
/// exported), against the cheapest model call (`prime`, 10 primes, fuel
/// on) in the same run. The modes take turns in every round, so a change
/// in the machine's load hits each. A subscriber set per thread, as here,
/// asks its filter at every span; the node's global one caches the answer
/// per callsite, so "off" costs at most this.
fn bench_trace_spans(bytes: &[u8]) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let (rounds, per_round) = if quick() { (3, 200) } else { (21, 5_000) };
    let filter = |exporting| {
        tracing_subscriber::EnvFilter::new(format!(
            "info,{}",
            wasmtwin::telemetry::filter_directives(exporting)
        ))
    };
    let none = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let off = tracing::Dispatch::new(tracing_subscriber::registry().with(filter(false)));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let on = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(filter(true))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"))),
    );
    let mut model = wasm_instance(&runtime(true, None), bytes, 10);
    let message = Publish::new("dev/bench", QoS::AtLeastOnce, vec![0u8; 64], None);
    let mut spans = || one_message_spans(&message);
    let mut seq = 0;
    let mut samples: [Vec<Duration>; 4] = Default::default();
    let time = |work: &mut dyn FnMut()| {
        work(); // warm up
        let started = Instant::now();
        for _ in 0..per_round {
            work();
        }
        started.elapsed() / per_round
    };
    for round in 0..rounds {
        for turn in 0..4 {
            let which = (round + turn) % 4;
            samples[which].push(match which {
                0 => time(&mut || {
                    seq += 1;
                    std::hint::black_box(wait(model.on_update(&update(seq))).expect("update"));
                }),
                1 => tracing::dispatcher::with_default(&none, || time(&mut spans)),
                2 => tracing::dispatcher::with_default(&off, || time(&mut spans)),
                _ => tracing::dispatcher::with_default(&on, || time(&mut spans)),
            });
        }
    }
    let [model_t, none_t, off_t, on_t] = samples.map(|mut s| median(&mut s));
    println!(
        "\n### Trace spans of one PT message (median of {rounds} rounds of {per_round}, modes interleaved)\n"
    );
    println!(
        "| model call (reference) | spans, no subscriber | spans, traces off | spans, traces on | off − none, share of the model call | on − none, share of the model call |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let share =
        |t: Duration| 100.0 * (t.as_secs_f64() - none_t.as_secs_f64()) / model_t.as_secs_f64();
    println!(
        "| {} | {} | {} | {} | {:.2} % | {:.1} % |",
        fmt(model_t),
        fmt(none_t),
        fmt(off_t),
        fmt(on_t),
        share(off_t),
        share(on_t)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let bytes = wasmtwin_tests::plugin_bytes("prime");
    println!("## wasmtwin runtime benchmarks");
    bench_per_update(&bytes);
    bench_trace_spans(&bytes);
    bench_compile_and_instantiate(&bytes);
    bench_idle_memory(&bytes);
}
