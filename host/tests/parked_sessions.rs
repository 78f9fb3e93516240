//! A twin's broker session parked and connected again, against the
//! embedded broker and Mosquitto: what arrived meanwhile comes on the next
//! connection, and an acknowledgement goes only on the connection its
//! message came on (a packet id of an earlier one names nothing there, or
//! another message); and the doorbell that rings parked twins listens for
//! every one of many falling asleep at once.

use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;
use wasmtwin::physical::doorbell::Doorbell;
use wasmtwin::physical::{self, BrokerAddress, Inbound, Link, Subscribing, Subscription};
use wasmtwin_tests::servers::{Mosquitto, free_port};

/// Publishes `payload` on `topic` at QoS 1 and waits for the broker's word.
fn publish(port: u16, topic: &str, payload: &[u8]) {
    let (client, mut connection) = Client::new(
        MqttOptions::new(format!("pub-{}", free_port()), "127.0.0.1", port),
        8,
    );
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
        .unwrap();
    for event in connection.iter() {
        if let Ok(Event::Incoming(Incoming::PubAck(_))) = event {
            break;
        }
        assert!(event.is_ok(), "publishing: {event:?}");
    }
    let _ = client.disconnect();
}

/// A session subscribed to `t` at QoS 1, its messages, and its gauge of
/// connected sessions.
async fn session(port: u16, id: &str) -> (Link, mpsc::Receiver<Box<Inbound>>, Gauge) {
    let broker: BrokerAddress = format!("mqtt://127.0.0.1:{port}").parse().unwrap();
    let (inbound, messages) = mpsc::channel(16);
    let gauge = Gauge::default();
    let connected = gauge.clone();
    let id = id.to_string();
    let link = tokio::task::spawn_blocking(move || {
        physical::connect(
            &broker,
            &id,
            Subscription {
                topics: vec!["t".into()],
                qos: 1,
                max_payload: 1024,
                turns: None,
            },
            inbound,
            Subscribing::Confirmed,
            connected,
        )
    })
    .await
    .unwrap()
    .unwrap();
    (link, messages, gauge)
}

async fn until(gauge: &Gauge, value: i64, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while gauge.get() != value {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

async fn next(messages: &mut mpsc::Receiver<Box<Inbound>>) -> Box<Inbound> {
    tokio::time::timeout(Duration::from_secs(10), messages.recv())
        .await
        .expect("a message in time")
        .expect("the session")
}

/// Checks that no message comes for `ms` milliseconds.
async fn quiet(messages: &mut mpsc::Receiver<Box<Inbound>>, ms: u64, why: &str) {
    let received = tokio::time::timeout(Duration::from_millis(ms), messages.recv()).await;
    assert!(received.is_err(), "{why}");
}

/// Parks and unparks `link`, waiting for each.
async fn cycle(link: &Link, connected: &Gauge) {
    link.park();
    until(connected, 0, "the session to park").await;
    link.unpark();
    until(connected, 1, "the session to connect again").await;
}

async fn parked_sessions_keep_every_message_and_ack_on_their_own_connection(port: u16) {
    let (link, mut messages, connected) = session(port, "parked").await;
    until(&connected, 1, "the session to connect").await;

    // Published while parked: it waits at the broker for the next connection.
    link.park();
    until(&connected, 0, "the session to park").await;
    let publishing = tokio::task::spawn_blocking(move || publish(port, "t", b"one"));
    publishing.await.unwrap();
    quiet(&mut messages, 300, "a parked session received a message").await;
    link.unpark();
    let first = next(&mut messages).await;
    assert_eq!(&first.payload[..], b"one");
    let on = first.connection;
    assert_eq!(on, 1, "the message came on the second connection");

    // Not acknowledged before the next connection: it comes again there,
    // and the stale acknowledgement does not count for it.
    cycle(&link, &connected).await;
    let again = next(&mut messages).await;
    assert_eq!(&again.payload[..], b"one");
    assert_eq!(again.connection, 2);
    link.ack(first.packet.expect("QoS 1"), on);
    cycle(&link, &connected).await;
    let third = next(&mut messages).await;
    assert_eq!(
        &third.payload[..],
        b"one",
        "the stale acknowledgement counted"
    );

    // Acknowledged on its own connection, it is done with.
    link.ack(third.packet.expect("QoS 1"), third.connection);
    tokio::time::sleep(Duration::from_millis(200)).await;
    cycle(&link, &connected).await;
    quiet(&mut messages, 500, "an acknowledged message came again").await;
    link.close();
}

/// Many twins fall asleep, or resume asleep, at the same moment: each
/// listens at the doorbell, and each must be told the broker's word. The
/// doorbell's client numbered its subscriptions with the packet ids of a
/// twin's session, which start again after 16: the 17th took the first's
/// id, and the first was told the connection was lost (its twin then kept
/// its session connected). More than the client's queue of requests (1024)
/// listen here, all at once, and each is rung by its own topic.
async fn every_twin_falling_asleep_at_once_is_listened_for(port: u16) {
    const TWINS: usize = 1500;
    let broker: BrokerAddress = format!("mqtt://127.0.0.1:{port}").parse().unwrap();
    let doorbell = Doorbell::start(&broker, &format!("bell-{port}"));
    let listening = (0..TWINS).map(|i| {
        let doorbell = doorbell.clone();
        tokio::spawn(async move { doorbell.listen(&[format!("twin/{i}")]).await })
    });
    let mut listeners = Vec::new();
    for (i, listened) in futures_util::future::join_all(listening)
        .await
        .into_iter()
        .enumerate()
    {
        let listener = listened.unwrap();
        listeners.push(listener.unwrap_or_else(|e| panic!("twin {i} is not listened for: {e:#}")));
    }
    tokio::task::spawn_blocking(move || publish(port, "twin/1234", b"wake"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), listeners[1234].rung())
        .await
        .expect("twin 1234's bell to ring");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_embedded_broker() {
    let port = wasmtwin::broker::start(([127, 0, 0, 1], 0).into())
        .expect("the embedded broker")
        .port();
    parked_sessions_keep_every_message_and_ack_on_their_own_connection(port).await;
    every_twin_falling_asleep_at_once_is_listened_for(port).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Debian's mosquitto; run by .ci/run"]
async fn on_mosquitto() {
    let broker = Mosquitto::start();
    parked_sessions_keep_every_message_and_ack_on_their_own_connection(broker.port).await;
    every_twin_falling_asleep_at_once_is_listened_for(broker.port).await;
}
