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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use crate::coder::{self, Decoder, Fragment, FragmentId, Layout};
use crate::crypto::ObjectId;
use crate::maint::{self, Clock, GoneWindow, Holder, Plan, Policy, Uptime};
use crate::net::proto::{LeaseTerms, Request, Response};
use crate::net::{NetError, NodeHandle, PeerId};
use crate::placement::{self, Candidate};
use crate::vault::records::{FragmentLoc, Placement};
use crate::vault::{FetchDone, Fetcher, Vault};

/// How long a read waits for the holders of its data to be found.
pub const DEFAULT_READ_WAIT: Duration = Duration::from_secs(30);
/// Objects encoded and sent at once.
pub const UPLOAD_PARALLEL: usize = 8;
/// A PUT that takes longer is retried elsewhere.
const PUT_TIMEOUT: Duration = Duration::from_secs(30);
/// A GET that takes longer counts as failed.
const GET_TIMEOUT: Duration = Duration::from_secs(20);
/// Without k fragments after this long, one more holder is asked.
const HEDGE_AFTER: Duration = Duration::from_millis(400);
/// `sync` looks this long for more peers when fewer than n are connected.
const PEER_SEARCH: Duration = Duration::from_secs(20);
/// `sync` gives up after this long without any upload progress.
const STALL: Duration = Duration::from_secs(30);
/// Attempts per fragment (the first peer, then others).
const PUT_ATTEMPTS: usize = 4;
/// At a mount, leases renewed longer ago than this (or half a renewal
/// period, if shorter) are renewed at once.
const MOUNT_RENEW_AGE: u64 = 600;
/// Leases asked for when none is configured: 30 days, renewed every 10.
pub const DEFAULT_LEASE_SECS: u32 = 30 * 24 * 3600;
/// Possession audits asked per pass at most (the budget decides how many
/// are due; this bounds one pass after a long absence).
const MAX_AUDITS_PER_PASS: usize = 256;
/// A holder whose lease renewal failed is tried again after this long.
const RENEW_RETRY: Duration = Duration::from_secs(300);
/// A holder past its gone window is dialed first, and judged gone only if
/// it is still unreachable this long after.
const DIAL_GRACE: u64 = 60;
/// Most leases renewed or cancelled in one request.
const LEASE_BATCH: usize = 1024;
/// After start, uploads wait this long for n peers to be discovered before
/// placing several fragments on one peer.
const DISCOVERY_GRACE: Duration = Duration::from_secs(10);

/// Redundancy of placed objects, judged by which holders are connected now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// All n fragments on n distinct connected peers.
    pub healthy: u64,
    /// Readable (at least k fragments reachable) but below full redundancy.
    pub degraded: u64,
    /// Fewer than k fragments reachable.
    pub lost: u64,
    /// Objects placed with several fragments on one peer.
    pub crowded: u64,
}

/// Progress of `sync`, sent to the client while it waits.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct SyncProgress {
    pub remaining_objects: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    /// Upload rate over the last seconds, bytes per second.
    pub rate: f64,
}

#[derive(Default)]
struct UploadState {
    last_error: Option<String>,
    uploaded_bytes: u64,
    in_flight: HashSet<ObjectId>,
    /// Objects repaired since start.
    repaired: u64,
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

/// What the renewal loop remembers between passes of one mount.
#[derive(Default)]
struct RenewState {
    /// Holders renewed since the mount.
    this_mount: HashSet<Vec<u8>>,
    /// Holders whose renewal failed, and when.
    failed: HashMap<Vec<u8>, Instant>,
    /// Holders not connected that were dialed, and when.
    dialed: HashMap<Vec<u8>, Instant>,
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
    /// Bytes per second over the last ten seconds.
    pub upload_rate: f64,
}

/// The network side of a mounted vault.
pub struct Remote {
    pub(crate) vault: Arc<Vault>,
    pub(crate) node: NodeHandle,
    pub(crate) k: u32,
    pub(crate) n: u32,
    /// The vault's Argon2 parameters (recorded in its root record).
    pub(crate) kdf: crate::crypto::KdfParams,
    /// One publish of the metadata at a time.
    pub(crate) publish_lock: tokio::sync::Mutex<()>,
    pub(crate) meta: Mutex<crate::metasync::MetaStatus>,
    pub(crate) publish_every: Duration,
    state: Mutex<UploadState>,
    wake: tokio::sync::Notify,
    /// Asks the repair loop for a pass now.
    repair_wake: tokio::sync::Notify,
    started: Instant,
    /// Wall-clock time of the start, by `clock`.
    started_at: u64,
    /// Maintenance ages by this clock (the node's).
    clock: Arc<dyn Clock>,
    /// Holders past their gone window that were dialed, and when.
    dialed: Mutex<HashMap<Vec<u8>, u64>>,
    /// When audits last ran (0: not since the start).
    last_audit: Mutex<u64>,
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
        }
    }
}

fn peer_bytes(p: &PeerId) -> Vec<u8> {
    p.to_bytes()
}

impl Remote {
    /// Connects a vault to a running node: reads can now fetch from peers
    /// and the uploader starts on the current runtime.
    pub fn start(vault: Arc<Vault>, node: NodeHandle, k: u32, n: u32) -> Arc<Remote> {
        Self::start_with(vault, node, RemoteConfig::new(k, n))
    }

