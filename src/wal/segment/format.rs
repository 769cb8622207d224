//! Byte layout of segment files and of the checkpoint file, and the record
//! reader shared by recovery and replay.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::WalError;

/// Identifies our segments, so a stray file that happens to carry a segment
/// name is refused instead of being truncated as a "torn tail".
pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"LTWALSEG";
pub(super) const FORMAT_VERSION: u32 = 1;
/// magic (8) + version (4) + segment sequence (8) + CRC32 of the previous 20 bytes (4).
pub(super) const HEADER_LEN: u64 = 24;
/// length (4, LE) + CRC32 of the payload (4, LE).
pub(super) const RECORD_HEADER_LEN: u64 = 8;

const CHECKPOINT_MAGIC: [u8; 8] = *b"LTWALCKP";
const CHECKPOINT_LEN: usize = 32;
pub(super) const CHECKPOINT_FILE: &str = "checkpoint";
pub(super) const CHECKPOINT_TMP: &str = "checkpoint.tmp";

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".log";
const SEQ_DIGITS: usize = 20;

pub(super) fn segment_file_name(seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{seq:0SEQ_DIGITS$}{SEGMENT_SUFFIX}")
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_file_name(seq))
}

/// The sequence number of a segment file name; `None` for any other file.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn encode_header(seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

pub(super) fn encode_record_header(payload: &[u8]) -> [u8; RECORD_HEADER_LEN as usize] {
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    // The caller has bounded the length by `max_record_size: u32`.
    h[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    h
}

/// What the first bytes of a segment say about it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeaderState {
    Valid,
    /// Shorter than a header but a prefix of the one we would have written, or
    /// all zeros: a crash while the segment was being created.
    Torn,
}

/// Checks the header of segment `seq`. A foreign or unreadable header is an
/// error; a header cut short by a crash during creation is `Torn`.
pub(super) fn check_header(
    file: &mut File,
    path: &Path,
    seq: u64,
    file_len: u64,
) -> Result<HeaderState, WalError> {
    let expected = encode_header(seq);
    let n = file_len.min(HEADER_LEN) as usize;
    let mut got = [0u8; HEADER_LEN as usize];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut got[..n]))
        .map_err(|e| WalError::io("read segment header of", path, e))?;
    let got = &got[..n];
    if got.iter().all(|&b| b == 0) || (n < HEADER_LEN as usize && got == &expected[..n]) {
        return Ok(HeaderState::Torn);
    }
    let bad = |reason: String| WalError::BadSegment {
        path: path.to_owned(),
        reason,
    };
    if n < SEGMENT_MAGIC.len() || got[..8] != SEGMENT_MAGIC {
        return Err(bad(format!(
            "missing segment magic {:?} (found {:02x?})",
            String::from_utf8_lossy(&SEGMENT_MAGIC),
            &got[..n.min(8)]
        )));
    }
    if n < HEADER_LEN as usize {
        return Err(bad(format!("header cut short at {n} bytes")));
    }
    let version = u32::from_le_bytes(got[8..12].try_into().expect("4 bytes"));
    let stored_crc = u32::from_le_bytes(got[20..24].try_into().expect("4 bytes"));
    if stored_crc != crc32fast::hash(&got[..20]) {
        return Err(bad("header checksum mismatch".into()));
    }
    if version != FORMAT_VERSION {
        return Err(WalError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let header_seq = u64::from_le_bytes(got[12..20].try_into().expect("8 bytes"));
    if header_seq != seq {
        return Err(bad(format!(
            "header names segment {header_seq}, the file name says {seq}"
        )));
    }
    Ok(HeaderState::Valid)
}

/// Why reading stopped before the end of a segment: no record that
/// validates follows `offset` (a torn tail, normal after a crash), or an I/O
/// error.
pub(super) enum ReadError {
    Corrupt { offset: u64, reason: String },
    Io(WalError),
}

/// Bytes of a segment that do not read as records, between two places
/// where records do (or, when the resync scan gave up, up to the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Damage {
    pub start: u64,
    pub end: u64,
    pub reason: String,
    /// The scan for the next record stopped at its bound: the rest of the
    /// segment is not replayed, and is kept like any other damage.
    pub gave_up: bool,
}

