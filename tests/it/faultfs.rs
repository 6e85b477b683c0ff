//! A fault-injecting passthrough FUSE filesystem that simulates power loss,
//! in the spirit of LazyFS.
//!
//! [`FaultFs::mount`] mirrors a `lower` directory at a mountpoint. Reads and
//! writes go straight through to the lower files, but the first change to a
//! file's data after its last `fsync`/`fdatasync` (write, truncate,
//! fallocate, `O_TRUNC`) records an undo log: the file's durable length and
//! the original bytes of every durable range about to be overwritten (appends
//! past the durable length cost nothing). [`FaultFs::crash`] cuts the power:
//! from then on every operation fails with `EIO`, and each file with unsynced
//! data is rolled back in `lower` to its content at its last fsync. A file
//! created through the mount and never fsynced becomes empty.
//!
//! Metadata operations (create, mkdir, unlink, rmdir, rename, link, symlink,
//! mknod, chmod/chown/utimes) pass through at once and count as durable.
//! POSIX and BSD locks are left to the kernel (no getlk/setlk/flock).
//!
//! To "reboot", drop the [`FaultFs`] (which unmounts) and mount a fresh one
//! over the same lower directory. Needs root and `/dev/fuse`.
//!
//! Limits: xattrs, lseek, copy_file_range, readdirplus, RENAME_EXCHANGE and
//! RENAME_WHITEOUT are not implemented (the kernel falls back where it can);
//! inodes are never forgotten; a file with several hard links is tracked by
//! the last path it was seen under. Pages already in the kernel's cache may
//! still be read through a crashed mount: remount before checking contents.

use std::collections::btree_map::BTreeMap;
use std::collections::hash_map::{Entry, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};
use libc::{O_ACCMODE, O_CREAT, O_DIRECT, O_EXCL, O_RDONLY, O_SYNC, O_TRUNC};
use nix::fcntl::{FallocateFlags, AT_FDCWD};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::statvfs::Statvfs;
use nix::sys::time::TimeSpec;

/// Attribute and entry cache lifetime handed to the kernel.
const TTL: Duration = Duration::from_secs(1);

/// A mounted fault-injecting passthrough filesystem; dropping it unmounts
/// (lazily if still busy). Drop it before removing the mountpoint directory.
pub struct FaultFs {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl FaultFs {
    /// Mounts a passthrough of `lower` at `mountpoint` (both existing dirs).
    pub fn mount(lower: &Path, mountpoint: &Path) -> io::Result<FaultFs> {
        let root = lower.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        let md = fs::metadata(&root)?;
        let mut st = State {
            next_ino: INodeNo::ROOT.0,
            ..State::default()
        };
        st.node(root, &md); // becomes INodeNo::ROOT
        let state = Arc::new(Mutex::new(st));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("faultfs".into()),
            MountOption::Subtype("faultfs".into()),
        ];
        let session = fuser::spawn_mount(Fs(state.clone()), &mountpoint, &config)?;
        Ok(FaultFs {
            state,
            session: Some(session),
            mountpoint,
        })
    }

    /// Power cut: from now on every operation fails with EIO; then every
    /// file written since its last fsync/fdatasync is restored in `lower` to
    /// its content at that fsync (a file created and never fsynced becomes
    /// empty; it still exists because metadata is durable). Returns the paths
    /// of the files rolled back.
    pub fn crash(&self) -> Vec<PathBuf> {
        let mut st = lock(&self.state);
        st.crashed = true;
        st.files.clear();
        st.dirs.clear();
        let dirty = std::mem::take(&mut st.dirty);
        dirty
            .iter()
            .filter_map(|(ino, undo)| {
                let n = st.nodes.get(ino)?;
                (!n.unlinked && restore(n, undo).is_ok()).then(|| n.path.clone())
            })
            .collect()
    }

    /// Number of files that currently hold unsynced data.
    pub fn dirty_files(&self) -> usize {
        lock(&self.state).dirty.len()
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Fails (and detaches the serving thread) if the mount is busy.
            let _ = session.umount_and_join();
        }
        if is_mounted(&self.mountpoint) {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Whether a FUSE filesystem is still mounted at `mountpoint`.
fn is_mounted(mountpoint: &Path) -> bool {
    let mp = mountpoint.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .any(|l| l.split(' ').nth(4) == Some(&*mp) && l.contains(" - fuse"))
    })
}

