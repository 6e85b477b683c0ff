//! Object loading: the plaintext cache, the local store, or peers.
//!
//! A load that needs the network never blocks the thread that asked: it
//! starts the fetch (through the [`Fetcher`]) and fails the operation with
//! [`VaultError::Wait`]. The caller waits for that object without holding
//! anything (the mount awaits it on the runtime; [`Vault::blocking`] blocks
//! the calling thread) and runs the operation again with the plaintext in
//! its [`Loaded`] set. So a read of a file that lives only on peers holds no
//! lock and no content thread while its holders are slow. Concurrent loads
//! of one object share one read or fetch.

use std::collections::HashMap;
use std::sync::Arc;

use futures::channel::oneshot;

use super::*;

/// Decrypted object content.
pub type Plain = Arc<Vec<u8>>;

/// How a finished load reaches those waiting for it (the error is cloned to
/// each waiter as text; every load error maps to EIO).
type Outcome = std::result::Result<Plain, String>;

/// The in-memory side of loading: cache and loads in flight.
pub(super) struct Loader {
    pub(super) cache: ChunkCache,
    /// Objects being read or fetched, with everyone waiting for them.
    loading: HashMap<ObjectId, Vec<oneshot::Sender<Outcome>>>,
}

impl Loader {
    pub(super) fn new(cache_bytes: usize) -> Self {
        Loader {
            cache: ChunkCache::new(cache_bytes as u64),
            loading: HashMap::new(),
        }
    }

    pub(super) fn busy(&self, id: &ObjectId) -> bool {
        self.cache.contains(id) || self.loading.contains_key(id)
    }
}

/// Objects one operation has loaded so far: kept across its retries, so a
/// retry never depends on what the cache still holds.
#[derive(Default)]
pub struct Loaded {
    objects: HashMap<ObjectId, Plain>,
    waits: usize,
}

impl Loaded {
    fn get(&self, id: &ObjectId) -> Option<Plain> {
        self.objects.get(id).cloned()
    }
}

/// An operation stopped because it needs an object that is being read or
/// fetched; wait for it, then run the operation again.
pub struct Wait {
    object: ObjectId,
    rx: oneshot::Receiver<Outcome>,
}

impl std::fmt::Debug for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wait({})", self.object)
    }
}

impl Wait {
    /// Waits (asynchronously) for the object and adds it to `loaded`. An
    /// operation that had to wait more than a few times fails (a write
    /// spans at most two chunks: more means its file keeps changing).
    pub async fn ready(self, loaded: &mut Loaded) -> Result<()> {
        let object = self.object;
        loaded.waits += 1;
        if loaded.waits > MAX_WAITS {
            return Err(VaultError::Unavailable(
                "the file's content kept changing while it was loaded from peers".into(),
            ));
        }
        match self.rx.await {
            Ok(Ok(plain)) => {
                loaded.objects.insert(object, plain);
                Ok(())
            }
            Ok(Err(msg)) => Err(VaultError::Unavailable(msg)),
            Err(_) => Err(VaultError::Unavailable(format!(
                "the load of object {object} was abandoned"
            ))),
        }
    }

    /// Blocks this thread until the object is there.
    pub fn block(self, loaded: &mut Loaded) -> Result<()> {
        futures::executor::block_on(self.ready(loaded))
    }
}

/// How many times one operation may wait for objects before giving up.
const MAX_WAITS: usize = 8;

impl Vault {
    pub(super) fn loader(&self) -> MutexGuard<'_, Loader> {
        self.loader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `op` to completion on this thread, blocking while objects it
    /// needs are fetched (for callers without a runtime: tests, the CLI).
    pub fn blocking<T>(&self, mut op: impl FnMut(&mut Loaded) -> Result<T>) -> Result<T> {
        let mut loaded = Loaded::default();
        loop {
            match op(&mut loaded) {
                Err(VaultError::Wait(w)) => w.block(&mut loaded)?,
                r => return r,
            }
        }
    }

    /// Loads, verifies and opens an object: from `loaded`, the cache or
    /// local disk on this thread; from peers in the background, failing
    /// with [`VaultError::Wait`].
    /// `patient`: a read waits for holders to be found (a prefetch not).
    pub(super) fn load_object(
        &self,
        id: &ObjectId,
        patient: bool,
        loaded: &Loaded,
    ) -> Result<Plain> {
        if let Some(d) = loaded.get(id) {
            return Ok(d);
        }
        {
            let mut loader = self.loader();
            if let Some(d) = loader.cache.get(id) {
                return Ok(d.clone());
            }
            if let Some(waiters) = loader.loading.get_mut(id) {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                return Err(VaultError::Wait(Wait { object: *id, rx }));
            }
            loader.loading.insert(*id, Vec::new());
        }
        match self.store.read_object(id) {
            Ok(Some(sealed)) => {
                self.touch_cached(id);
                let r = self.open_sealed(id, sealed);
                self.finish_load(id, &r);
                r
            }
            Ok(None) => match self.start_fetch(id, patient) {
                Ok(w) => Err(VaultError::Wait(w)),
                Err(e) => {
                    self.finish_load(id, &Err(VaultError::Unavailable(e.to_string())));
                    Err(e)
                }
            },
            Err(e) => {
                let e = VaultError::from(e);
                self.finish_load(id, &Err(VaultError::Unavailable(e.to_string())));
                Err(e)
            }
        }
    }

