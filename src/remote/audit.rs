//! Possession audits: a budgeted sample of placed fragments is challenged
//! each repair pass (Bao proofs, [`crate::maint::audit`]); a holder that
//! fails loses the fragment (repair rebuilds it).

use futures::stream::StreamExt;

use crate::coder::Layout;
use crate::crypto::ObjectId;
use crate::maint::{self};
use crate::net::proto::{Request, Response};
use crate::net::PeerId;
use crate::vault::records::{FragmentLoc, Placement};

use super::{Remote, PUT_TIMEOUT};

/// Possession audits asked per pass at most (the budget decides how many
/// are due; this bounds one pass after a long absence).
const MAX_AUDITS_PER_PASS: usize = 256;

impl Remote {
    /// Audits a budgeted random sample of the fragments on connected
    /// holders ([`crate::maint::audit`]): each answers a fresh challenge
    /// with a proof checked against the fragment id. A holder that fails is
    /// struck and the fragment counts as lost.
    pub(super) async fn audit(&self, all: &[(ObjectId, Placement)], elapsed: u64) {
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
                self.node.forfeit_credit(&peer);
                self.state().missing.insert((f.peer, f.id));
            }
        }
    }
}
