//! The Kubernetes operator without a cluster: its reconcile runs against a
//! mocked API server (a `tower-test` service pair whose other end these
//! tests answer and record, kube-rs's pattern), with the real control
//! plane it embeds, real `wasmtwin host` processes that join it and
//! Mosquitto. Leader election runs two replicas against a fake Lease
//! store that enforces `resourceVersion` as the API server does.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};
use wasmtwin::control::fleet::Timeouts;
use wasmtwin::control::reconcile::{Control, ControlConfig};
use wasmtwin::operator::controller::{self, Context, FINALIZER};
use wasmtwin::operator::lease::Elector;
use wasmtwin::spec::{DigitalTwin, TwinSpec};
use wasmtwin_tests::fleet::{TOKEN, host_args};
use wasmtwin_tests::node::{Node, wait_for};
use wasmtwin_tests::plugin;
use wasmtwin_tests::servers::{Mosquitto, free_port};

const WASMTWIN: &str = env!("CARGO_BIN_EXE_wasmtwin");
const NAMESPACE: &str = "twins";

/// A request the mocked API server answered.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

type Answer = Box<dyn FnMut(&Seen) -> (u16, Value) + Send>;

/// A client whose every request `answer` answers; the requests seen.
fn mock_api(
    runtime: &tokio::runtime::Runtime,
    mut answer: Answer,
) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    runtime.spawn(async move {
        while let Some((request, reply)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let request = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (status, body) = answer(&request);
            log.lock().unwrap().push(request);
            reply.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    let _guard = runtime.enter();
    (Client::new(service, "default"), seen)
}

/// The API server's error body.
fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": reason, "reason": reason, "code": code }),
    )
}

/// A host: its name, zone, HTTP port and process while it runs.
type Host = (String, String, u16, Option<Node>);

/// The control plane the operator embeds, serving the API hosts join, and
/// two hosts (edge-1, cloud-1) joined to it, with Mosquitto.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    control: Arc<Control>,
    url: String,
    data: tempfile::TempDir,
    hosts: Mutex<Vec<Host>>,
    mosquitto: Mosquitto,
}

impl Cluster {
    fn start() -> Self {
        let mosquitto = Mosquitto::start();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let data = tempfile::tempdir().unwrap();
        let control = wasmtwin::control::open(
            &data.path().join("control"),
            None,
            ControlConfig {
                timeouts: Timeouts {
                    unreachable_ms: 1_500,
                    gone_ms: 120_000,
                },
                node_token: Some(TOKEN.into()),
                checkpoint_every: Duration::from_secs(1),
                ..ControlConfig::new(
                    wasmtwin::signing::TrustPolicy::AllowUnsigned,
                    vec![plugin("misbehave").parent().unwrap().to_path_buf()],
                )
            },
            None,
        )
        .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = wasmtwin::control::api::router(
            control.clone(),
            wasmtwin::api::Auth::Token(TOKEN.into()),
        );
        runtime.spawn(async move { axum::serve(listener, router).await });
        runtime.spawn(control.clone().run());
        let cluster = Self {
            runtime,
            control,
            url,
            data,
            hosts: Mutex::new(Vec::new()),
            mosquitto,
        };
        for (name, zone) in [("edge-1", "edge"), ("cloud-1", "cloud")] {
            let host = (name.into(), zone.into(), free_port(), None);
            cluster.hosts.lock().unwrap().push(host);
            cluster.boot(name);
        }
        wait_for(
            || cluster.control.nodes().len() == 2,
            "both hosts to join the control plane",
        );
        cluster
    }

    fn boot(&self, name: &str) {
        let dir = self.data.path();
        let mut hosts = self.hosts.lock().unwrap();
        let host = hosts.iter_mut().find(|h| h.0 == name).unwrap();
        let args = host_args(
            &host.0,
            &host.1,
            host.2,
            self.mosquitto.port,
            &dir.join(&host.0),
            dir,
            &self.url,
        );
        host.3 = Some(Node::spawn(WASMTWIN, &args, host.2, TOKEN));
    }

