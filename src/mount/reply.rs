//! Conversions between vault types and FUSE's (attributes, file types,
//! times, errno) and the replies that carry a vault result.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fuser::{
    Errno, FileAttr, FileType, Generation, INodeNo, ReplyEmpty, ReplyEntry, ReplyXattr, TimeOrNow,
};

use super::TTL;
use crate::vault::{Ino, Inode, Kind, Time, VaultError};

/// Block size reported by `stat`: large, so copy tools use large buffers.
const BLKSIZE: u32 = 128 * 1024;

pub fn errno(e: &VaultError) -> Errno {
    Errno::from_i32(e.errno())
}

pub(super) fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

pub fn attr(ino: Ino, i: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: i.atime.into(),
        mtime: i.mtime.into(),
        ctime: i.ctime.into(),
        crtime: i.crtime.into(),
        kind: file_type(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

pub(super) fn time(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::SpecificTime(t) => t.into(),
        TimeOrNow::Now => Time::now(),
    }
}

pub(super) fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

pub(super) fn reply_entry(reply: ReplyEntry, r: Result<(Ino, Inode), VaultError>) {
    match r {
        Ok((ino, inode)) => reply.entry(&TTL, &attr(ino, &inode), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

pub(super) fn reply_empty(reply: ReplyEmpty, r: Result<(), VaultError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

pub(super) fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, VaultError>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}
