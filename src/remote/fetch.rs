//! Reading objects back from peers: source fragments first, k requests in
//! parallel and one more every [`HEDGE_AFTER`] while short, every fragment
//! checked against its id and header, bad peers struck; holders not
//! connected are dialed or looked up, and retried for the read's wait.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};

use crate::coder::{Decoder, FragmentId, Layout};
use crate::crypto::ObjectId;
use crate::net::proto::{Request, Response};
use crate::net::{NetError, Network, PeerId};
use crate::vault::records::{FragmentLoc, Placement};
use crate::vault::{FetchDone, Fetcher};

/// A GET that takes longer counts as failed.
const GET_TIMEOUT: Duration = Duration::from_secs(20);

/// Without k fragments after this long, one more holder is asked.
const HEDGE_AFTER: Duration = Duration::from_millis(400);

/// Reads objects from peers for the vault: each fetch runs as a task on
/// the runtime (no thread waits for the network) and hands its result to
/// the vault on the blocking pool.
pub(super) struct NetFetcher {
    node: std::sync::Arc<dyn Network>,
    rt: tokio::runtime::Handle,
    /// How long a read waits for holders to be found.
    wait: Duration,
}

impl NetFetcher {
    /// A fetcher that runs its fetches on the current runtime.
    pub(super) fn new(node: std::sync::Arc<dyn Network>, wait: Duration) -> Self {
        NetFetcher {
            node,
            rt: tokio::runtime::Handle::current(),
            wait,
        }
    }
}

impl Fetcher for NetFetcher {
    fn fetch(&self, id: &ObjectId, placement: &Placement, patient: bool, done: FetchDone) {
        let wait = if patient { self.wait } else { Duration::ZERO };
        let (node, id, placement) = (self.node.clone(), *id, placement.clone());
        self.rt.spawn(async move {
            let r = fetch_object(&*node, &id, &placement, wait).await;
            tokio::task::spawn_blocking(move || done(r));
        });
    }
}

