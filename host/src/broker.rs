//! The embedded MQTT broker (rumqttd), so that `wasmtwin up` works on a
//! machine with no broker installed. Deployments use their own broker
//! (Mosquitto or any MQTT 5 broker); the node speaks the same protocol to
//! both.
//!
//! Like Mosquitto, it takes MQTT 3.1.1 and MQTT 5 clients on one port:
//! nodes speak 5, devices often 3.1.1. rumqttd listens for one version
//! per port, so it listens on two loopback ports of its own, and the
//! public port hands each connection to the one its CONNECT packet names.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

mod relay;

/// Starts a broker listening on `listen` in background threads, waits
/// until it accepts connections, and returns the address it listens on
/// (port 0 in `listen` takes a port the system picks).
pub fn start(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    // Bound before anything starts, so a port in use fails here, plainly.
    let public = std::net::TcpListener::bind(listen)
        .with_context(|| format!("the embedded broker cannot listen on {listen}"))?;
    let listen = public
        .local_addr()
        .context("reading the embedded broker's port")?;
    let inner = Inner {
        v4: spare_loopback_port()?,
        v5: spare_loopback_port()?,
    };
    start_rumqttd(inner)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listeners = [inner.v4, inner.v5].map(listener);
        // rumqttd binds the ports a moment after they were found free: had
        // another process taken one meanwhile, the front would hand it our
        // clients.
        if listeners.contains(&Listener::Another) {
            anyhow::bail!(
                "another process took one of the embedded broker's loopback ports ({} and {}) \
                 as it started; start again",
                inner.v4.port(),
                inner.v5.port()
            );
        }
        if listeners == [Listener::Us, Listener::Us] {
            break;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the embedded broker did not listen within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    public
        .set_nonblocking(true)
        .context("setting up the embedded broker's port")?;
    std::thread::Builder::new()
        .name("mqtt-front".into())
        .spawn(move || front(public, inner))
        .context("starting the embedded broker")?;
    tracing::info!(%listen, "embedded MQTT broker listening (MQTT 3.1.1 and 5)");
    Ok(listen)
}

/// The loopback ports rumqttd listens on, one per protocol version.
#[derive(Debug, Clone, Copy)]
struct Inner {
    v4: SocketAddr,
    v5: SocketAddr,
}

/// A loopback port nothing listens on now.
fn spare_loopback_port() -> anyhow::Result<SocketAddr> {
    let probe = std::net::TcpListener::bind(("127.0.0.1", 0))
        .context("finding a loopback port for the embedded broker")?;
    probe
        .local_addr()
        .context("finding a loopback port for the embedded broker")
}

fn start_rumqttd(inner: Inner) -> anyhow::Result<()> {
    // rumqttd takes its configuration as a serde document; these are its
    // documented defaults, with payloads up to 1 MiB.
    let listener = |name: &str, listen: SocketAddr| {
        json!({ "1": {
            "name": name,
            "listen": listen.to_string(),
            "next_connection_delay_ms": 1,
            "connections": {
                "connection_timeout_ms": 60_000,
                "max_payload_size": 1_048_576,
                "max_inflight_count": 200,
                "dynamic_filters": true,
            },
        }})
    };
    let config: rumqttd::Config = serde_json::from_value(json!({
        "id": 0,
        "router": {
            "max_connections": 20_010,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 104_857_600,
            "max_segment_count": 10,
        },
        "v4": listener("wasmtwin-embedded-v4", inner.v4),
        "v5": listener("wasmtwin-embedded-v5", inner.v5),
    }))
    .context("building the embedded broker's configuration")?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {e}");
            }
        })
        .context("starting the embedded broker")?;
    Ok(())
}

/// A log layer that silences one line of rumqttd's: it logs, at error
/// level, `router-drop` with `Recv(Disconnected)` each time its router
/// ends a connection, which it does for every client that leaves with a
/// DISCONNECT (a twin stopped or moved, a device done publishing). The
/// router logs the ends that are faults (malformed packets, a session
/// taken over) itself, so only the ordinary end is lost; every other
/// rumqttd line passes.
pub struct QuietCleanEnds;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietCleanEnds {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::ERROR || !meta.target().starts_with("rumqttd::") {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        !(fields.message == "router-drop" && fields.error == "Recv(Disconnected)")
    }
}

/// The two fields of a rumqttd event that tell an ordinary end.
#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}

