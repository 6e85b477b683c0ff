//! The vault engine: POSIX namespace and file content over the local store.
//!
//! Names, inodes, chunk maps and attributes are sealed records in [`Store`];
//! file content goes through an in-memory write-back buffer of dirty chunks
//! (`write.rs`) that background workers seal into objects (`seal.rs`);
//! reads (`read.rs`) load objects through `load.rs`. This file holds the
//! `Vault` and its state, opening and crash recovery, sealed records and
//! commits; `status.rs` what status shows; `namespace.rs` the POSIX
//! namespace; `objects.rs` the object index; `free.rs` freeing large
//! files; `replica.rs` the metadata publishing state; `versions.rs` how
//! versions relate.
//!
//! Architecture invariant: no FUSE, tokio or network types here. Public
//! methods are thread-safe and never wait for the network: one that needs
//! an object from peers returns `VaultError::Wait` (or blocks, in
//! `Vault::blocking`). Every metadata change is one atomic store batch.

mod free;
mod load;
mod namespace;
mod objects;
mod read;
pub mod records;
mod released;
pub mod replica;
mod seal;
mod status;
pub mod versions;
mod write;

pub use load::{FetchDone, Fetcher, Loaded, Plain, Wait};
pub use objects::{Renewal, UploadBacklog};
pub use released::Released;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::cache::ChunkCache;
use crate::crypto::{CryptoError, ObjectId, VaultKeys};
use crate::store::{Batch, Cf, Store, StoreError};
use records::*;

pub use records::{Ino, Inode, Kind, Time, ROOT_INO};

/// Errors of vault operations; [`VaultError::errno`] is the one mapping to
/// POSIX error numbers.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("name too long")]
    NameTooLong,
    #[error("no such attribute")]
    NoAttr,
    #[error("result does not fit the buffer")]
    Range,
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("io error: {0}")]
    Io(String),
    /// Content that is only on peers could not be fetched.
    #[error("cannot fetch from peers: {0}")]
    Unavailable(String),
    /// The operation needs an object that is being fetched from peers:
    /// wait for it and run the operation again (see `load.rs`). Never
    /// reaches a user: [`Vault::blocking`] and the mount resolve it.
    #[error("waiting for an object from peers")]
    Wait(Wait),
    /// A background seal of this file failed earlier.
    #[error("storing earlier writes failed: {msg}")]
    Deferred { errno: i32, msg: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl VaultError {
    pub fn errno(&self) -> i32 {
        match self {
            VaultError::NotFound => libc::ENOENT,
            VaultError::Exists => libc::EEXIST,
            VaultError::NotEmpty => libc::ENOTEMPTY,
            VaultError::NotDir => libc::ENOTDIR,
            VaultError::IsDir => libc::EISDIR,
            VaultError::Invalid(_) => libc::EINVAL,
            VaultError::NameTooLong => libc::ENAMETOOLONG,
            VaultError::NoAttr => libc::ENODATA,
            VaultError::Range => libc::ERANGE,
            VaultError::NoSpace(_) => libc::ENOSPC,
            VaultError::Corrupt { .. }
            | VaultError::Io(_)
            | VaultError::Unavailable(_)
            | VaultError::Wait(_) => libc::EIO,
            VaultError::Deferred { errno, .. } => *errno,
            VaultError::Store(StoreError::Io { err, .. })
                if err.raw_os_error() == Some(libc::ENOSPC) =>
            {
                libc::ENOSPC
            }
            VaultError::Store(_) => libc::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, VaultError>;

fn corrupt(what: impl Into<String>, e: impl std::fmt::Display) -> VaultError {
    let err = VaultError::Corrupt {
        what: what.into(),
        detail: e.to_string(),
    };
    tracing::error!("{err}");
    err
}

/// Tunables of a running vault.
#[derive(Clone, Debug)]
pub struct VaultOptions {
    /// Dirty (not yet sealed) bytes held in memory before writers wait.
    pub dirty_limit: usize,
    /// Plaintext chunk cache in memory.
    pub cache_bytes: usize,
    /// Threads sealing chunks and loading objects.
    pub workers: usize,
    /// A dirty chunk untouched this long is sealed by the idle flusher.
    pub idle_flush: std::time::Duration,
    /// Bytes of objects already safe on peers kept on local disk.
    pub disk_cache: u64,
    /// Stored (sealed) bytes the vault may hold: what its node donates
    /// times k/n, plus the starter allowance (DESIGN.md section 6).
    pub allowance: u64,
    /// Object files released by overwrites and deletes wait at most this
    /// long for a WAL sync (which makes their release durable) before one
    /// is made for them.
    pub release_sync: std::time::Duration,
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            dirty_limit: 256 << 20,
            cache_bytes: 256 << 20,
            workers: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 8),
            idle_flush: std::time::Duration::from_secs(1),
            disk_cache: u64::MAX,
            allowance: u64::MAX,
            release_sync: std::time::Duration::from_secs(5),
        }
    }
}

/// Attribute changes requested by `setattr`.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    pub ctime: Option<Time>,
}

