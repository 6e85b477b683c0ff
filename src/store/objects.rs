//! Sealed objects in a store: small ones inline in the blobs family,
//! large ones as files under `objects/` (sharded by the id's first byte),
//! written whole and synced before they are named; reading them whole or
//! piece by piece; files a crash left unreferenced.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::crypto::ObjectId;

use super::{Cf, Op, Store, StoreError};

/// An object as [`Store::open_object`] finds it.
pub enum ObjectData {
    Inline(Vec<u8>),
    /// Its file, opened, and its length.
    File(fs::File, u64),
}

impl Store {
    pub(super) fn object_path(&self, id: &ObjectId) -> Option<PathBuf> {
        let hex = id.to_hex();
        Some(self.objects_dir.as_ref()?.join(&hex[..2]).join(&hex))
    }

    pub(super) fn write_object_file(&self, id: &ObjectId, sealed: &[u8]) -> Result<(), StoreError> {
        let Some(path) = self.object_path(id) else {
            // In memory: every object is inline.
            return self.apply(vec![Op::Put(Cf::Blobs, id.0.to_vec(), sealed.to_vec())]);
        };
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
            fs::File::open(dir.parent().expect("objects dir"))
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
        Ok(self.get(Cf::Blobs, &id.0)?.is_some()
            || self.object_path(id).is_some_and(|p| p.exists()))
    }

    /// Opens a sealed object for reading: its bytes if inline, else its
    /// open file and length (read in pieces by the caller). `None` if
    /// absent.
    pub fn open_object(&self, id: &ObjectId) -> Result<Option<ObjectData>, StoreError> {
        if let Some(v) = self.get(Cf::Blobs, &id.0)? {
            return Ok(Some(ObjectData::Inline(v)));
        }
        let Some(path) = self.object_path(id) else {
            return Ok(None);
        };
        let opened = fs::File::open(&path).and_then(|f| {
            let len = f.metadata()?.len();
            Ok((f, len))
        });
        match opened {
            Ok((f, len)) => Ok(Some(ObjectData::File(f, len))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StoreError::Io { path, err }),
        }
    }

    /// Reads a sealed object, inline or from its file. `None` if absent.
    pub fn read_object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.get(Cf::Blobs, &id.0)? {
            return Ok(Some(v));
        }
        let Some(path) = self.object_path(id) else {
            return Ok(None);
        };
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
        let Some(objects_dir) = &self.objects_dir else {
            return Ok(0);
        };
        let mut removed = 0;
        let io_err = |path: &Path, err| StoreError::Io {
            path: path.to_path_buf(),
            err,
        };
        for shard in fs::read_dir(objects_dir).map_err(|e| io_err(objects_dir, e))? {
            let shard = shard.map_err(|e| io_err(objects_dir, e))?.path();
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
