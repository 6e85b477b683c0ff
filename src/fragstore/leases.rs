//! Leases on held fragments: renewal and cancellation by secret (the
//! hashes kept at PUT), and deletion of the fragments whose lease ran out.

use crate::coder::FragmentId;
use crate::store::{Batch, Cf, StoreError};

use super::{Entry, FragmentStore, MAX_LEASE_SECS};

impl FragmentStore {
    /// Extends the leases whose renew secret matches; one flag per item.
    pub fn renew(
        &self,
        items: &[(FragmentId, [u8; 32])],
        secs: u32,
    ) -> Result<Vec<bool>, StoreError> {
        let expires = self.clock.now() + secs.min(MAX_LEASE_SECS) as u64;
        let mut b = Batch::default();
        let mut out = Vec::with_capacity(items.len());
        for (id, secret) in items {
            let ok = match self.entry(id)? {
                Some(mut e) if *blake3::hash(secret).as_bytes() == e.renew_hash => {
                    e.expires = e.expires.max(expires);
                    b.put(Cf::Fragments, id.0.to_vec(), e.encode());
                    true
                }
                _ => false,
            };
            out.push(ok);
        }
        self.store.write(b)?;
        self.store.sync()?;
        Ok(out)
    }

    /// Deletes the fragments whose cancel secret matches; one flag per item
    /// (true also when the fragment is already gone).
    pub fn cancel(&self, items: &[(FragmentId, [u8; 32])]) -> Result<Vec<bool>, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        let mut gone = Vec::new();
        for (id, secret) in items {
            match self.entry(id)? {
                Some(e) if *blake3::hash(secret).as_bytes() == e.cancel_hash => {
                    gone.push((*id, e));
                    out.push(true);
                }
                Some(_) => out.push(false),
                None => out.push(true),
            }
        }
        self.remove(gone)?;
        Ok(out)
    }

    /// Deletes fragments whose lease ran out; returns how many.
    pub fn expire(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut gone = Vec::new();
        for (k, v) in self.store.scan(Cf::Fragments, &[], usize::MAX)? {
            if let (Ok(id), Some(e)) = (<[u8; 32]>::try_from(k.as_slice()), Entry::decode(&v)) {
                if e.expires <= now {
                    gone.push((FragmentId(id), e));
                }
            }
        }
        let n = gone.len();
        self.remove(gone)?;
        self.expired
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }

    /// Fragments deleted because their lease ran out, since the store
    /// was opened.
    pub fn expired_count(&self) -> u64 {
        self.expired.load(std::sync::atomic::Ordering::Relaxed)
    }
}
