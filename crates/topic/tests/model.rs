//! The indexes against a naive model: a list of subscriptions (or a map of names) scanned
//! linearly with `matches`, after random sequences of operations on small random topic trees.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rallymq_topic::{Match, RetainedIndex, SubscriptionIndex, TopicFilter, TopicName, matches};

/// A few level strings, so that random names and filters collide often; `$` levels and the
/// empty level included.
const LEVELS: &[&str] = &["a", "b", "", "$SYS", "$x", "c/"];

fn level() -> impl Strategy<Value = String> {
    // "c/" is two levels ("c" and an empty one) in one pick.
    prop::sample::select(LEVELS).prop_map(str::to_owned)
}

fn name() -> impl Strategy<Value = TopicName> {
    prop::collection::vec(level(), 1..5).prop_filter_map("a topic name is never empty", |levels| {
        TopicName::new(levels.join("/")).ok()
    })
}

fn filter() -> impl Strategy<Value = TopicFilter> {
    let filter_level = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    (
        prop::collection::vec(filter_level, 0..4),
        any::<bool>(),
        prop::option::weighted(0.3, prop::sample::select(&["g", "h"][..])),
    )
        .prop_filter_map(
            "a topic filter is never empty",
            |(mut levels, multi_level, share)| {
                if multi_level || levels.is_empty() {
                    levels.push("#".to_owned());
                }
                let filter = levels.join("/");
                let filter = match share {
                    Some(group) => format!("$share/{group}/{filter}"),
                    None => filter,
                };
                TopicFilter::new(filter).ok()
            },
        )
}

#[derive(Debug, Clone)]
enum SubscriptionOp {
    Insert(u8, TopicFilter, u16),
    Remove(u8, TopicFilter),
    RemoveSubscriber(u8),
    /// Changes nothing the model can see.
    ShrinkToFit,
}

fn subscription_op() -> impl Strategy<Value = SubscriptionOp> {
    prop_oneof![
        6 => (0..4u8, filter(), any::<u16>()).prop_map(|(s, f, d)| SubscriptionOp::Insert(s, f, d)),
        3 => (0..4u8, filter()).prop_map(|(s, f)| SubscriptionOp::Remove(s, f)),
        1 => (0..4u8).prop_map(SubscriptionOp::RemoveSubscriber),
        1 => Just(SubscriptionOp::ShrinkToFit),
    ]
}

/// Ordinary matches as a sorted list, shared ones as sorted (group, sorted members); both
/// sides of the comparison are brought to this form.
type Members = Vec<(u8, u16)>;
type Matches = (Members, Vec<(String, Members)>);

fn index_matches(index: &SubscriptionIndex<u8, u16>, topic: &TopicName) -> Matches {
    let (mut plain, mut shared) = (Vec::new(), Vec::new());
    index.for_each_match(topic, |found| match found {
        Match::Subscription { subscriber, data } => plain.push((*subscriber, *data)),
        Match::Shared(group) => {
            assert!(!group.is_empty());
            let mut members: Vec<_> = group.members().map(|(s, d)| (*s, *d)).collect();
            members.sort();
            shared.push((group.name().to_owned(), members));
        }
    });
    plain.sort();
    shared.sort();
    (plain, shared)
}

