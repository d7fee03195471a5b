//! A minimal MQTT broker assembled straight from the rallymq protocol crates and tokio: TCP,
//! QoS 0 and 1, no persistence, no retained messages, no wills. A learning example of how the
//! crates compose; `rallymq broker` is the real thing.
//!
//! Run: `cargo run -p rallymq-examples --example minimal_broker -- 127.0.0.1:1884`, then
//! `mosquitto_sub -p 1884 -t 'a/#'` and `mosquitto_pub -p 1884 -t a/b -m hi`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rallymq_codec::{MqttString, Publish, QoS, ReasonCode, SubAckProperties};
use rallymq_session::{Accept, ServerConfig, ServerConnection, ServerEvent, Timestamp};
use rallymq_topic::{Match, SubscriptionIndex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Who subscribed: a connection number. What is stored with it: the granted QoS and the
/// connection's mailbox.
type Index = SubscriptionIndex<u64, (QoS, mpsc::UnboundedSender<Publish>)>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1884".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening: tcp://{}", listener.local_addr()?);
    let index = Arc::new(Mutex::new(Index::new()));
    let ids = AtomicU64::new(1);
    loop {
        let (stream, _) = listener.accept().await?;
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(stream, id, index.clone()));
    }
}

/// Routes a message to every matching subscription (one member of each shared group).
fn route(index: &Mutex<Index>, publish: &Publish) {
    let Some(topic) = &publish.topic else { return };
    let index = index.lock().expect("no panics while holding the lock");
    let send = |(qos, mailbox): &(QoS, mpsc::UnboundedSender<Publish>)| {
        let mut copy = publish.clone(); // shares the payload bytes
        copy.qos = copy.qos.min(*qos);
        copy.retain = false;
        let _ = mailbox.send(copy);
    };
    index.for_each_match(topic, |found| match found {
        Match::Subscription { data, .. } => send(data),
        Match::Shared(group) => {
            if let Some((_, data)) = group.pick_round_robin() {
                send(data)
            }
        }
    });
}

async fn serve(mut stream: TcpStream, id: u64, index: Arc<Mutex<Index>>) {
    let epoch = Instant::now();
    let now = || Timestamp::from_since_epoch(epoch.elapsed());
    // Subscriptions are granted QoS 1 at most; MQTT 5 clients are told Maximum QoS 1.
    let mut engine = ServerConnection::new(ServerConfig::default(), now());
    let (mailbox, mut deliveries) = mpsc::unbounded_channel();
    let mut buf = vec![0u8; 8192];
    loop {
        // Drain the outputs after every input: events, then bytes, then the timer.
        while let Some(event) = engine.poll_event() {
            match event {
                ServerEvent::ConnectReceived {
                    needs_client_id, ..
                } => {
                    let mut accept = Accept::default();
                    if needs_client_id {
                        accept.assigned_client_id = MqttString::new(format!("minimal-{id}")).ok();
                    }
                    accept.properties.maximum_qos = Some(QoS::AtLeastOnce);
                    accept.properties.retain_available = Some(false);
                    let _ = engine.accept(now(), accept);
                }
                ServerEvent::Message(message) => route(&index, &message.publish),
                ServerEvent::Subscribe(subscribe) => {
                    let mut codes = Vec::new();
                    for subscription in subscribe.subscriptions {
                        let qos = subscription.options.qos.min(QoS::AtLeastOnce);
                        index.lock().expect("lock").insert(
                            id,
                            &subscription.filter,
                            (qos, mailbox.clone()),
                        );
                        codes.push(if qos == QoS::AtMostOnce {
                            ReasonCode::Success
                        } else {
                            ReasonCode::GrantedQoS1
                        });
                    }
                    let _ = engine.answer_subscribe(
                        subscribe.packet_id,
                        codes,
                        SubAckProperties::default(),
                    );
                }
                ServerEvent::Unsubscribe(unsubscribe) => {
                    let codes = unsubscribe
                        .filters
                        .iter()
                        .map(
                            |filter| match index.lock().expect("lock").remove(&id, filter) {
                                Some(_) => ReasonCode::Success,
                                None => ReasonCode::NoSubscriptionExisted,
                            },
                        )
                        .collect();
                    let _ = engine.answer_unsubscribe(
                        unsubscribe.packet_id,
                        codes,
                        SubAckProperties::default(),
                    );
                }
                _ => {}
            }
        }
        while let Some(bytes) = engine.poll_transmit(now()) {
            if stream.write_all(&bytes).await.is_err() {
                engine.handle_transport_closed(now());
            }
        }
        if engine.is_closed() {
            index.lock().expect("lock").remove_subscriber(&id);
            return;
        }
        let deadline = engine
            .poll_timeout()
            .map(|at| tokio::time::Instant::from_std(epoch + at.since_epoch()));
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => engine.handle_transport_closed(now()),
                Ok(n) => engine.handle_bytes(now(), &buf[..n]),
            },
            Some(publish) = deliveries.recv() => {
                let _ = engine.deliver(now(), publish);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(3600))) => {
                engine.handle_timeout(now());
            }
        }
    }
}
