//! MQTT topic names and filters as NATS subjects, and back.
//!
//! A topic's levels become the tokens of a subject under [`PREFIX`]: `sport/tennis` is
//! `rmq.m.sport.tennis`. NATS gives meaning to bytes MQTT allows in a level (`.` separates
//! tokens, `*` and `>` are wildcards, whitespace ends a subject) and has no empty token, so a
//! level keeps only ASCII letters, digits, `-` and `_` as they are and writes every other byte
//! as `=` and two upper-case hex digits (`room 1.2` is `room=201=2E2`, `é` is `=C3=A9`); an
//! empty level is the token `=` alone. The escaping is canonical (one subject per topic), so a
//! subject decodes back to exactly one topic, and its tokens are also valid JetStream KV keys.
//!
//! In a filter `+` becomes `*` and `#` becomes `>`. NATS's `>` needs at least one token where
//! MQTT's `#` also matches the parent level (`sport/#` matches `sport`), so a filter ending in
//! `#` (other than `#` alone) becomes two subjects: the `>` one and its parent.
//!
//! What NATS cannot say is left to the local matcher, which sees every message a node receives:
//! a filter starting with a wildcard does not match `$` topics in MQTT (MQTT-4.7.2-1), but its
//! subject matches theirs.

use std::fmt::Write as _;

/// The subject prefix of MQTT messages.
pub(crate) const PREFIX: &str = "rmq.m";

/// The byte that starts an escape, and alone stands for an empty level.
const ESCAPE: u8 = b'=';

/// Whether `byte` stands for itself in a subject token.
fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// Appends the token of one topic level.
fn push_level(subject: &mut String, level: &str) {
    if level.is_empty() {
        subject.push(char::from(ESCAPE));
        return;
    }
    for byte in level.bytes() {
        if plain(byte) {
            subject.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(subject, "={byte:02X}");
        }
    }
}

/// The subject prefix of QoS 1 and 2 messages, which the cluster's stream takes: apart from
/// [`PREFIX`], or the stream would also store every QoS 0 message published on core NATS.
pub(crate) const STREAM_PREFIX: &str = "rmq.q";

/// The subject of a topic name (or of any string of `/`-separated levels).
pub(crate) fn topic_subject(topic: &str) -> String {
    subject_under(PREFIX, topic)
}

/// The subject of a QoS 1 or 2 message's topic in the cluster's stream.
pub(crate) fn stream_subject(topic: &str) -> String {
    subject_under(STREAM_PREFIX, topic)
}

fn subject_under(prefix: &str, topic: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + topic.len() + 8);
    subject.push_str(prefix);
    for level in topic.split('/') {
        subject.push('.');
        push_level(&mut subject, level);
    }
    subject
}

/// The key of a topic's retained message in the cluster's KV bucket: its subject without the
/// prefix (tokens of letters, digits, `-`, `_` and `=`, which KV keys allow).
pub(crate) fn topic_key(topic: &str) -> String {
    let mut subject = topic_subject(topic);
    subject.drain(..=PREFIX.len());
    subject
}

/// A string (a client id) as one token of a subject or KV key: `/` is escaped too.
pub(crate) fn token(text: &str) -> String {
    let mut token = String::with_capacity(text.len() + 2);
    push_level(&mut token, text);
    token
}

/// The topic of a key made by [`topic_key`].
pub(crate) fn key_topic(key: &str) -> Result<String, NotATopic> {
    subject_topic(&format!("{PREFIX}.{key}"))
}

/// The subjects a node subscribes to for an MQTT filter (without any `$share/{group}/`): one,
/// or two for a filter ending in `/#`, whose parent level MQTT also matches.
pub(crate) fn filter_subjects(filter: &str) -> Vec<String> {
    let mut subject = String::with_capacity(PREFIX.len() + filter.len() + 8);
    subject.push_str(PREFIX);
    // The subject before the current level, kept when the level is a final `#`.
    let mut parent = None;
    for level in filter.split('/') {
        let before = subject.len();
        subject.push('.');
        match level {
            "+" => subject.push('*'),
            "#" => {
                parent = Some(subject[..before].to_owned());
                subject.push('>');
            }
            _ => push_level(&mut subject, level),
        }
    }
    let mut subjects = vec![subject];
    // `#` alone: the prefix itself is no topic's subject.
    subjects.extend(parent.filter(|parent| parent.len() > PREFIX.len()));
    subjects
}

/// Why a subject is not one [`topic_subject`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotATopic {
    /// It is not under [`PREFIX`].
    Prefix,
    /// A token holds a byte that is not escaped, or an escape that is not canonical.
    Token,
    /// The levels are not UTF-8.
    Utf8,
}

