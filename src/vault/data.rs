//! File content: the write-back buffer of dirty chunks, the seal workers that
//! turn them into objects, and reads through the plaintext chunk cache.
//!
//! A write copies into an in-memory dirty chunk and returns. A chunk is
//! sealed by a worker when it fills up, when its file is flushed or synced,
//! when it has been idle for `idle_flush`, or when dirty memory passes
//! `dirty_limit` (writers then wait: backpressure). The worker seals outside
//! the vault lock and commits the chunk map, the object reference and the
//! inode in one batch; `fsync` waits for its file's seals and syncs the WAL.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::chunk::{self, CHUNK_SIZE};

/// Committed chunk content a change starts from: chunk index -> (object,
/// plaintext), loaded before the vault lock is taken.
type Bases = std::collections::HashMap<u64, (ObjectId, Plain)>;

/// Chunks loaded ahead of a sequential reader.
const PREFETCH_CHUNKS: u64 = 2;
/// Prefetches waiting for a worker; more are dropped.
const MAX_PREFETCHES_QUEUED: usize = 16;

impl Vault {
    /// The active state of a file, loading it on first use.
    pub(super) fn file_state<'a>(
        &self,
        inner: &'a mut Inner,
        ino: Ino,
    ) -> Result<&'a mut FileState> {
        use std::collections::hash_map::Entry;
        match inner.files.entry(ino) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let inode: Inode = self
                    .get_record(Cf::Inodes, &ino_key(ino), "inode")?
                    .ok_or(VaultError::NotFound)?;
                Ok(e.insert(FileState {
                    inode,
                    inode_dirty: false,
                    opens: 0,
                    epoch: 0,
                    dirty: BTreeMap::new(),
                    last_read_end: u64::MAX,
                    error: None,
                    idle_since: Instant::now(),
                }))
            }
        }
    }

    pub fn open_file(&self, ino: Ino) -> Result<Inode> {
        let mut inner = self.lock();
        let f = self.file_state(&mut inner, ino)?;
        f.opens += 1;
        Ok(f.inode.clone())
    }

    /// Last close of a handle: starts sealing, frees an unlinked file.
    pub fn release(&self, ino: Ino) -> Result<()> {
        let mut inner = self.lock();
        let Some(f) = inner.files.get_mut(&ino) else {
            return Ok(());
        };
        f.opens = f.opens.saturating_sub(1);
        f.idle_since = Instant::now();
        if f.opens == 0 && f.inode.nlink == 0 {
            let mut batch = Txn::default();
            self.free_inode(&mut inner, &mut batch, ino)?;
            self.commit(&mut inner, batch)?;
            self.sealed.notify_all();
            return Ok(());
        }
        self.schedule_file(&mut inner, ino);
        Ok(())
    }

    /// `close(2)` on a handle: sealing starts in the background.
    pub fn flush(&self, ino: Ino) {
        let mut inner = self.lock();
        self.schedule_file(&mut inner, ino);
    }

    /// Reads file content, blocking while parts of it come from peers.
    pub fn read(&self, ino: Ino, offset: u64, size: usize) -> Result<Vec<u8>> {
        self.blocking(|loaded| self.read_with(ino, offset, size, loaded))
    }

    /// Reads file content; fails with [`VaultError::Wait`] while a chunk is
    /// being fetched from peers (wait for it, then call again with the same
    /// `loaded`).
    pub fn read_with(
        &self,
        ino: Ino,
        offset: u64,
        size: usize,
        loaded: &mut Loaded,
    ) -> Result<Vec<u8>> {
        let (file_size, sequential) = {
            let mut inner = self.lock();
            let f = self.file_state(&mut inner, ino)?;
            if f.inode.kind == Kind::Dir {
                return Err(VaultError::IsDir);
            }
            let seq = f.last_read_end == offset || offset == 0;
            (f.inode.size, seq)
        };
        if offset >= file_size {
            return Ok(Vec::new());
        }
        let n = ((file_size - offset).min(size as u64)) as usize;
        let mut out = vec![0u8; n];
        let mut last_index = 0;
        for p in chunk::pieces(offset, n) {
            last_index = p.index;
            let data = self.chunk_data(ino, p.index, loaded)?;
            if let Some(d) = data {
                if p.within < d.len() {
                    let avail = (d.len() - p.within).min(p.len);
                    out[p.buf_offset..p.buf_offset + avail]
                        .copy_from_slice(&d[p.within..p.within + avail]);
                }
            }
        }
        let mut inner = self.lock();
        if let Some(f) = inner.files.get_mut(&ino) {
            f.last_read_end = offset + n as u64;
        }
        // Sequential readers get the next chunks loaded ahead, on the
        // workers, so disk reads and decryption overlap with the reader.
        if !sequential {
            return Ok(out);
        }
        let ahead: Vec<u64> = (last_index + 1..=last_index + PREFETCH_CHUNKS)
            .filter(|i| chunk::start_of(*i) < file_size)
            .filter(|i| {
                !inner
                    .files
                    .get(&ino)
                    .is_some_and(|f| f.dirty.contains_key(i))
            })
            .collect();
        drop(inner);
        for next in ahead {
            if let Ok(Some(r)) =
                self.get_record::<ChunkRef>(Cf::Chunks, &chunk_key(ino, next), "chunk map")
            {
                if let Some(object) = r.object() {
                    self.prefetch(object);
                }
            }
        }
        Ok(out)
    }

    /// The newest content of a chunk: dirty buffer, or committed object.
    fn chunk_data(&self, ino: Ino, index: u64, loaded: &Loaded) -> Result<Option<Plain>> {
        {
            let inner = self.lock();
            if let Some(d) = inner.files.get(&ino).and_then(|f| f.dirty.get(&index)) {
                return Ok(Some(d.data.clone()));
            }
        }
        // The object may be released between reading the map and loading it
        // (a concurrent overwrite): read the map again once.
        for attempt in 0..2 {
            let Some(r) =
                self.get_record::<ChunkRef>(Cf::Chunks, &chunk_key(ino, index), "chunk map")?
            else {
                return Ok(None);
            };
            let object = match (r.inline_content(), r.object()) {
                (Some(d), _) => return Ok(Some(Arc::new(d))),
                (None, Some(o)) => o,
                (None, None) => unreachable!("a chunk is inline or an object"),
            };
            match self.load_object(&object, true, loaded) {
                Ok(d) => return Ok(Some(d)),
                Err(VaultError::NotFound) if attempt == 0 => continue,
                Err(VaultError::NotFound) => {
                    return Err(corrupt(
                        format!("object {object}"),
                        "missing from the local store",
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("loop returns")
    }

    /// Writes file content, blocking while chunks it starts from come from
    /// peers.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.blocking(|loaded| self.write_with(ino, offset, data, loaded))
    }

    /// Writes file content; fails with [`VaultError::Wait`] (having changed
    /// nothing) while a chunk it starts from is fetched from peers.
    pub fn write_with(
        &self,
        ino: Ino,
        offset: u64,
        data: &[u8],
        loaded: &mut Loaded,
    ) -> Result<usize> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(VaultError::Invalid("write beyond the largest file size"))?;
        self.wait_for_room();
        let wanted: Vec<(u64, bool)> = chunk::pieces(offset, data.len())
            .map(|p| (p.index, p.within == 0 && p.len == CHUNK_SIZE))
            .collect();
        let mut bases = Bases::new();
        let mut inner = self.lock_with_bases(ino, |_| wanted.clone(), &mut bases, loaded)?;
        if let Some((errno, msg)) = inner.files.get_mut(&ino).and_then(|f| f.error.take()) {
            return Err(VaultError::Deferred { errno, msg });
        }
        let used = inner.counters.stored_bytes + inner.dirty_bytes as u64;
        if used.saturating_add(data.len() as u64) > self.opts.allowance {
            let msg = format!(
                "the vault's allowance of {} bytes is used up ({used} stored or pending); \
                 donate more space (--donate) to store more",
                self.opts.allowance
            );
            tracing::warn!("write refused: {msg}");
            return Err(VaultError::NoSpace(msg));
        }
        for p in chunk::pieces(offset, data.len()) {
            let full = p.within == 0 && p.len == CHUNK_SIZE;
            let src = &data[p.buf_offset..p.buf_offset + p.len];
            self.modify_chunk(&mut inner, ino, p.index, full, &bases, |buf| {
                if buf.len() < p.within + p.len {
                    if buf.capacity() < p.within + p.len && p.within + p.len > 64 * 1024 {
                        buf.reserve_exact(CHUNK_SIZE - buf.len());
                    }
                    buf.resize(p.within + p.len, 0);
                }
                buf[p.within..p.within + p.len].copy_from_slice(src);
            })?;
            if p.within + p.len == CHUNK_SIZE {
                self.schedule_chunk(&mut inner, ino, p.index);
            }
        }
        let f = inner
            .files
            .get_mut(&ino)
            .expect("modify_chunk made it active");
        f.inode.size = f.inode.size.max(end);
        let now = Time::now();
        f.inode.mtime = now;
        f.inode.ctime = now;
        // Writing clears set-user-id (as the kernel expects of filesystems).
        if f.inode.perm & 0o4000 != 0 {
            f.inode.perm &= !0o6000;
        }
        f.inode_dirty = true;
        Ok(data.len())
    }

    /// Takes the vault lock once the committed content of every chunk in
    /// `wanted` (index, overwritten whole) that a change will start from is
    /// in `bases`. Objects are loaded (from disk or peers) without the lock;
    /// a chunk committed anew meanwhile is loaded again.
    fn lock_with_bases(
        &self,
        ino: Ino,
        wanted: impl Fn(&FileState) -> Vec<(u64, bool)>,
        bases: &mut Bases,
        loaded: &Loaded,
    ) -> Result<MutexGuard<'_, Inner>> {
        let mut rounds = 0;
        loop {
            let mut inner = self.lock();
            let f = self.file_state(&mut inner, ino)?;
            let mut missing = Vec::new();
            for (index, whole) in wanted(f) {
                if whole || f.dirty.contains_key(&index) || chunk::start_of(index) >= f.inode.size {
                    continue;
                }
                let r: Option<ChunkRef> =
                    self.get_record(Cf::Chunks, &chunk_key(ino, index), "chunk map")?;
                if let Some(o) = r.and_then(|r| r.object()) {
                    if bases.get(&index).map(|b| b.0) != Some(o) {
                        missing.push((index, o));
                    }
                }
            }
            if missing.is_empty() {
                return Ok(inner);
            }
            drop(inner);
            rounds += 1;
            for (index, o) in missing {
                match self.load_object(&o, true, loaded) {
                    Ok(d) => {
                        bases.insert(index, (o, d));
                    }
                    Err(VaultError::Wait(w)) => return Err(VaultError::Wait(w)),
                    // The chunk may have been committed anew (and its old
                    // object released) meanwhile: read the map again.
                    Err(_) if rounds < 3 => {}
                    Err(e) => return Err(e),
                }
            }
            if rounds >= 8 {
                return Err(VaultError::Unavailable(format!(
                    "inode {ino}: its content kept changing while a write loaded it"
                )));
            }
        }
    }

    /// Applies `change` to the dirty buffer of a chunk, creating it from the
    /// committed content first unless the change overwrites the whole chunk
    /// (an object's content must be in `bases`: see [`lock_with_bases`]).
    fn modify_chunk(
        &self,
        inner: &mut Inner,
        ino: Ino,
        index: u64,
        overwrites_all: bool,
        bases: &Bases,
        change: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        let gen = inner.next_gen;
        inner.next_gen += 1;
        let size = self.file_state(inner, ino)?.inode.size;
        let f = inner.files.get_mut(&ino).expect("active");
        if f.inode.kind != Kind::File {
            return Err(VaultError::Invalid("not a regular file"));
        }
        let before;
        let after;
        if let Some(d) = f.dirty.get_mut(&index) {
            before = d.data.len();
            let buf = Arc::make_mut(&mut d.data);
            change(buf);
            after = buf.len();
            d.gen = gen;
            d.touched = Instant::now();
        } else {
            let mut base = Vec::new();
            if !overwrites_all && chunk::start_of(index) < size {
                if let Some(r) =
                    self.get_record::<ChunkRef>(Cf::Chunks, &chunk_key(ino, index), "chunk map")?
                {
                    base = match (r.inline_content(), r.object()) {
                        (Some(d), _) => d,
                        (None, Some(o)) => match bases.get(&index) {
                            Some((id, data)) if *id == o => data.as_ref().clone(),
                            _ => {
                                return Err(VaultError::Unavailable(format!(
                                    "chunk {index} of inode {ino} changed while it was loaded"
                                )))
                            }
                        },
                        (None, None) => Vec::new(),
                    };
                    base.truncate(chunk::len_in_file(index, size));
                }
            }
            before = 0;
            change(&mut base);
            after = base.len();
            let f = inner.files.get_mut(&ino).expect("active");
            f.dirty.insert(
                index,
                Dirty {
                    data: Arc::new(base),
                    gen,
                    sealing: false,
                    touched: Instant::now(),
                },
            );
        }
        inner.dirty_bytes = inner.dirty_bytes + after - before;
        Ok(())
    }

    pub(super) fn truncate(&self, ino: Ino, size: u64, loaded: &Loaded) -> Result<()> {
        if size > i64::MAX as u64 {
            return Err(VaultError::Invalid("size beyond the largest file size"));
        }
        // A shrink inside a chunk starts from its committed content (judged
        // under the lock, against the size at that moment).
        let partial = |f: &FileState| {
            let shrinks = size < f.inode.size;
            vec![(
                size / CHUNK_SIZE as u64,
                !shrinks || size % CHUNK_SIZE as u64 == 0,
            )]
        };
        self.shrink_in_slices(ino, size)?;
        let mut bases = Bases::new();
        let mut inner = self.lock_with_bases(ino, partial, &mut bases, loaded)?;
        let f = self.file_state(&mut inner, ino)?;
        match f.inode.kind {
            Kind::File => {}
            Kind::Dir => return Err(VaultError::IsDir),
            _ => return Err(VaultError::Invalid("not a regular file")),
        }
        let old = f.inode.size;
        if size < old {
            f.epoch += 1;
            let keep = size.div_ceil(CHUNK_SIZE as u64);
            let dropped: usize = f
                .dirty
                .split_off(&keep)
                .values()
                .map(|d| d.data.len())
                .sum();
            inner.dirty_bytes -= dropped;
            let mut batch = Txn::default();
            // Only the chunks at or past the new end (at most a slice
            // after `shrink_in_slices`): seek straight to them.
            self.release_chunks(&mut batch, ino, keep, usize::MAX)?;
            let within = (size % CHUNK_SIZE as u64) as usize;
            if within != 0 {
                self.modify_chunk(
                    &mut inner,
                    ino,
                    size / CHUNK_SIZE as u64,
                    false,
                    &bases,
                    |buf| buf.truncate(within),
                )?;
            }
            let f = inner.files.get_mut(&ino).expect("active");
            f.inode.size = size;
            let inode = f.inode.clone();
            self.put_inode(&mut inner, &mut batch, ino, &inode);
            self.commit(&mut inner, batch)?;
        } else {
            f.inode.size = size;
            f.inode_dirty = true;
        }
        let f = inner.files.get_mut(&ino).expect("active");
        if size != old {
            let now = Time::now();
            f.inode.mtime = now;
            f.inode.ctime = now;
            f.inode_dirty = true;
        }
        Ok(())
    }

    /// Writers wait here while too much is dirty (backpressure).
    fn wait_for_room(&self) {
        let mut inner = self.lock();
        while inner.dirty_bytes > self.opts.dirty_limit && !self.stopping.load(Ordering::Relaxed) {
            let inos: Vec<Ino> = inner.files.keys().copied().collect();
            for ino in inos {
                self.schedule_file(&mut inner, ino);
            }
            inner = self
                .sealed
                .wait_timeout(inner, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn schedule_file(&self, inner: &mut Inner, ino: Ino) {
        let Some(f) = inner.files.get(&ino) else {
            return;
        };
        let idx: Vec<u64> = f
            .dirty
            .iter()
            .filter(|(_, d)| !d.sealing)
            .map(|(i, _)| *i)
            .collect();
        for i in idx {
            self.schedule_chunk(inner, ino, i);
        }
    }

    fn schedule_chunk(&self, inner: &mut Inner, ino: Ino, index: u64) {
        let Some(f) = inner.files.get_mut(&ino) else {
            return;
        };
        let epoch = f.epoch;
        let Some(d) = f.dirty.get_mut(&index) else {
            return;
        };
        if d.sealing {
            return;
        }
        d.sealing = true;
        let job = Job::Seal {
            ino,
            index,
            gen: d.gen,
            epoch,
            data: d.data.clone(),
        };
        self.push_job(job);
    }

    pub(super) fn push_job(&self, job: Job) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match job {
            // Seals go first: they free memory that writers wait for.
            Job::Seal { .. } => jobs.push_front(job),
            // Prefetches are advisory: a few queued at most.
            Job::Prefetch { .. } => {
                let queued = jobs
                    .iter()
                    .filter(|j| matches!(j, Job::Prefetch { .. }))
                    .count();
                if queued >= MAX_PREFETCHES_QUEUED {
                    return;
                }
                jobs.push_back(job)
            }
        }
        self.jobs_ready.notify_one();
    }

    /// Waits until the file's acknowledged writes are sealed and durable.
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        self.settle(Some(ino))?;
        self.store.sync()?;
        Ok(())
    }

    /// Seals everything dirty in the vault and makes it durable.
    pub fn sync_all(&self) -> Result<()> {
        self.settle(None)?;
        self.store.sync()?;
        Ok(())
    }

    /// Seals dirty chunks of one file (or all) and waits for them, then
    /// writes dirty inodes. Reports (and clears) a failed background seal.
    fn settle(&self, only: Option<Ino>) -> Result<()> {
        let mut inner = self.lock();
        loop {
            let inos: Vec<Ino> = match only {
                Some(i) => vec![i],
                None => inner.files.keys().copied().collect(),
            };
            let mut busy = false;
            for ino in &inos {
                let Some(f) = inner.files.get_mut(ino) else {
                    continue;
                };
                if let Some((errno, msg)) = f.error.take() {
                    return Err(VaultError::Deferred { errno, msg });
                }
                if !f.dirty.is_empty() {
                    busy = true;
                    self.schedule_file(&mut inner, *ino);
                }
            }
            if !busy {
                let mut batch = Txn::default();
                for ino in inos {
                    if let Some(f) = inner.files.get(&ino).filter(|f| f.inode_dirty) {
                        let inode = f.inode.clone();
                        self.put_inode(&mut inner, &mut batch, ino, &inode);
                    }
                }
                return self.commit(&mut inner, batch);
            }
            // Help the workers instead of waiting for them: a small file's
            // fsync then seals on this thread with no hand-off.
            drop(inner);
            let mut helped = false;
            while let Some(job) = self.take_seal_job() {
                self.run_job(job);
                helped = true;
            }
            inner = self.lock();
            // Seals may have finished while the lock was dropped: look again
            // before sleeping (a wake-up sent meanwhile is not repeated).
            let settled = |inner: &Inner| {
                let mut files = inner
                    .files
                    .iter()
                    .filter(|(i, _)| only.is_none_or(|o| o == **i));
                files.all(|(_, f)| f.dirty.values().all(|d| !d.sealing) || f.error.is_some())
            };
            if helped || settled(&inner) {
                continue;
            }
            inner = self
                .sealed
                .wait_timeout(inner, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    // ---- workers --------------------------------------------------------------

    pub(super) fn start_workers(self: &Arc<Self>) {
        for i in 0..self.opts.workers {
            let v = Arc::downgrade(self);
            std::thread::Builder::new()
                .name(format!("drizzle-seal-{i}"))
                .spawn(move || worker_loop(v))
                .expect("spawn worker thread");
        }
        let v = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("drizzle-idle-flush".into())
            .spawn(move || idle_loop(v))
            .expect("spawn flusher thread");
    }

    /// Stops the workers after everything dirty is sealed and synced.
    pub fn shutdown(&self) -> Result<()> {
        let r = self.sync_all();
        self.stopping.store(true, Ordering::SeqCst);
        self.jobs_ready.notify_all();
        r
    }

    /// A queued seal, if any (seals sit at the front of the queue).
    fn take_seal_job(&self) -> Option<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match jobs.front() {
            Some(Job::Seal { .. }) => jobs.pop_front(),
            _ => None,
        }
    }

    fn next_job(&self) -> Option<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(j) = jobs.pop_front() {
                return Some(j);
            }
            if self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            jobs = self
                .jobs_ready
                .wait_timeout(jobs, Duration::from_millis(500))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn run_job(&self, job: Job) {
        match job {
            Job::Prefetch { object } => self.run_prefetch(&object),
            Job::Seal {
                ino,
                index,
                gen,
                epoch,
                data,
            } => {
                if let Err(e) = self.seal_chunk(ino, index, gen, epoch, data) {
                    tracing::error!(ino, index, "sealing a chunk failed: {e}");
                    let mut inner = self.lock();
                    if let Some(f) = inner.files.get_mut(&ino) {
                        f.error = Some((e.errno(), e.to_string()));
                        if let Some(d) = f.dirty.get_mut(&index) {
                            d.sealing = false;
                            d.touched = Instant::now();
                        }
                    }
                    self.sealed.notify_all();
                }
            }
        }
    }

    /// Seals one chunk and commits it (see the module doc).
    fn seal_chunk(
        &self,
        ino: Ino,
        index: u64,
        gen: u64,
        epoch: u64,
        data: Arc<Vec<u8>>,
    ) -> Result<()> {
        let hole = data.iter().all(|b| *b == 0);
        let inline = !hole && data.len() <= INLINE_CHUNK_MAX;
        let mut batch = Txn::default();
        let mut object = None;
        if !hole && !inline {
            let sealed = self.keys.seal_object(&data);
            let id = ObjectId::of(&sealed);
            let known = {
                let mut inner = self.lock();
                *inner.pending_objects.entry(id).or_insert(0) += 1;
                self.store.get(Cf::Objects, &id.0)?.is_some()
            };
            if !known {
                if let Err(e) = batch.put_object(&self.store, &id, &sealed) {
                    self.unpend(&id);
                    return Err(e.into());
                }
            }
            object = Some((id, sealed.len() as u64, known));
        }
        let mut inner = self.lock();
        if let Some((id, _, _)) = &object {
            let n = inner.pending_objects.get_mut(id).expect("pended above");
            *n -= 1;
            if *n == 0 {
                inner.pending_objects.remove(id);
            }
        }
        let current = inner.files.get(&ino).filter(|f| f.epoch == epoch).is_some();
        if !current {
            // Truncated or deleted meanwhile: this content is void.
            if let Some(d) = inner
                .files
                .get_mut(&ino)
                .and_then(|f| f.dirty.get_mut(&index))
            {
                d.sealing = false;
            }
            if let Some((id, size, _)) = object {
                // Nothing references what this seal stored: drop it unless
                // another reference or worker appeared meanwhile.
                let mut txn = Txn::default();
                txn.refs.insert(id, (0, size));
                self.commit(&mut inner, txn)?;
            }
            self.sealed.notify_all();
            return Ok(());
        }
        let key = chunk_key(ino, index);
        let old: Option<ChunkRef> = self.get_record(Cf::Chunks, &key, "chunk map")?;
        let new = object.map(|(id, size, _)| (id, size));
        let new_ref = match new {
            Some((id, _)) => Some(ChunkRef::Object {
                object: id,
                len: data.len() as u32,
            }),
            None if inline => Some(ChunkRef::inline(&data)),
            None => None,
        };
        if old != new_ref {
            let old_object = old.as_ref().and_then(ChunkRef::object);
            if old_object != new.map(|(id, _)| id) {
                if let Some((id, size)) = new {
                    self.ref_object(&mut batch, &id, size);
                }
                if let Some(o) = old_object {
                    self.unref_object(&mut batch, &o);
                }
            }
            match &new_ref {
                Some(r) => self.put_record(&mut batch, Cf::Chunks, &key, r),
                None => batch.delete(Cf::Chunks, key.to_vec()),
            }
        }
        let f = inner.files.get_mut(&ino).expect("checked above");
        let inode = f.inode.clone();
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.commit(&mut inner, batch)?;
        let f = inner.files.get_mut(&ino).expect("checked above");
        let d = f
            .dirty
            .get_mut(&index)
            .expect("sealing entries stay until committed");
        d.sealing = false;
        if d.gen == gen {
            let d = f.dirty.remove(&index).expect("present");
            inner.dirty_bytes -= d.data.len();
            if let Some((id, _)) = new {
                self.loader().cache.insert(id, d.data);
            }
        }
        drop(inner);
        self.sealed.notify_all();
        Ok(())
    }

    fn unpend(&self, id: &ObjectId) {
        let mut inner = self.lock();
        if let Some(n) = inner.pending_objects.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                inner.pending_objects.remove(id);
            }
        }
    }

    /// Seals chunks nobody touched for a while; retires idle file states.
    fn idle_tick(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        let mut todo = Vec::new();
        let mut retire = Vec::new();
        for (ino, f) in &inner.files {
            for (i, d) in &f.dirty {
                if !d.sealing && now.duration_since(d.touched) >= self.opts.idle_flush {
                    todo.push((*ino, *i));
                }
            }
            if f.opens == 0
                && f.dirty.is_empty()
                && now.duration_since(f.idle_since) >= self.opts.idle_flush
            {
                retire.push(*ino);
            }
        }
        for (ino, i) in todo {
            self.schedule_chunk(&mut inner, ino, i);
        }
        let mut batch = Txn::default();
        for ino in retire {
            if let Some(f) = inner.files.get(&ino) {
                if f.inode_dirty {
                    let inode = f.inode.clone();
                    self.put_inode(&mut inner, &mut batch, ino, &inode);
                }
            }
        }
        if let Err(e) = self.commit(&mut inner, batch) {
            tracing::error!("writing idle inodes failed: {e}");
            return;
        }
        let idle = self.opts.idle_flush;
        inner.files.retain(|_, f| {
            f.opens > 0
                || !f.dirty.is_empty()
                || f.inode_dirty
                || now.duration_since(f.idle_since) < idle
        });
    }
}

fn worker_loop(vault: std::sync::Weak<Vault>) {
    loop {
        let Some(v) = vault.upgrade() else { return };
        let Some(job) = v.next_job() else { return };
        v.run_job(job);
    }
}

fn idle_loop(vault: std::sync::Weak<Vault>) {
    let mut synced = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let Some(v) = vault.upgrade() else { return };
        if v.stopping.load(Ordering::SeqCst) {
            return;
        }
        v.idle_tick();
        if let Err(e) = v.reap() {
            tracing::error!("freeing deleted files failed: {e}");
        }
        // Object files released by overwrites and deletes go once their
        // release is durable: a WAL sync every few seconds while any wait.
        let due = synced.elapsed() >= v.opts.release_sync && v.store.has_doomed_files();
        if due || v.store.doomed_backlog() {
            if let Err(e) = v.store.sync() {
                tracing::error!("syncing the vault database failed: {e}");
            }
            synced = Instant::now();
        }
    }
}

impl Vault {
    /// `fallocate` without flags: grows the file to `end` (as a hole).
    pub fn allocate(&self, ino: Ino, end: u64) -> Result<()> {
        let mut inner = self.lock();
        let f = self.file_state(&mut inner, ino)?;
        if f.inode.kind != Kind::File {
            return Err(VaultError::Invalid("not a regular file"));
        }
        if end > f.inode.size {
            f.inode.size = end;
            f.inode.ctime = Time::now();
            f.inode_dirty = true;
        }
        Ok(())
    }

    /// Makes committed metadata durable (directory fsync).
    pub fn sync_metadata(&self) -> Result<()> {
        self.store.sync()?;
        Ok(())
    }
}
