//! The vault's metadata on the network (the network side; the vault's side
//! is `vault::replica`): publishing heads, snapshots and the signed root
//! record, finding the newest root, and pulling metadata for a recovery or
//! for a device that another device has moved ahead of.
//!
//! Root records go to every connected storage peer (`ROOT_PUT`, so the
//! peers holding the vault's fragments keep it) and into the Kademlia DHT
//! under the key derived from the root public key. Readers ask every
//! connected peer and the DHT, drop records that do not verify under the
//! key derived from their own password, and take the highest sequence
//! number.
//!
//! Several devices: each root carries a version vector (publishes per
//! device). A device publishes only when it has changes of its own; when
//! the network's root is not one its state includes, the last device to
//! sync wins and the conflict is reported (the other device keeps its
//! local state and reports it too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::crypto::{ObjectId, VaultKeys};
use crate::net::proto::{Request, Response};
use crate::net::NodeHandle;
use crate::remote::{fetch_object, Remote};
use crate::root::{dht_key, RootRecord};
use crate::vault::replica::{
    includes, refs_digest, slim, ChainRef, MetaHead, MetaObject, Pulled, RootPayload,
};

/// Pending journal bytes above which a publish writes a snapshot instead.
const MAX_HEAD_ENTRIES: usize = 2 << 20;
/// Heads kept as segments before a new snapshot.
const MAX_SEGMENTS: usize = 32;
/// The root record is offered again to peers and the DHT this often.
const ROOT_REFRESH: Duration = Duration::from_secs(3600);
/// Without local changes, the network's root is still looked at this often
/// (to report a newer version or a conflict in `status`).
const ROOT_CHECK: Duration = Duration::from_secs(300);
/// One peer's answer to a root request.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// A DHT query.
const DHT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the DHT may still answer once a connected peer has.
const DHT_GRACE: Duration = Duration::from_secs(1);
/// Metadata objects fetched at once.
const FETCH_PARALLEL: usize = 4;

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

pub use crate::remote::MetaStatus;

/// A unix time for messages.
pub fn describe_time(secs: u64) -> String {
    let ago = crate::maint::clock::now_secs().saturating_sub(secs);
    match ago {
        0..=119 => format!("{ago} s ago"),
        120..=7199 => format!("{} min ago", ago / 60),
        7200..=172_799 => format!("{} h ago", ago / 3600),
        _ => format!("{} days ago", ago / 86_400),
    }
}

