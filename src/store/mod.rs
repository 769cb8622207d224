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

pub mod compaction;
mod held;
mod listing;
pub mod lock;
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
pub use held::HeldId;
pub use listing::{list_rollup_files, list_span_files, partition_files, RollupFile, SpanFile};
pub use partition::{PartitionKey, RollupKey};
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
    /// [`SpanRecord::approx_bytes`] of the rows in the open builder, and
    /// what they were charged to the buffer's size.
    open_approx: usize,
    open_charged: usize,
}

/// The buffer's size: sealed batches at their real Arrow size, rows in open
/// builders at an estimate. Arrow's builders hold more than the records'
/// strings (offsets, validity, doubling growth), by a factor that depends on
/// the traffic, so the estimate is calibrated on every batch sealed.
struct Size {
    bytes: usize,
    /// Real bytes per approximate byte, of the batches sealed lately.
    factor: f64,
}

impl Default for Size {
    fn default() -> Self {
        // Where loadgen's traffic settles; the first sealed batch corrects it.
        Size {
            bytes: 0,
            factor: 2.0,
        }
    }
}

impl Size {
    /// Charges a row of `approx` bytes to `group`'s open builder.
    fn charge(&mut self, group: &mut Group, approx: usize) {
        let charged = (approx as f64 * self.factor) as usize;
        group.open_approx += approx;
        group.open_charged += charged;
        self.bytes += charged;
    }

    /// Re-counts `group`'s open rows, just sealed into `batch`, at their real size.
    fn sealed(&mut self, group: &mut Group, batch: &RecordBatch) {
        let real = batch.get_array_memory_size();
        self.bytes = (self.bytes + real).saturating_sub(group.open_charged);
        if group.open_approx > 0 {
            let factor = real as f64 / group.open_approx as f64;
            self.factor = 0.75 * self.factor + 0.25 * factor;
        }
        group.open_approx = 0;
        group.open_charged = 0;
    }
}

impl Group {
    /// Moves the rows of the open builder into a sealed batch.
    fn seal(&mut self, size: &mut Size) -> Result<(), StoreError> {
        if !self.builder.is_empty() {
            let batch = self.builder.finish()?;
            size.sealed(self, &batch);
            self.sealed.push(batch);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<RecordBatch>, StoreError> {
        // The buffer's size is reset as a whole when groups are finished.
        self.seal(&mut Size::default())?;
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
                open_approx: 0,
                open_charged: 0,
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
/// Buffered batches, the names of the files being written from some of
/// them, and the count of takes so far.
type BufferSnapshot = (Vec<(PartitionKey, RecordBatch)>, HashSet<PathBuf>, u64);

/// Files handed to the writer that are remembered, for snapshots listing
/// the directory meanwhile: far more than one listing ever overlaps.
const RECENT_TAKES: usize = 4096;

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
    /// Bytes of the rows not yet handed to the writer.
    size: Size,
    /// Arrow bytes of the batches being written.
    persisting_bytes: usize,
    /// Calls of `take`, and the files the latest ones were given.
    takes: u64,
    recent: std::collections::VecDeque<(u64, PathBuf)>,
    /// LLM calls waiting for their trace's ancestors; see [`held`].
    held: held::HeldRows,
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
        self.append_locked(&mut state, tenant, records, wal)
    }

    fn append_locked(
        &self,
        state: &mut BufferState,
        tenant: &Arc<str>,
        records: &[SpanRecord],
        wal: Option<WalPosition>,
    ) -> Result<(), StoreError> {
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
            state.size.charge(group, r.approx_bytes());
            if group.builder.len() >= SEAL_ROWS {
                group.seal(&mut state.size)?;
            }
        }
        if state.size.bytes >= self.flush_bytes {
            self.full.notify_one();
        }
        Ok(())
    }

    /// Bytes buffered and not yet handed to the writer.
    pub fn bytes(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .size
            .bytes
    }

    /// Bytes held: not yet handed to the writer, plus being written. What
    /// backpressure bounds.
    pub fn total_bytes(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.size.bytes + state.persisting_bytes + state.held.bytes
    }

    /// Wakes the flusher now if at least `min_bytes` are buffered (memory
    /// is short).
    pub fn flush_soon(&self, min_bytes: usize) {
        if self.bytes() >= min_bytes {
            self.full.notify_one();
        }
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
        state.size.bytes = 0;
        state.takes += 1;
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
            let takes = state.takes;
            state.recent.push_back((takes, path.clone()));
            if state.recent.len() > RECENT_TAKES {
                state.recent.pop_front();
            }
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
        state.size.bytes += bytes;
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
                group.seal(&mut state.size)?;
                batches.extend(group.sealed.iter().map(|b| (key.clone(), b.clone())));
            }
        }
        batches.extend(state.held.batches()?);
        let mut writing = HashSet::new();
        for p in &state.persisting {
            batches.extend(p.batches.iter().map(|b| (p.key.clone(), b.clone())));
            writing.insert(p.path.clone());
        }
        Ok((batches, writing, state.takes))
    }

    /// The files handed to the writer after take number `takes`.
    fn taken_since(&self, takes: u64) -> HashSet<PathBuf> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .recent
            .iter()
            .filter(|(n, _)| *n > takes)
            .map(|(_, path)| path.clone())
            .collect()
    }
}

