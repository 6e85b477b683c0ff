//! The bridge between a vault and the network: the background uploader
//! (encode, place, PUT, commit the placement), fetching objects from peers
//! for reads, redundancy health, and waiting for a full sync.
//!
//! Data flow of an upload: `Uploads` queue -> local sealed bytes ->
//! `coder::encode` (blocking pool) -> `placement::choose` -> parallel PUTs ->
//! `Vault::commit_placement`. At most [`UPLOAD_PARALLEL`] objects are in
//! flight, which bounds memory (about 11 MiB each for a full chunk at 10 of
//! 16). A read of an object that is not on local disk asks the holders of
//! the source fragments first, hedges slow peers with extra requests,
//! checks every fragment against its id before decoding, and strikes peers
//! that return bad data.
//!
//! This file holds the `Remote` handle, its configuration and start; each
//! background duty has its own module: `upload`, `leases` (renew, cancel),
//! `repair`, `audit`, `health` (status and `sync` waiting) and `fetch`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::coder::{self, FragmentId};
use crate::crypto::ObjectId;
use crate::maint::{self, Clock, GoneWindow, Policy};
use crate::net::{Network, PeerId};
use crate::vault::Vault;
use fetch::NetFetcher;

mod audit;
mod fetch;
mod health;
mod leases;
mod repair;
mod upload;

pub use fetch::fetch_object;
pub use health::{Health, SyncProgress};
pub use repair::RepairRecord;

/// How long a read waits for the holders of its data to be found.
pub const DEFAULT_READ_WAIT: Duration = Duration::from_secs(30);
/// Objects encoded and sent at once.
pub const UPLOAD_PARALLEL: usize = 8;
/// A PUT that takes longer is retried elsewhere.
const PUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Leases asked for when none is configured: 30 days, renewed every 10.
pub const DEFAULT_LEASE_SECS: u32 = 30 * 24 * 3600;

#[derive(Default)]
struct UploadState {
    last_error: Option<String>,
    uploaded_bytes: u64,
    /// Fragment bytes peers said they stored (uploads and repairs).
    stored_bytes: u64,
    in_flight: HashSet<ObjectId>,
    /// Objects repaired since start.
    repaired: u64,
    /// Bytes repair fetched and uploaded since start.
    repair_bytes: u64,
    /// Fresh fragments repair made since start.
    rebuilt: u64,
    /// Crowded objects spread onto more peers since start.
    spread: u64,
    /// Fragments their holders lost (failed audits, unrenewable leases):
    /// repair drops them from their placements.
    missing: HashSet<(Vec<u8>, FragmentId)>,
    /// The last reason a peer gave for refusing a fragment.
    last_refusal: Option<String>,
    /// (when, uploaded_bytes) over the last seconds, for the rate.
    samples: std::collections::VecDeque<(Instant, u64)>,
}

/// Uploads as `status` shows them.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct UploadActivity {
    pub uploads_in_flight: u64,
    /// Objects whose lost fragments were rebuilt since the mount.
    pub repaired_objects: u64,
    /// Crowded objects spread onto more peers since the mount.
    #[serde(default)]
    pub spread_objects: u64,
    /// Bytes repair fetched and uploaded since the mount.
    #[serde(default)]
    pub repair_bytes: u64,
    /// Fresh fragments repair made since the mount.
    #[serde(default)]
    pub fragments_rebuilt: u64,
    /// Fragment bytes peers acknowledged storing since the mount.
    #[serde(default)]
    pub fragment_bytes_stored: u64,
    /// Bytes per second over the last ten seconds.
    pub upload_rate: f64,
}

/// Publishing as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MetaStatus {
    /// Sequence number of the root this device published or adopted last.
    pub root_seq: u64,
    /// When (unix seconds).
    pub root_time: u64,
    /// Local metadata changes not yet on the network.
    pub unpublished_changes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_error: Option<String>,
}

