//! Carries one client's connection to rumqttd and back, closing it in the
//! order rumqttd needs.
//!
//! rumqttd 0.20 frees a connection's id as soon as its router reads the
//! client's DISCONNECT. If the socket then closes before rumqttd has closed
//! it itself, rumqttd reports that id's disconnection a second time, and a
//! client that connected in between, which was given the freed id, is
//! dropped: a device publishing just after another client left saw its
//! connection aborted. So after a DISCONNECT the relay keeps rumqttd's side
//! open until rumqttd closes it, which it does once it has handled the
//! DISCONNECT; a client that leaves without one is closed at once, as
//! rumqttd then reports its disconnection only once.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How long rumqttd has to close a connection whose client sent
/// DISCONNECT, before the relay closes it anyway.
const BROKER_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The MQTT packet type of DISCONNECT (both 3.1.1 and 5).
const DISCONNECT: u8 = 14;

/// Bytes a pump reads at a time: 8 KiB, as `copy_bidirectional`, which
/// the relay replaced, so that each connection costs what it did.
const CHUNK: usize = 8 * 1024;

/// Relays bytes between `client` and `broker` until both have ended.
pub(super) async fn relay(client: TcpStream, broker: TcpStream) {
    let (mut client_in, mut client_out) = client.into_split();
    let (mut broker_in, mut broker_out) = broker.into_split();
    let mut framing = Framing::default();
    let upstream = pump(&mut client_in, &mut broker_out, |bytes| framing.feed(bytes));
    let mut downstream = std::pin::pin!(pump(&mut broker_in, &mut client_out, |_| {}));
    tokio::select! {
        // rumqttd closed first: nothing is left to carry.
        _ = &mut downstream => return,
        _ = upstream => {}
    }
    if !framing.ended_with(DISCONNECT) {
        let _ = broker_out.shutdown().await;
    }
    let _ = tokio::time::timeout(BROKER_CLOSE_WAIT, downstream).await;
}

/// Copies `from` to `to` until `from` ends, showing each chunk to `seen`
/// first. Once `to` fails, the rest is read and dropped: the relay must
/// still see `from` end (rumqttd may send a client that has just left a
/// message it had in flight, and its side must stay open until it closes
/// it).
async fn pump(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, mut seen: impl FnMut(&[u8])) {
    let mut buffer = vec![0u8; CHUNK];
    let mut writing = true;
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        seen(&buffer[..read]);
        writing = writing && to.write_all(&buffer[..read]).await.is_ok();
    }
}

