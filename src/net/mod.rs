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

pub mod addrbook;
pub mod proto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use libp2p::kad::store::RecordStore;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour, SwarmEvent};
use libp2p::{identify, identity, kad, mdns, ping, StreamProtocol, Swarm};
pub use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::fragstore::{FragmentStore, PutOutcome, RootOutcome};
use crate::maint::{Clock, Uptime};
use proto::{Capacity, Request, Response, PROTOCOL};

const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/drizzle/kad/1");
const IDENTIFY_PROTOCOL: &str = "/drizzle/id/1";
/// The starter grace: what a peer may store on a node before it must give
/// about as much as it takes.
pub const DEFAULT_GRACE: u64 = 1 << 30;
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

/// Misbehaviour for fault-injection tests: how this node answers GETs.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Flips a byte in every fragment served.
    Corrupt,
    /// Serves fragments cut short.
    Truncate,
    /// Never answers GETs.
    Stall,
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
    /// How often expired fragments are deleted.
    pub gc_interval: Duration,
    /// How often peers' uptime is counted (and the address book written).
    pub book_every: Duration,
    pub mdns: bool,
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
            gc_interval: Duration::from_secs(600),
            book_every: Duration::from_secs(15),
            mdns: false,
            metrics: None,
            clock: crate::maint::clock::system(),
            fault: None,
        }
    }
}

/// Listen addresses used when none are given: a free port on all interfaces.
pub fn default_listen() -> Vec<Multiaddr> {
    vec![
        "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
        "/ip4/0.0.0.0/udp/0/quic-v1"
            .parse()
            .expect("valid multiaddr"),
    ]
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
    /// Inbound requests working or waiting for a permit.
    inbound_load: AtomicU64,
}

impl Shared {
    fn book(&self) -> std::sync::MutexGuard<'_, addrbook::AddressBook> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Peers from the address book dialed at start.
const DIAL_AT_START: usize = 32;
/// Inbound requests served at once (each on a blocking thread: disk IO).
const INBOUND_WORKERS: usize = 16;
/// Inbound requests that may wait for a worker; more are answered `Busy`.
const INBOUND_QUEUE: u64 = 256;
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
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    frag: request_response::Behaviour<proto::Codec>,
}