/// How `rename` treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

/// One directory listing entry.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
    pub name: Vec<u8>,
}

/// What `drizzle status` shows about the vault.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct VaultStats {
    /// Stored bytes plus what waits to be sealed.
    pub used_bytes: u64,
    /// What the vault may store (`df` on the mount shows it).
    pub allowed_bytes: u64,
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub objects: u64,
    pub cache_bytes: u64,
    pub pending_bytes: u64,
}

/// A batch plus the object reference changes it implies. Deltas are summed
/// per object and applied at commit, so one transaction may release the same
/// (deduplicated) object several times.
#[derive(Default)]
pub(super) struct Txn {
    batch: Batch,
    refs: BTreeMap<ObjectId, (i64, u64)>,
}

impl std::ops::Deref for Txn {
    type Target = Batch;
    fn deref(&self) -> &Batch {
        &self.batch
    }
}

impl std::ops::DerefMut for Txn {
    fn deref_mut(&mut self) -> &mut Batch {
        &mut self.batch
    }
}

/// A chunk written but not yet sealed.
struct Dirty {
    data: Arc<Vec<u8>>,
    /// Bumped by every change; a seal commits only if it sealed the newest.
    gen: u64,
    sealing: bool,
    touched: Instant,
}

/// State of a file that is open or has unsealed changes.
struct FileState {
    /// Authoritative copy of the inode while the file is active.
    inode: Inode,
    inode_dirty: bool,
    opens: u32,
    /// Bumped by a shrinking truncate: seals started before are void.
    epoch: u64,
    dirty: BTreeMap<u64, Dirty>,
    /// Where the last read ended, to detect sequential reads.
    last_read_end: u64,
    /// A background seal failed (errno, message); reported by the next
    /// write or fsync.
    error: Option<(i32, String)>,
    idle_since: Instant,
}

impl FileState {
    /// A shrinking truncate: voids the seals in flight (epoch) and drops
    /// the dirty chunks from `index` on; the bytes dropped.
    fn cut_dirty(&mut self, index: u64) -> usize {
        self.epoch += 1;
        self.dirty
            .split_off(&index)
            .values()
            .map(|d| d.data.len())
            .sum()
    }
}

struct Inner {
    counters: Counters,
    files: HashMap<Ino, FileState>,
    dirty_bytes: usize,
    next_gen: u64,
    /// Objects being written by a worker and not yet committed.
    pending_objects: HashMap<ObjectId, u32>,
    /// Objects not yet on peers.
    uploads: UploadBacklog,
}

enum Job {
    Seal {
        ino: Ino,
        index: u64,
        gen: u64,
        epoch: u64,
        data: Arc<Vec<u8>>,
    },
    Prefetch {
        object: ObjectId,
    },
}

/// An unlocked vault.
pub struct Vault {
    /// This vault, for work that finishes on other threads.
    me: std::sync::Weak<Vault>,
    name: String,
    keys: VaultKeys,
    store: Store,
    opts: VaultOptions,
    inner: Mutex<Inner>,
    /// Signalled when seals commit (dirty bytes drop, fsync may finish).
    sealed: Condvar,
    loader: Mutex<load::Loader>,
    jobs: Mutex<VecDeque<Job>>,
    jobs_ready: Condvar,
    stopping: AtomicBool,
    /// Deleted files wait for their chunks to be freed (`free.rs`).
    reap_pending: AtomicBool,
    fetcher: std::sync::OnceLock<Arc<dyn Fetcher>>,
    disk_cache: Mutex<objects::DiskCache>,
}