/// The topic of a subject made by [`topic_subject`]; any other subject is refused (it came
/// from something else than a rallymq node).
pub(crate) fn subject_topic(subject: &str) -> Result<String, NotATopic> {
    topic_under(PREFIX, subject)
}

/// The topic of a subject made by [`stream_subject`].
pub(crate) fn stream_subject_topic(subject: &str) -> Result<String, NotATopic> {
    topic_under(STREAM_PREFIX, subject)
}

fn topic_under(prefix: &str, subject: &str) -> Result<String, NotATopic> {
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or(NotATopic::Prefix)?;
    let mut topic = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            topic.push(b'/');
        }
        decode_token(token.as_bytes(), &mut topic)?;
    }
    String::from_utf8(topic).map_err(|_| NotATopic::Utf8)
}

fn decode_token(token: &[u8], out: &mut Vec<u8>) -> Result<(), NotATopic> {
    if token == [ESCAPE] {
        return Ok(());
    }
    if token.is_empty() {
        return Err(NotATopic::Token);
    }
    let mut i = 0;
    while i < token.len() {
        let byte = token[i];
        if plain(byte) {
            out.push(byte);
            i += 1;
            continue;
        }
        if byte != ESCAPE || i + 2 >= token.len() {
            return Err(NotATopic::Token);
        }
        let decoded = hex(token[i + 1])
            .zip(hex(token[i + 2]))
            .map(|(high, low)| high << 4 | low)
            .ok_or(NotATopic::Token)?;
        // Canonical only: a byte that stands for itself is never escaped.
        if plain(decoded) {
            return Err(NotATopic::Token);
        }
        out.push(decoded);
        i += 3;
    }
    Ok(())
}

