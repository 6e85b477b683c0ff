//! In-process clusters: many real libp2p nodes in one process on 127.0.0.1,
//! a vault (engine API, no FUSE) uploading to them, failing and lying peers,
//! and malformed protocol messages.

use std::time::{Duration, Instant};

use drizzle::coder;
use drizzle::crypto::{ObjectId, VaultKeys};
use drizzle::net::proto::{LeaseTerms, Request, Response};
use drizzle::net::{Fault, Multiaddr, Network, NodeConfig, NodeHandle, PeerId};
use drizzle::remote::{fetch_object, Remote, RemoteConfig};
use drizzle::vault::records::{FragmentLoc, Placement};
use drizzle::vault::{Kind, Vault, VaultOptions, ROOT_INO};

use crate::inproc::{cluster, loopback, runtime, start_nodes, write_file, Stopper};
use crate::support::{pattern, raw_swarm, wait_for};

#[test]
fn cluster_of_twelve_survives_losing_n_minus_k_holders() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (k, n) = (4, 8);
    let c = cluster(&rt, tmp.path(), 12, RemoteConfig::new(k, n));
    let (nodes, vault, vnode, remote) = (&c.nodes, &c.vault, &c.vnode, &c.remote);

    let mut files = Vec::new();
    for (i, len) in [0usize, 1, 5000, 300_000, 4 << 20, (9 << 20) + 77]
        .into_iter()
        .enumerate()
    {
        let data = pattern(len, i as u64);
        files.push((write_file(vault, &format!("f{i}"), &data), data));
    }
    vault.sync_all().unwrap();
    let objects = vault.stats().unwrap().objects;
    let health = rt.block_on(remote.wait_synced(|_| {})).unwrap();
    assert_eq!(health.healthy, objects);
    assert_eq!(vault.upload_backlog().objects, 0);
    // Every object's n fragments sit on n distinct nodes, none on the vault's.
    let held: Vec<u64> = nodes.iter().map(|x| x.fragment_count()).collect();
    assert_eq!(held.iter().sum::<u64>(), objects * n as u64, "{held:?}");
    assert_eq!(vnode.fragment_count(), 0);
    for (_, p) in vault.placements().unwrap() {
        let mut peers: Vec<_> = p.fragments.iter().map(|f| f.peer.clone()).collect();
        peers.sort();
        peers.dedup();
        assert_eq!(peers.len(), n as usize);
    }
    // With a zero disk cache nothing synced stays local.
    assert_eq!(vault.disk_cache_bytes(), 0);

    // Lose n - k of the nodes, the busiest first, and empty every cache.
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(held[*i]));
    for &i in &order[..(n - k) as usize] {
        nodes[i].stop();
    }
    wait_for("disconnects", Duration::from_secs(10), || {
        vnode.storage_peers().len() <= 12 - (n - k) as usize
    });
    vault.drop_memory_cache();
    for (ino, data) in &files {
        let back = vault.read(*ino, 0, data.len() + 10).unwrap();
        assert!(back == *data, "file {ino} differs after losing nodes");
    }
    let h = remote.health().unwrap();
    assert_eq!(h.lost, 0);
    assert!(h.degraded > 0);
    vault.shutdown().unwrap();
}

