//! Local storage: RocksDB for metadata (one column family per record kind) and
//! sealed objects, small ones inline in RocksDB and large ones as files.
//!
//! Architecture invariant: the only module that imports `rocksdb`. It stores
//! opaque bytes; it knows nothing about what they mean or how they are sealed.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::crypto::ObjectId;

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

fn db_err(e: rocksdb::Error) -> StoreError {
    StoreError::Db(e.into_string())
}

/// Column families, one per record kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    /// ino -> inode record.
    Inodes,
    /// parent ino ++ sealed name -> child ino and kind.
    Dirents,
    /// ino ++ chunk index -> object id and length.
    Chunks,
    /// object id -> reference count and size.
    Objects,
    /// object id -> sealed bytes (objects below the inline threshold).
    Blobs,
    /// ino ++ sealed attribute name -> sealed value.
    Xattrs,
    /// unlinked inodes still open when last seen; freed at the next start.
    Orphans,
    /// counters and the next inode number.
    Meta,
    /// object id -> nothing: objects not yet stored on peers (the upload queue).
    Uploads,
    /// object id -> where its fragments are (vault metadata, never in the DHT).
    Placements,
    /// object id -> size: local copies of objects safely on peers, evictable.
    Cached,
    /// fragment id ++ peer id -> nothing: fragments of deleted objects whose
    /// leases are still to be cancelled on their peers.
    Released,
    /// fragment id -> length: the fragments a node stores for others (the
    /// bytes are objects: inline in `Blobs` or files).
    Fragments,
    /// local sequence number -> one batch's changes to the replicated
    /// families, not yet published to the network (see [`REPLICATED`]).
    Journal,
    /// object id -> record of a metadata object (snapshot part or journal
    /// head) on the network; plus the publishing state.
    Chain,
    /// DHT key -> the newest valid root record a node keeps for a vault.
    Roots,
    /// Lease upkeep (sealed): when each holder's leases were last renewed.
    Leases,
}

/// The families that make up a vault's metadata on the network: every batch
/// that changes them also appends its changes to the `Journal` family.
pub const REPLICATED: [Cf; 8] = [
    Cf::Inodes,
    Cf::Dirents,
    Cf::Chunks,
    Cf::Objects,
    Cf::Xattrs,
    Cf::Orphans,
    Cf::Meta,
    Cf::Placements,
];

const VAULT_CFS: [Cf; 15] = [
    Cf::Inodes,
    Cf::Dirents,
    Cf::Chunks,
    Cf::Objects,
    Cf::Blobs,
    Cf::Xattrs,
    Cf::Orphans,
    Cf::Meta,
    Cf::Uploads,
    Cf::Placements,
    Cf::Cached,
    Cf::Released,
    Cf::Journal,
    Cf::Chain,
    Cf::Leases,
];

const NODE_CFS: [Cf; 4] = [Cf::Fragments, Cf::Blobs, Cf::Meta, Cf::Roots];

