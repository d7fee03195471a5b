//! MQTT 5 request/response with `rallymq-client`: a responder answers on the request's
//! Response Topic, echoing its Correlation Data, and the requester matches the answer.
//!
//! `cargo run -p rallymq-examples --example request_response -- mqtt://127.0.0.1:1883`; with
//! no URL it starts a broker of its own on a free port.

use bytes::Bytes;
use rallymq_client::{Client, ClientOptions, Message, QoS, TopicName};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _broker) = rallymq_examples::broker_url_or_own().await?;

    // The responder: squares the number it is sent.
    let (responder, mut requests, _) =
        Client::connect(ClientOptions::new(&url).client_id("squarer")).await?;
    responder
        .subscribe("example/square", QoS::AtLeastOnce)
        .await?;
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            let Some(reply_to) = request.properties.response_topic.clone() else {
                continue;
            };
            let n: i64 = String::from_utf8_lossy(&request.payload)
                .parse()
                .unwrap_or(0);
            let mut response = Message::new(reply_to, Bytes::from((n * n).to_string()));
            response.qos = QoS::AtLeastOnce;
            response.properties.correlation_data = request.properties.correlation_data.clone();
            if responder.publish_message(response).await.is_err() {
                return;
            }
        }
    });

    // The requester.
    let (requester, mut responses, _) =
        Client::connect(ClientOptions::new(&url).client_id("asker")).await?;
    let reply_to = "example/square/replies/asker";
    requester.subscribe(reply_to, QoS::AtLeastOnce).await?;
    for (id, n) in [(1u8, 7), (2, 12)] {
        let mut request = Message::new(
            TopicName::new("example/square")?,
            Bytes::from(n.to_string()),
        );
        request.qos = QoS::AtLeastOnce;
        request.properties.response_topic = Some(TopicName::new(reply_to)?);
        request.properties.correlation_data = Some(Bytes::from(vec![id]));
        requester.publish_message(request).await?;
        let response = responses.recv().await.ok_or("the client ended")?;
        let correlation = response
            .properties
            .correlation_data
            .clone()
            .unwrap_or_default();
        println!(
            "request {id}: {n}² = {} (correlation {correlation:?})",
            String::from_utf8_lossy(&response.payload)
        );
        assert_eq!(
            correlation.as_ref(),
            [id],
            "the answer belongs to this request"
        );
    }
    requester.disconnect().await?;
    Ok(())
}
