//! Sealing: the job queue, the seal workers that turn dirty chunks into
//! objects, `fsync` and `sync_all` (which wait for their seals), and the
//! idle thread.
//!
//! A chunk is sealed by a worker when it fills up, when its file is
//! flushed or synced, when it has been idle for `idle_flush`, or when dirty
//! memory passes `dirty_limit` (writers then wait: backpressure). The
//! worker seals outside the vault lock and commits the chunk map, the
//! object reference and the inode in one batch; `fsync` waits for its
//! file's seals and syncs the WAL. The idle thread also runs the reaper
//! (`free.rs`) and the WAL sync that lets released object files go.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// Prefetches waiting for a worker; more are dropped.
const MAX_PREFETCHES_QUEUED: usize = 16;

impl Vault {
    pub(super) fn schedule_file(&self, inner: &mut Inner, ino: Ino) {
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

    pub(super) fn schedule_chunk(&self, inner: &mut Inner, ino: Ino, index: u64) {
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
    pub(super) fn settle(&self, only: Option<Ino>) -> Result<()> {
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
    pub(super) fn take_seal_job(&self) -> Option<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match jobs.front() {
            Some(Job::Seal { .. }) => jobs.pop_front(),
            _ => None,
        }
    }

    pub(super) fn next_job(&self) -> Option<Job> {
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

    pub(super) fn run_job(&self, job: Job) {
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
    pub(super) fn seal_chunk(
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
        let object = if !hole && !inline {
            Some(self.store_sealed(&data, &mut batch)?)
        } else {
            None
        };
        let mut inner = self.lock();
        if let Some((id, _)) = &object {
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
            if let Some((id, size)) = object {
                // Nothing references what this seal stored: drop it unless
                // another reference or worker appeared meanwhile.
                let mut txn = Txn::default();
                txn.refs.insert(id, (0, size));
                self.commit(&mut inner, txn)?;
            }
            self.sealed.notify_all();
            return Ok(());
        }
        let new_ref = match object {
            Some((id, _)) => Some(ChunkRef::Object {
                object: id,
                len: data.len() as u32,
            }),
            None if inline => Some(ChunkRef::inline(&data)),
            None => None,
        };
        self.map_chunk(&mut batch, ino, index, new_ref, object)?;
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
            if let Some((id, _)) = object {
                self.loader().cache.insert(id, d.data);
            }
        }
        drop(inner);
        self.sealed.notify_all();
        Ok(())
    }

    /// Seals a chunk's content into an object and stores it (in `batch`
    /// when small, else its file now) unless the vault has it already;
    /// the object stays pending (safe from deletion) until the commit.
    fn store_sealed(&self, data: &[u8], batch: &mut Txn) -> Result<(ObjectId, u64)> {
        let sealed = self.keys.seal_object(data);
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
        Ok((id, sealed.len() as u64))
    }

    /// Points a chunk's map record at its new content (in `batch`, under
    /// the vault lock), moving the object reference from the old content.
    fn map_chunk(
        &self,
        batch: &mut Txn,
        ino: Ino,
        index: u64,
        new_ref: Option<ChunkRef>,
        object: Option<(ObjectId, u64)>,
    ) -> Result<()> {
        let key = chunk_key(ino, index);
        let old: Option<ChunkRef> = self.get_record(Cf::Chunks, &key, "chunk map")?;
        if old == new_ref {
            return Ok(());
        }
        let old_object = old.as_ref().and_then(ChunkRef::object);
        if old_object != object.map(|(id, _)| id) {
            if let Some((id, size)) = object {
                self.ref_object(batch, &id, size);
            }
            if let Some(o) = old_object {
                self.unref_object(batch, &o);
            }
        }
        match &new_ref {
            Some(r) => self.put_record(batch, Cf::Chunks, &key, r),
            None => batch.delete(Cf::Chunks, key.to_vec()),
        }
        Ok(())
    }

    pub(super) fn unpend(&self, id: &ObjectId) {
        let mut inner = self.lock();
        if let Some(n) = inner.pending_objects.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                inner.pending_objects.remove(id);
            }
        }
    }

    /// Seals chunks nobody touched for a while; retires idle file states.
    pub(super) fn idle_tick(&self) {
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
    /// Makes committed metadata durable (directory fsync).
    pub fn sync_metadata(&self) -> Result<()> {
        self.store.sync()?;
        Ok(())
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
