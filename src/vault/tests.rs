//! Vault engine tests through its API (no FUSE): namespace rules, file data
//! against a model, crash-free persistence across reopen.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::chunk::CHUNK_SIZE;

fn keys() -> VaultKeys {
    VaultKeys::from_master(&[42u8; 32])
}

/// Opens the vault in `dir`, waiting (up to 10 s) for a previous instance's
/// worker threads to let go of the store after `shutdown`.
fn open(dir: &Path) -> Arc<Vault> {
    let opts = VaultOptions {
        idle_flush: std::time::Duration::from_millis(50),
        ..Default::default()
    };
    let start = std::time::Instant::now();
    loop {
        match Vault::open(dir, "t", keys(), opts.clone()) {
            Err(VaultError::Store(crate::store::StoreError::Locked(_)))
                if start.elapsed() < std::time::Duration::from_secs(10) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r.unwrap(),
        }
    }
}

fn fresh() -> (tempfile::TempDir, Arc<Vault>) {
    let dir = tempfile::tempdir().unwrap();
    Vault::create(dir.path(), &keys(), 0, 0).unwrap();
    let v = open(dir.path());
    (dir, v)
}

/// A vault on the in-memory store.
fn in_memory() -> Arc<Vault> {
    let store = Store::in_memory();
    Vault::create_in(&store, &keys(), 0, 0).unwrap();
    let opts = VaultOptions {
        idle_flush: std::time::Duration::from_millis(50),
        ..Default::default()
    };
    Vault::open_in(store, "t", keys(), opts).unwrap()
}

/// Runs a test body on a vault over each store implementation.
fn on_both_stores(
    body: impl Fn(&Vault) -> std::result::Result<(), TestCaseError>,
) -> std::result::Result<(), TestCaseError> {
    let (_d, v) = fresh();
    body(&v)?;
    v.shutdown().unwrap();
    let v = in_memory();
    body(&v)?;
    v.shutdown().unwrap();
    Ok(())
}

fn file(v: &Vault, parent: Ino, name: &str) -> Ino {
    v.mknod(parent, name.as_bytes(), Kind::File, 0o644, 0, 0, 0, None)
        .unwrap()
        .0
}

#[test]
fn namespace_rules() {
    on_both_stores(|v| {
        namespace_rules_on(v);
        Ok(())
    })
    .unwrap();
}

