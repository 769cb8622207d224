//! The segment-file write-ahead log: what makes an acknowledged request
//! survive a crash until its spans are in Parquet.
//!
//! # On disk
//!
//! A directory of segment files `wal-<20-digit seq>.log`, written in sequence
//! order, plus a small `checkpoint` file. A segment starts with a 24-byte
//! header (magic `LTWALSEG`, format version u32 LE, the segment's sequence
//! u64 LE, CRC32 of those 20 bytes) and then holds records, each
//! `len: u32 LE | crc32(payload): u32 LE | payload`. Payloads are never
//! empty, so a zero-filled tail reads as corruption rather than as records.
//! The active segment is rotated once it holds records and the next batch
//! would take it past [`WalOptions::segment_size`]; a batch is never split, so
//! a segment may exceed the target by one batch.
//!
//! The checkpoint file records the last position passed to
//! [`Wal::remove_through`]; replay skips records at or before it, so records
//! already in Parquet are not replayed even when they share a segment with
//! records that are not.
//!
//! # Recovery
//!
//! A segment with a foreign, damaged or unsupported header is set aside, not
//! refused: [`Wal::open`] logs an error and moves it to the quarantine
//! directory ([`WalOptions::quarantine_dir`]), and the log goes on without
//! it (new segments are numbered after it). Refusing to start would stop
//! ingest for every tenant until someone removed the file by hand.
//!
//! A record that does not validate (short header, short payload, zero or
//! oversized length, CRC mismatch) is one of two things:
//! - a torn tail, when no valid record follows it: normal after a crash. In
//!   the last segment it is logged and the file truncated there, and appends
//!   continue after it; under [`FsyncPolicy::Always`] only records that were
//!   never acknowledged can be in a torn tail. In an older segment the rest of
//!   it is skipped and the file left as it is.
//! - damage in the middle (a bad sector, a stray write), when valid records
//!   follow: the reader scans forward for the next record that validates and
//!   whose successor validates too (records are framed by length and CRC
//!   only, so one matching CRC could be chance), replays from there, and
//!   copies the bytes it could not read to the quarantine directory as
//!   `wal-<seq>.log.<start>-<end>.damaged`. The scan never sizes a buffer by
//!   a length it reads, and the checksums it computes are bounded per segment
//!   (`format::RESYNC_CHECKSUM_BUDGET`); past the bound the rest of the
//!   segment is copied aside too, and treated as a tail.
//!
//! # Group commit
//!
//! [`Wal::append`] blocks until its record is written (and, under `Always`,
//! fsynced). Appenders that arrive while a write is in flight queue their
//! record in a shared buffer; when the write finishes one of them becomes the
//! leader and writes the whole queue with one `write` and one `fdatasync`.
//! Uncontended, an append costs a few uncontended mutex acquisitions plus the
//! I/O, with no hand-off to another thread.
//!
//! Async code calls [`Wal::submit`] instead and awaits [`Submitted::written`]:
//! the record joins the queue without blocking, and under `Always` a log
//! writer thread leads the writes, so no tokio worker waits in an fsync and
//! a batch holds every record submitted meanwhile, however few threads the
//! runtime has. Under `Interval` and `Never` a write is a `write(2)` only,
//! and `submit` does it at once, as `append` would.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

mod format;
#[cfg(test)]
mod tests;

use format::{
    check_header, encode_checkpoint, encode_header, encode_record_header, parse_segment_name,
    segment_path, Damage, HeaderState, ReadError, RecordReader, CHECKPOINT_FILE, CHECKPOINT_TMP,
    HEADER_LEN, RECORD_HEADER_LEN,
};

/// The quarantine directory inside the log's directory when
/// [`WalOptions::quarantine_dir`] is unset; not a segment name, so never
/// listed as one.
const DEFAULT_QUARANTINE: &str = "quarantine";

/// Where a record lives: ordered by segment, then by offset in it, which is
/// the order in which records were appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalPosition {
    pub segment: u64,
    /// Byte offset of the record's length field in the segment file.
    pub offset: u64,
}

impl std::fmt::Display for WalPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// When appended records reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `append` returns after the record is fsynced; concurrent appends share
    /// one fsync. Survives power loss.
    Always,
    /// `append` returns after `write(2)`; a background thread fsyncs at most
    /// once per interval. Survives a process crash (the page cache keeps the
    /// data); a power loss can take the last interval.
    Interval(Duration),
    /// No fsync at all; survives a process crash only.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// Target size of a segment file, header included.
    pub segment_size: u64,
    /// Largest payload `append` accepts, and the largest declared length
    /// recovery believes.
    pub max_record_size: u32,
    pub fsync: FsyncPolicy,
    /// Where segments with a bad header are moved, and copies of damaged
    /// bytes kept (see the module docs); `quarantine/` inside the log's own
    /// directory when unset. The server sets `<data dir>/quarantine/wal`.
    pub quarantine_dir: Option<PathBuf>,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size: 64 << 20,
            max_record_size: 64 << 20,
            fsync: FsyncPolicy::Always,
            quarantine_dir: None,
        }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<(), WalError> {
        let bad = |why: &str| Err(WalError::InvalidOptions(why.to_owned()));
        if self.segment_size <= HEADER_LEN + RECORD_HEADER_LEN {
            return bad("segment_size must leave room for a record after the segment header");
        }
        if self.max_record_size == 0 {
            return bad("max_record_size must be at least 1");
        }
        if self.fsync == FsyncPolicy::Interval(Duration::ZERO) {
            return bad("an fsync interval must be longer than zero (use Always)");
        }
        Ok(())
    }
}