impl Vault {
    /// Creates the store of a new vault with its root directory.
    pub fn create(dir: &Path, keys: &VaultKeys, uid: u32, gid: u32) -> Result<()> {
        Self::create_in(&Store::open(dir)?, keys, uid, gid)
    }

    /// Writes a new vault's root directory and counters into `store`.
    pub fn create_in(store: &Store, keys: &VaultKeys, uid: u32, gid: u32) -> Result<()> {
        let mut root = Inode::new(Kind::Dir, 0o755, uid, gid, ROOT_INO);
        root.size = 4096;
        let counters = Counters {
            next_ino: ROOT_INO + 1,
            ..Default::default()
        };
        let mut b = Batch::default();
        b.put(
            Cf::Inodes,
            ino_key(ROOT_INO).to_vec(),
            seal_record(keys, Cf::Inodes, &ino_key(ROOT_INO), &encode(&root)),
        );
        b.put(
            Cf::Meta,
            COUNTERS_KEY.to_vec(),
            seal_record(keys, Cf::Meta, COUNTERS_KEY, &encode(&counters)),
        );
        store.write(b)?;
        store.sync()?;
        Ok(())
    }

    /// Opens the vault store in `dir`, finishes what a crash interrupted and
    /// starts the background workers.
    pub fn open(dir: &Path, name: &str, keys: VaultKeys, opts: VaultOptions) -> Result<Arc<Self>> {
        Self::open_in(Store::open(dir)?, name, keys, opts)
    }

