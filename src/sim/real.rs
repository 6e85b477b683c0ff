//! `drizzle simulate --real`: a few real nodes (the real fragment store
//! with its lease collection, the real answers to requests and the real
//! address books, joined by the in-process network of
//! [`crate::net::local`]), a real vault with real bytes and the real
//! maintenance code ([`Remote::maintain`]: renewals, cancels, audits, lazy
//! repair), all in this process under one [`SimClock`] that moves in
//! five-minute steps. Maintenance reaches the nodes through
//! [`crate::net::Network`], as it reaches libp2p peers in the daemon.
//!
//! Churn follows the same inputs as the model: each node's sessions come
//! from its class (up and down times drawn with the class's availability
//! and session length), departures wipe a node's disk and bring a fresh
//! identity in its place, and the owner's vault is mounted only during the
//! online part of each period (its node stops while unmounted, so it
//! watches nobody then). A node that goes down is stopped; one that comes
//! back starts again with its old store.
//!
//! What the model cannot check, this does: at the end every node comes
//! back, every object is read and compared byte for byte, every placed
//! fragment is looked for in its holder's store, and fragments nobody's
//! placement names are counted as leftovers. The repair rate limit is in
//! real seconds. Not modelled here:
//! subnet outages and `repair_delay` (repairs take what they take); the
//! report's repair latency is the configured window for unknown peers,
//! not a measurement.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{exp, poisson99, wilson99, Change, DayPoint, Decision, Report, SimConfig, Trace};
use crate::crypto::{ObjectId, VaultKeys};
use crate::maint::{Clock, SimClock};
use crate::net::local::{LocalNet, LocalNode};
use crate::net::{Network, NodeConfig};
use crate::remote::{Remote, RemoteConfig};
use crate::vault::{Kind, Vault, VaultOptions, ROOT_INO};

/// Most nodes `--real` runs (each is a real node in this process).
pub const MAX_NODES: u32 = 32;
/// Most objects (files) `--real` writes.
pub const MAX_OBJECTS: u32 = 512;
/// Largest object `--real` writes.
pub const MAX_OBJECT_BYTES: u64 = 4 << 20;
/// Simulated seconds per step (the nodes count uptime at most this much
/// at once).
const STEP: u64 = 300;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;
/// Where the simulated clock starts.
const START: u64 = 1_800_000_000;

/// One storage node of the run and its churn.
struct Peer {
    class: usize,
    dir: PathBuf,
    node: Option<LocalNode>,
    up: bool,
    next_flip: u64,
    departs_at: u64,
    /// Fragments its earlier runs deleted at lease expiry.
    expired: u64,
    /// Fragment bytes its earlier runs stored.
    received: u64,
    /// Its peer id bytes, once started.
    id: Option<Vec<u8>>,
}

/// The owner's mount: the vault, its node and maintenance.
struct Mount {
    /// Maintenance's own runtime: dropping it ends every task of the mount.
    rt: tokio::runtime::Runtime,
    vault: Arc<Vault>,
    vnode: LocalNode,
    remote: Arc<Remote>,
}

struct World {
    cfg: SimConfig,
    net: Arc<LocalNet>,
    clock: Arc<SimClock>,
    rng: StdRng,
    dir: PathBuf,
    peers: Vec<Peer>,
    mount: Option<Mount>,
    /// Generation counter for departed nodes' successors.
    generation: u32,
    departures: u64,
    /// Lease expiries on nodes that have since departed.
    expired_departed: u64,
    /// Fragment bytes stored by nodes that have since departed.
    received_departed: u64,
    /// Fragment bytes the vault's peers acknowledged, over its mounts.
    sent: u64,
    repairs: u64,
    rebuilt: u64,
    repair_bytes: u64,
    /// Repair bytes at the last day point.
    series_bytes: u64,
    read_hits: u64,
    read_samples: u64,
    series: Vec<DayPoint>,
    /// With `record_decisions`: the node changes, the slot of every
    /// identity that ran, each data object's number, and the repairs.
    trace: Trace,
    slot_of: HashMap<Vec<u8>, u32>,
    object_index: HashMap<ObjectId, u32>,
    decisions: Vec<Decision>,
}