/// One record read back by [`Replay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub position: WalPosition,
    pub payload: Vec<u8>,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records appended successfully.
    pub records: u64,
    /// Successful group writes (one `write` each).
    pub batches: u64,
    /// fdatasync calls on segment files (directory syncs not counted).
    pub syncs: u64,
    /// Bytes written, record headers included.
    pub bytes: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// `Arc` so one failed group write can be handed to each of its appenders.
    #[error("write-ahead log: cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("write-ahead log: {} is not a segment of this log: {reason}", path.display())]
    BadSegment { path: PathBuf, reason: String },
    #[error("write-ahead log: {} has format version {found}; this build reads version {supported}", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("write-ahead log: a record of {len} bytes exceeds the maximum record size of {max}")]
    RecordTooLarge { len: usize, max: u32 },
    #[error("write-ahead log: empty records are not allowed")]
    EmptyRecord,
    #[error("write-ahead log: position {pos} is beyond the end of the log ({end})")]
    PositionAhead { pos: WalPosition, end: WalPosition },
    #[error("write-ahead log: invalid options: {0}")]
    InvalidOptions(String),
    #[error("write-ahead log: the writing thread panicked; the record may not be durable")]
    WriterPanicked,
}

impl WalError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }
}

/// The segment-file write-ahead log. Share it with `Arc`; every method takes
/// `&self`.
pub struct Wal {
    inner: Arc<Inner>,
    syncer: Option<Syncer>,
    /// Leads the writes of submitted records under `Always`.
    writer: Option<JoinHandle<()>>,
}

struct Syncer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// A record queued by [`Wal::submit`].
pub struct Submitted {
    slot: Arc<BatchSlot>,
    /// Offset of the record in its batch.
    rel: u64,
}

impl Submitted {
    /// The record's position once it is durable per the fsync policy; an
    /// error as for [`Wal::append`].
    pub async fn written(self) -> Result<WalPosition, WalError> {
        let written = self.slot.written.notified();
        tokio::pin!(written);
        loop {
            // Registered before the check: a result published in between
            // still wakes this task.
            written.as_mut().enable();
            if let Some(result) = self.slot.result.get() {
                return result.clone().map(|(segment, base)| WalPosition {
                    segment,
                    offset: base + self.rel,
                });
            }
            written.as_mut().await;
            written.set(self.slot.written.notified());
        }
    }
}

struct Inner {
    dir: PathBuf,
    options: WalOptions,
    /// The group-commit queue; never held across I/O.
    queue: Mutex<Queue>,
    queue_changed: Condvar,
    /// The active segment; held by the leader for the whole write + fsync.
    writer: Mutex<Writer>,
    /// Which segments exist and how far the log goes; held briefly.
    catalog: Mutex<Catalog>,
    /// Serialises `remove_through` so checkpoints only move forward.
    removing: Mutex<()>,
    /// A second descriptor of the active segment, so the interval syncer can
    /// fsync without holding `writer` and stalling appends.
    sync_file: Mutex<File>,
    /// Written since the last interval fsync.
    dirty: AtomicBool,
    /// An interval fsync failed: what was written before it may be gone from
    /// the page cache, so later records must not go to the same file.
    sync_failed: AtomicBool,
    records: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    bytes: AtomicU64,
    #[cfg(test)]
    faults: tests::Faults,
}

/// Records waiting for the next group write.
struct Queue {
    pending: Vec<u8>,
    /// Offset in `pending` of its last record.
    pending_last: u64,
    pending_records: u64,
    /// Shared by the appenders whose records are in `pending`.
    slot: Arc<BatchSlot>,
    /// The previous batch's buffer, kept to avoid reallocating each batch.
    spare: Vec<u8>,
    /// A leader is writing; new records wait for the next batch.
    writing: bool,
    /// The log is being dropped: the writer thread writes what is queued
    /// and exits.
    closing: bool,
}

#[derive(Default)]
struct BatchSlot {
    /// `(segment, offset of the batch's first byte)` once written.
    result: OnceLock<Result<(u64, u64), WalError>>,
    /// Wakes the async appenders of the batch once `result` is set.
    written: tokio::sync::Notify,
}

impl BatchSlot {
    fn publish(&self, result: Result<(u64, u64), WalError>) {
        let _ = self.result.set(result);
        self.written.notify_waiters();
    }
}

/// Batches above this size do not keep their buffer as the spare.
const SPARE_KEEP: usize = 4 << 20;

