//! Redundancy as `status` and `sync` see it: health of placed objects by
//! the holders connected now, the durability estimate, and waiting until
//! every upload is done and crowded objects have spread (`sync`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::crypto::ObjectId;
use crate::maint::{self, Uptime};
use crate::net::PeerId;
use crate::vault::records::{FragmentLoc, Placement};

use super::{peer_bytes, Remote};

/// `sync` looks this long for more peers when fewer than n are connected.
const PEER_SEARCH: Duration = Duration::from_secs(20);

/// `sync` gives up after this long without any upload progress.
const STALL: Duration = Duration::from_secs(30);

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

impl Remote {
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
