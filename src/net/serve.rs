//! Answering inbound requests: admission (each peer within its share of
//! requests in flight and its rate; a few requests at work on the blocking
//! pool, some more waiting; the rest answered `Busy`) and the answer to
//! each request from the node's fragment store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use libp2p::kad;
use libp2p::request_response::ResponseChannel;
use libp2p::PeerId;

use super::proto::{LeaseTerms, Request, Response, Streamed};
use crate::coder::FragmentId;
use crate::fragstore::{ObjectData, PutOutcome, RootFrom, RootOutcome};

use super::{Command, Driver, Fault, Shared};

/// Inbound requests served at once (each on a blocking thread: disk IO).
pub(super) const INBOUND_WORKERS: usize = 16;

/// Inbound requests that may wait for a worker; more are answered `Busy`.
pub(super) const INBOUND_QUEUE: usize = 256;

/// Requests one peer may have in flight (admitted and not yet answered;
/// a fragment counts until it is sent).
pub(super) const PEER_INFLIGHT: usize = 32;

/// A peer's request rate, in cost units per second (a request costs 1,
/// plus 1 per 64 ids it lists), and the burst it may spend at once.
const PEER_RATE: f64 = 500.0;
const PEER_BURST: f64 = 2000.0;

/// One peer's share of the node's inbound work.
pub(super) struct Gate {
    inflight: Arc<Semaphore>,
    tokens: f64,
    at: Instant,
}

impl Gate {
    pub(super) fn new(now: Instant) -> Self {
        Gate {
            inflight: Arc::new(Semaphore::new(PEER_INFLIGHT)),
            tokens: PEER_BURST,
            at: now,
        }
    }

    /// A permit for one more request costing `cost`, or `None` if the peer
    /// is over its share (too many in flight, or over its rate).
    pub(super) fn admit(&mut self, cost: f64, now: Instant) -> Option<OwnedSemaphorePermit> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * PEER_RATE).min(PEER_BURST);
        if self.tokens < cost {
            return None;
        }
        let permit = self.inflight.clone().try_acquire_owned().ok()?;
        self.tokens -= cost;
        Some(permit)
    }
}

/// What a request costs against its peer's rate.
pub(super) fn cost(req: &Request) -> f64 {
    let listed = match req {
        Request::Has { ids } => ids.len(),
        Request::Renew { items, .. } | Request::Cancel { items } => items.len(),
        _ => 0,
    };
    1.0 + (listed / 64) as f64
}

impl Driver {
    /// Answers a request from the fragment store, off the swarm task.
    pub(super) fn serve(&mut self, peer: PeerId, req: Request, channel: ResponseChannel<Response>) {
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
        // Bounded: each peer has a share of requests in flight and a
        // rate; a few requests work (disk IO on the blocking pool), some
        // more wait their turn, the rest are told to come back later.
        // Permits are released when dropped, whatever happens.
        let admitted = match req {
            Request::Shed => {
                shared.counters.busy.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => shared.admit(peer, cost(&req)),
        };
        let Some(Admitted { mine, queue }) = admitted else {
            let _ = self
                .swarm
                .behaviour_mut()
                .frag
                .send_response(channel, Response::Busy);
            return;
        };
        tokio::spawn(async move {
            let Ok(permit) = shared.inbound.clone().acquire_owned().await else {
                return;
            };
            tokio::task::spawn_blocking(move || {
                let keep = |r| {
                    let _ = handle.cmd.blocking_send(Command::KadKeep(r));
                };
                let resp = answer(&shared, peer, req, mine, &keep);
                drop((permit, queue));
                let _ = handle.cmd.blocking_send(Command::Respond { channel, resp });
            });
        });
    }
}

/// An inbound request let in: its peer's permit and its place in the
/// node's queue.
pub(super) struct Admitted {
    mine: OwnedSemaphorePermit,
    queue: OwnedSemaphorePermit,
}

impl Admitted {
    /// The peer's permit and the place in the queue.
    pub(super) fn into_permits(self) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        (self.mine, self.queue)
    }
}

