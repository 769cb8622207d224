//! Rollup files: closed aggregation cells, one file per (tenant, day) each
//! time minutes close, under `rollups/tenant=T/date=D/`; merged later by
//! [`super::compaction`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::parquet::{fresh_name, write_atomically};
use super::partition::RollupKey;
use super::StoreError;
use crate::aggregate::rollup::rollup_schema;

pub struct RollupWriter {
    data_dir: PathBuf,
    /// Tells apart files of collectors sharing one data dir.
    instance: u64,
    seq: AtomicU64,
}

impl RollupWriter {
    pub fn new(data_dir: &Path) -> Self {
        use std::hash::{BuildHasher, Hasher};
        RollupWriter {
            data_dir: data_dir.to_owned(),
            instance: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            seq: AtomicU64::new(0),
        }
    }

    pub(super) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A new file name for `tenant`'s rows of `date`, unique among the
    /// collectors sharing the data dir.
    pub fn path_for(&self, tenant: &str, date: NaiveDate) -> PathBuf {
        let key = RollupKey {
            tenant: Arc::from(tenant),
            date,
        };
        self.fresh_path(&key, "rollup")
    }

    /// A fresh name for a file merged from others by compaction.
    pub(super) fn compacted_path_for(&self, key: &RollupKey) -> PathBuf {
        self.fresh_path(key, "compact")
    }

    fn fresh_path(&self, key: &RollupKey, prefix: &str) -> PathBuf {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        key.dir(&self.data_dir)
            .join(fresh_name(prefix, self.instance, seq))
    }

    /// Writes one batch of rows to `path` (from [`RollupWriter::path_for`]).
    pub fn write(&self, path: &Path, batch: &RecordBatch) -> Result<(), StoreError> {
        self.write_stream(path, [Ok(batch.clone())])
    }

    /// Writes rows, batch by batch, to `path`.
    pub(super) fn write_stream(
        &self,
        path: &Path,
        batches: impl IntoIterator<Item = Result<RecordBatch, StoreError>>,
    ) -> Result<(), StoreError> {
        // Histograms are already compact varint encodings; zstd still helps
        // the runs of zero counts between them.
        let properties = WriterProperties::builder()
            .set_created_by(format!("llmtrace {}", env!("CARGO_PKG_VERSION")))
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .build();
        write_atomically(path, rollup_schema(), properties, batches)
    }
}
