//! Cluster nodes and their clients, for the tests with real `nats-server` processes.

use rallymq_broker::{BrokerHandle, ClusterConfig};
use rallymq_codec::{ProtocolVersion, QoS};
use rallymq_test_support::NatsServer;
use tokio::net::TcpStream;

use super::{TestClient, connect_packet, start_broker, subscription, tcp_addr};

/// A node (in memory, generated id) of the cluster of `servers`, known to it in this order.
pub async fn node(servers: &[&NatsServer]) -> BrokerHandle {
    let urls: Vec<String> = servers.iter().map(|server| server.url()).collect();
    start_broker(|config| config.cluster = Some(ClusterConfig::new(urls))).await
}

/// An MQTT 5 client of `node`, subscribed to each of `filters` with `qos`.
pub async fn subscribed_client(
    node: &BrokerHandle,
    id: &str,
    filters: &[&str],
    qos: QoS,
) -> TestClient<TcpStream> {
    let (mut client, _) =
        TestClient::tcp(tcp_addr(node), connect_packet(ProtocolVersion::V5, id)).await;
    if !filters.is_empty() {
        let subscriptions = filters
            .iter()
            .map(|filter| subscription(filter, qos))
            .collect();
        client.subscribe(subscriptions).await;
    }
    client
}