fn load_identity(dir: &Path) -> anyhow::Result<identity::Keypair> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("identity");
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("node identity {} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .context("encoding node identity")?;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Splits `/…/p2p/ID` into the address and the id.
pub fn split_peer_addr(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut a = addr.clone();
    match a.pop() {
        Some(Protocol::P2p(id)) => (a, Some(id)),
        _ => (addr.clone(), None),
    }
}

impl NodeHandle {
    /// Starts a node on the current tokio runtime; returns once it listens.
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<NodeHandle> {
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("creating {}", cfg.dir.display()))?;
        let key = load_identity(&cfg.dir)?;
        let frags = Arc::new(
            FragmentStore::open_with_clock(&cfg.dir, cfg.donate, cfg.grace, cfg.clock.clone())
                .with_context(|| format!("opening the fragment store in {}", cfg.dir.display()))?,
        );
        let peer_id = key.public().to_peer_id();
        let mdns_on = cfg.mdns;
        let counters = NodeCounters::default();
        let codec = proto::Codec {
            rejected: counters.malformed.clone(),
        };
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .context("setting up TCP")?
            .with_quic()
            .with_behaviour(|key| {
                let id = key.public().to_peer_id();
                let mut kcfg = kad::Config::new(KAD_PROTOCOL);
                kcfg.set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
                // Root records are checked before they are kept (Kademlia
                // checks nothing) and never expire (DESIGN.md section 4).
                kcfg.set_record_filtering(kad::StoreInserts::FilterBoth);
                kcfg.set_record_ttl(None);
                kcfg.set_publication_interval(None);
                let store = kad::store::MemoryStore::with_config(
                    id,
                    kad::store::MemoryStoreConfig {
                        max_records: 1 << 20,
                        max_value_bytes: crate::root::MAX_ROOT,
                        ..Default::default()
                    },
                );
                let mut kad = kad::Behaviour::with_config(id, store, kcfg);
                // Loopback and LAN nodes never get a confirmed external
                // address; without server mode nobody would answer queries.
                kad.set_mode(Some(kad::Mode::Server));
                let mdns = if mdns_on {
                    Some(mdns::tokio::Behaviour::new(mdns::Config::default(), id)?)
                } else {
                    None
                };
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                    identify: identify::Behaviour::new(identify::Config::new(
                        IDENTIFY_PROTOCOL.into(),
                        key.public(),
                    )),
                    kad,
                    ping: ping::Behaviour::new(ping::Config::new()),
                    mdns: mdns.into(),
                    frag: request_response::Behaviour::with_codec(
                        codec,
                        [(PROTOCOL, ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(60))
                            .with_max_concurrent_streams(512),
                    ),
                })
            })
            .map_err(|e| anyhow::anyhow!("setting up the node: {e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
            .build();
        let listen = if cfg.listen.is_empty() {
            default_listen()
        } else {
            cfg.listen.clone()
        };
        for addr in &listen {
            swarm
                .listen_on(addr.clone())
                .with_context(|| format!("cannot listen on {addr}"))?;
        }
        // Root records kept across restarts go back into the DHT store.
        for (k, v) in frags.roots().context("reading root records")? {
            let mut r = kad::Record::new(kad::RecordKey::new(&k), v);
            r.expires = None;
            let _ = swarm.behaviour_mut().kad.store_mut().put(r);
        }
        // Peers met before: their addresses go to Kademlia and the swarm, and
        // the most recent are dialed now (holders are reachable at once
        // after a restart, before any DHT query).
        let book = addrbook::AddressBook::load(&cfg.dir);
        for (peer, e) in book.entries() {
            for a in e.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                swarm.behaviour_mut().kad.add_address(peer, a.clone());
                swarm.add_peer_address(*peer, a);
            }
        }
        let recent = book.recent(DIAL_AT_START);
        let (listen_tx, mut listen_rx) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            peer_id,
            peers: RwLock::new(HashMap::new()),
            listen: listen_tx,
            frags,
            counters,
            credits: RwLock::new(HashMap::new()),
            book: std::sync::Mutex::new(book),
            clock: cfg.clock.clone(),
            fault: cfg.fault,
            inbound: Arc::new(tokio::sync::Semaphore::new(INBOUND_WORKERS)),
            inbound_load: AtomicU64::new(0),
        });
        let shared_frags = Arc::downgrade(&shared.frags);
        let shared_book = Arc::downgrade(&shared);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let handle = NodeHandle {
            shared: shared.clone(),
            cmd: cmd_tx,
        };
        let mut driver = Driver {
            swarm,
            shared,
            cmd_rx,
            handle: handle.clone(),
            pending: HashMap::new(),
            kad_pending: HashMap::new(),
            bootstrap: cfg.peers.clone(),
        };
        for peer in recent {
            driver.dial_known(peer);
        }
        tokio::spawn(driver.run());
        tokio::spawn(collect_expired(shared_frags, cfg.gc_interval));
        tokio::spawn(keep_book(shared_book, cfg.book_every));
        for addr in &cfg.peers {
            handle.dial(addr.clone());
        }
        // Wait until every listener reported an address (or failed).
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            if listen_rx.borrow().len() >= listen.len() {
                break;
            }
            tokio::select! {
                r = listen_rx.changed() => if r.is_err() { anyhow::bail!("the node stopped while starting") },
                _ = &mut deadline => {
                    if listen_rx.borrow().is_empty() {
                        anyhow::bail!("the node could not listen on any address");
                    }
                    break;
                }
            }
        }
        Ok(handle)
    }

    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// Addresses others can dial, with the `/p2p/ID` suffix.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared.listen.borrow().clone()
    }

    pub fn dial(&self, addr: Multiaddr) {
        self.command(Command::Dial(addr));
    }

    /// Queues a command for the swarm task from a caller that cannot wait:
    /// if the queue is full, a task (or, outside the runtime, this thread)
    /// waits for room. Only local callers use this; work that the network
    /// starts waits for room on its own blocking thread.
    fn command(&self, cmd: Command) {
        match self.cmd.try_send(cmd) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let tx = self.cmd.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move { tx.send(cmd).await });
                    }
                    Err(_) => {
                        let _ = tx.blocking_send(cmd);
                    }
                }
            }
        }
    }

    /// Starts reaching `peer` if it is not connected: its known addresses,
    /// else a DHT lookup of its id (a holder after a restart).
    pub fn find_peer(&self, peer: PeerId) {
        if !self.is_connected(&peer) {
            self.command(Command::Find(peer));
        }
    }

    /// Looks for more peers now (new nodes are otherwise found within a
    /// capacity tick, 15 s).
    pub fn look_for_peers(&self) {
        self.command(Command::Bootstrap);
    }

    /// Peers in the address book, and how many of them are not connected.
    pub fn known_peers(&self) -> (u64, u64) {
        let peers = self.peers();
        let book = self.shared.book();
        let away = book
            .entries()
            .filter(|(p, _)| !peers.get(p).is_some_and(|i| i.connected()))
            .count();
        (book.len() as u64, away as u64)
    }

    /// How `peer` has behaved while this node watched (see
    /// [`crate::maint::history`]), if it is in the address book.
    pub fn uptime(&self, peer: &PeerId) -> Option<Uptime> {
        self.shared.book().uptime(peer).cloned()
    }

    /// The clock this node ages leases and uptime by.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.shared.clock.clone()
    }

    /// Stops the node; the address book is written first (the runtime may
    /// end before the swarm task sees the stop).
    pub fn stop(&self) {
        if let Err(e) = addrbook::AddressBook::save_shared(&self.shared.book) {
            tracing::warn!("cannot write the address book: {e}");
        }
        self.command(Command::Stop);
    }

    /// Sends a request and waits for the answer (the protocol's own timeout
    /// is 60 s; wrap in a shorter one where latency matters).
    pub async fn request(&self, peer: PeerId, req: Request) -> Result<Response, NetError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Request {
                peer,
                req,
                reply: tx,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// A snapshot of the peer table.
    pub fn peers(&self) -> HashMap<PeerId, PeerInfo> {
        self.shared
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Connected peers that store fragments.
    pub fn storage_peers(&self) -> Vec<(PeerId, PeerInfo)> {
        self.peers()
            .into_iter()
            .filter(|(_, p)| p.connected() && p.storage)
            .collect()
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.shared
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|p| p.connected())
    }

    /// Notes a peer that returned bad data or failed; placement and reads
    /// prefer peers with fewer strikes.
    pub fn strike(&self, peer: &PeerId, why: &str) {
        tracing::warn!(%peer, "bad peer: {why}");
        let mut peers = self.shared.peers.write().unwrap_or_else(|p| p.into_inner());
        peers.entry(*peer).or_insert_with(PeerInfo::new).strikes += 1;
    }

    /// Updates what we believe a peer has free (after a PUT or a refusal).
    pub fn note_capacity(&self, peer: &PeerId, f: impl FnOnce(&mut Capacity)) {
        let mut peers = self.shared.peers.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get_mut(peer).and_then(|p| p.capacity.as_mut()) {
            f(c);
        }
    }

    pub fn capacity(&self) -> Capacity {
        self.shared.frags.capacity()
    }

    /// Records that this node's vault stored `bytes` more on `peer`.
    pub fn add_credit(&self, peer: &PeerId, bytes: u64) {
        let mut c = self
            .shared
            .credits
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *c.entry(*peer).or_default() += bytes;
    }

    pub fn fragment_count(&self) -> u64 {
        self.shared.frags.count()
    }

    /// Root records kept for vaults.
    pub fn root_count(&self) -> u64 {
        self.shared.frags.root_count()
    }

    pub fn counters(&self) -> &NodeCounters {
        &self.shared.counters
    }

    /// Keeps a root record on this node (checked like any peer's).
    pub fn keep_root(&self, key: &[u8; 32], record: &[u8]) -> Result<RootOutcome, String> {
        let out = self
            .shared
            .frags
            .put_root(key, record)
            .map_err(|e| e.to_string())?;
        if out == RootOutcome::Stored {
            let r = kad::Record::new(kad::RecordKey::new(key), record.to_vec());
            self.command(Command::KadKeep(r));
        }
        Ok(out)
    }

    /// Publishes a root record in the DHT (the peers closest to its key
    /// keep it). Only valid records leave (or enter this node's store).
    pub async fn dht_put(&self, key: &[u8; 32], value: Vec<u8>) -> Result<(), String> {
        crate::root::RootRecord::check(&value, key).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        let mut record = kad::Record::new(kad::RecordKey::new(key), value);
        record.expires = None;
        self.cmd
            .send(Command::KadPut { record, reply: tx })
            .await
            .map_err(|_| NetError::Stopped.to_string())?;
        rx.await.map_err(|_| NetError::Stopped.to_string())?
    }

    /// Every copy of a record the DHT returns for `key` (unchecked). The
    /// query starts at once; the future yields when it ends.
    pub fn dht_get(&self, key: &[u8; 32]) -> impl std::future::Future<Output = Vec<Vec<u8>>> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::KadGet {
            key: kad::RecordKey::new(key),
            reply: tx,
        };
        let tx = self.cmd.clone();
        let queued = match tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(cmd)) => Err(Some(cmd)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(None),
        };
        async move {
            match queued {
                Ok(()) => {}
                Err(Some(cmd)) => {
                    if tx.send(cmd).await.is_err() {
                        return Vec::new();
                    }
                }
                Err(None) => return Vec::new(),
            }
            rx.await.unwrap_or_default()
        }
    }
}