    /// Like [`start`](Self::start), with leases and repair tuned.
    pub fn start_with(vault: Arc<Vault>, node: NodeHandle, cfg: RemoteConfig) -> Arc<Remote> {
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
        vault.set_fetcher(Arc::new(NetFetcher {
            node,
            rt: tokio::runtime::Handle::current(),
            wait: cfg.read_wait,
        }));
        tokio::spawn(remote.clone().upload_loop());
        tokio::spawn(remote.clone().renew_loop());
        tokio::spawn(remote.clone().cancel_loop());
        tokio::spawn(remote.clone().repair_loop());
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

    pub fn node(&self) -> &NodeHandle {
        &self.node
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

    async fn upload_loop(self: Arc<Self>) {
        let mut cursor: Option<ObjectId> = None;
        loop {
            let vault = self.vault.clone();
            let after = cursor;
            let batch = tokio::task::spawn_blocking(move || vault.upload_queue(after.as_ref(), 64))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("reading the upload queue: {e}");
                    self.idle(Duration::from_secs(5)).await;
                    continue;
                }
            };
            cursor = if batch.len() == 64 {
                batch.last().copied()
            } else {
                None
            };
            if batch.is_empty() {
                self.idle(Duration::from_secs(1)).await;
                continue;
            }
            let peers = self.node.storage_peers().len();
            if peers == 0 {
                self.state().last_error = Some("no storage peers are connected".into());
                self.idle(Duration::from_secs(1)).await;
                continue;
            }
            if peers < self.n as usize && self.started.elapsed() < DISCOVERY_GRACE {
                // Give Kademlia a moment to find more peers.
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            let results: Vec<Result<(), String>> = futures::stream::iter(batch)
                .map(|id| self.upload_one(id))
                .buffer_unordered(UPLOAD_PARALLEL)
                .collect()
                .await;
            let ok = results.iter().filter(|r| r.is_ok()).count();
            if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                let mut st = self.state();
                if st.last_error.as_deref() != Some(e) {
                    tracing::warn!("upload failed (will retry): {e}");
                }
                st.last_error = Some(e.clone());
            }
            if ok == 0 {
                self.idle(Duration::from_secs(2)).await;
            }
        }
    }

    async fn idle(&self, d: Duration) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    fn candidates(&self, exclude: &[PeerId]) -> Vec<Candidate<PeerId>> {
        self.node
            .storage_peers()
            .into_iter()
            .filter(|(id, _)| !exclude.contains(id))
            .map(|(peer, info)| Candidate {
                availability: self.node.uptime(&peer).map(|u| u.availability()),
                peer,
                available: info.capacity.map(|c| c.available),
                rtt: info.rtt,
                strikes: info.strikes,
            })
            .collect()
    }

    async fn upload_one(&self, id: ObjectId) -> Result<(), String> {
        if !self.state().in_flight.insert(id) {
            return Ok(());
        }
        let r = self.upload_inner(id).await;
        self.state().in_flight.remove(&id);
        r
    }

