//! Leases still to cancel: fragments that left a placement (their object
//! was deleted, a metadata object was superseded, or a returning holder's
//! copy became surplus) and whose holders should free the space.
//!
//! The `released` family is bounded by time, not by hope that every
//! holder comes back: an entry is stamped with the first time the cancel
//! loop saw it, and forgotten a lease time later, when the holder's lease
//! has run out anyway (nothing renews a released fragment). Each entry
//! names its object, so a fragment that an upload placed again under the
//! same id (encoding is deterministic: delete a file and write it again)
//! is never cancelled: placing it again removes the entry in the same
//! batch, and the cancel loop checks the object's placement before it
//! sends.

use super::*;
use crate::coder::FragmentId;

/// A fragment whose lease is still to be cancelled on its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    pub fragment: FragmentId,
    /// The holder's peer id bytes.
    pub peer: Vec<u8>,
    /// The object the fragment belonged to (None: entries written before
    /// objects were recorded).
    pub object: Option<ObjectId>,
    /// When the cancel loop first saw the entry, by the maintenance clock
    /// (None: not seen yet).
    pub since: Option<u64>,
}

impl Released {
    /// The entry's key (fragment id ++ peer id bytes).
    pub fn key(&self) -> Vec<u8> {
        [&self.fragment.0[..], &self.peer].concat()
    }

    fn value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        if let Some(o) = &self.object {
            v.extend_from_slice(&o.0);
        }
        if let Some(t) = self.since {
            v.extend_from_slice(&t.to_be_bytes());
        }
        v
    }

    /// Parses a stored entry; None for a key that is not a fragment id and
    /// a peer.
    fn parse(key: &[u8], value: &[u8]) -> Option<Released> {
        if key.len() <= 32 {
            return None;
        }
        let fragment = FragmentId(key[..32].try_into().ok()?);
        let (object, rest) = match value.len() {
            32 | 40 => (Some(ObjectId(value[..32].try_into().ok()?)), &value[32..]),
            _ => (None, value),
        };
        let since = match rest.len() {
            8 => Some(u64::from_be_bytes(rest.try_into().ok()?)),
            _ => None,
        };
        Some(Released {
            fragment,
            peer: key[32..].to_vec(),
            object,
            since,
        })
    }
}

/// Queues the lease of one fragment of `object` for cancelling (in `batch`).
pub(super) fn release(batch: &mut Batch, object: &ObjectId, f: &FragmentLoc) {
    let entry = Released {
        fragment: f.id,
        peer: f.peer.clone(),
        object: Some(*object),
        since: None,
    };
    batch.put(Cf::Released, entry.key(), entry.value());
}

/// Takes back any pending cancel of the fragments of `placement` (in
/// `batch`): they hold live data again.
pub(super) fn unrelease(batch: &mut Batch, placement: &Placement) {
    for f in &placement.fragments {
        batch.delete(Cf::Released, [&f.id.0[..], &f.peer].concat());
    }
}

