//! MQTT topic names and filters, and the indexes a broker matches them with.
//!
//! This crate is the one place in rallymq where the topic rules of MQTT 3.1.1 and 5.0 (§4.7,
//! and §4.8 for shared subscriptions) live:
//!
//! - [`TopicName`] and [`TopicFilter`]: validated newtypes; a value that exists is valid.
//!   A filter `$share/{ShareName}/{filter}` is a shared subscription.
//! - [`matches()`]: whether a filter matches a name; [`overlaps()`]: whether two filters match
//!   a name in common.
//! - [`SubscriptionIndex`]: a broker's subscriptions, answering "who receives a PUBLISH to this
//!   topic" without allocating and without looking at filters that cannot match. Shared
//!   groups come back as one [`Match::Shared`] each, with round-robin selection of a member.
//! - [`RetainedIndex`]: the other direction, stored topic names queried with a filter, for
//!   sending retained messages to a new subscription.
//! - [`RuleIndex`]: access rules ([`FilterTemplate`]s, whose placeholders such as a client's
//!   user name are filled per query), found by the topic names they match and the filters
//!   they cover.
//!
//! It does no IO and keeps no clock, so it runs anywhere, `wasm32-unknown-unknown` included.
//!
//! ```
//! use rallymq_topic::{Match, RetainedIndex, SubscriptionIndex, TopicFilter, TopicName, matches};
//!
//! let filter: TopicFilter = "sport/+/score".parse().unwrap();
//! let name: TopicName = "sport/tennis/score".parse().unwrap();
//! assert_eq!(filter.levels().count(), name.levels().count());
//! assert!(matches(&filter, &name));
//! assert!("sport/#/score".parse::<TopicFilter>().is_err());
//!
//! // A broker's subscriptions: subscriber ids and a granted QoS per subscription.
//! let mut subscriptions = SubscriptionIndex::new();
//! subscriptions.insert(1u32, &filter, 1u8);
//! subscriptions.insert(2, &"sport/#".parse().unwrap(), 0);
//! subscriptions.insert(3, &"$share/scorers/sport/+/score".parse().unwrap(), 2);
//! let mut receivers = Vec::new();
//! subscriptions.for_each_match(&name, |found| match found {
//!     Match::Subscription { subscriber, .. } => receivers.push(*subscriber),
//!     Match::Shared(group) => receivers.extend(group.pick_round_robin().map(|(s, _)| *s)),
//! });
//! receivers.sort();
//! assert_eq!(receivers, [1, 2, 3]);
//!
//! // Retained messages, found for a new subscription.
//! let mut retained = RetainedIndex::new();
//! retained.insert(name.clone(), "6-4");
//! retained.insert("sport/golf/score".parse().unwrap(), "-3");
//! assert_eq!(retained.matching(&filter).count(), 2);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod exact;
mod filter;
mod matcher;
mod name;
mod retained;
mod rules;
mod store;
mod subscriptions;

pub use error::Error;
pub use filter::TopicFilter;
pub use matcher::{matches, overlaps};
pub use name::{MAX_TOPIC_LEN, TopicName};
pub use retained::{RetainedIndex, RetainedMatches};
pub use rules::{FilterTemplate, RuleIndex};
pub use subscriptions::{Match, SharedGroup, SubscriptionIndex};

/// The README's code, compiled and run as doctests, so that the README cannot drift from the
/// API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
