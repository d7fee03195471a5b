//! The subscription index: which subscriptions match a published topic name.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::exact::ExactFilters;
use crate::filter::SHARE_PREFIX;
use crate::store::{Edges, ID_LIMIT, Interner, NONE, PendingBranches, Slab, level_at};
use crate::{TopicFilter, TopicName};

/// The root node, which stands for the empty prefix and is never freed.
const ROOT: u32 = 0;
/// The `level` of a node reached through `+`.
const PLUS: u32 = NONE - 1;
/// The `level` of a node reached through `#`.
const HASH: u32 = NONE - 2;
/// Marks a reverse-index entry that points at shared groups rather than ordinary subscribers.
const SHARED_BIT: u32 = ID_LIMIT;
/// Marks a reverse-index entry that names an exact filter, by the upper 63 bits of its hash
/// (the lowest is always set, see [`ExactFilters::hash`]), rather than a trie node.
const EXACT_KEY: u64 = 1 << 63;

/// Every subscription of a broker, indexed for matching published topic names.
///
/// `S` identifies a subscriber (a client id, a session key: something cheap to clone, since the
/// index keeps one copy per subscription plus one per subscriber) and `D` is what the broker
/// keeps per subscription (granted QoS, No Local, Retain As Published, the subscription
/// identifier, ...).
///
/// One subscriber has at most one subscription per filter: inserting the same subscriber and
/// filter again replaces the data (MQTT-3.8.4-3). `a/b` and `$share/g/a/b` are different filters,
/// as are `$share/g/a/b` and `$share/h/a/b`.
///
/// Ordinary subscriptions to filters without wildcards are found with one hash probe of the whole
/// topic name. The other filters are in a trie of filter levels: matching follows at each level
/// the literal child and the `+` child and reports the `#` child. So its cost depends on the
/// topic's levels and the number of matches, not on how many subscriptions are stored. It does
/// not allocate (except on topics that fan out through more than eight `+` branches at once).
///
/// ```
/// use rallymq_topic::{Match, SubscriptionIndex, TopicFilter, TopicName};
///
/// let mut index = SubscriptionIndex::new();
/// let qos1 = 1u8;
/// index.insert("sensor-dashboard", &TopicFilter::new("site/+/temp").unwrap(), qos1);
/// index.insert("archiver", &TopicFilter::new("site/#").unwrap(), 0);
/// index.insert("worker-1", &TopicFilter::new("$share/workers/site/+/temp").unwrap(), 1);
/// index.insert("worker-2", &TopicFilter::new("$share/workers/site/+/temp").unwrap(), 1);
///
/// let topic = TopicName::new("site/7/temp").unwrap();
/// let mut deliveries = Vec::new();
/// index.for_each_match(&topic, |found| match found {
///     Match::Subscription { subscriber, data } => deliveries.push((*subscriber, *data)),
///     // One member of each shared group gets the message, taking turns.
///     Match::Shared(group) => {
///         let (worker, qos) = group.pick_round_robin().unwrap();
///         deliveries.push((*worker, *qos));
///     }
/// });
/// deliveries.sort();
/// assert_eq!(deliveries, [("archiver", 0), ("sensor-dashboard", 1), ("worker-1", 1)]);
///
/// assert_eq!(index.remove_subscriber(&"worker-1"), 1);
/// assert_eq!(index.len(), 3);
/// ```
pub struct SubscriptionIndex<S, D> {
    /// Ordinary (not shared) subscriptions to filters without wildcards. Most subscriptions
    /// are of this kind, and the trie, without them, is small enough to stay in cache.
    exact: ExactFilters<Subscribers<S, D>>,
    /// Every other subscription, by filter level.
    nodes: Slab<Node<S, D>>,
    /// Literal children: (parent, interned level) -> child.
    edges: Edges,
    levels: Interner,
    /// For each subscriber, where its subscriptions are: trie nodes ([`SHARED_BIT`] set for
    /// shared ones) and exact filters ([`EXACT_KEY`]), so that removing a subscriber does not
    /// scan the index.
    by_subscriber: HashMap<S, Vec<u64>>,
    len: usize,
}

/// One filter level. Ordinary and shared subscriptions of the filter ending here are stored in
/// the node; the shared ones behind a box because most filters have none.
struct Node<S, D> {
    parent: u32,
    /// Interned level id, or [`PLUS`] / [`HASH`].
    level: u32,
    plus: u32,
    hash: u32,
    literal_children: u32,
    subscribers: Subscribers<S, D>,
    shared: Option<Box<SharedGroups<S, D>>>,
}

struct Entry<S, D> {
    subscriber: S,
    data: D,
}

/// The ordinary subscribers of one filter. Most filters have a single one, stored inline: it
/// needs no allocation of its own, and a publish that matches it does not miss the cache once
/// more to read it.
enum Subscribers<S, D> {
    One(Entry<S, D>),
    /// Never exactly one entry; empty (without allocation) when the filter has none.
    Many(Vec<Entry<S, D>>),
}

struct SharedGroups<S, D>(Vec<Group<S, D>>);

/// The members of one shared subscription group for one filter; never empty.
struct Group<S, D> {
    name: Box<str>,
    members: Vec<Entry<S, D>>,
    /// Round-robin position. Atomic so that matching needs only `&self` and the index stays
    /// `Sync` (a broker can match from several threads under a read lock).
    cursor: AtomicUsize,
}

