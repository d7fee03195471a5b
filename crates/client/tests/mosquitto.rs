//! The client against the reference broker, Mosquitto, over TCP and WebSockets.

use std::time::Duration;

use rallymq_client::{Client, ClientOptions};
use rallymq_codec::{ProtocolVersion, QoS};
use rallymq_test_support::Mosquitto;

#[tokio::test]
async fn qos_round_trips_and_a_persistent_session_with_mosquitto() {
    let mosquitto = Mosquitto::start();
    for url in [
        format!("mqtt://127.0.0.1:{}", mosquitto.tcp),
        format!("ws://127.0.0.1:{}/mqtt", mosquitto.ws),
    ] {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let options = ClientOptions::new(&url).version(version);
            let (client, mut messages, _) = Client::connect(options)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                client.subscribe("rt/#", qos).await.unwrap();
                client
                    .publish("rt/x", format!("{qos:?}"), qos, false)
                    .await
                    .unwrap();
                let got = tokio::time::timeout(Duration::from_secs(5), messages.recv())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    (got.payload, got.qos),
                    (format!("{qos:?}").into(), qos),
                    "{url} {version:?}"
                );
            }
            client.disconnect().await.unwrap();
        }
    }

    // Messages published while a persistent subscriber is away reach it when it comes back.
    let url = format!("mqtt://127.0.0.1:{}", mosquitto.tcp);
    let persistent = || {
        ClientOptions::new(&url)
            .client_id("away")
            .clean_start(false)
            .session_expiry(600)
    };
    let (subscriber, messages, _) = Client::connect(persistent()).await.unwrap();
    subscriber
        .subscribe("away/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    subscriber.disconnect().await.unwrap();
    drop(messages);
    let (publisher, _unused, _) = Client::connect(ClientOptions::new(&url)).await.unwrap();
    publisher
        .publish("away/1", "kept for you", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let (_back, mut messages, connack) = Client::connect(persistent()).await.unwrap();
    assert!(connack.session_present);
    let got = tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload, "kept for you");
}
