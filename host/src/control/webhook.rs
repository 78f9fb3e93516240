//! Webhooks: every history record, POSTed as JSON to each configured URL.
//!
//! Delivery never holds up the caller: [`Webhooks::deliver`] only queues.
//! Each URL has its own bounded queue and its own worker, so a slow or
//! dead receiver delays only itself; records reach a receiver in order
//! (useful to follow the hash chain), and when its queue is full the
//! oldest queued record is dropped and counted: the history stays the
//! source of truth, and a receiver that sees a gap in `seq` reads it back.
//!
//! A failed delivery (a connection error, a timeout, any status but 2xx) is
//! retried with exponential backoff, by default after 0.5 s, 1 s, 2 s and
//! 4 s (doubling, at most 30 s apart), and given up (logged and counted)
//! after the 5th attempt.
//!
//! Each request carries `Content-Type: application/json`,
//! `X-Wasmtwin-Event: <kind>` and, with a secret,
//! `X-Wasmtwin-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, the
//! scheme GitHub's webhooks use, so receivers can reuse their checks.
//!
//! The workers run on a thread of their own with a small runtime, so that
//! webhooks work from any caller (the history appends from blocking code)
//! and never compete with twins for the node's worker threads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{Notify, watch};

use super::history::{Kind, Record};

/// How deliveries are retried and bounded.
#[derive(Debug, Clone)]
pub struct Options {
    /// Records queued per URL before the oldest is dropped.
    pub queue: usize,
    /// Wait before the first retry; doubles after each.
    pub first_retry: Duration,
    /// The longest wait between attempts.
    pub max_retry: Duration,
    /// Attempts before giving up on a record (at least 1).
    pub attempts: u32,
    /// How long one attempt may take.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queue: 1024,
            first_retry: Duration::from_millis(500),
            max_retry: Duration::from_secs(30),
            attempts: 5,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What happened to deliveries so far, all URLs together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records a receiver accepted.
    pub delivered: u64,
    /// Records given up on after every attempt failed.
    pub failed: u64,
    /// Records dropped from a full queue, never attempted.
    pub dropped: u64,
}

/// The configured webhooks. Dropping it stops the workers (an attempt in
/// flight finishes; queued records are abandoned): wait with
/// [`Webhooks::drained`] first to let them go out.
pub struct Webhooks {
    targets: Vec<Arc<Target>>,
    shared: Arc<Shared>,
    /// Records queued per URL before the oldest is dropped.
    capacity: usize,
    /// Dropped with `self`, which tells the workers to stop.
    _closing: watch::Sender<bool>,
}

struct Target {
    url: reqwest::Url,
    queue: Mutex<VecDeque<Delivery>>,
    wake: Notify,
}

struct Delivery {
    seq: u64,
    kind: Kind,
    body: Arc<Vec<u8>>,
}

#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    /// Queued plus in flight, all URLs.
    pending: AtomicUsize,
}

impl Webhooks {
    /// Webhooks to `urls` (http or https), signed with `secret` if given,
    /// with the default [`Options`].
    pub fn new(urls: Vec<String>, secret: Option<Vec<u8>>) -> anyhow::Result<Self> {
        Self::with_options(urls, secret, Options::default())
    }

