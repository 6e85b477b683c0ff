//! A node's store of fragments held for others, within its donation.
//!
//! Fragments live in their own store (`DATA_DIR/node`: RocksDB index, small
//! fragments inline, large ones as files), separate from any vault: a node's
//! identity and what it stores are unrelated to the vaults on the same
//! machine. A PUT is acknowledged only after the bytes and the index are
//! synced, and only if the id matches the bytes and the header parses.
//! (Files rather than BlobDB values: a value would be written twice, to the
//! WAL and again at flush; measured, the node CPU of a sync halved.)

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::coder::{FragmentId, Header};
use crate::crypto::ObjectId;
use crate::maint::Clock;
use crate::net::proto::{Capacity, LeaseTerms};
use crate::store::{Batch, Cf, Store, StoreError};

/// Outcome of a PUT.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// Not stored; the reason is sent back to the peer.
    Refused(String),
}

/// Free disk this node never gives away: 2% of the filesystem, at least
/// 256 MiB and at most 4 GiB, so storing for others can never fill the disk.
pub fn safety_margin(fs_bytes: u64) -> u64 {
    (fs_bytes / 50).clamp(256 << 20, 4 << 30)
}

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
}

/// Fragments this node stores for others.
pub struct FragmentStore {
    store: Store,
    dir: std::path::PathBuf,
    donated: u64,
    /// What any peer may store here beyond what it stores for this node.
    grace: u64,
    used: Mutex<Usage>,
    /// Root records held; the lock also serializes updates (check the
    /// sequence, then store).
    roots: Mutex<u64>,
    /// Leases age by this clock (simulated in tests and the simulator).
    clock: Arc<dyn Clock>,
}

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
        let roots = store.scan(Cf::Roots, &[], usize::MAX)?.len() as u64;
        Ok(FragmentStore {
            store,
            dir: dir.to_path_buf(),
            donated,
            grace,
            used: Mutex::new(usage),
            roots: Mutex::new(roots),
            clock,
        })
    }

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
        {
            // Check and reserve under the lock; write outside it.
            let mut u = self.usage();
            if self.store.get(Cf::Fragments, &id.0)?.is_some() {
                return Ok(PutOutcome::Stored);
            }
            if u.storing.contains(id) {
                return Ok(PutOutcome::Refused(
                    "this fragment is being stored right now; retry".into(),
                ));
            }
            if u.bytes + len > self.donated {
                return Ok(PutOutcome::Refused(format!(
                    "donation full: storing {} of {} bytes donated",
                    u.bytes, self.donated
                )));
            }
            let takes = u.by_peer.get(peer).copied().unwrap_or(0);
            if takes + len > self.grace.saturating_add(gives) {
                return Ok(PutOutcome::Refused(format!(
                    "over your share: this node stores {takes} bytes for you and you store {gives} \
                     bytes for it; beyond a grace of {} bytes a peer must give about what it takes",
                    self.grace
                )));
            }
            // Checked before every PUT: the disk itself may fill from elsewhere.
            if let Some((free, size)) = disk_space(&self.dir) {
                let margin = safety_margin(size);
                if free < margin + len {
                    return Ok(PutOutcome::Refused(format!(
                        "disk nearly full: {free} bytes free, keeping a {margin}-byte safety margin"
                    )));
                }
            }
            u.storing.insert(*id);
            u.bytes += len;
            u.fragments += 1;
            *u.by_peer.entry(peer.to_vec()).or_default() += len;
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

    /// Extends the leases whose renew secret matches; one flag per item.
    pub fn renew(
        &self,
        items: &[(FragmentId, [u8; 32])],
        secs: u32,
    ) -> Result<Vec<bool>, StoreError> {
        let expires = self.clock.now() + secs.min(MAX_LEASE_SECS) as u64;
        let mut b = Batch::default();
        let mut out = Vec::with_capacity(items.len());
        for (id, secret) in items {
            let ok = match self.entry(id)? {
                Some(mut e) if *blake3::hash(secret).as_bytes() == e.renew_hash => {
                    e.expires = e.expires.max(expires);
                    b.put(Cf::Fragments, id.0.to_vec(), e.encode());
                    true
                }
                _ => false,
            };
            out.push(ok);
        }
        self.store.write(b)?;
        self.store.sync()?;
        Ok(out)
    }

    /// Deletes the fragments whose cancel secret matches; one flag per item
    /// (true also when the fragment is already gone).
    pub fn cancel(&self, items: &[(FragmentId, [u8; 32])]) -> Result<Vec<bool>, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        let mut gone = Vec::new();
        for (id, secret) in items {
            match self.entry(id)? {
                Some(e) if *blake3::hash(secret).as_bytes() == e.cancel_hash => {
                    gone.push((*id, e));
                    out.push(true);
                }
                Some(_) => out.push(false),
                None => out.push(true),
            }
        }
        self.remove(gone)?;
        Ok(out)
    }

    /// Deletes fragments whose lease ran out; returns how many.
    pub fn expire(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut gone = Vec::new();
        for (k, v) in self.store.scan(Cf::Fragments, &[], usize::MAX)? {
            if let (Ok(id), Some(e)) = (<[u8; 32]>::try_from(k.as_slice()), Entry::decode(&v)) {
                if e.expires <= now {
                    gone.push((FragmentId(id), e));
                }
            }
        }
        let n = gone.len();
        self.remove(gone)?;
        Ok(n)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::encode;

    const LEASE: LeaseTerms = LeaseTerms {
        renew_hash: [0; 32],
        cancel_hash: [0; 32],
        secs: 3600,
    };

    /// A small tmpfs, unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn the_safety_margin_keeps_the_disk_from_filling() {
        let t = Tmpfs(tempfile::tempdir().unwrap());
        nix::mount::mount(
            Some("tmpfs"),
            t.0.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=300m"),
        )
        .expect("mounting a tmpfs (tests run as root)");
        // Donates far more than the disk has: the margin must stop it.
        let fs = FragmentStore::open(t.0.path(), 10 << 30, u64::MAX).unwrap();
        assert!(fs.capacity().available < 50 << 20);
        let mut refused = None;
        for i in 0..200u64 {
            let f = encode(&i.to_le_bytes().repeat(500_000), 1, 0..1)
                .unwrap()
                .remove(0);
            match fs.put(&f.id, &f.bytes, b"peer", 0, &LEASE).unwrap() {
                PutOutcome::Stored => {}
                PutOutcome::Refused(r) => {
                    refused = Some(r);
                    break;
                }
            }
        }
        let r = refused.expect("the store filled the disk");
        assert!(r.contains("disk nearly full"), "{r}");
        let (free, _) = disk_space(t.0.path()).unwrap();
        assert!(free >= 200 << 20, "only {free} bytes left free");
        drop(fs);
    }

    #[test]
    fn root_records_only_move_forward_and_survive_restarts() {
        use crate::root::RootRecord;
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let kdf = crate::crypto::KdfParams::default_strong();
        let r1 = RootRecord::sign(&key, 1, kdf, vec![1]);
        let r2 = RootRecord::sign(&key, 2, kdf, vec![2]);
        let k = r1.key();
        {
            let fs = FragmentStore::open(dir.path(), 0, 0).unwrap();
            assert_eq!(fs.put_root(&k, &r2.encode()).unwrap(), RootOutcome::Stored);
            assert_eq!(fs.put_root(&k, &r2.encode()).unwrap(), RootOutcome::Same);
            assert!(matches!(
                fs.put_root(&k, &r1.encode()).unwrap(),
                RootOutcome::Refused(_)
            ));
            let mut forged = r2.clone();
            forged.seq = 9;
            assert!(matches!(
                fs.put_root(&k, &forged.encode()).unwrap(),
                RootOutcome::Refused(_)
            ));
            assert!(matches!(
                fs.put_root(&[0; 32], &r2.encode()).unwrap(),
                RootOutcome::Refused(_)
            ));
        }
        let fs = FragmentStore::open(dir.path(), 0, 0).unwrap();
        assert_eq!(fs.get_root(&k).unwrap().unwrap(), r2.encode());
        assert_eq!(fs.roots().unwrap().len(), 1);
        assert_eq!(fs.root_count(), 1);
    }

    #[test]
    fn leases_renew_cancel_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let frags = encode(&vec![4u8; 200_000], 1, 0..3).unwrap();
        let fs = FragmentStore::open(dir.path(), 1 << 30, u64::MAX).unwrap();
        let (renew, cancel) = ([1u8; 32], [2u8; 32]);
        for (i, f) in frags.iter().enumerate() {
            let secs = if i == 2 { 0 } else { 3600 };
            let terms = LeaseTerms::new(&renew, &cancel, secs);
            assert_eq!(
                fs.put(&f.id, &f.bytes, b"p", 0, &terms).unwrap(),
                PutOutcome::Stored
            );
        }
        let id = |i: usize| frags[i].id;
        assert_eq!(
            fs.renew(&[(id(0), [9; 32]), (id(0), renew)], 60).unwrap(),
            vec![false, true]
        );
        assert_eq!(fs.cancel(&[(id(1), renew)]).unwrap(), vec![false]);
        assert_eq!(fs.cancel(&[(id(1), cancel)]).unwrap(), vec![true]);
        assert!(fs.get(&id(1)).unwrap().is_none());
        // Fragment 2's lease is already over.
        assert_eq!(fs.expire().unwrap(), 1);
        assert!(fs.get(&id(2)).unwrap().is_none());
        assert!(fs.get(&id(0)).unwrap().is_some());
        assert_eq!(fs.count(), 1);
        assert_eq!(fs.capacity().used, frags[0].bytes.len() as u64);
        assert_eq!(fs.stored_for(b"p"), frags[0].bytes.len() as u64);
    }

    #[test]
    fn the_ledger_refuses_takers_beyond_their_grace() {
        let dir = tempfile::tempdir().unwrap();
        let frags = encode(&vec![9u8; 300_000], 1, 0..3).unwrap();
        let len = frags[0].bytes.len() as u64;
        let fs = FragmentStore::open(dir.path(), 1 << 30, len + 1).unwrap();
        let put = |i: usize, peer: &[u8], gives: u64| {
            fs.put(&frags[i].id, &frags[i].bytes, peer, gives, &LEASE)
                .unwrap()
        };
        assert_eq!(put(0, b"taker", 0), PutOutcome::Stored);
        match put(1, b"taker", 0) {
            PutOutcome::Refused(r) => assert!(r.contains("over your share"), "{r}"),
            o => panic!("{o:?}"),
        }
        // A peer that gives as much as it takes keeps going; others are
        // not affected by the taker.
        assert_eq!(put(1, b"taker", len), PutOutcome::Stored);
        assert_eq!(put(2, b"other", 0), PutOutcome::Stored);
        drop(fs);
        let fs = FragmentStore::open(dir.path(), 1 << 30, len + 1).unwrap();
        assert_eq!(fs.stored_for(b"taker"), 2 * len);
        assert_eq!(fs.stored_for(b"other"), len);
        assert_eq!(fs.count(), 3);
    }

    #[test]
    fn put_checks_id_header_and_donation() {
        let dir = tempfile::tempdir().unwrap();
        let frags = encode(&vec![5u8; 100_000], 2, 0..4).unwrap();
        let len = frags[0].bytes.len() as u64;
        let fs = FragmentStore::open(dir.path(), len * 2 + 10, u64::MAX).unwrap();
        assert_eq!(
            fs.put(&frags[0].id, &frags[0].bytes, b"peer", 0, &LEASE)
                .unwrap(),
            PutOutcome::Stored
        );
        // Idempotent.
        assert_eq!(
            fs.put(&frags[0].id, &frags[0].bytes, b"peer", 0, &LEASE)
                .unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(fs.capacity().used, len);
        // Wrong id.
        assert!(matches!(
            fs.put(&frags[0].id, &frags[1].bytes, b"peer", 0, &LEASE)
                .unwrap(),
            PutOutcome::Refused(_)
        ));
        // Junk with a matching id.
        let junk = vec![1u8; 64];
        assert!(matches!(
            fs.put(&FragmentId::of(&junk), &junk, b"peer", 0, &LEASE)
                .unwrap(),
            PutOutcome::Refused(_)
        ));
        assert_eq!(
            fs.put(&frags[1].id, &frags[1].bytes, b"peer", 0, &LEASE)
                .unwrap(),
            PutOutcome::Stored
        );
        match fs
            .put(&frags[2].id, &frags[2].bytes, b"peer", 0, &LEASE)
            .unwrap()
        {
            PutOutcome::Refused(r) => assert!(r.contains("donation full"), "{r}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(fs.get(&frags[1].id).unwrap().unwrap(), frags[1].bytes);
        assert_eq!(
            fs.has(&[frags[0].id, frags[2].id]).unwrap(),
            vec![true, false]
        );
        drop(fs);
        let fs = FragmentStore::open(dir.path(), len * 2 + 10, u64::MAX).unwrap();
        assert_eq!(fs.capacity().used, 2 * len);
        assert_eq!(fs.count(), 2);
    }
}