struct Writer {
    file: File,
    path: PathBuf,
    seq: u64,
    /// End of the last complete record; where the next batch goes.
    len: u64,
    last_record: Option<u64>,
    /// The file's tail cannot be trusted (a failed write could not be cut
    /// back, or an fsync failed): the next batch goes to a new segment.
    broken: bool,
}

struct Catalog {
    /// Segments before the active one, ascending.
    sealed: Vec<Sealed>,
    /// Just past the last record written: every position handed out is below.
    end: WalPosition,
    checkpoint: Option<WalPosition>,
}

struct Sealed {
    seq: u64,
    last: LastRecord,
}

#[derive(Clone, Copy)]
enum LastRecord {
    Empty,
    At(u64),
    /// A segment found at open that was not scanned; it can only be removed
    /// once a position in a later segment is passed.
    Unknown,
}

impl Sealed {
    fn covered_by(&self, pos: WalPosition) -> bool {
        match self.last {
            LastRecord::Empty => true,
            LastRecord::At(offset) => {
                WalPosition {
                    segment: self.seq,
                    offset,
                } <= pos
            }
            LastRecord::Unknown => self.seq < pos.segment,
        }
    }
}

/// A segment that replay still has to read, up to `end`.
struct ReplaySegment {
    seq: u64,
    path: PathBuf,
    end: u64,
}

/// The records that were in the log at open, oldest first, read lazily one
/// segment at a time. Records at or before the checkpoint are skipped.
///
/// Damage followed by valid records is copied aside and skipped; a torn or
/// damaged tail of an older segment is logged and the rest of that segment
/// skipped. An I/O error is yielded as `Err`, and the iterator then moves on
/// to the next segment; the caller decides whether to carry on.
pub struct Replay {
    segments: std::collections::VecDeque<ReplaySegment>,
    current: Option<(u64, RecordReader)>,
    skip_through: Option<WalPosition>,
    max_record: u32,
    quarantine: PathBuf,
}