    fn kill(&self, name: &str) {
        let mut hosts = self.hosts.lock().unwrap();
        hosts.iter_mut().find(|h| h.0 == name).unwrap().3 = None;
    }

    /// Host `name`'s API, while it runs.
    fn api(&self, name: &str) -> wasmtwin_tests::node::Api {
        let hosts = self.hosts.lock().unwrap();
        let host = hosts.iter().find(|h| h.0 == name).unwrap();
        host.3.as_ref().unwrap().api.clone()
    }

    fn node_state(&self, name: &str) -> String {
        let nodes = self.control.nodes();
        let node = nodes.iter().find(|n| n["name"] == name).unwrap();
        node["state"].as_str().unwrap().to_string()
    }
}

/// The `DigitalTwin` a user would apply: the misbehave model, preferring
/// the cloud.
fn digital_twin(name: &str) -> DigitalTwin {
    let yaml = common::spec(name, "good", "  placement:\n    zones: [cloud, edge]\n");
    let spec = TwinSpec::parse(&yaml).unwrap();
    let mut dt = DigitalTwin::new(name, spec.spec);
    dt.meta_mut().namespace = Some(NAMESPACE.into());
    dt.meta_mut().uid = Some("2f0c7c52-0000-4000-8000-000000000001".into());
    dt.meta_mut().generation = Some(1);
    dt.meta_mut().resource_version = Some("1".into());
    dt
}

/// Answers like an API server holding `dt`: JSON patches to the object
/// (the finalizer) and server-side applies to its status change it.
fn api_server(dt: DigitalTwin) -> Answer {
    let object = Arc::new(Mutex::new(serde_json::to_value(dt).unwrap()));
    Box::new(move |seen| {
        let mut object = object.lock().unwrap();
        match (seen.method.as_str(), seen.path.ends_with("/status")) {
            ("PATCH", true) => {
                object["status"] = seen.body["status"].clone();
                (200, object.clone())
            }
            ("PATCH", false) => {
                let patch: json_patch_ops::Patch =
                    serde_json::from_value(seen.body.clone()).unwrap();
                json_patch_ops::apply(&mut object, &patch);
                (200, object.clone())
            }
            _ => status(405, "MethodNotAllowed"),
        }
    })
}

/// The few JSON Patch operations kube's finalizer helper sends (`test`,
/// `add`, `remove`), applied as RFC 6902 says.
mod json_patch_ops {
    use serde_json::Value;

    #[derive(serde::Deserialize)]
    #[serde(tag = "op", rename_all = "lowercase")]
    pub enum Op {
        Test { path: String, value: Value },
        Add { path: String, value: Value },
        Remove { path: String },
    }

    pub type Patch = Vec<Op>;

    fn split(path: &str) -> (String, String) {
        let (parent, last) = path.rsplit_once('/').unwrap();
        (parent.to_string(), last.to_string())
    }

    pub fn apply(object: &mut Value, patch: &Patch) {
        for op in patch {
            match op {
                Op::Test { path, value } => {
                    assert_eq!(
                        object.pointer(path).unwrap_or(&Value::Null),
                        value,
                        "test {path}"
                    );
                }
                Op::Add { path, value } => {
                    let (parent, last) = split(path);
                    let target = object.pointer_mut(&parent).unwrap();
                    match target {
                        Value::Array(items) if last == "-" => items.push(value.clone()),
                        Value::Array(items) => items.insert(last.parse().unwrap(), value.clone()),
                        Value::Object(map) => {
                            map.insert(last, value.clone());
                        }
                        other => panic!("add into {other}"),
                    }
                }
                Op::Remove { path } => {
                    let (parent, last) = split(path);
                    match object.pointer_mut(&parent).unwrap() {
                        Value::Array(items) => {
                            items.remove(last.parse().unwrap());
                        }
                        Value::Object(map) => {
                            map.remove(&last);
                        }
                        other => panic!("remove from {other}"),
                    }
                }
            }
        }
    }
}