/// Stores an object's fragments on the given nodes directly, so the test
/// decides which peers hold the source fragments.
async fn place_on(vnode: &NodeHandle, holders: &[PeerId], object: &[u8], k: u32) -> Placement {
    let frags = coder::encode(object, k, 0..holders.len() as u32).unwrap();
    let mut locs = Vec::new();
    for (f, peer) in frags.into_iter().zip(holders) {
        let r = vnode
            .request(
                *peer,
                Request::Put {
                    lease: LeaseTerms::new(&[1; 32], &[2; 32], 3600),
                    id: f.id,
                    data: f.bytes.clone().into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(r, Response::Stored);
        locs.push(FragmentLoc {
            index: f.index,
            id: f.id,
            peer: peer.to_bytes(),
            proofs: vec![],
        });
    }
    Placement {
        len: object.len() as u64,
        k,
        fragments: locs,
        next_index: holders.len() as u32,
    }
}

#[test]
fn corrupt_truncating_and_stalling_peers_do_not_break_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let faults = [
        Some(Fault::Corrupt),
        Some(Fault::Truncate),
        Some(Fault::Stall),
        None,
        None,
        None,
        None,
    ];
    let nodes = rt.block_on(start_nodes(tmp.path(), &faults, 1 << 30));
    let _stop = Stopper(nodes.clone());
    let mut cfg = NodeConfig::new(tmp.path().join("reader"), 0);
    cfg.listen = vec![loopback()];
    cfg.peers = nodes.iter().flat_map(|n| n.listen_addrs()).collect();
    let vnode = rt.block_on(NodeHandle::start(cfg)).unwrap();
    let _stop_v = Stopper(vec![vnode.clone()]);
    wait_for("peers", Duration::from_secs(20), || {
        vnode.storage_peers().len() >= 7
    });
    let object = pattern(3 << 20, 99);
    let id = ObjectId::of(&object);
    // The three bad nodes hold the source fragments: the reader asks them
    // first and must fall back to repair fragments on the good ones.
    let holders: Vec<PeerId> = nodes.iter().map(|n| n.peer_id()).collect();
    let placement = rt.block_on(place_on(&vnode, &holders, &object, 3));
    let started = Instant::now();
    let back = rt
        .block_on(fetch_object(
            &vnode,
            &id,
            &placement,
            Duration::from_secs(5),
        ))
        .unwrap();
    assert!(back == object);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the stalled peer was waited out instead of hedged"
    );
    let peers = vnode.peers();
    for bad in &holders[..2] {
        assert!(peers[bad].strikes > 0, "bad peer {bad} was not reported");
    }
    for good in &holders[3..] {
        assert_eq!(peers[good].strikes, 0);
    }
    // With too few honest holders the read fails with a clear error, not
    // wrong data.
    let few = Placement {
        fragments: placement.fragments[..4].to_vec(),
        ..placement.clone()
    };
    let err = rt
        .block_on(fetch_object(&vnode, &id, &few, Duration::ZERO))
        .unwrap_err();
    assert!(err.contains("could be fetched"), "{err}");
}

#[test]
fn full_nodes_refuse_and_uploads_go_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    // Node 0 donates almost nothing.
    let mut nodes = rt.block_on(start_nodes(tmp.path(), &[None], 1000));
    let more = rt.block_on(async {
        let mut v = Vec::new();
        for i in 1..5 {
            let mut cfg = NodeConfig::new(tmp.path().join(format!("n{i}")), 1 << 30);
            // Many nodes on one host: every connection comes from one address.
            cfg.conn_limits.per_ip = 1000;
            cfg.listen = vec![loopback()];
            cfg.peers = nodes[0].listen_addrs();
            v.push(NodeHandle::start(cfg).await.unwrap());
        }
        v
    });
    nodes.extend(more);
    let _stop = Stopper(nodes.clone());
    wait_for("discovery", Duration::from_secs(30), || {
        nodes[1].storage_peers().len() >= 4
    });
    let frag = coder::encode(&pattern(100_000, 1), 2, 0..1)
        .unwrap()
        .remove(0);
    let r = rt
        .block_on(nodes[1].request(
            nodes[0].peer_id(),
            Request::Put {
                lease: LeaseTerms::new(&[1; 32], &[2; 32], 3600),
                id: frag.id,
                data: frag.bytes.clone().into(),
            },
        ))
        .unwrap();
    match r {
        Response::Refused(why) => assert!(why.contains("donation full"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A PUT whose bytes do not match the id is refused too.
    let r = rt
        .block_on(nodes[1].request(
            nodes[2].peer_id(),
            Request::Put {
                lease: LeaseTerms::new(&[1; 32], &[2; 32], 3600),
                id: coder::FragmentId([0; 32]),
                data: frag.bytes.clone().into(),
            },
        ))
        .unwrap();
    assert!(matches!(r, Response::Refused(_)), "{r:?}");
}

/// Raw bytes over the fragment protocol, to send what the real codec never
/// would.
mod raw {
    use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use libp2p::StreamProtocol;
    use std::io;

    #[derive(Clone, Default)]
    pub struct RawCodec;

    impl libp2p::request_response::Codec for RawCodec {
        type Protocol = StreamProtocol;
        type Request = Vec<u8>;
        type Response = Vec<u8>;

        async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
        where
            T: AsyncRead + Unpin + Send,
        {
            let mut v = Vec::new();
            io.read_to_end(&mut v).await?;
            Ok(v)
        }

        async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
        where
            T: AsyncRead + Unpin + Send,
        {
            let mut v = Vec::new();
            io.take(1 << 20).read_to_end(&mut v).await?;
            Ok(v)
        }

        async fn write_request<T>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            req: Vec<u8>,
        ) -> io::Result<()>
        where
            T: AsyncWrite + Unpin + Send,
        {
            io.write_all(&req).await?;
            io.close().await
        }

        async fn write_response<T>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            res: Vec<u8>,
        ) -> io::Result<()>
        where
            T: AsyncWrite + Unpin + Send,
        {
            io.write_all(&res).await?;
            io.close().await
        }
    }
}

