//! The compiled ACL against examples of Mosquitto 2.0's behaviour and against the naive
//! reference scan (`reference.rs`) on random files, clients and topics.

use std::path::Path;

use proptest::prelude::*;
use rallymq_topic::{TopicFilter, TopicName, matches};

use super::reference::{ReferenceAcl, Wanted};
use super::*;

fn acl(text: &str) -> Acl {
    Acl::parse(text.as_bytes(), Path::new("acl")).unwrap()
}

fn name(text: &str) -> TopicName {
    TopicName::new(text).unwrap()
}

fn filter(text: &str) -> TopicFilter {
    TopicFilter::new(text).unwrap()
}

/// Topics of `topics` the client may publish to, and those it may receive.
fn rights(client: &ClientAcl, topics: &[&str]) -> (Vec<String>, Vec<String>) {
    let publish = topics
        .iter()
        .filter(|topic| client.can_publish(&name(topic)))
        .map(|topic| (*topic).to_owned())
        .collect();
    let receive = topics
        .iter()
        .filter(|topic| client.can_receive(&name(topic)))
        .map(|topic| (*topic).to_owned())
        .collect();
    (publish, receive)
}

/// The outcomes observed with Mosquitto 2.0.11 on this file (MQTT 5 PUBACK codes, and what a
/// subscriber to `#` received).
#[test]
fn sections_deny_and_patterns_as_mosquitto_2_0_applies_them() {
    let acl = acl("\
topic read anon/#
pattern write p/%u/x
pattern write c/%c/x
pattern write pre-%c-post/y
user admin
topic readwrite #
topic readwrite $SYS/#
topic readwrite $foo/#
topic readwrite $share/#
user lim
topic read r/#
topic write w/#
topic deny r/secret
");
    let topics = [
        "anon/x",
        "p/lim/x",
        "c/c1/x",
        "pre-c1-post/y",
        "r/a",
        "r/secret",
        "w/a",
        "$SYS/x",
        "$SYSTEM/x",
        "$SYS/broker/connection/c1/state",
        "$share/g/x",
        "$sharex",
        "$foo/x",
        "x",
    ];
    let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let anonymous = acl.for_client(None, "c1", None);
    assert_eq!(
        rights(&anonymous, &topics),
        (strings(&["c/c1/x", "pre-c1-post/y"]), strings(&["anon/x"]))
    );
    let lim = acl.for_client(Some("lim"), "c1", None);
    assert_eq!(
        rights(&lim, &topics),
        (
            strings(&["p/lim/x", "c/c1/x", "pre-c1-post/y", "w/a"]),
            strings(&["r/a"])
        )
    );
    // Even a user granted `$SYS/#` and `$share/#` may not publish there (but for a bridge's
    // state topic), nor receive `$share`; `$SYS/#` does not grant `$SYSTEM/x`.
    let admin = acl.for_client(Some("admin"), "c1", None);
    let ordinary = [
        "anon/x",
        "p/lim/x",
        "c/c1/x",
        "pre-c1-post/y",
        "r/a",
        "r/secret",
        "w/a",
    ];
    let mut publish = strings(&ordinary);
    publish.extend(strings(&["$SYS/broker/connection/c1/state", "$foo/x", "x"]));
    let mut receive = strings(&ordinary);
    receive.extend(strings(&[
        "$SYS/x",
        "$SYS/broker/connection/c1/state",
        "$foo/x",
        "x",
    ]));
    assert_eq!(rights(&admin, &topics), (publish, receive));
    // A user without a section has the patterns only, not the anonymous rules.
    let carol = acl.for_client(Some("carol"), "c/2", None);
    assert!(carol.can_publish(&name("p/carol/x")));
    assert!(carol.can_publish(&name("c/c/2/x")));
    assert!(!carol.can_receive(&name("anon/x")));
    // A wildcard in the user name or client id refuses the patterns.
    for (user, client_id) in [(Some("li+m"), "c1"), (Some("lim"), "c#1")] {
        let client = acl.for_client(user, client_id, None);
        assert!(!client.can_publish(&name("c/c1/x")), "{user:?} {client_id}");
        assert!(
            !client.can_publish(&name("p/lim/x")),
            "{user:?} {client_id}"
        );
    }
    // ...but not the user's own section.
    assert!(
        acl.for_client(Some("lim"), "c#1", None)
            .can_publish(&name("w/a"))
    );
    // Wildcard subscriptions are granted, and their deliveries checked; a subscription to a
    // single topic the client may not read is refused.
    for wanted in ["#", "$SYS/#", "$share/g/#"] {
        assert!(lim.can_subscribe(&filter(wanted)), "{wanted}");
    }
    for wanted in ["r/secret", "nothing/here"] {
        assert!(!lim.can_receive(&name(wanted)), "{wanted}");
        assert!(!lim.can_subscribe(&filter(wanted)), "{wanted}");
    }
}

#[test]
fn without_a_file_everything_is_allowed_but_what_mosquitto_refuses_to_all() {
    let client = Acl::allow_all().for_client(None, "c", None);
    assert!(client.can_publish(&name("a/b")));
    assert!(client.can_receive(&name("$SYS/broker/uptime")));
    assert!(!client.can_publish(&name("$SYS/broker/uptime")));
    assert!(client.can_publish(&name("$SYS/broker/connection/c/state")));
    assert!(!client.can_publish(&name("$SYS/broker/connection/a/b/state")));
    assert!(!client.can_receive(&name("$share/g/x")));
    assert!(client.can_subscribe(&filter("$share/g/#")));
}

#[test]
fn an_empty_file_refuses_everything() {
    let client = acl("# nothing\n").for_client(Some("u"), "c", None);
    assert!(!client.can_publish(&name("a")));
    assert!(!client.can_receive(&name("a")));
}

#[test]
fn token_rules_come_before_the_file() {
    let acl = acl("topic read feed/#\ntopic write up/#\n");
    let mut rules = ClientRules::new();
    rules
        .push(Permission::Deny, Action::All, "feed/secret")
        .unwrap();
    rules
        .push(Permission::Allow, Action::Subscribe, "extra/+")
        .unwrap();
    rules
        .push(Permission::Deny, Action::Subscribe, "up/#")
        .unwrap();
    let client = acl.for_client(None, "c", Some(rules));
    assert!(client.can_receive(&name("feed/x")));
    assert!(!client.can_receive(&name("feed/secret")));
    assert!(!client.can_publish(&name("feed/secret")));
    assert!(client.can_receive(&name("extra/x")));
    assert!(client.can_subscribe(&filter("extra/x")));
    assert!(!client.can_subscribe(&filter("up/x")));
    assert!(client.can_subscribe(&filter("feed/#")));
    assert!(client.can_publish(&name("up/x")));
    // The `$` checks come first.
    let mut rules = ClientRules::allow_lists();
    rules
        .push(Permission::Allow, Action::All, "$SYS/#")
        .unwrap();
    let client = acl.for_client(None, "c", Some(rules));
    assert!(!client.can_publish(&name("$SYS/x")));
    assert!(client.can_receive(&name("$SYS/x")));
    assert!(!client.can_receive(&name("feed/x")));
}

/// A subscription the file denies whole is refused only if the token allows receiving none
/// of its topics: a token rule inside it (here `$s/%c`) lets it deliver that part.
#[test]
fn a_filter_the_file_denies_whole_is_granted_where_a_token_rule_allows_part_of_it() {
    let acl = acl("topic deny $s/#\ntopic read feed/#\n");
    let client = acl.for_client(None, "alice", None);
    assert!(!client.can_subscribe(&filter("$s/#")));
    let token = |rule: &str| {
        let mut rules = ClientRules::new();
        rules
            .push(Permission::Allow, Action::Subscribe, rule)
            .unwrap();
        Some(rules)
    };
    let client = acl.for_client(None, "alice", token("$s/%c"));
    assert!(client.can_receive(&name("$s/alice")));
    assert!(!client.can_receive(&name("$s/bob")));
    assert!(client.can_subscribe(&filter("$s/#")));
    assert!(client.can_subscribe(&filter("$s/+")));
    assert!(client.can_subscribe(&filter("$share/g/$s/+")));
    // Rules that match nothing the filter does change nothing.
    for rule in ["$t/#", "#", "+/x", "eq $s/+"] {
        let client = acl.for_client(None, "alice", token(rule));
        assert!(!client.can_subscribe(&filter("$s/#")), "{rule}");
    }
    let client = acl.for_client(None, "alice", token("eq $s/alice"));
    assert!(client.can_subscribe(&filter("$s/+")));
}

#[test]
fn parse_errors_name_the_file_and_line() {
    let error = Acl::parse(b"topic a\nuser\n", Path::new("/etc/rallymq/acl")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "/etc/rallymq/acl:2: `user` without a user name"
    );
    let missing = Acl::from_file(Path::new("/nonexistent/acl")).unwrap_err();
    assert!(
        matches!(&missing, Error::AclFileRead { path, .. } if path == Path::new("/nonexistent/acl")),
        "{missing:?}"
    );
}

// Random files against the reference.

const USERS: [&str; 3] = ["alice", "bob", "a/b"];

#[derive(Debug, Clone)]
enum Line {
    User(&'static str),
    Topic(Option<&'static str>, String),
    Pattern(Option<&'static str>, String),
}

fn access() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("read")),
        Just(Some("write")),
        Just(Some("readwrite")),
        Just(Some("deny")),
    ]
}

/// Filters of one to `max - 1` levels of `levels`, and a `#` level after them half the time.
fn filter_over(levels: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(levels), 1..max),
        any::<bool>(),
    )
        .prop_map(|(levels, hash)| {
            let mut text = levels.join("/");
            if hash {
                text.push_str("/#");
            }
            text
        })
}