impl Iterator for Replay {
    type Item = Result<WalRecord, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (seq, reader) = match &mut self.current {
                Some(current) => current,
                None => {
                    let seg = self.segments.pop_front()?;
                    match RecordReader::open(&seg.path, seg.end, self.max_record) {
                        Ok(reader) => self.current.insert((seg.seq, reader)),
                        Err(e) => return Some(Err(e)),
                    }
                }
            };
            let mut payload = Vec::new();
            let read = reader.next_into(&mut payload);
            for damage in reader.take_damage() {
                keep_damage(
                    reader.path(),
                    *seq,
                    &damage,
                    &self.quarantine,
                    self.skip_through,
                );
            }
            match read {
                Ok(Some(offset)) => {
                    let position = WalPosition {
                        segment: *seq,
                        offset,
                    };
                    if self.skip_through.is_some_and(|cp| position <= cp) {
                        continue;
                    }
                    return Some(Ok(WalRecord { position, payload }));
                }
                Ok(None) => self.current = None,
                Err(ReadError::Corrupt { offset, reason }) => {
                    tracing::warn!(
                        file = %segment_path_of(reader),
                        offset,
                        reason = %reason,
                        "corrupt record in an older write-ahead log segment and no valid record after it; skipping the rest of that segment"
                    );
                    self.current = None;
                }
                Err(ReadError::Io(e)) => {
                    self.current = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

fn segment_path_of(reader: &RecordReader) -> String {
    reader.path().display().to_string()
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovers the last segment, and
    /// returns the records to replay. New appends go after the recovered
    /// end, so replay may run while the log is already in use.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, Replay), WalError> {
        options.validate()?;
        let dir = dir.as_ref().to_owned();
        let never = options.fsync == FsyncPolicy::Never;
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| WalError::io("create directory", &dir, e))?;
            // Otherwise a power loss can take the new directory with it.
            if !never {
                let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
                sync_dir(parent.unwrap_or(Path::new(".")))?;
            }
        }
        let checkpoint = read_checkpoint(&dir)?;
        let quarantine = options
            .quarantine_dir
            .clone()
            .unwrap_or_else(|| dir.join(DEFAULT_QUARANTINE));

        // Every header is checked before anything is truncated. A header
        // that is not ours is set aside: its file may hold records, but
        // nothing says whose or of which segment.
        let mut found = Vec::new();
        let mut dir_changed = false;
        // The highest sequence seen, bad headers included: new segments
        // are numbered past it, so none takes the name of a file that
        // could not be moved away.
        let mut highest = None;
        for seq in list_segments(&dir)? {
            highest = Some(seq);
            let path = segment_path(&dir, seq);
            let mut file = File::open(&path).map_err(|e| WalError::io("open", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| WalError::io("stat", &path, e))?
                .len();
            match check_header(&mut file, &path, seq, len) {
                Ok(state) => found.push((seq, path, len, state)),
                Err(
                    error @ (WalError::BadSegment { .. } | WalError::UnsupportedVersion { .. }),
                ) => {
                    drop(file);
                    set_aside(&path, &quarantine, &error);
                    dir_changed = true;
                }
                Err(error) => return Err(error),
            }
        }

        // Removed by `remove_through` (the checkpoint was written first) but
        // the process died before unlinking them.
        if let Some(cp) = checkpoint {
            while found.len() > 1 && found[0].0 < cp.segment {
                let (_, path, _, _) = found.remove(0);
                fs::remove_file(&path).map_err(|e| WalError::io("remove", &path, e))?;
                dir_changed = true;
            }
        }

        // A segment set aside after the last good one: that one was sealed
        // (a later one existed), so it is replayed as sealed and appends go
        // to a new segment.
        let last = match (found.last(), highest) {
            (Some(last), Some(highest)) if last.0 == highest => found.pop(),
            _ => None,
        };
        let mut sealed = Vec::new();
        let mut replay = std::collections::VecDeque::new();
        for (seq, path, len, state) in found {
            if state == HeaderState::Torn {
                tracing::warn!(file = %path.display(), "write-ahead log segment has no complete header; it holds no records");
                sealed.push(Sealed {
                    seq,
                    last: LastRecord::Empty,
                });
            } else {
                sealed.push(Sealed {
                    seq,
                    last: LastRecord::Unknown,
                });
                replay.push_back(ReplaySegment {
                    seq,
                    path,
                    end: len,
                });
            }
        }

        let mut writer = match last {
            Some((seq, path, len, state)) => {
                let recovery = Recovery {
                    quarantine: &quarantine,
                    checkpoint,
                };
                recover_last(&dir, path, seq, len, state, &options, recovery)?
            }
            None => {
                dir_changed = true;
                let after = checkpoint.map(|cp| cp.segment).max(highest);
                create_segment(&dir, after.map_or(1, |seq| seq + 1), never)?
            }
        };
        if writer.last_record.is_some() {
            replay.push_back(ReplaySegment {
                seq: writer.seq,
                path: writer.path.clone(),
                end: writer.len,
            });
        }
        // The checkpoint can be ahead of what survived (with fsync off, the
        // checkpoint may outlive segment data): appends there would be
        // skipped by the next replay, so they go to a fresh segment.
        if let Some(cp) = checkpoint {
            if cp
                >= (WalPosition {
                    segment: writer.seq,
                    offset: writer.len,
                })
            {
                let fresh = create_segment(&dir, writer.seq.max(cp.segment) + 1, never)?;
                sealed.push(Sealed {
                    seq: writer.seq,
                    last: writer.last_record.map_or(LastRecord::Empty, LastRecord::At),
                });
                writer = fresh;
                dir_changed = true;
            }
        }
        if dir_changed {
            sync_dir(&dir)?;
        }

        let sync_file = writer
            .file
            .try_clone()
            .map_err(|e| WalError::io("duplicate descriptor of", &writer.path, e))?;
        let end = WalPosition {
            segment: writer.seq,
            offset: writer.len,
        };
        let inner = Arc::new(Inner {
            dir,
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                pending_last: 0,
                pending_records: 0,
                slot: Arc::default(),
                spare: Vec::new(),
                writing: false,
                closing: false,
            }),
            queue_changed: Condvar::new(),
            writer: Mutex::new(writer),
            catalog: Mutex::new(Catalog {
                sealed,
                end,
                checkpoint,
            }),
            removing: Mutex::new(()),
            sync_file: Mutex::new(sync_file),
            dirty: AtomicBool::new(false),
            sync_failed: AtomicBool::new(false),
            records: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            #[cfg(test)]
            faults: tests::Faults::default(),
            options,
        });
        let syncer = match inner.options.fsync {
            FsyncPolicy::Interval(every) => Some(spawn_syncer(Arc::clone(&inner), every)?),
            _ => None,
        };
        let writer = match inner.options.fsync {
            FsyncPolicy::Always => Some(spawn_writer(Arc::clone(&inner))?),
            _ => None,
        };
        let max_record = inner.options.max_record_size;
        Ok((
            Wal {
                inner,
                syncer,
                writer,
            },
            Replay {
                segments: replay,
                current: None,
                skip_through: checkpoint,
                max_record,
                quarantine,
            },
        ))
    }

    /// Appends one record and returns its position once it is durable per
    /// the fsync policy. Blocks; see the module docs for async callers.
    ///
    /// On `Err` the record must be treated as not logged (answer the client
    /// with a retryable error). It will normally not be replayed, but if the
    /// failure was an fsync whose data did reach the disk it may be:
    /// replay is at-least-once for failed appends.
    pub fn append(&self, payload: &[u8]) -> Result<WalPosition, WalError> {
        let (mut queue, slot, rel) = self.enqueue(payload)?;
        loop {
            if let Some(result) = slot.result.get() {
                return result.clone().map(|(segment, base)| WalPosition {
                    segment,
                    offset: base + rel,
                });
            }
            // Our slot is still the queued one (the batch in flight has a
            // different slot), so whoever leads next writes our record.
            queue = if queue.writing {
                self.inner
                    .queue_changed
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner)
            } else {
                self.inner.lead(queue)
            };
        }
    }

    /// Queues one record without waiting for it to be written; await
    /// [`Submitted::written`] for its position. Under `Interval` and `Never`
    /// the record is written before this returns (a `write(2)`, no fsync).
    pub fn submit(&self, payload: &[u8]) -> Result<Submitted, WalError> {
        if self.writer.is_none() {
            let position = self.append(payload)?;
            let slot = BatchSlot::default();
            slot.publish(Ok((position.segment, position.offset)));
            return Ok(Submitted {
                slot: Arc::new(slot),
                rel: 0,
            });
        }
        let (queue, slot, rel) = self.enqueue(payload)?;
        drop(queue);
        self.inner.queue_changed.notify_all();
        Ok(Submitted { slot, rel })
    }

    /// Adds a record to the queued batch; returns the queue (still locked),
    /// the batch's slot and the record's offset in the batch.
    fn enqueue(
        &self,
        payload: &[u8],
    ) -> Result<(MutexGuard<'_, Queue>, Arc<BatchSlot>, u64), WalError> {
        if payload.is_empty() {
            return Err(WalError::EmptyRecord);
        }
        let max = self.inner.options.max_record_size;
        if payload.len() > max as usize {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max,
            });
        }
        // Checksum outside the lock: it is the only per-byte work besides the copy.
        let header = encode_record_header(payload);
        let mut queue = self.inner.lock_queue();
        let rel = queue.pending.len() as u64;
        queue.pending.extend_from_slice(&header);
        queue.pending.extend_from_slice(payload);
        queue.pending_last = rel;
        queue.pending_records += 1;
        let slot = Arc::clone(&queue.slot);
        Ok((queue, slot, rel))
    }

    /// Seals the active segment and starts a new one, so that
    /// `remove_through` can delete everything appended so far. Does nothing
    /// when the active segment holds no records.
    pub fn rotate(&self) -> Result<(), WalError> {
        let mut writer = self.inner.lock_writer();
        if writer.last_record.is_none() && !writer.broken {
            return Ok(());
        }
        self.inner.rotate_locked(&mut writer)
    }

    /// Declares every record at or before `pos` durable elsewhere: records
    /// the checkpoint so replay skips them, then deletes the sealed segments
    /// whose every record is at or before `pos` (never the active one; call
    /// [`Wal::rotate`] first to include it), and fsyncs the directory.
    /// Returns how many segments were deleted.
    ///
    /// `pos` must be a low watermark: appenders return in position order
    /// but hand their records on in any order, so the caller must pass the
    /// position below which every record is in Parquet, not merely the
    /// highest position it has flushed.
    pub fn remove_through(&self, pos: WalPosition) -> Result<usize, WalError> {
        let inner = &*self.inner;
        let _one_at_a_time = inner
            .removing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let advance = {
            let catalog = inner.lock_catalog();
            if pos >= catalog.end {
                return Err(WalError::PositionAhead {
                    pos,
                    end: catalog.end,
                });
            }
            catalog.checkpoint.is_none_or(|cp| pos > cp)
        };
        if advance {
            inner.write_checkpoint(pos)?;
            inner.lock_catalog().checkpoint = Some(pos);
        }
        let doomed: Vec<u64> = {
            let mut catalog = inner.lock_catalog();
            let n = catalog
                .sealed
                .iter()
                .take_while(|s| s.covered_by(pos))
                .count();
            catalog.sealed.drain(..n).map(|s| s.seq).collect()
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        for (i, &seq) in doomed.iter().enumerate() {
            let path = segment_path(&inner.dir, seq);
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    // Keep the rest listed so a later call retries them.
                    let mut catalog = inner.lock_catalog();
                    let back = doomed[i..].iter().map(|&seq| Sealed {
                        seq,
                        last: LastRecord::Empty,
                    });
                    catalog.sealed.splice(0..0, back);
                    drop(catalog);
                    sync_dir(&inner.dir)?;
                    return Err(WalError::io("remove", &path, e));
                }
            }
        }
        sync_dir(&inner.dir)?;
        tracing::debug!(segments = doomed.len(), through = %pos, "removed write-ahead log segments");
        Ok(doomed.len())
    }

    /// Fsyncs the active segment now, whatever the policy (for a clean
    /// shutdown under `Interval` or `Never`).
    pub fn sync(&self) -> Result<(), WalError> {
        self.inner.dirty.store(false, Ordering::SeqCst);
        self.inner.sync_active()
    }

    /// Just past the last record written: every record appended from now on
    /// gets a position at or after this one.
    pub fn end(&self) -> WalPosition {
        self.inner.lock_catalog().end
    }

    pub fn stats(&self) -> WalStats {
        let i = &self.inner;
        WalStats {
            records: i.records.load(Ordering::Relaxed),
            batches: i.batches.load(Ordering::Relaxed),
            syncs: i.syncs.load(Ordering::Relaxed),
            bytes: i.bytes.load(Ordering::Relaxed),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    #[cfg(test)]
    fn faults(&self) -> &tests::Faults {
        &self.inner.faults
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            self.inner.lock_queue().closing = true;
            self.inner.queue_changed.notify_all();
            if writer.join().is_err() {
                tracing::error!("write-ahead log writer thread panicked");
            }
        }
        if let Some(syncer) = self.syncer.take() {
            drop(syncer.stop);
            if syncer.thread.join().is_err() {
                tracing::error!("write-ahead log sync thread panicked");
            }
            if self.inner.dirty.swap(false, Ordering::SeqCst) {
                if let Err(error) = self.inner.sync_active() {
                    tracing::error!(%error, "final write-ahead log fsync failed");
                }
            }
        }
    }
}

