//! Write-back: file states, writes into in-memory dirty chunks, truncates,
//! `fallocate`, and the backpressure that makes writers wait.
//!
//! A write copies into an in-memory dirty chunk and returns. A chunk that
//! starts from committed content (a partial overwrite) loads it first,
//! without the vault lock (`lock_with_bases`). Sealing is `seal.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::chunk::{self, CHUNK_SIZE};

/// Committed chunk content a change starts from: chunk index -> (object,
/// plaintext), loaded before the vault lock is taken.
type Bases = std::collections::HashMap<u64, (ObjectId, Plain)>;

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
                 its node must donate more space for it to store more",
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
    pub(super) fn lock_with_bases(
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
    pub(super) fn modify_chunk(
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
            let keep = size.div_ceil(CHUNK_SIZE as u64);
            let dropped = f.cut_dirty(keep);
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
    pub(super) fn wait_for_room(&self) {
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
}
