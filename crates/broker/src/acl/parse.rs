//! Mosquitto's `acl_file` syntax, read line by line as Mosquitto 2.0 reads it
//! (`aclfile__parse` in its `src/security_default.c`).
//!
//! - A line whose first character is `#` is a comment; a line holding only whitespace is
//!   skipped. Trailing whitespace (and the `\r` of a CRLF file) is ignored.
//! - Words are separated by spaces only (a tab inside the first words makes the line invalid,
//!   as in Mosquitto), and leading spaces are ignored.
//! - `topic [read|write|readwrite|deny] FILTER` adds a rule to the current section: the
//!   anonymous one (clients without a user name) before the first `user` line, then the
//!   section of the user named last. Without an access word the access is `readwrite`, so
//!   `topic read` is a `readwrite` rule for the topic `read`. FILTER is the rest of the line,
//!   spaces included.
//! - `pattern [read|write|readwrite|deny] FILTER` adds a rule for every client, wherever it
//!   is in the file, with `%u` and `%c` standing for the client's user name and id.
//! - `user NAME` starts (or continues: sections of the same name are one) the section of the
//!   user NAME, the rest of the line with surrounding whitespace removed.
//!
//! Anything else is an error naming the line, as is a filter Mosquitto refuses (a `+` or `#`
//! not filling its level). Where Mosquitto reads bytes, we also refuse a line that is not UTF-8
//! and a filter holding U+0000 (Mosquitto would cut the line there).

use rallymq_topic::FilterTemplate;

/// Placeholders of a `pattern` line, in the order of the values a check gives: user name,
/// client id.
pub(crate) const PATTERN_PLACEHOLDERS: [&str; 2] = ["%u", "%c"];

/// Why a line of an ACL file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AclProblem {
    /// The line starts with a word other than `topic`, `pattern` or `user` (a leading tab, or
    /// a comment after spaces, counts as such a word, as in Mosquitto).
    #[error("invalid line: {0:?} is not `topic`, `pattern` or `user`")]
    UnknownKeyword(String),
    /// `topic` or `pattern` with nothing after it.
    #[error("`{0}` without a topic")]
    MissingTopic(&'static str),
    /// The word before the filter is not an access type.
    #[error("invalid access type {0:?}: expected read, write, readwrite or deny")]
    InvalidAccess(String),
    /// The filter is not a valid topic filter.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The filter as written.
        topic: String,
        /// Why it is not valid.
        reason: rallymq_topic::Error,
    },
    /// `user` with nothing after it.
    #[error("`user` without a user name")]
    MissingUsername,
    /// The line is not well-formed UTF-8.
    #[error("the line is not UTF-8")]
    NotUtf8,
}

/// What a rule grants, or `Deny`, which refuses both and wins over grants of its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

/// Whom a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Clients without a user name: rules before the first `user` line.
    Anonymous,
    /// Clients with this user name.
    User(Box<str>),
    /// Every client (`pattern` lines), with `%u` and `%c` filled in.
    Pattern,
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) scope: Scope,
    pub(crate) access: Access,
    /// The filter; placeholders only in patterns (`%u` in a `topic` line is text).
    pub(crate) filter: FilterTemplate,
}

/// The rules of an ACL file, in file order, or the first line Mosquitto would refuse (its
/// number, from 1, and why).
pub(crate) fn parse(text: &[u8]) -> Result<Vec<Rule>, (usize, AclProblem)> {
    let mut rules = Vec::new();
    let mut user: Option<Box<str>> = None;
    for (index, line) in text.split(|&byte| byte == b'\n').enumerate() {
        parse_line(line, &mut user, &mut rules).map_err(|problem| (index + 1, problem))?;
    }
    Ok(rules)
}