impl Cf {
    /// Stable name, also bound into each sealed record's associated data.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Inodes => "inodes",
            Cf::Dirents => "dirents",
            Cf::Chunks => "chunks",
            Cf::Objects => "objects",
            Cf::Blobs => "blobs",
            Cf::Xattrs => "xattrs",
            Cf::Orphans => "orphans",
            Cf::Meta => "meta",
            Cf::Uploads => "uploads",
            Cf::Placements => "placements",
            Cf::Cached => "cached",
            Cf::Released => "released",
            Cf::Fragments => "fragments",
            Cf::Journal => "journal",
            Cf::Chain => "chain",
            Cf::Roots => "roots",
            Cf::Leases => "leases",
        }
    }

    /// Code of a replicated family in journal entries and snapshots.
    pub fn code(self) -> Option<u8> {
        REPLICATED
            .iter()
            .position(|c| *c == self)
            .map(|i| i as u8 + 1)
    }

    pub fn from_code(code: u8) -> Option<Cf> {
        REPLICATED.get((code as usize).checked_sub(1)?).copied()
    }
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
    db: rocksdb::DB,
    objects_dir: PathBuf,
    /// Object files released by batches that may not be durable yet: they
    /// are removed only after a WAL sync (see [`sync`](Self::sync)).
    doomed: std::sync::Mutex<Doomed>,
    /// The next journal sequence number (vault stores only); the lock also
    /// keeps journal entries in commit order.
    journal: Option<std::sync::Mutex<u64>>,
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

    fn open_with(dir: &Path, families: &[Cf]) -> Result<Self, StoreError> {
        let db_path = dir.join("db");
        let objects_dir = dir.join("objects");
        fs::create_dir_all(&objects_dir).map_err(|err| StoreError::Io {
            path: objects_dir.clone(),
            err,
        })?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(256 << 20);
        let cfs = families.iter().map(|cf| {
            let mut o = rocksdb::Options::default();
            if *cf == Cf::Blobs {
                // Values up to INLINE_MAX: keep them out of the LSM tree.
                o.set_enable_blob_files(true);
                o.set_min_blob_size(4096);
                o.set_enable_blob_gc(true);
            }
            rocksdb::ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = rocksdb::DB::open_cf_descriptors(&opts, &db_path, cfs).map_err(|e| {
            let msg = e.into_string();
            if msg.contains("lock") || msg.contains("LOCK") {
                StoreError::Locked(msg)
            } else {
                StoreError::Open {
                    path: db_path.clone(),
                    msg,
                }
            }
        })?;
        let journal = if families.contains(&Cf::Journal) {
            let last = db
                .iterator_cf(
                    db.cf_handle(Cf::Journal.name()).expect("journal family"),
                    rocksdb::IteratorMode::End,
                )
                .next()
                .transpose()
                .map_err(db_err)?
                .map_or(0, |(k, _)| seq_of(&k));
            Some(std::sync::Mutex::new(last + 1))
        } else {
            None
        };
        Ok(Store {
            db,
            objects_dir,
            doomed: Default::default(),
            journal,
        })
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every family of the store's kind is created at open; asking a node
        // store for a vault family is a programming error.
        self.db.cf_handle(cf.name()).expect("column family exists")
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(cf), key).map_err(db_err)
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
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(cf),
            rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Applies a batch atomically (not yet synced: see [`sync`](Self::sync)).
    /// The object files it releases are removed at the next sync: until the
    /// batch is durable, a crash may bring back the records that name them.
    pub fn write(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut wb = rocksdb::WriteBatch::default();
        // Borrowed: postcard writes these exactly like a `Vec<Change>`, so the
        // journal costs one serialization, not a copy of every record.
        let mut changes: Vec<ChangeRef> = Vec::new();
        for (cf, k, v) in &batch.ops {
            match v {
                Some(v) => wb.put_cf(self.cf(*cf), k, v),
                None => wb.delete_cf(self.cf(*cf), k),
            }
            if let (Some(code), Some(_)) = (cf.code(), &self.journal) {
                changes.push((code, k, v.as_deref()));
            }
        }
        match (&self.journal, changes.is_empty()) {
            (Some(next), false) => {
                // The entry commits in the same batch as the change it logs.
                let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
                let entry = postcard::to_allocvec(&changes).expect("changes serialize");
                wb.put_cf(self.cf(Cf::Journal), next.to_be_bytes(), entry);
                self.db.write(wb).map_err(db_err)?;
                *next += 1;
            }
            _ => self.db.write(wb).map_err(db_err)?,
        }
        if batch.delete_files.is_empty() {
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
        if many {
            // The batch is committed: a failed sync only delays the removals.
            if let Err(e) = self.sync() {
                tracing::warn!("syncing to remove released object files: {e}");
            }
        }
        Ok(())
    }

    fn doomed(&self) -> std::sync::MutexGuard<'_, Doomed> {
        self.doomed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether object files released by written batches wait for a sync.
    pub fn has_doomed_files(&self) -> bool {
        !self.doomed().files.is_empty()
    }

    /// Journal entries after sequence number `after`, oldest first, until
    /// about `max_bytes` (at least one entry if any).
    pub fn journal_since(
        &self,
        after: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let iter = self.db.iterator_cf(
            self.cf(Cf::Journal),
            rocksdb::IteratorMode::From(
                &(after.saturating_add(1)).to_be_bytes(),
                rocksdb::Direction::Forward,
            ),
        );
        for item in iter {
            let (k, v) = item.map_err(db_err)?;
            if !out.is_empty() && bytes + v.len() > max_bytes {
                break;
            }
            bytes += v.len();
            out.push((seq_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    /// Drops journal entries before `upto` (they are on the network). The
    /// entry numbered `upto` stays: it keeps the numbering going across a
    /// restart, so later entries are never numbered as if published.
    pub fn trim_journal(&self, upto: u64) -> Result<(), StoreError> {
        self.db
            .delete_range_cf(self.cf(Cf::Journal), 0u64.to_be_bytes(), upto.to_be_bytes())
            .map_err(db_err)
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
            (self.db.snapshot(), upto)
        };
        for cf in REPLICATED {
            let code = cf.code().expect("replicated");
            for item in snap.iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start) {
                let (k, v) = item.map_err(db_err)?;
                each((code, k.to_vec(), Some(v.to_vec())))?;
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
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(
            self.cf(Cf::Journal),
            0u64.to_be_bytes(),
            self.journal_last().to_be_bytes(),
        );
        for cf in REPLICATED.iter().chain(&[Cf::Chain]) {
            for item in self
                .db
                .iterator_cf(self.cf(*cf), rocksdb::IteratorMode::Start)
            {
                let (k, _) = item.map_err(db_err)?;
                wb.delete_cf(self.cf(*cf), k);
            }
        }
        for (code, k, v) in groups.iter().flat_map(|g| g.iter()) {
            let cf = Cf::from_code(*code)
                .ok_or_else(|| StoreError::Db(format!("unknown family code {code}")))?;
            match v {
                Some(v) => wb.put_cf(self.cf(cf), k, v),
                None => wb.delete_cf(self.cf(cf), k),
            }
        }
        for (cf, k, v) in &extra.ops {
            match v {
                Some(v) => wb.put_cf(self.cf(*cf), k, v),
                None => wb.delete_cf(self.cf(*cf), k),
            }
        }
        self.db.write(wb).map_err(db_err)?;
        self.sync()
    }

    /// Makes every batch written so far durable (one WAL fsync), then
    /// removes the object files those batches released.
    pub fn sync(&self) -> Result<(), StoreError> {
        // Files released before this point belong to batches the flush
        // below makes durable; later ones wait for the next sync.
        let cut = {
            let mut doomed = self.doomed();
            doomed.epoch += 1;
            doomed.epoch
        };
        self.db.flush_wal(true).map_err(db_err)?;
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
            let path = self.object_path(&id);
            if let Err(err) = fs::remove_file(&path) {
                if err.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(object = %id, "cannot remove released object file: {err}");
                }
            }
        }
        Ok(())
    }

    fn object_path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.objects_dir.join(&hex[..2]).join(&hex)
    }

    fn write_object_file(&self, id: &ObjectId, sealed: &[u8]) -> Result<(), StoreError> {
        let path = self.object_path(id);
        let io_err = |err| StoreError::Io {
            path: path.clone(),
            err,
        };
        let dir = path.parent().expect("object path has a parent");
        let new_dir = !dir.exists();
        if new_dir {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        // Two workers may store the same (deduplicated) object at once.
        let tmp = path.with_extension(format!("tmp{}", rand::random::<u64>()));
        let mut f = fs::File::create(&tmp).map_err(io_err)?;
        f.write_all(sealed).map_err(io_err)?;
        f.sync_data().map_err(io_err)?;
        {
            // Stored again after a release that is not yet carried out.
            let mut doomed = self.doomed();
            doomed.files.remove(id);
            fs::rename(&tmp, &path).map_err(io_err)?;
        }
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        if new_dir {
            fs::File::open(&self.objects_dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err)?;
        }
        Ok(())
    }

    /// Whether an object's bytes are here (inline, or its file exists).
    pub fn has_object(&self, id: &ObjectId) -> Result<bool, StoreError> {
        if self.doomed().files.contains_key(id) {
            // Released: it goes at the next sync.
            return Ok(false);
        }
        Ok(self.get(Cf::Blobs, &id.0)?.is_some() || self.object_path(id).exists())
    }

    /// Reads a sealed object, inline or from its file. `None` if absent.
    pub fn read_object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.get(Cf::Blobs, &id.0)? {
            return Ok(Some(v));
        }
        let path = self.object_path(id);
        match fs::read(&path) {
            Ok(v) => Ok(Some(v)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StoreError::Io { path, err }),
        }
    }

    /// Object files with no reference: left by a crash between writing an
    /// object and committing the metadata that names it.
    pub fn remove_unreferenced_files(
        &self,
        referenced: impl Fn(&ObjectId) -> bool,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        let io_err = |path: &Path, err| StoreError::Io {
            path: path.to_path_buf(),
            err,
        };
        for shard in fs::read_dir(&self.objects_dir).map_err(|e| io_err(&self.objects_dir, e))? {
            let shard = shard.map_err(|e| io_err(&self.objects_dir, e))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&shard).map_err(|e| io_err(&shard, e))? {
                let path = entry.map_err(|e| io_err(&shard, e))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let keep = parse_hex_id(name).is_some_and(|id| referenced(&id));
                if !keep {
                    fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
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

fn parse_hex_id(s: &str) -> Option<ObjectId> {
    if s.len() != 64 {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(ObjectId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_objects_and_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let small = vec![1u8; 100];
        let big = vec![2u8; INLINE_MAX + 1];
        let (sid, bid) = (ObjectId::of(&small), ObjectId::of(&big));
        let mut b = Batch::default();
        b.put_object(&store, &sid, &small).unwrap();
        b.put_object(&store, &bid, &big).unwrap();
        b.put(Cf::Dirents, b"\x00\x01a".to_vec(), b"1".to_vec());
        b.put(Cf::Dirents, b"\x00\x01b".to_vec(), b"2".to_vec());
        b.put(Cf::Dirents, b"\x00\x02a".to_vec(), b"3".to_vec());
        store.write(b).unwrap();
        store.sync().unwrap();
        assert_eq!(store.read_object(&sid).unwrap().unwrap(), small);
        assert_eq!(store.read_object(&bid).unwrap().unwrap(), big);
        assert_eq!(store.scan(Cf::Dirents, b"\x00\x01", 10).unwrap().len(), 2);
        assert_eq!(store.scan(Cf::Dirents, b"\x00\x01", 1).unwrap().len(), 1);
        let tail = store
            .scan_from(Cf::Dirents, b"\x00\x01", b"\x00\x01b", 10)
            .unwrap();
        assert_eq!(tail, vec![(b"\x00\x01b".to_vec(), b"2".to_vec())]);

        let mut b = Batch::default();
        b.delete_object(&bid, big.len() as u64);
        store.write(b).unwrap();
        // The file goes only once the release is durable.
        assert!(store.read_object(&bid).unwrap().is_some());
        store.sync().unwrap();
        assert!(store.read_object(&bid).unwrap().is_none());
        drop(store);

        // Reopen: data is still there; a second opener is refused.
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked(_))
        ));
        assert_eq!(store.read_object(&sid).unwrap().unwrap(), small);
    }

    #[test]
    fn replicated_changes_are_journaled_in_the_same_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.journal_last(), 0);
        let mut b = Batch::default();
        b.put(Cf::Inodes, b"i1".to_vec(), b"v1".to_vec());
        b.put(Cf::Cached, b"c".to_vec(), b"x".to_vec());
        store.write(b).unwrap();
        // Only unreplicated families: no entry.
        let mut b = Batch::default();
        b.put(Cf::Uploads, b"u".to_vec(), b"".to_vec());
        store.write(b).unwrap();
        let mut b = Batch::default();
        b.delete(Cf::Inodes, b"i1".to_vec());
        b.put(Cf::Dirents, b"d".to_vec(), b"v2".to_vec());
        store.write(b).unwrap();
        let j = store.journal_since(0, usize::MAX).unwrap();
        assert_eq!(j.len(), 2);
        let first: Vec<Change> = postcard::from_bytes(&j[0].1).unwrap();
        assert_eq!(first, vec![(1, b"i1".to_vec(), Some(b"v1".to_vec()))]);
        let mut all = Vec::new();
        let upto = store
            .dump_replicated(|c| {
                all.push(c);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(upto, 2);
        assert_eq!(all, vec![(2, b"d".to_vec(), Some(b"v2".to_vec()))]);
        // Everything published: the newest entry stays as the high-water
        // mark, so numbering continues after a restart.
        store.trim_journal(2).unwrap();
        assert!(store.journal_since(2, usize::MAX).unwrap().is_empty());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.journal_last(), 2);
        let mut b = Batch::default();
        b.put(Cf::Inodes, b"i3".to_vec(), b"v3".to_vec());
        store.write(b).unwrap();
        assert_eq!(store.journal_since(2, usize::MAX).unwrap()[0].0, 3);
        // Imports replace the replicated families and are not journaled.
        let other = tempfile::tempdir().unwrap();
        let copy = Store::open(other.path()).unwrap();
        let mut b = Batch::default();
        b.put(Cf::Inodes, b"stale".to_vec(), b"x".to_vec());
        copy.write(b).unwrap();
        copy.import(&[&all], Batch::default()).unwrap();
        assert!(copy.get(Cf::Inodes, b"stale").unwrap().is_none());
        assert_eq!(copy.get(Cf::Dirents, b"d").unwrap().unwrap(), b"v2");
        // The import added no entry; the old newest one stays as the mark.
        assert_eq!(copy.journal_last(), 1);
        assert!(copy.journal_since(1, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn released_files_wait_for_the_sync_and_a_new_store_cancels_their_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = vec![5u8; INLINE_MAX * 2];
        let aid = ObjectId::of(&a);
        let mut b = Batch::default();
        b.put_object(&store, &aid, &a).unwrap();
        store.write(b).unwrap();
        store.sync().unwrap();
        let mut b = Batch::default();
        b.delete_object(&aid, a.len() as u64);
        store.write(b).unwrap();
        assert!(store.has_doomed_files());
        assert!(store.read_object(&aid).unwrap().is_some());
        // The same object stored again before the sync: it must survive.
        let mut b = Batch::default();
        b.put_object(&store, &aid, &a).unwrap();
        store.write(b).unwrap();
        assert!(!store.has_doomed_files());
        store.sync().unwrap();
        assert_eq!(store.read_object(&aid).unwrap().unwrap(), a);
        // Released again: gone after the sync.
        let mut b = Batch::default();
        b.delete_object(&aid, a.len() as u64);
        store.write(b).unwrap();
        store.sync().unwrap();
        assert!(store.read_object(&aid).unwrap().is_none());
    }

    #[test]
    fn unreferenced_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = vec![3u8; INLINE_MAX * 2];
        let b = vec![4u8; INLINE_MAX * 2];
        let (aid, bid) = (ObjectId::of(&a), ObjectId::of(&b));
        let mut batch = Batch::default();
        batch.put_object(&store, &aid, &a).unwrap();
        batch.put_object(&store, &bid, &b).unwrap();
        assert_eq!(store.remove_unreferenced_files(|id| *id == aid).unwrap(), 1);
        assert!(store.read_object(&aid).unwrap().is_some());
        assert!(store.read_object(&bid).unwrap().is_none());
    }
}