/// How many payload bytes one reader may checksum while looking for the
/// record after a damaged one. Looking at a candidate header costs nothing;
/// believing it costs a checksum of its declared length, and garbage can
/// declare many plausible lengths. Past this, the rest of the segment is
/// kept as damaged rather than scanned at any cost.
pub(super) const RESYNC_CHECKSUM_BUDGET: u64 = 256 << 20;

/// Bytes read at a time by the resync scan and its checksums: whatever a
/// damaged length says, no buffer is sized by it.
const SCAN_CHUNK: usize = 64 << 10;

/// Why a record could not be read at an offset: its reason, and its
/// declared length when the header was whole (a damaged payload under an
/// intact header says where the next record is).
struct Bad {
    reason: String,
    declared: Option<u32>,
}

enum Resync {
    /// The first record after the damage that validates, and whose
    /// successor does too (or ends the segment exactly).
    At(u64),
    /// No record follows: a torn tail.
    Nothing,
    /// The checksum budget ran out before a record was found.
    GaveUp,
}

/// Sequential reader of the records of one segment, up to a fixed end.
///
/// A record that does not validate with valid records after it is damage
/// in the middle (a bad sector, a stray write), not a torn tail: the reader
/// scans forward for the next record that validates, notes the skipped
/// range in [`RecordReader::take_damage`] and goes on from there. Records are
/// framed only by length and checksum, so a candidate is believed only when
/// the record after it validates too: a random match of one CRC32 among the
/// millions of offsets of a large segment is not unlikely, two chained ones
/// are.
pub(super) struct RecordReader {
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    end: u64,
    max_record: u32,
    budget: u64,
    damage: Vec<Damage>,
    /// Reused by the resync scan's checksums; empty until damage is met.
    scratch: Vec<u8>,
}

