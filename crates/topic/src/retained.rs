//! The retained-message index: which stored topic names a subscription's filter matches.

use std::fmt;
use std::iter::FusedIterator;

use crate::store::{Edges, Interner, NONE, Slab, level_at};
use crate::{TopicFilter, TopicName};

/// The root node, which stands for the empty prefix and is never freed.
const ROOT: u32 = 0;

/// Values stored by topic name (a broker's retained messages), queried with a topic filter.
///
/// The names form a trie of levels, so [`RetainedIndex::matching`] visits only the parts of
/// the trie the filter can reach: a literal level follows one child, `+` each child of the
/// current node, `#` the whole subtree below it. A query costs time in proportion to the
/// filter's levels plus the matches (plus the siblings a `+` has to look at), not to the number
/// of stored names.
///
/// ```
/// use rallymq_topic::{RetainedIndex, TopicFilter, TopicName};
///
/// let mut retained = RetainedIndex::new();
/// retained.insert(TopicName::new("site/1/temp").unwrap(), "21.5");
/// retained.insert(TopicName::new("site/2/temp").unwrap(), "19.0");
/// retained.insert(TopicName::new("site/2/door").unwrap(), "open");
/// retained.insert(TopicName::new("$SYS/uptime").unwrap(), "3600");
///
/// let filter = TopicFilter::new("site/+/temp").unwrap();
/// let mut found: Vec<_> = retained.matching(&filter).map(|(name, v)| (name.as_str(), *v)).collect();
/// found.sort();
/// assert_eq!(found, [("site/1/temp", "21.5"), ("site/2/temp", "19.0")]);
///
/// // `#` does not reach `$` topics (MQTT-4.7.2-1).
/// assert_eq!(retained.matching(&TopicFilter::new("#").unwrap()).count(), 3);
///
/// // An empty retained message deletes the retained message of its topic.
/// assert_eq!(retained.remove("site/2/door"), Some("open"));
/// assert_eq!(retained.len(), 3);
/// ```
pub struct RetainedIndex<V> {
    nodes: Slab<Node<V>>,
    edges: Edges,
    levels: Interner,
    len: usize,
}

struct Node<V> {
    parent: u32,
    level: u32,
    /// Position in the parent's `children`, so that unlinking is O(1).
    index_in_parent: u32,
    children: Vec<u32>,
    retained: Option<(TopicName, V)>,
}

impl<V> Node<V> {
    fn new(parent: u32, level: u32, index_in_parent: u32) -> Self {
        Self {
            parent,
            level,
            index_in_parent,
            children: Vec::new(),
            retained: None,
        }
    }
}

impl<V> Default for RetainedIndex<V> {
    fn default() -> Self {
        let mut nodes = Slab::new();
        let root = nodes.alloc(Node::new(NONE, NONE, 0));
        debug_assert_eq!(root, ROOT);
        Self {
            nodes,
            edges: Edges::default(),
            levels: Interner::default(),
            len: 0,
        }
    }
}

