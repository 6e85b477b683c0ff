//! Multi-process: `drizzle node` processes and a vault mounted through the
//! real binary, syncing to them, losing some, reading back from the rest.

use std::path::Path;
use std::process::Command;

use crate::support::{assert_same_tree, local_net_args, pattern, Drive, Node};

/// Copies a real tree (part of /usr/include) plus some large files into `dst`.
pub fn sample_tree(dst: &Path) {
    std::fs::create_dir_all(dst.join("linux")).unwrap();
    copy_in(Path::new("/usr/include/linux"), &dst.join("linux"));
    std::fs::write(dst.join("big.bin"), pattern((13 << 20) + 12345, 1)).unwrap();
    std::fs::write(dst.join("empty"), b"").unwrap();
    std::fs::write(dst.join("small.txt"), b"hello peers\n").unwrap();
}

/// `cp -a SRC/. MNT`, as a backup user would.
pub fn copy_in(src: &Path, mnt: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(src.join("."))
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `drizzle sync` must succeed.
pub fn sync_ok(d: &Drive) {
    let out = d.sync_network();
    assert!(
        out.status.success(),
        "sync failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
}

pub fn peer_args(d: &mut Drive, nodes: &[Node], cache: Option<&str>) {
    d.mount_args = local_net_args();
    for n in nodes {
        d.mount_args.push("--peer".into());
        d.mount_args.push(n.addr.clone());
    }
    if let Some(c) = cache {
        d.mount_args.push("--cache".into());
        d.mount_args.push(c.into());
    }
}

#[test]
fn sync_to_node_processes_then_read_back_after_losing_n_minus_k() {
    let mut nodes = Node::several(7);
    let mut d = Drive::init_with("netvault", &["--k", "3", "--n", "6"]);
    peer_args(&mut d, &nodes, None);
    d.mount();
    let src = d.tmp.path().join("src");
    sample_tree(&src);
    copy_in(&src, &d.mnt);
    sync_ok(&d);
    let st = d.status();
    assert_eq!(st["role"], "vault");
    assert_eq!(st["pending_upload_bytes"], 0);
    assert_eq!(st["healthy"], st["objects"], "{st}");
    assert_eq!(st["degraded"], 0);
    assert_eq!(st["lost"], 0);
    assert!(st["peers"].as_u64().unwrap() >= 7, "{st}");
    // Contribution nodes report what they hold for others.
    let stored: u64 = nodes
        .iter()
        .map(|n| {
            let s = n.status();
            assert_eq!(s["role"], "node");
            assert_eq!(s["donated_bytes"], 1u64 << 30);
            // Every storage peer keeps the vault's root record.
            assert_eq!(s["root_records"], 1, "{s}");
            s["stored_for_others_bytes"].as_u64().unwrap()
        })
        .sum();
    let objects_bytes = st["stored_bytes"].as_u64().unwrap();
    assert!(
        stored >= objects_bytes * 2,
        "stored {stored} for {objects_bytes}"
    );

    // Lose n - k = 3 nodes, clear the local cache (remount with --cache 0)
    // and read everything back from the remaining peers.
    d.umount();
    for n in nodes.iter_mut().take(3) {
        n.kill();
    }
    peer_args(&mut d, &nodes[3..], Some("0"));
    d.mount();
    let st = d.status();
    assert_eq!(st["disk_cache_bytes"], 0, "{st}");
    assert_same_tree(&src, &d.mnt);

    // With every holder gone, reads fail with EIO and a log line that
    // says why, never with wrong data; the namespace is still there.
    d.umount();
    for n in nodes.iter_mut() {
        n.kill();
    }
    peer_args(&mut d, &[], Some("0"));
    d.mount();
    let err = std::fs::read(d.p("big.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(d.log().contains("cannot fetch from peers"), "{}", d.log());
    assert!(d.p("linux").is_dir());
    d.umount();
}

#[test]
fn sync_without_enough_peers_fails_clearly_and_keeps_data() {
    let mut d = Drive::init_with("lonely", &["--k", "2", "--n", "4"]);
    d.mount();
    let data = pattern(10_000, 3);
    std::fs::write(d.p("a.txt"), &data).unwrap();
    let out = d.sync_network();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no storage peers"), "{err}");
    assert_eq!(d.status()["pending_upload_objects"], 1);

    // Two peers for four fragments: uploaded, but reported as short.
    let a = Node::start("1G", &[]);
    let b = Node::start("1G", &[&a.addr]);
    d.umount();
    let two = [a, b];
    peer_args(&mut d, &two, None);
    d.mount();
    let out = d.sync_network();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("below full redundancy"), "{err}");
    let st = d.status();
    assert_eq!(st["pending_upload_objects"], 0, "{st}");
    assert_eq!(st["crowded"], 1, "{st}");
    let human = String::from_utf8_lossy(&d.drizzle(&["status"]).stdout).into_owned();
    for want in [
        "2 storing fragments",
        "0 of 1 objects healthy",
        "1 degraded",
        "crowded",
    ] {
        assert!(human.contains(want), "status lacks {want:?}:\n{human}");
    }
    assert_eq!(std::fs::read(d.p("a.txt")).unwrap(), data);
    d.umount();
}

#[test]
fn node_stops_cleanly_and_keeps_fragments() {
    let mut a = Node::start("64M", &[]);
    let b = Node::start("64M", &[&a.addr]);
    let c = Node::start("64M", &[&a.addr]);
    let mut d = Drive::init_with("keep", &["--k", "1", "--n", "3"]);
    peer_args(&mut d, &[], None);
    d.mount_args.extend(["--peer".into(), a.addr.clone()]);
    d.mount();
    std::fs::write(d.p("f"), pattern(1 << 20, 3)).unwrap();
    let out = d.sync_network();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = a.status()["fragments_held"].as_u64().unwrap();
    assert!(held >= 1);
    let status = a.terminate();
    assert!(status.success(), "node exit on SIGTERM: {status:?}");
    // Restart the node on the same data dir: the fragments are still there.
    let log = a.dir.path().join("node.log");
    let mut cmd = Command::new(crate::support::bin());
    cmd.args(["node", "--donate", "64M", "--no-mdns", "--data-dir"])
        .arg(a.dir.path())
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let child = crate::support::KillOnDrop(child);
    let mut held_again = 0;
    for _ in 0..100 {
        let mut st = Command::new(crate::support::bin());
        st.args(["status", "--json", "--data-dir"])
            .arg(a.dir.path());
        if let Ok(out) = st.output() {
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                held_again = v["fragments_held"].as_u64().unwrap();
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(child);
    assert_eq!(held_again, held);
    drop((b, c));
    d.umount();
}

/// Barter: a vault may store its starter allowance plus donation * k/n;
/// `df` shows that, and writing beyond it fails with ENOSPC and a log line.
#[test]
fn writes_beyond_the_allowance_fail_with_enospc_and_df_shows_it() {
    let mut d = Drive::init_with("quota", &["--k", "2", "--n", "4"]);
    d.mount_args = ["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]
        .map(String::from)
        .to_vec();
    d.mount_args
        .extend(["--donate", "16M", "--starter-allowance", "4M"].map(String::from));
    d.mount();
    // 4M + 16M * 2/4 = 12 MiB.
    let allowed = 12u64 << 20;
    let st = nix::sys::statvfs::statvfs(&d.mnt).unwrap();
    let total = st.blocks() as u64 * st.fragment_size() as u64;
    assert_eq!(total, allowed, "df shows {total}");
    assert_eq!(d.status()["allowed_bytes"], allowed);
    std::fs::write(d.p("fits"), pattern(6 << 20, 1)).unwrap();
    let err = std::fs::write(d.p("too-big"), pattern(10 << 20, 2)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(d.log().contains("allowance"), "no log line says why");
    // What fit is intact; deleting frees the allowance again.
    assert_eq!(std::fs::read(d.p("fits")).unwrap(), pattern(6 << 20, 1));
    std::fs::remove_file(d.p("too-big")).unwrap();
    std::fs::remove_file(d.p("fits")).unwrap();
    d.sync();
    std::fs::write(d.p("again"), pattern(8 << 20, 3)).unwrap();
    d.umount();
}

/// A peer that takes and never gives is refused once past its grace, with
/// the reason in the reply; `sync` says so.
#[test]
fn a_free_rider_is_refused_after_its_grace() {
    let mut node = Node::start_with("1G", &[], &["--grace", "2M"]);
    let mut d = Drive::init_with("freeloader", &["--k", "1", "--n", "1"]);
    peer_args(&mut d, std::slice::from_ref(&node), None);
    d.mount();
    std::fs::write(d.p("small"), pattern(1 << 20, 1)).unwrap();
    let out = d.sync_network();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(d.p("large"), pattern(3 << 20, 2)).unwrap();
    let out = d.sync_network();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("over your share"), "{err}");
    let st = node.status();
    assert!(
        st["stored_for_others_bytes"].as_u64().unwrap() < 2 << 20,
        "{st}"
    );
    d.umount();
    node.kill();
}

/// Leases: deleting files cancels their fragments' leases and the space
/// returns to the nodes; a vault that stops renewing has its fragments
/// expire.
#[test]
fn deleted_files_free_space_and_unrenewed_leases_expire() {
    let mut node = Node::start_with("1G", &[], &["--gc-secs", "1"]);
    let mut d = Drive::init_with("leases", &["--k", "1", "--n", "1"]);
    peer_args(&mut d, std::slice::from_ref(&node), None);
    // Short leases (renewed every 2 s) with room for a loaded CI machine.
    d.mount_args.extend(["--lease-secs".into(), "6".into()]);
    d.mount();
    std::fs::write(d.p("keep"), pattern(1 << 20, 1)).unwrap();
    std::fs::write(d.p("drop"), pattern(2 << 20, 2)).unwrap();
    let out = d.sync_network();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = |n: &Node| n.status()["stored_for_others_bytes"].as_u64().unwrap();
    let full = stored(&node);
    assert!(full > 3 << 20, "{full}");
    std::fs::remove_file(d.p("drop")).unwrap();
    d.sync();
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "timed out: {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    wait("cancelled space to return", &|| {
        stored(&node) < full - (2 << 20)
    });
    // Leases of 6 s live on while the vault renews them...
    std::thread::sleep(std::time::Duration::from_secs(10));
    assert!(stored(&node) > 1 << 20, "a renewed lease expired");
    assert_eq!(std::fs::read(d.p("keep")).unwrap(), pattern(1 << 20, 1));
    // ...and end once it stops.
    d.umount();
    // (The vault's root record stays, charged like any stored byte.)
    wait("unrenewed fragments to expire", &|| {
        stored(&node) <= drizzle::root::MAX_ROOT as u64
    });
    node.kill();
}

/// Repair: lose n - k holders, start new nodes, watch redundancy come back
/// from fresh fragments, then lose the original survivors too and still
/// read everything.
#[test]
fn repair_restores_redundancy_on_new_nodes() {
    let mut nodes = Node::several(4);
    let mut d = Drive::init_with("repair", &["--k", "2", "--n", "4"]);
    peer_args(&mut d, &nodes, None);
    d.mount_args.extend(
        [
            "--lost-after-secs",
            "3",
            "--repair-every-secs",
            "1",
            "--publish-every-secs",
            "1",
        ]
        .map(String::from),
    );
    d.mount();
    let src = d.tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), pattern((5 << 20) + 3, 7)).unwrap();
    std::fs::write(src.join("small"), b"tiny but precious").unwrap();
    copy_in(&src, &d.mnt);
    sync_ok(&d);
    let published = d.status()["metadata"]["root_seq"].as_u64().unwrap();

    nodes[0].kill();
    nodes[1].kill();
    let survivor = nodes[2].addr.clone();
    let fresh = [
        Node::start("1G", &[&survivor]),
        Node::start("1G", &[&survivor]),
    ];
    let start = std::time::Instant::now();
    loop {
        let st = d.status();
        // Repair moved the metadata objects too, so a new head and root
        // naming their new holders are published (and reach the new nodes).
        if st["healthy"] == st["objects"]
            && st["repaired_objects"].as_u64().unwrap() > 0
            && st["metadata"]["root_seq"].as_u64().unwrap() > published
        {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(90),
            "repair did not restore redundancy: {st}\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // The fresh nodes now hold what the lost ones did.
    for n in &fresh {
        assert!(n.status()["fragments_held"].as_u64().unwrap() > 0);
    }
    d.umount();
    nodes[2].kill();
    nodes[3].kill();
    peer_args(&mut d, &fresh, Some("0"));
    d.mount();
    assert_same_tree(&src, &d.mnt);
    d.umount();

    // Every original holder is gone: the vault is still recoverable from
    // its name and password through the nodes that joined later.
    let mut r = Drive::blank();
    peer_args(&mut r, &fresh, Some("0"));
    r.mount_args
        .extend(["--vault", "repair", "--kdf-memory", "64M"].map(String::from));
    r.mount_checked();
    assert_same_tree(&src, &r.mnt);
    r.umount();
}
