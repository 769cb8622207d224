//! The collector's own health counters, shared by the parts that count
//! (receivers, pipeline, store, query engine, aggregator) and rendered at
//! `GET /metrics` in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Why a request or span was turned away; the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A span that failed validation (ids, times); the rest of its request went on.
    InvalidSpan,
    /// A body that did not decode (protobuf, JSON, gzip).
    Malformed,
    /// A body over the size limits.
    TooLarge,
    /// A content type or encoding we do not read.
    Unsupported,
    /// The buffer or WAL could not take the request.
    Internal,
    /// Refused with a retry hint: the buffer is full, or the write-ahead
    /// log cannot write (disk full, I/O error).
    Overloaded,
    /// No valid API key, or one without the ingest scope.
    Unauthorized,
}

const REJECTIONS: [(Rejection, &str); 7] = [
    (Rejection::InvalidSpan, "invalid_span"),
    (Rejection::Malformed, "malformed"),
    (Rejection::TooLarge, "too_large"),
    (Rejection::Unsupported, "unsupported"),
    (Rejection::Internal, "internal"),
    (Rejection::Overloaded, "overloaded"),
    (Rejection::Unauthorized, "unauthorized"),
];

/// What a failed disk write was writing: the `target` label, and what
/// `/readyz` names while it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteTarget {
    /// The write-ahead log: a request is refused, never acknowledged.
    Wal,
    /// A span file: its spans stay buffered (and logged) for the next flush.
    Spans,
    /// Rollup rows, their intent or their mark: kept for the next tick.
    Rollups,
}

const WRITE_TARGETS: [(WriteTarget, &str, &str); 3] = [
    (
        WriteTarget::Wal,
        "wal",
        "write-ahead log cannot write, so exports are refused with a retry hint",
    ),
    (
        WriteTarget::Spans,
        "spans",
        "span files cannot be written; acknowledged spans are kept and retried",
    ),
    (
        WriteTarget::Rollups,
        "rollups",
        "rollup files cannot be written; their rows are kept and retried",
    ),
];

/// The `error` label of a failed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteErrorKind {
    /// ENOSPC or EDQUOT: the disk or the quota is full.
    NoSpace,
    /// Any other I/O error (EIO, EROFS, permissions, ...).
    Io,
    /// Not an I/O error (e.g. encoding).
    Other,
}

const WRITE_ERROR_KINDS: [(WriteErrorKind, &str); 3] = [
    (WriteErrorKind::NoSpace, "no_space"),
    (WriteErrorKind::Io, "io"),
    (WriteErrorKind::Other, "other"),
];

/// One failed disk write, as counted and shown by `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    pub kind: WriteErrorKind,
    pub message: String,
}

impl WriteFailure {
    /// Classifies `error` by the first I/O error in its source chain.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut kind = WriteErrorKind::Other;
        let mut next = Some(error);
        while let Some(e) = next {
            // The log shares one failed write among its appenders in an Arc.
            let io = e.downcast_ref::<std::io::Error>().or_else(|| {
                e.downcast_ref::<std::sync::Arc<std::io::Error>>()
                    .map(|a| &**a)
            });
            if let Some(io) = io {
                // EDQUOT by number: its ErrorKind is newer than our MSRV.
                let quota = io.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error());
                kind = if io.kind() == std::io::ErrorKind::StorageFull || quota {
                    WriteErrorKind::NoSpace
                } else {
                    WriteErrorKind::Io
                };
                break;
            }
            next = e.source();
        }
        WriteFailure {
            kind,
            message: error.to_string(),
        }
    }

    pub fn is_io(&self) -> bool {
        self.kind != WriteErrorKind::Other
    }
}

/// Failed disk writes, and the targets failing now (the last write to each
/// failed): what `/readyz` reports until a write to it succeeds again.
#[derive(Default)]
struct WriteHealth {
    /// By target, then by kind ([`WRITE_TARGETS`], [`WRITE_ERROR_KINDS`] order).
    failures: [[AtomicU64; 3]; 3],
    /// Whether `last` holds a failure: read on every log append, so a
    /// healthy target costs one atomic load.
    failing: [AtomicBool; 3],
    last: [Mutex<Option<WriteFailure>>; 3],
}