/// Publishes an error to the batch if the leader unwinds, so its followers
/// do not wait forever and the next appender can lead.
struct LeaderGuard<'a> {
    inner: &'a Inner,
    slot: Option<Arc<BatchSlot>>,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut queue = self.inner.lock_queue();
            slot.publish(Err(WalError::WriterPanicked));
            queue.writing = false;
            self.inner.queue_changed.notify_all();
        }
    }
}

impl Inner {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        match self.writer.lock() {
            Ok(writer) => writer,
            Err(poisoned) => {
                // A panic mid-write leaves the tail unknown.
                let mut writer = poisoned.into_inner();
                writer.broken = true;
                self.writer.clear_poison();
                writer
            }
        }
    }

    /// Takes the queued batch, writes it with the queue unlocked, and
    /// publishes the outcome to everyone in it.
    fn lead<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        queue.writing = true;
        let spare = mem::take(&mut queue.spare);
        let mut batch = mem::replace(&mut queue.pending, spare);
        let last = queue.pending_last;
        let records = mem::take(&mut queue.pending_records);
        let slot = mem::take(&mut queue.slot);
        drop(queue);

        let mut guard = LeaderGuard {
            inner: self,
            slot: Some(slot),
        };
        let result = self.write_batch(&batch, last, records);

        let mut queue = self.lock_queue();
        if let Some(slot) = guard.slot.take() {
            slot.publish(result);
        }
        queue.writing = false;
        if batch.capacity() <= SPARE_KEEP && queue.spare.capacity() < batch.capacity() {
            batch.clear();
            queue.spare = batch;
        }
        self.queue_changed.notify_all();
        queue
    }

    fn write_batch(&self, batch: &[u8], last: u64, records: u64) -> Result<(u64, u64), WalError> {
        let mut w = self.lock_writer();
        if self.sync_failed.swap(false, Ordering::SeqCst) {
            w.broken = true;
        }
        let size = batch.len() as u64;
        if w.broken || (w.last_record.is_some() && w.len + size > self.options.segment_size) {
            self.rotate_locked(&mut w)?;
        }
        let base = w.len;
        if let Err(e) = self.write_file(&mut w.file, batch) {
            self.discard_from(&mut w, base);
            return Err(WalError::io("write", &w.path, e));
        }
        match self.options.fsync {
            FsyncPolicy::Always => {
                if let Err(e) = self.sync_data(&w.file) {
                    // Linux may drop the dirty pages of a failed fsync and not
                    // report it again, so this file's unsynced bytes cannot be
                    // trusted: fail the batch and continue in a new segment.
                    self.discard_from(&mut w, base);
                    w.broken = true;
                    return Err(WalError::io("fsync", &w.path, e));
                }
            }
            FsyncPolicy::Interval(_) => self.dirty.store(true, Ordering::SeqCst),
            FsyncPolicy::Never => {}
        }
        w.len = base + size;
        w.last_record = Some(base + last);
        self.lock_catalog().end = WalPosition {
            segment: w.seq,
            offset: w.len,
        };
        self.records.fetch_add(records, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
        Ok((w.seq, base))
    }

    /// Cuts a failed batch (possibly written in part: ENOSPC mid-write) back
    /// off the file, so the next batch does not land after garbage; if that
    /// fails too, the file is abandoned at the next write, and replay stops
    /// reading it at the garbage.
    fn discard_from(&self, w: &mut Writer, base: u64) {
        let mut cut = || -> io::Result<()> {
            #[cfg(test)]
            if self.faults.take_cut_failure() {
                return Err(io::Error::other("injected truncate failure"));
            }
            w.file.set_len(base)?;
            w.file.seek(SeekFrom::Start(base)).map(drop)
        };
        if let Err(error) = cut() {
            tracing::error!(%error, file = %w.path.display(), "cannot cut a failed write-ahead log write back; moving to a new segment");
            w.broken = true;
        }
    }

    fn write_file(&self, file: &mut File, batch: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.faults.take_write_failure() {
            file.write_all(&batch[..n.min(batch.len())])?;
            return Err(io::Error::other("injected write failure"));
        }
        file.write_all(batch)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.take_sync_failure() {
            return Err(io::Error::other("injected fsync failure"));
        }
        file.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn rotate_locked(&self, w: &mut Writer) -> Result<(), WalError> {
        let never = self.options.fsync == FsyncPolicy::Never;
        let fresh = create_segment(&self.dir, w.seq + 1, never)?;
        let sync_file = fresh
            .file
            .try_clone()
            .map_err(|e| WalError::io("duplicate descriptor of", &fresh.path, e))?;
        if matches!(self.options.fsync, FsyncPolicy::Interval(_)) && !w.broken {
            // The syncer only ever sees the active segment, so the old one is
            // made durable here, once.
            if let Err(error) = self.sync_data(&w.file) {
                tracing::error!(%error, file = %w.path.display(), "fsync of a sealed write-ahead log segment failed");
            }
        }
        if !never {
            // The new file's name must be durable before a record in it is acknowledged.
            sync_dir(&self.dir)?;
        }
        {
            let mut catalog = self.lock_catalog();
            catalog.sealed.push(Sealed {
                seq: w.seq,
                last: w.last_record.map_or(LastRecord::Empty, LastRecord::At),
            });
            catalog.end = WalPosition {
                segment: fresh.seq,
                offset: fresh.len,
            };
        }
        *self
            .sync_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = sync_file;
        tracing::debug!(segment = fresh.seq, "rotated write-ahead log segment");
        *w = fresh;
        Ok(())
    }

    fn sync_active(&self) -> Result<(), WalError> {
        let file = self
            .sync_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.sync_data(&file).map_err(|e| {
            self.sync_failed.store(true, Ordering::SeqCst);
            WalError::io("fsync", &self.dir, e)
        })
    }

    fn write_checkpoint(&self, pos: WalPosition) -> Result<(), WalError> {
        let tmp = self.dir.join(CHECKPOINT_TMP);
        let dest = self.dir.join(CHECKPOINT_FILE);
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&encode_checkpoint(pos.segment, pos.offset))?;
            f.sync_all()
        };
        write().map_err(|e| {
            // Not left behind on a full disk; the old checkpoint still holds.
            let _ = fs::remove_file(&tmp);
            WalError::io("write", &tmp, e)
        })?;
        fs::rename(&tmp, &dest).map_err(|e| WalError::io("rename to", &dest, e))?;
        sync_dir(&self.dir)
    }
}