fn status_patches(seen: &Mutex<Vec<Seen>>) -> Vec<Seen> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.path.ends_with("/status"))
        .cloned()
        .collect()
}

#[test]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
fn a_digital_twin_is_placed_reported_left_on_a_lost_host_and_checkpointed_before_deletion() {
    let cluster = Cluster::start();
    let mut dt = digital_twin("motor");
    let (client, seen) = mock_api(&cluster.runtime, api_server(dt.clone()));
    let ctx = Arc::new(Context {
        client,
        control: cluster.control.clone(),
        refresh: Duration::from_secs(1),
    });
    let reconcile = |dt: &DigitalTwin| {
        cluster
            .runtime
            .block_on(controller::reconcile(Arc::new(dt.clone()), ctx.clone()))
    };
    let path = format!("/apis/wasmtwin.dev/v1alpha1/namespaces/{NAMESPACE}/digitaltwins/motor");

    // 1. A new resource gets the finalizer first, and nothing else yet.
    reconcile(&dt).unwrap();
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:#?}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("PATCH", path.as_str())
        );
        assert_eq!(seen[0].content_type, "application/json-patch+json");
        assert!(
            seen[0].body.to_string().contains(FINALIZER),
            "{}",
            seen[0].body
        );
    }
    assert!(
        cluster.control.names().is_empty(),
        "applied before the finalizer was in place"
    );
    dt.meta_mut().finalizers = Some(vec![FINALIZER.into()]);

    // 2. Placed by the control plane, in the zone it prefers; the status
    //    says so, applied server-side by the operator's field manager.
    let placed = Instant::now();
    let running = loop {
        reconcile(&dt).unwrap();
        let last = status_patches(&seen).pop();
        if let Some(last) = last.filter(|s| s.body["status"]["phase"] == "Running") {
            break last;
        }
        assert!(
            placed.elapsed() < Duration::from_secs(30),
            "not running after 30 s: {:#?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(running.path, format!("{path}/status"));
    assert_eq!(running.content_type, "application/apply-patch+yaml");
    assert!(
        running.query.contains("fieldManager=wasmtwin-operator"),
        "{}",
        running.query
    );
    assert!(running.query.contains("force=true"), "{}", running.query);
    let status = &running.body["status"];
    assert_eq!(running.body["kind"], "DigitalTwin");
    assert_eq!(status["node"], "cloud-1", "{status}");
    assert_eq!(status["zone"], "cloud");
    assert_eq!(status["observedGeneration"], 1);
    let condition = |status: &Value, kind: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} condition in {status}"))
    };
    assert_eq!(condition(status, "Accepted")["status"], "True");
    assert_eq!(condition(status, "Placed")["reason"], "Running");
    assert!(
        condition(status, "Placed")["lastTransitionTime"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(
        status["lastDecision"]["summary"]
            .as_str()
            .unwrap()
            .contains("cloud-1"),
        "{status}"
    );
    dt.status = serde_json::from_value(status.clone()).unwrap();

    // 3. Its host falls silent: the twin is reported unreachable and left
    //    where it is; nothing is deleted or moved.
    cluster.kill("cloud-1");
    wait_for(
        || cluster.node_state("cloud-1") == "unreachable",
        "cloud-1 to be unreachable",
    );
    let before = seen.lock().unwrap().len();
    reconcile(&dt).unwrap();
    let lost = status_patches(&seen).pop().unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        before + 1,
        "only the status is written"
    );
    assert_eq!(lost.body["status"]["phase"], "Unreachable", "{}", lost.body);
    assert_eq!(lost.body["status"]["node"], "cloud-1");
    assert_eq!(
        condition(&lost.body["status"], "Entangled")["status"],
        "Unknown"
    );
    assert_eq!(
        condition(&lost.body["status"], "Entangled")["reason"],
        "HostUnreachable"
    );
    // Placed was True before and still is: its transition time stays.
    assert_eq!(
        condition(&lost.body["status"], "Placed")["lastTransitionTime"],
        condition(status, "Placed")["lastTransitionTime"]
    );
    let report = cluster.control.report("motor").unwrap();
    assert_eq!(
        report.placed.node.as_deref(),
        Some("cloud-1"),
        "moved while its host was only unreachable"
    );

    // 4. Deleted while its host is unreachable: the finalizer holds on,
    //    since the twin's latest state is on that host.
    dt.meta_mut().deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let before = seen.lock().unwrap().len();
    let refused = reconcile(&dt).unwrap_err();
    assert!(refused.to_string().contains("unreachable"), "{refused}");
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "the finalizer was removed"
    );
    assert_eq!(cluster.control.names(), ["motor"]);

    // 5. The host is back (same store: it resumes the twin); now the last
    //    checkpoint is taken from it, kept, and the finalizer removed.
    cluster.boot("cloud-1");
    wait_for(
        || cluster.node_state("cloud-1") == "ready",
        "cloud-1 to report again",
    );
    reconcile(&dt).unwrap();
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("PATCH", path.as_str())
    );
    assert!(
        last.body.to_string().contains("\"remove\""),
        "{}",
        last.body
    );
    assert!(cluster.control.names().is_empty());
    let kept = cluster
        .data
        .path()
        .join("control/checkpoints/retired/motor.bundle");
    let bundle = std::fs::read(&kept).expect("the last checkpoint kept");
    assert!(!bundle.is_empty());
    let records = cluster
        .control
        .history()
        .records(0, Some("motor"), 1000)
        .unwrap();
    let kept_at = records
        .iter()
        .position(|r| r.summary.contains("last checkpoint"))
        .expect("recorded");
    let deleted_at = records
        .iter()
        .position(|r| r.summary.contains("deleted twin motor"))
        .expect("recorded");
    assert!(
        kept_at < deleted_at,
        "deleted before its checkpoint was kept"
    );
    let api = cluster.api("cloud-1");
    wait_for(
        || api.get("/v1/twins/motor").0 == 404,
        "the host to stop the twin",
    );
}

