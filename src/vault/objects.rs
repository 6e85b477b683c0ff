//! The object index: reference counts, the upload queue, placement
//! records, keeping objects fetched from peers, and the local disk cache of
//! objects already safe on peers ("online-only" files).
//!
//! An object is deleted in the batch that drops its last reference (unless
//! a seal worker is storing it right then).
//!
//! A new object enters the `Uploads` family in the batch that first
//! references it. The uploader (in `remote`, outside the vault) encodes and
//! places it, then [`Vault::commit_placement`] records where its fragments
//! are, removes it from the queue and makes the local copy evictable
//! (`Cached`). Eviction deletes local copies, least recently used first,
//! while the cache is over its limit; placements are synced first.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::*;
use crate::coder::FragmentId;

/// The record of lease renewal times in the `Leases` family.
const RENEWALS_KEY: &[u8] = b"renewals";

/// The last complete renewal of one holder's leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// Unix seconds when it was made.
    pub at: u64,
    /// The lease time it asked for, in seconds.
    pub lease: u32,
}

/// Objects not yet stored on peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadBacklog {
    pub objects: u64,
    pub bytes: u64,
}

/// Local copies of objects that are safe on peers: object id -> size.
pub(super) type DiskCache = crate::cache::ByteLru<ObjectId, u64>;

