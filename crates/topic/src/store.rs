//! Building blocks shared by the two indexes: a paged node store, a level interner and the
//! hash map from (parent node, level) to child node.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The id meaning "no node" or "no level".
pub(crate) const NONE: u32 = u32::MAX;

/// Node and level ids stay below this bound, leaving the top bit free for flags and the values
/// above it free for sentinels such as [`NONE`]. Reaching it would take 2^31 live nodes, far more
/// than memory holds.
pub(crate) const ID_LIMIT: u32 = 1 << 31;

/// Nodes live in pages of this many slots, so that growing by one node never copies the whole
/// store and at most one page is unused (a doubling `Vec` would waste up to half of it).
const PAGE_LEN: usize = 4096;

/// A store of nodes addressed by `u32` ids, with a free list so ids are reused.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    pages: Vec<Vec<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Self {
        Self {
            pages: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Stores `value` and returns its id, reusing a freed slot if there is one.
    pub(crate) fn alloc(&mut self, value: T) -> u32 {
        self.len += 1;
        if let Some(id) = self.free.pop() {
            *self.get_mut(id) = value;
            return id;
        }
        let needs_page = self.pages.last().is_none_or(|page| page.len() == PAGE_LEN);
        if needs_page {
            self.pages.push(Vec::with_capacity(PAGE_LEN));
        }
        let page_index = self.pages.len() - 1;
        let page = &mut self.pages[page_index];
        let id = page_index * PAGE_LEN + page.len();
        page.push(value);
        // 2^32 nodes would need hundreds of gigabytes of memory first.
        u32::try_from(id)
            .ok()
            .filter(|&id| id < ID_LIMIT)
            .expect("fewer than 2^31 topic nodes")
    }

    /// Marks `id` as reusable. The caller has already reset the slot to an empty node.
    pub(crate) fn free(&mut self, id: u32) {
        self.len -= 1;
        self.free.push(id);
    }

    pub(crate) fn get(&self, id: u32) -> &T {
        let id = id as usize;
        &self.pages[id / PAGE_LEN][id % PAGE_LEN]
    }

    pub(crate) fn get_mut(&mut self, id: u32) -> &mut T {
        let id = id as usize;
        &mut self.pages[id / PAGE_LEN][id % PAGE_LEN]
    }

    /// Nodes in use.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Gives back the pages past the last node in use, and the free list's spare room. Ids
    /// are positions, so free slots before the last node in use stay (nodes never move).
    pub(crate) fn shrink_to_fit(&mut self) {
        // The slots past the last node in use are the largest free ids, consecutive up to
        // the end: sorted, they come off the top of the free list.
        let mut used_end: usize = self.pages.iter().map(Vec::len).sum();
        self.free.sort_unstable();
        while self
            .free
            .last()
            .is_some_and(|&id| id as usize + 1 == used_end)
        {
            self.free.pop();
            used_end -= 1;
        }
        let page_count = used_end.div_ceil(PAGE_LEN);
        self.pages.truncate(page_count);
        if let Some(last) = self.pages.last_mut() {
            // Keeps its capacity: `alloc` fills a page up to PAGE_LEN without reallocating.
            last.truncate(used_end - (page_count - 1) * PAGE_LEN);
        }
        self.pages.shrink_to_fit();
        self.free.shrink_to_fit();
    }
}

