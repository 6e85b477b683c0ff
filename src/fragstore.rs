//! A node's store of fragments held for others, within its donation.
//!
//! Fragments live in their own store (`DATA_DIR/node`: RocksDB index, small
//! fragments inline, large ones as files), separate from any vault: a node's
//! identity and what it stores are unrelated to the vaults on the same
//! machine. A PUT is acknowledged only after the bytes and the index are
//! synced, and only if the id matches the bytes and the header parses.
//! (Files rather than BlobDB values: a value would be written twice, to the
//! WAL and again at flush; measured, the node CPU of a sync halved.)

use std::path::Path;
use std::sync::Mutex;

use crate::coder::{FragmentId, Header};
use crate::crypto::ObjectId;
use crate::net::proto::Capacity;
use crate::store::{Batch, Cf, Store, StoreError};

const USED_KEY: &[u8] = b"used";
const COUNT_KEY: &[u8] = b"count";

/// Outcome of a PUT.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// Not stored; the reason is sent back to the peer.
    Refused(String),
}

/// Free disk this node never gives away: 2% of the filesystem, at least
/// 256 MiB and at most 4 GiB, so storing for others can never fill the disk.
pub fn safety_margin(fs_bytes: u64) -> u64 {
    (fs_bytes / 50).clamp(256 << 20, 4 << 30)
}

/// Free bytes and total size of the filesystem holding `dir`.
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = st.fragment_size() as u64;
    Some((
        st.blocks_available() as u64 * frag,
        st.blocks() as u64 * frag,
    ))
}

/// Fragments this node stores for others.
pub struct FragmentStore {
    store: Store,
    dir: std::path::PathBuf,
    donated: u64,
    /// Bytes and fragments stored; guarded so the check and the update are
    /// one step.
    used: Mutex<Usage>,
}

#[derive(Clone, Copy, Default)]
struct Usage {
    bytes: u64,
    fragments: u64,
}

impl FragmentStore {
    pub fn open(dir: &Path, donated: u64) -> Result<Self, StoreError> {
        let store = Store::open_fragments(dir)?;
        let read = |key: &[u8]| -> Result<u64, StoreError> {
            Ok(match store.get(Cf::Meta, key)? {
                Some(v) if v.len() == 8 => u64::from_be_bytes(v.try_into().expect("8 bytes")),
                _ => 0,
            })
        };
        let usage = Usage {
            bytes: read(USED_KEY)?,
            fragments: read(COUNT_KEY)?,
        };
        // A crash between writing a fragment's file and indexing it leaves
        // a file nobody counts.
        let removed = store.remove_unreferenced_files(|id| {
            matches!(store.get(Cf::Fragments, &id.0), Ok(Some(_)))
        })?;
        if removed > 0 {
            tracing::info!("removed {removed} fragment files left unindexed by a crash");
        }
        Ok(FragmentStore {
            store,
            dir: dir.to_path_buf(),
            donated,
            used: Mutex::new(usage),
        })
    }

