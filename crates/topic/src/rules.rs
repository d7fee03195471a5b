//! The rule index: filters with a value each, some holding placeholders that each query fills
//! in, found by the topic names they match or the filters they cover. Access-control lists are
//! made of such rules (Mosquitto's `pattern read devices/%u/#`).

use std::fmt;

use crate::filter::validate_wildcards;
use crate::name::validate_length;
use crate::store::{Edges, Interner, NONE, PendingBranches, level_at};
use crate::{Error, TopicFilter, TopicName};

/// The root node, which stands for the empty prefix.
const ROOT: u32 = 0;

/// A topic filter some of whose levels may hold placeholders, such as `devices/%u/#` or
/// `t/${clientid}`: the pattern of an access rule, for a [`RuleIndex`].
///
/// It follows the filter rules of MQTT (`+` fills a whole level, `#` only the whole last one,
/// not empty, at most 65,535 bytes, no U+0000), except that a `$share/` prefix means nothing
/// special: a rule is matched against topic names, and `$share/g/x` is one like any other.
///
/// ```
/// use rallymq_topic::FilterTemplate;
///
/// let rule = FilterTemplate::new("devices/%u/cmd-%c", &["%u", "%c"]).unwrap();
/// assert!(rule.has_placeholders());
/// assert_eq!(rule.as_str(), "devices/%u/cmd-%c");
/// assert!(FilterTemplate::new("devices/%u+", &["%u"]).is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct FilterTemplate {
    text: Box<str>,
    levels: Box<[TemplateLevel]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateLevel {
    Literal(Box<str>),
    Plus,
    Hash,
    /// A level holding at least one placeholder.
    Pattern(Box<[Piece]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    /// The value at this index of a query's bindings.
    Placeholder(usize),
}

impl FilterTemplate {
    /// Validates `text` as a filter and finds the placeholders in it: scanning from the left,
    /// each place where one of `placeholders` starts (the first listed, if several do) is that
    /// placeholder, numbered by its position in the list. Queries give the values in the same
    /// order.
    ///
    /// # Panics
    ///
    /// If a placeholder is empty or holds `/`, `+` or `#`: placeholders are chosen by the
    /// program, not read from input.
    pub fn new(text: &str, placeholders: &[&str]) -> Result<Self, Error> {
        for placeholder in placeholders {
            assert!(
                !placeholder.is_empty() && !placeholder.contains(['/', '+', '#']),
                "placeholder {placeholder:?} is empty or holds / + or #"
            );
        }
        validate_length(text)?;
        validate_wildcards(text)?;
        let levels = text
            .split('/')
            .map(|level| match level {
                "+" => TemplateLevel::Plus,
                "#" => TemplateLevel::Hash,
                _ => match split_placeholders(level, placeholders) {
                    Some(pieces) => TemplateLevel::Pattern(pieces),
                    None => TemplateLevel::Literal(level.into()),
                },
            })
            .collect();
        Ok(Self {
            text: text.into(),
            levels,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether any level holds a placeholder.
    pub fn has_placeholders(&self) -> bool {
        self.levels
            .iter()
            .any(|level| matches!(level, TemplateLevel::Pattern(_)))
    }
}

impl fmt::Debug for FilterTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for FilterTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The pieces of a level holding placeholders, or `None` if it holds none.
fn split_placeholders(level: &str, placeholders: &[&str]) -> Option<Box<[Piece]>> {
    let mut pieces = Vec::new();
    let mut text_start = 0;
    let mut position = 0;
    while position < level.len() {
        let found = placeholders
            .iter()
            .position(|placeholder| level[position..].starts_with(placeholder));
        match found {
            Some(index) => {
                if text_start < position {
                    pieces.push(Piece::Text(level[text_start..position].into()));
                }
                pieces.push(Piece::Placeholder(index));
                position += placeholders[index].len();
                text_start = position;
            }
            // Placeholders start with a character; step over the whole one here.
            None => position += level[position..].chars().next().map_or(1, char::len_utf8),
        }
    }
    if pieces.is_empty() {
        return None;
    }
    if text_start < level.len() {
        pieces.push(Piece::Text(level[text_start..].into()));
    }
    Some(pieces.into())
}

/// Filter templates with a value each, built once and then queried: which of them match a topic
/// name, and which cover a topic filter. Values of templates inserted twice are one value,
/// updated in place by [`RuleIndex::insert`], so a caller can merge the rules of a filter
/// (say, OR access bits).
///
/// Placeholder values come with each query, so one index serves every client of an ACL whose
/// rules name the client's user or id: a value may be empty or hold `/` (it then spans
/// levels, as a substituted string would), and a value holding `+` or `#`, or a missing one
/// (`None`), matches nothing.
///
/// Matching walks a trie of template levels, as [`SubscriptionIndex`](crate::SubscriptionIndex)
/// does: its cost depends on the topic's levels and the rules that match, not on how many rules
/// are stored, and it allocates nothing unless the rules branch more than eight ways at once
/// along one topic (a literal, `+` and placeholder levels side by side at each of many levels).
///
/// ```
/// use rallymq_topic::{FilterTemplate, RuleIndex, TopicFilter, TopicName};
///
/// const PLACEHOLDERS: [&str; 2] = ["%u", "%c"];
/// let mut rules: RuleIndex<u8> = RuleIndex::new();
/// *rules.insert(&FilterTemplate::new("devices/%u/#", &PLACEHOLDERS).unwrap()) |= 1;
/// *rules.insert(&FilterTemplate::new("status/+", &PLACEHOLDERS).unwrap()) |= 2;
///
/// let access = |topic: &str, user: Option<&str>| {
///     let mut bits = 0;
///     let bindings = [user, Some("client-1")];
///     rules.for_each_match(&TopicName::new(topic).unwrap(), &bindings, |v| bits |= *v);
///     bits
/// };
/// assert_eq!(access("devices/alice/temp", Some("alice")), 1);
/// assert_eq!(access("devices/alice/temp", Some("bob")), 0);
/// assert_eq!(access("devices/alice/temp", None), 0);
/// assert_eq!(access("status/x", None), 2);
///
/// // Covering: every topic the filter matches, the rule matches too.
/// let mut covering = 0;
/// let filter = TopicFilter::new("devices/bob/+").unwrap();
/// rules.for_each_covering(&filter, &[Some("bob"), None], |v| covering |= *v);
/// assert_eq!(covering, 1);
/// ```
pub struct RuleIndex<V> {
    nodes: Vec<Node<V>>,
    /// Literal children: (parent, interned level) -> child.
    edges: Edges,
    levels: Interner,
    len: usize,
}

struct Node<V> {
    plus: u32,
    hash: u32,
    literal_children: u32,
    /// Children through levels holding placeholders: few, so a list.
    patterns: Vec<(Box<[Piece]>, u32)>,
    value: Option<V>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Self {
            plus: NONE,
            hash: NONE,
            literal_children: 0,
            patterns: Vec::new(),
            value: None,
        }
    }
}

impl<V> Default for RuleIndex<V> {
    fn default() -> Self {
        Self {
            nodes: vec![Node::new()],
            edges: Edges::default(),
            levels: Interner::default(),
            len: 0,
        }
    }
}

impl<V> fmt::Debug for RuleIndex<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleIndex")
            .field("templates", &self.len)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl<V> RuleIndex<V> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many distinct templates hold a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no template is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `template`, created with `V::default()` if the template is new.
    pub fn insert(&mut self, template: &FilterTemplate) -> &mut V
    where
        V: Default,
    {
        let mut node_id = ROOT;
        for level in &template.levels {
            node_id = self.child_or_insert(node_id, level);
        }
        let value = &mut self.nodes[node_id as usize].value;
        if value.is_none() {
            self.len += 1;
        }
        value.get_or_insert_with(V::default)
    }

    fn child_or_insert(&mut self, node_id: u32, level: &TemplateLevel) -> u32 {
        let node = &self.nodes[node_id as usize];
        let existing = match level {
            TemplateLevel::Plus => node.plus,
            TemplateLevel::Hash => node.hash,
            TemplateLevel::Literal(text) => self
                .levels
                .get(text)
                .and_then(|level| self.edges.get(node_id, level))
                .unwrap_or(NONE),
            TemplateLevel::Pattern(pieces) => node
                .patterns
                .iter()
                .find(|(existing, _)| existing == pieces)
                .map_or(NONE, |&(_, child)| child),
        };
        if existing != NONE {
            return existing;
        }
        // Fewer nodes than template levels held in memory: far below 2^32.
        let child = u32::try_from(self.nodes.len()).expect("fewer than 2^32 rule nodes");
        self.nodes.push(Node::new());
        let node = &mut self.nodes[node_id as usize];
        match level {
            TemplateLevel::Plus => node.plus = child,
            TemplateLevel::Hash => node.hash = child,
            TemplateLevel::Pattern(pieces) => node.patterns.push((pieces.clone(), child)),
            TemplateLevel::Literal(text) => {
                node.literal_children += 1;
                let level = self.levels.acquire(text);
                self.edges.insert(node_id, level, child);
            }
        }
        child
    }

    /// Calls `visit` with the value of every template that matches `topic` once its
    /// placeholders take the values in `bindings` (index `i` for the `i`-th placeholder given
    /// to [`FilterTemplate::new`]), in no particular order.
    ///
    /// The same results as substituting the values into each template's text and testing
    /// [`matches()`](crate::matches): `#` matches the parent level, and templates starting
    /// with a wildcard do not match topics starting with `$` (MQTT-4.7.2-1).
    pub fn for_each_match<'a>(
        &'a self,
        topic: &TopicName,
        bindings: &[Option<&str>],
        visit: impl FnMut(&'a V),
    ) {
        self.walk(topic.as_str(), bindings, visit);
    }

    /// Calls `visit` with the value of every template that covers `filter` level by level once
    /// its placeholders take the values in `bindings`: a literal level of the filter is
    /// covered by the same text or `+`, its `+` by `+`, its `#` by `#`, and a `#` of the
    /// template covers whatever follows (the filter's end included, as `a/#` matches `a`).
    /// Templates starting with a wildcard do not cover filters starting with `$`. For a shared
    /// subscription the filter after `$share/{ShareName}/` is the one covered.
    ///
    /// A template that covers a filter matches every topic the filter matches, so a
    /// subscription to the filter receives nothing outside the template. (The converse does not
    /// always hold: `+/#` matches every topic `#` matches, but does not cover it level by
    /// level.)
    pub fn for_each_covering<'a>(
        &'a self,
        filter: &TopicFilter,
        bindings: &[Option<&str>],
        visit: impl FnMut(&'a V),
    ) {
        self.walk(filter.filter(), bindings, visit);
    }

    /// Both queries: a topic name is a filter without wildcard levels, so one walk serves
    /// both. A `+` level of `text` is followed only through `+` children, and its `#` only
    /// through `#` children, which are reported before looking at the level.
    fn walk<'a>(&'a self, text: &str, bindings: &[Option<&str>], mut visit: impl FnMut(&'a V)) {
        // A wildcard first level matches no topic starting with `$`; a filter starting with `$`
        // matches only such topics (its first level is literal).
        let system = text.starts_with('$');
        let end = text.len() + 1;
        let mut pending = PendingBranches::new();
        pending.push(ROOT, 0);
        while let Some((mut node_id, mut offset)) = pending.pop() {
            loop {
                let node = &self.nodes[node_id as usize];
                let wildcards_apply = !(system && node_id == ROOT);
                if wildcards_apply && node.hash != NONE {
                    if let Some(value) = &self.nodes[node.hash as usize].value {
                        visit(value);
                    }
                }
                if offset == end {
                    if let Some(value) = &node.value {
                        visit(value);
                    }
                    break;
                }
                let (level, next_offset) = level_at(text, offset);
                if level == "#" {
                    break;
                }
                for (pieces, child) in &node.patterns {
                    if let Some(after) = match_pieces(pieces, text, offset, bindings) {
                        pending.push(*child, after);
                    }
                }
                let literal = if level == "+" || node.literal_children == 0 {
                    None
                } else {
                    self.edges.literal(&self.levels, node_id, level)
                };
                let plus = if wildcards_apply { node.plus } else { NONE };
                let Some(next) = pending.follow(literal, plus, next_offset) else {
                    break;
                };
                node_id = next;
                offset = next_offset;
            }
        }
    }
}

/// Where the level after a placeholder level ends if `pieces`, filled from `bindings`, match
/// `text` from byte `offset` up to the end of a level (the filled text may span several
/// levels); `None` if they do not, or if a value they need is missing or holds a wildcard.
fn match_pieces(
    pieces: &[Piece],
    text: &str,
    offset: usize,
    bindings: &[Option<&str>],
) -> Option<usize> {
    let mut position = offset;
    for piece in pieces {
        let expected = match piece {
            Piece::Text(text) => text,
            Piece::Placeholder(index) => {
                let value = bindings.get(*index).copied().flatten()?;
                if value.contains(['+', '#']) {
                    return None;
                }
                value
            }
        };
        if !text[position..].starts_with(expected) {
            return None;
        }
        position += expected.len();
    }
    match text.as_bytes().get(position) {
        None => Some(text.len() + 1),
        Some(b'/') => Some(position + 1),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matches;
    use proptest::prelude::*;

    const PLACEHOLDERS: [&str; 2] = ["%u", "%c"];

    fn template(text: &str) -> FilterTemplate {
        FilterTemplate::new(text, &PLACEHOLDERS).unwrap()
    }

    fn index(rules: &[&str]) -> RuleIndex<Vec<usize>> {
        let mut index: RuleIndex<Vec<usize>> = RuleIndex::new();
        for (i, rule) in rules.iter().enumerate() {
            index.insert(&template(rule)).push(i);
        }
        index
    }

    /// The rule numbers a query reports, sorted.
    fn found<'a>(query: impl FnOnce(&mut dyn FnMut(&'a Vec<usize>))) -> Vec<usize> {
        let mut found = Vec::new();
        query(&mut |rules| found.extend(rules));
        found.sort_unstable();
        found
    }

    fn matching(
        index: &RuleIndex<Vec<usize>>,
        topic: &str,
        bindings: &[Option<&str>],
    ) -> Vec<usize> {
        let topic = TopicName::new(topic).unwrap();
        found(|visit| index.for_each_match(&topic, bindings, visit))
    }

    fn covering(
        index: &RuleIndex<Vec<usize>>,
        filter: &str,
        bindings: &[Option<&str>],
    ) -> Vec<usize> {
        let filter = TopicFilter::new(filter).unwrap();
        found(|visit| index.for_each_covering(&filter, bindings, visit))
    }

    #[test]
    fn templates_split_placeholders_anywhere_in_a_level() {
        let t = template("a/%u/x%cy/%%u/plain/+/#");
        assert_eq!(
            &*t.levels,
            [
                TemplateLevel::Literal("a".into()),
                TemplateLevel::Pattern([Piece::Placeholder(0)].into()),
                TemplateLevel::Pattern(
                    [
                        Piece::Text("x".into()),
                        Piece::Placeholder(1),
                        Piece::Text("y".into())
                    ]
                    .into()
                ),
                // As Mosquitto scans: the first `%` is text, then `%u` is a placeholder.
                TemplateLevel::Pattern([Piece::Text("%".into()), Piece::Placeholder(0)].into()),
                TemplateLevel::Literal("plain".into()),
                TemplateLevel::Plus,
                TemplateLevel::Hash,
            ]
        );
        assert!(!template("a/%x/%").has_placeholders());
        assert_eq!(
            FilterTemplate::new("a/#/b", &PLACEHOLDERS),
            Err(Error::InvalidMultiLevelWildcard)
        );
        assert_eq!(
            FilterTemplate::new("%u+", &PLACEHOLDERS),
            Err(Error::InvalidSingleLevelWildcard)
        );
        assert_eq!(FilterTemplate::new("", &PLACEHOLDERS), Err(Error::Empty));
        assert_eq!(
            FilterTemplate::new("a\0", &PLACEHOLDERS),
            Err(Error::NullCharacter)
        );
        // No shared-subscription syntax in rules: `$share/+/x` is a plain filter.
        assert!(FilterTemplate::new("$share/+/x", &PLACEHOLDERS).is_ok());
    }

    #[test]
    fn mqtt_4_7_1_1_hash_rule_matches_the_parent_level_and_everything_below() {
        let rules = index(&["a/#", "#", "a/+/#"]);
        assert_eq!(matching(&rules, "a", &[]), [0, 1]);
        assert_eq!(matching(&rules, "a/b/c", &[]), [0, 1, 2]);
        assert_eq!(matching(&rules, "b", &[]), [1]);
        assert_eq!(covering(&rules, "a/#", &[]), [0, 1]);
        assert_eq!(covering(&rules, "#", &[]), [1]);
        // `a/+/#` matches `a/x` too: its `#` covers the end of the filter.
        assert_eq!(covering(&rules, "a/+", &[]), [0, 1, 2]);
        assert_eq!(covering(&rules, "a/+/#", &[]), [0, 1, 2]);
        assert_eq!(covering(&rules, "a/+/+/#", &[]), [0, 1, 2]);
    }

    #[test]
    fn mqtt_4_7_2_1_wildcard_rules_do_not_reach_dollar_topics() {
        let rules = index(&["#", "+/x", "$SYS/#", "%u/#"]);
        assert_eq!(matching(&rules, "$SYS/x", &[None]), [2]);
        assert_eq!(matching(&rules, "$a/x", &[Some("$a")]), [3]);
        assert_eq!(matching(&rules, "a/x", &[Some("$a")]), [0, 1]);
        assert_eq!(covering(&rules, "$SYS/+", &[]), [2]);
        assert_eq!(covering(&rules, "+/x", &[]), [0, 1]);
    }

    #[test]
    fn placeholder_values_may_be_empty_or_span_levels_but_not_hold_wildcards() {
        let rules = index(&["p/%u/x", "c/pre-%c", "both/%u/%c"]);
        let alice = [Some("alice"), Some("id1")];
        assert_eq!(matching(&rules, "p/alice/x", &alice), [0]);
        assert_eq!(matching(&rules, "p/bob/x", &alice), Vec::<usize>::new());
        assert_eq!(matching(&rules, "c/pre-id1", &alice), [1]);
        assert_eq!(matching(&rules, "c/pre-id1x", &alice), Vec::<usize>::new());
        assert_eq!(matching(&rules, "both/alice/id1", &alice), [2]);
        // A missing user name matches nothing.
        assert_eq!(
            matching(&rules, "p/alice/x", &[None, Some("x")]),
            Vec::<usize>::new()
        );
        // Empty, and spanning levels.
        assert_eq!(matching(&rules, "p//x", &[Some(""), None]), [0]);
        assert_eq!(matching(&rules, "p/a/b/x", &[Some("a/b"), None]), [0]);
        assert_eq!(
            matching(&rules, "p/a/x", &[Some("a/b"), None]),
            Vec::<usize>::new()
        );
        // A value with a wildcard never matches: not a topic, and not a filter's wildcard.
        assert_eq!(
            covering(&rules, "p/+/x", &[Some("+"), None]),
            Vec::<usize>::new()
        );
        assert_eq!(covering(&rules, "p/a/x", &[Some("a"), None]), [0]);
    }

    #[test]
    fn covering_is_level_by_level() {
        let rules = index(&["a/+", "a/b", "+/+", "a/+/c"]);
        assert_eq!(covering(&rules, "a/b", &[]), [0, 1, 2]);
        assert_eq!(covering(&rules, "a/+", &[]), [0, 2]);
        // `a/#` also matches `a` and `a/b/c`, which `a/+` does not.
        assert_eq!(covering(&rules, "a/#", &[]), Vec::<usize>::new());
        assert_eq!(covering(&rules, "+/b", &[]), [2]);
        assert_eq!(covering(&rules, "$share/g/a/b", &[]), [0, 1, 2]);
    }

    #[test]
    fn inserting_a_template_again_updates_its_value() {
        let mut rules: RuleIndex<u8> = RuleIndex::new();
        *rules.insert(&template("a/+")) |= 1;
        *rules.insert(&template("a/+")) |= 4;
        *rules.insert(&template("a")) |= 2;
        assert_eq!(rules.len(), 2);
        let mut bits = Vec::new();
        rules.for_each_match(&TopicName::new("a/b").unwrap(), &[], |v| bits.push(*v));
        assert_eq!(bits, [5]);
    }

    /// The reference: placeholders substituted into the text, then the filter matcher. `None`
    /// when a placeholder has no usable value (the rule then matches nothing).
    fn substitute(rule: &str, bindings: &[Option<&str>]) -> Option<String> {
        let mut out = String::new();
        let mut rest = rule;
        while !rest.is_empty() {
            if let Some(index) = PLACEHOLDERS.iter().position(|p| rest.starts_with(p)) {
                let value = bindings.get(index).copied().flatten()?;
                if value.contains(['+', '#']) {
                    return None;
                }
                out.push_str(value);
                rest = &rest[PLACEHOLDERS[index].len()..];
            } else {
                let c = rest.chars().next().unwrap();
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        Some(out)
    }

    /// Level-by-level covering, stated recursively.
    fn covers(rule: &[&str], filter: &[&str]) -> bool {
        match (rule.first(), filter.first()) {
            (Some(&"#"), _) => true,
            (None, None) => true,
            (Some(_), None) | (None, Some(_)) => false,
            (Some(&"+"), Some(&level)) => level != "#" && covers(&rule[1..], &filter[1..]),
            (Some(&wanted), Some(&level)) => wanted == level && covers(&rule[1..], &filter[1..]),
        }
    }

    fn covers_filter(rule: &str, filter: &str) -> bool {
        if filter.starts_with('$') && rule.starts_with(['+', '#']) {
            return false;
        }
        let rule: Vec<&str> = rule.split('/').collect();
        let filter: Vec<&str> = filter.split('/').collect();
        covers(&rule, &filter)
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new()),
            Just("$s".to_owned()),
            Just("%u".to_owned()),
            Just("%c".to_owned()),
            Just("x%c".to_owned()),
            Just("%u%c".to_owned()),
        ]
    }

    fn rule_text() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![4 => level(), 1 => Just("+".to_owned())], 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut levels, hash)| {
                if hash {
                    levels.push("#".to_owned());
                }
                levels.join("/")
            })
            .prop_filter("a valid template", |text| !text.is_empty())
    }

    fn topic_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just(""),
                Just("$s"),
                Just("u"),
                Just("c"),
                Just("xc"),
                Just("u/c"),
            ],
            1..5,
        )
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a valid name", |text| !text.is_empty())
    }

    fn filter_text() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(
                prop_oneof![
                    Just("a"),
                    Just("b"),
                    Just(""),
                    Just("$s"),
                    Just("u"),
                    Just("c"),
                    Just("+"),
                ],
                1..4,
            ),
            any::<bool>(),
        )
            .prop_map(|(levels, hash)| {
                let mut text = levels.join("/");
                if hash {
                    text.push_str("/#");
                }
                text
            })
            .prop_filter("a valid filter", |text| {
                TopicFilter::new(text.as_str()).is_ok()
            })
    }

    fn binding() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("u".to_owned())),
            Just(Some("c".to_owned())),
            Just(Some(String::new())),
            Just(Some("u/c".to_owned())),
            Just(Some("+".to_owned())),
            Just(Some("$s".to_owned())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matching_agrees_with_substituting_then_matching(
            rules in prop::collection::vec(rule_text(), 0..12),
            topics in prop::collection::vec(topic_text(), 1..8),
            user in binding(),
            client in binding(),
        ) {
            let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
            let index = index(&refs);
            let bindings = [user.as_deref(), client.as_deref()];
            for topic in &topics {
                let name = TopicName::new(topic.as_str()).unwrap();
                let expected: Vec<usize> = rules
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| {
                        // A value may leave nothing (`%u` with an empty user name): no filter,
                        // which matches nothing.
                        substitute(rule, &bindings).is_some_and(|text| {
                            TopicFilter::new(text).is_ok_and(|filter| matches(&filter, &name))
                        })
                    })
                    .map(|(i, _)| i)
                    .collect();
                prop_assert_eq!(matching(&index, topic, &bindings), expected, "{}", topic);
            }
        }

        #[test]
        fn covering_agrees_with_the_recursive_statement_and_implies_containment(
            rules in prop::collection::vec(rule_text(), 0..12),
            filters in prop::collection::vec(filter_text(), 1..6),
            topics in prop::collection::vec(topic_text(), 1..16),
            user in binding(),
            client in binding(),
        ) {
            let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
            let index = index(&refs);
            let bindings = [user.as_deref(), client.as_deref()];
            for filter in &filters {
                let expected: Vec<usize> = rules
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| {
                        substitute(rule, &bindings).is_some_and(|text| covers_filter(&text, filter))
                    })
                    .map(|(i, _)| i)
                    .collect();
                let found = covering(&index, filter, &bindings);
                prop_assert_eq!(&found, &expected, "{}", filter);
                let parsed = TopicFilter::new(filter.as_str()).unwrap();
                for &i in &found {
                    let rule = TopicFilter::new(substitute(&rules[i], &bindings).unwrap()).unwrap();
                    for topic in &topics {
                        let name = TopicName::new(topic.as_str()).unwrap();
                        prop_assert!(!matches(&parsed, &name) || matches(&rule, &name),
                            "{} covers {} but not for {}", rules[i], filter, topic);
                    }
                }
            }
        }
    }
}
