//! The ways a drive loses data or stops working in ordinary use, each
//! reproduced with real processes, FUSE mounts and nodes on 127.0.0.1:
//! power cuts, a read right after a restart, peers that appear late, edits
//! of data that is only on peers, a laptop mounted now and then, a remount
//! right after an unmount, and a fresh clone's test command. Timing-sensitive
//! ones run beside a CPU burner.

use std::time::{Duration, Instant};

use crate::faultfs::FaultFs;
use crate::network::{peer_args, sync_ok};
use crate::support::{pattern, wait_for, CpuBurner, Drive, Node};

/// Files of 1-3 MiB (objects on peers, not inline metadata).
fn write_files(d: &Drive, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let name = format!("f{i}.bin");
            let data = pattern((1 << 20) + i * 700_001, i as u64 + 40);
            std::fs::write(d.p(&name), &data).unwrap();
            (name, data)
        })
        .collect()
}

fn check_files(d: &Drive, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        match std::fs::read(d.p(name)) {
            Ok(got) => assert!(got == *data, "{name} reads back wrong"),
            Err(e) => panic!("reading {name}: {e}\n{}", d.log()),
        }
    }
}

/// Power loss under the vault's data dir (a fault-injecting FUSE layer that
/// drops every write not fsynced): files written and fsynced, then
/// overwritten in part without fsync, read back after the cut with each
/// block old or new, never an error. Several rounds on one data dir.
#[test]
fn power_cut_keeps_every_fsynced_file_readable() {
    const FILES: usize = 12;
    const BLOCK: usize = 64 << 10;
    let tmp = tempfile::Builder::new()
        .prefix("drizzle-powercut-")
        .tempdir()
        .unwrap();
    let (lower, disk) = (tmp.path().join("lower"), tmp.path().join("disk"));
    std::fs::create_dir_all(&lower).unwrap();
    std::fs::create_dir_all(&disk).unwrap();
    let mut fs = Some(FaultFs::mount(&lower, &disk).unwrap());
    let mut d = Drive::blank_with_data(disk.join("data"));
    // No timed sync between the seals and the cut: every round must find
    // the overwrites' records unsynced (the fix may not lean on timing).
    d.mount_args
        .extend(["--release-sync-secs", "3600"].map(String::from));
    let out = d.drizzle(&["init", "--vault", "powercut", "--kdf-memory", "64M"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.mount();
    // Old content of every file, fsynced; then one block in each rewritten.
    let old: Vec<Vec<u8>> = (0..FILES).map(|i| pattern(1 << 20, i as u64)).collect();
    for (i, data) in old.iter().enumerate() {
        let mut f = std::fs::File::create(d.p(&format!("f{i}"))).unwrap();
        std::io::Write::write_all(&mut f, data).unwrap();
        f.sync_all().unwrap();
    }
    let mut kept = old.clone();
    for round in 0..3u64 {
        let new: Vec<Vec<u8>> = (0..FILES)
            .map(|i| pattern(BLOCK, 1000 * (round + 1) + i as u64))
            .collect();
        let at = BLOCK * (1 + round as usize * 3);
        for (i, b) in new.iter().enumerate() {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(d.p(&format!("f{i}")))
                .unwrap();
            f.write_all_at(b, at as u64).unwrap();
        }
        // The seals commit (not synced); then the power goes.
        wait_for(
            "the overwrites to be sealed",
            Duration::from_secs(30),
            || d.status()["pending_bytes"] == 0,
        );
        assert!(
            fs.as_ref().unwrap().dirty_files() > 0,
            "nothing unsynced to lose"
        );
        let dropped = fs.as_ref().unwrap().crash();
        d.kill9();
        let _ = nix::mount::umount2(d.mnt.as_path(), nix::mount::MntFlags::MNT_DETACH);
        drop(fs.take());
        // The overwrites' records were in the RocksDB log (NNNNNN.log), not
        // yet synced: the cut took them back (else this round tests nothing).
        let wal = |p: &std::path::PathBuf| {
            p.extension().is_some_and(|e| e == "log")
                && p.parent().is_some_and(|d| d.ends_with("data/db"))
        };
        assert!(
            dropped.iter().any(wal),
            "round {round}: the vault's WAL had nothing unsynced: {dropped:?}"
        );
        fs = Some(FaultFs::mount(&lower, &disk).unwrap());
        d.mount();
        for (i, k) in kept.iter_mut().enumerate() {
            let got = match std::fs::read(d.p(&format!("f{i}"))) {
                Ok(g) => g,
                Err(e) => panic!(
                    "round {round}: f{i} unreadable after the cut: {e}
{}",
                    d.log()
                ),
            };
            assert_eq!(got.len(), k.len(), "round {round}: f{i} changed size");
            for (b, (g, o)) in got.chunks(BLOCK).zip(k.chunks(BLOCK)).enumerate() {
                let fresh = b * BLOCK == at && g == new[i].as_slice();
                assert!(
                    g == o || fresh,
                    "round {round}: block {b} of f{i} is neither old nor new"
                );
            }
            *k = got;
        }
        // What survived is the new baseline: make it durable.
        d.sync();
        for i in 0..FILES {
            std::fs::File::open(d.p(&format!("f{i}")))
                .unwrap()
                .sync_all()
                .unwrap();
        }
    }
    d.umount();
    drop(fs);
}

/// After a restart only one `--peer` is given and the holders' addresses
/// are not known yet: a read at once must still succeed (address book, a
/// DHT lookup, a bounded wait), not fail with EIO.
#[test]
fn a_read_right_after_a_restart_reaches_the_holders() {
    let nodes = Node::several(6);
    let mut d = Drive::init_with("reboot", &["--k", "3", "--n", "6"]);
    peer_args(&mut d, &nodes, None);
    d.mount();
    let files = write_files(&d, 3);
    sync_ok(&d);
    d.umount();
    let _busy = CpuBurner::start();

    // Reboot: one bootstrap peer, nothing cached locally, read at once.
    peer_args(&mut d, &nodes[..1], Some("0"));
    d.mount();
    check_files(&d, &files);
    let st = d.status();
    assert!(st["known_peers"].as_u64().unwrap() >= 6, "{st}");
    d.umount();

    // Without the address book (a first start elsewhere, or a lost file):
    // the holders are found through the DHT by their peer ids.
    std::fs::remove_file(d.data.join("node/peers.json")).unwrap();
    d.mount();
    check_files(&d, &files);
    d.umount();
}

/// A vault that starts writing while only two peers are up places several
/// fragments per peer; when more peers appear later (not given to the
/// vault), `sync` finds them, spreads the crowded objects and succeeds.
#[test]
fn crowded_objects_spread_onto_peers_that_appear_later() {
    let first = Node::several(2);
    let mut d = Drive::init_with("late", &["--k", "2", "--n", "4"]);
    peer_args(&mut d, &first[..1], None);
    d.mount();
    let files = write_files(&d, 4);
    let out = d.sync_network();
    assert!(
        !out.status.success(),
        "sync with 2 peers for n = 4 succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only 2 storage peers are connected"),
        "untrue message: {err}"
    );
    let st = d.status();
    assert!(st["crowded"].as_u64().unwrap() >= 4, "{st}");
    let human = String::from_utf8_lossy(&d.drizzle(&["status"]).stdout).into_owned();
    for want in ["objects crowded", "known but not connected"] {
        assert!(human.contains(want), "status lacks {want:?}:\n{human}");
    }

    // Two more nodes start, bootstrapping from the first; the vault is
    // not told about them.
    let _busy = CpuBurner::start();
    let late: Vec<Node> = (0..2)
        .map(|_| Node::start("1G", &[&first[0].addr]))
        .collect();
    sync_ok(&d);
    let st = d.status();
    assert_eq!(st["crowded"], 0, "{st}");
    assert_eq!(st["degraded"], 0, "{st}");
    assert_eq!(st["healthy"], st["objects"], "{st}");
    for n in &late {
        assert!(n.status()["fragments_held"].as_u64().unwrap() > 0);
    }
    check_files(&d, &files);
    d.umount();
}

/// Appending to and overwriting in place a file whose chunks are only on
/// peers (a vault just recovered on a new machine, default cache; then
/// with `--cache 0`) completes, reads back exactly, and other files stay
/// usable meanwhile.
#[test]
fn editing_a_file_that_lives_only_on_peers() {
    let nodes = Node::several(5);
    let mut d = Drive::init_with("online-only", &["--k", "2", "--n", "4"]);
    peer_args(&mut d, &nodes, None);
    d.mount();
    let mut big = pattern(10 << 20, 9);
    std::fs::write(d.p("big"), &big).unwrap();
    std::fs::write(d.p("other"), b"another file\n").unwrap();
    sync_ok(&d);
    d.umount();
    std::fs::remove_dir_all(&d.data).unwrap();

    let mut r = Drive::blank();
    peer_args(&mut r, &nodes, None);
    r.mount_args
        .extend(["--vault", "online-only", "--kdf-memory", "64M"].map(String::from));
    r.mount_checked();
    // Each edit gets a deadline: a hung mount fails the test (its daemon is
    // killed, which frees the waiting writer) instead of hanging it.
    let append = |r: &mut Drive, line: &'static str| {
        let path = r.p("big");
        within(r, "an append", move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            f.write_all(line.as_bytes()).unwrap();
        });
    };
    let path = r.p("big");
    let editor = std::thread::spawn(move || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(b"OVERWRITTEN", 5 << 20).unwrap();
        f.sync_all().unwrap();
    });
    append(&mut r, "line\n");
    // Meanwhile the rest of the mount answers.
    let other = r.p("other");
    within(&mut r, "a read of another file", move || {
        assert_eq!(std::fs::read(other).unwrap(), b"another file\n");
    });
    within(&mut r, "an in-place overwrite", move || {
        editor.join().unwrap()
    });
    big.extend_from_slice(b"line\n");
    big[5 << 20..(5 << 20) + 11].copy_from_slice(b"OVERWRITTEN");
    assert!(std::fs::read(r.p("big")).unwrap() == big, "edit lost");
    sync_ok(&r);
    r.umount();

    // Online-only (--cache 0): the same edits fetch without the vault lock.
    peer_args(&mut r, &nodes, Some("0"));
    r.mount();
    append(&mut r, "again\n");
    big.extend_from_slice(b"again\n");
    assert!(std::fs::read(r.p("big")).unwrap() == big, "edit lost");
    r.umount();
}

