//! Writes span batches of one partition to one Parquet file, atomically: a
//! hidden temp name, fsync, rename, fsync of the directory. A reader globbing
//! `*.parquet` sees a file whole or not at all.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::FileMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::partition::PartitionKey;
use super::StoreError;
use crate::record::span_schema;
use crate::wal::WalPosition;

/// File metadata key listing the write-ahead log records whose rows the
/// file holds (`segment:offset,…`).
pub const WAL_KEY: &str = "llmtrace.wal";

/// The log records a span file says it holds; none for files without the key
/// (written without a log, or by other tools).
pub fn wal_positions(path: &Path) -> Result<Vec<WalPosition>, StoreError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let reader = SerializedFileReader::new(file)?;
    Ok(wal_positions_in(reader.metadata().file_metadata()))
}

/// [`wal_positions`] of a footer already read.
pub(super) fn wal_positions_in(metadata: &FileMetaData) -> Vec<WalPosition> {
    let Some(value) = metadata
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == WAL_KEY))
        .and_then(|k| k.value.as_deref())
    else {
        return Vec::new();
    };
    value
        .split(',')
        .filter_map(|p| {
            let (segment, offset) = p.split_once(':')?;
            Some(WalPosition {
                segment: segment.parse().ok()?,
                offset: offset.parse().ok()?,
            })
        })
        .collect()
}

/// Bloom filter false-positive rate for trace_id lookups.
const TRACE_ID_BLOOM_FPP: f64 = 0.01;

/// Per-column encodings, chosen by measurement on loadgen traffic (BENCHMARKS.md):
/// timestamps of neighbouring rows are close, so deltas beat a dictionary; span
/// and response ids are unique, so a dictionary only costs CPU and then falls
/// back anyway.
const COLUMN_ENCODINGS: &[(&str, Encoding)] = &[
    ("start_time", Encoding::DELTA_BINARY_PACKED),
    ("end_time", Encoding::DELTA_BINARY_PACKED),
    ("span_id", Encoding::PLAIN),
    ("response_id", Encoding::PLAIN),
];

/// Columns nobody filters on by range: min/max statistics of every page of
/// them cost string comparisons for every value and prune nothing.
const NO_STATISTICS: &[&str] = &[
    "attributes.key_value.key",
    "attributes.key_value.value",
    "resource_attributes.key_value.key",
    "resource_attributes.key_value.value",
    "events",
    "links",
    "status_message",
    "trace_state",
];

/// Room for the dictionaries of attribute values and trace ids of a whole
/// row group, so they do not fall back to plain encoding half way.
const DICTIONARY_PAGE_BYTES: usize = 4 << 20;

pub struct ParquetWriter {
    data_dir: PathBuf,
    row_group_rows: usize,
    zstd_level: i32,
    /// Distinguishes this process's files from other collectors' in one store.
    instance: u64,
    seq: AtomicU64,
}

impl ParquetWriter {
    pub fn new(data_dir: &Path, row_group_rows: usize, zstd_level: i32) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let instance = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            data_dir: data_dir.to_owned(),
            row_group_rows,
            zstd_level,
            instance,
            seq: AtomicU64::new(0),
        }
    }

    fn properties(&self, rows: usize) -> Result<WriterProperties, StoreError> {
        let trace_id = ColumnPath::from("trace_id");
        let builder = WriterProperties::builder()
            .set_created_by(format!("llmtrace {}", env!("CARGO_PKG_VERSION")))
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(self.zstd_level)?))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
            .set_column_bloom_filter_enabled(trace_id.clone(), true)
            .set_column_bloom_filter_fpp(trace_id.clone(), TRACE_ID_BLOOM_FPP)
            .set_column_bloom_filter_max_ndv(trace_id, rows.min(self.row_group_rows) as u64);
        let builder = COLUMN_ENCODINGS
            .iter()
            .fold(builder, |b, (column, encoding)| {
                let path = ColumnPath::from(*column);
                b.set_column_dictionary_enabled(path.clone(), false)
                    .set_column_encoding(path, *encoding)
            });
        let builder = NO_STATISTICS.iter().fold(builder, |b, column| {
            b.set_column_statistics_enabled(ColumnPath::from(*column), EnabledStatistics::None)
        });
        Ok(builder.build())
    }

    /// A fresh file name in the partition's directory for the next write.
    pub fn path_for(&self, key: &PartitionKey) -> PathBuf {
        self.fresh_path(key, "part")
    }

    /// A fresh name for a file merged from others by compaction.
    pub(super) fn compacted_path_for(&self, key: &PartitionKey) -> PathBuf {
        self.fresh_path(key, "compact")
    }

    fn fresh_path(&self, key: &PartitionKey, prefix: &str) -> PathBuf {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        key.dir(&self.data_dir)
            .join(fresh_name(prefix, self.instance, seq))
    }

    /// Writes `batches` as the file `path` (from [`ParquetWriter::path_for`]),
    /// noting in its metadata the log records `wal` whose rows it holds.
    pub fn write(
        &self,
        path: &Path,
        batches: &[RecordBatch],
        wal: &[WalPosition],
    ) -> Result<(), StoreError> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        self.write_stream(path, rows, batches.iter().cloned().map(Ok), wal)
    }

    /// [`ParquetWriter::write`] of batches that arrive one at a time (read
    /// from other files), `rows` of them in all.
    pub(super) fn write_stream(
        &self,
        path: &Path,
        rows: usize,
        batches: impl IntoIterator<Item = Result<RecordBatch, StoreError>>,
        wal: &[WalPosition],
    ) -> Result<(), StoreError> {
        let mut properties = self.properties(rows)?;
        if !wal.is_empty() {
            let list: Vec<String> = wal.iter().map(ToString::to_string).collect();
            properties = properties
                .into_builder()
                .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                    WAL_KEY.to_owned(),
                    list.join(","),
                )]))
                .build();
        }
        write_atomically(path, span_schema(), properties, batches)
    }
}

/// Writes `batches` as the Parquet file `path`: a hidden temp name, fsync,
/// rename. Once the file is renamed into place the write counts as done: it
/// is visible to every reader, so reporting a failure then would have the
/// caller write the same rows again.
/// `{prefix}-{unix ms}-{instance}-{seq}.parquet`: unique among the collectors
/// sharing a data dir (each has its own random instance), and in time order.
pub(super) fn fresh_name(prefix: &str, instance: u64, seq: u64) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{prefix}-{millis}-{instance:016x}-{seq:06}.parquet")
}

pub(super) fn write_atomically(
    path: &Path,
    schema: arrow::datatypes::SchemaRef,
    properties: WriterProperties,
    batches: impl IntoIterator<Item = Result<RecordBatch, StoreError>>,
) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));

    let result = (|| {
        let file = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        let sync_handle = file.try_clone().map_err(|e| StoreError::io(&tmp, e))?;
        let mut writer = ArrowWriter::try_new(file, schema, Some(properties))?;
        for batch in batches {
            writer.write(&batch?)?;
        }
        writer.close()?;
        sync_handle
            .sync_all()
            .map_err(|e| StoreError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_dir(dir);
    Ok(())
}

/// fsyncs a directory, so entries just renamed or removed in it survive a
/// power loss; a failure is logged, as the files themselves are whole.
pub(super) fn sync_dir(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(%error, dir = %dir.display(), "fsync of a partition directory failed; its latest changes may not survive a power loss");
    }
}
