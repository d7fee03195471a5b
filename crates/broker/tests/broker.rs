//! The broker end to end over TCP, with clients driven by the rallymq session engine. Test
//! names carry the normative statement they check (MQTT 5.0 unless marked `v311`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use rallymq_codec::{
    ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscribeProperties, SubscriptionId,
    SubscriptionOptions, TopicFilter, UserProperty, Will,
};
use rallymq_session::{ClientEvent, CloseReason};
use support::{
    TestClient, connect_packet, message, payload_str, persistent_connect, start_broker,
    subscription, tcp_addr, topic_str,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn qos_0_1_2_end_to_end_downgraded_to_the_granted_qos() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let (mut sub, _) = TestClient::tcp(addr, connect_packet(V5, "sub")).await;
    let (mut publisher, _) = TestClient::tcp(addr, connect_packet(V5, "pub")).await;
    let codes = sub
        .subscribe(vec![
            subscription("q/two", QoS::ExactlyOnce),
            subscription("q/one", QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(codes, [ReasonCode::GrantedQoS2, ReasonCode::GrantedQoS1]);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let code = publisher
            .publish(message("q/two", &format!("{qos:?}"), qos))
            .await;
        assert_eq!(code, ReasonCode::Success);
        let got = sub.recv().await.expect("delivered");
        assert_eq!((payload_str(&got), got.qos), (format!("{qos:?}"), qos));
    }
    // MQTT-3.8.4-6 / MQTT-3.3.5-1 (v311): delivered at the lower of publish and granted QoS.
    publisher
        .publish(message("q/one", "down", QoS::ExactlyOnce))
        .await;
    assert_eq!(sub.recv().await.unwrap().qos, QoS::AtLeastOnce);
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn no_matching_subscribers_is_reported_to_v5_publishers() {
    let broker = start_broker(|_| {}).await;
    let (mut publisher, _) = TestClient::tcp(tcp_addr(&broker), connect_packet(V5, "p")).await;
    assert_eq!(
        publisher
            .publish(message("nobody/here", "x", QoS::AtLeastOnce))
            .await,
        ReasonCode::NoMatchingSubscribers
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn every_version_talks_to_every_other() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let versions = [V31, V311, V5];
    let mut clients = Vec::new();
    for (i, version) in versions.iter().enumerate() {
        let (mut client, connected) =
            TestClient::tcp(addr, connect_packet(*version, &format!("c{i}"))).await;
        assert!(
            matches!(connected, ClientEvent::Connected { .. }),
            "{version:?}: {connected:?}"
        );
        client
            .subscribe(vec![subscription("mix/#", QoS::AtLeastOnce)])
            .await;
        clients.push(client);
    }
    for i in 0..3 {
        let mut publish = message(&format!("mix/{i}"), &format!("from {i}"), QoS::AtLeastOnce);
        if versions[i].is_v5() {
            publish
                .properties
                .user_properties
                .push(UserProperty::new("k", "v").unwrap());
            publish.properties.content_type =
                Some(rallymq_codec::MqttString::new("text/plain").unwrap());
        }
        clients[i].publish(publish).await;
        for (j, client) in clients.iter_mut().enumerate() {
            let got = client
                .recv()
                .await
                .unwrap_or_else(|| panic!("{j} got nothing from {i}"));
            assert_eq!(payload_str(&got), format!("from {i}"));
            if versions[j].is_v5() && versions[i].is_v5() {
                assert_eq!(
                    got.properties.user_properties.len(),
                    1,
                    "properties pass through between 5.0 clients"
                );
            } else {
                assert!(
                    got.properties.user_properties.is_empty(),
                    "no properties reach a 3.x client"
                );
            }
        }
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_at_the_highest_qos_with_every_identifier() {
    let broker = start_broker(|_| {}).await;
    let (mut client, _) = TestClient::tcp(tcp_addr(&broker), connect_packet(V5, "overlap")).await;
    let props = |id| SubscribeProperties {
        subscription_identifier: SubscriptionId::new(id),
        ..Default::default()
    };
    client
        .subscribe_with(vec![subscription("a/+", QoS::AtMostOnce)], props(1))
        .await;
    client
        .subscribe_with(vec![subscription("a/#", QoS::ExactlyOnce)], props(2))
        .await;
    client.publish(message("a/b", "x", QoS::ExactlyOnce)).await;
    let got = client.recv().await.unwrap();
    assert_eq!(
        got.qos,
        QoS::ExactlyOnce,
        "MQTT-3.3.4-2: the maximum QoS of the matching subscriptions"
    );
    let mut ids: Vec<u32> = got
        .properties
        .subscription_identifiers
        .iter()
        .map(|id| id.get())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [1, 2],
        "MQTT-3.3.4-3: every matching subscription identifier"
    );
    client.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_1_5_retained_set_replaced_cleared_and_sent_on_subscribe() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let (mut publisher, _) = TestClient::tcp(addr, connect_packet(V311, "p")).await;
    let mut retained = message("r/1", "first", QoS::AtLeastOnce);
    retained.retain = true;
    publisher.publish(retained.clone()).await;
    retained.payload = "second".into();
    publisher.publish(retained.clone()).await;

    let (mut sub, _) = TestClient::tcp(addr, connect_packet(V311, "s1")).await;
    sub.subscribe(vec![subscription("r/#", QoS::AtLeastOnce)])
        .await;
    let got = sub.recv().await.expect("the retained message on subscribe");
    assert_eq!(
        (payload_str(&got), got.retain),
        ("second".to_owned(), true),
        "MQTT-3.3.1-6: replaced; -8: flag set"
    );
    sub.expect_silence(SHORT).await;

    // Live delivery of a retained publish to an existing subscription clears the flag (v311
    // MQTT-3.3.1-9).
    retained.payload = "third".into();
    publisher.publish(retained.clone()).await;
    assert!(!sub.recv().await.unwrap().retain);

    // MQTT-3.3.1-10/-11: an empty retained payload clears the topic.
    retained.payload = bytes::Bytes::new();
    publisher.publish(retained).await;
    let _ = sub.recv().await;
    let (mut late, _) = TestClient::tcp(addr, connect_packet(V311, "s2")).await;
    late.subscribe(vec![subscription("r/#", QoS::AtLeastOnce)])
        .await;
    late.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_1_9_retain_handling_and_retain_as_published() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    broker
        .publish("rh/t", "kept", QoS::AtMostOnce, true)
        .unwrap();
    let (mut client, _) = TestClient::tcp(addr, connect_packet(V5, "rh")).await;
    let with = |handling, rap| rallymq_codec::Subscription {
        filter: TopicFilter::new("rh/#").unwrap(),
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            retain_handling: handling,
            retain_as_published: rap,
            ..Default::default()
        },
    };
    client
        .subscribe(vec![with(RetainHandling::DoNotSend, false)])
        .await;
    client.expect_silence(SHORT).await;
    client
        .subscribe(vec![with(RetainHandling::SendAtSubscribeIfNew, false)])
        .await;
    client.expect_silence(SHORT).await; // the subscription existed already
    client.unsubscribe("rh/#").await;
    client
        .subscribe(vec![with(RetainHandling::SendAtSubscribeIfNew, true)])
        .await;
    assert_eq!(
        payload_str(&client.recv().await.expect("new subscription gets it")),
        "kept"
    );
    client
        .subscribe(vec![with(RetainHandling::SendAtSubscribe, true)])
        .await;
    assert_eq!(
        payload_str(&client.recv().await.expect("always sent")),
        "kept"
    );
    // Retain As Published keeps the flag on live delivery.
    let mut live = message("rh/t", "live", QoS::AtLeastOnce);
    live.retain = true;
    client.publish(live).await;
    assert!(client.recv().await.unwrap().retain);
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_8_3_3_no_local_does_not_echo() {
    let broker = start_broker(|_| {}).await;
    let (mut client, _) = TestClient::tcp(tcp_addr(&broker), connect_packet(V5, "nl")).await;
    let mut sub = subscription("echo/#", QoS::AtLeastOnce);
    sub.options.no_local = true;
    client.subscribe(vec![sub]).await;
    client
        .publish(message("echo/1", "x", QoS::AtLeastOnce))
        .await;
    client.expect_silence(SHORT).await;
    broker
        .publish("echo/1", "from elsewhere", QoS::AtLeastOnce, false)
        .unwrap();
    assert_eq!(payload_str(&client.recv().await.unwrap()), "from elsewhere");
    broker.shutdown(SHORT).await;
}

fn will_connect(version: ProtocolVersion, id: &str, delay: Option<u32>) -> rallymq_codec::Connect {
    let mut connect = connect_packet(version, id);
    connect.will = Some(Will {
        topic: rallymq_codec::TopicName::new("wills/x").unwrap(),
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: rallymq_codec::WillProperties {
            will_delay_interval: delay,
            ..Default::default()
        }
        .into(),
    });
    if version.is_v5() {
        connect.properties.session_expiry_interval = Some(60);
    }
    connect
}

#[tokio::test]
async fn mqtt_3_1_2_8_wills_on_abnormal_end_not_after_disconnect_0x00_but_after_0x04() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let (mut watcher, _) = TestClient::tcp(addr, connect_packet(V5, "watcher")).await;
    watcher
        .subscribe(vec![subscription("wills/#", QoS::AtLeastOnce)])
        .await;

    let (mut dies, _) = TestClient::tcp(addr, will_connect(V311, "dies", None)).await;
    dies.kill();
    assert_eq!(
        payload_str(
            &watcher
                .recv()
                .await
                .expect("will after a dropped connection")
        ),
        "gone"
    );

    let (mut polite, _) = TestClient::tcp(addr, will_connect(V5, "polite", None)).await;
    polite.disconnect(ReasonCode::Success).await;
    watcher.expect_silence(SHORT).await;

    let (mut asks, _) = TestClient::tcp(addr, will_connect(V5, "asks", None)).await;
    asks.disconnect(ReasonCode::DisconnectWithWillMessage).await;
    assert_eq!(
        payload_str(&watcher.recv().await.expect("will after DISCONNECT 0x04")),
        "gone"
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn will_delay_waits_and_a_quick_reconnect_cancels_it() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let (mut watcher, _) = TestClient::tcp(addr, connect_packet(V5, "watcher")).await;
    watcher
        .subscribe(vec![subscription("wills/#", QoS::AtLeastOnce)])
        .await;

    let (mut delayed, _) = TestClient::tcp(addr, will_connect(V5, "delayed", Some(1))).await;
    delayed.kill();
    watcher.expect_silence(Duration::from_millis(600)).await;
    assert!(
        watcher.recv_within(Duration::from_secs(3)).await.is_some(),
        "the will after its 1 s delay"
    );

    let (mut back, _) = TestClient::tcp(addr, will_connect(V5, "back", Some(2))).await;
    back.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = will_connect(V5, "back", Some(2));
    again.clean_start = false;
    let (_back_again, connected) = TestClient::tcp(addr, again).await;
    assert!(matches!(
        connected,
        ClientEvent::Connected {
            session_present: true,
            ..
        }
    ));
    watcher.expect_silence(Duration::from_secs(3)).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn session_takeover_disconnects_the_first_connection_with_0x8e() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let (mut first, _) = TestClient::tcp(addr, connect_packet(V5, "same-id")).await;
    let (_second, connected) = TestClient::tcp(addr, connect_packet(V5, "same-id")).await;
    assert!(matches!(connected, ClientEvent::Connected { .. }));
    assert!(matches!(
        first.closed().await,
        Some(CloseReason::PeerDisconnected {
            reason_code: ReasonCode::SessionTakenOver,
            ..
        })
    ));
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn messages_queue_for_an_offline_persistent_session() {
    for version in [V311, V5] {
        let broker = start_broker(|_| {}).await;
        let addr = tcp_addr(&broker);
        let connect = persistent_connect(version, "offline", 300);
        let (mut client, _) = TestClient::tcp(addr, connect.clone()).await;
        client
            .subscribe(vec![subscription("o/#", QoS::AtLeastOnce)])
            .await;
        client.disconnect(ReasonCode::Success).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 0..5 {
            broker
                .publish(&format!("o/{i}"), format!("m{i}"), QoS::AtLeastOnce, false)
                .unwrap();
        }
        broker
            .publish(
                "o/zero",
                "qos0 is not queued offline",
                QoS::AtMostOnce,
                false,
            )
            .unwrap();
        let (mut client, connected) = TestClient::tcp(addr, connect).await;
        assert!(
            matches!(
                connected,
                ClientEvent::Connected {
                    session_present: true,
                    ..
                }
            ),
            "{version:?}"
        );
        for i in 0..5 {
            let got = client
                .recv()
                .await
                .unwrap_or_else(|| panic!("{version:?}: m{i} lost"));
            assert_eq!(payload_str(&got), format!("m{i}"), "{version:?}: in order");
        }
        client.expect_silence(SHORT).await;
        broker.shutdown(SHORT).await;
    }
}

#[tokio::test]
async fn mqtt_3_1_2_4_clean_start_discards_the_session() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut connect = persistent_connect(V5, "cs", 300);
    let (mut client, _) = TestClient::tcp(addr, connect.clone()).await;
    client
        .subscribe(vec![subscription("cs/#", QoS::AtLeastOnce)])
        .await;
    client.disconnect(ReasonCode::Success).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    connect.clean_start = true;
    let (mut client, connected) = TestClient::tcp(addr, connect).await;
    assert!(matches!(
        connected,
        ClientEvent::Connected {
            session_present: false,
            ..
        }
    ));
    broker
        .publish("cs/1", "x", QoS::AtLeastOnce, false)
        .unwrap();
    client.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn session_expiry_removes_an_offline_session() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let connect = persistent_connect(V5, "expires", 1);
    let (mut client, _) = TestClient::tcp(addr, connect).await;
    client.disconnect(ReasonCode::Success).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(broker.has_session("expires"));
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(!broker.has_session("expires"), "gone after its 1 s expiry");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn shared_subscriptions_deliver_each_message_to_one_member() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut members = Vec::new();
    for i in 0..3 {
        let (mut member, _) = TestClient::tcp(addr, connect_packet(V5, &format!("m{i}"))).await;
        member
            .subscribe(vec![subscription(
                "$share/workers/jobs/+",
                QoS::AtLeastOnce,
            )])
            .await;
        members.push(member);
    }
    for i in 0..30 {
        broker
            .publish(
                &format!("jobs/{i}"),
                format!("{i}"),
                QoS::AtLeastOnce,
                false,
            )
            .unwrap();
    }
    let mut seen = Vec::new();
    for member in &mut members {
        let mut count = 0;
        while let Some(got) = member.recv_within(Duration::from_millis(500)).await {
            seen.push(payload_str(&got));
            count += 1;
        }
        assert!(count >= 5, "round robin spreads the load, got {count}");
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(
        seen,
        (0..30).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each message exactly once"
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_1_3_7_empty_client_id_gets_an_assigned_one() {
    let broker = start_broker(|_| {}).await;
    let (_client, connected) = TestClient::tcp(tcp_addr(&broker), connect_packet(V5, "")).await;
    let ClientEvent::Connected { connack, .. } = connected else {
        panic!("{connected:?}")
    };
    let assigned = connack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("an assigned id");
    assert!(broker.has_session(assigned.as_str()));
    broker.shutdown(SHORT).await;
}

/// An assigned client id is one no session has (MQTT-3.1.3-6: unique on the server): clients
/// that connected as `rallymq-31`... keep their sessions, though `rallymq-N` is the name the
/// broker gives the client of its Nth connection and the anonymous clients come 31st to 40th.
#[tokio::test]
async fn mqtt_3_1_3_6_an_assigned_client_id_takes_over_no_session() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut named = Vec::new();
    for n in 31..=60 {
        let (client, _) = TestClient::tcp(addr, connect_packet(V5, &format!("rallymq-{n}"))).await;
        named.push(client);
    }
    let mut assigned = std::collections::HashSet::new();
    let mut anonymous = Vec::new();
    for _ in 0..10 {
        let (client, connected) = TestClient::tcp(addr, connect_packet(V5, "")).await;
        let ClientEvent::Connected { connack, .. } = connected else {
            panic!("{connected:?}")
        };
        let id = connack
            .properties
            .assigned_client_identifier
            .clone()
            .unwrap();
        assert!(
            assigned.insert(id.as_str().to_owned()),
            "{id:?} assigned twice"
        );
        anonymous.push(client);
    }
    assert_eq!(broker.session_count(), 40);
    for (n, client) in named.iter_mut().enumerate() {
        let closed = client
            .wait_for_within(Duration::from_millis(50), |e| {
                matches!(e, ClientEvent::Closed(_))
            })
            .await;
        assert!(
            closed.is_none(),
            "rallymq-{} was taken over: {closed:?}",
            n + 31
        );
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_2_12_topic_alias_from_the_client_is_resolved() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let (mut sub, _) = TestClient::tcp(addr, connect_packet(V311, "s")).await;
    sub.subscribe(vec![subscription("alias/#", QoS::AtMostOnce)])
        .await;
    // Raw bytes: an engine never sends a PUBLISH without its topic on its own.
    let mut raw = raw_publisher(addr, V5, "p").await;
    let mut connack = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack[0], 0x20, "CONNACK, got {:02x?}", &connack[..n]);
    let mut first = message("alias/long/topic", "1", QoS::AtMostOnce);
    first.properties.topic_alias = std::num::NonZeroU16::new(1);
    let mut second = first.clone();
    second.topic = None;
    second.payload = "2".into();
    for publish in [first, second] {
        raw.write_all(
            &rallymq_codec::Packet::Publish(publish)
                .to_bytes(V5)
                .unwrap(),
        )
        .await
        .unwrap();
    }
    for expected in ["1", "2"] {
        let got = sub.recv().await.expect("delivered");
        assert_eq!(
            (topic_str(&got), payload_str(&got)),
            ("alias/long/topic".to_owned(), expected.to_owned())
        );
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn sys_topics_are_published() {
    let broker =
        start_broker(|config| config.sys_interval = Some(Duration::from_millis(100))).await;
    let (mut client, _) = TestClient::tcp(tcp_addr(&broker), connect_packet(V311, "sys")).await;
    client
        .subscribe(vec![subscription(
            "$SYS/broker/clients/connected",
            QoS::AtMostOnce,
        )])
        .await;
    // The retained value first may be one published before this client connected ("0", on a
    // busy machine); within a few intervals the count says this client is there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut counts = Vec::new();
    while counts.last().map(String::as_str) != Some("1") {
        let got = client
            .recv_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
            .unwrap_or_else(|| panic!("$SYS/broker/clients/connected 1; got {counts:?}"));
        counts.push(payload_str(&got));
    }
    client
        .subscribe(vec![subscription("$SYS/broker/version", QoS::AtMostOnce)])
        .await;
    let got = client.recv().await.expect("version");
    assert!(payload_str(&got).starts_with("rallymq version"));
    // MQTT-4.7.2-1: a wildcard at the first level does not match $SYS.
    let (mut all, _) = TestClient::tcp(tcp_addr(&broker), connect_packet(V311, "all")).await;
    all.subscribe(vec![subscription("#", QoS::AtMostOnce)])
        .await;
    all.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn a_silent_connection_is_dropped_after_the_connect_timeout() {
    let broker =
        start_broker(|config| config.limits.connect_timeout = Duration::from_millis(300)).await;
    let mut raw = tokio::net::TcpStream::connect(tcp_addr(&broker))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut buf))
        .await
        .expect("closed in time");
    assert_eq!(read.ok(), Some(0), "closed without a word");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let broker = start_broker(|config| config.limits.max_connections = 2).await;
    let addr = tcp_addr(&broker);
    let (_a, _) = TestClient::tcp(addr, connect_packet(V311, "a")).await;
    let (_b, _) = TestClient::tcp(addr, connect_packet(V311, "b")).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
        .await
        .expect("closed in time");
    assert_eq!(read.ok(), Some(0));
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn oversize_packets_are_refused_with_0x95() {
    let broker = start_broker(|config| config.limits.max_packet_size = 1024).await;
    let (client, connected) = TestClient::tcp(tcp_addr(&broker), connect_packet(V5, "big")).await;
    let ClientEvent::Connected { connack, .. } = connected else {
        panic!()
    };
    assert_eq!(
        connack.properties.maximum_packet_size.map(|m| m.get()),
        Some(1024)
    );
    // The engine refuses to send it; write the header of a 2,000-byte PUBLISH raw instead.
    let mut raw = raw_publisher(tcp_addr(&broker), V5, "raw").await;
    raw.write_all(&[0x30, 0xD0, 0x0F]).await.unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), raw.read_to_end(&mut received)).await;
    assert!(
        received.ends_with(&[0xE0, 0x01, 0x95]),
        "DISCONNECT 0x95, got {received:02x?}"
    );
    let _ = client.engine.is_connected();
    broker.shutdown(SHORT).await;
}

/// Connects an MQTT 5 client, ends the broker with `end`, and checks that the client was told
/// DISCONNECT 0x8B (Server shutting down) within 3 s.
async fn check_told_server_shutting_down<F: Future<Output = ()>>(
    end: impl FnOnce(rallymq_broker::BrokerHandle) -> F,
) {
    let broker = start_broker(|_| {}).await;
    let (mut client, _) = TestClient::tcp(tcp_addr(&broker), connect_packet(V5, "bye")).await;
    let waiting = tokio::spawn(async move { client.closed().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    end(broker).await;
    let reason = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("closed in time")
        .unwrap();
    assert!(matches!(
        reason,
        Some(CloseReason::PeerDisconnected {
            reason_code: ReasonCode::ServerShuttingDown,
            ..
        })
    ));
}

#[tokio::test]
async fn shutdown_sends_0x8b_to_v5_clients() {
    check_told_server_shutting_down(|broker| async move {
        broker.shutdown(Duration::from_secs(2)).await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_a_connection_that_has_not_sent_connect() {
    // Such a connection is reached through the broker's list of connecting ones, not a session.
    let broker = start_broker(|_| {}).await;
    let mut raw = tokio::net::TcpStream::connect(tcp_addr(&broker))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    broker.shutdown(Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not held for the grace period (nor the 10 s connect timeout)"
    );
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut buf))
        .await
        .expect("closed in time");
    assert_eq!(read.ok(), Some(0));
}

#[tokio::test]
async fn dropping_the_handle_disconnects_clients_as_shutdown_does() {
    check_told_server_shutting_down(|broker| async move { drop(broker) }).await;
}

/// A broker whose sessions queue at most `limit` messages, and a QoS 0 subscriber to `filter`
/// on it, which reads only while the test awaits it: a subscriber as slow as the test wants.
async fn broker_with_slow_subscriber(
    limit: usize,
    filter: &str,
) -> (
    rallymq_broker::BrokerHandle,
    SocketAddr,
    TestClient<tokio::net::TcpStream>,
) {
    let broker = start_broker(|config| config.limits.max_queued_messages = limit).await;
    let addr = tcp_addr(&broker);
    let (mut sub, _) = TestClient::tcp(addr, connect_packet(V5, "slow")).await;
    sub.subscribe(vec![subscription(filter, QoS::AtMostOnce)])
        .await;
    (broker, addr, sub)
}

/// A raw TCP connection that has sent the CONNECT of `version` with `client_id`, for writing
/// packets in bulk or ones an engine would not send.
async fn raw_publisher(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
) -> tokio::net::TcpStream {
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connect = rallymq_codec::Packet::from(connect_packet(version, client_id))
        .to_bytes(version)
        .unwrap();
    raw.write_all(&connect).await.unwrap();
    raw
}

#[tokio::test]
async fn a_slow_subscriber_slows_the_publisher_instead_of_losing_messages() {
    let (broker, addr, mut sub) = broker_with_slow_subscriber(20, "flood").await;
    // 400 messages of 32 KiB: far more than the subscriber's queue and the socket buffers.
    let count = 400;
    let publisher = tokio::spawn(async move {
        let mut raw = raw_publisher(addr, V311, "fast").await;
        let payload = "p".repeat(32 * 1024);
        for i in 0..count {
            let mut publish = message("flood", &payload, QoS::AtMostOnce);
            publish.payload = format!("{i:05}{payload}").into();
            raw.write_all(
                &rallymq_codec::Packet::Publish(publish)
                    .to_bytes(V311)
                    .unwrap(),
            )
            .await
            .unwrap();
        }
        raw
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut received = 0;
    while let Some(got) = sub.recv_within(Duration::from_secs(5)).await {
        assert_eq!(
            payload_str(&got)[..5],
            format!("{received:05}"),
            "in order, none missing"
        );
        received += 1;
        if received == count {
            break;
        }
    }
    assert_eq!(
        received, count,
        "every QoS 0 message arrived: the publisher was paused, not dropped"
    );
    drop(publisher.await.unwrap());
    broker.shutdown(SHORT).await;
}

/// Back-pressure holds within one read: a read of a publisher brings many small messages,
/// more than the room between a subscriber's high-water mark and its queue limit, and several
/// publishers read at once. They must pause after the message that reached the mark, not after
/// the whole read, or the queue limit drops QoS 0 messages.
#[tokio::test]
async fn several_publishers_pause_mid_read_instead_of_overrunning_a_queue() {
    // High-water mark at 3/4 of 40: the room past it is 10 messages, more than there are
    // publishers (each may add one before it sees the mark), and one 16 KiB read holds 15.
    let (broker, addr, mut sub) = broker_with_slow_subscriber(40, "burst/+").await;
    let (publishers, count) = (4, 2000);
    let payload = "p".repeat(1024);
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut raw = raw_publisher(addr, V311, &format!("burst{p}")).await;
            let mut bytes = Vec::new();
            for i in 0..count {
                let publish = message(
                    &format!("burst/{p}"),
                    &format!("{i:05}{payload}"),
                    QoS::AtMostOnce,
                );
                bytes.extend_from_slice(
                    &rallymq_codec::Packet::Publish(publish)
                        .to_bytes(V311)
                        .unwrap(),
                );
            }
            raw.write_all(&bytes).await.unwrap();
            raw
        }));
    }
    // Not reading for a while (well under the 1 s a publisher waits for a stuck subscriber):
    // the subscriber's socket fills and its queue reaches the mark.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut next = vec![0; publishers];
    let mut received = 0;
    while let Some(got) = sub.recv_within(Duration::from_secs(5)).await {
        let p: usize = got.topic.as_ref().unwrap()["burst/".len()..]
            .parse()
            .unwrap();
        assert_eq!(
            payload_str(&got)[..5],
            format!("{:05}", next[p]),
            "publisher {p}: in order, none missing"
        );
        next[p] += 1;
        received += 1;
        if received == publishers * count {
            break;
        }
    }
    assert_eq!(
        next,
        vec![count; publishers],
        "every QoS 0 message of every publisher arrived"
    );
    for task in tasks {
        drop(task.await.unwrap());
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn drop_oldest_policy_keeps_the_freshest_messages() {
    let broker = start_broker(|config| {
        config.limits.max_queued_messages = 3;
        config.limits.queue_full = rallymq_broker::QueueFullPolicy::DropOldest;
    })
    .await;
    let addr = tcp_addr(&broker);
    let connect = persistent_connect(V5, "fresh", 60);
    let (mut client, _) = TestClient::tcp(addr, connect.clone()).await;
    client
        .subscribe(vec![subscription("score", QoS::AtLeastOnce)])
        .await;
    client.disconnect(ReasonCode::Success).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..10 {
        broker
            .publish("score", format!("{i}"), QoS::AtLeastOnce, false)
            .unwrap();
    }
    let (mut client, _) = TestClient::tcp(addr, connect).await;
    let mut got = Vec::new();
    while let Some(message) = client.recv_within(SHORT).await {
        got.push(payload_str(&message));
    }
    assert_eq!(got, ["7", "8", "9"]);
    broker.shutdown(SHORT).await;
}

/// A full queue drops, as Mosquitto's does; an MQTT 5 publisher whose message no subscriber
/// could take is told 0x97 Quota exceeded (not success), and the queue's byte limit counts
/// like its message limit.
#[tokio::test]
async fn a_full_queue_drops_and_tells_v5_publishers_0x97() {
    for (messages, bytes) in [(2, 0), (1000, 2 * 13)] {
        let broker = start_broker(|config| {
            config.limits.max_queued_messages = messages;
            config.limits.max_queued_bytes = bytes;
        })
        .await;
        let addr = tcp_addr(&broker);
        let connect = persistent_connect(V5, "full", 60);
        let (mut subscriber, _) = TestClient::tcp(addr, connect.clone()).await;
        subscriber
            .subscribe(vec![subscription("quota", QoS::AtLeastOnce)])
            .await;
        subscriber.disconnect(ReasonCode::Success).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (mut publisher, _) = TestClient::tcp(addr, connect_packet(V5, "pub")).await;
        let mut codes = Vec::new();
        for i in 0..3 {
            // 5 bytes of topic and 8 of payload: 13 bytes each.
            codes.push(
                publisher
                    .publish(message("quota", &format!("payload{i}"), QoS::AtLeastOnce))
                    .await,
            );
        }
        assert_eq!(
            codes,
            [
                ReasonCode::Success,
                ReasonCode::Success,
                ReasonCode::QuotaExceeded
            ],
            "limits {messages} messages, {bytes} bytes"
        );
        let (mut subscriber, _) = TestClient::tcp(addr, connect).await;
        let mut got = Vec::new();
        while let Some(message) = subscriber.recv_within(SHORT).await {
            got.push(payload_str(&message));
        }
        assert_eq!(got, ["payload0", "payload1"]);
        broker.shutdown(SHORT).await;
    }
}

#[tokio::test]
async fn mqtt_3_3_2_5_expired_messages_are_not_delivered() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let (mut publisher, _) = TestClient::tcp(addr, connect_packet(V5, "p")).await;
    let mut short = message("exp/short", "gone", QoS::AtLeastOnce);
    short.retain = true;
    short.properties.message_expiry_interval = Some(1);
    publisher.publish(short).await;
    let mut long = message("exp/long", "kept", QoS::AtLeastOnce);
    long.retain = true;
    long.properties.message_expiry_interval = Some(100);
    publisher.publish(long).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (mut sub, _) = TestClient::tcp(addr, connect_packet(V5, "s")).await;
    sub.subscribe(vec![subscription("exp/#", QoS::AtLeastOnce)])
        .await;
    let got = sub.recv().await.expect("the unexpired retained message");
    assert_eq!(payload_str(&got), "kept");
    let left = got
        .properties
        .message_expiry_interval
        .expect("expiry passed on");
    assert!(
        (98..=99).contains(&left),
        "MQTT-3.3.2-6: counted down, got {left}"
    );
    sub.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn a_restart_on_the_same_store_keeps_sessions_queued_messages_and_retained() {
    use std::sync::Arc;
    let store = Arc::new(rallymq_broker::MemoryStore::new());
    let config = || {
        let mut config = rallymq_broker::BrokerConfig::without_listeners();
        config.tcp = vec!["127.0.0.1:0".parse().unwrap()];
        config.sys_interval = None;
        config
    };
    let broker = rallymq_broker::Broker::start_with_store(config(), store.clone())
        .await
        .unwrap();
    let connect = persistent_connect(V5, "durable", 3600);
    let (mut client, _) = TestClient::tcp(tcp_addr(&broker), connect.clone()).await;
    client
        .subscribe(vec![subscription("d/#", QoS::AtLeastOnce)])
        .await;
    client.disconnect(ReasonCode::Success).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker
        .publish("d/queued", "while offline", QoS::AtLeastOnce, false)
        .unwrap();
    broker
        .publish("d/retained", "kept", QoS::AtLeastOnce, true)
        .unwrap();
    broker.shutdown(SHORT).await;

    let broker = rallymq_broker::Broker::start_with_store(config(), store)
        .await
        .unwrap();
    assert!(broker.has_session("durable"));
    let (mut client, connected) = TestClient::tcp(tcp_addr(&broker), connect).await;
    assert!(matches!(
        connected,
        ClientEvent::Connected {
            session_present: true,
            ..
        }
    ));
    let mut got = Vec::new();
    while let Some(message) = client.recv_within(SHORT).await {
        got.push((payload_str(&message), message.retain));
    }
    got.sort();
    // The retained message was also routed live to the (offline) subscription.
    assert_eq!(
        got,
        [
            ("kept".to_owned(), false),
            ("while offline".to_owned(), false)
        ]
    );
    let (mut fresh, _) = TestClient::tcp(tcp_addr(&broker), connect_packet(V5, "fresh")).await;
    fresh
        .subscribe(vec![subscription("d/#", QoS::AtLeastOnce)])
        .await;
    let retained = fresh.recv().await.expect("retained survives the restart");
    assert_eq!(
        (payload_str(&retained), retained.retain),
        ("kept".to_owned(), true)
    );
    broker.shutdown(SHORT).await;
}

// ------------------------------------------------------------------ topic aliases to clients

/// A TCP stream that keeps a copy of every byte read: what the broker put on the wire.
struct Tap {
    inner: tokio::net::TcpStream,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl tokio::io::AsyncRead for Tap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = poll {
            let read = buf.filled()[before..].to_vec();
            self.seen.lock().unwrap().extend_from_slice(&read);
        }
        poll
    }
}

impl tokio::io::AsyncWrite for Tap {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a PUBLISH came on the wire: its topic ("" when only the alias stood for it) and alias.
type Wire = (String, Option<u16>);

/// A subscriber to `alias/#` whose CONNECT announces `maximum` (MQTT 5) and whose received
/// bytes are kept; a publisher sends `topics` in order at QoS 1. Returns the topics the
/// subscriber's engine resolved and the PUBLISHes as they were on the wire.
async fn aliased_traffic(
    broker: &rallymq_broker::BrokerHandle,
    version: ProtocolVersion,
    maximum: Option<u16>,
    topics: &[&str],
) -> (Vec<String>, Vec<Wire>) {
    let addr = tcp_addr(broker);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tap = Tap {
        inner: tokio::net::TcpStream::connect(addr).await.unwrap(),
        seen: seen.clone(),
    };
    let mut connect = connect_packet(version, "aliased");
    connect.properties.topic_alias_maximum = maximum;
    let (mut sub, _) = TestClient::over(tap, connect).await;
    sub.subscribe(vec![subscription("alias/#", QoS::AtLeastOnce)])
        .await;
    let (mut publisher, _) = TestClient::tcp(addr, connect_packet(V5, "aliaser")).await;
    let mut resolved = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        publisher
            .publish(message(topic, &i.to_string(), QoS::AtLeastOnce))
            .await;
        let got = sub.recv().await.expect("delivered");
        assert_eq!(payload_str(&got), i.to_string());
        resolved.push(topic_str(&got));
    }
    let mut bytes = bytes::BytesMut::from(&seen.lock().unwrap()[..]);
    let mut decoder = rallymq_codec::Decoder::with_version(version, Default::default());
    let mut wire = Vec::new();
    while let Some(packet) = decoder.decode(&mut bytes).expect("valid packets") {
        if let rallymq_codec::Packet::Publish(publish) = packet {
            wire.push((
                topic_str(&publish),
                publish.properties.topic_alias.map(|alias| alias.get()),
            ));
        }
    }
    (resolved, wire)
}

const ALIASED_TOPICS: [&str; 7] = [
    "alias/court/1/score",
    "alias/court/2/score",
    "alias/court/1/score",
    "alias/court/3/score",
    "alias/court/2/score",
    "alias/court/1/score",
    "alias/court/3/score",
];

/// A client announcing Topic Alias Maximum 10 gets aliases (on by default): the first PUBLISH
/// on a topic carries topic and alias, later ones the alias and an empty topic, and its engine
/// resolves every one (MQTT-3.3.2-11: none above its maximum).
#[tokio::test]
async fn mqtt_3_3_2_11_broker_sends_aliases_within_the_client_maximum() {
    let broker = start_broker(|_| {}).await;
    let (resolved, wire) = aliased_traffic(&broker, V5, Some(10), &ALIASED_TOPICS).await;
    assert_eq!(resolved, ALIASED_TOPICS);
    let wire: Vec<(&str, Option<u16>)> = wire.iter().map(|(t, a)| (t.as_str(), *a)).collect();
    assert_eq!(
        wire,
        [
            ("alias/court/1/score", Some(1)),
            ("alias/court/2/score", Some(2)),
            ("", Some(1)),
            ("alias/court/3/score", Some(3)),
            ("", Some(2)),
            ("", Some(1)),
            ("", Some(3)),
        ]
    );
    broker.shutdown(SHORT).await;
}

/// The broker's own limit bounds the aliases too: with 2, the third topic goes in full.
#[tokio::test]
async fn the_broker_limit_bounds_outgoing_aliases() {
    let broker = start_broker(|config| config.limits.outgoing_topic_alias_maximum = 2).await;
    let (resolved, wire) = aliased_traffic(&broker, V5, Some(10), &ALIASED_TOPICS).await;
    assert_eq!(resolved, ALIASED_TOPICS);
    assert!(
        wire.iter().all(|(_, alias)| alias.is_none_or(|a| a <= 2)),
        "{wire:?}"
    );
    assert_eq!(wire[3], ("alias/court/3/score".to_owned(), None));
    assert_eq!(wire[5], (String::new(), Some(1)));
    broker.shutdown(SHORT).await;
}

/// No aliases to a client that announces no Topic Alias Maximum (or 0), to an MQTT 3.1.1
/// client, or from a broker whose limit is 0 (MQTT-3.1.2-27).
#[tokio::test]
async fn mqtt_3_1_2_27_no_aliases_without_a_client_maximum_or_with_the_limit_at_0() {
    let broker = start_broker(|_| {}).await;
    for (version, maximum) in [(V5, None), (V5, Some(0)), (V311, None)] {
        let (resolved, wire) = aliased_traffic(&broker, version, maximum, &ALIASED_TOPICS).await;
        assert_eq!(resolved, ALIASED_TOPICS);
        let full: Vec<Wire> = ALIASED_TOPICS
            .iter()
            .map(|t| (t.to_string(), None))
            .collect();
        assert_eq!(wire, full, "{version:?}, maximum {maximum:?}");
    }
    broker.shutdown(SHORT).await;
    let broker = start_broker(|config| config.limits.outgoing_topic_alias_maximum = 0).await;
    let (_, wire) = aliased_traffic(&broker, V5, Some(10), &ALIASED_TOPICS).await;
    assert!(
        wire.iter()
            .all(|(topic, alias)| alias.is_none() && !topic.is_empty())
    );
    broker.shutdown(SHORT).await;
}

/// In-process subscriptions are no client sessions: they are not counted, and a client whose
/// id is the name they once had (`$local-1`) is a session of its own, routed apart.
#[tokio::test]
async fn in_process_subscriptions_are_not_sessions() {
    let broker = start_broker(|_| {}).await;
    let mut local = broker.subscribe("inproc/#", QoS::AtMostOnce).unwrap();
    assert_eq!(broker.session_count(), 0);
    assert!(!broker.has_session("$local-1"));
    let (mut client, _) =
        TestClient::tcp(tcp_addr(&broker), connect_packet(V311, "$local-1")).await;
    client
        .subscribe(vec![subscription("client/#", QoS::AtMostOnce)])
        .await;
    assert_eq!(broker.session_count(), 1);
    broker
        .publish("inproc/x", "to the local one", QoS::AtMostOnce, false)
        .unwrap();
    broker
        .publish("client/x", "to the client", QoS::AtMostOnce, false)
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), local.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload, "to the local one");
    assert_eq!(payload_str(&client.recv().await.unwrap()), "to the client");
    client.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

/// An embedder hands the broker any byte stream (here an in-memory pipe): it is served as a
/// socket would be, with every rule.
#[tokio::test]
async fn a_connection_over_any_byte_stream() {
    let broker = start_broker(|_| {}).await;
    let (client_side, broker_side) = tokio::io::duplex(64 * 1024);
    tokio::spawn(broker.serve_connection(broker_side, "127.0.0.1:9".parse().unwrap()));
    let (mut client, connected) = TestClient::over(client_side, connect_packet(V5, "piped")).await;
    assert!(matches!(connected, ClientEvent::Connected { .. }));
    client
        .subscribe(vec![subscription("pipe/#", QoS::AtLeastOnce)])
        .await;
    broker
        .publish("pipe/x", "through the pipe", QoS::AtLeastOnce, false)
        .unwrap();
    assert_eq!(
        payload_str(&client.recv().await.expect("delivered")),
        "through the pipe"
    );
    assert!(broker.has_session("piped"));
    broker.shutdown(SHORT).await;
}
