//! Connection limits: how many connections the node keeps in all, per peer
//! and per remote IP address, so that one host (or one host's many cheap
//! identities) cannot fill the node with connections.
//!
//! A small behaviour of its own: it refuses connections as they are
//! established (the swarm then closes them and reports a denial) and keeps
//! nothing else. Loopback clusters in tests set a high per-address limit.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionEstablished, ListenFailure};
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// The limits; `Default` is what a node uses on a real network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnLimits {
    /// Inbound connections in all.
    pub inbound: usize,
    /// Inbound connections still in their handshake.
    pub pending: usize,
    /// Connections (either direction) with one peer.
    pub per_peer: usize,
    /// Inbound connections from one IP address.
    pub per_ip: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            inbound: 512,
            pending: 64,
            per_peer: 3,
            per_ip: 16,
        }
    }
}

/// The IP address of a multiaddr, if it has one.
pub(super) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(IpAddr::V4(a)),
        Protocol::Ip6(a) => Some(IpAddr::V6(a)),
        _ => None,
    })
}

/// Why a connection was refused (the swarm logs it as the denial's cause).
#[derive(Debug, thiserror::Error)]
#[error("connection limit reached: {0}")]
pub struct Refused(String);

pub struct Limits {
    limits: ConnLimits,
    /// Inbound connections in their handshake, with their address (they
    /// count against it already: a burst of dials must not all pass).
    pending: HashMap<ConnectionId, Option<IpAddr>>,
    inbound: HashMap<ConnectionId, Option<IpAddr>>,
    per_peer: HashMap<PeerId, HashSet<ConnectionId>>,
    per_ip: HashMap<IpAddr, usize>,
    /// Connections refused, for status and metrics.
    refused: Arc<AtomicU64>,
}

impl Limits {
    pub fn new(limits: ConnLimits, refused: Arc<AtomicU64>) -> Self {
        Limits {
            limits,
            pending: HashMap::new(),
            inbound: HashMap::new(),
            per_peer: HashMap::new(),
            per_ip: HashMap::new(),
            refused,
        }
    }

    fn deny(&self, why: String) -> ConnectionDenied {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("refused a connection: {why}");
        ConnectionDenied::new(Refused(why))
    }

    /// Forgets an inbound connection's place against its address.
    fn release_ip(&mut self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }

    fn check_peer(&self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        let n = self.per_peer.get(peer).map_or(0, HashSet::len);
        if n >= self.limits.per_peer {
            return Err(self.deny(format!("{n} connections with peer {peer} already")));
        }
        Ok(())
    }
}

impl NetworkBehaviour for Limits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        if self.pending.len() >= self.limits.pending {
            return Err(self.deny(format!("{} handshakes in progress", self.pending.len())));
        }
        let ip = ip_of(remote);
        if let Some(ip) = ip {
            let n = self.per_ip.get(&ip).copied().unwrap_or(0);
            if n >= self.limits.per_ip {
                return Err(self.deny(format!("{n} connections from {ip} already")));
            }
            *self.per_ip.entry(ip).or_default() += 1;
        }
        self.pending.insert(id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Counted against its address until it closes (or a denial, by
        // this behaviour or another, reports a listen failure).
        let ip = self.pending.remove(&id).flatten();
        self.inbound.insert(id, ip);
        if self.inbound.len() > self.limits.inbound {
            return Err(self.deny(format!("{} inbound connections", self.inbound.len() - 1)));
        }
        self.check_peer(&peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(&peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => {
                if let ConnectedPoint::Listener { send_back_addr, .. } = endpoint {
                    // Normally placed when it was let in; this covers an
                    // inbound connection this behaviour never saw.
                    if !self.inbound.contains_key(&connection_id) {
                        let ip = ip_of(send_back_addr);
                        if let Some(ip) = ip {
                            *self.per_ip.entry(ip).or_default() += 1;
                        }
                        self.inbound.insert(connection_id, ip);
                    }
                }
                self.per_peer
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(ip) = self.inbound.remove(&connection_id) {
                    self.release_ip(ip);
                }
                if let Some(set) = self.per_peer.get_mut(&peer_id) {
                    set.remove(&connection_id);
                    if set.is_empty() {
                        self.per_peer.remove(&peer_id);
                    }
                }
            }
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                let ip = self.pending.remove(&connection_id);
                let ip = ip.or_else(|| self.inbound.remove(&connection_id));
                if let Some(ip) = ip {
                    self.release_ip(ip);
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/4001").parse().unwrap()
    }

    #[test]
    fn one_address_gets_at_most_its_share_of_connections() {
        let refused = Arc::new(AtomicU64::new(0));
        let mut l = Limits::new(
            ConnLimits {
                per_ip: 2,
                ..Default::default()
            },
            refused.clone(),
        );
        let local = addr("10.0.0.1");
        let mut open = Vec::new();
        for _ in 0..2 {
            let id = ConnectionId::new_unchecked(open.len());
            l.handle_pending_inbound_connection(id, &local, &addr("10.0.0.9"))
                .unwrap();
            let peer = PeerId::random();
            l.handle_established_inbound_connection(id, peer, &local, &addr("10.0.0.9"))
                .unwrap();
            let endpoint = ConnectedPoint::Listener {
                local_addr: local.clone(),
                send_back_addr: addr("10.0.0.9"),
            };
            l.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id: peer,
                connection_id: id,
                endpoint: &endpoint,
                failed_addresses: &[],
                other_established: 0,
            }));
            open.push((peer, id, endpoint));
        }
        let third = ConnectionId::new_unchecked(9);
        assert!(l
            .handle_pending_inbound_connection(third, &local, &addr("10.0.0.9"))
            .is_err());
        assert_eq!(refused.load(Ordering::Relaxed), 1);
        // Another address is still welcome; and after a close, this one.
        assert!(l
            .handle_pending_inbound_connection(third, &local, &addr("10.0.0.8"))
            .is_ok());
        let (peer, id, endpoint) = open.pop().unwrap();
        l.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: peer,
            connection_id: id,
            endpoint: &endpoint,
            cause: None,
            remaining_established: 0,
        }));
        assert!(l
            .handle_pending_inbound_connection(
                ConnectionId::new_unchecked(10),
                &local,
                &addr("10.0.0.9")
            )
            .is_ok());
    }

    #[test]
    fn a_burst_of_handshakes_from_one_address_is_cut_off_before_they_finish() {
        let refused = Arc::new(AtomicU64::new(0));
        let mut l = Limits::new(
            ConnLimits {
                per_ip: 3,
                ..Default::default()
            },
            refused.clone(),
        );
        let local = addr("10.0.0.1");
        let let_in: Vec<bool> = (0..10)
            .map(|i| {
                l.handle_pending_inbound_connection(
                    ConnectionId::new_unchecked(i),
                    &local,
                    &addr("10.0.0.9"),
                )
                .is_ok()
            })
            .collect();
        assert_eq!(let_in.iter().filter(|x| **x).count(), 3);
        // A handshake that fails gives its place back.
        l.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
            local_addr: &local,
            send_back_addr: &addr("10.0.0.9"),
            error: &libp2p::swarm::ListenError::Aborted,
            connection_id: ConnectionId::new_unchecked(0),
            peer_id: None,
        }));
        assert!(l
            .handle_pending_inbound_connection(
                ConnectionId::new_unchecked(20),
                &local,
                &addr("10.0.0.9")
            )
            .is_ok());
    }
}
