//! The client against our broker (in-process, over TCP and WebSockets) and against a scripted
//! peer that withholds acknowledgements. Every wait is bounded.

use std::sync::Arc;
use std::time::Duration;

use rallymq_broker::{Broker, BrokerConfig, BrokerHandle, ListenerKind, MemoryStore};
use rallymq_client::{Backoff, Client, ClientOptions, ConnectionEvent, Error};
use rallymq_codec::{ProtocolVersion, QoS, ReasonCode};
use rallymq_session::{Accept, ServerConfig, ServerConnection, ServerEvent, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(5);

async fn broker_on(tcp: &str, ws: &str, store: Arc<MemoryStore>) -> BrokerHandle {
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec![tcp.parse().unwrap()];
    config.ws = vec![ws.parse().unwrap()];
    config.sys_interval = None;
    Broker::start_with_store(config, store)
        .await
        .expect("broker starts")
}

async fn broker() -> BrokerHandle {
    broker_on("127.0.0.1:0", "127.0.0.1:0", Arc::new(MemoryStore::new())).await
}

fn urls(broker: &BrokerHandle) -> [String; 2] {
    [
        format!("mqtt://{}", broker.local_addr(ListenerKind::Tcp).unwrap()),
        format!(
            "ws://{}/mqtt",
            broker.local_addr(ListenerKind::WebSocket).unwrap()
        ),
    ]
}

fn fast_reconnect() -> Option<Backoff> {
    Some(Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_millis(200),
    })
}

async fn next(messages: &mut rallymq_client::Messages) -> rallymq_client::Message {
    tokio::time::timeout(WAIT, messages.recv())
        .await
        .expect("a message in time")
        .expect("stream open")
}

#[tokio::test]
async fn qos_0_1_2_round_trips_over_tcp_and_websockets_both_versions() {
    let broker = broker().await;
    for url in urls(&broker) {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let options = ClientOptions::new(&url).version(version);
            let (client, mut messages, _) = Client::connect(options).await.expect("connects");
            assert!(client.is_connected());
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let granted = client.subscribe("rt/#", qos).await.unwrap();
                assert!(!granted.is_error(), "{url} {version:?}: {granted:?}");
                let ack = client
                    .publish("rt/x", format!("{qos:?}"), qos, false)
                    .await
                    .unwrap();
                assert!(!ack.reason_code.is_error());
                let got = next(&mut messages).await;
                assert_eq!(
                    (got.payload, got.qos),
                    (format!("{qos:?}").into(), qos),
                    "{url} {version:?}"
                );
            }
            client.disconnect().await.unwrap();
            assert_eq!(
                client.publish("rt/x", "late", QoS::AtMostOnce, false).await,
                Err(Error::Closed)
            );
        }
    }
    broker.shutdown(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn publish_resolves_only_after_the_acknowledgement() {
    // A scripted broker: accepts, then holds the PUBACK until told to send it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let config = ServerConfig {
            manual_acks: true,
            ..ServerConfig::default()
        };
        let mut server = ServerConnection::new(config, Timestamp::ZERO);
        let mut buf = vec![0u8; 4096];
        let mut held = None;
        let mut release = Some(release_rx);
        loop {
            while let Some(event) = server.poll_event() {
                match event {
                    ServerEvent::ConnectReceived { .. } => {
                        server.accept(Timestamp::ZERO, Accept::default()).unwrap()
                    }
                    ServerEvent::Message(message) => held = message.ack,
                    _ => {}
                }
            }
            while let Some(bytes) = server.poll_transmit(Timestamp::ZERO) {
                socket.write_all(&bytes).await.unwrap();
            }
            if held.is_some()
                && let Some(release) = release.take()
            {
                let _ = release.await;
                server.acknowledge(held.take().unwrap(), ReasonCode::Success);
                continue;
            }
            let n = socket.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            server.handle_bytes(Timestamp::ZERO, &buf[..n]);
        }
    });
    let options = ClientOptions::new(&format!("mqtt://{addr}")).reconnect(None);
    let (client, _messages, _) = Client::connect(options).await.unwrap();
    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish("held", "x", QoS::AtLeastOnce, false).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !publishing.is_finished(),
        "no PUBACK yet, so the future is still pending"
    );
    release_tx.send(()).unwrap();
    let ack = tokio::time::timeout(WAIT, publishing)
        .await
        .expect("resolves after PUBACK")
        .unwrap()
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    drop(client);
    let _ = tokio::time::timeout(WAIT, peer).await;
}