impl Vault {
    /// Up to `limit` fragments whose leases are still to be cancelled, in
    /// key order from just after `after` (so holders that never answer do
    /// not keep the loop from the rest).
    pub fn released(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Released>> {
        let from = after.map(|a| [a, &[0]].concat());
        let rows =
            self.store
                .scan_from(Cf::Released, &[], from.as_deref().unwrap_or(&[]), limit)?;
        Ok(rows
            .iter()
            .filter_map(|(k, v)| Released::parse(k, v))
            .collect())
    }

    /// Records when the cancel loop first saw these entries.
    pub fn stamp_released(&self, items: &[Released], now: u64) -> Result<()> {
        let mut b = Batch::default();
        for r in items {
            let stamped = Released {
                since: Some(now),
                ..r.clone()
            };
            b.put(Cf::Released, stamped.key(), stamped.value());
        }
        Ok(self.store.write(b)?)
    }

    /// Forgets entries: cancelled, expired, or placed again.
    pub fn forget_released(&self, items: &[Released]) -> Result<()> {
        let mut b = Batch::default();
        for r in items {
            b.delete(Cf::Released, r.key());
        }
        Ok(self.store.write(b)?)
    }

    /// Whether the entry's fragment is in its object's placement again (an
    /// upload of the same content placed it on the same holder).
    pub fn placed_again(&self, r: &Released) -> Result<bool> {
        let Some(object) = &r.object else {
            return Ok(false);
        };
        Ok(self.placement(object)?.is_some_and(|p| {
            p.fragments
                .iter()
                .any(|f| f.id == r.fragment && f.peer == r.peer)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(id: u8, peer: u8) -> Placement {
        Placement {
            len: 1,
            k: 1,
            fragments: vec![FragmentLoc {
                index: 0,
                id: FragmentId([id; 32]),
                peer: vec![peer],
                proofs: Vec::new(),
            }],
            next_index: 1,
        }
    }

    /// Delete a synced file and write the same bytes again: the object
    /// and its fragment ids come back the same, and placing it again takes
    /// back the pending cancel of those fragments (a cancel sent after
    /// the new upload would destroy live data).
    #[test]
    fn placing_the_same_fragments_again_takes_back_their_cancel() {
        let store = Store::in_memory();
        let keys = || VaultKeys::from_master(&[3u8; 32]);
        Vault::create_in(&store, &keys(), 0, 0).unwrap();
        let v = Vault::open_in(store, "t", keys(), Default::default()).unwrap();
        let content = vec![5u8; 300_000];
        let write = |name: &[u8]| {
            let (ino, _) = v
                .mknod(ROOT_INO, name, Kind::File, 0o644, 0, 0, 0, None)
                .unwrap();
            v.write(ino, 0, &content).unwrap();
            v.fsync(ino).unwrap();
            v.upload_queue(None, 10).unwrap()[0]
        };
        let id = write(b"a");
        assert!(v.commit_placement(&id, &placed(1, 9)).unwrap());
        v.unlink(ROOT_INO, b"a").unwrap();
        let pending = v.released(None, 10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].object, Some(id));
        assert!(!v.placed_again(&pending[0]).unwrap());
        // Stamped on first sight, the entry keeps its object.
        v.stamp_released(&pending, 77).unwrap();
        let stamped = v.released(None, 10).unwrap();
        assert_eq!((stamped[0].object, stamped[0].since), (Some(id), Some(77)));

        assert_eq!(write(b"b"), id, "same content, same object");
        assert!(v.commit_placement(&id, &placed(1, 9)).unwrap());
        assert!(v.placed_again(&stamped[0]).unwrap());
        assert_eq!(v.released(None, 10).unwrap(), vec![], "cancel taken back");

        // Entries are visited from a cursor.
        let mut b = Batch::default();
        for i in 10..20u8 {
            release(&mut b, &id, &placed(i, 1).fragments[0]);
        }
        v.store.write(b).unwrap();
        let first = v.released(None, 4).unwrap();
        let next = v.released(Some(&first[3].key()), 100).unwrap();
        assert_eq!(first.len() + next.len(), 10);
        assert!(next.iter().all(|r| r.key() > first[3].key()));
        v.shutdown().unwrap();
    }

    #[test]
    fn entries_round_trip_and_old_empty_values_still_parse() {
        let r = Released {
            fragment: FragmentId([7; 32]),
            peer: vec![1, 2, 3],
            object: Some(ObjectId([9; 32])),
            since: Some(1_800_000_000),
        };
        assert_eq!(Released::parse(&r.key(), &r.value()), Some(r.clone()));
        let fresh = Released {
            since: None,
            ..r.clone()
        };
        assert_eq!(Released::parse(&fresh.key(), &fresh.value()), Some(fresh));
        let old = Released::parse(&r.key(), &[]).unwrap();
        assert_eq!((old.object, old.since), (None, None));
        let stamped_old = Released {
            object: None,
            ..r.clone()
        };
        assert_eq!(
            Released::parse(&stamped_old.key(), &stamped_old.value()),
            Some(stamped_old)
        );
        assert_eq!(Released::parse(&[1; 32], &[]), None);
    }
}
