//! The FUSE adapter: turns kernel requests into calls on [`Vault`].
//!
//! File-content callbacks (read, write, fsync, truncate, fallocate) copy
//! their arguments, move the reply into a closure and run it on the content
//! pool: threads of their own, apart from the runtime's blocking pool that
//! serves the network, so a FUSE thread never waits for disk IO or
//! backpressure. When a content operation needs an object from peers, the
//! vault starts the fetch and says so ([`VaultError::Wait`]); the wait is a
//! task on the runtime, and the operation runs again on the pool when the
//! object is there. No thread waits for the network, so one file's slow
//! holders never hold up another file. Metadata callbacks run inline: they
//! only touch the local RocksDB and memory, and a thread hop costs more
//! than they do. The single mapping from [`VaultError`] to an errno lives
//! in [`errno`].
//!
//! Architecture invariant: no storage, crypto or network types here; the
//! vault is the only thing this module talks to.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

mod pool;
mod reply;

use pool::{ContentPool, Request as ContentRequest};
pub use reply::{attr, errno};
use reply::{file_type, name_bytes, reply_empty, reply_entry, reply_xattr, time};

use crate::vault::{DirEntry, Inode, Kind, Loaded, RenameMode, SetAttr, Time, Vault, VaultError};

const TTL: Duration = Duration::from_secs(1);
/// Threads running content requests. They wait on local disk, sealing
/// and backpressure only, never on the network.
const CONTENT_THREADS: usize = 16;
/// Content requests queued for those threads before a FUSE thread waits to
/// queue more (backpressure to the kernel).
const CONTENT_QUEUE: usize = 1024;

/// The mounted filesystem.
pub struct DrizzleFs {
    vault: Arc<Vault>,
    rt: tokio::runtime::Handle,
    /// The data dir, for `statfs` (the space that backs the vault).
    data_dir: PathBuf,
    dirs: Arc<Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>>,
    next_fh: AtomicU64,
    pool: ContentPool,
}

impl DrizzleFs {
    pub fn new(vault: Arc<Vault>, rt: tokio::runtime::Handle, data_dir: &Path) -> Self {
        DrizzleFs {
            vault,
            rt,
            data_dir: data_dir.to_path_buf(),
            dirs: Default::default(),
            next_fh: AtomicU64::new(1),
            pool: ContentPool::new(CONTENT_THREADS, CONTENT_QUEUE),
        }
    }

    /// Runs a file-content operation that never needs the network (fsync,
    /// fallocate: these may wait on disk or sealing) on the content pool.
    fn run(&self, f: impl FnOnce(&Vault) + Send + 'static) {
        let vault = self.vault.clone();
        self.pool.submit(move || f(&vault));
    }

    /// Runs a file-content operation that may need objects from peers on
    /// the content pool, waiting for them off the pool (see `pool.rs`).
    fn content<T: Send + 'static>(
        &self,
        op: impl Fn(&Vault, &mut Loaded) -> Result<T, VaultError> + Send + Sync + 'static,
        reply: impl FnOnce(Result<T, VaultError>) + Send + 'static,
    ) {
        ContentRequest {
            vault: self.vault.clone(),
            pool: self.pool.clone(),
            rt: self.rt.clone(),
            op: Box::new(op),
            reply: Box::new(reply),
        }
        .start();
    }

    /// Runs a metadata operation on the FUSE thread itself. These only touch
    /// the local RocksDB and in-memory state and finish in microseconds; a
    /// hop to another thread would cost more than the work (measured: ~0.1 ms
    /// per request, most of a small file's cost).
    fn meta(&self, f: impl FnOnce(&Vault)) {
        f(&self.vault)
    }
}

