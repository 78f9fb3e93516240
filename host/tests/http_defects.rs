//! Regressions of the HTTP defects of issue 10 (what a client of the API
//! can do to a node): each test is named after its defect and failed before
//! the fix. The node runs as a `wasmtwin host` process fed by an MQTT broker
//! in this process (the embedded one `up` uses), as in `node_defects.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wasmtwin_tests::cli::{self, arg};

mod common;

use common::TOKEN;

/// A broker and a `wasmtwin host` (`common::Site`), reached by raw sockets.
struct Site {
    /// The node, stopped when the site is dropped.
    _site: common::Site,
    http: u16,
}

impl Site {
    fn start(extra: &[&str]) -> Self {
        let site = common::Site::start(extra);
        let http = site
            .node
            .api
            .base
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("the node's port");
        Self { _site: site, http }
    }

    /// A fresh connection to the node.
    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.http)).expect("connecting to the node");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream
    }

    /// `GET /healthz` on a new connection: how long the answer took, or
    /// `None` if none came within `within`.
    fn healthz(&self, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.http)), within)
                .ok()?;
        stream.set_read_timeout(Some(within)).ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer
            .starts_with("HTTP/1.1 200")
            .then(|| started.elapsed())
    }

    /// `method path` with `body` and the token on a new client: status,
    /// body and how long the answer took.
    fn send(&self, method: reqwest::Method, path: &str, body: String) -> (u16, String, Duration) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let started = Instant::now();
        let response = client
            .request(method, format!("http://127.0.0.1:{}{path}", self.http))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .expect("an answer");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (status, text, started.elapsed())
    }

    /// `method path` announcing a body of `length` bytes but sending none
    /// of it (so the node's refusal comes back whole, not cut short by a
    /// reset): status and body.
    fn announce(&self, method: &str, path: &str, length: usize) -> (u16, String) {
        let mut stream = self.connect();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n"
        )
        .unwrap();
        let now = Instant::now();
        let Some((answer, _)) = closed_by(&mut stream, now, now + Duration::from_secs(15)) else {
            panic!("{method} {path} of {length} bytes: no answer before the body came");
        };
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

/// Reads from `stream` until the peer closes it: what came, and how long
/// after `since` it closed; `None` if it was still open at `deadline`.
fn closed_by(
    stream: &mut TcpStream,
    since: Instant,
    deadline: Instant,
) -> Option<(Vec<u8>, Duration)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match stream.read(&mut buf) {
            Ok(0) => return Some((got, since.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            // Reset by the peer: closed too.
            Err(_) => return Some((got, since.elapsed())),
        }
    }
}

