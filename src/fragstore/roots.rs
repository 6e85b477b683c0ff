//! Root records kept for vaults (`ROOT_PUT`/`ROOT_GET`): checked before
//! they are kept, only ever replaced by a higher sequence number, and put
//! back into the DHT at start.

use crate::store::{Batch, Cf, StoreError};

use super::FragmentStore;

/// What became of a root record offered to this node.
#[derive(Debug, PartialEq, Eq)]
pub enum RootOutcome {
    /// Kept (new key, or a higher sequence number than the one held).
    Stored,
    /// Already held (the same record).
    Same,
    /// Refused: the reason says why (bad signature, wrong key, not newer).
    Refused(String),
}

impl FragmentStore {
    /// Keeps a vault's root record if it is valid for `key` and newer than
    /// the one held. Root records never expire here: a vault whose owner is
    /// away for months must still be found.
    pub fn put_root(&self, key: &[u8; 32], record: &[u8]) -> Result<RootOutcome, StoreError> {
        let new = match crate::root::RootRecord::check(record, key) {
            Ok(r) => r,
            Err(e) => return Ok(RootOutcome::Refused(e.to_string())),
        };
        let mut held = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.store.get(Cf::Roots, key)?;
        if let Some(old) = &old {
            if old == record {
                return Ok(RootOutcome::Same);
            }
            if let Ok(old) = crate::root::RootRecord::parse(old) {
                if old.seq >= new.seq {
                    return Ok(RootOutcome::Refused(format!(
                        "sequence number {} is not newer than the {} held",
                        new.seq, old.seq
                    )));
                }
            }
        }
        let mut b = Batch::default();
        b.put(Cf::Roots, key.to_vec(), record.to_vec());
        self.store.write(b)?;
        self.store.sync()?;
        if old.is_none() {
            *held += 1;
        }
        Ok(RootOutcome::Stored)
    }

    /// The root record held under `key`, if any.
    pub fn get_root(&self, key: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(Cf::Roots, key)
    }

    /// How many root records are held.
    pub fn root_count(&self) -> u64 {
        *self.roots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every root record held (loaded into the DHT store at start).
    pub fn roots(&self) -> Result<crate::store::Records, StoreError> {
        self.store.scan(Cf::Roots, &[], usize::MAX)
    }
}
