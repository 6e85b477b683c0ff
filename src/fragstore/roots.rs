//! Root records kept for vaults (`ROOT_PUT`/`ROOT_GET` and DHT puts):
//! checked before they are kept, only ever replaced by a higher sequence
//! number, and put back into the DHT at start.
//!
//! A root record is storage like any other: its bytes count against the
//! node's donation and against the share of the peer that put it (so a
//! node that donates nothing keeps none for others), one peer may keep at
//! most [`ROOTS_PER_PEER`], the node at most [`MAX_ROOTS`] records and
//! [`MAX_ROOT_BYTES`], and a record nobody offered again for
//! [`ROOT_TTL_SECS`] is dropped. Vaults offer theirs again every hour while
//! mounted. The node's own vault's record is kept without charge.
//!
//! Each value in the roots family: `"DZKR" | kept at u64 | who u8 (0: this
//! node's own vault, 1: a peer) | peer id length u8 | peer id | record`.
//! Values from before this layout are the bare record.

use std::collections::HashMap;

use crate::store::{Batch, Cf, StoreError};

use super::{disk_space, safety_margin, FragmentStore};

/// Root records one peer may have kept on a node.
pub const ROOTS_PER_PEER: u32 = 16;
/// Root records a node keeps at most.
pub const MAX_ROOTS: u64 = 4096;
/// Bytes of root records a node keeps at most.
pub const MAX_ROOT_BYTES: u64 = 16 << 20;
/// A record not offered again for this long is dropped (180 days).
pub const ROOT_TTL_SECS: u64 = 180 * 24 * 3600;
/// An unchanged record offered again updates its time at most this often.
const TOUCH_SECS: u64 = 24 * 3600;

const MAGIC: &[u8; 4] = b"DZKR";

/// What became of a root record offered to this node.
#[derive(Debug, PartialEq, Eq)]
pub enum RootOutcome {
    /// Kept (new key, or a higher sequence number than the one held).
    Stored,
    /// Already held (the same record).
    Same,
    /// Refused: the reason says why (bad signature, wrong key, not newer,
    /// over the peer's share or the node's limits).
    Refused(String),
}

/// Who offers a root record.
#[derive(Clone, Copy, Debug)]
pub enum RootFrom<'a> {
    /// A peer, with what it stores for this node (its ledger's "gives").
    Peer { id: &'a [u8], gives: u64 },
    /// The vault on this node: kept without charge.
    Own,
}

/// One kept record and who it is charged to (`None`: nobody).
struct Kept {
    at: u64,
    peer: Option<Vec<u8>>,
    record: Vec<u8>,
}

impl Kept {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.record.len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.at.to_be_bytes());
        match &self.peer {
            None => v.extend_from_slice(&[0, 0]),
            Some(p) => {
                v.push(1);
                v.push(p.len() as u8);
                v.extend_from_slice(p);
            }
        }
        v.extend_from_slice(&self.record);
        v
    }

    /// The kept value; a bare record from before this layout counts as
    /// kept at `now` and charged to nobody.
    fn decode(v: &[u8], now: u64) -> Option<Kept> {
        if v.len() < 14 || &v[..4] != MAGIC {
            return Some(Kept {
                at: now,
                peer: Some(Vec::new()),
                record: v.to_vec(),
            });
        }
        let at = u64::from_be_bytes(v[4..12].try_into().ok()?);
        let len = v[13] as usize;
        let rest = v.get(14..)?;
        let (id, record) = (rest.get(..len)?, rest.get(len..)?);
        let peer = match v[12] {
            0 => None,
            1 => Some(id.to_vec()),
            _ => return None,
        };
        Some(Kept {
            at,
            peer,
            record: record.to_vec(),
        })
    }

    /// The peer charged for it, if any.
    fn charged(&self) -> Option<&[u8]> {
        self.peer.as_deref().filter(|p| !p.is_empty())
    }
}

/// Root records held: how many, their bytes, and per peer.
#[derive(Default)]
pub(super) struct RootUsage {
    count: u64,
    bytes: u64,
    per_peer: HashMap<Vec<u8>, u32>,
}

