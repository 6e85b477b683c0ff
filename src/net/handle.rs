//! [`NodeHandle`]: starting a node and everything callers ask of it (requests
//! to peers, the peer table, dials and DHT lookups, counters), sent to the
//! swarm task as commands with a oneshot reply where an answer is due.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use libp2p::kad;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};

use super::proto::{Capacity, Request, Response};
use crate::fragstore::{FragmentStore, RootOutcome};

use super::driver::{collect_expired, keep_book};
use super::serve::{INBOUND_QUEUE, INBOUND_WORKERS};
use super::swarm::{build_swarm, default_listen, load_identity, restore};
use super::{
    addrbook, codec, Command, Driver, NetError, NodeConfig, NodeCounters, NodeHandle, Shared,
    COMMAND_QUEUE, DIAL_AT_START,
};

impl NodeHandle {
    /// Starts a node on the current tokio runtime; returns once it listens.
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<NodeHandle> {
        let (key, frags) = open_node_dir(&cfg)?;
        let peer_id = key.public().to_peer_id();
        let mdns_on = cfg.mdns;
        let counters = NodeCounters::default();
        let codec = codec::Codec {
            rejected: counters.malformed.clone(),
            ..Default::default()
        };
        let limits = super::limits::Limits::new(cfg.conn_limits, counters.conns_refused.clone());
        let mut swarm = build_swarm(key, mdns_on, codec, limits)?;
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
        let book = restore(&mut swarm, &frags, &cfg.dir)?;
        let recent = book.recent(DIAL_AT_START);
        let (listen_tx, listen_rx) = watch::channel(Vec::new());
        let shared = Arc::new(Shared::new(peer_id, frags, counters, book, &cfg, listen_tx));
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
        tokio::spawn(collect_expired(
            shared_frags,
            handle.cmd.downgrade(),
            cfg.gc_interval,
        ));
        tokio::spawn(keep_book(shared_book, cfg.book_every));
        for addr in &cfg.peers {
            handle.dial(addr.clone());
        }
        wait_listening(listen_rx, listen.len()).await?;
        Ok(handle)
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
    pub(super) fn command(&self, cmd: Command) {
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

    /// Peers in the address book, and how many of them are not connected.
    pub fn known_peers(&self) -> (u64, u64) {
        let peers = self.shared.peer_table();
        let book = self.shared.book();
        let away = book
            .entries()
            .filter(|(p, _)| !peers.get(p).is_some_and(|i| i.connected()))
            .count();
        (book.len() as u64, away as u64)
    }

    /// Counts each known peer's uptime now (the node also does every
    /// `book_every`); the simulator calls it after each step of its clock.
    pub fn observe_peers(&self) {
        super::driver::observe_connected(&self.shared);
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
    pub(super) async fn send_request(
        &self,
        peer: PeerId,
        req: Request,
    ) -> Result<Response, NetError> {
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

    pub fn capacity(&self) -> Capacity {
        self.shared.frags.capacity()
    }

    pub fn fragment_count(&self) -> u64 {
        self.shared.frags.count()
    }

    /// Fragments this node deleted because their lease ran out, since it
    /// started.
    pub fn expired_fragments(&self) -> u64 {
        self.shared.frags.expired_count()
    }

    /// Deletes the fragments whose lease ran out now (the node also does
    /// every `gc_interval`); returns how many.
    pub fn expire_now(&self) -> Result<usize, String> {
        self.shared.frags.expire().map_err(|e| e.to_string())
    }

    /// Which of `ids` this node stores.
    pub fn holds(&self, ids: &[crate::coder::FragmentId]) -> Result<Vec<bool>, String> {
        self.shared.frags.has(ids).map_err(|e| e.to_string())
    }

    /// Root records kept for vaults.
    pub fn root_count(&self) -> u64 {
        self.shared.frags.root_count()
    }

    pub fn counters(&self) -> &NodeCounters {
        &self.shared.counters
    }

    /// Keeps a root record on this node (checked like any peer's).
    pub(super) fn keep_own_root(
        &self,
        key: &[u8; 32],
        record: &[u8],
    ) -> Result<RootOutcome, String> {
        let out = self
            .shared
            .frags
            .put_root(key, record, crate::fragstore::RootFrom::Own)
            .map_err(|e| e.to_string())?;
        if out == RootOutcome::Stored {
            let r = kad::Record::new(kad::RecordKey::new(key), record.to_vec());
            self.command(Command::KadKeep(r));
        }
        Ok(out)
    }

    /// Publishes a root record in the DHT (the peers closest to its key
    /// keep it). Only valid records leave (or enter this node's store).
    pub(super) async fn kad_put(&self, key: &[u8; 32], value: Vec<u8>) -> Result<(), String> {
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
    pub(super) fn kad_get(
        &self,
        key: &[u8; 32],
    ) -> impl std::future::Future<Output = Vec<Vec<u8>>> {
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

/// Opens a node's data dir: its identity and its fragment store.
pub(super) fn open_node_dir(
    cfg: &NodeConfig,
) -> anyhow::Result<(libp2p::identity::Keypair, Arc<FragmentStore>)> {
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;
    let key = load_identity(&cfg.dir)?;
    let mut store =
        FragmentStore::open_with_clock(&cfg.dir, cfg.donate, cfg.grace, cfg.clock.clone())
            .with_context(|| format!("opening the fragment store in {}", cfg.dir.display()))?;
    if let Some(pool) = cfg.grace_pool {
        store = store.with_grace_pool(pool);
    }
    Ok((key, Arc::new(store)))
}

impl Shared {
    /// A node's state, before anything is connected.
    pub(super) fn new(
        peer_id: PeerId,
        frags: Arc<FragmentStore>,
        counters: NodeCounters,
        book: addrbook::AddressBook,
        cfg: &NodeConfig,
        listen: watch::Sender<Vec<Multiaddr>>,
    ) -> Shared {
        Shared {
            peer_id,
            peers: RwLock::new(HashMap::new()),
            listen,
            frags,
            counters,
            credits: RwLock::new(HashMap::new()),
            book: std::sync::Mutex::new(book),
            clock: cfg.clock.clone(),
            fault: cfg.fault,
            inbound: Arc::new(tokio::sync::Semaphore::new(INBOUND_WORKERS)),
            admitted: Arc::new(tokio::sync::Semaphore::new(INBOUND_WORKERS + INBOUND_QUEUE)),
            gates: Default::default(),
        }
    }
}

/// Waits until `listeners` listeners reported an address (or failed); an
/// error if none did within 10 s, or the node stopped.
async fn wait_listening(
    mut listen_rx: watch::Receiver<Vec<Multiaddr>>,
    listeners: usize,
) -> anyhow::Result<()> {
    // Wait until every listener reported an address (or failed).
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        if listen_rx.borrow().len() >= listeners {
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
    Ok(())
}
