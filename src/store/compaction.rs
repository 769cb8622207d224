//! Compaction: a partition collects one small file per flush (every
//! `storage.flush_interval`, per tenant and hour), which costs every query an
//! open and a footer read per file. Once a partition's hour is over, plus
//! `storage.compact_after` for late spans, its small files are merged into one.
//!
//! Rollup partitions (tenant and day) collect a file each time minutes close,
//! about one a minute. The files written in one clock hour are merged once
//! that hour is over plus `compact_after`, and once the day is over plus
//! `compact_after`, all of the day's small files (the hourly ones included)
//! are merged into one.
//!
//! The swap never shows a span twice nor loses one, to queries or across a
//! crash, because one rename commits it:
//! 1. a marker `.{output}.replaces` names the inputs (fsynced);
//! 2. the merged file is written under a temp name and renamed to `{output}`:
//!    the commit;
//! 3. the inputs are removed, then the marker.
//!
//! A listing leaves out the inputs of a marker whose output exists, so from
//! step 2 on readers see the output alone. A marker without its output is a
//! compaction that never committed: [`recover`] removes it at start, and
//! removes the inputs a crash between 2 and 3 left. The merged file carries
//! every input's write-ahead-log positions, so log replay still knows which
//! spans are in Parquet. Readers globbing `*.parquet` themselves (DuckDB) can
//! see inputs and output together only between steps 2 and 3.
//!
//! An input that cannot be read (truncated, garbled) is checked on its own
//! and, if damaged, moved to `quarantine/` (see [`crate::quarantine`]); the
//! partition's other files are merged without it. Otherwise one damaged file
//! would stop its partition from ever being compacted.
//!
//! One collector per data dir compacts: this is not coordinated across
//! processes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::listing::{hour_dirs, list_rollup_files, list_span_files, rollup_dirs};
use super::listing::{PartitionFile, RollupFile, SpanFile};
use super::parquet::{sync_dir, wal_positions_in, ParquetWriter};
use super::partition::{PartitionKey, RollupKey};
use super::retention::remove_file;
use super::{RollupWriter, Store, StoreError};
use crate::aggregate::rollup::rollup_schema;
use crate::record::span_schema;

const MARKER_SUFFIX: &str = ".replaces";

/// Files at least this big are left alone: merging them gains little and
/// costs a rewrite.
const LARGE_FILE_BYTES: u64 = 128 << 20;

/// Rows per batch read back from the inputs.
const READ_BATCH_ROWS: usize = 8192;

/// Which partitions are compacted.
#[derive(Clone, Debug)]
pub struct Policy {
    /// How long after its hour ends a partition is left to late spans.
    pub after: Duration,
    /// Fewer small files than this are left as they are.
    pub min_files: usize,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub partitions: usize,
    /// Input files merged (and removed).
    pub files: usize,
    pub rows: usize,
}

/// The output a marker file name stands for: `.X.replaces` -> `X`.
pub(super) fn marker_output(name: &str) -> Option<&str> {
    name.strip_prefix('.')?.strip_suffix(MARKER_SUFFIX)
}

fn marker_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}{MARKER_SUFFIX}"))
}

/// The input file names a marker lists; none when it is already gone.
pub(super) fn read_marker(path: &Path) -> Result<Vec<String>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Finishes or undoes compactions a crash interrupted. Run at start, before
/// anything reads the store.
pub fn recover(data_dir: &Path) -> Result<usize, StoreError> {
    let mut fixed = 0;
    let dirs = hour_dirs(data_dir)?.into_iter().map(|(_, d)| d);
    let dirs = dirs.chain(rollup_dirs(data_dir)?.into_iter().map(|(_, d)| d));
    for dir in dirs {
        let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(output) = marker_output(&name) else {
                continue;
            };
            let output = dir.join(output);
            if output.exists() {
                // Committed: the inputs go, as the compaction would have done.
                for input in read_marker(&entry.path())? {
                    remove_file(&dir.join(input))?;
                }
                tracing::info!(output = %output.display(), "finished an interrupted compaction");
            } else {
                let name = output.file_name().unwrap_or_default().to_string_lossy();
                remove_file(&dir.join(format!(".{name}.tmp")))?;
                tracing::info!(output = %output.display(), "undid a compaction that never committed");
            }
            sync_dir(&dir);
            remove_file(&entry.path())?;
            fixed += 1;
        }
    }
    Ok(fixed)
}