/// Checks what `--real` can run.
pub fn validate(cfg: &SimConfig) -> Result<(), String> {
    cfg.validate()?;
    if cfg.nodes > MAX_NODES {
        return Err(format!("--real runs at most {MAX_NODES} nodes"));
    }
    if cfg.objects == 0 || cfg.objects > MAX_OBJECTS {
        return Err(format!("--real writes 1 to {MAX_OBJECTS} objects"));
    }
    if cfg.object_bytes > MAX_OBJECT_BYTES {
        return Err(format!(
            "--real objects are at most {MAX_OBJECT_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Runs `cfg` with real nodes whose data lives under `dir`, calling
/// `progress` with each simulated day.
pub fn run(cfg: &SimConfig, dir: &Path, mut progress: impl FnMut(u32)) -> Result<Report, String> {
    validate(cfg)?;
    let mut w = World::new(cfg.clone(), dir)?;
    w.upload()?;
    let end = START + (cfg.days * DAY as f64) as u64;
    let mut t = START;
    let mut day = 0;
    while t < end {
        t += STEP;
        w.clock.set(t);
        // Mounts start a step and unmounts end one, so the vault watches
        // the nodes over whole steps: what it saw over the last five
        // minutes (and the nodes' lease collection), then this step's
        // changes, then maintenance.
        if w.online(t) && w.mount.is_none() {
            w.mount()?;
        }
        w.net.tick();
        w.churn(t)?;
        w.owner(t)?;
        if (t - START) % HOUR == 0 {
            w.hourly();
        }
        if (t - START) % DAY == 0 {
            day += 1;
            w.day_point(day);
            progress(day);
        }
    }
    w.finish()
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}

/// The content of object `i` (the same for the same seed).
fn content(seed: u64, i: u32, len: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut v = vec![0u8; len as usize];
    rng.fill(&mut v[..]);
    v
}

fn name(i: u32) -> Vec<u8> {
    format!("object-{i:05}").into_bytes()
}

impl World {
    fn new(cfg: SimConfig, dir: &Path) -> Result<World, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut w = World {
            rng: StdRng::seed_from_u64(cfg.seed),
            net: LocalNet::new(),
            clock: SimClock::new(START),
            dir: dir.to_path_buf(),
            peers: Vec::new(),
            mount: None,
            generation: 0,
            departures: 0,
            expired_departed: 0,
            received_departed: 0,
            sent: 0,
            repairs: 0,
            rebuilt: 0,
            repair_bytes: 0,
            series_bytes: 0,
            read_hits: 0,
            read_samples: 0,
            series: Vec::new(),
            trace: Trace::default(),
            slot_of: HashMap::new(),
            object_index: HashMap::new(),
            decisions: Vec::new(),
            cfg,
        };
        let total: f64 = w.cfg.classes.iter().map(|c| c.share).sum();
        for i in 0..w.cfg.nodes {
            let mut acc = 0.0;
            let pos = (i as f64 + 0.5) / w.cfg.nodes as f64 * total;
            let class = (0..w.cfg.classes.len())
                .find(|c| {
                    acc += w.cfg.classes[*c].share;
                    pos <= acc
                })
                .unwrap_or(w.cfg.classes.len() - 1);
            let p = w.fresh_peer(class);
            w.peers.push(p);
        }
        for i in 0..w.peers.len() {
            w.start(i)?;
        }
        Ok(w)
    }

    /// A peer of `class` that has not started yet, with its first session
    /// and its departure drawn.
    fn fresh_peer(&mut self, class: usize) -> Peer {
        self.generation += 1;
        let c = self.cfg.classes[class].clone();
        let rate = c.departures_per_month / (30.0 * DAY as f64);
        let departs_at = if rate > 0.0 {
            self.clock.now() + exp(&mut self.rng, 1.0 / rate)
        } else {
            u64::MAX
        };
        Peer {
            class,
            dir: self.dir.join(format!("node-{}", self.generation)),
            node: None,
            up: true,
            next_flip: u64::MAX,
            departs_at,
            expired: 0,
            received: 0,
            id: None,
        }
    }

    /// Starts peer `i` (with its old store).
    fn start(&mut self, i: usize) -> Result<(), String> {
        let mut cfg = NodeConfig::new(self.peers[i].dir.clone(), self.donation());
        cfg.clock = self.clock.clone();
        let started = Instant::now();
        // A stopped node lets go of its store as its requests end.
        let node = loop {
            match self.net.join(&cfg) {
                Ok(n) => break n,
                Err(_) if started.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("starting node {i}: {e:#}")),
            }
        };
        self.peers[i].id = Some(node.peer_id().to_bytes());
        self.slot_of.insert(node.peer_id().to_bytes(), i as u32);
        self.peers[i].node = Some(node);
        self.peers[i].up = true;
        Ok(())
    }

    /// Notes a change of slot `i` in the trace (with `record_decisions`).
    fn note(&mut self, t: u64, i: usize, change: Change) {
        if self.cfg.record_decisions {
            self.trace.events.push(super::TraceEvent {
                time: t - START,
                node: i as u32,
                change,
            });
        }
    }

    fn stop(&mut self, i: usize) {
        if let Some(n) = self.peers[i].node.take() {
            self.peers[i].expired += n.expired_fragments();
            self.peers[i].received += n.counters().bytes_in.load(Ordering::Relaxed);
            n.stop();
        }
        self.peers[i].up = false;
    }

    fn donation(&self) -> u64 {
        let c = &self.cfg;
        let need = c.objects as f64 * c.object_bytes as f64 * c.n as f64 / c.k as f64;
        ((c.space_factor * need / c.nodes as f64) as u64).max(64 << 20)
    }
}

mod run;
