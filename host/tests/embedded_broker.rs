//! The embedded broker under clients that come and go several at once, as
//! a twin's session, its discarding after a move and a device's publisher
//! do. rumqttd reports a connection's end twice when its socket closes
//! after its DISCONNECT was read, and the second report ends whichever
//! client has been given that connection's id since: a device publishing
//! just after a twin moved saw its connection aborted. The broker's own
//! log tells each second report ("already gone"), so the test counts them
//! as well as the clients that lost their connection. It also reads the
//! log through the layer `wasmtwin` logs with: rumqttd reports each clean
//! DISCONNECT as an error ("router-drop"), which an operator of `wasmtwin
//! up` saw for every twin moved, and that layer silences it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};

/// What rumqttd logs at error level, kept to be read by the test.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Connects as `id`, publishes once at QoS 1, and leaves with a
/// DISCONNECT, closing the socket right after as clients do; what went
/// wrong, if anything.
async fn visit(port: u16, id: String) -> Result<(), String> {
    let (client, mut events) = AsyncClient::new(MqttOptions::new(&id, "127.0.0.1", port), 4);
    client
        .publish("churn/a", QoS::AtLeastOnce, false, "x")
        .await
        .map_err(|e| format!("{id}: {e}"))?;
    let mut leaving = false;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Incoming::PubAck(_))) => {
                client
                    .disconnect()
                    .await
                    .map_err(|e| format!("{id}: {e}"))?;
                leaving = true;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
            Ok(_) => {}
            Err(e) if leaving => return Err(format!("{id}, leaving: {e}")),
            Err(e) => return Err(format!("{id}: {e}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_coming_and_going_never_drop_each_other() {
    let log = Log::default();
    let writer = log.clone();
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("rumqttd=error"))
            .with(wasmtwin::broker::QuietCleanEnds)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            )
            .init();
    }
    let port = tokio::task::spawn_blocking(|| wasmtwin::broker::start(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap()
        .expect("the embedded broker")
        .port();

    // 16 clients at a time, 800 in all.
    let workers: Vec<_> = (0..16)
        .map(|worker| {
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for round in 0..50 {
                    if let Err(e) = visit(port, format!("churn-{worker}-{round}")).await {
                        failed.push(e);
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for worker in workers {
        failed.extend(worker.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} of 800 clients lost their connection: {failed:?}",
        failed.len()
    );
    // The broker hears of the last clients' ends a little after they left.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).to_string();
    let twice = logged
        .lines()
        .filter(|l| l.contains("already gone"))
        .count();
    assert_eq!(
        twice, 0,
        "the broker was told of {twice} ends twice, each able to drop a bystander:\n{logged}"
    );
    // Every client left cleanly: nothing went wrong, and `wasmtwin up`'s
    // log (which uses the same layer) says nothing at error level.
    assert!(
        logged.trim().is_empty(),
        "the broker logged errors for clients that left cleanly:\n{logged}"
    );
}