    /// Opens a vault on a store made by [`Vault::create_in`] (for example
    /// [`Store::in_memory`]).
    pub fn open_in(
        store: Store,
        name: &str,
        keys: VaultKeys,
        opts: VaultOptions,
    ) -> Result<Arc<Self>> {
        let counters = match store.get(Cf::Meta, COUNTERS_KEY)? {
            Some(v) => {
                let plain = open_record(&keys, Cf::Meta, COUNTERS_KEY, &v)?;
                decode::<Counters>(&plain).map_err(|e| corrupt("vault counters", e))?
            }
            None => {
                return Err(corrupt(
                    "vault database",
                    "no counters record: not initialised",
                ))
            }
        };
        let vault = Arc::new_cyclic(|me| Vault {
            me: me.clone(),
            name: name.to_string(),
            keys,
            store,
            inner: Mutex::new(Inner {
                counters,
                files: HashMap::new(),
                dirty_bytes: 0,
                next_gen: 1,
                pending_objects: HashMap::new(),
                uploads: UploadBacklog::default(),
            }),
            sealed: Condvar::new(),
            loader: Mutex::new(load::Loader::new(opts.cache_bytes)),
            jobs: Mutex::new(VecDeque::new()),
            jobs_ready: Condvar::new(),
            stopping: AtomicBool::new(false),
            reap_pending: AtomicBool::new(false),
            fetcher: std::sync::OnceLock::new(),
            disk_cache: Mutex::new(objects::DiskCache::new(opts.disk_cache)),
            opts,
        });
        vault.recover()?;
        vault.load_network_state()?;
        vault.start_workers();
        Ok(vault)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The vault's keys (for signing and opening its root record).
    pub(crate) fn keys(&self) -> &VaultKeys {
        &self.keys
    }

    /// Frees inodes unlinked while open at a crash and objects whose last
    /// reference went away with it.
    fn recover(&self) -> Result<()> {
        let mut inner = self.lock();
        let orphans = self.store.scan(Cf::Orphans, &[], usize::MAX)?;
        let mut batch = Txn::default();
        for (k, _) in &orphans {
            let ino = Ino::from_be_bytes(k[..8].try_into().map_err(|e| corrupt("orphan key", e))?);
            // Files without an inode are being freed already (`free.rs`).
            if self.store.get(Cf::Inodes, &ino_key(ino))?.is_some() {
                self.free_inode(&mut inner, &mut batch, ino)?;
            }
        }
        self.reap_pending
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for (k, v) in self.store.scan(Cf::Objects, &[], usize::MAX)? {
            let rec: ObjectRecord = decode(&open_record(&self.keys, Cf::Objects, &k, &v)?)
                .map_err(|e| corrupt("object record", e))?;
            if rec.refs == 0 {
                let id = ObjectId(k[..32].try_into().map_err(|e| corrupt("object key", e))?);
                self.forget_remote(&mut inner, &mut batch, &id, rec.size)?;
                self.delete_object(&mut batch, &id, rec.size);
            }
        }
        if !orphans.is_empty() {
            tracing::info!(
                "freed {} files unlinked while open before a crash",
                orphans.len()
            );
        }
        self.commit(&mut inner, batch)?;
        drop(inner);
        let removed = self.store.remove_unreferenced_files(|id| {
            matches!(self.store.get(Cf::Objects, &id.0), Ok(Some(_)))
                || matches!(self.store.get(Cf::Chain, &id.0), Ok(Some(_)))
        })?;
        if removed > 0 {
            tracing::info!("removed {removed} object files left unreferenced by a crash");
        }
        self.store.sync()?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- sealed records ---------------------------------------------------

    fn get_record<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>> {
        match self.store.get(cf, key)? {
            None => Ok(None),
            Some(v) => {
                let plain = open_record(&self.keys, cf, key, &v)?;
                Ok(Some(decode(&plain).map_err(|e| corrupt(what, e))?))
            }
        }
    }

    fn put_record<T: serde::Serialize>(&self, batch: &mut Txn, cf: Cf, key: &[u8], value: &T) {
        batch.put(
            cf,
            key.to_vec(),
            seal_record(&self.keys, cf, key, &encode(value)),
        );
    }

    /// Commits a batch together with the counters.
    fn commit(&self, inner: &mut Inner, mut txn: Txn) -> Result<()> {
        for (id, (delta, size)) in std::mem::take(&mut txn.refs) {
            self.apply_refs(inner, &mut txn, &id, delta, size)?;
        }
        if txn.batch.is_empty() {
            return Ok(());
        }
        self.put_record(&mut txn, Cf::Meta, COUNTERS_KEY, &inner.counters);
        self.store.write(txn.batch)?;
        Ok(())
    }

    fn inode(&self, inner: &Inner, ino: Ino) -> Result<Inode> {
        if let Some(f) = inner.files.get(&ino) {
            return Ok(f.inode.clone());
        }
        self.get_record(Cf::Inodes, &ino_key(ino), "inode")?
            .ok_or(VaultError::NotFound)
    }

    fn put_inode(&self, inner: &mut Inner, batch: &mut Txn, ino: Ino, inode: &Inode) {
        if let Some(f) = inner.files.get_mut(&ino) {
            f.inode = inode.clone();
            f.inode_dirty = false;
        }
        self.put_record(batch, Cf::Inodes, &ino_key(ino), inode);
    }

    fn name_key(&self, parent: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if name.len() > 255 {
            return Err(VaultError::NameTooLong);
        }
        if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
            return Err(VaultError::Invalid("bad file name"));
        }
        let sealed = self
            .keys
            .seal_name(parent, name)
            .map_err(|_| VaultError::Invalid("bad file name"))?;
        Ok(prefixed_key(parent, &sealed))
    }

    fn dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<(Vec<u8>, Dirent)>> {
        let key = self.name_key(parent, name)?;
        let d = self.get_record(Cf::Dirents, &key, "directory entry")?;
        Ok(d.map(|d| (key, d)))
    }

    fn dir_inode(&self, inner: &Inner, ino: Ino) -> Result<Inode> {
        let i = self.inode(inner, ino)?;
        if i.kind != Kind::Dir {
            return Err(VaultError::NotDir);
        }
        Ok(i)
    }

    fn dir_is_empty(&self, ino: Ino) -> Result<bool> {
        Ok(self.store.scan(Cf::Dirents, &ino_key(ino), 1)?.is_empty())
    }
}

fn record_ad(cf: Cf, key: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(key.len() + 9);
    ad.extend_from_slice(cf.name().as_bytes());
    ad.push(0);
    ad.extend_from_slice(key);
    ad
}

fn seal_record(keys: &VaultKeys, cf: Cf, key: &[u8], value: &[u8]) -> Vec<u8> {
    keys.seal_meta(&record_ad(cf, key), value)
}

fn open_record(keys: &VaultKeys, cf: Cf, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    keys.open_meta(&record_ad(cf, key), sealed)
        .map_err(|e: CryptoError| corrupt(format!("{cf:?} record"), e))
}

#[cfg(test)]
mod tests;
