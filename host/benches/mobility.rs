//! Mobility benchmark: live migration of a twin between two `wasmtwin host`
//! processes sharing a Mosquitto broker, against the slow way measured in
//! the same run — stop the twin, write its checkpoint to a file, start a
//! fresh host process and restore the file there — and the pause of a
//! model hot-swap.
//!
//! `cargo bench -p wasmtwin --bench mobility` prints Markdown tables. Needs
//! `mosquitto` on the PATH. `WASMTWIN_BENCH_QUICK=1` runs a small smoke
//! version; `WASMTWIN_BENCH_STATES=1024,16384` measures only those guest
//! states (KiB) without history, to set two builds against each other,
//! interleaved, in a few minutes. The nodes log at `WASMTWIN_LOG`'s level
//! (errors only by default) to standard error.
//!
//! A publisher sends 1,000 sequence-numbered updates per second throughout.
//! Downtime is the time from the last update the source applied to the
//! first the target applied, both seen on the nodes' change streams (the
//! target's is open while the twin is still arriving). Guest state is
//! padded to 1 KiB, 1 MiB and 16 MiB (`prime`'s `state_kib`); histories of
//! 0, 10,000 and 100,000 points travel with the twin, and so does a full
//! entanglement window (30,000 samples, 30 s at 1,000 updates a second),
//! given to the twin before its moves as its age would. Live migrations and
//! hot-swaps alternate between the SDK's two snapshot encodings (JSON, the
//! previous and default one, and binary), switched by reconfiguring the
//! twin between runs, so both meet the same load. Last, in one process, a
//! bundle's trip from writer to checked reader in checkpoint format 4
//! (BLAKE3) against format 3 (SHA-256), interleaved, and a full
//! entanglement window written and read as JSON against its compact
//! encoding.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{now_ms, quick};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};
use wasmtwin::checkpoint::{Checkpoint, Format, GUEST_SECTION, ModelInfo, TWIN_SECTION};
use wasmtwin::client::{self, NodeClient};
use wasmtwin::digest::Digest;
use wasmtwin::node::{Bundle, History};
use wasmtwin::signing::{self, Metadata};
use wasmtwin::store::HistoryRow;
use wasmtwin::twin::TwinState;
use wasmtwin::twin::entanglement::{Entanglement, Timing, Window};
use wasmtwin_tests::servers::{Mosquitto, free_port};

const TOKEN: &str = "bench-token-0123456789abcdef";
const TOPIC: &str = "bench/p/telemetry";

/// A `wasmtwin host` process.
struct Host {
    child: Child,
    client: NodeClient,
}