impl RootUsage {
    fn add(&mut self, k: &Kept, sign: i64) {
        let len = k.record.len() as u64;
        if sign > 0 {
            self.count += 1;
            self.bytes += len;
        } else {
            self.count = self.count.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(len);
        }
        if let Some(p) = k.charged() {
            let n = self.per_peer.entry(p.to_vec()).or_default();
            *n = n.saturating_add_signed(sign as i32);
            if *n == 0 {
                self.per_peer.remove(p);
            }
        }
    }
}

impl FragmentStore {
    /// Sums the roots family at open: the root usage, and each record's
    /// bytes charged to its peer (added to `usage`).
    pub(super) fn sum_roots(
        store: &crate::store::Store,
        now: u64,
        usage: &mut super::Usage,
    ) -> Result<RootUsage, StoreError> {
        let mut r = RootUsage::default();
        for (_, v) in store.scan(Cf::Roots, &[], usize::MAX)? {
            let Some(k) = Kept::decode(&v, now) else {
                continue;
            };
            r.add(&k, 1);
            if let Some(p) = k.charged() {
                usage.bytes += k.record.len() as u64;
                *usage.by_peer.entry(p.to_vec()).or_default() += k.record.len() as u64;
            }
        }
        Ok(r)
    }

    /// Keeps a vault's root record if it is valid for `key`, newer than
    /// the one held, and (from a peer) within the peer's share and the
    /// node's limits. An unchanged record offered again stays another
    /// [`ROOT_TTL_SECS`].
    pub fn put_root(
        &self,
        key: &[u8; 32],
        record: &[u8],
        from: RootFrom<'_>,
    ) -> Result<RootOutcome, StoreError> {
        let new = match crate::root::RootRecord::check(record, key) {
            Ok(r) => r,
            Err(e) => return Ok(RootOutcome::Refused(e.to_string())),
        };
        let now = self.clock.now();
        let mut held = self.root_usage();
        let old = match self.store.get(Cf::Roots, key)? {
            Some(v) => Kept::decode(&v, now),
            None => None,
        };
        if let Some(old) = &old {
            if old.record == record {
                if now.saturating_sub(old.at) >= TOUCH_SECS {
                    let touched = Kept {
                        at: now,
                        peer: old.peer.clone(),
                        record: old.record.clone(),
                    };
                    let mut b = Batch::default();
                    b.put(Cf::Roots, key.to_vec(), touched.encode());
                    self.store.write(b)?;
                }
                return Ok(RootOutcome::Same);
            }
            if let Ok(o) = crate::root::RootRecord::parse(&old.record) {
                if o.seq >= new.seq {
                    return Ok(RootOutcome::Refused(format!(
                        "sequence number {} is not newer than the {} held",
                        new.seq, o.seq
                    )));
                }
            }
        }
        let kept = Kept {
            at: now,
            peer: match from {
                RootFrom::Own => None,
                RootFrom::Peer { id, .. } => Some(id.to_vec()),
            },
            record: record.to_vec(),
        };
        if let RootFrom::Peer { id, gives } = from {
            if let Some(why) = self.root_refusal(&held, old.as_ref(), &kept, id, gives) {
                return Ok(RootOutcome::Refused(why));
            }
        }
        let mut b = Batch::default();
        b.put(Cf::Roots, key.to_vec(), kept.encode());
        self.store.write(b)?;
        self.store.sync()?;
        if let Some(old) = &old {
            held.add(old, -1);
            self.charge(old, -1);
        }
        held.add(&kept, 1);
        self.charge(&kept, 1);
        Ok(RootOutcome::Stored)
    }