/// The network side of a mounted vault.
pub struct Remote {
    pub(crate) vault: Arc<Vault>,
    pub(crate) node: Arc<dyn Network>,
    pub(crate) k: u32,
    pub(crate) n: u32,
    /// The vault's Argon2 parameters (recorded in its root record).
    pub(crate) kdf: crate::crypto::KdfParams,
    /// One publish of the metadata at a time.
    pub(crate) publish_lock: tokio::sync::Mutex<()>,
    pub(crate) meta: Mutex<MetaStatus>,
    pub(crate) publish_every: Duration,
    state: Mutex<UploadState>,
    wake: tokio::sync::Notify,
    /// Asks the repair loop for a pass now.
    repair_wake: tokio::sync::Notify,
    started: Instant,
    /// Wall-clock time of the start, by `clock`.
    started_at: u64,
    /// Maintenance ages by this clock (the node's).
    pub(crate) clock: Arc<dyn Clock>,
    /// Holders past their gone window that were dialed, and when.
    dialed: Mutex<HashMap<Vec<u8>, u64>>,
    /// When audits last ran (0: not since the start).
    last_audit: Mutex<u64>,
    /// The renewal pass's memory, for [`maintain`](Self::maintain).
    renew_state: tokio::sync::Mutex<leases::RenewState>,
    /// Where the next cancel pass of [`maintain`](Self::maintain) goes on.
    cancel_after: tokio::sync::Mutex<Option<Vec<u8>>>,
    /// Uploads and repairs hold it shared from their first PUT to their
    /// commit; a cancel holds it alone from its last check that its
    /// fragments are not placed again to the holder's answer. So a cancel
    /// never lands on a fragment that the same content, uploaded anew,
    /// placed on the same holder meanwhile.
    placing: tokio::sync::RwLock<()>,
    /// Repairs carried out, when [`RemoteConfig::record_repairs`] is set
    /// (at most [`repair::MAX_RECORDS`]).
    repair_log: Mutex<Vec<RepairRecord>>,
    lease_secs: u32,
    cfg: RemoteConfig,
}

/// Tunables of the network side of a vault.
#[derive(Clone, Copy, Debug)]
pub struct RemoteConfig {
    pub k: u32,
    pub n: u32,
    /// Lease time asked of peers (renewed every third of it).
    pub lease_secs: u32,
    /// How long a holder may be away before it stops counting (bounds of
    /// a window that follows each peer's uptime history).
    pub window: GoneWindow,
    /// Repair an object when fewer of its fragments count (default:
    /// [`maint::policy::default_threshold`]).
    pub repair_threshold: Option<u32>,
    /// Audit budget: the fraction of what a holder stores for us that it
    /// reads to answer audits, per day.
    pub audit_fraction: f64,
    /// How often placements are checked (and audits sampled).
    pub repair_every: Duration,
    /// Bytes per second repair may fetch and upload, on average.
    pub repair_rate: u64,
    /// The vault's Argon2 parameters (recorded in its root record).
    pub kdf: crate::crypto::KdfParams,
    /// Changed metadata is published in the background this often.
    pub publish_every: Duration,
    /// How long a read of data that is only on peers waits for its holders
    /// to be found (after a restart) before it fails.
    pub read_wait: Duration,
    /// How peers are grouped into failure domains for placement.
    pub domains: crate::placement::DomainRule,
    /// Run renewal, cancelling and repair on timers of their own (the
    /// daemon). Off, the caller runs them with
    /// [`Remote::maintain`] as its clock moves (the simulator).
    pub background: bool,
    /// Keep a record of every repair ([`Remote::take_repairs`]; the
    /// simulator's traces).
    pub record_repairs: bool,
}

impl RemoteConfig {
    pub fn new(k: u32, n: u32) -> Self {
        RemoteConfig {
            k,
            n,
            lease_secs: DEFAULT_LEASE_SECS,
            window: GoneWindow::DEFAULT,
            repair_threshold: None,
            audit_fraction: maint::audit::DEFAULT_FRACTION,
            repair_every: Duration::from_secs(60),
            repair_rate: 32 << 20,
            kdf: crate::crypto::KdfParams::default_strong(),
            publish_every: Duration::from_secs(30),
            read_wait: DEFAULT_READ_WAIT,
            domains: crate::placement::DomainRule::default(),
            background: true,
            record_repairs: false,
        }
    }
}

fn peer_bytes(p: &PeerId) -> Vec<u8> {
    p.to_bytes()
}

impl Remote {
    /// Connects a vault to a running node: reads can now fetch from peers
    /// and the uploader starts on the current runtime.
    pub fn start(vault: Arc<Vault>, node: impl Network, k: u32, n: u32) -> Arc<Remote> {
        Self::start_with(vault, node, RemoteConfig::new(k, n))
    }