impl Shared {
    /// Lets one inbound request from `peer`, costing `cost` against its
    /// rate, in if the peer is within its share (requests in flight, rate)
    /// and the node's queue has room; `None` (counted) if it is to be
    /// answered `Busy`.
    pub(super) fn admit(&self, peer: PeerId, cost: f64) -> Option<Admitted> {
        let mine = self
            .gates()
            .entry(peer)
            .or_insert_with(|| Gate::new(Instant::now()))
            .admit(cost, Instant::now());
        let Some(mine) = mine else {
            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
            self.counters.busy.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Ok(queue) = self.admitted.clone().try_acquire_owned() else {
            self.counters.busy.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        Some(Admitted { mine, queue })
    }
}

/// The answer to one inbound request (on a blocking thread: disk IO).
/// `mine` is the peer's permit for it, kept by a fragment until it is sent;
/// `keep` is handed a root record this node now keeps (for its DHT store).
pub(super) fn answer(
    shared: &Shared,
    peer: PeerId,
    req: Request,
    mine: OwnedSemaphorePermit,
    keep: &dyn Fn(kad::Record),
) -> Response {
    if shared.fault == Some(Fault::Refuse) && rand::random_bool(0.5) {
        return Response::Refused("refusing at random (a node misbehaving on purpose)".into());
    }
    match req {
        Request::Shed => Response::Busy,
        Request::Put { .. } if shared.fault == Some(Fault::Drop) => Response::Stored,
        Request::Put { id, lease, data } => answer_put(shared, peer, &id, &lease, &data),
        Request::Get { id } => answer_get(shared, &id, mine),
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
                if shared.fault == Some(Fault::FakeAudit) {
                    data.fill(0);
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
        Request::RootPut { key, record } => match shared.frags.put_root(
            &key,
            &record,
            RootFrom::Peer {
                id: &peer.to_bytes(),
                gives: shared.gives(&peer),
            },
        ) {
            Ok(RootOutcome::Stored) => {
                keep(kad::Record::new(kad::RecordKey::new(&key), record));
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

/// A PUT: stored if the ledger and the space allow (see `FragmentStore::put`).
fn answer_put(
    shared: &Shared,
    peer: PeerId,
    id: &FragmentId,
    lease: &LeaseTerms,
    data: &[u8],
) -> Response {
    let c = &shared.counters;
    let gives = shared.gives(&peer);
    match shared.frags.put(id, data, &peer.to_bytes(), gives, lease) {
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

/// A GET: the fragment, streamed from its file (holding the peer's
/// permit until it is sent), or damaged as the fault-injection setting
/// asks.
fn answer_get(shared: &Shared, id: &FragmentId, mine: OwnedSemaphorePermit) -> Response {
    let c = &shared.counters;
    if shared.fault.is_none() {
        return match shared.frags.open_fragment(id) {
            Ok(Some(ObjectData::File(file, len))) => {
                c.fragments_served.fetch_add(1, Ordering::Relaxed);
                c.bytes_out.fetch_add(len, Ordering::Relaxed);
                Response::Streamed(Streamed {
                    file: Arc::new(file),
                    len,
                    hold: Arc::new(mine),
                })
            }
            Ok(Some(ObjectData::Inline(data))) => {
                c.fragments_served.fetch_add(1, Ordering::Relaxed);
                c.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                Response::Fragment(data.into())
            }
            Ok(None) => Response::NotFound,
            Err(e) => Response::Failed(format!("storage error on the node: {e}")),
        };
    }
    match shared.frags.get(id) {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_its_share_of_requests_and_rate_and_no_more() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        // In flight: the share, then nothing until one is answered.
        let held: Vec<_> = (0..PEER_INFLIGHT)
            .map(|_| g.admit(1.0, t0).expect("within the share"))
            .collect();
        assert!(g.admit(1.0, t0).is_none());
        drop(held);
        // Rate: the burst, then what the rate refills.
        let mut spent = 0.0;
        while let Some(p) = g.admit(100.0, t0) {
            spent += 100.0;
            drop(p);
        }
        assert!((PEER_BURST - 100.0 - PEER_INFLIGHT as f64..=PEER_BURST).contains(&spent));
        assert!(g.admit(100.0, t0 + Duration::from_millis(50)).is_none());
        assert!(g.admit(100.0, t0 + Duration::from_millis(300)).is_some());
        // Listing many ids costs more.
        let ids = vec![FragmentId([0; 32]); 4096];
        assert_eq!(cost(&Request::Has { ids }), 65.0);
        assert_eq!(cost(&Request::Capacity), 1.0);
    }
}
