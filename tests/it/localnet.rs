//! The vault's real maintenance over the in-process network
//! (`drizzle::net::local`), with a `Network` of the test's own in between
//! where a test needs to order what happens on the wire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use drizzle::coder::FragmentId;
use drizzle::crypto::VaultKeys;
use drizzle::fragstore::RootOutcome;
use drizzle::maint::{Clock, SimClock, Uptime};
use drizzle::net::local::{LocalNet, LocalNode};
use drizzle::net::proto::{Capacity, Request, Response};
use drizzle::net::{NetError, Network, NodeConfig, PeerId, PeerInfo};
use drizzle::remote::{Remote, RemoteConfig};
use drizzle::vault::{Vault, VaultOptions, ROOT_INO};
use futures::future::BoxFuture;

use crate::inproc::{runtime, write_file};
use crate::support::{pattern, wait_for};

/// The vault's node, with a hold on CANCEL requests that name one of
/// `watched`: each waits (at most `HOLD`) until the test lets it go. Peers get distinct round-trip times,
/// so placement puts fragment i on the same holder every time.
#[derive(Clone)]
struct Held {
    inner: LocalNode,
    holding: Arc<AtomicBool>,
    watched: Arc<std::sync::Mutex<Vec<FragmentId>>>,
    started: Arc<tokio::sync::Notify>,
    go: Arc<tokio::sync::Notify>,
    rank: Arc<HashMap<PeerId, u64>>,
}

const HOLD: Duration = Duration::from_secs(10);

impl Network for Held {
    fn handle(&self) -> Arc<dyn Network> {
        Arc::new(self.clone())
    }
    fn peer_id(&self) -> PeerId {
        self.inner.peer_id()
    }
    fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock()
    }
    fn request(
        &self,
        peer: PeerId,
        req: Request,
    ) -> BoxFuture<'static, Result<Response, NetError>> {
        let cancel = match &req {
            Request::Cancel { items } => {
                let watched = self.watched.lock().unwrap();
                self.holding.load(Ordering::SeqCst)
                    && items.iter().any(|(id, _)| watched.contains(id))
            }
            _ => false,
        };
        let (started, go, send) = (
            self.started.clone(),
            self.go.clone(),
            self.inner.request(peer, req),
        );
        Box::pin(async move {
            if cancel {
                started.notify_one();
                let _ = tokio::time::timeout(HOLD, go.notified()).await;
            }
            send.await
        })
    }
    fn peers(&self) -> HashMap<PeerId, PeerInfo> {
        let mut peers = self.inner.peers();
        for (id, info) in peers.iter_mut() {
            info.rtt = self
                .rank
                .get(id)
                .map(|r| Duration::from_millis(100 * (1 + r)));
        }
        peers
    }
    fn is_connected(&self, peer: &PeerId) -> bool {
        self.inner.is_connected(peer)
    }
    fn uptime(&self, peer: &PeerId) -> Option<Uptime> {
        self.inner.uptime(peer)
    }
    fn find_peer(&self, peer: PeerId) {
        self.inner.find_peer(peer)
    }
    fn look_for_peers(&self) {
        self.inner.look_for_peers()
    }
    fn strike(&self, peer: &PeerId, why: &str) {
        self.inner.strike(peer, why)
    }
    fn note_capacity(&self, peer: &PeerId, f: &mut dyn FnMut(&mut Capacity)) {
        self.inner.note_capacity(peer, f)
    }
    fn add_credit(&self, peer: &PeerId, bytes: u64) {
        self.inner.add_credit(peer, bytes)
    }
    fn forfeit_credit(&self, peer: &PeerId) {
        self.inner.forfeit_credit(peer)
    }
    fn keep_root(&self, key: &[u8; 32], record: &[u8]) -> Result<RootOutcome, String> {
        self.inner.keep_root(key, record)
    }
    fn dht_put(&self, key: &[u8; 32], value: Vec<u8>) -> BoxFuture<'static, Result<(), String>> {
        self.inner.dht_put(key, value)
    }
    fn dht_get(&self, key: &[u8; 32]) -> BoxFuture<'static, Vec<Vec<u8>>> {
        self.inner.dht_get(key)
    }
}