/// Counts every known peer's uptime and writes the address book, every
/// `every` (15 s) while it changes, and once more when the node stops.
async fn keep_book(shared: std::sync::Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else {
            return;
        };
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
        let r =
            tokio::task::spawn_blocking(move || addrbook::AddressBook::save_shared(&s.book)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!("cannot write the address book: {e}");
        }
    }
}

/// Deletes fragments whose lease ran out, every `every`, until the node's
/// store is gone.
async fn collect_expired(frags: std::sync::Weak<FragmentStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(f) = frags.upgrade() else {
            return;
        };
        match tokio::task::spawn_blocking(move || f.expire()).await {
            Ok(Ok(n)) if n > 0 => tracing::info!("deleted {n} fragments whose lease ran out"),
            Ok(Err(e)) => tracing::error!("deleting expired fragments: {e}"),
            _ => {}
        }
    }
}

struct Driver {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    cmd_rx: mpsc::Receiver<Command>,
    handle: NodeHandle,
    pending: HashMap<OutboundRequestId, Pending>,
    kad_pending: HashMap<kad::QueryId, KadPending>,
    bootstrap: Vec<Multiaddr>,
}

enum Pending {
    Caller(oneshot::Sender<Result<Response, NetError>>),
    /// Our own capacity refresh.
    Capacity,
}

