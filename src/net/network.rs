//! [`Network`]: the narrow interface a vault's network side (uploads,
//! reads, leases, audits, repair, publishing) uses to reach peers. The
//! libp2p node ([`NodeHandle`]) implements it, and so does the in-process
//! network of [`super::local`], which runs the same maintenance code under
//! simulated time with no sockets and no timers.
//!
//! The peer table, strikes, credits and uptime live in the node's `Shared`
//! state, so both implementations keep them with the same code.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::proto::{Capacity, Request, Response};
use super::{NetError, NodeHandle, PeerId, PeerInfo, Shared};
use crate::fragstore::RootOutcome;
use crate::maint::{Clock, Uptime};

/// What a vault asks of the network it is connected through.
pub trait Network: Send + Sync + 'static {
    /// A shared handle to the same network, for tasks that outlive a call.
    fn handle(&self) -> Arc<dyn Network>;

    /// This node's own peer id.
    fn peer_id(&self) -> PeerId;

    /// The clock maintenance ages leases and uptime by.
    fn clock(&self) -> Arc<dyn Clock>;

    /// Sends a request and waits for the answer (the libp2p protocol's own
    /// timeout is 60 s; wrap in a shorter one where latency matters).
    fn request(&self, peer: PeerId, req: Request)
        -> BoxFuture<'static, Result<Response, NetError>>;

    /// A snapshot of the peer table.
    fn peers(&self) -> HashMap<PeerId, PeerInfo>;

    /// Connected peers that store fragments.
    fn storage_peers(&self) -> Vec<(PeerId, PeerInfo)> {
        self.peers()
            .into_iter()
            .filter(|(_, p)| p.connected() && p.storage)
            .collect()
    }

    fn is_connected(&self, peer: &PeerId) -> bool;

    /// How `peer` has behaved while this node watched (see
    /// [`crate::maint::history`]), if it is known.
    fn uptime(&self, peer: &PeerId) -> Option<Uptime>;

    /// Starts reaching `peer` if it is not connected (a holder after a
    /// restart, or one about to be judged gone).
    fn find_peer(&self, peer: PeerId);

    /// Looks for more peers now.
    fn look_for_peers(&self);

    /// Notes a peer that returned bad data or failed; placement and reads
    /// prefer peers with fewer strikes.
    fn strike(&self, peer: &PeerId, why: &str);

    /// Updates what we believe a peer has free (after a PUT or a refusal).
    fn note_capacity(&self, peer: &PeerId, f: &mut dyn FnMut(&mut Capacity));

    /// Records that this node's vault stored `bytes` more on `peer`.
    fn add_credit(&self, peer: &PeerId, bytes: u64);

    /// Takes back all credit of a peer caught lying about what it stores.
    fn forfeit_credit(&self, peer: &PeerId);

    /// Keeps a root record on this node (checked like any peer's).
    fn keep_root(&self, key: &[u8; 32], record: &[u8]) -> Result<RootOutcome, String>;

    /// Publishes a root record where lookups of its key find it. Only
    /// valid records leave.
    fn dht_put(&self, key: &[u8; 32], value: Vec<u8>) -> BoxFuture<'static, Result<(), String>>;

    /// Every copy of a record the network returns for `key` (unchecked).
    /// The query starts at once; the future yields when it ends.
    fn dht_get(&self, key: &[u8; 32]) -> BoxFuture<'static, Vec<Vec<u8>>>;
}