/// Waits until a storage peer is connected (or `limit` passes); returns how
/// many are.
pub async fn wait_for_peers(node: &NodeHandle, limit: Duration) -> usize {
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
pub async fn find_root(node: &NodeHandle, keys: &VaultKeys) -> Lookup {
    let key = dht_key(&keys.root_public());
    let started = Instant::now();
    let dht = node.dht_get(&key);
    let peers: Vec<_> = node.storage_peers().into_iter().map(|(p, _)| p).collect();
    let asks =
        peers.iter().map(|p| {
            let node = node.clone();
            let p = *p;
            async move {
                tokio::time::timeout(ASK_TIMEOUT, node.request(p, Request::RootGet { key })).await
            }
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

/// Fetches, checks and opens one metadata object.
async fn fetch_meta(
    node: &NodeHandle,
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
    node: &NodeHandle,
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

/// What one publish did.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub seq: u64,
    pub snapshot: bool,
    pub objects: usize,
    pub bytes: u64,
    /// Peers that keep the new root record.
    pub peers: usize,
    /// Nothing had changed.
    pub unchanged: bool,
}

impl Remote {
    /// Waits until the uploader has placed these metadata objects.
    async fn wait_placed(&self, ids: &[ObjectId]) -> Result<Vec<ChainRef>, String> {
        self.kick();
        let mut last = Instant::now();
        let mut done = 0;
        loop {
            let v = self.vault.clone();
            let ids2 = ids.to_vec();
            let refs = tokio::task::spawn_blocking(move || {
                ids2.iter()
                    .map(|id| v.chain_ref(id))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            let placed = refs.iter().filter(|r| r.is_some()).count();
            if placed == ids.len() {
                return Ok(refs.into_iter().flatten().collect());
            }
            if placed > done {
                done = placed;
                last = Instant::now();
            }
            if last.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "metadata upload stalled ({placed} of {} objects placed): {}",
                    ids.len(),
                    self.last_error()
                        .unwrap_or_else(|| "no storage peers accept them".into())
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Offers a root record to every connected storage peer, this node and
    /// the DHT. Returns how many peers keep it.
    async fn put_root(&self, bytes: &[u8]) -> Result<usize, String> {
        let key = RootRecord::parse(bytes).map_err(|e| e.to_string())?.key();
        let peers: Vec<_> = self
            .node
            .storage_peers()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let puts = peers.iter().map(|p| {
            let node = self.node.clone();
            let req = Request::RootPut {
                key,
                record: bytes.to_vec(),
            };
            let p = *p;
            async move { tokio::time::timeout(ASK_TIMEOUT, node.request(p, req)).await }
        });
        let (answers, dht) = futures::join!(
            futures::future::join_all(puts),
            tokio::time::timeout(DHT_TIMEOUT, self.node.dht_put(&key, bytes.to_vec()))
        );
        let mut kept = 0;
        let mut refused = None;
        for a in answers {
            match a {
                Ok(Ok(Response::Stored)) => kept += 1,
                Ok(Ok(Response::Refused(r))) => refused = Some(r),
                _ => {}
            }
        }
        // The node's own copy is a synced RocksDB write: off the async workers.
        let (node, own) = (self.node.clone(), bytes.to_vec());
        match tokio::task::spawn_blocking(move || node.keep_root(&key, &own)).await {
            Ok(Err(e)) => tracing::warn!("keeping the root record on this node: {e}"),
            Err(e) => tracing::warn!("keeping the root record on this node: {e}"),
            Ok(Ok(_)) => {}
        }
        match dht {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("DHT put of the root record: {e}"),
            Err(_) => tracing::debug!("DHT put of the root record timed out"),
        }
        if kept == 0 {
            return Err(match refused {
                Some(r) => format!("no peer kept the root record (last refusal: {r})"),
                None => format!(
                    "no peer kept the root record ({} storage peers connected)",
                    peers.len()
                ),
            });
        }
        Ok(kept)
    }

    fn meta_status(&self) -> std::sync::MutexGuard<'_, MetaStatus> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishing as `status` shows it.
    pub fn metadata_status(&self) -> MetaStatus {
        let mut s = self.meta_status().clone();
        if let Ok(st) = self.vault.publish_state() {
            s.root_seq = st.seq;
            s.root_time = st.time;
            s.unpublished_changes = self.vault.journal_last().saturating_sub(st.upto);
        }
        s
    }

    /// Publishes the vault's metadata and a new root if anything changed
    /// since the last publish: new local changes, or metadata objects moved
    /// by repair. Every object must be on peers first (see `wait_synced`).
    pub async fn publish(&self) -> Result<Published, String> {
        let _one = self.publish_lock.lock().await;
        let r = self.publish_inner().await;
        match &r {
            Ok(_) => self.meta_status().publish_error = None,
            Err(e) => self.meta_status().publish_error = Some(e.clone()),
        }
        r
    }

    async fn publish_inner(&self) -> Result<Published, String> {
        if self.node.storage_peers().is_empty() {
            return Err(
                "no storage peers are reachable, so the metadata cannot be published; \
                 start contribution nodes (drizzle node) or mount with --peer ADDR"
                    .into(),
            );
        }
        let vault = self.vault.clone();
        let (mut st, entries, refs_now) = tokio::task::spawn_blocking(move || {
            let st = vault.publish_state()?;
            let e = vault.pending_journal(st.upto, MAX_HEAD_ENTRIES + 1)?;
            let refs = match st.head {
                Some(_) => Some(vault.state_refs(&st)?),
                None => None,
            };
            Ok::<_, crate::vault::VaultError>((st, e, refs))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let moved = refs_now
            .as_ref()
            .is_some_and(|r| refs_digest(r.iter()) != st.refs_digest);
        let look = find_root(&self.node, self.vault.keys()).await;
        // Is the network's root one this state includes (or our own)?
        let mut conflict = None;
        if let Some(net) = &look.best {
            let ours = st.head == Some(net.payload.head.id)
                || net.payload.device == st.device
                || includes(&st.vv, &net.payload.vv);
            if ours {
                self.meta_status().conflict = None;
            } else if st.seq == 0 {
                // This data dir never published nor took up a version: it is
                // a second vault made under the same name and password (an
                // init that could not ask the network). It must never
                // replace the existing one.
                let msg = format!(
                    "a vault with this name and password already exists on the network \
                     (published {}); this data dir holds a separate vault created here and is \
                     not published. To use the existing vault, mount it on an empty data dir \
                     with --vault NAME",
                    describe_time(net.payload.time)
                );
                self.meta_status().conflict = Some(msg.clone());
                return Err(msg);
            } else {
                let what = format!(
                    "another device published a version of this vault that this device does not have ({})",
                    describe_time(net.payload.time)
                );
                if entries.is_empty() {
                    // Nothing of ours to publish: never overwrite theirs.
                    let msg = if includes(&net.payload.vv, &st.vv) {
                        format!("{what}; remount to see it")
                    } else {
                        format!("{what}; this device keeps its own state (conflict)")
                    };
                    self.meta_status().conflict = Some(msg);
                    return Ok(Published {
                        seq: st.seq,
                        unchanged: true,
                        ..Default::default()
                    });
                }
                conflict = Some(format!(
                    "{what}; this device's sync replaced it (last synced wins) and the other device keeps its changes locally"
                ));
            }
        }
        let stale_root = look.best.as_ref().is_none_or(|b| b.record.seq < st.seq);
        if entries.is_empty() && st.head.is_some() && !moved && st.upto <= self.vault.journal_last()
        {
            if stale_root && !st.root.is_empty() {
                // The network lost or never got our newest root: offer it again.
                self.put_root(&st.root).await?;
            }
            return Ok(Published {
                seq: st.seq,
                unchanged: true,
                ..Default::default()
            });
        }
        let entry_bytes: u64 = entries.iter().map(|(_, e)| e.len() as u64).sum();
        // Over a conflict, a fresh snapshot: the new chain must not build on
        // metadata objects the other device may release.
        // A journal numbered below what was published (its mark lost) cannot
        // say what changed: a snapshot holds everything.
        let renumbered = st.upto > self.vault.journal_last();
        if renumbered {
            tracing::warn!("the local journal lost its position; publishing a full snapshot");
        }
        let snapshot = st.head.is_none()
            || renumbered
            || conflict.is_some()
            || st.segments.len() >= MAX_SEGMENTS
            || entry_bytes as usize > MAX_HEAD_ENTRIES
            || st.chain_bytes + entry_bytes > st.snapshot_bytes.max(1 << 20);
        let mut out = Published {
            snapshot,
            ..Default::default()
        };
        let head = if snapshot {
            let vault = self.vault.clone();
            // Parts are queued as they fill; the uploader (which looks at
            // its queue every second) starts on them during the dump.
            let (upto, staged) = tokio::task::spawn_blocking(move || vault.stage_snapshot())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            out.objects += staged.len();
            out.bytes += staged.iter().map(|(_, s)| s).sum::<u64>();
            let ids: Vec<ObjectId> = staged.iter().map(|(id, _)| *id).collect();
            let refs = self.wait_placed(&ids).await?;
            st.snapshot = ids.clone();
            st.segments.clear();
            st.snapshot_bytes = staged.iter().map(|(_, s)| s).sum();
            st.chain_bytes = 0;
            st.upto = upto;
            MetaHead {
                snapshot: refs,
                segments: vec![],
                entries: vec![],
            }
        } else {
            if st.head_entries {
                st.segments.extend(st.head);
            }
            let refs = refs_now.expect("a head exists");
            let snapshot_refs = refs[..st.snapshot.len()].to_vec();
            let mut segment_refs = refs[st.snapshot.len()..].to_vec();
            if !st.head_entries {
                segment_refs.pop();
            }
            st.chain_bytes += entry_bytes;
            if let Some((last, _)) = entries.last() {
                st.upto = *last;
            }
            MetaHead {
                snapshot: snapshot_refs,
                segments: segment_refs,
                entries: entries.into_iter().map(|(_, e)| e).collect(),
            }
        };
        st.head_entries = !head.entries.is_empty();
        // The placements this publish names, as named (repair may move an
        // object meanwhile; the next check then sees the difference).
        let mut named: Vec<ChainRef> = head
            .snapshot
            .iter()
            .chain(&head.segments)
            .cloned()
            .collect();
        let head_plain = MetaObject::Head(head).encode();
        let staged = self.stage(std::slice::from_ref(&head_plain)).await?;
        let head_id = staged[0].0;
        out.objects += 1;
        out.bytes += staged[0].1;
        let head_ref = self.wait_placed(&[head_id]).await?.remove(0);
        st.head = Some(head_id);
        if let Some(b) = &look.best {
            // A root that includes our state (our own publish that we did
            // not record before a crash): keep its versions. After a
            // conflict ours stay apart, so the other device sees it too.
            if conflict.is_none() && includes(&b.payload.vv, &st.vv) {
                st.vv = b.payload.vv.clone();
            }
        }
        *st.vv.entry(st.device).or_default() += 1;
        st.seq = st.seq.max(look.best.as_ref().map_or(0, |b| b.record.seq)) + 1;
        st.time = crate::maint::clock::now_secs();
        let payload = RootPayload {
            format: 1,
            head: ChainRef {
                id: head_id,
                placement: slim(&head_ref.placement),
            },
            device: st.device,
            vv: st.vv.clone(),
            k: self.k,
            n: self.n,
            time: st.time,
        };
        let record = RootRecord::sign(
            &self.vault.keys().root_signer(),
            st.seq,
            self.kdf,
            payload.seal(self.vault.keys()),
        );
        let bytes = record.encode();
        if bytes.len() > crate::root::MAX_ROOT {
            return Err(format!(
                "the root record is {} bytes, over the {} limit (n = {} is too large)",
                bytes.len(),
                crate::root::MAX_ROOT,
                self.n
            ));
        }
        out.peers = self.put_root(&bytes).await?;
        out.seq = st.seq;
        st.root = bytes;
        named.push(head_ref);
        st.refs_digest = refs_digest(named.iter());
        let vault = self.vault.clone();
        let st2 = st.clone();
        tokio::task::spawn_blocking(move || vault.finish_publish(&st2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if let Some(c) = &conflict {
            tracing::warn!("{c}");
        }
        self.meta_status().conflict = conflict;
        tracing::info!(
            seq = out.seq,
            snapshot = out.snapshot,
            objects = out.objects,
            bytes = out.bytes,
            peers = out.peers,
            "published the vault's metadata"
        );
        Ok(out)
    }

    async fn stage(&self, plains: &[Vec<u8>]) -> Result<Vec<(ObjectId, u64)>, String> {
        let vault = self.vault.clone();
        let plains = plains.to_vec();
        let r = tokio::task::spawn_blocking(move || vault.stage_meta_objects(&plains))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string());
        self.kick();
        r
    }

    /// Publishes in the background: when the upload queue is empty and
    /// something changed, at most every `publish_every`; offers the root
    /// again every [`ROOT_REFRESH`].
    pub(crate) async fn publish_loop(self: Arc<Self>) {
        let mut last_refresh = Instant::now();
        let mut last_check: Option<Instant> = None;
        loop {
            tokio::time::sleep(self.publish_every).await;
            let vault = self.vault.clone();
            let (st, due) = match tokio::task::spawn_blocking(move || {
                vault.trim_unpublished_journal()?;
                let st = vault.publish_state()?;
                let due = vault.publish_due(&st)?;
                Ok::<_, crate::vault::VaultError>((st, due))
            })
            .await
            {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::warn!("reading the publish state: {e}");
                    continue;
                }
                Err(_) => continue,
            };
            if self.vault.upload_backlog().objects > 0 || self.node.storage_peers().is_empty() {
                continue;
            }
            if due {
                if let Err(e) = self.publish().await {
                    tracing::warn!("publishing the metadata failed (will retry): {e}");
                }
                last_refresh = Instant::now();
            } else if last_check.is_none_or(|t| t.elapsed() >= ROOT_CHECK) {
                // Nothing to publish: this only looks at the network's root.
                if let Err(e) = self.publish().await {
                    tracing::debug!("checking the network's root: {e}");
                }
                last_check = Some(Instant::now());
            } else if last_refresh.elapsed() >= ROOT_REFRESH && !st.root.is_empty() {
                if let Err(e) = self.put_root(&st.root).await {
                    tracing::warn!("offering the root record again failed: {e}");
                }
                last_refresh = Instant::now();
            }
        }
    }
}

/// Finds the vault on the network and imports its metadata into the (closed)
/// vault store in `dir`; `device` keeps a device id. Returns the pull's size.
pub async fn pull_into(
    node: &NodeHandle,
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
