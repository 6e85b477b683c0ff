//! Tests of the fragment store: the safety margin on a small tmpfs, root
//! records, leases and the ledger, and the checks on PUT.

use super::*;
use crate::coder::encode;
use crate::fragstore::RootFrom;

const LEASE: LeaseTerms = LeaseTerms {
    renew_hash: [0; 32],
    cancel_hash: [0; 32],
    secs: 3600,
};

/// A small tmpfs, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn the_safety_margin_keeps_the_disk_from_filling() {
    let t = Tmpfs(tempfile::tempdir().unwrap());
    nix::mount::mount(
        Some("tmpfs"),
        t.0.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=300m"),
    )
    .expect("mounting a tmpfs (tests run as root)");
    // Donates far more than the disk has: the margin must stop it.
    let fs = FragmentStore::open(t.0.path(), 10 << 30, u64::MAX).unwrap();
    assert!(fs.capacity().available < 50 << 20);
    let mut refused = None;
    for i in 0..200u64 {
        let f = encode(&i.to_le_bytes().repeat(500_000), 1, 0..1)
            .unwrap()
            .remove(0);
        match fs.put(&f.id, &f.bytes, b"peer", 0, &LEASE).unwrap() {
            PutOutcome::Stored => {}
            PutOutcome::Refused(r) => {
                refused = Some(r);
                break;
            }
        }
    }
    let r = refused.expect("the store filled the disk");
    assert!(r.contains("disk nearly full"), "{r}");
    let (free, _) = disk_space(t.0.path()).unwrap();
    assert!(free >= 200 << 20, "only {free} bytes left free");
    drop(fs);
}

#[test]
fn root_records_only_move_forward_and_survive_restarts() {
    use crate::root::RootRecord;
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let kdf = crate::crypto::KdfParams::default_strong();
    let r1 = RootRecord::sign(&key, 1, kdf, vec![1]);
    let r2 = RootRecord::sign(&key, 2, kdf, vec![2]);
    let k = r1.key();
    {
        let fs = FragmentStore::open(dir.path(), 0, 0).unwrap();
        assert_eq!(
            fs.put_root(&k, &r2.encode(), RootFrom::Own).unwrap(),
            RootOutcome::Stored
        );
        assert_eq!(
            fs.put_root(&k, &r2.encode(), RootFrom::Own).unwrap(),
            RootOutcome::Same
        );
        assert!(matches!(
            fs.put_root(&k, &r1.encode(), RootFrom::Own).unwrap(),
            RootOutcome::Refused(_)
        ));
        let mut forged = r2.clone();
        forged.seq = 9;
        assert!(matches!(
            fs.put_root(&k, &forged.encode(), RootFrom::Own).unwrap(),
            RootOutcome::Refused(_)
        ));
        assert!(matches!(
            fs.put_root(&[0; 32], &r2.encode(), RootFrom::Own).unwrap(),
            RootOutcome::Refused(_)
        ));
    }
    let fs = FragmentStore::open(dir.path(), 0, 0).unwrap();
    assert_eq!(fs.get_root(&k).unwrap().unwrap(), r2.encode());
    assert_eq!(fs.roots().unwrap().len(), 1);
    assert_eq!(fs.root_count(), 1);
}