/// One match reported by [`SubscriptionIndex::for_each_match`].
#[derive(Debug)]
pub enum Match<'a, S, D> {
    /// An ordinary subscription. A subscriber whose several filters match the topic is reported
    /// once per filter; MQTT 5 lets the broker send one message carrying all their
    /// subscription identifiers, or one message per subscription.
    Subscription {
        /// Who subscribed.
        subscriber: &'a S,
        /// What the broker stored with the subscription.
        data: &'a D,
    },
    /// A shared subscription group (`$share/{name}/{filter}`) whose filter matches: the broker
    /// delivers the message to one member of the group (MQTT 5.0 §4.8.2).
    Shared(SharedGroup<'a, S, D>),
}

/// A shared subscription group whose filter matches a topic: its name and members.
pub struct SharedGroup<'a, S, D> {
    group: &'a Group<S, D>,
}

impl<S, D> Clone for SharedGroup<'_, S, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S, D> Copy for SharedGroup<'_, S, D> {}

impl<'a, S, D> SharedGroup<'a, S, D> {
    /// The ShareName, as in `$share/{ShareName}/{filter}`.
    pub fn name(&self) -> &'a str {
        &self.group.name
    }

    /// How many subscribers are in the group (at least one).
    pub fn len(&self) -> usize {
        self.group.members.len()
    }

    /// Always `false`: the index drops a group with its last member. Here for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.group.members.is_empty()
    }

    /// The members of the group and their subscription data, in no particular order.
    pub fn members(&self) -> impl ExactSizeIterator<Item = (&'a S, &'a D)> + 'a {
        self.group
            .members
            .iter()
            .map(|entry| (&entry.subscriber, &entry.data))
    }

    /// The next member in turn: successive calls for the same group and filter cycle through
    /// the members.
    pub fn pick_round_robin(&self) -> Option<(&'a S, &'a D)> {
        self.pick_round_robin_where(|_, _| true)
    }

    /// The next member in turn for which `eligible` holds (say, one that is connected and has
    /// room in its receive window), trying each member at most once. The turn moves past the
    /// member chosen, so the others are preferred next time.
    pub fn pick_round_robin_where(
        &self,
        mut eligible: impl FnMut(&S, &D) -> bool,
    ) -> Option<(&'a S, &'a D)> {
        let members = &self.group.members;
        let count = members.len();
        if count == 0 {
            return None;
        }
        let start = self.group.cursor.load(Ordering::Relaxed);
        for step in 0..count {
            let position = start.wrapping_add(step) % count;
            let entry = &members[position];
            if eligible(&entry.subscriber, &entry.data) {
                // Relaxed: the cursor only spreads load; a lost update under a race skips or
                // repeats a turn, which is harmless.
                self.group
                    .cursor
                    .store(position.wrapping_add(1), Ordering::Relaxed);
                return Some((&entry.subscriber, &entry.data));
            }
        }
        None
    }
}

impl<S: fmt::Debug, D: fmt::Debug> fmt::Debug for SharedGroup<'_, S, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedGroup")
            .field("name", &self.name())
            .field("members", &self.members().collect::<Vec<_>>())
            .finish()
    }
}

impl<S, D> Node<S, D> {
    fn new(parent: u32, level: u32) -> Self {
        Self {
            parent,
            level,
            plus: NONE,
            hash: NONE,
            literal_children: 0,
            subscribers: Subscribers::default(),
            shared: None,
        }
    }

    fn is_unused(&self) -> bool {
        self.subscribers.is_empty()
            && self.shared.is_none()
            && self.plus == NONE
            && self.hash == NONE
            && self.literal_children == 0
    }
}

impl<S, D> Default for SubscriptionIndex<S, D> {
    fn default() -> Self {
        let mut nodes = Slab::new();
        let root = nodes.alloc(Node::new(NONE, NONE));
        debug_assert_eq!(root, ROOT);
        Self {
            exact: ExactFilters::default(),
            nodes,
            edges: Edges::default(),
            levels: Interner::default(),
            by_subscriber: HashMap::new(),
            len: 0,
        }
    }
}

