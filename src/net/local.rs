//! An in-process network for tests and the simulator: nodes with real
//! fragment stores, real admission and the real answers to requests
//! (`serve::answer`), real address books counting uptime, all under the
//! caller's clock, with no sockets and no timers. Every running node is
//! connected to every other; a node that stops is unreachable until it
//! joins again from its data dir.
//!
//! What the libp2p node does on its timers (count uptime, ask for free
//! capacity, collect expired leases) happens here in [`LocalNet::tick`],
//! which the caller runs after each step of its clock. So the vault's real
//! maintenance ([`crate::remote::Remote::maintain`]) runs months of
//! simulated time in seconds, and the same steps give the same decisions.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use libp2p::multiaddr::Protocol;

use super::network::answered_by_shared;
use super::proto::{Capacity, Request, Response};
use super::{addrbook, handle, serve, NetError, Network, NodeConfig, NodeCounters, PeerId};
use super::{Fault, PeerInfo, Shared};
use crate::fragstore::{RootFrom, RootOutcome};
use crate::maint::{Clock, Uptime};

/// The running nodes of an in-process network.
#[derive(Default)]
pub struct LocalNet {
    nodes: Mutex<HashMap<PeerId, Member>>,
}

struct Member {
    shared: Arc<Shared>,
    /// Where the node "is", for failure domains.
    ip: IpAddr,
}

/// One node of a [`LocalNet`], as a vault or a test uses it.
#[derive(Clone)]
pub struct LocalNode {
    net: Arc<LocalNet>,
    shared: Arc<Shared>,
}

impl LocalNet {
    pub fn new() -> Arc<LocalNet> {
        Arc::new(LocalNet::default())
    }

    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Member>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a node from `cfg` (its dir, donation, grace, clock, fault;
    /// the first listen address gives its IP, else 127.0.0.1) and connects
    /// it to every running node.
    pub fn join(self: &Arc<Self>, cfg: &NodeConfig) -> anyhow::Result<LocalNode> {
        let (key, frags) = handle::open_node_dir(cfg)?;
        let peer_id = key.public().to_peer_id();
        let book = addrbook::AddressBook::load(&cfg.dir);
        let (listen, _) = tokio::sync::watch::channel(Vec::new());
        let counters = NodeCounters::default();
        let shared = Arc::new(Shared::new(peer_id, frags, counters, book, cfg, listen));
        let ip = cfg
            .listen
            .first()
            .and_then(|a| {
                a.iter().find_map(|p| match p {
                    Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
                    Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
                    _ => None,
                })
            })
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut members = self.members();
        anyhow::ensure!(
            !members.contains_key(&peer_id),
            "node {peer_id} is already running"
        );
        let now = shared.clock.now();
        for (id, m) in members.iter() {
            link(&shared, *id, &m.shared, m.ip, now);
            link(&m.shared, peer_id, &shared, ip, now);
        }
        members.insert(
            peer_id,
            Member {
                shared: shared.clone(),
                ip,
            },
        );
        Ok(LocalNode {
            net: self.clone(),
            shared,
        })
    }

    /// What the nodes do on their timers, at the clock's time: count each
    /// known peer's uptime, learn what connected peers have free, and
    /// delete fragments whose lease ran out (and root records nobody
    /// offered again for months). Returns the fragments deleted.
    pub fn tick(&self) -> usize {
        let members: Vec<Arc<Shared>> = self.members().values().map(|m| m.shared.clone()).collect();
        let free: HashMap<PeerId, Capacity> = members
            .iter()
            .map(|s| (s.peer_id, s.frags.capacity()))
            .collect();
        let mut deleted = 0;
        for s in &members {
            super::driver::observe_connected(s);
            {
                let mut peers = s.peers.write().unwrap_or_else(|p| p.into_inner());
                for (id, info) in peers.iter_mut().filter(|(_, i)| i.connected()) {
                    if let Some(c) = free.get(id) {
                        info.capacity = Some(*c);
                    }
                }
            }
            match s.frags.expire() {
                Ok(n) => deleted += n,
                Err(e) => tracing::error!("collecting expired leases: {e}"),
            }
            if let Err(e) = s.frags.expire_roots() {
                tracing::error!("dropping old root records: {e}");
            }
        }
        deleted
    }

    /// The running node `peer`, if any.
    fn member(&self, peer: &PeerId) -> Option<Arc<Shared>> {
        self.members().get(peer).map(|m| m.shared.clone())
    }

    fn running(&self) -> Vec<Arc<Shared>> {
        self.members().values().map(|m| m.shared.clone()).collect()
    }
}

/// Notes in `at`'s tables a connection to `peer` (`of` its state, at `ip`).
fn link(at: &Shared, peer: PeerId, of: &Shared, ip: IpAddr, now: u64) {
    at.book().note_seen(peer, now);
    at.connected(peer, Some(ip), true);
    let mut peers = at.peers.write().unwrap_or_else(|p| p.into_inner());
    if let Some(info) = peers.get_mut(&peer) {
        info.storage = true;
        info.capacity = Some(of.frags.capacity());
    }
}

impl LocalNode {
    /// Stops the node: its address book is written and every peer sees it
    /// go. Its store closes when the last request in flight ends.
    pub fn stop(&self) {
        if let Err(e) = addrbook::AddressBook::save_shared(&self.shared.book) {
            tracing::warn!("cannot write the address book: {e}");
        }
        let mut members = self.net.members();
        if members.remove(&self.shared.peer_id).is_none() {
            return;
        }
        for m in members.values() {
            m.shared.disconnected(&self.shared.peer_id);
            self.shared.disconnected(&m.shared.peer_id);
        }
    }

