//! POSIX behaviour through the mount.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use crate::support::*;

#[test]
fn posix_operations() {
    let mut d = Drive::init("posix");
    d.mount();

    // create, write, read, append
    fs::write(d.p("a.txt"), b"hello").unwrap();
    let mut f = OpenOptions::new().append(true).open(d.p("a.txt")).unwrap();
    f.write_all(b" world").unwrap();
    drop(f);
    assert_eq!(fs::read(d.p("a.txt")).unwrap(), b"hello world");

    // writes at any offset, sparse files
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(d.p("sparse"))
        .unwrap();
    f.write_all_at(b"end", 10 << 20).unwrap();
    f.write_all_at(b"mid", 5 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (10 << 20) + 3);
    let mut buf = vec![1u8; 16];
    f.read_exact_at(&mut buf, 100).unwrap();
    assert_eq!(buf, vec![0u8; 16]);
    f.read_exact_at(&mut buf[..3], 5 << 20).unwrap();
    assert_eq!(&buf[..3], b"mid");
    f.sync_all().unwrap();
    drop(f);

    // truncate down and up
    let f = OpenOptions::new().write(true).open(d.p("a.txt")).unwrap();
    f.set_len(5).unwrap();
    f.set_len(8).unwrap();
    drop(f);
    assert_eq!(fs::read(d.p("a.txt")).unwrap(), b"hello\0\0\0");

    // rename over an existing file and across directories
    fs::create_dir(d.p("dir1")).unwrap();
    fs::create_dir_all(d.p("dir2/sub")).unwrap();
    fs::write(d.p("dir1/x"), b"x").unwrap();
    fs::write(d.p("dir2/y"), b"y").unwrap();
    fs::rename(d.p("dir1/x"), d.p("dir2/y")).unwrap();
    assert_eq!(fs::read(d.p("dir2/y")).unwrap(), b"x");
    assert!(!d.p("dir1/x").exists());
    fs::rename(d.p("dir2/sub"), d.p("dir1/sub")).unwrap();
    assert!(d.p("dir1/sub").is_dir());
    assert_eq!(fs::metadata(d.p("dir1")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(d.p("dir2")).unwrap().nlink(), 2);

    // mkdir / rmdir / unlink
    assert_eq!(
        fs::remove_dir(d.p("dir1")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_dir(d.p("dir1/sub")).unwrap();
    fs::remove_dir(d.p("dir1")).unwrap();
    fs::remove_file(d.p("dir2/y")).unwrap();
    assert_eq!(fs::read_dir(d.p("dir2")).unwrap().count(), 0);

    // hard links and symlinks
    fs::hard_link(d.p("a.txt"), d.p("dir2/a-link")).unwrap();
    assert_eq!(fs::metadata(d.p("a.txt")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(d.p("a.txt")).unwrap().ino(),
        fs::metadata(d.p("dir2/a-link")).unwrap().ino()
    );
    std::os::unix::fs::symlink("../a.txt", d.p("dir2/sym")).unwrap();
    assert_eq!(
        fs::read_link(d.p("dir2/sym")).unwrap().to_str().unwrap(),
        "../a.txt"
    );
    assert_eq!(fs::read(d.p("dir2/sym")).unwrap(), b"hello\0\0\0");

    // chmod, chown, utimens
    fs::set_permissions(d.p("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(d.p("a.txt")).unwrap().mode() & 0o7777, 0o600);
    std::os::unix::fs::chown(d.p("a.txt"), Some(1234), Some(4321)).unwrap();
    let m = fs::metadata(d.p("a.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 4321));
    let t = SystemTime::UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    File::options()
        .write(true)
        .open(d.p("a.txt"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(fs::metadata(d.p("a.txt")).unwrap().modified().unwrap(), t);

    // mtime moves on write; size is right while the data is still dirty
    let before = fs::metadata(d.p("dir2/a-link"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let mut f = OpenOptions::new()
        .write(true)
        .open(d.p("dir2/a-link"))
        .unwrap();
    f.seek(SeekFrom::Start(100)).unwrap();
    f.write_all(b"!").unwrap();
    assert_eq!(f.metadata().unwrap().len(), 101);
    drop(f);
    assert!(fs::metadata(d.p("a.txt")).unwrap().modified().unwrap() > before);

    // extended attributes
    xattr::set(d.p("a.txt"), "user.color", b"blue").unwrap();
    assert_eq!(
        xattr::get(d.p("a.txt"), "user.color").unwrap().unwrap(),
        b"blue"
    );
    let names: Vec<_> = xattr::list(d.p("a.txt")).unwrap().collect();
    assert_eq!(names, vec![std::ffi::OsString::from("user.color")]);
    xattr::remove(d.p("a.txt"), "user.color").unwrap();
    assert!(xattr::get(d.p("a.txt"), "user.color").unwrap().is_none());

    // statfs: df shows the space of the disk behind the vault
    let s = nix::sys::statvfs::statvfs(&d.mnt).unwrap();
    assert!(s.blocks() > 0 && s.blocks_available() > 0 && s.blocks_available() <= s.blocks());

    // ls -l sees right sizes; readdir lists everything
    let out = std::process::Command::new("ls")
        .arg("-la")
        .arg(&d.mnt)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}", (10 << 20) + 3)), "{text}");
    let mut names: Vec<String> = fs::read_dir(&d.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "dir2", "sparse"]);

    // unlink while open: the data stays readable until close
    let mut f = File::open(d.p("sparse")).unwrap();
    fs::remove_file(d.p("sparse")).unwrap();
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(10 << 20)).unwrap();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, b"end");
    drop(f);

    // names and content survive a remount
    d.remount();
    assert_eq!(fs::read(d.p("dir2/a-link")).unwrap().len(), 101);
    assert_eq!(fs::metadata(d.p("a.txt")).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(
        fs::read_link(d.p("dir2/sym")).unwrap().to_str().unwrap(),
        "../a.txt"
    );
}

/// Random writes, truncates and reads through the real mount, checked
/// against an in-memory model of the file.
#[test]
fn file_model_through_mount() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let mut d = Drive::init("model");
    d.mount();
    const C: u64 = 4 << 20;
    let op = prop_oneof![
        4 => (prop_oneof![0u64..100, 0..3 * C, C - 10..C + 10], proptest::collection::vec(any::<u8>(), 1..300_000))
            .prop_map(|(o, d)| (0u8, o, d.len(), d)),
        1 => (0u64..3 * C).prop_map(|n| (1u8, n, 0, vec![])),
        3 => (0u64..3 * C, 1usize..600_000).prop_map(|(o, n)| (2u8, o, n, vec![])),
        1 => Just((3u8, 0, 0, vec![])),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 12,
        ..Config::default()
    });
    let counter = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&proptest::collection::vec(op, 1..30), |ops| {
            let path = d.p(&format!(
                "m{}",
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut model: Vec<u8> = Vec::new();
            for (kind, off, len, data) in ops {
                match kind {
                    0 => {
                        f.write_all_at(&data, off).unwrap();
                        let end = off as usize + len;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[off as usize..end].copy_from_slice(&data);
                    }
                    1 => {
                        f.set_len(off).unwrap();
                        model.resize(off as usize, 0);
                    }
                    2 => {
                        let mut buf = vec![0u8; len];
                        let mut got = 0;
                        while got < len {
                            let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        let s = (off as usize).min(model.len());
                        let e = (off as usize + len).min(model.len());
                        prop_assert_eq!(&buf[..got], &model[s..e]);
                    }
                    _ => f.sync_all().unwrap(),
                }
                prop_assert_eq!(f.metadata().unwrap().len(), model.len() as u64);
            }
            drop(f);
            prop_assert!(fs::read(&path).unwrap() == model);
            fs::remove_file(&path).unwrap();
            Ok(())
        })
        .unwrap();
}
