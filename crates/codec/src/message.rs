//! An application message: what a program publishes or receives, without the protocol's
//! packet details.

use bytes::Bytes;

use crate::{Properties, Publish, PublishProperties, QoS, TopicName};

/// An application message: topic, payload, QoS, retain flag and MQTT 5 properties. This is
/// what clients hand to applications and take from them; the [`Publish`] packet it travels in
/// adds what only the protocol needs (packet identifier, DUP flag, topic alias).
///
/// ```
/// use rallymq_codec::{Message, QoS, TopicName};
///
/// let mut message = Message::new(TopicName::new("tennis/court-1/score")?, "15-0");
/// message.qos = QoS::AtLeastOnce;
/// message.properties.content_type = Some("text/plain".try_into()?);
/// println!("{}: {:?}", message.topic, message.payload);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it is published to.
    pub topic: TopicName,
    /// The payload.
    pub payload: Bytes,
    /// The quality of service it is sent or was delivered with.
    pub qos: QoS,
    /// Whether it is (to be) retained; on a received message, whether it came from the
    /// retained store (or, with Retain As Published, was published retained).
    pub retain: bool,
    /// MQTT 5 properties (content type, response topic, correlation data, user properties,
    /// message expiry, subscription identifiers of a received message...). Reading one needs no
    /// allocation: `message.properties.response_topic`.
    pub properties: Properties<PublishProperties>,
}

impl Message {
    /// A QoS 0, non-retained message with no properties.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Self {
        Self {
            topic,
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        }
    }

    /// The message a received PUBLISH carries, or `None` for a PUBLISH whose topic is an
    /// unresolved alias (a session engine resolves aliases before handing messages on). The
    /// Topic Alias property is dropped: it belongs to the connection, not the message.
    pub fn from_publish(mut publish: Publish) -> Option<Self> {
        let topic = publish.topic?;
        if let Some(properties) = publish.properties.get_mut() {
            properties.topic_alias = None;
        }
        Some(Self {
            topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: publish.properties,
        })
    }
}

impl From<Message> for Publish {
    /// The PUBLISH carrying `message`, before a session assigns it a packet identifier.
    fn from(message: Message) -> Self {
        let mut publish = Self::new(message.topic, message.payload);
        publish.qos = message.qos;
        publish.retain = message.retain;
        publish.properties = message.properties;
        publish
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_goes_into_a_publish_and_back_unchanged() {
        let mut message = Message::new(TopicName::new("a/b").unwrap(), "x");
        message.qos = QoS::ExactlyOnce;
        message.retain = true;
        message.properties.message_expiry_interval = Some(9);
        let back = Message::from_publish(Publish::from(message.clone()));
        assert_eq!(back, Some(message));
    }

    #[test]
    fn a_publish_without_topic_is_no_message_and_the_alias_is_dropped() {
        let mut publish = Publish::new(TopicName::new("a").unwrap(), "x");
        publish.properties.topic_alias = std::num::NonZeroU16::new(3);
        let message = Message::from_publish(publish.clone()).unwrap();
        assert_eq!(message.properties.topic_alias, None);
        publish.topic = None;
        assert_eq!(Message::from_publish(publish), None);
    }
}