fn parse_line(
    line: &[u8],
    user: &mut Option<Box<str>>,
    rules: &mut Vec<Rule>,
) -> Result<(), AclProblem> {
    let line = trim_end_space(line);
    if line.first() == Some(&b'#') {
        return Ok(());
    }
    let line = std::str::from_utf8(line).map_err(|_| AclProblem::NotUtf8)?;
    let Some((keyword, rest)) = next_word(line) else {
        return Ok(());
    };
    match keyword {
        "topic" | "pattern" => {
            let is_pattern = keyword == "pattern";
            let keyword = if is_pattern { "pattern" } else { "topic" };
            let (first, rest) = next_word(rest).ok_or(AclProblem::MissingTopic(keyword))?;
            // One word is the filter itself, with the default access.
            let (access, topic) = if rest.is_empty() {
                (Access::ReadWrite, first)
            } else {
                let access = match first {
                    "read" => Access::Read,
                    "write" => Access::Write,
                    "readwrite" => Access::ReadWrite,
                    "deny" => Access::Deny,
                    other => return Err(AclProblem::InvalidAccess(other.to_owned())),
                };
                (access, trim_space(rest))
            };
            let placeholders: &[&str] = if is_pattern {
                &PATTERN_PLACEHOLDERS
            } else {
                &[]
            };
            let filter = FilterTemplate::new(topic, placeholders).map_err(|reason| {
                AclProblem::InvalidTopic {
                    topic: topic.to_owned(),
                    reason,
                }
            })?;
            let scope = match (is_pattern, user.as_ref()) {
                (true, _) => Scope::Pattern,
                (false, None) => Scope::Anonymous,
                (false, Some(name)) => Scope::User(name.clone()),
            };
            rules.push(Rule {
                scope,
                access,
                filter,
            });
        }
        "user" => {
            let name = trim_space(rest);
            if name.is_empty() {
                return Err(AclProblem::MissingUsername);
            }
            *user = Some(name.into());
        }
        other => return Err(AclProblem::UnknownKeyword(other.to_owned())),
    }
    Ok(())
}

/// C's `isspace` in the "C" locale, which Mosquitto trims with.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fn trim_end_space(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|&byte| !is_space(byte))
        .map_or(0, |last| last + 1);
    &line[..end]
}

fn trim_space(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii() && is_space(c as u8))
}

