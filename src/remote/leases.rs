//! Lease upkeep: renewal of the leases this vault's holders grant (due
//! per holder by the maintenance clock: at a mount, then a third of a
//! lease after the last renewal) and cancellation of the fragments of
//! deleted objects (the `released` family).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::coder::FragmentId;
use crate::net::proto::{Request, Response};
use crate::net::PeerId;
use crate::vault::Released;

use super::{Remote, PUT_TIMEOUT};

/// At a mount, leases renewed longer ago than this (or half a renewal
/// period, if shorter) are renewed at once.
const MOUNT_RENEW_AGE: u64 = 600;

/// A holder whose lease renewal failed is tried again after this long
/// (seconds of the maintenance clock).
const RENEW_RETRY: u64 = 300;

/// Most leases renewed or cancelled in one request.
const LEASE_BATCH: usize = 1024;

/// What the renewal loop remembers between passes of one mount.
#[derive(Default)]
pub(super) struct RenewState {
    /// Holders renewed since the mount.
    this_mount: HashSet<Vec<u8>>,
    /// Holders whose renewal failed, and when.
    failed: HashMap<Vec<u8>, u64>,
    /// Holders not connected that were dialed, and when.
    dialed: HashMap<Vec<u8>, u64>,
}

impl Remote {
    /// Keeps every fragment's lease alive. Each holder's last renewal is a
    /// wall-clock time kept in the vault, so a vault mounted a few minutes
    /// now and then (or a laptop that slept) renews whatever is due at once:
    /// at every mount, then whenever a holder's renewal comes due (a third
    /// of the lease after the last one). A holder that cannot be reached
    /// stays due and is tried again every few minutes.
    pub(super) async fn renew_loop(self: Arc<Self>) {
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
    pub(super) async fn renew_due(&self, period: u64, st: &mut RenewState) -> Result<bool, String> {
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
                .is_some_and(|t| *t <= now && now - *t < RENEW_RETRY)
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
                    .is_none_or(|t| *t > now || now - *t > RENEW_RETRY)
                {
                    st.dialed.insert(peer_b.clone(), now);
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
                    st.failed.insert(peer_b, now);
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
            // A busy holder is well: ask again after a pause (doubling).
            let mut pause = Duration::from_millis(200);
            let answer = loop {
                let a =
                    tokio::time::timeout(PUT_TIMEOUT, self.node.request(peer, req.clone())).await;
                if !matches!(a, Ok(Ok(Response::Busy))) || pause > Duration::from_secs(4) {
                    break a;
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            };
            match answer {
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

    /// Cancels the leases of fragments that left their placements (deleted
    /// objects, superseded metadata, surplus copies), so the space returns
    /// to the peers' donations. Entries are visited in key order from where
    /// the last pass stopped, so holders that never answer hold up nobody
    /// else; an entry is dropped a lease time after it was first seen (the
    /// holder's lease has run out by then: nothing renews a released
    /// fragment), which bounds the family.
    pub(super) async fn cancel_loop(self: Arc<Self>) {
        let mut after: Option<Vec<u8>> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            match self.cancel_pass(after.take()).await {
                Ok(next) => after = next,
                Err(e) => tracing::warn!("cancelling released leases: {e}"),
            }
        }
    }

    /// One pass of [`cancel_loop`](Self::cancel_loop) over up to
    /// `4 * LEASE_BATCH` entries after `after`; returns where the next pass
    /// goes on (None: from the start).
    pub(super) async fn cancel_pass(
        &self,
        after: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, String> {
        let vault = self.vault.clone();
        let (now, lease) = (self.clock.now(), self.lease_secs as u64);
        let todo = tokio::task::spawn_blocking(move || {
            let items = vault.released(after.as_deref(), 4 * LEASE_BATCH)?;
            let next = (items.len() == 4 * LEASE_BATCH)
                .then(|| items.last().map(Released::key))
                .flatten();
            let (mut todo, mut done, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
            for r in items {
                // Entries placed again are forgotten per batch, under the
                // lock (`not_placed_again`).
                if r.since.is_some_and(|t| now >= t.saturating_add(lease)) {
                    done.push(r);
                } else {
                    if r.since.is_none() {
                        fresh.push(r.clone());
                    }
                    todo.push(r);
                }
            }
            vault.forget_released(&done)?;
            vault.stamp_released(&fresh, now)?;
            Ok::<_, crate::vault::VaultError>((todo, next))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let (todo, next) = todo;
        let mut by_peer: HashMap<Vec<u8>, Vec<Released>> = HashMap::new();
        for r in todo {
            by_peer.entry(r.peer.clone()).or_default().push(r);
        }
        for (peer_b, items) in by_peer {
            let Ok(peer) = PeerId::from_bytes(&peer_b) else {
                self.forget_released_async(items).await;
                continue;
            };
            // Holders away are tried on a later pass (or their leases lapse).
            if !self.node.is_connected(&peer) {
                continue;
            }
            for chunk in items.chunks(LEASE_BATCH) {
                let _alone = self.placing.write().await;
                let Some(chunk) = self.not_placed_again(chunk.to_vec()).await else {
                    break;
                };
                if chunk.is_empty() {
                    continue;
                }
                let req = Request::Cancel {
                    items: chunk
                        .iter()
                        .map(|r| (r.fragment, self.vault.lease_secrets(&r.fragment, &peer_b).1))
                        .collect(),
                };
                match tokio::time::timeout(PUT_TIMEOUT, self.node.request(peer, req)).await {
                    Ok(Ok(Response::Has(_))) => self.forget_released_async(chunk).await,
                    // Unreachable: try again later (or the lease expires).
                    _ => break,
                }
            }
        }
        Ok(next)
    }

    /// The entries of `items` whose fragment is not in its object's
    /// placement again; the others are forgotten (their lease is live
    /// again). None on a storage error.
    async fn not_placed_again(&self, items: Vec<Released>) -> Option<Vec<Released>> {
        let vault = self.vault.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut still = Vec::new();
            let mut again = Vec::new();
            for r in items {
                if vault.placed_again(&r)? {
                    again.push(r);
                } else {
                    still.push(r);
                }
            }
            vault.forget_released(&again)?;
            Ok::<_, crate::vault::VaultError>(still)
        })
        .await;
        match res {
            Ok(Ok(still)) => Some(still),
            Ok(Err(e)) => {
                tracing::warn!("checking released leases: {e}");
                None
            }
            Err(_) => None,
        }
    }

    async fn forget_released_async(&self, items: Vec<Released>) {
        let vault = self.vault.clone();
        let res = tokio::task::spawn_blocking(move || vault.forget_released(&items)).await;
        if let Ok(Err(e)) = res {
            tracing::warn!("forgetting cancelled leases: {e}");
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
