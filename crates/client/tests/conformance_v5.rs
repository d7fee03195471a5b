//! MQTT 5.0 conformance of the client's transports: each test is named after the normative
//! statement of MQTT 5.0 it checks, and `crates/session/CONFORMANCE.md` traces every statement
//! to its tests. (The client's protocol rules live in the session engine and are tested there.)

use std::time::Duration;

use rallymq_client::{Client, ClientOptions};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

#[tokio::test]
async fn mqtt_6_0_0_3_websocket_client_offers_the_mqtt_subprotocol() {
    // A peer that reads the upgrade request and answers nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(request).unwrap()
    });
    let options = ClientOptions::new(&format!("ws://{addr}/mqtt")).reconnect(None);
    let connecting = tokio::spawn(Client::connect(options));
    let request = tokio::time::timeout(Duration::from_secs(5), peer)
        .await
        .expect("the request in time")
        .unwrap();
    connecting.abort();
    let offered: Vec<String> = request
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|(_, value)| value.split(',').map(|p| p.trim().to_owned()))
        .collect();
    assert!(
        offered.iter().any(|p| p == "mqtt"),
        "offered {offered:?} in:\n{request}"
    );
}