impl Filesystem for DrizzleFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_bytes(name);
        self.meta(move |v| reply_entry(reply, v.lookup(parent.0, &name)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.meta(move |v| match v.getattr(ino.0) {
            Ok(i) => reply.attr(&TTL, &attr(ino.0, &i)),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
            ctime: ctime.map(Time::from),
        };
        let done = move |r: Result<Inode, VaultError>| match r {
            Ok(i) => reply.attr(&TTL, &attr(ino.0, &i)),
            Err(e) => reply.error(errno(&e)),
        };
        // A size change may load and reseal a chunk: off the FUSE thread.
        if size.is_some() {
            self.content(
                move |v, loaded| v.setattr_with(ino.0, set.clone(), loaded),
                done,
            )
        } else {
            self.meta(|v| done(v.setattr(ino.0, set)))
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.meta(move |v| match v.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return reply.error(Errno::EINVAL),
        };
        let (name, uid, gid) = (name_bytes(name), req.uid(), req.gid());
        self.meta(move |v| {
            reply_entry(
                reply,
                v.mknod(parent.0, &name, kind, mode as u16, uid, gid, rdev, None),
            );
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (name, uid, gid) = (name_bytes(name), req.uid(), req.gid());
        self.meta(move |v| {
            reply_entry(
                reply,
                v.mknod(parent.0, &name, Kind::Dir, mode as u16, uid, gid, 0, None),
            );
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.meta(move |v| reply_empty(reply, v.unlink(parent.0, &name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.meta(move |v| reply_empty(reply, v.rmdir(parent.0, &name)));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, uid, gid) = (name_bytes(link_name), req.uid(), req.gid());
        let target = target.as_os_str().as_bytes().to_vec();
        self.meta(move |v| {
            reply_entry(
                reply,
                v.mknod(
                    parent.0,
                    &name,
                    Kind::Symlink,
                    0o777,
                    uid,
                    gid,
                    0,
                    Some(&target),
                ),
            );
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(Errno::EINVAL);
        };
        let (name, newname) = (name_bytes(name), name_bytes(newname));
        self.meta(move |v| {
            reply_empty(
                reply,
                v.rename(parent.0, &name, newparent.0, &newname, mode),
            )
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = name_bytes(newname);
        self.meta(move |v| {
            reply_entry(
                reply,
                v.link(ino.0, newparent.0, &newname).map(|i| (ino.0, i)),
            )
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.meta(move |v| match v.open_file(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.content(
            move |v, loaded| v.read_with(ino.0, offset, size as usize, loaded),
            move |r| match r {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.content(
            move |v, loaded| v.write_with(ino.0, offset, &data, loaded),
            move |r| match r {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.meta(move |v| {
            v.flush(ino.0);
            reply.ok();
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.meta(move |v| reply_empty(reply, v.release(ino.0)));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |v| reply_empty(reply, v.fsync(ino.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let dirs = self.dirs.clone();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.meta(move |v| match v.readdir(ino.0) {
            Ok(list) => {
                dirs.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, Arc::new(list));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let list = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        let Some(list) = list else {
            return reply.error(Errno::EBADF);
        };
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(e.ino),
                (i + 1) as u64,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are committed at once; make them durable.
        self.run(move |v| reply_empty(reply, v.sync_metadata()));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let data_dir = self.data_dir.clone();
        self.meta(move |v| match nix::sys::statvfs::statvfs(&data_dir) {
            Ok(s) => {
                // `df` shows the vault's allowance, capped by the local disk
                // (which holds what is not yet on peers).
                let files = v.inode_count();
                let frag = s.fragment_size().max(1);
                let (used, allowed) = v.space();
                let disk_free = s.blocks_available() * frag;
                let total = allowed.min(s.blocks() * frag);
                let free = allowed.saturating_sub(used).min(disk_free);
                reply.statfs(
                    total / frag,
                    free / frag,
                    free / frag,
                    files + s.files_available(),
                    s.files_available(),
                    frag as u32,
                    255,
                    frag as u32,
                )
            }
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            return reply.error(Errno::EINVAL);
        }
        let (name, value) = (name_bytes(name), value.to_vec());
        let create = flags & libc::XATTR_CREATE != 0;
        let replace = flags & libc::XATTR_REPLACE != 0;
        self.meta(move |v| reply_empty(reply, v.setxattr(ino.0, &name, &value, create, replace)));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name_bytes(name);
        self.meta(move |v| reply_xattr(reply, size, v.getxattr(ino.0, &name)));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.meta(move |v| reply_xattr(reply, size, v.listxattr(ino.0)));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.meta(move |v| reply_empty(reply, v.removexattr(ino.0, &name)));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, uid, gid) = (name_bytes(name), req.uid(), req.gid());
        self.meta(move |v| {
            let r = v
                .mknod(parent.0, &name, Kind::File, mode as u16, uid, gid, 0, None)
                .and_then(|(ino, _)| Ok((ino, v.open_file(ino)?)));
            match r {
                Ok((ino, inode)) => reply.created(
                    &TTL,
                    &attr(ino, &inode),
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        self.run(move |v| reply_empty(reply, v.allocate(ino.0, offset.saturating_add(length))));
    }
}