/// The partitions due for compaction, with their small files.
fn choose(files: Vec<SpanFile>, now: SystemTime, policy: &Policy) -> Vec<Vec<SpanFile>> {
    let now_nanos = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64);
    let settled = |key: &PartitionKey| {
        let due = Duration::from_secs(3600) + policy.after;
        key.hour_start_nanos()
            .saturating_add(due.as_nanos().min(i64::MAX as u128) as i64)
            <= now_nanos
    };
    let mut by_partition: BTreeMap<PartitionKey, Vec<SpanFile>> = BTreeMap::new();
    for file in files {
        if file.size < LARGE_FILE_BYTES && settled(&file.key) {
            by_partition.entry(file.key.clone()).or_default().push(file);
        }
    }
    // A partition a flush wrote to within the last minute waits: a query
    // that read the buffer just before that flush leaves the new file out
    // by name (`Store::snapshot`), which it could not do for a merge of it.
    let quiet_since = now.checked_sub(QUIET).unwrap_or(UNIX_EPOCH);
    by_partition
        .into_values()
        .filter(|small| small.len() >= policy.min_files.max(2))
        .filter(|small| small.iter().all(|f| f.modified <= quiet_since))
        .collect()
}

/// How long a partition must have gone without a new file to be compacted.
const QUIET: Duration = Duration::from_secs(60);

/// The inputs of one merge, opened: their rows in order, under `schema`.
struct Opened {
    rows: usize,
    /// The write-ahead-log positions the inputs hold, ascending.
    wal: Vec<crate::wal::WalPosition>,
    batches: Box<dyn Iterator<Item = Result<RecordBatch, StoreError>> + Send>,
    /// The input whose read failed, once one has.
    failed: Arc<std::sync::Mutex<Option<PathBuf>>>,
}

/// Why a merge failed: reading one of its inputs (which may be damaged), or
/// anything else (writing the output, the swap).
#[derive(Debug, thiserror::Error)]
enum MergeError {
    #[error("cannot read {}: {error}", path.display())]
    Input { path: PathBuf, error: StoreError },
    #[error(transparent)]
    Other(#[from] StoreError),
}

/// Opens `inputs` for reading; `None` when one is not of `schema` (a file of
/// an older version, left as it is).
fn open_inputs<K>(
    inputs: &[PartitionFile<K>],
    schema: &arrow::datatypes::SchemaRef,
    what: &str,
) -> Result<Option<Opened>, MergeError> {
    let mut readers = Vec::with_capacity(inputs.len());
    let mut rows = 0usize;
    let mut wal = Vec::new();
    for input in inputs {
        let input_error = |error: StoreError| MergeError::Input {
            path: input.path.clone(),
            error,
        };
        let file = File::open(&input.path).map_err(|e| StoreError::io(&input.path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| input_error(e.into()))?;
        if !same_columns(builder.schema(), schema) {
            tracing::warn!(path = %input.path.display(), "not compacted: the file's schema is not the current {what} schema");
            return Ok(None);
        }
        let footer = builder.metadata().file_metadata();
        rows += footer.num_rows().max(0) as usize;
        wal.extend(wal_positions_in(footer));
        let reader = builder
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(|e| input_error(e.into()))?;
        readers.push((input.path.clone(), reader));
    }
    wal.sort();
    wal.dedup();
    let schema = schema.clone();
    let failed = Arc::new(std::sync::Mutex::new(None));
    let noted = failed.clone();
    let batches = readers.into_iter().flat_map(move |(path, reader)| {
        let noted = noted.clone();
        reader.map(move |b| {
            b.map_err(|e| {
                *noted.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.clone());
                StoreError::from(e)
            })
        })
    });
    let batches = batches.map(move |b| b.and_then(|b| conform(b, &schema)));
    Ok(Some(Opened {
        rows,
        wal,
        batches: Box::new(batches),
        failed,
    }))
}

/// Writes the merged file with `write`, then swaps it in for `inputs`;
/// a failure while reading an input names that input.
fn write_merged<K>(
    inputs: &[PartitionFile<K>],
    output: &Path,
    failed: &std::sync::Mutex<Option<PathBuf>>,
    write: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), MergeError> {
    swap(inputs, output, write).map_err(|error| {
        match failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(path) => MergeError::Input { path, error },
            None => MergeError::Other(error),
        }
    })
}