    fn used_guard(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn capacity(&self) -> Capacity {
        let used = self.used_guard().bytes;
        let disk = disk_space(&self.dir)
            .map_or(0, |(free, size)| free.saturating_sub(safety_margin(size)));
        Capacity {
            donated: self.donated,
            used,
            available: self.donated.saturating_sub(used).min(disk),
        }
    }

    /// Stores a fragment if it is well formed and fits the donation.
    pub fn put(&self, id: &FragmentId, data: &[u8]) -> Result<PutOutcome, StoreError> {
        if FragmentId::of(data) != *id {
            return Ok(PutOutcome::Refused(
                "fragment bytes do not match their id".into(),
            ));
        }
        if let Err(e) = Header::parse(data) {
            return Ok(PutOutcome::Refused(e.to_string()));
        }
        {
            let mut used = self.used_guard();
            if self.store.get(Cf::Fragments, &id.0)?.is_some() {
                return Ok(PutOutcome::Stored);
            }
            let after = Usage {
                bytes: used.bytes + data.len() as u64,
                fragments: used.fragments + 1,
            };
            if after.bytes > self.donated {
                return Ok(PutOutcome::Refused(format!(
                    "donation full: storing {} of {} bytes donated",
                    used.bytes, self.donated
                )));
            }
            // Checked before every PUT: the disk itself may fill from elsewhere.
            if let Some((free, size)) = disk_space(&self.dir) {
                let margin = safety_margin(size);
                if free < margin + data.len() as u64 {
                    return Ok(PutOutcome::Refused(format!(
                        "disk nearly full: {free} bytes free, keeping a {margin}-byte safety margin"
                    )));
                }
            }
            let mut b = Batch::default();
            b.put_object(&self.store, &ObjectId(id.0), data)?;
            b.put(
                Cf::Fragments,
                id.0.to_vec(),
                (data.len() as u64).to_be_bytes().to_vec(),
            );
            b.put(
                Cf::Meta,
                USED_KEY.to_vec(),
                after.bytes.to_be_bytes().to_vec(),
            );
            b.put(
                Cf::Meta,
                COUNT_KEY.to_vec(),
                after.fragments.to_be_bytes().to_vec(),
            );
            self.store.write(b)?;
            *used = after;
        }
        self.store.sync()?;
        Ok(PutOutcome::Stored)
    }

    pub fn get(&self, id: &FragmentId) -> Result<Option<Vec<u8>>, StoreError> {
        if self.store.get(Cf::Fragments, &id.0)?.is_none() {
            return Ok(None);
        }
        self.store.read_object(&ObjectId(id.0))
    }

    pub fn has(&self, ids: &[FragmentId]) -> Result<Vec<bool>, StoreError> {
        ids.iter()
            .map(|id| Ok(self.store.get(Cf::Fragments, &id.0)?.is_some()))
            .collect()
    }

    /// Number of fragments held.
    pub fn count(&self) -> u64 {
        self.used_guard().fragments
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::encode;

    /// A small tmpfs, unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn the_safety_margin_keeps_the_disk_from_filling() {
        let t = Tmpfs(tempfile::tempdir().unwrap());
        nix::mount::mount(
            Some("tmpfs"),
            t.0.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=300m"),
        )
        .expect("mounting a tmpfs (tests run as root)");
        // Donates far more than the disk has: the margin must stop it.
        let fs = FragmentStore::open(t.0.path(), 10 << 30).unwrap();
        assert!(fs.capacity().available < 50 << 20);
        let mut refused = None;
        for i in 0..200u64 {
            let f = encode(&i.to_le_bytes().repeat(500_000), 1, 0..1)
                .unwrap()
                .remove(0);
            match fs.put(&f.id, &f.bytes).unwrap() {
                PutOutcome::Stored => {}
                PutOutcome::Refused(r) => {
                    refused = Some(r);
                    break;
                }
            }
        }
        let r = refused.expect("the store filled the disk");
        assert!(r.contains("disk nearly full"), "{r}");
        let (free, _) = disk_space(t.0.path()).unwrap();
        assert!(free >= 200 << 20, "only {free} bytes left free");
        drop(fs);
    }

    #[test]
    fn put_checks_id_header_and_donation() {
        let dir = tempfile::tempdir().unwrap();
        let frags = encode(&vec![5u8; 100_000], 2, 0..4).unwrap();
        let len = frags[0].bytes.len() as u64;
        let fs = FragmentStore::open(dir.path(), len * 2 + 10).unwrap();
        assert_eq!(
            fs.put(&frags[0].id, &frags[0].bytes).unwrap(),
            PutOutcome::Stored
        );
        // Idempotent.
        assert_eq!(
            fs.put(&frags[0].id, &frags[0].bytes).unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(fs.capacity().used, len);
        // Wrong id.
        assert!(matches!(
            fs.put(&frags[0].id, &frags[1].bytes).unwrap(),
            PutOutcome::Refused(_)
        ));
        // Junk with a matching id.
        let junk = vec![1u8; 64];
        assert!(matches!(
            fs.put(&FragmentId::of(&junk), &junk).unwrap(),
            PutOutcome::Refused(_)
        ));
        assert_eq!(
            fs.put(&frags[1].id, &frags[1].bytes).unwrap(),
            PutOutcome::Stored
        );
        match fs.put(&frags[2].id, &frags[2].bytes).unwrap() {
            PutOutcome::Refused(r) => assert!(r.contains("donation full"), "{r}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(fs.get(&frags[1].id).unwrap().unwrap(), frags[1].bytes);
        assert_eq!(
            fs.has(&[frags[0].id, frags[2].id]).unwrap(),
            vec![true, false]
        );
        drop(fs);
        let fs = FragmentStore::open(dir.path(), len * 2 + 10).unwrap();
        assert_eq!(fs.capacity().used, 2 * len);
        assert_eq!(fs.count(), 2);
    }
}
