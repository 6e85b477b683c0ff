//! A node's store of fragments held for others, within its donation.
//!
//! Fragments live in their own RocksDB (`DATA_DIR/node/db`), separate from
//! any vault: a node's identity and what it stores are unrelated to the
//! vaults on the same machine. A PUT is acknowledged only after the WAL is
//! synced, and only if the id matches the bytes and the header parses.

use std::path::Path;
use std::sync::Mutex;

use crate::coder::{FragmentId, Header};
use crate::net::proto::Capacity;
use crate::store::{Batch, Cf, Store, StoreError};

const USED_KEY: &[u8] = b"used";
const COUNT_KEY: &[u8] = b"count";

/// Outcome of a PUT.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// Not stored; the reason is sent back to the peer.
    Refused(String),
}

/// Fragments this node stores for others.
pub struct FragmentStore {
    store: Store,
    donated: u64,
    /// Bytes and fragments stored; guarded so the check and the update are
    /// one step.
    used: Mutex<Usage>,
}

#[derive(Clone, Copy, Default)]
struct Usage {
    bytes: u64,
    fragments: u64,
}

impl FragmentStore {
    pub fn open(dir: &Path, donated: u64) -> Result<Self, StoreError> {
        let store = Store::open_fragments(dir)?;
        let read = |key: &[u8]| -> Result<u64, StoreError> {
            Ok(match store.get(Cf::Meta, key)? {
                Some(v) if v.len() == 8 => u64::from_be_bytes(v.try_into().expect("8 bytes")),
                _ => 0,
            })
        };
        let mut usage = Usage {
            bytes: read(USED_KEY)?,
            fragments: read(COUNT_KEY)?,
        };
        if usage.bytes > 0 && usage.fragments == 0 {
            // Written before the count was kept.
            usage.fragments = store.scan(Cf::Fragments, &[], usize::MAX)?.len() as u64;
        }
        Ok(FragmentStore {
            store,
            donated,
            used: Mutex::new(usage),
        })
    }

    fn used_guard(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn capacity(&self) -> Capacity {
        let used = self.used_guard().bytes;
        Capacity {
            donated: self.donated,
            used,
            available: self.donated.saturating_sub(used),
        }
    }

    /// Stores a fragment if it is well formed and fits the donation.
    pub fn put(&self, id: &FragmentId, data: &[u8]) -> Result<PutOutcome, StoreError> {
        if FragmentId::of(data) != *id {
            return Ok(PutOutcome::Refused(
                "fragment bytes do not match their id".into(),
            ));
        }
        if let Err(e) = Header::parse(data) {
            return Ok(PutOutcome::Refused(e.to_string()));
        }
        {
            let mut used = self.used_guard();
            if self.store.get(Cf::Fragments, &id.0)?.is_some() {
                return Ok(PutOutcome::Stored);
            }
            let after = Usage {
                bytes: used.bytes + data.len() as u64,
                fragments: used.fragments + 1,
            };
            if after.bytes > self.donated {
                return Ok(PutOutcome::Refused(format!(
                    "donation full: storing {} of {} bytes donated",
                    used.bytes, self.donated
                )));
            }
            let mut b = Batch::default();
            b.put(Cf::Fragments, id.0.to_vec(), data.to_vec());
            b.put(
                Cf::Meta,
                USED_KEY.to_vec(),
                after.bytes.to_be_bytes().to_vec(),
            );
            b.put(
                Cf::Meta,
                COUNT_KEY.to_vec(),
                after.fragments.to_be_bytes().to_vec(),
            );
            self.store.write(b)?;
            *used = after;
        }
        self.store.sync()?;
        Ok(PutOutcome::Stored)
    }

    pub fn get(&self, id: &FragmentId) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(Cf::Fragments, &id.0)
    }

    pub fn has(&self, ids: &[FragmentId]) -> Result<Vec<bool>, StoreError> {
        ids.iter()
            .map(|id| Ok(self.store.get(Cf::Fragments, &id.0)?.is_some()))
            .collect()
    }

    /// Number of fragments held.
    pub fn count(&self) -> u64 {
        self.used_guard().fragments
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::encode;

    #[test]
    fn put_checks_id_header_and_donation() {
        let dir = tempfile::tempdir().unwrap();
        let frags = encode(&vec![5u8; 100_000], 2, 0..4).unwrap();
        let len = frags[0].bytes.len() as u64;
        let fs = FragmentStore::open(dir.path(), len * 2 + 10).unwrap();
        assert_eq!(
            fs.put(&frags[0].id, &frags[0].bytes).unwrap(),
            PutOutcome::Stored
        );
        // Idempotent.
        assert_eq!(
            fs.put(&frags[0].id, &frags[0].bytes).unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(fs.capacity().used, len);
        // Wrong id.
        assert!(matches!(
            fs.put(&frags[0].id, &frags[1].bytes).unwrap(),
            PutOutcome::Refused(_)
        ));
        // Junk with a matching id.
        let junk = vec![1u8; 64];
        assert!(matches!(
            fs.put(&FragmentId::of(&junk), &junk).unwrap(),
            PutOutcome::Refused(_)
        ));
        assert_eq!(
            fs.put(&frags[1].id, &frags[1].bytes).unwrap(),
            PutOutcome::Stored
        );
        match fs.put(&frags[2].id, &frags[2].bytes).unwrap() {
            PutOutcome::Refused(r) => assert!(r.contains("donation full"), "{r}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(fs.get(&frags[1].id).unwrap().unwrap(), frags[1].bytes);
        assert_eq!(
            fs.has(&[frags[0].id, frags[2].id]).unwrap(),
            vec![true, false]
        );
        drop(fs);
        let fs = FragmentStore::open(dir.path(), len * 2 + 10).unwrap();
        assert_eq!(fs.capacity().used, 2 * len);
        assert_eq!(fs.count(), 2);
    }
}