/// Reads from `socket` into `server` until the CONNECT has come.
async fn until_connect(socket: &mut tokio::net::TcpStream, server: &mut ServerConnection) {
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(event) = server.poll_event() {
            if let ServerEvent::ConnectReceived { .. } = event {
                return;
            }
        }
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the client closed before its CONNECT");
        server.handle_bytes(Timestamp::ZERO, &buf[..n]);
    }
}

/// Messages published while the client reconnects go out in the order they were published:
/// one published during the backoff (kept by the driver until the next CONNACK) before one
/// published while the next CONNECT waits for its CONNACK (which went to the engine at once,
/// and so out first). The broker's crash test (crates/cli/tests/crash.rs) found them swapped.
#[tokio::test]
async fn mqtt_4_6_0_1_messages_published_while_reconnecting_go_out_in_publish_order() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connecting, connect_received) = tokio::sync::oneshot::channel::<()>();
    let (answer, answer_now) = tokio::sync::oneshot::channel::<()>();
    let (lose, lose_now) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(async move {
        // The first connection is accepted, then lost.
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut server = ServerConnection::new(ServerConfig::default(), Timestamp::ZERO);
        until_connect(&mut socket, &mut server).await;
        server.accept(Timestamp::ZERO, Accept::default()).unwrap();
        while let Some(bytes) = server.poll_transmit(Timestamp::ZERO) {
            socket.write_all(&bytes).await.unwrap();
        }
        lose_now.await.unwrap();
        drop(socket);
        // The second one's CONNACK waits until the test has published again.
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut server = ServerConnection::new(ServerConfig::default(), Timestamp::ZERO);
        until_connect(&mut socket, &mut server).await;
        connecting.send(()).unwrap();
        answer_now.await.unwrap();
        server.accept(Timestamp::ZERO, Accept::default()).unwrap();
        let mut payloads = Vec::new();
        let mut buf = vec![0u8; 4096];
        while payloads.len() < 2 {
            while let Some(bytes) = server.poll_transmit(Timestamp::ZERO) {
                socket.write_all(&bytes).await.unwrap();
            }
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before its PUBLISHes");
            server.handle_bytes(Timestamp::ZERO, &buf[..n]);
            while let Some(event) = server.poll_event() {
                if let ServerEvent::Message(message) = event {
                    payloads.push(String::from_utf8(message.publish.payload.to_vec()).unwrap());
                }
            }
        }
        // The PUBACKs, on a connection that stays open.
        while let Some(bytes) = server.poll_transmit(Timestamp::ZERO) {
            socket.write_all(&bytes).await.unwrap();
        }
        (payloads, socket)
    });
    let options = ClientOptions::new(&format!("mqtt://{addr}")).reconnect(Some(Backoff {
        min: Duration::from_millis(300),
        max: Duration::from_millis(300),
    }));
    let (client, _messages, _) = Client::connect(options).await.unwrap();
    let mut events = client.connection_events();
    lose.send(()).unwrap();
    let lost = tokio::time::timeout(WAIT, events.recv()).await.unwrap();
    assert!(
        matches!(lost, Some(ConnectionEvent::Disconnected(_))),
        "{lost:?}"
    );
    let first = client
        .try_publish("order", "first", QoS::AtLeastOnce, false)
        .unwrap();
    tokio::time::timeout(WAIT, connect_received)
        .await
        .expect("the client reconnects")
        .unwrap();
    let second = client
        .try_publish("order", "second", QoS::AtLeastOnce, false)
        .unwrap();
    // The driver takes the command while it waits for CONNACK.
    tokio::time::sleep(Duration::from_millis(100)).await;
    answer.send(()).unwrap();
    let (payloads, _open) = tokio::time::timeout(WAIT, peer).await.unwrap().unwrap();
    assert_eq!(payloads, ["first", "second"]);
    for ack in [first, second] {
        assert!(tokio::time::timeout(WAIT, ack).await.unwrap().is_ok());
    }
}

