//! Topic aliases (MQTT 5 §3.3.2.3.4), both ways, per connection.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::num::NonZeroU16;
use std::sync::Arc;

use rallymq_codec::{Publish, TopicName};

use crate::lazy::LazyMap;

/// What an alias adds to a PUBLISH: the Topic Alias property, one identifier byte and two value
/// bytes. A later PUBLISH with the alias carries an empty topic instead of the topic, so a topic
/// of this length or shorter saves nothing and gets no alias.
pub(crate) const ALIAS_COST: usize = 3;

/// The most an alias can add to a PUBLISH that still carries its topic: the property, and one
/// more byte where it lengthens the property length (a Variable Byte Integer).
pub(crate) const ALIAS_GROWTH: usize = ALIAS_COST + 1;

/// Recent uses are counted up to this (four bits' worth, as TinyLFU counts): enough to tell a
/// frequent topic from a rare one, and few enough halvings for a topic that stopped to lose
/// its alias.
const MAX_USES: u8 = 15;

/// Aliases this side assigns to topics it sends, within the peer's Topic Alias Maximum.
///
/// While aliases are free they go first come, first served. Once all are taken, a topic
/// sent without an alias may take over the alias of a topic used less (the alias is
/// re-pointed by sending it with the new topic, MQTT 5 §3.3.2.3.4). Both kinds of topic count
/// their recent uses: those with an alias in their slot, the others in a small table of
/// candidates by hash. Every PUBLISH without an alias looks at one slot, the next under a
/// clock hand, and takes it if its topic was sent at least twice more recently than the
/// slot's. All counts are halved together every few PUBLISHes (as many as the entries of
/// both tables), so "recently" means the last few dozen to few hundred PUBLISHes and a
/// topic that stopped being sent loses its alias after a few halvings.
///
/// So a topic sent once displaces no one; topics of equal traffic never take turns with
/// aliases (counts that differ by at most one never win: no re-pointing churn, which would
/// cost 3 bytes a PUBLISH), and a frequent topic keeps its alias against a stream of rare
/// ones. A PUBLISH costs one hash lookup, one more hash and one slot when it has no alias,
/// and the halving costs one count per PUBLISH on average: O(1). An idle connection carries
/// 16 bytes; the table is allocated with the first alias, the candidates when the last alias
/// is taken.
#[derive(Default)]
pub(crate) struct OutgoingAliases {
    maximum: u16,
    table: Option<Box<AliasTable>>,
}

#[derive(Default)]
struct AliasTable {
    /// The alias of each topic that has one.
    by_topic: HashMap<Arc<str>, NonZeroU16>,
    /// By alias - 1: its topic and recent uses. Grows to the maximum, never shrinks.
    slots: Vec<Slot>,
    /// Recent uses of topics sent without an alias, by hash (colliding topics share an entry:
    /// the newcomer resets it). Allocated when the slots are all taken.
    candidates: Box<[Candidate]>,
    /// The slot the next PUBLISH without an alias may take: CLOCK's hand.
    hand: u16,
    /// PUBLISHes until every count is halved.
    until_halving: u32,
}

struct Slot {
    /// Its own allocation, not a slice of the received packet: a topic kept for the life of
    /// the connection must not keep a whole receive buffer alive.
    topic: Arc<str>,
    uses: u8,
}

#[derive(Clone, Copy, Default)]
struct Candidate {
    /// High bits of the topic's hash; 0 is an empty entry.
    fingerprint: u16,
    uses: u8,
}

/// A fixed hash (SipHash with zero keys): the choice of alias is the same in every run, and a
/// peer that forces collisions only changes which topic gets an alias.
type FixedHash = BuildHasherDefault<DefaultHasher>;

impl OutgoingAliases {
    pub(crate) fn new(maximum: u16) -> Self {
        Self {
            maximum,
            table: None,
        }
    }

