//! Ingest benchmark: PT messages through a real MQTT broker (Mosquitto, on
//! loopback) into twins on one node, against the broker's own
//! publish→subscribe floor measured in the same run with the same
//! publishers and payloads. Then the latency of waking a hibernating twin,
//! against the same twin's next message while awake; and the resident
//! memory of idle twins, awake and hibernating, against bare model
//! instances, each in a fresh child process.
//!
//! `cargo bench -p wasmtwin --bench ingest` prints Markdown tables. Needs
//! `mosquitto` on the PATH (Debian: `apt-get install mosquitto`).
//! `WASMTWIN_BENCH_QUICK=1` runs a small smoke version.
//!
//! What is measured, for 1, 100 and 1,000 twins (machine model + JSON
//! adapter, QoS 1, every message journalled to the node's store before it
//! is acknowledged):
//! - timeliness: publish → the twin's state has changed (its change stream
//!   fires), at a steady offered load, p50 and p99;
//! - throughput: a burst published as fast as the publishers can, divided
//!   by the time until the last message was applied;
//! - CPU per message over that burst: this process's (publishers and node,
//!   or publishers and the floor's subscriber) and the broker's.
//!
//! The floor is one subscriber on a wildcard over as many topics: what the
//! broker alone costs.
//!
//! Then, for a node restart: reading its stored specs with the YAML parser
//! (as before) and the JSON one, in-process, and the restart itself, twins
//! started asleep against restored at once, each in a fresh child process.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cpu_seconds, now_ms, paid_kib, quick, rss_kib};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::json;
use wasmtwin::node::{Node, NodeConfig};
use wasmtwin::physical::BrokerAddress;
use wasmtwin::runtime::{
    DEFAULT_MEMORY_RESERVATION, Limits, Runtime, RuntimeConfig, UNCHECKED_RESERVATION,
};
use wasmtwin::signing::{self, Metadata, TrustPolicy, TrustSet};
use wasmtwin::spec::TwinSpec;
use wasmtwin::store::Store;
use wasmtwin::twin::Twin;
use wasmtwin_tests::servers::Mosquitto;
use wasmtwin_tests::wait;

/// Child-process mode for the memory measurements (`twins:N:PORT`,
/// `sleeping:N:PORT`, `instances:N`) and the restarts
/// (`populate:N:PORT:DIR`, `resume:N:PORT:DIR:lazy|eager|connected:SEQ`).
const CHILD: &str = "WASMTWIN_BENCH_CHILD";

/// Set (to anything), nodes share one broker session
/// (`--broker-session node`): the ingest table and the child modes measure
/// that way (the wake-up table has a row of its own for it).
const SHARED: &str = "WASMTWIN_BENCH_SHARED";

/// Set (to anything), nodes' twins take turns on a few instances of their
/// adapter (`--share-adapters`), in the ingest table and the child modes.
const SHARE_ADAPTERS: &str = "WASMTWIN_BENCH_SHARE_ADAPTERS";

/// The address space, in bytes, that each linear memory of this process's
/// runtime reserves, when not a node's default: the memory table's
/// baseline of wasmtime's own default sets it in its children.
const RESERVATION: &str = "WASMTWIN_BENCH_MEMORY_RESERVATION";