/// Merges `inputs` (all of one partition) into one new file and removes
/// them. `None` when an input is not a span file of the current schema.
fn merge(writer: &ParquetWriter, inputs: &[SpanFile]) -> Result<Option<usize>, MergeError> {
    let Some(first) = inputs.first() else {
        return Ok(None);
    };
    let Some(Opened {
        rows,
        wal,
        batches,
        failed,
    }) = open_inputs(inputs, &span_schema(), "span")?
    else {
        return Ok(None);
    };
    let output = writer.compacted_path_for(&first.key);
    write_merged(inputs, &output, &failed, || {
        writer.write_stream(&output, rows, batches, &wal)
    })?;
    Ok(Some(rows))
}

/// Replaces `inputs` (files of one directory) by `output`, which `write`
/// writes atomically: marker, output (the commit), inputs removed, marker
/// removed; see the module docs.
fn swap<K>(
    inputs: &[PartitionFile<K>],
    output: &Path,
    write: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let dir = output.parent().map(Path::to_owned).unwrap_or_default();
    let marker = marker_path(output);
    let names: Vec<String> = inputs
        .iter()
        .filter_map(|f| f.path.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    (|| {
        let mut file = File::create(&marker)?;
        file.write_all(names.join("\n").as_bytes())?;
        file.sync_all()
    })()
    .map_err(|e| {
        // A marker cut short (disk full) names no output that exists; it
        // is not kept until the next start's recovery.
        let _ = std::fs::remove_file(&marker);
        StoreError::io(&marker, e)
    })?;
    // The marker must be on disk before the output can be: otherwise a power
    // loss could leave the output and its inputs both listed.
    sync_dir(&dir);
    if let Err(error) = write() {
        let _ = std::fs::remove_file(&marker);
        return Err(error);
    }
    for input in inputs {
        remove_file(&input.path)?;
    }
    sync_dir(&dir);
    remove_file(&marker)?;
    Ok(())
}

/// Whether a file's columns are `schema`'s, by name and type.
fn same_columns(file: &arrow::datatypes::Schema, schema: &arrow::datatypes::Schema) -> bool {
    file.fields().len() == schema.fields().len()
        && file
            .fields()
            .iter()
            .zip(schema.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type().equals_datatype(y.data_type()))
}

/// The rollup files due for compaction, in groups to merge: per partition,
/// the small files written in one clock hour once it is over plus
/// `policy.after`, or all small files once the day is.
fn choose_rollups(
    files: Vec<RollupFile>,
    now: SystemTime,
    policy: &Policy,
) -> Vec<Vec<RollupFile>> {
    const HOUR: Duration = Duration::from_secs(3600);
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = since_epoch(now);
    let day_over = |key: &RollupKey| {
        let end = Duration::from_nanos(key.day_start_nanos().max(0) as u64) + 24 * HOUR;
        end + policy.after <= now
    };
    // (partition, hour the file was written in; None for a settled day)
    let mut groups: BTreeMap<(RollupKey, Option<u64>), Vec<RollupFile>> = BTreeMap::new();
    for file in files {
        if file.size >= LARGE_FILE_BYTES {
            continue;
        }
        if day_over(&file.key) {
            groups
                .entry((file.key.clone(), None))
                .or_default()
                .push(file);
            continue;
        }
        // Merged files of the day wait for the day's end.
        let name = file.path.file_name().unwrap_or_default().to_string_lossy();
        if !name.starts_with("rollup-") {
            continue;
        }
        let hour = since_epoch(file.modified).as_secs() / 3600;
        if Duration::from_secs((hour + 1) * 3600) + policy.after <= now {
            groups
                .entry((file.key.clone(), Some(hour)))
                .or_default()
                .push(file);
        }
    }
    groups
        .into_values()
        .filter(|g| g.len() >= policy.min_files.max(2))
        .collect()
}

/// Merges `inputs` (rollup files of one partition) into one new file and
/// removes them. `None` when an input is not a rollup file of the current
/// schema.
fn merge_rollups(
    writer: &RollupWriter,
    inputs: &[RollupFile],
) -> Result<Option<usize>, MergeError> {
    let Some(first) = inputs.first() else {
        return Ok(None);
    };
    let Some(opened) = open_inputs(inputs, &rollup_schema(), "rollup")? else {
        return Ok(None);
    };
    let output = writer.compacted_path_for(&first.key);
    write_merged(inputs, &output, &opened.failed, || {
        writer.write_stream(&output, opened.batches)
    })?;
    Ok(Some(opened.rows))
}

/// Merges the rollup files due for compaction (blocking file work). One
/// group failing leaves its files as they were and goes on with the next.
pub fn compact_rollups(
    writer: &RollupWriter,
    now: SystemTime,
    policy: &Policy,
) -> Result<Compacted, StoreError> {
    let chosen = choose_rollups(list_rollup_files(writer.data_dir())?, now, policy);
    let dir = |k: &RollupKey| k.dir(Path::new(""));
    let kind = crate::quarantine::Kind::Rollups;
    Ok(merge_each(
        chosen,
        "rollup",
        writer.data_dir(),
        kind,
        dir,
        |inputs| merge_rollups(writer, inputs),
    ))
}

/// Merges each group of files with `merge`, logging each outcome; a group
/// that fails stays as it was and the next one goes on. An input that fails
/// to read and is damaged goes to quarantine, and the group is merged
/// again without it.
fn merge_each<K>(
    groups: Vec<Vec<PartitionFile<K>>>,
    what: &str,
    data_dir: &Path,
    kind: crate::quarantine::Kind,
    dir: impl Fn(&K) -> PathBuf,
    mut merge: impl FnMut(&[PartitionFile<K>]) -> Result<Option<usize>, MergeError>,
) -> Compacted {
    let mut done = Compacted::default();
    for mut inputs in groups {
        let started = std::time::Instant::now();
        let partition = dir(&inputs[0].key).display().to_string();
        // Each round either ends the group or sets one input aside, so this
        // ends; a damaged input is skipped by queries meanwhile anyway.
        let merged = loop {
            inputs.retain(|f| !crate::quarantine::known_damaged(&f.path));
            if inputs.len() < 2 {
                break Ok(None);
            }
            match merge(&inputs) {
                Err(MergeError::Input { path, error }) => {
                    let outcome =
                        crate::quarantine::set_aside_if_damaged(data_dir, &path, kind, &error);
                    if !outcome.damaged() {
                        break Err(MergeError::Input { path, error });
                    }
                    inputs.retain(|f| f.path != path);
                }
                other => break other,
            }
        };
        match merged {
            Ok(Some(rows)) => {
                done.partitions += 1;
                done.files += inputs.len();
                done.rows += rows;
                tracing::info!(
                    %partition,
                    files = inputs.len(),
                    rows,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "compacted {what} files"
                );
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, %partition, "{what} compaction failed; the files stay as they were");
            }
        }
    }
    done
}

