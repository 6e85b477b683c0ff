//! The vault's metadata as objects on the network (the vault's side; the
//! network side is `metasync`).
//!
//! Every batch that changes a replicated family (inodes, names, chunk maps,
//! refcounts, xattrs, counters, placements) also appends its changes to the
//! local `Journal` family (see `store`). Publishing turns them into objects:
//!
//! - a **snapshot**: every replicated record, split into parts of at most
//!   [`PART_BYTES`];
//! - a **head** per publish: the new journal entries plus the list of the
//!   snapshot parts and earlier heads (segments) with their current
//!   placements, so a reader needs only the head's placement (in the root
//!   record) to find everything.
//!
//! Metadata objects are sealed like file chunks (same padding, so peers
//! cannot tell them apart), stored locally, uploaded by the ordinary
//! uploader, renewed, audited and repaired like any object. Their records
//! live in the `Chain` family, which is not replicated, so publishing never
//! creates journal entries of its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;
use crate::store::Change;

/// Largest plaintext of one snapshot part.
pub const PART_BYTES: usize = 3 << 20;
const MAGIC: &[u8; 4] = b"DZMD";
const FORMAT: u8 = 1;
const STATE_KEY: &[u8] = b"state";

/// Identifies one device of a vault (random, local).
pub type DeviceId = [u8; 16];
/// Publishes per device: which versions a state includes.
pub type VersionVector = BTreeMap<DeviceId, u64>;

pub use super::versions::{includes, relate, Relation};

/// A metadata object on the network: its id and where its fragments are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRef {
    pub id: ObjectId,
    pub placement: Placement,
}

/// A journal head: new changes and the list of everything else.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MetaHead {
    pub snapshot: Vec<ChainRef>,
    /// Earlier heads whose entries come after the snapshot, oldest first.
    pub segments: Vec<ChainRef>,
    /// Journal entries (each a batch of changes), oldest first.
    pub entries: Vec<Vec<u8>>,
}

/// What a metadata object holds.
#[derive(Serialize, Deserialize)]
pub enum MetaObject {
    Head(MetaHead),
    Part(Vec<Change>),
}

impl MetaObject {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(FORMAT);
        out.extend_from_slice(&encode(self));
        out
    }

    pub fn decode(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() < 5 || &b[..4] != MAGIC {
            return Err("not a metadata object".into());
        }
        if b[4] != FORMAT {
            return Err(format!("unknown metadata format {}", b[4]));
        }
        decode(&b[5..]).map_err(|e| format!("malformed metadata object: {e}"))
    }
}

/// The root record's payload (sealed under the metadata key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPayload {
    pub format: u32,
    /// The newest head; its placement without audit answers (kept small).
    pub head: ChainRef,
    /// The device that published.
    pub device: DeviceId,
    pub vv: VersionVector,
    pub k: u32,
    pub n: u32,
    /// Unix seconds at publishing.
    pub time: u64,
}

const ROOT_AD: &[u8] = b"drizzle root payload v1";

impl RootPayload {
    pub fn seal(&self, keys: &VaultKeys) -> Vec<u8> {
        keys.seal_meta(ROOT_AD, &encode(self))
    }

    pub fn open(keys: &VaultKeys, sealed: &[u8]) -> std::result::Result<Self, String> {
        let plain = keys
            .open_meta(ROOT_AD, sealed)
            .map_err(|e| format!("root payload: {e}"))?;
        decode(&plain).map_err(|e| format!("root payload: {e}"))
    }
}

/// Local state of publishing (in the `Chain` family, sealed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishState {
    pub device: DeviceId,
    /// Sequence number of the last root published or adopted here.
    pub seq: u64,
    /// Versions the local state includes (as of that root).
    pub vv: VersionVector,
    pub head: Option<ObjectId>,
    /// Whether the head carries journal entries (it then becomes a segment).
    pub head_entries: bool,
    pub snapshot: Vec<ObjectId>,
    pub segments: Vec<ObjectId>,
    /// Local journal entries up to here are in the published metadata.
    pub upto: u64,
    pub snapshot_bytes: u64,
    /// Bytes of journal entries published since the snapshot.
    pub chain_bytes: u64,
    /// Digest of the placements the published head and root name: when
    /// repair moves a metadata object, a new head is published.
    pub refs_digest: [u8; 32],
    /// The root record last published or adopted (re-put periodically).
    pub root: Vec<u8>,
    /// Unix seconds of that root.
    pub time: u64,
}

#[derive(Serialize, Deserialize)]
struct ChainRecord {
    size: u64,
    placement: Option<Placement>,
}

