//! Metadata records and their keys. Values are serialized with postcard and
//! sealed by the vault before they reach the store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::crypto::ObjectId;

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

/// Kind of inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// Seconds and nanoseconds since the epoch (may be negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    pub fn now() -> Self {
        SystemTime::now().into()
    }
}

impl From<SystemTime> for Time {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Time {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Time {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

impl From<Time> for SystemTime {
    fn from(t: Time) -> Self {
        if t.secs >= 0 {
            UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
                + Duration::from_nanos(t.nanos as u64)
        }
    }
}

/// An inode: everything `stat` shows, plus a directory's parent and a
/// symlink's target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    /// Parent directory (directories only; files may have several links).
    pub parent: Ino,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
}

impl Inode {
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32, parent: Ino) -> Self {
        let now = Time::now();
        Inode {
            kind,
            perm,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: 0,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent,
            target: None,
        }
    }
}

/// A directory entry's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirent {
    pub ino: Ino,
    pub kind: Kind,
}

/// Where a chunk's content lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkRef {
    /// In a sealed object (`len`: plaintext length).
    Object { object: ObjectId, len: u32 },
    /// Small content kept in the (sealed) record itself, zero-padded to a
    /// multiple of [`INLINE_PAD`] bytes; the first `len` bytes are the chunk.
    /// No object, no upload, no placement: tiny files cost metadata only.
    Inline { len: u32, data: Vec<u8> },
}

/// Chunks up to this many bytes are kept inline in their record.
pub const INLINE_CHUNK_MAX: usize = 4096;
/// Inline content is padded to a multiple of this (hides exact sizes).
pub const INLINE_PAD: usize = 256;

impl ChunkRef {
    /// The object holding the content, unless it is inline.
    pub fn object(&self) -> Option<ObjectId> {
        match self {
            ChunkRef::Object { object, .. } => Some(*object),
            ChunkRef::Inline { .. } => None,
        }
    }

    /// An inline reference to `content` (at most [`INLINE_CHUNK_MAX`]).
    pub fn inline(content: &[u8]) -> Self {
        let mut data = content.to_vec();
        data.resize(content.len().div_ceil(INLINE_PAD) * INLINE_PAD, 0);
        ChunkRef::Inline {
            len: content.len() as u32,
            data,
        }
    }

    /// Inline content, if this chunk is inline (None for objects).
    pub fn inline_content(&self) -> Option<Vec<u8>> {
        match self {
            ChunkRef::Inline { len, data } => {
                Some(data[..(*len as usize).min(data.len())].to_vec())
            }
            ChunkRef::Object { .. } => None,
        }
    }
}

/// Reference count of a stored object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub refs: u64,
    /// Sealed size in bytes.
    pub size: u64,
}

/// One stored fragment of an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentLoc {
    /// Fragment index (which encoding symbols it carries).
    pub index: u32,
    pub id: crate::coder::FragmentId,
    /// The holder's peer id, as bytes (the vault knows no network types).
    pub peer: Vec<u8>,
    /// Unused and empty since audits check Bao proofs against the id
    /// (placements written before kept precomputed answers here; the field
    /// stays so those records still decode).
    pub proofs: Vec<[u8; 16]>,
}

/// Where an object's fragments are: vault metadata, never published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Sealed object length (fixes the coding layout together with `k`).
    pub len: u64,
    pub k: u32,
    pub fragments: Vec<FragmentLoc>,
    /// The next fragment index never used for this object (repair takes
    /// fresh indexes so symbols never repeat).
    pub next_index: u32,
}

/// Vault-wide counters, kept in the same batches as the changes they count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_ino: Ino,
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub objects: u64,
}

pub const COUNTERS_KEY: &[u8] = b"counters";

pub fn ino_key(ino: Ino) -> [u8; 8] {
    ino.to_be_bytes()
}

pub fn chunk_key(ino: Ino, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&ino.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

pub fn prefixed_key(ino: Ino, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + rest.len());
    k.extend_from_slice(&ino.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("records serialize")
}

pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_roundtrip_including_before_epoch() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            UNIX_EPOCH - Duration::new(5, 250),
            UNIX_EPOCH - Duration::from_secs(86400),
        ] {
            assert_eq!(SystemTime::from(Time::from(t)), t);
        }
    }

    #[test]
    fn inode_roundtrip() {
        let mut i = Inode::new(Kind::Symlink, 0o777, 1, 2, ROOT_INO);
        i.target = Some(b"/x".to_vec());
        assert_eq!(decode::<Inode>(&encode(&i)).unwrap(), i);
    }
}