    /// Why a peer's record may not be kept, if it may not.
    fn root_refusal(
        &self,
        held: &RootUsage,
        old: Option<&Kept>,
        new: &Kept,
        peer: &[u8],
        gives: u64,
    ) -> Option<String> {
        if self.donated == 0 {
            return Some("this node donates no space, so it keeps no root records".into());
        }
        let len = new.record.len() as u64;
        let freed = old.map_or(0, |o| o.record.len() as u64);
        if old.is_none() {
            let mine = held.per_peer.get(peer).copied().unwrap_or(0);
            if mine >= ROOTS_PER_PEER {
                return Some(format!(
                    "this node keeps {mine} root records for you already, the most it keeps for one peer"
                ));
            }
            if held.count >= MAX_ROOTS {
                return Some(format!(
                    "this node keeps {} root records, the most it keeps",
                    held.count
                ));
            }
        }
        if held.bytes.saturating_sub(freed) + len > MAX_ROOT_BYTES {
            return Some(format!(
                "this node keeps {} bytes of root records, near the most it keeps",
                held.bytes
            ));
        }
        let u = self.usage();
        if u.bytes.saturating_sub(freed) + len > self.donated {
            return Some(format!(
                "donation full: storing {} of {} bytes donated",
                u.bytes, self.donated
            ));
        }
        let mine_before = old
            .filter(|o| o.charged() == Some(peer))
            .map_or(0, |_| freed);
        let takes = u
            .by_peer
            .get(peer)
            .copied()
            .unwrap_or(0)
            .saturating_sub(mine_before);
        if !crate::quota::within_grace(takes, len, gives, self.grace) {
            return Some(format!(
                "over your share: this node stores {takes} bytes for you and you store {gives} \
                 bytes for it"
            ));
        }
        drop(u);
        if let Some((free, size)) = disk_space(&self.dir) {
            if free < safety_margin(size) + len {
                return Some(format!("disk nearly full: {free} bytes free"));
            }
        }
        None
    }

    /// Adds (`sign` 1) or takes back (-1) a record's bytes from the
    /// donation's usage and its peer's share.
    fn charge(&self, k: &Kept, sign: i64) {
        let Some(p) = k.charged() else {
            return;
        };
        let len = k.record.len() as u64;
        let mut u = self.usage();
        if sign > 0 {
            u.bytes += len;
            *u.by_peer.entry(p.to_vec()).or_default() += len;
        } else {
            u.bytes = u.bytes.saturating_sub(len);
            if let Some(t) = u.by_peer.get_mut(p) {
                *t = t.saturating_sub(len);
            }
        }
    }

    fn root_usage(&self) -> std::sync::MutexGuard<'_, RootUsage> {
        self.roots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops peers' records nobody offered again for [`ROOT_TTL_SECS`];
    /// returns their keys (to drop from the DHT store too).
    pub fn expire_roots(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let now = self.clock.now();
        let mut held = self.root_usage();
        let mut gone = Vec::new();
        let mut b = Batch::default();
        for (k, v) in self.store.scan(Cf::Roots, &[], usize::MAX)? {
            let (Ok(key), Some(kept)) = (<[u8; 32]>::try_from(k.as_slice()), Kept::decode(&v, now))
            else {
                continue;
            };
            if kept.peer.is_some() && kept.at.saturating_add(ROOT_TTL_SECS) <= now {
                b.delete(Cf::Roots, k);
                held.add(&kept, -1);
                self.charge(&kept, -1);
                gone.push(key);
            }
        }
        if !gone.is_empty() {
            self.store.write(b)?;
            self.store.sync()?;
        }
        Ok(gone)
    }

    /// The root record held under `key`, if any.
    pub fn get_root(&self, key: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .store
            .get(Cf::Roots, key)?
            .and_then(|v| Kept::decode(&v, now))
            .map(|k| k.record))
    }

    /// How many root records are held.
    pub fn root_count(&self) -> u64 {
        self.root_usage().count
    }

    /// Every root record held (loaded into the DHT store at start).
    pub fn roots(&self) -> Result<crate::store::Records, StoreError> {
        let now = self.clock.now();
        Ok(self
            .store
            .scan(Cf::Roots, &[], usize::MAX)?
            .into_iter()
            .filter_map(|(k, v)| Some((k, Kept::decode(&v, now)?.record)))
            .collect())
    }
}
