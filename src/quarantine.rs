//! Damaged files are set aside, not fatal: a Parquet file that cannot be
//! read, a write-ahead log segment whose header is not ours, and the bytes of
//! a segment that could not be replayed are moved (or copied) under
//! `<data dir>/quarantine/`, keeping their path relative to the data dir.
//! One unreadable file used to fail every query of its partition (or the
//! start, for a log segment) until someone removed it by hand; now the rest
//! is served and the damaged bytes are kept for an operator to inspect.
//!
//! Nothing under `quarantine/` is read, compacted or expired by llmtrace.
//! Each file set aside is logged at error level and counted for `/metrics`
//! (`llmtrace_quarantined_files_total{kind}` and `…_bytes_total{kind}`).
//!
//! A file is only set aside once it fails to read on its own, end to end
//! ([`check_parquet`]): an error that comes from the query (memory limit,
//! cancellation) or from the disk being away (file not found, permission)
//! must never move a good file.

use std::fmt::Display;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The quarantine directory's name inside the data dir.
pub const DIR_NAME: &str = "quarantine";

/// `<data dir>/quarantine`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR_NAME)
}

/// What was set aside, for the logs and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A span Parquet file.
    Spans,
    /// A rollup Parquet file.
    Rollups,
    /// A whole write-ahead log segment (its header is not ours).
    WalSegment,
    /// The bytes of a write-ahead log segment that could not be replayed.
    WalRecords,
}

const KINDS: [Kind; 4] = [
    Kind::Spans,
    Kind::Rollups,
    Kind::WalSegment,
    Kind::WalRecords,
];

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Spans => "spans",
            Kind::Rollups => "rollups",
            Kind::WalSegment => "wal_segment",
            Kind::WalRecords => "wal_records",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Process-wide, like the files they count: the query engine, compaction and
/// the log all set files aside, and none of them holds the server's metrics.
static FILES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static BYTES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Damaged files that could not be moved (read-only data dir, another
/// user's files): skipped by queries and compaction without reading them
/// again end to end each time.
static UNMOVABLE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Caps [`UNMOVABLE`]; past it, such files are checked again when hit.
const UNMOVABLE_MAX: usize = 4096;

fn count(kind: Kind, bytes: u64) {
    FILES[kind.index()].fetch_add(1, Ordering::Relaxed);
    BYTES[kind.index()].fetch_add(bytes, Ordering::Relaxed);
}

/// Files (or byte ranges) set aside since the process started, by kind.
pub fn files_total(kind: Kind) -> u64 {
    FILES[kind.index()].load(Ordering::Relaxed)
}

/// Appends the quarantine counters in the Prometheus text format.
pub fn render(out: &mut String) {
    use std::fmt::Write as _;
    for (name, help, values) in [
        (
            "llmtrace_quarantined_files_total",
            "Damaged files set aside under quarantine/ (spans, rollups: unreadable Parquet files; wal_segment: a log segment with a bad header; wal_records: a damaged byte range of a log segment, copied).",
            &FILES,
        ),
        (
            "llmtrace_quarantined_bytes_total",
            "Bytes of the files and ranges counted by llmtrace_quarantined_files_total.",
            &BYTES,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for kind in KINDS {
            let v = values[kind.index()].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{kind=\"{}\"}} {v}", kind.label());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("cannot create the quarantine directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot move {} to {}: {source}", from.display(), to.display())]
    Move {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot copy bytes {start}..{end} of {} to {}: {source}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        start: u64,
        end: u64,
        source: io::Error,
    },
}

/// Where a file under `data_dir` goes: the same relative path under
/// `quarantine/` (a file outside the data dir keeps only its name).
pub fn destination(data_dir: &Path, path: &Path) -> PathBuf {
    let relative = match path.strip_prefix(data_dir) {
        Ok(relative) => relative.to_owned(),
        Err(_) => PathBuf::from(path.file_name().unwrap_or_default()),
    };
    dir(data_dir).join(relative)
}

/// The first of `path`, `path.1`, `path.2`, … that does not exist: a file of
/// the same name set aside earlier is never overwritten.
fn unused(path: &Path) -> PathBuf {
    if !path.exists() {
        return path.to_owned();
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    (1u32..)
        .map(|n| path.with_file_name(format!("{name}.{n}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| path.to_owned())
}

fn create_parent(path: &Path) -> Result<(), QuarantineError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| QuarantineError::CreateDir {
        path: parent.to_owned(),
        source,
    })
}

/// fsyncs a directory so a rename in it survives a power loss; a failure
/// only weakens that, the files themselves are whole.
fn sync_dir(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(%error, dir = %dir.display(), "fsync of a directory failed");
    }
}

/// Moves `path` to `dest` (or `dest.N` when taken), logs it at error level
/// with `reason` and counts it. `Ok(None)` when `path` is already gone (set
/// aside by someone else, or removed by compaction or retention).
pub fn move_to(
    path: &Path,
    dest: &Path,
    kind: Kind,
    reason: &dyn Display,
) -> Result<Option<PathBuf>, QuarantineError> {
    let bytes = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) => 0,
    };
    create_parent(dest)?;
    let dest = unused(dest);
    let moved = std::fs::rename(path, &dest).or_else(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            return Err(e);
        }
        // Another filesystem (quarantine/ mounted elsewhere): copy, then
        // remove, so the bytes exist somewhere at every moment.
        std::fs::copy(path, &dest)
            .and_then(|_| File::open(&dest)?.sync_all())
            .and_then(|()| std::fs::remove_file(path))
            .map_err(|_| e)
    });
    match moved {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(QuarantineError::Move {
                from: path.to_owned(),
                to: dest,
                source,
            })
        }
    }
    for d in [dest.parent(), path.parent()].into_iter().flatten() {
        sync_dir(d);
    }
    count(kind, bytes);
    tracing::error!(
        file = %path.display(),
        moved_to = %dest.display(),
        bytes,
        kind = kind.label(),
        %reason,
        "damaged file set aside in quarantine"
    );
    Ok(Some(dest))
}

