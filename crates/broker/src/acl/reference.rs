//! The naive check, as Mosquitto 2.0 makes it (`mosquitto_acl_check_default`): for every
//! check, scan the client's rules in order, then substitute `%u` and `%c` into every pattern (a
//! new string each time) and scan those. The reference the compiled [`Acl`](super::Acl) is
//! tested against, and the peer it is benchmarked beside. Not part of the API: compiled for
//! tests and with the `_reference` feature only.

use rallymq_topic::{TopicFilter, TopicName, matches};

use super::parse::{self, Access, PATTERN_PLACEHOLDERS, Rule, Scope};
use super::{AclProblem, READ, WRITE, dollar_allows};

/// An ACL file, kept as its list of rules.
#[derive(Debug, Clone)]
pub struct ReferenceAcl {
    rules: Vec<Rule>,
}

/// One client's rules as Mosquitto holds them: its section's list, `deny` rules first.
#[derive(Debug)]
pub struct ReferenceClient<'a> {
    acl: &'a ReferenceAcl,
    user: Option<String>,
    client_id: String,
    section: Vec<(TopicFilter, u8)>,
    patterns: Vec<(&'a str, u8)>,
}

/// The access wanted by a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Receiving (Mosquitto's `MOSQ_ACL_READ`).
    Read,
    /// Publishing (`MOSQ_ACL_WRITE`).
    Write,
}

impl ReferenceAcl {
    /// Parses an ACL file with the same parser as [`Acl`](super::Acl).
    pub fn parse(text: &[u8]) -> Result<Self, (usize, AclProblem)> {
        Ok(Self {
            rules: parse::parse(text)?,
        })
    }

    /// What Mosquitto's `acl__find_acls` does at CONNECT: finds the client's section.
    pub fn for_client(&self, user: Option<&str>, client_id: &str) -> ReferenceClient<'_> {
        let mine = |scope: &Scope| match (scope, user) {
            (Scope::Anonymous, None) => true,
            (Scope::User(name), Some(user)) => **name == *user,
            _ => false,
        };
        ReferenceClient {
            acl: self,
            user: user.map(str::to_owned),
            client_id: client_id.to_owned(),
            section: ordered(
                self.rules
                    .iter()
                    .filter(|rule| mine(&rule.scope))
                    .filter_map(|rule| {
                        // A `$share/...` rule matches only `$share` topics, refused before
                        // any rule is read; `TopicFilter` would read it as a shared filter.
                        let filter = TopicFilter::new(rule.filter.as_str()).ok()?;
                        (!filter.is_shared()).then_some((filter, rule.access))
                    }),
            ),
            patterns: ordered(
                self.rules
                    .iter()
                    .filter(|rule| rule.scope == Scope::Pattern)
                    .map(|rule| (rule.filter.as_str(), rule.access)),
            ),
        }
    }
}

/// Rules as Mosquitto's `add__acl` lists them: each `deny` at the front, grants appended.
fn ordered<T>(rules: impl Iterator<Item = (T, Access)>) -> Vec<(T, u8)> {
    let mut list = std::collections::VecDeque::new();
    for (filter, access) in rules {
        match access {
            Access::Deny => list.push_front((filter, 0)),
            Access::Read => list.push_back((filter, READ)),
            Access::Write => list.push_back((filter, WRITE)),
            Access::ReadWrite => list.push_back((filter, READ | WRITE)),
        }
    }
    list.into()
}

impl ReferenceClient<'_> {
    /// Mosquitto's answer for `topic`.
    pub fn check(&self, topic: &TopicName, wanted: Wanted) -> bool {
        let wanted = match wanted {
            Wanted::Read => READ,
            Wanted::Write => WRITE,
        };
        if !dollar_allows(topic.as_str(), wanted) {
            return false;
        }
        if self.section.is_empty() && !self.acl.rules.iter().any(|r| r.scope == Scope::Pattern) {
            return false;
        }
        for (filter, access) in &self.section {
            if topic.starts_with('$') && !filter.as_str().starts_with('$') {
                continue;
            }
            if matches(filter, topic) {
                if *access == 0 {
                    return false;
                }
                if access & wanted != 0 {
                    return true;
                }
            }
        }
        if self.patterns.is_empty() {
            return false;
        }
        if self.user.as_deref().is_some_and(|u| u.contains(['+', '#']))
            || self.client_id.contains(['+', '#'])
        {
            return false;
        }
        for &(pattern, access) in &self.patterns {
            let Some(local) = substitute(pattern, self.user.as_deref(), &self.client_id) else {
                continue;
            };
            // An empty or shared result matches no topic that reaches this point.
            let matched = TopicFilter::new(local)
                .is_ok_and(|filter| !filter.is_shared() && matches(&filter, topic));
            if matched {
                if access == 0 {
                    return false;
                }
                if access & wanted != 0 {
                    return true;
                }
            }
        }
        false
    }
}

/// Mosquitto's substitution loop: `%c` is the client id and `%u` the user name, anywhere;
/// `None` for a pattern naming `%u` when there is no user name (Mosquitto skips it).
fn substitute(pattern: &str, user: Option<&str>, client_id: &str) -> Option<String> {
    let [user_placeholder, client_placeholder] = PATTERN_PLACEHOLDERS;
    if user.is_none() && pattern.contains(user_placeholder) {
        return None;
    }
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with(client_placeholder) {
            out.push_str(client_id);
            rest = &rest[2..];
        } else if let (true, Some(user)) = (rest.starts_with(user_placeholder), user) {
            out.push_str(user);
            rest = &rest[2..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    Some(out)
}
