//! Filters without wildcards, kept out of the trie: a filter that is a whole topic name matches
//! only that name, so one hash probe with the whole topic finds it. In a typical fleet most
//! subscriptions are of this kind; taking them out of the trie leaves it small enough to stay in
//! cache, and spares a random publish a cache miss per level.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

/// Values stored by exact filter text, found by the filter's hash.
///
/// A `hashbrown::HashTable` rather than a `HashMap` so that a subscriber's entry in the reverse
/// index can name an exact filter by its hash alone (eight bytes) instead of a copy of its text,
/// and so that each filter's text is stored once.
pub(crate) struct ExactFilters<T> {
    table: HashTable<ExactFilter<T>>,
    /// Topics come from peers, so the hash is keyed (SipHash with a random key), as the level
    /// interner's is: nobody can choose names that collide.
    hasher: RandomState,
}

struct ExactFilter<T> {
    filter: FilterText,
    value: T,
}

/// Filters up to this many bytes long are stored in the table itself.
const INLINE_LEN: usize = 30;

/// The text of a filter, in the table's slot when short: comparing it with a topic then reads
/// the slot already loaded rather than missing the cache once more on a separate allocation, and
/// saves that allocation. 30 bytes hold most real topics (`site/999/device/99/humidity` is 27)
/// in a 32-byte value, the size of the tag and a `Box<[u8]>` rounded up.
enum FilterText {
    Inline { len: u8, bytes: [u8; INLINE_LEN] },
    Heap(Box<[u8]>),
}

