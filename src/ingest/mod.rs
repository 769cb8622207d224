//! OTLP receivers: gRPC (tonic) and HTTP (axum), body decoding and limits, and
//! the pipeline every accepted request goes through:
//! decode -> normalise -> write-ahead log -> buffer -> acknowledge.

mod admission;
pub mod assemble;
mod body;
pub mod dedup;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod normalise;
pub mod otlp_json;

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

pub use admission::{footprint, Admission, Admitted, DECODED_PER_WIRE_BYTE};
pub use normalise::Limits;

use crate::aggregate::Aggregator;
use crate::ledger::{Ledger, Ticket};
use crate::metrics::{Metrics, WriteFailure, WriteTarget};
use crate::pricing::PriceBook;
use crate::record::SpanRecord;
use crate::store::PartitionKey;
use crate::store::{Store, StoreError};
use crate::wal::{Log, Replayed, WalError, WalPosition};

/// Requests up to this size (wire bytes) are decoded and normalised right on
/// the async worker; larger ones go to the blocking pool so they cannot stall
/// other connections. Handing every request to another thread cost more than
/// the work itself for typical SDK batches (BENCHMARKS.md).
pub const INLINE_BYTES: usize = 512 * 1024;

/// The same bound for an already decoded request (gRPC), counted in spans:
/// cheaper than re-measuring its encoded size.
pub const INLINE_SPANS: usize = 2_000;

/// A refused request has the buffer flushed early once it holds this much;
/// less is not worth a file of its own.
const FLUSH_EARLY_BYTES: usize = 16 << 20;

/// Runs CPU work of a request: inline when `small`, else on the blocking pool.
///
/// Waiting for the log's fsync is not CPU work: [`Pipeline::export`] awaits
/// it (a log writer thread does the write), so no worker sits in an fsync.
pub async fn run_cpu<T: Send + 'static>(
    small: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if small {
        Ok(work())
    } else {
        tokio::task::spawn_blocking(work).await
    }
}

/// Spans in a request.
pub fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// How long a call waits for its trace's ancestors by default.
pub const DEFAULT_TRACE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Tenant of requests that carry no credentials.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
    /// The buffer, or the memory of requests in flight, holds as much as it
    /// may until a flush or a finished request frees some.
    #[error("overloaded: {held} bytes {what} (limit {limit}); retry after {}", humantime::format_duration(*.retry_after))]
    Overloaded {
        what: &'static str,
        held: usize,
        limit: usize,
        retry_after: std::time::Duration,
    },
    /// A request that alone would hold more than the whole in-flight
    /// budget once decoded: it can never be admitted within the memory
    /// bound, so it is refused for good (413 / RESOURCE_EXHAUSTED) rather
    /// than retried.
    #[error("request too large: decoding it would hold about {needed} bytes, more than ingest.max_in_flight_bytes ({limit}); send smaller batches or raise that limit")]
    TooLarge { needed: usize, limit: usize },
    /// The write-ahead log could not write the request (disk full, I/O
    /// error): nothing of it was stored, so the client must send it again.
    #[error("cannot store spans now, retry after {}: {source}", humantime::format_duration(*.retry_after))]
    Unavailable {
        source: WalError,
        retry_after: std::time::Duration,
    },
}

/// What the client is told about one export request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOutcome {
    pub accepted: usize,
    pub rejected: u64,
    /// Why spans were rejected; empty when none were.
    pub message: String,
}

/// The path from a decoded request to acknowledged, buffered spans.
pub struct Pipeline {
    limits: Limits,
    prices: Arc<PriceBook>,
    /// The log requests are written to, and what it must keep of them.
    ledger: Arc<Ledger>,
    store: Arc<Store>,
    aggregator: Arc<Aggregator>,
    metrics: Arc<Metrics>,
    response_ids: dedup::ResponseIds,
    assembler: assemble::Assembler<Pending>,
    admission: Admission,
}

/// A request waiting for its calls' ancestors (see [`assemble`]): its rows
/// are held in the buffer, its log record kept by its ticket.
pub struct Pending {
    held: crate::store::HeldId,
    position: Option<WalPosition>,
    received: SystemTime,
    _ticket: Option<Ticket>,
}

