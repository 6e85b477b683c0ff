//! Command-line behaviour: clear errors and exit codes.

use std::fs;

use crate::support::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn wrong_password_mounts_nothing() {
    let d = Drive::init("pw");
    let mnt = d.mnt.to_str().unwrap();
    let out = d.drizzle_with(&["mount", mnt], "not the right password at all 123");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(mnt), "something got mounted");
}

#[test]
fn clear_errors_for_bad_input() {
    let mut d = Drive::init("errs");
    // init twice
    let out = d.drizzle(&["init", "--vault", "errs", "--kdf-memory", "64M"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    // missing mount point
    let missing = d.tmp.path().join("nope");
    let out = d.drizzle(&["mount", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    // data dir that is not a vault
    let other = d.tmp.path().join("empty");
    fs::create_dir(&other).unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.args([
        "mount",
        d.mnt.to_str().unwrap(),
        "--data-dir",
        other.to_str().unwrap(),
    ])
    .env("DRIZZLE_PASSWORD", PASSWORD);
    let out = run_with_timeout(&mut cmd, std::time::Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a drizzle vault"),
        "{}",
        stderr(&out)
    );
    // weak password refused at init
    let weak = d.tmp.path().join("weak");
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["init", "--vault", "w", "--data-dir", weak.to_str().unwrap()])
        .env("DRIZZLE_PASSWORD", "password1");
    let out = run_with_timeout(&mut cmd, std::time::Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("too weak"), "{}", stderr(&out));
    // status with no daemon
    let out = d.drizzle(&["status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no drizzle daemon"),
        "{}",
        stderr(&out)
    );
    // busy mount point: mount twice
    d.mount();
    let out = d.drizzle(&["mount", d.mnt.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("busy") || stderr(&out).contains("already running"),
        "{}",
        stderr(&out)
    );
    // umount of something that is not mounted
    let out = d.drizzle(&["umount", other.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nothing is mounted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_sync_and_signals() {
    let mut d = Drive::init("stat");
    d.mount();
    fs::write(d.p("one"), pattern(5 << 20, 2)).unwrap();
    fs::create_dir(d.p("d")).unwrap();
    d.sync();
    let s = d.status();
    for key in [
        "vault",
        "mountpoint",
        "files",
        "logical_bytes",
        "stored_bytes",
        "cache_bytes",
        "pending_bytes",
    ] {
        assert!(s.get(key).is_some(), "status lacks {key}: {s}");
    }
    assert_eq!(s["vault"], "stat");
    assert_eq!(s["files"], 1);
    assert_eq!(s["logical_bytes"], 5 << 20);
    assert_eq!(s["pending_bytes"], 0);
    let human = d.drizzle(&["status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("stat"));

    // SIGTERM unmounts cleanly and keeps the data
    let pid = s["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = std::time::Instant::now();
    while fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .contains(d.mnt.to_str().unwrap())
    {
        assert!(start.elapsed().as_secs() < 30, "SIGTERM did not unmount");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    d.mount();
    assert_eq!(fs::read(d.p("one")).unwrap(), pattern(5 << 20, 2));
}

#[test]
fn password_file_and_corrupt_database() {
    let mut d = Drive::init("pwfile");
    let pw = d.tmp.path().join("pw");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let mnt = d.mnt.to_str().unwrap().to_string();
    // The file wins over a wrong DRIZZLE_PASSWORD.
    let out = d.drizzle_with(
        &["mount", &mnt, "--password-file", pw.to_str().unwrap()],
        "wrong wrong wrong 1",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    d.umount_unrecorded();
    fs::write(&pw, "").unwrap();
    let out = d.drizzle(&["mount", &mnt, "--password-file", pw.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));

    // A damaged database is a clear error, and nothing is mounted.
    fs::write(d.data.join("db/CURRENT"), "garbage\n").unwrap();
    let out = d.drizzle(&["mount", &mnt]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("database"), "{}", stderr(&out));
    assert!(!fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .contains(&mnt));
}

#[test]
fn umount_after_daemon_died_removes_stale_mount() {
    let mut d = Drive::init("stale");
    d.mount();
    fs::write(d.p("f"), b"x").unwrap();
    d.kill9();
    let mnt = d.mnt.to_str().unwrap().to_string();
    let out = d.drizzle(&["umount", &mnt]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("stale mount"), "{}", stderr(&out));
    assert!(!fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .contains(&mnt));
}

/// `drizzle demo` (the README's first command): 8 local nodes, a mount, a
/// full sync, and a read with 3 nodes stopped; it cleans up after itself.
#[test]
fn demo_runs_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("demo");
    let mut cmd = std::process::Command::new(crate::support::bin());
    cmd.arg("demo").arg(&mnt).args(["--seconds", "1"]);
    let out = crate::support::run_with_timeout(&mut cmd, std::time::Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 12 MiB in three objects (README.txt is small enough to live inline).
    assert!(stdout.contains("3 objects, 3 healthy"), "{stdout}");
    assert!(
        stdout.contains("remaining nodes through the mount: identical"),
        "{stdout}"
    );
    assert!(
        stdout.contains("from its name and password alone")
            && stdout.contains("from the peers: identical"),
        "{stdout}"
    );
    // Its hints work as printed: drizzle by its full path (not on PATH
    // after scripts/demo).
    assert!(
        stdout.contains(&format!("  {} status --data-dir", crate::support::bin())),
        "{stdout}"
    );
    assert!(!mnt.exists(), "the demo left its mount point behind");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(mnt.to_str().unwrap()));
}

/// A repair threshold outside k..=n is refused before anything is mounted.
#[test]
fn a_repair_threshold_outside_k_to_n_is_refused() {
    let d = Drive::init_with("threshold", &["--k", "2", "--n", "4"]);
    let mnt = d.mnt.to_str().unwrap();
    for bad in ["1", "5"] {
        let out = d.drizzle(&["mount", mnt, "--repair-threshold", bad]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--repair-threshold") && err.contains("between k and n"),
            "{err}"
        );
    }
}
