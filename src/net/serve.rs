//! Answering inbound requests: admission (a few at work on the blocking
//! pool, some more waiting, the rest answered `Busy`) and the answer to
//! each request from the node's fragment store.

use std::sync::atomic::Ordering;
use std::time::Duration;

use libp2p::kad;
use libp2p::request_response::ResponseChannel;
use libp2p::PeerId;

use super::proto::{LeaseTerms, Request, Response};
use crate::coder::FragmentId;
use crate::fragstore::{PutOutcome, RootOutcome};

use super::{Command, Driver, Fault, NodeHandle, Shared};

/// Inbound requests served at once (each on a blocking thread: disk IO).
pub(super) const INBOUND_WORKERS: usize = 16;

/// Inbound requests that may wait for a worker; more are answered `Busy`.
pub(super) const INBOUND_QUEUE: usize = 256;

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
        // Bounded: a few requests work (disk IO on the blocking pool), some
        // more wait their turn, the rest are told to come back later.
        // Both permits are released when dropped, whatever happens.
        let Ok(admission) = shared.admitted.clone().try_acquire_owned() else {
            shared.counters.busy.fetch_add(1, Ordering::Relaxed);
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
                let resp = answer(&shared, &handle, peer, req);
                drop((permit, admission));
                let _ = handle.cmd.blocking_send(Command::Respond { channel, resp });
            });
        });
    }
}

/// The answer to one inbound request (on a blocking thread: disk IO).
fn answer(shared: &Shared, handle: &NodeHandle, peer: PeerId, req: Request) -> Response {
    match req {
        Request::Put { id, lease, data } => answer_put(shared, peer, &id, &lease, &data),
        Request::Get { id } => answer_get(shared, &id),
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
        Request::RootPut { key, record } => match shared.frags.put_root(&key, &record) {
            Ok(RootOutcome::Stored) => {
                let r = kad::Record::new(kad::RecordKey::new(&key), record);
                let _ = handle.cmd.blocking_send(Command::KadKeep(r));
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
    let gives = shared
        .credits
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&peer)
        .copied()
        .unwrap_or(0);
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

/// A GET: the fragment, damaged as the fault-injection setting asks.
fn answer_get(shared: &Shared, id: &FragmentId) -> Response {
    let c = &shared.counters;
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