fn rule_filter() -> impl Strategy<Value = String> {
    const LEVELS: &[&str] = &["a", "b", "", "$s", "$SYS", "+", "%u", "%c", "x%c"];
    filter_over(LEVELS, 4).prop_filter("not empty", |text| !text.is_empty())
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        1 => prop::sample::select(&USERS[..]).prop_map(Line::User),
        3 => (access(), rule_filter()).prop_map(|(a, f)| Line::Topic(a, f)),
        2 => (access(), rule_filter()).prop_map(|(a, f)| Line::Pattern(a, f)),
    ]
}

fn file_text(lines: &[Line]) -> String {
    let mut text = String::new();
    for line in lines {
        let (keyword, access, filter) = match line {
            Line::User(user) => {
                text.push_str(&format!("user {user}\n"));
                continue;
            }
            Line::Topic(access, filter) => ("topic", access, filter),
            Line::Pattern(access, filter) => ("pattern", access, filter),
        };
        match access {
            Some(access) => text.push_str(&format!("{keyword} {access} {filter}\n")),
            None => text.push_str(&format!("{keyword} {filter}\n")),
        }
    }
    text
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("a"),
            Just("b"),
            Just(""),
            Just("$s"),
            Just("$SYS"),
            Just("alice"),
            Just("c1"),
            Just("xc1"),
            Just("d/e"),
            Just("%u"),
            Just("$share"),
        ],
        1..5,
    )
    .prop_map(|levels| levels.join("/"))
    .prop_filter("a topic name", |text| TopicName::new(text.as_str()).is_ok())
}

