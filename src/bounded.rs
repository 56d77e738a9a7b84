//! A map with a hard cap on its entries, for state that clients create (login
//! back-off records, connection-rate windows): inserting a new key into a full
//! map evicts the least recently touched entry. Pure; no locking of its own.
//!
//! Recency is kept in a queue of `(key, stamp)` touches; an entry's current
//! stamp is stored beside its value, so older touches of the same key are
//! skipped when they reach the front (lazy deletion). The queue is compacted
//! when it reaches twice the cap, so it never holds more than `2 * cap` touches
//! and every operation is amortized O(1): no scan of the whole map per call.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
struct Slot<V> {
    value: V,
    stamp: u64,
}

#[derive(Debug)]
pub struct LruMap<K, V> {
    map: HashMap<K, Slot<V>>,
    order: VecDeque<(K, u64)>,
    cap: usize,
    clock: u64,
}

impl<K: Hash + Eq + Clone, V> LruMap<K, V> {
    /// An empty map holding at most `cap` entries (at least 1).
    pub fn new(cap: usize) -> LruMap<K, V> {
        LruMap {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value of `key`, without touching it.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|s| &s.value)
    }

    /// Mark `key` as the most recently used and return its value, inserting
    /// `make()` first when it is absent (evicting the least recently used entry
    /// when the map is full).
    pub fn touch_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        self.clock += 1;
        let stamp = self.clock;
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            self.pop_oldest();
        }
        if self.order.len() >= 2 * self.cap {
            self.compact();
        }
        self.order.push_back((key.clone(), stamp));
        let slot = self.map.entry(key).or_insert_with(|| Slot {
            value: make(),
            stamp,
        });
        slot.stamp = stamp;
        &mut slot.value
    }

    /// Mark `key` as the most recently used and return its value, if it is
    /// there.
    pub fn touch(&mut self, key: &K) -> Option<&mut V> {
        if !self.map.contains_key(key) {
            return None;
        }
        self.clock += 1;
        let stamp = self.clock;
        if self.order.len() >= 2 * self.cap {
            self.compact();
        }
        self.order.push_back((key.clone(), stamp));
        let slot = self.map.get_mut(key)?;
        slot.stamp = stamp;
        Some(&mut slot.value)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        // Its touches in the queue are now stale and skipped later.
        self.map.remove(key).map(|s| s.value)
    }

    /// Remove and return the least recently used entry.
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        self.pop_oldest_if(|_| true)
    }

    /// Remove and return the least recently used entry if `pred` holds for its
    /// value (e.g. it has expired): callers forget stale state oldest first.
    pub fn pop_oldest_if(&mut self, pred: impl FnOnce(&V) -> bool) -> Option<(K, V)> {
        while let Some((key, stamp)) = self.order.front() {
            match self.map.get(key) {
                Some(slot) if slot.stamp == *stamp => {
                    if !pred(&slot.value) {
                        return None;
                    }
                    let (key, _) = self.order.pop_front()?;
                    let slot = self.map.remove(&key)?;
                    return Some((key, slot.value));
                }
                // A touch that a later one superseded, or of a removed key.
                _ => {
                    self.order.pop_front();
                }
            }
        }
        None
    }

    /// Drop the stale touches: afterwards the queue has one touch per entry.
    fn compact(&mut self) {
        let map = &self.map;
        self.order
            .retain(|(k, s)| map.get(k).is_some_and(|slot| slot.stamp == *s));
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_touched_when_full() {
        let mut m = LruMap::new(3);
        for k in ["a", "b", "c"] {
            *m.touch_or_insert_with(k, || 0) += 1;
        }
        // Touching "a" makes "b" the oldest.
        *m.touch_or_insert_with("a", || 0) += 1;
        *m.touch_or_insert_with("d", || 0) += 1;
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&"b"), None);
        assert_eq!(m.get(&"a"), Some(&2));
        assert_eq!(m.pop_oldest(), Some(("c", 1)));
        assert_eq!(m.pop_oldest(), Some(("a", 2)));
        assert_eq!(m.pop_oldest(), Some(("d", 1)));
        assert_eq!(m.pop_oldest(), None);
        assert!(m.is_empty());
    }

    #[test]
    fn touch_renews_without_inserting() {
        let mut m = LruMap::new(2);
        *m.touch_or_insert_with("a", || 1) += 0;
        *m.touch_or_insert_with("b", || 2) += 0;
        assert_eq!(m.touch(&"a").copied(), Some(1));
        assert_eq!(m.touch(&"z"), None);
        assert_eq!(m.len(), 2);
        // "a" was touched last: "b" goes first.
        m.touch_or_insert_with("c", || 3);
        assert_eq!(m.get(&"b"), None);
        assert_eq!(m.get(&"a"), Some(&1));
    }

    #[test]
    fn removed_keys_leave_no_live_touch() {
        let mut m = LruMap::new(2);
        m.touch_or_insert_with(1, || "one");
        m.touch_or_insert_with(2, || "two");
        assert_eq!(m.remove(&1), Some("one"));
        // Room for a new key without evicting 2.
        m.touch_or_insert_with(3, || "three");
        assert_eq!(m.get(&2), Some(&"two"));
        // A re-inserted key is new, not its old self.
        m.touch_or_insert_with(1, || "again");
        assert_eq!(m.get(&2), None, "2 was the oldest");
        assert_eq!(m.get(&1), Some(&"again"));
    }

    #[test]
    fn pop_oldest_if_stops_at_a_live_entry() {
        let mut m = LruMap::new(10);
        for k in 0..5 {
            m.touch_or_insert_with(k, || k * 10);
        }
        let mut gone = Vec::new();
        while let Some((k, _)) = m.pop_oldest_if(|v| *v < 30) {
            gone.push(k);
        }
        assert_eq!(gone, [0, 1, 2]);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn the_touch_queue_stays_within_twice_the_cap() {
        let mut m = LruMap::new(100);
        // One hot key touched over and over among cold ones.
        for i in 0..100_000u32 {
            m.touch_or_insert_with(0, || 0u32);
            m.touch_or_insert_with(1 + i % 50, || 0);
            assert!(m.queued() <= 200, "{} touches queued", m.queued());
        }
        assert_eq!(m.len(), 51);
        // Many distinct keys: always capped.
        for i in 0..100_000u32 {
            m.touch_or_insert_with(1000 + i, || 0);
            assert!(m.len() <= 100);
        }
        assert_eq!(m.len(), 100);
    }
}
