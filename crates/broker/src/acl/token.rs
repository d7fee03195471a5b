//! Rules a client brings in its token: EMQX's `acl` claim, as ordered allow and deny rules
//! for publishing, subscribing or both.

use std::collections::HashMap;

use rallymq_topic::{FilterTemplate, RuleIndex, TopicFilter, TopicName};

use crate::Error;

/// Placeholders of a token rule, EMQX 5's and EMQX 4's, in the order of the values a check
/// gives.
const TOKEN_PLACEHOLDERS: [&str; 4] = ["${username}", "${clientid}", "%u", "%c"];

/// Whether a [`ClientRules`] rule allows or refuses what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// What the rule matches is allowed.
    Allow,
    /// What the rule matches is refused.
    Deny,
}

/// What a [`ClientRules`] rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publishing to topics the rule matches.
    Publish,
    /// Subscribing to filters the rule covers, and receiving messages on topics it matches.
    Subscribe,
    /// Both.
    All,
}

impl Action {
    fn applies_to(self, wanted: Self) -> bool {
        self == Self::All || self == wanted
    }
}

/// Per-client rules, from the client's token (EMQX's `acl` claim), checked before the ACL
/// file: the first rule (in the order pushed) that matches decides.
///
/// - Publishing to a topic: the first `Publish` or `All` rule whose filter matches the topic.
/// - Receiving a message: the first `Subscribe` or `All` rule whose filter matches its topic.
/// - Subscribing to a filter: the first `Subscribe` or `All` rule whose filter covers the
///   requested one level by level (a literal level by itself or `+`, `+` by `+`, `#` by `#`;
///   see [`RuleIndex::for_each_covering`]), so an allowed subscription can deliver nothing
///   outside its rule. EMQX lets its `+` cover a requested `#` (`a/+` then allows a
///   subscription to `a/#`, which receives `a/b/c`); these rules do not. A deny rule that
///   covers only part of a filter does not refuse the subscription: the messages it matches
///   are refused one by one when received.
///
/// A topic `eq FILTER` (EMQX's prefix) matches only the exact text FILTER: the filter of a
/// subscription, or a topic name. Filters may hold the placeholders `${username}` and
/// `${clientid}` (or EMQX 4's `%u` and `%c`), anywhere; a rule whose placeholder has no value
/// (no user name) or a value holding `+` or `#` matches nothing. EMQX's `qos` and `retain`
/// rule fields have no counterpart here: a token carrying them should be refused rather than
/// read without them, since an allow rule without its condition allows more.
///
/// When no rule matches, [`ClientRules::new`] leaves the decision to the ACL file (EMQX 5.5's
/// list format); rules from [`ClientRules::allow_lists`] refuse it (EMQX's older
/// `{"pub": [..], "sub": [..], "all": [..]}` format, whose lists are allow-lists).
#[derive(Debug, Clone, Default)]
pub struct ClientRules {
    rules: Vec<ClientRule>,
    deny_unmatched: bool,
}

#[derive(Debug, Clone)]
struct ClientRule {
    permission: Permission,
    action: Action,
    topic: RuleTopic,
}

#[derive(Debug, Clone)]
enum RuleTopic {
    Filter(FilterTemplate),
    /// `eq FILTER`: this text exactly.
    Exact(Box<str>),
}

impl ClientRules {
    /// No rules yet; what no rule matches is left to the ACL file.
    pub fn new() -> Self {
        Self::default()
    }

    /// No rules yet; what no rule matches is refused.
    pub fn allow_lists() -> Self {
        Self {
            rules: Vec::new(),
            deny_unmatched: true,
        }
    }

    /// Appends a rule, checked after those already pushed. `topic` is a filter, possibly with
    /// placeholders, or `eq ` and a filter matched as exact text.
    pub fn push(
        &mut self,
        permission: Permission,
        action: Action,
        topic: &str,
    ) -> Result<(), Error> {
        let topic = match topic.strip_prefix("eq ") {
            Some(exact) => {
                TopicFilter::new(exact)?;
                RuleTopic::Exact(exact.into())
            }
            None => RuleTopic::Filter(FilterTemplate::new(topic, &TOKEN_PLACEHOLDERS)?),
        };
        self.rules.push(ClientRule {
            permission,
            action,
            topic,
        });
        Ok(())
    }