    /// Counts each known peer's uptime now (as [`LocalNet::tick`] does for
    /// every node): where watching starts after a mount.
    pub fn observe_peers(&self) {
        super::driver::observe_connected(&self.shared);
    }

    pub fn fragment_count(&self) -> u64 {
        self.shared.frags.count()
    }

    /// Which of `ids` this node stores.
    pub fn holds(&self, ids: &[crate::coder::FragmentId]) -> Result<Vec<bool>, String> {
        self.shared.frags.has(ids).map_err(|e| e.to_string())
    }

    /// Fragments this node deleted because their lease ran out.
    pub fn expired_fragments(&self) -> u64 {
        self.shared.frags.expired_count()
    }

    pub fn counters(&self) -> &NodeCounters {
        &self.shared.counters
    }

    fn running(&self) -> bool {
        self.net.member(&self.shared.peer_id).is_some()
    }

    /// Has `to` answer `req` from this node, as the libp2p node's inbound
    /// path does: admitted within this node's share, answered on the
    /// blocking pool, a streamed fragment read whole.
    fn deliver(
        &self,
        to: Arc<Shared>,
        req: Request,
    ) -> BoxFuture<'static, Result<Response, NetError>> {
        let (from, peer) = (self.shared.peer_id, to.peer_id);
        Box::pin(async move {
            to.counters
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if to.fault == Some(Fault::Stall) && matches!(req, Request::Get { .. }) {
                return futures::future::pending().await;
            }
            let Some(admitted) = to.admit(from, serve::cost(&req)) else {
                return Ok(Response::Busy);
            };
            let r = tokio::task::spawn_blocking(move || {
                let (mine, _queue) = admitted.into_permits();
                match serve::answer(&to, from, req, mine, &|_| {}) {
                    Response::Streamed(s) => {
                        let mut b = vec![0u8; s.len as usize];
                        match std::os::unix::fs::FileExt::read_exact_at(&*s.file, &mut b, 0) {
                            Ok(()) => Response::Fragment(b.into()),
                            Err(e) => Response::Failed(format!("reading a fragment: {e}")),
                        }
                    }
                    other => other,
                }
            })
            .await;
            r.map_err(|e| NetError::Protocol(peer, format!("answering failed: {e}")))
        })
    }
}

impl Network for LocalNode {
    answered_by_shared!();

    fn handle(&self) -> Arc<dyn Network> {
        Arc::new(self.clone())
    }