fn subscription() -> impl Strategy<Value = String> {
    const LEVELS: &[&str] = &["a", "b", "", "$s", "alice", "+"];
    (any::<bool>(), filter_over(LEVELS, 4))
        .prop_map(|(shared, filter)| {
            if shared {
                format!("$share/g/{filter}")
            } else {
                filter
            }
        })
        .prop_filter("a filter", |text| TopicFilter::new(text.as_str()).is_ok())
}

fn client() -> impl Strategy<Value = (Option<&'static str>, &'static str)> {
    (
        prop::sample::select(vec![
            None,
            Some("alice"),
            Some("bob"),
            Some("carol"),
            Some("a/b"),
            Some(""),
            Some("x+"),
        ]),
        prop::sample::select(vec!["c1", "d/e", "c#", "alice"]),
    )
}

/// A token rule as written, for [`token_reference`].
type TokenRule = (Permission, Action, String);

fn token_rule() -> impl Strategy<Value = TokenRule> {
    const LEVELS: &[&str] = &["a", "b", "$s", "+", "${username}", "%c"];
    (
        prop_oneof![Just(Permission::Allow), Just(Permission::Deny)],
        prop_oneof![
            Just(Action::Publish),
            Just(Action::Subscribe),
            Just(Action::All)
        ],
        any::<bool>(),
        filter_over(LEVELS, 4),
    )
        .prop_map(|(permission, action, exact, topic)| {
            let topic = if exact { format!("eq {topic}") } else { topic };
            (permission, action, topic)
        })
}

/// Token rules scanned in order, with their placeholders substituted: the first that matches
/// decides.
fn token_reference(
    rules: &[TokenRule],
    deny_unmatched: bool,
    user: Option<&str>,
    client_id: &str,
    wanted: Action,
    text: &str,
    is_filter: bool,
) -> Option<bool> {
    for (permission, action, topic) in rules {
        if *action != Action::All && *action != wanted {
            continue;
        }
        let matched = match topic.strip_prefix("eq ") {
            Some(exact) => exact == text,
            None => {
                let Some(rule) = substitute_token(topic, user, client_id) else {
                    continue;
                };
                if is_filter {
                    covers(&rule, text)
                } else {
                    TopicFilter::new(rule).is_ok_and(|rule| matches(&rule, &name(text)))
                }
            }
        };
        if matched {
            return Some(*permission == Permission::Allow);
        }
    }
    deny_unmatched.then_some(false)
}

