//! A fault-injecting TCP proxy in front of a server on 127.0.0.1: it
//! forwards each connection both ways and, as a test asks, at runtime:
//!
//! - cuts a connection when the client sends a given byte string (a node
//!   that dies at a chosen step of a protocol, without touching its code);
//! - delays each direction by a one-way latency, with uniform jitter
//!   (± `jitter`);
//! - "loses" data, as loss shows up above TCP;
//! - cuts every open connection at once (a node that vanishes).
//!
//! ## How loss is modelled
//! The protocols under test (MQTT, HTTP) run over TCP, and TCP never lets
//! the application see a lost segment: it retransmits it after a
//! retransmission timeout (RTO, at least 200 ms on Linux), and everything
//! sent behind it waits (head-of-line blocking). So here, with probability
//! `loss`, a chunk read from one side is held back by an extra `rto` before
//! it is written to the other, and the chunks behind it wait for it. Bytes
//! are never dropped, duplicated or reordered within a connection: what
//! changes is when they arrive, which is what the application sees of a
//! lossy network. (Repeated losses of one segment, with the RTO doubling,
//! are not modelled.)
//!
//! ## How delay is applied
//! Per connection and direction, a reader thread stamps each chunk it reads
//! with its due time (now + latency ± jitter, + RTO if "lost", but never
//! before the chunk ahead of it) and a writer thread sleeps until each
//! chunk is due and writes it. Settings are read per chunk, so a change
//! applies to data read after it, on open connections too.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Which way data flows through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the upstream server.
    Up,
    /// From the upstream server back to the client.
    Down,
    /// Both ways.
    Both,
}

impl Direction {
    fn indices(self) -> &'static [usize] {
        match self {
            Direction::Up => &[UP],
            Direction::Down => &[DOWN],
            Direction::Both => &[UP, DOWN],
        }
    }
}

const UP: usize = 0;
const DOWN: usize = 1;

/// How one direction of the proxy treats data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Added one-way latency.
    pub delay: Duration,
    /// Uniform jitter: each chunk's latency is `delay` ± up to this (never
    /// below zero).
    pub jitter: Duration,
    /// Probability in [0, 1] that a chunk is "lost" and so arrives `rto`
    /// later (see the module doc).
    pub loss: f64,
    /// The retransmission timeout a lost chunk costs.
    pub rto: Duration,
}

impl Default for Link {
    /// A perfect link: no delay, no loss; a loss costs 200 ms (Linux's
    /// minimum RTO).
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rto: Duration::from_millis(200),
        }
    }
}

/// A proxy on 127.0.0.1 in front of `upstream`; stops accepting when
/// dropped (open connections run on until either end closes).
pub struct FaultProxy {
    /// The port it listens on.
    pub port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    stopping: AtomicBool,
    refusing: AtomicBool,
    cuts: AtomicUsize,
    /// Up, down.
    links: Mutex<[Link; 2]>,
    /// Open connections: both sockets, to cut them from outside.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    seed: AtomicU64,
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, [Link; 2]> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self) -> MutexGuard<'_, HashMap<u64, (TcpStream, TcpStream)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets connection `id`, shutting both its sockets.
    fn close(&self, id: u64) {
        if let Some((client, server)) = self.open().remove(&id) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

impl FaultProxy {
    /// Forwards to 127.0.0.1:`upstream`, cutting (both ways, before
    /// forwarding them) any connection on which the client sends `trigger`.
    pub fn start(upstream: u16, trigger: &'static [u8]) -> std::io::Result<Self> {
        Self::launch(upstream, Some(trigger))
    }

    /// Forwards to 127.0.0.1:`upstream` unchanged until told otherwise.
    pub fn plain(upstream: u16) -> std::io::Result<Self> {
        Self::launch(upstream, None)
    }

    fn launch(upstream: u16, trigger: Option<&'static [u8]>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            cuts: AtomicUsize::new(0),
            links: Mutex::new([Link::default(); 2]),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            seed: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x9e37_79b9_7f4a_7c15),
            ),
        });
        let for_accept = shared.clone();
        thread::spawn(move || accept(listener, upstream, trigger, for_accept));
        Ok(Self { port, shared })
    }

    /// The proxy as an HTTP base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many connections it cut on the trigger.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Sets every property of `direction` at once.
    pub fn set(&self, direction: Direction, link: Link) {
        self.update(direction, |l| *l = link);
    }

    /// The settings of one direction (`Up` or `Down`; `Both` reads `Up`).
    pub fn link(&self, direction: Direction) -> Link {
        self.shared.links()[direction.indices()[0]]
    }

    /// Adds `ms` of one-way latency to `direction`.
    pub fn delay(&self, direction: Direction, ms: u64) {
        self.update(direction, |l| l.delay = Duration::from_millis(ms));
    }

    /// Jitters `direction`'s latency by up to ± `ms`.
    pub fn jitter(&self, direction: Direction, ms: u64) {
        self.update(direction, |l| l.jitter = Duration::from_millis(ms));
    }

    /// "Loses" chunks of `direction` with probability `p` (clamped to
    /// [0, 1]): each costs a retransmission timeout.
    pub fn loss(&self, direction: Direction, p: f64) {
        self.update(direction, |l| l.loss = p.clamp(0.0, 1.0));
    }

    /// Sets the retransmission timeout a lost chunk of `direction` costs.
    pub fn rto(&self, direction: Direction, ms: u64) {
        self.update(direction, |l| l.rto = Duration::from_millis(ms));
    }

    /// Back to a perfect link both ways.
    pub fn heal(&self) {
        self.set(Direction::Both, Link::default());
    }

    /// Closes every open connection, both ways; answers how many.
    pub fn cut_all(&self) -> usize {
        let open: Vec<u64> = self.shared.open().keys().copied().collect();
        for id in &open {
            self.shared.close(*id);
        }
        open.len()
    }

    /// While `refuse`, closes new connections as soon as they arrive (with
    /// [`FaultProxy::cut_all`]: a node that is gone, not just restarted).
    pub fn refuse(&self, refuse: bool) {
        self.shared.refusing.store(refuse, Ordering::SeqCst);
    }

    fn update(&self, direction: Direction, change: impl Fn(&mut Link)) {
        let mut links = self.shared.links();
        for &i in direction.indices() {
            change(&mut links[i]);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept(
    listener: TcpListener,
    upstream: u16,
    trigger: Option<&'static [u8]>,
    shared: Arc<Shared>,
) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        if shared.refusing.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
            continue;
        };
        // The proxy's own delays are the point: no Nagle delay on top.
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        shared.open().insert(id, (c, s));
        let seed = shared
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::SeqCst);
        let up = Pump {
            id,
            direction: UP,
            trigger,
            shared: shared.clone(),
            rng: Rng(seed),
        };
        let down = Pump {
            id,
            direction: DOWN,
            trigger: None,
            shared: shared.clone(),
            rng: Rng(seed ^ 0xd1b5_4a32_d192_ed03),
        };
        up.start(client.try_clone(), server.try_clone());
        down.start(server.try_clone(), client.try_clone());
    }
}