/// A file is deleted, and while the cancel of its old leases is on its way
/// to the holders, the same content is written again and uploaded to the
/// same holders. The cancel must not delete the fragments the new
/// placement names: afterwards every placed fragment is on its holder.
/// (Before the fix, every fragment of the new upload was deleted.)
#[test]
fn a_cancel_never_deletes_fragments_the_same_content_placed_again() {
    let dir = tempfile::tempdir().unwrap();
    let clock = SimClock::new(1_800_000_000);
    let net = LocalNet::new();
    let node_cfg = |name: &str, donate: u64| {
        let mut c = NodeConfig::new(dir.path().join(name), donate);
        c.clock = clock.clone();
        c
    };
    let nodes: Vec<LocalNode> = (0..4)
        .map(|i| net.join(&node_cfg(&format!("node-{i}"), 1 << 30)).unwrap())
        .collect();
    let vdir = dir.path().join("vault");
    std::fs::create_dir_all(&vdir).unwrap();
    let keys = || VaultKeys::from_master(&[7u8; 32]);
    Vault::create(&vdir, &keys(), 0, 0).unwrap();
    let opts = VaultOptions {
        disk_cache: 0,
        ..Default::default()
    };
    let vault = Vault::open(&vdir, "cluster", keys(), opts).unwrap();
    let held = Held {
        inner: net.join(&node_cfg("vault/node", 0)).unwrap(),
        holding: Arc::new(AtomicBool::new(false)),
        watched: Default::default(),
        started: Default::default(),
        go: Default::default(),
        rank: Arc::new(
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.peer_id(), i as u64))
                .collect(),
        ),
    };
    let mut rcfg = RemoteConfig::new(2, 4);
    rcfg.background = false;
    rcfg.domains = drizzle::placement::DomainRule::Peer;
    // No audits: what this test checks must not depend on one sampling
    // the deleted fragment in the same round.
    rcfg.audit_fraction = 0.0;
    let rt = runtime();
    let remote = {
        let _in = rt.enter();
        Remote::start_with(vault.clone(), held.clone(), rcfg)
    };
    let data = pattern(64 << 10, 3);
    let sync = |remote: &Arc<Remote>| {
        vault.sync_all().unwrap();
        remote.kick();
        rt.block_on(remote.wait_synced(|_| {})).unwrap();
    };
    write_file(&vault, "a", &data);
    sync(&remote);
    let first = vault.placements().unwrap();
    assert_eq!(first.len(), 1, "one data object");

    // Deleted: its four leases are released, and the cancel pass sends
    // CANCELs, held on their way.
    vault.unlink(ROOT_INO, b"a").unwrap();
    vault.sync_all().unwrap();
    let object = first[0].0;
    wait_for(
        "the deleted file's leases to be released",
        Duration::from_secs(10),
        || {
            let released = vault.released(None, 10_000).unwrap();
            released.iter().filter(|r| r.object == Some(object)).count() == 4
        },
    );
    *held.watched.lock().unwrap() = first[0].1.fragments.iter().map(|f| f.id).collect();
    held.holding.store(true, Ordering::SeqCst);
    let maintain = {
        let remote = remote.clone();
        rt.spawn(async move { remote.maintain().await })
    };
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), held.started.notified())
            .await
            .expect("a cancel was sent")
    });
    // Meanwhile the same content comes back and is uploaded (the uploader
    // runs on the mount's runtime).
    write_file(&vault, "b", &data);
    vault.sync_all().unwrap();
    remote.kick();
    // Unguarded, the uploader commits the placement while the cancel is
    // held (however busy the machine); guarded, it waits for the cancel.
    let start = std::time::Instant::now();
    while vault.placements().unwrap().is_empty() && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    held.holding.store(false, Ordering::SeqCst);
    held.go.notify_one();
    rt.block_on(maintain).unwrap();
    rt.block_on(remote.wait_synced(|_| {})).unwrap();

    let again = vault.placements().unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].0, first[0].0,
        "the same content is the same object"
    );
    let by_id: HashMap<Vec<u8>, &LocalNode> =
        nodes.iter().map(|n| (n.peer_id().to_bytes(), n)).collect();
    for f in &again[0].1.fragments {
        let holder = by_id[&f.peer];
        assert_eq!(
            holder.holds(&[f.id]).unwrap(),
            vec![true],
            "fragment {} is placed on a holder that deleted it",
            f.index
        );
    }
    // And the file reads back from the holders alone.
    let ino = vault.lookup(ROOT_INO, b"b").unwrap().0;
    assert!(vault.read(ino, 0, data.len()).unwrap() == data);
    drop(remote);
    drop(rt);
    vault.shutdown().unwrap();
    for n in &nodes {
        n.stop();
    }
}