/// Metadata fetched from the network, ready to import.
pub struct Pulled {
    pub head: ChainRef,
    pub payload: RootPayload,
    pub seq: u64,
    pub root: Vec<u8>,
    pub meta: MetaHead,
    pub parts: Vec<Vec<Change>>,
    pub segments: Vec<MetaHead>,
}

impl Pulled {
    /// The journal entries of the segments, then of the head, decoded.
    fn entries(&self) -> Result<Vec<Vec<Change>>> {
        self.segments
            .iter()
            .chain(std::iter::once(&self.meta))
            .flat_map(|h| &h.entries)
            .map(|e| decode(e).map_err(|e| corrupt("metadata journal entry", e)))
            .collect()
    }
}

/// A placement without audit answers (what a root record carries).
pub fn slim(p: &Placement) -> Placement {
    let mut p = p.clone();
    for f in &mut p.fragments {
        f.proofs.clear();
    }
    p
}

/// Digest of where the metadata objects a publish names are (audit
/// answers left out): it changes when repair moves one of them.
pub fn refs_digest<'a>(refs: impl IntoIterator<Item = &'a ChainRef>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for r in refs {
        h.update(&r.id.0);
        h.update(&encode(&slim(&r.placement)));
    }
    *h.finalize().as_bytes()
}

fn read_state(store: &Store, keys: &VaultKeys) -> Result<PublishState> {
    match store.get(Cf::Chain, STATE_KEY)? {
        Some(v) => decode(&open_record(keys, Cf::Chain, STATE_KEY, &v)?)
            .map_err(|e| corrupt("publish state", e)),
        None => Ok(PublishState {
            device: rand::random(),
            ..Default::default()
        }),
    }
}

fn state_batch(keys: &VaultKeys, st: &PublishState) -> Batch {
    let mut b = Batch::default();
    b.put(
        Cf::Chain,
        STATE_KEY.to_vec(),
        seal_record(keys, Cf::Chain, STATE_KEY, &encode(st)),
    );
    b
}

fn chain_batch_put(keys: &VaultKeys, b: &mut Batch, id: &ObjectId, rec: &ChainRecord) {
    b.put(
        Cf::Chain,
        id.0.to_vec(),
        seal_record(keys, Cf::Chain, &id.0, &encode(rec)),
    );
}

impl Vault {
    fn chain_record(&self, id: &ObjectId) -> Result<Option<ChainRecord>> {
        match self.store.get(Cf::Chain, &id.0)? {
            Some(v) => Ok(Some(
                decode(&open_record(&self.keys, Cf::Chain, &id.0, &v)?)
                    .map_err(|e| corrupt("metadata object record", e))?,
            )),
            None => Ok(None),
        }
    }

    pub fn publish_state(&self) -> Result<PublishState> {
        read_state(&self.store, &self.keys)
    }

    /// The newest local journal entry's sequence number.
    pub fn journal_last(&self) -> u64 {
        self.store.journal_last()
    }

