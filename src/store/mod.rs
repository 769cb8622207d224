//! Span storage: the in-memory buffer of acknowledged spans, and its flush to
//! Parquet files in the Hive layout, on size, on interval and at shutdown.
//!
//! A span is in the buffer before it is acknowledged, and leaves the buffer only
//! once its file is durably renamed into place; a failed write puts the batches
//! back for the next attempt, so nothing acknowledged is dropped.

mod parquet;
mod partition;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use tokio::sync::Notify;

pub use self::parquet::ParquetWriter;
pub use partition::PartitionKey;

use crate::record::{SpanBatchBuilder, SpanRecord};

/// Rows per sealed Arrow batch inside the buffer: keeps builders small and
/// lets a flush hand finished batches straight to the Parquet writer.
const SEAL_ROWS: usize = 8192;

/// Distinct (service, span name) groups kept apart per partition; spans of
/// further groups share one. Grouping like spans together is what makes the
/// files small (similar attribute sets and close timestamps sit side by side),
/// at the cost of a hash per span instead of a sort per flush.
const MAX_GROUPS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{0} spans could not be written; see the errors above")]
    Unflushed(usize),
}

impl StoreError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Rows of one (service, span name) group.
struct Group {
    service: Option<String>,
    span_name: String,
    builder: SpanBatchBuilder,
    sealed: Vec<RecordBatch>,
}

impl Group {
    fn finish(mut self) -> Result<Vec<RecordBatch>, StoreError> {
        if !self.builder.is_empty() {
            self.sealed.push(self.builder.finish()?);
        }
        Ok(self.sealed)
    }
}

#[derive(Default)]
struct Partition {
    groups: Vec<Group>,
    /// Hash of (service, span name) -> index in `groups`.
    index: HashMap<u64, usize>,
    hasher: ahash::RandomState,
    /// Batches that came back from a failed write.
    retry: Vec<RecordBatch>,
}

impl Partition {
    fn group_of(&mut self, r: &SpanRecord) -> &mut Group {
        let key = self.hasher.hash_one((&r.service_name, &r.span_name));
        let next = self.groups.len();
        // Past MAX_GROUPS every new name lands in the last group.
        let idx = *self.index.entry(key).or_insert(next.min(MAX_GROUPS));
        if idx == next {
            self.groups.push(Group {
                service: r.service_name.clone(),
                span_name: r.span_name.clone(),
                builder: SpanBatchBuilder::new(),
                sealed: Vec::new(),
            });
        }
        &mut self.groups[idx]
    }

    /// All rows as batches, like spans together: groups in name order.
    fn finish(self) -> Result<Vec<RecordBatch>, StoreError> {
        let mut groups = self.groups;
        groups.sort_by(|a, b| (&a.service, &a.span_name).cmp(&(&b.service, &b.span_name)));
        let mut out = self.retry;
        for g in groups {
            out.extend(g.finish()?);
        }
        Ok(out)
    }
}

#[derive(Default)]
struct BufferState {
    partitions: BTreeMap<PartitionKey, Partition>,
    bytes: usize,
}

/// Acknowledged spans not yet in Parquet, by partition.
pub struct SpanBuffer {
    state: Mutex<BufferState>,
    flush_bytes: usize,
    full: Notify,
}

impl SpanBuffer {
    pub fn new(flush_bytes: usize) -> Self {
        Self {
            state: Mutex::new(BufferState::default()),
            flush_bytes,
            full: Notify::new(),
        }
    }

    /// Adds records for `tenant`. Once this returns, the spans will be flushed.
    pub fn append(&self, tenant: &Arc<str>, records: &[SpanRecord]) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut added = 0;
        for r in records {
            let key = PartitionKey::for_span(tenant, r.start_unix_nano);
            let part = state.partitions.entry(key).or_default();
            let group = part.group_of(r);
            group.builder.append(r);
            if group.builder.len() >= SEAL_ROWS {
                let batch = group.builder.finish()?;
                group.sealed.push(batch);
            }
            added += r.approx_bytes();
        }
        state.bytes += added;
        if state.bytes >= self.flush_bytes {
            self.full.notify_one();
        }
        Ok(())
    }

    /// Resolves when the buffer has grown past the flush size.
    pub async fn wait_full(&self) {
        self.full.notified().await
    }

    /// Takes everything buffered, as finished batches per partition.
    fn take(&self) -> Result<Vec<(PartitionKey, Vec<RecordBatch>)>, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let partitions = std::mem::take(&mut state.partitions);
        state.bytes = 0;
        drop(state);
        partitions
            .into_iter()
            .map(|(key, part)| Ok((key, part.finish()?)))
            .collect()
    }

    /// Returns batches whose write failed, to be retried by the next flush.
    fn put_back(&self, key: PartitionKey, batches: Vec<RecordBatch>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.bytes += batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>();
        state
            .partitions
            .entry(key)
            .or_default()
            .retry
            .extend(batches);
    }
}