impl Shared {
    pub(super) fn peer_table(&self) -> HashMap<PeerId, PeerInfo> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|p| p.connected())
    }

    pub(super) fn uptime(&self, peer: &PeerId) -> Option<Uptime> {
        self.book().uptime(peer).cloned()
    }

    pub(super) fn strike(&self, peer: &PeerId, why: &str) {
        tracing::warn!(%peer, "bad peer: {why}");
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let p = peers.entry(*peer).or_insert_with(PeerInfo::new);
        p.strikes += 1;
        p.last_strike = Some(why.chars().take(200).collect());
    }

    pub(super) fn note_capacity(&self, peer: &PeerId, f: &mut dyn FnMut(&mut Capacity)) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get_mut(peer).and_then(|p| p.capacity.as_mut()) {
            f(c);
        }
    }

    pub(super) fn add_credit(&self, peer: &PeerId, bytes: u64) {
        let mut c = self.credits.write().unwrap_or_else(|p| p.into_inner());
        *c.entry(*peer).or_default() += bytes;
    }

    pub(super) fn forfeit_credit(&self, peer: &PeerId) {
        let mut c = self.credits.write().unwrap_or_else(|p| p.into_inner());
        if c.remove(peer).is_some() {
            tracing::warn!(%peer, "took back the credit of a peer caught lying");
        }
    }

    /// Notes a new connection to `peer` at `ip` (`dialer`: we dialed it, so
    /// the address says where it is).
    pub(super) fn connected(
        &self,
        peer: PeerId,
        ip: Option<std::net::IpAddr>,
        dialer: bool,
    ) -> bool {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let p = peers.entry(peer).or_insert_with(PeerInfo::new);
        p.connections += 1;
        p.last_seen = std::time::Instant::now();
        // Where we dialed it says where it is; where it came from, only
        // until then.
        if dialer || p.addr.is_none() {
            p.addr = ip.or(p.addr);
        }
        p.connections == 1
    }

    /// Notes a closed connection to `peer`; true if it was the last one
    /// (its share of inbound work is dropped; requests in flight keep their
    /// permits).
    pub(super) fn disconnected(&self, peer: &PeerId) -> bool {
        let gone = {
            let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
            peers.get_mut(peer).is_some_and(|p| {
                p.connections = p.connections.saturating_sub(1);
                p.last_seen = std::time::Instant::now();
                p.connections == 0
            })
        };
        if gone {
            self.gates().remove(peer);
        }
        gone
    }
}

/// The [`Network`] methods every implementation answers from its node's
/// `Shared` state (a `shared` field): the peer table, uptime, strikes,
/// credits, identity and clock.
macro_rules! answered_by_shared {
    () => {
        fn peer_id(&self) -> PeerId {
            self.shared.peer_id
        }

        fn clock(&self) -> Arc<dyn Clock> {
            self.shared.clock.clone()
        }

        fn peers(&self) -> HashMap<PeerId, PeerInfo> {
            self.shared.peer_table()
        }

        fn is_connected(&self, peer: &PeerId) -> bool {
            self.shared.is_connected(peer)
        }

        fn uptime(&self, peer: &PeerId) -> Option<Uptime> {
            self.shared.uptime(peer)
        }

        fn strike(&self, peer: &PeerId, why: &str) {
            self.shared.strike(peer, why)
        }

        fn note_capacity(&self, peer: &PeerId, f: &mut dyn FnMut(&mut Capacity)) {
            self.shared.note_capacity(peer, f)
        }

        fn add_credit(&self, peer: &PeerId, bytes: u64) {
            self.shared.add_credit(peer, bytes)
        }

        fn forfeit_credit(&self, peer: &PeerId) {
            self.shared.forfeit_credit(peer)
        }
    };
}
pub(super) use answered_by_shared;

impl Network for NodeHandle {
    answered_by_shared!();

    fn handle(&self) -> Arc<dyn Network> {
        Arc::new(self.clone())
    }

    fn request(
        &self,
        peer: PeerId,
        req: Request,
    ) -> BoxFuture<'static, Result<Response, NetError>> {
        let me = self.clone();
        Box::pin(async move { me.send_request(peer, req).await })
    }

    fn find_peer(&self, peer: PeerId) {
        if !self.shared.is_connected(&peer) {
            self.command(super::Command::Find(peer));
        }
    }

    fn look_for_peers(&self) {
        self.command(super::Command::Bootstrap);
    }

    fn keep_root(&self, key: &[u8; 32], record: &[u8]) -> Result<RootOutcome, String> {
        self.keep_own_root(key, record)
    }

    fn dht_put(&self, key: &[u8; 32], value: Vec<u8>) -> BoxFuture<'static, Result<(), String>> {
        let (me, key) = (self.clone(), *key);
        Box::pin(async move { me.kad_put(&key, value).await })
    }

    fn dht_get(&self, key: &[u8; 32]) -> BoxFuture<'static, Vec<Vec<u8>>> {
        Box::pin(self.kad_get(key))
    }
}