impl RecordReader {
    /// Reads records from just after the header up to `end` (bytes beyond it,
    /// e.g. appended after recovery, are not this reader's business).
    pub(super) fn open(path: &Path, end: u64, max_record: u32) -> Result<Self, WalError> {
        let mut file = File::open(path).map_err(|e| WalError::io("open", path, e))?;
        file.seek(SeekFrom::Start(HEADER_LEN))
            .map_err(|e| WalError::io("seek", path, e))?;
        Ok(Self {
            path: path.to_owned(),
            reader: BufReader::with_capacity(64 * 1024, file),
            offset: HEADER_LEN,
            end: end.max(HEADER_LEN),
            max_record,
            budget: RESYNC_CHECKSUM_BUDGET,
            damage: Vec::new(),
            scratch: Vec::new(),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The damaged ranges skipped since the last call.
    pub(super) fn take_damage(&mut self) -> Vec<Damage> {
        std::mem::take(&mut self.damage)
    }

    /// Reads the next record into `buf` and returns its offset; `Ok(None)` at
    /// a clean end. Damage followed by valid records is skipped (see the type's
    /// docs); damage that nothing valid follows ends the reader with
    /// [`ReadError::Corrupt`].
    pub(super) fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<Option<u64>, ReadError> {
        loop {
            let start = self.offset;
            let bad = match self.read_record(buf)? {
                Ok(read) => return Ok(read),
                Err(bad) => bad,
            };
            let corrupt = || ReadError::Corrupt {
                offset: start,
                reason: bad.reason.clone(),
            };
            match self.resync(start, bad.declared)? {
                Resync::At(next) => {
                    self.damage.push(Damage {
                        start,
                        end: next,
                        reason: bad.reason.clone(),
                        gave_up: false,
                    });
                    self.reader
                        .seek(SeekFrom::Start(next))
                        .map_err(|e| ReadError::Io(WalError::io("seek", &self.path, e)))?;
                    self.offset = next;
                }
                Resync::Nothing => return Err(corrupt()),
                Resync::GaveUp => {
                    self.damage.push(Damage {
                        start,
                        end: self.end,
                        reason: bad.reason.clone(),
                        gave_up: true,
                    });
                    return Err(corrupt());
                }
            }
        }
    }

    /// The record at the current offset: `Err(Bad)` when it does not
    /// validate. The declared length is checked against the maximum record
    /// size and the bytes left before `buf` is sized, so a garbage length
    /// cannot make us allocate gigabytes.
    fn read_record(&mut self, buf: &mut Vec<u8>) -> Result<Result<Option<u64>, Bad>, ReadError> {
        let start = self.offset;
        let left = self.end - start;
        if left == 0 {
            return Ok(Ok(None));
        }
        let bad = |reason: String, declared: Option<u32>| Ok(Err(Bad { reason, declared }));
        if left < RECORD_HEADER_LEN {
            return bad(
                format!("incomplete record header: {left} of {RECORD_HEADER_LEN} bytes"),
                None,
            );
        }
        let mut header = [0u8; RECORD_HEADER_LEN as usize];
        if !self.read_exact(&mut header)? {
            return bad("unexpected end of file".into(), None);
        }
        let (len, stored_crc) = split_header(&header);
        if len == 0 {
            // Appends refuse empty payloads, so this is a zero-filled tail
            // (a file extended by the kernel but whose data never landed).
            return bad("zero record length".into(), None);
        }
        if len > self.max_record {
            return bad(
                format!(
                    "declared length {len} exceeds the maximum record size {}",
                    self.max_record
                ),
                None,
            );
        }
        let room = left - RECORD_HEADER_LEN;
        if u64::from(len) > room {
            return bad(
                format!(
                    "declared length {len} runs past the end of the segment ({room} bytes left)"
                ),
                None,
            );
        }
        buf.clear();
        buf.resize(len as usize, 0);
        if !self.read_exact(buf)? {
            return bad("unexpected end of file".into(), None);
        }
        let crc = crc32fast::hash(buf);
        if crc != stored_crc {
            return bad(
                format!("checksum mismatch (stored {stored_crc:08x}, computed {crc:08x})"),
                Some(len),
            );
        }
        self.offset = start + RECORD_HEADER_LEN + u64::from(len);
        Ok(Ok(Some(start)))
    }

    /// `Ok(false)` when the file ends early (it shrank under us since its
    /// length was taken).
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<bool, ReadError> {
        match self.reader.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(ReadError::Io(WalError::io("read", &self.path, e))),
        }
    }

    /// Finds where records resume after a record at `from` failed: first
    /// right after it if its header was whole (a damaged payload), else at
    /// the first offset past `from` where a record and its successor
    /// validate.
    fn resync(&mut self, from: u64, declared: Option<u32>) -> Result<Resync, ReadError> {
        let outcome = (|| {
            if let Some(len) = declared {
                let next = from + RECORD_HEADER_LEN + u64::from(len);
                if next < self.end && self.chain_at(next)? {
                    return Ok(Resync::At(next));
                }
            }
            let mut window = vec![0u8; SCAN_CHUNK];
            let mut base = from + 1;
            while self.end.saturating_sub(base) >= RECORD_HEADER_LEN {
                let n = (self.end - base).min(SCAN_CHUNK as u64) as usize;
                if !self.read_at(base, &mut window[..n])? {
                    return Ok(Resync::Nothing);
                }
                let header_len = RECORD_HEADER_LEN as usize;
                for i in 0..=n - header_len {
                    let (len, crc) = split_header(&window[i..i + header_len]);
                    let at = base + i as u64;
                    if self.plausible(at, len) && self.validates(at, len, crc)? {
                        let next = at + RECORD_HEADER_LEN + u64::from(len);
                        if next == self.end || self.chain_at(next)? {
                            return Ok(Resync::At(at));
                        }
                    }
                }
                // The last `header_len - 1` bytes start candidates that
                // run into the next window.
                base += (n - header_len + 1) as u64;
            }
            Ok(Resync::Nothing)
        })();
        match outcome {
            Ok(resync) => Ok(resync),
            Err(Scan::OverBudget) => Ok(Resync::GaveUp),
            Err(Scan::Io(e)) => Err(ReadError::Io(e)),
        }
    }

    /// Whether a record whose header is at `at` could be one: a length that
    /// is not zero, within the maximum and within the segment.
    fn plausible(&self, at: u64, len: u32) -> bool {
        len != 0
            && len <= self.max_record
            && u64::from(len) <= self.end.saturating_sub(at + RECORD_HEADER_LEN)
    }

    /// Whether a plausible record starts at `at` and validates.
    fn chain_at(&mut self, at: u64) -> Result<bool, Scan> {
        let mut header = [0u8; RECORD_HEADER_LEN as usize];
        if self.end.saturating_sub(at) < RECORD_HEADER_LEN || !self.read_at(at, &mut header)? {
            return Ok(false);
        }
        let (len, crc) = split_header(&header);
        Ok(self.plausible(at, len) && self.validates(at, len, crc)?)
    }

    /// Whether the payload of the record at `at` matches `stored_crc`,
    /// checksummed in fixed chunks and charged to the budget.
    fn validates(&mut self, at: u64, len: u32, stored_crc: u32) -> Result<bool, Scan> {
        let len = u64::from(len);
        if len > self.budget {
            return Err(Scan::OverBudget);
        }
        self.budget -= len;
        let mut hasher = crc32fast::Hasher::new();
        let mut chunk = std::mem::take(&mut self.scratch);
        chunk.resize(SCAN_CHUNK, 0);
        let mut pos = at + RECORD_HEADER_LEN;
        let end = pos + len;
        let mut whole = true;
        while pos < end {
            let n = (end - pos).min(SCAN_CHUNK as u64) as usize;
            match self.read_at(pos, &mut chunk[..n]) {
                Ok(true) => {}
                Ok(false) => {
                    whole = false;
                    break;
                }
                Err(e) => {
                    self.scratch = chunk;
                    return Err(e);
                }
            }
            hasher.update(&chunk[..n]);
            pos += n as u64;
        }
        self.scratch = chunk;
        Ok(whole && hasher.finalize() == stored_crc)
    }

    /// Reads `buf.len()` bytes at `at`; `Ok(false)` past the end of the file.
    /// Moves the file position under the buffered reader, which
    /// [`RecordReader::next_into`] seeks again before reading on.
    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> Result<bool, Scan> {
        let file = self.reader.get_mut();
        let read = file
            .seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(buf));
        match read {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(Scan::Io(WalError::io("read", &self.path, e))),
        }
    }
}

/// Why a resync scan stopped early.
enum Scan {
    OverBudget,
    Io(WalError),
}

/// `(length, crc)` of a record header.
fn split_header(header: &[u8]) -> (u32, u32) {
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    (word(0), word(4))
}

pub(super) fn encode_checkpoint(segment: u64, offset: u64) -> [u8; CHECKPOINT_LEN] {
    let mut b = [0u8; CHECKPOINT_LEN];
    b[..8].copy_from_slice(&CHECKPOINT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&segment.to_le_bytes());
    b[20..28].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32fast::hash(&b[..28]);
    b[28..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `(segment, offset)` of the checkpoint, or why it cannot be trusted.
pub(super) fn decode_checkpoint(b: &[u8]) -> Result<(u64, u64), String> {
    if b.len() != CHECKPOINT_LEN {
        return Err(format!("{} bytes, expected {CHECKPOINT_LEN}", b.len()));
    }
    if b[..8] != CHECKPOINT_MAGIC {
        return Err("bad magic".into());
    }
    let crc = u32::from_le_bytes(b[28..].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&b[..28]) {
        return Err("checksum mismatch".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let segment = u64::from_le_bytes(b[12..20].try_into().expect("8 bytes"));
    let offset = u64::from_le_bytes(b[20..28].try_into().expect("8 bytes"));
    Ok((segment, offset))
}
