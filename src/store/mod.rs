//! Span storage: the in-memory buffer of acknowledged spans, and its flush to
//! Parquet files in the Hive layout, on size, on interval and at shutdown.
//!
//! A span is in the buffer before it is acknowledged, and leaves the buffer only
//! once its file is durably renamed into place; a failed write puts the batches
//! back for the next attempt, so nothing acknowledged is dropped.
//!
//! Queries see the store as a [`SpanSnapshot`]: the files on disk plus every
//! buffered batch. A batch being written stays in the buffer, under the name of
//! the file it will become, until that file is in place; the snapshot takes the
//! buffer first and then leaves that name out of the listing, so a span is
//! never missing from a snapshot nor in it twice.

mod listing;
mod parquet;
mod partition;
pub mod retention;
mod rollups;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use tokio::sync::Notify;

pub use self::parquet::{wal_positions, ParquetWriter};
pub use listing::{list_span_files, partition_files, SpanFile};
pub use partition::PartitionKey;
pub use rollups::RollupWriter;

use crate::record::{SpanBatchBuilder, SpanRecord};
use crate::wal::WalPosition;

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
    /// Moves the rows of the open builder into a sealed batch.
    fn seal(&mut self) -> Result<(), StoreError> {
        if !self.builder.is_empty() {
            self.sealed.push(self.builder.finish()?);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<RecordBatch>, StoreError> {
        self.seal()?;
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
    /// Write-ahead log records with rows here: written into the file's
    /// metadata, so replay after a crash knows which of a record's spans
    /// are already in Parquet.
    wal: Vec<WalPosition>,
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
    fn finish(self) -> Result<(Vec<RecordBatch>, Vec<WalPosition>), StoreError> {
        let mut groups = self.groups;
        groups.sort_by(|a, b| (&a.service, &a.span_name).cmp(&(&b.service, &b.span_name)));
        let mut out = self.retry;
        for g in groups {
            out.extend(g.finish()?);
        }
        Ok((out, self.wal))
    }
}

/// Buffered batches, and the names of the files being written from some of them.
type BufferSnapshot = (Vec<(PartitionKey, RecordBatch)>, HashSet<PathBuf>);

/// Batches handed to the writer, kept until their file is in place.
struct Persisting {
    key: PartitionKey,
    path: PathBuf,
    batches: Vec<RecordBatch>,
    bytes: usize,
    wal: Vec<WalPosition>,
}

/// Batches handed to the writer: the file they become, and the log records
/// they hold rows of.
pub(crate) struct Taken {
    path: PathBuf,
    batches: Vec<RecordBatch>,
    wal: Vec<WalPosition>,
}

#[derive(Default)]
struct BufferState {
    partitions: BTreeMap<PartitionKey, Partition>,
    persisting: Vec<Persisting>,
    /// Approximate bytes of the rows not yet handed to the writer.
    bytes: usize,
    /// Arrow bytes of the batches being written.
    persisting_bytes: usize,
}

/// What a query reads: the span files on disk and the buffered batches, with
/// every acknowledged span in exactly one of them.
#[derive(Default)]
pub struct SpanSnapshot {
    pub files: Vec<SpanFile>,
    pub batches: Vec<(PartitionKey, RecordBatch)>,
}

impl SpanSnapshot {
    /// The files of `data_dir` alone, for queries without a running server.
    pub fn of_dir(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(SpanSnapshot {
            files: list_span_files(data_dir)?,
            batches: Vec::new(),
        })
    }
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

    /// Adds records for `tenant`, of the log record at `wal` if logged.
    /// Once this returns, the spans will be flushed.
    pub fn append(
        &self,
        tenant: &Arc<str>,
        records: &[SpanRecord],
        wal: Option<WalPosition>,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut added = 0;
        for r in records {
            let key = PartitionKey::for_span(tenant, r.start_unix_nano);
            let part = state.partitions.entry(key).or_default();
            if let Some(pos) = wal {
                if part.wal.last() != Some(&pos) {
                    part.wal.push(pos);
                }
            }
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

    /// Approximate bytes buffered and not yet handed to the writer.
    pub fn bytes(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// Approximate bytes held: not yet handed to the writer, plus being
    /// written. What backpressure bounds.
    pub fn total_bytes(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.bytes + state.persisting_bytes
    }

    /// Resolves when the buffer has grown past the flush size.
    pub async fn wait_full(&self) {
        self.full.notified().await
    }

    /// Hands everything buffered to the writer: finished batches per
    /// partition, each under the file name `path_for` gives it. The batches
    /// stay visible to snapshots until [`SpanBuffer::persisted`] or
    /// [`SpanBuffer::put_back`]; finishing them under the lock is what keeps a
    /// snapshot from catching them in neither place.
    fn take(&self, path_for: impl Fn(&PartitionKey) -> PathBuf) -> Result<Vec<Taken>, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let partitions = std::mem::take(&mut state.partitions);
        state.bytes = 0;
        let mut taken = Vec::with_capacity(partitions.len());
        for (key, part) in partitions {
            let (batches, wal) = part.finish()?;
            let path = path_for(&key);
            let bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
            taken.push(Taken {
                path: path.clone(),
                batches: batches.clone(),
                wal: wal.clone(),
            });
            state.persisting_bytes += bytes;
            state.persisting.push(Persisting {
                key,
                path,
                batches,
                bytes,
                wal,
            });
        }
        Ok(taken)
    }

    /// The lowest log position whose rows are still only in memory.
    pub fn min_live_wal(&self) -> Option<WalPosition> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let buffered = state.partitions.values().flat_map(|p| p.wal.iter());
        let writing = state.persisting.iter().flat_map(|p| p.wal.iter());
        buffered.chain(writing).min().copied()
    }

    fn remove_persisting(state: &mut BufferState, path: &Path) -> Option<Persisting> {
        let i = state.persisting.iter().position(|p| p.path == path)?;
        let p = state.persisting.swap_remove(i);
        state.persisting_bytes -= p.bytes;
        Some(p)
    }

    /// The file `path` is in place: its batches leave the buffer.
    fn persisted(&self, path: &Path) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Self::remove_persisting(&mut state, path);
    }

    /// The write of `path` failed: its batches go back, for the next flush.
    fn put_back(&self, path: &Path) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Persisting {
            key,
            batches,
            bytes,
            wal,
            ..
        }) = Self::remove_persisting(&mut state, path)
        else {
            return;
        };
        state.bytes += bytes;
        let part = state.partitions.entry(key).or_default();
        part.retry.extend(batches);
        part.wal.extend(wal);
    }

    /// Every buffered batch, and the names of the files being written from them.
    fn snapshot(&self) -> Result<BufferSnapshot, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        let mut batches = Vec::new();
        for (key, part) in state.partitions.iter_mut() {
            batches.extend(part.retry.iter().map(|b| (key.clone(), b.clone())));
            for group in part.groups.iter_mut() {
                group.seal()?;
                batches.extend(group.sealed.iter().map(|b| (key.clone(), b.clone())));
            }
        }
        let mut writing = HashSet::new();
        for p in &state.persisting {
            batches.extend(p.batches.iter().map(|b| (p.key.clone(), b.clone())));
            writing.insert(p.path.clone());
        }
        Ok((batches, writing))
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
    data_dir: PathBuf,
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
            data_dir: data_dir.to_owned(),
            buffer: SpanBuffer::new(flush_bytes),
            writer: ParquetWriter::new(data_dir, row_group_rows, zstd_level),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn buffer(&self) -> &SpanBuffer {
        &self.buffer
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Files and buffered spans, each acknowledged span in exactly one.
    pub fn snapshot(&self) -> Result<SpanSnapshot, StoreError> {
        // The buffer first: a file renamed into place after this point has its
        // batches in the snapshot and its name in `writing`, and one renamed
        // before it is on disk for the listing below.
        let (batches, writing) = self.buffer.snapshot()?;
        let mut files = list_span_files(&self.data_dir)?;
        files.retain(|f| !writing.contains(&f.path));
        Ok(SpanSnapshot { files, batches })
    }

    /// Writes everything buffered to Parquet. Partitions whose write fails stay
    /// buffered (and are counted in `failed_rows`) for the next flush.
    pub async fn flush(self: &Arc<Self>) -> Result<FlushStats, StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        let started = Instant::now();
        let partitions = self.buffer.take(|key| self.writer.path_for(key))?;
        if partitions.is_empty() {
            return Ok(FlushStats::default());
        }
        let this = self.clone();
        let stats = tokio::task::spawn_blocking(move || {
            let mut stats = FlushStats::default();
            for Taken { path, batches, wal } in partitions {
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                match this.writer.write(&path, &batches, &wal) {
                    Ok(()) => {
                        this.buffer.persisted(&path);
                        stats.files += 1;
                        stats.rows += rows;
                        tracing::debug!(path = %path.display(), rows, "wrote span file");
                    }
                    Err(error) => {
                        tracing::error!(%error, rows, path = %path.display(), "span file write failed; keeping the spans buffered for the next flush");
                        stats.failed_rows += rows;
                        this.buffer.put_back(&path);
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
        buffer.append(&tenant, &interleaved, None).unwrap();
        let parts = buffer.take(|_| PathBuf::from("x.parquet")).unwrap();
        assert_eq!(parts.len(), 1);
        let got = names(&parts[0].batches);
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
        buffer.append(&tenant, &many, None).unwrap();
        let parts = buffer.take(|_| PathBuf::from("x.parquet")).unwrap();
        let mut got = names(&parts[0].batches);
        got.sort();
        let mut want: Vec<String> = many.iter().map(|r| r.span_name.clone()).collect();
        want.sort();
        assert_eq!(got, want, "every span kept, none twice");
        assert!(
            buffer
                .take(|_| PathBuf::from("x.parquet"))
                .unwrap()
                .is_empty(),
            "take empties the buffer"
        );
    }

    /// Rows in a snapshot: the footers of its files plus its batches.
    fn rows_in(snapshot: &SpanSnapshot) -> usize {
        let in_files: usize = snapshot
            .files
            .iter()
            .map(|f| {
                let file = std::fs::File::open(&f.path).unwrap();
                let reader =
                    ::parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
                ::parquet::file::reader::FileReader::metadata(&reader)
                    .file_metadata()
                    .num_rows() as usize
            })
            .sum();
        in_files
            + snapshot
                .batches
                .iter()
                .map(|(_, b)| b.num_rows())
                .sum::<usize>()
    }

    #[test]
    fn a_batch_being_written_is_seen_once_at_every_step() {
        let buffer = SpanBuffer::new(usize::MAX);
        let tenant: Arc<str> = Arc::from("default");
        buffer
            .append(&tenant, &[record("a", 1), record("b", 2)], None)
            .unwrap();
        let rows = |buffer: &SpanBuffer| {
            let (batches, writing) = buffer.snapshot().unwrap();
            let n: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
            (n, writing.len())
        };
        assert_eq!(rows(&buffer), (2, 0));
        let taken = buffer.take(|_| PathBuf::from("p.parquet")).unwrap();
        assert_eq!(rows(&buffer), (2, 1), "still buffered while written");
        buffer.put_back(&taken[0].path);
        assert_eq!(rows(&buffer), (2, 0), "back after a failed write");
        let taken = buffer.take(|_| PathBuf::from("q.parquet")).unwrap();
        buffer.persisted(&taken[0].path);
        assert_eq!(rows(&buffer), (0, 0), "gone once the file is in place");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_see_every_span_once_while_flushes_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::new(dir.path(), usize::MAX, 1024, 1));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flusher = {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut flushes = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.flush().await.unwrap();
                    flushes += 1;
                    tokio::task::yield_now().await;
                }
                flushes
            })
        };
        let tenant: Arc<str> = Arc::from("default");
        let mut appended = 0;
        for round in 0..200u32 {
            let batch: Vec<SpanRecord> = (0..7).map(|i| record("s", (round + i) as u8)).collect();
            store.buffer().append(&tenant, &batch, None).unwrap();
            appended += batch.len();
            let snapshot = tokio::task::block_in_place(|| store.snapshot().unwrap());
            assert_eq!(rows_in(&snapshot), appended, "round {round}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let flushes = flusher.await.unwrap();
        assert!(flushes > 1, "flushes ran alongside: {flushes}");
        store.flush().await.unwrap();
        let last = store.snapshot().unwrap();
        assert!(last.batches.is_empty());
        assert_eq!(rows_in(&last), appended);
    }
}