/// The runtime of a bench node or of bare instances: no disk cache, and the
/// memory reservation `RESERVATION` names.
fn bench_runtime() -> Runtime {
    let memory_reservation = match std::env::var(RESERVATION) {
        Ok(bytes) => bytes.parse().expect("a reservation in bytes"),
        Err(_) => DEFAULT_MEMORY_RESERVATION,
    };
    Runtime::new(RuntimeConfig {
        cache_dir: None,
        memory_reservation,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// Publish times of messages in flight, and the latencies of those that
/// arrived.
struct Tracker {
    sent: Mutex<HashMap<(usize, u64), Instant>>,
    latencies_us: Mutex<Histogram<u64>>,
    arrived: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Tracker {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            sent: Mutex::new(HashMap::new()),
            latencies_us: Mutex::new(Histogram::new(3).expect("histogram")),
            arrived: AtomicU64::new(0),
            last: Mutex::new(None),
        })
    }

    fn reset(&self) {
        self.sent.lock().unwrap().clear();
        self.latencies_us.lock().unwrap().reset();
        self.arrived.store(0, Ordering::SeqCst);
        *self.last.lock().unwrap() = None;
    }

    fn published(&self, twin: usize, seq: u64) {
        self.sent
            .lock()
            .unwrap()
            .insert((twin, seq), Instant::now());
    }

    fn arrived(&self, twin: usize, seq: u64) {
        let now = Instant::now();
        if let Some(at) = self.sent.lock().unwrap().remove(&(twin, seq)) {
            let us = now.duration_since(at).as_micros() as u64;
            let _ = self.latencies_us.lock().unwrap().record(us.max(1));
            *self.last.lock().unwrap() = Some(now);
            self.arrived.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `missed` changes went by before the stream could report them (the
    /// subscriber fell behind a burst): they arrived, by now at the latest.
    fn lagged(&self, missed: u64) {
        *self.last.lock().unwrap() = Some(Instant::now());
        self.arrived.fetch_add(missed, Ordering::SeqCst);
    }

    async fn wait_for(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.arrived.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages arrived",
                self.arrived.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// MQTT clients publishing PT telemetry; twin `i` always goes through the
/// same client, so its messages stay in order.
struct Publishers {
    clients: Vec<AsyncClient>,
    seqs: Vec<u64>,
}

impl Publishers {
    fn connect(port: u16, count: usize) -> Self {
        let clients = (0..count)
            .map(|i| {
                let mut options = MqttOptions::new(format!("bench-pub-{i}"), "127.0.0.1", port);
                options
                    .set_inflight(1000)
                    .set_keep_alive(Duration::from_secs(30));
                let (client, mut eventloop) = AsyncClient::new(options, 10_000);
                tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
                client
            })
            .collect();
        Self {
            clients,
            seqs: Vec::new(),
        }
    }

    /// Publishes `total` messages round-robin over `twins` topics under
    /// `prefix`, at `rate` per second or as fast as possible.
    async fn offer(
        &mut self,
        prefix: &str,
        twins: usize,
        total: usize,
        rate: Option<f64>,
        tracker: &Tracker,
    ) -> Instant {
        self.seqs.resize(self.seqs.len().max(twins), 0);
        let started = Instant::now();
        for k in 0..total {
            if let Some(rate) = rate {
                let at = started + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
            }
            let twin = k % twins;
            self.seqs[twin] += 1;
            let seq = self.seqs[twin];
            let payload = telemetry(seq, k);
            tracker.published(twin, seq);
            self.clients[twin % self.clients.len()]
                .publish(
                    format!("{prefix}/{twin}/telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .expect("publishing");
        }
        started
    }
}

/// The `k`th motor reading sent, numbered `seq` for its twin.
fn telemetry(seq: u64, k: usize) -> String {
    json!({
        "seq": seq,
        "ts_ms": now_ms(),
        "temperature": 20.0 + (k % 50) as f64 / 10.0,
        "rpm": 1450,
        "running": true,
    })
    .to_string()
}

/// What one configuration measured.
struct Measured {
    p50_us: u64,
    p99_us: u64,
    burst: Burst,
}

/// What a burst measured: messages per second, and the CPU each message
/// cost this process and the broker, in µs (what a change to the node
/// saves, and what the machine's cores bound: the floor's budget and the
/// twins' against it).
struct Burst {
    throughput: f64,
    process_us: f64,
    broker_us: f64,
}

/// Steady load, then a burst, through whatever delivers to `tracker`.
async fn measure(
    publishers: &mut Publishers,
    prefix: &str,
    twins: usize,
    tracker: &Tracker,
    broker: &str,
) -> Measured {
    let (rate, seconds) = if quick() {
        (200.0, 1.0)
    } else {
        (1_000.0, 5.0)
    };
    // Warm up every path once.
    tracker.reset();
    publishers.offer(prefix, twins, twins, None, tracker).await;
    tracker.wait_for(twins as u64).await;

    tracker.reset();
    let steady = (rate * seconds) as usize;
    publishers
        .offer(prefix, twins, steady, Some(rate), tracker)
        .await;
    tracker.wait_for(steady as u64).await;
    let (p50_us, p99_us) = {
        let h = tracker.latencies_us.lock().unwrap();
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    };
    Measured {
        p50_us,
        p99_us,
        burst: burst(publishers, prefix, twins, tracker, broker).await,
    }
}

/// A burst published as fast as the publishers can: messages per second
/// until the last was delivered to `tracker`, and the CPU time this
/// process and the broker's (process id `broker`) spent meanwhile.
async fn burst(
    publishers: &mut Publishers,
    prefix: &str,
    twins: usize,
    tracker: &Tracker,
    broker: &str,
) -> Burst {
    let burst = if quick() { 1_000 } else { 20_000 };
    tracker.reset();
    let cpu = || [cpu_seconds("self"), cpu_seconds(broker)];
    let before = cpu();
    let started = publishers.offer(prefix, twins, burst, None, tracker).await;
    tracker.wait_for(burst as u64).await;
    let after = cpu();
    let last = tracker.last.lock().unwrap().expect("something arrived");
    let per_message = |i: usize| (after[i] - before[i]) * 1e6 / burst as f64;
    Burst {
        throughput: burst as f64 / last.duration_since(started).as_secs_f64(),
        process_us: per_message(0),
        broker_us: per_message(1),
    }
}

/// The id of the process listening on loopback `port`, for the broker's
/// CPU time (the children are given only its port): the socket's inode
/// from `/proc/net/tcp`, then the process holding it.
fn broker_pid(port: u16) -> String {
    // 127.0.0.1 as the kernel prints it, and TCP's LISTEN state (0A).
    let local = format!("0100007F:{port:04X}");
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let inode = tcp
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A"))
        .and_then(|f| f.get(9).map(|inode| format!("socket:[{inode}]")))
        .unwrap_or_else(|| panic!("nothing listens on 127.0.0.1:{port}"));
    let holds = |pid: &str| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == inode.as_str())
            })
        })
    };
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|pid| pid.bytes().all(|b| b.is_ascii_digit()) && holds(pid))
        .unwrap_or_else(|| panic!("no process holds the socket on 127.0.0.1:{port}"))
}

/// Applies bench twin `index` on `node`, its changes reported to `tracker`.
fn host_tracked(
    node: &Node,
    spec: &impl Fn(usize) -> TwinSpec,
    index: usize,
    tracker: &Arc<Tracker>,
) {
    node.apply(spec(index), false)
        .expect("applying a bench twin");
    let mut changes = node.subscribe(&format!("twin-{index}")).expect("stream");
    let tracker = tracker.clone();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match changes.recv().await {
                Ok(change) => tracker.arrived(index, change.seq),
                Err(RecvError::Lagged(missed)) => tracker.lagged(missed),
                Err(RecvError::Closed) => break,
            }
        }
    });
}