    /// Like [`start`](Self::start), with leases and repair tuned.
    pub fn start_with(vault: Arc<Vault>, node: impl Network, cfg: RemoteConfig) -> Arc<Remote> {
        let node: Arc<dyn Network> = Arc::new(node);
        let RemoteConfig {
            k, n, lease_secs, ..
        } = cfg;
        let remote = Arc::new(Remote {
            vault: vault.clone(),
            node: node.clone(),
            k,
            n,
            kdf: cfg.kdf,
            publish_every: cfg.publish_every,
            publish_lock: tokio::sync::Mutex::new(()),
            meta: Mutex::new(Default::default()),
            state: Mutex::new(UploadState::default()),
            wake: tokio::sync::Notify::new(),
            repair_wake: tokio::sync::Notify::new(),
            started: Instant::now(),
            started_at: node.clock().now(),
            clock: node.clock(),
            dialed: Mutex::new(HashMap::new()),
            last_audit: Mutex::new(0),
            renew_state: Default::default(),
            cancel_after: Default::default(),
            placing: Default::default(),
            repair_log: Default::default(),
            // Nodes grant at most their maximum: renewal follows what they grant.
            lease_secs: lease_secs.clamp(1, crate::fragstore::MAX_LEASE_SECS),
            cfg,
        });
        // What this vault already stores on each peer counts in the ledger
        // (a scan of every placement: off the async workers).
        let (v, n2) = (vault.clone(), node.clone());
        tokio::task::spawn_blocking(move || match v.all_placements() {
            Ok(all) => {
                for (_, p) in all {
                    let each = coder::Layout::new(p.len as usize, p.k)
                        .map_or(0, |l| l.fragment_len() as u64);
                    for f in &p.fragments {
                        if let Ok(peer) = PeerId::from_bytes(&f.peer) {
                            n2.add_credit(&peer, each);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("reading placements for the ledger: {e}"),
        });
        vault.set_fetcher(Arc::new(NetFetcher::new(node, cfg.read_wait)));
        tokio::spawn(remote.clone().upload_loop());
        if cfg.background {
            tokio::spawn(remote.clone().renew_loop());
            tokio::spawn(remote.clone().cancel_loop());
            tokio::spawn(remote.clone().repair_loop());
        }
        tokio::spawn(remote.clone().publish_loop());
        remote
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UploadState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the uploader (new objects were committed).
    pub fn kick(&self) {
        self.wake.notify_one();
    }

    pub fn node(&self) -> &dyn Network {
        &*self.node
    }

    /// What the uploader is doing now.
    pub fn activity(&self) -> UploadActivity {
        let st = self.state();
        let rate = match (st.samples.front(), st.samples.back()) {
            (Some((t0, b0)), Some((_, b1))) if t0.elapsed() <= Duration::from_secs(10) => {
                // Bytes since the oldest sample, over the time since it.
                let span = t0.elapsed().as_secs_f64().max(1.0);
                (b1 - b0) as f64 / span
            }
            _ => 0.0,
        };
        UploadActivity {
            uploads_in_flight: st.in_flight.len() as u64,
            repaired_objects: st.repaired,
            spread_objects: st.spread,
            repair_bytes: st.repair_bytes,
            fragments_rebuilt: st.rebuilt,
            fragment_bytes_stored: st.stored_bytes,
            upload_rate: rate,
        }
    }

    /// The last upload failure, if uploads are failing.
    pub fn last_error(&self) -> Option<String> {
        if self.vault.upload_backlog().objects == 0 {
            return None;
        }
        self.state().last_error.clone()
    }

    pub fn redundancy(&self) -> (u32, u32) {
        (self.k, self.n)
    }

    /// The decisions of repair, from the configuration.
    pub fn policy(&self) -> Policy {
        let mut p = Policy::new(self.k, self.n);
        if let Some(r) = self.cfg.repair_threshold {
            p.r = r;
        }
        p.window = self.cfg.window;
        p
    }

    /// One round of maintenance now, at the clock's time: renew whatever
    /// is due, cancel released leases, and a repair pass with its sample
    /// of audits. For callers that move the clock themselves (the
    /// simulator, with [`RemoteConfig::background`] off); the daemon's
    /// loops run the same passes on timers.
    pub async fn maintain(&self) {
        let period = (self.lease_secs as u64 / 3).max(1);
        let mut st = self.renew_state.lock().await;
        if let Err(e) = self.renew_due(period, &mut st).await {
            tracing::warn!("renewing leases: {e}");
        }
        drop(st);
        let mut after = self.cancel_after.lock().await;
        match self.cancel_pass(after.take()).await {
            Ok(next) => *after = next,
            Err(e) => tracing::warn!("cancelling released leases: {e}"),
        }
        drop(after);
        self.repair_pass(true).await;
    }

    /// Asks the repair loop for a pass now (without audits).
    pub fn kick_repair(&self) {
        self.repair_wake.notify_one();
    }
}
