//! The order the broker promises across connections (crates/broker/README.md, "Ordering"):
//! once a client has SUBACK, every message published afterwards on a matching topic, by any
//! connection, is delivered to it; once it has UNSUBACK, none published afterwards is.

mod support;

use std::time::Duration;

use rallymq_codec::{ProtocolVersion, QoS};
use support::{
    TestClient, connect_packet, message, payload_str, start_broker, subscription, tcp_addr,
};

const ROUNDS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_suback_every_message_published_afterwards_is_delivered() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let (mut subscriber, _) =
        TestClient::tcp(addr, connect_packet(ProtocolVersion::V5, "order-sub")).await;
    let (mut publisher, _) =
        TestClient::tcp(addr, connect_packet(ProtocolVersion::V3_1_1, "order-pub")).await;
    for round in 0..ROUNDS {
        let topic = format!("order/{round}");
        // SUBACK received: the subscription is in place for every later PUBLISH.
        subscriber
            .subscribe(vec![subscription(&topic, QoS::AtLeastOnce)])
            .await;
        publisher
            .publish(message(&topic, &round.to_string(), QoS::AtMostOnce))
            .await;
        let got = subscriber.recv().await.unwrap_or_else(|| {
            panic!("round {round}: the message published after SUBACK was lost")
        });
        assert_eq!(payload_str(&got), round.to_string());

        // UNSUBACK received: nothing published afterwards arrives.
        subscriber.unsubscribe(&topic).await;
        publisher
            .publish(message(&topic, "after unsubscribe", QoS::AtMostOnce))
            .await;
    }
    subscriber.expect_silence(Duration::from_millis(300)).await;
    broker.shutdown(Duration::from_millis(300)).await;
}
