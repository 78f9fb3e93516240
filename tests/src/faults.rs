//! A fault-injecting TCP proxy: it forwards a connection both ways, and
//! cuts it when the client sends a given byte string — a node that dies at
//! a chosen step of a protocol, without touching the node's code.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

/// A proxy on 127.0.0.1 in front of `upstream`; stops with its last clone.
pub struct FaultProxy {
    /// The port it listens on.
    pub port: u16,
    stopping: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl FaultProxy {
    /// Forwards to 127.0.0.1:`upstream`, cutting (both ways, before
    /// forwarding them) any connection on which the client sends `trigger`.
    pub fn start(upstream: u16, trigger: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().expect("its address").port();
        let stopping = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (stop, cut) = (stopping.clone(), cuts.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let cut = cut.clone();
                let (c, s) = (
                    client.try_clone().expect("a client handle"),
                    server.try_clone().expect("a server handle"),
                );
                thread::spawn(move || pump(s, c, None));
                thread::spawn(move || pump(client, server, Some((trigger, cut))));
            }
        });
        Self {
            port,
            stopping,
            cuts,
        }
    }

    /// The proxy as an HTTP base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many connections it cut.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` until either ends; with a trigger, cuts both when
/// it shows up (also across two reads).
fn pump(mut from: TcpStream, mut to: TcpStream, trigger: Option<(&[u8], Arc<AtomicUsize>)>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((trigger, cuts)) = &trigger {
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(trigger.len()).any(|w| w == *trigger) {
                cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
            let keep = tail.len().saturating_sub(trigger.len());
            tail.drain(..keep);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
