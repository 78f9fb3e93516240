//! The embedded MQTT broker (rumqttd), so that `wasmtwin up` works on a
//! machine with no broker installed. Deployments use their own broker
//! (Mosquitto or any MQTT 3.1.1 broker); the node speaks the same protocol
//! to both.

use std::net::SocketAddr;

use anyhow::Context;
use serde_json::json;

/// Starts a broker listening on `listen` in a background thread and waits
/// until it accepts connections.
pub fn start(listen: SocketAddr) -> anyhow::Result<()> {
    // rumqttd takes its configuration as a serde document; these are its
    // documented defaults, with payloads up to 1 MiB.
    let config: rumqttd::Config = serde_json::from_value(json!({
        "id": 0,
        "router": {
            "max_connections": 20_010,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 104_857_600,
            "max_segment_count": 10,
        },
        "v4": {
            "1": {
                "name": "wasmtwin-embedded",
                "listen": listen.to_string(),
                "next_connection_delay_ms": 1,
                "connections": {
                    "connection_timeout_ms": 60_000,
                    "max_payload_size": 1_048_576,
                    "max_inflight_count": 200,
                    "dynamic_filters": true,
                },
            },
        },
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !answers(listen) {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the embedded broker did not listen on {listen} within 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    tracing::info!(%listen, "embedded MQTT broker listening");
    Ok(())
}

/// Whether a socket listens on `listen`'s port. Read from the kernel's
/// table where there is one: a probe connection would make the broker log
/// an error for the client that came and went.
fn answers(listen: SocketAddr) -> bool {
    let port = format!(":{:04X} ", listen.port());
    let tables = ["/proc/net/tcp", "/proc/net/tcp6"].map(std::fs::read_to_string);
    if tables.iter().all(Result::is_err) {
        return std::net::TcpStream::connect(listen).is_ok();
    }
    tables.iter().flatten().flat_map(|t| t.lines()).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let local = fields.next().unwrap_or_default();
        let state = fields.nth(1).unwrap_or_default();
        // State 0A is LISTEN.
        format!("{local} ").contains(&port) && state == "0A"
    })
}
