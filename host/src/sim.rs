//! `pt-sim`: a simulated industrial motor (the physical twin). It publishes
//! sequence-numbered, timestamped JSON telemetry at a given rate and obeys
//! the commands it receives: `stop`, `start`, `set_speed {"rpm"}`, and
//! `set_rate {"hz"}`, which changes its publishing rate at runtime (the
//! research paper's PT reconfiguration).

use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};

use crate::physical::BrokerAddress;

/// How the simulated device behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The broker.
    pub broker: BrokerAddress,
    /// MQTT client id.
    pub client_id: String,
    /// Where telemetry goes.
    pub topic: String,
    /// Where commands arrive.
    pub command_topic: Option<String>,
    /// Messages per second.
    pub rate_hz: f64,
    /// Stop after this many messages (`None`: run until stopped).
    pub count: Option<u64>,
    /// First sequence number.
    pub first_seq: u64,
}

/// The motor's physical state.
struct Motor {
    running: bool,
    rpm: f64,
    target_rpm: f64,
    temperature: f64,
    tick: u64,
}

impl Motor {
    /// Advances the physics one step and returns the telemetry fields.
    fn step(&mut self) -> Value {
        self.tick += 1;
        let target = if self.running { self.target_rpm } else { 0.0 };
        self.rpm += (target - self.rpm) * 0.3;
        // Heats with speed, cools toward 25 °C; a slow wobble stands for load.
        let wobble = ((self.tick as f64) / 20.0).sin();
        self.temperature += (25.0 + self.rpm / 40.0 + 3.0 * wobble - self.temperature) * 0.1;
        let vibration = 1.0 + self.rpm / 1000.0 + 0.5 * wobble.abs();
        json!({
            "temperature": (self.temperature * 10.0).round() / 10.0,
            "vibration": (vibration * 100.0).round() / 100.0,
            "rpm": self.rpm.round(),
            "running": self.running,
        })
    }

    fn obey(&mut self, command: &Value, rate_hz: &mut f64) {
        let name = command["command"].as_str().unwrap_or_default();
        let payload = &command["payload"];
        match name {
            "stop" => self.running = false,
            "start" => self.running = true,
            "set_speed" => {
                if let Some(rpm) = payload["rpm"].as_f64() {
                    self.target_rpm = rpm;
                }
            }
            "set_rate" => match payload["hz"].as_f64() {
                Some(hz) if hz > 0.0 && hz <= 10_000.0 => *rate_hz = hz,
                _ => tracing::warn!("set_rate needs {{\"hz\": number in (0, 10000]}}"),
            },
            other => tracing::warn!(command = other, "unknown command ignored"),
        }
        tracing::info!(command = name, %payload, "command executed");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the device until `count` messages are sent (or forever).
pub async fn run(config: SimConfig) -> anyhow::Result<u64> {
    let mut options = MqttOptions::new(
        &config.client_id,
        config.broker.host.clone(),
        config.broker.port,
    );
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_inflight(1000);
    if let Some((user, password)) = &config.broker.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    if config.broker.tls {
        options.set_transport(rumqttc::Transport::tls_with_default_config());
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let (commands_tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let command_topic = config.command_topic.clone();
    let subscriber = client.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    if let Some(topic) = &command_topic {
                        let _ = subscriber.subscribe(topic.clone(), QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    match serde_json::from_slice(&p.payload) {
                        Ok(command) => {
                            let _ = commands_tx.send(command);
                        }
                        Err(e) => tracing::warn!("ignoring a command that is not JSON: {e}"),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("broker connection lost: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });

    let mut motor = Motor {
        running: true,
        rpm: 0.0,
        target_rpm: 1500.0,
        temperature: 25.0,
        tick: 0,
    };
    let mut rate = config.rate_hz;
    let mut seq = config.first_seq;
    let mut sent = 0u64;
    let mut next = tokio::time::Instant::now();
    while config.count.is_none_or(|count| sent < count) {
        while let Ok(command) = commands.try_recv() {
            motor.obey(&command, &mut rate);
        }
        let mut telemetry = motor.step();
        telemetry["seq"] = json!(seq);
        telemetry["ts_ms"] = json!(now_ms());
        let payload = serde_json::to_vec(&telemetry).context("encoding telemetry")?;
        client
            .publish(config.topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
            .context("publishing telemetry")?;
        seq += 1;
        sent += 1;
        next += Duration::from_secs_f64(1.0 / rate);
        tokio::time::sleep_until(next).await;
    }
    // Give the event loop a moment to flush the last messages.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = client.disconnect().await;
    Ok(sent)
}
