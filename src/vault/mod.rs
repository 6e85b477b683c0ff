//! The vault engine: POSIX namespace and file content over the local store.
//!
//! Names, inodes, chunk maps and attributes are sealed records in [`Store`];
//! file content goes through an in-memory write-back buffer of dirty chunks
//! that background workers seal into objects (see `data.rs`).
//!
//! Architecture invariant: no FUSE and no network types here. Every public
//! method is blocking and thread-safe; callers run it off the FUSE threads.
//! Every metadata change is one atomic store batch.

mod data;
mod free;
mod load;
mod network;
pub mod records;
pub mod replica;

pub use load::{FetchDone, Fetcher, Loaded, Plain, Wait};
pub use network::{Renewal, UploadBacklog};

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
    disk_cache: Mutex<network::DiskCache>,
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
            disk_cache: Mutex::new(network::DiskCache::new(opts.disk_cache)),
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

    /// The inode as `stat` should see it.
    pub fn getattr(&self, ino: Ino) -> Result<Inode> {
        let inner = self.lock();
        self.inode(&inner, ino)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Inode)> {
        let (_, d) = self.dirent(parent, name)?.ok_or(VaultError::NotFound)?;
        let inner = self.lock();
        Ok((d.ino, self.inode(&inner, d.ino)?))
    }

    /// Creates a file, directory, symlink or special file.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> Result<(Ino, Inode)> {
        let key = self.name_key(parent, name)?;
        let mut inner = self.lock();
        let mut pinode = self.dir_inode(&inner, parent)?;
        if self.store.get(Cf::Dirents, &key)?.is_some() {
            return Err(VaultError::Exists);
        }
        let ino = inner.counters.next_ino;
        inner.counters.next_ino += 1;
        let mut inode = Inode::new(kind, perm & 0o7777, uid, gid, parent);
        inode.rdev = rdev;
        if kind == Kind::Dir {
            inode.size = 4096;
            pinode.nlink += 1;
        }
        if let Some(t) = target {
            inode.size = t.len() as u64;
            inode.target = Some(t.to_vec());
        }
        // setgid directories pass their group on.
        if pinode.perm & 0o2000 != 0 {
            inode.gid = pinode.gid;
            if kind == Kind::Dir {
                inode.perm |= 0o2000;
            }
        }
        pinode.mtime = inode.ctime;
        pinode.ctime = inode.ctime;
        let mut batch = Txn::default();
        self.put_record(&mut batch, Cf::Dirents, &key, &Dirent { ino, kind });
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.put_inode(&mut inner, &mut batch, parent, &pinode);
        self.commit(&mut inner, batch)?;
        Ok((ino, inode))
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.getattr(ino)?;
        inode.target.ok_or(VaultError::Invalid("not a symlink"))
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Inode> {
        let key = self.name_key(newparent, newname)?;
        let mut inner = self.lock();
        let mut pinode = self.dir_inode(&inner, newparent)?;
        let mut inode = self.inode(&inner, ino)?;
        if inode.kind == Kind::Dir {
            return Err(VaultError::Invalid(
                "hard links to directories are not allowed",
            ));
        }
        if self.store.get(Cf::Dirents, &key)?.is_some() {
            return Err(VaultError::Exists);
        }
        let now = Time::now();
        inode.nlink += 1;
        inode.ctime = now;
        pinode.mtime = now;
        pinode.ctime = now;
        let mut batch = Txn::default();
        self.put_record(
            &mut batch,
            Cf::Dirents,
            &key,
            &Dirent {
                ino,
                kind: inode.kind,
            },
        );
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.put_inode(&mut inner, &mut batch, newparent, &pinode);
        if inode.nlink == 1 {
            // It was an open orphan and got a name again.
            batch.delete(Cf::Orphans, ino_key(ino).to_vec());
        }
        self.commit(&mut inner, batch)?;
        Ok(inode)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove_entry(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove_entry(parent, name, true)
    }

    fn remove_entry(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        let mut inner = self.lock();
        let (key, d) = self.dirent(parent, name)?.ok_or(VaultError::NotFound)?;
        let mut pinode = self.dir_inode(&inner, parent)?;
        match (dir, d.kind == Kind::Dir) {
            (true, false) => return Err(VaultError::NotDir),
            (false, true) => return Err(VaultError::IsDir),
            _ => {}
        }
        if dir && !self.dir_is_empty(d.ino)? {
            return Err(VaultError::NotEmpty);
        }
        let now = Time::now();
        pinode.mtime = now;
        pinode.ctime = now;
        if dir {
            pinode.nlink = pinode.nlink.saturating_sub(1);
        }
        let mut batch = Txn::default();
        batch.delete(Cf::Dirents, key);
        self.put_inode(&mut inner, &mut batch, parent, &pinode);
        self.drop_link(&mut inner, &mut batch, d.ino)?;
        self.commit(&mut inner, batch)
    }

    /// Removes one name of `ino`; frees it when no name and no opener is left.
    fn drop_link(&self, inner: &mut Inner, batch: &mut Txn, ino: Ino) -> Result<()> {
        let mut inode = self.inode(inner, ino)?;
        inode.ctime = Time::now();
        inode.nlink = if inode.kind == Kind::Dir {
            0
        } else {
            inode.nlink.saturating_sub(1)
        };
        if inode.nlink > 0 {
            self.put_inode(inner, batch, ino, &inode);
        } else if inner.files.get(&ino).is_some_and(|f| f.opens > 0) {
            self.put_inode(inner, batch, ino, &inode);
            batch.put(Cf::Orphans, ino_key(ino).to_vec(), Vec::new());
        } else {
            self.free_inode(inner, batch, ino)?;
        }
        Ok(())
    }

    /// Takes one reference to an object whose bytes are stored (or in `batch`).
    fn ref_object(&self, batch: &mut Txn, id: &ObjectId, size: u64) {
        let e = batch.refs.entry(*id).or_insert((0, size));
        e.0 += 1;
        e.1 = size;
    }

    fn unref_object(&self, batch: &mut Txn, id: &ObjectId) {
        batch.refs.entry(*id).or_insert((0, 0)).0 -= 1;
    }

    /// Applies a summed reference change; an object nobody references (and no
    /// worker is about to) is deleted with the batch.
    fn apply_refs(
        &self,
        inner: &mut Inner,
        batch: &mut Txn,
        id: &ObjectId,
        delta: i64,
        size: u64,
    ) -> Result<()> {
        let old: Option<ObjectRecord> = self.get_record(Cf::Objects, &id.0, "object record")?;
        if old.is_none() && delta < 0 {
            tracing::warn!(object = %id, "released an object with no reference record");
            return Ok(());
        }
        let new = old.is_none();
        let mut rec = old.unwrap_or(ObjectRecord { refs: 0, size });
        let was = rec.refs;
        rec.refs = (rec.refs as i64 + delta).max(0) as u64;
        if was == 0 && rec.refs > 0 {
            inner.counters.objects += 1;
            inner.counters.stored_bytes += rec.size;
        } else if was > 0 && rec.refs == 0 {
            inner.counters.objects = inner.counters.objects.saturating_sub(1);
            inner.counters.stored_bytes = inner.counters.stored_bytes.saturating_sub(rec.size);
        }
        if rec.refs == 0 && !inner.pending_objects.contains_key(id) {
            self.forget_remote(inner, batch, id, rec.size)?;
            self.delete_object(batch, id, rec.size);
        } else {
            if new {
                self.queue_upload(inner, batch, id, rec.size);
            }
            self.put_record(batch, Cf::Objects, &id.0, &rec);
        }
        Ok(())
    }

    fn delete_object(&self, batch: &mut Txn, id: &ObjectId, size: u64) {
        batch.delete(Cf::Objects, id.0.to_vec());
        batch.delete_object(id, size);
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        let dst_key = self.name_key(newparent, newname)?;
        let mut inner = self.lock();
        let (src_key, src) = self.dirent(parent, name)?.ok_or(VaultError::NotFound)?;
        let dst: Option<Dirent> = self.get_record(Cf::Dirents, &dst_key, "directory entry")?;
        self.dir_inode(&inner, newparent)?;
        if parent == newparent && name == newname {
            return Ok(());
        }
        if mode == RenameMode::NoReplace && dst.is_some() {
            return Err(VaultError::Exists);
        }
        if src.kind == Kind::Dir && self.is_ancestor(&inner, src.ino, newparent)? {
            return Err(VaultError::Invalid("cannot move a directory into itself"));
        }
        let now = Time::now();
        let mut batch = Txn::default();
        if mode == RenameMode::Exchange {
            let dst = dst.ok_or(VaultError::NotFound)?;
            if dst.kind == Kind::Dir && self.is_ancestor(&inner, dst.ino, parent)? {
                return Err(VaultError::Invalid("cannot move a directory into itself"));
            }
            self.put_record(&mut batch, Cf::Dirents, &src_key, &dst);
            self.put_record(&mut batch, Cf::Dirents, &dst_key, &src);
            self.reparent(&mut inner, &mut batch, src, parent, newparent, now)?;
            self.reparent(&mut inner, &mut batch, dst, newparent, parent, now)?;
            return self.commit(&mut inner, batch);
        }
        if let Some(dst) = dst {
            if dst.ino == src.ino {
                return Ok(()); // two names of one inode: POSIX says do nothing
            }
            match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                (false, true) => return Err(VaultError::IsDir),
                (true, false) => return Err(VaultError::NotDir),
                (true, true) if !self.dir_is_empty(dst.ino)? => return Err(VaultError::NotEmpty),
                _ => {}
            }
            if dst.kind == Kind::Dir {
                let mut np = self.inode(&inner, newparent)?;
                np.nlink = np.nlink.saturating_sub(1);
                self.put_inode(&mut inner, &mut batch, newparent, &np);
            }
            self.drop_link(&mut inner, &mut batch, dst.ino)?;
        }
        batch.delete(Cf::Dirents, src_key);
        self.put_record(&mut batch, Cf::Dirents, &dst_key, &src);
        self.reparent(&mut inner, &mut batch, src, parent, newparent, now)?;
        self.commit(&mut inner, batch)
    }

    /// Updates times, a moved directory's parent and the parents' link counts.
    fn reparent(
        &self,
        inner: &mut Inner,
        batch: &mut Txn,
        d: Dirent,
        from: Ino,
        to: Ino,
        now: Time,
    ) -> Result<()> {
        let mut inode = self.inode(inner, d.ino)?;
        inode.ctime = now;
        if d.kind == Kind::Dir {
            inode.parent = to;
        }
        self.put_inode(inner, batch, d.ino, &inode);
        for (p, delta) in [(from, -1i64), (to, 1)] {
            let mut pi = self.inode(inner, p)?;
            pi.mtime = now;
            pi.ctime = now;
            if d.kind == Kind::Dir && from != to {
                pi.nlink = (pi.nlink as i64 + delta).max(1) as u32;
            }
            self.put_inode(inner, batch, p, &pi);
        }
        Ok(())
    }

    /// True if `dir` is `ino` or lies below it.
    fn is_ancestor(&self, inner: &Inner, ino: Ino, mut dir: Ino) -> Result<bool> {
        for _ in 0..4096 {
            if dir == ino {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.inode(inner, dir)?.parent;
        }
        Err(corrupt("directory tree", "parent chain too deep or cyclic"))
    }

    /// Lists a directory, `.` and `..` first.
    pub fn readdir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let dir = {
            let inner = self.lock();
            self.dir_inode(&inner, ino)?
        };
        let mut out = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: b".".to_vec(),
            },
            DirEntry {
                ino: dir.parent,
                kind: Kind::Dir,
                name: b"..".to_vec(),
            },
        ];
        for (k, v) in self.store.scan(Cf::Dirents, &ino_key(ino), usize::MAX)? {
            let d: Dirent = decode(&open_record(&self.keys, Cf::Dirents, &k, &v)?)
                .map_err(|e| corrupt("directory entry", e))?;
            let name = self
                .keys
                .open_name(ino, &k[8..])
                .map_err(|e| corrupt(format!("name in directory {ino}"), e))?;
            out.push(DirEntry {
                ino: d.ino,
                kind: d.kind,
                name,
            });
        }
        Ok(out)
    }

    /// Changes attributes, blocking while a truncate loads a chunk from peers.
    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Inode> {
        self.blocking(|loaded| self.setattr_with(ino, set.clone(), loaded))
    }

    /// Changes attributes; fails with [`VaultError::Wait`] (having changed
    /// nothing) while a truncate needs a chunk from peers.
    pub fn setattr_with(&self, ino: Ino, set: SetAttr, loaded: &mut Loaded) -> Result<Inode> {
        if let Some(size) = set.size {
            self.truncate(ino, size, loaded)?;
        }
        let mut inner = self.lock();
        let mut inode = self.inode(&inner, ino)?;
        let now = Time::now();
        if let Some(mode) = set.mode {
            inode.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            inode.uid = uid;
        }
        if let Some(gid) = set.gid {
            inode.gid = gid;
        }
        if (set.uid.is_some() || set.gid.is_some()) && inode.kind != Kind::Dir {
            // chown clears set-id bits
            inode.perm &= !0o6000;
        }
        if let Some(t) = set.atime {
            inode.atime = t;
        }
        if let Some(t) = set.mtime {
            inode.mtime = t;
        }
        inode.ctime = set.ctime.unwrap_or(now);
        let mut batch = Txn::default();
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.commit(&mut inner, batch)?;
        Ok(inode)
    }

    // ---- extended attributes ---------------------------------------------

    fn xattr_key(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if name.is_empty() {
            return Err(VaultError::Invalid("empty attribute name"));
        }
        if name.len() > 255 {
            return Err(VaultError::Range);
        }
        let sealed = self
            .keys
            .seal_name(ino, name)
            .map_err(|_| VaultError::Range)?;
        Ok(prefixed_key(ino, &sealed))
    }

    /// `create`: fail if present; `replace`: fail if absent.
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()> {
        if value.len() > 65536 {
            return Err(VaultError::Range);
        }
        let key = self.xattr_key(ino, name)?;
        let mut inner = self.lock();
        let mut inode = self.inode(&inner, ino)?;
        let exists = self.store.get(Cf::Xattrs, &key)?.is_some();
        if create && exists {
            return Err(VaultError::Exists);
        }
        if replace && !exists {
            return Err(VaultError::NoAttr);
        }
        let mut batch = Txn::default();
        batch.put(
            Cf::Xattrs,
            key.clone(),
            self.keys.seal_meta(&record_ad(Cf::Xattrs, &key), value),
        );
        inode.ctime = Time::now();
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.commit(&mut inner, batch)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let key = self.xattr_key(ino, name)?;
        {
            let inner = self.lock();
            self.inode(&inner, ino)?;
        }
        let v = self
            .store
            .get(Cf::Xattrs, &key)?
            .ok_or(VaultError::NoAttr)?;
        open_record(&self.keys, Cf::Xattrs, &key, &v)
    }

    /// Attribute names, each followed by a NUL byte.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        {
            let inner = self.lock();
            self.inode(&inner, ino)?;
        }
        let mut out = Vec::new();
        for (k, _) in self.store.scan(Cf::Xattrs, &ino_key(ino), usize::MAX)? {
            let name = self
                .keys
                .open_name(ino, &k[8..])
                .map_err(|e| corrupt("attribute name", e))?;
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let key = self.xattr_key(ino, name)?;
        let mut inner = self.lock();
        let mut inode = self.inode(&inner, ino)?;
        if self.store.get(Cf::Xattrs, &key)?.is_none() {
            return Err(VaultError::NoAttr);
        }
        let mut batch = Txn::default();
        batch.delete(Cf::Xattrs, key);
        inode.ctime = Time::now();
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.commit(&mut inner, batch)
    }

    // ---- status -------------------------------------------------------------

    /// Counts files and bytes (a scan of the inode table, decrypted without
    /// the vault lock; the lock is taken only to read the counters and the
    /// sizes of files being written).
    pub fn stats(&self) -> Result<VaultStats> {
        let mut inodes = Vec::new();
        for (k, v) in self.store.scan(Cf::Inodes, &[], usize::MAX)? {
            let ino = Ino::from_be_bytes(k[..8].try_into().map_err(|e| corrupt("inode key", e))?);
            let inode: Inode = decode(&open_record(&self.keys, Cf::Inodes, &k, &v)?)
                .map_err(|e| corrupt("inode", e))?;
            inodes.push((ino, inode.kind, inode.size));
        }
        let inner = self.lock();
        let mut s = VaultStats {
            stored_bytes: inner.counters.stored_bytes,
            objects: inner.counters.objects,
            pending_bytes: inner.dirty_bytes as u64,
            used_bytes: inner.counters.stored_bytes + inner.dirty_bytes as u64,
            allowed_bytes: self.opts.allowance,
            ..Default::default()
        };
        for (ino, kind, size) in &mut inodes {
            if let Some(f) = inner.files.get(ino) {
                *size = f.inode.size;
            }
            match kind {
                Kind::Dir => s.dirs += 1,
                Kind::File => {
                    s.files += 1;
                    s.logical_bytes += *size;
                }
                _ => s.files += 1,
            }
        }
        drop(inner);
        s.cache_bytes = self.loader().cache.bytes() as u64;
        Ok(s)
    }

    /// (used, allowed) stored bytes, for statfs.
    pub fn space(&self) -> (u64, u64) {
        let inner = self.lock();
        (
            inner.counters.stored_bytes + inner.dirty_bytes as u64,
            self.opts.allowance,
        )
    }

    /// Inodes allocated so far (for statfs).
    pub fn inode_count(&self) -> u64 {
        self.lock().counters.next_ino - 1
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