impl Host {
    async fn start(name: &str, port: u16, data: &Path, trust: &Path, broker: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_wasmtwin"))
            .args(["host", "--name", name, "--token", TOKEN])
            .args(["--http", &format!("127.0.0.1:{port}")])
            .args(["--mqtt", &format!("mqtt://127.0.0.1:{broker}")])
            .arg("--data")
            .arg(data)
            .arg("--trust")
            .arg(trust)
            // The signed components sit beside the keys' directory.
            .arg("--component-dir")
            .arg(
                trust
                    .parent()
                    .and_then(Path::parent)
                    .expect("the setup's directory"),
            )
            .arg("--cache-dir")
            .arg(data.parent().expect("a parent").join("cache"))
            // The nodes' own logs, if asked for (`WASMTWIN_LOG=info` shows
            // each handover's and arrival's time inside the pause).
            .env(
                "WASMTWIN_LOG",
                std::env::var("WASMTWIN_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("starting wasmtwin host");
        let client = NodeClient::new(&format!("http://127.0.0.1:{port}"), Some(TOKEN.into()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .send(client.request(reqwest::Method::GET, "/healthz"))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the host did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Self { child, client }
    }

    async fn twin(&self) -> Option<Value> {
        let response = self
            .client
            .send(self.client.request(reqwest::Method::GET, "/v1/twins/p"))
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Waits until the twin has applied an update after `seq`; when.
    async fn applied_after(&self, seq: u64) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = self.twin().await.and_then(|t| t["lastSeq"].as_u64());
            if last.is_some_and(|last| last > seq) {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "the twin did not go on");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes sequence-numbered updates at 1,000 per second until dropped.
fn publisher(port: u16) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut options = MqttOptions::new("bench-device", "127.0.0.1", port);
        options.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for seq in 1.. {
            tick.tick().await;
            let payload = json!({ "seq": seq, "ts_ms": now_ms(), "v": seq }).to_string();
            if client
                .publish(TOPIC, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// Stands for the changes a lagging stream skipped.
const LAGGED: u64 = u64::MAX;

/// The changes a stream delivered: when each arrived, and its sequence.
type Seen = Arc<Mutex<Vec<(Instant, u64)>>>;

/// The last change a stream saw (not a lag marker).
fn last_applied(seen: &Seen) -> (Instant, u64) {
    *seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(_, seq)| *seq != LAGGED)
        .expect("a change")
}

/// A stream being watched: what it delivered, whether it is open yet, and
/// the task reading it.
struct Watch {
    seen: Seen,
    open: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// Records the changes a node's stream of twin `p` delivers. Retries until
/// the stream opens (a twin still arriving has one).
fn watch(node: NodeClient) -> Watch {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let open = Arc::new(tokio::sync::Notify::new());
    let (record, opened) = (seen.clone(), open.clone());
    let task = tokio::spawn(async move {
        let response = loop {
            match node
                .send(node.request(reqwest::Method::GET, "/v1/twins/p/stream"))
                .await
            {
                Ok(response) => break response,
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        opened.notify_one();
        let mut response = response;
        let mut text = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let at = Instant::now();
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if event.contains("event: moved") {
                    return;
                }
                // The stream fell behind a burst (a target applying its
                // buffer): the changes it skipped were applied by now.
                if event.contains("event: lagged") {
                    record.lock().unwrap().push((at, LAGGED));
                }
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: "))
                    && event.contains("event: change")
                    && let Some(seq) = serde_json::from_str::<Value>(data)
                        .ok()
                        .and_then(|c| c["seq"].as_u64())
                {
                    record.lock().unwrap().push((at, seq));
                }
            }
        }
    });
    Watch { seen, open, task }
}

/// p50 and p99 (nearest rank) of `samples`.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.5), at(0.99))
}

/// A state padding in KiB, as the tables show it.
fn size(kib: u32) -> String {
    if kib >= 1024 {
        format!("{} MiB", kib / 1024)
    } else {
        format!("{kib} KiB")
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The SDK's snapshot encodings, as `prime`'s configuration names them.
const ENCODINGS: [&str; 2] = ["json", "binary"];

/// How a live run hands the state over, in the table's order: whole, its
/// changes since a snapshot sent ahead, or the messages to replay on that
/// snapshot (restored on the target ahead).
const HANDOVERS: [client::Precopy; 3] = [
    client::Precopy::Nothing,
    client::Precopy::State,
    client::Precopy::Replay,
];

/// The live runs' variants, taken in turn: every handover with each
/// encoding, variant `v` being encoding `v / 3` (in [`ENCODINGS`]) and
/// handover `v % 3`.
const VARIANTS: usize = ENCODINGS.len() * HANDOVERS.len();

/// A bundle's size, for the table.
fn bytes(n: usize) -> String {
    bytesize::ByteSize(n as u64).display().iec().to_string()
}

fn spec(model: &Path, adapter: &Path, state_kib: u32, encoding: &str) -> String {
    json!({
        "apiVersion": wasmtwin::spec::API_VERSION,
        "kind": wasmtwin::spec::KIND,
        "metadata": { "name": "p" },
        "spec": {
            "model": {
                "ref": model.display().to_string(),
                "config": { "primes": 1, "state_kib": state_kib, "state_encoding": encoding },
            },
            "physical": { "topics": [TOPIC], "adapter": { "ref": adapter.display().to_string() } },
            "requirements": { "expectedRateHz": 1000 },
            "resources": { "memory": "256MiB" },
            "history": { "maxPoints": 200000 },
        },
    })
    .to_string()
}

/// Gives twin `p` on `node` a history of `points` rows and a full
/// entanglement window (see [`full_window`]), as a twin that has run a
/// while has, by restoring its own bundle with them added.
async fn age(node: &NodeClient, points: u64) {
    let mut bytes = Vec::new();
    node.checkpoint("p", false, &mut bytes)
        .await
        .expect("a checkpoint");
    let mut bundle = Bundle::from_bytes(&bytes).expect("a bundle");
    // Recent timestamps (one per ms up to now), inside the retention.
    let first = now_ms() - points;
    bundle.history = History::Rows(
        (1..=points)
            .map(|i| HistoryRow {
                ts_ms: first + i,
                seq: i,
                changes: [("last_value".to_string(), json!(i))].into(),
            })
            .collect(),
    );
    let last_seq = TwinState::of(&bundle.checkpoint)
        .expect("the twin's state")
        .last_seq
        .unwrap_or(0);
    bundle.entanglement = Some(full_window(now_ms() * 1000, last_seq));
    let bytes = bundle.to_bytes().expect("a bundle");
    node.restore("p", bytes, true, None)
        .await
        .expect("restoring with history and window");
}

/// The window of a twin that has run for `windowSeconds` (30) at the
/// publisher's 1,000 updates a second until `now_us`, its last update
/// numbered `last_seq`: 30,000 samples.
fn full_window(now_us: u64, last_seq: u64) -> Window {
    let start_us = now_us - 30_000_000;
    let mut e = Entanglement::new(Default::default(), start_us);
    let first_seq = last_seq.saturating_sub(30_000);
    for i in 1..=30_000u64 {
        // A millisecond apart, with some jitter in each part.
        let produced_us = start_us + i * 1000;
        let received_us = produced_us + 300 + i * 7919 % 400;
        let started_us = received_us + 50 + i * 104_729 % 200;
        let committed_us = started_us + 20 + i * 1_299_709 % 60;
        let timing = Timing {
            received_us,
            started_us,
        };
        e.record(first_seq + i, produced_us / 1000, timing, committed_us);
    }
    e.leave(now_us)
}

/// What one live migration measured.
struct Moved {
    downtime: Duration,
    total: Duration,
    bundle_bytes: usize,
}

/// One live migration from `from` to `to`.
async fn migrate_once(from: &Host, to: &Host, precopy: client::Precopy) -> Option<Moved> {
    let source = watch(from.client.clone());
    let target = watch(to.client.clone());
    // Let the source stream connect and see a change.
    let deadline = Instant::now() + Duration::from_secs(10);
    while source.seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no change on the source");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The target's stream opens once the twin starts arriving; the
    // handover waits for it, so that it sees the first change there.
    let target_open = target.open.clone();
    let moved = client::migrate_observed("p", &from.client, &to.client, precopy, async |step| {
        if step == client::Step::TargetReady {
            let _ = tokio::time::timeout(Duration::from_secs(2), target_open.notified()).await;
        }
    })
    .await
    .expect("a migration");
    let deadline = Instant::now() + Duration::from_secs(10);
    while target.seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no change on the target");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), source.task).await;
    target.task.abort();
    let (last_at, last_seq) = last_applied(&source.seen);
    let (first_at, first_seq) = *target.seen.lock().unwrap().first().expect("a first change");
    // Only a run whose target stream saw the update after the source's
    // last (or lagged behind it, which makes the figure an upper bound) is
    // measured.
    (first_seq == last_seq + 1 || first_seq == LAGGED).then(|| Moved {
        downtime: first_at.saturating_duration_since(last_at),
        total: moved.total,
        bundle_bytes: moved.bundle_bytes,
    })
}

/// Reconfigures twin `p` on `node` to write its snapshots in `encoding`.
async fn encode_with(node: &NodeClient, s: &Setup, kib: u32, encoding: &str) {
    let text = spec(&s.model, &s.adapter, kib, encoding);
    node.send(node.request(reqwest::Method::PUT, "/v1/twins/p").body(text))
        .await
        .expect("reconfiguring the twin");
}

struct Setup {
    broker: Mosquitto,
    dir: tempfile::TempDir,
    trust: PathBuf,
    model: PathBuf,
    next_model: PathBuf,
    adapter: PathBuf,
}

fn setup() -> Setup {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = signing::generate().expect("a key");
    signing::write_pair(&dir.path().join("keys"), &key, false).expect("keys");
    let sign = |source: PathBuf, name: &str| {
        let metadata = Metadata {
            name: name.into(),
            version: "0.0.0".into(),
            publisher: "bench".into(),
            signed_at: "2026-01-01T00:00:00Z".into(),
        };
        let signed = signing::sign(&std::fs::read(source).expect("plugin"), &key, &metadata)
            .expect("signing");
        let path = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, signed).expect("writing");
        path
    };
    Setup {
        model: sign(wasmtwin_tests::plugin("prime"), "prime"),
        next_model: sign(wasmtwin_tests::prime_next_release(), "prime-next"),
        adapter: sign(wasmtwin_tests::plugin("json-adapter"), "json_adapter"),
        trust: dir.path().join("keys").join(signing::PUBLIC_KEY_FILE),
        broker,
        dir,
    }
}

/// The guest states `WASMTWIN_BENCH_STATES` names, in KiB, if it is set.
fn chosen_states() -> Option<Vec<u32>> {
    let text = std::env::var("WASMTWIN_BENCH_STATES").ok()?;
    let states = text
        .split(',')
        .map(|kib| {
            kib.trim().parse().unwrap_or_else(|_| {
                panic!("WASMTWIN_BENCH_STATES: `{kib}` is not a size in KiB (say 1024,16384)")
            })
        })
        .collect();
    Some(states)
}

#[tokio::main]
async fn main() {
    let s = setup();
    let chosen = chosen_states();
    let (states, histories, runs): (&[u32], &[u64], usize) = if let Some(chosen) = &chosen {
        (chosen, &[0], if quick() { 3 } else { 20 })
    } else if quick() {
        (&[1], &[0, 1000], 3)
    } else {
        (&[1, 1024, 16 * 1024], &[0, 10_000, 100_000], 20)
    };
    let data = |name: &str| s.dir.path().join(name);
    let port_a = free_port();
    let mut a = Host::start("a", port_a, &data("a-0"), &s.trust, s.broker.port).await;
    let b = Host::start("b", free_port(), &data("b"), &s.trust, s.broker.port).await;
    let _device = publisher(s.broker.port);
    let mut fresh = 0;

    println!("\n## Moving a twin (`cargo bench -p wasmtwin --bench mobility`)\n");
    println!(
        "Live migration between two host processes vs. the slow way (fresh host process + restore from a checkpoint file), {runs} runs each.\n"
    );
    println!(
        "Live runs take turns: JSON or binary snapshots; the handover's bundle carries the whole state (as before), only what changed since a snapshot sent ahead (pre-copy), or the messages applied since that snapshot, which the target restored ahead and replays them on (replay, the default). The slow way is JSON's.\n"
    );
    println!(
        "| guest state | history | snapshots | whole: downtime p50 | p99 | changes: p50 | p99 | replay: p50 | p99 | bundle p50 (whole / changes / replay) | total p50 (whole / changes / replay) | slow way: downtime p50 | p99 | whole / slow (p50) |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut swaps = Vec::new();
    for &kib in states {
        for &points in histories {
            let text = spec(&s.model, &s.adapter, kib, ENCODINGS[0]);
            let created = a
                .client
                .send(
                    a.client
                        .request(reqwest::Method::PUT, "/v1/twins/p")
                        .body(text),
                )
                .await;
            created.expect("creating the twin");
            age(&a.client, points).await;
            a.applied_after(0).await;

            // Per variant (see VARIANTS): downtimes, totals and bundle
            // sizes.
            let mut live: [Vec<Duration>; VARIANTS] = Default::default();
            let mut totals: [Vec<Duration>; VARIANTS] = Default::default();
            let mut bundles: [Vec<usize>; VARIANTS] = Default::default();
            let mut on_a = true;
            for run in 0..runs * 3 * VARIANTS {
                if live.iter().all(|l| l.len() >= runs) {
                    break;
                }
                let variant = run % VARIANTS;
                let (encoding, precopy) = (
                    variant / HANDOVERS.len(),
                    HANDOVERS[variant % HANDOVERS.len()],
                );
                let (from, to) = if on_a { (&a, &b) } else { (&b, &a) };
                encode_with(&from.client, &s, kib, ENCODINGS[encoding]).await;
                if let Some(moved) = migrate_once(from, to, precopy).await {
                    live[variant].push(moved.downtime);
                    totals[variant].push(moved.total);
                    bundles[variant].push(moved.bundle_bytes);
                }
                on_a = !on_a;
            }
            // Runs whose target stream opened late are not measured; the
            // table says how many were.
            let measured = live.iter().map(Vec::len).min().unwrap_or(0);
            if !on_a {
                client::migrate("p", &b.client, &a.client)
                    .await
                    .expect("back to A");
            }

            // Hot-swap pauses, to the next release and back, each encoding
            // in turn.
            if points == 0 {
                for i in 0..runs * 2 {
                    let encoding = (i / 2) % 2;
                    if i % 2 == 0 {
                        encode_with(&a.client, &s, kib, ENCODINGS[encoding]).await;
                    }
                    let to = if i % 2 == 0 {
                        Some((s.next_model.to_str().expect("utf-8"), None))
                    } else {
                        None
                    };
                    let report = a.client.swap("p", to).await.expect("a swap");
                    swaps.push((
                        kib,
                        encoding,
                        Duration::from_micros(report["pauseUs"].as_u64().unwrap_or(0)),
                    ));
                }
            }
            // The slow way is the baseline as it always was: JSON.
            encode_with(&a.client, &s, kib, ENCODINGS[0]).await;

            // The slow way: stop, checkpoint to a file, fresh process, restore.
            let mut slow = Vec::new();
            for _ in 0..runs {
                let Watch {
                    seen: source,
                    task: watching,
                    ..
                } = watch(a.client.clone());
                while source.lock().unwrap().is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let handover = a
                    .client
                    .request(reqwest::Method::POST, "/v1/twins/p/handover");
                let bundle = a
                    .client
                    .send(handover)
                    .await
                    .expect("stopping the twin")
                    .bytes()
                    .await
                    .expect("its checkpoint");
                let _ = tokio::time::timeout(Duration::from_secs(1), watching).await;
                let file = s.dir.path().join("p.ckpt");
                std::fs::write(&file, &bundle).expect("writing the checkpoint");
                let (last_at, last_seq) = last_applied(&source);
                drop(a);
                fresh += 1;
                a = Host::start(
                    "a",
                    port_a,
                    &data(&format!("a-{fresh}")),
                    &s.trust,
                    s.broker.port,
                )
                .await;
                let bytes = std::fs::read(&file).expect("reading the checkpoint");
                a.client
                    .restore("p", bytes, false, None)
                    .await
                    .expect("restoring");
                let first_at = a.applied_after(last_seq).await;
                slow.push(first_at.saturating_duration_since(last_at));
            }

            let downtimes = live.each_mut().map(|l| percentiles(l));
            let totals = totals.each_mut().map(|t| percentiles(t).0);
            let bundles = bundles.each_mut().map(|b| {
                b.sort_unstable();
                b.get(b.len() / 2).copied().unwrap_or(0)
            });
            let (slow_p50, slow_p99) = percentiles(&mut slow);
            let json_p50 = downtimes[0].0;
            for (encoding, name) in ENCODINGS.iter().enumerate() {
                let of = |at: usize| encoding * HANDOVERS.len() + at;
                let slow = if encoding == 0 {
                    format!(
                        "{} | {} | {:.3}×",
                        ms(slow_p50),
                        ms(slow_p99),
                        json_p50.as_secs_f64() / slow_p50.as_secs_f64()
                    )
                } else {
                    " | | ".to_string()
                };
                println!(
                    "| {}{} | {points} | {name} | {} | {} | {} | {} |",
                    size(kib),
                    if measured < runs {
                        format!(" ({measured} runs)")
                    } else {
                        String::new()
                    },
                    (0..HANDOVERS.len())
                        .map(|at| {
                            let (p50, p99) = downtimes[of(at)];
                            format!("{} | {}", ms(p50), ms(p99))
                        })
                        .collect::<Vec<_>>()
                        .join(" | "),
                    (0..HANDOVERS.len())
                        .map(|at| bytes(bundles[of(at)]))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    (0..HANDOVERS.len())
                        .map(|at| ms(totals[of(at)]))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    slow
                );
            }
            let deleted = a.client.request(reqwest::Method::DELETE, "/v1/twins/p");
            a.client.send(deleted).await.expect("deleting the twin");
            let cleared = b.client.request(reqwest::Method::DELETE, "/v1/twins/p");
            let _ = b.client.send(cleared).await;
        }
    }
    println!("\n## Hot-swap pause (checkpoint of the old instance + restore into the new)\n");
    println!(
        "| guest state | JSON: p50 | p99 | binary: p50 | p99 | binary / JSON (p50) |\n|---:|---:|---:|---:|---:|---:|"
    );
    for &kib in states {
        let [(json_p50, json_p99), (binary_p50, binary_p99)] = [0, 1].map(|encoding| {
            let mut pauses: Vec<Duration> = swaps
                .iter()
                .filter(|(k, e, _)| *k == kib && *e == encoding)
                .map(|(_, _, d)| *d)
                .collect();
            percentiles(&mut pauses)
        });
        println!(
            "| {} | {} | {} | {} | {} | {:.2}× |",
            size(kib),
            ms(json_p50),
            ms(json_p99),
            ms(binary_p50),
            ms(binary_p99),
            binary_p50.as_secs_f64() / json_p50.as_secs_f64()
        );
    }
    bundle_transfer(states, runs);
    window_encodings(runs);
}

/// The entanglement window's part of a handover, in one process: written
/// on the source and read back on the target, as JSON (how bundles carried
/// it before) against the compact encoding, interleaved. The window is
/// full: 30,000 samples, as the live runs' twins carry.
fn window_encodings(runs: usize) {
    let window = full_window(now_ms() * 1000, 30_000);
    let mut took: [Vec<Duration>; 2] = Default::default();
    let mut sizes = [0; 2];
    for run in 0..runs * 2 {
        let started = Instant::now();
        let encoded = if run % 2 == 0 {
            serde_json::to_vec(&window).expect("JSON")
        } else {
            window.encode().expect("compact")
        };
        let read = Window::decode(&encoded).expect("a window");
        took[run % 2].push(started.elapsed());
        assert_eq!(read, window);
        sizes[run % 2] = encoded.len();
    }
    let [(json_p50, json_p99), (compact_p50, compact_p99)] =
        took.each_mut().map(|t| percentiles(t));
    println!(
        "\n## The entanglement window in a bundle: written and read back, in one process (JSON vs. compact)\n"
    );
    println!(
        "| window | JSON: bytes | p50 | p99 | compact: bytes | p50 | p99 | ratio (p50) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    println!(
        "| 30,000 samples | {} | {} | {} | {} | {} | {} | {:.2}× |",
        bytes(sizes[0]),
        ms(json_p50),
        ms(json_p99),
        bytes(sizes[1]),
        ms(compact_p50),
        ms(compact_p99),
        compact_p50.as_secs_f64() / json_p50.as_secs_f64()
    );
}

/// A bundle's trip from the thread writing it to the thread reading and
/// checking it, through a channel of 64 KiB chunks (how a node streams one),
/// in one process: format 4, which hashes with BLAKE3, against format 3,
/// the same layout with SHA-256, in the same run and interleaved. Both
/// hash each section as it is written and as it is read.
fn bundle_transfer(states: &[u32], runs: usize) {
    println!(
        "\n## A bundle from writer to checked reader, in one process (format 3, SHA-256, vs. format 4, BLAKE3)\n"
    );
    println!(
        "| guest state | format 3: p50 | p99 | format 4: p50 | p99 | ratio (p50) |\n|---:|---:|---:|---:|---:|---:|"
    );
    for &kib in states {
        let checkpoint = Checkpoint {
            twin: "p".into(),
            created_ms: 0,
            model: ModelInfo {
                name: "prime".into(),
                version: "0.0.0".into(),
                component: Digest::of(b"prime"),
                state_version: 1,
            },
            sections: vec![
                (GUEST_SECTION.into(), vec![b'x'; kib as usize * 1024]),
                (TWIN_SECTION.into(), b"{}".to_vec()),
            ],
        };
        let formats = [Format::Sha256, Format::Blake3];
        let mut took: [Vec<Duration>; 2] = Default::default();
        for run in 0..runs * 2 {
            took[run % 2].push(transfer(&checkpoint, formats[run % 2]));
        }
        let [(old_p50, old_p99), (new_p50, new_p99)] = took.each_mut().map(|t| percentiles(t));
        println!(
            "| {} | {} | {} | {} | {} | {:.2}× |",
            size(kib),
            ms(old_p50),
            ms(old_p99),
            ms(new_p50),
            ms(new_p99),
            new_p50.as_secs_f64() / old_p50.as_secs_f64()
        );
    }
}

/// One trip of `checkpoint` (see [`bundle_transfer`]).
fn transfer(checkpoint: &Checkpoint, format: Format) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let writer = std::io::BufWriter::with_capacity(CHUNK, Chunks(tx));
            checkpoint
                .write_as(format, writer)
                .expect("writing the bundle");
        });
        let reader = ChunksIn {
            rx,
            chunk: Vec::new(),
            at: 0,
        };
        let read = Checkpoint::read_from(reader).expect("reading the bundle");
        assert_eq!(read.sections.len(), checkpoint.sections.len());
    });
    started.elapsed()
}

const CHUNK: usize = 64 * 1024;

/// Sends what is written as chunks.
struct Chunks(std::sync::mpsc::SyncSender<Vec<u8>>);

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::other("the reader stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads the chunks [`Chunks`] sends.
struct ChunksIn {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for ChunksIn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => (self.chunk, self.at) = (chunk, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