/// Copies bytes `start..end` of `path` to `dest`, through a temp name, unless
/// a file of that name and length is already there (the same damage found
/// again, e.g. at the next start). Returns whether it copied. Reads in
/// fixed-size chunks: the range may be a whole segment.
pub fn copy_range(
    path: &Path,
    start: u64,
    end: u64,
    dest: &Path,
    kind: Kind,
) -> Result<bool, QuarantineError> {
    let len = end.saturating_sub(start);
    if std::fs::metadata(dest).is_ok_and(|m| m.len() == len) {
        return Ok(false);
    }
    create_parent(dest)?;
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.tmp"));
    let copy = || -> io::Result<()> {
        let mut from = File::open(path)?;
        from.seek(SeekFrom::Start(start))?;
        let mut to = File::create(&tmp)?;
        let copied = io::copy(&mut from.take(len), &mut to)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ends {} bytes early", len - copied),
            ));
        }
        to.flush()?;
        to.sync_all()?;
        std::fs::rename(&tmp, dest)
    };
    if let Err(source) = copy() {
        let _ = std::fs::remove_file(&tmp);
        return Err(QuarantineError::Copy {
            from: path.to_owned(),
            to: dest.to_owned(),
            start,
            end,
            source,
        });
    }
    if let Some(parent) = dest.parent() {
        sync_dir(parent);
    }
    count(kind, len);
    Ok(true)
}

/// Whether a Parquet file reads end to end on its own.
#[derive(Debug)]
pub enum Check {
    Readable,
    /// The file is there but its bytes do not decode (truncated, garbled).
    Damaged(String),
    /// The file could not be opened: gone, no permission, no descriptors.
    /// Says nothing about its bytes.
    Unavailable(io::Error),
}