#[test]
fn malformed_and_oversized_messages_are_rejected_without_a_crash() {
    use futures::StreamExt;
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;

    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let nodes = rt.block_on(start_nodes(tmp.path(), &[None], 1 << 30));
    let _stop = Stopper(nodes.clone());
    let target = nodes[0].peer_id();
    let addr = nodes[0].listen_addrs()[0].clone();

    let answers: Vec<Result<Vec<u8>, String>> = rt.block_on(async move {
        let mut swarm = raw_swarm(
            |_| {
                request_response::Behaviour::with_codec(
                    raw::RawCodec,
                    [(drizzle::net::proto::PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10)),
                )
            },
            Duration::from_secs(60),
        );
        swarm.dial(addr).unwrap();
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await {
                break;
            }
        }
        let mut oversized = u32::MAX.to_be_bytes().to_vec();
        oversized.extend_from_slice(&[1; 64]);
        let mut truncated = 1000u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(&[1; 10]);
        let mut bad_tag = 1u32.to_be_bytes().to_vec();
        bad_tag.push(99);
        let mut short_get = 5u32.to_be_bytes().to_vec();
        short_get.extend_from_slice(&[2, 1, 2, 3, 4]);
        let reqs = [oversized, truncated, bad_tag, short_get, vec![]];
        let mut ids = Vec::new();
        for r in reqs {
            ids.push(swarm.behaviour_mut().send_request(&target, r));
        }
        let mut answers = vec![None; ids.len()];
        while answers.iter().any(Option::is_none) {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                }) => {
                    let i = ids.iter().position(|x| *x == request_id).unwrap();
                    answers[i] = Some(Ok(response));
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                }) => {
                    let i = ids.iter().position(|x| *x == request_id).unwrap();
                    answers[i] = Some(Err(error.to_string()));
                }
                _ => {}
            }
        }
        answers.into_iter().map(Option::unwrap).collect()
    });
    for (i, a) in answers.iter().enumerate() {
        // The node drops the stream: no answer, or an empty one.
        assert!(
            a.as_ref().map_or(true, |v| v.is_empty()),
            "malformed request {i} got an answer: {a:?}"
        );
    }
    // The node is still up and serving.
    let mut cfg = NodeConfig::new(tmp.path().join("checker"), 0);
    cfg.listen = vec![loopback()];
    let checker = rt.block_on(NodeHandle::start(cfg)).unwrap();
    let _stop_c = Stopper(vec![checker.clone()]);
    checker.dial(nodes[0].listen_addrs()[0].clone());
    let r = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                checker.request(target, Request::Capacity),
            )
            .await
        })
        .unwrap()
        .unwrap();
    assert!(matches!(r, Response::Capacity(_)), "{r:?}");
    let errors = nodes[0]
        .counters()
        .malformed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        errors >= 4,
        "{errors} failed inbound requests counted: {answers:?}"
    );
}

