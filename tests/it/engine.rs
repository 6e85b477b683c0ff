//! The engine under load from elsewhere: one file's slow holders, or a
//! large file being deleted, must not hold up the rest of the mount.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::network::{peer_args, sync_ok};
use crate::support::*;

/// Files of this many bytes each become one object (more than an inline
/// chunk holds).
const FILE: usize = 64 << 10;

/// Runs `f` on a thread and returns how long it took; fails if it takes
/// longer than `limit` (the mount is held up), without hanging the test.
fn answers_within(what: &str, limit: Duration, f: impl FnOnce() + Send + 'static) -> Duration {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => started.elapsed(),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} failed"),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not answer within {limit:?}: held up by the stalled reads")
        }
    }
}

/// Every holder of a hundred online-only files stalls mid-request (the
/// node processes are frozen with their connections open) while a hundred
/// readers wait for those files: more than the mount has content threads
/// and more than the runtime's blocking pool. Meanwhile `stat`, `ls`, reads
/// of a local file and a write plus fsync of another file answer at once;
/// when the holders wake up every reader gets its file, byte for byte.
#[test]
fn stalled_holders_hold_up_only_the_files_they_hold() {
    let _busy = CpuBurner::start();
    let nodes = Node::several(4);
    let mut d = Drive::init_with("stall", &["--k", "2", "--n", "4"]);
    peer_args(&mut d, &nodes, Some("0"));
    d.mount();
    const FILES: usize = 100;
    for i in 0..FILES {
        std::fs::write(d.p(&format!("remote-{i}")), pattern(FILE, i as u64)).unwrap();
    }
    sync_ok(&d);
    // A fresh mount: nothing in memory, and --cache 0 keeps nothing on
    // disk, so every remote file is read from the holders.
    d.umount();
    d.mount();
    assert!(std::fs::read(d.p("remote-0")).unwrap() == pattern(FILE, 0));

    for n in &nodes {
        n.pause();
    }
    let local = pattern(3 << 20, 77);
    std::fs::write(d.p("local"), &local).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    for i in 1..FILES {
        let path = d.p(&format!("remote-{i}"));
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let r = std::fs::read(path);
            let _ = done.send((i, r));
        });
    }
    drop(done_tx);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        done_rx.try_recv().is_err(),
        "a read of a file held only by frozen nodes finished: nothing was stalled"
    );

    let limit = Duration::from_secs(5);
    let p = d.p("local");
    answers_within("stat of a local file", limit, move || {
        assert_eq!(std::fs::metadata(p).unwrap().len(), (3 << 20) as u64);
    });
    let root = d.p("");
    answers_within("ls of the mount", limit, move || {
        assert_eq!(std::fs::read_dir(root).unwrap().count(), FILES + 1);
    });
    let p = d.p("local");
    answers_within("a read of a local file", limit, move || {
        assert!(std::fs::read(p).unwrap() == local);
    });
    let p = d.p("written-meanwhile");
    answers_within("a write and fsync of another file", limit, move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&pattern(1 << 20, 5)).unwrap();
        f.sync_all().unwrap();
        drop(f);
        assert!(std::fs::read(&p).unwrap() == pattern(1 << 20, 5));
    });
    assert!(
        done_rx.try_recv().is_err(),
        "the stalled reads finished while the holders were frozen"
    );

    for n in &nodes {
        n.resume();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 1..FILES {
        let left = deadline.saturating_duration_since(Instant::now());
        let (i, r) = done_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("reads did not finish after the holders woke\n{}", d.log()));
        let got = r.unwrap_or_else(|e| panic!("remote-{i}: {e}\n{}", d.log()));
        assert!(got == pattern(FILE, i as u64), "remote-{i} read back wrong");
    }
    d.umount();
}
