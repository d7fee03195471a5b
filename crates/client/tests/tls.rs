//! `mqtts://` and `wss://` end to end: the broker's own TLS listeners (certificates made for
//! the test), the client trusting the test's CA file, client certificates the broker asks
//! for, certificates renewed under a running broker, and the Mosquitto tools and paho-mqtt as
//! clients.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rallymq_broker::{
    Broker, BrokerConfig, BrokerHandle, ClientCertificates, ListenerKind, TlsSettings,
};
use rallymq_client::{Client, ClientOptions, Error, QoS};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

const WAIT: Duration = Duration::from_secs(10);

/// A CA made for the test, and certificates it signs, as PEM files in a directory of their own.
struct Certificates {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Certificates {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rallymq-tls-{name}-{}",
            rallymq_test_support::run_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("rallymq test CA {name}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { dir, ca }
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn ca_file(&self, name: &str) -> PathBuf {
        self.write(name, &self.ca.pem())
    }

    /// A certificate for localhost and 127.0.0.1 with Common Name `name`; its PEM files.
    fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params.signed_by(&key, &self.ca).unwrap();
        (
            self.write(&format!("{name}.pem"), &certificate.pem()),
            self.write(&format!("{name}.key"), &key.serialize_pem()),
        )
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_broker(
    cert: &Path,
    key: &Path,
    client_ca: Option<PathBuf>,
    asking: ClientCertificates,
) -> BrokerHandle {
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec!["127.0.0.1:0".parse().unwrap()];
    config.tls = vec!["127.0.0.1:0".parse().unwrap()];
    config.wss = vec!["127.0.0.1:0".parse().unwrap()];
    config.sys_interval = None;
    config.tls_files = Some(TlsSettings {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca,
        certificate_name: Default::default(),
    });
    config.client_certificates = asking;
    Broker::start(config).await.expect("the broker starts")
}

fn url(broker: &BrokerHandle, kind: ListenerKind) -> String {
    let addr = broker.local_addr(kind).unwrap();
    match kind {
        ListenerKind::Tls => format!("mqtts://localhost:{}", addr.port()),
        ListenerKind::WebSocketTls => format!("wss://localhost:{}/mqtt", addr.port()),
        _ => format!("mqtt://{addr}"),
    }
}

/// Subscribes over `options`, publishes over TCP, and checks the message arrives.
async fn round_trip(broker: &BrokerHandle, options: ClientOptions, topic: &str) {
    let (client, mut messages, _) = Client::connect(options).await.expect("connects");
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let (publisher, _unused, _) =
        Client::connect(ClientOptions::new(&url(broker, ListenerKind::Tcp)))
            .await
            .unwrap();
    publisher
        .publish(topic, "over TLS", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, messages.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(got.payload, "over TLS");
    client.disconnect().await.unwrap();
    publisher.disconnect().await.unwrap();
}

#[tokio::test]
async fn mqtts_and_wss_on_the_brokers_own_listeners() {
    let certificates = Certificates::new("listeners");
    let ca = certificates.ca_file("ca.pem");
    let (cert, key) = certificates.leaf("server");
    let broker = tls_broker(&cert, &key, None, ClientCertificates::NotAsked).await;
    for kind in [ListenerKind::Tls, ListenerKind::WebSocketTls] {
        let options = ClientOptions::new(&url(&broker, kind)).ca_file(&ca);
        round_trip(&broker, options, &format!("tls/{kind:?}")).await;
    }
    // A client that does not trust the broker's CA fails the handshake (no system root
    // vouches for a test certificate).
    let untrusted = ClientOptions::new(&url(&broker, ListenerKind::Tls)).reconnect(None);
    assert!(matches!(
        Client::connect(untrusted).await,
        Err(Error::Transport(_))
    ));
    broker.shutdown(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_required_client_certificate_is_checked_against_the_ca() {
    let certificates = Certificates::new("required");
    let ca = certificates.ca_file("ca.pem");
    let (cert, key) = certificates.leaf("server");
    let (client_cert, client_key) = certificates.leaf("sensor-7");
    let broker = tls_broker(&cert, &key, Some(ca.clone()), ClientCertificates::Required).await;
    let url = url(&broker, ListenerKind::Tls);
    let without = ClientOptions::new(&url).ca_file(&ca).reconnect(None);
    assert!(
        Client::connect(without).await.is_err(),
        "no certificate, no connection"
    );
    let stranger = Certificates::new("stranger");
    let (other_cert, other_key) = stranger.leaf("intruder");
    let foreign = ClientOptions::new(&url)
        .ca_file(&ca)
        .client_certificate(&other_cert, &other_key)
        .reconnect(None);
    assert!(
        Client::connect(foreign).await.is_err(),
        "a certificate of another CA is refused"
    );
    let with = ClientOptions::new(&url)
        .ca_file(&ca)
        .client_certificate(&client_cert, &client_key);
    round_trip(&broker, with, "tls/required").await;
    broker.shutdown(Duration::from_millis(300)).await;
}

/// A certificate renewed on disk is taken by new connections without a restart, and without
/// dropping the connections already open.
#[tokio::test]
async fn a_renewed_certificate_is_used_without_a_restart() {
    let old = Certificates::new("old");
    let old_ca = old.ca_file("ca.pem");
    let (cert, key) = old.leaf("server");
    let broker = tls_broker(&cert, &key, None, ClientCertificates::NotAsked).await;
    let url = url(&broker, ListenerKind::Tls);
    let (open, mut messages, _) = Client::connect(ClientOptions::new(&url).ca_file(&old_ca))
        .await
        .unwrap();
    open.subscribe("renewal", QoS::AtLeastOnce).await.unwrap();

    // The renewal: a new certificate, from another CA, written over the old files.
    let new = Certificates::new("new");
    let new_ca = new.ca_file("ca.pem");
    let (new_cert, new_key) = new.leaf("server");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let options = ClientOptions::new(&url).ca_file(&new_ca).reconnect(None);
        if let Ok((client, _, _)) = Client::connect(options).await {
            client.disconnect().await.unwrap();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection made before the renewal is still served.
    broker
        .publish("renewal", "still here", QoS::AtLeastOnce, false)
        .unwrap();
    let got = tokio::time::timeout(WAIT, messages.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload, "still here");
    // A file that cannot be used keeps what is in force, and says why.
    std::fs::write(&key, "not a key").unwrap();
    assert!(broker.reload().is_err());
    let options = ClientOptions::new(&url).ca_file(&new_ca).reconnect(None);
    let (client, _, _) = Client::connect(options).await.expect("still served");
    client.disconnect().await.unwrap();
    open.disconnect().await.unwrap();
    broker.shutdown(Duration::from_millis(300)).await;
}

/// mosquitto_sub and mosquitto_pub, with --cafile and a client certificate, against the
/// broker's TLS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_tools_over_the_brokers_tls_listener() {
    let certificates = Certificates::new("mosquitto");
    let ca = certificates.ca_file("ca.pem");
    let (cert, key) = certificates.leaf("server");
    let (client_cert, client_key) = certificates.leaf("tool");
    let broker = tls_broker(&cert, &key, Some(ca.clone()), ClientCertificates::Required).await;
    let port = broker
        .local_addr(ListenerKind::Tls)
        .unwrap()
        .port()
        .to_string();
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let tls_args = [
        "-h".to_owned(),
        "localhost".to_owned(),
        "-p".to_owned(),
        port,
        "--cafile".to_owned(),
        path(&ca),
        "--cert".to_owned(),
        path(&client_cert),
        "--key".to_owned(),
        path(&client_key),
    ];
    let subscriber = Command::new("mosquitto_sub")
        .args(&tls_args)
        .args(["-t", "tools/tls", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (apt-get install mosquitto-clients)");
    // Published retained, so the subscriber gets it whenever it has subscribed.
    let published = Command::new("mosquitto_pub")
        .args(&tls_args)
        .args([
            "-t",
            "tools/tls",
            "-m",
            "from mosquitto_pub",
            "-r",
            "-q",
            "1",
        ])
        .output()
        .expect("mosquitto_pub runs");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let output = tokio::task::spawn_blocking(move || subscriber.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "from mosquitto_pub",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Without a client certificate the broker refuses the handshake.
    let refused = Command::new("mosquitto_pub")
        .args(&tls_args[..6])
        .args(["-t", "tools/tls", "-m", "x"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    broker.shutdown(Duration::from_millis(300)).await;
}

/// paho-mqtt (Python) over the broker's TLS listener, logging in with a password from a file
/// `mosquitto_passwd` wrote; a wrong password is refused with return code 4, which paho
/// reports as 0x86.
const PAHO_TLS_PUBLISH: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
port, ca, user, password = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls-" + password,
                     protocol=mqtt.MQTTv311)
client.tls_set(ca_certs=ca)
client.username_pw_set(user, password)
answered = threading.Event()
outcome = {}
def on_connect(client, userdata, flags, reason_code, properties):
    outcome["code"] = reason_code.value
    answered.set()
client.on_connect = on_connect
client.connect("localhost", int(port))
client.loop_start()
if not answered.wait(10):
    sys.exit("no CONNACK in 10 s")
if outcome["code"] == 0:
    client.publish("paho/tls", "from paho over TLS", qos=1).wait_for_publish(10)
    client.disconnect()
client.loop_stop()
print(outcome["code"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_the_brokers_tls_listener_with_a_mosquitto_passwd_file() {
    let certificates = Certificates::new("paho");
    let ca = certificates.ca_file("ca.pem");
    let (cert, key) = certificates.leaf("server");
    let passwords = certificates.dir.join("passwords");
    let written = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["paho", "snake"])
        .output()
        .expect("mosquitto_passwd runs (apt-get install mosquitto)");
    assert!(written.status.success(), "{written:?}");

    let mut config = BrokerConfig::without_listeners();
    config.tls = vec!["127.0.0.1:0".parse().unwrap()];
    config.sys_interval = None;
    config.tls_files = Some(TlsSettings {
        cert,
        key,
        client_ca: None,
        certificate_name: Default::default(),
    });
    config.security.auth.password_file = Some(passwords);
    let broker = Broker::start(config).await.expect("the broker starts");
    let mut received = broker.subscribe("paho/#", QoS::AtLeastOnce).unwrap();
    let port = broker.local_addr(ListenerKind::Tls).unwrap().port();

    let paho = move |password: &str| {
        let output = Command::new("python3")
            .args(["-c", PAHO_TLS_PUBLISH, &port.to_string()])
            .arg(&ca)
            .args(["paho", password])
            .output()
            .expect("python3 runs (pip install paho-mqtt)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let code = tokio::task::spawn_blocking(move || (paho("snake"), paho("python")))
        .await
        .unwrap();
    assert_eq!(code, ("0".to_owned(), "134".to_owned()));
    let message = tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(message.payload, "from paho over TLS");
    broker.shutdown(Duration::from_millis(300)).await;
}