#[tokio::test]
async fn many_tasks_publish_at_once_on_one_handle() {
    let broker = broker().await;
    let [tcp, _] = urls(&broker);
    let (subscriber, mut messages, _) = Client::connect(ClientOptions::new(&tcp)).await.unwrap();
    subscriber
        .subscribe("many/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (client, _unused, _) = Client::connect(ClientOptions::new(&tcp)).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    client
                        .publish(
                            &format!("many/{task}"),
                            format!("{i}"),
                            QoS::AtLeastOnce,
                            false,
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("in time")
            .unwrap();
    }
    let mut per_task = std::collections::HashMap::<String, Vec<u32>>::new();
    for _ in 0..1000 {
        let got = next(&mut messages).await;
        let topic = got.topic.to_string();
        per_task
            .entry(topic)
            .or_default()
            .push(std::str::from_utf8(&got.payload).unwrap().parse().unwrap());
    }
    assert_eq!(per_task.len(), 20);
    for (topic, sequence) in per_task {
        assert_eq!(
            sequence,
            (0..50).collect::<Vec<_>>(),
            "{topic}: in order, complete"
        );
    }
    broker.shutdown(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn reconnects_after_a_broker_restart_and_loses_nothing_acknowledged() {
    let store = Arc::new(MemoryStore::new());
    let broker = broker_on("127.0.0.1:0", "127.0.0.1:0", store.clone()).await;
    let tcp_addr = broker.local_addr(ListenerKind::Tcp).unwrap();
    let url = format!("mqtt://{tcp_addr}");
    let persistent = |id: &str| {
        ClientOptions::new(&url)
            .client_id(id)
            .clean_start(false)
            .session_expiry(3600)
            .reconnect(fast_reconnect())
    };
    let (subscriber, mut messages, _) = Client::connect(persistent("restart-sub")).await.unwrap();
    subscriber
        .subscribe("restart/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (publisher, _unused, _) = Client::connect(persistent("restart-pub")).await.unwrap();
    publisher
        .publish("restart/a", "before", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(next(&mut messages).await.payload, "before");

    broker.shutdown(Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Published while the broker is down: resolves once the broker is back and acknowledged it.
    let pending: Vec<_> = (0..5)
        .map(|i| {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                publisher
                    .publish("restart/a", format!("during {i}"), QoS::AtLeastOnce, false)
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker = broker_on(&tcp_addr.to_string(), "127.0.0.1:0", store).await;
    for task in pending {
        let ack = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("acknowledged after restart")
            .unwrap();
        assert!(ack.is_ok(), "{ack:?}");
    }
    // QoS 1 is at least once: a redelivered "before" (its PUBACK may have been cut off by the
    // shutdown) or duplicates are allowed; a missing message is not.
    let mut got: Vec<String> = Vec::new();
    while got.len() < 5 {
        let payload = String::from_utf8(next(&mut messages).await.payload.to_vec()).unwrap();
        if payload != "before" && !got.contains(&payload) {
            got.push(payload);
        }
    }
    got.sort();
    assert_eq!(
        got,
        (0..5).map(|i| format!("during {i}")).collect::<Vec<_>>()
    );
    broker.shutdown(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn subscriptions_are_restored_when_the_broker_kept_no_session() {
    let broker = broker().await;
    let tcp_addr = broker.local_addr(ListenerKind::Tcp).unwrap();
    let url = format!("mqtt://{tcp_addr}");
    let options = ClientOptions::new(&url).reconnect(fast_reconnect());
    let (client, mut messages, _) = Client::connect(options).await.unwrap();
    client
        .subscribe("restore/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    broker.shutdown(Duration::from_millis(300)).await;
    // A new broker with nothing stored, on the same port.
    let broker = broker_on(
        &tcp_addr.to_string(),
        "127.0.0.1:0",
        Arc::new(MemoryStore::new()),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        broker
            .publish("restore/x", "again", QoS::AtLeastOnce, false)
            .unwrap();
        if let Ok(Some(got)) =
            tokio::time::timeout(Duration::from_millis(200), messages.recv()).await
        {
            assert_eq!(got.payload, "again");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscription was not restored"
        );
    }
    broker.shutdown(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_refused_connection_is_a_clear_error() {
    let broker = broker().await;
    let [tcp, _] = urls(&broker);
    let mut options = ClientOptions::new(&tcp).version(ProtocolVersion::V5);
    options.connect.properties.authentication_method =
        Some(rallymq_codec::MqttString::new("SCRAM-SHA-1").unwrap());
    assert_eq!(
        Client::connect(options).await.err(),
        Some(Error::Refused(ReasonCode::BadAuthenticationMethod))
    );
    let unreachable = ClientOptions::new("mqtt://127.0.0.1:1").reconnect(None);
    let refused = Client::connect(unreachable)
        .await
        .expect_err("nothing listens");
    assert_eq!(
        refused.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionRefused),
        "the io::Error is kept: {refused}"
    );
    assert!(matches!(
        ClientOptions::new("http://x").validate(),
        Err(Error::InvalidUrl(_))
    ));
    assert!(matches!(
        Client::connect(ClientOptions::new("http://x")).await,
        Err(Error::InvalidUrl(_))
    ));
    broker.shutdown(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn try_publish_reports_full_instead_of_waiting() {
    // A peer that accepts and then never acknowledges: the window and queue fill up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut server = ServerConnection::new(
            ServerConfig {
                manual_acks: true,
                ..ServerConfig::default()
            },
            Timestamp::ZERO,
        );
        let mut buf = vec![0u8; 65536];
        loop {
            while let Some(event) = server.poll_event() {
                if let ServerEvent::ConnectReceived { .. } = event {
                    server.accept(Timestamp::ZERO, Accept::default()).unwrap();
                }
            }
            while let Some(bytes) = server.poll_transmit(Timestamp::ZERO) {
                let _ = socket.write_all(&bytes).await;
            }
            let n = socket.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            server.handle_bytes(Timestamp::ZERO, &buf[..n]);
        }
    });
    let mut options = ClientOptions::new(&format!("mqtt://{addr}")).reconnect(None);
    options.max_in_flight = 4;
    options.max_queued = 16;
    let (client, _messages, _) = Client::connect(options).await.unwrap();
    let mut accepted = 0;
    let mut full = false;
    for i in 0..200 {
        match client.try_publish("t", format!("{i}"), QoS::AtLeastOnce, false) {
            Ok(_pending) => accepted += 1,
            Err(Error::Full) => {
                full = true;
                break;
            }
            Err(other) => panic!("{other}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(full, "try_publish said Full after {accepted} messages");
    assert!(
        accepted >= 20,
        "window and queue were used first ({accepted})"
    );
}

#[tokio::test]
async fn the_packet_observer_sees_every_packet_sent_and_received_in_order() {
    use rallymq_client::{Packet, PacketDirection};
    use rallymq_codec::PacketType;

    let broker = broker().await;
    let [url, _] = urls(&broker);
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let seen: Arc<std::sync::Mutex<Vec<(PacketDirection, Packet)>>> = Arc::default();
        let log = seen.clone();
        let options = ClientOptions::new(&url).version(version).packet_observer(
            move |direction, packet: &Packet| {
                log.lock().unwrap().push((direction, packet.clone()));
            },
        );
        let (client, mut messages, _) = Client::connect(options).await.expect("connects");
        client
            .subscribe("observed/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        client
            .publish("observed/1", "hello", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let message = next(&mut messages).await;
        client.disconnect().await.unwrap();

        let seen = seen.lock().unwrap().clone();
        let types: Vec<(PacketDirection, PacketType)> =
            seen.iter().map(|(d, p)| (*d, p.packet_type())).collect();
        use PacketDirection::{Received, Sent};
        assert_eq!(
            types[..4],
            [
                (Sent, PacketType::Connect),
                (Received, PacketType::ConnAck),
                (Sent, PacketType::Subscribe),
                (Received, PacketType::SubAck),
            ],
            "{version:?}: {types:?}"
        );
        assert_eq!(types[4], (Sent, PacketType::Publish), "{types:?}");
        assert_eq!(types.last(), Some(&(Sent, PacketType::Disconnect)));
        // Between the PUBLISH and the DISCONNECT, in whichever order the broker sent them:
        // its PUBACK, its PUBLISH to our subscription, and our PUBACK right after that.
        let middle = &types[5..types.len() - 1];
        assert_eq!(middle.len(), 3, "{types:?}");
        assert!(
            middle.contains(&(Received, PacketType::PubAck)),
            "{types:?}"
        );
        let delivery = middle
            .iter()
            .position(|t| *t == (Received, PacketType::Publish))
            .expect("the broker's PUBLISH was seen");
        assert_eq!(middle[delivery + 1], (Sent, PacketType::PubAck));
        // The packets themselves, not just their types.
        let Packet::Publish(sent) = &seen[4].1 else {
            unreachable!()
        };
        assert_eq!(sent.payload, "hello");
        let received = seen
            .iter()
            .find_map(|(d, p)| match p {
                Packet::Publish(publish) if *d == Received => Some(publish),
                _ => None,
            })
            .unwrap();
        assert_eq!(received.payload, message.payload);
        assert_eq!(
            received.topic.as_ref().map(|t| t.to_string()),
            Some(message.topic.to_string())
        );
    }
}