/// What one flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    pub files: usize,
    pub rows: usize,
    /// Rows whose write failed and went back to the buffer.
    pub failed_rows: usize,
}

/// The span store: buffer plus Parquet writer.
pub struct Store {
    buffer: SpanBuffer,
    writer: ParquetWriter,
    /// One flush at a time, so files of a partition are written in order.
    flushing: tokio::sync::Mutex<()>,
}

impl Store {
    pub fn new(
        data_dir: &Path,
        flush_bytes: usize,
        row_group_rows: usize,
        zstd_level: i32,
    ) -> Self {
        Self {
            buffer: SpanBuffer::new(flush_bytes),
            writer: ParquetWriter::new(data_dir, row_group_rows, zstd_level),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn buffer(&self) -> &SpanBuffer {
        &self.buffer
    }

    /// Writes everything buffered to Parquet. Partitions whose write fails stay
    /// buffered (and are counted in `failed_rows`) for the next flush.
    pub async fn flush(self: &Arc<Self>) -> Result<FlushStats, StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        let started = Instant::now();
        let partitions = self.buffer.take()?;
        if partitions.is_empty() {
            return Ok(FlushStats::default());
        }
        let this = self.clone();
        let stats = tokio::task::spawn_blocking(move || {
            let mut stats = FlushStats::default();
            for (key, batches) in partitions {
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                match this.writer.write(&key, &batches) {
                    Ok(path) => {
                        stats.files += 1;
                        stats.rows += rows;
                        tracing::debug!(path = %path.display(), rows, "wrote span file");
                    }
                    Err(error) => {
                        tracing::error!(%error, rows, partition = ?key, "span file write failed; keeping the spans buffered for the next flush");
                        stats.failed_rows += rows;
                        this.buffer.put_back(key, batches);
                    }
                }
            }
            stats
        })
        .await
        .expect("flush task does not panic");
        tracing::info!(
            files = stats.files,
            spans = stats.rows,
            failed = stats.failed_rows,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "flushed spans to parquet"
        );
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    fn record(name: &str, n: u8) -> SpanRecord {
        SpanRecord::sample(name, n)
    }

    fn names(batches: &[RecordBatch]) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                let col = b.column_by_name("span_name").unwrap().as_string::<i32>();
                (0..b.num_rows())
                    .map(|i| col.value(i).to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn like_spans_are_written_side_by_side() {
        let buffer = SpanBuffer::new(usize::MAX);
        let tenant: Arc<str> = Arc::from("default");
        let interleaved: Vec<SpanRecord> = (0..30)
            .map(|i| record(["b", "a", "c"][i % 3], i as u8))
            .collect();
        buffer.append(&tenant, &interleaved).unwrap();
        let parts = buffer.take().unwrap();
        assert_eq!(parts.len(), 1);
        let got = names(&parts[0].1);
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want, "grouped by name");
        assert_eq!(got.len(), 30);
    }

    #[test]
    fn names_beyond_the_group_cap_are_kept() {
        let buffer = SpanBuffer::new(usize::MAX);
        let tenant: Arc<str> = Arc::from("default");
        let many: Vec<SpanRecord> = (0..MAX_GROUPS + 50)
            .map(|i| record(&format!("GET /users/{i}"), i as u8))
            .collect();
        buffer.append(&tenant, &many).unwrap();
        let parts = buffer.take().unwrap();
        let mut got = names(&parts[0].1);
        got.sort();
        let mut want: Vec<String> = many.iter().map(|r| r.span_name.clone()).collect();
        want.sort();
        assert_eq!(got, want, "every span kept, none twice");
        assert!(buffer.take().unwrap().is_empty(), "take empties the buffer");
    }
}
