//! Control-plane benchmark, in two parts.
//!
//! 1. **Cost at scale** (in process): 10,000 twins applied, running on 3
//!    nodes that report every twin in each heartbeat. Measured: an apply;
//!    a heartbeat (JSON decode + ingest) per twin it carries; a tick when
//!    nothing changed; a tick when 1 % of the twins broke their
//!    requirements (the change-driven reconcile); and, as the baseline in
//!    the same run, a tick that looks at every twin (the full resync a
//!    level-triggered reconciler would do every time), interleaved A/B.
//! 2. **Time to be entangled again** (real processes: Mosquitto,
//!    `wasmtwin control`, three `wasmtwin host` behind fault proxies), per
//!    cause: a slow network path (200 ms each way on the twin's link) and a
//!    model that traps after a swap. Split into detecting (requirement
//!    broken → the decision, which includes the policy's hold), acting
//!    (decision → action done) and recovering (→ entangled again, as the
//!    window forgets the bad samples). Without the control plane the twin
//!    stays disentangled for as long as the fault lasts.
//!
//! `cargo bench -p wasmtwin --bench control` prints Markdown tables.
//! `WASMTWIN_BENCH_QUICK=1` runs a small smoke version (1,000 twins, the
//! network cause only).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::quick;
use serde_json::Value;
use wasmtwin::control::fleet::{
    BrokerPath, Capacity, Heartbeat, Timeouts, TwinObservation, spec_digest,
};
use wasmtwin::control::reconcile::ControlConfig;
use wasmtwin::digest::Digest;
use wasmtwin::signing::TrustPolicy;
use wasmtwin::spec::TwinSpec;
use wasmtwin::twin::entanglement::{Parts, Percentiles, Report, Status};
use wasmtwin_tests::faults::Direction;
use wasmtwin_tests::fleet::{Device, Fleet};
use wasmtwin_tests::plugin;

const NODES: usize = 3;

fn spec(name: &str) -> TwinSpec {
    let text = format!(
        r#"{{"apiVersion": "wasmtwin.dev/v1alpha1", "kind": "DigitalTwin",
            "metadata": {{"name": "{name}"}},
            "spec": {{"model": {{"ref": "{}", "config": {{"mode": "good"}}}},
                     "physical": {{"topics": ["dev/{name}"], "adapter": {{"ref": "{}"}}}}}}}}"#,
        plugin("misbehave").display(),
        plugin("json-adapter").display()
    );
    TwinSpec::parse(&text).expect("a valid spec")
}

fn report(entangled: bool) -> Report {
    let ms = if entangled { 12.0 } else { 1500.0 };
    Report {
        timeliness_ms: Some(Percentiles {
            p50: ms,
            p95: ms,
            p99: ms,
            required: ms,
        }),
        timeliness_share: if entangled { 1.0 } else { 0.0 },
        reliability: 1.0,
        availability: 1.0,
        odte: if entangled { 1.0 } else { 0.0 },
        updates_in_window: 30,
        updates_expected: 30.0,
        status: if entangled {
            Status::Entangled
        } else {
            Status::Disentangled
        },
        reasons: vec![],
        parts: Parts {
            transit_ms: Some(ms - 2.0),
            queue_ms: Some(1.0),
            model_ms: Some(1.0),
            rate_hz: 1.0,
            gaps: 0,
        },
    }
}