/// A Lease store that behaves as the API server does for the requests an
/// [`Elector`] makes: a write must carry the `resourceVersion` it read.
/// Replica `cut` (if set) gets 503 for everything: its network is down.
struct LeaseStore {
    lease: Mutex<Option<Value>>,
    version: Mutex<u64>,
}

fn lease_api(store: Arc<LeaseStore>, cut: Arc<AtomicBool>) -> Answer {
    Box::new(move |seen| {
        if cut.load(Ordering::SeqCst) {
            return status(503, "ServiceUnavailable");
        }
        let mut lease = store.lease.lock().unwrap();
        let mut version = store.version.lock().unwrap();
        match seen.method.as_str() {
            "GET" => match lease.as_ref() {
                Some(l) => (200, l.clone()),
                None => status(404, "NotFound"),
            },
            "POST" if lease.is_some() => status(409, "AlreadyExists"),
            "PUT"
                if lease.as_ref().map(|l| &l["metadata"]["resourceVersion"])
                    != Some(&seen.body["metadata"]["resourceVersion"]) =>
            {
                status(409, "Conflict")
            }
            "POST" | "PUT" => {
                *version += 1;
                let mut stored = seen.body.clone();
                stored["metadata"]["resourceVersion"] = json!(version.to_string());
                *lease = Some(stored.clone());
                (200, stored)
            }
            _ => status(405, "MethodNotAllowed"),
        }
    })
}

/// Marks a replica acting while alive.
struct Acting(Arc<AtomicBool>);