#[test]
fn defect_05_deeply_nested_bodies_are_refused_quickly_and_the_node_keeps_answering() {
    let site = Site::start(&[]);
    // 200 KB each: nested maps (quadratic in libyaml) and nested lists.
    let bodies = ["{\"a\":".repeat(40_000), "[".repeat(200_000)];
    let answers = std::thread::scope(|scope| {
        let puts: Vec<_> = (0..4)
            .map(|i| {
                let body = bodies[i % 2].clone();
                let site = &site;
                scope.spawn(move || site.send(reqwest::Method::PUT, "/v1/twins/deep", body))
            })
            .collect();
        // The node answers its probes meanwhile.
        let mut probes = 0;
        while !puts.iter().all(|p| p.is_finished()) || probes < 5 {
            let took = site.healthz(Duration::from_secs(5));
            assert!(
                took.is_some_and(|t| t < Duration::from_secs(1)),
                "/healthz took {took:?} during deeply nested PUTs"
            );
            probes += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        puts.into_iter()
            .map(|p| p.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (status, body, took) in answers {
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("64 levels"), "{body}");
        assert!(took < Duration::from_secs(5), "refused after {took:?}");
    }
    // An action's input is JSON: likewise, as a 400.
    let (status, body, took) = site.send(
        reqwest::Method::POST,
        "/v1/twins/deep/actions/stop",
        "[".repeat(200_000),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("64 levels"), "{body}");
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    // Each route has its size limit, named in the refusal.
    for (method, path, limit) in [
        ("PUT", "/v1/twins/big", "1 MiB"),
        ("POST", "/v1/twins/big/actions/stop", "1 MiB"),
        ("PUT", "/v1/migrations/big", "1 MiB"),
        ("POST", "/v1/twins/big/swap", "64 KiB"),
        ("PUT", "/v1/twins/big/checkpoint", "256 MiB"),
        ("POST", "/v1/migrations/big", "256 MiB"),
    ] {
        let (status, body) = site.announce(method, path, (1 << 30) + 1);
        assert_eq!(status, 413, "{path}: {body}");
        assert!(body.contains(limit), "{path}: {body}");
    }
}

#[test]
fn defect_05_apply_refuses_a_deeply_nested_spec_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deep.yaml");
    std::fs::write(&file, "{\"a\":".repeat(40_000)).unwrap();
    let started = Instant::now();
    let stderr = cli::refused(cli::run(
        env!("CARGO_BIN_EXE_wasmtwin"),
        &["apply", "-f", arg(&file), "--host", "http://127.0.0.1:9"],
        &[],
    ));
    assert!(stderr.contains("64 levels"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(2), "{stderr}");
}

#[test]
fn defect_08_error_answers_do_not_echo_a_large_body() {
    let site = Site::start(&[]);
    let long = "x".repeat(900_000);
    let small = |status: u16, expected: u16, body: &str, what: &str| {
        assert_eq!(status, expected, "{what}: {}", &body[..body.len().min(300)]);
        assert!(body.len() < 4096, "{what}: {} bytes of answer", body.len());
    };
    // A value of the wrong type and an unknown field, both quoted by the
    // parser.
    let spec = format!(
        "apiVersion: wasmtwin.dev/v1alpha1\nkind: DigitalTwin\nmetadata: {{name: big}}\nspec:\n  replicas: \"{long}\"\n"
    );
    let (status, body, _) = site.send(reqwest::Method::PUT, "/v1/twins/big", spec);
    small(status, 422, &body, "a long string for a number");
    assert!(body.contains('…'), "{body}");
    let (status, body, _) = site.send(
        reqwest::Method::PUT,
        "/v1/twins/big",
        format!("{{\"{long}\": 1}}"),
    );
    small(status, 422, &body, "a long unknown field");
    // A migration's spec, once limited only to 1 GiB: now to 1 MiB.
    let (status, body) = site.announce("PUT", "/v1/migrations/big", 100 << 20);
    small(status, 413, &body, "a 100 MiB migration spec");
    // A field quoted back by the handler.
    let (status, body, _) = site.send(
        reqwest::Method::POST,
        "/v1/twins/big/moved",
        format!("{{\"to\": \"ftp://{}\"}}", &long[..60_000]),
    );
    small(status, 400, &body, "a long `to`");
    // axum's own rejection of a query, which quotes it.
    let (status, body, _) = site.send(
        reqwest::Method::GET,
        &format!("/v1/twins/big/history/rows?after={}", &long[..60_000]),
        String::new(),
    );
    small(status, 400, &body, "a long history mark");
}

#[test]
fn defect_06_idle_and_slow_connections_are_closed_after_the_header_timeout() {
    let site = Site::start(&["--header-timeout-ms", "1000"]);
    let opened = Instant::now();
    // Sockets that send nothing, one that sends half a request, and one
    // kept alive after its request.
    let mut idle: Vec<TcpStream> = (0..100).map(|_| site.connect()).collect();
    let mut partial = site.connect();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n")
        .unwrap();
    let mut kept = site.connect();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .unwrap();
    // The node answers meanwhile.
    let took = site.healthz(Duration::from_secs(5));
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(1)),
        "/healthz took {took:?} with idle connections open"
    );
    let deadline = opened + Duration::from_secs(6);
    for (i, stream) in idle.iter_mut().enumerate() {
        let closed = closed_by(stream, opened, deadline);
        assert!(closed.is_some(), "idle connection {i} still open after 6 s");
    }
    let Some((_, after)) = closed_by(&mut partial, opened, deadline) else {
        panic!("a connection with half a request still open after 6 s");
    };
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    let Some((answer, _)) = closed_by(&mut kept, opened, deadline) else {
        panic!("an idle kept-alive connection still open after 6 s");
    };
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(site.healthz(Duration::from_secs(5)).is_some());
}

#[test]
fn defect_06_connections_beyond_max_connections_are_closed_at_once() {
    let site = Site::start(&["--max-connections", "8", "--header-timeout-ms", "3000"]);
    // The connection the start-up probe kept alive times out first.
    std::thread::sleep(Duration::from_millis(3500));
    let opened = Instant::now();
    let mut held: Vec<TcpStream> = (0..8).map(|_| site.connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = site.connect();
    let since = Instant::now();
    let closed = closed_by(&mut extra, since, since + Duration::from_secs(1));
    assert!(
        closed.is_some(),
        "a 9th connection with --max-connections 8 was not closed at once"
    );
    // The places free up as the idle ones time out.
    for stream in &mut held {
        assert!(closed_by(stream, opened, opened + Duration::from_secs(8)).is_some());
    }
    assert!(site.healthz(Duration::from_secs(5)).is_some());
}

#[test]
fn event_streams_beyond_max_subscribers_are_refused_naming_the_limit() {
    let site = common::Site::start(&["--max-subscribers", "2"]);
    common::created(&site, "s1", &common::spec("s1", "good", ""));
    let api = &site.node.api;
    let open = || {
        api.http
            .get(format!("{}/v1/twins/s1/stream", api.base))
            .bearer_auth(TOKEN)
            .send()
            .expect("the node answers")
    };
    let first = open();
    let second = open();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open();
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    let why = third.text().unwrap();
    assert!(
        why.contains("already has 2 stream subscribers") && why.contains("--max-subscribers"),
        "{why}"
    );
    let (_, metrics) = api.get("/metrics");
    assert!(
        metrics.contains(r#"wasmtwin_node_requests_shed_total{class="stream"} 1"#),
        "{metrics}"
    );
    // The twin goes on, and other reads are not refused.
    assert_eq!(api.get("/v1/twins/s1").0, 200);
    // A subscriber that leaves frees its place (the node learns it when
    // the stream's next write fails: at the latest at the 15-s keep-alive).
    drop(first);
    let mut again = open();
    let deadline = Instant::now() + Duration::from_secs(30);
    while again.status() != 200 {
        assert!(Instant::now() < deadline, "the place was never freed");
        std::thread::sleep(Duration::from_millis(500));
        again = open();
    }
    drop(second);
}

#[test]
fn input_limits_are_configurable_and_named_when_exceeded() {
    let site = common::Site::start(&[
        "--max-spec-size",
        "2KiB",
        "--max-action-size",
        "1KiB",
        "--max-history-points",
        "10",
    ]);
    common::created(&site, "s1", &common::spec("s1", "good", ""));
    let api = &site.node.api;
    let padded = format!(
        "{}\n# {}\n",
        common::spec("s2", "good", ""),
        "x".repeat(3000)
    );
    let (status, body) = api.put("/v1/twins/s2", &padded);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("2 KiB"), "{body}");
    let (status, body) = api.post("/v1/twins/s1/actions/any", &"x".repeat(2000));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("1 KiB"), "{body}");
    let (status, body) = api.get("/v1/twins/s1/history?property=x&limit=11");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("between 1 and 10 (--max-history-points)"),
        "{body}"
    );
    assert_eq!(api.get("/v1/twins/s1/history?property=x&limit=10").0, 200);
    assert_eq!(site.twin("s1")["name"], "s1", "nothing changed");

    // A limit that is not a size is refused at start, naming it.
    let refused = cli::run(
        env!("CARGO_BIN_EXE_wasmtwin"),
        &["host", "--max-spec-size", "lots"],
        &[],
    );
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("--max-spec-size") && said.contains("not a size"),
        "{said}"
    );
}

/// The control plane's `apply` took specs up to 1 MiB whatever it was
/// told; `--max-spec-size` now sets it, as on a node.
#[test]
fn the_control_planes_spec_limit_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let port = wasmtwin_tests::servers::free_port();
    let plugins = wasmtwin_tests::plugin("misbehave");
    let args: Vec<String> = [
        "control",
        "--http",
        &format!("127.0.0.1:{port}"),
        "--data",
        arg(dir.path()),
        "--token",
        TOKEN,
        "--allow-unsigned",
        "--component-dir",
        arg(plugins.parent().unwrap()),
        "--max-spec-size",
        "2KiB",
    ]
    .map(String::from)
    .to_vec();
    let control =
        wasmtwin_tests::node::Node::spawn(env!("CARGO_BIN_EXE_wasmtwin"), &args, port, TOKEN);
    let padded = format!(
        "{}\n# {}\n",
        common::spec("s2", "good", ""),
        "x".repeat(3000)
    );
    let (status, body) = control.api.put("/v1/twins/s2", &padded);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("2 KiB"), "{body}");
    let (status, body) = control
        .api
        .put("/v1/twins/s1", &common::spec("s1", "good", ""));
    assert!(status == 200 || status == 201, "{status}: {body}");
}
