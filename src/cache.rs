//! A byte-bounded LRU of plaintext chunks, keyed by object id.
//!
//! Architecture invariant: memory only, no IO. Callers fill it.

use std::sync::Arc;

use lru::LruCache;

use crate::crypto::ObjectId;

/// Plaintext chunks recently read or written, at most `capacity` bytes.
pub struct ChunkCache {
    lru: LruCache<ObjectId, Arc<Vec<u8>>>,
    bytes: usize,
    capacity: usize,
}

impl ChunkCache {
    pub fn new(capacity: usize) -> Self {
        ChunkCache {
            lru: LruCache::unbounded(),
            bytes: 0,
            capacity,
        }
    }

    pub fn get(&mut self, id: &ObjectId) -> Option<Arc<Vec<u8>>> {
        self.lru.get(id).cloned()
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.lru.contains(id)
    }

    pub fn insert(&mut self, id: ObjectId, data: Arc<Vec<u8>>) {
        if data.len() > self.capacity {
            return;
        }
        self.bytes += data.len();
        if let Some(old) = self.lru.put(id, data) {
            self.bytes -= old.len();
        }
        while self.bytes > self.capacity {
            match self.lru.pop_lru() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    pub fn remove(&mut self, id: &ObjectId) {
        if let Some(old) = self.lru.pop(id) {
            self.bytes -= old.len();
        }
    }

    /// Forgets everything (the demo shows reads coming from peers).
    pub fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

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
    }
}