impl Driver {
    async fn run(mut self) {
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
    fn dial_known(&mut self, peer: PeerId) -> bool {
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
    /// are newer than the one held are kept (in the node's store, then in
    /// the DHT store).
    fn on_kad_put(&mut self, record: kad::Record) {
        let Ok(key) = <[u8; 32]>::try_from(record.key.as_ref()) else {
            tracing::debug!("ignored a DHT record with a foreign key");
            return;
        };
        let shared = self.shared.clone();
        let handle = self.handle.clone();
        tokio::task::spawn_blocking(move || match shared.frags.put_root(&key, &record.value) {
            Ok(RootOutcome::Stored) => {
                let _ = handle.cmd.blocking_send(Command::KadKeep(record));
            }
            Ok(RootOutcome::Same) => {}
            Ok(RootOutcome::Refused(why)) => tracing::debug!("refused a DHT record: {why}"),
            Err(e) => tracing::error!("storing a root record: {e}"),
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
                let first = {
                    let mut peers = self.peers();
                    let p = peers.entry(peer_id).or_insert_with(PeerInfo::new);
                    p.connections += 1;
                    p.last_seen = Instant::now();
                    p.connections == 1
                };
                if first {
                    tracing::debug!(%peer_id, "connected");
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } => {
                let mut peers = self.peers();
                if let Some(p) = peers.get_mut(&peer_id) {
                    p.connections = p.connections.saturating_sub(1);
                    p.last_seen = Instant::now();
                }
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
                        record: Some(record),
                        ..
                    },
            }) => self.on_kad_put(record),
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

    /// Answers a request from the fragment store, off the swarm task.
    fn serve(&mut self, peer: PeerId, req: Request, channel: ResponseChannel<Response>) {
        let shared = self.shared.clone();
        let handle = self.handle.clone();
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        if shared.fault == Some(Fault::Stall) && matches!(req, Request::Get { .. }) {
            // Keep the channel alive (unanswered) until the peer gives up.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(120)).await;
                drop(channel);
            });
            return;
        }
        // Bounded: a few requests work (disk IO on the blocking pool), some
        // more wait their turn, the rest are told to come back later.
        if shared.inbound_load.fetch_add(1, Ordering::Relaxed)
            >= INBOUND_WORKERS as u64 + INBOUND_QUEUE
        {
            shared.inbound_load.fetch_sub(1, Ordering::Relaxed);
            shared.counters.busy.fetch_add(1, Ordering::Relaxed);
            let _ = self
                .swarm
                .behaviour_mut()
                .frag
                .send_response(channel, Response::Busy);
            return;
        }
        tokio::spawn(async move {
            let Ok(permit) = shared.inbound.clone().acquire_owned().await else {
                return;
            };
            tokio::task::spawn_blocking(move || {
                let resp = answer(&shared, &handle, peer, req);
                drop(permit);
                shared.inbound_load.fetch_sub(1, Ordering::Relaxed);
                let _ = handle.cmd.blocking_send(Command::Respond { channel, resp });
            });
        });
    }
}

/// The answer to one inbound request (on a blocking thread: disk IO).
fn answer(shared: &Shared, handle: &NodeHandle, peer: PeerId, req: Request) -> Response {
    let c = &shared.counters;
    match req {
        Request::Put { id, lease, data } => {
            let gives = shared
                .credits
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&peer)
                .copied()
                .unwrap_or(0);
            match shared
                .frags
                .put(&id, &data, &peer.to_bytes(), gives, &lease)
            {
                Ok(PutOutcome::Stored) => {
                    c.fragments_stored.fetch_add(1, Ordering::Relaxed);
                    c.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                    Response::Stored
                }
                Ok(PutOutcome::Refused(r)) => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, "refused a fragment: {r}");
                    Response::Refused(r)
                }
                Err(e) => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("fragment store: {e}");
                    Response::Failed(format!("storage error on the node: {e}"))
                }
            }
        }
        Request::Get { id } => match shared.frags.get(&id) {
            Ok(Some(mut data)) => {
                match shared.fault {
                    Some(Fault::Corrupt) if !data.is_empty() => {
                        let at = data.len() - 1;
                        data[at] ^= 1;
                    }
                    Some(Fault::Truncate) => data.truncate(data.len() / 2),
                    _ => {}
                }
                c.fragments_served.fetch_add(1, Ordering::Relaxed);
                c.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                Response::Fragment(data.into())
            }
            Ok(None) => Response::NotFound,
            Err(e) => Response::Failed(format!("storage error on the node: {e}")),
        },
        Request::Renew { secs, items } => match shared.frags.renew(&items, secs) {
            Ok(v) => Response::Has(v),
            Err(e) => Response::Failed(format!("storage error on the node: {e}")),
        },
        Request::Cancel { items } => match shared.frags.cancel(&items) {
            Ok(v) => Response::Has(v),
            Err(e) => Response::Failed(format!("storage error on the node: {e}")),
        },
        Request::Audit { id, start } => match shared.frags.get(&id) {
            Ok(Some(mut data)) => {
                if shared.fault == Some(Fault::Corrupt) && !data.is_empty() {
                    let at = (start as usize).min(data.len() - 1);
                    data[at] ^= 1;
                }
                Response::Proof(crate::maint::audit::prove(&data, start))
            }
            Ok(None) => Response::NotFound,
            Err(e) => Response::Failed(format!("storage error on the node: {e}")),
        },
        Request::Has { ids } => match shared.frags.has(&ids) {
            Ok(v) => Response::Has(v),
            Err(e) => Response::Failed(format!("storage error on the node: {e}")),
        },
        Request::Capacity => Response::Capacity(shared.frags.capacity()),
        Request::RootPut { key, record } => match shared.frags.put_root(&key, &record) {
            Ok(RootOutcome::Stored) => {
                let r = kad::Record::new(kad::RecordKey::new(&key), record);
                let _ = handle.cmd.blocking_send(Command::KadKeep(r));
                Response::Stored
            }
            Ok(RootOutcome::Same) => Response::Stored,
            Ok(RootOutcome::Refused(why)) => Response::Refused(why),
            Err(e) => Response::Failed(format!("storage error on the node: {e}")),
        },
        Request::RootGet { key } => match shared.frags.get_root(&key) {
            Ok(Some(r)) => Response::Root(r),
            Ok(None) => Response::NotFound,
            Err(e) => Response::Failed(format!("storage error on the node: {e}")),
        },
    }
}