impl<V> fmt::Debug for RetainedIndex<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedIndex")
            .field("names", &self.len)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl<V> RetainedIndex<V> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many names hold a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Gives back memory kept for reuse after names were removed: the spare room of the hash
    /// tables and the node pages past the last node in use (nodes in use never move). Costs
    /// time in proportion to the index.
    pub fn shrink_to_fit(&mut self) {
        self.nodes.shrink_to_fit();
        self.edges.shrink_to_fit();
        self.levels.shrink_to_fit();
    }

    /// Whether no name holds a value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` under `name`, returning the value it replaces.
    pub fn insert(&mut self, name: TopicName, value: V) -> Option<V> {
        let mut node_id = ROOT;
        for level in name.levels() {
            let existing = self
                .levels
                .get(level)
                .and_then(|level| self.edges.get(node_id, level));
            node_id = match existing {
                Some(child) => child,
                None => {
                    let level = self.levels.acquire(level);
                    let parent = self.nodes.get(node_id);
                    // A node has fewer children than there are nodes (< 2^31).
                    let index_in_parent = parent.children.len() as u32;
                    let child = self.nodes.alloc(Node::new(node_id, level, index_in_parent));
                    self.nodes.get_mut(node_id).children.push(child);
                    self.edges.insert(node_id, level, child);
                    child
                }
            };
        }
        let retained = &mut self.nodes.get_mut(node_id).retained;
        if let Some((_, old)) = retained {
            return Some(std::mem::replace(old, value));
        }
        *retained = Some((name, value));
        self.len += 1;
        None
    }

    /// The value stored under `name`.
    pub fn get(&self, name: &str) -> Option<&V> {
        let node = self.nodes.get(self.find(name)?);
        node.retained.as_ref().map(|(_, value)| value)
    }

    /// Removes the value stored under `name`, returning it.
    pub fn remove(&mut self, name: &str) -> Option<V> {
        let node_id = self.find(name)?;
        let (_, value) = self.nodes.get_mut(node_id).retained.take()?;
        self.len -= 1;
        self.prune(node_id);
        Some(value)
    }

    /// Every stored name that `filter` matches, with its value, in no particular order.
    ///
    /// For a shared subscription the filter part after `$share/{ShareName}/` is used (MQTT 5
    /// sends no retained messages to a new shared subscription, a broker's decision). Filters
    /// whose first level is a wildcard skip names starting with `$` (MQTT-4.7.2-1).
    /// Allocates one small stack per query, which grows with the branches pending.
    pub fn matching<'a>(&'a self, filter: &'a TopicFilter) -> RetainedMatches<'a, V> {
        RetainedMatches {
            index: self,
            filter: filter.filter(),
            stack: vec![Frame::Filter {
                node: ROOT,
                offset: 0,
            }],
        }
    }

    fn find(&self, name: &str) -> Option<u32> {
        let mut node_id = ROOT;
        for level in name.split('/') {
            node_id = self.edges.get(node_id, self.levels.get(level)?)?;
        }
        Some(node_id)
    }

    fn prune(&mut self, mut node_id: u32) {
        while node_id != ROOT {
            let node = self.nodes.get_mut(node_id);
            if node.retained.is_some() || !node.children.is_empty() || node.parent == NONE {
                return;
            }
            let (parent, level, index) = (node.parent, node.level, node.index_in_parent as usize);
            *node = Node::new(NONE, NONE, 0);
            self.nodes.free(node_id);
            let siblings = &mut self.nodes.get_mut(parent).children;
            siblings.swap_remove(index);
            if let Some(&moved) = siblings.get(index) {
                self.nodes.get_mut(moved).index_in_parent = index as u32;
            }
            let siblings = &mut self.nodes.get_mut(parent).children;
            if siblings.capacity() > 4 && siblings.len() <= siblings.capacity() / 4 {
                siblings.shrink_to(siblings.len() * 2);
            }
            self.edges.remove(parent, level);
            self.levels.release(level);
            node_id = parent;
        }
    }

    /// Whether the child `node_id` of the root is a `$` level, which wildcards skip.
    fn is_system(&self, node_id: u32) -> bool {
        self.levels
            .text(self.nodes.get(node_id).level)
            .starts_with('$')
    }
}

/// Work left in a [`RetainedMatches`] walk.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// Match the filter levels from byte `offset` on against the subtree at `node`.
    Filter { node: u32, offset: u32 },
    /// Everything stored at `node` and below matches (the filter ended in `#`).
    Subtree { node: u32 },
}

/// The names matching a filter, with their values: see [`RetainedIndex::matching`].
pub struct RetainedMatches<'a, V> {
    index: &'a RetainedIndex<V>,
    filter: &'a str,
    stack: Vec<Frame>,
}

impl<V> fmt::Debug for RetainedMatches<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedMatches")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl<'a, V> Iterator for RetainedMatches<'a, V> {
    type Item = (&'a TopicName, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.index;
        while let Some(frame) = self.stack.pop() {
            let (node_id, offset) = match frame {
                Frame::Subtree { node } => {
                    let node = index.nodes.get(node);
                    self.stack.extend(
                        node.children
                            .iter()
                            .map(|&child| Frame::Subtree { node: child }),
                    );
                    if let Some((name, value)) = &node.retained {
                        return Some((name, value));
                    }
                    continue;
                }
                Frame::Filter { node, offset } => (node, offset as usize),
            };
            let node = index.nodes.get(node_id);
            if offset == self.filter.len() + 1 {
                if let Some((name, value)) = &node.retained {
                    return Some((name, value));
                }
                continue;
            }
            let (level, next_offset) = level_at(self.filter, offset);
            let skip_system = node_id == ROOT;
            match level {
                "#" => {
                    let children = node.children.iter().copied();
                    self.stack.extend(
                        children
                            .filter(|&child| !(skip_system && index.is_system(child)))
                            .map(|child| Frame::Subtree { node: child }),
                    );
                    // `prefix/#` also matches `prefix` itself.
                    if let Some((name, value)) = &node.retained {
                        return Some((name, value));
                    }
                }
                "+" => {
                    let children = node.children.iter().copied();
                    // Offsets are at most MAX_TOPIC_LEN + 1.
                    let offset = next_offset as u32;
                    self.stack.extend(
                        children
                            .filter(|&child| !(skip_system && index.is_system(child)))
                            .map(|child| Frame::Filter {
                                node: child,
                                offset,
                            }),
                    );
                }
                literal => {
                    let child = index
                        .levels
                        .get(literal)
                        .and_then(|level| index.edges.get(node_id, level));
                    if let Some(child) = child {
                        self.stack.push(Frame::Filter {
                            node: child,
                            offset: next_offset as u32,
                        });
                    }
                }
            }
        }
        None
    }
}

