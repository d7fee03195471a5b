//! Authorization: who may publish, subscribe to and receive what.
//!
//! An [`Acl`] is compiled once from Mosquitto's `acl_file` (or allows everything, when there is
//! none); each connection gets a [`ClientAcl`] from [`Acl::for_client`], with the rules of its
//! token if it brought some ([`ClientRules`]), and asks it about every PUBLISH, SUBSCRIBE and
//! delivery. A check is a walk of a compiled index ([`rallymq_topic::RuleIndex`]): it does not
//! allocate and does not look at rules that cannot match.
//!
//! # Mosquitto's semantics, as Mosquitto 2.0 applies them
//!
//! The file is read as Mosquitto reads its `acl_file`:
//!
//! - A line whose first character is `#` is a comment; a line holding only whitespace is
//!   skipped. Trailing whitespace (and the `\r` of a CRLF file) is ignored.
//! - Words are separated by spaces only, leading spaces ignored (a tab inside the first words
//!   makes the line invalid, as in Mosquitto).
//! - `topic [read|write|readwrite|deny] FILTER` adds a rule to the current section: the
//!   anonymous one (clients without a user name) before the first `user` line, then the
//!   section of the user named last. Without an access word the access is `readwrite` (so
//!   `topic read` is a `readwrite` rule for the topic `read`). FILTER is the rest of the line,
//!   spaces included.
//! - `pattern [read|write|readwrite|deny] FILTER` adds a rule for every client, wherever it
//!   stands, with `%u` and `%c` standing for the client's user name and id.
//! - `user NAME` starts the section of the user NAME (the rest of the line, trimmed); a second
//!   section of the same name continues the first.
//! - Anything else, or a filter with a `+` or `#` not filling its level, is an error naming
//!   the file and line ([`Error::AclFileSyntax`], with an [`AclProblem`]).
//!
//! A check goes, in order:
//!
//! 1. **`$` topics, before any rule, with or without a file** (Mosquitto's `acl__check_dollar`):
//!    publishing to a topic starting with `$SYS` is refused, except
//!    `$SYS/broker/connection/+/state` (which bridges use, and which the rules must still
//!    grant); publishing to or receiving a topic starting with `$share` is refused.
//! 2. **The client's section**: the rules of its user's `user` section, or the anonymous
//!    section for a client without a user name (a user without a section has none; the
//!    anonymous rules are not theirs). A matching `deny` refuses; otherwise a matching rule
//!    granting the access (`read` to receive, `write` to publish) allows.
//! 3. **Patterns**, with `%u` and `%c` replaced by the user name and client id (anywhere in
//!    the filter, as Mosquitto's code does, though its manual asks for whole levels; a value
//!    may hold `/`). A pattern naming `%u` does not apply to a client without a user name. If
//!    the file has any pattern and the user name or client id holds `+` or `#`, the client is
//!    refused here (such a name could widen a pattern). Again a matching `deny` refuses and a
//!    matching grant allows.
//! 4. Otherwise refused; so a file without rules refuses everything.
//!
//! Filters match as in MQTT: `#` matches its parent level, wildcard first levels do not match
//! `$` topics (so `topic read #` does not grant `$SYS`).
//!
//! **SUBSCRIBE is checked against the file only where the answer is certain.** Mosquitto 2.0's
//! file check grants every subscription (its code says "FIXME - implement ACL subscription
//! strings") and checks `read` on each message delivered, retained messages included: a client
//! subscribed to `#` receives the topics it may read. We do the same for deliveries
//! ([`ClientAcl::can_receive`] is the check to make for each, wills and retained messages
//! included), but [`ClientAcl::can_subscribe`] also refuses a subscription that could never
//! deliver anything, so that the client is told (0x87, 3.1.1: 0x80) instead of waiting for
//! nothing: a filter without wildcards whose topic the client may not read, and a filter a
//! `deny` rule covers whole (section first, then patterns, as for messages) unless a rule of
//! the client's token allows receiving a topic the filter matches.
//!
//! The broker is expected to apply the results as Mosquitto does: a refused PUBLISH is
//! acknowledged and dropped (MQTT 5: PUBACK or PUBREC with 0x87 Not authorized; 3.1.1: the
//! ordinary acknowledgement), a refused subscription gets 0x87 (5.0) or 0x80 (3.1.1) in its
//! SUBACK, a will is published only if [`ClientAcl::can_publish`] allows its topic when it is
//! sent (Mosquitto 2.0.11 accepts the CONNECT and drops the will then), and a message is
//! delivered only where [`ClientAcl::can_receive`] allows its topic.
//!
//! Where we differ from Mosquitto 2.0.11: the file must be UTF-8 (a line that is not is
//! refused, naming it) and a filter holding U+0000 is refused (Mosquitto would read the line
//! only up to it).
//!
//! # Token rules
//!
//! Rules from a client's token ([`ClientRules`], EMQX's `acl` claim) are checked after step 1
//! and before the file, first match deciding, as EMQX checks them before its authorizers;
//! what they leave undecided goes on to the file (or is refused, for allow-lists).

mod parse;
mod token;

