//! A node's store of fragments held for others, within its donation.
//!
//! Fragments live in their own store (`DATA_DIR/node`: RocksDB index, small
//! fragments inline, large ones as files), separate from any vault: a node's
//! identity and what it stores are unrelated to the vaults on the same
//! machine. A PUT is acknowledged only after the bytes and the index are
//! synced, and only if the id matches the bytes and the header parses.
//! (Files rather than BlobDB values: a value would be written twice, to the
//! WAL and again at flush; measured, the node CPU of a sync halved.)
//!
//! This file holds the store and PUT/GET; `leases` renews, cancels and
//! expires, `roots` keeps vaults' root records.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::coder::{FragmentId, Header};
use crate::crypto::ObjectId;
use crate::maint::Clock;
pub use crate::store::ObjectData;
use crate::store::{Batch, Cf, Store, StoreError};

mod leases;
mod roots;
#[cfg(test)]
mod tests;

pub use roots::{RootFrom, RootOutcome, MAX_ROOTS, MAX_ROOT_BYTES, ROOTS_PER_PEER, ROOT_TTL_SECS};

/// A lease as the storing peer sees it: hashes of the owner's secrets and
/// a duration. Renewing or cancelling needs the secret itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTerms {
    pub renew_hash: [u8; 32],
    pub cancel_hash: [u8; 32],
    pub secs: u32,
}

impl LeaseTerms {
    /// Terms for the owner's secrets.
    pub fn new(renew: &[u8; 32], cancel: &[u8; 32], secs: u32) -> Self {
        LeaseTerms {
            renew_hash: *blake3::hash(renew).as_bytes(),
            cancel_hash: *blake3::hash(cancel).as_bytes(),
            secs,
        }
    }
}

/// Space a node offers to others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capacity {
    /// What the node donates.
    pub donated: u64,
    /// What it stores for others now.
    pub used: u64,
    /// What it would accept now (donation left, limited by free disk).
    pub available: u64,
}

/// Outcome of a PUT.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// Not stored; the reason is sent back to the peer.
    Refused(String),
}

pub use crate::quota::safety_margin;

/// Free bytes and total size of the filesystem holding `dir`.
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = st.fragment_size();
    Some((st.blocks_available() * frag, st.blocks() * frag))
}

/// What is stored (or reserved by PUTs in progress), per node and per peer.
#[derive(Default)]
struct Usage {
    bytes: u64,
    fragments: u64,
    /// Bytes stored for each peer (the ledger's "takes" side).
    by_peer: HashMap<Vec<u8>, u64>,
    /// PUTs in progress.
    storing: HashSet<FragmentId>,
    /// What each peer stored for this node when it last sent a PUT (the
    /// ledger's "gives"), to sum the grace in use.
    gives: HashMap<Vec<u8>, u64>,
}

/// The grace all peers share on a node that also keeps a vault (and so
/// can be given back to): a quarter of the donation, at least one peer's
/// grace. Fresh identities are free, so beyond it a newcomer must give
/// before it takes. A contribution node gives its whole donation (see
/// [`FragmentStore::with_grace_pool`]).
pub fn grace_pool(donated: u64, grace: u64) -> u64 {
    (donated / 4).max(grace)
}

/// Fragments this node stores for others.
pub struct FragmentStore {
    store: Store,
    dir: std::path::PathBuf,
    donated: u64,
    /// What any peer may store here beyond what it stores for this node.
    grace: u64,
    /// What all peers together may store here beyond what they store for
    /// this node.
    pool: u64,
    used: Mutex<Usage>,
    /// Root records held; the lock also serializes updates (check the
    /// sequence, then store). Taken before `used`, never after.
    roots: Mutex<roots::RootUsage>,
    /// Leases age by this clock (simulated in tests and the simulator).
    clock: Arc<dyn Clock>,
    /// Fragments deleted because their lease ran out, since open.
    expired: std::sync::atomic::AtomicU64,
}

/// Longest lease a node grants, whatever the owner asks.
pub const MAX_LEASE_SECS: u32 = 90 * 24 * 3600;

/// One index record: the fragment's length, lease and the peer it is for.
struct Entry {
    len: u64,
    expires: u64,
    renew_hash: [u8; 32],
    cancel_hash: [u8; 32],
    peer: Vec<u8>,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(80 + self.peer.len());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.expires.to_be_bytes());
        v.extend_from_slice(&self.renew_hash);
        v.extend_from_slice(&self.cancel_hash);
        v.extend_from_slice(&self.peer);
        v
    }

    fn decode(v: &[u8]) -> Option<Entry> {
        if v.len() < 80 {
            return None;
        }
        Some(Entry {
            len: u64::from_be_bytes(v[..8].try_into().ok()?),
            expires: u64::from_be_bytes(v[8..16].try_into().ok()?),
            renew_hash: v[16..48].try_into().ok()?,
            cancel_hash: v[48..80].try_into().ok()?,
            peer: v[80..].to_vec(),
        })
    }
}

