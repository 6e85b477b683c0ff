//! Local storage: ordered key-value families for metadata (one per record
//! kind) and sealed objects, small ones inline and large ones as files; the
//! journal of replicated changes; object files released only once their
//! release is durable.
//!
//! The key-value part is an interface (`kv.rs`) with two implementations:
//! RocksDB (`rocks.rs`, the only file that imports `rocksdb`) and memory.
//! Architecture invariant: stores opaque bytes; it knows nothing about what
//! they mean or how they are sealed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::crypto::ObjectId;

mod families;
mod kv;
mod objects;
mod rocks;
#[cfg(test)]
mod tests;

pub use families::{Cf, REPLICATED};
pub use objects::ObjectData;

use families::{NODE_CFS, VAULT_CFS};
use kv::{Kv, MemKv, Op};
use rocks::RocksKv;

/// Errors from the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the vault database is in use by another drizzle process ({0})")]
    Locked(String),
    #[error("cannot open the vault database at {path}: {msg}")]
    Open { path: PathBuf, msg: String },
    #[error("database error: {0}")]
    Db(String),
    #[error("object store IO error on {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

/// One change to a replicated family: (family code, key, value or delete).
pub type Change = (u8, Vec<u8>, Option<Vec<u8>>);
/// A [`Change`] borrowed from a batch (same serialized form).
type ChangeRef<'a> = (u8, &'a [u8], Option<&'a [u8]>);

/// Sealed objects up to this size live inline in RocksDB, so a small file's
/// fsync is a single WAL sync.
pub const INLINE_MAX: usize = 128 * 1024;

/// Key-value pairs returned by [`Store::scan`].
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// A set of changes applied atomically by [`Store::write`].
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>,
    delete_files: Vec<ObjectId>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((cf, key.into(), Some(value.into())));
    }
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push((cf, key.into(), None));
    }
    /// Stores a sealed object: inline in this batch when small, otherwise
    /// written to its file now (durably) so the batch may refer to it.
    pub fn put_object(
        &mut self,
        store: &Store,
        id: &ObjectId,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        if sealed.len() <= INLINE_MAX {
            self.put(Cf::Blobs, id.0.to_vec(), sealed.to_vec());
            Ok(())
        } else {
            store.write_object_file(id, sealed)
        }
    }
    /// Removes an object; its file (if any) is removed after the batch commits.
    pub fn delete_object(&mut self, id: &ObjectId, size: u64) {
        if size as usize <= INLINE_MAX {
            self.delete(Cf::Blobs, id.0.to_vec());
        } else {
            self.delete_files.push(*id);
        }
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.delete_files.is_empty()
    }
    /// Adds another batch's changes after this one's.
    pub fn append(&mut self, other: Batch) {
        self.ops.extend(other.ops);
        self.delete_files.extend(other.delete_files);
    }
}