impl<V> FusedIterator for RetainedMatches<'_, V> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(names: &[&str]) -> RetainedIndex<usize> {
        let mut index = RetainedIndex::new();
        for (position, name) in names.iter().enumerate() {
            assert_eq!(index.insert(TopicName::new(*name).unwrap(), position), None);
        }
        index
    }

    fn query(index: &RetainedIndex<usize>, filter: &str) -> Vec<String> {
        let filter = TopicFilter::new(filter).unwrap();
        let mut names: Vec<String> = index
            .matching(&filter)
            .map(|(name, _)| name.to_string())
            .collect();
        names.sort();
        names
    }

    const SPORT: &[&str] = &[
        "sport",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "sport/tennis/player2",
        "sport/",
        "/finance",
        "$SYS/monitor/Clients",
        "$SYS",
    ];

    #[test]
    fn mqtt_4_7_1_1_multi_level_wildcard_returns_parent_and_subtree() {
        let index = index(SPORT);
        assert_eq!(
            query(&index, "sport/tennis/player1/#"),
            [
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon"
            ]
        );
        assert_eq!(query(&index, "sport/#").len(), 7);
        assert_eq!(query(&index, "#").len(), 8);
    }

    #[test]
    fn mqtt_4_7_1_2_single_level_wildcard_returns_one_level() {
        let index = index(SPORT);
        assert_eq!(
            query(&index, "sport/tennis/+"),
            ["sport/tennis/player1", "sport/tennis/player2"]
        );
        assert_eq!(query(&index, "sport/+"), ["sport/", "sport/tennis"]);
        assert_eq!(query(&index, "+/+"), ["/finance", "sport/", "sport/tennis"]);
        assert_eq!(query(&index, "/+"), ["/finance"]);
        assert_eq!(query(&index, "+"), ["sport"]);
        assert_eq!(query(&index, "+/tennis/#").len(), 5);
    }

    #[test]
    fn mqtt_4_7_2_1_wildcard_first_level_skips_dollar_names() {
        let index = index(SPORT);
        assert_eq!(query(&index, "+/monitor/Clients"), Vec::<String>::new());
        assert_eq!(query(&index, "$SYS/#"), ["$SYS", "$SYS/monitor/Clients"]);
        assert_eq!(query(&index, "$SYS/+/Clients"), ["$SYS/monitor/Clients"]);
        assert_eq!(query(&index, "$share/g/$SYS/#").len(), 2);
        assert!(!query(&index, "#").iter().any(|name| name.starts_with('$')));
    }

    #[test]
    fn replace_remove_and_prune() {
        let mut index = index(SPORT);
        let nodes_before = index.nodes.len();
        assert_eq!(index.insert(TopicName::new("sport").unwrap(), 99), Some(0));
        assert_eq!(index.get("sport"), Some(&99));
        assert_eq!(index.insert(TopicName::new("a/b/c").unwrap(), 5), None);
        assert_eq!(index.remove("a/b"), None);
        assert_eq!(index.remove("a/b/c"), Some(5));
        assert_eq!(index.remove("a/b/c"), None);
        assert_eq!(index.nodes.len(), nodes_before);
        assert_eq!(index.levels.get("c"), None);
        for name in SPORT {
            assert!(index.remove(name).is_some());
        }
        assert!(index.is_empty());
        assert_eq!(index.nodes.len(), 1);
        assert_eq!(query(&index, "#"), Vec::<String>::new());
    }
}