/// Follows the packet boundaries of a client's byte stream, to know the
/// type of the last whole packet it sent.
#[derive(Debug, Default)]
struct Framing {
    at: Position,
    last: Option<u8>,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Position {
    /// Between packets.
    #[default]
    Start,
    /// In a packet's remaining length, `value` read so far from its
    /// bytes of weight `shift`.
    Length { kind: u8, value: usize, shift: u32 },
    /// In a packet's body, `left` bytes from its end.
    Body { kind: u8, left: usize },
    /// The stream is not MQTT (the broker will close it): boundaries are
    /// no longer known.
    Lost,
}

impl Framing {
    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&byte, rest)) = bytes.split_first() {
            match self.at {
                Position::Start => {
                    self.at = Position::Length {
                        kind: byte >> 4,
                        value: 0,
                        shift: 0,
                    };
                    bytes = rest;
                }
                Position::Length { kind, value, shift } => {
                    let value = value | usize::from(byte & 0x7f) << shift;
                    self.at = if byte & 0x80 != 0 {
                        // A remaining length has at most four bytes.
                        if shift == 21 {
                            Position::Lost
                        } else {
                            Position::Length {
                                kind,
                                value,
                                shift: shift + 7,
                            }
                        }
                    } else {
                        self.ended(kind, value)
                    };
                    bytes = rest;
                }
                Position::Body { kind, left } => {
                    let taken = left.min(bytes.len());
                    self.at = self.ended(kind, left - taken);
                    bytes = &bytes[taken..];
                }
                Position::Lost => return,
            }
        }
    }

    /// Where a packet of `kind` with `left` body bytes still to come is.
    fn ended(&mut self, kind: u8, left: usize) -> Position {
        if left > 0 {
            return Position::Body { kind, left };
        }
        self.last = Some(kind);
        Position::Start
    }

    /// Whether the stream stopped right after a whole packet of `kind`.
    fn ended_with(&self, kind: u8) -> bool {
        self.at == Position::Start && self.last == Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A 3.1.1 CONNECT, a QoS 1 PUBLISH with a 200-byte payload (a
    /// two-byte remaining length) and a DISCONNECT, as a client sends them.
    fn session() -> Vec<u8> {
        let mut bytes = vec![
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04,
            b'd', b'e', b'v', b'1',
        ];
        let topic = b"dev/a";
        let length = 2 + topic.len() + 2 + 200;
        bytes.extend([0x32, 0x80 | (length & 0x7f) as u8, (length >> 7) as u8]);
        bytes.extend((topic.len() as u16).to_be_bytes());
        bytes.extend(topic);
        bytes.extend([0x00, 0x01]);
        bytes.extend([0xaa; 200]);
        bytes.extend([0xe0, 0x00]);
        bytes
    }

    #[test]
    fn the_last_packet_is_known_however_the_stream_is_split() {
        let bytes = session();
        for cut in 0..bytes.len() {
            let mut framing = Framing::default();
            framing.feed(&bytes[..cut]);
            assert!(!framing.ended_with(DISCONNECT), "cut at {cut}");
            framing.feed(&bytes[cut..]);
            assert!(framing.ended_with(DISCONNECT), "cut at {cut}");
        }
        let mut byte_by_byte = Framing::default();
        for byte in &bytes {
            byte_by_byte.feed(std::slice::from_ref(byte));
        }
        assert!(byte_by_byte.ended_with(DISCONNECT));
        // Cut short inside the PUBLISH: the DISCONNECT's bytes are body.
        let mut cut_short = Framing::default();
        cut_short.feed(&bytes[..30]);
        cut_short.feed(&[0xe0, 0x00]);
        assert!(!cut_short.ended_with(DISCONNECT));
    }

    #[test]
    fn a_remaining_length_of_five_bytes_loses_the_boundaries() {
        let mut framing = Framing::default();
        framing.feed(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01, 0xe0, 0x00]);
        assert_eq!(framing.at, Position::Lost);
        assert!(!framing.ended_with(DISCONNECT));
    }

    /// A client, the relay, and a stand-in for rumqttd's listener: the
    /// client's socket and the accepted broker-side socket.
    async fn relayed() -> (TcpStream, TcpStream) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (front_at, broker_at) = (front.local_addr().unwrap(), broker.local_addr().unwrap());
        tokio::spawn(async move {
            let (client, _) = front.accept().await.unwrap();
            let upstream = TcpStream::connect(broker_at).await.unwrap();
            relay(client, upstream).await;
        });
        let client = TcpStream::connect(front_at).await.unwrap();
        let (broker_side, _) = broker.accept().await.unwrap();
        (client, broker_side)
    }

    /// Reads `socket` to its end, within `wait`: what came before it
    /// closed (or was reset), or `None` if it stays open.
    async fn read_to_end(socket: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let ended = tokio::time::timeout(wait, socket.read_to_end(&mut got)).await;
        ended.is_ok().then_some(got)
    }

    #[tokio::test]
    async fn after_a_disconnect_the_broker_closes_first() {
        let (mut client, mut broker) = relayed().await;
        let bytes = session();
        client.write_all(&bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = vec![0u8; bytes.len()];
        broker.read_exact(&mut got).await.unwrap();
        assert_eq!(got, bytes);
        // The client has gone, but the broker's side stays open...
        assert_eq!(
            read_to_end(&mut broker, Duration::from_millis(300)).await,
            None,
            "the relay closed the broker's side before the broker did"
        );
        // ...until the broker closes it, which ends the client's too.
        broker.write_all(b"bye").await.unwrap();
        drop(broker);
        let reply = read_to_end(&mut client, Duration::from_secs(5)).await;
        assert_eq!(reply.as_deref(), Some(&b"bye"[..]));
    }

    /// rumqttd may still send a client that has just left (a message it
    /// had in flight): the relay's writes to it fail, and rumqttd's side
    /// must stay open all the same.
    #[tokio::test]
    async fn after_a_disconnect_the_broker_closes_first_even_if_it_still_sends() {
        let (mut client, mut broker) = relayed().await;
        let bytes = session();
        client.write_all(&bytes).await.unwrap();
        drop(client);
        let mut got = vec![0u8; bytes.len()];
        broker.read_exact(&mut got).await.unwrap();
        for _ in 0..20 {
            if broker.write_all(&[0x30; 1024]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            read_to_end(&mut broker, Duration::from_millis(300)).await,
            None,
            "the relay closed the broker's side before the broker did"
        );
    }

    #[tokio::test]
    async fn a_client_gone_without_a_disconnect_is_closed_at_once() {
        let (mut client, mut broker) = relayed().await;
        let bytes = session();
        // Everything but the DISCONNECT.
        let sent = &bytes[..bytes.len() - 2];
        client.write_all(sent).await.unwrap();
        drop(client);
        let got = read_to_end(&mut broker, Duration::from_secs(5)).await;
        assert_eq!(got.as_deref(), Some(sent));
    }
}