#[test]
fn nodes_talk_over_quic() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let quic: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
    let nodes = rt.block_on(async {
        let mut a = NodeConfig::new(tmp.path().join("a"), 1 << 30);
        a.listen = vec![quic.clone()];
        let a = NodeHandle::start(a).await.unwrap();
        let mut b = NodeConfig::new(tmp.path().join("b"), 1 << 30);
        b.listen = vec![quic.clone()];
        b.peers = a.listen_addrs();
        let b = NodeHandle::start(b).await.unwrap();
        vec![a, b]
    });
    let _stop = Stopper(nodes.clone());
    assert!(nodes[0].listen_addrs()[0].to_string().contains("quic-v1"));
    wait_for("QUIC connection", Duration::from_secs(20), || {
        nodes[1].storage_peers().len() == 1
    });
    let object = pattern(2 << 20, 5);
    let frag = coder::encode(&object, 1, 0..1).unwrap().remove(0);
    let target = nodes[0].peer_id();
    let (put, get) = rt.block_on(async {
        let put = nodes[1]
            .request(
                target,
                Request::Put {
                    lease: LeaseTerms::new(&[1; 32], &[2; 32], 3600),
                    id: frag.id,
                    data: frag.bytes.clone().into(),
                },
            )
            .await
            .unwrap();
        let get = nodes[1]
            .request(target, Request::Get { id: frag.id })
            .await
            .unwrap();
        (put, get)
    });
    assert_eq!(put, Response::Stored);
    assert_eq!(get, Response::Fragment(frag.bytes.into()));
}

/// Audits: a holder whose fragment file vanished and one whose bytes rotted
/// both fail a fresh possession challenge; both fragments are rebuilt
/// elsewhere.
#[test]
fn audits_catch_lost_fragment_files_and_repair_rebuilds_them() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut rcfg = RemoteConfig::new(2, 4);
    rcfg.repair_every = Duration::from_secs(1);
    // Every fragment every pass (the default budget is 1% a day).
    rcfg.audit_fraction = 1e6;
    let c = cluster(&rt, tmp.path(), 6, rcfg);
    let (nodes, vault, vnode, remote) = (&c.nodes, &c.vault, &c.vnode, &c.remote);
    let data = pattern(4 << 20, 11);
    let ino = write_file(vault, "f", &data);
    vault.sync_all().unwrap();
    rt.block_on(remote.wait_synced(|_| {})).unwrap();
    // One holder loses its fragment files behind the node's back, another
    // keeps files of the right size full of zeros.
    let holders: Vec<usize> = (0..nodes.len())
        .filter(|i| nodes[*i].fragment_count() > 0)
        .collect();
    for (n, &victim) in holders[..2].iter().enumerate() {
        let objects = tmp.path().join(format!("node-{victim}/objects"));
        for shard in std::fs::read_dir(&objects).unwrap() {
            for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                let path = f.unwrap().path();
                if n == 0 {
                    std::fs::remove_file(path).unwrap();
                } else {
                    let len = std::fs::metadata(&path).unwrap().len();
                    std::fs::write(&path, vec![0u8; len as usize]).unwrap();
                }
            }
        }
    }
    wait_for("audit and repair", Duration::from_secs(30), || {
        remote.activity().repaired_objects > 0 && remote.health().unwrap().healthy == 1
    });
    let placement = &vault.placements().unwrap()[0].1;
    for &victim in &holders[..2] {
        assert!(vnode.peers()[&nodes[victim].peer_id()].strikes > 0);
        let bytes = nodes[victim].peer_id().to_bytes();
        assert!(placement.fragments.iter().all(|f| f.peer != bytes));
    }
    vault.drop_memory_cache();
    assert!(vault.read(ino, 0, data.len()).unwrap() == data);
    vault.shutdown().unwrap();
}