impl FragmentStore {
    /// Opens the store; usage and the per-peer ledger are summed from the
    /// index, so they are exact after any crash.
    pub fn open(dir: &Path, donated: u64, grace: u64) -> Result<Self, StoreError> {
        Self::open_with_clock(dir, donated, grace, crate::maint::clock::system())
    }

    /// Like [`open`](Self::open), with leases aging by `clock`.
    pub fn open_with_clock(
        dir: &Path,
        donated: u64,
        grace: u64,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let store = Store::open_fragments(dir)?;
        let mut usage = Usage::default();
        for (_, v) in store.scan(Cf::Fragments, &[], usize::MAX)? {
            let Some(e) = Entry::decode(&v) else {
                continue;
            };
            usage.bytes += e.len;
            usage.fragments += 1;
            *usage.by_peer.entry(e.peer).or_default() += e.len;
        }
        // A crash between writing a fragment's file and indexing it leaves
        // a file nobody counts.
        let removed = store.remove_unreferenced_files(|id| {
            matches!(store.get(Cf::Fragments, &id.0), Ok(Some(_)))
        })?;
        if removed > 0 {
            tracing::info!("removed {removed} fragment files left unindexed by a crash");
        }
        let roots = Self::sum_roots(&store, clock.now(), &mut usage)?;
        Ok(FragmentStore {
            store,
            dir: dir.to_path_buf(),
            donated,
            grace,
            pool: grace_pool(donated, grace),
            used: Mutex::new(usage),
            roots: Mutex::new(roots),
            clock,
            expired: Default::default(),
        })
    }