/// Hashes the `u64` edge keys, which are node and level ids this crate assigns itself (so no
/// peer can choose them to collide): one folded 128-bit multiply, far cheaper than SipHash.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let product = u128::from(self.0) * 0x9E37_79B9_7F4A_7C15_u128;
        (product as u64) ^ ((product >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by the edge map; this keeps the hasher correct for any key.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Child links of literal levels: (parent node, level id) -> child node. One map for the whole
/// trie costs a few bytes per edge, where a map per node would cost dozens per leaf.
#[derive(Debug, Default)]
pub(crate) struct Edges(HashMap<u64, u32, BuildHasherDefault<IdHasher>>);

impl Edges {
    fn key(parent: u32, level: u32) -> u64 {
        (u64::from(parent) << 32) | u64::from(level)
    }

    pub(crate) fn get(&self, parent: u32, level: u32) -> Option<u32> {
        self.0.get(&Self::key(parent, level)).copied()
    }

    pub(crate) fn insert(&mut self, parent: u32, level: u32, child: u32) {
        self.0.insert(Self::key(parent, level), child);
    }

    pub(crate) fn remove(&mut self, parent: u32, level: u32) {
        self.0.remove(&Self::key(parent, level));
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    /// The child of `parent` through the literal level `level`, if there is one.
    pub(crate) fn literal(&self, levels: &Interner, parent: u32, level: &str) -> Option<u32> {
        levels.get(level).and_then(|level| self.get(parent, level))
    }
}

/// Gives every distinct level string a `u32` id, counting how many nodes use it so that the
/// strings of removed subscriptions are freed (a peer churning random filters cannot grow it).
///
/// Level strings come from peers, so this map keeps the standard library's keyed SipHash.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: HashMap<Box<str>, u32>,
    levels: Vec<InternedLevel>,
    free: Vec<u32>,
}

#[derive(Debug)]
struct InternedLevel {
    text: Box<str>,
    uses: u32,
}

impl Interner {
    /// The id of `level`, if any node uses it.
    pub(crate) fn get(&self, level: &str) -> Option<u32> {
        self.ids.get(level).copied()
    }

    /// The text of a level id in use.
    pub(crate) fn text(&self, id: u32) -> &str {
        &self.levels[id as usize].text
    }

    /// The id of `level`, counting one more use of it.
    pub(crate) fn acquire(&mut self, level: &str) -> u32 {
        if let Some(&id) = self.ids.get(level) {
            self.levels[id as usize].uses += 1;
            return id;
        }
        let text: Box<str> = level.into();
        let entry = InternedLevel {
            text: text.clone(),
            uses: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.levels[id as usize] = entry;
                id
            }
            None => {
                self.levels.push(entry);
                // Each id stands for a distinct string held in memory: far fewer than 2^32.
                u32::try_from(self.levels.len() - 1)
                    .ok()
                    .filter(|&id| id < ID_LIMIT)
                    .expect("fewer than 2^31 distinct level strings")
            }
        };
        self.ids.insert(text, id);
        id
    }

    /// Gives back spare room: the map's, and the ids past the last one in use.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        let used_end = self
            .levels
            .iter()
            .rposition(|level| level.uses > 0)
            .map_or(0, |last| last + 1);
        self.levels.truncate(used_end);
        self.levels.shrink_to_fit();
        self.free.retain(|&id| (id as usize) < used_end);
        self.free.shrink_to_fit();
    }

    /// Counts one use less of `id`, freeing the string when no node uses it any more.
    pub(crate) fn release(&mut self, id: u32) {
        let entry = &mut self.levels[id as usize];
        entry.uses -= 1;
        if entry.uses == 0 {
            let text = std::mem::take(&mut entry.text);
            self.ids.remove(&text);
            self.free.push(id);
        }
    }
}

/// Splits the level starting at byte `offset` of `topic` off, returning it and the offset of the
/// next level, or `topic.len() + 1` once the last level is taken.
pub(crate) fn level_at(topic: &str, offset: usize) -> (&str, usize) {
    let rest = &topic[offset..];
    match rest.find('/') {
        Some(end) => (&rest[..end], offset + end + 1),
        None => (rest, topic.len() + 1),
    }
}

/// The `+` branches still to follow, as (node, byte offset of the next topic level). Kept on
/// the stack for the usual handful; a topic that branches more spills to the heap.
pub(crate) struct PendingBranches {
    inline: [(u32, u32); 8],
    inline_len: usize,
    spilled: Vec<(u32, u32)>,
}

