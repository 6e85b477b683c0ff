//! Finding the newest root: every connected peer is asked (`ROOT_GET`)
//! and the DHT queried (1 s more once a peer answered, else up to 10 s);
//! records that do not verify under this password's key are dropped, the
//! highest valid sequence number wins.

use std::time::{Duration, Instant};

use crate::crypto::VaultKeys;
use crate::net::proto::{Request, Response};
use crate::net::Network;
use crate::root::{dht_key, RootRecord};
use crate::vault::replica::RootPayload;

/// One peer's answer to a root request.
pub(super) const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// A DHT query.
pub(super) const DHT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the DHT may still answer once a connected peer has.
const DHT_GRACE: Duration = Duration::from_secs(1);

/// A valid root record found on the network.
#[derive(Clone, Debug)]
pub struct FoundRoot {
    pub record: RootRecord,
    pub bytes: Vec<u8>,
    pub payload: RootPayload,
}

/// What a root lookup saw.
#[derive(Debug, Default)]
pub struct Lookup {
    /// The valid record with the highest sequence number.
    pub best: Option<FoundRoot>,
    /// Peers asked directly.
    pub asked: usize,
    /// Peers that answered (with a record or without).
    pub answered: usize,
    /// Records that did not verify (bad signature, wrong key, unreadable).
    pub invalid: usize,
}

/// Waits until a storage peer is connected (or `limit` passes); returns how
/// many are.
pub async fn wait_for_peers(node: &dyn Network, limit: Duration) -> usize {
    let start = Instant::now();
    loop {
        let n = node.storage_peers().len();
        if n > 0 || start.elapsed() >= limit {
            // A moment more lets Kademlia and identify find the rest.
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            return node.storage_peers().len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks a record found for this vault: it must verify under the key
/// derived from the password and its payload must open.
pub fn check_root(keys: &VaultKeys, bytes: &[u8]) -> Result<FoundRoot, String> {
    let key = dht_key(&keys.root_public());
    let record = RootRecord::check(bytes, &key).map_err(|e| e.to_string())?;
    let payload = RootPayload::open(keys, &record.payload)?;
    Ok(FoundRoot {
        record,
        bytes: bytes.to_vec(),
        payload,
    })
}

/// Asks every connected storage peer and the DHT for the vault's root.
/// When a connected peer already answered with a valid record, the DHT gets
/// only a short grace: its queries can wait long on departed peers.
pub async fn find_root(node: &dyn Network, keys: &VaultKeys) -> Lookup {
    let key = dht_key(&keys.root_public());
    let started = Instant::now();
    let dht = node.dht_get(&key);
    let peers: Vec<_> = node.storage_peers().into_iter().map(|(p, _)| p).collect();
    let asks = peers.iter().map(|p| {
        let ask = node.request(*p, Request::RootGet { key });
        async move { tokio::time::timeout(ASK_TIMEOUT, ask).await }
    });
    let direct = futures::future::join_all(asks).await;
    let mut look = Lookup {
        asked: peers.len(),
        ..Default::default()
    };
    let consider = |look: &mut Lookup, b: &[u8]| match check_root(keys, b) {
        Ok(f) => {
            if look
                .best
                .as_ref()
                .is_none_or(|best| f.record.seq > best.record.seq)
            {
                look.best = Some(f);
            }
        }
        Err(e) => {
            look.invalid += 1;
            tracing::warn!("ignored a root record for this vault: {e}");
        }
    };
    for r in direct {
        match r {
            Ok(Ok(Response::Root(b))) => {
                look.answered += 1;
                consider(&mut look, &b);
            }
            Ok(Ok(_)) => look.answered += 1,
            _ => {}
        }
    }
    let wait = if look.best.is_some() {
        DHT_GRACE
    } else {
        DHT_TIMEOUT.saturating_sub(started.elapsed())
    };
    for b in tokio::time::timeout(wait, dht).await.unwrap_or_default() {
        consider(&mut look, &b);
    }
    look
}