fn target_index(t: WriteTarget) -> usize {
    WRITE_TARGETS
        .iter()
        .position(|(x, _, _)| *x == t)
        .unwrap_or(0)
}

#[derive(Default)]
struct Timer {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl Timer {
    fn observe(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: AtomicU64,
    /// Spans in decoded requests: accepted plus rejected one by one.
    spans_received: AtomicU64,
    spans_accepted: AtomicU64,
    llm_calls: AtomicU64,
    /// Spans rejected, by [`REJECTIONS`] index.
    spans_rejected: [AtomicU64; 7],
    /// Whole requests rejected, by [`REJECTIONS`] index.
    requests_rejected: [AtomicU64; 7],
    flushes: Timer,
    flush_failures: AtomicU64,
    flushed_spans: AtomicU64,
    queries: Timer,
    query_errors: AtomicU64,
    rollup_rows: AtomicU64,
    expired_files: AtomicU64,
    compacted_files: AtomicU64,
    rollup_failures: AtomicU64,
    writes: WriteHealth,
}

/// Values read at render time from their owners.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub buffer_bytes: u64,
    pub open_cells: u64,
    pub overflowed_calls: u64,
}

fn index(r: Rejection) -> usize {
    REJECTIONS.iter().position(|(x, _)| *x == r).unwrap_or(0)
}

impl Metrics {
    pub fn request(&self, accepted: usize, llm_calls: usize, rejected: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.spans_received
            .fetch_add(accepted as u64 + rejected, Ordering::Relaxed);
        self.spans_accepted
            .fetch_add(accepted as u64, Ordering::Relaxed);
        self.llm_calls
            .fetch_add(llm_calls as u64, Ordering::Relaxed);
        self.spans_rejected[index(Rejection::InvalidSpan)].fetch_add(rejected, Ordering::Relaxed);
    }