/// Reads all of a Parquet file as a query could: footer, page indexes,
/// bloom filters, every page of every column. Only called once something
/// failed to read it, so the cost of a full read is paid on the error path.
/// A reader panic on garbage counts as damage rather than taking the thread.
pub fn check_parquet(path: &Path) -> Check {
    let open = || File::open(path);
    let (first, second) = match (open(), open()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Check::Unavailable(e),
    };
    let read = std::panic::catch_unwind(move || read_everything(first, second));
    match read {
        Ok(Ok(())) => Check::Readable,
        Ok(Err(error)) => Check::Damaged(error.to_string()),
        Err(_) => Check::Damaged("the Parquet reader panicked on the file's bytes".into()),
    }
}

fn read_everything(file: File, again: File) -> Result<(), parquet::errors::ParquetError> {
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::file::metadata::PageIndexPolicy;
    use parquet::file::properties::ReaderProperties;
    use parquet::file::reader::FileReader;
    use parquet::file::serialized_reader::{ReadOptionsBuilder, SerializedFileReader};

    // Bloom filters are read when a row group reader is made; the Arrow
    // reader below does not look at them, a query's trace_id lookup does.
    let options = ReadOptionsBuilder::new()
        .with_page_index()
        .with_reader_properties(
            ReaderProperties::builder()
                .set_read_bloom_filter(true)
                .build(),
        )
        .build();
    let reader = SerializedFileReader::new_with_options(file, options)?;
    for i in 0..reader.num_row_groups() {
        reader.get_row_group(i)?;
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(
        again,
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
    )?;
    for batch in builder.build()? {
        batch?;
    }
    Ok(())
}

/// What [`set_aside_if_damaged`] found.
#[derive(Debug)]
pub enum Outcome {
    /// Damaged and moved here.
    Quarantined(PathBuf),
    /// Damaged, but could not be moved (logged), or moved meanwhile by
    /// another reader; skip it anyway.
    DamagedInPlace,
    /// The file is gone or cannot be opened: nothing known about its bytes.
    Unavailable(io::Error),
    /// It reads fine: whatever failed was not the file's bytes.
    Readable,
}

impl Outcome {
    /// Whether the file's rows are to be left out (it is damaged).
    pub fn damaged(&self) -> bool {
        matches!(self, Outcome::Quarantined(_) | Outcome::DamagedInPlace)
    }
}

/// Whether `path` was found damaged before and could not be moved.
pub fn known_damaged(path: &Path) -> bool {
    UNMOVABLE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|p| p == path)
}