fn spawn_syncer(inner: Arc<Inner>, every: Duration) -> Result<Syncer, WalError> {
    let (stop, stopped) = mpsc::channel::<()>();
    let dir = inner.dir.clone();
    let thread = std::thread::Builder::new()
        .name("wal-sync".into())
        .spawn(move || {
            // Exits when the `Wal` drops the sender.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                if inner.dirty.swap(false, Ordering::SeqCst) {
                    if let Err(error) = inner.sync_active() {
                        tracing::error!(%error, "interval fsync of the write-ahead log failed; moving to a new segment");
                    }
                }
            }
        })
        .map_err(|e| WalError::io("start the sync thread for", &dir, e))?;
    Ok(Syncer { stop, thread })
}

/// The thread that leads the writes of submitted records: it sleeps until
/// records are queued and no write is in flight, then writes them all.
fn spawn_writer(inner: Arc<Inner>) -> Result<JoinHandle<()>, WalError> {
    let dir = inner.dir.clone();
    std::thread::Builder::new()
        .name("wal-writer".into())
        .spawn(move || {
            let mut queue = inner.lock_queue();
            loop {
                if queue.pending_records > 0 && !queue.writing {
                    queue = inner.lead(queue);
                } else if queue.closing && !queue.writing {
                    return;
                } else {
                    queue = inner
                        .queue_changed
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        })
        .map_err(|e| WalError::io("start the writer thread for", &dir, e))
}

/// Segment sequence numbers in `dir`, ascending; other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| WalError::io("list", dir, e))? {
        let entry = entry.map_err(|e| WalError::io("list", dir, e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// A damaged checkpoint only means replaying more than needed.
fn read_checkpoint(dir: &Path) -> Result<Option<WalPosition>, WalError> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io("read", &path, e)),
    };
    match format::decode_checkpoint(&bytes) {
        Ok((segment, offset)) => Ok(Some(WalPosition { segment, offset })),
        Err(reason) => {
            tracing::warn!(file = %path.display(), reason = %reason, "ignoring unreadable write-ahead log checkpoint; replaying every segment");
            Ok(None)
        }
    }
}

fn create_segment(dir: &Path, seq: u64, never: bool) -> Result<Writer, WalError> {
    let path = segment_path(dir, seq);
    let create = || -> io::Result<File> {
        // Truncate: a leftover of an earlier failed rotation holds no records.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(&encode_header(seq))?;
        if !never {
            file.sync_data()?;
        }
        Ok(file)
    };
    let file = create().map_err(|e| {
        // A segment without its whole header holds nothing; on a full disk
        // the next rotation tries again under the same name.
        let _ = fs::remove_file(&path);
        WalError::io("create segment", &path, e)
    })?;
    Ok(Writer {
        file,
        path,
        seq,
        len: HEADER_LEN,
        last_record: None,
        broken: false,
    })
}

/// Where recovery keeps what it cannot replay, and what needs no replay.
struct Recovery<'a> {
    quarantine: &'a Path,
    checkpoint: Option<WalPosition>,
}

