//! A hash map and a queue that are allocated on first insert and can be given back when
//! empty. Most connections never use most of their maps (topic aliases, QoS 2 state, pending
//! requests) and spend most of their life with empty queues, yet an empty `HashMap` takes 48
//! bytes inline in every connection and an empty `VecDeque` 32; these take 8.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

// The box is the point: 8 bytes inline instead of the map's 48 (clippy's `box_collection`
// assumes the inline size does not matter).
#[allow(clippy::box_collection)]
pub(crate) struct LazyMap<K, V>(Option<Box<HashMap<K, V>>>);

impl<K, V> Default for LazyMap<K, V> {
    fn default() -> Self {
        Self(None)
    }
}

impl<K: Eq + Hash, V> LazyMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |map| map.len())
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.0.as_ref()?.get(key)
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.get(key).is_some()
    }

    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.0.as_mut()?.get_mut(key)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.0.get_or_insert_default().insert(key, value)
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.0.as_mut()?.remove(key)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().flat_map(|map| map.iter())
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, value)| value)
    }

    /// Empties the map and frees it.
    pub(crate) fn take(&mut self) -> impl Iterator<Item = (K, V)> + use<K, V> {
        self.0.take().into_iter().flat_map(|map| *map)
    }

    /// Empties the map and frees it.
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    /// Frees the map if it is empty (the connection went quiet).
    pub(crate) fn release_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|map| map.is_empty()) {
            self.0 = None;
        }
    }
}

impl<K: Eq + Hash, V> FromIterator<(K, V)> for LazyMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let map: HashMap<K, V> = items.into_iter().collect();
        Self((!map.is_empty()).then(|| Box::new(map)))
    }
}

// As for `LazyMap`: the box is the point.
#[allow(clippy::box_collection)]
pub(crate) struct LazyDeque<T>(Option<Box<VecDeque<T>>>);

impl<T> Default for LazyDeque<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> LazyDeque<T> {
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |deque| deque.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().flat_map(|deque| deque.iter())
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.0.iter_mut().flat_map(|deque| deque.iter_mut())
    }

    pub(crate) fn push_back(&mut self, item: T) {
        self.0.get_or_insert_default().push_back(item);
    }

    pub(crate) fn push_front(&mut self, item: T) {
        self.0.get_or_insert_default().push_front(item);
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.0.as_ref()?.front()
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        self.0.as_mut()?.pop_front()
    }

    pub(crate) fn remove(&mut self, index: usize) -> Option<T> {
        self.0.as_mut()?.remove(index)
    }

    /// Empties the queue and frees it.
    pub(crate) fn take(&mut self) -> VecDeque<T> {
        self.0.take().map(|deque| *deque).unwrap_or_default()
    }

    /// Frees the queue if it is empty (the connection went quiet).
    pub(crate) fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

impl<T> From<VecDeque<T>> for LazyDeque<T> {
    fn from(deque: VecDeque<T>) -> Self {
        Self((!deque.is_empty()).then(|| Box::new(deque)))
    }
}

impl<T> FromIterator<T> for LazyDeque<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        items.into_iter().collect::<VecDeque<T>>().into()
    }
}

#[cfg(test)]
mod tests {
    use super::{LazyDeque, LazyMap};

    #[test]
    fn deque_allocates_on_first_push_and_frees_when_empty() {
        let mut deque = LazyDeque::default();
        assert!(deque.0.is_none());
        deque.push_back(2);
        deque.push_front(1);
        assert_eq!(deque.iter().copied().collect::<Vec<_>>(), [1, 2]);
        deque.release_if_empty();
        assert_eq!(deque.pop_front(), Some(1));
        assert_eq!(deque.remove(0), Some(2));
        assert!(deque.is_empty());
        deque.release_if_empty();
        assert!(deque.0.is_none());
        assert_eq!(deque.pop_front(), None);
    }

    #[test]
    fn allocates_on_first_insert_and_frees_when_empty() {
        let mut map = LazyMap::default();
        assert!(map.0.is_none());
        assert_eq!(map.insert(1u16, 'a'), None);
        assert_eq!(map.get(&1), Some(&'a'));
        map.release_if_empty();
        assert!(map.0.is_some(), "not empty: kept");
        assert_eq!(map.remove(&1), Some('a'));
        assert_eq!(map.len(), 0);
        map.release_if_empty();
        assert!(map.0.is_none());
        assert_eq!(map.remove(&1), None);
    }
}