    /// The rules of a verified token, whose placeholders the verifier already replaced: their
    /// text is taken literally, never expanded again. EMQX's `qos` and `retain` conditions
    /// have no counterpart in these checks, so each is read the safe way: an allow rule with a
    /// condition is left out (it would allow more without it), a deny rule with one denies
    /// unconditionally.
    pub(crate) fn from_token(token: &crate::auth::TokenRules) -> Self {
        let mut rules = Self {
            rules: Vec::with_capacity(token.rules.len()),
            deny_unmatched: token.no_match == crate::auth::NoMatch::Deny,
        };
        for rule in &token.rules {
            let conditional = rule.qos.is_some() || rule.retain.is_some();
            if conditional && rule.permission == Permission::Allow {
                continue;
            }
            let topic = if rule.exact {
                RuleTopic::Exact(rule.topic.as_str().into())
            } else {
                match FilterTemplate::new(rule.topic.as_str(), &[]) {
                    Ok(template) => RuleTopic::Filter(template),
                    // A valid filter is a valid template without placeholders.
                    Err(_) => continue,
                }
            };
            rules.rules.push(ClientRule {
                permission: rule.permission,
                action: rule.action,
                topic,
            });
        }
        rules
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// One rule in the index: where it stands among the client's rules and what it says.
#[derive(Debug, Clone, Copy)]
struct Entry {
    order: u32,
    permission: Permission,
    action: Action,
}

/// A client's rules, indexed for its checks.
#[derive(Debug)]
pub(crate) struct TokenAcl {
    filters: RuleIndex<Vec<Entry>>,
    exact: HashMap<Box<str>, Vec<Entry>>,
    /// The filters of the rules that allow receiving, placeholders filled in (exact rules'
    /// texts included): a subscription the file refuses may still deliver what they match.
    receivable: Vec<TopicFilter>,
    deny_unmatched: bool,
    user: Option<Box<str>>,
    client_id: Box<str>,
}

impl TokenAcl {
    pub(crate) fn compile(rules: ClientRules, user: Option<&str>, client_id: &str) -> Self {
        let mut filters: RuleIndex<Vec<Entry>> = RuleIndex::new();
        let mut exact: HashMap<Box<str>, Vec<Entry>> = HashMap::new();
        let mut receivable = Vec::new();
        for (order, rule) in rules.rules.into_iter().enumerate() {
            let entry = Entry {
                // A token's rules fit in a packet, far fewer than 2^32.
                order: u32::try_from(order).unwrap_or(u32::MAX),
                permission: rule.permission,
                action: rule.action,
            };
            if rule.permission == Permission::Allow && rule.action.applies_to(Action::Subscribe) {
                let text = match &rule.topic {
                    RuleTopic::Filter(template) => fill(template, user, client_id),
                    // An exact rule allows receiving only a topic named by its text.
                    RuleTopic::Exact(text) => (!text.contains(['+', '#'])).then(|| text.clone()),
                };
                // A `$share/` rule matches no topic a client may receive (they are refused
                // before any rule); as a `TopicFilter` it would be a shared subscription.
                receivable.extend(
                    text.filter(|text| !text.starts_with("$share/"))
                        .and_then(|text| TopicFilter::new(&*text).ok()),
                );
            }
            match rule.topic {
                RuleTopic::Filter(template) => filters.insert(&template).push(entry),
                RuleTopic::Exact(text) => exact.entry(text).or_default().push(entry),
            }
        }
        Self {
            filters,
            exact,
            receivable,
            deny_unmatched: rules.deny_unmatched,
            user: user.map(Into::into),
            client_id: client_id.into(),
        }
    }

    /// The decision for publishing to `topic`: `None` leaves it to the ACL file.
    pub(crate) fn publish(&self, topic: &TopicName) -> Option<bool> {
        self.decide(Action::Publish, topic.as_str(), |bindings, visit| {
            self.filters.for_each_match(topic, bindings, visit)
        })
    }

    /// The decision for receiving a message on `topic`.
    pub(crate) fn receive(&self, topic: &TopicName) -> Option<bool> {
        self.decide(Action::Subscribe, topic.as_str(), |bindings, visit| {
            self.filters.for_each_match(topic, bindings, visit)
        })
    }

    /// The decision for subscribing to `filter` (a shared subscription by its filter part).
    pub(crate) fn subscribe(&self, filter: &TopicFilter) -> Option<bool> {
        self.decide(Action::Subscribe, filter.filter(), |bindings, visit| {
            self.filters.for_each_covering(filter, bindings, visit)
        })
    }

    /// Whether some rule allows receiving a topic that `filter` matches (a shared
    /// subscription by its filter part). A deny rule before it may still refuse that topic:
    /// this tells only that the subscription is not certain to deliver nothing.
    pub(crate) fn may_allow_receiving_within(&self, filter: &TopicFilter) -> bool {
        self.receivable
            .iter()
            .any(|rule| rallymq_topic::overlaps(rule, filter))
    }

    /// The permission of the first rule for `action` among those `query` reports and those
    /// whose exact text is `text`.
    fn decide<'a>(
        &'a self,
        action: Action,
        text: &str,
        query: impl FnOnce(&[Option<&str>], &mut dyn FnMut(&'a Vec<Entry>)),
    ) -> Option<bool> {
        let mut first: Option<Entry> = None;
        let mut consider = |entries: &'a Vec<Entry>| {
            for entry in entries {
                if entry.action.applies_to(action)
                    && first.is_none_or(|first| entry.order < first.order)
                {
                    first = Some(*entry);
                }
            }
        };
        let user = self.user.as_deref();
        let client_id = Some(&*self.client_id);
        query(&[user, client_id, user, client_id], &mut consider);
        // Hashing the text is skipped when there is nothing to find.
        if !self.exact.is_empty()
            && let Some(entries) = self.exact.get(text)
        {
            consider(entries);
        }
        match first {
            Some(entry) => Some(entry.permission == Permission::Allow),
            None if self.deny_unmatched => Some(false),
            None => None,
        }
    }
}

/// `template`'s text with its placeholders filled in as [`RuleIndex`] fills them (scanning
/// from the left, the first placeholder listed that starts at a place); `None` where one has no
/// value or a value holding `+` or `#`, which makes the rule match nothing.
fn fill(template: &FilterTemplate, user: Option<&str>, client_id: &str) -> Option<Box<str>> {
    let text = template.as_str();
    if !template.has_placeholders() {
        return Some(text.into());
    }
    let values = [user, Some(client_id), user, Some(client_id)];
    let mut filled = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while let Some(c) = rest.chars().next() {
        for (placeholder, value) in TOKEN_PLACEHOLDERS.iter().zip(values) {
            if let Some(after) = rest.strip_prefix(placeholder) {
                let value = value.filter(|value| !value.contains(['+', '#']))?;
                filled.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        filled.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Some(filled.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> TopicName {
        TopicName::new(text).unwrap()
    }

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::new(text).unwrap()
    }

    fn acl(rules: &[(Permission, Action, &str)], base: ClientRules) -> TokenAcl {
        let mut client_rules = base;
        for &(permission, action, topic) in rules {
            client_rules.push(permission, action, topic).unwrap();
        }
        TokenAcl::compile(client_rules, Some("alice"), "dev-1")
    }

    use Action::{All, Publish, Subscribe};
    use Permission::{Allow, Deny};

    #[test]
    fn first_matching_rule_decides() {
        let acl = acl(
            &[
                (Deny, All, "t/secret"),
                (Allow, Publish, "t/#"),
                (Allow, Subscribe, "s/+"),
                (Deny, Publish, "t/late"),
            ],
            ClientRules::new(),
        );
        assert_eq!(acl.publish(&name("t/secret")), Some(false));
        assert_eq!(acl.publish(&name("t/late")), Some(true));
        assert_eq!(acl.publish(&name("s/x")), None);
        assert_eq!(acl.receive(&name("s/x")), Some(true));
        assert_eq!(acl.receive(&name("t/x")), None);
        assert_eq!(acl.receive(&name("t/secret")), Some(false));
        assert_eq!(acl.subscribe(&filter("s/x")), Some(true));
        assert_eq!(acl.subscribe(&filter("s/+")), Some(true));
        assert_eq!(acl.subscribe(&filter("$share/g/s/+")), Some(true));
        // `s/+` does not cover `s/#`, which also matches `s` and `s/a/b`.
        assert_eq!(acl.subscribe(&filter("s/#")), None);
        assert_eq!(acl.subscribe(&filter("t/secret")), Some(false));
        // A deny rule covering part of a filter leaves the filter to later rules; its topics are
        // refused on receipt.
        assert_eq!(acl.subscribe(&filter("t/+")), None);
    }

    #[test]
    fn allow_lists_refuse_what_no_rule_matches() {
        let acl = acl(&[(Allow, Publish, "up/%c")], ClientRules::allow_lists());
        assert_eq!(acl.publish(&name("up/dev-1")), Some(true));
        assert_eq!(acl.publish(&name("up/dev-2")), Some(false));
        assert_eq!(acl.receive(&name("up/dev-1")), Some(false));
        assert_eq!(acl.subscribe(&filter("#")), Some(false));
    }

    #[test]
    fn placeholders_and_exact_rules() {
        let acl = acl(
            &[
                (Allow, All, "users/${username}/#"),
                (Allow, Publish, "devices/${clientid}"),
                (Allow, Subscribe, "eq feed/#"),
                (Deny, Subscribe, "eq #"),
            ],
            ClientRules::new(),
        );
        assert_eq!(acl.publish(&name("users/alice/x")), Some(true));
        assert_eq!(acl.publish(&name("users/bob/x")), None);
        assert_eq!(acl.publish(&name("devices/dev-1")), Some(true));
        assert_eq!(acl.subscribe(&filter("feed/#")), Some(true));
        assert_eq!(acl.subscribe(&filter("$share/g/feed/#")), Some(true));
        assert_eq!(acl.subscribe(&filter("feed/x")), None);
        assert_eq!(acl.subscribe(&filter("#")), Some(false));
        // An exact rule matches only its text: `feed/#` is no topic name.
        assert_eq!(acl.receive(&name("feed/x")), None);
        assert!(ClientRules::new().push(Allow, All, "eq a/#/b").is_err());
        assert!(ClientRules::new().push(Allow, All, "a+").is_err());
    }

    #[test]
    fn a_missing_user_name_matches_no_rule_naming_it() {
        let mut rules = ClientRules::new();
        rules.push(Allow, All, "users/%u/#").unwrap();
        let anonymous = TokenAcl::compile(rules, None, "c");
        assert_eq!(anonymous.publish(&name("users//x")), None);
    }
}
