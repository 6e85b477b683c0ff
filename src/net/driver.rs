//! The swarm task: one loop owns the swarm and handles commands from
//! [`NodeHandle`](super::NodeHandle)s, swarm and behaviour events (peers,
//! Kademlia queries, fragment protocol answers) and the capacity refresh;
//! plus the node's background chores (address book, expired fragments).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::store::RecordStore;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self};
use libp2p::swarm::SwarmEvent;
use libp2p::PeerId;
use libp2p::{identify, kad, mdns, ping};

use super::proto::{Request, Response, PROTOCOL};
use crate::fragstore::{FragmentStore, RootFrom, RootOutcome};
use crate::store::StoreError;

use super::{
    addrbook, split_peer_addr, BehaviourEvent, Command, Driver, KadPending, NetError, PeerInfo,
    Pending, Shared, CAPACITY_REFRESH,
};

/// Counts every known peer's uptime and writes the address book, every
/// `every` (15 s) while it changes, and once more when the node stops.
pub(super) async fn keep_book(shared: std::sync::Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        observe_connected(&s);
        let r =
            tokio::task::spawn_blocking(move || addrbook::AddressBook::save_shared(&s.book)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!("cannot write the address book: {e}");
        }
    }
}

/// Counts every known peer as up or away since the last count, by the
/// node's clock.
pub(super) fn observe_connected(s: &Shared) {
    let connected: std::collections::HashSet<PeerId> = s
        .peers
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, i)| i.connected())
        .map(|(p, _)| *p)
        .collect();
    let now = s.clock.now();
    s.book().observe(now, &connected);
}

/// Deletes fragments whose lease ran out and root records nobody offered
/// again for months, every `every`, until the node's store is gone.
pub(super) async fn collect_expired(
    frags: std::sync::Weak<FragmentStore>,
    cmd: tokio::sync::mpsc::WeakSender<Command>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(f) = frags.upgrade() else {
            return;
        };
        let r = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((f.expire()?, f.expire_roots()?))
        });
        match r.await {
            Ok(Ok((n, roots))) => {
                if n > 0 {
                    tracing::info!("deleted {n} fragments whose lease ran out");
                }
                if !roots.is_empty() {
                    tracing::info!(
                        "dropped {} root records not offered again for months",
                        roots.len()
                    );
                }
                for key in roots {
                    let Some(tx) = cmd.upgrade() else { return };
                    let _ = tx.send(Command::KadForget(key)).await;
                }
            }
            Ok(Err(e)) => tracing::error!("deleting expired fragments: {e}"),
            Err(_) => {}
        }
    }
}