    /// Sets what all peers together may store beyond what they give
    /// (default [`grace_pool`]).
    pub fn with_grace_pool(mut self, pool: u64) -> Self {
        self.pool = pool;
        self
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn capacity(&self) -> Capacity {
        let used = self.usage().bytes;
        let disk = disk_space(&self.dir)
            .map_or(0, |(free, size)| free.saturating_sub(safety_margin(size)));
        Capacity {
            donated: self.donated,
            used,
            available: self.donated.saturating_sub(used).min(disk),
        }
    }

    /// Bytes stored here for `peer`.
    pub fn stored_for(&self, peer: &[u8]) -> u64 {
        self.usage().by_peer.get(peer).copied().unwrap_or(0)
    }

    /// Stores a fragment from `peer` if it is well formed, fits the
    /// donation and the disk margin, and the peer has not taken more than
    /// the grace beyond `gives` (what it stores for this node).
    pub fn put(
        &self,
        id: &FragmentId,
        data: &[u8],
        peer: &[u8],
        gives: u64,
        lease: &LeaseTerms,
    ) -> Result<PutOutcome, StoreError> {
        if FragmentId::of(data) != *id {
            return Ok(PutOutcome::Refused(
                "fragment bytes do not match their id".into(),
            ));
        }
        if let Err(e) = Header::parse(data) {
            return Ok(PutOutcome::Refused(e.to_string()));
        }
        let len = data.len() as u64;
        if let Some(refused) = self.reserve(id, len, peer, gives)? {
            return Ok(refused);
        }
        let written = (|| {
            let mut b = Batch::default();
            b.put_object(&self.store, &ObjectId(id.0), data)?;
            let entry = Entry {
                len,
                expires: self.clock.now() + lease.secs.min(MAX_LEASE_SECS) as u64,
                renew_hash: lease.renew_hash,
                cancel_hash: lease.cancel_hash,
                peer: peer.to_vec(),
            };
            b.put(Cf::Fragments, id.0.to_vec(), entry.encode());
            self.store.write(b)?;
            self.store.sync()
        })();
        let mut u = self.usage();
        u.storing.remove(id);
        if let Err(e) = written {
            u.bytes -= len;
            u.fragments -= 1;
            if let Some(t) = u.by_peer.get_mut(peer) {
                *t -= len;
            }
            return Err(e);
        }
        Ok(PutOutcome::Stored)
    }

    /// Checks a PUT of `len` bytes from `peer` against the donation, the
    /// peer's share and the disk margin, and reserves the space under the
    /// lock; `Some` is the answer when nothing is to be written (already
    /// stored, or refused).
    fn reserve(
        &self,
        id: &FragmentId,
        len: u64,
        peer: &[u8],
        gives: u64,
    ) -> Result<Option<PutOutcome>, StoreError> {
        // Check and reserve under the lock; write outside it.
        let mut u = self.usage();
        if self.store.get(Cf::Fragments, &id.0)?.is_some() {
            return Ok(Some(PutOutcome::Stored));
        }
        if u.storing.contains(id) {
            return Ok(Some(PutOutcome::Refused(
                "this fragment is being stored right now; retry".into(),
            )));
        }
        if u.bytes + len > self.donated {
            return Ok(Some(PutOutcome::Refused(format!(
                "donation full: storing {} of {} bytes donated",
                u.bytes, self.donated
            ))));
        }
        let takes = u.by_peer.get(peer).copied().unwrap_or(0);
        if !crate::quota::within_grace(takes, len, gives, self.grace) {
            return Ok(Some(PutOutcome::Refused(format!(
                "over your share: this node stores {takes} bytes for you and you store {gives} \
                     bytes for it; beyond a grace of {} bytes a peer must give about what it takes",
                self.grace
            ))));
        }
        // The grace is one pool for all peers, not one per identity.
        u.gives.insert(peer.to_vec(), gives);
        let in_grace = |takes: u64, gives: u64| takes.saturating_sub(gives);
        let used: u64 = u
            .by_peer
            .iter()
            .map(|(p, t)| in_grace(*t, u.gives.get(p).copied().unwrap_or(0)))
            .sum();
        let (before, after) = (in_grace(takes, gives), in_grace(takes + len, gives));
        let pool = self.pool;
        if after > before && used - before + after > pool {
            return Ok(Some(PutOutcome::Refused(format!(
                "the grace this node gives peers that store nothing for it is used up \
                 ({used} of {pool} bytes, shared by all such peers): store for others to earn room"
            ))));
        }
        // Checked before every PUT: the disk itself may fill from elsewhere.
        if let Some((free, size)) = disk_space(&self.dir) {
            let margin = safety_margin(size);
            if free < margin + len {
                return Ok(Some(PutOutcome::Refused(format!(
                    "disk nearly full: {free} bytes free, keeping a {margin}-byte safety margin"
                ))));
            }
        }
        u.storing.insert(*id);
        u.bytes += len;
        u.fragments += 1;
        *u.by_peer.entry(peer.to_vec()).or_default() += len;
        Ok(None)
    }

    /// A fragment's bytes, or its open file for large ones (sent in
    /// pieces, never read whole into memory).
    pub fn open_fragment(&self, id: &FragmentId) -> Result<Option<ObjectData>, StoreError> {
        if self.store.get(Cf::Fragments, &id.0)?.is_none() {
            return Ok(None);
        }
        self.store.open_object(&ObjectId(id.0))
    }

    pub fn get(&self, id: &FragmentId) -> Result<Option<Vec<u8>>, StoreError> {
        if self.store.get(Cf::Fragments, &id.0)?.is_none() {
            return Ok(None);
        }
        self.store.read_object(&ObjectId(id.0))
    }

    /// Whether each fragment is here: indexed and its bytes present (an
    /// audit must notice a fragment whose file was lost).
    pub fn has(&self, ids: &[FragmentId]) -> Result<Vec<bool>, StoreError> {
        ids.iter()
            .map(|id| {
                Ok(self.store.get(Cf::Fragments, &id.0)?.is_some()
                    && self.store.has_object(&ObjectId(id.0))?)
            })
            .collect()
    }

    /// Number of fragments held.
    pub fn count(&self) -> u64 {
        self.usage().fragments
    }

    fn entry(&self, id: &FragmentId) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .store
            .get(Cf::Fragments, &id.0)?
            .and_then(|v| Entry::decode(&v)))
    }

    fn remove(&self, gone: Vec<(FragmentId, Entry)>) -> Result<(), StoreError> {
        if gone.is_empty() {
            return Ok(());
        }
        let mut b = Batch::default();
        for (id, e) in &gone {
            b.delete(Cf::Fragments, id.0.to_vec());
            b.delete_object(&ObjectId(id.0), e.len);
        }
        self.store.write(b)?;
        // The files go once their removal is durable: the space is free now.
        self.store.sync()?;
        let mut u = self.usage();
        for (_, e) in gone {
            u.bytes = u.bytes.saturating_sub(e.len);
            u.fragments = u.fragments.saturating_sub(1);
            if let Some(t) = u.by_peer.get_mut(&e.peer) {
                *t = t.saturating_sub(e.len);
            }
        }
        Ok(())
    }
}
