//! Random operations on `SubscriptionIndex` and `RetainedIndex`, checked after every step
//! against a naive model: a map of subscriptions (or retained names) scanned with `matches`.
//!
//! Subscribe / unsubscribe / end a session / look one up / publish for the subscription index;
//! retain / clear / look up / query for the retained index. Every result is compared with the
//! model, as are the lengths after every operation. Topics are built from a small alphabet of
//! levels (`a`, `b`, empty, `$SYS`, `$share`, `+`, `#`) so that they collide and nest, with
//! shared groups, or are raw strings; either way `TopicName::new` and `TopicFilter::new` must
//! accept exactly what the spec's rules (restated naively below) accept.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rallymq_topic::{Match, RetainedIndex, SubscriptionIndex, TopicFilter, TopicName, matches};

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Level {
    A,
    B,
    Empty,
    System,
    Share,
    Plus,
    Hash,
}

impl Level {
    fn text(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
            Self::Empty => "",
            Self::System => "$SYS",
            Self::Share => "$share",
            Self::Plus => "+",
            Self::Hash => "#",
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Topic {
    /// Levels joined by `/`, under `$share/{group}/` when a group is given (groups `g`, `h`).
    Levels {
        group: Option<bool>,
        levels: Vec<Level>,
    },
    Raw(String),
}

impl Topic {
    fn text(&self) -> String {
        match self {
            Self::Levels { group, levels } => {
                let levels: Vec<&str> = levels.iter().take(6).map(|l| l.text()).collect();
                let levels = levels.join("/");
                match group {
                    None => levels,
                    Some(false) => format!("$share/g/{levels}"),
                    Some(true) => format!("$share/h/{levels}"),
                }
            }
            Self::Raw(text) => text.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Subscribe {
        subscriber: u8,
        filter: Topic,
        data: u8,
    },
    Unsubscribe {
        subscriber: u8,
        filter: Topic,
    },
    EndSession {
        subscriber: u8,
    },
    Get {
        subscriber: u8,
        filter: Topic,
    },
    Publish {
        name: Topic,
    },
    Retain {
        name: Topic,
        value: u8,
    },
    ClearRetained {
        name: Topic,
    },
    GetRetained {
        name: Topic,
    },
    QueryRetained {
        filter: Topic,
    },
    /// Gives back spare memory of both indexes; nothing the model sees may change.
    ShrinkToFit,
}

/// MQTT §4.7 and §4.8.2 for a name, restated without the crate's code.
fn naive_valid_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= 65_535 && !text.contains(['\0', '+', '#'])
}

/// MQTT §4.7 and §4.8.2 for a filter, restated without the crate's code.
fn naive_valid_filter(text: &str) -> bool {
    if text.is_empty() || text.len() > 65_535 || text.contains('\0') {
        return false;
    }
    let filter = match text.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((share, filter))
                if !share.is_empty() && !share.contains(['+', '#']) && !filter.is_empty() =>
            {
                filter
            }
            _ => return false,
        },
        None => text,
    };
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i + 1 == levels.len(),
        "+" => true,
        level => !level.contains(['+', '#']),
    })
}

fn filter(topic: &Topic) -> Option<TopicFilter> {
    let text = topic.text();
    let parsed = TopicFilter::new(text.as_str()).ok();
    assert_eq!(
        parsed.is_some(),
        naive_valid_filter(&text),
        "filter {text:?}"
    );
    parsed
}

fn name(topic: &Topic) -> Option<TopicName> {
    let text = topic.text();
    let parsed = TopicName::new(text.as_str()).ok();
    assert_eq!(parsed.is_some(), naive_valid_name(&text), "name {text:?}");
    parsed
}

/// Few subscribers, so that they collide.
fn subscriber(id: u8) -> u8 {
    id % 4
}

/// What a publish reaches: ordinary subscriptions, then each matching shared group's name and
/// members, all sorted.
type Delivery = (Vec<(u8, u8)>, Vec<(String, Vec<(u8, u8)>)>);

#[derive(Default)]
struct Model {
    /// (subscriber, whole filter text) -> (filter, data).
    subscriptions: BTreeMap<(u8, String), (TopicFilter, u8)>,
    retained: BTreeMap<String, (TopicName, u8)>,
}

impl Model {
    fn delivery(&self, name: &TopicName) -> Delivery {
        let mut ordinary = Vec::new();
        let mut groups: BTreeMap<(String, String), Vec<(u8, u8)>> = BTreeMap::new();
        for ((subscriber, _), (filter, data)) in &self.subscriptions {
            if !matches(filter, name) {
                continue;
            }
            match filter.share_name() {
                None => ordinary.push((*subscriber, *data)),
                Some(group) => groups
                    .entry((group.to_owned(), filter.filter().to_owned()))
                    .or_default()
                    .push((*subscriber, *data)),
            }
        }
        ordinary.sort_unstable();
        let mut groups: Vec<_> = groups
            .into_iter()
            .map(|((group, _), mut members)| {
                members.sort_unstable();
                (group, members)
            })
            .collect();
        groups.sort_unstable();
        (ordinary, groups)
    }

