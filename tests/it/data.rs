//! File content through the mount: real trees, remounts, crashes, what lands on disk.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::support::*;

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies /usr/include (thousands of real files, symlinks) in with cp -a,
/// compares, remounts, compares again.
#[test]
fn copy_real_tree_and_remount() {
    let mut d = Drive::init("tree");
    d.mount();
    let src = Path::new("/usr/include");
    sh(&format!(
        "cp -a {} {}",
        src.display(),
        d.p("include").display()
    ));
    assert_same_tree(src, &d.p("include"));
    d.remount();
    assert_same_tree(src, &d.p("include"));
    let s = d.status();
    assert!(s["files"].as_u64().unwrap() > 1000, "{s}");
    assert!(s["stored_bytes"].as_u64().unwrap() > 0);
    assert_eq!(s["pending_bytes"].as_u64().unwrap(), 0);
}

/// tar extraction and rsync into the mount, as backup users do.
#[test]
fn tar_and_rsync_into_mount() {
    let mut d = Drive::init("backup");
    d.mount();
    let src = d.tmp.path().join("src");
    fs::create_dir_all(src.join("deep/er")).unwrap();
    fs::write(src.join("deep/er/big.bin"), pattern(9 << 20, 3)).unwrap();
    fs::write(src.join("small.txt"), b"small").unwrap();
    std::os::unix::fs::symlink("small.txt", src.join("link")).unwrap();
    let tarball = d.tmp.path().join("src.tar");
    sh(&format!(
        "tar -C {} -cf {} .",
        src.display(),
        tarball.display()
    ));
    fs::create_dir(d.p("untar")).unwrap();
    sh(&format!(
        "tar -C {} -xf {}",
        d.p("untar").display(),
        tarball.display()
    ));
    assert_same_tree(&src, &d.p("untar"));
    sh(&format!(
        "rsync -a {}/ {}/",
        src.display(),
        d.p("rsynced").display()
    ));
    assert_same_tree(&src, &d.p("rsynced"));
    // rsync again after a change: only the changed file moves
    fs::write(src.join("small.txt"), b"changed").unwrap();
    sh(&format!(
        "rsync -a {}/ {}/",
        src.display(),
        d.p("rsynced").display()
    ));
    assert_same_tree(&src, &d.p("rsynced"));
}

/// What fsync acknowledged survives `kill -9` of the daemon and a remount.
#[test]
fn fsynced_data_survives_kill9() {
    let mut d = Drive::init("crash");
    d.mount();
    let big = pattern(13 << 20, 9);
    let mut f = fs::File::create(d.p("big.bin")).unwrap();
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::create_dir(d.p("docs")).unwrap();
    for i in 0..50 {
        let mut f = fs::File::create(d.p(&format!("docs/n{i}.txt"))).unwrap();
        f.write_all(format!("note {i}").as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    // an in-place change, fsynced
    let f = OpenOptions::new().write(true).open(d.p("big.bin")).unwrap();
    f.write_all_at(b"PATCHED", 5 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::File::open(d.p("docs")).unwrap().sync_all().unwrap();

    d.kill9();
    d.mount(); // cleans the dead mount left behind
    let mut expect = big.clone();
    expect[(5 << 20)..(5 << 20) + 7].copy_from_slice(b"PATCHED");
    assert!(fs::read(d.p("big.bin")).unwrap() == expect);
    for i in 0..50 {
        assert_eq!(
            fs::read_to_string(d.p(&format!("docs/n{i}.txt"))).unwrap(),
            format!("note {i}")
        );
    }
}

/// Nothing in the data dir is plaintext: neither content nor names.
#[test]
fn data_dir_holds_no_plaintext() {
    let mut d = Drive::init("secret");
    d.mount();
    let marker = "ZEBRA-MARKER-7781";
    fs::create_dir(d.p(&format!("dir-{marker}"))).unwrap();
    let body = format!("{marker} ").repeat(20_000);
    fs::write(d.p(&format!("dir-{marker}/file-{marker}.txt")), &body).unwrap();
    fs::write(d.p("small"), marker).unwrap();
    xattr::set(d.p("small"), format!("user.{marker}"), marker.as_bytes()).unwrap();
    d.sync();
    d.umount();
    let out = Command::new("grep")
        .arg("-r")
        .arg("-l")
        .arg("-a")
        .arg(marker)
        .arg(&d.data)
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "plaintext found in: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    d.mount();
    assert_eq!(
        fs::read_to_string(d.p(&format!("dir-{marker}/file-{marker}.txt"))).unwrap(),
        body
    );
}

/// A several-GiB sparse file and a large sequential file behave.
#[test]
fn large_files() {
    let mut d = Drive::init("large");
    d.mount();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(d.p("huge"))
        .unwrap();
    let offsets = [0u64, 3 << 30, (5 << 30) - 7];
    for (i, o) in offsets.iter().enumerate() {
        f.write_all_at(format!("piece{i}").as_bytes(), *o).unwrap();
    }
    f.sync_all().unwrap();
    assert_eq!(f.metadata().unwrap().len(), (5 << 30) - 1);
    drop(f);
    let data = pattern(300 << 20, 5);
    fs::write(d.p("seq"), &data).unwrap();
    d.remount();
    let f = fs::File::open(d.p("huge")).unwrap();
    for (i, o) in offsets.iter().enumerate() {
        let mut buf = [0u8; 6];
        f.read_exact_at(&mut buf, *o).unwrap();
        assert_eq!(&buf, format!("piece{i}").as_bytes());
    }
    let mut hole = vec![1u8; 4096];
    f.read_exact_at(&mut hole, 1 << 30).unwrap();
    assert!(hole.iter().all(|b| *b == 0));
    assert!(fs::read(d.p("seq")).unwrap() == data);
    // holes are not stored: 300 MiB of data, not 5 GiB
    let stored = d.status()["stored_bytes"].as_u64().unwrap();
    assert!(stored < 320 << 20, "stored {stored}");
}

/// A corrupted object yields EIO on read (and a log line naming it), not a
/// crash or wrong data.
#[test]
fn corrupt_object_gives_eio() {
    let mut d = Drive::init("corrupt");
    d.mount();
    fs::write(d.p("f"), pattern(6 << 20, 1)).unwrap();
    d.sync();
    d.umount();
    let mut corrupted = 0;
    for shard in fs::read_dir(d.data.join("objects")).unwrap() {
        for obj in fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = obj.unwrap().path();
            let mut b = fs::read(&p).unwrap();
            b[4096] ^= 1;
            fs::write(&p, b).unwrap();
            corrupted += 1;
        }
    }
    assert!(corrupted >= 1);
    d.mount();
    let err = fs::read(d.p("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(d.log().contains("corrupt object"), "log: {}", d.log());
    // the daemon is still serving
    fs::write(d.p("g"), b"fine").unwrap();
    assert_eq!(fs::read(d.p("g")).unwrap(), b"fine");
}
