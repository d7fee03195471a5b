//! A clean end sends DISCONNECT, so no will is published; the connection's changes reach
//! `connection_events`; a client that does not reconnect reports the loss. Against a scripted
//! peer (to see the packets), our broker and Mosquitto, over TCP and WebSockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rallymq_broker::{Broker, BrokerConfig, BrokerHandle, ListenerKind, MemoryStore};
use rallymq_client::{
    Backoff, Client, ClientOptions, CloseReason, ConnectionEvent, ConnectionEvents, Error,
    Messages, QoS, ReasonCode, TopicName, Will,
};
use rallymq_codec::{Connect, MqttString, Packet, ProtocolVersion};
use rallymq_session::{Accept, ServerConfig, ServerConnection, ServerEvent, Timestamp};
use rallymq_test_support::Mosquitto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

/// How long to listen for a will that should not come, after one that should.
const QUIET: Duration = Duration::from_millis(500);

async fn broker_on(tcp: &str) -> BrokerHandle {
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec![tcp.parse().unwrap()];
    config.ws = vec!["127.0.0.1:0".parse().unwrap()];
    config.sys_interval = None;
    Broker::start_with_store(config, Arc::new(MemoryStore::new()))
        .await
        .expect("broker starts")
}

/// A server that accepts every connection and reports how each ended, as its engine saw it.
async fn scripted_server() -> (SocketAddr, mpsc::UnboundedReceiver<CloseReason>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ends, ended) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let ends = ends.clone();
            tokio::spawn(async move {
                let mut server = ServerConnection::new(ServerConfig::default(), Timestamp::ZERO);
                let mut buf = vec![0u8; 4096];
                loop {
                    while let Some(event) = server.poll_event() {
                        match event {
                            ServerEvent::ConnectReceived { .. } => {
                                server.accept(Timestamp::ZERO, Accept::default()).unwrap();
                            }
                            ServerEvent::Closed(reason) => {
                                let _ = ends.send(reason);
                                return;
                            }
                            _ => {}
                        }
                    }
                    while let Some(bytes) = server.poll_transmit(Timestamp::ZERO) {
                        let _ = socket.write_all(&bytes).await;
                    }
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => server.handle_transport_closed(Timestamp::ZERO),
                        Ok(n) => server.handle_bytes(Timestamp::ZERO, &buf[..n]),
                    }
                }
            });
        }
    });
    (addr, ended)
}

#[tokio::test]
async fn mqtt_3_1_2_8_disconnect_and_dropping_the_client_each_send_disconnect_0x00() {
    let (addr, mut ended) = scripted_server().await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let options = || {
            ClientOptions::new(&format!("mqtt://{addr}"))
                .version(version)
                .last_will("wills/x", "died", QoS::AtLeastOnce, false)
        };
        let (client, _messages, _) = Client::connect(options()).await.unwrap();
        client.disconnect().await.unwrap();
        let reason = tokio::time::timeout(WAIT, ended.recv()).await.unwrap();
        assert!(
            matches!(
                reason,
                Some(CloseReason::PeerDisconnected {
                    reason_code: ReasonCode::Success,
                    ..
                })
            ),
            "{version:?} disconnect(): the server saw {reason:?}"
        );

        let (client, messages, _) = Client::connect(options()).await.unwrap();
        drop((client, messages));
        let reason = tokio::time::timeout(WAIT, ended.recv()).await.unwrap();
        assert!(
            matches!(
                reason,
                Some(CloseReason::PeerDisconnected {
                    reason_code: ReasonCode::Success,
                    ..
                })
            ),
            "{version:?} dropped: the server saw {reason:?}"
        );
    }
}