/// A subscriber on `floor/+/telemetry` reporting arrivals to `tracker`.
fn floor_subscriber(port: u16, tracker: Arc<Tracker>) {
    let mut options = MqttOptions::new("bench-floor", "127.0.0.1", port);
    options.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    tokio::spawn(async move {
        let _client = client.clone();
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Incoming::ConnAck(_)) => {
                    let _ = client
                        .subscribe("floor/+/telemetry", QoS::AtLeastOnce)
                        .await;
                }
                Event::Incoming(Incoming::SubAck(_)) => {
                    let _ = ready_tx.send(());
                }
                Event::Incoming(Incoming::Publish(p)) => {
                    let twin = p
                        .topic
                        .split('/')
                        .nth(1)
                        .and_then(|t| t.parse().ok())
                        .expect("a twin index in the topic");
                    let body: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
                    tracker.arrived(twin, body["seq"].as_u64().expect("seq"));
                }
                _ => {}
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(10))
        .expect("the floor subscriber to subscribe");
}

/// Signed machine model and JSON adapter, and the trust policy for them.
fn signed_plugins(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, TrustPolicy) {
    // A fixed key (Ed25519 signs deterministically): every child process
    // signs the plugins into the same bytes, so a restarted node finds the
    // very component its twins' checkpoints were written by.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let sign = |plugin: &str, file: &str| {
        let bytes = std::fs::read(wasmtwin_tests::plugin(plugin)).expect("plugin");
        let metadata = Metadata {
            name: plugin.into(),
            version: "0.0.0".into(),
            publisher: "bench".into(),
            signed_at: "2026-01-01T00:00:00Z".into(),
        };
        let signed = signing::sign(&bytes, &key, &metadata).expect("signing");
        let path = dir.join(file);
        std::fs::write(&path, signed).expect("writing");
        path
    };
    let model = sign("machine", "machine.wasm");
    let adapter = sign("json-adapter", "json_adapter.wasm");
    let mut trust = TrustSet::default();
    trust.add(key.verifying_key(), dir.join("bench.pub"));
    (model, adapter, TrustPolicy::Require(trust))
}

/// How a bench node's twins hold their broker sessions.
#[derive(Clone, Copy, PartialEq)]
enum Sessions {
    /// A session of its own each, kept connected asleep
    /// (`--keep-sessions-asleep`).
    Connected,
    /// A session of its own each, parked asleep (the default).
    Parked,
    /// One session for the node (`--broker-session node`).
    Shared,
}

impl Sessions {
    /// Parked unless `park` is false, or shared if `SHARED` is set.
    fn from_env(park: bool) -> Self {
        match (std::env::var_os(SHARED).is_some(), park) {
            (true, _) => Self::Shared,
            (false, true) => Self::Parked,
            (false, false) => Self::Connected,
        }
    }
}

