//! The fault proxy's delay, jitter, loss and cuts, measured through an
//! echo server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use wasmtwin_tests::faults::{Direction, FaultProxy};

/// An echo server on 127.0.0.1; its port.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let Ok(mut out) = conn.try_clone() else {
                    return;
                };
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// One small message there and back.
fn round_trip(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    stream.write_all(b"ping").expect("write");
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"ping");
    started.elapsed()
}

#[test]
fn delay_each_way_adds_up_over_a_round_trip() {
    let proxy = FaultProxy::plain(echo_server()).expect("starting the proxy");
    let mut stream = connect(&proxy);
    let baseline = round_trip(&mut stream);
    assert!(
        baseline < Duration::from_millis(50),
        "baseline {baseline:?}"
    );
    proxy.delay(Direction::Both, 50);
    for _ in 0..3 {
        let rtt = round_trip(&mut stream);
        assert!(rtt >= Duration::from_millis(100), "round trip {rtt:?}");
        assert!(rtt < Duration::from_millis(400), "round trip {rtt:?}");
    }
    // One way only: half of it.
    proxy.delay(Direction::Down, 0);
    let rtt = round_trip(&mut stream);
    assert!(rtt >= Duration::from_millis(50), "round trip {rtt:?}");
    assert!(rtt < Duration::from_millis(300), "round trip {rtt:?}");
}

#[test]
fn a_lost_chunk_costs_a_retransmission_timeout() {
    let proxy = FaultProxy::plain(echo_server()).expect("starting the proxy");
    let mut stream = connect(&proxy);
    let baseline = round_trip(&mut stream);
    assert!(
        baseline < Duration::from_millis(50),
        "baseline {baseline:?}"
    );
    proxy.rto(Direction::Up, 200);
    proxy.loss(Direction::Up, 1.0);
    let rtt = round_trip(&mut stream);
    // The whole timeout on top of a loopback round trip that takes well
    // under a millisecond.
    assert!(rtt >= Duration::from_millis(200), "round trip {rtt:?}");
    assert!(rtt < Duration::from_millis(600), "round trip {rtt:?}");
    // Both ways lost: two timeouts.
    proxy.rto(Direction::Down, 200);
    proxy.loss(Direction::Down, 1.0);
    let rtt = round_trip(&mut stream);
    assert!(rtt >= Duration::from_millis(400), "round trip {rtt:?}");
    proxy.heal();
    let rtt = round_trip(&mut stream);
    assert!(
        rtt < Duration::from_millis(100),
        "healed round trip {rtt:?}"
    );
}

#[test]
fn bytes_arrive_intact_and_in_order_under_jitter_and_loss() {
    const CHUNKS: u64 = 10_000;
    let proxy = FaultProxy::plain(echo_server()).expect("starting the proxy");
    proxy.delay(Direction::Both, 5);
    proxy.jitter(Direction::Both, 5);
    proxy.loss(Direction::Both, 0.01);
    proxy.rto(Direction::Both, 20);
    let stream = connect(&proxy);
    let mut writer = stream.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        for n in 0..CHUNKS {
            writer.write_all(&n.to_be_bytes()).expect("write");
            if n % 100 == 0 {
                // Spread the writes over time, so chunks get different
                // delays and would overtake each other if the proxy let
                // them.
                thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let mut reader = stream;
    let mut word = [0u8; 8];
    for n in 0..CHUNKS {
        reader.read_exact(&mut word).expect("echo");
        assert_eq!(u64::from_be_bytes(word), n, "out of order or corrupted");
    }
    sender.join().expect("sender");
}

#[test]
fn cut_all_closes_open_connections_and_refuse_keeps_new_ones_out() {
    let proxy = FaultProxy::plain(echo_server()).expect("starting the proxy");
    let mut first = connect(&proxy);
    let mut second = connect(&proxy);
    round_trip(&mut first);
    round_trip(&mut second);
    assert_eq!(proxy.cut_all(), 2);
    for stream in [&mut first, &mut second] {
        let mut buf = [0u8; 1];
        // Closed: end of stream or a reset, not a timeout.
        match stream.read(&mut buf) {
            Ok(0) => {}
            Ok(_) => panic!("data after the cut"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{e}"
            ),
        }
    }
    proxy.refuse(true);
    let mut refused = connect(&proxy);
    let _ = refused.write_all(b"ping");
    let mut buf = [0u8; 4];
    assert!(matches!(refused.read(&mut buf), Ok(0) | Err(_)));
    proxy.refuse(false);
    let mut again = connect(&proxy);
    round_trip(&mut again);
}

#[test]
fn the_trigger_still_cuts_before_forwarding() {
    let proxy = FaultProxy::start(echo_server(), b"BOOM").expect("starting the proxy");
    let mut stream = connect(&proxy);
    round_trip(&mut stream);
    stream.write_all(b"xxBOOM").expect("write");
    let mut buf = [0u8; 8];
    assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));
    assert_eq!(proxy.cuts(), 1);
}