#[test]
fn root_records_are_checked_and_the_newest_wins() {
    use drizzle::metasync::{check_root, find_root};
    use drizzle::root::RootRecord;

    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let c = cluster(&rt, tmp.path(), 4, RemoteConfig::new(2, 4));
    let (nodes, vault, vnode, remote) = (&c.nodes, &c.vault, &c.vnode, &c.remote);
    let keys = VaultKeys::from_master(&[7u8; 32]);

    // Nothing published yet: nothing found.
    let look = rt.block_on(find_root(vnode, &keys));
    assert!(look.best.is_none());
    assert_eq!(look.asked, 4);

    write_file(vault, "a", &pattern(100_000, 1));
    vault.sync_all().unwrap();
    rt.block_on(remote.wait_synced(|_| {})).unwrap();
    let first = rt.block_on(remote.publish()).unwrap();
    assert!(first.snapshot && first.peers == 4, "{first:?}");
    let old = vault.publish_state().unwrap().root;

    // A second publish with one change is a small journal head, not a snapshot.
    write_file(vault, "b", b"second");
    vault.sync_all().unwrap();
    rt.block_on(remote.wait_synced(|_| {})).unwrap();
    let second = rt.block_on(remote.publish()).unwrap();
    assert!(!second.snapshot && second.seq > first.seq, "{second:?}");
    assert!(second.bytes < 64 * 1024, "{second:?}");
    // Nothing changed: nothing published.
    assert!(rt.block_on(remote.publish()).unwrap().unchanged);

    let look = rt.block_on(find_root(vnode, &keys));
    assert_eq!(look.best.as_ref().unwrap().record.seq, second.seq);
    assert_eq!(look.answered, 4);

    // Replaying the older record: nodes holding the newer one refuse it.
    let key = RootRecord::parse(&old).unwrap().key();
    for n in nodes {
        let r = rt
            .block_on(vnode.request(
                n.peer_id(),
                Request::RootPut {
                    key,
                    record: old.clone(),
                },
            ))
            .unwrap();
        assert!(
            matches!(r, Response::Refused(ref why) if why.contains("not newer")),
            "{r:?}"
        );
    }
    // A new node that only ever saw the old record serves it; readers still
    // take the highest valid sequence number.
    let mut cfg = NodeConfig::new(tmp.path().join("stale"), 1 << 30);
    cfg.listen = vec![loopback()];
    cfg.peers = nodes[0].listen_addrs();
    let stale = rt.block_on(NodeHandle::start(cfg)).unwrap();
    let _stop_s = Stopper(vec![stale.clone()]);
    assert!(matches!(
        stale.keep_root(&key, &old).unwrap(),
        drizzle::fragstore::RootOutcome::Stored
    ));
    wait_for("the stale node", Duration::from_secs(30), || {
        vnode.storage_peers().len() >= 5
    });
    let look = rt.block_on(find_root(vnode, &keys));
    assert_eq!(look.best.unwrap().record.seq, second.seq);

    // Forged records: a bad signature, or signed by another key, are
    // refused by nodes and by readers.
    let mut forged = RootRecord::parse(&old).unwrap();
    forged.seq = 1_000;
    let forged = forged.encode();
    let other = VaultKeys::from_master(&[9u8; 32]);
    let foreign = RootRecord::sign(
        &other.root_signer(),
        2_000,
        drizzle::crypto::KdfParams::default_strong(),
        vec![1, 2, 3],
    )
    .encode();
    for bad in [&forged, &foreign] {
        let r = rt
            .block_on(vnode.request(
                nodes[1].peer_id(),
                Request::RootPut {
                    key,
                    record: bad.clone(),
                },
            ))
            .unwrap();
        assert!(matches!(r, Response::Refused(_)), "{r:?}");
        assert!(check_root(&keys, bad).is_err());
    }
    // A record signed by the vault's key whose payload does not open is
    // refused by the reader too.
    let junk = RootRecord::sign(
        &keys.root_signer(),
        3_000,
        drizzle::crypto::KdfParams::default_strong(),
        vec![0; 40],
    )
    .encode();
    assert!(check_root(&keys, &junk).is_err());
    let look = rt.block_on(find_root(vnode, &keys));
    let found = look.best.unwrap();
    assert_eq!(found.record.seq, second.seq);

    // The root is found but its metadata is out of reach (3 of the 4
    // holders gone, k = 2): the pull fails, naming the shortfall, and
    // writes nothing.
    for n in &nodes[..3] {
        n.stop();
    }
    let dir = tmp.path().join("unreachable");
    let err = rt
        .block_on(drizzle::metasync::pull_into(
            vnode,
            &keys,
            &found,
            &dir,
            None,
            |_| {},
        ))
        .unwrap_err();
    assert!(err.contains("fragments needed could be fetched"), "{err}");
    assert!(!dir.exists());
}

