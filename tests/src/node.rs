//! A running `wasmtwin` node (from `up` or `host`) and its HTTP APIs, as
//! the end-to-end tests drive them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Waits up to 30 s for `condition`.
pub fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node's HTTP APIs, called with a bearer token.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The token.
    pub token: String,
    /// The client.
    pub http: reqwest::blocking::Client,
}

impl Api {
    /// The APIs at `base`.
    pub fn new(base: String, token: &str) -> Self {
        Self {
            base,
            token: token.to_string(),
            http: reqwest::blocking::Client::new(),
        }
    }

    /// `GET path`: status (0 when unreachable) and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let request = self.http.get(format!("{}{path}", self.base));
        Self::send(request.bearer_auth(&self.token))
    }

    /// `POST path` with `body`: status and body.
    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body.to_string());
        Self::send(request.bearer_auth(&self.token))
    }

    /// `PUT path` with `body`: status and body.
    pub fn put(&self, path: &str, body: &str) -> (u16, String) {
        let request = self
            .http
            .put(format!("{}{path}", self.base))
            .body(body.to_string());
        Self::send(request.bearer_auth(&self.token))
    }

    /// `GET path`, which must answer 200: the body's bytes.
    pub fn bytes(&self, path: &str) -> Vec<u8> {
        let request = self.http.get(format!("{}{path}", self.base));
        let response = request.bearer_auth(&self.token).send().expect("an answer");
        assert_eq!(response.status(), 200, "{path}");
        response.bytes().expect("a body").to_vec()
    }

    /// `method path` with the bytes of `body`, as `content_type`: status
    /// and body.
    pub fn send_bytes(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, String) {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        Self::send(request.bearer_auth(&self.token))
    }

    /// `DELETE path`: status and body.
    pub fn delete(&self, path: &str) -> (u16, String) {
        let request = self.http.delete(format!("{}{path}", self.base));
        Self::send(request.bearer_auth(&self.token))
    }

    fn send(request: reqwest::blocking::RequestBuilder) -> (u16, String) {
        match request.send() {
            Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// `GET path`, which must answer 200 with JSON.
    pub fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("a JSON answer")
    }

    /// `GET path` as JSON if it answers 200.
    pub fn json_or_none(&self, path: &str) -> Option<Value> {
        let (status, body) = self.get(path);
        (status == 200).then(|| serde_json::from_str(&body).expect("a JSON answer"))
    }

    /// The sequence numbers of `twin`'s history of `property`, oldest first.
    pub fn history_seqs(&self, twin: &str, property: &str) -> Vec<u64> {
        let history = self.json(&format!(
            "/v1/twins/{twin}/history?property={property}&limit=100000"
        ));
        history["points"]
            .as_array()
            .expect("a list of points")
            .iter()
            .map(|p| p["seq"].as_u64().expect("a sequence number"))
            .collect()
    }

    /// Waits until `twin` has applied at least `n` updates.
    pub fn wait_for_updates(&self, twin: &str, n: u64) {
        wait_for(
            || {
                self.json_or_none(&format!("/v1/twins/{twin}"))
                    .and_then(|t| t["updatesApplied"].as_u64())
                    >= Some(n)
            },
            &format!("{twin} to apply {n} updates"),
        );
    }
}

/// A `wasmtwin` process serving HTTP; killed when dropped.
pub struct Node {
    /// The process.
    pub child: Child,
    /// Its APIs.
    pub api: Api,
}

impl Node {
    /// Runs `bin` with `args` (which make it serve HTTP on `http_port`) and
    /// waits until it answers `/healthz`.
    pub fn spawn(bin: &str, args: &[String], http_port: u16, token: &str) -> Self {
        let child = Command::new(bin)
            .args(args)
            .env("WASMTWIN_LOG", "warn")
            .env_remove("WASMTWIN_TRUST")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting wasmtwin");
        let mut node = Self {
            child,
            api: Api::new(format!("http://127.0.0.1:{http_port}"), token),
        };
        // A process that exits at start (its port taken, a bad argument)
        // must fail here, not leave the test talking to whatever answers.
        wait_for(
            || {
                if let Ok(Some(status)) = node.child.try_wait() {
                    panic!("wasmtwin {args:?} exited at start: {status}");
                }
                node.api.get("/healthz").0 == 200
            },
            "the node to serve HTTP",
        );
        node
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
