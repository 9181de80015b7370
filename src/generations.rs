//! A map bounded in entries by two generations, used wherever per-process state is kept for keys
//! that clients choose (the rate limiters' keys, the verified-token cache), so that memory stays
//! bounded whatever keys arrive.
//!
//! New keys go into the current generation; when it holds half the bound, the previous
//! generation is forgotten and the current one becomes the previous one. A key used again
//! ([`Generations::get_mut`]) moves back into the current generation, so a key in use is kept and
//! only keys left alone for a whole generation are forgotten. Not synchronised: users hold it
//! behind their own lock.

use std::collections::HashMap;
use std::hash::Hash;

/// At most `max(max_entries, 2)` entries, in two generations of half as many each.
pub(crate) struct Generations<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
    per_generation: usize,
}

impl<K: Hash + Eq, V> Generations<K, V> {
    pub(crate) fn new(max_entries: usize) -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
            per_generation: (max_entries / 2).max(1),
        }
    }

    /// The value of `key`, moved into the current generation if it was in the previous one.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if !self.current.contains_key(key) {
            let (key, value) = self.previous.remove_entry(key)?;
            self.insert(key, value);
        }
        self.current.get_mut(key)
    }

    /// Sets `key` to `value` in the current generation, turning the generations first when the
    /// current one is full.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if let Some(slot) = self.current.get_mut(&key) {
            *slot = value;
            return;
        }
        self.previous.remove(&key);
        if self.current.len() >= self.per_generation {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.current
            .remove(key)
            .or_else(|| self.previous.remove(key))
    }

    /// Keeps only the entries for which `keep` is true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.current.retain(&mut keep);
        self.previous.retain(&mut keep);
    }

    pub(crate) fn clear(&mut self) {
        self.current = HashMap::new();
        self.previous = HashMap::new();
    }

    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_whatever_keys_arrive() {
        let mut map = Generations::new(1_000);
        for key in 0..100_000u64 {
            map.insert(key, key);
            assert!(map.len() <= 1_000, "{} entries after {key}", map.len());
        }
        // The newest keys are still there, the oldest are gone.
        assert_eq!(map.get_mut(&99_999), Some(&mut 99_999));
        assert_eq!(map.get_mut(&0), None);
        let mut tiny = Generations::new(0);
        for key in 0..10u8 {
            tiny.insert(key, ());
            assert!(tiny.len() <= 2);
        }
    }

    #[test]
    fn a_key_in_use_is_kept_while_others_come_and_go() {
        let mut map = Generations::new(100);
        map.insert(u64::MAX, 7);
        for key in 0..10_000u64 {
            map.insert(key, 0);
            if key % 40 == 0 {
                assert_eq!(
                    map.get_mut(&u64::MAX),
                    Some(&mut 7),
                    "after {key} other keys"
                );
            }
        }
    }

    #[test]
    fn insert_replaces_and_remove_retain_clear_forget() {
        let mut map = Generations::new(4);
        map.insert(1, "a");
        map.insert(2, "b");
        map.insert(3, "c"); // turns: 1 and 2 are now the previous generation
        map.insert(1, "A"); // replaces the previous generation's value, counted once
        assert_eq!(map.len(), 3);
        assert_eq!(map.get_mut(&1), Some(&mut "A"));
        assert_eq!(map.remove(&2), Some("b"));
        assert_eq!(map.remove(&2), None);
        map.retain(|key, _| *key != 3);
        assert_eq!((map.len(), map.get_mut(&3)), (1, None));
        map.clear();
        assert_eq!((map.len(), map.get_mut(&1)), (0, None));
    }
}
