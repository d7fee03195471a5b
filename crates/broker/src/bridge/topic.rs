//! A bridge's `topic` lines, in Mosquitto's syntax, and the topic remapping they say.
//!
//! `topic PATTERN [out|in|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]`, as in mosquitto.conf(5):
//! the pattern is a topic filter (`""` for none, when the prefixes name a single topic); the
//! direction defaults to `out` and the QoS to 0. Locally the bridge matches
//! `LOCAL_PREFIX + PATTERN`, remotely `REMOTE_PREFIX + PATTERN`; a message crossing has the one
//! prefix taken off its topic (when its topic starts with it) and the other put on.

use std::fmt;

use rallymq_codec::{QoS, TopicFilter, TopicName};

/// Which way a bridge topic carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Direction {
    /// From this broker to the remote one (Mosquitto's default).
    #[default]
    Out,
    /// From the remote broker to this one.
    In,
    /// Both ways.
    Both,
}

impl Direction {
    /// Whether messages go from this broker to the remote one.
    pub fn is_out(self) -> bool {
        matches!(self, Self::Out | Self::Both)
    }

    /// Whether messages come from the remote broker to this one.
    pub fn is_in(self) -> bool {
        matches!(self, Self::In | Self::Both)
    }
}

/// One `topic` line of a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTopic {
    /// The pattern, without prefixes (`None`: the line's `""`, the prefixes alone are the
    /// topic).
    pub pattern: Option<String>,
    /// Which way messages go.
    pub direction: Direction,
    /// The highest QoS messages cross at: the QoS of the bridge's subscriptions, on this
    /// broker for `out`, on the remote one for `in`.
    pub qos: QoS,
    /// Put before the pattern on this broker, and before the topics of messages coming in.
    pub local_prefix: Option<String>,
    /// Put before the pattern on the remote broker, and before the topics of messages going
    /// out.
    pub remote_prefix: Option<String>,
    local_filter: TopicFilter,
    remote_filter: TopicFilter,
}

/// Why a `topic` line is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLineError(String);

impl fmt::Display for TopicLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TopicLineError {}

/// `""` is Mosquitto's way to write "none" for a pattern or a prefix.
fn token(text: &str) -> Option<String> {
    (text != "\"\"").then(|| text.to_owned())
}

impl BridgeTopic {
    /// Parses the arguments of a mosquitto.conf `topic` line (the word `topic` itself may be
    /// there or not): `sensors/# out 1 edge/ site1/`.
    pub fn parse(line: &str) -> Result<Self, TopicLineError> {
        let bad = |why: String| TopicLineError(format!("topic {line:?}: {why}"));
        let mut words = line.split_whitespace().peekable();
        if words.peek() == Some(&"topic") {
            words.next();
        }
        let words: Vec<&str> = words.collect();
        let (pattern, rest) = match words.split_first() {
            Some((pattern, rest)) => (token(pattern), rest),
            None => return Err(bad("no pattern".into())),
        };
        let direction = match rest.first().copied() {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => return Err(bad(format!("{other:?} is not out, in or both"))),
        };
        let qos = match rest.get(1).copied() {
            None => QoS::AtMostOnce,
            Some(qos) => qos
                .parse::<u8>()
                .ok()
                .and_then(|qos| QoS::from_bits(qos).ok())
                .ok_or_else(|| bad(format!("QoS {qos:?} is not 0, 1 or 2")))?,
        };
        let (local_prefix, remote_prefix) = match rest.get(2..).unwrap_or_default() {
            [] => (None, None),
            [_] => return Err(bad("a local prefix needs a remote prefix after it".into())),
            [local, remote] => (token(local), token(remote)),
            [_, _, extra, ..] => return Err(bad(format!("{extra:?} after the prefixes"))),
        };
        Self::new(pattern, direction, qos, local_prefix, remote_prefix).map_err(bad)
    }

    /// A bridge topic from its parts; `Err` says what is wrong with them.
    pub fn new(
        pattern: Option<String>,
        direction: Direction,
        qos: QoS,
        local_prefix: Option<String>,
        remote_prefix: Option<String>,
    ) -> Result<Self, String> {
        for prefix in [&local_prefix, &remote_prefix].into_iter().flatten() {
            if TopicName::new(prefix.as_str()).is_err() {
                return Err(format!(
                    "prefix {prefix:?} is not a valid topic (no wildcards)"
                ));
            }
        }
        if pattern.is_none() && local_prefix.is_none() && remote_prefix.is_none() {
            return Err("an empty pattern needs prefixes".into());
        }
        let filter = |prefix: &Option<String>| {
            let text = format!(
                "{}{}",
                prefix.as_deref().unwrap_or(""),
                pattern.as_deref().unwrap_or("")
            );
            TopicFilter::new(text.as_str()).map_err(|e| format!("{text:?}: {e}"))
        };
        Ok(Self {
            local_filter: filter(&local_prefix)?,
            remote_filter: filter(&remote_prefix)?,
            pattern,
            direction,
            qos,
            local_prefix,
            remote_prefix,
        })
    }

