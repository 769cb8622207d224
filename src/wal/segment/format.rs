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

/// Why reading stopped before the end of a segment.
pub(super) enum ReadError {
    Corrupt { offset: u64, reason: String },
    Io(WalError),
}

/// Sequential reader of the records of one segment, up to a fixed end.
pub(super) struct RecordReader {
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    end: u64,
    max_record: u32,
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
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the next record into `buf` and returns its offset; `Ok(None)` at
    /// a clean end. The declared length is checked against the maximum record
    /// size and the bytes left before `buf` is sized, so a garbage length
    /// cannot make us allocate gigabytes.
    pub(super) fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<Option<u64>, ReadError> {
        let start = self.offset;
        let left = self.end - start;
        if left == 0 {
            return Ok(None);
        }
        let corrupt = |reason: String| ReadError::Corrupt {
            offset: start,
            reason,
        };
        if left < RECORD_HEADER_LEN {
            return Err(corrupt(format!(
                "incomplete record header: {left} of {RECORD_HEADER_LEN} bytes"
            )));
        }
        let mut header = [0u8; RECORD_HEADER_LEN as usize];
        self.read_exact(&mut header, start)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let stored_crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 {
            // Appends refuse empty payloads, so this is a zero-filled tail
            // (a file extended by the kernel but whose data never landed).
            return Err(corrupt("zero record length".into()));
        }
        if len > self.max_record {
            return Err(corrupt(format!(
                "declared length {len} exceeds the maximum record size {}",
                self.max_record
            )));
        }
        let room = left - RECORD_HEADER_LEN;
        if u64::from(len) > room {
            return Err(corrupt(format!(
                "declared length {len} runs past the end of the segment ({room} bytes left)"
            )));
        }
        buf.clear();
        buf.resize(len as usize, 0);
        self.read_exact(buf, start)?;
        let crc = crc32fast::hash(buf);
        if crc != stored_crc {
            return Err(corrupt(format!(
                "checksum mismatch (stored {stored_crc:08x}, computed {crc:08x})"
            )));
        }
        self.offset = start + RECORD_HEADER_LEN + u64::from(len);
        Ok(Some(start))
    }

    fn read_exact(&mut self, buf: &mut [u8], start: u64) -> Result<(), ReadError> {
        self.reader.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                // The file shrank under us since its length was taken.
                ReadError::Corrupt {
                    offset: start,
                    reason: "unexpected end of file".into(),
                }
            } else {
                ReadError::Io(WalError::io("read", &self.path, e))
            }
        })
    }
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
