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

/// Per-column encodings, chosen by measurement on loadgen traffic (BENCHMARKS.md,
/// issues 3 and 14). Timestamps of neighbouring rows are close, so deltas beat
/// a dictionary. Ids, response ids and events are (nearly) unique: a
/// dictionary only costs CPU, and lengths kept apart from the bytes let zstd
/// code the hex digits at their entropy. Measured durations are unique
/// floats: split into byte planes, their sign, exponent and high mantissa
/// bytes compress where a dictionary of them only adds an index per value.
/// (loadgen replays a small pool of requests, so its durations and attribute
/// values recur and a dictionary over a compacted file looks better on its
/// data than it would on real traffic.)
const COLUMN_ENCODINGS: &[(&str, Encoding)] = &[
    ("start_time", Encoding::DELTA_BINARY_PACKED),
    ("end_time", Encoding::DELTA_BINARY_PACKED),
    ("span_id", Encoding::DELTA_LENGTH_BYTE_ARRAY),
    ("response_id", Encoding::DELTA_LENGTH_BYTE_ARRAY),
    ("events", Encoding::DELTA_LENGTH_BYTE_ARRAY),
    ("duration_ms", Encoding::BYTE_STREAM_SPLIT),
    ("ttft_ms", Encoding::BYTE_STREAM_SPLIT),
    // One dictionary for the values of every attribute key mixes model names
    // with response ids and token counts: wide indices for all of them and
    // the unique values stored in full anyway. Plain bytes in large pages
    // with a stronger zstd level find the repeats (same key order row after
    // row within a span-name group) instead.
    (ATTRIBUTE_VALUES, Encoding::DELTA_LENGTH_BYTE_ARRAY),
];

const ATTRIBUTE_VALUES: &str = "attributes.key_value.value";

/// zstd levels above the file's for columns where the extra effort pays:
/// level 1 is as small as any for the rest, and faster.
const COLUMN_ZSTD_LEVELS: &[(&str, i32)] = &[
    (ATTRIBUTE_VALUES, 7),
    ("start_time", 5),
    ("end_time", 5),
    ("duration_ms", 5),
];

/// Data pages of the attribute values: zstd compresses each page on its own,
/// so a larger page gives it more rows to find repeats in.
const ATTRIBUTE_VALUES_PAGE_BYTES: usize = 4 << 20;

/// Columns nobody filters on by range: min/max statistics of every page of
/// them cost string comparisons for every value and prune nothing.
const NO_STATISTICS: &[&str] = &[
    "attributes.key_value.key",
    ATTRIBUTE_VALUES,
    "resource_attributes.key_value.key",
    "resource_attributes.key_value.value",
    "events",
    "links",
    "status_message",
    "trace_state",
];

/// Room for the dictionaries of trace, parent and session ids of a whole row
/// group, so they do not fall back to plain encoding half way.
const DICTIONARY_PAGE_BYTES: usize = 4 << 20;

/// The path of a (possibly nested) column, `a.b.c`. `ColumnPath::from` takes
/// the whole string as one name, which matches no nested column, and the
/// writer then ignores the setting without a word.
fn column(dotted: &str) -> ColumnPath {
    ColumnPath::new(dotted.split('.').map(str::to_owned).collect())
}

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
            .set_column_data_page_size_limit(column(ATTRIBUTE_VALUES), ATTRIBUTE_VALUES_PAGE_BYTES)
            .set_column_bloom_filter_enabled(trace_id.clone(), true)
            .set_column_bloom_filter_fpp(trace_id.clone(), TRACE_ID_BLOOM_FPP)
            .set_column_bloom_filter_max_ndv(trace_id, rows.min(self.row_group_rows) as u64);
        let builder = COLUMN_ENCODINGS
            .iter()
            .fold(builder, |b, (name, encoding)| {
                b.set_column_dictionary_enabled(column(name), false)
                    .set_column_encoding(column(name), *encoding)
            });
        let builder = COLUMN_ZSTD_LEVELS
            .iter()
            .try_fold(builder, |b, (name, level)| {
                // Never below the configured level.
                let level = ZstdLevel::try_new((*level).max(self.zstd_level))?;
                Ok::<_, StoreError>(
                    b.set_column_compression(column(name), Compression::ZSTD(level)),
                )
            })?;
        let builder = NO_STATISTICS.iter().fold(builder, |b, name| {
            b.set_column_statistics_enabled(column(name), EnabledStatistics::None)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{SpanBatchBuilder, SpanRecord};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn column_settings_reach_nested_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans.parquet");
        let mut builder = SpanBatchBuilder::new();
        for n in 0..100u8 {
            builder.append(&SpanRecord::sample("GET /", n));
        }
        let batch = builder.finish().unwrap();
        ParquetWriter::new(dir.path(), 1024, 1)
            .write(&path, std::slice::from_ref(&batch), &[])
            .unwrap();

        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let chunk = |name: &str| {
            let want = column(name);
            group
                .columns()
                .iter()
                .find(|c| c.column_path() == &want)
                .unwrap_or_else(|| panic!("no column {name}"))
        };
        let values = chunk(ATTRIBUTE_VALUES);
        assert!(values
            .encodings()
            .any(|e| e == Encoding::DELTA_LENGTH_BYTE_ARRAY));
        assert!(!values.encodings().any(|e| e == Encoding::RLE_DICTIONARY));
        assert!(values.statistics().is_none());
        // (The footer names the codec, not its level.)
        assert!(matches!(values.compression(), Compression::ZSTD(_)));
        assert!(chunk("duration_ms")
            .encodings()
            .any(|e| e == Encoding::BYTE_STREAM_SPLIT));
        assert!(chunk("attributes.key_value.key").statistics().is_none());

        // Every value reads back as written.
        let read: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                File::open(&path).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].columns(), batch.columns());
    }
}