/// What the reader hands the writer.
enum Chunk {
    /// Bytes to write once due.
    Data(Instant, Vec<u8>),
    /// The trigger showed up: cut once what came before it is written.
    Cut,
}

/// One direction of one connection.
struct Pump {
    id: u64,
    direction: usize,
    trigger: Option<&'static [u8]>,
    shared: Arc<Shared>,
    rng: Rng,
}

impl Pump {
    fn start(self, from: std::io::Result<TcpStream>, to: std::io::Result<TcpStream>) {
        let (Ok(from), Ok(to)) = (from, to) else {
            self.shared.close(self.id);
            return;
        };
        let (chunks, due) = mpsc::channel();
        let (id, shared) = (self.id, self.shared.clone());
        thread::spawn(move || self.read(from, chunks));
        thread::spawn(move || write(to, due, id, shared));
    }

    /// Reads `from`, stamping each chunk with when it is due, until it ends
    /// (then the writer finishes what is queued and closes).
    fn read(mut self, mut from: TcpStream, chunks: mpsc::Sender<Chunk>) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut tail: Vec<u8> = Vec::new();
        let mut last_due = Instant::now();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(trigger) = self.trigger {
                tail.extend_from_slice(&buf[..n]);
                if tail.windows(trigger.len()).any(|w| w == trigger) {
                    self.shared.cuts.fetch_add(1, Ordering::SeqCst);
                    let _ = chunks.send(Chunk::Cut);
                    return;
                }
                let keep = tail.len().saturating_sub(trigger.len());
                tail.drain(..keep);
            }
            let link = self.shared.links()[self.direction];
            // TCP delivers in order: a chunk held back holds back the
            // ones behind it.
            let due = (Instant::now() + self.latency(&link)).max(last_due);
            last_due = due;
            if chunks.send(Chunk::Data(due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    }

    /// This chunk's one-way latency under `link`.
    fn latency(&mut self, link: &Link) -> Duration {
        let mut latency = link.delay;
        if !link.jitter.is_zero() {
            // Uniform in [-jitter, +jitter].
            let spread = link.jitter.as_secs_f64() * (2.0 * self.rng.unit() - 1.0);
            latency = Duration::from_secs_f64((latency.as_secs_f64() + spread).max(0.0));
        }
        if link.loss > 0.0 && self.rng.unit() < link.loss {
            latency += link.rto;
        }
        latency
    }
}

/// Writes each chunk to `to` when it is due; when the reader is done (or
/// cut), closes the connection both ways.
fn write(mut to: TcpStream, chunks: mpsc::Receiver<Chunk>, id: u64, shared: Arc<Shared>) {
    while let Ok(chunk) = chunks.recv() {
        let Chunk::Data(due, bytes) = chunk else {
            break;
        };
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        if to.write_all(&bytes).is_err() {
            break;
        }
    }
    shared.close(id);
}

/// splitmix64: jitter and loss need fair coins, not a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
