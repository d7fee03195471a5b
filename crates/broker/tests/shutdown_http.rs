//! Shutdown does not wait for idle HTTP keep-alive connections on the WebSocket port (a
//! browser keeps one open after loading the index page).

use std::time::{Duration, Instant};

use rallymq_broker::{Broker, BrokerConfig, ListenerKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[tokio::test]
async fn an_idle_keep_alive_http_connection_does_not_hold_shutdown() {
    let mut config = BrokerConfig::without_listeners();
    config.ws = vec!["127.0.0.1:0".parse().expect("an address")];
    let broker = Broker::start(config).await.expect("binds a free port");
    let addr = broker
        .local_addr(ListenerKind::WebSocket)
        .expect("a WebSocket listener");

    let mut http = TcpStream::connect(addr).await.expect("connects");
    http.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("sends");
    let mut response = vec![0; 64 * 1024];
    let n = timeout(Duration::from_secs(10), http.read(&mut response))
        .await
        .expect("a response in time")
        .expect("reads");
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    // The connection is now idle and kept alive.

    let started = Instant::now();
    timeout(
        Duration::from_secs(10),
        broker.shutdown(Duration::from_secs(5)),
    )
    .await
    .expect("shutdown ends");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown waited {:?} for an idle HTTP connection",
        started.elapsed()
    );
    let closed = timeout(Duration::from_secs(10), http.read(&mut response))
        .await
        .expect("the server closes the connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}
