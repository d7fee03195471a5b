//! Publish and subscribe with `rallymq-client`.
//!
//! `cargo run -p rallymq-examples --example pubsub -- mqtt://127.0.0.1:1883` (or `ws://...`);
//! with no URL it starts a broker of its own on a free port.

use rallymq_client::{Client, ClientOptions, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _broker) = rallymq_examples::broker_url_or_own().await?;
    let (client, mut messages, _) =
        Client::connect(ClientOptions::new(&url).client_id("pubsub-example")).await?;
    client
        .subscribe("example/scores/#", QoS::AtLeastOnce)
        .await?;
    for (court, score) in [("1", "15-0"), ("2", "30-15"), ("1", "30-0")] {
        // Resolves once the broker has acknowledged the message (PUBACK).
        let ack = client
            .publish(
                &format!("example/scores/{court}"),
                score,
                QoS::AtLeastOnce,
                false,
            )
            .await?;
        println!("published {score} on court {court}: {:?}", ack.reason_code);
    }
    for _ in 0..3 {
        let message = messages.recv().await.ok_or("the client ended")?;
        println!(
            "received {}: {}",
            message.topic,
            String::from_utf8_lossy(&message.payload)
        );
    }
    client.disconnect().await?;
    Ok(())
}
