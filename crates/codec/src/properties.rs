//! The container that holds a packet's MQTT 5 properties.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// A packet's MQTT 5 property set, stored behind a pointer that is only allocated once a
/// property is set.
///
/// Most packets carry no property at all (every packet before MQTT 5, and most MQTT 5
/// PUBLISH and acknowledgements), so a packet holds one pointer instead of the whole set
/// inline: a PUBLISH is 80 bytes rather than 232, which is what a decoder writes and a broker
/// queues per message.
///
/// It dereferences to the set (`T`), empty when nothing was allocated, so reading a property
/// is `packet.properties.topic_alias`. Writing through [`DerefMut`] allocates the set if
/// needed; [`get_mut`](Self::get_mut) changes an allocated set only.
///
/// ```
/// use rallymq_codec::{Properties, PublishProperties};
///
/// let mut properties = Properties::<PublishProperties>::default();
/// assert!(properties.is_empty() && properties.get_mut().is_none());
/// properties.message_expiry_interval = Some(60);
/// assert_eq!(properties.message_expiry_interval, Some(60));
/// assert_eq!(properties, Properties::from(PublishProperties {
///     message_expiry_interval: Some(60),
///     ..PublishProperties::default()
/// }));
/// ```
pub struct Properties<T>(Option<Box<T>>);

/// A property set that [`Properties`] can hold: one of this crate's `*Properties` structs.
pub trait PropertySet: Default + sealed::Sealed + 'static {
    /// The set with no property, shared by every empty [`Properties`].
    fn empty() -> &'static Self;

    /// Whether no property is set.
    fn is_empty(&self) -> bool;
}

pub(crate) mod sealed {
    /// Only this crate's property sets are [`PropertySet`](super::PropertySet)s: the empty set
    /// they dereference to must really be empty.
    pub trait Sealed {}
}

impl<T> Properties<T> {
    /// The allocated set, if any property was ever set (it may have been cleared since; a clone
    /// of a cleared set has none).
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Removes and returns the set, leaving this one empty.
    pub fn take(&mut self) -> T
    where
        T: Default,
    {
        std::mem::take(self).into_inner()
    }

    /// The set, by value.
    pub fn into_inner(self) -> T
    where
        T: Default,
    {
        self.0.map(|set| *set).unwrap_or_default()
    }
}

impl<T> Default for Properties<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: PropertySet + Clone> Clone for Properties<T> {
    /// Clones the set; an allocated set that holds no property any more (emptied through
    /// [`get_mut`](Self::get_mut)) clones to no set, as [`Properties::default()`], rather than to
    /// a new empty allocation. A broker clones a PUBLISH once per subscriber copy.
    fn clone(&self) -> Self {
        match &self.0 {
            Some(set) if !set.is_empty() => Self(Some(set.clone())),
            _ => Self(None),
        }
    }
}

impl<T: PropertySet> From<T> for Properties<T> {
    /// Allocates only if `set` holds a property.
    fn from(set: T) -> Self {
        if set.is_empty() {
            Self(None)
        } else {
            Self(Some(Box::new(set)))
        }
    }
}

impl<T: PropertySet> Deref for Properties<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(set) => set,
            None => T::empty(),
        }
    }
}

impl<T: PropertySet> DerefMut for Properties<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T: PropertySet + PartialEq> PartialEq for Properties<T> {
    /// Compares the sets: an empty allocated set equals no allocation.
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: PropertySet + Eq> Eq for Properties<T> {}

impl<T: PropertySet + fmt::Debug> fmt::Debug for Properties<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::{
        Limits, Packet, ProtocolVersion, Publish, PublishProperties, SubscriptionId, TopicName,
        decode,
    };

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_packet_stays_small() {
        // What a decoder writes per packet and a broker queues per message; it was 432 and
        // 232 bytes with the property sets inline.
        assert!(size_of::<Packet>() <= 80, "{}", size_of::<Packet>());
        assert!(size_of::<Publish>() <= 80, "{}", size_of::<Publish>());
    }

    #[test]
    fn a_packet_without_properties_allocates_no_set() {
        let topic = TopicName::new("a/b").unwrap();
        for (version, properties) in [
            (ProtocolVersion::V3_1_1, PublishProperties::default()),
            (ProtocolVersion::V5, PublishProperties::default()),
            (
                ProtocolVersion::V5,
                PublishProperties {
                    message_expiry_interval: Some(5),
                    ..PublishProperties::default()
                },
            ),
        ] {
            let mut publish = Publish::new(topic.clone(), "x");
            let expect_allocated = !properties.is_empty();
            publish.properties = properties.into();
            let mut wire = BytesMut::new();
            Packet::Publish(publish.clone())
                .encode(version, &mut wire)
                .unwrap();
            let Some(Packet::Publish(mut decoded)) =
                decode(&mut wire, version, &Limits::default()).unwrap()
            else {
                panic!("a PUBLISH")
            };
            assert_eq!(decoded.properties.get_mut().is_some(), expect_allocated);
            assert_eq!(decoded, publish);
        }
    }

    #[test]
    fn an_allocated_empty_set_equals_no_set() {
        let mut allocated = Properties::<PublishProperties>::default();
        // Writing through `DerefMut` allocates, even to write nothing.
        allocated.deref_mut().topic_alias = None;
        assert!(allocated.get_mut().is_some());
        assert_eq!(allocated, Properties::default());
        assert_eq!(allocated.take(), PublishProperties::default());
        assert!(allocated.get_mut().is_none());
    }

    #[test]
    fn a_clone_of_an_emptied_set_allocates_no_set() {
        let set = PublishProperties {
            message_expiry_interval: Some(5),
            subscription_identifiers: vec![SubscriptionId::new(7).unwrap()],
            ..PublishProperties::default()
        };
        let mut emptied = Properties::from(set.clone());
        let inner = emptied.get_mut().unwrap();
        inner.message_expiry_interval = None;
        inner.subscription_identifiers.clear();
        assert!(emptied.get_mut().is_some());
        let mut clone = emptied.clone();
        assert!(clone.get_mut().is_none());
        assert_eq!(clone, emptied);

        let mut full = Properties::from(set);
        let mut clone = full.clone();
        assert!(clone.get_mut().is_some());
        assert_eq!(clone, full);
        assert_eq!(clone.get_mut(), full.get_mut());
    }
}