fn namespace_rules_on(v: &Vault) {
    let a = v
        .mknod(ROOT_INO, b"a", Kind::Dir, 0o755, 0, 0, 0, None)
        .unwrap()
        .0;
    let b = v
        .mknod(ROOT_INO, b"b", Kind::Dir, 0o755, 0, 0, 0, None)
        .unwrap()
        .0;
    assert_eq!(v.getattr(ROOT_INO).unwrap().nlink, 4);
    let f = file(v, a, "f");
    assert!(matches!(
        v.mknod(a, b"f", Kind::File, 0o644, 0, 0, 0, None),
        Err(VaultError::Exists)
    ));
    assert!(matches!(v.rmdir(ROOT_INO, b"a"), Err(VaultError::NotEmpty)));
    assert!(matches!(v.unlink(ROOT_INO, b"a"), Err(VaultError::IsDir)));
    assert!(matches!(v.rmdir(a, b"f"), Err(VaultError::NotDir)));
    assert!(matches!(
        v.rename(ROOT_INO, b"a", a, b"x", RenameMode::Replace),
        Err(VaultError::Invalid(_))
    ));
    assert!(matches!(
        v.lookup(ROOT_INO, &[b'x'; 256]),
        Err(VaultError::NameTooLong)
    ));

    // rename across directories, over an existing file
    let g = file(v, b, "g");
    v.rename(a, b"f", b, b"g", RenameMode::Replace).unwrap();
    assert_eq!(v.lookup(b, b"g").unwrap().0, f);
    assert!(matches!(v.getattr(g), Err(VaultError::NotFound)));
    assert!(matches!(v.lookup(a, b"f"), Err(VaultError::NotFound)));
    assert!(matches!(
        v.rename(b, b"g", ROOT_INO, b"a", RenameMode::Replace),
        Err(VaultError::IsDir)
    ));
    // moving a directory updates link counts and '..'
    v.rename(ROOT_INO, b"b", a, b"b", RenameMode::Replace)
        .unwrap();
    assert_eq!(v.getattr(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(v.getattr(a).unwrap().nlink, 3);
    let list = v.readdir(b).unwrap();
    assert_eq!(list[1].ino, a);
    assert_eq!(
        list.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        vec![b".".to_vec(), b"..".to_vec(), b"g".to_vec()]
    );
    // exchange
    let h = file(v, a, "h");
    v.rename(a, b"h", b, b"g", RenameMode::Exchange).unwrap();
    assert_eq!(v.lookup(a, b"h").unwrap().0, f);
    assert_eq!(v.lookup(b, b"g").unwrap().0, h);
    assert!(matches!(
        v.rename(a, b"h", b, b"g", RenameMode::NoReplace),
        Err(VaultError::Exists)
    ));

    // hard links
    v.link(f, ROOT_INO, b"f2").unwrap();
    assert_eq!(v.getattr(f).unwrap().nlink, 2);
    v.unlink(a, b"h").unwrap();
    assert_eq!(v.getattr(f).unwrap().nlink, 1);

    // xattrs
    v.setxattr(f, b"user.k", b"v1", true, false).unwrap();
    assert!(matches!(
        v.setxattr(f, b"user.k", b"v2", true, false),
        Err(VaultError::Exists)
    ));
    assert!(matches!(
        v.setxattr(f, b"user.z", b"v2", false, true),
        Err(VaultError::NoAttr)
    ));
    assert_eq!(v.getxattr(f, b"user.k").unwrap(), b"v1");
    assert_eq!(v.listxattr(f).unwrap(), b"user.k\0");
    v.removexattr(f, b"user.k").unwrap();
    assert!(matches!(v.getxattr(f, b"user.k"), Err(VaultError::NoAttr)));
}

#[test]
fn tiny_chunks_live_inline_and_move_to_objects_when_they_grow() {
    let dir = tempfile::tempdir().unwrap();
    Vault::create(dir.path(), &keys(), 0, 0).unwrap();
    let f = {
        let v = open(dir.path());
        let f = file(&v, ROOT_INO, "tiny");
        v.open_file(f).unwrap();
        v.write(f, 0, b"hello inline").unwrap();
        v.release(f).unwrap();
        v.sync_all().unwrap();
        let s = v.stats().unwrap();
        assert_eq!((s.objects, s.stored_bytes), (0, 0));
        assert_eq!(v.upload_backlog().objects, 0);
        v.shutdown().unwrap();
        f
    };
    let v = open(dir.path());
    v.open_file(f).unwrap();
    assert_eq!(v.read(f, 0, 100).unwrap(), b"hello inline");
    // Growing past the inline limit makes an object ...
    let big = vec![7u8; INLINE_CHUNK_MAX + 1];
    v.write(f, 0, &big).unwrap();
    v.fsync(f).unwrap();
    assert_eq!(v.stats().unwrap().objects, 1);
    assert_eq!(v.read(f, 0, big.len() + 10).unwrap(), big);
    // ... and shrinking back frees it.
    v.setattr(
        f,
        SetAttr {
            size: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    v.fsync(f).unwrap();
    assert_eq!(v.stats().unwrap().objects, 0);
    assert_eq!(v.read(f, 0, 100).unwrap(), vec![7u8; 5]);
    v.release(f).unwrap();
    v.unlink(ROOT_INO, b"tiny").unwrap();
    v.sync_all().unwrap();
    assert_eq!(v.stats().unwrap().objects, 0);
}

#[test]
fn data_survives_reopen_and_unlinked_open_files_are_freed() {
    let dir = tempfile::tempdir().unwrap();
    Vault::create(dir.path(), &keys(), 0, 0).unwrap();
    let content: Vec<u8> = (0..(CHUNK_SIZE * 2 + 12345))
        .map(|i| (i % 251) as u8)
        .collect();
    let (f, gone) = {
        let v = open(dir.path());
        let f = file(&v, ROOT_INO, "big");
        v.open_file(f).unwrap();
        v.write(f, 0, &content).unwrap();
        v.fsync(f).unwrap();
        v.release(f).unwrap();
        let gone = file(&v, ROOT_INO, "gone");
        v.open_file(gone).unwrap();
        v.write(gone, 0, &vec![9u8; CHUNK_SIZE + 1]).unwrap();
        v.fsync(gone).unwrap();
        v.unlink(ROOT_INO, b"gone").unwrap(); // still open: becomes an orphan
        v.sync_metadata().unwrap();
        // 3 for `big`; `gone` has one object and a 1-byte inline chunk.
        assert_eq!(v.stats().unwrap().objects, 4);
        v.shutdown().unwrap();
        (f, gone)
    };
    // A "crash" with `gone` still open: the reopen frees it.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let v = open(dir.path());
    assert!(matches!(v.getattr(gone), Err(VaultError::NotFound)));
    let s = v.stats().unwrap();
    assert_eq!(
        (s.files, s.logical_bytes, s.objects),
        (1, content.len() as u64, 3)
    );
    assert_eq!(v.read(f, 0, content.len() + 10).unwrap(), content);
}

#[test]
fn dedup_and_release() {
    let (_d, v) = fresh();
    let data = vec![7u8; CHUNK_SIZE];
    for name in ["a", "b"] {
        let f = file(&v, ROOT_INO, name);
        v.write(f, 0, &data).unwrap();
        v.fsync(f).unwrap();
    }
    let s = v.stats().unwrap();
    assert_eq!(s.objects, 1, "equal content is stored once");
    v.unlink(ROOT_INO, b"a").unwrap();
    assert_eq!(v.stats().unwrap().objects, 1);
    v.unlink(ROOT_INO, b"b").unwrap();
    let s = v.stats().unwrap();
    assert_eq!((s.objects, s.stored_bytes), (0, 0));
}

#[test]
fn one_byte_change_reseals_one_chunk() {
    let (_d, v) = fresh();
    let f = file(&v, ROOT_INO, "f");
    let data: Vec<u8> = (0..CHUNK_SIZE * 8)
        .map(|i| (i / CHUNK_SIZE) as u8 ^ (i as u8) ^ (i >> 12) as u8)
        .collect();
    v.write(f, 0, &data).unwrap();
    v.fsync(f).unwrap();
    let before = v.stats().unwrap();
    v.write(f, (CHUNK_SIZE * 5 + 17) as u64, b"X").unwrap();
    v.fsync(f).unwrap();
    let after = v.stats().unwrap();
    assert_eq!(before.objects, 8);
    assert_eq!(after.objects, 8);
    let mut expect = data.clone();
    expect[CHUNK_SIZE * 5 + 17] = b'X';
    assert_eq!(v.read(f, 0, expect.len()).unwrap(), expect);
}

#[test]
fn corrupt_object_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    Vault::create(dir.path(), &keys(), 0, 0).unwrap();
    let f;
    {
        let v = open(dir.path());
        f = file(&v, ROOT_INO, "f");
        v.write(f, 0, &vec![5u8; CHUNK_SIZE]).unwrap();
        v.fsync(f).unwrap();
        v.shutdown().unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    // Flip a byte in the one object file.
    let shard = std::fs::read_dir(dir.path().join("objects"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let obj = std::fs::read_dir(shard)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&obj, bytes).unwrap();
    let v = open(dir.path());
    let e = v.read(f, 0, 10).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains("object"), "{e}");
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Truncate(u64),
    Read(u64, usize),
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    let off = prop_oneof![
        0u64..64,
        0u64..(3 * CHUNK_SIZE as u64),
        (CHUNK_SIZE as u64 - 8)..(CHUNK_SIZE as u64 + 8)
    ];
    prop_oneof![
        4 => (off.clone(), proptest::collection::vec(any::<u8>(), 1..20_000)).prop_map(|(o, d)| Op::Write(o, d)),
        1 => off.clone().prop_map(Op::Truncate),
        3 => (off, 1usize..300_000).prop_map(|(o, n)| Op::Read(o, n)),
        1 => Just(Op::Sync),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn file_model(ops in proptest::collection::vec(op(), 1..40)) {
        on_both_stores(|v| file_model_on(v, &ops))?;
    }
}

fn file_model_on(v: &Vault, ops: &[Op]) -> std::result::Result<(), TestCaseError> {
    {
        let f = file(v, ROOT_INO, "m");
        let mut model: Vec<u8> = Vec::new();
        for op in ops.iter().cloned() {
            match op {
                Op::Write(o, d) => {
                    v.write(f, o, &d).unwrap();
                    let end = o as usize + d.len();
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[o as usize..end].copy_from_slice(&d);
                }
                Op::Truncate(n) => {
                    v.setattr(
                        f,
                        SetAttr {
                            size: Some(n),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    model.resize(n as usize, 0);
                }
                Op::Read(o, n) => {
                    let got = v.read(f, o, n).unwrap();
                    let s = (o as usize).min(model.len());
                    let e = (o as usize + n).min(model.len());
                    prop_assert_eq!(&got[..], &model[s..e]);
                }
                Op::Sync => v.fsync(f).unwrap(),
            }
            prop_assert_eq!(v.getattr(f).unwrap().size, model.len() as u64);
        }
        v.fsync(f).unwrap();
        prop_assert_eq!(v.read(f, 0, model.len() + 1).unwrap(), model);
    }
    Ok(())
}

/// Content of chunk `i` of a test file: distinct per chunk (no dedup) and
/// larger than an inline chunk, so each chunk is its own object.
fn chunk_content(i: u64) -> Vec<u8> {
    let mut c = vec![(i % 251) as u8 + 1; INLINE_CHUNK_MAX + 100];
    c[..8].copy_from_slice(&i.to_be_bytes());
    c
}

/// Calls `probe` in a loop on another thread until `work` returns; the
/// longest single call, and how long `work` took.
fn longest_during(probe: impl Fn() + Send + 'static, work: impl FnOnce()) -> (Duration, Duration) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let prober = std::thread::spawn(move || {
        let mut longest = Duration::ZERO;
        while !s.load(Ordering::Relaxed) {
            let t = Instant::now();
            probe();
            longest = longest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(1));
        }
        longest
    });
    let started = Instant::now();
    work();
    let spent = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    (prober.join().unwrap(), spent)
}

/// Other calls went on while `work` ran: none waited for a large part of
/// it (a lock held for the whole file makes one wait for all of it).
fn not_held_up(what: &str, (longest, spent): (Duration, Duration)) {
    eprintln!("{what} took {spent:?}; the longest other call {longest:?}");
    assert!(
        longest < spent / 4 && longest < Duration::from_secs(1),
        "{what} held up other files for {longest:?} of its {spent:?}"
    );
}

use std::time::Duration;

/// Deleting or truncating a file of many thousand chunks frees them in
/// slices: the vault lock is never held for the whole file, so operations
/// on other files go on meanwhile; every object is released in the end,
/// also across a reopen in the middle.
#[test]
fn freeing_a_large_file_does_not_hold_up_other_files() {
    let (dir, v) = fresh();
    const CHUNKS: u64 = 40_000;
    let mk = |v: &Vault, name: &str, salt: u64| {
        let f = file(v, ROOT_INO, name);
        for i in 0..CHUNKS {
            v.write(f, i * CHUNK_SIZE as u64, &chunk_content(i + salt))
                .unwrap();
        }
        v.fsync(f).unwrap();
        f
    };
    let other = file(&v, ROOT_INO, "other");
    v.write(other, 0, b"small").unwrap();
    let big = mk(&v, "big", 0);
    assert_eq!(v.stats().unwrap().objects, CHUNKS);
    let probe = {
        let v = v.clone();
        move || {
            v.getattr(other).unwrap();
            v.write(other, 0, b"small").unwrap();
        }
    };
    let r = longest_during(probe.clone(), || {
        let to = SetAttr {
            size: Some(CHUNK_SIZE as u64),
            ..Default::default()
        };
        v.setattr(big, to).unwrap();
    });
    not_held_up("a truncate", r);
    assert_eq!(v.stats().unwrap().objects, 1);

    mk(&v, "big2", CHUNKS);
    let r = longest_during(probe, || {
        v.unlink(ROOT_INO, b"big2").unwrap();
        let t = std::time::Instant::now();
        while v.stats().unwrap().objects > 1 {
            assert!(t.elapsed() < Duration::from_secs(120), "never freed");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    not_held_up("an unlink and freeing its chunks", r);
    assert!(matches!(
        v.lookup(ROOT_INO, b"big2"),
        Err(VaultError::NotFound)
    ));

    // A reopen in the middle of freeing goes on where it stopped.
    mk(&v, "big3", 2 * CHUNKS);
    v.unlink(ROOT_INO, b"big3").unwrap();
    v.shutdown().unwrap();
    drop(v);
    std::thread::sleep(Duration::from_millis(100));
    let v = open(dir.path());
    let t = std::time::Instant::now();
    while v.stats().unwrap().objects > 1 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "never freed after a reopen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = v.stats().unwrap();
    assert_eq!((s.files, s.objects), (2, 1));
    assert_eq!(v.read(big, 0, 8).unwrap(), 0u64.to_be_bytes());
}

/// A fetcher that gives up without an answer (its runtime stopped).
struct Abandons;

impl Fetcher for Abandons {
    fn fetch(&self, _: &ObjectId, _: &Placement, _: bool, done: FetchDone) {
        drop(done);
    }
}

/// A read of content only on peers whose fetch is abandoned fails with an
/// error; it does not wait forever.
#[test]
fn an_abandoned_fetch_fails_the_read_instead_of_hanging() {
    let store = Store::in_memory();
    Vault::create_in(&store, &keys(), 0, 0).unwrap();
    let opts = VaultOptions {
        disk_cache: 0,
        ..Default::default()
    };
    let v = Vault::open_in(store, "t", keys(), opts).unwrap();
    let f = file(&v, ROOT_INO, "remote");
    v.write(f, 0, &chunk_content(1)).unwrap();
    v.fsync(f).unwrap();
    let id = v.upload_queue(None, 10).unwrap()[0];
    let placement = Placement {
        len: 0,
        k: 1,
        fragments: Vec::new(),
        next_index: 0,
    };
    assert!(v.commit_placement(&id, &placement).unwrap());
    assert!(
        v.local_object(&id).unwrap().is_none(),
        "still on local disk"
    );
    v.drop_memory_cache();
    v.set_fetcher(Arc::new(Abandons));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = v.clone();
    std::thread::spawn(move || {
        let _ = tx.send(reader.read(f, 0, 10));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the read hung on an abandoned fetch");
    let e = r.unwrap_err();
    assert!(e.to_string().contains("abandoned"), "{e}");
    v.shutdown().unwrap();
}