fn substitute_token(topic: &str, user: Option<&str>, client_id: &str) -> Option<String> {
    let placeholders = [
        ("${username}", user),
        ("${clientid}", Some(client_id)),
        ("%u", user),
        ("%c", Some(client_id)),
    ];
    let mut out = String::new();
    let mut rest = topic;
    'scan: while let Some(c) = rest.chars().next() {
        for (placeholder, value) in placeholders {
            if let Some(after) = rest.strip_prefix(placeholder) {
                let value = value?;
                if value.contains(['+', '#']) {
                    return None;
                }
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Some(out)
}

/// Level-by-level covering of `filter` by `rule`, stated recursively.
fn covers(rule: &str, filter: &str) -> bool {
    fn levels(rule: &[&str], filter: &[&str]) -> bool {
        match (rule.first(), filter.first()) {
            (Some(&"#"), _) => true,
            (None, None) => true,
            (Some(_), None) | (None, Some(_)) => false,
            (Some(&"+"), Some(&level)) => level != "#" && levels(&rule[1..], &filter[1..]),
            (Some(&wanted), Some(&level)) => wanted == level && levels(&rule[1..], &filter[1..]),
        }
    }
    if filter.starts_with('$') && rule.starts_with(['+', '#']) {
        return false;
    }
    levels(
        &rule.split('/').collect::<Vec<_>>(),
        &filter.split('/').collect::<Vec<_>>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn compiled_file_agrees_with_mosquittos_scan(
        lines in prop::collection::vec(line(), 0..14),
        clients in prop::collection::vec(client(), 1..5),
        topics in prop::collection::vec(topic(), 1..12),
    ) {
        let text = file_text(&lines);
        let compiled = acl(&text);
        let reference = ReferenceAcl::parse(text.as_bytes()).unwrap();
        for (user, client_id) in &clients {
            let ours = compiled.for_client(*user, client_id, None);
            let theirs = reference.for_client(*user, client_id);
            for topic in &topics {
                let topic = name(topic);
                prop_assert_eq!(
                    ours.can_publish(&topic),
                    theirs.check(&topic, Wanted::Write),
                    "publish {} by {:?}/{} under\n{}", topic, user, client_id, text
                );
                prop_assert_eq!(
                    ours.can_receive(&topic),
                    theirs.check(&topic, Wanted::Read),
                    "receive {} by {:?}/{} under\n{}", topic, user, client_id, text
                );
            }
        }
    }

    #[test]
    fn token_rules_agree_with_a_first_match_scan(
        lines in prop::collection::vec(line(), 0..8),
        token in prop::collection::vec(token_rule(), 0..8),
        deny_unmatched in any::<bool>(),
        (user, client_id) in client(),
        topics in prop::collection::vec(topic(), 1..10),
        filters in prop::collection::vec(subscription(), 1..6),
    ) {
        let text = file_text(&lines);
        let mut rules = if deny_unmatched { ClientRules::allow_lists() } else { ClientRules::new() };
        for (permission, action, topic) in &token {
            rules.push(*permission, *action, topic).unwrap();
        }
        let ours = acl(&text).for_client(user, client_id, Some(rules));
        let reference = ReferenceAcl::parse(text.as_bytes()).unwrap();
        let file = reference.for_client(user, client_id);
        for topic in &topics {
            let name = name(topic);
            let wanted = [(Action::Publish, Wanted::Write, WRITE), (Action::Subscribe, Wanted::Read, READ)];
            for (action, file_wanted, bit) in wanted {
                let expected = dollar_allows(topic, bit)
                    && token_reference(&token, deny_unmatched, user, client_id, action, topic, false)
                        .unwrap_or_else(|| file.check(&name, file_wanted));
                let found = if action == Action::Publish { ours.can_publish(&name) } else { ours.can_receive(&name) };
                prop_assert_eq!(found, expected, "{:?} {} under {:?}", action, topic, token);
            }
        }
        for wanted in &filters {
            let parsed = filter(wanted);
            let by_token = token_reference(
                &token, deny_unmatched, user, client_id, Action::Subscribe, parsed.filter(), true,
            );
            let granted = ours.can_subscribe(&parsed);
            if let Some(expected) = by_token {
                prop_assert_eq!(granted, expected, "subscribe {} under {:?}", wanted, token);
            } else if !parsed.filter().contains(['+', '#']) {
                // One topic: subscribing is allowed exactly when receiving it is.
                let topic = name(parsed.filter());
                let expected = dollar_allows(parsed.filter(), READ)
                    && file.check(&topic, Wanted::Read);
                prop_assert_eq!(granted, expected, "subscribe {} under {:?}", wanted, token);
            } else if !granted {
                // A refused wildcard subscription could deliver none of the topics it matches.
                for topic in &topics {
                    let topic = name(topic);
                    prop_assert!(
                        !(parsed.matches(&topic) && ours.can_receive(&topic)),
                        "subscribe {} refused, but {} may be received", wanted, topic.as_str()
                    );
                }
            }
        }
    }
}
