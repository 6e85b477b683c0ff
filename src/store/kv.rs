//! The key-value interface under [`Store`](super::Store): ordered column
//! families, atomic batches, a durable sync and consistent snapshots. Two
//! implementations: RocksDB (`rocks.rs`) and an in-memory one here, which
//! tests use where durability across processes is not the point.
//!
//! Architecture invariant: opaque bytes only; the journal, object files
//! and everything above live in `Store`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::RwLock;

use super::{Cf, Records, StoreError};

/// One change in an atomic write.
pub(super) enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Keys in `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// Records of one family, in key order.
pub(super) type KvIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a>;

/// Ordered key-value families.
pub(super) trait Kv: Send + Sync {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Records from key `from` on, while their keys start with `prefix`, at
    /// most `limit`.
    fn scan_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Records, StoreError>;
    /// The largest key of a family.
    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies every change or none (not yet durable: see [`sync`](Kv::sync)).
    fn write(&self, ops: Vec<Op>) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// A consistent view of the families as of now, for long reads.
    fn snapshot(&self) -> Box<dyn KvView + '_>;
}

/// A point-in-time view from [`Kv::snapshot`].
pub(super) trait KvView {
    fn iter(&self, cf: Cf) -> KvIter<'_>;
}

type Family = BTreeMap<Vec<u8>, Vec<u8>>;

/// The in-memory implementation: one ordered map per family, nothing
/// durable (sync does nothing).
#[derive(Default)]
pub(super) struct MemKv {
    families: RwLock<HashMap<&'static str, Family>>,
}

impl MemKv {
    pub(super) fn new(families: &[Cf]) -> Self {
        MemKv {
            families: RwLock::new(
                families
                    .iter()
                    .map(|cf| (cf.name(), Family::new()))
                    .collect(),
            ),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<&'static str, Family>> {
        self.families.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn family<'a>(all: &'a HashMap<&'static str, Family>, cf: Cf) -> &'a Family {
    // As with RocksDB, asking for a family of the other kind of store is a
    // programming error.
    all.get(cf.name()).expect("column family exists")
}

impl Kv for MemKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(family(&self.read(), cf).get(key).cloned())
    }

    fn scan_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Records, StoreError> {
        let all = self.read();
        Ok(family(&all, cf)
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(family(&self.read(), cf).keys().next_back().cloned())
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut all = self.families.write().unwrap_or_else(|p| p.into_inner());
        // One lock for the whole batch: atomic for every reader.
        for op in ops {
            match op {
                Op::Put(cf, k, v) => {
                    all.get_mut(cf.name())
                        .expect("column family exists")
                        .insert(k, v);
                }
                Op::Delete(cf, k) => {
                    all.get_mut(cf.name())
                        .expect("column family exists")
                        .remove(&k);
                }
                Op::DeleteRange(cf, from, to) => {
                    let f = all.get_mut(cf.name()).expect("column family exists");
                    let doomed: Vec<Vec<u8>> = f
                        .range::<[u8], _>((Bound::Included(&from[..]), Bound::Excluded(&to[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        f.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn KvView + '_> {
        Box::new(MemView(self.read().clone()))
    }
}

struct MemView(HashMap<&'static str, Family>);

impl KvView for MemView {
    fn iter(&self, cf: Cf) -> KvIter<'_> {
        Box::new(
            family(&self.0, cf)
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.clone()))),
        )
    }
}