/// A lower file or directory known to the kernel under a FUSE inode number.
struct Node {
    /// Last known absolute lower path.
    path: PathBuf,
    /// Lower (st_dev, st_ino).
    key: (u64, u64),
    /// Its last link is gone: the path no longer names it.
    unlinked: bool,
}

/// An open lower file (always readable, so undo data can be read from it).
struct Handle {
    file: Arc<File>,
    ino: u64,
}

/// What a file looked like at its last fsync: its length, and the original
/// bytes of the durable ranges overwritten since (non-overlapping, by
/// offset). Bytes below `durable_len` not covered by `saved` are unchanged.
#[derive(Default)]
struct Undo {
    durable_len: u64,
    saved: BTreeMap<u64, Vec<u8>>,
}

impl Undo {
    /// Saves the current bytes of `[start, end) ∩ [0, durable_len)` that are
    /// not saved yet, before they get changed.
    fn save(&mut self, file: &File, start: u64, end: u64) -> io::Result<()> {
        let end = end.min(self.durable_len);
        if start >= end {
            return Ok(());
        }
        let mut gaps = Vec::new();
        let mut cur = start;
        let before = self.saved.range(..start).next_back();
        for (&off, buf) in before.into_iter().chain(self.saved.range(start..end)) {
            if off > cur {
                gaps.push((cur, off));
            }
            cur = cur.max(off + buf.len() as u64);
        }
        if cur < end {
            gaps.push((cur, end));
        }
        for (a, b) in gaps {
            let mut buf = vec![0; (b - a) as usize];
            let n = read_full(file, &mut buf, a)?;
            buf.truncate(n);
            if n > 0 {
                self.saved.insert(a, buf);
            }
        }
        Ok(())
    }
}

/// Rolls `node`'s lower file back to its durable content.
fn restore(node: &Node, undo: &Undo) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&node.path)?;
    if key(&file.metadata()?) != node.key {
        return Err(io::Error::other("lower file was replaced"));
    }
    for (&off, buf) in &undo.saved {
        file.write_all_at(buf, off)?;
    }
    file.set_len(undo.durable_len)?;
    file.sync_all()
}

/// `pread` until `buf` is full or end of file; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Opens a lower file for a FUSE open/create with the kernel's `flags`.
fn open_lower(path: &Path, flags: i32, create: Option<u32>) -> io::Result<File> {
    // O_SYNC includes O_DSYNC; the kernel sends FUSE fsync for them anyway.
    let stripped = O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_DIRECT | O_SYNC;
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(flags & O_ACCMODE != O_RDONLY)
        .custom_flags(flags & !stripped);
    if let Some(mode) = create {
        options.write(true).create(true).mode(mode);
        options.create_new(flags & O_EXCL != 0);
    }
    options.open(path)
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn key(md: &Metadata) -> (u64, u64) {
    (md.dev(), md.ino())
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let base = match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    };
    base + Duration::from_nanos(nsecs.unsigned_abs())
}

