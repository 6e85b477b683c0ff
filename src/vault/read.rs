//! Reads: dirty chunks first, then committed objects through the loader
//! (`load.rs`), with chunks loaded ahead of sequential readers.

use std::sync::Arc;

use super::*;
use crate::chunk;

/// Chunks loaded ahead of a sequential reader.
const PREFETCH_CHUNKS: u64 = 2;

impl Vault {
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
    pub(super) fn chunk_data(
        &self,
        ino: Ino,
        index: u64,
        loaded: &Loaded,
    ) -> Result<Option<Plain>> {
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
}