/// Runs `f` on a thread; if it has not finished within 90 s the mount is
/// hung: its daemon is killed (which fails the waiting call) and the test
/// fails.
fn within(d: &mut Drive, what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what} failed"),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let log = d.log();
            d.kill9();
            panic!("{what} hung for 90 s: the mount is stuck\n{log}");
        }
    }
}

/// A laptop mounted a few seconds now and then renews its leases at each
/// mount: after more than one lease time since the upload, the fragments
/// are still on the node and read back.
#[test]
fn short_mounts_now_and_then_keep_the_leases_alive() {
    let _busy = CpuBurner::start();
    let node = Node::start_with("1G", &[], &["--gc-secs", "1"]);
    let mut d = Drive::init_with("part-time", &["--k", "1", "--n", "1"]);
    peer_args(&mut d, std::slice::from_ref(&node), None);
    // 24 s leases: due for renewal 8 s after the last one.
    d.mount_args.extend(["--lease-secs".into(), "24".into()]);
    d.mount();
    let data = pattern(1 << 20, 77);
    std::fs::write(d.p("doc"), &data).unwrap();
    sync_ok(&d);
    let uploaded = Instant::now();
    d.umount();
    let stored = || node.status()["stored_for_others_bytes"].as_u64().unwrap();
    assert!(stored() >= 1 << 20);

    // Two short mounts, each shorter than the renewal period.
    let renewals = |d: &Drive| d.log().matches("renewed leases").count();
    for at in [10, 20] {
        std::thread::sleep(Duration::from_secs(at).saturating_sub(uploaded.elapsed()));
        let before = renewals(&d);
        d.mount();
        // At the mount, not a renewal period (8 s) later.
        let t = Instant::now();
        while renewals(&d) <= before && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(renewals(&d) > before, "no renewal at mount:\n{}", d.log());
        d.umount();
    }
    // Past the first lease's end (24 s after upload) and the collector's
    // next round: the renewed fragments are still there.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(uploaded.elapsed()));
    assert!(stored() >= 1 << 20, "fragments expired although renewed");
    peer_args(&mut d, std::slice::from_ref(&node), Some("0"));
    d.mount_args.extend(["--lease-secs".into(), "24".into()]);
    d.mount();
    assert!(std::fs::read(d.p("doc")).unwrap() == data);
    d.umount();
}