/// A batch read back, under the table's schema itself (the writer compares
/// schemas, metadata included).
fn conform(
    batch: RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, StoreError> {
    Ok(RecordBatch::try_new(
        schema.clone(),
        batch.columns().to_vec(),
    )?)
}

impl Store {
    /// Merges the small files of every settled partition, one partition at
    /// a time.
    pub async fn compact(
        self: &Arc<Self>,
        now: SystemTime,
        policy: &Policy,
    ) -> Result<Compacted, StoreError> {
        let chosen = {
            // No flush runs meanwhile: a file just renamed into place whose
            // batches are still buffered is never picked as an input.
            let _no_flush = self.flushing.lock().await;
            let dir = self.data_dir.clone();
            let files = tokio::task::spawn_blocking(move || list_span_files(&dir))
                .await
                .map_err(|e| StoreError::io(&self.data_dir, std::io::Error::other(e)))??;
            choose(files, now, policy)
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let dir = |k: &PartitionKey| k.dir(Path::new(""));
            let kind = crate::quarantine::Kind::Spans;
            merge_each(chosen, "span", &this.data_dir, kind, dir, |inputs| {
                merge(&this.writer, inputs)
            })
        })
        .await
        .map_err(|e| StoreError::io(&self.data_dir, std::io::Error::other(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::record::SpanRecord;
    use crate::store::{wal_positions, SpanSnapshot};
    use crate::wal::WalPosition;
    use chrono::Datelike;

    /// 2023-11-14T22:13:20Z: long settled.
    const OLD: i64 = 1_700_000_000_000_000_000;

    fn policy() -> Policy {
        Policy {
            after: Duration::from_secs(600),
            min_files: 4,
        }
    }

    /// Spans in the store's files and buffer, or `None` when a listed file
    /// went away before it was read (the query engine runs such a query again).
    fn rows(store: &Store) -> Option<usize> {
        let SpanSnapshot { files, batches } = store.snapshot().unwrap();
        let mut n: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
        for f in files {
            let file = match File::open(&f.path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => panic!("{e}"),
            };
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            n += reader.metadata().file_metadata().num_rows() as usize;
        }
        Some(n)
    }

    /// `files` flushes of `per_file` spans each, starting at `start`.
    async fn fill(store: &Arc<Store>, start: i64, files: usize, per_file: usize, first_wal: u64) {
        let tenant: Arc<str> = Arc::from("default");
        for f in 0..files {
            let records: Vec<SpanRecord> = (0..per_file)
                .map(|i| {
                    let mut r = SpanRecord::sample("s", (i % 251) as u8);
                    r.start_unix_nano = start + (f * per_file + i) as i64;
                    r.end_unix_nano = r.start_unix_nano + 1_000;
                    r
                })
                .collect();
            let wal = WalPosition {
                segment: 1,
                offset: first_wal + f as u64,
            };
            store.buffer().append(&tenant, &records, Some(wal)).unwrap();
            store.flush().await.unwrap();
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_files_of_a_settled_hour_become_one_and_readers_see_every_span_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::new(dir.path(), usize::MAX, 1024, 1));
        fill(&store, OLD, 6, 3000, 0).await;
        let recent = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        fill(&store, recent, 5, 10, 100).await;
        // Files written within the last minute are left for the next pass.
        assert_eq!(
            store.compact(SystemTime::now(), &policy()).await.unwrap(),
            Compacted::default()
        );
        let now = SystemTime::now() + QUIET;
        let before = list_span_files(dir.path()).unwrap();
        assert_eq!(before.len(), 11);
        let old_key = before
            .iter()
            .find(|f| f.key.hour_start_nanos() <= OLD)
            .unwrap()
            .key
            .clone();
        let total = 6 * 3000 + 5 * 10;

        // A reader counting over and over while the swap happens.
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(n) = rows(&store) {
                        assert_eq!(n, total, "a reader saw a span twice or not at all");
                        reads += 1;
                    }
                }
                reads
            })
        };
        let done = store.compact(now, &policy()).await.unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(
            done,
            Compacted {
                partitions: 1,
                files: 6,
                rows: 18_000
            }
        );

        let after = list_span_files(dir.path()).unwrap();
        let old: Vec<_> = after.iter().filter(|f| f.key == old_key).collect();
        assert_eq!(old.len(), 1, "one file for the settled hour");
        let name = old[0].path.file_name().unwrap().to_string_lossy();
        assert!(name.starts_with("compact-"), "{name}");
        assert_eq!(
            names_in(&old_key.dir(dir.path())),
            vec![name.to_string()],
            "inputs and marker removed"
        );
        // The hour still open is left alone.
        assert_eq!(after.len(), 1 + 5);
        // The merged file still names the log records of its rows.
        let wal: Vec<u64> = wal_positions(&old[0].path)
            .unwrap()
            .iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(wal, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(rows(&store), Some(total));

        // Nothing left to do on the next pass.
        assert_eq!(
            store.compact(now, &policy()).await.unwrap(),
            Compacted::default()
        );
    }

    #[tokio::test]
    async fn a_compaction_cut_short_is_undone_or_finished_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::new(dir.path(), usize::MAX, 1024, 1));
        fill(&store, OLD, 4, 100, 0).await;
        let inputs = list_span_files(dir.path()).unwrap();
        let part = inputs[0].path.parent().unwrap().to_owned();
        let input_names: Vec<String> = names_in(&part);
        let saved = tempfile::tempdir().unwrap();
        for name in &input_names {
            std::fs::copy(part.join(name), saved.path().join(name)).unwrap();
        }

        // Cut short before the commit: a marker and a half-written temp file.
        std::fs::write(
            part.join(".compact-1-0-000001.parquet.replaces"),
            input_names.join("\n"),
        )
        .unwrap();
        std::fs::write(part.join(".compact-1-0-000001.parquet.tmp"), b"half").unwrap();
        assert_eq!(
            list_span_files(dir.path()).unwrap().len(),
            4,
            "inputs still count"
        );
        assert_eq!(rows(&store), Some(400));
        assert_eq!(recover(dir.path()).unwrap(), 1);
        assert_eq!(
            names_in(&part),
            input_names,
            "undone: only the inputs remain"
        );

        // Cut short after the commit: the output, its marker and the inputs.
        store
            .compact(SystemTime::now() + QUIET, &policy())
            .await
            .unwrap();
        let output = names_in(&part);
        assert_eq!(output.len(), 1);
        for name in &input_names {
            std::fs::copy(saved.path().join(name), part.join(name)).unwrap();
        }
        std::fs::write(
            part.join(format!(".{}.replaces", output[0])),
            input_names.join("\n"),
        )
        .unwrap();
        assert_eq!(list_span_files(dir.path()).unwrap().len(), 1, "output only");
        assert_eq!(rows(&store), Some(400));
        assert_eq!(recover(dir.path()).unwrap(), 1);
        assert_eq!(names_in(&part), output, "finished: inputs removed");
        assert_eq!(rows(&store), Some(400));
    }

    #[test]
    fn only_partitions_settled_and_with_enough_small_files_are_chosen() {
        let key = |hour: u32| PartitionKey {
            tenant: Arc::from("t"),
            date: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            hour,
        };
        let file = |hour: u32, n: usize, size: u64| SpanFile {
            key: key(hour),
            path: PathBuf::from(format!("{hour}-{n}.parquet")),
            size,
            modified: UNIX_EPOCH,
        };
        let mut files = Vec::new();
        for n in 0..4 {
            files.push(file(1, n, 1000)); // settled, 4 small
            files.push(file(9, n, 1000)); // 09:00-10:00 ends 10:00; due 10:10
        }
        files.extend((0..3).map(|n| file(2, n, 1000))); // too few
        files.extend((0..3).map(|n| file(3, n, 1000)));
        files.push(file(3, 9, LARGE_FILE_BYTES)); // large ones do not count
        let at = |h: u32, m: u32| {
            let t = key(0).date.and_hms_opt(h, m, 0).unwrap().and_utc();
            UNIX_EPOCH + Duration::from_secs(t.timestamp() as u64)
        };
        let hours = |chosen: Vec<Vec<SpanFile>>| -> Vec<(u32, usize)> {
            chosen.iter().map(|f| (f[0].key.hour, f.len())).collect()
        };
        assert_eq!(
            hours(choose(files.clone(), at(10, 9), &policy())),
            vec![(1, 4)]
        );
        assert_eq!(
            hours(choose(files.clone(), at(10, 10), &policy())),
            vec![(1, 4), (9, 4)]
        );
        let off = Policy {
            min_files: 0,
            ..policy()
        };
        // min_files 0 is "off" for the server; choose itself never merges one file.
        assert_eq!(choose(vec![file(1, 0, 10)], at(12, 0), &off).len(), 0);
    }

    /// Rollup files of tenant `default`: one per minute from `first`, each
    /// one row with `minute + 1` ms of latency and as many requests.
    fn write_rollups(writer: &RollupWriter, first: i64, minutes: i64) {
        use crate::aggregate::{hdr, AggKey, Counters, Rollup};
        let tenant: Arc<str> = Arc::from("default");
        for m in 0..minutes {
            let mut latency = hdr::new_histogram(3).unwrap();
            latency.record((m + 1) as u64).unwrap();
            let row = Arc::new(Rollup {
                minute: first + m * 60_000_000_000,
                key: AggKey::overflow(&tenant),
                counters: Counters {
                    requests: (m + 1) as u64,
                    ..Counters::default()
                },
                latency: hdr::encode(&latency),
                ttft: None,
                correction: false,
            });
            for (tenant, date, batch) in crate::aggregate::rollup::to_batches(&[row]).unwrap() {
                writer
                    .write(&writer.path_for(&tenant, date), &batch)
                    .unwrap();
            }
        }
    }

    async fn rollup_totals(dir: &Path) -> String {
        let engine = crate::query::QueryEngine::open(
            dir,
            &crate::pricing::PriceBook::default_book(),
            crate::query::QueryLimits::default(),
        )
        .await
        .unwrap();
        let result = engine
            .run(
                "SELECT count(*) AS rows, sum(requests) AS calls, \
                 hdr_quantile(hdr_merge(latency_ms_hist), 0.5) AS p50 FROM rollups",
            )
            .await
            .unwrap();
        arrow::util::pretty::pretty_format_batches(&result.batches)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn rollup_files_of_a_finished_day_become_one_and_queries_see_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let writer = RollupWriter::new(dir.path());
        write_rollups(&writer, OLD, 30);
        let before = rollup_totals(dir.path()).await;
        assert!(before.contains("| 30   | 465   |"), "{before}");

        let done = compact_rollups(&writer, SystemTime::now(), &policy()).unwrap();
        assert_eq!((done.partitions, done.files, done.rows), (1, 30, 30));
        let files = list_rollup_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let name = files[0].path.file_name().unwrap().to_string_lossy();
        assert!(name.starts_with("compact-"), "{name}");
        assert_eq!(
            names_in(files[0].path.parent().unwrap()),
            vec![name.to_string()]
        );
        assert_eq!(rollup_totals(dir.path()).await, before);

        // Nothing left to do.
        let again = compact_rollups(&writer, SystemTime::now(), &policy()).unwrap();
        assert_eq!(again, Compacted::default());
    }

    #[tokio::test]
    async fn a_rollup_compaction_cut_short_is_undone_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let writer = RollupWriter::new(dir.path());
        write_rollups(&writer, OLD, 5);
        let before = rollup_totals(dir.path()).await;
        let inputs = list_rollup_files(dir.path()).unwrap();
        // Marker written, output never committed.
        let output = writer.compacted_path_for(&inputs[0].key);
        let names: Vec<String> = inputs
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        std::fs::write(marker_path(&output), names.join("\n")).unwrap();
        assert_eq!(recover(dir.path()).unwrap(), 1);
        assert_eq!(list_rollup_files(dir.path()).unwrap(), inputs);
        assert_eq!(rollup_totals(dir.path()).await, before);
    }

    /// 200 bytes of a file's first page garbled, or the file cut in half.
    fn damage(path: &Path, truncate: bool) {
        let mut bytes = std::fs::read(path).unwrap();
        if truncate {
            bytes.truncate(bytes.len() / 2);
        } else {
            for b in &mut bytes[4..204] {
                *b ^= 0xa5;
            }
        }
        std::fs::write(path, &bytes).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_input_is_set_aside_and_the_others_are_merged() {
        for truncate in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::new(dir.path(), usize::MAX, 1024, 1));
            fill(&store, OLD, 5, 1000, 0).await;
            let inputs = list_span_files(dir.path()).unwrap();
            damage(&inputs[2].path, truncate);
            let done = store
                .compact(SystemTime::now() + QUIET, &policy())
                .await
                .unwrap();
            assert_eq!(
                done,
                Compacted {
                    partitions: 1,
                    files: 4,
                    rows: 4000
                },
                "truncated: {truncate}"
            );
            let after = list_span_files(dir.path()).unwrap();
            assert_eq!(after.len(), 1);
            assert!(crate::quarantine::destination(dir.path(), &inputs[2].path).is_file());
            assert_eq!(rows(&store), Some(4000));
            // The merged file names the log records of the rows it holds.
            let wal: Vec<u64> = wal_positions(&after[0].path)
                .unwrap()
                .iter()
                .map(|p| p.offset)
                .collect();
            assert_eq!(wal, vec![0, 1, 3, 4]);
        }
    }

    #[tokio::test]
    async fn a_damaged_rollup_input_is_set_aside_and_the_others_are_merged() {
        let dir = tempfile::tempdir().unwrap();
        let writer = RollupWriter::new(dir.path());
        write_rollups(&writer, OLD, 10);
        let inputs = list_rollup_files(dir.path()).unwrap();
        damage(&inputs[3].path, false);
        let done = compact_rollups(&writer, SystemTime::now(), &policy()).unwrap();
        assert_eq!((done.partitions, done.files, done.rows), (1, 9, 9));
        assert!(crate::quarantine::destination(dir.path(), &inputs[3].path).is_file());
        // Minute 3 (4 requests) is the one set aside.
        let totals = rollup_totals(dir.path()).await;
        assert!(totals.contains("| 9    | 51    |"), "{totals}");
    }

    #[test]
    fn rollup_files_are_merged_by_the_hour_they_were_written_and_then_by_day() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let key = RollupKey {
            tenant: Arc::from("t"),
            date: day,
        };
        let at = |d: u32, h: u32, m: u32| {
            let t = day
                .with_day(d)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap()
                .and_utc();
            UNIX_EPOCH + Duration::from_secs(t.timestamp() as u64)
        };
        let file = |name: String, written: SystemTime, size: u64| RollupFile {
            key: key.clone(),
            path: PathBuf::from(name),
            size,
            modified: written,
        };
        let mut files = Vec::new();
        for m in 0..60 {
            files.push(file(format!("rollup-9-{m}.parquet"), at(1, 9, m), 100));
        }
        for m in 0..3 {
            files.push(file(format!("rollup-10-{m}.parquet"), at(1, 10, m), 100));
        }
        files.push(file(
            "rollup-big.parquet".into(),
            at(1, 9, 0),
            LARGE_FILE_BYTES,
        ));
        files.push(file("compact-8.parquet".into(), at(1, 9, 10), 5000));
        let groups = |now: SystemTime| -> Vec<usize> {
            choose_rollups(files.clone(), now, &policy())
                .iter()
                .map(Vec::len)
                .collect()
        };
        // Hour 09 is over at 10:00 and waits 10 minutes; hour 10 is not over.
        assert_eq!(groups(at(1, 10, 9)), Vec::<usize>::new());
        assert_eq!(groups(at(1, 10, 10)), vec![60]);
        assert_eq!(groups(at(1, 12, 0)), vec![60]);
        // Hour 10 has 3 files only: fewer than min_files.
        assert_eq!(groups(at(1, 11, 10)), vec![60]);
        // Once the day is over (plus 10 minutes): every small file of it.
        assert_eq!(groups(at(2, 0, 9)), vec![60]);
        assert_eq!(groups(at(2, 0, 10)), vec![64]);
    }
}