impl Driver {
    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(CAPACITY_REFRESH);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Command::Stop) | None => break,
                    Some(c) => self.on_command(c),
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        for (_, p) in self.pending.drain() {
            if let Pending::Caller(tx) = p {
                let _ = tx.send(Err(NetError::Stopped));
            }
        }
        if let Err(e) = addrbook::AddressBook::save_shared(&self.shared.book) {
            tracing::warn!("cannot write the address book: {e}");
        }
        tracing::debug!("node stopped");
    }

    fn peers(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<PeerId, PeerInfo>> {
        self.shared.peers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn on_tick(&mut self) {
        let connected: Vec<PeerId> = self
            .peers()
            .iter()
            .filter(|(_, p)| p.connected() && p.storage)
            .map(|(id, _)| *id)
            .collect();
        if connected.is_empty() {
            for addr in self.bootstrap.clone() {
                let _ = self.swarm.dial(addr);
            }
        }
        // Small networks: look for new peers every tick, so nodes that join
        // later (repair targets) are found within seconds, not minutes.
        if connected.len() < 50 {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        for peer in connected {
            self.ask_capacity(&peer);
        }
    }

    /// Dials `peer` at its addresses from the address book; false if none
    /// is known.
    pub(super) fn dial_known(&mut self, peer: PeerId) -> bool {
        let addrs = self.shared.book().addrs(&peer);
        if addrs.is_empty() {
            return false;
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, "cannot dial: {e}");
        }
        true
    }

    /// Asks a peer how much it has free (the answer updates the table).
    fn ask_capacity(&mut self, peer: &PeerId) {
        let id = self
            .swarm
            .behaviour_mut()
            .frag
            .send_request(peer, Request::Capacity);
        self.pending.insert(id, Pending::Capacity);
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Request { peer, req, reply } => {
                if !self.swarm.is_connected(&peer) {
                    self.dial_known(peer);
                }
                let id = self.swarm.behaviour_mut().frag.send_request(&peer, req);
                self.pending.insert(id, Pending::Caller(reply));
            }
            Command::Respond { channel, resp } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .frag
                    .send_response(channel, resp)
                    .is_err()
                {
                    tracing::debug!("a peer went away before its answer was sent");
                }
            }
            Command::Dial(addr) => {
                let (plain, id) = split_peer_addr(&addr);
                if let Some(id) = id {
                    self.swarm.behaviour_mut().kad.add_address(&id, plain);
                }
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!("cannot dial {addr}: {e}");
                }
            }
            Command::Bootstrap => {
                let _ = self.swarm.behaviour_mut().kad.bootstrap();
            }
            Command::Find(peer) => {
                if !self.swarm.is_connected(&peer) && !self.dial_known(peer) {
                    self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                }
            }
            Command::KadForget(key) => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .remove(&kad::RecordKey::new(&key));
            }
            Command::KadKeep(mut r) => {
                r.expires = None;
                if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(r) {
                    tracing::warn!("cannot keep a root record in the DHT store: {e}");
                }
            }
            Command::KadPut { record, reply } => {
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, kad::Quorum::One)
                {
                    Ok(q) => {
                        self.kad_pending.insert(q, KadPending::Put(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Command::KadGet { key, reply } => {
                let q = self.swarm.behaviour_mut().kad.get_record(key);
                self.kad_pending
                    .insert(q, KadPending::Get(reply, Vec::new()));
            }
            Command::Stop => {}
        }
    }

    fn on_kad_query(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        match (self.kad_pending.get_mut(&id), result) {
            (
                Some(KadPending::Get(_, found)),
                kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(r))),
            ) => found.push(r.record.value),
            (Some(KadPending::Put(_)), kad::QueryResult::PutRecord(r)) => {
                if let Some(KadPending::Put(tx)) = self.kad_pending.remove(&id) {
                    let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
                }
                return;
            }
            _ => {}
        }
        if last {
            match self.kad_pending.remove(&id) {
                Some(KadPending::Get(tx, found)) => {
                    let _ = tx.send(found);
                }
                Some(KadPending::Put(tx)) => {
                    let _ = tx.send(Err("the DHT query ended without a result".into()));
                }
                None => {}
            }
        }
    }

    /// A peer asks this node to keep a record: only valid root records that
    /// are newer than the one held, within the peer's share, are kept (in
    /// the node's store, then in the DHT store). Admitted like a request.
    fn on_kad_put(&mut self, source: PeerId, record: kad::Record) {
        let Ok(key) = <[u8; 32]>::try_from(record.key.as_ref()) else {
            tracing::debug!("ignored a DHT record with a foreign key");
            return;
        };
        let shared = self.shared.clone();
        let Some(permits) = shared.admit(source, 1.0) else {
            tracing::debug!(%source, "ignored a DHT record: too much inbound work");
            return;
        };
        let handle = self.handle.clone();
        tokio::task::spawn_blocking(move || {
            let from = RootFrom::Peer {
                id: &source.to_bytes(),
                gives: shared.gives(&source),
            };
            let out = shared.frags.put_root(&key, &record.value, from);
            drop(permits);
            match out {
                Ok(RootOutcome::Stored) => {
                    let _ = handle.cmd.blocking_send(Command::KadKeep(record));
                }
                Ok(RootOutcome::Same) => {}
                Ok(RootOutcome::Refused(why)) => {
                    tracing::debug!(%source, "refused a DHT record: {why}")
                }
                Err(e) => tracing::error!("storing a root record: {e}"),
            }
        });
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with(Protocol::P2p(self.shared.peer_id));
                tracing::info!("listening on {full}");
                self.shared.listen.send_modify(|l| l.push(full));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                {
                    let mut book = self.shared.book();
                    match &endpoint {
                        libp2p::core::ConnectedPoint::Dialer { address, .. } => {
                            book.note_addr(peer_id, address, self.shared.clock.now())
                        }
                        _ => book.note_seen(peer_id, self.shared.clock.now()),
                    }
                }
                let ip = super::limits::ip_of(endpoint.get_remote_address());
                let first = self.shared.connected(peer_id, ip, endpoint.is_dialer());
                if first {
                    tracing::debug!(%peer_id, remote = %endpoint.get_remote_address(), dialer = endpoint.is_dialer(), "connected");
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } => {
                self.shared.disconnected(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, "dial failed: {error}");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let storage = info.protocols.contains(&PROTOCOL);
                {
                    let mut book = self.shared.book();
                    for addr in info.listen_addrs.iter().take(addrbook::MAX_ADDRS) {
                        book.note_claimed(peer_id, addr);
                    }
                }
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                let newly = {
                    let mut peers = self.peers();
                    let p = peers.entry(peer_id).or_insert_with(PeerInfo::new);
                    let newly = storage && !p.storage;
                    p.storage = storage;
                    newly
                };
                if newly {
                    self.ask_capacity(&peer_id);
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. }) => {
                let known = self.peers().get(&peer).is_some_and(|p| p.connected());
                if !known && peer != self.shared.peer_id {
                    let _ = self.swarm.dial(peer);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                for (peer, addr) in list {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    if !self.peers().get(&peer).is_some_and(|p| p.connected()) {
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                if let Some(p) = self.peers().get_mut(&peer) {
                    p.rtt = Some(rtt);
                    p.last_seen = Instant::now();
                }
            }
            BehaviourEvent::Frag(ev) => self.on_frag_event(ev),
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => self.on_kad_query(id, result, step.last),
            BehaviourEvent::Kad(kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            }) => self.on_kad_put(source, record),
            _ => {}
        }
    }

    fn on_frag_event(&mut self, ev: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.serve(peer, request, channel),
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match self.pending.remove(&request_id) {
                Some(Pending::Caller(tx)) => {
                    self.shared
                        .book()
                        .note_answered(peer, self.shared.clock.now());
                    let _ = tx.send(Ok(response));
                }
                Some(Pending::Capacity) => {
                    if let Response::Capacity(c) = response {
                        if let Some(p) = self.peers().get_mut(&peer) {
                            p.capacity = Some(c);
                        }
                    }
                }
                None => {}
            },
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(Pending::Caller(tx)) = self.pending.remove(&request_id) {
                    use request_response::OutboundFailure as F;
                    let e = match error {
                        F::Timeout => NetError::Timeout(peer),
                        F::DialFailure | F::ConnectionClosed | F::UnsupportedProtocols => {
                            NetError::Unreachable(peer, error.to_string())
                        }
                        F::Io(e) => NetError::Protocol(peer, e.to_string()),
                    };
                    let _ = tx.send(Err(e));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "inbound request failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }
}