/// Node `n`'s heartbeat, with the twins `i % NODES == n`; those in
/// `broken` report a slow path.
fn heartbeat(n: usize, twins: &[(String, String)], model: &Digest, broken: &[usize]) -> Heartbeat {
    Heartbeat {
        name: format!("node-{n}"),
        url: format!("http://127.0.0.1:{}", 1 + n),
        zone: "edge".into(),
        domain: "plant-a".into(),
        labels: BTreeMap::new(),
        capacity: Capacity {
            cores: 64,
            ..Capacity::default()
        },
        paths: vec![BrokerPath {
            broker: "127.0.0.1:1883".into(),
            rtt_ms: Some(1.0),
            lost: 0,
            probes: 10,
        }],
        twins: twins
            .iter()
            .enumerate()
            .filter(|(i, _)| i % NODES == n)
            .map(|(i, (name, digest))| TwinObservation {
                name: name.clone(),
                spec_digest: digest.clone(),
                model_digest: *model,
                updates_applied: 100,
                guest_errors: 0,
                last_error: None,
                can_roll_back: false,
                cpu_share_millis: None,
                cpu_utilization: None,
                cpu_throttled: None,
                entanglement: report(!broken.contains(&i)),
            })
            .collect(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn cost(twins: usize) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let config = ControlConfig {
        timeouts: Timeouts {
            unreachable_ms: 3_600_000,
            gone_ms: 7_200_000,
        },
        checkpoint_every: Duration::from_secs(3600),
        ..ControlConfig::new(
            TrustPolicy::from_args(None, true).expect("a policy"),
            vec![plugin("misbehave").parent().expect("plugins").to_path_buf()],
        )
    };
    let control = wasmtwin::control::open(dir.path(), None, config, None).expect("a control plane");

    let started = Instant::now();
    let mut named = Vec::with_capacity(twins);
    for i in 0..twins {
        let spec = spec(&format!("t{i}"));
        let digest = spec_digest(&spec);
        control.apply(spec, "bench").await.expect("applied");
        named.push((format!("t{i}"), digest));
    }
    let apply = started.elapsed() / twins as u32;
    let model = Digest::of(&std::fs::read(plugin("misbehave")).expect("the model"));

    let beats: Vec<String> = (0..NODES)
        .map(|n| serde_json::to_string(&heartbeat(n, &named, &model, &[])).expect("JSON"))
        .collect();
    let ingest = |beats: &[String]| {
        let started = Instant::now();
        for beat in beats {
            let beat: Heartbeat = serde_json::from_str(beat).expect("a heartbeat");
            control.heartbeat(beat);
        }
        started.elapsed()
    };
    ingest(&beats);
    // The first tick finds every twin new and records where it runs.
    control.tick();
    let rounds = if quick() { 3 } else { 7 };
    let mut per_beat = Vec::new();
    let mut quiet = Vec::new();
    let mut changed = Vec::new();
    let mut full = Vec::new();
    let broken: Vec<usize> = (0..twins).step_by(100).collect();
    let broken_beats: Vec<String> = (0..NODES)
        .map(|n| serde_json::to_string(&heartbeat(n, &named, &model, &broken)).expect("JSON"))
        .collect();
    for _ in 0..rounds {
        // Nothing changed.
        per_beat.push(ms(ingest(&beats)) / twins as f64);
        let t = Instant::now();
        let looked = control.tick();
        quiet.push((ms(t.elapsed()), looked));
        // A: 1 % broke (held: decided, not yet acted on).
        ingest(&broken_beats);
        let t = Instant::now();
        let looked = control.tick();
        changed.push((ms(t.elapsed()), looked));
        // Healthy again, then B: every twin looked at.
        ingest(&beats);
        control.tick();
        control.resync();
        let t = Instant::now();
        let looked = control.tick();
        full.push((ms(t.elapsed()), looked));
    }
    let row = |what: &str, runs: &[(f64, usize)]| {
        let looked = runs[0].1;
        let t = median(runs.iter().map(|r| r.0).collect());
        let per = if looked == 0 {
            "-".to_string()
        } else {
            format!("{:.1} µs", t * 1000.0 / looked as f64)
        };
        println!("| {what} | {looked} | {t:.2} ms | {per} |");
    };
    println!("\n### Control-plane cost, {twins} twins on {NODES} nodes\n");
    println!(
        "apply (verify the model, store, record): {:.2} ms per twin",
        ms(apply)
    );
    println!(
        "heartbeat (JSON decode + ingest): {:.2} µs per twin reported (median of {rounds})\n",
        median(per_beat) * 1000.0
    );
    println!("| tick | twins decided | time (median of {rounds}) | per decision |");
    println!("|---|---:|---:|---:|");
    row("nothing changed", &quiet);
    row("1 % broke (change-driven)", &changed);
    row("full resync (baseline: every twin)", &full);
}

/// Requirement broken → decision → action done → entangled again, ms.
struct Timeline {
    detect: f64,
    act: f64,
    recover: f64,
}

fn at_ms(record: &Value) -> f64 {
    let at = record["at"].as_str().unwrap_or_default();
    humantime::parse_rfc3339(at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn now_ms() -> f64 {
    common::now_ms() as f64
}

/// When the fault began: the twin leaving `entangled`, or (a model that
/// fails as soon as it runs) the end of the action that swapped it in.
enum Since {
    Unentangled,
    Done(&'static str),
}

/// Times twin `name`'s way back to `entangled` through `action`.
fn timeline(fleet: &Fleet, name: &str, since: Since, action: &str) -> Timeline {
    let broke = match since {
        Since::Unentangled => {
            fleet.wait(
                |f| f.status(name).as_deref() != Some("entangled"),
                "the requirement to break",
                60,
            );
            now_ms()
        }
        Since::Done(earlier) => {
            let found = |f: &Fleet| {
                f.decided(name, "action")
                    .into_iter()
                    .find(|a| a["data"]["action"]["action"] == earlier)
            };
            fleet.wait(|f| found(f).is_some(), "the earlier action", 60);
            at_ms(&found(fleet).expect("the earlier action"))
        }
    };
    fleet.wait(
        |f| {
            f.decided(name, "action")
                .iter()
                .any(|a| a["data"]["action"]["action"] == action)
        },
        "the action",
        90,
    );
    let decision = fleet
        .decided(name, "decision")
        .into_iter()
        .rfind(|d| d["data"]["action"]["action"] == action)
        .expect("the decision");
    let done = fleet
        .decided(name, "action")
        .into_iter()
        .rfind(|a| a["data"]["action"]["action"] == action)
        .expect("the action");
    fleet.wait(
        |f| f.status(name).as_deref() == Some("entangled"),
        "entangled again",
        90,
    );
    let entangled = now_ms();
    Timeline {
        detect: at_ms(&decision) - broke,
        act: at_ms(&done) - at_ms(&decision),
        recover: entangled - at_ms(&done),
    }
}

fn twin_spec(name: &str, model: &str) -> String {
    format!(
        r#"apiVersion: wasmtwin.dev/v1alpha1
kind: DigitalTwin
metadata: {{name: {name}}}
spec:
  model: {{ref: {model}, config: {{mode: good}}}}
  physical: {{topics: [dev/{name}], adapter: {{ref: {}}}}}
  requirements: {{timeliness: {{percentile: 95, boundMs: 150}}, expectedRateHz: 10, windowSeconds: 5}}
  policy: {{holdSeconds: 2, cooldownSeconds: 10}}
"#,
        plugin("json-adapter").display()
    )
}

fn causes() {
    let bin = env!("CARGO_BIN_EXE_wasmtwin");
    let mut rows = Vec::new();
    {
        let fleet = Fleet::start(
            bin,
            &[("edge-a", "edge"), ("edge-b", "edge"), ("cloud-a", "cloud")],
        );
        fleet.apply(
            "net",
            &twin_spec("net", &plugin("misbehave").display().to_string()),
        );
        fleet.wait(|f| f.running_on("net").is_some(), "placed", 30);
        let _device = Device::start(fleet.mosquitto.port, "dev/net", 10.0);
        fleet.wait(
            |f| f.status("net").as_deref() == Some("entangled"),
            "entangled",
            30,
        );
        let home = fleet.running_on("net").expect("placed");
        fleet.host(&home).proxy.delay(Direction::Both, 200);
        rows.push((
            "network (200 ms each way) → migrate",
            timeline(&fleet, "net", Since::Unentangled, "migrate"),
        ));
    }
    if !quick() {
        let fleet = Fleet::start(bin, &[("edge-a", "edge")]);
        let good = plugin("misbehave").display().to_string();
        fleet.apply("swap", &twin_spec("swap", &good));
        fleet.wait(|f| f.running_on("swap").is_some(), "placed", 30);
        let _device = Device::start(fleet.mosquitto.port, "dev/swap", 10.0);
        fleet.wait(
            |f| f.status("swap").as_deref() == Some("entangled"),
            "entangled",
            30,
        );
        let broken = fleet.dir().join("broken.wasm");
        std::fs::copy(wasmtwin_tests::misbehave_broken_release(), &broken).expect("copying");
        fleet.apply("swap", &twin_spec("swap", &broken.display().to_string()));
        rows.push((
            "model failing after a swap → roll back",
            timeline(&fleet, "swap", Since::Done("swap"), "rollback"),
        ));
    }
    println!("\n### Time to be entangled again, per cause (one run each, ms)\n");
    println!("| cause → action | detect (broken → decision) | act | recover (window) | total |");
    println!("|---|---:|---:|---:|---:|");
    for (cause, t) in rows {
        println!(
            "| {cause} | {:.0} | {:.0} | {:.0} | {:.0} |",
            t.detect,
            t.act,
            t.recover,
            t.detect + t.act + t.recover
        );
    }
}

#[tokio::main]
async fn main() {
    cost(if quick() { 1_000 } else { 10_000 }).await;
    tokio::task::spawn_blocking(causes)
        .await
        .expect("the causes");
}