/// First pause before busy holders are asked again (doubling to 2 s).
const BUSY_PAUSE: Duration = Duration::from_millis(100);
/// How long a read keeps asking holders that answer busy.
const BUSY_PATIENCE: Duration = Duration::from_secs(30);

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
    node: &dyn Network,
    inflight: &mut FuturesUnordered<FetchOne>,
    queue: &mut std::collections::VecDeque<(FragmentId, PeerId)>,
) -> bool {
    use futures::FutureExt;
    let Some((fid, peer)) = queue.pop_front() else {
        return false;
    };
    let get = node.request(peer, Request::Get { id: fid });
    inflight.push(
        async move {
            let r = tokio::time::timeout(GET_TIMEOUT, get).await;
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
    node: &dyn Network,
    id: &ObjectId,
    placement: &Placement,
    wait: Duration,
) -> Result<Vec<u8>, String> {
    let start = Instant::now();
    let k = placement.k as usize;
    let layout = Layout::new(placement.len as usize, placement.k).map_err(|e| e.to_string())?;
    let mut queue = holders_in_order(node, placement);
    for (_, p) in &queue {
        node.find_peer(*p);
    }
    let mut inflight: FuturesUnordered<FetchOne> = FuturesUnordered::new();
    for _ in 0..k {
        launch(node, &mut inflight, &mut queue);
    }
    let mut got = Gathered {
        decoder: Decoder::new(layout),
        problems: Vec::new(),
        unreachable: Vec::new(),
        busy: Vec::new(),
    };
    let mut pause = BUSY_PAUSE;
    let mut hedge =
        tokio::time::interval_at(tokio::time::Instant::now() + HEDGE_AFTER, HEDGE_AFTER);
    loop {
        if inflight.is_empty()
            && queue.is_empty()
            && !got.unreachable.is_empty()
            && start.elapsed() < wait
        {
            // Holders not reached yet: look for them again in a moment (one
            // DHT lookup per holder and second at most).
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (_, p) in &got.unreachable {
                node.find_peer(*p);
            }
            queue.extend(got.unreachable.drain(..));
        }
        if inflight.is_empty()
            && queue.is_empty()
            && !got.busy.is_empty()
            && start.elapsed() < wait.max(BUSY_PATIENCE)
        {
            // Busy holders are well: ask them again, backing off.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
            queue.extend(got.busy.drain(..));
        }
        if inflight.is_empty() && !launch(node, &mut inflight, &mut queue) {
            return Err(got.too_few(id, k));
        }
        tokio::select! {
            next = inflight.next() => {
                let Some((fid, peer, r)) = next else { continue };
                let ok = got.take(node, fid, peer, r, || start.elapsed() < wait);
                if ok && got.decoder.fragments() >= k {
                    match got.decoder.decode() {
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

/// The holders to ask, best first: connected, fewer strikes, source
/// fragments, lower round-trip time.
fn holders_in_order(
    node: &dyn Network,
    placement: &Placement,
) -> std::collections::VecDeque<(FragmentId, PeerId)> {
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
    order
        .into_iter()
        .filter_map(|(f, p)| Some((f.id, p?)))
        .collect()
}

/// What one fetch has gathered so far.
struct Gathered {
    decoder: Decoder,
    /// Why holders did not help, for the error.
    problems: Vec<String>,
    /// Holders not reached, to try again while the read may wait.
    unreachable: Vec<(FragmentId, PeerId)>,
    /// Holders that answered busy, to ask again after a pause.
    busy: Vec<(FragmentId, PeerId)>,
}

impl Gathered {
    /// Takes one holder's answer: true if its fragment was added to the
    /// decoder. Bad data strikes the peer; an unreachable holder is kept
    /// for another try if `may_wait()`.
    fn take(
        &mut self,
        node: &dyn Network,
        fid: FragmentId,
        peer: PeerId,
        r: Result<Result<Response, NetError>, tokio::time::error::Elapsed>,
        may_wait: impl FnOnce() -> bool,
    ) -> bool {
        let problems = &mut self.problems;
        match r {
            Ok(Ok(Response::Fragment(bytes))) if FragmentId::of(&bytes) == fid => {
                match self.decoder.add(&bytes) {
                    Ok(()) => return true,
                    Err(e) => {
                        node.strike(&peer, &format!("fragment {fid} does not fit: {e}"));
                        problems.push(format!("peer {peer}: {e}"));
                    }
                }
            }
            Ok(Ok(Response::Fragment(_))) => {
                node.strike(&peer, &format!("returned corrupt data for fragment {fid}"));
                node.forfeit_credit(&peer);
                problems.push(format!("peer {peer} returned a corrupt fragment"));
            }
            Ok(Ok(Response::NotFound)) => {
                problems.push(format!("peer {peer} no longer has fragment {fid}"));
            }
            Ok(Ok(Response::Busy)) => self.busy.push((fid, peer)),
            Ok(Ok(other)) => {
                node.strike(&peer, &format!("unexpected answer to GET: {other:?}"));
                problems.push(format!("peer {peer} answered {other:?}"));
            }
            Ok(Err(e)) => {
                if matches!(e, NetError::Unreachable(..)) && may_wait() {
                    self.unreachable.push((fid, peer));
                } else {
                    problems.push(e.to_string());
                }
            }
            Err(_) => {
                node.strike(&peer, "GET timed out");
                problems.push(format!("peer {peer} timed out"));
            }
        }
        false
    }

    /// The error when every holder was asked and fewer than `k` helped.
    fn too_few(&mut self, id: &ObjectId, k: usize) -> String {
        for (_, p) in self.unreachable.drain(..) {
            self.problems.push(format!("peer {p} could not be reached"));
        }
        for (_, p) in self.busy.drain(..) {
            self.problems
                .push(format!("peer {p} was too busy to answer"));
        }
        format!(
            "object {id}: only {} of the {k} fragments needed could be fetched ({})",
            self.decoder.fragments(),
            if self.problems.is_empty() {
                "no holder is known".to_string()
            } else {
                self.problems.join("; ")
            }
        )
    }
}