/// Scans the last segment, cuts a torn or corrupt tail off, and opens it for
/// appending after its last good record. Damage followed by valid records
/// is copied aside and left in place (the records after it are replayed).
fn recover_last(
    dir: &Path,
    path: PathBuf,
    seq: u64,
    len: u64,
    state: HeaderState,
    options: &WalOptions,
    recovery: Recovery<'_>,
) -> Result<Writer, WalError> {
    let never = options.fsync == FsyncPolicy::Never;
    if state == HeaderState::Torn {
        tracing::warn!(file = %path.display(), "last write-ahead log segment has no complete header (crash while creating it); rewriting it");
        return create_segment(dir, seq, never);
    }
    let mut reader = RecordReader::open(&path, len, options.max_record_size)?;
    let mut buf = Vec::new();
    let mut last_record = None;
    // Whether the bytes past the valid end may go: not if they were kept
    // as damage (the resync scan gave up) and the copy failed.
    let mut tail_kept = true;
    let valid_end = loop {
        let read = reader.next_into(&mut buf);
        for damage in reader.take_damage() {
            let kept = keep_damage(
                &path,
                seq,
                &damage,
                recovery.quarantine,
                recovery.checkpoint,
            );
            tail_kept &= kept || !damage.gave_up;
        }
        match read {
            Ok(Some(offset)) => last_record = Some(offset),
            Ok(None) => break len,
            Err(ReadError::Corrupt { offset, reason }) => {
                tracing::warn!(
                    file = %path.display(),
                    offset,
                    reason = %reason,
                    dropped_bytes = len - offset,
                    "torn or corrupt tail in the last write-ahead log segment; truncating it there"
                );
                break offset;
            }
            Err(ReadError::Io(e)) => return Err(e),
        }
    };
    drop(buf);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io("open", &path, e))?;
    let mut broken = false;
    if valid_end < len && !tail_kept {
        // The only copy of those bytes: the segment is sealed as it is and
        // appends go to a new one.
        tracing::error!(file = %path.display(), offset = valid_end, "not truncating the damaged tail of the last write-ahead log segment, as no copy of it could be kept; new records go to a new segment");
        broken = true;
    } else if valid_end < len {
        file.set_len(valid_end)
            .map_err(|e| WalError::io("truncate", &path, e))?;
        if !never {
            file.sync_data()
                .map_err(|e| WalError::io("fsync", &path, e))?;
        }
    }
    file.seek(SeekFrom::Start(valid_end))
        .map_err(|e| WalError::io("seek", &path, e))?;
    Ok(Writer {
        file,
        path,
        seq,
        len: valid_end,
        last_record,
        broken,
    })
}