/// `umount` then `mount` at once (a script, an fstab remount, a service
/// restart) works: `drizzle umount` returns when the daemon is done, and a
/// mount after an unmount from outside waits for the old daemon.
#[test]
fn remount_right_after_an_unmount() {
    let node = Node::start("1G", &[]);
    let mut d = Drive::init_with("remount", &["--k", "1", "--n", "1"]);
    peer_args(&mut d, std::slice::from_ref(&node), None);
    d.mount();
    let files = write_files(&d, 2);
    sync_ok(&d);
    let _busy = CpuBurner::start();
    let mnt = d.mnt.to_str().unwrap().to_string();
    // Each round leaves a change unpublished, so the daemon publishes the
    // metadata to its peer before it exits: that takes a moment.
    for i in 0..3 {
        std::fs::write(d.p(&format!("note{i}")), b"written just before unmounting").unwrap();
        let out = d.drizzle(&["umount", &mnt]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = d.mount_output();
        assert!(
            out.status.success(),
            "mount right after drizzle umount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d.adopt_running();
        check_files(&d, &files);
    }
    // The kernel's unmount (umount(8) without the helper, a file manager):
    // the daemon sees it and finishes on its own; a mount at once waits.
    for i in 3..6 {
        std::fs::write(d.p(&format!("note{i}")), b"written just before unmounting").unwrap();
        nix::mount::umount2(d.mnt.as_path(), nix::mount::MntFlags::empty()).unwrap();
        let out = d.mount_output();
        assert!(
            out.status.success(),
            "mount right after an unmount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d.adopt_running();
        check_files(&d, &files);
        assert!(d.p(&format!("note{i}")).exists());
    }
    d.umount();
}

/// A fresh clone's test command builds every binary the integration tests
/// run (the mount helper is not built by `cargo test` itself).
#[test]
fn the_test_command_builds_the_binaries_the_tests_run() {
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test")).unwrap();
    let line = |cmd: &str| script.lines().position(|l| l.trim_start().starts_with(cmd));
    let build = line("cargo build --workspace --bins");
    let test = line("cargo test");
    assert!(
        matches!((build, test), (Some(b), Some(t)) if b < t),
        "scripts/test must build the workspace's binaries before running the tests"
    );
}