    /// Rewrites `publish` to use an alias where one is set or can be set: the first PUBLISH of
    /// a topic with an alias carries topic and alias, later ones the alias and an empty topic.
    /// `may_grow` is false when the PUBLISH has no room for [`ALIAS_GROWTH`] more bytes under
    /// the peer's Maximum Packet Size: then no alias is set or moved, a known one is still
    /// used (it only shrinks the packet).
    pub(crate) fn apply(&mut self, publish: &mut Publish, may_grow: bool) {
        if let Some(properties) = publish.properties.get_mut() {
            properties.topic_alias = None;
        }
        if self.maximum == 0 {
            return;
        }
        let Some(topic) = &publish.topic else { return };
        if topic.len() <= ALIAS_COST {
            return;
        }
        if self.table.is_none() && !may_grow {
            return;
        }
        let table = self.table.get_or_insert_default();
        table.age();
        let alias = match table.by_topic.get(topic.as_str()) {
            Some(&alias) => {
                let slot = &mut table.slots[usize::from(alias.get() - 1)];
                slot.uses = (slot.uses + 1).min(MAX_USES);
                publish.topic = None;
                alias
            }
            None if !may_grow => return,
            None => match table.assign(topic, self.maximum) {
                Some(alias) => alias,
                None => return,
            },
        };
        publish.properties.topic_alias = Some(alias);
    }
}

impl AliasTable {
    /// Counts one PUBLISH towards the next halving, once the slots are all taken (before,
    /// the counts decide nothing).
    fn age(&mut self) {
        if self.candidates.is_empty() {
            return;
        }
        self.until_halving -= 1;
        if self.until_halving == 0 {
            for slot in &mut self.slots {
                slot.uses /= 2;
            }
            for candidate in &mut self.candidates {
                candidate.uses /= 2;
            }
            self.until_halving = self.entries();
        }
    }

    fn entries(&self) -> u32 {
        // At most u16::MAX slots and 2 * u16::MAX candidates.
        (self.slots.len() + self.candidates.len()) as u32
    }

    /// Gives `topic`, which has no alias, a free alias or the one under the hand, if it wins it.
    fn assign(&mut self, topic: &TopicName, maximum: u16) -> Option<NonZeroU16> {
        let topic = topic.as_str();
        if self.slots.len() < usize::from(maximum) {
            let topic: Arc<str> = Arc::from(topic);
            self.slots.push(Slot {
                topic: topic.clone(),
                uses: 1,
            });
            // len <= maximum <= u16::MAX, and len >= 1 after the push.
            let alias = NonZeroU16::new(self.slots.len() as u16).expect("len >= 1");
            self.by_topic.insert(topic, alias);
            return Some(alias);
        }
        if self.candidates.is_empty() {
            // Twice the slots, at least 16: a topic's count lasts until a colliding topic
            // comes, after about that many PUBLISHes without an alias.
            let len = (usize::from(maximum) * 2).max(16);
            self.candidates = vec![Candidate::default(); len].into_boxed_slice();
            self.until_halving = self.entries();
        }
        let hash = FixedHash::default().hash_one(topic);
        let fingerprint = ((hash >> 48) as u16).max(1);
        let index = (hash % self.candidates.len() as u64) as usize;
        let candidate = &mut self.candidates[index];
        if candidate.fingerprint == fingerprint {
            candidate.uses = (candidate.uses + 1).min(MAX_USES);
        } else {
            *candidate = Candidate {
                fingerprint,
                uses: 1,
            };
        }
        let uses = candidate.uses;
        let hand = usize::from(self.hand);
        self.hand = ((hand + 1) % self.slots.len()) as u16;
        let slot = &mut self.slots[hand];
        if uses < slot.uses + 2 {
            return None;
        }
        self.candidates[index] = Candidate::default();
        self.by_topic.remove(&slot.topic);
        *slot = Slot {
            topic: Arc::from(topic),
            uses,
        };
        // hand < slots.len() <= u16::MAX.
        let alias = NonZeroU16::new(hand as u16 + 1).expect("hand + 1 > 0");
        self.by_topic.insert(slot.topic.clone(), alias);
        Some(alias)
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rallymq_codec::{Publish, TopicName};

    use super::{IncomingAliases, OutgoingAliases};

    /// What one PUBLISH looked like on the wire: its alias, and whether it carried the topic.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Sent {
        Plain,
        /// Topic and alias: a new alias, or one re-pointed to this topic.
        Set(u16),
        /// Alias and an empty topic.
        Alias(u16),
    }

