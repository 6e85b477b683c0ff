//! The libp2p node: transports (TCP and QUIC, Noise, Yamux), identify,
//! Kademlia, mDNS, ping, and the fragment protocol ([`proto`]).
//!
//! One task owns the swarm; everything else talks to it through a
//! [`NodeHandle`] (requests to peers, the peer table, listen addresses).
//! Inbound fragment requests are answered from the node's
//! [`FragmentStore`] on the blocking pool, never on the swarm task.
//!
//! Architecture invariant: the only module that imports libp2p (besides its
//! codec in `proto`). No vault types: the node is the same for a mounted
//! vault and a contribution-only `drizzle node`.
//!
//! This file holds the types the parts share; `swarm` builds the swarm,
//! `handle` is the [`NodeHandle`] API (and start), `driver` the swarm task
//! and `serve` the answers to inbound requests.

pub mod addrbook;
mod codec;
mod driver;
mod handle;
mod limits;
pub mod local;
mod network;
pub mod proto;
mod serve;
mod swarm;

pub use limits::ConnLimits;
pub use network::Network;
pub use swarm::default_listen;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour};
use libp2p::{identify, kad, mdns, ping, StreamProtocol, Swarm};
pub use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::fragstore::FragmentStore;
use crate::maint::Clock;
use proto::{Capacity, Request, Response};

const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/drizzle/kad/1");
const IDENTIFY_PROTOCOL: &str = "/drizzle/id/1";
/// The starter grace: what a peer may store on a node before it must give
/// about as much as it takes.
pub use crate::quota::DEFAULT_GRACE;
/// How often connected peers are asked for their free capacity.
const CAPACITY_REFRESH: Duration = Duration::from_secs(15);

/// Errors talking to a peer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    #[error("peer {0} did not answer in time")]
    Timeout(PeerId),
    #[error("peer {0} is unreachable: {1}")]
    Unreachable(PeerId, String),
    #[error("peer {0} broke the protocol: {1}")]
    Protocol(PeerId, String),
    #[error("the network node has stopped")]
    Stopped,
}

/// Misbehaviour on purpose, for tests of hostile peers (`drizzle node
/// --misbehave MODE`, hidden): the node speaks the real protocol and lies.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Flips a byte in every fragment served (and in audit answers).
    Corrupt,
    /// Serves fragments cut short.
    Truncate,
    /// Never answers GETs.
    Stall,
    /// Answers STORED to PUTs and keeps nothing.
    Drop,
    /// Keeps fragments but answers audits from zeros, as a node that
    /// dropped the bytes and fakes its answers.
    FakeAudit,
    /// Refuses about half of all requests, at random.
    Refuse,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "corrupt" => Fault::Corrupt,
            "truncate" => Fault::Truncate,
            "stall" => Fault::Stall,
            "drop" => Fault::Drop,
            "fake-audit" => Fault::FakeAudit,
            "refuse" => Fault::Refuse,
            _ => {
                return Err(format!(
                "unknown misbehaviour '{s}' (corrupt, truncate, stall, drop, fake-audit, refuse)"
            ))
            }
        })
    }
}

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Holds the node identity and the fragment database.
    pub dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    /// Bytes this node stores for others at most.
    pub donate: u64,
    /// What any peer may store here beyond what it stores for this node.
    pub grace: u64,
    /// What all peers together may store here beyond what they store for
    /// this node (`None`: a quarter of the donation, at least one grace;
    /// a contribution node gives its whole donation).
    pub grace_pool: Option<u64>,
    /// How often expired fragments are deleted.
    pub gc_interval: Duration,
    /// How often peers' uptime is counted (and the address book written).
    pub book_every: Duration,
    pub mdns: bool,
    /// Connections kept in all, per peer and per address.
    pub conn_limits: ConnLimits,
    /// Address for the Prometheus endpoint (served by the daemon, not here).
    pub metrics: Option<String>,
    /// Leases and peer uptime age by this clock (the system's, except in
    /// tests and the simulator).
    pub clock: Arc<dyn Clock>,
    #[doc(hidden)]
    pub fault: Option<Fault>,
}

impl NodeConfig {
    pub fn new(dir: impl Into<PathBuf>, donate: u64) -> Self {
        NodeConfig {
            dir: dir.into(),
            listen: Vec::new(),
            peers: Vec::new(),
            donate,
            grace: DEFAULT_GRACE,
            grace_pool: None,
            gc_interval: Duration::from_secs(600),
            book_every: Duration::from_secs(15),
            mdns: false,
            conn_limits: ConnLimits::default(),
            metrics: None,
            clock: crate::maint::clock::system(),
            fault: None,
        }
    }
}