impl Pipeline {
    pub fn new(
        limits: Limits,
        prices: Arc<PriceBook>,
        wal: Option<Arc<Log>>,
        store: Arc<Store>,
        aggregator: Arc<Aggregator>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            prices,
            ledger: Arc::new(Ledger::new(wal, store.clone())),
            store,
            aggregator,
            metrics,
            response_ids: dedup::ResponseIds::default(),
            assembler: assemble::Assembler::new(DEFAULT_TRACE_WAIT),
            admission: Admission::new(
                limits.max_in_flight_bytes,
                limits.memory_limit,
                limits.retry_after,
            ),
            limits,
        }
    }

    /// How long a call may wait for its trace's ancestors (see [`assemble`]).
    pub fn with_trace_wait(mut self, wait: std::time::Duration) -> Self {
        self.assembler = assemble::Assembler::new(wait);
        self
    }

    /// Admits a request that will hold `bytes` until its spans are buffered;
    /// see [`admission`].
    pub fn admit(&self, bytes: usize) -> Result<Admitted, IngestError> {
        let admitted = self.admission.admit(bytes);
        if admitted.is_err() {
            // Whatever the limit hit, writing out the buffer frees memory
            // sooner than the next interval flush would.
            self.store.buffer().flush_soon(FLUSH_EARLY_BYTES);
        }
        admitted
    }

    /// Refuses when no request could be admitted now; asked before reading
    /// a body of unknown size (every gRPC request).
    pub fn check_admission(&self) -> Result<(), IngestError> {
        let open = self.admission.check();
        if open.is_err() {
            self.store.buffer().flush_soon(FLUSH_EARLY_BYTES);
        }
        open
    }

    /// What the log must keep: requests in flight take their tickets
    /// here, the rollup sink reports its floor, the flusher truncates.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Feeds a request read back from the log at start, as it was accepted,
    /// without logging it again. `persisted` says whether the record's spans
    /// of a partition are already in a Parquet file; those are not buffered
    /// twice. With a rollup `mark`, the aggregator gets the calls of the
    /// requests the mark does not count, buffered or not; without one, the
    /// spans buffered. Returns the spans buffered.
    pub fn replay(
        &self,
        entry: Replayed,
        persisted: &mut dyn FnMut(&PartitionKey, WalPosition) -> bool,
        mark: Option<&crate::aggregate::mark::RollupMark>,
    ) -> Result<usize, IngestError> {
        let tenant: Arc<str> = Arc::from(entry.tenant.as_str());
        let position = entry.position;
        let now = SystemTime::now();
        let now_nanos = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let mut normalised = normalise::normalise(entry.request, &self.limits, &self.prices, now);
        self.assembler.settle(&tenant, &mut normalised.records);
        self.response_ids.dedup(&tenant, &mut normalised.records);
        if mark.is_some_and(|m| !m.counts(position)) {
            self.aggregator
                .record(&tenant, &normalised.records, now_nanos, Some(position));
        }
        normalised.records.retain(|r| {
            let key = PartitionKey::for_span(&tenant, r.start_unix_nano);
            !persisted(&key, position)
        });
        if !normalised.records.is_empty() {
            self.store
                .buffer()
                .append(&tenant, &normalised.records, Some(position))?;
            if mark.is_none() {
                self.aggregator
                    .record(&tenant, &normalised.records, now_nanos, Some(position));
            }
        }
        Ok(normalised.records.len())
    }

    /// Before replay: the links and contexts of every request the log
    /// holds, so a call replayed before its parent still gets its context.
    pub fn observe_for_replay(&self, entries: &[Replayed]) {
        let now = std::time::Instant::now();
        for entry in entries {
            let tenant: Arc<str> = Arc::from(entry.tenant.as_str());
            self.assembler.observe_request(&tenant, &entry.request, now);
        }
    }

    /// Buffers and aggregates the requests whose wait for their calls'
    /// ancestors is over; all of them when `all` (shutdown).
    pub fn release_waiting(&self, all: bool) {
        let due = if all {
            self.assembler.drain()
        } else {
            self.assembler.due(std::time::Instant::now())
        };
        for waiting in due {
            self.release(waiting);
        }
    }

    /// Requests waiting for their calls' ancestors.
    pub fn waiting_requests(&self) -> usize {
        self.assembler.waiting()
    }

    fn release(&self, waiting: assemble::Waiting<Pending>) {
        let ancestry = self.assembler.ancestry(&waiting);
        let tenant = waiting.tenant.clone();
        let pending = waiting.payload;
        let released = self
            .store
            .buffer()
            .release(pending.held, pending.position, |records| {
                for r in records.iter_mut() {
                    if let Some(chain) = ancestry.get(&(r.trace_id, r.span_id)) {
                        for ancestor in chain {
                            r.facts.context.inherit(ancestor);
                        }
                    }
                }
                self.response_ids.dedup(&tenant, records);
            });
        match released {
            Ok((_, records)) => {
                self.aggregate(&tenant, &records, pending.received, pending.position)
            }
            // Only an Arrow error can get here; the log still holds the
            // request until the ticket goes, and a restart replays it.
            Err(error) => {
                tracing::error!(%error, "could not buffer the calls of a waiting request")
            }
        }
    }

    fn aggregate(
        &self,
        tenant: &Arc<str>,
        records: &[SpanRecord],
        received: SystemTime,
        position: Option<WalPosition>,
    ) {
        if records.is_empty() {
            return;
        }
        let now_nanos = received
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        self.aggregator.record(tenant, records, now_nanos, position);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Normalises, logs and buffers a request of `tenant`. When this returns
    /// Ok the accepted spans are acknowledged: they will reach Parquet.
    ///
    /// The request is queued for the log first and normalised while the log
    /// writes it; a `small` one on the calling worker, others on the blocking
    /// pool (see [`run_cpu`]).
    ///
    /// Runs as a task of its own: a client that goes away while its request
    /// waits for the log does not stop it halfway, with the request logged
    /// (and replayed after a crash) but never buffered.
    pub async fn export(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        request: ExportTraceServiceRequest,
        small: bool,
    ) -> Result<ExportOutcome, IngestError> {
        let (this, tenant) = (self.clone(), tenant.clone());
        tokio::spawn(async move { this.export_now(&tenant, request, small).await })
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))?
    }

    /// What a request whose log write failed is answered: a retryable
    /// refusal when the disk failed it (full, I/O error), counted and shown
    /// by `/readyz` until a write succeeds again.
    fn log_failed(&self, error: WalError) -> IngestError {
        let failure = WriteFailure::of(&error);
        if !failure.is_io() {
            return IngestError::Wal(error);
        }
        self.metrics.write_failed(WriteTarget::Wal, &failure);
        IngestError::Unavailable {
            source: error,
            retry_after: self.limits.retry_after,
        }
    }

    async fn export_now(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        request: ExportTraceServiceRequest,
        small: bool,
    ) -> Result<ExportOutcome, IngestError> {
        // Refused before anything is logged or buffered: the client keeps the
        // spans and retries, and memory stays bounded whatever the load.
        let buffered = self.store.buffer().total_bytes();
        if buffered >= self.limits.max_buffer_bytes {
            return Err(IngestError::Overloaded {
                what: "of spans wait to be written",
                held: buffered,
                limit: self.limits.max_buffer_bytes,
                retry_after: self.limits.retry_after,
            });
        }
        // Logged as received: replay runs the same validation again. The
        // ticket keeps the log from being truncated past this request until
        // its spans are in the buffer.
        let mut ticket = self.ledger.begin();
        let now = SystemTime::now();
        let work = {
            let (this, tenant) = (self.clone(), tenant.clone());
            move || -> Result<_, IngestError> {
                let submitted = match this.ledger.log() {
                    Some(log) => Some(
                        log.submit(&tenant, &request)
                            .map_err(|e| this.log_failed(e))?,
                    ),
                    None => None,
                };
                let normalised = normalise::normalise(request, &this.limits, &this.prices, now);
                Ok((submitted, normalised))
            }
        };
        let (submitted, mut normalised) = run_cpu(small, work)
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))??;
        let position = match submitted {
            Some(submitted) => {
                let written = submitted.written().await;
                let position = written.map_err(|e| self.log_failed(e.into()))?;
                self.metrics.write_succeeded(WriteTarget::Wal);
                Some(position)
            }
            None => None,
        };
        let accepted = normalised.records.len();
        let llm_calls = normalised
            .records
            .iter()
            .filter(|r| r.facts.llm.is_some())
            .count();
        let records = std::mem::take(&mut normalised.records);
        let (arrival, completed) =
            self.assembler
                .arrive(tenant, records, std::time::Instant::now(), |records| {
                    Pending {
                        held: self.store.buffer().hold(tenant, records),
                        position,
                        received: now,
                        _ticket: ticket.take(),
                    }
                });
        // Requests this one completed were acknowledged before it: they go
        // first, so the first acknowledged span of a call is the one kept.
        for waiting in completed {
            self.release(waiting);
        }
        if let assemble::Arrival::Ready(mut records) = arrival {
            self.response_ids.dedup(tenant, &mut records);
            if !records.is_empty() {
                self.store.buffer().append(tenant, &records, position)?;
                self.aggregate(tenant, &records, now, position);
            }
        }
        drop(ticket);
        self.metrics
            .request(accepted, llm_calls, normalised.rejected);
        if normalised.rejected > 0 {
            tracing::debug!(
                rejected = normalised.rejected,
                reason = %normalised.message(),
                "rejected spans"
            );
        }
        Ok(ExportOutcome {
            accepted,
            rejected: normalised.rejected,
            message: normalised.message(),
        })
    }
}
