//! Lazy repair as decided by [`crate::maint::policy`]: which holders count
//! (up, away within their gone window, gone after a dial), rebuilding
//! objects below the repair threshold onto fresh fragment indexes on new
//! peers, and spreading crowded objects onto peers that joined since.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coder::{self, FragmentId};
use crate::crypto::ObjectId;
use crate::maint::{self, Holder, Plan, Uptime};
use crate::net::{PeerId, PeerInfo};
use crate::placement::{self};
use crate::vault::records::{FragmentLoc, Placement};

use super::{fetch_object, peer_bytes, Remote};

/// A holder past its gone window is dialed first, and judged gone only if
/// it is still unreachable this long after.
const DIAL_GRACE: u64 = 60;
/// Most repairs [`Remote::take_repairs`] keeps between two calls.
pub(super) const MAX_RECORDS: usize = 100_000;

/// One repair carried out (a plan's drops, releases and fresh fragments),
/// as kept with [`super::RemoteConfig::record_repairs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairRecord {
    /// By the maintenance clock.
    pub time: u64,
    pub object: ObjectId,
    pub rebuilt: u32,
    pub dropped: u32,
    /// The peers (id bytes) the fresh fragments went to.
    pub targets: Vec<Vec<u8>>,
}

impl Remote {
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
    pub(super) async fn repair_loop(self: Arc<Self>) {
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
                Ok((bytes, targets)) => {
                    self.note_repaired(id, &plan, extra.len(), bytes, targets, now);
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

    /// Counts a repair carried out (and records it, if asked): `plan`
    /// for object `id`, `moved` crowded fragments, `bytes` transferred,
    /// the rebuilt fragments on `targets`.
    fn note_repaired(
        &self,
        id: &ObjectId,
        plan: &Plan,
        moved: usize,
        bytes: u64,
        targets: Vec<Vec<u8>>,
        now: u64,
    ) {
        if !plan.is_empty() && self.cfg.record_repairs {
            let mut log = self.repair_log.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() < MAX_RECORDS {
                log.push(RepairRecord {
                    time: now,
                    object: *id,
                    rebuilt: plan.rebuild,
                    dropped: plan.drop.len() as u32,
                    targets,
                });
            }
        }
        let mut st = self.state();
        st.repair_bytes += bytes;
        if plan.rebuild > 0 {
            st.rebuilt += plan.rebuild as u64;
            st.repaired += 1;
            tracing::info!(object = %id, "rebuilt {} fragments", plan.rebuild);
        }
        if moved > 0 {
            st.spread += 1;
            tracing::info!(object = %id, "moved {moved} fragments off crowded holders");
        }
    }

    /// The repairs carried out since the last call (with
    /// [`super::RemoteConfig::record_repairs`]; else none).
    pub fn take_repairs(&self) -> Vec<RepairRecord> {
        std::mem::take(&mut *self.repair_log.lock().unwrap_or_else(|p| p.into_inner()))
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
        let free = self.room_to_spread(p);
        let room = free.saturating_sub(plan.rebuild as usize);
        extras.reverse();
        extras.truncate(room);
        extras
    }

    /// Connected storage peers an object could spread onto: not holding
    /// any of it, with room, and in a failure domain below its cap (a
    /// move must not crowd a domain instead). 0: it is as spread as the
    /// network allows.
    pub(super) fn room_to_spread(&self, p: &Placement) -> usize {
        let holders: HashSet<&Vec<u8>> = p.fragments.iter().map(|f| &f.peer).collect();
        let cap = (self.n.saturating_sub(p.k)).max(1) as usize;
        let peers = self.node.peers();
        let mut per_domain = self.holder_domains(p, &peers);
        // Moving within a crowded holder's domain changes no domain's count.
        let mut seen = HashSet::new();
        let exempt: HashSet<placement::Domain> = p
            .fragments
            .iter()
            .filter(|f| !seen.insert(&f.peer))
            .filter_map(|f| self.domain_of(&peers, &f.peer))
            .collect();
        self.node
            .storage_peers()
            .into_iter()
            .filter(|(id, info)| {
                if holders.contains(&peer_bytes(id))
                    || info.capacity.is_some_and(|c| c.available == 0)
                {
                    return false;
                }
                match self.cfg.domains.domain(info.addr) {
                    Some(d) if !exempt.contains(&d) => {
                        let n = per_domain.entry(d).or_default();
                        *n += 1;
                        *n <= cap
                    }
                    _ => true,
                }
            })
            .count()
    }

    /// The failure domain of a peer (by its id's bytes), if known.
    fn domain_of(
        &self,
        peers: &HashMap<PeerId, PeerInfo>,
        peer: &[u8],
    ) -> Option<placement::Domain> {
        let id = PeerId::from_bytes(peer).ok()?;
        self.cfg.domains.domain(peers.get(&id)?.addr)
    }

    /// How many of an object's fragments each failure domain holds.
    fn holder_domains(
        &self,
        p: &Placement,
        peers: &HashMap<PeerId, PeerInfo>,
    ) -> HashMap<placement::Domain, usize> {
        let mut per_domain = HashMap::new();
        for d in p
            .fragments
            .iter()
            .filter_map(|f| self.domain_of(peers, &f.peer))
        {
            *per_domain.entry(d).or_default() += 1;
        }
        per_domain
    }

    /// Carries out `plan` for one object (drops, releases, fresh
    /// fragments) and moves the `extra` ones (crowded, still held) to new
    /// distinct peers; returns the bytes moved and the peers of the
    /// rebuilt fragments.
    async fn repair_one(
        &self,
        id: &ObjectId,
        old: &Placement,
        plan: &Plan,
        extra: &[FragmentLoc],
    ) -> Result<(u64, Vec<Vec<u8>>), String> {
        let _placing = self.placing.read().await;
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
        let (fresh, moved) = if m > 0 {
            self.place_fresh(id, old, m, extra).await?
        } else {
            (Vec::new(), 0)
        };
        // The rebuilt fragments come first (the moved ones after them).
        let targets = fresh
            .iter()
            .take(plan.rebuild as usize)
            .map(|f| f.peer.clone())
            .collect();
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
        Ok((moved, targets))
    }

    /// Rebuilds `m` fresh fragments of `id` (from the local copy, else from
    /// peers) at the placement's next indexes and PUTs them on distinct
    /// peers outside its holders; returns them and the bytes moved. With
    /// fragments `moving` (crowded, to move), refuses unless there are `m`
    /// such peers, within the failure domains' caps.
    async fn place_fresh(
        &self,
        id: &ObjectId,
        old: &Placement,
        m: u32,
        moving_off: &[FragmentLoc],
    ) -> Result<(Vec<FragmentLoc>, u64), String> {
        let moving = !moving_off.is_empty();
        let first = old.next_index;
        // Every holder named (spares included: they may return) is
        // excluded, so fragments land on distinct new peers.
        let holders: Vec<PeerId> = old
            .fragments
            .iter()
            .filter_map(|f| PeerId::from_bytes(&f.peer).ok())
            .collect();
        let cands = self.candidates(&holders);
        if moving && cands.len() < m as usize {
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
            None => fetch_object(&*self.node, id, old, Duration::ZERO).await?,
        };
        let mut moved = object.len() as u64;
        let k = old.k;
        let frags =
            tokio::task::spawn_blocking(move || coder::encode(&object, k, first..first + m))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        let frag_len = frags.first().map_or(0, |f| f.bytes.len() as u64);
        // The holders that stay count against their domains' caps.
        let peers = self.node.peers();
        let mut spread = placement::Spread::new((self.n - old.k) as usize);
        spread.strict = moving;
        spread.exempt = moving_off
            .iter()
            .filter_map(|f| self.domain_of(&peers, &f.peer))
            .collect();
        spread.taken = self.holder_domains(old, &peers);
        drop(peers);
        let targets =
            placement::choose(&cands, frags.len(), frag_len, &spread).ok_or_else(|| {
                format!(
                    "no peer outside this object's holders has room ({} candidates)",
                    cands.len()
                )
            })?;
        let puts = frags
            .into_iter()
            .zip(targets)
            .map(|(f, p)| self.put_fragment(f, p));
        let fresh = futures::future::join_all(puts)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        moved += frag_len * m as u64;
        Ok((fresh, moved))
    }
}
