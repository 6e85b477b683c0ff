//! Publishing: the new journal entries become a head (or, when the chain
//! outgrows it, a fresh snapshot), staged and uploaded like any object;
//! then a signed root record goes to every storage peer and the DHT. The
//! conflict rule decides whether another device's newer root may be
//! replaced. Also the background publish loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lookup::{ASK_TIMEOUT, DHT_TIMEOUT};
use super::{describe_time, find_root, Lookup, MetaStatus, Published};
use crate::crypto::ObjectId;
use crate::net::proto::{Request, Response};
use crate::remote::Remote;
use crate::root::RootRecord;
use crate::vault::replica::{
    includes, refs_digest, relate, slim, ChainRef, MetaHead, MetaObject, PublishState, Relation,
    RootPayload,
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

/// What a publish starts from: the publish state, the journal entries not
/// yet published, and the placements the current chain names now.
type PendingPublish = (PublishState, Vec<(u64, Vec<u8>)>, Option<Vec<ChainRef>>);

/// What the network's root means for a publish.
enum Verdict {
    /// Go ahead; `Some` names the other device's version this replaces.
    Publish(Option<String>),
    /// Nothing of ours to publish and another device's version is newer:
    /// it stays.
    Keep,
}

/// A head that carries the new journal `entries` on the current chain
/// (the previous head's entries become a segment).
fn segment_head(
    st: &mut PublishState,
    entries: Vec<(u64, Vec<u8>)>,
    refs_now: Option<Vec<ChainRef>>,
    entry_bytes: u64,
) -> MetaHead {
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
            let req = Request::RootPut {
                key,
                record: bytes.to_vec(),
            };
            let put = self.node.request(*p, req);
            async move { tokio::time::timeout(ASK_TIMEOUT, put).await }
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
        let (mut st, entries, refs_now) = self.load_publish_state().await?;
        let moved = refs_now
            .as_ref()
            .is_some_and(|r| refs_digest(r.iter()) != st.refs_digest);
        let look = find_root(&*self.node, self.vault.keys()).await;
        // Is the network's root one this state includes (or our own)?
        let conflict = match self.verdict(&st, entries.is_empty(), &look)? {
            Verdict::Publish(conflict) => conflict,
            Verdict::Keep => {
                return Ok(Published {
                    seq: st.seq,
                    unchanged: true,
                    ..Default::default()
                })
            }
        };
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
        let snapshot = self.needs_snapshot(&st, entry_bytes, conflict.is_some());
        let mut out = Published {
            snapshot,
            ..Default::default()
        };
        let head = if snapshot {
            self.snapshot_head(&mut st, &mut out).await?
        } else {
            segment_head(&mut st, entries, refs_now, entry_bytes)
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
        let bytes = self.sign_root(&mut st, &look, conflict.is_none(), &head_ref)?;
        out.peers = self.put_root(&bytes).await?;
        out.seq = st.seq;
        st.root = bytes;
        named.push(head_ref);
        st.refs_digest = refs_digest(named.iter());
        self.record_publish(&st, conflict, &out).await?;
        Ok(out)
    }

    /// Whether this publish writes a fresh snapshot rather than a head on
    /// the current chain.
    fn needs_snapshot(&self, st: &PublishState, entry_bytes: u64, conflict: bool) -> bool {
        // Over a conflict, a fresh snapshot: the new chain must not build on
        // metadata objects the other device may release.
        // A journal numbered below what was published (its mark lost) cannot
        // say what changed: a snapshot holds everything.
        let renumbered = st.upto > self.vault.journal_last();
        if renumbered {
            tracing::warn!("the local journal lost its position; publishing a full snapshot");
        }
        st.head.is_none()
            || renumbered
            || conflict
            || st.segments.len() >= MAX_SEGMENTS
            || entry_bytes as usize > MAX_HEAD_ENTRIES
            || st.chain_bytes + entry_bytes > st.snapshot_bytes.max(1 << 20)
    }

    /// Records a publish done (the state, in the vault) and reports it.
    async fn record_publish(
        &self,
        st: &PublishState,
        conflict: Option<String>,
        out: &Published,
    ) -> Result<(), String> {
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
        Ok(())
    }

    /// The publish state, the journal entries since the last publish (at
    /// most a head's worth and one more) and, if a head exists, the
    /// placements the current chain names now.
    async fn load_publish_state(&self) -> Result<PendingPublish, String> {
        let vault = self.vault.clone();
        tokio::task::spawn_blocking(move || {
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
        .map_err(|e| e.to_string())
    }

    /// The conflict rule: whether the network's root (in `look`) lets this
    /// device publish. A root this state includes (or our own) does; a
    /// vault that never published must not replace another one of the same
    /// name (an error); another device's newer version is kept when there
    /// is nothing of ours to publish, else replaced (last synced wins) and
    /// reported.
    fn verdict(
        &self,
        st: &PublishState,
        nothing_new: bool,
        look: &Lookup,
    ) -> Result<Verdict, String> {
        let Some(net) = &look.best else {
            return Ok(Verdict::Publish(None));
        };
        let p = &net.payload;
        let relation = relate(st, &p.head.id, p.device, &p.vv);
        if relation == Relation::Included {
            self.meta_status().conflict = None;
            return Ok(Verdict::Publish(None));
        }
        if relation == Relation::Separate {
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
        }
        let what = format!(
            "another device published a version of this vault that this device does not have ({})",
            describe_time(net.payload.time)
        );
        if nothing_new {
            // Nothing of ours to publish: never overwrite theirs.
            let msg = if relation == Relation::Newer {
                format!("{what}; remount to see it")
            } else {
                format!("{what}; this device keeps its own state (conflict)")
            };
            self.meta_status().conflict = Some(msg);
            return Ok(Verdict::Keep);
        }
        Ok(Verdict::Publish(Some(format!(
            "{what}; this device's sync replaced it (last synced wins) and the other device keeps its changes locally"
        ))))
    }

    /// A head over a fresh snapshot of the whole metadata (staged, then
    /// placed); `st` starts a new chain.
    async fn snapshot_head(
        &self,
        st: &mut PublishState,
        out: &mut Published,
    ) -> Result<MetaHead, String> {
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
        Ok(MetaHead {
            snapshot: refs,
            segments: vec![],
            entries: vec![],
        })
    }

    /// Signs the next root record for head `head_ref`: the version vector
    /// (taken up from the network's root when it includes ours and there is
    /// no conflict) counts this publish, the sequence number passes every
    /// root seen. Refused if over the DHT's size limit.
    fn sign_root(
        &self,
        st: &mut PublishState,
        look: &Lookup,
        no_conflict: bool,
        head_ref: &ChainRef,
    ) -> Result<Vec<u8>, String> {
        if let Some(b) = &look.best {
            // A root that includes our state (our own publish that we did
            // not record before a crash): keep its versions. After a
            // conflict ours stay apart, so the other device sees it too.
            if no_conflict && includes(&b.payload.vv, &st.vv) {
                st.vv = b.payload.vv.clone();
            }
        }
        *st.vv.entry(st.device).or_default() += 1;
        st.seq = st.seq.max(look.best.as_ref().map_or(0, |b| b.record.seq)) + 1;
        st.time = crate::maint::clock::now_secs();
        let payload = RootPayload {
            format: 1,
            head: ChainRef {
                id: head_ref.id,
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
        Ok(bytes)
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
    /// again every [`ROOT_REFRESH`]. The ages are counted on the
    /// maintenance clock, so a suspend or months of simulated time catch
    /// up at the next wake.
    pub(crate) async fn publish_loop(self: Arc<Self>) {
        let mut last_refresh = self.clock.now();
        let mut last_check: Option<u64> = None;
        let since = |t: u64| Duration::from_secs(self.clock.now().saturating_sub(t));
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
                last_refresh = self.clock.now();
            } else if last_check.is_none_or(|t| since(t) >= ROOT_CHECK) {
                // Nothing to publish: this only looks at the network's root.
                if let Err(e) = self.publish().await {
                    tracing::debug!("checking the network's root: {e}");
                }
                last_check = Some(self.clock.now());
            } else if since(last_refresh) >= ROOT_REFRESH && !st.root.is_empty() {
                if let Err(e) = self.put_root(&st.root).await {
                    tracing::warn!("offering the root record again failed: {e}");
                }
                last_refresh = self.clock.now();
            }
        }
    }
}
