//! The uploader: objects from the vault's upload queue are encoded into
//! n fragments (blocking pool), placed on n distinct peers and PUT in
//! parallel (a refused or failed PUT is retried on another peer), then the
//! placement is committed. At most [`UPLOAD_PARALLEL`](super::UPLOAD_PARALLEL)
//! objects are in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::StreamExt;

use crate::coder::{self, Fragment};
use crate::crypto::ObjectId;
use crate::net::proto::{LeaseTerms, Request, Response};
use crate::net::{NetError, PeerId};
use crate::placement::{self, Candidate};
use crate::vault::records::{FragmentLoc, Placement};

use super::{peer_bytes, Remote, PUT_TIMEOUT, UPLOAD_PARALLEL};

/// Attempts per fragment (the first peer, then others).
const PUT_ATTEMPTS: usize = 4;

/// After start, uploads wait this long for n peers to be discovered before
/// placing several fragments on one peer.
const DISCOVERY_GRACE: Duration = Duration::from_secs(10);

impl Remote {
    pub(super) async fn upload_loop(self: Arc<Self>) {
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

    pub(super) fn candidates(&self, exclude: &[PeerId]) -> Vec<Candidate<PeerId>> {
        self.node
            .storage_peers()
            .into_iter()
            .filter(|(id, _)| !exclude.contains(id))
            .map(|(peer, info)| Candidate {
                availability: self.node.uptime(&peer).map(|u| u.availability()),
                domain: self.cfg.domains.domain(info.addr),
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
        let placing = self.placing.read().await;
        let r = self.upload_inner(id).await;
        drop(placing);
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
        let spread = placement::Spread::new((self.n - self.k) as usize);
        let peers = placement::choose(&cands, frags.len(), frag_len, &spread).ok_or_else(|| {
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
    pub(super) async fn put_fragment(
        &self,
        frag: Fragment,
        first: PeerId,
    ) -> Result<FragmentLoc, String> {
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
                    self.state().stored_bytes += len;
                    self.node.add_credit(&peer, len);
                    self.node.note_capacity(&peer, &mut |c| {
                        c.available = c.available.saturating_sub(len)
                    });
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
                    self.node.note_capacity(&peer, &mut |c| c.available = 0);
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
            let any = placement::Spread::new(usize::MAX);
            match placement::choose(&others, 1, data.len() as u64, &any) {
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
}