/// The next word of `text` and what follows the one space ending it, as `strtok_r` with the
/// delimiter `" "` gives them: leading spaces skipped, `None` if only spaces are left.
fn next_word(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start_matches(' ');
    if text.is_empty() {
        return None;
    }
    Some(match text.split_once(' ') {
        Some((word, rest)) => (word, rest),
        None => (text, ""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<(Scope, Access, String)> {
        parse(text.as_bytes())
            .unwrap()
            .into_iter()
            .map(|rule| (rule.scope, rule.access, rule.filter.as_str().to_owned()))
            .collect()
    }

    fn error(text: &[u8]) -> (usize, AclProblem) {
        parse(text).unwrap_err()
    }

    fn user(name: &str) -> Scope {
        Scope::User(name.into())
    }

    #[test]
    fn sections_access_words_and_default_access() {
        let text = "\
# anonymous clients
topic read public/#
topic write drop/+
topic readwrite chat
topic deny public/secret
topic plain/default
user alice
topic alice/#
pattern write devices/%u/%c/#
user bob
topic read $SYS/#
user alice
topic deny alice/private
";
        assert_eq!(
            rules(text),
            [
                (Scope::Anonymous, Access::Read, "public/#".to_owned()),
                (Scope::Anonymous, Access::Write, "drop/+".to_owned()),
                (Scope::Anonymous, Access::ReadWrite, "chat".to_owned()),
                (Scope::Anonymous, Access::Deny, "public/secret".to_owned()),
                (
                    Scope::Anonymous,
                    Access::ReadWrite,
                    "plain/default".to_owned()
                ),
                (user("alice"), Access::ReadWrite, "alice/#".to_owned()),
                // A pattern is for everyone, wherever it stands.
                (Scope::Pattern, Access::Write, "devices/%u/%c/#".to_owned()),
                (user("bob"), Access::Read, "$SYS/#".to_owned()),
                // A second `user alice` continues alice's section.
                (user("alice"), Access::Deny, "alice/private".to_owned()),
            ]
        );
    }

    #[test]
    fn placeholders_only_in_patterns() {
        let parsed = parse(b"topic read a/%u\npattern read a/%u\n").unwrap();
        assert!(!parsed[0].filter.has_placeholders());
        assert!(parsed[1].filter.has_placeholders());
    }

    #[test]
    fn comments_blank_lines_spaces_and_line_ends_as_mosquitto_reads_them() {
        let text = "#comment\n\n   \n\t\n\r\n  topic   read   a b  \r\ntopic x\t\nuser  bob smith \n\
                    topic read\ntopic deny\nuser bob # not a comment\ntopic read \t c\nlast";
        let parsed = rules(&text[..text.len() - "last".len()]);
        assert_eq!(
            parsed,
            [
                // Leading spaces, runs of spaces, trailing whitespace and CR are skipped; the
                // filter is the rest of the line, inner spaces included.
                (Scope::Anonymous, Access::Read, "a b".to_owned()),
                (Scope::Anonymous, Access::ReadWrite, "x".to_owned()),
                // A user name is the rest of the line, trimmed.
                (user("bob smith"), Access::ReadWrite, "read".to_owned()),
                // One word is the filter: `topic deny` is readwrite on `deny`.
                (user("bob smith"), Access::ReadWrite, "deny".to_owned()),
                // `#` starts a comment only at the start of a line.
                (user("bob # not a comment"), Access::Read, "c".to_owned()),
            ]
        );
        // The last line needs no newline.
        assert_eq!(rules("topic a\ntopic b").len(), 2);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            error(b"topic a\ntopc read b\n"),
            (2, AclProblem::UnknownKeyword("topc".to_owned()))
        );
        // Mosquitto splits on spaces only: a tab-indented line starts with an unknown word,
        // and so does a comment after spaces.
        assert_eq!(
            error(b"\ttopic read a\n"),
            (1, AclProblem::UnknownKeyword("\ttopic".to_owned()))
        );
        assert_eq!(
            error(b"\n  # comment\n"),
            (2, AclProblem::UnknownKeyword("#".to_owned()))
        );
        assert_eq!(
            error(b"topic\tread\ta\n"),
            (1, AclProblem::UnknownKeyword("topic\tread\ta".to_owned()))
        );
        assert_eq!(
            error(b"TOPIC read a\n"),
            (1, AclProblem::UnknownKeyword("TOPIC".to_owned()))
        );
        assert_eq!(error(b"topic\n"), (1, AclProblem::MissingTopic("topic")));
        assert_eq!(
            error(b"#\npattern   \n"),
            (2, AclProblem::MissingTopic("pattern"))
        );
        assert_eq!(
            error(b"topic reed a\n"),
            (1, AclProblem::InvalidAccess("reed".to_owned()))
        );
        assert_eq!(
            error(b"topic READ a\n"),
            (1, AclProblem::InvalidAccess("READ".to_owned()))
        );
        assert_eq!(error(b"user\n"), (1, AclProblem::MissingUsername));
        assert_eq!(error(b"user   \t\n"), (1, AclProblem::MissingUsername));
        assert_eq!(
            error(b"topic read a/#/b\n"),
            (
                1,
                AclProblem::InvalidTopic {
                    topic: "a/#/b".to_owned(),
                    reason: rallymq_topic::Error::InvalidMultiLevelWildcard
                }
            )
        );
        assert_eq!(
            error(b"pattern read a/%u+\n"),
            (
                1,
                AclProblem::InvalidTopic {
                    topic: "a/%u+".to_owned(),
                    reason: rallymq_topic::Error::InvalidSingleLevelWildcard
                }
            )
        );
        assert_eq!(
            error(b"topic read a\0b\n"),
            (
                1,
                AclProblem::InvalidTopic {
                    topic: "a\0b".to_owned(),
                    reason: rallymq_topic::Error::NullCharacter
                }
            )
        );
        assert_eq!(
            error(b"topic read a\ntopic \xff\n"),
            (2, AclProblem::NotUtf8)
        );
        // A comment need not be UTF-8: Mosquitto never reads past its `#`.
        assert!(parse(b"# caf\xe9\n").unwrap().is_empty());
    }

    #[test]
    fn empty_file_has_no_rules() {
        assert!(parse(b"").unwrap().is_empty());
        assert!(parse(b"# only comments\n\n").unwrap().is_empty());
        // `user` lines alone add no rules.
        assert!(parse(b"user alice\nuser bob\n").unwrap().is_empty());
    }
}