    fn request(
        &self,
        peer: PeerId,
        req: Request,
    ) -> BoxFuture<'static, Result<Response, NetError>> {
        match self.net.member(&peer) {
            Some(to) if self.running() => self.deliver(to, req),
            _ => Box::pin(async move { Err(NetError::Unreachable(peer, "not running".into())) }),
        }
    }

    /// Every running node is connected: nothing to dial.
    fn find_peer(&self, _peer: PeerId) {}

    fn look_for_peers(&self) {}

    fn keep_root(&self, key: &[u8; 32], record: &[u8]) -> Result<RootOutcome, String> {
        self.shared
            .frags
            .put_root(key, record, RootFrom::Own)
            .map_err(|e| e.to_string())
    }

    /// Offers the record to every other running node, as a DHT PUT_VALUE
    /// reaches the closest ones.
    fn dht_put(&self, key: &[u8; 32], value: Vec<u8>) -> BoxFuture<'static, Result<(), String>> {
        if let Err(e) = crate::root::RootRecord::check(&value, key) {
            let e = e.to_string();
            return Box::pin(async move { Err(e) });
        }
        let me = self.shared.peer_id;
        let puts: Vec<_> = self
            .net
            .running()
            .into_iter()
            .filter(|s| s.peer_id != me)
            .map(|to| {
                let req = Request::RootPut {
                    key: *key,
                    record: value.clone(),
                };
                self.deliver(to, req)
            })
            .collect();
        Box::pin(async move {
            futures::future::join_all(puts).await;
            Ok(())
        })
    }

    /// Every running node's copy of the record.
    fn dht_get(&self, key: &[u8; 32]) -> BoxFuture<'static, Vec<Vec<u8>>> {
        let (nodes, key) = (self.net.running(), *key);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                nodes
                    .iter()
                    .filter_map(|s| s.frags.get_root(&key).ok().flatten())
                    .collect()
            })
            .await
            .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragstore::LeaseTerms;
    use crate::maint::SimClock;

    fn cfg(dir: &std::path::Path, name: &str, clock: &Arc<SimClock>) -> NodeConfig {
        let mut c = NodeConfig::new(dir.join(name), 1 << 30);
        c.clock = clock.clone();
        c
    }

    /// Nodes see each other at once, answer with their real stores (a
    /// large fragment comes back whole), are unreachable while stopped,
    /// keep their fragments across a restart, and collect expired leases
    /// on the clock when the net ticks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_nodes_store_answer_stop_rejoin_and_expire_on_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = SimClock::new(1_800_000_000);
        let net = LocalNet::new();
        let a = net.join(&cfg(dir.path(), "a", &clock)).unwrap();
        let b = net.join(&cfg(dir.path(), "b", &clock)).unwrap();
        let bid = b.peer_id();
        assert!(a.is_connected(&bid) && b.is_connected(&a.peer_id()));
        assert_eq!(a.storage_peers().len(), 1);
        let object: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        let frag = crate::coder::encode(&object, 2, [0]).unwrap().remove(0);
        let lease = LeaseTerms::new(&[1; 32], &[2; 32], 3600);
        let put = Request::Put {
            id: frag.id,
            lease,
            data: frag.bytes.clone().into(),
        };
        assert!(matches!(a.request(bid, put).await, Ok(Response::Stored)));
        match a.request(bid, Request::Get { id: frag.id }).await {
            Ok(Response::Fragment(bytes)) => assert!(bytes[..] == frag.bytes[..]),
            other => panic!("GET answered {other:?}"),
        }
        b.stop();
        assert!(!a.is_connected(&bid));
        let r = a.request(bid, Request::Has { ids: vec![frag.id] }).await;
        assert!(matches!(r, Err(NetError::Unreachable(..))), "{r:?}");
        // Its uptime is counted by the clock: away while stopped.
        net.tick();
        clock.advance(600);
        net.tick();
        let up = a.uptime(&bid).expect("known");
        assert!(up.seen < clock.now());
        drop(b);
        let b = net.join(&cfg(dir.path(), "b", &clock)).unwrap();
        assert_eq!(b.peer_id(), bid);
        assert!(a.is_connected(&bid));
        let r = a.request(bid, Request::Has { ids: vec![frag.id] }).await;
        assert!(
            matches!(r, Ok(Response::Has(ref v)) if v == &[true]),
            "{r:?}"
        );
        // The lease runs out on the clock; the next tick collects it.
        clock.advance(7200);
        assert_eq!(net.tick(), 1);
        assert_eq!(b.fragment_count(), 0);
        assert_eq!(b.expired_fragments(), 1);
        a.stop();
        b.stop();
    }
}