#[cfg(any(test, feature = "_reference"))]
pub mod reference;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rallymq_topic::{RuleIndex, TopicFilter, TopicName};

use crate::Error;
pub use parse::AclProblem;
use parse::{Access, Rule, Scope};
use token::TokenAcl;
pub use token::{Action, ClientRules, Permission};

/// Access bits merged in the index: every rule of a filter and scope is one value.
const READ: u8 = 1;
const WRITE: u8 = 2;
const DENY: u8 = 4;

/// The authorization rules of a broker, compiled: everything allowed ([`Acl::allow_all`]), or
/// a Mosquitto ACL file. Cheap to clone; connections share it.
#[derive(Debug, Clone)]
pub struct Acl {
    file: Option<Arc<FileAcl>>,
}

/// An ACL file, indexed per scope.
#[derive(Debug)]
struct FileAcl {
    /// One index per section: the anonymous one and each user's.
    sections: Vec<RuleIndex<u8>>,
    anonymous: Option<usize>,
    users: HashMap<Box<str>, usize>,
    patterns: RuleIndex<u8>,
    /// Whether a pattern holds `%u` or `%c`, so that clients must keep theirs.
    patterns_named: bool,
}

impl Acl {
    /// No ACL file: everything is allowed but what Mosquitto refuses to everyone (publishing to
    /// `$SYS`, publishing to and receiving `$share` topics).
    pub fn allow_all() -> Self {
        Self { file: None }
    }

    /// Reads and compiles Mosquitto's `acl_file` at `path`.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read(path).map_err(|source| Error::AclFileRead {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Compiles the text of an ACL file; `path` names it in errors.
    pub fn parse(text: &[u8], path: &Path) -> Result<Self, Error> {
        let rules = parse::parse(text).map_err(|(line, problem)| Error::AclFileSyntax {
            path: path.to_owned(),
            line,
            problem,
        })?;
        Ok(Self::compile(&rules))
    }

    fn compile(rules: &[Rule]) -> Self {
        let mut file = FileAcl {
            sections: Vec::new(),
            anonymous: None,
            users: HashMap::new(),
            patterns: RuleIndex::new(),
            patterns_named: false,
        };
        for rule in rules {
            let bits = match rule.access {
                Access::Read => READ,
                Access::Write => WRITE,
                Access::ReadWrite => READ | WRITE,
                Access::Deny => DENY,
            };
            let index = match &rule.scope {
                Scope::Pattern => {
                    file.patterns_named |= rule.filter.has_placeholders();
                    &mut file.patterns
                }
                Scope::Anonymous => {
                    let section = *file.anonymous.get_or_insert_with(|| {
                        file.sections.push(RuleIndex::new());
                        file.sections.len() - 1
                    });
                    &mut file.sections[section]
                }
                Scope::User(name) => {
                    let section = *file.users.entry(name.clone()).or_insert_with(|| {
                        file.sections.push(RuleIndex::new());
                        file.sections.len() - 1
                    });
                    &mut file.sections[section]
                }
            };
            *index.insert(&rule.filter) |= bits;
        }
        Self {
            file: Some(Arc::new(file)),
        }
    }

    /// The checks of one connection: its user name (`None` for an anonymous client), client id
    /// and the rules its token carries, if any. When the ACL is reloaded, [`Acl::rebind`] gives
    /// a connection the new file's checks.
    pub fn for_client(
        &self,
        user: Option<&str>,
        client_id: &str,
        token: Option<ClientRules>,
    ) -> ClientAcl {
        let token = token.map(|rules| Arc::new(TokenAcl::compile(rules, user, client_id)));
        self.bind(user, client_id, token)
    }

    /// `client`'s checks with this (reloaded) file's rules; its token's rules stay as they
    /// were: the token was not presented again.
    pub fn rebind(&self, client: &ClientAcl, user: Option<&str>, client_id: &str) -> ClientAcl {
        self.bind(user, client_id, client.token.clone())
    }

    fn bind(&self, user: Option<&str>, client_id: &str, token: Option<Arc<TokenAcl>>) -> ClientAcl {
        let Some(file) = &self.file else {
            return ClientAcl {
                file: None,
                section: None,
                patterns: Patterns::None,
                token,
            };
        };
        let section = match user {
            Some(user) => file.users.get(user).copied(),
            None => file.anonymous,
        };
        let patterns = if file.patterns.is_empty() {
            Patterns::None
        } else if user.is_some_and(is_dangerous) || is_dangerous(client_id) {
            Patterns::Refused
        } else if file.patterns_named {
            Patterns::For {
                user: user.map(Into::into),
                client_id: client_id.into(),
            }
        } else {
            Patterns::For {
                user: None,
                client_id: Box::default(),
            }
        };
        ClientAcl {
            file: Some(Arc::clone(file)),
            section,
            patterns,
            token,
        }
    }
}

/// Whether a user name or client id could widen a pattern, which Mosquitto refuses.
fn is_dangerous(name: &str) -> bool {
    name.contains(['+', '#'])
}

