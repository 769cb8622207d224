//! The write-ahead log: every accepted request is appended (as received,
//! with its tenant) and durable per the fsync policy before it is
//! acknowledged. At start the log is replayed through the same validation,
//! so spans rejected the first time are rejected again.
//!
//! Truncation follows the buffer and the rollups: the log forgets a record
//! once no buffered, in-flight or being-written span comes from it, and no
//! restorable rollup state counts one of its calls (see `aggregate::mark`). A crash can still fall
//! between the files of one record (its spans in two hours); each span file
//! names the log records it holds, so replay skips the partitions already
//! written and nothing is stored twice.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// Segment files with group commit, torn-tail recovery and truncation.
pub mod segment;

/// Generated from `proto/llmtrace/v1/wal.proto`.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/llmtrace.v1.rs"));
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Its message already says "write-ahead log".
    #[error(transparent)]
    Segment(#[from] segment::WalError),
    #[error("write-ahead log record at {position}: {message}")]
    Decode {
        position: segment::WalPosition,
        message: String,
    },
}

pub use segment::{FsyncPolicy, Submitted, WalOptions, WalPosition};

/// Scratch file of [`Log::probe`]; not a segment name, so never replayed.
const PROBE_FILE: &str = ".probe";

/// Size of the probe: a typical SDK export request, so that free space
/// smaller than a request does not count as recovered.
const PROBE_BYTES: usize = 64 << 10;

/// One request read back at start: what was acknowledged but may not have
/// reached Parquet.
pub struct Replayed {
    pub position: WalPosition,
    pub tenant: String,
    pub request: ExportTraceServiceRequest,
}

/// The write-ahead log of accepted requests: each is appended (and made
/// durable per the fsync policy) before it is acknowledged, and replayed at
/// start until the spans of its records are known to be in Parquet.
pub struct Log {
    wal: segment::Wal,
    sequence: std::sync::atomic::AtomicU64,
}

impl Log {
    /// Opens (or creates) the log in `dir` and reads back every record not
    /// yet truncated. Records that do not decode are logged and skipped.
    pub fn open(
        dir: &std::path::Path,
        options: WalOptions,
    ) -> Result<(Log, Vec<Replayed>), WalError> {
        let (wal, replay) = segment::Wal::open(dir, options)?;
        let mut entries = Vec::new();
        for record in replay {
            let record = record?;
            let decoded = proto::WalEntry::decode(record.payload.as_slice())
                .map_err(|e| e.to_string())
                .and_then(|entry| {
                    ExportTraceServiceRequest::decode(entry.otlp_request.as_slice())
                        .map(|request| (entry.tenant, request))
                        .map_err(|e| e.to_string())
                });
            match decoded {
                Ok((tenant, request)) => entries.push(Replayed {
                    position: record.position,
                    tenant,
                    request,
                }),
                Err(message) => {
                    tracing::warn!(position = %record.position, %message, "skipping a write-ahead log record that does not decode")
                }
            }
        }
        Ok((
            Log {
                wal,
                sequence: std::sync::atomic::AtomicU64::new(0),
            },
            entries,
        ))
    }

    /// Queues one accepted request without waiting for the write; await
    /// [`Submitted::written`] before acknowledging it.
    pub fn submit(
        &self,
        tenant: &str,
        request: &ExportTraceServiceRequest,
    ) -> Result<Submitted, WalError> {
        let sequence = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        Ok(self
            .wal
            .submit(&encode_entry(sequence, tenant, now, request))?)
    }

    /// A lower bound of the position of any record appended from now on.
    pub fn end(&self) -> WalPosition {
        self.wal.end()
    }

    /// Forgets every record before `live` (the lowest position whose spans
    /// may not be in Parquet yet; `None` when every logged span is): records
    /// the checkpoint and deletes the segments wholly before it.
    pub fn truncate_before(&self, live: Option<WalPosition>) -> Result<usize, WalError> {
        self.wal.rotate()?;
        let bound = live.unwrap_or_else(|| self.wal.end());
        if bound.offset == 0 {
            return Ok(0);
        }
        // Positions are record starts, so one byte before `bound` covers
        // every earlier record and not `bound` itself.
        let through = WalPosition {
            segment: bound.segment,
            offset: bound.offset - 1,
        };
        Ok(self.wal.remove_through(through)?)
    }

    pub fn sync(&self) -> Result<(), WalError> {
        Ok(self.wal.sync()?)
    }

    /// Whether the log's disk takes writes again after appends failed (disk
    /// full, I/O errors): writes, fsyncs and removes a scratch file of
    /// [`PROBE_BYTES`] beside the segments. Appends themselves are not used,
    /// as a probe record would be replayed.
    pub fn probe(&self) -> Result<(), WalError> {
        let path = self.dir().join(PROBE_FILE);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&path)?;
            file.write_all(&vec![0u8; PROBE_BYTES])?;
            file.sync_data()
        };
        let written = write();
        // Removed whatever happened: a half-written probe must not hold
        // on to the space it is looking for.
        let removed = std::fs::remove_file(&path);
        written?;
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The log's directory.
    pub fn dir(&self) -> &std::path::Path {
        self.wal.dir()
    }
}

/// The WAL record of one accepted request, protobuf encoded.
pub fn encode_entry(
    sequence: u64,
    tenant: &str,
    received_unix_nano: i64,
    request: &ExportTraceServiceRequest,
) -> Vec<u8> {
    proto::WalEntry {
        sequence,
        tenant: tenant.to_owned(),
        received_unix_nano,
        otlp_request: request.encode_to_vec(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

    #[test]
    fn entry_round_trips_the_request() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                schema_url: "s".into(),
                ..Default::default()
            }],
        };
        let bytes = encode_entry(7, "default", 42, &request);
        let entry = proto::WalEntry::decode(bytes.as_slice()).unwrap();
        assert_eq!(entry.sequence, 7);
        assert_eq!(entry.tenant, "default");
        let back = ExportTraceServiceRequest::decode(entry.otlp_request.as_slice()).unwrap();
        assert_eq!(back, request);
    }
}