fn attr(ino: u64, md: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: time(md.atime(), md.atime_nsec()),
        mtime: time(md.mtime(), md.mtime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => {
            TimeSpec::from(t.duration_since(UNIX_EPOCH).unwrap_or_default())
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

type DirList = Vec<(u64, FileType, OsString)>;

#[derive(Default)]
struct State {
    crashed: bool,
    nodes: HashMap<u64, Node>,
    by_key: HashMap<(u64, u64), u64>,
    next_ino: u64,
    files: HashMap<u64, Handle>,
    dirs: HashMap<u64, DirList>,
    next_fh: u64,
    /// Undo logs of the files with unsynced data, by FUSE inode.
    dirty: HashMap<u64, Undo>,
}

impl State {
    fn node_ref(&self, ino: u64) -> io::Result<&Node> {
        let node = self.nodes.get(&ino).filter(|n| !n.unlinked);
        node.ok_or_else(|| err(libc::ENOENT))
    }

    fn path(&self, ino: u64) -> io::Result<PathBuf> {
        Ok(self.node_ref(ino)?.path.clone())
    }

    /// Opens the lower file of `ino`, checking that its path still names it
    /// (a hard link of it may have been unlinked).
    fn open(&self, ino: u64, flags: i32) -> io::Result<File> {
        let node = self.node_ref(ino)?;
        let file = open_lower(&node.path, flags, None)?;
        if key(&file.metadata()?) != node.key {
            return Err(err(libc::ESTALE));
        }
        Ok(file)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> io::Result<PathBuf> {
        Ok(self.path(parent.0)?.join(name))
    }

    fn handle(&self, fh: FileHandle) -> io::Result<(u64, Arc<File>)> {
        let h = self.files.get(&fh.0).ok_or_else(|| err(libc::EBADF))?;
        Ok((h.ino, h.file.clone()))
    }

    fn add_handle(&mut self, ino: u64, file: File) -> u64 {
        self.next_fh += 1;
        let file = Arc::new(file);
        self.files.insert(self.next_fh, Handle { file, ino });
        self.next_fh
    }

    /// The FUSE inode of the lower file `md` found at `path`.
    fn node(&mut self, path: PathBuf, md: &Metadata) -> u64 {
        if let Some(&ino) = self.by_key.get(&key(md)) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = path;
            }
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_key.insert(key(md), ino);
        let (key, unlinked) = (key(md), false);
        self.nodes.insert(
            ino,
            Node {
                path,
                key,
                unlinked,
            },
        );
        ino
    }

    fn entry(&mut self, path: PathBuf) -> io::Result<FileAttr> {
        let md = fs::symlink_metadata(&path)?;
        let ino = self.node(path, &md);
        Ok(attr(ino, &md))
    }

    /// Lower metadata of `ino`, through `fh` or any open handle if its path
    /// no longer names it (e.g. unlinked while open).
    fn stat(&self, ino: u64, fh: Option<FileHandle>) -> io::Result<FileAttr> {
        if let Some(h) = fh.and_then(|fh| self.files.get(&fh.0)) {
            return Ok(attr(ino, &h.file.metadata()?));
        }
        let node = self.nodes.get(&ino).ok_or_else(|| err(libc::ENOENT))?;
        match fs::symlink_metadata(&node.path) {
            Ok(md) if key(&md) == node.key => Ok(attr(ino, &md)),
            _ => match self.files.values().find(|h| h.ino == ino) {
                Some(h) => Ok(attr(ino, &h.file.metadata()?)),
                None => Err(err(libc::ENOENT)),
            },
        }
    }

    /// Records the undo data of `ino` before `[start, end)` of `file` changes.
    fn modify(&mut self, ino: u64, file: &File, start: u64, end: u64) -> io::Result<()> {
        if self.nodes.get(&ino).is_none_or(|n| n.unlinked) {
            return Ok(());
        }
        let undo = match self.dirty.entry(ino) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(Undo {
                durable_len: file.metadata()?.len(),
                saved: BTreeMap::new(),
            }),
        };
        undo.save(file, start, end)
    }

    /// Applies `O_TRUNC` to a freshly opened file.
    fn truncate_on_open(&mut self, ino: u64, file: &File, flags: i32) -> io::Result<()> {
        if flags & O_TRUNC != 0 && flags & O_ACCMODE != O_RDONLY {
            self.modify(ino, file, 0, u64::MAX)?;
            file.set_len(0)?;
        }
        Ok(())
    }

    /// unlink or rmdir.
    fn remove(&mut self, parent: INodeNo, name: &OsStr, dir: bool) -> io::Result<()> {
        let path = self.child(parent, name)?;
        let md = fs::symlink_metadata(&path)?;
        if dir {
            fs::remove_dir(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
        self.unlinked(&md);
        Ok(())
    }

    /// A link to `md` was removed: forget the file if it was the last one.
    fn unlinked(&mut self, md: &Metadata) {
        if md.is_dir() || md.nlink() <= 1 {
            if let Some(ino) = self.by_key.remove(&key(md)) {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.unlinked = true;
                }
                self.dirty.remove(&ino);
            }
        }
    }

    fn rename(&mut self, from: PathBuf, to: PathBuf, flags: RenameFlags) -> io::Result<()> {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(err(libc::EINVAL)); // RENAME_EXCHANGE, RENAME_WHITEOUT
        }
        let md = fs::symlink_metadata(&from)?;
        let replaced = fs::symlink_metadata(&to).ok();
        if flags.is_empty() {
            fs::rename(&from, &to)?;
        } else {
            let noreplace = nix::fcntl::RenameFlags::RENAME_NOREPLACE;
            nix::fcntl::renameat2(AT_FDCWD, &from, AT_FDCWD, &to, noreplace)?;
        }
        if let Some(old) = replaced.filter(|old| key(old) != key(&md)) {
            self.unlinked(&old);
        }
        for node in self.nodes.values_mut().filter(|n| !n.unlinked) {
            if node.key == key(&md) {
                node.path = to.clone();
            } else if let Some(rest) = node.path.strip_prefix(&from).ok().filter(|_| md.is_dir()) {
                node.path = to.join(rest);
            }
        }
        Ok(())
    }
}

/// Sends a successful result (`$ok`, with the reply as `$r` and the value as
/// `$v`) or the error.
trait Answer<T> {
    fn answer(self, r: Result<T, Errno>);
}

macro_rules! answers {
    ($($reply:ty: $t:ty = |$r:ident, $v:pat_param| $ok:expr;)*) => {$(
        impl Answer<$t> for $reply {
            fn answer(self, r: Result<$t, Errno>) {
                match r {
                    Ok($v) => {
                        let $r = self;
                        $ok
                    }
                    Err(e) => self.error(e),
                }
            }
        }
    )*};
}

answers! {
    ReplyEntry: FileAttr = |r, a| r.entry(&TTL, &a, Generation(0));
    ReplyAttr: FileAttr = |r, a| r.attr(&TTL, &a);
    ReplyEmpty: () = |r, ()| r.ok();
    ReplyData: Vec<u8> = |r, data| r.data(&data);
    ReplyOpen: u64 = |r, fh| r.opened(FileHandle(fh), FopenFlags::empty());
    ReplyWrite: u32 = |r, n| r.written(n);
    ReplyCreate: (FileAttr, u64) =
        |r, (a, fh)| r.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty());
    ReplyStatfs: Statvfs = |r, s| r.statfs(
        s.blocks(),
        s.blocks_free(),
        s.blocks_available(),
        s.files(),
        s.files_free(),
        s.block_size() as u32,
        s.name_max() as u32,
        s.fragment_size() as u32,
    );
}

/// The FUSE side; every operation holds the state lock throughout.
struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn run<T, R: Answer<T>>(&self, reply: R, f: impl FnOnce(&mut State) -> io::Result<T>) {
        let mut st = lock(&self.0);
        let r = if st.crashed {
            Err(Errno::EIO)
        } else {
            f(&mut st).map_err(Errno::from)
        };
        drop(st);
        reply.answer(r);
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.run(reply, |st| st.entry(st.child(parent, name)?));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run(reply, |st| st.stat(ino.0, fh));
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
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.run(reply, |st| {
            if let Some(size) = size {
                let file = match fh {
                    Some(fh) => st.handle(fh)?.1,
                    None => Arc::new(st.open(ino.0, libc::O_RDWR)?),
                };
                st.modify(ino.0, &file, size, u64::MAX)?;
                file.set_len(size)?;
            }
            if mode.is_some() || uid.is_some() || gid.is_some() || atime.or(mtime).is_some() {
                let path = st.path(ino.0)?;
                if let Some(mode) = mode {
                    fs::set_permissions(&path, Permissions::from_mode(mode & 0o7777))?;
                }
                if uid.is_some() || gid.is_some() {
                    std::os::unix::fs::lchown(&path, uid, gid)?;
                }
                let (a, m) = (timespec(atime), timespec(mtime)); // no-op if both None
                let nofollow = UtimensatFlags::NoFollowSymlink;
                nix::sys::stat::utimensat(AT_FDCWD, &path, &a, &m, nofollow)?;
            }
            st.stat(ino.0, fh)
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(reply, |st| {
            Ok(fs::read_link(st.path(ino.0)?)?.into_os_string().into_vec())
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.run(reply, |st| {
            let path = st.child(parent, name)?;
            let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
            let perm = mode & !umask & 0o7777;
            nix::sys::stat::mknod(&path, kind, Mode::from_bits_truncate(perm), rdev.into())?;
            fs::set_permissions(&path, Permissions::from_mode(perm))?;
            let a = st.entry(path)?;
            if kind == SFlag::S_IFREG {
                st.dirty.insert(a.ino.0, Undo::default());
            }
            Ok(a)
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.run(reply, |st| {
            let path = st.child(parent, name)?;
            let perm = mode & !umask & 0o7777;
            fs::DirBuilder::new().mode(perm).create(&path)?;
            fs::set_permissions(&path, Permissions::from_mode(perm))?;
            st.entry(path)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.run(reply, |st| st.remove(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.run(reply, |st| st.remove(parent, name, true));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.run(reply, |st| {
            let path = st.child(parent, link_name)?;
            std::os::unix::fs::symlink(target, &path)?;
            st.entry(path)
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
        self.run(reply, |st| {
            st.rename(
                st.child(parent, name)?,
                st.child(newparent, newname)?,
                flags,
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
        self.run(reply, |st| {
            let to = st.child(newparent, newname)?;
            fs::hard_link(st.path(ino.0)?, &to)?;
            st.entry(to)
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.run(reply, |st| {
            let file = st.open(ino.0, flags.0)?;
            st.truncate_on_open(ino.0, &file, flags.0)?;
            Ok(st.add_handle(ino.0, file))
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run(reply, |st| {
            let mut buf = vec![0; size as usize];
            let n = read_full(&st.handle(fh)?.1, &mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.run(reply, |st| {
            let (ino, file) = st.handle(fh)?;
            st.modify(ino, &file, offset, offset + data.len() as u64)?;
            file.write_all_at(data, offset)?;
            Ok(data.len() as u32)
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.run(reply, |_| Ok(()));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.0).files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(reply, |st| {
            let ino = st.handle(fh).map_or(ino.0, |(ino, _)| ino);
            st.dirty.remove(&ino);
            Ok(())
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.run(reply, |st| {
            let path = st.path(ino.0)?;
            let parent = match path.parent() {
                Some(p) if ino != INodeNo::ROOT => st.entry(p.to_path_buf())?.ino.0,
                _ => ino.0,
            };
            let mut list: DirList = vec![
                (ino.0, FileType::Directory, ".".into()),
                (parent, FileType::Directory, "..".into()),
            ];
            for e in fs::read_dir(&path)? {
                let e = e?;
                let Ok(md) = e.metadata() else { continue };
                let kind = FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile);
                list.push((st.node(e.path(), &md), kind, e.file_name()));
            }
            st.next_fh += 1;
            st.dirs.insert(st.next_fh, list);
            Ok(st.next_fh)
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
        let st = lock(&self.0);
        match st.dirs.get(&fh.0) {
            Some(list) if !st.crashed => {
                for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            _ if st.crashed => reply.error(Errno::EIO),
            _ => reply.error(Errno::EBADF),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.0).dirs.remove(&fh.0);
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
        self.run(reply, |_| Ok(()));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(reply, |st| {
            Ok(nix::sys::statvfs::statvfs(&st.path(INodeNo::ROOT.0)?)?)
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        self.run(reply, |st| st.stat(ino.0, None).map(drop));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.run(reply, |st| {
            let path = st.child(parent, name)?;
            let existed = fs::symlink_metadata(&path).is_ok();
            let perm = mode & !umask & 0o7777;
            let file = open_lower(&path, flags, Some(perm))?;
            let ino = st.node(path, &file.metadata()?);
            if existed {
                st.truncate_on_open(ino, &file, flags)?;
            } else {
                file.set_permissions(Permissions::from_mode(perm))?;
                st.dirty.insert(ino, Undo::default());
            }
            let a = attr(ino, &file.metadata()?);
            Ok((a, st.add_handle(ino, file)))
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.run(reply, |st| {
            let (ino, file) = st.handle(fh)?;
            // Plain allocation keeps all bytes; punch/zero/collapse/insert
            // may change any byte from `offset` on.
            let end = match mode & !libc::FALLOC_FL_KEEP_SIZE {
                0 => offset,
                _ => u64::MAX,
            };
            st.modify(ino, &file, offset, end)?;
            let flags = FallocateFlags::from_bits_truncate(mode);
            Ok(nix::fcntl::fallocate(
                &*file,
                flags,
                offset as i64,
                length as i64,
            )?)
        });
    }
}