/// A local database: a vault's (metadata and object directory) or a node's
/// (fragments stored for others).
pub struct Store {
    kv: Box<dyn Kv>,
    /// Where objects over [`INLINE_MAX`] live as files; `None` for an
    /// in-memory store, which keeps every object inline.
    objects_dir: Option<PathBuf>,
    /// Object files released by batches that may not be durable yet: they
    /// are removed only after a WAL sync (see [`sync`](Self::sync)).
    doomed: std::sync::Mutex<Doomed>,
    /// The next journal sequence number (vault stores only); the lock also
    /// keeps journal entries in commit order.
    journal: Option<std::sync::Mutex<u64>>,
    /// Writes applied so far, and (under the lock) how many of them the
    /// last finished sync covers: group commit (see [`sync`](Self::sync)).
    writes: std::sync::atomic::AtomicU64,
    synced: std::sync::Mutex<u64>,
    /// WAL syncs made (for metrics and tests).
    wal_syncs: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the vault store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &VAULT_CFS)
    }

    /// Opens (creating if needed) a node's fragment store under `dir`.
    pub fn open_fragments(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &NODE_CFS)
    }

    /// A vault store in memory: the same behaviour, nothing durable.
    pub fn in_memory() -> Self {
        Self::with_kv(Box::new(MemKv::new(&VAULT_CFS)), None, true)
            .expect("an empty memory store opens")
    }

    fn open_with(dir: &Path, families: &[Cf]) -> Result<Self, StoreError> {
        let objects_dir = dir.join("objects");
        fs::create_dir_all(&objects_dir).map_err(|err| StoreError::Io {
            path: objects_dir.clone(),
            err,
        })?;
        let kv = RocksKv::open(&dir.join("db"), families)?;
        Self::with_kv(
            Box::new(kv),
            Some(objects_dir),
            families.contains(&Cf::Journal),
        )
    }

    fn with_kv(
        kv: Box<dyn Kv>,
        objects_dir: Option<PathBuf>,
        journaled: bool,
    ) -> Result<Self, StoreError> {
        let journal = if journaled {
            let last = kv.last_key(Cf::Journal)?.map_or(0, |k| seq_of(&k));
            Some(std::sync::Mutex::new(last + 1))
        } else {
            None
        };
        Ok(Store {
            kv,
            objects_dir,
            doomed: Default::default(),
            journal,
            writes: Default::default(),
            synced: Default::default(),
            wal_syncs: Default::default(),
        })
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(cf, key)
    }

    /// All records whose key starts with `prefix`, in key order, at most `limit`.
    pub fn scan(&self, cf: Cf, prefix: &[u8], limit: usize) -> Result<Records, StoreError> {
        self.scan_from(cf, prefix, prefix, limit)
    }

    /// Like [`scan`](Self::scan), starting at key `from` (within `prefix`).
    pub fn scan_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Records, StoreError> {
        self.kv.scan_from(cf, prefix, from, limit)
    }

    /// Applies a batch atomically (not yet synced: see [`sync`](Self::sync)).
    /// The object files it releases are removed at the next sync: until the
    /// batch is durable, a crash may bring back the records that name them.
    pub fn write(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::with_capacity(batch.ops.len() + 1);
        // Borrowed: postcard writes these exactly like a `Vec<Change>`, so the
        // journal costs one serialization, not a copy of every record.
        let mut changes: Vec<ChangeRef> = Vec::new();
        if self.journal.is_some() {
            for (cf, k, v) in &batch.ops {
                if let Some(code) = cf.code() {
                    changes.push((code, k, v.as_deref()));
                }
            }
        }
        let entry = (!changes.is_empty())
            .then(|| postcard::to_allocvec(&changes).expect("changes serialize"));
        drop(changes);
        for (cf, k, v) in batch.ops {
            ops.push(match v {
                Some(v) => Op::Put(cf, k, v),
                None => Op::Delete(cf, k),
            });
        }
        let in_memory = self.objects_dir.is_none();
        if in_memory {
            for id in &batch.delete_files {
                ops.push(Op::Delete(Cf::Blobs, id.0.to_vec()));
            }
        }
        match (&self.journal, entry) {
            (Some(next), Some(entry)) => {
                // The entry commits in the same batch as the change it logs.
                let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
                ops.push(Op::Put(Cf::Journal, next.to_be_bytes().to_vec(), entry));
                self.apply(ops)?;
                *next += 1;
            }
            _ => self.apply(ops)?,
        }
        if batch.delete_files.is_empty() || in_memory {
            return Ok(());
        }
        let many = {
            let mut doomed = self.doomed();
            for id in batch.delete_files {
                let epoch = doomed.epoch;
                doomed.files.insert(id, epoch);
            }
            doomed.files.len() >= DOOMED_MAX
        };
        // A vault store's owner syncs for them (never under its lock: see
        // `doomed_backlog`); a node store syncs here.
        if many && self.journal.is_none() {
            // The batch is committed: a failed sync only delays the removals.
            if let Err(e) = self.sync() {
                tracing::warn!("syncing to remove released object files: {e}");
            }
        }
        Ok(())
    }

    /// Writes to the key-value store, counting the write for group commit.
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.kv.write(ops)?;
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn doomed(&self) -> std::sync::MutexGuard<'_, Doomed> {
        self.doomed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// WAL syncs made since the store opened.
    pub fn wal_syncs(&self) -> u64 {
        self.wal_syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether object files released by written batches wait for a sync.
    pub fn has_doomed_files(&self) -> bool {
        !self.doomed().files.is_empty()
    }

    /// Whether so many released files wait that a sync should come now
    /// (a vault store leaves that sync to its owner's background thread).
    pub fn doomed_backlog(&self) -> bool {
        self.doomed().files.len() >= DOOMED_MAX
    }

    /// Journal entries after sequence number `after`, oldest first, until
    /// about `max_bytes` (at least one entry if any).
    pub fn journal_since(
        &self,
        after: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        const PAGE: usize = 64;
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut from = after.saturating_add(1).to_be_bytes().to_vec();
        loop {
            let page = self.kv.scan_from(Cf::Journal, &[], &from, PAGE)?;
            let full = page.len() == PAGE;
            for (k, v) in page {
                if !out.is_empty() && bytes + v.len() > max_bytes {
                    return Ok(out);
                }
                bytes += v.len();
                from = (seq_of(&k) + 1).to_be_bytes().to_vec();
                out.push((seq_of(&k), v));
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// Drops journal entries before `upto` (they are on the network). The
    /// entry numbered `upto` stays: it keeps the numbering going across a
    /// restart, so later entries are never numbered as if published.
    pub fn trim_journal(&self, upto: u64) -> Result<(), StoreError> {
        self.apply(vec![Op::DeleteRange(
            Cf::Journal,
            0u64.to_be_bytes().to_vec(),
            upto.to_be_bytes().to_vec(),
        )])
    }

    /// Every record of the replicated families at one instant, handed to
    /// `each` one at a time (memory stays flat however large the vault);
    /// returns the last journal sequence number that instant includes.
    pub fn dump_replicated<E: From<StoreError>>(
        &self,
        mut each: impl FnMut(Change) -> Result<(), E>,
    ) -> Result<u64, E> {
        // Under the journal lock: every entry numbered up to `upto` is in
        // the snapshot and none after it.
        let (snap, upto) = {
            let next = self
                .journal
                .as_ref()
                .map(|n| n.lock().unwrap_or_else(|p| p.into_inner()));
            let upto = next.as_deref().map_or(0, |n| n - 1);
            (self.kv.snapshot(), upto)
        };
        for cf in REPLICATED {
            let code = cf.code().expect("replicated");
            for item in snap.iter(cf) {
                let (k, v) = item?;
                each((code, k, Some(v)))?;
            }
        }
        Ok(upto)
    }

    /// The sequence number of the newest journal entry written (0: none).
    pub fn journal_last(&self) -> u64 {
        self.journal
            .as_ref()
            .map_or(0, |n| *n.lock().unwrap_or_else(|p| p.into_inner()) - 1)
    }

    /// Replaces the replicated families and the chain records with changes
    /// from the network, in one atomic write (a crash leaves the old state
    /// or the new one, never a mix), then `extra` (unjournaled: they are
    /// published already). The journal keeps its newest entry, the
    /// numbering's mark. Changes apply in order, group after group.
    pub fn import(&self, groups: &[&[Change]], extra: Batch) -> Result<(), StoreError> {
        let mut ops = vec![Op::DeleteRange(
            Cf::Journal,
            0u64.to_be_bytes().to_vec(),
            self.journal_last().to_be_bytes().to_vec(),
        )];
        for cf in REPLICATED.iter().chain(&[Cf::Chain]) {
            for (k, _) in self.kv.scan_from(*cf, &[], &[], usize::MAX)? {
                ops.push(Op::Delete(*cf, k));
            }
        }
        for (code, k, v) in groups.iter().flat_map(|g| g.iter()) {
            let cf = Cf::from_code(*code)
                .ok_or_else(|| StoreError::Db(format!("unknown family code {code}")))?;
            ops.push(match v {
                Some(v) => Op::Put(cf, k.clone(), v.clone()),
                None => Op::Delete(cf, k.clone()),
            });
        }
        for (cf, k, v) in extra.ops {
            ops.push(match v {
                Some(v) => Op::Put(cf, k, v),
                None => Op::Delete(cf, k),
            });
        }
        self.apply(ops)?;
        self.sync()
    }

    /// Makes every batch written so far durable (one WAL fsync), then
    /// removes the object files those batches released.
    ///
    /// Group commit: callers queue for one sync at a time, and a caller
    /// whose writes a sync that started after them already covered returns
    /// without another fsync (concurrent fsyncs and fragment PUTs share
    /// one WAL sync).
    pub fn sync(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let mine = self.writes.load(Ordering::SeqCst);
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced >= mine && !self.has_doomed_files() {
            return Ok(());
        }
        let upto = self.writes.load(Ordering::SeqCst);
        // Files released before this point belong to batches the flush
        // below makes durable; later ones wait for the next sync.
        let cut = {
            let mut doomed = self.doomed();
            doomed.epoch += 1;
            doomed.epoch
        };
        self.kv.sync()?;
        self.wal_syncs.fetch_add(1, Ordering::Relaxed);
        *synced = upto;
        drop(synced);
        let mut doomed = self.doomed();
        if doomed.files.is_empty() {
            return Ok(());
        }
        // Removed under the lock, so a concurrent `put_object` of the same
        // (deduplicated) object cannot have its fresh file removed.
        let due: Vec<ObjectId> = doomed
            .files
            .iter()
            .filter(|(_, e)| **e < cut)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            doomed.files.remove(&id);
            let Some(path) = self.object_path(&id) else {
                continue;
            };
            if let Err(err) = fs::remove_file(&path) {
                if err.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(object = %id, "cannot remove released object file: {err}");
                }
            }
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.has_doomed_files() {
            if let Err(e) = self.sync() {
                tracing::warn!("closing the store: {e}");
            }
        }
    }
}

/// Released object files waiting for the sync that makes their release
/// durable, with the sync epoch they were released in.
#[derive(Default)]
struct Doomed {
    files: std::collections::HashMap<ObjectId, u64>,
    epoch: u64,
}

/// Released files kept waiting before a write syncs on its own.
const DOOMED_MAX: usize = 256;

fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map_or(0, u64::from_be_bytes)
}
