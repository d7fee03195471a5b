//! Topic aliases (MQTT 5 §3.3.2.3.4), both ways, per connection.

use std::num::NonZeroU16;

use rallymq_codec::{Publish, TopicName};

use crate::lazy::LazyMap;

/// Aliases this side assigns to topics it sends, within the peer's Topic Alias Maximum.
#[derive(Default)]
pub(crate) struct OutgoingAliases {
    maximum: u16,
    assigned: LazyMap<TopicName, NonZeroU16>,
}

impl OutgoingAliases {
    pub(crate) fn new(maximum: u16) -> Self {
        Self {
            maximum,
            assigned: LazyMap::default(),
        }
    }

    /// Rewrites `publish` to use an alias where one is set or can be set: the first PUBLISH of
    /// a topic carries topic and alias, later ones the alias and an empty topic. Once the
    /// peer's maximum is reached, further topics go without alias.
    pub(crate) fn apply(&mut self, publish: &mut Publish) {
        if let Some(properties) = publish.properties.get_mut() {
            properties.topic_alias = None;
        }
        if self.maximum == 0 {
            return;
        }
        let Some(topic) = &publish.topic else { return };
        if let Some(alias) = self.assigned.get(topic) {
            publish.properties.topic_alias = Some(*alias);
            publish.topic = None;
        } else if self.assigned.len() < usize::from(self.maximum) {
            // len < maximum <= u16::MAX, so len + 1 is a non-zero u16.
            let alias = NonZeroU16::new(self.assigned.len() as u16 + 1).expect("len + 1 > 0");
            self.assigned.insert(topic.clone(), alias);
            publish.properties.topic_alias = Some(alias);
        }
    }
}

/// Why an inbound alias could not be resolved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AliasError {
    /// Above our Topic Alias Maximum (MQTT-3.3.2-9/-10): 0x94.
    OutOfRange,
    /// An empty topic with an alias never set: protocol error 0x82.
    Unknown,
}

/// Aliases the peer assigned, within our Topic Alias Maximum.
#[derive(Default)]
pub(crate) struct IncomingAliases {
    maximum: u16,
    topics: LazyMap<u16, TopicName>,
}

impl IncomingAliases {
    pub(crate) fn new(maximum: u16) -> Self {
        Self {
            maximum,
            topics: LazyMap::default(),
        }
    }

    /// Resolves the alias of `publish` in place: sets or replaces the mapping when a topic
    /// comes with it, fills the topic in when it does not, and removes the alias property.
    pub(crate) fn resolve(&mut self, publish: &mut Publish) -> Result<(), AliasError> {
        let Some(alias) = publish
            .properties
            .get_mut()
            .and_then(|properties| properties.topic_alias.take())
        else {
            return Ok(());
        };
        if alias.get() > self.maximum {
            return Err(AliasError::OutOfRange);
        }
        match &publish.topic {
            Some(topic) => {
                self.topics.insert(alias.get(), topic.clone());
            }
            None => {
                publish.topic = Some(
                    self.topics
                        .get(&alias.get())
                        .cloned()
                        .ok_or(AliasError::Unknown)?,
                )
            }
        }
        Ok(())
    }
}