    async fn upload_inner(&self, id: ObjectId) -> Result<(), String> {
        let vault = self.vault.clone();
        let (k, n) = (self.k, self.n);
        let encoded = tokio::task::spawn_blocking(move || {
            let Some(bytes) = vault.local_object(&id).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let frags = coder::encode(&bytes, k, 0..n).map_err(|e| e.to_string())?;
            Ok::<_, String>(Some((bytes.len() as u64, frags)))
        })
        .await
        .map_err(|e| e.to_string())??;
        let Some((len, frags)) = encoded else {
            // Deleted since it was queued.
            return Ok(());
        };
        let frag_len = frags.first().map_or(0, |f| f.bytes.len() as u64);
        let cands = self.candidates(&[]);
        let peers = placement::choose(&cands, frags.len(), frag_len).ok_or_else(|| {
            if cands.is_empty() {
                "no storage peers are connected".to_string()
            } else {
                let why = self
                    .state()
                    .last_refusal
                    .clone()
                    .map(|r| format!("; last refusal: {r}"))
                    .unwrap_or_default();
                format!(
                    "every connected peer is full or refuses ({} peers, {} bytes needed per fragment){why}",
                    cands.len(),
                    frag_len
                )
            }
        })?;
        let puts = frags
            .into_iter()
            .zip(peers)
            .map(|(f, p)| self.put_fragment(f, p));
        let locs = futures::future::join_all(puts).await;
        let fragments = locs.into_iter().collect::<Result<Vec<_>, _>>()?;
        let placement = Placement {
            len,
            k,
            fragments,
            next_index: n,
        };
        let vault = self.vault.clone();
        tokio::task::spawn_blocking(move || vault.commit_placement(&id, &placement))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut st = self.state();
        st.uploaded_bytes += len;
        let sample = (Instant::now(), st.uploaded_bytes);
        st.samples.push_back(sample);
        while st
            .samples
            .front()
            .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(10))
        {
            st.samples.pop_front();
        }
        Ok(())
    }

    /// Stores one fragment, on `first` or, if it fails, on other peers.
    async fn put_fragment(&self, frag: Fragment, first: PeerId) -> Result<FragmentLoc, String> {
        let data = bytes::Bytes::from(frag.bytes);
        let mut tried = vec![];
        let mut peer = first;
        let mut last = String::new();
        for _ in 0..PUT_ATTEMPTS {
            tried.push(peer);
            let (renew, cancel) = self.vault.lease_secrets(&frag.id, &peer_bytes(&peer));
            let req = Request::Put {
                id: frag.id,
                lease: LeaseTerms::new(&renew, &cancel, self.lease_secs),
                data: data.clone(),
            };
            match tokio::time::timeout(PUT_TIMEOUT, self.node.request(peer, req)).await {
                Ok(Ok(Response::Stored)) => {
                    let len = data.len() as u64;
                    self.node.add_credit(&peer, len);
                    self.node
                        .note_capacity(&peer, |c| c.available = c.available.saturating_sub(len));
                    return Ok(FragmentLoc {
                        index: frag.index,
                        id: frag.id,
                        peer: peer_bytes(&peer),
                        proofs: Vec::new(),
                    });
                }
                Ok(Ok(Response::Busy)) => {
                    last = format!("peer {peer} was too busy to store a fragment");
                }
                Ok(Ok(Response::Refused(why))) => {
                    self.node.note_capacity(&peer, |c| c.available = 0);
                    last = format!("peer {peer} refused a fragment: {why}");
                    self.state().last_refusal = Some(last.clone());
                }
                Ok(Ok(other)) => {
                    self.node
                        .strike(&peer, &format!("unexpected answer to PUT: {other:?}"));
                    last = format!("peer {peer} answered PUT with {other:?}");
                }
                Ok(Err(e)) => {
                    if !matches!(e, NetError::Unreachable(..)) {
                        self.node.strike(&peer, &e.to_string());
                    }
                    last = e.to_string();
                }
                Err(_) => {
                    self.node.strike(&peer, "PUT timed out");
                    last = format!("peer {peer} did not store a fragment in time");
                }
            }
            let others = self.candidates(&tried);
            match placement::choose(&others, 1, data.len() as u64) {
                Some(p) => peer = p[0],
                None => match self.candidates(&[]).first() {
                    // Every peer was tried once: allow one that already holds
                    // another fragment of this object.
                    Some(c) if tried.len() < PUT_ATTEMPTS => peer = c.peer,
                    _ => break,
                },
            }
        }
        Err(last)
    }

    /// Keeps every fragment's lease alive. Each holder's last renewal is a
    /// wall-clock time kept in the vault, so a vault mounted a few minutes
    /// now and then (or a laptop that slept) renews whatever is due at once:
    /// at every mount, then whenever a holder's renewal comes due (a third
    /// of the lease after the last one). A holder that cannot be reached
    /// stays due and is tried again every few minutes.
    async fn renew_loop(self: Arc<Self>) {
        let lease = self.lease_secs as u64;
        let period = (lease / 3).max(1);
        // Short checks against the wall clock, never one long sleep:
        // tokio's timers stop while the machine is suspended.
        let check = Duration::from_secs(period.clamp(1, 60)).min(self.cfg.repair_every);
        let mut st = RenewState::default();
        loop {
            let waiting = match self.renew_due(period, &mut st).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!("renewing leases: {e}");
                    false
                }
            };
            // Holders due but not connected yet (just after a mount) are
            // tried again in a second, not a period later.
            let next = if waiting {
                check.min(Duration::from_secs(1))
            } else {
                check
            };
            tokio::time::sleep(next).await;
        }
    }

    /// One pass of [`renew_loop`](Self::renew_loop): renews the leases of
    /// every holder that is due. At a mount everything not renewed in the
    /// last few minutes is due (a vault mounted at least once per lease
    /// time, however briefly, keeps every lease); after that, a holder is
    /// due `period` after its last renewal (or when that renewal was for
    /// another lease time, or lies in the future: the clock went back).
    /// Holders not connected yet are dialed and tried again shortly (the
    /// result says whether any are waiting); a holder whose renewal failed
    /// is retried after [`RENEW_RETRY`].
    async fn renew_due(&self, period: u64, st: &mut RenewState) -> Result<bool, String> {
        let vault = self.vault.clone();
        let (all, mut renewed) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::vault::VaultError>((vault.all_placements()?, vault.lease_renewals()?))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let by_peer = group_by_peer(
            all.into_iter()
                .flat_map(|(_, p)| p.fragments)
                .map(|f| (f.peer, f.id)),
        );
        let before = renewed.len();
        renewed.retain(|p, _| by_peer.contains_key(p));
        let mut changed = renewed.len() != before;
        let now = self.clock.now();
        let lease = self.lease_secs;
        let mut waiting = false;
        for (peer_b, ids) in by_peer {
            let min_age = if st.this_mount.contains(&peer_b) {
                period
            } else {
                (period / 2).clamp(1, MOUNT_RENEW_AGE)
            };
            if !renewal_due(renewed.get(&peer_b), now, lease, min_age) {
                continue;
            }
            if st
                .failed
                .get(&peer_b)
                .is_some_and(|t| t.elapsed() < RENEW_RETRY)
            {
                continue;
            }
            let Ok(peer) = PeerId::from_bytes(&peer_b) else {
                continue;
            };
            if !self.node.is_connected(&peer) {
                if st
                    .dialed
                    .get(&peer_b)
                    .is_none_or(|t| t.elapsed() > RENEW_RETRY)
                {
                    st.dialed.insert(peer_b.clone(), Instant::now());
                    self.node.find_peer(peer);
                }
                waiting = true;
                continue;
            }
            match self.renew_on(peer, &peer_b, &ids).await {
                Ok(()) => {
                    tracing::info!(%peer, "renewed leases of {} fragments", ids.len());
                    st.failed.remove(&peer_b);
                    st.this_mount.insert(peer_b.clone());
                    renewed.insert(peer_b, crate::vault::Renewal { at: now, lease });
                    changed = true;
                }
                Err(e) => {
                    tracing::info!(%peer, "renewing leases failed (will retry): {e}");
                    st.failed.insert(peer_b, Instant::now());
                }
            }
        }
        if changed {
            let vault = self.vault.clone();
            tokio::task::spawn_blocking(move || vault.set_lease_renewals(&renewed))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok(waiting)
    }

    /// Renews the leases of `ids` on `peer`, in batches.
    async fn renew_on(
        &self,
        peer: PeerId,
        peer_b: &[u8],
        ids: &[FragmentId],
    ) -> Result<(), String> {
        for chunk in ids.chunks(LEASE_BATCH) {
            let items = chunk
                .iter()
                .map(|id| (*id, self.vault.lease_secrets(id, peer_b).0))
                .collect();
            let req = Request::Renew {
                secs: self.lease_secs,
                items,
            };
            match tokio::time::timeout(PUT_TIMEOUT, self.node.request(peer, req)).await {
                Ok(Ok(Response::Has(ok))) => {
                    let lost: Vec<(Vec<u8>, FragmentId)> = chunk
                        .iter()
                        .zip(ok.iter().chain(std::iter::repeat(&false)))
                        .filter(|(_, kept)| !**kept)
                        .map(|(id, _)| (peer_b.to_vec(), *id))
                        .collect();
                    if !lost.is_empty() {
                        // Repair drops and rebuilds these.
                        tracing::warn!(%peer, "{} leases could not be renewed (fragments gone)", lost.len());
                        self.state().missing.extend(lost);
                    }
                }
                Ok(Ok(other)) => return Err(format!("unexpected answer: {other:?}")),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("timed out".into()),
            }
        }
        Ok(())
    }

    /// Cancels the leases of fragments whose objects were deleted, so the
    /// space returns to the peers' donations.
    async fn cancel_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let vault = self.vault.clone();
            let Ok(Ok(items)) =
                tokio::task::spawn_blocking(move || vault.released(4 * LEASE_BATCH)).await
            else {
                continue;
            };
            if items.is_empty() {
                continue;
            }
            let by_peer = group_by_peer(items.into_iter().map(|(id, peer)| (peer, id)));
            for (peer_b, ids) in by_peer {
                let Ok(peer) = PeerId::from_bytes(&peer_b) else {
                    let junk: Vec<_> = ids.iter().map(|id| (*id, peer_b.clone())).collect();
                    let _ = self.vault.forget_released(&junk);
                    continue;
                };
                for chunk in ids.chunks(LEASE_BATCH) {
                    let items = chunk
                        .iter()
                        .map(|id| (*id, self.vault.lease_secrets(id, &peer_b).1))
                        .collect();
                    let req = Request::Cancel { items };
                    match tokio::time::timeout(PUT_TIMEOUT, self.node.request(peer, req)).await {
                        Ok(Ok(Response::Has(_))) => {
                            let done: Vec<_> =
                                chunk.iter().map(|id| (*id, peer_b.clone())).collect();
                            if let Err(e) = self.vault.forget_released(&done) {
                                tracing::warn!("forgetting cancelled leases: {e}");
                            }
                        }
                        // Unreachable: try again later (or the lease expires).
                        _ => break,
                    }
                }
            }
        }
    }

    /// How the holder of `f` stands (see [`crate::maint::policy`]; whether
    /// it lost this very fragment is the caller's check): up if connected;
    /// away within its gone window (which follows its uptime history); else
    /// gone, once a dial of its known addresses has had [`DIAL_GRACE`] to
    /// succeed.
    fn holder(
        &self,
        f: &FragmentLoc,
        peers: &HashMap<PeerId, crate::net::PeerInfo>,
        now: u64,
    ) -> Holder {
        let Ok(id) = PeerId::from_bytes(&f.peer) else {
            return Holder::Failed;
        };
        let mut dialed = self.dialed.lock().unwrap_or_else(|p| p.into_inner());
        if peers.get(&id).is_some_and(|p| p.connected()) {
            dialed.remove(&f.peer);
            return Holder::Up;
        }
        // A holder this node never watched is away since the mount.
        let up = self.node.uptime(&id).unwrap_or_else(|| Uptime {
            away: now.saturating_sub(self.started_at),
            ..Default::default()
        });
        if !up.is_gone(&self.cfg.window, now) {
            return Holder::Away;
        }
        let grace = DIAL_GRACE.min(self.cfg.window.min.max(1));
        match dialed.get(&f.peer) {
            Some(t) if now >= t + grace => Holder::Gone,
            Some(_) => Holder::Away,
            None => {
                dialed.insert(f.peer.clone(), now);
                self.node.find_peer(id);
                Holder::Away
            }
        }
    }

    /// Rebuilds objects whose counted holders fell below the repair
    /// threshold (lazy repair, [`crate::maint::policy`]), from fresh
    /// encoding symbols and within the repair bandwidth limit; spreads
    /// crowded objects (several fragments on one holder, placed while few
    /// peers were known) onto peers that joined since. Runs every
    /// `repair_every` (with a budgeted sample of audits) and whenever
    /// `sync` asks ([`kick_repair`](Self::kick_repair)).
    async fn repair_loop(self: Arc<Self>) {
        loop {
            let woken = tokio::select! {
                _ = tokio::time::sleep(self.cfg.repair_every) => false,
                _ = self.repair_wake.notified() => true,
            };
            self.repair_pass(!woken).await;
        }
    }

    /// One pass of [`repair_loop`](Self::repair_loop).
    pub async fn repair_pass(&self, audit: bool) {
        let vault = self.vault.clone();
        let Ok(Ok(all)) = tokio::task::spawn_blocking(move || vault.all_placements()).await else {
            return;
        };
        let now = self.clock.now();
        if audit {
            let last = std::mem::replace(
                &mut *self.last_audit.lock().unwrap_or_else(|p| p.into_inner()),
                now,
            );
            // The first pass after a mount audits one period's worth; a long
            // absence never turns into one huge pass.
            let elapsed = if last == 0 {
                self.cfg.repair_every.as_secs().max(1)
            } else {
                now.saturating_sub(last).min(86_400)
            };
            self.audit(&all, elapsed).await;
        }
        let policy = self.policy();
        let peers = self.node.peers();
        // Judged once per holder and pass (a holder has many fragments).
        let missing = self.state().missing.clone();
        let mut judged: HashMap<Vec<u8>, Holder> = HashMap::new();
        for (id, p) in &all {
            let states: Vec<(u32, Holder)> = p
                .fragments
                .iter()
                .map(|f| {
                    if missing.contains(&(f.peer.clone(), f.id)) {
                        return (f.index, Holder::Failed);
                    }
                    let h = *judged
                        .entry(f.peer.clone())
                        .or_insert_with(|| self.holder(f, &peers, now));
                    (f.index, h)
                })
                .collect();
            let plan = maint::policy::plan(&states, &policy);
            let extra = self.crowded_extras(p, &plan);
            if plan.is_empty() && extra.is_empty() {
                continue;
            }
            let started = Instant::now();
            match self.repair_one(id, p, &plan, &extra).await {
                Ok(bytes) => {
                    if plan.rebuild > 0 {
                        self.state().repaired += 1;
                        tracing::info!(object = %id, "rebuilt {} fragments", plan.rebuild);
                    }
                    if !extra.is_empty() {
                        self.state().spread += 1;
                        tracing::info!(object = %id, "moved {} fragments off crowded holders", extra.len());
                    }
                    // Average the repair traffic down to the limit.
                    let min =
                        Duration::from_secs_f64(bytes as f64 / self.cfg.repair_rate.max(1) as f64);
                    if let Some(rest) = min.checked_sub(started.elapsed()) {
                        tokio::time::sleep(rest).await;
                    }
                }
                Err(e) => tracing::warn!(object = %id, "repair failed (will retry): {e}"),
            }
        }
        // Failures of fragments no placement names any more are forgotten.
        let named: HashSet<(&Vec<u8>, &FragmentId)> = all
            .iter()
            .flat_map(|(_, p)| &p.fragments)
            .map(|f| (&f.peer, &f.id))
            .collect();
        self.state()
            .missing
            .retain(|(p, id)| named.contains(&(p, id)));
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

    /// Asks the repair loop for a pass now (without audits).
    pub fn kick_repair(&self) {
        self.repair_wake.notify_one();
    }

    /// Fragments to move off holders that keep several fragments of one
    /// object, as many as there are connected storage peers holding none
    /// of it (after the fragments `plan` rebuilds have found homes).
    fn crowded_extras(&self, p: &Placement, plan: &Plan) -> Vec<FragmentLoc> {
        let mut seen: HashSet<&Vec<u8>> = HashSet::new();
        let mut extras: Vec<FragmentLoc> = Vec::new();
        // The lowest index stays on each holder (reads prefer source
        // fragments); the rest move, highest index first.
        let mut live: Vec<&FragmentLoc> = p
            .fragments
            .iter()
            .enumerate()
            .filter(|(i, _)| !plan.drop.contains(i))
            .map(|(_, f)| f)
            .collect();
        live.sort_by_key(|f| f.index);
        for f in live {
            if !seen.insert(&f.peer) {
                extras.push(f.clone());
            }
        }
        if extras.is_empty() {
            return extras;
        }
        let holders: HashSet<&Vec<u8>> = p.fragments.iter().map(|f| &f.peer).collect();
        let free = self
            .node
            .storage_peers()
            .into_iter()
            .filter(|(id, info)| {
                !holders.contains(&peer_bytes(id)) && info.capacity.is_none_or(|c| c.available > 0)
            })
            .count();
        let room = free.saturating_sub(plan.rebuild as usize);
        extras.reverse();
        extras.truncate(room);
        extras
    }

    /// Audits a budgeted random sample of the fragments on connected
    /// holders ([`crate::maint::audit`]): each answers a fresh challenge
    /// with a proof checked against the fragment id. A holder that fails is
    /// struck and the fragment counts as lost.
    async fn audit(&self, all: &[(ObjectId, Placement)], elapsed: u64) {
        let sample: Vec<(FragmentLoc, PeerId, u64, u64)> = {
            let mut rng = rand::rng();
            let mut out = Vec::new();
            for (_, p) in all {
                let Ok(layout) = Layout::new(p.len as usize, p.k) else {
                    continue;
                };
                let len = layout.fragment_len() as u64;
                for f in &p.fragments {
                    if !maint::audit::picked(self.cfg.audit_fraction, elapsed, &mut rng) {
                        continue;
                    }
                    let Ok(peer) = PeerId::from_bytes(&f.peer) else {
                        continue;
                    };
                    if self.node.is_connected(&peer) {
                        out.push((f.clone(), peer, len, maint::audit::challenge(len, &mut rng)));
                    }
                }
            }
            use rand::seq::SliceRandom;
            out.shuffle(&mut rng);
            out.truncate(MAX_AUDITS_PER_PASS);
            out
        };
        let asks = sample.into_iter().map(|(f, peer, len, start)| async move {
            let req = Request::Audit { id: f.id, start };
            let verdict = match tokio::time::timeout(PUT_TIMEOUT, self.node.request(peer, req))
                .await
            {
                Ok(Ok(Response::Proof(proof))) => maint::audit::verify(&f.id, len, start, &proof)
                    .err()
                    .map(|e| format!("failed a possession audit of fragment {}: {e}", f.id)),
                Ok(Ok(Response::NotFound)) => Some(format!("lost fragment {} it had stored", f.id)),
                // No answer: liveness decides.
                _ => None,
            };
            (f, peer, verdict)
        });
        let results: Vec<_> = futures::stream::iter(asks)
            .buffer_unordered(8)
            .collect()
            .await;
        for (f, peer, verdict) in results {
            if let Some(why) = verdict {
                self.node.strike(&peer, &why);
                self.state().missing.insert((f.peer, f.id));
            }
        }
    }

    /// Carries out `plan` for one object (drops, releases, fresh
    /// fragments) and moves the `extra` ones (crowded, still held) to new
    /// distinct peers; returns the bytes moved.
    async fn repair_one(
        &self,
        id: &ObjectId,
        old: &Placement,
        plan: &Plan,
        extra: &[FragmentLoc],
    ) -> Result<u64, String> {
        let keep: Vec<FragmentLoc> = old
            .fragments
            .iter()
            .enumerate()
            .filter(|(i, f)| !plan.drop.contains(i) && !extra.contains(f))
            .map(|(_, f)| f.clone())
            .collect();
        let released: Vec<FragmentLoc> = plan
            .release
            .iter()
            .map(|i| old.fragments[*i].clone())
            .collect();
        let m = plan.rebuild + extra.len() as u32;
        let first = old.next_index;
        let mut fresh = Vec::new();
        let mut moved = 0;
        if m > 0 {
            // Every holder named (spares included: they may return) is
            // excluded, so fragments land on distinct new peers.
            let holders: Vec<PeerId> = old
                .fragments
                .iter()
                .filter_map(|f| PeerId::from_bytes(&f.peer).ok())
                .collect();
            let cands = self.candidates(&holders);
            if !extra.is_empty() && cands.len() < m as usize {
                // A move is only worth it onto as many new distinct peers.
                return Err(format!(
                    "{m} fragments to place but only {} peers outside this object's holders",
                    cands.len()
                ));
            }
            let vault = self.vault.clone();
            let oid = *id;
            let local = tokio::task::spawn_blocking(move || vault.local_object(&oid))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let object = match local {
                Some(b) => b,
                // Repair does not wait for holders: the next pass retries.
                None => fetch_object(&self.node, id, old, Duration::ZERO).await?,
            };
            moved = object.len() as u64;
            let k = old.k;
            let frags =
                tokio::task::spawn_blocking(move || coder::encode(&object, k, first..first + m))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            let frag_len = frags.first().map_or(0, |f| f.bytes.len() as u64);
            let targets = placement::choose(&cands, frags.len(), frag_len).ok_or_else(|| {
                format!(
                    "no peer outside this object's holders has room ({} candidates)",
                    cands.len()
                )
            })?;
            let puts = frags
                .into_iter()
                .zip(targets)
                .map(|(f, p)| self.put_fragment(f, p));
            fresh = futures::future::join_all(puts)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            moved += frag_len * m as u64;
        }
        let new = Placement {
            len: old.len,
            k: old.k,
            fragments: keep.into_iter().chain(fresh).collect(),
            next_index: first + m,
        };
        let vault = self.vault.clone();
        let (oid, old2) = (*id, old.clone());
        let replaced = tokio::task::spawn_blocking(move || {
            vault.replace_placement(&oid, &old2, &new, &released)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if !replaced {
            return Err("the object changed while it was repaired".into());
        }
        Ok(moved)
    }

    /// Redundancy of every placed file-content object, by which holders
    /// are connected.
    pub fn health(&self) -> Result<Health, String> {
        self.health_of(self.vault.placements().map_err(|e| e.to_string())?)
    }

    /// Read availability, yearly loss and objects at or below the repair
    /// threshold, estimated from the measured uptime of the holders of a
    /// sample of the objects (see [`crate::maint::health`]).
    pub fn durability(&self) -> Result<maint::health::Durability, String> {
        use rand::seq::IndexedRandom;
        let all = self.vault.placements().map_err(|e| e.to_string())?;
        let sample: Vec<&(ObjectId, Placement)> = all
            .choose_multiple(&mut rand::rng(), maint::health::SAMPLE)
            .collect();
        let peers = self.node.peers();
        let now = self.clock.now();
        let missing = self.state().missing.clone();
        let window = self.cfg.window;
        let objects: Vec<Vec<maint::health::HolderView>> = sample
            .iter()
            .map(|(_, p)| {
                p.fragments
                    .iter()
                    .map(|f| {
                        let id = PeerId::from_bytes(&f.peer).ok();
                        let up = id
                            .and_then(|i| self.node.uptime(&i))
                            .unwrap_or_else(|| Uptime {
                                away: now.saturating_sub(self.started_at),
                                ..Default::default()
                            });
                        let connected =
                            id.is_some_and(|i| peers.get(&i).is_some_and(|p| p.connected()));
                        maint::health::HolderView {
                            availability: up.availability(),
                            counts: !missing.contains(&(f.peer.clone(), f.id))
                                && (connected || !up.is_gone(&window, now)),
                            window: up.gone_window(&window),
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(maint::health::estimate(&objects, &self.policy()))
    }

    /// Redundancy of the metadata objects the published root names.
    pub fn metadata_health(&self) -> Result<Health, String> {
        self.health_of(
            self.vault
                .metadata_placements()
                .map_err(|e| e.to_string())?,
        )
    }

    fn health_of(&self, placements: Vec<(ObjectId, Placement)>) -> Result<Health, String> {
        let connected: HashSet<Vec<u8>> = self
            .node
            .peers()
            .into_iter()
            .filter(|(_, p)| p.connected())
            .map(|(id, _)| peer_bytes(&id))
            .collect();
        let mut h = Health::default();
        for (_, p) in placements {
            let all: HashSet<&Vec<u8>> = p.fragments.iter().map(|f| &f.peer).collect();
            if all.len() < p.fragments.len() {
                h.crowded += 1;
            }
            let live: Vec<&FragmentLoc> = p
                .fragments
                .iter()
                .filter(|f| connected.contains(&f.peer))
                .collect();
            let distinct: HashSet<&Vec<u8>> = live.iter().map(|f| &f.peer).collect();
            if live.len() >= self.n as usize && distinct.len() >= self.n as usize {
                h.healthy += 1;
            } else if live.len() >= p.k as usize {
                h.degraded += 1;
            } else {
                h.lost += 1;
            }
        }
        Ok(h)
    }

    /// Waits until every object is on peers (flush the vault first), then
    /// checks that all are at full redundancy.
    pub async fn wait_synced(
        &self,
        mut progress: impl FnMut(SyncProgress),
    ) -> Result<Health, String> {
        self.kick();
        let start = Instant::now();
        let first = self.vault.upload_backlog();
        let mut last_bytes = first.bytes;
        let mut last_change = Instant::now();
        let mut rate_mark = (Instant::now(), self.state().uploaded_bytes);
        let mut rate = 0.0;
        loop {
            let b = self.vault.upload_backlog();
            let done = self.state().uploaded_bytes;
            let dt = rate_mark.0.elapsed().as_secs_f64();
            if dt >= 1.0 {
                rate = (done - rate_mark.1) as f64 / dt;
                rate_mark = (Instant::now(), done);
            }
            progress(SyncProgress {
                remaining_objects: b.objects,
                remaining_bytes: b.bytes,
                total_bytes: first.bytes.max(b.bytes),
                rate,
            });
            if b.objects == 0 {
                break;
            }
            if b.bytes != last_bytes {
                last_bytes = b.bytes;
                last_change = Instant::now();
            }
            if self.node.storage_peers().is_empty() && start.elapsed() > Duration::from_secs(5) {
                return Err(format!(
                    "no storage peers are reachable: {} objects ({} bytes) are waiting for upload; \
                     start contribution nodes (drizzle node) or mount with --peer ADDR",
                    b.objects, b.bytes
                ));
            }
            if last_change.elapsed() > STALL {
                let why = self
                    .state()
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "unknown".into());
                return Err(format!(
                    "no upload progress for {} s ({} objects, {} bytes left); last error: {why}",
                    STALL.as_secs(),
                    b.objects,
                    b.bytes
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.wait_spread(start, false, &mut progress).await
    }

    /// After a publish: waits until the metadata objects are at full
    /// redundancy too (spreading crowded ones), like [`wait_synced`].
    pub async fn wait_metadata_spread(&self) -> Result<Health, String> {
        self.wait_spread(Instant::now(), true, &mut |_| {})
            .await
            .map_err(|e| e.replacen("every object is uploaded", "the metadata is published", 1))
    }

    /// After the uploads: waits while repair spreads crowded objects onto
    /// peers that joined late (progress: the objects still short), and
    /// fails clearly when the network lacks peers or nothing moves.
    async fn wait_spread(
        &self,
        start: Instant,
        metadata: bool,
        progress: &mut impl FnMut(SyncProgress),
    ) -> Result<Health, String> {
        let mut best = u64::MAX;
        let mut last_change = Instant::now();
        let mut asked: Option<Instant> = None;
        let mut kicked: Option<Instant> = None;
        loop {
            // The health check scans every placement: on the blocking pool.
            let h = tokio::task::block_in_place(|| {
                if metadata {
                    self.metadata_health()
                } else {
                    self.health()
                }
            })?;
            let short = h.degraded + h.lost;
            if short == 0 {
                return Ok(h);
            }
            let peers = self.node.storage_peers().len();
            let total = h.healthy + short;
            let why = if peers < self.n as usize && start.elapsed() > PEER_SEARCH {
                Some(format!(
                    "only {peers} storage peers are connected and each object needs its {n}                      fragments on {n} distinct peers; start more contribution nodes                      (drizzle node) or connect to more (--peer ADDR)",
                    n = self.n
                ))
            } else if last_change.elapsed() > STALL {
                Some(format!(
                    "{peers} storage peers are connected, but no object reached full redundancy                      for {} s ({} crowded, {} with holders away; an object is rebuilt once fewer                      than {} of its holders count, a holder counting until it has been away                      for its gone window, {} s to {} s){}",
                    STALL.as_secs(),
                    h.crowded,
                    short.saturating_sub(h.crowded),
                    self.policy().r,
                    self.cfg.window.min,
                    self.cfg.window.max,
                    self.state()
                        .last_refusal
                        .as_ref()
                        .map(|r| format!("; last refusal: {r}"))
                        .unwrap_or_default()
                ))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(format!(
                    "every object is uploaded, but {short} of {total} are below full redundancy: {why}"
                ));
            }
            if short < best {
                best = short;
                last_change = Instant::now();
            }
            progress(SyncProgress {
                remaining_objects: short,
                ..Default::default()
            });
            if peers < self.n as usize && asked.is_none_or(|a| a.elapsed() > Duration::from_secs(3))
            {
                self.node.look_for_peers();
                asked = Some(Instant::now());
            }
            // A pass scans every placement: one every few seconds.
            if kicked.is_none_or(|k| k.elapsed() > Duration::from_secs(5)) {
                self.kick_repair();
                kicked = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Whether a holder's leases need renewing: never renewed, renewed
/// `min_age` seconds ago or more, for another lease time, or in the future
/// (the clock went back).
fn renewal_due(last: Option<&crate::vault::Renewal>, now: u64, lease: u32, min_age: u64) -> bool {
    last.is_none_or(|r| r.lease != lease || r.at > now || now >= r.at + min_age)
}

/// Fragment ids by the peer (id bytes) that holds them.
fn group_by_peer(
    items: impl IntoIterator<Item = (Vec<u8>, FragmentId)>,
) -> std::collections::HashMap<Vec<u8>, Vec<FragmentId>> {
    let mut by_peer: std::collections::HashMap<Vec<u8>, Vec<FragmentId>> = Default::default();
    for (peer, id) in items {
        by_peer.entry(peer).or_default().push(id);
    }
    by_peer
}

/// Reads objects from peers for the vault: each fetch runs as a task on
/// the runtime (no thread waits for the network) and hands its result to
/// the vault on the blocking pool.
struct NetFetcher {
    node: NodeHandle,
    rt: tokio::runtime::Handle,
    /// How long a read waits for holders to be found.
    wait: Duration,
}

impl Fetcher for NetFetcher {
    fn fetch(&self, id: &ObjectId, placement: &Placement, patient: bool, done: FetchDone) {
        let wait = if patient { self.wait } else { Duration::ZERO };
        let (node, id, placement) = (self.node.clone(), *id, placement.clone());
        self.rt.spawn(async move {
            let r = fetch_object(&node, &id, &placement, wait).await;
            tokio::task::spawn_blocking(move || done(r));
        });
    }
}

type FetchOne = futures::future::BoxFuture<
    'static,
    (
        FragmentId,
        PeerId,
        Result<Result<Response, NetError>, tokio::time::error::Elapsed>,
    ),
>;

/// Asks the next holder in `queue` for its fragment; false if none is left.
fn launch(
    node: &NodeHandle,
    inflight: &mut FuturesUnordered<FetchOne>,
    queue: &mut std::collections::VecDeque<(FragmentId, PeerId)>,
) -> bool {
    use futures::FutureExt;
    let Some((fid, peer)) = queue.pop_front() else {
        return false;
    };
    let node = node.clone();
    inflight.push(
        async move {
            let r = tokio::time::timeout(GET_TIMEOUT, node.request(peer, Request::Get { id: fid }))
                .await;
            (fid, peer, r)
        }
        .boxed(),
    );
    true
}

/// Fetches `k` fragments (source fragments first, hedging slow peers) and
/// rebuilds the object. Holders that are not connected are dialed at their
/// known addresses or looked up in the DHT; while too few answered, the
/// unreachable ones are tried again until `wait` has passed (right after a
/// start, holders are still being found).
pub async fn fetch_object(
    node: &NodeHandle,
    id: &ObjectId,
    placement: &Placement,
    wait: Duration,
) -> Result<Vec<u8>, String> {
    let start = Instant::now();
    let k = placement.k as usize;
    let layout = Layout::new(placement.len as usize, placement.k).map_err(|e| e.to_string())?;
    let peers = node.peers();
    let mut order: Vec<(&FragmentLoc, Option<PeerId>)> = placement
        .fragments
        .iter()
        .map(|f| (f, PeerId::from_bytes(&f.peer).ok()))
        .collect();
    order.sort_by_key(|(f, p)| {
        let info = p.as_ref().and_then(|p| peers.get(p));
        (
            !info.is_some_and(|i| i.connected()),
            info.map_or(0, |i| i.strikes.min(3)),
            f.index >= placement.k,
            info.and_then(|i| i.rtt).unwrap_or(Duration::MAX),
        )
    });
    let mut queue: std::collections::VecDeque<(FragmentId, PeerId)> = order
        .into_iter()
        .filter_map(|(f, p)| Some((f.id, p?)))
        .collect();
    for (_, p) in &queue {
        node.find_peer(*p);
    }
    let mut unreachable: Vec<(FragmentId, PeerId)> = Vec::new();
    let mut inflight: FuturesUnordered<FetchOne> = FuturesUnordered::new();
    for _ in 0..k {
        launch(node, &mut inflight, &mut queue);
    }
    let mut decoder = Decoder::new(layout);
    let mut problems: Vec<String> = Vec::new();
    let mut hedge =
        tokio::time::interval_at(tokio::time::Instant::now() + HEDGE_AFTER, HEDGE_AFTER);
    loop {
        if inflight.is_empty()
            && queue.is_empty()
            && !unreachable.is_empty()
            && start.elapsed() < wait
        {
            // Holders not reached yet: look for them again in a moment (one
            // DHT lookup per holder and second at most).
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (_, p) in &unreachable {
                node.find_peer(*p);
            }
            queue.extend(unreachable.drain(..));
        }
        if inflight.is_empty() && !launch(node, &mut inflight, &mut queue) {
            for (_, p) in unreachable.drain(..) {
                problems.push(format!("peer {p} could not be reached"));
            }
            return Err(format!(
                "object {id}: only {} of the {k} fragments needed could be fetched ({})",
                decoder.fragments(),
                if problems.is_empty() {
                    "no holder is known".to_string()
                } else {
                    problems.join("; ")
                }
            ));
        }
        tokio::select! {
            next = inflight.next() => {
                let Some((fid, peer, r)) = next else { continue };
                let mut ok = false;
                match r {
                    Ok(Ok(Response::Fragment(bytes))) if FragmentId::of(&bytes) == fid => {
                        match decoder.add(&bytes) {
                            Ok(()) => ok = true,
                            Err(e) => {
                                node.strike(&peer, &format!("fragment {fid} does not fit: {e}"));
                                problems.push(format!("peer {peer}: {e}"));
                            }
                        }
                    }
                    Ok(Ok(Response::Fragment(_))) => {
                        node.strike(&peer, &format!("returned corrupt data for fragment {fid}"));
                        problems.push(format!("peer {peer} returned a corrupt fragment"));
                    }
                    Ok(Ok(Response::NotFound)) => {
                        problems.push(format!("peer {peer} no longer has fragment {fid}"));
                    }
                    Ok(Ok(Response::Busy)) => {
                        problems.push(format!("peer {peer} was too busy to answer"));
                    }
                    Ok(Ok(other)) => {
                        node.strike(&peer, &format!("unexpected answer to GET: {other:?}"));
                        problems.push(format!("peer {peer} answered {other:?}"));
                    }
                    Ok(Err(e)) => {
                        if matches!(e, NetError::Unreachable(..)) && start.elapsed() < wait {
                            unreachable.push((fid, peer));
                        } else {
                            problems.push(e.to_string());
                        }
                    }
                    Err(_) => {
                        node.strike(&peer, "GET timed out");
                        problems.push(format!("peer {peer} timed out"));
                    }
                }
                if ok && decoder.fragments() >= k {
                    match decoder.decode() {
                        Ok(obj) => {
                            if ObjectId::of(&obj) == *id {
                                return Ok(obj);
                            }
                            return Err(format!("object {id} rebuilt from verified fragments does not match its id"));
                        }
                        Err(_) => {
                            launch(node, &mut inflight, &mut queue);
                        }
                    }
                } else if !ok {
                    launch(node, &mut inflight, &mut queue);
                }
            }
            _ = hedge.tick() => {
                launch(node, &mut inflight, &mut queue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Renewal;

    /// Two years of a laptop mounted at irregular times (gaps up to just
    /// under a lease, mounts of 2 to 60 minutes, checks every minute while
    /// mounted), on a simulated clock: the renewal rule that `renew_loop`
    /// applies never lets a holder's lease run out. Also: a changed lease
    /// time and a clock that went back make a holder due at once.
    #[test]
    fn renewal_rule_keeps_leases_alive_over_simulated_years() {
        let lease: u32 = 30 * 24 * 3600;
        let period = lease as u64 / 3;
        let mut last: Option<Renewal> = None;
        let mut expires = 0u64; // what the holder grants: renewal + lease
        let mut now = 1_000_000u64;
        let mut x = 7u64;
        let mut rand = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let end = now + 2 * 365 * 24 * 3600;
        while now < end {
            // A mount: first pass with the mount age, then periodic checks.
            let stay = 120 + rand(3480);
            let mut min_age = (period / 2).clamp(1, MOUNT_RENEW_AGE);
            let mut t = now;
            while t <= now + stay {
                assert!(last.is_none() || t <= expires, "lease ran out at {t}");
                if renewal_due(last.as_ref(), t, lease, min_age) {
                    last = Some(Renewal { at: t, lease });
                    expires = t + lease as u64;
                }
                min_age = period;
                t += 60;
            }
            // Unmounted for up to just under a lease.
            now = t + rand(lease as u64 - stay - 120);
            assert!(now <= expires, "lease ran out while unmounted");
        }
        let r = Renewal { at: 5_000, lease };
        assert!(!renewal_due(Some(&r), 5_100, lease, period));
        assert!(renewal_due(Some(&r), 5_100, lease / 2, period));
        assert!(renewal_due(Some(&r), 4_000, lease, period));
        assert!(renewal_due(None, 5_100, lease, period));
    }
}
