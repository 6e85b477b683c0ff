//! Store tests: the same bodies against RocksDB and the in-memory store,
//! plus what only a durable store does (reopen, object files).

use super::*;

/// Runs a test body against a fresh store of each implementation.
fn on_both(body: impl Fn(&Store, &dyn Fn() -> Store)) {
    let dir = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    let fresh_rocks = || {
        n.set(n.get() + 1);
        Store::open(&dir.path().join(n.get().to_string())).unwrap()
    };
    body(&fresh_rocks(), &fresh_rocks);
    body(&Store::in_memory(), &Store::in_memory);
}

#[test]
fn batch_objects_and_scan() {
    on_both(|store, _| {
        let small = vec![1u8; 100];
        let big = vec![2u8; INLINE_MAX + 1];
        let (sid, bid) = (ObjectId::of(&small), ObjectId::of(&big));
        let mut b = Batch::default();
        b.put_object(store, &sid, &small).unwrap();
        b.put_object(store, &bid, &big).unwrap();
        b.put(Cf::Dirents, b"\x00\x01a".to_vec(), b"1".to_vec());
        b.put(Cf::Dirents, b"\x00\x01b".to_vec(), b"2".to_vec());
        b.put(Cf::Dirents, b"\x00\x02a".to_vec(), b"3".to_vec());
        store.write(b).unwrap();
        store.sync().unwrap();
        assert_eq!(store.read_object(&sid).unwrap().unwrap(), small);
        assert_eq!(store.read_object(&bid).unwrap().unwrap(), big);
        assert!(store.has_object(&bid).unwrap());
        assert_eq!(store.scan(Cf::Dirents, b"\x00\x01", 10).unwrap().len(), 2);
        assert_eq!(store.scan(Cf::Dirents, b"\x00\x01", 1).unwrap().len(), 1);
        assert_eq!(store.scan(Cf::Dirents, b"", 10).unwrap().len(), 3);
        let tail = store
            .scan_from(Cf::Dirents, b"\x00\x01", b"\x00\x01b", 10)
            .unwrap();
        assert_eq!(tail, vec![(b"\x00\x01b".to_vec(), b"2".to_vec())]);

        let mut b = Batch::default();
        b.delete_object(&bid, big.len() as u64);
        b.delete_object(&sid, small.len() as u64);
        b.delete(Cf::Dirents, b"\x00\x01a".to_vec());
        store.write(b).unwrap();
        store.sync().unwrap();
        assert!(store.read_object(&bid).unwrap().is_none());
        assert!(store.read_object(&sid).unwrap().is_none());
        assert!(!store.has_object(&bid).unwrap());
        assert_eq!(store.scan(Cf::Dirents, b"\x00\x01", 10).unwrap().len(), 1);
    });
}