    /// What the bridge subscribes to on this broker (`out`, `both`).
    pub fn local_filter(&self) -> &TopicFilter {
        &self.local_filter
    }

    /// What the bridge subscribes to on the remote broker (`in`, `both`).
    pub fn remote_filter(&self) -> &TopicFilter {
        &self.remote_filter
    }

    /// The remote topic of a message published here on `topic`, if this line sends it out.
    pub fn outgoing(&self, topic: &TopicName) -> Option<TopicName> {
        if !self.direction.is_out() || !self.local_filter.matches(topic) {
            return None;
        }
        remap(topic, &self.local_prefix, &self.remote_prefix)
    }

    /// The local topic of a message from the remote broker on `topic`, if this line takes it
    /// in.
    pub fn incoming(&self, topic: &TopicName) -> Option<TopicName> {
        if !self.direction.is_in() || !self.remote_filter.matches(topic) {
            return None;
        }
        remap(topic, &self.remote_prefix, &self.local_prefix)
    }
}

/// `topic` without `from` at its start (if it starts with it), with `to` put before it, as
/// Mosquitto does; `None` when that leaves no valid topic.
fn remap(topic: &TopicName, from: &Option<String>, to: &Option<String>) -> Option<TopicName> {
    let mut rest = topic.as_str();
    if let Some(from) = from {
        rest = rest.strip_prefix(from.as_str()).unwrap_or(rest);
    }
    let mapped = format!("{}{rest}", to.as_deref().unwrap_or(""));
    TopicName::new(mapped).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(topic: &str) -> TopicName {
        TopicName::new(topic).unwrap()
    }

    #[test]
    fn a_bare_pattern_goes_out_at_qos_0_unchanged() {
        let topic = BridgeTopic::parse("sensors/#").unwrap();
        assert_eq!(topic.direction, Direction::Out);
        assert_eq!(topic.qos, QoS::AtMostOnce);
        assert_eq!(topic.local_filter().as_str(), "sensors/#");
        assert_eq!(
            topic.outgoing(&name("sensors/t1")),
            Some(name("sensors/t1"))
        );
        assert_eq!(topic.outgoing(&name("other/t1")), None);
        assert_eq!(topic.incoming(&name("sensors/t1")), None, "out only");
    }

    #[test]
    fn prefixes_are_swapped_each_way() {
        let topic = BridgeTopic::parse("topic # both 2 local/ remote/").unwrap();
        assert_eq!(topic.direction, Direction::Both);
        assert_eq!(topic.qos, QoS::ExactlyOnce);
        assert_eq!(topic.local_filter().as_str(), "local/#");
        assert_eq!(topic.remote_filter().as_str(), "remote/#");
        assert_eq!(topic.outgoing(&name("local/a/b")), Some(name("remote/a/b")));
        assert_eq!(topic.incoming(&name("remote/a/b")), Some(name("local/a/b")));
        assert_eq!(topic.outgoing(&name("remote/a")), None);
    }

    #[test]
    fn an_empty_pattern_maps_one_topic_to_another() {
        let topic = BridgeTopic::parse(r#""" in 1 here/status there/status"#).unwrap();
        assert_eq!(topic.pattern, None);
        assert_eq!(topic.remote_filter().as_str(), "there/status");
        assert_eq!(
            topic.incoming(&name("there/status")),
            Some(name("here/status"))
        );
        assert_eq!(topic.incoming(&name("there/status/x")), None);
    }

    #[test]
    fn an_empty_prefix_on_one_side_only_adds_or_strips() {
        let topic = BridgeTopic::parse(r#"# out 1 "" site1/"#).unwrap();
        assert_eq!(topic.local_prefix, None);
        assert_eq!(topic.outgoing(&name("a/b")), Some(name("site1/a/b")));
        let topic = BridgeTopic::parse(r#"# in 1 "" site1/"#).unwrap();
        assert_eq!(topic.incoming(&name("site1/a")), Some(name("a")));
    }

    #[test]
    fn invalid_lines_say_what_is_wrong() {
        for (line, why) in [
            ("", "no pattern"),
            ("a/# sideways", "not out, in or both"),
            ("a/# out 3", "QoS"),
            ("a/# out 1 local/", "needs a remote prefix"),
            ("a/# out 1 l/ r/ extra", "after the prefixes"),
            ("a/# out 1 l/+/ r/", "not a valid topic"),
            (r#""" out 1"#, "needs prefixes"),
            ("a/#/b", "a/#/b"),
        ] {
            let error = BridgeTopic::parse(line).unwrap_err().to_string();
            assert!(error.contains(why), "{line:?}: {error}");
        }
    }
}
