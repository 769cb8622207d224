//! Span storage: the in-memory buffer of acknowledged spans, and its flush to
//! Parquet files in the Hive layout, on size, on interval and at shutdown.
//!
//! A span is in the buffer before it is acknowledged, and leaves the buffer only
//! once its file is durably renamed into place; a failed write puts the batches
//! back for the next attempt, so nothing acknowledged is dropped.

mod parquet;
mod partition;

use std::collections::BTreeMap;
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

#[derive(Default)]
struct Partition {
    builder: SpanBatchBuilder,
    sealed: Vec<RecordBatch>,
}

impl Partition {
    fn rows(&self) -> usize {
        self.builder.len() + self.sealed.iter().map(RecordBatch::num_rows).sum::<usize>()
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
            part.builder.append(r);
            if part.builder.len() >= SEAL_ROWS {
                let batch = part.builder.finish()?;
                part.sealed.push(batch);
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

    /// Rows currently buffered.
    pub fn rows(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.partitions.values().map(Partition::rows).sum()
    }

    /// Takes everything buffered, as finished batches per partition.
    fn take(&self) -> Result<Vec<(PartitionKey, Vec<RecordBatch>)>, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let partitions = std::mem::take(&mut state.partitions);
        state.bytes = 0;
        drop(state);
        partitions
            .into_iter()
            .map(|(key, mut part)| {
                if !part.builder.is_empty() {
                    part.sealed.push(part.builder.finish()?);
                }
                Ok((key, part.sealed))
            })
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
            .sealed
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