    /// Webhooks with `options`.
    pub fn with_options(
        urls: Vec<String>,
        secret: Option<Vec<u8>>,
        options: Options,
    ) -> anyhow::Result<Self> {
        let mut targets = Vec::new();
        for url in urls {
            let parsed = reqwest::Url::parse(&url)
                .with_context(|| format!("webhook URL `{url}` is not a URL"))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https"),
                "webhook URL `{url}` is not http or https"
            );
            targets.push(Arc::new(Target {
                url: parsed,
                queue: Mutex::new(VecDeque::new()),
                wake: Notify::new(),
            }));
        }
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            // A receiver answers where it is; following a redirect would
            // send the record (and its signature) somewhere not configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wasmtwin/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the webhooks' HTTP client")?;
        let shared = Arc::new(Shared::default());
        // A queue of 0 would drop every record before its worker sees it.
        let capacity = options.queue.max(1);
        let (closing, closed) = watch::channel(false);
        if !targets.is_empty() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the webhooks' runtime")?;
            let worker = Worker {
                http,
                secret: secret.map(Arc::new),
                options: Arc::new(options),
                shared: shared.clone(),
            };
            let for_thread = targets.clone();
            std::thread::Builder::new()
                .name("webhooks".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        let mut workers = tokio::task::JoinSet::new();
                        for target in for_thread {
                            workers.spawn(worker.clone().run(target, closed.clone()));
                        }
                        while workers.join_next().await.is_some() {}
                    })
                })
                .context("starting the webhooks' thread")?;
        }
        Ok(Self {
            targets,
            shared,
            capacity,
            _closing: closing,
        })
    }

    /// Queues `record` for every URL; returns at once. With a full queue,
    /// the oldest record waiting for that URL is dropped and counted.
    pub fn deliver(&self, record: &Record) {
        if self.targets.is_empty() {
            return;
        }
        let body = match serde_json::to_vec(record) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                tracing::error!(seq = record.seq, "a history record does not encode: {e}");
                return;
            }
        };
        for target in &self.targets {
            {
                let mut queue = target.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.len() >= self.capacity && queue.pop_front().is_some() {
                    self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                    let dropped = self.shared.dropped.fetch_add(1, Ordering::SeqCst) + 1;
                    // Logged at 1, 2, 4, 8…: a receiver that stays down
                    // must not flood the log.
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            url = %target.url,
                            dropped,
                            "webhook queue full: dropped the oldest record"
                        );
                    }
                }
                queue.push_back(Delivery {
                    seq: record.seq,
                    kind: record.kind,
                    body: body.clone(),
                });
                self.shared.pending.fetch_add(1, Ordering::SeqCst);
            }
            target.wake.notify_one();
        }
    }

    /// What happened to deliveries so far.
    pub fn stats(&self) -> Stats {
        Stats {
            delivered: self.shared.delivered.load(Ordering::SeqCst),
            failed: self.shared.failed.load(Ordering::SeqCst),
            dropped: self.shared.dropped.load(Ordering::SeqCst),
        }
    }

    /// Records queued or being delivered, all URLs together.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Waits until nothing is queued or in flight, at most `within`;
    /// answers whether it got there.
    pub async fn drained(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.pending() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

#[derive(Clone)]
struct Worker {
    http: reqwest::Client,
    secret: Option<Arc<Vec<u8>>>,
    options: Arc<Options>,
    shared: Arc<Shared>,
}

impl Worker {
    /// Delivers `target`'s queue in order until the webhooks close.
    async fn run(self, target: Arc<Target>, mut closed: watch::Receiver<bool>) {
        loop {
            // Closed while the last delivery was in flight: what is still
            // queued is abandoned, not sent after the owner let go.
            if closed.has_changed().is_err() {
                return;
            }
            let next = target
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            match next {
                Some(delivery) => {
                    let done = self.deliver(&target.url, &delivery, &mut closed).await;
                    self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                    if !done {
                        return;
                    }
                }
                None => {
                    tokio::select! {
                        // notify_one keeps a permit when no one waits, so a
                        // record queued since the pop is not missed.
                        _ = target.wake.notified() => {}
                        _ = closed.changed() => return,
                    }
                }
            }
        }
    }

    /// Tries `delivery` until accepted or out of attempts; false when the
    /// webhooks closed meanwhile.
    async fn deliver(
        &self,
        url: &reqwest::Url,
        delivery: &Delivery,
        closed: &mut watch::Receiver<bool>,
    ) -> bool {
        let attempts = self.options.attempts.max(1);
        let mut wait = self.options.first_retry;
        for attempt in 1..=attempts {
            match self.attempt(url, delivery).await {
                Ok(()) => {
                    self.shared.delivered.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
                Err(why) if attempt == attempts => {
                    self.shared.failed.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(
                        %url,
                        seq = delivery.seq,
                        attempts,
                        "gave up delivering a history record by webhook: {why}"
                    );
                }
                Err(why) => {
                    tracing::debug!(%url, seq = delivery.seq, attempt, "webhook failed, retrying in {wait:?}: {why}");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = closed.changed() => return false,
                    }
                    wait = (wait * 2).min(self.options.max_retry);
                }
            }
        }
        true
    }

    async fn attempt(&self, url: &reqwest::Url, delivery: &Delivery) -> Result<(), String> {
        let mut request = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Wasmtwin-Event", delivery.kind.as_str())
            .body(delivery.body.as_ref().clone());
        if let Some(secret) = &self.secret {
            request = request.header("X-Wasmtwin-Signature", signature(secret, &delivery.body));
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

/// The `X-Wasmtwin-Signature` value of `body`: `sha256=` and the hex
/// HMAC-SHA256 of the body under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};

    /// What the test receiver saw: every request's headers and body, and
    /// how many it refused so far.
    #[derive(Default)]
    struct Receiver {
        refuse_first: usize,
        /// How long it takes to answer.
        delay: Duration,
        calls: AtomicUsize,
        accepted: Mutex<Vec<(HeaderMap, Vec<u8>)>>,
    }

    async fn receive(
        State(receiver): State<Arc<Receiver>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> StatusCode {
        let call = receiver.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(receiver.delay).await;
        if call < receiver.refuse_first {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        receiver
            .accepted
            .lock()
            .expect("lock")
            .push((headers, body.to_vec()));
        StatusCode::NO_CONTENT
    }

    /// A receiver on 127.0.0.1 that answers 500 to the first
    /// `refuse_first` requests, then accepts.
    async fn serve(refuse_first: usize) -> (String, Arc<Receiver>) {
        serve_receiver(Receiver {
            refuse_first,
            ..Receiver::default()
        })
        .await
    }

    /// Serves `receiver` on a path of its own: the tests run side by side,
    /// and a port one test let go may be another's next, so a request
    /// still on its way to the first must not count for the second.
    async fn serve_receiver(receiver: Receiver) -> (String, Arc<Receiver>) {
        static RECEIVERS: AtomicUsize = AtomicUsize::new(0);
        let path = format!("/hook/{}", RECEIVERS.fetch_add(1, Ordering::SeqCst));
        let receiver = Arc::new(receiver);
        let app = axum::Router::new()
            .route(&path, axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://127.0.0.1:{port}{path}"), receiver)
    }

    fn record(seq: u64) -> Record {
        Record {
            seq,
            at: "2025-01-01T00:00:00.000Z".into(),
            kind: Kind::Decision,
            twin: Some("pump".into()),
            node: None,
            actor: None,
            summary: "migrate pump to edge-2".into(),
            data: serde_json::json!({ "reason": "timeliness p95 1.4 s > 1 s" }),
            prev: super::super::history::GENESIS.into(),
            hash: "ab".repeat(32),
        }
    }

    fn quick() -> Options {
        Options {
            first_retry: Duration::from_millis(100),
            ..Options::default()
        }
    }

    #[tokio::test]
    async fn a_refused_record_is_retried_until_accepted_once_and_signed() {
        let (url, receiver) = serve(2).await;
        let secret = b"s3cret".to_vec();
        let hooks =
            Webhooks::with_options(vec![url], Some(secret.clone()), quick()).expect("webhooks");
        let sent = record(7);
        hooks.deliver(&sent);
        assert!(
            hooks.drained(Duration::from_secs(10)).await,
            "not delivered"
        );
        assert_eq!(receiver.calls.load(Ordering::SeqCst), 3);
        let accepted = receiver.accepted.lock().expect("lock");
        assert_eq!(accepted.len(), 1, "exactly one accepted copy");
        let (headers, body) = &accepted[0];
        let got: Record = serde_json::from_slice(body).expect("a record");
        assert_eq!(got, sent);
        assert_eq!(headers["x-wasmtwin-event"], "decision");
        assert_eq!(headers["content-type"], "application/json");
        // Checked the way a receiver would, independently of `signature`.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret).expect("hmac");
        mac.update(body);
        let stated = headers["x-wasmtwin-signature"].to_str().expect("ascii");
        let hex_tag = stated.strip_prefix("sha256=").expect("sha256= prefix");
        mac.verify_slice(&hex::decode(hex_tag).expect("hex"))
            .expect("the signature verifies with the secret");
        assert_eq!(
            hooks.stats(),
            Stats {
                delivered: 1,
                failed: 0,
                dropped: 0
            }
        );
    }

    #[tokio::test]
    async fn a_receiver_that_keeps_failing_is_given_up_after_the_attempts() {
        let (url, receiver) = serve(usize::MAX).await;
        let options = Options {
            first_retry: Duration::from_millis(10),
            attempts: 3,
            ..Options::default()
        };
        let hooks = Webhooks::with_options(vec![url], None, options).expect("webhooks");
        hooks.deliver(&record(1));
        assert!(hooks.drained(Duration::from_secs(10)).await);
        assert_eq!(receiver.calls.load(Ordering::SeqCst), 3);
        assert_eq!(hooks.stats().failed, 1);
    }

    #[tokio::test]
    async fn records_still_queued_when_the_webhooks_are_dropped_are_not_sent() {
        let (url, receiver) = serve_receiver(Receiver {
            delay: Duration::from_millis(300),
            ..Receiver::default()
        })
        .await;
        let hooks = Webhooks::with_options(vec![url], None, quick()).expect("webhooks");
        hooks.deliver(&record(1));
        hooks.deliver(&record(2));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while receiver.calls.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the first record never came"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The first is in flight and finishes; the second is abandoned.
        drop(hooks);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(receiver.calls.load(Ordering::SeqCst), 1);
        assert_eq!(receiver.accepted.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_without_blocking() {
        // A receiver that accepts the connection and never answers: the
        // first record stays in flight, the rest queue up.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", silent.local_addr().expect("addr"));
        let options = Options {
            queue: 2,
            ..Options::default()
        };
        let hooks = Webhooks::with_options(vec![url], None, options).expect("webhooks");
        let started = std::time::Instant::now();
        for seq in 1..=10 {
            hooks.deliver(&record(seq));
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "deliver blocked"
        );
        let dropped = hooks.stats().dropped;
        // 10 records, 2 queued, at most 1 taken by the worker.
        assert!((7..=8).contains(&dropped), "dropped {dropped}");
        assert_eq!(hooks.pending() as u64, 10 - dropped);
    }

    #[test]
    fn urls_must_be_http() {
        assert!(Webhooks::new(vec!["ftp://example.com/x".into()], None).is_err());
        assert!(Webhooks::new(vec!["not a url".into()], None).is_err());
    }
}