/// Connects a raw client with a will on `topic` and drops its socket without DISCONNECT: the
/// broker must publish that will (the control that shows the watcher hears wills).
async fn abnormal_end_with_will(addr: SocketAddr, topic: &str, version: ProtocolVersion) {
    let mut connect = Connect::new(version, MqttString::new("will-control").unwrap());
    connect.keep_alive = 30;
    connect.will = Some(Will::new(TopicName::new(topic).unwrap(), "control"));
    let mut bytes = BytesMut::new();
    Packet::from(connect).encode(version, &mut bytes).unwrap();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(&bytes).await.unwrap();
    let mut connack = [0u8; 2];
    tokio::time::timeout(WAIT, socket.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .unwrap();
    assert_eq!(connack[0], 0x20, "CONNACK");
}

/// For each way of ending a client with a will (`disconnect()`, dropping it), the watcher on
/// the will topic hears only the control's will, published after the client ended.
async fn no_will_after_a_clean_end(url: &str, tcp: SocketAddr, watcher_url: &str) {
    let topic = format!("wills/{}", rallymq_test_support::run_id());
    let (watcher, mut heard, _) = Client::connect(ClientOptions::new(watcher_url))
        .await
        .unwrap();
    watcher.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    for (how, version) in [
        ("disconnect()", ProtocolVersion::V3_1_1),
        ("disconnect()", ProtocolVersion::V5),
        ("dropped", ProtocolVersion::V3_1_1),
        ("dropped", ProtocolVersion::V5),
    ] {
        let options = ClientOptions::new(url).version(version).last_will(
            &topic,
            "died",
            QoS::AtLeastOnce,
            false,
        );
        let (client, mut messages, _) = Client::connect(options).await.unwrap();
        if how == "dropped" {
            drop(client);
            // The stream ends once the client has closed its connection.
            assert_eq!(tokio::time::timeout(WAIT, messages.recv()).await, Ok(None));
        } else {
            client.disconnect().await.unwrap();
        }
        abnormal_end_with_will(tcp, &topic, version).await;
        let first = tokio::time::timeout(WAIT, heard.recv())
            .await
            .expect("the control's will is heard")
            .unwrap();
        assert_eq!(first.payload, "control", "{url} {version:?} {how}");
        if let Ok(Some(late)) = tokio::time::timeout(QUIET, heard.recv()).await {
            panic!("{url} {version:?} {how}: a will was published: {late:?}");
        }
    }
    watcher.disconnect().await.unwrap();
}

#[tokio::test]
async fn mqtt_3_1_2_8_no_will_after_a_clean_end_with_our_broker() {
    let broker = broker_on("127.0.0.1:0").await;
    let tcp = broker.local_addr(ListenerKind::Tcp).unwrap();
    let ws = broker.local_addr(ListenerKind::WebSocket).unwrap();
    let tcp_url = format!("mqtt://{tcp}");
    for url in [tcp_url.clone(), format!("ws://{ws}/mqtt")] {
        no_will_after_a_clean_end(&url, tcp, &tcp_url).await;
    }
    broker.shutdown(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn mqtt_3_1_2_8_no_will_after_a_clean_end_with_mosquitto() {
    let mosquitto = Mosquitto::start();
    let tcp = SocketAddr::from(([127, 0, 0, 1], mosquitto.tcp));
    let tcp_url = format!("mqtt://{tcp}");
    for url in [
        tcp_url.clone(),
        format!("ws://127.0.0.1:{}/mqtt", mosquitto.ws),
    ] {
        no_will_after_a_clean_end(&url, tcp, &tcp_url).await;
    }
}

async fn next_event(events: &mut ConnectionEvents) -> ConnectionEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("events open")
}

#[tokio::test]
async fn connection_events_tell_a_lost_connection_and_its_return() {
    let broker = broker_on("127.0.0.1:0").await;
    let addr = broker.local_addr(ListenerKind::Tcp).unwrap();
    let options = ClientOptions::new(&format!("mqtt://{addr}")).reconnect(Some(Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_millis(200),
    }));
    let (client, _messages, _) = Client::connect(options).await.unwrap();
    let mut events = client.connection_events();
    broker.shutdown(Duration::from_millis(300)).await;
    // MQTT 5: the broker says why it closes.
    assert_eq!(
        next_event(&mut events).await,
        ConnectionEvent::Disconnected(Error::Disconnected(CloseReason::PeerDisconnected {
            reason_code: ReasonCode::ServerShuttingDown,
            properties: Default::default(),
        }))
    );
    assert!(matches!(
        next_event(&mut events).await,
        ConnectionEvent::Reconnecting { attempt: 0, .. }
    ));
    let broker = broker_on(&addr.to_string()).await;
    loop {
        match next_event(&mut events).await {
            ConnectionEvent::Connected { connack, .. } => {
                assert_eq!(connack.reason_code, ReasonCode::Success);
                break;
            }
            // Attempts while the port was still closed.
            ConnectionEvent::Disconnected(Error::Transport(_))
            | ConnectionEvent::Reconnecting { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(client.is_connected());
    client.disconnect().await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        ConnectionEvent::Disconnected(Error::Closed)
    );
    assert_eq!(events.recv().await, None, "the stream ends with the client");
    broker.shutdown(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn without_reconnect_a_lost_connection_gives_up_and_later_calls_say_connection_lost() {
    let broker = broker_on("127.0.0.1:0").await;
    let addr = broker.local_addr(ListenerKind::Tcp).unwrap();
    let options = ClientOptions::new(&format!("mqtt://{addr}")).reconnect(None);
    let (client, mut messages, _): (Client, Messages, _) = Client::connect(options).await.unwrap();
    let mut events = client.connection_events();
    broker.shutdown(Duration::from_millis(300)).await;
    assert!(matches!(
        next_event(&mut events).await,
        ConnectionEvent::Disconnected(Error::Disconnected(_))
    ));
    assert!(matches!(
        next_event(&mut events).await,
        ConnectionEvent::GaveUp(Error::Disconnected(_))
    ));
    assert_eq!(tokio::time::timeout(WAIT, messages.recv()).await, Ok(None));
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        assert_eq!(
            client.publish("t", "late", qos, false).await,
            Err(Error::ConnectionLost),
            "{qos:?}"
        );
    }
    assert_eq!(
        client.subscribe("t", QoS::AtMostOnce).await,
        Err(Error::ConnectionLost)
    );
}

#[tokio::test]
async fn the_first_connection_is_not_retried_even_with_reconnect_on() {
    // Nothing listens there; reconnecting is on (the default).
    let options = ClientOptions::new("mqtt://127.0.0.1:1");
    assert!(options.reconnect.is_some());
    let started = std::time::Instant::now();
    let error = Client::connect(options).await.expect_err("refused");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failed at once, not retried"
    );
    assert_eq!(
        error.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
}

/// A QoS 0 message published while the client reconnects waits and goes on the next
/// connection (as `rallymq.js` and MQTT.js do), up to `max_queued` messages; past it publishing
/// fails with `Full` at once.
#[tokio::test]
async fn qos_0_published_while_reconnecting_waits_for_the_connection_within_the_queue_bound() {
    let broker = broker_on("127.0.0.1:0").await;
    let addr = broker.local_addr(ListenerKind::Tcp).unwrap();
    let mut options = ClientOptions::new(&format!("mqtt://{addr}")).reconnect(Some(Backoff {
        min: Duration::from_millis(300),
        max: Duration::from_millis(300),
    }));
    options.max_queued = 3;
    let (client, _messages, _) = Client::connect(options).await.unwrap();
    let mut events = client.connection_events();
    broker.shutdown(Duration::from_millis(300)).await;
    assert!(matches!(
        next_event(&mut events).await,
        ConnectionEvent::Disconnected(_)
    ));
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .publish("offline/q0", format!("{i}"), QoS::AtMostOnce, false)
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        client
            .publish("offline/q0", "one too many", QoS::AtMostOnce, false)
            .await,
        Err(Error::Full)
    );
    let broker = broker_on(&addr.to_string()).await;
    let mut subscription = broker.subscribe("offline/#", QoS::AtMostOnce).unwrap();
    for task in waiting {
        let sent = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("sent after the reconnect")
            .unwrap();
        assert!(sent.is_ok(), "{sent:?}");
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let message = tokio::time::timeout(WAIT, subscription.recv())
            .await
            .expect("delivered")
            .unwrap();
        got.push(String::from_utf8(message.payload.to_vec()).unwrap());
    }
    got.sort();
    assert_eq!(got, ["0", "1", "2"]);
    client.disconnect().await.unwrap();
    broker.shutdown(Duration::from_millis(300)).await;
}