/// Checks a Parquet file under `data_dir` that failed to read (`error`, for
/// the log) and, if its bytes are damaged, moves it to the same relative
/// path under `quarantine/`. Blocking: reads the whole file.
pub fn set_aside_if_damaged(
    data_dir: &Path,
    path: &Path,
    kind: Kind,
    error: &dyn Display,
) -> Outcome {
    if known_damaged(path) {
        return Outcome::DamagedInPlace;
    }
    let damage = match check_parquet(path) {
        Check::Readable => return Outcome::Readable,
        // Set aside a moment ago by another reader of the same file (a
        // query whose partitions each read a byte range of it).
        Check::Unavailable(e)
            if e.kind() == std::io::ErrorKind::NotFound && destination(data_dir, path).exists() =>
        {
            return Outcome::DamagedInPlace
        }
        Check::Unavailable(e) => return Outcome::Unavailable(e),
        Check::Damaged(damage) => damage,
    };
    let reason = format!("{error} (read on its own: {damage})");
    match move_to(path, &destination(data_dir, path), kind, &reason) {
        Ok(Some(dest)) => Outcome::Quarantined(dest),
        // Someone else set it aside meanwhile.
        Ok(None) => Outcome::DamagedInPlace,
        Err(move_error) => {
            tracing::error!(
                file = %path.display(),
                %reason,
                error = %move_error,
                "damaged file cannot be moved to quarantine; it is skipped where it is"
            );
            let mut unmovable = UNMOVABLE.lock().unwrap_or_else(|p| p.into_inner());
            if unmovable.len() < UNMOVABLE_MAX {
                unmovable.push(path.to_owned());
            }
            Outcome::DamagedInPlace
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parquet_file(path: &Path, rows: i64) {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        use arrow::record_batch::RecordBatch;
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Compressed, as the collector writes them.
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            File::create(path).unwrap(),
            schema,
            Some(properties),
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn a_truncated_file_is_moved_under_quarantine_with_its_relative_path() {
        let data = tempfile::tempdir().unwrap();
        let path = data
            .path()
            .join("spans/tenant=a/date=2024-03-05/hour=10/part-1.parquet");
        parquet_file(&path, 1000);
        let good = path.with_file_name("part-2.parquet");
        parquet_file(&good, 10);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

        let before = files_total(Kind::Spans);
        assert!(matches!(
            set_aside_if_damaged(data.path(), &good, Kind::Spans, &"some query error"),
            Outcome::Readable
        ));
        assert!(good.exists(), "a readable file stays");
        let outcome = set_aside_if_damaged(data.path(), &path, Kind::Spans, &"query error");
        let want = data
            .path()
            .join("quarantine/spans/tenant=a/date=2024-03-05/hour=10/part-1.parquet");
        match outcome {
            Outcome::Quarantined(dest) => assert_eq!(dest, want),
            other => panic!("{other:?}"),
        }
        assert!(!path.exists());
        assert_eq!(std::fs::read(&want).unwrap(), bytes[..bytes.len() / 2]);
        assert!(files_total(Kind::Spans) > before);
        let mut text = String::new();
        render(&mut text);
        assert!(text.contains("llmtrace_quarantined_files_total{kind=\"spans\"}"));

        // Found again by another reader after it was moved: skipped too.
        assert!(matches!(
            set_aside_if_damaged(data.path(), &path, Kind::Spans, &"x"),
            Outcome::DamagedInPlace
        ));
        // Gone, and never set aside, is not damage.
        std::fs::remove_file(&good).unwrap();
        assert!(matches!(
            set_aside_if_damaged(data.path(), &good, Kind::Spans, &"x"),
            Outcome::Unavailable(_)
        ));
    }

    #[test]
    fn garbled_pages_are_damage_and_a_name_set_aside_before_is_not_overwritten() {
        let data = tempfile::tempdir().unwrap();
        let path = data
            .path()
            .join("rollups/tenant=a/date=2024-03-05/r.parquet");
        for round in 0..2 {
            parquet_file(&path, 100_000);
            let mut bytes = std::fs::read(&path).unwrap();
            // The first page header and data, well before the footer.
            for b in &mut bytes[4..204] {
                *b ^= 0xa5;
            }
            std::fs::write(&path, &bytes).unwrap();
            assert!(matches!(check_parquet(&path), Check::Damaged(_)));
            let outcome = set_aside_if_damaged(data.path(), &path, Kind::Rollups, &"x");
            let dest = match outcome {
                Outcome::Quarantined(dest) => dest,
                other => panic!("{other:?}"),
            };
            let name = dest.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(name, ["r.parquet", "r.parquet.1"][round]);
        }
    }

    #[test]
    fn a_range_is_copied_once() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("seg");
        std::fs::write(&src, (0..=255u8).collect::<Vec<_>>()).unwrap();
        let dest = dir.path().join("q/seg.10-20.damaged");
        assert!(copy_range(&src, 10, 20, &dest, Kind::WalRecords).unwrap());
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            (10..20u8).collect::<Vec<_>>()
        );
        assert!(!copy_range(&src, 10, 20, &dest, Kind::WalRecords).unwrap());
        // A range past the end is an error, and leaves nothing behind.
        let past = dir.path().join("q/past");
        assert!(copy_range(&src, 250, 300, &past, Kind::WalRecords).is_err());
        assert!(!past.exists());
        assert_eq!(std::fs::read_dir(dir.path().join("q")).unwrap().count(), 1);
    }
}