fn model_matches(model: &[(u8, TopicFilter, u16)], topic: &TopicName) -> Matches {
    let mut plain = Vec::new();
    // Keyed by the whole filter: a group is one ShareName with one filter.
    let mut groups: BTreeMap<&str, (String, Members)> = BTreeMap::new();
    for (subscriber, filter, data) in model.iter().filter(|(_, filter, _)| matches(filter, topic)) {
        match filter.share_name() {
            None => plain.push((*subscriber, *data)),
            Some(group) => groups
                .entry(filter.as_str())
                .or_insert_with(|| (group.to_owned(), Vec::new()))
                .1
                .push((*subscriber, *data)),
        }
    }
    plain.sort();
    let mut shared: Vec<_> = groups
        .into_values()
        .map(|(group, mut members)| {
            members.sort();
            (group, members)
        })
        .collect();
    shared.sort();
    (plain, shared)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn subscription_index_agrees_with_linear_scan(
        ops in prop::collection::vec(subscription_op(), 0..40),
        topics in prop::collection::vec(name(), 1..12),
    ) {
        let mut index = SubscriptionIndex::new();
        let mut model: Vec<(u8, TopicFilter, u16)> = Vec::new();
        for op in ops {
            match op {
                SubscriptionOp::Insert(subscriber, filter, data) => {
                    let position = model.iter().position(|(s, f, _)| *s == subscriber && *f == filter);
                    let expected = match position {
                        Some(position) => Some(std::mem::replace(&mut model[position].2, data)),
                        None => {
                            model.push((subscriber, filter.clone(), data));
                            None
                        }
                    };
                    prop_assert_eq!(index.insert(subscriber, &filter, data), expected);
                    prop_assert!(index.has_subscribers(&filter));
                }
                SubscriptionOp::Remove(subscriber, filter) => {
                    let position = model.iter().position(|(s, f, _)| *s == subscriber && *f == filter);
                    let expected = position.map(|position| model.remove(position).2);
                    prop_assert_eq!(index.remove(&subscriber, &filter), expected);
                    prop_assert_eq!(index.has_subscribers(&filter), model.iter().any(|(_, f, _)| *f == filter));
                }
                SubscriptionOp::RemoveSubscriber(subscriber) => {
                    let before = model.len();
                    let mut expected_unheld: Vec<String> = model
                        .iter()
                        .filter(|(s, _, _)| *s == subscriber)
                        .map(|(_, f, _)| f.as_str().to_owned())
                        .filter(|f| !model.iter().any(|(s, other, _)| *s != subscriber && other.as_str() == f))
                        .collect();
                    expected_unheld.sort();
                    model.retain(|(s, _, _)| *s != subscriber);
                    let mut unheld = Vec::new();
                    prop_assert_eq!(
                        index.remove_subscriber_with(&subscriber, |f| unheld.push(f.to_owned())),
                        before - model.len()
                    );
                    unheld.sort();
                    prop_assert_eq!(unheld, expected_unheld);
                }
                SubscriptionOp::ShrinkToFit => index.shrink_to_fit(),
            }
            prop_assert_eq!(index.len(), model.len());
        }
        for (subscriber, filter, data) in &model {
            prop_assert_eq!(index.get(subscriber, filter), Some(data));
        }
        for topic in &topics {
            prop_assert_eq!(index_matches(&index, topic), model_matches(&model, topic), "topic {:?}", topic);
        }
        // Emptying the index leaves no trace of what it held.
        for subscriber in 0..4 {
            index.remove_subscriber(&subscriber);
        }
        prop_assert!(index.is_empty());
        for topic in &topics {
            prop_assert_eq!(index_matches(&index, topic), (vec![], vec![]));
        }
    }

    #[test]
    fn retained_index_agrees_with_linear_scan(
        ops in prop::collection::vec(
            (name(), prop::option::weighted(0.7, any::<u16>()), prop::bool::weighted(0.1)),
            0..40,
        ),
        filters in prop::collection::vec(filter(), 1..12),
    ) {
        let mut index = RetainedIndex::new();
        let mut model: BTreeMap<TopicName, u16> = BTreeMap::new();
        for (name, value, shrink_after) in ops {
            match value {
                Some(value) => prop_assert_eq!(index.insert(name.clone(), value), model.insert(name, value)),
                None => prop_assert_eq!(index.remove(&name), model.remove(&name)),
            }
            if shrink_after {
                index.shrink_to_fit();
            }
            prop_assert_eq!(index.len(), model.len());
        }
        for (name, value) in &model {
            prop_assert_eq!(index.get(name), Some(value));
        }
        for filter in &filters {
            let mut found: Vec<(TopicName, u16)> = index.matching(filter).map(|(name, value)| (name.clone(), *value)).collect();
            found.sort();
            let expected: Vec<(TopicName, u16)> =
                model.iter().filter(|(name, _)| matches(filter, name)).map(|(name, value)| (name.clone(), *value)).collect();
            prop_assert_eq!(found, expected, "filter {:?}", filter);
        }
    }
}