/// What the node knows about a peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub connections: u32,
    /// Speaks the fragment protocol (from identify).
    pub storage: bool,
    pub rtt: Option<Duration>,
    pub capacity: Option<Capacity>,
    pub last_seen: Instant,
    /// Times it returned bad data or failed a request.
    pub strikes: u32,
    /// Its IP address (as dialed, else as seen), for failure domains.
    pub addr: Option<std::net::IpAddr>,
    /// Why it was last struck.
    pub last_strike: Option<String>,
}

impl PeerInfo {
    fn new() -> Self {
        PeerInfo {
            connections: 0,
            storage: false,
            rtt: None,
            capacity: None,
            last_seen: Instant::now(),
            strikes: 0,
            addr: None,
            last_strike: None,
        }
    }
    pub fn connected(&self) -> bool {
        self.connections > 0
    }
}

/// Counters for status and metrics.
#[derive(Default)]
pub struct NodeCounters {
    pub fragments_stored: AtomicU64,
    pub fragments_served: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub errors: AtomicU64,
    /// Requests dropped as malformed or oversized.
    pub malformed: Arc<AtomicU64>,
    /// Requests answered `Busy` (too much inbound work queued).
    pub busy: AtomicU64,
    /// Requests answered `Busy` because their peer was over its share
    /// (requests in flight or its rate).
    pub throttled: AtomicU64,
    /// Connections refused by the connection limits.
    pub conns_refused: Arc<AtomicU64>,
}

struct Shared {
    peer_id: PeerId,
    peers: RwLock<HashMap<PeerId, PeerInfo>>,
    listen: watch::Sender<Vec<Multiaddr>>,
    frags: Arc<FragmentStore>,
    counters: NodeCounters,
    /// Bytes this node's vault stores on each peer (the ledger's "gives").
    credits: RwLock<HashMap<PeerId, u64>>,
    /// Peers met before, with their addresses (see [`addrbook`]).
    book: std::sync::Mutex<addrbook::AddressBook>,
    clock: Arc<dyn Clock>,
    fault: Option<Fault>,
    /// Inbound requests working on the blocking pool.
    inbound: Arc<tokio::sync::Semaphore>,
    /// Inbound requests admitted: working or waiting for a worker permit.
    admitted: Arc<tokio::sync::Semaphore>,
    /// Each connected peer's share of inbound work (see `serve`).
    gates: std::sync::Mutex<HashMap<PeerId, serve::Gate>>,
}

impl Shared {
    /// What this node's vault stores on `peer` (the ledger's "gives").
    fn gives(&self, peer: &PeerId) -> u64 {
        self.credits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .copied()
            .unwrap_or(0)
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, serve::Gate>> {
        self.gates.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn book(&self) -> std::sync::MutexGuard<'_, addrbook::AddressBook> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Peers from the address book dialed at start.
const DIAL_AT_START: usize = 32;
/// Commands queued for the swarm task before senders wait.
const COMMAND_QUEUE: usize = 1024;

enum Command {
    Request {
        peer: PeerId,
        req: Request,
        reply: oneshot::Sender<Result<Response, NetError>>,
    },
    Respond {
        channel: ResponseChannel<Response>,
        resp: Response,
    },
    Dial(Multiaddr),
    /// Look for more peers now (a Kademlia bootstrap).
    Bootstrap,
    /// Reach a peer that is not connected: at its known addresses, else
    /// through a DHT lookup of its id.
    Find(PeerId),
    /// Keep a validated root record in the DHT store (answers GET_VALUE).
    KadKeep(kad::Record),
    /// Drop an expired root record from the DHT store.
    KadForget([u8; 32]),
    /// Publish a root record in the DHT (to the closest peers of its key).
    KadPut {
        record: kad::Record,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Collect every copy of a record the DHT returns.
    KadGet {
        key: kad::RecordKey,
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    },
    Stop,
}

/// A DHT query waiting for its end.
enum KadPending {
    Put(oneshot::Sender<Result<(), String>>),
    Get(oneshot::Sender<Vec<Vec<u8>>>, Vec<Vec<u8>>),
}

/// A running node; cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<Shared>,
    cmd: mpsc::Sender<Command>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: limits::Limits,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    frag: request_response::Behaviour<codec::Codec>,
}

/// Splits `/…/p2p/ID` into the address and the id.
pub fn split_peer_addr(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut a = addr.clone();
    match a.pop() {
        Some(Protocol::P2p(id)) => (a, Some(id)),
        _ => (addr.clone(), None),
    }
}

/// The swarm task's state (see `driver`).
struct Driver {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    cmd_rx: mpsc::Receiver<Command>,
    handle: NodeHandle,
    pending: HashMap<OutboundRequestId, Pending>,
    kad_pending: HashMap<kad::QueryId, KadPending>,
    bootstrap: Vec<Multiaddr>,
}

/// Who waits for an outbound request's answer.
enum Pending {
    Caller(oneshot::Sender<Result<Response, NetError>>),
    /// Our own capacity refresh.
    Capacity,
}
