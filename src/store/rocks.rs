//! The RocksDB implementation of [`Kv`]: one column family per [`Cf`],
//! blob files for the inline-object family, WAL sync for durability.
//!
//! Architecture invariant: the only file that imports `rocksdb`.

use std::path::Path;

use super::kv::{Kv, KvIter, KvView, Op};
use super::{Cf, Records, StoreError};

fn db_err(e: rocksdb::Error) -> StoreError {
    StoreError::Db(e.into_string())
}

pub(super) struct RocksKv {
    db: rocksdb::DB,
}

impl RocksKv {
    /// Opens (creating if needed) the database at `path` with `families`.
    pub(super) fn open(path: &Path, families: &[Cf]) -> Result<Self, StoreError> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(256 << 20);
        let cfs = families.iter().map(|cf| {
            let mut o = rocksdb::Options::default();
            if *cf == Cf::Blobs {
                // Values up to INLINE_MAX: keep them out of the LSM tree.
                o.set_enable_blob_files(true);
                o.set_min_blob_size(4096);
                o.set_enable_blob_gc(true);
            }
            rocksdb::ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = rocksdb::DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
            let msg = e.into_string();
            if msg.contains("lock") || msg.contains("LOCK") {
                StoreError::Locked(msg)
            } else {
                StoreError::Open {
                    path: path.to_path_buf(),
                    msg,
                }
            }
        })?;
        Ok(RocksKv { db })
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every family of the store's kind is created at open; asking a node
        // store for a vault family is a programming error.
        self.db.cf_handle(cf.name()).expect("column family exists")
    }
}

impl Kv for RocksKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(cf), key).map_err(db_err)
    }

    fn scan_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Records, StoreError> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(cf),
            rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .iterator_cf(self.cf(cf), rocksdb::IteratorMode::End)
            .next()
            .transpose()
            .map_err(db_err)?
            .map(|(k, _)| k.to_vec()))
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in &ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(*cf), k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(*cf), k),
                Op::DeleteRange(cf, from, to) => wb.delete_range_cf(self.cf(*cf), from, to),
            }
        }
        self.db.write(wb).map_err(db_err)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(db_err)
    }

    fn snapshot(&self) -> Box<dyn KvView + '_> {
        Box::new(RocksView {
            kv: self,
            snap: self.db.snapshot(),
        })
    }
}

struct RocksView<'a> {
    kv: &'a RocksKv,
    snap: rocksdb::Snapshot<'a>,
}

impl KvView for RocksView<'_> {
    fn iter(&self, cf: Cf) -> KvIter<'_> {
        Box::new(
            self.snap
                .iterator_cf(self.kv.cf(cf), rocksdb::IteratorMode::Start)
                .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(db_err)),
        )
    }
}