impl FilterText {
    fn new(filter: &str) -> Self {
        let text = filter.as_bytes();
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE_LEN => {
                let mut bytes = [0; INLINE_LEN];
                bytes[..text.len()].copy_from_slice(text);
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(text.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(bytes) => bytes,
        }
    }
}

impl<T> Default for ExactFilters<T> {
    fn default() -> Self {
        Self {
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

impl<T> ExactFilters<T> {
    /// The hash of `filter` (or of a topic name) in this table. The lowest bit is always set,
    /// so the other 63 bits are all a caller needs to keep to find the filter again.
    pub(crate) fn hash(&self, filter: &str) -> u64 {
        hash_bytes(&self.hasher, filter.as_bytes())
    }

    /// How many filters are stored.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no filter is stored.
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub(crate) fn get(&self, hash: u64, filter: &str) -> Option<&T> {
        self.table
            .find(hash, |entry| entry.filter.as_bytes() == filter.as_bytes())
            .map(|entry| &entry.value)
    }

    /// The value of `filter`, stored first with `make` if the filter is new.
    pub(crate) fn get_or_insert_with(
        &mut self,
        hash: u64,
        filter: &str,
        make: impl FnOnce() -> T,
    ) -> &mut T {
        let hasher = &self.hasher;
        let entry = self.table.entry(
            hash,
            |entry| entry.filter.as_bytes() == filter.as_bytes(),
            |entry| hash_bytes(hasher, entry.filter.as_bytes()),
        );
        &mut entry
            .or_insert_with(|| ExactFilter {
                filter: FilterText::new(filter),
                value: make(),
            })
            .into_mut()
            .value
    }

    /// Applies `update` to the value of `filter`, then drops the filter if `is_unused` says its
    /// value holds nothing any more. Returns what `update` returned, or `None` if the filter is
    /// not stored.
    pub(crate) fn update<R>(
        &mut self,
        hash: u64,
        filter: &str,
        update: impl FnOnce(&mut T) -> R,
        is_unused: impl FnOnce(&T) -> bool,
    ) -> Option<R> {
        update_found(
            &mut self.table,
            hash,
            |entry| entry.filter.as_bytes() == filter.as_bytes(),
            update,
            is_unused,
            |_| {},
        )
    }

    /// As [`update`](Self::update), for the first filter with hash `hash` for which `wanted`
    /// holds: for a caller that kept the hash but not the text. `dropped` is given the text of
    /// the filter if it is dropped.
    pub(crate) fn update_where<R>(
        &mut self,
        hash: u64,
        mut wanted: impl FnMut(&T) -> bool,
        update: impl FnOnce(&mut T) -> R,
        is_unused: impl FnOnce(&T) -> bool,
        dropped: impl FnOnce(&str),
    ) -> Option<R> {
        let hasher = &self.hasher;
        // Checking the full hash as well: the table compares only a few bits of it before
        // calling the predicate, and `wanted` alone may hold for another filter.
        update_found(
            &mut self.table,
            hash,
            |entry| wanted(&entry.value) && hash_bytes(hasher, entry.filter.as_bytes()) == hash,
            update,
            is_unused,
            dropped,
        )
    }

    /// Gives back the table's spare room.
    pub(crate) fn shrink_to_fit(&mut self) {
        let hasher = &self.hasher;
        self.table
            .shrink_to_fit(|entry| hash_bytes(hasher, entry.filter.as_bytes()));
    }
}

/// The one probe behind [`ExactFilters::update`] and [`ExactFilters::update_where`].
fn update_found<T, R>(
    table: &mut HashTable<ExactFilter<T>>,
    hash: u64,
    is_it: impl FnMut(&ExactFilter<T>) -> bool,
    update: impl FnOnce(&mut T) -> R,
    is_unused: impl FnOnce(&T) -> bool,
    dropped: impl FnOnce(&str),
) -> Option<R> {
    let mut entry = table.find_entry(hash, is_it).ok()?;
    let result = update(&mut entry.get_mut().value);
    if is_unused(&entry.get().value) {
        let (removed, _) = entry.remove();
        // Stored from a `&str`, so valid UTF-8.
        if let Ok(text) = std::str::from_utf8(removed.filter.as_bytes()) {
            dropped(text);
        }
    }
    Some(result)
}

/// The one hash function of the table: the stored text is bytes, so the hash is of bytes on
/// both sides.
fn hash_bytes(hasher: &RandomState, bytes: &[u8]) -> u64 {
    hasher.hash_one(bytes) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_found_by_text_and_by_hash() {
        let mut filters = ExactFilters::default();
        let hash = filters.hash("a/b");
        assert_eq!(hash & 1, 1);
        filters.get_or_insert_with(hash, "a/b", Vec::new).push(1);
        filters.get_or_insert_with(hash, "a/b", Vec::new).push(2);
        assert_eq!(filters.len(), 1);
        assert_eq!(filters.get(hash, "a/b"), Some(&vec![1, 2]));
        assert_eq!(filters.get(filters.hash("a/c"), "a/c"), None);
        let removed = filters.update_where(
            hash,
            |value| value.contains(&2),
            |value| value.retain(|&n| n != 2),
            Vec::is_empty,
            |text| panic!("{text} still holds 1"),
        );
        assert_eq!(removed, Some(()));
        assert_eq!(filters.get(hash, "a/b"), Some(&vec![1]));
        assert_eq!(
            filters.update(hash, "a/b", |value| value.len(), Vec::is_empty),
            Some(1)
        );
        assert_eq!(filters.len(), 1);
        assert_eq!(
            filters.update(hash, "a/c", |value| value.len(), Vec::is_empty),
            None
        );
        let mut dropped = None;
        filters.update_where(
            hash,
            |value| value.contains(&1),
            Vec::clear,
            Vec::is_empty,
            |text| dropped = Some(text.to_owned()),
        );
        assert_eq!(dropped.as_deref(), Some("a/b"));
        assert_eq!(filters.len(), 0);
    }

    #[test]
    fn long_filters_are_stored_apart() {
        let mut filters = ExactFilters::default();
        let short = "a".repeat(INLINE_LEN);
        let long = "a".repeat(INLINE_LEN + 1);
        assert!(matches!(FilterText::new(&short), FilterText::Inline { .. }));
        assert!(matches!(FilterText::new(&long), FilterText::Heap(_)));
        for (n, filter) in [&short, &long, &"é".repeat(200)].into_iter().enumerate() {
            let hash = filters.hash(filter);
            *filters.get_or_insert_with(hash, filter, || 0) = n;
        }
        assert_eq!(filters.len(), 3);
        assert_eq!(filters.get(filters.hash(&long), &long), Some(&1));
        assert_eq!(filters.get(filters.hash(&short), &short), Some(&0));
        assert_eq!(size_of::<FilterText>(), 32);
    }
}