impl Vault {
    fn disk_cache(&self) -> MutexGuard<'_, DiskCache> {
        self.disk_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the upload backlog and the disk cache index at open.
    pub(super) fn load_network_state(&self) -> Result<()> {
        let mut backlog = UploadBacklog::default();
        for (k, _) in self.store.scan(Cf::Uploads, &[], usize::MAX)? {
            let rec: Option<ObjectRecord> = self.get_record(Cf::Objects, &k, "object record")?;
            let id = ObjectId(k[..32].try_into().map_err(|e| corrupt("upload key", e))?);
            let size = match rec {
                Some(r) => Some(r.size),
                None => self.is_chain_object(&id)?,
            };
            match size {
                Some(size) => {
                    backlog.objects += 1;
                    backlog.bytes += size;
                }
                None => {
                    // Released before it was uploaded.
                    let mut b = Batch::default();
                    b.delete(Cf::Uploads, k);
                    self.store.write(b)?;
                }
            }
        }
        self.lock().uploads = backlog;
        let mut cache = self.disk_cache();
        for (k, v) in self.store.scan(Cf::Cached, &[], usize::MAX)? {
            let id = ObjectId(k[..32].try_into().map_err(|e| corrupt("cache key", e))?);
            let size = u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|e| corrupt("cache record", e))?,
            );
            cache.put(id, size);
        }
        drop(cache);
        self.evict()
    }

    /// Sets how the vault fetches objects that are not on local disk.
    pub fn set_fetcher(&self, f: Arc<dyn Fetcher>) {
        let _ = self.fetcher.set(f);
    }

    /// Called (inside the batch) when an object gets its first reference.
    pub(super) fn queue_upload(
        &self,
        inner: &mut Inner,
        batch: &mut Txn,
        id: &ObjectId,
        size: u64,
    ) {
        batch.put(Cf::Uploads, id.0.to_vec(), Vec::new());
        inner.uploads.objects += 1;
        inner.uploads.bytes += size;
    }

    /// Called (inside the batch) when an object is deleted: forget its queue
    /// entry, placement and cache entry. Its fragments on peers are left to
    /// expire (leases are the quota issue's job).
    pub(super) fn forget_remote(
        &self,
        inner: &mut Inner,
        batch: &mut Txn,
        id: &ObjectId,
        size: u64,
    ) -> Result<()> {
        self.dequeue_upload(inner, batch, id, size)?;
        // Its fragments' leases are cancelled in the background.
        let placement: Option<Placement> = self.get_record(Cf::Placements, &id.0, "placement")?;
        for f in placement.iter().flat_map(|p| &p.fragments) {
            released::release(batch, id, f);
        }
        batch.delete(Cf::Placements, id.0.to_vec());
        batch.delete(Cf::Cached, id.0.to_vec());
        self.forget_cached(id);
        Ok(())
    }

    /// The next objects waiting for upload, in key order after `after`.
    pub fn upload_queue(&self, after: Option<&ObjectId>, limit: usize) -> Result<Vec<ObjectId>> {
        let from = after.map(|a| {
            let mut k = a.0.to_vec();
            k.push(0);
            k
        });
        let rows = self
            .store
            .scan_from(Cf::Uploads, &[], from.as_deref().unwrap_or(&[]), limit)?;
        rows.into_iter()
            .map(|(k, _)| {
                Ok(ObjectId(
                    k[..32].try_into().map_err(|e| corrupt("upload key", e))?,
                ))
            })
            .collect()
    }

    pub fn upload_backlog(&self) -> UploadBacklog {
        self.lock().uploads
    }

    /// The sealed bytes of an object if they are on local disk (checked).
    pub fn local_object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>> {
        match self.store.read_object(id)? {
            Some(b) if ObjectId::of(&b) == *id => Ok(Some(b)),
            Some(_) => Err(corrupt(
                format!("object {id}"),
                "content does not match its id",
            )),
            None => Ok(None),
        }
    }

    /// Records where an uploaded object's fragments are and takes it off the
    /// queue. Returns false if the object was deleted meanwhile.
    pub fn commit_placement(&self, id: &ObjectId, placement: &Placement) -> Result<bool> {
        let mut inner = self.lock();
        let rec: Option<ObjectRecord> = self.get_record(Cf::Objects, &id.0, "object record")?;
        let Some(rec) = rec else {
            let chain = self.commit_chain_placement(&mut inner, id, placement)?;
            drop(inner);
            self.evict()?;
            return Ok(chain);
        };
        let mut batch = Txn::default();
        self.put_record(&mut batch, Cf::Placements, &id.0, placement);
        released::unrelease(&mut batch, placement);
        self.dequeue_upload(&mut inner, &mut batch, id, rec.size)?;
        let local = self.mark_cached(&mut batch, id, rec.size)?;
        self.commit(&mut inner, batch)?;
        drop(inner);
        if local {
            self.note_cached(id, rec.size);
        }
        self.evict()?;
        Ok(true)
    }

    /// Takes an object off the upload queue (in `batch`) if it is queued.
    pub(super) fn dequeue_upload(
        &self,
        inner: &mut Inner,
        batch: &mut Batch,
        id: &ObjectId,
        size: u64,
    ) -> Result<()> {
        if self.store.get(Cf::Uploads, &id.0)?.is_some() {
            batch.delete(Cf::Uploads, id.0.to_vec());
            inner.uploads.objects = inner.uploads.objects.saturating_sub(1);
            inner.uploads.bytes = inner.uploads.bytes.saturating_sub(size);
        }
        Ok(())
    }

    /// Makes the local copy of a placed object evictable (in `batch`);
    /// false if there is no local copy.
    pub(super) fn mark_cached(&self, batch: &mut Batch, id: &ObjectId, size: u64) -> Result<bool> {
        let local = self.store.has_object(id)?;
        if local {
            batch.put(Cf::Cached, id.0.to_vec(), size.to_be_bytes().to_vec());
        }
        Ok(local)
    }

    /// Adds a local copy to the disk cache's LRU.
    pub(super) fn note_cached(&self, id: &ObjectId, size: u64) {
        self.disk_cache().put(*id, size);
    }

    /// Forgets a local copy in the disk cache's LRU.
    pub(super) fn forget_cached(&self, id: &ObjectId) {
        self.disk_cache().remove(id);
    }

    /// Where an object's fragments are (file content or metadata object).
    pub fn placement(&self, id: &ObjectId) -> Result<Option<Placement>> {
        match self.get_record(Cf::Placements, &id.0, "placement")? {
            Some(p) => Ok(Some(p)),
            None => Ok(self.chain_ref(id)?.map(|r| r.placement)),
        }
    }

    /// Every placement, of file content and metadata objects (a scan, for
    /// renewal, audits and repair).
    pub fn all_placements(&self) -> Result<Vec<(ObjectId, Placement)>> {
        let mut out = self.metadata_placements()?;
        out.extend(self.placements()?);
        Ok(out)
    }

    /// Placements of file content (a scan, for health reports).
    pub fn placements(&self) -> Result<Vec<(ObjectId, Placement)>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(Cf::Placements, &[], usize::MAX)? {
            let p: Placement = decode(&open_record(&self.keys, Cf::Placements, &k, &v)?)
                .map_err(|e| corrupt("placement", e))?;
            out.push((
                ObjectId(
                    k[..32]
                        .try_into()
                        .map_err(|e| corrupt("placement key", e))?,
                ),
                p,
            ));
        }
        Ok(out)
    }

    /// Swaps an object's placement after repair, if it is still `old`, and
    /// queues the leases of `release` for cancelling (surplus fragments of
    /// holders that came back). Other replaced fragments (lost, or moved
    /// off a crowded holder) are not cancelled: the published metadata may
    /// still name them until the next publish, and nobody renews them any
    /// more, so their leases lapse.
    pub fn replace_placement(
        &self,
        id: &ObjectId,
        old: &Placement,
        new: &Placement,
        release: &[FragmentLoc],
    ) -> Result<bool> {
        let mut inner = self.lock();
        // Metadata objects release nothing: the published metadata may name
        // those fragments until the next publish (their leases lapse).
        if let Some(done) = self.replace_chain_placement(id, old, new)? {
            return Ok(done);
        }
        if self.placement(id)?.as_ref() != Some(old) {
            return Ok(false);
        }
        let mut batch = Txn::default();
        self.put_record(&mut batch, Cf::Placements, &id.0, new);
        released::unrelease(&mut batch, new);
        for f in release {
            released::release(&mut batch, id, f);
        }
        self.commit(&mut inner, batch)?;
        Ok(true)
    }

    /// The renew and cancel secrets of a fragment's lease on `peer`.
    pub fn lease_secrets(&self, fragment: &FragmentId, peer: &[u8]) -> ([u8; 32], [u8; 32]) {
        self.keys.lease_secrets(&fragment.0, peer)
    }

    /// When each holder's leases were last all renewed (peer id bytes ->
    /// renewal). Every fragment a holder got before that time was renewed
    /// then; later ones got a fresh lease when they were stored.
    pub fn lease_renewals(&self) -> Result<HashMap<Vec<u8>, Renewal>> {
        Ok(self
            .get_record::<Vec<(Vec<u8>, Renewal)>>(Cf::Leases, RENEWALS_KEY, "lease renewals")?
            .unwrap_or_default()
            .into_iter()
            .collect())
    }

    /// Replaces the renewal records (the caller drops holders that hold
    /// nothing any more) and makes them durable.
    pub fn set_lease_renewals(&self, renewed: &HashMap<Vec<u8>, Renewal>) -> Result<()> {
        let mut list: Vec<(Vec<u8>, Renewal)> =
            renewed.iter().map(|(p, r)| (p.clone(), *r)).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let mut batch = Txn::default();
        self.put_record(&mut batch, Cf::Leases, RENEWALS_KEY, &list);
        self.store.write(batch.batch)?;
        Ok(self.store.sync()?)
    }

    /// Bytes of synced objects kept on local disk.
    pub fn disk_cache_bytes(&self) -> u64 {
        self.disk_cache().bytes()
    }

    /// Drops local copies of synced objects, least recently used first,
    /// until the disk cache is within its limit.
    fn evict(&self) -> Result<()> {
        let victims: Vec<(ObjectId, u64)> = {
            let mut cache = self.disk_cache();
            std::iter::from_fn(|| cache.pop_excess()).collect()
        };
        if victims.is_empty() {
            return Ok(());
        }
        // The placements that make these copies redundant must be durable
        // before the copies go.
        self.store.sync()?;
        let mut batch = Batch::default();
        for (id, size) in &victims {
            batch.delete(Cf::Cached, id.0.to_vec());
            batch.delete_object(id, *size);
        }
        self.store.write(batch)?;
        // And the files go now (the release is durable after this sync).
        self.store.sync()?;
        tracing::debug!(
            "evicted {} synced objects from the disk cache",
            victims.len()
        );
        Ok(())
    }

    /// Marks a local copy as recently used.
    pub(super) fn touch_cached(&self, id: &ObjectId) {
        self.disk_cache().get(id);
    }

    /// The disk cache's limit in bytes (0: online-only files).
    pub(super) fn disk_cache_limit(&self) -> u64 {
        self.disk_cache().capacity()
    }

    /// Keeps a local copy of an object fetched from peers (its file is
    /// written and synced before the vault lock is taken; the lock only
    /// guards the check that the object is still referenced, and the index).
    pub(super) fn keep_fetched(&self, id: &ObjectId, sealed: &[u8]) -> Result<()> {
        {
            let mut batch = Batch::default();
            batch.put_object(&self.store, id, sealed)?;
            batch.put(
                Cf::Cached,
                id.0.to_vec(),
                (sealed.len() as u64).to_be_bytes().to_vec(),
            );
            let inner = self.lock();
            if self.store.get(Cf::Objects, &id.0)?.is_none() {
                // Deleted while it was fetched: drop the copy again, unless a
                // seal worker is storing the same object right now.
                if !inner.pending_objects.contains_key(id) {
                    let mut undo = Batch::default();
                    undo.delete_object(id, sealed.len() as u64);
                    self.store.write(undo)?;
                }
            } else {
                self.store.write(batch)?;
                drop(inner);
                self.note_cached(id, sealed.len() as u64);
                self.evict()?;
            }
        }
        Ok(())
    }

    // ---- references -------------------------------------------------------

    /// Takes one reference to an object whose bytes are stored (or in `batch`).
    pub(super) fn ref_object(&self, batch: &mut Txn, id: &ObjectId, size: u64) {
        let e = batch.refs.entry(*id).or_insert((0, size));
        e.0 += 1;
        e.1 = size;
    }

    pub(super) fn unref_object(&self, batch: &mut Txn, id: &ObjectId) {
        batch.refs.entry(*id).or_insert((0, 0)).0 -= 1;
    }

    /// Applies a summed reference change; an object nobody references (and no
    /// worker is about to) is deleted with the batch.
    pub(super) fn apply_refs(
        &self,
        inner: &mut Inner,
        batch: &mut Txn,
        id: &ObjectId,
        delta: i64,
        size: u64,
    ) -> Result<()> {
        let old: Option<ObjectRecord> = self.get_record(Cf::Objects, &id.0, "object record")?;
        if old.is_none() && delta < 0 {
            tracing::warn!(object = %id, "released an object with no reference record");
            return Ok(());
        }
        let new = old.is_none();
        let mut rec = old.unwrap_or(ObjectRecord { refs: 0, size });
        let was = rec.refs;
        rec.refs = (rec.refs as i64 + delta).max(0) as u64;
        if was == 0 && rec.refs > 0 {
            inner.counters.objects += 1;
            inner.counters.stored_bytes += rec.size;
        } else if was > 0 && rec.refs == 0 {
            inner.counters.objects = inner.counters.objects.saturating_sub(1);
            inner.counters.stored_bytes = inner.counters.stored_bytes.saturating_sub(rec.size);
        }
        if rec.refs == 0 && !inner.pending_objects.contains_key(id) {
            self.forget_remote(inner, batch, id, rec.size)?;
            self.delete_object(batch, id, rec.size);
        } else {
            if new {
                self.queue_upload(inner, batch, id, rec.size);
            }
            self.put_record(batch, Cf::Objects, &id.0, &rec);
        }
        Ok(())
    }

    pub(super) fn delete_object(&self, batch: &mut Txn, id: &ObjectId, size: u64) {
        batch.delete(Cf::Objects, id.0.to_vec());
        batch.delete_object(id, size);
    }
}
