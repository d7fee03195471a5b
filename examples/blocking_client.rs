//! A blocking MQTT client on `std::net::TcpStream`, driving the sans-IO `ClientConnection`
//! directly: no async runtime, the way an embedded target or a game loop would use the engine.
//!
//! `cargo run -p rallymq-examples --example blocking_client -- 127.0.0.1:1883`; with no address
//! it starts a broker of its own on a free port (on a tokio runtime of its own thread).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rallymq_codec::{
    Connect, Disconnect, MqttString, ProtocolVersion, Publish, QoS, ReasonCode, Subscription,
    TopicFilter, TopicName,
};
use rallymq_session::{ClientConfig, ClientConnection, ClientEvent, Timestamp};

/// The engine and its socket. The engine decides everything; this only moves bytes and time.
struct BlockingClient {
    socket: TcpStream,
    engine: ClientConnection,
    epoch: Instant,
}

impl BlockingClient {
    fn connect(address: &str, client_id: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let socket = TcpStream::connect(address)?;
        socket.set_nodelay(true)?;
        let mut connect = Connect::new(ProtocolVersion::V5, MqttString::new(client_id)?);
        connect.keep_alive = 30;
        let epoch = Instant::now();
        let mut engine = ClientConnection::new(ClientConfig::new(connect), None, Timestamp::ZERO);
        engine.connect(Timestamp::ZERO)?;
        let mut client = Self {
            socket,
            engine,
            epoch,
        };
        match client.next_event(Duration::from_secs(10))? {
            Some(ClientEvent::Connected { .. }) => Ok(client),
            other => Err(format!("not connected: {other:?}").into()),
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_since_epoch(self.epoch.elapsed())
    }

    /// Writes whatever the engine has to send.
    fn flush(&mut self) -> std::io::Result<()> {
        while let Some(bytes) = self.engine.poll_transmit(self.now()) {
            self.socket.write_all(&bytes)?;
        }
        Ok(())
    }

    /// Drives the connection until the engine has an event, or `within` passes: write, then
    /// read until the engine's next deadline (its keep alive), then tell it the time.
    fn next_event(&mut self, within: Duration) -> std::io::Result<Option<ClientEvent>> {
        let give_up = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            self.flush()?;
            if let Some(event) = self.engine.poll_event() {
                // `Closed` may come with a last packet (a DISCONNECT) still to write.
                self.flush()?;
                return Ok(Some(event));
            }
            let now = Instant::now();
            if now >= give_up {
                return Ok(None);
            }
            let deadline = self
                .engine
                .poll_timeout()
                .map_or(give_up, |at| (self.epoch + at.since_epoch()).min(give_up));
            let wait = deadline.saturating_duration_since(now);
            self.socket
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
            match self.socket.read(&mut buf) {
                Ok(0) => self.engine.handle_transport_closed(),
                Ok(n) => {
                    let now = self.now();
                    self.engine.handle_bytes(now, &buf[..n]);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let now = self.now();
                    self.engine.handle_timeout(now);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn disconnect(mut self) -> std::io::Result<()> {
        self.engine.disconnect(Disconnect::new(ReasonCode::Success));
        self.flush()?;
        self.socket.shutdown(std::net::Shutdown::Write)
    }
}

/// Subscribes, publishes one QoS 1 message to itself, and returns it as received.
fn round_trip(address: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut client = BlockingClient::connect(address, "blocking-example")?;
    client.engine.subscribe(
        vec![Subscription::new(
            TopicFilter::new("example/blocking/#")?,
            QoS::AtLeastOnce,
        )],
        Default::default(),
    )?;
    let mut publish = Publish::new(TopicName::new("example/blocking/hello")?, "from std::net");
    publish.qos = QoS::AtLeastOnce;
    let mut received = None;
    let mut published = false;
    let give_up = Instant::now() + Duration::from_secs(10);
    while received.is_none() || !published {
        let left = give_up.saturating_duration_since(Instant::now());
        match client.next_event(left)? {
            Some(ClientEvent::Subscribed { .. }) => {
                let now = client.now();
                client.engine.publish(now, publish.clone())?;
            }
            Some(ClientEvent::PublishAcknowledged(outcome)) => {
                println!("PUBACK: {:?}", outcome.reason_code);
                published = true;
            }
            Some(ClientEvent::Message(message)) => {
                let topic = message.publish.topic.map(|t| t.to_string());
                let payload = String::from_utf8_lossy(&message.publish.payload).into_owned();
                println!("received {}: {payload}", topic.unwrap_or_default());
                received = Some(payload);
            }
            Some(ClientEvent::Closed(reason)) => return Err(format!("closed: {reason:?}").into()),
            Some(_) => {}
            None => return Err("no answer in time".into()),
        }
    }
    client.disconnect()?;
    received.ok_or_else(|| "nothing received".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1) {
        Some(address) => round_trip(&address).map(|_| ()),
        None => {
            let (address, _broker) = own_broker()?;
            round_trip(&address).map(|_| ())
        }
    }
}

/// A broker on a free port, served by a tokio runtime on a thread of its own; the broker stops
/// when the returned sender is dropped.
fn own_broker() -> Result<(String, std::sync::mpsc::Sender<()>), Box<dyn std::error::Error>> {
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        runtime.block_on(async move {
            let broker = rallymq_broker::Broker::start(rallymq_broker::BrokerConfig::default())
                .await
                .expect("the broker starts");
            let address = broker.local_addr(rallymq_broker::ListenerKind::Tcp);
            let _ = address_tx.send(address);
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            broker.shutdown(Duration::from_millis(200)).await;
        });
    });
    let address = address_rx.recv()?.ok_or("no TCP listener")?;
    Ok((address.to_string(), stop_tx))
}

#[test]
fn a_blocking_client_round_trips_a_message() {
    let (address, _broker) = own_broker().unwrap();
    assert_eq!(round_trip(&address).unwrap(), "from std::net");
}
