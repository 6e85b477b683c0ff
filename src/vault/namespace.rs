//! The namespace: lookup, create, link, unlink, rename, directory
//! listings, attributes and extended attributes. Each change is one
//! atomic batch under the vault lock; a deleted large file's content is
//! freed by `free.rs`.

use super::*;

impl Vault {
    /// The inode as `stat` should see it.
    pub fn getattr(&self, ino: Ino) -> Result<Inode> {
        let inner = self.lock();
        self.inode(&inner, ino)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Inode)> {
        let (_, d) = self.dirent(parent, name)?.ok_or(VaultError::NotFound)?;
        let inner = self.lock();
        Ok((d.ino, self.inode(&inner, d.ino)?))
    }

    /// Creates a file, directory, symlink or special file.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> Result<(Ino, Inode)> {
        let key = self.name_key(parent, name)?;
        let mut inner = self.lock();
        let mut pinode = self.dir_inode(&inner, parent)?;
        if self.store.get(Cf::Dirents, &key)?.is_some() {
            return Err(VaultError::Exists);
        }
        let ino = inner.counters.next_ino;
        inner.counters.next_ino += 1;
        let mut inode = Inode::new(kind, perm & 0o7777, uid, gid, parent);
        inode.rdev = rdev;
        if kind == Kind::Dir {
            inode.size = 4096;
            pinode.nlink += 1;
        }
        if let Some(t) = target {
            inode.size = t.len() as u64;
            inode.target = Some(t.to_vec());
        }
        // setgid directories pass their group on.
        if pinode.perm & 0o2000 != 0 {
            inode.gid = pinode.gid;
            if kind == Kind::Dir {
                inode.perm |= 0o2000;
            }
        }
        pinode.mtime = inode.ctime;
        pinode.ctime = inode.ctime;
        let mut batch = Txn::default();
        self.put_record(&mut batch, Cf::Dirents, &key, &Dirent { ino, kind });
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.put_inode(&mut inner, &mut batch, parent, &pinode);
        self.commit(&mut inner, batch)?;
        Ok((ino, inode))
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.getattr(ino)?;
        inode.target.ok_or(VaultError::Invalid("not a symlink"))
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Inode> {
        let key = self.name_key(newparent, newname)?;
        let mut inner = self.lock();
        let mut pinode = self.dir_inode(&inner, newparent)?;
        let mut inode = self.inode(&inner, ino)?;
        if inode.kind == Kind::Dir {
            return Err(VaultError::Invalid(
                "hard links to directories are not allowed",
            ));
        }
        if self.store.get(Cf::Dirents, &key)?.is_some() {
            return Err(VaultError::Exists);
        }
        let now = Time::now();
        inode.nlink += 1;
        inode.ctime = now;
        pinode.mtime = now;
        pinode.ctime = now;
        let mut batch = Txn::default();
        self.put_record(
            &mut batch,
            Cf::Dirents,
            &key,
            &Dirent {
                ino,
                kind: inode.kind,
            },
        );
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.put_inode(&mut inner, &mut batch, newparent, &pinode);
        if inode.nlink == 1 {
            // It was an open orphan and got a name again.
            batch.delete(Cf::Orphans, ino_key(ino).to_vec());
        }
        self.commit(&mut inner, batch)?;
        Ok(inode)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove_entry(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove_entry(parent, name, true)
    }

    pub(super) fn remove_entry(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        let mut inner = self.lock();
        let (key, d) = self.dirent(parent, name)?.ok_or(VaultError::NotFound)?;
        let mut pinode = self.dir_inode(&inner, parent)?;
        match (dir, d.kind == Kind::Dir) {
            (true, false) => return Err(VaultError::NotDir),
            (false, true) => return Err(VaultError::IsDir),
            _ => {}
        }
        if dir && !self.dir_is_empty(d.ino)? {
            return Err(VaultError::NotEmpty);
        }
        let now = Time::now();
        pinode.mtime = now;
        pinode.ctime = now;
        if dir {
            pinode.nlink = pinode.nlink.saturating_sub(1);
        }
        let mut batch = Txn::default();
        batch.delete(Cf::Dirents, key);
        self.put_inode(&mut inner, &mut batch, parent, &pinode);
        self.drop_link(&mut inner, &mut batch, d.ino)?;
        self.commit(&mut inner, batch)
    }

    /// Removes one name of `ino`; frees it when no name and no opener is left.
    pub(super) fn drop_link(&self, inner: &mut Inner, batch: &mut Txn, ino: Ino) -> Result<()> {
        let mut inode = self.inode(inner, ino)?;
        inode.ctime = Time::now();
        inode.nlink = if inode.kind == Kind::Dir {
            0
        } else {
            inode.nlink.saturating_sub(1)
        };
        if inode.nlink > 0 {
            self.put_inode(inner, batch, ino, &inode);
        } else if inner.files.get(&ino).is_some_and(|f| f.opens > 0) {
            self.put_inode(inner, batch, ino, &inode);
            batch.put(Cf::Orphans, ino_key(ino).to_vec(), Vec::new());
        } else {
            self.free_inode(inner, batch, ino)?;
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        let dst_key = self.name_key(newparent, newname)?;
        let mut inner = self.lock();
        let (src_key, src) = self.dirent(parent, name)?.ok_or(VaultError::NotFound)?;
        let dst: Option<Dirent> = self.get_record(Cf::Dirents, &dst_key, "directory entry")?;
        self.dir_inode(&inner, newparent)?;
        if parent == newparent && name == newname {
            return Ok(());
        }
        if mode == RenameMode::NoReplace && dst.is_some() {
            return Err(VaultError::Exists);
        }
        if src.kind == Kind::Dir && self.is_ancestor(&inner, src.ino, newparent)? {
            return Err(VaultError::Invalid("cannot move a directory into itself"));
        }
        let now = Time::now();
        let mut batch = Txn::default();
        if mode == RenameMode::Exchange {
            let dst = dst.ok_or(VaultError::NotFound)?;
            if dst.kind == Kind::Dir && self.is_ancestor(&inner, dst.ino, parent)? {
                return Err(VaultError::Invalid("cannot move a directory into itself"));
            }
            self.put_record(&mut batch, Cf::Dirents, &src_key, &dst);
            self.put_record(&mut batch, Cf::Dirents, &dst_key, &src);
            self.reparent(&mut inner, &mut batch, src, parent, newparent, now)?;
            self.reparent(&mut inner, &mut batch, dst, newparent, parent, now)?;
            return self.commit(&mut inner, batch);
        }
        if let Some(dst) = dst {
            if dst.ino == src.ino {
                return Ok(()); // two names of one inode: POSIX says do nothing
            }
            match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                (false, true) => return Err(VaultError::IsDir),
                (true, false) => return Err(VaultError::NotDir),
                (true, true) if !self.dir_is_empty(dst.ino)? => return Err(VaultError::NotEmpty),
                _ => {}
            }
            if dst.kind == Kind::Dir {
                let mut np = self.inode(&inner, newparent)?;
                np.nlink = np.nlink.saturating_sub(1);
                self.put_inode(&mut inner, &mut batch, newparent, &np);
            }
            self.drop_link(&mut inner, &mut batch, dst.ino)?;
        }
        batch.delete(Cf::Dirents, src_key);
        self.put_record(&mut batch, Cf::Dirents, &dst_key, &src);
        self.reparent(&mut inner, &mut batch, src, parent, newparent, now)?;
        self.commit(&mut inner, batch)
    }

    /// Updates times, a moved directory's parent and the parents' link counts.
    pub(super) fn reparent(
        &self,
        inner: &mut Inner,
        batch: &mut Txn,
        d: Dirent,
        from: Ino,
        to: Ino,
        now: Time,
    ) -> Result<()> {
        let mut inode = self.inode(inner, d.ino)?;
        inode.ctime = now;
        if d.kind == Kind::Dir {
            inode.parent = to;
        }
        self.put_inode(inner, batch, d.ino, &inode);
        for (p, delta) in [(from, -1i64), (to, 1)] {
            let mut pi = self.inode(inner, p)?;
            pi.mtime = now;
            pi.ctime = now;
            if d.kind == Kind::Dir && from != to {
                pi.nlink = (pi.nlink as i64 + delta).max(1) as u32;
            }
            self.put_inode(inner, batch, p, &pi);
        }
        Ok(())
    }

    /// True if `dir` is `ino` or lies below it.
    pub(super) fn is_ancestor(&self, inner: &Inner, ino: Ino, mut dir: Ino) -> Result<bool> {
        for _ in 0..4096 {
            if dir == ino {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.inode(inner, dir)?.parent;
        }
        Err(corrupt("directory tree", "parent chain too deep or cyclic"))
    }

    /// Lists a directory, `.` and `..` first.
    pub fn readdir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let dir = {
            let inner = self.lock();
            self.dir_inode(&inner, ino)?
        };
        let mut out = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: b".".to_vec(),
            },
            DirEntry {
                ino: dir.parent,
                kind: Kind::Dir,
                name: b"..".to_vec(),
            },
        ];
        for (k, v) in self.store.scan(Cf::Dirents, &ino_key(ino), usize::MAX)? {
            let d: Dirent = decode(&open_record(&self.keys, Cf::Dirents, &k, &v)?)
                .map_err(|e| corrupt("directory entry", e))?;
            let name = self
                .keys
                .open_name(ino, &k[8..])
                .map_err(|e| corrupt(format!("name in directory {ino}"), e))?;
            out.push(DirEntry {
                ino: d.ino,
                kind: d.kind,
                name,
            });
        }
        Ok(out)
    }

    /// Changes attributes, blocking while a truncate loads a chunk from peers.
    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Inode> {
        self.blocking(|loaded| self.setattr_with(ino, set.clone(), loaded))
    }

    /// Changes attributes; fails with [`VaultError::Wait`] (having changed
    /// nothing) while a truncate needs a chunk from peers.
    pub fn setattr_with(&self, ino: Ino, set: SetAttr, loaded: &mut Loaded) -> Result<Inode> {
        if let Some(size) = set.size {
            self.truncate(ino, size, loaded)?;
        }
        let mut inner = self.lock();
        let mut inode = self.inode(&inner, ino)?;
        let now = Time::now();
        if let Some(mode) = set.mode {
            inode.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            inode.uid = uid;
        }
        if let Some(gid) = set.gid {
            inode.gid = gid;
        }
        if (set.uid.is_some() || set.gid.is_some()) && inode.kind != Kind::Dir {
            // chown clears set-id bits
            inode.perm &= !0o6000;
        }
        if let Some(t) = set.atime {
            inode.atime = t;
        }
        if let Some(t) = set.mtime {
            inode.mtime = t;
        }
        inode.ctime = set.ctime.unwrap_or(now);
        let mut batch = Txn::default();
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.commit(&mut inner, batch)?;
        Ok(inode)
    }

    // ---- extended attributes ---------------------------------------------

    pub(super) fn xattr_key(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if name.is_empty() {
            return Err(VaultError::Invalid("empty attribute name"));
        }
        if name.len() > 255 {
            return Err(VaultError::Range);
        }
        let sealed = self
            .keys
            .seal_name(ino, name)
            .map_err(|_| VaultError::Range)?;
        Ok(prefixed_key(ino, &sealed))
    }

    /// `create`: fail if present; `replace`: fail if absent.
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()> {
        if value.len() > 65536 {
            return Err(VaultError::Range);
        }
        let key = self.xattr_key(ino, name)?;
        let mut inner = self.lock();
        let mut inode = self.inode(&inner, ino)?;
        let exists = self.store.get(Cf::Xattrs, &key)?.is_some();
        if create && exists {
            return Err(VaultError::Exists);
        }
        if replace && !exists {
            return Err(VaultError::NoAttr);
        }
        let mut batch = Txn::default();
        batch.put(
            Cf::Xattrs,
            key.clone(),
            self.keys.seal_meta(&record_ad(Cf::Xattrs, &key), value),
        );
        inode.ctime = Time::now();
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.commit(&mut inner, batch)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let key = self.xattr_key(ino, name)?;
        {
            let inner = self.lock();
            self.inode(&inner, ino)?;
        }
        let v = self
            .store
            .get(Cf::Xattrs, &key)?
            .ok_or(VaultError::NoAttr)?;
        open_record(&self.keys, Cf::Xattrs, &key, &v)
    }

    /// Attribute names, each followed by a NUL byte.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        {
            let inner = self.lock();
            self.inode(&inner, ino)?;
        }
        let mut out = Vec::new();
        for (k, _) in self.store.scan(Cf::Xattrs, &ino_key(ino), usize::MAX)? {
            let name = self
                .keys
                .open_name(ino, &k[8..])
                .map_err(|e| corrupt("attribute name", e))?;
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let key = self.xattr_key(ino, name)?;
        let mut inner = self.lock();
        let mut inode = self.inode(&inner, ino)?;
        if self.store.get(Cf::Xattrs, &key)?.is_none() {
            return Err(VaultError::NoAttr);
        }
        let mut batch = Txn::default();
        batch.delete(Cf::Xattrs, key);
        inode.ctime = Time::now();
        self.put_inode(&mut inner, &mut batch, ino, &inode);
        self.commit(&mut inner, batch)
    }
}
