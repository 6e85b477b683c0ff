//! Recovery from the vault name and password alone: `drizzle node`
//! processes, a vault that syncs, loses its data dir and is mounted again
//! on an empty one; wrong passwords; two devices of one vault.

use std::path::Path;

use crate::network::{copy_in, peer_args, sample_tree, sync_ok};
use crate::support::{assert_same_tree, Drive, Node};

/// Mount arguments that recover `name` on an empty data dir.
fn recovery_args(d: &mut Drive, nodes: &[Node], name: &str) {
    peer_args(d, nodes, Some("0"));
    for a in ["--vault", name, "--kdf-memory", "64M"] {
        d.mount_args.push(a.into());
    }
}

/// Devices that store nothing for others: a remounting device must not
/// take fragments of the other one offline.
fn devices_only(d: &mut Drive, nodes: &[Node]) {
    peer_args(d, nodes, None);
    for a in d.mount_args.iter_mut() {
        if a == "256M" {
            *a = "0".into();
        }
    }
}

fn is_mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(p.to_str().unwrap()))
}

#[test]
fn recover_a_vault_on_an_empty_data_dir_from_name_and_password() {
    let mut nodes = Node::several(7);
    let mut d = Drive::init_with("lost-laptop", &["--k", "3", "--n", "6"]);
    peer_args(&mut d, &nodes, None);
    d.mount();
    let src = d.tmp.path().join("src");
    sample_tree(&src);
    std::os::unix::fs::symlink("linux/if.h", src.join("link")).unwrap();
    std::fs::create_dir_all(src.join("empty-dir/deeper")).unwrap();
    copy_in(&src, &d.mnt);
    sync_ok(&d);
    let st = d.status();
    assert!(st["metadata"]["root_seq"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["metadata"]["unpublished_changes"], 0, "{st}");
    d.umount();

    // The machine is lost: only the name and the password remain.
    std::fs::remove_dir_all(&d.data).unwrap();
    let mut r = Drive::blank();
    recovery_args(&mut r, &nodes, "lost-laptop");
    let out = r.mount_checked();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("recovered vault 'lost-laptop'"), "{err}");
    assert_same_tree(&src, &r.mnt);
    // The recovered vault is a working vault: it writes and syncs.
    std::fs::write(r.p("after-recovery.txt"), b"still here\n").unwrap();
    sync_ok(&r);
    r.umount();

    // Again with n - k = 3 fragment holders gone.
    for n in nodes.iter_mut().take(3) {
        n.kill();
    }
    let mut r2 = Drive::blank();
    recovery_args(&mut r2, &nodes[3..], "lost-laptop");
    r2.mount_checked();
    std::fs::write(src.join("after-recovery.txt"), b"still here\n").unwrap();
    assert_same_tree(&src, &r2.mnt);
    r2.umount();

    // A wrong password finds nothing and mounts nothing.
    let mut w = Drive::blank();
    w.password = "a different but strong passphrase 42".into();
    recovery_args(&mut w, &nodes[3..], "lost-laptop");
    let out = w.mount_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no vault named 'lost-laptop' with this password was found")
            && err.contains("4 peers asked"),
        "{err}"
    );
    assert!(!is_mounted(&w.mnt));
    assert!(!w.data.join("vault.json").exists());

    // No peer at all: says so instead of "not found".
    let mut lone = Drive::blank();
    lone.mount_args = crate::support::local_net_args();
    lone.mount_args
        .extend(["--vault", "lost-laptop", "--kdf-memory", "64M"].map(String::from));
    let out = lone.mount_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no peers were reachable"), "{err}");
    assert!(!is_mounted(&lone.mnt));

    // init refuses a name and password that already have a vault.
    let x = Drive::blank();
    let peer = nodes[3].addr.clone();
    let out = x.drizzle(&[
        "init",
        "--vault",
        "lost-laptop",
        "--kdf-memory",
        "64M",
        "--peer",
        &peer,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("already exists on the network"), "{err}");
    assert!(!x.data.join("vault.json").exists());

    // A second vault made under the same name and password where the
    // network could not be asked is never published over the first.
    let mut twin = Drive::init_with("lost-laptop", &["--k", "3", "--n", "6"]);
    peer_args(&mut twin, &nodes[3..], None);
    let out = twin.mount_checked();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("separate vault created here"), "{err}");
    std::fs::write(twin.p("impostor.txt"), b"must not win\n").unwrap();
    let out = twin.sync_network();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("already exists on the network"), "{err}");
    twin.umount();
    let mut again = Drive::blank();
    recovery_args(&mut again, &nodes[3..], "lost-laptop");
    again.mount_checked();
    assert!(again.p("after-recovery.txt").exists());
    assert!(!again.p("impostor.txt").exists());
    again.umount();
}