/// A root record signed by a fresh key (as an attacker makes them).
fn fresh_root(i: u32) -> ([u8; 32], Vec<u8>) {
    let mut seed = [7u8; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let kdf = crate::crypto::KdfParams::default_strong();
    let r = crate::root::RootRecord::sign(&key, 1, kdf, vec![0; 1000]);
    (r.key(), r.encode())
}

#[test]
fn fresh_identities_share_one_grace() {
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB donated: the pool is a quarter of it, 1 MiB, and so is the
    // grace of one peer.
    let fs = FragmentStore::open(dir.path(), 4 << 20, 1 << 20).unwrap();
    let frag = |seed: u64| {
        encode(&seed.to_le_bytes().repeat(600 << 7), 1, 0..1)
            .unwrap()
            .remove(0)
    };
    let (a, b, c) = (frag(1), frag(2), frag(3));
    assert_eq!(
        fs.put(&a.id, &a.bytes, b"sybil-1", 0, &LEASE).unwrap(),
        PutOutcome::Stored
    );
    // A second fresh identity finds the pool nearly spent...
    match fs.put(&b.id, &b.bytes, b"sybil-2", 0, &LEASE).unwrap() {
        PutOutcome::Refused(why) => assert!(why.contains("used up"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A contribution node (no vault, nobody can give back) gives its
    // whole donation: the same identity is welcome there.
    let gift = FragmentStore::open(&dir.path().join("gift"), 4 << 20, 1 << 20)
        .unwrap()
        .with_grace_pool(4 << 20);
    assert_eq!(
        gift.put(&a.id, &a.bytes, b"sybil-1", 0, &LEASE).unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        gift.put(&b.id, &b.bytes, b"sybil-2", 0, &LEASE).unwrap(),
        PutOutcome::Stored
    );
    // ...while a peer that stores for this node is not using grace.
    assert_eq!(
        fs.put(&c.id, &c.bytes, b"partner", 1 << 20, &LEASE)
            .unwrap(),
        PutOutcome::Stored
    );
}

#[test]
fn root_records_are_charged_bounded_per_peer_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let clock = crate::maint::clock::SimClock::new(1_000_000);
    let fs = FragmentStore::open_with_clock(dir.path(), 1 << 20, 64 << 10, clock.clone()).unwrap();
    let peer = |id: &'static [u8]| RootFrom::Peer { id, gives: 0 };
    // A node that donates nothing keeps no records for others.
    let none = FragmentStore::open(&dir.path().join("zero"), 0, 1 << 30).unwrap();
    let (k, r) = fresh_root(0);
    assert!(matches!(
        none.put_root(&k, &r, peer(b"a")).unwrap(),
        RootOutcome::Refused(why) if why.contains("donates no space")
    ));
    // One peer: its share of records, then refused with a reason.
    let mut kept = 0;
    for i in 0..100 {
        let (k, r) = fresh_root(i);
        match fs.put_root(&k, &r, peer(b"flooder")).unwrap() {
            RootOutcome::Stored => kept += 1,
            RootOutcome::Refused(why) => assert!(why.contains("for you already"), "{why}"),
            RootOutcome::Same => unreachable!(),
        }
    }
    assert_eq!(kept, ROOTS_PER_PEER);
    // Charged like fragments: the donation's usage and the peer's share.
    let bytes = fs.capacity().used;
    assert!(bytes >= ROOTS_PER_PEER as u64 * 1000, "{bytes}");
    assert_eq!(fs.stored_for(b"flooder"), bytes);
    // Another peer is still served; the node's own vault is never charged.
    let (k, r) = fresh_root(1000);
    assert_eq!(
        fs.put_root(&k, &r, peer(b"honest")).unwrap(),
        RootOutcome::Stored
    );
    let (own_k, own_r) = fresh_root(2000);
    assert_eq!(
        fs.put_root(&own_k, &own_r, RootFrom::Own).unwrap(),
        RootOutcome::Stored
    );
    assert_eq!(fs.capacity().used, bytes + r.len() as u64);
    // After a restart, the same sums.
    drop(fs);
    let fs = FragmentStore::open_with_clock(dir.path(), 1 << 20, 64 << 10, clock.clone()).unwrap();
    assert_eq!(fs.stored_for(b"flooder"), bytes);
    assert_eq!(fs.root_count(), ROOTS_PER_PEER as u64 + 2);
    // Months pass; the honest vault offers its record again, the flooder
    // does not: only the flooder's go, and their space with them.
    clock.advance(ROOT_TTL_SECS / 2);
    assert_eq!(
        fs.put_root(&k, &r, peer(b"honest")).unwrap(),
        RootOutcome::Same
    );
    clock.advance(ROOT_TTL_SECS / 2 + 1);
    assert_eq!(fs.expire_roots().unwrap().len(), ROOTS_PER_PEER as usize);
    assert_eq!(fs.stored_for(b"flooder"), 0);
    assert!(fs.get_root(&k).unwrap().is_some());
    assert!(fs.get_root(&own_k).unwrap().is_some());
    assert_eq!(fs.root_count(), 2);
    assert_eq!(fs.capacity().used, r.len() as u64);
}

#[test]
fn leases_renew_cancel_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let frags = encode(&vec![4u8; 200_000], 1, 0..3).unwrap();
    let fs = FragmentStore::open(dir.path(), 1 << 30, u64::MAX).unwrap();
    let (renew, cancel) = ([1u8; 32], [2u8; 32]);
    for (i, f) in frags.iter().enumerate() {
        let secs = if i == 2 { 0 } else { 3600 };
        let terms = LeaseTerms::new(&renew, &cancel, secs);
        assert_eq!(
            fs.put(&f.id, &f.bytes, b"p", 0, &terms).unwrap(),
            PutOutcome::Stored
        );
    }
    let id = |i: usize| frags[i].id;
    assert_eq!(
        fs.renew(&[(id(0), [9; 32]), (id(0), renew)], 60).unwrap(),
        vec![false, true]
    );
    assert_eq!(fs.cancel(&[(id(1), renew)]).unwrap(), vec![false]);
    assert_eq!(fs.cancel(&[(id(1), cancel)]).unwrap(), vec![true]);
    assert!(fs.get(&id(1)).unwrap().is_none());
    // Fragment 2's lease is already over.
    assert_eq!(fs.expire().unwrap(), 1);
    assert!(fs.get(&id(2)).unwrap().is_none());
    assert!(fs.get(&id(0)).unwrap().is_some());
    assert_eq!(fs.count(), 1);
    assert_eq!(fs.capacity().used, frags[0].bytes.len() as u64);
    assert_eq!(fs.stored_for(b"p"), frags[0].bytes.len() as u64);
}

#[test]
fn the_ledger_refuses_takers_beyond_their_grace() {
    let dir = tempfile::tempdir().unwrap();
    let frags = encode(&vec![9u8; 300_000], 1, 0..3).unwrap();
    let len = frags[0].bytes.len() as u64;
    let fs = FragmentStore::open(dir.path(), 1 << 30, len + 1).unwrap();
    let put = |i: usize, peer: &[u8], gives: u64| {
        fs.put(&frags[i].id, &frags[i].bytes, peer, gives, &LEASE)
            .unwrap()
    };
    assert_eq!(put(0, b"taker", 0), PutOutcome::Stored);
    match put(1, b"taker", 0) {
        PutOutcome::Refused(r) => assert!(r.contains("over your share"), "{r}"),
        o => panic!("{o:?}"),
    }
    // A peer that gives as much as it takes keeps going; others are
    // not affected by the taker.
    assert_eq!(put(1, b"taker", len), PutOutcome::Stored);
    assert_eq!(put(2, b"other", 0), PutOutcome::Stored);
    drop(fs);
    let fs = FragmentStore::open(dir.path(), 1 << 30, len + 1).unwrap();
    assert_eq!(fs.stored_for(b"taker"), 2 * len);
    assert_eq!(fs.stored_for(b"other"), len);
    assert_eq!(fs.count(), 3);
}

#[test]
fn put_checks_id_header_and_donation() {
    let dir = tempfile::tempdir().unwrap();
    let frags = encode(&vec![5u8; 100_000], 2, 0..4).unwrap();
    let len = frags[0].bytes.len() as u64;
    let fs = FragmentStore::open(dir.path(), len * 2 + 10, u64::MAX).unwrap();
    assert_eq!(
        fs.put(&frags[0].id, &frags[0].bytes, b"peer", 0, &LEASE)
            .unwrap(),
        PutOutcome::Stored
    );
    // Idempotent.
    assert_eq!(
        fs.put(&frags[0].id, &frags[0].bytes, b"peer", 0, &LEASE)
            .unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(fs.capacity().used, len);
    // Wrong id.
    assert!(matches!(
        fs.put(&frags[0].id, &frags[1].bytes, b"peer", 0, &LEASE)
            .unwrap(),
        PutOutcome::Refused(_)
    ));
    // Junk with a matching id.
    let junk = vec![1u8; 64];
    assert!(matches!(
        fs.put(&FragmentId::of(&junk), &junk, b"peer", 0, &LEASE)
            .unwrap(),
        PutOutcome::Refused(_)
    ));
    assert_eq!(
        fs.put(&frags[1].id, &frags[1].bytes, b"peer", 0, &LEASE)
            .unwrap(),
        PutOutcome::Stored
    );
    match fs
        .put(&frags[2].id, &frags[2].bytes, b"peer", 0, &LEASE)
        .unwrap()
    {
        PutOutcome::Refused(r) => assert!(r.contains("donation full"), "{r}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(fs.get(&frags[1].id).unwrap().unwrap(), frags[1].bytes);
    assert_eq!(
        fs.has(&[frags[0].id, frags[2].id]).unwrap(),
        vec![true, false]
    );
    drop(fs);
    let fs = FragmentStore::open(dir.path(), len * 2 + 10, u64::MAX).unwrap();
    assert_eq!(fs.capacity().used, 2 * len);
    assert_eq!(fs.count(), 2);
}