/// A node named `name` on Mosquitto at `port`, with job queues of `queue`,
/// and the spec of its twin `i` (fed from `NAME/I/telemetry`).
fn node(
    dir: &Path,
    port: u16,
    queue: usize,
    name: &str,
    hibernate_after: Option<Duration>,
    sessions: Sessions,
) -> (Arc<Node>, impl Fn(usize) -> TwinSpec) {
    let (model, adapter, policy) = signed_plugins(dir);
    let runtime = bench_runtime();
    let store = Store::open(&dir.join("node")).expect("store");
    let broker = BrokerAddress {
        host: "127.0.0.1".into(),
        port,
        tls: false,
        credentials: None,
        ca_pem: None,
    };
    let node = Arc::new(
        Node::new(
            NodeConfig {
                name: name.into(),
                broker,
                policy,
                queue_capacity: queue,
                ceilings: wasmtwin::spec::Ceilings::default(),
                component_dirs: vec![dir.to_path_buf()],
                registry: Default::default(),
                fuel_per_cpu_second: None,
                max_subscribers: wasmtwin::node::DEFAULT_MAX_SUBSCRIBERS,
                inputs: Default::default(),
                hibernate_after,
                broker_keeps_sessions: true,
                park_sessions_asleep: sessions == Sessions::Parked,
                shared_session: sessions == Sessions::Shared,
                inbox_max: wasmtwin::node::DEFAULT_INBOX_MAX,
                share_adapters: std::env::var_os(SHARE_ADAPTERS).is_some(),
                arrival_timeout: wasmtwin::node::DEFAULT_ARRIVAL_TIMEOUT,
            },
            runtime,
            store,
        )
        .expect("node"),
    );
    let prefix = name.to_string();
    let spec = move |i: usize| {
        let text = json!({
            "apiVersion": wasmtwin::spec::API_VERSION,
            "kind": wasmtwin::spec::KIND,
            "metadata": { "name": format!("twin-{i}") },
            "spec": {
                "model": { "ref": model.display().to_string() },
                "physical": {
                    "topics": [format!("{prefix}/{i}/telemetry")],
                    "adapter": { "ref": adapter.display().to_string() },
                },
            },
        })
        .to_string();
        TwinSpec::parse(&text).expect("bench spec")
    };
    (node, spec)
}

fn mappings() -> u64 {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count() as u64)
        .unwrap_or(0)
}

/// Resident KiB, KiB paid and memory mappings, in that order.
fn footprint() -> [u64; 3] {
    [rss_kib(), paid_kib(), mappings()]
}

/// Prints how much `footprint` grew since `before`, for the parent.
fn print_growth(before: [u64; 3]) {
    let after = footprint();
    let [rss, paid, maps] = [0, 1, 2].map(|i| after[i].saturating_sub(before[i]));
    println!("{rss} {paid} {maps}");
}

