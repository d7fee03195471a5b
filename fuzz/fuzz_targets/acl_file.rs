//! The Mosquitto `acl_file` parser and the compiled checks (`rallymq_broker::acl`).
//!
//! An input is a file, as raw bytes or as lines built from a few words of the syntax (`topic`,
//! `pattern`, `user`, access words, comments, spaces, tabs, CRLF) and filters made of levels
//! that collide (`a`, `b`, empty, `+`, `#`, `%u`, `%c`, `$SYS`, `$share`, and a few that are
//! not valid as levels), then one client (user name or none, client id) and topics and filters
//! to check for it.
//!
//! - `Acl::parse` returns a compiled ACL or `Error::AclFileSyntax` naming the file and a line
//!   of the text (counted from 1), never panics; the reference parser agrees.
//! - When it parses: `can_publish` and `can_receive` of every valid topic name equal Mosquitto's
//!   per-rule scan (`ReferenceAcl`, the `_reference` feature); `can_subscribe` of a filter whose
//!   filter part is one topic equals `can_receive` of that topic; a wildcard filter refused
//!   matches none of the input's topics the client may receive.
#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rallymq_broker::Error;
use rallymq_broker::acl::Acl;
use rallymq_broker::acl::reference::{ReferenceAcl, Wanted};
use rallymq_topic::{TopicFilter, TopicName};

const LEVELS: [&str; 14] = [
    "a", "b", "", "+", "#", "%u", "%c", "$SYS", "$share", "a b", "a+", "#b", "%", "\u{e9}",
];
const NAMES: [&str; 8] = ["alice", "bob", "", "a+", "#", "a/b", "%c", " x "];
const ACCESS: [&str; 7] = ["read", "write", "readwrite", "deny", "READ", "", "rw"];

#[derive(Arbitrary, Debug)]
enum Line {
    /// `topic` or `pattern` (`pattern` picks), an access word (or none), a filter.
    Rule {
        pattern: bool,
        access: Option<u8>,
        levels: Vec<u8>,
    },
    User(u8),
    Comment(String),
    /// Spaces and tabs, as `n` picks.
    Blank(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum File {
    Lines {
        lines: Vec<Line>,
        crlf: bool,
        /// Spaces before each line and after it.
        padding: (u8, u8),
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Text {
    Levels(Vec<u8>),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    file: File,
    user: Option<Text>,
    client_id: Text,
    topics: Vec<Text>,
}

fn levels(picks: &[u8]) -> String {
    picks
        .iter()
        .take(8)
        .map(|pick| LEVELS[usize::from(*pick) % LEVELS.len()])
        .collect::<Vec<_>>()
        .join("/")
}

fn pick(text: &Text, words: &[&str]) -> String {
    match text {
        // One level from `words`, or several levels from `LEVELS`.
        Text::Levels(picks) if picks.len() == 1 => {
            words[usize::from(picks[0]) % words.len()].into()
        }
        Text::Levels(picks) => levels(picks),
        Text::Raw(raw) => raw.clone(),
    }
}

fn file_text(file: &File) -> Vec<u8> {
    let (lines, crlf, (before, after)) = match file {
        File::Raw(bytes) => return bytes.clone(),
        File::Lines {
            lines,
            crlf,
            padding,
        } => (lines, *crlf, *padding),
    };
    let mut out = String::new();
    for line in lines.iter().take(32) {
        out.push_str(&" ".repeat(usize::from(before % 3)));
        match line {
            Line::Rule {
                pattern,
                access,
                levels: picks,
            } => {
                out.push_str(if *pattern { "pattern " } else { "topic " });
                if let Some(access) = access {
                    out.push_str(ACCESS[usize::from(*access) % ACCESS.len()]);
                    out.push(' ');
                }
                out.push_str(&levels(picks));
            }
            Line::User(name) => {
                out.push_str("user ");
                out.push_str(NAMES[usize::from(*name) % NAMES.len()]);
            }
            Line::Comment(comment) => {
                out.push('#');
                out.push_str(comment);
            }
            Line::Blank(n) => {
                for bit in 0..4 {
                    out.push(if n & (1 << bit) != 0 { '\t' } else { ' ' });
                }
            }
            Line::Raw(raw) => out.push_str(raw),
        }
        out.push_str(&" ".repeat(usize::from(after % 3)));
        out.push_str(if crlf { "\r\n" } else { "\n" });
    }
    out.into_bytes()
}

fuzz_target!(|input: Input| {
    let text = file_text(&input.file);
    let path = Path::new("fuzz.acl");
    let parsed = Acl::parse(&text, path);
    let reference = ReferenceAcl::parse(&text);
    let acl = match (parsed, reference) {
        (Ok(acl), Ok(reference)) => (acl, reference),
        (
            Err(Error::AclFileSyntax { line, problem, .. }),
            Err((reference_line, reference_problem)),
        ) => {
            // The lines of the text, as the parser counts them (a last line without its end
            // counts).
            let lines = text.split(|&b| b == b'\n').count();
            assert!(
                (1..=lines).contains(&line),
                "line {line} of a text of {lines} lines"
            );
            assert_eq!((line, &problem), (reference_line, &reference_problem));
            let message = Error::AclFileSyntax {
                path: path.to_owned(),
                line,
                problem,
            }
            .to_string();
            assert!(
                message.starts_with(&format!("fuzz.acl:{line}: ")),
                "{message}"
            );
            return;
        }
        (Err(other), _) => panic!("not a syntax error: {other:?}"),
        (Ok(_), Err(error)) => panic!("the reference parser refuses: {error:?}"),
    };
    let (acl, reference) = acl;
    let user = input.user.as_ref().map(|user| text_of_name(user));
    let client_id = text_of_name(&input.client_id);
    let ours = acl.for_client(user.as_deref(), &client_id, None);
    let theirs = reference.for_client(user.as_deref(), &client_id);
    let texts: Vec<String> = input
        .topics
        .iter()
        .take(16)
        .map(|topic| pick(topic, &LEVELS))
        .collect();
    let names: Vec<TopicName> = texts
        .iter()
        .filter_map(|text| TopicName::new(text.as_str()).ok())
        .collect();
    for name in &names {
        assert_eq!(
            ours.can_publish(name),
            theirs.check(name, Wanted::Write),
            "publish {name:?} by {user:?}/{client_id:?}"
        );
        assert_eq!(
            ours.can_receive(name),
            theirs.check(name, Wanted::Read),
            "receive {name:?} by {user:?}/{client_id:?}"
        );
    }
    for filter in texts
        .iter()
        .filter_map(|text| TopicFilter::new(text.as_str()).ok())
    {
        let granted = ours.can_subscribe(&filter);
        if !filter.filter().contains(['+', '#']) {
            if let Ok(topic) = TopicName::new(filter.filter()) {
                assert_eq!(
                    granted,
                    ours.can_receive(&topic),
                    "subscribe {filter:?} and receive {topic:?} by {user:?}/{client_id:?}"
                );
            }
        } else if !granted {
            for name in &names {
                assert!(
                    !(filter.matches(name) && ours.can_receive(name)),
                    "subscribe {filter:?} refused, yet {name:?} may be received"
                );
            }
        }
    }
});

/// A user name or client id: one of `NAMES`, or levels, or raw.
fn text_of_name(name: &Text) -> String {
    pick(name, &NAMES)
}