impl<S, D> fmt::Debug for SubscriptionIndex<S, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("subscriptions", &self.len)
            .field("subscribers", &self.by_subscriber.len())
            .field("exact_filters", &self.exact.len())
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl<S: Eq + Hash + Clone, D> SubscriptionIndex<S, D> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many subscriptions are stored (each shared group member counts as one).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no subscription is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many distinct subscribers hold at least one subscription.
    pub fn subscriber_count(&self) -> usize {
        self.by_subscriber.len()
    }

    /// Adds the subscription of `subscriber` to `filter`. If the subscriber already has a
    /// subscription to exactly this filter, its data is replaced and the old data returned.
    pub fn insert(&mut self, subscriber: S, filter: &TopicFilter, data: D) -> Option<D> {
        if is_exact(filter) {
            let hash = self.exact.hash(filter.filter());
            let replaced = self
                .exact
                .get_or_insert_with(hash, filter.filter(), Subscribers::default)
                .insert(&subscriber, data);
            if replaced.is_none() {
                self.record(subscriber, exact_key(hash));
            }
            return replaced;
        }
        let node_id = self.find_or_create_path(filter.filter());
        let node = self.nodes.get_mut(node_id);
        let (replaced, key) = match filter.share_name() {
            None => (node.subscribers.insert(&subscriber, data), node_id),
            Some(share_name) => {
                let groups = &mut node
                    .shared
                    .get_or_insert_with(|| Box::new(SharedGroups(Vec::new())))
                    .0;
                let position = match groups.iter().position(|group| &*group.name == share_name) {
                    Some(position) => position,
                    None => {
                        groups.push(Group {
                            name: share_name.into(),
                            members: Vec::new(),
                            cursor: AtomicUsize::new(0),
                        });
                        groups.len() - 1
                    }
                };
                (
                    insert_entry(&mut groups[position].members, &subscriber, data),
                    node_id | SHARED_BIT,
                )
            }
        };
        if replaced.is_none() {
            self.record(subscriber, u64::from(key));
        }
        replaced
    }

    /// Counts a new subscription and notes where it is stored under its subscriber.
    fn record(&mut self, subscriber: S, key: u64) {
        push_compact(self.by_subscriber.entry(subscriber).or_default(), key);
        self.len += 1;
    }

    /// Undoes [`Self::record`] for a subscription just removed.
    fn forget(&mut self, subscriber: &S, key: u64) {
        if let Some(keys) = self.by_subscriber.get_mut(subscriber) {
            if let Some(position) = keys.iter().position(|&k| k == key) {
                keys.swap_remove(position);
                shrink_if_sparse(keys);
            }
            if keys.is_empty() {
                self.by_subscriber.remove(subscriber);
            }
        }
        self.len -= 1;
    }

    /// The data of the subscription of `subscriber` to exactly `filter`, if there is one.
    pub fn get(&self, subscriber: &S, filter: &TopicFilter) -> Option<&D> {
        let entries = if is_exact(filter) {
            let hash = self.exact.hash(filter.filter());
            self.exact.get(hash, filter.filter())?.as_slice()
        } else {
            let node = self.nodes.get(self.find_path(filter.filter())?);
            match filter.share_name() {
                None => node.subscribers.as_slice(),
                Some(share_name) => {
                    &node
                        .shared
                        .as_ref()?
                        .0
                        .iter()
                        .find(|group| &*group.name == share_name)?
                        .members
                }
            }
        };
        entries
            .iter()
            .find(|entry| entry.subscriber == *subscriber)
            .map(|entry| &entry.data)
    }

    /// The shared group of exactly `filter` (`$share/{ShareName}/{filter}`), if it has members;
    /// `None` for a filter that is not shared. A broker that balances a group across several
    /// servers is handed a message for one group, where matching would report every group whose
    /// filter matches (`$share/g/a/+` and `$share/g/#` are two groups of one name).
    pub fn shared_group(&self, filter: &TopicFilter) -> Option<SharedGroup<'_, S, D>> {
        let share_name = filter.share_name()?;
        let node = self.nodes.get(self.find_path(filter.filter())?);
        let group = node
            .shared
            .as_ref()?
            .0
            .iter()
            .find(|group| &*group.name == share_name)?;
        Some(SharedGroup { group })
    }

    /// Removes the subscription of `subscriber` to exactly `filter` (an UNSUBSCRIBE), returning
    /// its data, or `None` if there was no such subscription.
    pub fn remove(&mut self, subscriber: &S, filter: &TopicFilter) -> Option<D> {
        if is_exact(filter) {
            let hash = self.exact.hash(filter.filter());
            let data = self
                .exact
                .update(
                    hash,
                    filter.filter(),
                    |entries| entries.take(subscriber),
                    Subscribers::is_empty,
                )
                .flatten()?;
            self.forget(subscriber, exact_key(hash));
            return Some(data);
        }
        let node_id = self.find_path(filter.filter())?;
        let node = self.nodes.get_mut(node_id);
        let (data, key) = match filter.share_name() {
            None => (node.subscribers.take(subscriber)?, node_id),
            Some(share_name) => {
                let groups = &mut node.shared.as_mut()?.0;
                let position = groups.iter().position(|group| &*group.name == share_name)?;
                let data = take_entry(&mut groups[position].members, subscriber)?;
                if groups[position].members.is_empty() {
                    groups.swap_remove(position);
                    if groups.is_empty() {
                        node.shared = None;
                    }
                }
                (data, node_id | SHARED_BIT)
            }
        };
        self.forget(subscriber, u64::from(key));
        self.prune(node_id);
        Some(data)
    }

    /// Whether any subscriber holds a subscription to exactly `filter`; for
    /// `$share/{ShareName}/{filter}`, whether that group has a member.
    ///
    /// With [`remove_subscriber_with`](Self::remove_subscriber_with), a caller can follow which
    /// distinct filters are held without keeping them a second time: a filter is new when this
    /// is false before an [`insert`](Self::insert), and gone when it is false after a
    /// [`remove`](Self::remove).
    pub fn has_subscribers(&self, filter: &TopicFilter) -> bool {
        if is_exact(filter) {
            let hash = self.exact.hash(filter.filter());
            return self
                .exact
                .get(hash, filter.filter())
                .is_some_and(|entries| !entries.is_empty());
        }
        let Some(node_id) = self.find_path(filter.filter()) else {
            return false;
        };
        let node = self.nodes.get(node_id);
        match filter.share_name() {
            None => !node.subscribers.is_empty(),
            Some(share_name) => node
                .shared
                .as_ref()
                .is_some_and(|groups| groups.0.iter().any(|group| &*group.name == share_name)),
        }
    }

    /// Removes every subscription of `subscriber` (a session that ends), returning how many
    /// there were. Costs time in proportion to that subscriber's subscriptions, not to the
    /// size of the index.
    pub fn remove_subscriber(&mut self, subscriber: &S) -> usize {
        self.remove_subscriber_inner(subscriber, None)
    }

    /// [`remove_subscriber`](Self::remove_subscriber), calling `unheld` with each filter that
    /// no subscriber holds any more once this one's subscriptions are gone (as subscribed:
    /// `$share/{ShareName}/{filter}` for a group left without members), once each.
    pub fn remove_subscriber_with(
        &mut self,
        subscriber: &S,
        mut unheld: impl FnMut(&str),
    ) -> usize {
        self.remove_subscriber_inner(subscriber, Some(&mut unheld))
    }

    fn remove_subscriber_inner(
        &mut self,
        subscriber: &S,
        mut unheld: Option<&mut dyn FnMut(&str)>,
    ) -> usize {
        let Some(mut keys) = self.by_subscriber.remove(subscriber) else {
            return 0;
        };
        // A subscriber in two groups of the same filter has the same key twice, and so do two
        // exact filters whose hashes agree in the key's bits: one visit of a key removes all.
        keys.sort_unstable();
        keys.dedup();
        let mut removed = 0;
        for key in keys {
            if key & EXACT_KEY != 0 {
                while self
                    .exact
                    .update_where(
                        exact_hash(key),
                        |entries| entries.contains(subscriber),
                        |entries| entries.take(subscriber),
                        Subscribers::is_empty,
                        |filter| {
                            if let Some(unheld) = unheld.as_mut() {
                                unheld(filter);
                            }
                        },
                    )
                    .is_some()
                {
                    removed += 1;
                }
                continue;
            }
            // Not an exact key, so the trie key in the low 32 bits.
            let key = key as u32;
            let node_id = key & !SHARED_BIT;
            let node = self.nodes.get_mut(node_id);
            // The names of the groups this removal leaves without members.
            let mut emptied: Vec<Box<str>> = Vec::new();
            if key & SHARED_BIT == 0 {
                if node.subscribers.take(subscriber).is_some() {
                    removed += 1;
                    if node.subscribers.is_empty() {
                        if let Some(unheld) = unheld.as_mut() {
                            unheld(&self.filter_text(None, node_id));
                        }
                    }
                }
            } else if let Some(groups) = &mut node.shared {
                for group in &mut groups.0 {
                    let before = group.members.len();
                    group
                        .members
                        .retain(|entry| entry.subscriber != *subscriber);
                    removed += before - group.members.len();
                    shrink_if_sparse(&mut group.members);
                }
                groups.0.retain_mut(|group| {
                    let kept = !group.members.is_empty();
                    if !kept && unheld.is_some() {
                        emptied.push(std::mem::take(&mut group.name));
                    }
                    kept
                });
                if groups.0.is_empty() {
                    node.shared = None;
                }
            }
            if let Some(unheld) = unheld.as_mut() {
                for name in emptied {
                    unheld(&self.filter_text(Some(&name), node_id));
                }
            }
            self.prune(node_id);
        }
        self.len -= removed;
        removed
    }

    /// Gives back memory kept for reuse after subscriptions went away: the spare room of the
    /// hash tables and lists, and the node pages past the last node in use.
    ///
    /// Like `HashMap`, the index keeps its capacity as subscriptions come and go, so that
    /// the next ones cost no allocation. A broker whose subscriptions shrank for good (a fleet
    /// decommissioned, a load test over) calls this to return the memory. It costs time in
    /// proportion to the index, and nodes in use are never moved, so a node page with one
    /// node still in use stays allocated.
    pub fn shrink_to_fit(&mut self) {
        self.exact.shrink_to_fit();
        self.nodes.shrink_to_fit();
        self.edges.shrink_to_fit();
        self.levels.shrink_to_fit();
        self.by_subscriber.shrink_to_fit();
        for keys in self.by_subscriber.values_mut() {
            keys.shrink_to_fit();
        }
    }

    /// Calls `visit` once for every ordinary subscription whose filter matches `topic`, and
    /// once for every shared group whose filter matches it, in no particular order.
    ///
    /// Filters whose first level is a wildcard do not match topics starting with `$`
    /// (MQTT-4.7.2-1). The same results as testing [`matches()`](crate::matches) against every
    /// stored filter, without looking at the filters that cannot match.
    pub fn for_each_match<'a>(&'a self, topic: &TopicName, mut visit: impl FnMut(Match<'a, S, D>)) {
        let topic = topic.as_str();
        // With no exact filter stored there is nothing to find: skip hashing the whole topic.
        if !self.exact.is_empty() {
            if let Some(entries) = self.exact.get(self.exact.hash(topic), topic) {
                report_entries(entries.as_slice(), &mut visit);
            }
        }
        // Wildcards directly under the root are skipped for `$` topics (MQTT-4.7.2-1).
        let system = topic.starts_with('$');
        let end = topic.len() + 1;
        let mut pending = PendingBranches::new();
        pending.push(ROOT, 0);
        while let Some((mut node_id, mut offset)) = pending.pop() {
            loop {
                let node = self.nodes.get(node_id);
                let wildcards_apply = !(system && node_id == ROOT);
                // `prefix/#` matches every topic that starts with `prefix`, and `prefix` itself.
                if wildcards_apply && node.hash != NONE {
                    self.report(node.hash, &mut visit);
                }
                if offset == end {
                    self.report(node_id, &mut visit);
                    break;
                }
                let (level, next_offset) = level_at(topic, offset);
                // A node with no literal child (a `+` leaf's parent, a prefix only of `#`) needs
                // no hashing of the level and no probe of the edge map.
                let literal = if node.literal_children == 0 {
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

    fn report<'a>(&'a self, node_id: u32, visit: &mut impl FnMut(Match<'a, S, D>)) {
        let node = self.nodes.get(node_id);
        report_entries(node.subscribers.as_slice(), visit);
        if let Some(groups) = &node.shared {
            for group in &groups.0 {
                visit(Match::Shared(SharedGroup { group }));
            }
        }
    }

    /// The filter that ends at `node_id`, as subscribed: behind `$share/{share_name}/` when
    /// a share name is given.
    fn filter_text(&self, share_name: Option<&str>, mut node_id: u32) -> String {
        let mut levels = Vec::new();
        while node_id != ROOT {
            let node = self.nodes.get(node_id);
            levels.push(match node.level {
                PLUS => "+",
                HASH => "#",
                literal => self.levels.text(literal),
            });
            node_id = node.parent;
        }
        let mut text = String::new();
        if let Some(share_name) = share_name {
            text.push_str(SHARE_PREFIX);
            text.push_str(share_name);
            text.push('/');
        }
        for (i, level) in levels.iter().rev().enumerate() {
            if i > 0 {
                text.push('/');
            }
            text.push_str(level);
        }
        text
    }

    /// The node where `filter` (without `$share/` prefix) ends, if it exists.
    fn find_path(&self, filter: &str) -> Option<u32> {
        let mut node_id = ROOT;
        for level in filter.split('/') {
            let node = self.nodes.get(node_id);
            node_id = match level {
                "+" => node.plus,
                "#" => node.hash,
                literal => self.edges.get(node_id, self.levels.get(literal)?)?,
            };
            if node_id == NONE {
                return None;
            }
        }
        Some(node_id)
    }

    fn find_or_create_path(&mut self, filter: &str) -> u32 {
        let mut node_id = ROOT;
        for level in filter.split('/') {
            let node = self.nodes.get(node_id);
            let existing = match level {
                "+" => node.plus,
                "#" => node.hash,
                literal => self
                    .levels
                    .get(literal)
                    .and_then(|level| self.edges.get(node_id, level))
                    .unwrap_or(NONE),
            };
            if existing != NONE {
                node_id = existing;
                continue;
            }
            let child = match level {
                "+" => {
                    let child = self.nodes.alloc(Node::new(node_id, PLUS));
                    self.nodes.get_mut(node_id).plus = child;
                    child
                }
                "#" => {
                    let child = self.nodes.alloc(Node::new(node_id, HASH));
                    self.nodes.get_mut(node_id).hash = child;
                    child
                }
                literal => {
                    let level = self.levels.acquire(literal);
                    let child = self.nodes.alloc(Node::new(node_id, level));
                    self.edges.insert(node_id, level, child);
                    self.nodes.get_mut(node_id).literal_children += 1;
                    child
                }
            };
            node_id = child;
        }
        node_id
    }

    /// Frees `node_id` and its ancestors as long as they hold nothing.
    fn prune(&mut self, mut node_id: u32) {
        while node_id != ROOT {
            let node = self.nodes.get_mut(node_id);
            if !node.is_unused() || node.parent == NONE {
                return;
            }
            let (parent, level) = (node.parent, node.level);
            // Marks the slot free (parent NONE) and drops its buffers.
            *node = Node::new(NONE, NONE);
            self.nodes.free(node_id);
            let parent_node = self.nodes.get_mut(parent);
            match level {
                PLUS => parent_node.plus = NONE,
                HASH => parent_node.hash = NONE,
                literal => {
                    parent_node.literal_children -= 1;
                    self.edges.remove(parent, literal);
                    self.levels.release(literal);
                }
            }
            node_id = parent;
        }
    }
}

impl<S, D> Default for Subscribers<S, D> {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl<S, D> Subscribers<S, D> {
    fn as_slice(&self) -> &[Entry<S, D>] {
        match self {
            Self::One(entry) => std::slice::from_ref(entry),
            Self::Many(entries) => entries,
        }
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl<S: Eq + Clone, D> Subscribers<S, D> {
    fn contains(&self, subscriber: &S) -> bool {
        self.as_slice()
            .iter()
            .any(|entry| entry.subscriber == *subscriber)
    }

    /// Replaces the data of `subscriber` and returns the old data, or adds it and returns
    /// `None`. Only the switch between one inline entry and a list is done here; the list
    /// itself is handled as every subscriber list is ([`insert_entry`]).
    fn insert(&mut self, subscriber: &S, data: D) -> Option<D> {
        match self {
            Self::One(entry) if entry.subscriber == *subscriber => {
                Some(std::mem::replace(&mut entry.data, data))
            }
            Self::Many(entries) if !entries.is_empty() => insert_entry(entries, subscriber, data),
            _ => {
                let entry = Entry {
                    subscriber: subscriber.clone(),
                    data,
                };
                *self = match std::mem::take(self) {
                    Self::One(first) => Self::Many(vec![first, entry]),
                    Self::Many(_) => Self::One(entry),
                };
                None
            }
        }
    }

    /// Removes the subscription of `subscriber`, returning its data.
    fn take(&mut self, subscriber: &S) -> Option<D> {
        match self {
            Self::One(entry) if entry.subscriber == *subscriber => match std::mem::take(self) {
                Self::One(entry) => Some(entry.data),
                Self::Many(_) => None,
            },
            Self::One(_) => None,
            Self::Many(entries) => {
                let data = take_entry(entries, subscriber)?;
                if entries.len() == 1 {
                    *self = Self::One(entries.pop().expect("one entry"));
                }
                Some(data)
            }
        }
    }
}

/// Calls `visit` once for each ordinary subscription in `entries`.
#[inline]
fn report_entries<'a, S, D>(entries: &'a [Entry<S, D>], visit: &mut impl FnMut(Match<'a, S, D>)) {
    for entry in entries {
        visit(Match::Subscription {
            subscriber: &entry.subscriber,
            data: &entry.data,
        });
    }
}

/// Whether `filter` is stored with the exact filters rather than in the trie.
fn is_exact(filter: &TopicFilter) -> bool {
    !filter.is_shared() && !filter.has_wildcards()
}

/// The reverse-index key of the exact filter with hash `hash`.
fn exact_key(hash: u64) -> u64 {
    EXACT_KEY | (hash >> 1)
}

/// The hash of the exact filter named by the reverse-index key `key`: [`exact_key`] undone.
fn exact_hash(key: u64) -> u64 {
    (key << 1) | 1
}

/// Replaces the data of `subscriber` in `entries` and returns the old data, or adds it and
/// returns `None`.
fn insert_entry<S: Eq + Clone, D>(
    entries: &mut Vec<Entry<S, D>>,
    subscriber: &S,
    data: D,
) -> Option<D> {
    if let Some(entry) = entries
        .iter_mut()
        .find(|entry| entry.subscriber == *subscriber)
    {
        return Some(std::mem::replace(&mut entry.data, data));
    }
    push_compact(
        entries,
        Entry {
            subscriber: subscriber.clone(),
            data,
        },
    );
    None
}

/// Pushes onto `entries`, growing the capacity by doubling from one instead of `Vec`'s minimum
/// of four: most filters have a single subscriber, and at a million filters the three unused
/// slots would cost more than the rest of the subscription.
fn push_compact<T>(entries: &mut Vec<T>, value: T) {
    if entries.len() == entries.capacity() {
        entries.reserve_exact(entries.len().max(1));
    }
    entries.push(value);
}

/// Gives memory back once a list has shrunk to a quarter of its capacity.
fn shrink_if_sparse<T>(entries: &mut Vec<T>) {
    if entries.capacity() > 4 && entries.len() <= entries.capacity() / 4 {
        entries.shrink_to(entries.len() * 2);
    }
}

fn take_entry<S: Eq, D>(entries: &mut Vec<Entry<S, D>>, subscriber: &S) -> Option<D> {
    let position = entries
        .iter()
        .position(|entry| entry.subscriber == *subscriber)?;
    let entry = entries.swap_remove(position);
    shrink_if_sparse(entries);
    Some(entry.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::new(text).unwrap()
    }

    type Members = Vec<(u32, u32)>;

    /// Ordinary matches as sorted (subscriber, data) and shared ones as sorted
    /// (group, sorted members).
    fn matched(
        index: &SubscriptionIndex<u32, u32>,
        topic: &str,
    ) -> (Members, Vec<(String, Members)>) {
        let mut plain = Vec::new();
        let mut shared = Vec::new();
        index.for_each_match(&TopicName::new(topic).unwrap(), |found| match found {
            Match::Subscription { subscriber, data } => plain.push((*subscriber, *data)),
            Match::Shared(group) => {
                let mut members: Vec<_> = group.members().map(|(s, d)| (*s, *d)).collect();
                members.sort();
                shared.push((group.name().to_owned(), members));
            }
        });
        plain.sort();
        shared.sort();
        (plain, shared)
    }

    fn subscribers(index: &SubscriptionIndex<u32, u32>, topic: &str) -> Vec<u32> {
        matched(index, topic)
            .0
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    #[test]
    fn mqtt_4_7_1_1_multi_level_wildcard_matches_parent_level_in_index() {
        let mut index = SubscriptionIndex::new();
        index.insert(1, &filter("sport/tennis/player1/#"), 0);
        index.insert(2, &filter("sport/#"), 0);
        index.insert(3, &filter("#"), 0);
        assert_eq!(subscribers(&index, "sport/tennis/player1"), [1, 2, 3]);
        assert_eq!(
            subscribers(&index, "sport/tennis/player1/score/wimbledon"),
            [1, 2, 3]
        );
        assert_eq!(subscribers(&index, "sport"), [2, 3]);
        assert_eq!(subscribers(&index, "sport/tennis"), [2, 3]);
        assert_eq!(subscribers(&index, "news"), [3]);
    }

    #[test]
    fn mqtt_4_7_1_2_single_level_wildcard_fills_whole_level_in_index() {
        let mut index = SubscriptionIndex::new();
        index.insert(1, &filter("sport/tennis/+"), 0);
        index.insert(2, &filter("sport/+"), 0);
        index.insert(3, &filter("+/+"), 0);
        index.insert(4, &filter("/+"), 0);
        index.insert(5, &filter("+"), 0);
        assert_eq!(subscribers(&index, "sport/tennis/player1"), [1]);
        assert_eq!(
            subscribers(&index, "sport/tennis/player1/ranking"),
            Vec::<u32>::new()
        );
        assert_eq!(subscribers(&index, "sport"), [5]);
        assert_eq!(subscribers(&index, "sport/"), [2, 3]);
        assert_eq!(subscribers(&index, "/finance"), [3, 4]);
    }

    #[test]
    fn mqtt_4_7_2_1_wildcard_first_level_does_not_match_dollar_topics_in_index() {
        let mut index = SubscriptionIndex::new();
        index.insert(1, &filter("#"), 0);
        index.insert(2, &filter("+/monitor/Clients"), 0);
        index.insert(3, &filter("$SYS/monitor/+"), 0);
        index.insert(4, &filter("$SYS/#"), 0);
        index.insert(5, &filter("$share/g/#"), 0);
        index.insert(6, &filter("a/+"), 0);
        assert_eq!(
            matched(&index, "$SYS/monitor/Clients"),
            (vec![(3, 0), (4, 0)], vec![])
        );
        assert_eq!(subscribers(&index, "x/monitor/Clients"), [1, 2]);
        assert_eq!(subscribers(&index, "a/$b"), [1, 6]);
    }

    #[test]
    fn mqtt_4_7_3_1_empty_levels_are_matched_as_levels() {
        let mut index = SubscriptionIndex::new();
        index.insert(1, &filter("a//b"), 0);
        index.insert(2, &filter("a/+/b"), 0);
        index.insert(3, &filter("/"), 0);
        index.insert(4, &filter("+/+"), 0);
        assert_eq!(subscribers(&index, "a//b"), [1, 2]);
        assert_eq!(subscribers(&index, "a/b"), [4]);
        assert_eq!(subscribers(&index, "/"), [3, 4]);
        assert_eq!(subscribers(&index, "//"), Vec::<u32>::new());
    }

    #[test]
    fn mqtt_3_8_4_3_same_subscriber_and_filter_replaces_the_subscription() {
        let mut index = SubscriptionIndex::new();
        assert_eq!(index.insert(1, &filter("a/+"), 10), None);
        assert_eq!(index.insert(1, &filter("a/+"), 11), Some(10));
        assert_eq!(index.insert(1, &filter("a/#"), 12), None);
        assert_eq!(index.len(), 2);
        assert_eq!(index.get(&1, &filter("a/+")), Some(&11));
        // Overlapping filters of one subscriber are each reported; the broker decides.
        assert_eq!(matched(&index, "a/b").0, [(1, 11), (1, 12)]);
    }

    #[test]
    fn mqtt_4_8_2_1_shared_groups_come_back_per_group_and_filter() {
        let mut index = SubscriptionIndex::new();
        index.insert(1, &filter("$share/g/a/+"), 1);
        index.insert(2, &filter("$share/g/a/+"), 2);
        index.insert(3, &filter("$share/h/a/+"), 3);
        index.insert(4, &filter("$share/g/a/#"), 4);
        index.insert(1, &filter("a/+"), 5);
        let (plain, shared) = matched(&index, "a/b");
        assert_eq!(plain, [(1, 5)]);
        assert_eq!(
            shared,
            [
                ("g".to_owned(), vec![(1, 1), (2, 2)]),
                ("g".to_owned(), vec![(4, 4)]),
                ("h".to_owned(), vec![(3, 3)]),
            ]
        );
        assert_eq!(index.remove(&1, &filter("$share/g/a/+")), Some(1));
        assert_eq!(index.remove(&1, &filter("$share/g/a/+")), None);
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn mqtt_4_8_2_1_a_shared_group_is_found_by_its_name_and_filter() {
        let mut index = SubscriptionIndex::new();
        index.insert(1, &filter("$share/g/a/+"), 1);
        index.insert(2, &filter("$share/g/a/+"), 2);
        index.insert(3, &filter("$share/g/#"), 3);
        index.insert(4, &filter("a/+"), 4);
        let members = |index: &SubscriptionIndex<u32, u32>, text: &str| {
            index.shared_group(&filter(text)).map(|group| {
                let mut members: Members = group.members().map(|(s, d)| (*s, *d)).collect();
                members.sort();
                (group.name().to_owned(), members)
            })
        };
        assert_eq!(
            members(&index, "$share/g/a/+"),
            Some(("g".to_owned(), vec![(1, 1), (2, 2)]))
        );
        assert_eq!(
            members(&index, "$share/g/#"),
            Some(("g".to_owned(), vec![(3, 3)]))
        );
        assert_eq!(members(&index, "$share/h/a/+"), None);
        assert_eq!(members(&index, "$share/g/a/b"), None);
        assert_eq!(members(&index, "a/+"), None, "not a shared filter");
        index.remove(&3, &filter("$share/g/#"));
        assert_eq!(members(&index, "$share/g/#"), None);
    }

    #[test]
    fn round_robin_cycles_through_the_group_members() {
        let mut index = SubscriptionIndex::new();
        for member in 1..=3 {
            index.insert(member, &filter("$share/workers/jobs"), 0);
        }
        let topic = TopicName::new("jobs").unwrap();
        let mut picked = Vec::new();
        for _ in 0..6 {
            index.for_each_match(&topic, |found| {
                if let Match::Shared(group) = found {
                    picked.push(*group.pick_round_robin().unwrap().0);
                }
            });
        }
        assert_eq!(picked[..3], picked[3..]);
        let mut first_turn = picked[..3].to_vec();
        first_turn.sort();
        assert_eq!(first_turn, [1, 2, 3]);

        let mut eligible_picks = Vec::new();
        for _ in 0..4 {
            index.for_each_match(&topic, |found| {
                if let Match::Shared(group) = found {
                    eligible_picks.push(
                        group
                            .pick_round_robin_where(|s, _| *s != 2)
                            .map(|(s, _)| *s),
                    );
                }
            });
        }
        assert!(
            eligible_picks
                .iter()
                .all(|pick| matches!(pick, Some(1 | 3)))
        );
        assert!(eligible_picks.contains(&Some(1)) && eligible_picks.contains(&Some(3)));
        index.for_each_match(&topic, |found| {
            if let Match::Shared(group) = found {
                assert_eq!(group.pick_round_robin_where(|_, _| false), None);
            }
        });
    }

    #[test]
    fn remove_subscriber_removes_everything_and_frees_the_trie() {
        let mut index = SubscriptionIndex::new();
        index.insert(7, &filter("a/b/c"), 0);
        index.insert(7, &filter("a/+/c"), 0);
        index.insert(7, &filter("$share/g/a/b/c"), 0);
        index.insert(7, &filter("$share/h/a/b/c"), 0);
        index.insert(8, &filter("a/b"), 0);
        assert_eq!(index.remove_subscriber(&7), 4);
        assert_eq!(index.remove_subscriber(&7), 0);
        assert_eq!(index.len(), 1);
        assert_eq!(index.subscriber_count(), 1);
        // Only the exact "a/b" of subscriber 8 remains, outside the trie, which is back to its
        // root.
        assert_eq!(index.nodes.len(), 1);
        assert_eq!(index.levels.get("c"), None);
        assert_eq!(index.exact.len(), 1);
        assert_eq!(index.remove(&8, &filter("a/b")), Some(0));
        assert_eq!(index.exact.len(), 0);
        assert!(index.is_empty());
        assert_eq!(index.subscriber_count(), 0);
    }

    #[test]
    fn subscribers_go_from_one_inline_to_many_and_back() {
        let mut entries = Subscribers::default();
        assert!(entries.is_empty());
        assert_eq!(entries.insert(&1u32, 10u32), None);
        assert!(matches!(entries, Subscribers::One(_)));
        assert_eq!(entries.insert(&1, 11), Some(10));
        assert_eq!(entries.insert(&2, 20), None);
        assert_eq!(entries.insert(&3, 30), None);
        assert!(matches!(&entries, Subscribers::Many(list) if list.len() == 3));
        assert_eq!(entries.take(&4), None);
        assert_eq!(entries.take(&1), Some(11));
        assert_eq!(entries.take(&3), Some(30));
        assert!(matches!(&entries, Subscribers::One(entry) if entry.subscriber == 2));
        assert!(entries.contains(&2) && !entries.contains(&1));
        assert_eq!(entries.take(&2), Some(20));
        assert!(entries.is_empty());
        assert_eq!(entries.take(&2), None);
    }

    #[test]
    fn exact_filters_stay_out_of_the_trie() {
        let mut index = SubscriptionIndex::new();
        index.insert(1, &filter("a/b"), 1);
        index.insert(2, &filter("a/b"), 2);
        index.insert(1, &filter("$SYS/x"), 3);
        index.insert(1, &filter("$share/g/a/b"), 4);
        // The shared one is in the trie: root, "a", "b".
        assert_eq!(index.nodes.len(), 3);
        assert_eq!(index.exact.len(), 2);
        assert_eq!(index.get(&2, &filter("a/b")), Some(&2));
        assert_eq!(
            matched(&index, "a/b"),
            (vec![(1, 1), (2, 2)], vec![("g".to_owned(), vec![(1, 4)])])
        );
        assert_eq!(matched(&index, "$SYS/x").0, [(1, 3)]);
        assert_eq!(index.remove_subscriber(&1), 3);
        assert_eq!(index.exact.len(), 1);
        assert_eq!(index.nodes.len(), 1);
        assert_eq!(matched(&index, "a/b").0, [(2, 2)]);
    }

    #[test]
    fn many_branches_spill_without_losing_matches() {
        let mut index = SubscriptionIndex::new();
        // Every prefix of "+/+/.../+" with literal "x" levels creates a branch at each level.
        let mut expected = Vec::new();
        for length in 1..=20u32 {
            let levels: Vec<&str> = (0..length)
                .map(|i| if i % 2 == 0 { "+" } else { "x" })
                .collect();
            index.insert(length, &filter(&levels.join("/")), 0);
            let all_plus = vec!["+"; length as usize].join("/");
            index.insert(100 + length, &filter(&all_plus), 0);
            if length == 20 {
                expected.extend([length, 100 + length]);
            }
        }
        let topic = vec!["x"; 20].join("/");
        assert_eq!(subscribers(&index, &topic), expected);
    }
}
