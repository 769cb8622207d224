//! The write-ahead log seam: what an accepted request passes through between
//! normalisation and acknowledgement.
//!
//! The ingest pipeline calls [`WriteAheadLog::append`] with each decoded
//! request before its spans are normalised, buffered and acknowledged; once it
//! returns Ok the spans count as durable. Replay runs the request through the
//! same validation, so spans rejected the first time are rejected again. Today's implementation, [`NoWal`],
//! makes them durable only through the shutdown flush; the segment-file log
//! ([`segment`]) is built and tested and plugs in here.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// Segment files with group commit, torn-tail recovery and truncation: the
/// log itself. Not wired into ingest yet (issue 8): replay must not write a
/// span twice when a crash falls between one partition's file and another's.
pub mod segment;

/// Generated from `proto/llmtrace/v1/wal.proto`.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/llmtrace.v1.rs"));
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub trait WriteAheadLog: Send + Sync {
    /// Makes an accepted request durable before it is acknowledged.
    fn append(&self, tenant: &str, request: &ExportTraceServiceRequest) -> Result<(), WalError>;
}

/// No write-ahead log: spans are durable once flushed to Parquet.
pub struct NoWal;

impl WriteAheadLog for NoWal {
    fn append(&self, _tenant: &str, _request: &ExportTraceServiceRequest) -> Result<(), WalError> {
        Ok(())
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