    fn subscriber_count(&self) -> usize {
        let subscribers: BTreeSet<u8> = self.subscriptions.keys().map(|(s, _)| *s).collect();
        subscribers.len()
    }
}

fn delivery(index: &SubscriptionIndex<u8, u8>, name: &TopicName) -> Delivery {
    let mut ordinary = Vec::new();
    let mut groups = Vec::new();
    index.for_each_match(name, |found| match found {
        Match::Subscription { subscriber, data } => ordinary.push((*subscriber, *data)),
        Match::Shared(group) => {
            let mut members: Vec<(u8, u8)> = group.members().map(|(s, d)| (*s, *d)).collect();
            members.sort_unstable();
            assert_eq!(group.len(), members.len());
            assert!(!group.is_empty());
            // `len` successive round-robin picks visit every member once.
            let mut picked: Vec<(u8, u8)> = (0..group.len())
                .map(|_| {
                    let (s, d) = group.pick_round_robin().expect("a group has members");
                    (*s, *d)
                })
                .collect();
            picked.sort_unstable();
            assert_eq!(picked, members, "round robin of {}", group.name());
            assert!(group.pick_round_robin_where(|_, _| false).is_none());
            groups.push((group.name().to_owned(), members));
        }
    });
    ordinary.sort_unstable();
    groups.sort_unstable();
    (ordinary, groups)
}

fuzz_target!(|ops: Vec<Op>| {
    let mut index: SubscriptionIndex<u8, u8> = SubscriptionIndex::new();
    let mut retained: RetainedIndex<u8> = RetainedIndex::new();
    let mut model = Model::default();

    for op in &ops {
        match op {
            Op::Subscribe {
                subscriber: id,
                filter: topic,
                data,
            } => {
                if let Some(filter) = filter(topic) {
                    let s = subscriber(*id);
                    let old = model
                        .subscriptions
                        .insert((s, filter.as_str().to_owned()), (filter.clone(), *data))
                        .map(|(_, d)| d);
                    assert_eq!(index.insert(s, &filter, *data), old, "subscribe {filter}");
                }
            }
            Op::Unsubscribe {
                subscriber: id,
                filter: topic,
            } => {
                if let Some(filter) = filter(topic) {
                    let s = subscriber(*id);
                    let old = model
                        .subscriptions
                        .remove(&(s, filter.as_str().to_owned()))
                        .map(|(_, d)| d);
                    assert_eq!(index.remove(&s, &filter), old, "unsubscribe {filter}");
                }
            }
            Op::EndSession { subscriber: id } => {
                let s = subscriber(*id);
                let before = model.subscriptions.len();
                model.subscriptions.retain(|(owner, _), _| *owner != s);
                let removed = before - model.subscriptions.len();
                assert_eq!(index.remove_subscriber(&s), removed);
            }
            Op::ShrinkToFit => {
                index.shrink_to_fit();
                retained.shrink_to_fit();
            }
            Op::Get {
                subscriber: id,
                filter: topic,
            } => {
                if let Some(filter) = filter(topic) {
                    let s = subscriber(*id);
                    let expected = model
                        .subscriptions
                        .get(&(s, filter.as_str().to_owned()))
                        .map(|(_, d)| d);
                    assert_eq!(index.get(&s, &filter), expected, "get {filter}");
                }
            }
            Op::Publish { name: topic } => {
                if let Some(name) = name(topic) {
                    assert_eq!(
                        delivery(&index, &name),
                        model.delivery(&name),
                        "publish {name}"
                    );
                }
            }
            Op::Retain { name: topic, value } => {
                if let Some(name) = name(topic) {
                    let old = model
                        .retained
                        .insert(name.as_str().to_owned(), (name.clone(), *value))
                        .map(|(_, v)| v);
                    assert_eq!(retained.insert(name.clone(), *value), old, "retain {name}");
                }
            }
            Op::ClearRetained { name: topic } => {
                // Any string, valid name or not: only a stored name is found.
                let text = topic.text();
                let old = model.retained.remove(&text).map(|(_, v)| v);
                assert_eq!(retained.remove(&text), old, "clear {text:?}");
            }
            Op::GetRetained { name: topic } => {
                let text = topic.text();
                let expected = model.retained.get(&text).map(|(_, v)| v);
                assert_eq!(retained.get(&text), expected, "get retained {text:?}");
            }
            Op::QueryRetained { filter: topic } => {
                if let Some(filter) = filter(topic) {
                    let mut found: Vec<(String, u8)> = retained
                        .matching(&filter)
                        .map(|(name, value)| (name.as_str().to_owned(), *value))
                        .collect();
                    found.sort_unstable();
                    let expected: Vec<(String, u8)> = model
                        .retained
                        .iter()
                        .filter(|(_, (name, _))| matches(&filter, name))
                        .map(|(text, (_, value))| (text.clone(), *value))
                        .collect();
                    assert_eq!(found, expected, "query {filter}");
                }
            }
        }
        assert_eq!(index.len(), model.subscriptions.len());
        assert_eq!(index.is_empty(), model.subscriptions.is_empty());
        assert_eq!(index.subscriber_count(), model.subscriber_count());
        assert_eq!(retained.len(), model.retained.len());
        assert_eq!(retained.is_empty(), model.retained.is_empty());
    }
});
