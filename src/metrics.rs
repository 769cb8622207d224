//! The collector's own health counters, shared by the parts that count
//! (receivers, pipeline, store, query engine, aggregator) and rendered at
//! `GET /metrics` in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Refused with a retry hint: the buffer is full.
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
    }
}