/// What one flush did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushStats {
    pub files: usize,
    pub rows: usize,
    /// Rows whose write failed and went back to the buffer.
    pub failed_rows: usize,
    /// The last failed write's error, for the metrics and `/readyz`.
    pub failure: Option<crate::metrics::WriteFailure>,
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
        // before it is on disk for the listing below. A flush can also take
        // rows this snapshot holds and rename their file into place while the
        // directory is listed: files taken after the buffer was read are left
        // out too.
        let (batches, writing, takes) = self.buffer.snapshot()?;
        let mut files = list_span_files(&self.data_dir)?;
        let late = self.buffer.taken_since(takes);
        files.retain(|f| !writing.contains(&f.path) && !late.contains(&f.path));
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
                        let failure = crate::metrics::WriteFailure::of(&error);
                        // Parquet's own errors do not name the file.
                        stats.failure = Some(crate::metrics::WriteFailure {
                            message: format!("cannot write {}: {error}", path.display()),
                            ..failure
                        });
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
    #[test]
    fn the_buffer_counts_sealed_batches_at_their_real_size() {
        let buffer = SpanBuffer::new(usize::MAX);
        let tenant: Arc<str> = Arc::from("default");
        let rows: Vec<SpanRecord> = (0..2 * SEAL_ROWS)
            .map(|i| record("s", (i % 251) as u8))
            .collect();
        buffer.append(&tenant, &rows, None).unwrap();
        // Both batches sealed: the count is exactly their Arrow memory.
        let (batches, _, _) = buffer.snapshot().unwrap();
        assert_eq!(batches.len(), 2);
        let real: usize = batches.iter().map(|(_, b)| b.get_array_memory_size()).sum();
        assert_eq!(buffer.bytes(), real);
        // Open rows are charged at the factor sealed batches showed, which is
        // well above the records' own string bytes.
        let approx: usize = rows[..100].iter().map(SpanRecord::approx_bytes).sum();
        buffer.append(&tenant, &rows[..100], None).unwrap();
        let charged = buffer.bytes() - real;
        let factor = real as f64 / rows.iter().map(SpanRecord::approx_bytes).sum::<usize>() as f64;
        assert!(factor > 1.0, "Arrow holds more than the strings: {factor}");
        let expected = approx as f64 * factor;
        assert!(
            (charged as f64 - expected).abs() < expected * 0.3,
            "{charged} charged for {approx} approximate bytes at factor {factor}"
        );
    }

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
            let (batches, writing, _) = buffer.snapshot().unwrap();
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
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let flushes = Arc::new(AtomicUsize::new(0));
        let flusher = {
            let (store, stop, flushes) = (store.clone(), stop.clone(), flushes.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    store.flush().await.unwrap();
                    flushes.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let tenant: Arc<str> = Arc::from("default");
        let mut appended = 0;
        // At least 200 rounds, and on until flushes ran alongside (a loaded
        // machine may not schedule the flusher early).
        let mut round = 0u32;
        while round < 200 || (flushes.load(Ordering::Relaxed) < 3 && round < 1_000_000) {
            round += 1;
            let batch: Vec<SpanRecord> = (0..7).map(|i| record("s", (round + i) as u8)).collect();
            store.buffer().append(&tenant, &batch, None).unwrap();
            appended += batch.len();
            let snapshot = tokio::task::block_in_place(|| store.snapshot().unwrap());
            assert_eq!(rows_in(&snapshot), appended, "round {round}");
        }
        stop.store(true, Ordering::Relaxed);
        flusher.await.unwrap();
        let flushes = flushes.load(Ordering::Relaxed);
        assert!(flushes > 1, "flushes ran alongside: {flushes}");
        store.flush().await.unwrap();
        let last = store.snapshot().unwrap();
        assert!(last.batches.is_empty());
        assert_eq!(rows_in(&last), appended);
    }
}