/// Accepts connections on the public port for as long as the process runs.
fn front(public: std::net::TcpListener, inner: Inner) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("embedded MQTT broker: no runtime for its port: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let public = match TcpListener::from_std(public) {
            Ok(public) => public,
            Err(e) => {
                tracing::error!("embedded MQTT broker: {e}");
                return;
            }
        };
        loop {
            match public.accept().await {
                Ok((client, _)) => {
                    tokio::spawn(hand_over(client, inner));
                }
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to close.
                    tracing::warn!("embedded MQTT broker: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

/// How long a client has to send the start of its CONNECT packet.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Passes `client` to rumqttd's listener for the version it connects with.
async fn hand_over(mut client: TcpStream, inner: Inner) {
    let _ = client.set_nodelay(true);
    let version = match tokio::time::timeout(CONNECT_WAIT, protocol_level(&client)).await {
        Ok(Some(level)) => level,
        // Closed, or not MQTT: nothing to pass on.
        Ok(None) | Err(_) => return,
    };
    let target = if version == 5 { inner.v5 } else { inner.v4 };
    let Ok(broker) = TcpStream::connect(target).await else {
        let _ = client.shutdown().await;
        return;
    };
    let _ = broker.set_nodelay(true);
    relay::relay(client, broker).await;
}

/// The protocol level of the CONNECT packet `client` starts with, read
/// without consuming it; `None` if the connection ends first or does not
/// start with a CONNECT.
async fn protocol_level(client: &TcpStream) -> Option<u8> {
    let mut head = [0u8; 16];
    loop {
        let seen = client.peek(&mut head).await.ok()?;
        if seen == 0 {
            return None;
        }
        match level_in(&head[..seen]) {
            Level::Known(level) => return Some(level),
            Level::NotConnect => return None,
            Level::NeedMore if seen == head.len() => return None,
            // peek returns at once while anything is buffered: wait a little
            // for the rest of a header split across segments.
            Level::NeedMore => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Level {
    Known(u8),
    NeedMore,
    NotConnect,
}

/// Reads a CONNECT's protocol level from the first bytes of a connection:
/// the fixed header (type, then a remaining length of 1–4 bytes), the
/// protocol name (`MQTT`, or `MQIsdp` for 3.1) and the level.
fn level_in(head: &[u8]) -> Level {
    const CONNECT: u8 = 0x10;
    let Some(&kind) = head.first() else {
        return Level::NeedMore;
    };
    if kind != CONNECT {
        return Level::NotConnect;
    }
    // The remaining length: its last byte has the top bit clear.
    let Some(length_bytes) = head[1..].iter().take(4).position(|b| b & 0x80 == 0) else {
        return if head.len() >= 5 {
            Level::NotConnect
        } else {
            Level::NeedMore
        };
    };
    let name_at = 2 + length_bytes;
    let Some(name) = head.get(name_at..name_at + 2) else {
        return Level::NeedMore;
    };
    let name_length = usize::from(u16::from_be_bytes([name[0], name[1]]));
    if name_length > 6 {
        return Level::NotConnect;
    }
    match head.get(name_at + 2 + name_length) {
        Some(&level) => Level::Known(level),
        None => Level::NeedMore,
    }
}

/// Who listens on a loopback port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Nobody,
    /// A socket of this process.
    Us,
    Another,
}

/// Who listens on `listen`'s port, from the kernel's tables and this
/// process's open files (a probe connection would make the broker log an
/// error for the client that came and went). Without `/proc`, a socket
/// that takes a connection counts as ours.
fn listener(listen: SocketAddr) -> Listener {
    let tables = ["/proc/net/tcp", "/proc/net/tcp6"].map(std::fs::read_to_string);
    let fds = std::fs::read_dir("/proc/self/fd");
    let (Ok(fds), false) = (fds, tables.iter().all(Result::is_err)) else {
        return match std::net::TcpStream::connect(listen) {
            Ok(_) => Listener::Us,
            Err(_) => Listener::Nobody,
        };
    };
    let ours: std::collections::HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let tables: Vec<&str> = tables.iter().flatten().map(String::as_str).collect();
    listening(&tables, listen.port(), &ours)
}

/// Who listens on `port` by `tables` (the text of `/proc/net/tcp` and
/// `tcp6`), `ours` being the inodes of this process's sockets.
fn listening(tables: &[&str], port: u16, ours: &std::collections::HashSet<u64>) -> Listener {
    let port = format!(":{port:04X}");
    let mut found = Listener::Nobody;
    for line in tables.iter().flat_map(|t| t.lines()) {
        // sl, local address, remote address, state, queues, timer,
        // retransmits, uid, timeout, inode.
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(&state), Some(inode)) =
            (fields.get(1), fields.get(3), fields.get(9))
        else {
            continue;
        };
        // State 0A is LISTEN.
        if !local.ends_with(&port) || state != "0A" {
            continue;
        }
        match inode.parse() {
            Ok(inode) if ours.contains(&inode) => found = Listener::Us,
            _ => return Listener::Another,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port's listener is told ours or another's by its socket's inode.
    #[test]
    fn a_port_is_known_free_ours_or_taken_by_another_process() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0";
        let ours = std::collections::HashSet::from([4242]);
        assert_eq!(listening(&[table], 0x1F90, &ours), Listener::Us);
        // Connected, not listening.
        assert_eq!(listening(&[table], 0x1F91, &ours), Listener::Nobody);
        assert_eq!(listening(&[table], 0x1F92, &ours), Listener::Another);
        assert_eq!(listening(&[table], 0x1F93, &ours), Listener::Nobody);

        // And from the real tables: a socket this process listens on.
        let bound = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        assert_eq!(listener(bound.local_addr().unwrap()), Listener::Us);
    }

    /// The start of a CONNECT for protocol `name` at `level`, with a
    /// remaining length written in `length_bytes` bytes.
    fn connect_head(name: &str, level: u8, length_bytes: usize) -> Vec<u8> {
        let mut head = vec![0x10];
        head.extend(std::iter::repeat_n(0x80, length_bytes - 1));
        head.push(0x01);
        head.extend((name.len() as u16).to_be_bytes());
        head.extend(name.as_bytes());
        head.push(level);
        head.extend([0x02, 0x00, 0x3c]);
        head
    }

    #[test]
    fn a_connects_protocol_level_is_read_from_any_prefix_of_it() {
        for (name, level) in [("MQTT", 5), ("MQTT", 4), ("MQIsdp", 3)] {
            for length_bytes in 1..=4 {
                let head = connect_head(name, level, length_bytes);
                let level_at = 1 + length_bytes + 2 + name.len();
                for cut in 0..head.len() {
                    let expected = if cut > level_at {
                        Level::Known(level)
                    } else {
                        Level::NeedMore
                    };
                    assert_eq!(
                        level_in(&head[..cut]),
                        expected,
                        "{name} {length_bytes} {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn what_is_not_a_connect_is_told_at_once() {
        assert_eq!(level_in(b"GET / HTTP/1.1\r\n"), Level::NotConnect);
        assert_eq!(
            level_in(&[0x10, 0x80, 0x80, 0x80, 0x80, 0x01]),
            Level::NotConnect
        );
        assert_eq!(level_in(&[0x10, 0x0a, 0x00, 0x40, b'M']), Level::NotConnect);
    }

    /// A 3.1.1 device and an MQTT 5 client share the broker's one port: a
    /// device's message reaches the other, and a 5 client's user
    /// properties (a `traceparent`) arrive with its message.
    #[tokio::test(flavor = "multi_thread")]
    async fn one_port_takes_mqtt_3_1_1_and_5_and_carries_user_properties() {
        use rumqttc::v5::mqttbytes::v5::PublishProperties;
        let port = spare_loopback_port().unwrap().port();
        tokio::task::spawn_blocking(move || start(([127, 0, 0, 1], port).into()))
            .await
            .unwrap()
            .unwrap();

        let (five, mut five_loop) = rumqttc::v5::AsyncClient::new(
            rumqttc::v5::MqttOptions::new("five", "127.0.0.1", port),
            10,
        );
        five.subscribe("dev/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await
            .unwrap();
        let (old, mut old_loop) =
            rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("old", "127.0.0.1", port), 10);
        let (subscribed, confirmed) = tokio::sync::oneshot::channel();
        let received = tokio::spawn(async move {
            let mut subscribed = Some(subscribed);
            let mut got = Vec::new();
            while got.len() < 2 {
                match five_loop.poll().await.expect("the 5 client's session") {
                    rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::SubAck(_)) => {
                        subscribed.take().map(|s| s.send(()));
                    }
                    rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Publish(p)) => got.push(p),
                    _ => {}
                }
            }
            got
        });
        tokio::time::timeout(Duration::from_secs(10), confirmed)
            .await
            .expect("the subscription confirmed within 10 s")
            .unwrap();
        old.publish("dev/a", rumqttc::QoS::AtLeastOnce, false, "from 3.1.1")
            .await
            .unwrap();
        let old_driver = tokio::spawn(async move { while old_loop.poll().await.is_ok() {} });
        // Sent after the 3.1.1 message has had time to pass: the order of
        // two publishers' messages is otherwise not defined.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let properties = PublishProperties {
            user_properties: vec![("traceparent".into(), "00-ab-cd-01".into())],
            ..Default::default()
        };
        five.publish_with_properties(
            "dev/b",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "from 5",
            properties,
        )
        .await
        .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), received)
            .await
            .expect("both messages within 10 s")
            .unwrap();
        old_driver.abort();
        assert_eq!(&got[0].payload[..], b"from 3.1.1");
        assert_eq!(&got[1].payload[..], b"from 5");
        let carried = got[1]
            .properties
            .as_ref()
            .map(|p| p.user_properties.clone());
        assert_eq!(
            carried,
            Some(vec![("traceparent".to_string(), "00-ab-cd-01".to_string())])
        );
    }
}