    /// Checks sealed bytes against their id and opens them.
    fn open_sealed(&self, id: &ObjectId, sealed: Vec<u8>) -> Result<Plain> {
        if ObjectId::of(&sealed) != *id {
            return Err(corrupt(
                format!("object {id}"),
                "content does not match its id",
            ));
        }
        let plain = self
            .keys
            .open_object(sealed)
            .map_err(|e| corrupt(format!("object {id}"), e))?;
        Ok(Arc::new(plain))
    }

    /// Ends a load: caches a success and tells every waiter.
    fn finish_load(&self, id: &ObjectId, r: &Result<Plain>) {
        let waiters = {
            let mut loader = self.loader();
            if let Ok(d) = r {
                loader.cache.insert(*id, d.clone());
            }
            loader.loading.remove(id).unwrap_or_default()
        };
        for tx in waiters {
            let _ = tx.send(match r {
                Ok(d) => Ok(d.clone()),
                Err(e) => Err(e.to_string()),
            });
        }
    }

    /// Starts fetching an object that is not on local disk (its load is
    /// registered); the fetch finishes on another thread.
    fn start_fetch(&self, id: &ObjectId, patient: bool) -> Result<Wait> {
        let placement = self.placement(id)?.ok_or_else(|| {
            corrupt(
                format!("object {id}"),
                "missing from local disk and never uploaded",
            )
        })?;
        let fetcher = self.fetcher.get().ok_or_else(|| {
            VaultError::Unavailable(format!(
                "object {id} is stored only on peers and the network is not running"
            ))
        })?;
        let (tx, rx) = oneshot::channel();
        self.loader()
            .loading
            .get_mut(id)
            .expect("registered by the caller")
            .push(tx);
        let object = *id;
        let mut pending = PendingFetch {
            vault: self.me.clone(),
            object,
            open: true,
        };
        fetcher.fetch(
            id,
            &placement,
            patient,
            Box::new(move |fetched| {
                pending.open = false;
                let Some(vault) = pending.vault.upgrade() else {
                    return;
                };
                let r = vault.fetched(&object, fetched);
                vault.finish_load(&object, &r);
            }),
        );
        Ok(Wait { object, rx })
    }

    /// Checks, opens and keeps (if the disk cache has room) fetched bytes.
    fn fetched(
        &self,
        id: &ObjectId,
        fetched: std::result::Result<Vec<u8>, String>,
    ) -> Result<Plain> {
        let sealed = fetched.map_err(|e| {
            tracing::error!(object = %id, "cannot fetch from peers: {e}");
            VaultError::Unavailable(e)
        })?;
        if ObjectId::of(&sealed) != *id {
            return Err(corrupt(
                format!("object {id}"),
                "fetched bytes do not match the id",
            ));
        }
        if self.disk_cache_limit() > 0 {
            self.keep_fetched(id, &sealed)?;
        }
        self.open_sealed(id, sealed)
    }

    /// Queues an object to be loaded ahead of a sequential reader. Loads
    /// from peers run in the background and do not hold a worker.
    pub(super) fn prefetch(&self, object: ObjectId) {
        if self.loader().busy(&object) {
            return;
        }
        self.push_job(Job::Prefetch { object });
    }

    /// Runs a queued prefetch on a worker.
    pub(super) fn run_prefetch(&self, object: &ObjectId) {
        match self.load_object(object, false, &Loaded::default()) {
            Ok(_) | Err(VaultError::Wait(_)) => {}
            Err(e) => tracing::debug!(%object, "prefetch failed: {e}"),
        }
    }

    /// Empties the in-memory plaintext cache (the next reads go to disk or
    /// to peers).
    pub fn drop_memory_cache(&self) {
        self.loader().cache.clear();
    }
}

/// A fetch in flight. If the fetcher drops it without an answer (its
/// runtime stopped), everyone waiting for the object gets an error instead
/// of waiting forever.
struct PendingFetch {
    vault: std::sync::Weak<Vault>,
    object: ObjectId,
    open: bool,
}

impl Drop for PendingFetch {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        if let Some(v) = self.vault.upgrade() {
            let msg = format!("the fetch of object {} was abandoned", self.object);
            v.finish_load(&self.object, &Err(VaultError::Unavailable(msg)));
        }
    }
}

/// Gets an object's sealed bytes from peers (implemented by `remote`).
pub trait Fetcher: Send + Sync {
    /// Starts fetching and rebuilding an object and returns at once. `done`
    /// gets the bytes (the vault checks them against `id`) or why not, on a
    /// thread that may block. `patient`: wait (bounded) for holders that are
    /// not reachable yet.
    fn fetch(&self, id: &ObjectId, placement: &Placement, patient: bool, done: FetchDone);
}

/// What a [`Fetcher`] calls with the result of a fetch.
pub type FetchDone = Box<dyn FnOnce(std::result::Result<Vec<u8>, String>) + Send>;
