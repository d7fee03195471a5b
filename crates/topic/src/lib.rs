//! MQTT topic names and topic filters.
//!
//! ```
//! use rallymq_topic::{TopicFilter, TopicName};
//!
//! let filter: TopicFilter = "sport/+/score".parse().unwrap();
//! let name: TopicName = "sport/tennis/score".parse().unwrap();
//! assert_eq!(filter.levels().count(), name.levels().count());
//! assert!("sport/#/score".parse::<TopicFilter>().is_err());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod filter;
mod name;

pub use error::Error;
pub use filter::TopicFilter;
pub use name::{MAX_TOPIC_LEN, TopicName};