    pub fn request_rejected(&self, why: Rejection) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.requests_rejected[index(why)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn flushed(&self, took: Duration, spans: usize, failed: bool) {
        self.flushes.observe(took);
        self.flushed_spans
            .fetch_add(spans as u64, Ordering::Relaxed);
        if failed {
            self.flush_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn query(&self, took: Duration, ok: bool) {
        self.queries.observe(took);
        if !ok {
            self.query_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn compacted(&self, files: usize) {
        self.compacted_files
            .fetch_add(files as u64, Ordering::Relaxed);
    }

    pub fn expired(&self, files: usize) {
        self.expired_files
            .fetch_add(files as u64, Ordering::Relaxed);
    }

    pub fn rollups_written(&self, rows: usize, failed: bool) {
        self.rollup_rows.fetch_add(rows as u64, Ordering::Relaxed);
        if failed {
            self.rollup_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a failed disk write to `target` and marks it failing (see
    /// [`Metrics::failing_writes`]) until [`Metrics::write_succeeded`].
    pub fn write_failed(&self, target: WriteTarget, failure: &WriteFailure) {
        let t = target_index(target);
        let k = WRITE_ERROR_KINDS
            .iter()
            .position(|(x, _)| *x == failure.kind)
            .unwrap_or(0);
        self.writes.failures[t][k].fetch_add(1, Ordering::Relaxed);
        let mut last = self.writes.last[t]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none() {
            tracing::warn!(writing = WRITE_TARGETS[t].1, error = %failure.message, "{}", WRITE_TARGETS[t].2);
        }
        *last = Some(failure.clone());
        self.writes.failing[t].store(true, Ordering::SeqCst);
    }

    /// A write to `target` succeeded: it is no longer failing.
    pub fn write_succeeded(&self, target: WriteTarget) {
        let t = target_index(target);
        if !self.writes.failing[t].load(Ordering::SeqCst) {
            return;
        }
        let mut last = self.writes.last[t]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.take().is_some() {
            tracing::info!(
                writing = WRITE_TARGETS[t].1,
                "writes succeed again after failures"
            );
        }
        self.writes.failing[t].store(false, Ordering::SeqCst);
    }

    /// Whether the last write to `target` failed.
    pub fn is_failing(&self, target: WriteTarget) -> bool {
        self.writes.failing[target_index(target)].load(Ordering::SeqCst)
    }

    /// The targets whose last write failed, each with what that means and
    /// the error: why `/readyz` says not ready.
    pub fn failing_writes(&self) -> Vec<(WriteTarget, &'static str, WriteFailure)> {
        WRITE_TARGETS
            .iter()
            .zip(&self.writes.last)
            .filter_map(|((target, _, meaning), last)| {
                let last = last.lock().unwrap_or_else(PoisonError::into_inner);
                last.clone().map(|f| (*target, *meaning, f))
            })
            .collect()
    }

    /// Appends every counter in Prometheus text format.
    pub fn render(&self, gauges: Gauges, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            (
                "llmtrace_export_requests_total",
                "OTLP export requests received.",
                get(&self.requests),
            ),
            (
                "llmtrace_spans_received_total",
                "Spans in decoded export requests.",
                get(&self.spans_received),
            ),
            (
                "llmtrace_spans_accepted_total",
                "Spans accepted and acknowledged.",
                get(&self.spans_accepted),
            ),
            (
                "llmtrace_llm_calls_total",
                "Accepted spans recognised as LLM calls.",
                get(&self.llm_calls),
            ),
            (
                "llmtrace_flushed_spans_total",
                "Spans written to Parquet.",
                get(&self.flushed_spans),
            ),
            (
                "llmtrace_flush_failures_total",
                "Flushes in which a file could not be written (spans kept for the next).",
                get(&self.flush_failures),
            ),
            (
                "llmtrace_query_errors_total",
                "SQL queries that ended in an error.",
                get(&self.query_errors),
            ),
            (
                "llmtrace_rollup_rows_total",
                "Rollup rows written to Parquet.",
                get(&self.rollup_rows),
            ),
            (
                "llmtrace_rollup_write_failures_total",
                "Rollup writes that failed (rows kept for the next attempt).",
                get(&self.rollup_failures),
            ),
            (
                "llmtrace_retention_removed_files_total",
                "Span and rollup files removed by retention.",
                get(&self.expired_files),
            ),
            (
                "llmtrace_compacted_files_total",
                "Small span files merged into larger ones (and removed) by compaction.",
                get(&self.compacted_files),
            ),
            (
                "llmtrace_aggregate_overflowed_calls_total",
                "LLM calls counted under the overflow key because of the live-key cap.",
                gauges.overflowed_calls,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        for (name, help, values) in [
            (
                "llmtrace_spans_rejected_total",
                "Spans rejected, by reason.",
                &self.spans_rejected,
            ),
            (
                "llmtrace_export_requests_rejected_total",
                "Whole export requests rejected, by reason.",
                &self.requests_rejected,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((_, reason), v) in REJECTIONS.iter().zip(values) {
                let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", get(v));
            }
        }
        let name = "llmtrace_storage_write_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} Disk writes that failed, by what was written (wal: a request refused; spans: a span file; rollups: rollup rows, intent or mark) and error (no_space: ENOSPC or EDQUOT).\n# TYPE {name} counter"
        );
        for ((_, target, _), by_kind) in WRITE_TARGETS.iter().zip(&self.writes.failures) {
            for ((_, kind), v) in WRITE_ERROR_KINDS.iter().zip(by_kind) {
                let _ = writeln!(
                    out,
                    "{name}{{target=\"{target}\",error=\"{kind}\"}} {}",
                    get(v)
                );
            }
        }
        let name = "llmtrace_storage_failing";
        let _ = writeln!(
            out,
            "# HELP {name} 1 while the last write to the target failed (and /readyz says so), else 0.\n# TYPE {name} gauge"
        );
        for ((_, target, _), failing) in WRITE_TARGETS.iter().zip(&self.writes.failing) {
            let _ = writeln!(
                out,
                "{name}{{target=\"{target}\"}} {}",
                u8::from(failing.load(Ordering::SeqCst))
            );
        }
        for (name, help, t) in [
            (
                "llmtrace_flush_duration_seconds",
                "Time spent flushing the buffer to Parquet.",
                &self.flushes,
            ),
            (
                "llmtrace_query_duration_seconds",
                "Time spent answering SQL queries.",
                &self.queries,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} summary\n{name}_sum {}\n{name}_count {}",
                get(&t.nanos) as f64 / 1e9,
                get(&t.count)
            );
        }
        for (name, help, v) in [
            (
                "llmtrace_buffer_bytes",
                "Approximate bytes of acknowledged spans not yet in Parquet.",
                gauges.buffer_bytes,
            ),
            (
                "llmtrace_aggregate_open_cells",
                "Open (minute, key) aggregation cells.",
                gauges.open_cells,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        crate::quarantine::render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_failures_are_classified_by_the_io_error_in_their_chain() {
        use std::sync::Arc;
        let enospc = || std::io::Error::from_raw_os_error(28);
        let kind = |e: &(dyn std::error::Error + 'static)| WriteFailure::of(e).kind;
        assert_eq!(kind(&enospc()), WriteErrorKind::NoSpace);
        assert_eq!(
            kind(&std::io::Error::from_raw_os_error(122)),
            WriteErrorKind::NoSpace,
            "EDQUOT"
        );
        assert_eq!(
            kind(&std::io::Error::from_raw_os_error(5)),
            WriteErrorKind::Io,
            "EIO"
        );
        // As the log hands one failed write to all its appenders.
        let wal = crate::wal::WalError::from(crate::wal::segment::WalError::Io {
            op: "write",
            path: "wal-1.log".into(),
            source: Arc::new(enospc()),
        });
        let failure = WriteFailure::of(&wal);
        assert_eq!(failure.kind, WriteErrorKind::NoSpace);
        assert!(
            failure.message.contains("No space left on device"),
            "{failure:?}"
        );
        // As Parquet reports its writer's I/O errors.
        let parquet = crate::store::StoreError::Parquet(::parquet::errors::ParquetError::External(
            Box::new(enospc()),
        ));
        assert_eq!(kind(&parquet), WriteErrorKind::NoSpace);
        let encoding = crate::store::StoreError::Parquet(::parquet::errors::ParquetError::General(
            "bad".into(),
        ));
        assert_eq!(kind(&encoding), WriteErrorKind::Other);
        assert!(!WriteFailure::of(&encoding).is_io());
    }

    #[test]
    fn a_target_is_failing_from_a_failed_write_until_a_write_succeeds() {
        let metrics = Metrics::default();
        let failure = WriteFailure::of(&std::io::Error::from_raw_os_error(28));
        metrics.write_failed(WriteTarget::Wal, &failure);
        metrics.write_failed(WriteTarget::Wal, &failure);
        assert!(metrics.is_failing(WriteTarget::Wal));
        assert!(!metrics.is_failing(WriteTarget::Spans));
        let failing = metrics.failing_writes();
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].0, WriteTarget::Wal);
        assert_eq!(failing[0].2, failure);
        let render = |m: &Metrics| {
            let mut out = String::new();
            m.render(Gauges::default(), &mut out);
            out
        };
        let text = render(&metrics);
        assert!(text.contains(
            "llmtrace_storage_write_failures_total{target=\"wal\",error=\"no_space\"} 2"
        ));
        assert!(text.contains("llmtrace_storage_failing{target=\"wal\"} 1"));

        metrics.write_succeeded(WriteTarget::Wal);
        assert!(!metrics.is_failing(WriteTarget::Wal));
        assert!(metrics.failing_writes().is_empty());
        let text = render(&metrics);
        assert!(text.contains("llmtrace_storage_failing{target=\"wal\"} 0"));
        assert!(
            text.contains(
                "llmtrace_storage_write_failures_total{target=\"wal\",error=\"no_space\"} 2"
            ),
            "the count stays"
        );
    }
}