    /// Sends `topics` through a sender with `maximum` aliases and a receiver announcing the
    /// same maximum; checks that the receiver resolves each to its topic, and returns how
    /// each went.
    fn send_all(maximum: u16, topics: &[String]) -> Vec<Sent> {
        let mut sender = OutgoingAliases::new(maximum);
        let mut receiver = IncomingAliases::new(maximum);
        topics
            .iter()
            .map(|topic| {
                let mut publish =
                    Publish::new(TopicName::new(topic.as_str()).unwrap(), Bytes::new());
                sender.apply(&mut publish, true);
                let sent = match (publish.properties.topic_alias, &publish.topic) {
                    (None, _) => Sent::Plain,
                    (Some(alias), Some(_)) => Sent::Set(alias.get()),
                    (Some(alias), None) => Sent::Alias(alias.get()),
                };
                if let Sent::Set(alias) | Sent::Alias(alias) = sent {
                    assert!(
                        alias <= maximum,
                        "alias {alias} above the maximum {maximum}"
                    );
                }
                receiver
                    .resolve(&mut publish)
                    .expect("the receiver resolves it");
                assert_eq!(
                    publish.topic.as_ref().map(|t| t.as_str()),
                    Some(topic.as_str())
                );
                sent
            })
            .collect()
    }

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}/{i}")).collect()
    }

    /// A fixed pseudo-random sequence (64-bit LCG, Knuth's MMIX constants): the same in every
    /// run.
    fn lcg(seed: u64) -> impl Iterator<Item = u64> {
        std::iter::successors(Some(seed), |x| {
            Some(
                x.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            )
        })
        .map(|x| x >> 33)
    }

    fn count(sent: &[Sent], f: impl Fn(&Sent) -> bool) -> usize {
        sent.iter().filter(|s| f(s)).count()
    }

    #[test]
    fn free_aliases_go_first_come_first_served() {
        let topics: Vec<String> = ["a/one", "a/two", "a/one", "a/two"]
            .map(String::from)
            .into();
        assert_eq!(
            send_all(2, &topics),
            [Sent::Set(1), Sent::Set(2), Sent::Alias(1), Sent::Alias(2)]
        );
        assert_eq!(send_all(0, &topics), [Sent::Plain; 4], "0: no aliases");
    }

    #[test]
    fn a_topic_no_longer_than_its_alias_gets_none() {
        let topics: Vec<String> = ["abc", "abc", "abcd", "abcd"].map(String::from).into();
        assert_eq!(
            send_all(4, &topics),
            [Sent::Plain, Sent::Plain, Sent::Set(1), Sent::Alias(1)]
        );
    }

    #[test]
    fn a_topic_sent_once_displaces_no_one() {
        let mut topics = names("hot", 4);
        topics.extend(names("hot", 4));
        topics.extend(names("once", 100));
        topics.extend(names("hot", 4));
        let sent = send_all(4, &topics);
        assert!(
            sent[108..].iter().all(|s| matches!(s, Sent::Alias(_))),
            "{sent:?}"
        );
        assert_eq!(count(&sent[8..108], |s| *s != Sent::Plain), 0);
    }

    #[test]
    fn two_topics_of_equal_traffic_do_not_take_turns_with_one_alias() {
        let topics: Vec<String> = (0..1000).map(|i| format!("top/{}", i % 2)).collect();
        let sent = send_all(1, &topics);
        assert_eq!(
            count(&sent, |s| matches!(s, Sent::Set(_))),
            1,
            "{:?}",
            &sent[..20]
        );
        assert_eq!(count(&sent, |s| matches!(s, Sent::Alias(_))), 499);

        // One topic more than aliases, in turn: LRU would re-point on every PUBLISH.
        let topics: Vec<String> = (0..9000).map(|i| format!("top/{}", i % 9)).collect();
        let sent = send_all(8, &topics);
        let set = count(&sent, |s| matches!(s, Sent::Set(_)));
        assert!(set < 9000 / 50, "{set} re-pointings in 9000");
        assert!(count(&sent, |s| matches!(s, Sent::Alias(_))) > 9000 * 8 / 10);
    }

    #[test]
    fn rare_topics_rarely_move_an_alias_and_aliases_still_save_bytes() {
        // Uniform over many more topics than aliases: few are sent twice while their count
        // lasts, so few aliases move, and those that do are used about once more each.
        let topics: Vec<String> = lcg(7)
            .take(20_000)
            .map(|x| format!("sensor/{}", x % 1000))
            .collect();
        let sent = send_all(16, &topics);
        let set = count(&sent, |s| matches!(s, Sent::Set(_)));
        assert!(set < 20_000 / 40, "{set} re-pointings in 20000");
        let saved: isize = topics
            .iter()
            .zip(&sent)
            .map(|(topic, sent)| match sent {
                Sent::Plain => 0,
                Sent::Set(_) => -3,
                Sent::Alias(_) => topic.len() as isize - 3,
            })
            .sum();
        assert!(saved > 0, "aliases cost {} bytes", -saved);
    }

    #[test]
    fn frequent_topics_keep_their_alias_against_a_stream_of_rare_ones() {
        // Half the PUBLISHes go to 4 hot topics in turn, half to 300 others at random, some
        // of which come twice close together.
        let mut random = lcg(11);
        let topics: Vec<String> = (0..20_000)
            .map(|i| {
                if i % 2 == 0 {
                    format!("hot/{}", (i / 2) % 4)
                } else {
                    format!("cold/{}", random.next().unwrap() % 300)
                }
            })
            .collect();
        let sent = send_all(8, &topics);
        for (i, (topic, sent)) in topics.iter().zip(&sent).enumerate().skip(8) {
            if topic.starts_with("hot/") {
                assert!(
                    matches!(sent, Sent::Alias(_)),
                    "PUBLISH {i} on {topic}: {sent:?}"
                );
            }
        }
        assert!(
            count(&sent, |s| matches!(s, Sent::Set(_))) > 8,
            "the other aliases do move"
        );
    }

    #[test]
    fn a_topic_that_becomes_frequent_takes_over_from_one_that_stopped() {
        let mut topics: Vec<String> = (0..4000).map(|i| format!("old/{}", i % 4)).collect();
        topics.extend((0..4000).map(|i| format!("new/{}", i % 4)));
        let sent = send_all(4, &topics);
        let settled = (4000..8000)
            .find(|&i| sent[i..].iter().all(|s| matches!(s, Sent::Alias(_))))
            .expect("the new topics get aliases");
        assert!(
            settled < 4000 + 400,
            "settled after {} PUBLISHes",
            settled - 4000
        );
    }

    #[test]
    fn without_room_a_known_alias_is_used_and_no_new_one_set() {
        let mut sender = OutgoingAliases::new(4);
        let mut publish = |topic: &str, may_grow| {
            let mut publish = Publish::new(TopicName::new(topic).unwrap(), Bytes::new());
            sender.apply(&mut publish, may_grow);
            (
                publish.topic.is_some(),
                publish.properties.topic_alias.map(|a| a.get()),
            )
        };
        assert_eq!(publish("a/one", false), (true, None));
        assert_eq!(publish("a/one", true), (true, Some(1)));
        assert_eq!(publish("a/one", false), (false, Some(1)));
        assert_eq!(publish("a/two", false), (true, None));
    }

    #[test]
    fn an_idle_connection_carries_two_words() {
        assert_eq!(size_of::<OutgoingAliases>(), 16);
    }
}
