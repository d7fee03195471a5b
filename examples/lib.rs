//! Example package: the examples live in the `[[example]]` targets; this library holds what
//! several of them share.

use rallymq_broker::{Broker, BrokerConfig, BrokerHandle, ListenerKind};

/// The broker URL given as the first command-line argument; without one, a broker of the
/// example's own on a free port of 127.0.0.1 (keep the handle alive while it is used).
pub async fn broker_url_or_own()
-> Result<(String, Option<BrokerHandle>), Box<dyn std::error::Error>> {
    if let Some(url) = std::env::args().nth(1) {
        return Ok((url, None));
    }
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec!["127.0.0.1:0".parse()?];
    let broker = Broker::start(config).await?;
    let addr = broker
        .local_addr(ListenerKind::Tcp)
        .ok_or("the broker has no TCP listener")?;
    Ok((format!("mqtt://{addr}"), Some(broker)))
}