/// Child process: creates `n` idle twins (left to hibernate, for
/// `sleeping`) or bare instances, and prints the growth of its
/// `footprint`; or fills a node's store with
/// `n` hibernated twins (`populate`), or restarts a node on that store and
/// prints the seconds until it serves and until a twin applied an update
/// (`resume`); or prints the wake-up table alone (`wake`), or the twins'
/// bursts alone (`burst`).
fn child(mode: &str) {
    let parts: Vec<&str> = mode.split(':').collect();
    let n: usize = parts[1].parse().expect("count");
    let dir = tempfile::tempdir().expect("tempdir");
    let io = tokio::runtime::Runtime::new().expect("tokio");
    let _enter = io.enter();
    let before;
    match parts[0] {
        kind @ ("twins" | "sleeping" | "connected") => {
            let port: u16 = parts[2].parse().expect("port");
            let hibernate_after = (kind != "twins").then_some(Duration::from_secs(1));
            // `connected`: asleep with their sessions kept, as before parking.
            let sessions = Sessions::from_env(kind == "sleeping");
            let (node, spec) = node(dir.path(), port, 64, kind, hibernate_after, sessions);
            // Load the components before the baseline, as for instances.
            node.apply(spec(0), false).expect("a twin");
            before = footprint();
            for i in 1..=n {
                node.apply(spec(i), false).expect("a twin");
            }
            std::thread::sleep(Duration::from_secs(1));
            if hibernate_after.is_some() {
                wait_asleep(&node, n + 1);
            }
            if sessions == Sessions::Parked {
                wait_parked(&node);
            }
            print_growth(before);
            std::mem::forget(node); // exit without tearing 10k sessions down
        }
        // The twins' bursts alone, `burst:TWINS:PORT:ROUNDS`, to profile
        // or compare builds, or the floor's (`floor:TWINS:PORT:ROUNDS`):
        // each round prints the burst's throughput (messages/s) and the
        // CPU µs a message cost this process and the broker.
        "burst" | "floor" => {
            let (port, rounds): (u16, usize) = (
                parts[2].parse().expect("port"),
                parts[3].parse().expect("rounds"),
            );
            let broker = broker_pid(port);
            let tracker = Tracker::new();
            let node = (parts[0] == "burst").then(|| {
                let sessions = Sessions::from_env(true);
                let (node, spec) = node(dir.path(), port, 1024, "burst", None, sessions);
                for i in 0..n {
                    host_tracked(&node, &spec, i, &tracker);
                }
                node
            });
            if node.is_none() {
                floor_subscriber(port, tracker.clone());
            }
            let mut publishers = Publishers::connect(port, 4);
            for _ in 0..rounds {
                let Burst {
                    throughput,
                    process_us,
                    broker_us,
                } = io.block_on(burst(&mut publishers, parts[0], n, &tracker, &broker));
                println!("{throughput:.0} {process_us:.1} {broker_us:.1}");
            }
            if let Some(node) = node {
                node.shutdown();
            }
        }
        // The wake-up table alone: `wake:TWINS:PORT:ROUNDS`.
        "wake" => {
            let (port, rounds) = (
                parts[2].parse().expect("port"),
                parts[3].parse().expect("rounds"),
            );
            wake_table(&io, port, n, rounds);
        }
        "populate" => {
            let (port, data) = (parts[2].parse().expect("port"), Path::new(parts[3]));
            let (node, spec) = node(
                data,
                port,
                64,
                "restart",
                Some(Duration::from_millis(500)),
                Sessions::from_env(true),
            );
            for i in 0..n {
                node.apply(spec(i), false).expect("a twin");
            }
            wait_asleep(&node, n);
            // The checkpoints they fell asleep on reach the disk.
            std::thread::sleep(Duration::from_secs(2));
            std::mem::forget(node);
        }
        "resume" => {
            let (port, data) = (parts[2].parse().expect("port"), Path::new(parts[3]));
            // `connected`: lazily, with sessions kept connected asleep
            // (`--keep-sessions-asleep`), as every lazy restart did before
            // sessions were collected in turn.
            let lazily = parts[4] != "eager";
            let sessions = Sessions::from_env(parts[4] != "connected");
            let seq: u64 = parts[5].parse().expect("seq");
            let started = Instant::now();
            let (node, _) = node(
                data,
                port,
                64,
                "restart",
                lazily.then_some(Duration::from_secs(3600)),
                sessions,
            );
            let resumed = node.resume().expect("resuming");
            let serving = started.elapsed();
            assert_eq!(resumed.len(), n, "twins resumed");
            // Every twin's session is back in the background: awake, each
            // connected; asleep, each connected once, in turn, to collect
            // what the broker kept, and parked again.
            let (connected, collecting) = (
                node.metrics().broker_sessions.clone(),
                node.metrics().sessions_collecting.clone(),
            );
            let reconnected = std::thread::spawn(move || {
                let back = || match (lazily, sessions) {
                    // One session for them all, not one to wait for each.
                    (_, Sessions::Shared) => true,
                    (true, Sessions::Parked) => collecting.get() == 0,
                    _ => connected.get() >= n as i64,
                };
                while !back() {
                    assert!(
                        started.elapsed() < Duration::from_secs(600),
                        "{} sessions connected and {} still to collect after 600 s",
                        connected.get(),
                        collecting.get()
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                started.elapsed()
            });
            // Lazily, every twin starts asleep but those earlier runs sent
            // an update to (their journals may not be empty).
            let asleep = node.metrics().hibernating.get() as usize;
            if lazily {
                assert!(asleep + seq as usize > n, "{asleep} of {n} twins asleep");
            } else {
                assert_eq!(asleep, 0, "twins asleep");
            }
            // Twin number `seq`, which no earlier run woke, applies an update.
            let twin = seq as usize % n;
            let mut changes = node.subscribe(&format!("twin-{twin}")).expect("stream");
            let (client, mut eventloop) =
                AsyncClient::new(MqttOptions::new("bench-restart", "127.0.0.1", port), 10);
            io.block_on(async {
                tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
                client
                    .publish(
                        format!("restart/{twin}/telemetry"),
                        QoS::AtLeastOnce,
                        false,
                        telemetry(seq, 0),
                    )
                    .await
                    .expect("publishing");
                while changes.recv().await.expect("a change").seq < seq {}
            });
            let updated = started.elapsed();
            let reconnected = reconnected.join().expect("the sessions' watch");
            println!(
                "{} {} {} {}",
                serving.as_secs_f64(),
                updated.as_secs_f64(),
                reconnected.as_secs_f64(),
                rss_kib()
            );
            std::mem::forget(node);
        }
        _ => {
            let runtime = bench_runtime();
            let bytes = std::fs::read(wasmtwin_tests::plugin("machine")).expect("plugin");
            let model = runtime.load_model(&bytes).expect("model");
            let config = json!({});
            let first = wait(Twin::create(
                &runtime,
                &model,
                "t",
                Limits::default(),
                &config,
            ));
            before = footprint();
            let twins: Vec<Twin> = (0..n)
                .map(|i| {
                    wait(Twin::create(
                        &runtime,
                        &model,
                        &format!("t{i}"),
                        Limits::default(),
                        &config,
                    ))
                    .expect("instance")
                })
                .collect();
            print_growth(before);
            drop((first, twins));
        }
    }
}

/// Runs this benchmark as a child in `mode`; the numbers it printed.
fn in_child<T: std::str::FromStr>(mode: &str) -> Vec<T> {
    in_child_reserving(mode, DEFAULT_MEMORY_RESERVATION)
}

/// As [`in_child`], each linear memory of the child reserving `reservation`
/// bytes.
fn in_child_reserving<T: std::str::FromStr>(mode: &str, reservation: u64) -> Vec<T> {
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD, mode)
        .env(RESERVATION, reservation.to_string())
        .env("WASMTWIN_LOG", "error")
        .output()
        .expect("running a child");
    assert!(
        output.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|n| n.parse().ok().expect("a number"))
        .collect()
}

/// How much a child's twins or instances grew its `footprint`.
fn idle_memory(mode: &str) -> [u64; 3] {
    idle_memory_reserving(mode, DEFAULT_MEMORY_RESERVATION)
}

/// As [`idle_memory`], each linear memory reserving `reservation` bytes.
fn idle_memory_reserving(mode: &str, reservation: u64) -> [u64; 3] {
    match in_child_reserving(mode, reservation)[..] {
        [rss, paid, maps] => [rss, paid, maps],
        _ => panic!("{mode}: expected resident KiB, KiB paid and mappings"),
    }
}

/// Waits until `n` of the node's twins hibernate.
fn wait_asleep(node: &Node, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while node.metrics().hibernating.get() < n as i64 {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} twins hibernated",
            node.metrics().hibernating.get()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every twin session of the node is parked.
fn wait_parked(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while node.metrics().broker_sessions.get() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} sessions still connected",
            node.metrics().broker_sessions.get()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restarts of a node holding `twins` hibernated twins, their twins
/// started asleep (lazy) and, alternating when `eager_too`, restored at
/// once (eager): seconds until it serves reads (every twin resumed), until
/// a twin has applied an update and until every twin's session is back
/// (lazily: has collected what waited and parked again; eagerly: is
/// connected), and the process's resident memory then, KiB. (Eagerly,
/// every twin holds a connection: no more than the limit on open files.)
fn restarts(port: u16, twins: usize, eager_too: bool) -> Vec<(bool, [f64; 4])> {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display();
    in_child::<u64>(&format!("populate:{twins}:{port}:{data}"));
    let runs = if eager_too { 4 } else { 2 };
    (1..=runs)
        .map(|run| {
            let lazy = !eager_too || run % 2 == 1;
            let how = if lazy { "lazy" } else { "eager" };
            match in_child(&format!("resume:{twins}:{port}:{data}:{how}:{run}"))[..] {
                [serving, updating, reconnected, kib] => {
                    (lazy, [serving, updating, reconnected, kib])
                }
                _ => panic!("resume: expected three times and a size"),
            }
        })
        .collect()
}

/// Reading the specs a node stored, as it does for every twin when it
/// resumes: the YAML parser (what resuming used before) against the JSON
/// one, over the same `count` specs in the form the node stores them,
/// A/B/A/B. Per spec, µs: (YAML, JSON) for each round.
fn stored_spec_parsing(spec: &impl Fn(usize) -> TwinSpec, count: usize) -> Vec<(f64, f64)> {
    let stored: Vec<String> = (0..count)
        .map(|i| serde_json::to_string(&spec(i)).expect("serialising a spec"))
        .collect();
    type Parse = fn(&str) -> Result<TwinSpec, wasmtwin::spec::SpecError>;
    let per_spec = |parse: Parse| {
        let started = Instant::now();
        for text in &stored {
            std::hint::black_box(parse(text).expect("a stored spec"));
        }
        started.elapsed().as_secs_f64() * 1e6 / count as f64
    };
    (0..2)
        .map(|_| (per_spec(TwinSpec::parse), per_spec(TwinSpec::from_stored)))
        .collect()
}

/// Each awake twin holds about fourteen memory mappings (its instances'
/// linear memories, their guards and fiber stacks), so many twins need
/// more than Linux's default 65,530.
fn check_map_count(twins: usize) {
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(usize::MAX);
    let needed = twins * 14 + 10_000;
    assert!(
        limit >= needed,
        "vm.max_map_count is {limit}; {twins} twins need about {needed} memory mappings: \
         sysctl -w vm.max_map_count=262144"
    );
}

/// Publish → state changed for `twins` hibernating twins, one message at
/// a time, each followed by the same twin's next message while it is awake
/// (the baseline, interleaved so that load hits both alike); `rounds`
/// rounds after a warm-up one. Returns (awake, hibernating) latencies, µs.
fn wake_latency(
    io: &tokio::runtime::Runtime,
    port: u16,
    twins: usize,
    rounds: usize,
    sessions: Sessions,
) -> (Histogram<u64>, Histogram<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Named apart, as their sessions and topics are.
    let name = match sessions {
        Sessions::Connected => "wake-connected",
        Sessions::Parked => "wake-parked",
        Sessions::Shared => "wake-shared",
    };
    let (node, spec) = node(
        dir.path(),
        port,
        1024,
        name,
        Some(Duration::from_millis(200)),
        sessions,
    );
    let mut streams: Vec<_> = (0..twins)
        .map(|i| {
            node.apply(spec(i), false).expect("a wake twin");
            node.subscribe(&format!("twin-{i}"))
                .expect("its change stream")
        })
        .collect();
    let mut options = MqttOptions::new("bench-wake", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let mut hists = [(); 2].map(|()| Histogram::<u64>::new(3).expect("histogram"));
    let mut seqs = vec![0; twins];
    let mut sent = 0;
    io.block_on(async {
        for round in 0..=rounds {
            wait_asleep(&node, twins);
            if sessions == Sessions::Parked {
                wait_parked(&node);
            }
            for (i, stream) in streams.iter_mut().enumerate() {
                // Asleep first, then awake.
                for awake in [false, true] {
                    seqs[i] += 1;
                    sent += 1;
                    let started = Instant::now();
                    client
                        .publish(
                            format!("{name}/{i}/telemetry"),
                            QoS::AtLeastOnce,
                            false,
                            telemetry(seqs[i], sent),
                        )
                        .await
                        .expect("publishing");
                    while stream.recv().await.expect("a change").seq < seqs[i] {}
                    if round > 0 {
                        let us = started.elapsed().as_micros() as u64;
                        hists[usize::from(!awake)]
                            .record(us.max(1))
                            .expect("record");
                    }
                }
            }
        }
    });
    let [awake, asleep] = hists;
    (awake, asleep)
}

/// Prints the wake-up latency table: nodes keeping their sleeping twins'
/// sessions connected, nodes parking them and nodes sharing one session,
/// A/B/C/A/B/C, `wake_twins` each.
fn wake_table(io: &tokio::runtime::Runtime, port: u16, wake_twins: usize, rounds: usize) {
    let [mut awake, mut connected, mut parked, mut shared] =
        [(); 4].map(|()| Histogram::<u64>::new(3).expect("histogram"));
    let kinds = [Sessions::Connected, Sessions::Parked, Sessions::Shared];
    for sessions in kinds.into_iter().chain(kinds) {
        let (on_awake, on_asleep) = wake_latency(io, port, wake_twins, rounds, sessions);
        awake.add(&on_awake).expect("histograms");
        match sessions {
            Sessions::Connected => &mut connected,
            Sessions::Parked => &mut parked,
            Sessions::Shared => &mut shared,
        }
        .add(&on_asleep)
        .expect("histograms");
    }
    println!(
        "\n## Wake-up latency: publish → state changed, {wake_twins} twins × {rounds} rounds × 2 nodes of each kind, each woken then sent its next message\n"
    );
    println!("| twin | p50 | p99 | max |\n|---|---:|---:|---:|");
    for (what, h) in [
        ("awake (baseline: the same twin's next message)", &awake),
        (
            "hibernating, session kept connected (the message wakes it)",
            &connected,
        ),
        (
            "hibernating, session parked (the doorbell wakes it; it connects again)",
            &parked,
        ),
        (
            "hibernating, one session for the node (the message wakes it)",
            &shared,
        ),
    ] {
        println!(
            "| {what} | {} | {} | {} |",
            fmt_us(h.value_at_quantile(0.5)),
            fmt_us(h.value_at_quantile(0.99)),
            fmt_us(h.max())
        );
    }
}

fn fmt_us(us: u64) -> String {
    if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn main() {
    // The nodes this process hosts log as `WASMTWIN_LOG` says.
    if let Ok(filter) = std::env::var("WASMTWIN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    if let Ok(mode) = std::env::var(CHILD) {
        return child(&mode);
    }
    let broker = Mosquitto::start();
    let io = tokio::runtime::Runtime::new().expect("tokio");
    let _enter = io.enter();
    let counts: &[usize] = if quick() {
        &[1, 10]
    } else {
        &[1, 100, 1000, 10_000]
    };
    let idle = if quick() { 200 } else { 10_000 };
    // Checked first, not after minutes of measuring.
    check_map_count(counts.iter().copied().max().unwrap_or(0).max(idle));

    let broker_pid = broker.pid().to_string();
    let mut publishers = Publishers::connect(broker.port, 4);
    let floor = Tracker::new();
    floor_subscriber(broker.port, floor.clone());
    let floors: Vec<Measured> = counts
        .iter()
        .map(|&n| io.block_on(measure(&mut publishers, "floor", n, &floor, &broker_pid)))
        .collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let (node, spec) = node(
        dir.path(),
        broker.port,
        1024,
        "bench",
        None,
        Sessions::from_env(true),
    );
    let twins = Tracker::new();
    let mut hosted = 0;
    let mut publishers = Publishers::connect(broker.port, 4);
    println!(
        "\n## Ingest through Mosquitto on loopback (`cargo bench -p wasmtwin --bench ingest`)\n"
    );
    println!(
        "| twins | path | timeliness p50 | p99 | throughput (msg/s) | vs floor | CPU/msg: process | broker |\n|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for (&n, floor) in counts.iter().zip(&floors) {
        while hosted < n {
            host_tracked(&node, &spec, hosted, &twins);
            hosted += 1;
        }
        let m = io.block_on(measure(&mut publishers, "bench", n, &twins, &broker_pid));
        for (path, row) in [("broker floor", floor), ("twins", &m)] {
            println!(
                "| {n} | {path} | {} | {} | {:.0} | {:.2}× | {:.1} µs | {:.1} µs |",
                fmt_us(row.p50_us),
                fmt_us(row.p99_us),
                row.burst.throughput,
                row.burst.throughput / floor.burst.throughput,
                row.burst.process_us,
                row.burst.broker_us
            );
        }
    }
    // Its sessions closed: the children below connect as many again.
    node.shutdown();
    drop(node);
    let parsing = stored_spec_parsing(&spec, idle);

    let (wake_twins, rounds) = if quick() { (5, 2) } else { (100, 5) };
    wake_table(&io, broker.port, wake_twins, rounds);

    // Parked sessions hold no socket, so a node keeps more sleeping twins
    // than its limit on open files (20,000 on the CI machine).
    let many = if quick() { 1_000 } else { 100_000 };
    let twins = idle_memory(&format!("twins:{idle}:{}", broker.port));
    let sleeping = idle_memory(&format!("sleeping:{idle}:{}", broker.port));
    let connected = idle_memory(&format!("connected:{idle}:{}", broker.port));
    let instances = idle_memory(&format!("instances:{idle}"));
    let unchecked_twins = idle_memory_reserving(
        &format!("twins:{idle}:{}", broker.port),
        UNCHECKED_RESERVATION,
    );
    let unchecked_instances =
        idle_memory_reserving(&format!("instances:{idle}"), UNCHECKED_RESERVATION);
    let sleeping_many = idle_memory(&format!("sleeping:{many}:{}", broker.port));
    let restarted = restarts(broker.port, idle, true);
    let restarted_many = restarts(broker.port, many, false);
    println!("\n## Memory of idle twins on one node\n");
    println!(
        "| what | twins | resident (RSS) per twin | paid (PSS + page tables) per twin | paid in all | mappings per twin |\n|---|---:|---:|---:|---:|---:|"
    );
    for (what, count, [rss, paid, maps]) in [
        ("bare model instances (baseline)", idle, instances),
        (
            "bare model instances, 4 GiB reservation per memory (wasmtime's default)",
            idle,
            unchecked_instances,
        ),
        (
            "hosted twins (model + adapter instances, MQTT session, queues, store)",
            idle,
            twins,
        ),
        (
            "hosted twins, 4 GiB reservation per memory (wasmtime's default)",
            idle,
            unchecked_twins,
        ),
        (
            "hosted twins, hibernating, sessions kept connected (instances dropped)",
            idle,
            connected,
        ),
        (
            "hosted twins, hibernating, sessions parked (no socket, no MQTT client)",
            idle,
            sleeping,
        ),
        (
            "hosted twins, hibernating, sessions parked",
            many,
            sleeping_many,
        ),
    ] {
        println!(
            "| {what} | {count} | {:.1} KiB | {:.1} KiB | {:.1} MiB | {:.1} |",
            rss as f64 / count as f64,
            paid as f64 / count as f64,
            paid as f64 / 1024.0,
            maps as f64 / count as f64
        );
    }
    for (count, restarted) in [(idle, &restarted), (many, &restarted_many)] {
        println!("\n## Restart of a node holding {count} hibernated twins\n");
        println!(
            "| run | twins start | serving reads (all resumed) | a twin applied an update | every session back (asleep: collected, parked again) | resident memory |\n|---:|---|---:|---:|---:|---:|"
        );
        for (run, (lazy, [serving, updating, reconnected, kib])) in restarted.iter().enumerate() {
            let how = if *lazy {
                "asleep (lazily)"
            } else {
                "awake (restored at once, as before)"
            };
            println!(
                "| {} | {how} | {serving:.2} s | {updating:.2} s | {reconnected:.2} s | {:.0} MiB |",
                run + 1,
                kib / 1024.0
            );
        }
    }
    println!(
        "\n## Reading {idle} stored specs as a node resumes, per spec (A/B/A/B, in-process)\n"
    );
    println!("| round | YAML parser (before) | JSON parser | JSON / YAML |\n|---:|---:|---:|---:|");
    for (round, (yaml, json)) in parsing.iter().enumerate() {
        println!(
            "| {} | {yaml:.1} µs | {json:.1} µs | {:.2}× |",
            round + 1,
            json / yaml
        );
    }
}