/// The value of an upper-case hex digit.
fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rallymq_topic::{TopicFilter, TopicName, matches};

    /// NATS's own rule (the oracle for subjects): `*` is one token, `>` one or more.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let mut wanted = pattern.split('.');
        let mut tokens = subject.split('.');
        loop {
            match (wanted.next(), tokens.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(want), Some(token)) if want == token => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn levels_keep_plain_bytes_and_escape_the_rest() {
        assert_eq!(topic_subject("sport/tennis"), "rmq.m.sport.tennis");
        assert_eq!(topic_subject("room 1.2/t\tx"), "rmq.m.room=201=2E2.t=09x");
        assert_eq!(topic_subject("a*/>b/="), "rmq.m.a=2A.=3Eb.=3D");
        assert_eq!(topic_subject("caf\u{e9}"), "rmq.m.caf=C3=A9");
        assert_eq!(topic_subject("$SYS/x"), "rmq.m.=24SYS.x");
        // Empty levels, the leading and trailing ones included.
        assert_eq!(topic_subject("/a//"), "rmq.m.=.a.=.=");
        assert_eq!(topic_subject("/"), "rmq.m.=.=");
    }

    #[test]
    fn stream_subjects_are_apart_from_core_subjects_and_decode_only_there() {
        assert_eq!(stream_subject("a b/c"), "rmq.q.a=20b.c");
        assert_eq!(
            stream_subject_topic("rmq.q.a=20b.c"),
            Ok("a b/c".to_owned())
        );
        // A QoS 0 subscription (`#` is `rmq.m.>`) never sees a stream subject, and back.
        assert!(!nats_matches("rmq.m.>", &stream_subject("q/x")));
        assert_eq!(stream_subject_topic("rmq.m.a"), Err(NotATopic::Prefix));
        assert_eq!(subject_topic("rmq.q.a"), Err(NotATopic::Prefix));
    }

    #[test]
    fn mqtt_4_7_1_1_hash_maps_to_greater_than_and_its_parent_level() {
        assert_eq!(filter_subjects("#"), ["rmq.m.>"]);
        assert_eq!(filter_subjects("sport/#"), ["rmq.m.sport.>", "rmq.m.sport"]);
        assert_eq!(filter_subjects("+/#"), ["rmq.m.*.>", "rmq.m.*"]);
        assert_eq!(filter_subjects("/#"), ["rmq.m.=.>", "rmq.m.="]);
        assert_eq!(filter_subjects("a.b/+/c d"), ["rmq.m.a=2Eb.*.c=20d"]);
        assert_eq!(filter_subjects("+"), ["rmq.m.*"]);
    }

    #[test]
    fn subjects_not_made_from_a_topic_are_refused() {
        assert_eq!(subject_topic("other.a"), Err(NotATopic::Prefix));
        assert_eq!(subject_topic("rmq.m"), Err(NotATopic::Prefix));
        assert_eq!(subject_topic("rmq.mx.a"), Err(NotATopic::Prefix));
        assert_eq!(subject_topic("rmq.m.a..b"), Err(NotATopic::Token));
        assert_eq!(subject_topic("rmq.m.a=2"), Err(NotATopic::Token));
        assert_eq!(subject_topic("rmq.m.a=2e"), Err(NotATopic::Token));
        // `=41` is `A`, which is written as itself: not canonical.
        assert_eq!(subject_topic("rmq.m.=41"), Err(NotATopic::Token));
        assert_eq!(subject_topic("rmq.m.*"), Err(NotATopic::Token));
        assert_eq!(subject_topic("rmq.m.a$"), Err(NotATopic::Token));
        assert_eq!(subject_topic("rmq.m.=FF"), Err(NotATopic::Utf8));
        assert_eq!(subject_topic("rmq.m.=.a"), Ok("/a".to_owned()));
    }

    /// Levels drawn from a small alphabet rich in what NATS reserves, so that filters made
    /// from the same alphabet match often.
    fn level() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop::sample::select(vec![
                "a",
                "B",
                "0",
                "-",
                "_",
                ".",
                " ",
                "\t",
                "*",
                ">",
                "=",
                "=2E",
                "~",
                "$",
                "\u{e9}",
                "\u{65e5}",
                "\u{1f600}",
                "\\",
                "\"",
            ]),
            0..4,
        )
        .prop_map(|parts| parts.concat())
    }

    fn topic() -> impl Strategy<Value = String> {
        // MQTT has no empty topic (one empty level).
        proptest::collection::vec(level(), 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("a topic is not empty", |topic| !topic.is_empty())
    }

    /// A filter over the same alphabet: literal levels, `+`, and an optional final `#`.
    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_owned())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("a filter has a level", |(mut levels, hash)| {
                if hash {
                    levels.push("#".to_owned());
                }
                Some(levels.join("/")).filter(|filter| !filter.is_empty())
            })
    }

    proptest! {
        #[test]
        fn topic_to_subject_to_topic_is_identity(topic in topic()) {
            let subject = topic_subject(&topic);
            // A subject NATS takes: no empty token, no whitespace, no wildcard token, and
            // tokens that are valid JetStream KV keys too.
            for token in subject.split('.') {
                prop_assert!(!token.is_empty());
                prop_assert!(token.bytes().all(|b| plain(b) || b == ESCAPE), "{token}");
            }
            prop_assert_eq!(subject_topic(&subject), Ok(topic.clone()));
            let key = topic_key(&topic);
            prop_assert!(!key.starts_with('.') && !key.ends_with('.'));
            prop_assert_eq!(key_topic(&key), Ok(topic));
        }

        #[test]
        fn subjects_of_a_filter_match_exactly_the_topics_the_filter_matches(
            topic in topic(),
            filter in filter(),
        ) {
            let mqtt = matches(
                &TopicFilter::new(filter.as_str()).expect("the strategy makes valid filters"),
                &TopicName::new(topic.as_str()).expect("the strategy makes valid names"),
            );
            let subject = topic_subject(&topic);
            let patterns = filter_subjects(&filter);
            let nats = patterns.iter().filter(|p| nats_matches(p, &subject)).count();
            // Never two subscriptions for one message: the `#` pair does not overlap.
            prop_assert!(nats <= 1, "{filter:?} -> {patterns:?} vs {subject}");
            if topic.starts_with('$') {
                // NATS lets through what MQTT-4.7.2-1 refuses; the local matcher drops it.
                prop_assert!(!mqtt || nats == 1);
            } else {
                prop_assert_eq!(mqtt, nats == 1, "{:?} -> {:?} vs {}", filter, patterns, subject);
            }
        }

        #[test]
        fn filters_made_from_a_topic_match_it(
            topic in topic(),
            wild in proptest::collection::vec(any::<bool>(), 5),
            cut in 0usize..5,
        ) {
            // Filters that do match (random pairs rarely do): some levels made `+`, and maybe
            // the tail made `#`.
            let mut levels: Vec<String> = topic
                .split('/')
                .zip(wild.iter().cycle())
                .map(|(level, &wild)| if wild { "+".to_owned() } else { level.to_owned() })
                .collect();
            if cut < levels.len() {
                levels.truncate(cut);
                levels.push("#".to_owned());
            }
            let filter = levels.join("/");
            let subject = topic_subject(&topic);
            let mqtt = matches(
                &TopicFilter::new(filter.as_str()).expect("valid"),
                &TopicName::new(topic.as_str()).expect("valid"),
            );
            let nats = filter_subjects(&filter).iter().filter(|p| nats_matches(p, &subject)).count();
            prop_assert_eq!(nats, 1);
            prop_assert!(mqtt || topic.starts_with('$'));
        }
    }
}