#[test]
fn two_devices_see_each_others_synced_changes_and_conflicts_lose_nothing() {
    let nodes = Node::several(4);
    let mut a = Drive::init_with("shared", &["--k", "2", "--n", "4"]);
    devices_only(&mut a, &nodes);
    a.mount();
    std::fs::write(a.p("from-a.txt"), b"written on A\n").unwrap();
    sync_ok(&a);

    // Device B: recovered from the network, adds a file, syncs.
    let mut b = Drive::blank();
    recovery_args(&mut b, &nodes, "shared");
    b.mount_checked();
    b.umount();
    devices_only(&mut b, &nodes);
    b.mount();
    assert_eq!(std::fs::read(b.p("from-a.txt")).unwrap(), b"written on A\n");
    std::fs::write(b.p("from-b.txt"), b"written on B\n").unwrap();
    sync_ok(&b);

    // A sees B's synced change after a remount.
    a.remount();
    assert_eq!(std::fs::read(a.p("from-b.txt")).unwrap(), b"written on B\n");

    // Both write without seeing each other: the last sync wins the root,
    // the conflict is reported, and neither device loses its own files.
    std::fs::write(a.p("only-a.txt"), b"A alone\n").unwrap();
    std::fs::write(b.p("only-b.txt"), b"B alone\n").unwrap();
    let before = a.status()["metadata"]["root_seq"].as_u64().unwrap();
    sync_ok(&a);
    let st = a.status();
    assert!(
        st["metadata"]["root_seq"].as_u64().unwrap() > before,
        "{st}"
    );
    assert_eq!(st["metadata"]["unpublished_changes"], 0, "{st}");
    sync_ok(&b);
    let st = b.status();
    let conflict = st["metadata"]["conflict"].as_str().unwrap_or_default();
    assert!(conflict.contains("last synced wins"), "{st}");
    a.umount();
    let out = a.mount_checked();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("different version"), "{err}");
    assert_eq!(std::fs::read(a.p("only-a.txt")).unwrap(), b"A alone\n");
    assert_eq!(std::fs::read(b.p("only-b.txt")).unwrap(), b"B alone\n");
    assert!(!a.p("only-b.txt").exists());
    a.umount();
    b.umount();

    // A new machine gets the last synced version (B's).
    let mut c = Drive::blank();
    recovery_args(&mut c, &nodes, "shared");
    c.mount_checked();
    assert_eq!(std::fs::read(c.p("only-b.txt")).unwrap(), b"B alone\n");
    assert_eq!(std::fs::read(c.p("from-a.txt")).unwrap(), b"written on A\n");
    c.umount();
}

#[test]
fn metadata_is_published_in_the_background_and_at_unmount() {
    let nodes = Node::several(3);
    let mut d = Drive::init_with("background", &["--k", "2", "--n", "3"]);
    peer_args(&mut d, &nodes, None);
    d.mount_args
        .extend(["--publish-every-secs", "1"].map(String::from));
    d.mount();
    // No `drizzle sync`: the mount publishes once the uploads are done.
    std::fs::write(d.p("first.txt"), b"published in the background\n").unwrap();
    let start = std::time::Instant::now();
    loop {
        let st = d.status();
        if st["metadata"]["root_seq"].as_u64().unwrap_or(0) >= 1
            && st["metadata"]["unpublished_changes"] == 0
        {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "nothing published: {st}\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // A change right before unmounting is published by the unmount (its
    // content is inline, so nothing waits for upload).
    d.mount_args
        .retain(|a| a != "--publish-every-secs" && a != "1");
    d.umount();
    d.mount();
    std::fs::write(d.p("last.txt"), b"published at unmount\n").unwrap();
    d.umount();
    assert!(
        d.log().contains("published the metadata before unmounting"),
        "{}",
        d.log()
    );

    let mut r = Drive::blank();
    recovery_args(&mut r, &nodes, "background");
    r.mount_checked();
    assert_eq!(
        std::fs::read(r.p("first.txt")).unwrap(),
        b"published in the background\n"
    );
    assert_eq!(
        std::fs::read(r.p("last.txt")).unwrap(),
        b"published at unmount\n"
    );
    r.umount();
}
