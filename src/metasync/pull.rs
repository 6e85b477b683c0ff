//! Pulling a vault's metadata from the network: the head named by a
//! root, then its snapshot parts and segments (a few at once), for a
//! recovery or to take up another device's newer version.

use futures::StreamExt;

use super::FoundRoot;
use crate::crypto::{ObjectId, VaultKeys};
use crate::net::Network;
use crate::remote::fetch_object;
use crate::vault::replica::{ChainRef, MetaObject, Pulled};

/// Metadata objects fetched at once.
const FETCH_PARALLEL: usize = 4;

/// Fetches, checks and opens one metadata object.
async fn fetch_meta(
    node: &dyn Network,
    keys: &VaultKeys,
    r: &ChainRef,
) -> Result<(MetaObject, u64), String> {
    let sealed = fetch_object(node, &r.id, &r.placement, crate::remote::DEFAULT_READ_WAIT).await?;
    if ObjectId::of(&sealed) != r.id {
        return Err(format!("metadata object {} does not match its id", r.id));
    }
    let len = sealed.len() as u64;
    let plain = keys
        .open_object(sealed)
        .map_err(|e| format!("metadata object {}: {e}", r.id))?;
    Ok((MetaObject::decode(&plain)?, len))
}

/// Progress of a pull: objects and bytes fetched so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct PullProgress {
    pub objects: usize,
    pub total_objects: usize,
    pub bytes: u64,
}

/// Fetches the metadata a root names (the head, then the snapshot parts and
/// segments, several at once).
pub async fn pull(
    node: &dyn Network,
    keys: &VaultKeys,
    found: &FoundRoot,
    mut progress: impl FnMut(PullProgress),
) -> Result<(Pulled, PullProgress), String> {
    let head = found.payload.head.clone();
    let (obj, len) = fetch_meta(node, keys, &head).await?;
    let MetaObject::Head(meta) = obj else {
        return Err("the root names a metadata object that is not a head".into());
    };
    let refs: Vec<ChainRef> = meta
        .snapshot
        .iter()
        .chain(&meta.segments)
        .cloned()
        .collect();
    let mut p = PullProgress {
        objects: 1,
        total_objects: 1 + refs.len(),
        bytes: len,
    };
    progress(p);
    let mut fetched = futures::stream::iter(refs.iter())
        .map(|r| fetch_meta(node, keys, r))
        .buffered(FETCH_PARALLEL);
    let mut parts = Vec::new();
    let mut segments = Vec::new();
    let mut i = 0;
    while let Some(r) = fetched.next().await {
        let (obj, len) = r?;
        match (i < meta.snapshot.len(), obj) {
            (true, MetaObject::Part(changes)) => parts.push(changes),
            (false, MetaObject::Head(h)) => segments.push(h),
            _ => return Err("a metadata object has the wrong kind".into()),
        }
        i += 1;
        p.objects += 1;
        p.bytes += len;
        progress(p);
    }
    Ok((
        Pulled {
            head,
            payload: found.payload.clone(),
            seq: found.record.seq,
            root: found.bytes.clone(),
            meta,
            parts,
            segments,
        },
        p,
    ))
}

/// Finds the vault on the network and imports its metadata into the (closed)
/// vault store in `dir`; `device` keeps a device id. Returns the pull's size.
pub async fn pull_into(
    node: &dyn Network,
    keys: &VaultKeys,
    found: &FoundRoot,
    dir: &std::path::Path,
    device: Option<crate::vault::replica::DeviceId>,
    progress: impl FnMut(PullProgress),
) -> Result<PullProgress, String> {
    let (pulled, p) = pull(node, keys, found, progress).await?;
    // Writing the records is blocking work (keys cannot move to the pool).
    tokio::task::block_in_place(|| {
        crate::vault::Vault::import_pulled(dir, keys, &pulled, device).map_err(|e| e.to_string())
    })?;
    Ok(p)
}
