//! Freeing file content without holding the vault lock for a whole file.
//!
//! A deleted file with more than [`FREE_AT_ONCE`] chunks loses its inode at
//! once but keeps an `Orphans` mark; the reaper (on the idle thread) then
//! releases its chunks [`SLICE`] at a time, one commit per slice, and drops
//! the mark with the last one. The mark is replicated and survives a crash,
//! so freeing goes on after a restart (or on another device). A truncate
//! that drops many chunks drops them from the end, a slice per commit, each
//! one a truncate to an intermediate size.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::chunk::CHUNK_SIZE;

/// Files of at most this many chunks are freed in the batch that frees
/// their inode.
pub(super) const FREE_AT_ONCE: u64 = 64;
/// Chunks released per commit when freeing in the background.
pub(super) const SLICE: u64 = 128;
/// How long one reaper run may take before it yields to the idle thread's
/// other work.
const REAP_BUDGET: Duration = Duration::from_millis(200);
/// A pause between slices: the vault mutex is not fair, and a thread that
/// takes it again at once would starve the others waiting for it.
const BETWEEN_SLICES: Duration = Duration::from_micros(200);

impl Vault {
    /// Deletes an inode with its attributes and (for a small file) its
    /// chunks; a larger file's chunks are left to the reaper.
    pub(super) fn free_inode(&self, inner: &mut Inner, batch: &mut Txn, ino: Ino) -> Result<()> {
        let chunks = self
            .inode(inner, ino)
            .map(|i| i.size.div_ceil(CHUNK_SIZE as u64))
            .unwrap_or(0);
        if let Some(f) = inner.files.remove(&ino) {
            inner.dirty_bytes -= f.dirty.values().map(|d| d.data.len()).sum::<usize>();
        }
        batch.delete(Cf::Inodes, ino_key(ino).to_vec());
        if chunks > FREE_AT_ONCE {
            batch.put(Cf::Orphans, ino_key(ino).to_vec(), Vec::new());
            self.reap_pending.store(true, Ordering::Relaxed);
            return Ok(());
        }
        self.release_chunks(batch, ino, 0, usize::MAX)?;
        for (k, _) in self.store.scan(Cf::Xattrs, &ino_key(ino), usize::MAX)? {
            batch.delete(Cf::Xattrs, k);
        }
        batch.delete(Cf::Orphans, ino_key(ino).to_vec());
        Ok(())
    }

    /// Deletes (in `batch`) up to `limit` chunk records of `ino` from chunk
    /// `from` on and releases their objects; how many there were.
    pub(super) fn release_chunks(
        &self,
        batch: &mut Txn,
        ino: Ino,
        from: u64,
        limit: usize,
    ) -> Result<usize> {
        let rows = self
            .store
            .scan_from(Cf::Chunks, &ino_key(ino), &chunk_key(ino, from), limit)?;
        for (k, v) in &rows {
            let r: ChunkRef = decode(&open_record(&self.keys, Cf::Chunks, k, v)?)
                .map_err(|e| corrupt("chunk map", e))?;
            if let Some(o) = r.object() {
                self.unref_object(batch, &o);
            }
            batch.delete(Cf::Chunks, k.clone());
        }
        Ok(rows.len())
    }

    /// Frees the chunks of deleted files, a slice per commit, for at most
    /// [`REAP_BUDGET`]; called by the idle thread.
    pub(super) fn reap(&self) -> Result<()> {
        if !self.reap_pending.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let r = self.reap_some();
        if r.is_err() {
            // Try again at the next tick.
            self.reap_pending.store(true, Ordering::Relaxed);
        }
        r
    }

    fn reap_some(&self) -> Result<()> {
        let started = Instant::now();
        for (k, _) in self.store.scan(Cf::Orphans, &[], usize::MAX)? {
            let ino = Ino::from_be_bytes(k[..8].try_into().map_err(|e| corrupt("orphan key", e))?);
            if self.store.get(Cf::Inodes, &k)?.is_some() {
                continue; // open and unlinked: freed at its last close
            }
            loop {
                // Only this thread touches the chunks of a file without an
                // inode: reading them before taking the lock is safe.
                let mut batch = Txn::default();
                let n = self.release_chunks(&mut batch, ino, 0, SLICE as usize)?;
                let last = n < SLICE as usize;
                if last {
                    for (x, _) in self.store.scan(Cf::Xattrs, &ino_key(ino), usize::MAX)? {
                        batch.delete(Cf::Xattrs, x);
                    }
                    batch.delete(Cf::Orphans, k.clone());
                }
                let mut inner = self.lock();
                self.commit(&mut inner, batch)?;
                drop(inner);
                if last {
                    break;
                }
                std::thread::sleep(BETWEEN_SLICES);
                if started.elapsed() > REAP_BUDGET || self.stopping.load(Ordering::Relaxed) {
                    self.reap_pending.store(true, Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Before a truncate to `size`: while more than a slice of chunks lies
    /// past the new end, drops the last slice (one commit each, the file
    /// shrinking to the slice's start), so the lock is held per slice.
    pub(super) fn shrink_in_slices(&self, ino: Ino, size: u64) -> Result<()> {
        let keep = size.div_ceil(CHUNK_SIZE as u64);
        for slice in 0.. {
            if slice > 0 {
                std::thread::sleep(BETWEEN_SLICES);
            }
            let mut inner = self.lock();
            let f = self.file_state(&mut inner, ino)?;
            if f.inode.kind != Kind::File {
                return Ok(());
            }
            let chunks = f.inode.size.div_ceil(CHUNK_SIZE as u64);
            if chunks <= keep + SLICE {
                return Ok(());
            }
            let from = chunks - SLICE;
            let dropped = f.cut_dirty(from);
            f.inode.size = from * CHUNK_SIZE as u64;
            let now = Time::now();
            f.inode.mtime = now;
            f.inode.ctime = now;
            let inode = f.inode.clone();
            inner.dirty_bytes -= dropped;
            let mut batch = Txn::default();
            self.release_chunks(&mut batch, ino, from, usize::MAX)?;
            self.put_inode(&mut inner, &mut batch, ino, &inode);
            self.commit(&mut inner, batch)?;
        }
        Ok(())
    }
}
