//! Status: what `drizzle status` and `statfs` show about the vault. The
//! inode table is decrypted without the vault lock.

use super::*;

impl Vault {
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
        s.cache_bytes = self.loader().cache.bytes();
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