/// Moves a segment whose header is not ours (`error` says why) to the
/// quarantine directory; if that fails it stays where it is, ignored, and
/// the next open tries again.
fn set_aside(path: &Path, quarantine: &Path, error: &WalError) {
    let dest = quarantine.join(path.file_name().unwrap_or_default());
    let kind = crate::quarantine::Kind::WalSegment;
    if let Err(move_error) = crate::quarantine::move_to(path, &dest, kind, error) {
        tracing::error!(file = %path.display(), reason = %error, error = %move_error, "write-ahead log segment with a bad header cannot be set aside; it is ignored where it is");
    }
}

/// Copies the damaged bytes of segment `seq` (at `path`) to the quarantine
/// directory as `<segment name>.<start>-<end>.damaged`, once, and logs them.
/// Returns whether a copy exists (or none is needed: every record that could
/// start in the range is at or before the checkpoint, so in Parquet already).
fn keep_damage(
    path: &Path,
    seq: u64,
    damage: &Damage,
    quarantine: &Path,
    checkpoint: Option<WalPosition>,
) -> bool {
    let (start, end) = (damage.start, damage.end);
    let bytes = end - start;
    let last_start = WalPosition {
        segment: seq,
        offset: end.saturating_sub(1),
    };
    if checkpoint.is_some_and(|cp| last_start <= cp) {
        tracing::warn!(file = %path.display(), start, end, reason = %damage.reason, "damaged bytes in a write-ahead log segment, all before the checkpoint: their records are in Parquet already");
        return true;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let dest = quarantine.join(format!("{name}.{start}-{end}.damaged"));
    let kind = crate::quarantine::Kind::WalRecords;
    match crate::quarantine::copy_range(path, start, end, &dest, kind) {
        Ok(true) if damage.gave_up => {
            tracing::error!(file = %path.display(), start, end, bytes, reason = %damage.reason, kept = %dest.display(), "damaged write-ahead log segment: no record to resume at was found within the scan bound; the rest of the segment is not replayed and a copy of it is kept");
            true
        }
        Ok(true) => {
            tracing::error!(file = %path.display(), start, end, bytes, reason = %damage.reason, kept = %dest.display(), "damaged bytes in a write-ahead log segment: the records in them cannot be replayed, a copy is kept, and replay resumes after them");
            true
        }
        Ok(false) => {
            tracing::debug!(file = %path.display(), start, end, kept = %dest.display(), "damaged write-ahead log bytes already kept");
            true
        }
        Err(error) => {
            tracing::error!(file = %path.display(), start, end, bytes, reason = %damage.reason, %error, "damaged bytes in a write-ahead log segment could not be copied aside");
            false
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io("fsync directory", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