/// Recovering 20,000 files: only metadata is fetched (file contents stay on
/// peers until read). Prints what it fetched and how long it took.
#[test]
fn recovering_twenty_thousand_files_fetches_only_metadata() {
    const FILES: usize = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let c = cluster(&rt, tmp.path(), 5, RemoteConfig::new(3, 5));
    let (nodes, vault, remote) = (&c.nodes, &c.vault, &c.remote);
    let t = Instant::now();
    let dirs: Vec<u64> = (0..100)
        .map(|d| {
            vault
                .mknod(
                    ROOT_INO,
                    format!("dir{d:03}").as_bytes(),
                    Kind::Dir,
                    0o755,
                    0,
                    0,
                    0,
                    None,
                )
                .unwrap()
                .0
        })
        .collect();
    // Most files are tiny (inline in metadata); every tenth has about 7 KB
    // (an object on peers).
    let content = |i: usize| {
        let reps = if i % 10 == 0 { 600 } else { 1 + i % 50 };
        format!("file {i}\n").repeat(reps).into_bytes()
    };
    for i in 0..FILES {
        let (ino, _) = vault
            .mknod(
                dirs[i % 100],
                format!("file-{i:06}.txt").as_bytes(),
                Kind::File,
                0o644,
                0,
                0,
                0,
                None,
            )
            .unwrap();
        vault.open_file(ino).unwrap();
        vault.write(ino, 0, &content(i)).unwrap();
        vault.release(ino).unwrap();
    }
    vault.sync_all().unwrap();
    let written = t.elapsed();
    rt.block_on(remote.wait_synced(|_| {})).unwrap();
    let published = rt.block_on(remote.publish()).unwrap();
    assert!(published.snapshot, "{published:?}");
    let synced = t.elapsed() - written;

    // A new machine: a fresh node and an empty vault directory.
    let mut cfg = NodeConfig::new(tmp.path().join("new-node"), 0);
    cfg.listen = vec![loopback()];
    cfg.peers = nodes[0].listen_addrs();
    let fresh = rt.block_on(NodeHandle::start(cfg)).unwrap();
    let _stop_f = Stopper(vec![fresh.clone()]);
    wait_for("peer discovery", Duration::from_secs(30), || {
        fresh.storage_peers().len() >= 5
    });
    let keys = VaultKeys::from_master(&[7u8; 32]);
    let dir = tmp.path().join("recovered");
    let t = Instant::now();
    let (fetched, served) = rt.block_on(async {
        let served_before: u64 = nodes
            .iter()
            .map(|n| {
                n.counters()
                    .bytes_out
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        let look = drizzle::metasync::find_root(&fresh, &keys).await;
        let found = look.best.expect("root found");
        let p = drizzle::metasync::pull_into(&fresh, &keys, &found, &dir, None, |_| {})
            .await
            .unwrap();
        let served: u64 = nodes
            .iter()
            .map(|n| {
                n.counters()
                    .bytes_out
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        (p, served - served_before)
    });
    let took = t.elapsed();
    let opts = VaultOptions {
        disk_cache: 0,
        ..Default::default()
    };
    let back = Vault::open(&dir, "cluster", VaultKeys::from_master(&[7u8; 32]), opts).unwrap();
    let fetcher_remote = rt.block_on(async { Remote::start(back.clone(), fresh.clone(), 3, 5) });
    let st = back.stats().unwrap();
    assert_eq!(st.files as usize, FILES);
    assert_eq!(st.dirs, 101);
    // Contents come from peers on read.
    for i in [0, 1, 4_990, 19_999] {
        let (ino, _) = back
            .lookup(
                back.lookup(ROOT_INO, format!("dir{:03}", i % 100).as_bytes())
                    .unwrap()
                    .0,
                format!("file-{i:06}.txt").as_bytes(),
            )
            .unwrap();
        back.open_file(ino).unwrap();
        assert_eq!(back.read(ino, 0, 1 << 20).unwrap(), content(i));
        back.release(ino).unwrap();
    }
    drop(fetcher_remote);
    // Only metadata travelled before the reads: the peers served about the
    // metadata objects' size (k of n fragments each, plus a hedge at most).
    assert!(
        served <= fetched.bytes * 3 / 2 + (1 << 20),
        "served {served} for {} bytes of metadata",
        fetched.bytes
    );
    eprintln!(
        "20,000 files: written in {:.1} s, synced and published in {:.1} s; \
         recovery fetched {} metadata objects, {} bytes sealed ({} bytes of fragments served by peers) in {:.2} s",
        written.as_secs_f64(),
        synced.as_secs_f64(),
        fetched.objects,
        fetched.bytes,
        served,
        took.as_secs_f64()
    );
}

#[test]
fn the_dht_keeps_only_valid_root_records_and_serves_them() {
    use drizzle::root::RootRecord;

    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let nodes = rt.block_on(start_nodes(tmp.path(), &[None; 5], 1 << 20));
    let _stop = Stopper(nodes.clone());
    wait_for("peer discovery", Duration::from_secs(30), || {
        nodes.iter().all(|n| n.storage_peers().len() >= 4)
    });
    let signer = VaultKeys::from_master(&[3u8; 32]).root_signer();
    let kdf = drizzle::crypto::KdfParams::default_strong();
    let good = RootRecord::sign(&signer, 7, kdf, vec![1; 100]);
    let key = good.key();
    let mut forged = good.clone();
    forged.seq = 8;
    let held = |n: &NodeHandle, from: &NodeHandle| {
        rt.block_on(from.request(n.peer_id(), Request::RootGet { key }))
            .unwrap()
    };

    // A forged record is not even sent; one a peer sends anyway (raw
    // Kademlia PUT_VALUE) is kept by nobody.
    assert!(rt
        .block_on(nodes[0].dht_put(&key, forged.encode()))
        .is_err());
    raw_kad_put(&rt, &nodes[0], &key, forged.encode());
    std::thread::sleep(Duration::from_millis(500));
    for n in &nodes[..4] {
        assert_eq!(held(n, &nodes[4]), Response::NotFound);
    }
    assert!(rt.block_on(nodes[4].dht_get(&key)).is_empty());
    // The same raw path with a valid record works: the refusal above was
    // the check, not the path.
    let older = RootRecord::sign(&signer, 6, kdf, vec![2; 10]);
    raw_kad_put(&rt, &nodes[0], &key, older.encode());
    wait_for("raw put", Duration::from_secs(10), || {
        held(&nodes[0], &nodes[4]) == Response::Root(older.encode())
    });

    // A valid one is checked, kept (in each node's store, so it survives
    // restarts) and served by the DHT to a node that never saw it.
    rt.block_on(nodes[0].dht_put(&key, good.encode())).unwrap();
    wait_for("DHT replication", Duration::from_secs(10), || {
        nodes[1..]
            .iter()
            .filter(|n| held(n, &nodes[0]) == Response::Root(good.encode()))
            .count()
            >= 2
    });
    let found = rt.block_on(nodes[4].dht_get(&key));
    assert!(found.contains(&good.encode()), "{} found", found.len());
}

/// Sends a Kademlia PUT_VALUE with any record to every node given, from a
/// bare libp2p peer that checks nothing (what a hostile peer can do).
fn raw_kad_put(rt: &tokio::runtime::Runtime, via: &NodeHandle, key: &[u8; 32], value: Vec<u8>) {
    use futures::StreamExt;
    use libp2p::kad;
    use libp2p::swarm::SwarmEvent;

    let addr = via.listen_addrs()[0].clone();
    let target = via.peer_id();
    let key = *key;
    rt.block_on(async move {
        let mut swarm = raw_swarm(
            |k| {
                let id = k.public().to_peer_id();
                let cfg = kad::Config::new(libp2p::StreamProtocol::new("/drizzle/kad/1"));
                let mut b =
                    kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), cfg);
                b.set_mode(Some(kad::Mode::Server));
                b
            },
            Duration::from_secs(60),
        );
        let (plain, _) = drizzle::net::split_peer_addr(&addr);
        swarm.behaviour_mut().add_address(&target, plain);
        swarm.dial(addr).unwrap();
        let record = kad::Record::new(kad::RecordKey::new(&key), value);
        let q = swarm.behaviour_mut().put_record_to(
            record,
            std::iter::once(target),
            kad::Quorum::One,
        );
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed { id, .. }) = ev {
                        if id == q {
                            break;
                        }
                    }
                }
                _ = &mut deadline => break,
            }
        }
    });
}