/// The authorization checks of one connection, from [`Acl::for_client`]. Each check is an index
/// walk and allocates nothing.
#[derive(Debug, Clone)]
pub struct ClientAcl {
    file: Option<Arc<FileAcl>>,
    section: Option<usize>,
    patterns: Patterns,
    token: Option<Arc<TokenAcl>>,
}

/// How the file's patterns apply to a client.
#[derive(Debug, Clone)]
enum Patterns {
    /// The file has none (or there is no file).
    None,
    /// The client's user name or client id holds a wildcard.
    Refused,
    /// With these values for `%u` and `%c` (empty when no pattern names them).
    For {
        user: Option<Box<str>>,
        client_id: Box<str>,
    },
}

impl ClientAcl {
    /// Whether the client may publish to `topic` (its will included).
    pub fn can_publish(&self, topic: &TopicName) -> bool {
        if !dollar_allows(topic.as_str(), WRITE) {
            return false;
        }
        if let Some(decision) = self.token.as_ref().and_then(|token| token.publish(topic)) {
            return decision;
        }
        self.file_allows(topic, WRITE)
    }

    /// Whether the client may receive a message published to `topic`: checked for each
    /// delivery, retained messages and wills included.
    pub fn can_receive(&self, topic: &TopicName) -> bool {
        if !dollar_allows(topic.as_str(), READ) {
            return false;
        }
        if let Some(decision) = self.token.as_ref().and_then(|token| token.receive(topic)) {
            return decision;
        }
        self.file_allows(topic, READ)
    }

    /// Whether the client may subscribe to `filter`: token rules decide first; the file
    /// refuses a subscription that could never deliver anything — a filter without wildcards
    /// whose topic the client may not read, or one a `deny` rule covers whole — and grants the
    /// others, whose messages [`ClientAcl::can_receive`] then checks one by one (Mosquitto 2.0
    /// grants every subscription and only checks deliveries).
    pub fn can_subscribe(&self, filter: &TopicFilter) -> bool {
        if let Some(decision) = self
            .token
            .as_ref()
            .and_then(|token| token.subscribe(filter))
        {
            return decision;
        }
        let Some(file) = &self.file else {
            return true;
        };
        let text = filter.filter();
        if !text.contains(['+', '#']) {
            return TopicName::new(text).map_or(true, |topic| self.can_receive(&topic));
        }
        // A token rule may allow receiving part of what the file refuses whole.
        if self
            .token
            .as_ref()
            .is_some_and(|token| token.may_allow_receiving_within(filter))
        {
            return true;
        }
        // As in `file_allows`: the section's rules first, then the patterns.
        let mut bits = 0;
        if let Some(section) = self.section {
            file.sections[section].for_each_covering(filter, &[], |rule| bits |= rule);
        }
        if bits & (DENY | READ) != 0 {
            return bits & DENY == 0;
        }
        let Patterns::For { user, client_id } = &self.patterns else {
            return true;
        };
        let bindings = [user.as_deref(), Some(&**client_id)];
        file.patterns
            .for_each_covering(filter, &bindings, |rule| bits |= rule);
        bits & DENY == 0
    }

    /// Steps 2 to 4 of the check (see the module docs).
    fn file_allows(&self, topic: &TopicName, wanted: u8) -> bool {
        let Some(file) = &self.file else {
            return true;
        };
        let mut bits = 0;
        if let Some(section) = self.section {
            file.sections[section].for_each_match(topic, &[], |rule| bits |= rule);
        }
        if bits & DENY != 0 {
            return false;
        }
        if bits & wanted != 0 {
            return true;
        }
        let Patterns::For { user, client_id } = &self.patterns else {
            return false;
        };
        let mut bits = 0;
        let bindings = [user.as_deref(), Some(&**client_id)];
        file.patterns
            .for_each_match(topic, &bindings, |rule| bits |= rule);
        bits & DENY == 0 && bits & wanted != 0
    }
}

/// Whether any client may publish to `topic` (when no ACL applies to it): all but `$SYS`
/// (bar a bridge's connection state) and `$share` topics.
pub(crate) fn everyone_may_publish(topic: &TopicName) -> bool {
    dollar_allows(topic.as_str(), WRITE)
}

/// Whether any client may receive a message on `topic` (when no ACL applies to it): all but
/// `$share` topics.
pub(crate) fn everyone_may_receive(topic: &TopicName) -> bool {
    dollar_allows(topic.as_str(), READ)
}

/// Mosquitto's checks of `$` topics, made before any rule: no client publishes to `$SYS`
/// (but for a bridge's connection state), nor publishes to or receives `$share` topics.
/// Prefixes, as Mosquitto compares them: `$SYSTEM/x` counts as `$SYS`.
fn dollar_allows(topic: &str, wanted: u8) -> bool {
    if !topic.starts_with('$') {
        return true;
    }
    if topic.starts_with("$SYS") {
        return wanted != WRITE
            || topic
                .strip_prefix("$SYS/broker/connection/")
                .and_then(|rest| rest.strip_suffix("/state"))
                .is_some_and(|client| !client.contains('/'));
    }
    !topic.starts_with("$share")
}

#[cfg(test)]
mod tests;