impl Drop for Acting {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[test]
fn only_the_replica_holding_the_lease_acts_and_a_cut_off_leader_stops_before_another_takes_over() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = Arc::new(LeaseStore {
        lease: Mutex::new(None),
        version: Mutex::new(0),
    });
    let replicas: Vec<(String, Arc<AtomicBool>, Arc<AtomicBool>)> = ["replica-a", "replica-b"]
        .iter()
        .map(|name| {
            (
                name.to_string(),
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for (name, acting, cut) in &replicas {
        let (client, _) = mock_api(&runtime, lease_api(store.clone(), cut.clone()));
        let elector = Elector::new(
            kube::Api::namespaced(client, NAMESPACE),
            "wasmtwin-operator",
            name,
            Duration::from_secs(3),
        );
        let acting = acting.clone();
        tasks.push(runtime.spawn(async move {
            // What a replica does once it leads: act until stopped.
            elector
                .lead(async {
                    acting.store(true, Ordering::SeqCst);
                    let _acting = Acting(acting.clone());
                    std::future::pending::<()>().await
                })
                .await
        }));
    }
    // Sampled every 20 ms: never two replicas acting at once.
    let watch = |seconds: u64| -> Vec<usize> {
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut seen = Vec::new();
        while Instant::now() < until {
            let now: Vec<usize> = (0..2)
                .filter(|&i| replicas[i].1.load(Ordering::SeqCst))
                .collect();
            assert!(now.len() < 2, "both replicas act at once");
            if let [one] = now[..]
                && !seen.contains(&one)
            {
                seen.push(one);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    };
    let first = watch(3);
    assert_eq!(first.len(), 1, "exactly one replica leads: {first:?}");
    let leader = first[0];
    let other = 1 - leader;
    assert!(replicas[leader].1.load(Ordering::SeqCst));
    let lease = store.lease.lock().unwrap().clone().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], replicas[leader].0.as_str());

    // The leader's network goes down: it must stop acting by itself, and
    // the other replica take over only after that.
    replicas[leader].2.store(true, Ordering::SeqCst);
    let then = watch(8);
    assert!(
        !replicas[leader].1.load(Ordering::SeqCst),
        "a cut-off leader still acts"
    );
    assert!(replicas[other].1.load(Ordering::SeqCst), "nobody took over");
    assert_eq!(then.last(), Some(&other));
    let lease = store.lease.lock().unwrap().clone().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], replicas[other].0.as_str());
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    let stepped_down = runtime.block_on(tasks.remove(leader)).unwrap();
    assert!(
        stepped_down.is_err(),
        "the old leader's lead() must end with why"
    );
}

/// The Service hosts use selects the leader by a label its pod carries:
/// each replica sets it on its own pod, by a merge patch of that label
/// alone.
#[test]
fn a_replica_labels_its_own_pod_leader_or_not() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (client, seen) = mock_api(
        &runtime,
        Box::new(|seen| {
            let pod = json!({ "apiVersion": "v1", "kind": "Pod",
                              "metadata": { "name": "wasmtwin-operator-1", "namespace": NAMESPACE,
                                            "labels": seen.body["metadata"]["labels"].clone() } });
            (200, pod)
        }),
    );
    let pods = kube::Api::namespaced(client, NAMESPACE);
    for leader in [false, true] {
        runtime
            .block_on(wasmtwin::operator::lease::label_pod(
                &pods,
                "wasmtwin-operator-1",
                leader,
            ))
            .unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for (request, value) in seen.iter().zip(["false", "true"]) {
        assert_eq!(request.method, "PATCH");
        assert_eq!(
            request.path,
            format!("/api/v1/namespaces/{NAMESPACE}/pods/wasmtwin-operator-1")
        );
        assert_eq!(request.content_type, "application/merge-patch+json");
        assert_eq!(
            request.body,
            json!({ "metadata": { "labels": { "wasmtwin.dev/leader": value } } })
        );
    }
}