#[test]
fn replicated_changes_are_journaled_in_the_same_write() {
    on_both(|store, fresh| {
        assert_eq!(store.journal_last(), 0);
        let mut b = Batch::default();
        b.put(Cf::Inodes, b"i1".to_vec(), b"v1".to_vec());
        b.put(Cf::Cached, b"c".to_vec(), b"x".to_vec());
        store.write(b).unwrap();
        // Only unreplicated families: no entry.
        let mut b = Batch::default();
        b.put(Cf::Uploads, b"u".to_vec(), b"".to_vec());
        store.write(b).unwrap();
        let mut b = Batch::default();
        b.delete(Cf::Inodes, b"i1".to_vec());
        b.put(Cf::Dirents, b"d".to_vec(), b"v2".to_vec());
        store.write(b).unwrap();
        let j = store.journal_since(0, usize::MAX).unwrap();
        assert_eq!(j.len(), 2);
        let first: Vec<Change> = postcard::from_bytes(&j[0].1).unwrap();
        assert_eq!(first, vec![(1, b"i1".to_vec(), Some(b"v1".to_vec()))]);
        // A byte budget stops after the first entry that fills it.
        assert_eq!(store.journal_since(0, 1).unwrap().len(), 1);
        let mut all = Vec::new();
        let upto = store
            .dump_replicated(|c| {
                all.push(c);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(upto, 2);
        assert_eq!(all, vec![(2, b"d".to_vec(), Some(b"v2".to_vec()))]);
        // Everything published: the newest entry stays as the high-water mark.
        store.trim_journal(2).unwrap();
        assert!(store.journal_since(2, usize::MAX).unwrap().is_empty());
        assert_eq!(store.journal_since(0, usize::MAX).unwrap().len(), 1);
        let mut b = Batch::default();
        b.put(Cf::Inodes, b"i3".to_vec(), b"v3".to_vec());
        store.write(b).unwrap();
        assert_eq!(store.journal_since(2, usize::MAX).unwrap()[0].0, 3);
        // Imports replace the replicated families and are not journaled.
        let copy = fresh();
        let mut b = Batch::default();
        b.put(Cf::Inodes, b"stale".to_vec(), b"x".to_vec());
        copy.write(b).unwrap();
        copy.import(&[&all], Batch::default()).unwrap();
        assert!(copy.get(Cf::Inodes, b"stale").unwrap().is_none());
        assert_eq!(copy.get(Cf::Dirents, b"d").unwrap().unwrap(), b"v2");
        // The import added no entry; the old newest one stays as the mark.
        assert_eq!(copy.journal_last(), 1);
        assert!(copy.journal_since(1, usize::MAX).unwrap().is_empty());
    });
}

#[test]
fn reopen_keeps_data_and_journal_numbering_and_refuses_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let small = vec![1u8; 100];
    let sid = ObjectId::of(&small);
    let mut b = Batch::default();
    b.put_object(&store, &sid, &small).unwrap();
    b.put(Cf::Inodes, b"i".to_vec(), b"v".to_vec());
    b.put(Cf::Inodes, b"j".to_vec(), b"v".to_vec());
    store.write(b).unwrap();
    store.trim_journal(1).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked(_))
    ));
    assert_eq!(store.read_object(&sid).unwrap().unwrap(), small);
    assert_eq!(store.journal_last(), 1);
    let mut b = Batch::default();
    b.put(Cf::Inodes, b"k".to_vec(), b"v".to_vec());
    store.write(b).unwrap();
    assert_eq!(store.journal_since(1, usize::MAX).unwrap()[0].0, 2);
}

#[test]
fn released_files_wait_for_the_sync_and_a_new_store_cancels_their_removal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = vec![5u8; INLINE_MAX * 2];
    let aid = ObjectId::of(&a);
    let mut b = Batch::default();
    b.put_object(&store, &aid, &a).unwrap();
    store.write(b).unwrap();
    store.sync().unwrap();
    let mut b = Batch::default();
    b.delete_object(&aid, a.len() as u64);
    store.write(b).unwrap();
    assert!(store.has_doomed_files());
    assert!(store.read_object(&aid).unwrap().is_some());
    // The same object stored again before the sync: it must survive.
    let mut b = Batch::default();
    b.put_object(&store, &aid, &a).unwrap();
    store.write(b).unwrap();
    assert!(!store.has_doomed_files());
    store.sync().unwrap();
    assert_eq!(store.read_object(&aid).unwrap().unwrap(), a);
    // Released again: gone after the sync.
    let mut b = Batch::default();
    b.delete_object(&aid, a.len() as u64);
    store.write(b).unwrap();
    store.sync().unwrap();
    assert!(store.read_object(&aid).unwrap().is_none());
}

#[test]
fn unreferenced_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = vec![3u8; INLINE_MAX * 2];
    let b = vec![4u8; INLINE_MAX * 2];
    let (aid, bid) = (ObjectId::of(&a), ObjectId::of(&b));
    let mut batch = Batch::default();
    batch.put_object(&store, &aid, &a).unwrap();
    batch.put_object(&store, &bid, &b).unwrap();
    assert_eq!(store.remove_unreferenced_files(|id| *id == aid).unwrap(), 1);
    assert!(store.read_object(&aid).unwrap().is_some());
    assert!(store.read_object(&bid).unwrap().is_none());
}

#[test]
fn syncs_are_shared_by_writers_that_wait_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
    let put = |s: &Store, k: String| {
        let mut b = Batch::default();
        b.put(Cf::Uploads, k.into_bytes(), b"".to_vec());
        s.write(b).unwrap();
    };
    // Nothing new written since the last sync: no WAL sync.
    put(&store, "a".into());
    store.sync().unwrap();
    let before = store.wal_syncs();
    store.sync().unwrap();
    assert_eq!(store.wal_syncs(), before);
    // Eight writers each syncing after every write share syncs.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = store.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    put(&s, format!("{t}-{i}"));
                    s.sync().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let made = store.wal_syncs() - before;
    eprintln!("800 write+sync calls made {made} WAL syncs");
    assert!(made < 800, "every sync flushed: no group commit");
    assert_eq!(store.scan(Cf::Uploads, b"", usize::MAX).unwrap().len(), 801);
}