    /// Local journal entries not yet published (up to about `max_bytes`).
    pub fn pending_journal(&self, after: u64, max_bytes: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self.store.journal_since(after, max_bytes)?)
    }

    /// Writes a snapshot of every replicated record now: parts of at most
    /// [`PART_BYTES`], each sealed, stored and queued for upload as soon as
    /// it is full (so memory holds one part at a time). Returns the last
    /// journal entry the snapshot includes and the parts' ids and sizes.
    pub fn stage_snapshot(&self) -> Result<(u64, Vec<(ObjectId, u64)>)> {
        let mut staged = Vec::new();
        let mut cur: Vec<Change> = Vec::new();
        let mut bytes = 0;
        let upto = self.store.dump_replicated(|c: Change| {
            let size = c.1.len() + c.2.as_ref().map_or(0, |v| v.len()) + 8;
            if !cur.is_empty() && bytes + size > PART_BYTES {
                let part = MetaObject::Part(std::mem::take(&mut cur)).encode();
                staged.extend(self.stage_meta_objects(&[part])?);
                bytes = 0;
            }
            bytes += size;
            cur.push(c);
            Ok::<_, VaultError>(())
        })?;
        let part = MetaObject::Part(cur).encode();
        staged.extend(self.stage_meta_objects(&[part])?);
        Ok((upto, staged))
    }

    /// Seals metadata objects, stores them locally and queues them for
    /// upload. Returns their ids and sealed sizes.
    pub fn stage_meta_objects(&self, plains: &[Vec<u8>]) -> Result<Vec<(ObjectId, u64)>> {
        let mut out = Vec::new();
        let mut batch = Batch::default();
        for p in plains {
            let sealed = self.keys.seal_object(p);
            let id = ObjectId::of(&sealed);
            batch.put_object(&self.store, &id, &sealed)?;
            chain_batch_put(
                &self.keys,
                &mut batch,
                &id,
                &ChainRecord {
                    size: sealed.len() as u64,
                    placement: None,
                },
            );
            batch.put(Cf::Uploads, id.0.to_vec(), Vec::new());
            out.push((id, sealed.len() as u64));
        }
        let mut inner = self.lock();
        for (id, size) in &out {
            if self.store.get(Cf::Uploads, &id.0)?.is_none() {
                inner.uploads.objects += 1;
                inner.uploads.bytes += size;
            }
        }
        self.store.write(batch)?;
        Ok(out)
    }

    /// A metadata object's reference, once it is on peers.
    pub fn chain_ref(&self, id: &ObjectId) -> Result<Option<ChainRef>> {
        Ok(self
            .chain_record(id)?
            .and_then(|r| r.placement.map(|placement| ChainRef { id: *id, placement })))
    }

    /// Current references of a publish state's objects (snapshot parts,
    /// segments, head), from the chain records.
    pub fn state_refs(&self, st: &PublishState) -> Result<Vec<ChainRef>> {
        st.snapshot
            .iter()
            .chain(&st.segments)
            .chain(&st.head)
            .map(|id| {
                self.chain_ref(id)?
                    .ok_or_else(|| corrupt(format!("metadata object {id}"), "has no placement"))
            })
            .collect()
    }

    /// Whether a publish has work: never published, new journal entries, a
    /// journal behind its recorded position, or metadata objects that repair
    /// moved since the head named them.
    pub fn publish_due(&self, st: &PublishState) -> Result<bool> {
        Ok(st.head.is_none()
            || !self.pending_journal(st.upto, 1)?.is_empty()
            || st.upto > self.journal_last()
            || refs_digest(self.state_refs(st)?.iter()) != st.refs_digest)
    }

    /// Records where a metadata object's fragments are (from
    /// `commit_placement`, under the vault lock). False if it is no
    /// metadata object (any more).
    pub(super) fn commit_chain_placement(
        &self,
        inner: &mut Inner,
        id: &ObjectId,
        placement: &Placement,
    ) -> Result<bool> {
        let Some(mut rec) = self.chain_record(id)? else {
            return Ok(false);
        };
        rec.placement = Some(placement.clone());
        let mut batch = Batch::default();
        chain_batch_put(&self.keys, &mut batch, id, &rec);
        super::released::unrelease(&mut batch, placement);
        self.dequeue_upload(inner, &mut batch, id, rec.size)?;
        let local = self.mark_cached(&mut batch, id, rec.size)?;
        self.store.write(batch)?;
        if local {
            self.note_cached(id, rec.size);
        }
        Ok(true)
    }

    /// Placements of every metadata object on peers.
    pub fn metadata_placements(&self) -> Result<Vec<(ObjectId, Placement)>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(Cf::Chain, &[], usize::MAX)? {
            if k.len() != 32 {
                continue;
            }
            let rec: ChainRecord = decode(&open_record(&self.keys, Cf::Chain, &k, &v)?)
                .map_err(|e| corrupt("metadata object record", e))?;
            if let Some(p) = rec.placement {
                out.push((ObjectId(k[..].try_into().expect("32 bytes")), p));
            }
        }
        Ok(out)
    }

    /// Swaps a metadata object's placement after repair (see
    /// `replace_placement`). None if it is no metadata object.
    pub(super) fn replace_chain_placement(
        &self,
        id: &ObjectId,
        old: &Placement,
        new: &Placement,
    ) -> Result<Option<bool>> {
        let Some(mut rec) = self.chain_record(id)? else {
            return Ok(None);
        };
        if rec.placement.as_ref() != Some(old) {
            return Ok(Some(false));
        }
        rec.placement = Some(new.clone());
        let mut batch = Batch::default();
        chain_batch_put(&self.keys, &mut batch, id, &rec);
        super::released::unrelease(&mut batch, new);
        self.store.write(batch)?;
        Ok(Some(true))
    }

    /// Whether an object is a metadata object (queued or placed).
    pub(super) fn is_chain_object(&self, id: &ObjectId) -> Result<Option<u64>> {
        Ok(self.chain_record(id)?.map(|r| r.size))
    }

    /// Saves the state of a finished publish, releases every metadata
    /// object it does not name (superseded, or staged by a publish that a
    /// crash interrupted; their leases are cancelled in the background) and
    /// drops the journal entries now on the network.
    pub fn finish_publish(&self, st: &PublishState) -> Result<()> {
        let mut batch = state_batch(&self.keys, st);
        let keep: std::collections::HashSet<&ObjectId> = st
            .snapshot
            .iter()
            .chain(&st.segments)
            .chain(&st.head)
            .collect();
        // Decrypted before taking the lock: only publishing (this caller)
        // adds or drops metadata object records.
        let mut gone = Vec::new();
        for (k, v) in self.store.scan(Cf::Chain, &[], usize::MAX)? {
            let Ok(raw) = <[u8; 32]>::try_from(&k[..]) else {
                continue;
            };
            let id = ObjectId(raw);
            if keep.contains(&id) {
                continue;
            }
            let rec: ChainRecord = decode(&open_record(&self.keys, Cf::Chain, &k, &v)?)
                .map_err(|e| corrupt("metadata object record", e))?;
            for f in rec.placement.iter().flat_map(|p| &p.fragments) {
                super::released::release(&mut batch, &id, f);
            }
            batch.delete(Cf::Chain, id.0.to_vec());
            batch.delete(Cf::Cached, id.0.to_vec());
            batch.delete_object(&id, rec.size);
            gone.push((id, rec.size));
        }
        let mut inner = self.lock();
        for (id, size) in &gone {
            self.dequeue_upload(&mut inner, &mut batch, id, *size)?;
        }
        self.store.write(batch)?;
        drop(inner);
        for (id, _) in &gone {
            self.forget_cached(id);
        }
        self.store.trim_journal(st.upto)?;
        self.store.sync()?;
        Ok(())
    }

    /// Drops journal entries that no publish will need: before the first
    /// publish, the first snapshot includes everything.
    pub fn trim_unpublished_journal(&self) -> Result<()> {
        let st = self.publish_state()?;
        if st.head.is_none() {
            self.store.trim_journal(self.store.journal_last())?;
        }
        Ok(())
    }

    /// Reads the publish state of a closed vault, and whether it has local
    /// changes not yet published.
    pub fn local_publish_state(dir: &Path, keys: &VaultKeys) -> Result<(PublishState, bool)> {
        let store = Store::open(dir)?;
        let st = read_state(&store, keys)?;
        let pending = !store.journal_since(st.upto, 1)?.is_empty();
        Ok((st, pending))
    }

    /// Replaces the metadata of the (closed) vault store in `dir` with what
    /// was fetched from the network. File contents stay on peers until
    /// read. `device` keeps this machine's device id (None: a new one).
    pub fn import_pulled(
        dir: &Path,
        keys: &VaultKeys,
        pulled: &Pulled,
        device: Option<DeviceId>,
    ) -> Result<()> {
        let store = Store::open(dir)?;
        let entries = pulled.entries()?;
        let has_counters = pulled
            .parts
            .iter()
            .chain(&entries)
            .flatten()
            .any(|(code, k, v)| {
                Cf::from_code(*code) == Some(Cf::Meta) && k == COUNTERS_KEY && v.is_some()
            });
        if !has_counters {
            return Err(corrupt("metadata", "no counters record"));
        }
        let mut batch = Batch::default();
        let all = pulled
            .meta
            .snapshot
            .iter()
            .chain(&pulled.meta.segments)
            .chain(std::iter::once(&pulled.head));
        for r in all {
            chain_batch_put(
                keys,
                &mut batch,
                &r.id,
                &ChainRecord {
                    size: r.placement.len,
                    placement: Some(r.placement.clone()),
                },
            );
        }
        let mut segments: Vec<ObjectId> = pulled.meta.segments.iter().map(|r| r.id).collect();
        let head_entries = !pulled.meta.entries.is_empty();
        let st = PublishState {
            device: device.unwrap_or_else(rand::random),
            seq: pulled.seq,
            vv: pulled.payload.vv.clone(),
            head: Some(pulled.head.id),
            head_entries,
            snapshot: pulled.meta.snapshot.iter().map(|r| r.id).collect(),
            segments: std::mem::take(&mut segments),
            upto: store.journal_last(),
            snapshot_bytes: pulled.meta.snapshot.iter().map(|r| r.placement.len).sum(),
            chain_bytes: pulled
                .meta
                .segments
                .iter()
                .map(|r| r.placement.len)
                .sum::<u64>()
                + pulled.head.placement.len,
            refs_digest: refs_digest(
                pulled
                    .meta
                    .snapshot
                    .iter()
                    .chain(&pulled.meta.segments)
                    .chain(std::iter::once(&pulled.head)),
            ),
            root: pulled.root.clone(),
            time: pulled.payload.time,
        };
        let sb = state_batch(keys, &st);
        batch.append(sb);
        let groups: Vec<&[Change]> = pulled
            .parts
            .iter()
            .chain(&entries)
            .map(Vec::as_slice)
            .collect();
        store.import(&groups, batch)?;
        Ok(())
    }
}
