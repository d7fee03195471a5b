//! `mqtts://` and `wss://`: the client through a TLS-terminating proxy (rustls, a certificate
//! made for the test) in front of the broker, trusting the test's CA file.

use std::sync::Arc;
use std::time::Duration;

use rallymq_broker::{Broker, BrokerConfig, ListenerKind};
use rallymq_client::{Client, ClientOptions, Error};
use rallymq_codec::QoS;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};

/// Accepts TLS on a free port and forwards the plaintext to `backend`.
async fn tls_proxy(
    backend: std::net::SocketAddr,
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn mqtts_and_wss_with_a_given_ca() {
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec!["127.0.0.1:0".parse().unwrap()];
    config.ws = vec!["127.0.0.1:0".parse().unwrap()];
    config.sys_interval = None;
    let broker = Broker::start(config).await.unwrap();

    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let certificate = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let ca_file = std::env::temp_dir().join(format!("rallymq-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, generated.cert.pem()).unwrap();

    let mqtts = tls_proxy(
        broker.local_addr(ListenerKind::Tcp).unwrap(),
        certificate.clone(),
        key.clone_key(),
    )
    .await;
    let wss = tls_proxy(
        broker.local_addr(ListenerKind::WebSocket).unwrap(),
        certificate,
        key,
    )
    .await;

    for url in [
        format!("mqtts://localhost:{mqtts}"),
        format!("wss://localhost:{wss}/mqtt"),
    ] {
        let options = ClientOptions::new(&url).ca_file(&ca_file).reconnect(None);
        let (client, mut messages, _) = Client::connect(options)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        client
            .subscribe("secure/#", QoS::ExactlyOnce)
            .await
            .unwrap();
        client
            .publish("secure/x", "over TLS", QoS::ExactlyOnce, false)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), messages.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.payload, "over TLS", "{url}");
        client.disconnect().await.unwrap();

        // Without the CA, the self-signed certificate is not trusted.
        let untrusting = ClientOptions::new(&url).reconnect(None);
        assert!(
            matches!(Client::connect(untrusting).await, Err(Error::Transport(_))),
            "{url}"
        );
    }
    let _ = std::fs::remove_file(&ca_file);
    broker.shutdown(Duration::from_millis(300)).await;
}