impl PendingBranches {
    pub(crate) fn new() -> Self {
        Self {
            inline: [(0, 0); 8],
            inline_len: 0,
            spilled: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, node_id: u32, offset: usize) {
        // Offsets are at most MAX_TOPIC_LEN + 1.
        let branch = (node_id, offset as u32);
        if self.inline_len < self.inline.len() {
            self.inline[self.inline_len] = branch;
            self.inline_len += 1;
        } else {
            self.spilled.push(branch);
        }
    }

    /// Where a walk goes from a node whose child for the next level is `literal` (if any)
    /// and whose `+` child is `plus` ([`NONE`] if it has none or wildcards do not apply): to
    /// the literal child, leaving the `+` one for later at `next_offset`, or to the `+`
    /// child; `None` when neither exists and this branch ends.
    pub(crate) fn follow(
        &mut self,
        literal: Option<u32>,
        plus: u32,
        next_offset: usize,
    ) -> Option<u32> {
        match (literal, plus) {
            (Some(literal), NONE) => Some(literal),
            (Some(literal), plus) => {
                self.push(plus, next_offset);
                Some(literal)
            }
            (None, NONE) => None,
            (None, plus) => Some(plus),
        }
    }

    pub(crate) fn pop(&mut self) -> Option<(u32, usize)> {
        let (node_id, offset) = match self.spilled.pop() {
            Some(branch) => branch,
            None if self.inline_len > 0 => {
                self.inline_len -= 1;
                self.inline[self.inline_len]
            }
            None => return None,
        };
        Some((node_id, offset as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_at_walks_every_level_including_empty_ones() {
        let topic = "/a//b/";
        let mut offset = 0;
        let mut levels = Vec::new();
        while offset <= topic.len() {
            let (level, next) = level_at(topic, offset);
            levels.push(level);
            offset = next;
        }
        assert_eq!(levels, topic.split('/').collect::<Vec<_>>());
    }

    #[test]
    fn interner_frees_and_reuses_ids() {
        let mut interner = Interner::default();
        let a = interner.acquire("a");
        assert_eq!(interner.acquire("a"), a);
        interner.release(a);
        assert_eq!(interner.get("a"), Some(a));
        interner.release(a);
        assert_eq!(interner.get("a"), None);
        let b = interner.acquire("b");
        assert_eq!(b, a, "the freed id is reused");
        assert_eq!(interner.text(b), "b");
    }

    #[test]
    fn slab_reuses_freed_slots_across_pages() {
        let mut slab = Slab::new();
        let ids: Vec<u32> = (0..PAGE_LEN as u32 + 3).map(|n| slab.alloc(n)).collect();
        assert_eq!(*slab.get(ids[PAGE_LEN + 1]), PAGE_LEN as u32 + 1);
        slab.free(ids[5]);
        assert_eq!(slab.len(), PAGE_LEN + 2);
        assert_eq!(slab.alloc(99), ids[5]);
        assert_eq!(*slab.get(ids[5]), 99);
        assert_eq!(slab.pages.len(), 2);
    }

    #[test]
    fn shrinking_gives_back_the_pages_past_the_last_node_in_use() {
        let mut slab = Slab::new();
        let ids: Vec<u32> = (0..3 * PAGE_LEN as u32).map(|i| slab.alloc(i)).collect();
        assert_eq!(slab.pages.len(), 3);
        // Keep one node in the second page; free everything else but the first node.
        let kept = ids[PAGE_LEN + 7];
        for &id in &ids[1..] {
            if id != kept {
                slab.free(id);
            }
        }
        slab.shrink_to_fit();
        assert_eq!(slab.pages.len(), 2);
        assert_eq!(slab.pages[1].len(), 8);
        assert_eq!(slab.len(), 2);
        assert_eq!(
            (*slab.get(ids[0]), *slab.get(kept)),
            (0, PAGE_LEN as u32 + 7)
        );
        // Every free id left is below the kept node, and new nodes take them before growing.
        let mut reused: Vec<u32> = (0..PAGE_LEN as u32 + 6).map(|i| slab.alloc(i)).collect();
        reused.sort_unstable();
        let expected: Vec<u32> = (1..kept).collect();
        assert_eq!(reused, expected);
        assert_eq!(slab.alloc(1), kept + 1);
        assert_eq!(slab.pages.len(), 2);
    }

    #[test]
    fn shrinking_the_interner_keeps_the_ids_in_use() {
        let mut interner = Interner::default();
        let ids: Vec<u32> = (0..100)
            .map(|i| interner.acquire(&format!("l{i}")))
            .collect();
        for &id in &ids[10..] {
            interner.release(id);
        }
        interner.shrink_to_fit();
        assert_eq!(interner.levels.len(), 10);
        assert_eq!(interner.get("l9"), Some(ids[9]));
        assert_eq!(interner.get("l10"), None);
        assert_eq!(interner.acquire("new"), 10);
        assert_eq!(interner.text(10), "new");
    }
}