/// `status`'s durability estimate follows the holders: full marks while
/// every holder is up, a warning once an object is down to r holders that
/// count (here nowhere to repair to: every node holds a fragment).
#[test]
fn durability_estimate_flags_objects_at_the_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut rcfg = RemoteConfig::new(2, 4);
    rcfg.window = drizzle::maint::GoneWindow::fixed(1);
    rcfg.repair_every = Duration::from_secs(1);
    let c = cluster(&rt, tmp.path(), 4, rcfg);
    write_file(&c.vault, "f", &pattern(1 << 20, 3));
    c.vault.sync_all().unwrap();
    rt.block_on(c.remote.wait_synced(|_| {})).unwrap();
    let d = c.remote.durability().unwrap();
    assert_eq!(
        (d.objects, d.at_or_below_threshold, d.repair_threshold),
        (1, 0, 3)
    );
    assert!(d.read_availability > 0.5 && d.yearly_loss < 1e-3, "{d:?}");
    c.nodes[0].stop();
    wait_for(
        "the holder to count as gone",
        Duration::from_secs(60),
        || c.remote.durability().unwrap().at_or_below_threshold == 1,
    );
    let after = c.remote.durability().unwrap();
    assert!(after.read_availability < d.read_availability);
    assert!(after.yearly_loss > d.yearly_loss);
}

