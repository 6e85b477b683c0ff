//! The one byte-bounded LRU: entries weigh their size in bytes, and the
//! cache keeps at most `capacity` bytes. Used for plaintext chunks in
//! memory ([`ChunkCache`]) and for the index of local object copies kept
//! on disk (the vault's disk cache, whose owner deletes what it evicts).
//!
//! Architecture invariant: memory only, no IO. Callers fill it.

use std::hash::Hash;
use std::sync::Arc;

use lru::LruCache;

use crate::crypto::ObjectId;

/// What an entry weighs, in bytes.
pub trait Weigh {
    fn weight(&self) -> u64;
}

impl Weigh for Arc<Vec<u8>> {
    fn weight(&self) -> u64 {
        self.len() as u64
    }
}

/// A size in bytes standing for something stored elsewhere.
impl Weigh for u64 {
    fn weight(&self) -> u64 {
        *self
    }
}

/// Least recently used entries first out, bounded by their total weight.
pub struct ByteLru<K: Hash + Eq, V: Weigh> {
    lru: LruCache<K, V>,
    bytes: u64,
    capacity: u64,
}

impl<K: Hash + Eq, V: Weigh> ByteLru<K, V> {
    pub fn new(capacity: u64) -> Self {
        ByteLru {
            lru: LruCache::unbounded(),
            bytes: 0,
            capacity,
        }
    }

    /// The entry, marked as just used.
    pub fn get(&mut self, k: &K) -> Option<&V> {
        self.lru.get(k)
    }

    pub fn contains(&self, k: &K) -> bool {
        self.lru.contains(k)
    }

    /// Adds (or replaces) an entry, then drops the least recently used
    /// ones while over capacity. An entry heavier than the whole capacity
    /// is not kept.
    pub fn insert(&mut self, k: K, v: V) {
        if v.weight() > self.capacity {
            self.remove(&k);
            return;
        }
        self.put(k, v);
        while self.pop_excess().is_some() {}
    }

    /// Adds (or replaces) an entry without evicting anything: the caller
    /// takes the excess out with [`pop_excess`](Self::pop_excess) (it has
    /// work to do for each).
    pub fn put(&mut self, k: K, v: V) {
        self.bytes += v.weight();
        if let Some(old) = self.lru.put(k, v) {
            self.bytes -= old.weight();
        }
    }

    /// The least recently used entry, taken out, while over capacity.
    pub fn pop_excess(&mut self) -> Option<(K, V)> {
        if self.bytes <= self.capacity {
            return None;
        }
        let (k, v) = self.lru.pop_lru()?;
        self.bytes -= v.weight();
        Some((k, v))
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let v = self.lru.pop(k)?;
        self.bytes -= v.weight();
        Some(v)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// Plaintext chunks recently read or written, keyed by object id.
pub type ChunkCache = ByteLru<ObjectId, Arc<Vec<u8>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId([n; 32])
    }

    #[test]
    fn evicts_by_bytes_in_lru_order() {
        let mut c = ChunkCache::new(10);
        c.insert(id(1), Arc::new(vec![0; 4]));
        c.insert(id(2), Arc::new(vec![0; 4]));
        assert!(c.get(&id(1)).is_some()); // 1 is now most recent
        c.insert(id(3), Arc::new(vec![0; 4]));
        assert!(c.contains(&id(1)) && c.contains(&id(3)) && !c.contains(&id(2)));
        assert_eq!(c.bytes(), 8);
        c.insert(id(4), Arc::new(vec![0; 11])); // larger than the cache: ignored
        assert!(!c.contains(&id(4)));
        c.remove(&id(1));
        assert_eq!(c.bytes(), 4);
        // Replacing an entry counts its new weight only.
        c.insert(id(3), Arc::new(vec![0; 6]));
        assert_eq!(c.bytes(), 6);
    }

    #[test]
    fn put_leaves_the_excess_to_the_caller() {
        let mut c: ByteLru<u8, u64> = ByteLru::new(10);
        c.put(1, 6);
        c.put(2, 6);
        c.put(3, 6);
        assert_eq!(c.bytes(), 18);
        assert_eq!(c.pop_excess(), Some((1, 6)));
        assert_eq!(c.pop_excess(), Some((2, 6)));
        assert_eq!(c.pop_excess(), None);
        assert_eq!(c.bytes(), 6);
    }
}