/// Credit is for what a peer really keeps: one caught lying (a failed
/// audit, a lost or corrupt fragment) is a stranger again, within the grace.
#[test]
fn a_peer_caught_lying_loses_its_credit() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let nodes = rt.block_on(async {
        let mut v: Vec<NodeHandle> = Vec::new();
        for i in 0..2 {
            let mut cfg = NodeConfig::new(tmp.path().join(format!("n{i}")), 1 << 30);
            cfg.grace = 150_000;
            cfg.listen = vec![loopback()];
            cfg.peers = v.iter().flat_map(|n| n.listen_addrs()).collect();
            v.push(NodeHandle::start(cfg).await.unwrap());
        }
        v
    });
    let _stop = Stopper(nodes.clone());
    let (a, b) = (&nodes[0], &nodes[1]);
    wait_for("peers", Duration::from_secs(30), || {
        b.storage_peers().len() == 1
    });
    let put = |seed: u64| {
        let f = coder::encode(&pattern(100_000, seed), 1, 0..1)
            .unwrap()
            .remove(0);
        rt.block_on(b.request(
            a.peer_id(),
            Request::Put {
                lease: LeaseTerms::new(&[1; 32], &[2; 32], 3600),
                id: f.id,
                data: f.bytes.into(),
            },
        ))
        .unwrap()
    };
    // A's vault stores 1 MB on B: B may store about as much on A.
    a.add_credit(&b.peer_id(), 1_000_000);
    assert_eq!(put(1), Response::Stored);
    assert_eq!(put(2), Response::Stored);
    // B is caught lying: only the grace is left, and it is spent.
    a.forfeit_credit(&b.peer_id());
    match put(3) {
        Response::Refused(why) => assert!(why.contains("over your share"), "{why}"),
        other => panic!("{other:?}"),
    }
}
