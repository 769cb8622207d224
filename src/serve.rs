//! The `serve` daemon: binds the listeners, runs receivers, API and flusher, and
//! shuts down in the order that loses nothing: stop accepting, drain in-flight
//! requests, flush every acknowledged span to Parquet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aggregate::mark::{self, RollupMark};
use crate::aggregate::{rollup, Aggregator, Closed, Rollup};
use crate::alert::notify::{Deliverer, DelivererOptions, Origin};
use crate::alert::sources::LiveSource;
use crate::alert::{AlertEngine, SystemClock};
use crate::api::{self, Readiness};
use crate::config::Config;
use crate::ingest::{self, grpc::TraceService, listen, Pipeline};
use crate::metrics::{Metrics, WriteFailure, WriteTarget};
use crate::pricing::PriceBook;
use crate::query::QueryEngine;
use crate::store::lock::DataDirLock;
use crate::store::{RollupWriter, Store, StoreError};
use crate::wal::{Log, WalPosition};

/// HTTP/2 flow-control windows of the gRPC receiver.
const GRPC_STREAM_WINDOW: u32 = 4 << 20;
const GRPC_CONNECTION_WINDOW: u32 = 16 << 20;

/// How often a final flush is retried at shutdown before giving up.
const FINAL_FLUSH_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what} server failed: {message}")]
    Server { what: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] crate::store::lock::LockError),
    #[error("config key `pricing.file`: {0}")]
    Pricing(#[from] crate::pricing::PricingError),
    #[error("query engine: {0}")]
    Query(#[from] crate::query::QueryError),
    #[error("config section [aggregate]: {0}")]
    Aggregate(#[from] crate::aggregate::AggregateError),
    #[error("alerts: {0}")]
    Alerts(String),
    #[error("config key `auth.keys`: {0}")]
    Auth(String),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error("replaying the write-ahead log: {0}")]
    Replay(#[from] crate::ingest::IngestError),
}

/// How often expired partitions are looked for.
const RETENTION_TICK: Duration = Duration::from_secs(300);

/// How often partitions due for compaction are looked for.
const COMPACTION_TICK: Duration = Duration::from_secs(60);

/// How often closed minutes are looked for and written to rollups/.
const ROLLUP_TICK: Duration = Duration::from_secs(5);

/// How often a failing write-ahead log is probed for space: without
/// requests (a load balancer stops sending them while `/readyz` says not
/// ready), nothing else would notice that it can write again.
const WAL_PROBE_TICK: Duration = Duration::from_secs(1);

/// How often calls whose wait for their ancestors is over are released.
const ASSEMBLY_TICK: Duration = Duration::from_secs(1);

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Writes rollup rows, keeping those whose write failed for the next call,
/// and then the log's rollup mark.
struct RollupSink {
    writer: RollupWriter,
    pending: Vec<Arc<Rollup>>,
    metrics: Arc<Metrics>,
    log: Option<(Arc<Log>, Arc<Pipeline>)>,
    /// The last mark written.
    mark: Option<RollupMark>,
    /// Rollup files written since that mark: every intent names them all,
    /// so a mark that failed to write leaves none unaccounted for.
    uncommitted: Vec<std::path::PathBuf>,
}

impl RollupSink {
    /// Closes the due minutes and writes them.
    fn tick(&mut self, aggregator: &Aggregator, now: i64) {
        let before = self.log.as_ref().and_then(|(_, p)| p.aggregated_before());
        self.write(aggregator.close_due(now, before), before);
    }

    /// Writes `closed` rows, then the mark that says the logged requests
    /// before `aggregated_before` (read before the rows were closed) are
    /// counted, in those rows or in the cells left open; see [`RollupMark`].
    fn write(&mut self, closed: Closed, aggregated_before: Option<WalPosition>) {
        self.pending.extend(closed.rows);
        let mark = aggregated_before.map(|before| RollupMark {
            sequence: self.mark.as_ref().map_or(1, |m| m.sequence + 1),
            aggregated_before: before,
            aggregated_since: closed.aggregated_since,
            closed_until: closed.closed_until.unwrap_or(i64::MIN),
            open: closed.open,
        });
        let log = match (&self.log, mark) {
            (Some((log, _)), Some(mark)) => Some((log.clone(), mark)),
            _ => None,
        };
        let rows = !self.pending.is_empty();
        if rows && !self.write_rows(log.as_ref()) {
            // The rows stay in memory for the next tick; the mark stays
            // where it was, and the log keeps their spans.
            return;
        }
        let (Some((log, mark)), Some((_, pipeline))) = (log, &self.log) else {
            return;
        };
        let unchanged = self.mark.as_ref().is_some_and(|last| {
            RollupMark {
                sequence: mark.sequence,
                ..last.clone()
            } == mark
        });
        // Rows written under an intent need their mark to commit them.
        if unchanged && !rows {
            return;
        }
        match mark.write(log.dir()) {
            Ok(()) => {
                pipeline.set_rollup_floor(Some(mark.aggregated_before));
                self.mark = Some(mark);
                self.uncommitted.clear();
                self.metrics.write_succeeded(WriteTarget::Rollups);
            }
            Err(error) => {
                tracing::warn!(%error, "cannot write the rollup mark; the log keeps more records until it can");
                self.metrics
                    .write_failed(WriteTarget::Rollups, &WriteFailure::of(&error));
            }
        }
    }

    /// Writes every pending row, one file per tenant and day, all or none:
    /// with a log, the files are named in an intent first (`log`'s mark
    /// commits them). True when all were written.
    fn write_rows(&mut self, log: Option<&(Arc<Log>, RollupMark)>) -> bool {
        let parts = match rollup::to_batches(&self.pending) {
            Ok(parts) => parts,
            Err(error) => {
                tracing::error!(%error, "rollup rows could not be encoded");
                self.metrics.rollups_written(0, true);
                self.metrics
                    .write_failed(WriteTarget::Rollups, &WriteFailure::of(&error));
                return false;
            }
        };
        let files: Vec<std::path::PathBuf> = parts
            .iter()
            .map(|(tenant, date, _)| self.writer.path_for(tenant, *date))
            .map(|p| std::path::absolute(&p).unwrap_or(p))
            .collect();
        if let Some((log, mark)) = log {
            let named: Vec<_> = self.uncommitted.iter().chain(&files).cloned().collect();
            if let Err(error) = mark.intend(log.dir(), &named) {
                tracing::error!(%error, "cannot record the rollup files about to be written; retrying at the next tick");
                self.metrics.rollups_written(0, true);
                self.metrics
                    .write_failed(WriteTarget::Rollups, &WriteFailure::of(&error));
                return false;
            }
        }
        for (i, ((_, _, batch), path)) in parts.iter().zip(&files).enumerate() {
            match self.writer.write(path, batch) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), rows = batch.num_rows(), "wrote rollups");
                }
                Err(error) => {
                    tracing::error!(%error, "rollup write failed; retrying at the next tick");
                    self.metrics.rollups_written(0, true);
                    self.metrics
                        .write_failed(WriteTarget::Rollups, &WriteFailure::of(&error));
                    // All or none: the written files go, or their rows would
                    // be written again with the rest.
                    let mut undone = true;
                    for written in &files[..i] {
                        if let Err(error) = std::fs::remove_file(written) {
                            tracing::error!(%error, path = %written.display(), "cannot remove rollup rows of a failed write; they will be counted twice");
                            undone = false;
                        }
                    }
                    if let (Some((log, _)), true, true) = (log, undone, self.uncommitted.is_empty())
                    {
                        if let Err(error) = mark::remove_intent(log.dir()) {
                            tracing::warn!(%error, "cannot remove the rollup intent file");
                        }
                    }
                    return false;
                }
            }
        }
        self.metrics.rollups_written(self.pending.len(), false);
        if log.is_none() {
            // With a log, the mark written next commits these rows.
            self.metrics.write_succeeded(WriteTarget::Rollups);
        }
        self.pending.clear();
        if log.is_some() {
            self.uncommitted.extend(files);
        }
        true
    }
}

/// Forgets the log records whose spans are all in Parquet.
fn truncate_log(log: &Log, pipeline: &Pipeline) {
    if let Err(error) = log.truncate_before(pipeline.log_floor()) {
        tracing::warn!(%error, "could not truncate the write-ahead log; it is replayed from further back at the next start");
    }
}

/// Buffers again what the log holds and Parquet does not: the spans of each
/// record, minus those of partitions whose files say they hold the record.
/// Aggregates again what the rollup files do not count, per the log's mark.
fn replay(
    pipeline: &Pipeline,
    aggregator: &Aggregator,
    data_dir: &std::path::Path,
    mark: Option<&RollupMark>,
    replayed: Vec<crate::wal::Replayed>,
) -> Result<(), ServeError> {
    use std::collections::{HashMap, HashSet};
    if let Some(mark) = mark {
        aggregator.restore(mark)?;
    }
    // The records replayed stay in the log until rollups count them.
    pipeline.set_rollup_floor(match mark {
        Some(mark) => Some(mark.aggregated_before),
        None => replayed.first().map(|r| r.position),
    });
    if replayed.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let records = replayed.len();
    let mut files: HashMap<crate::store::PartitionKey, HashSet<crate::wal::WalPosition>> =
        HashMap::new();
    let mut persisted = |key: &crate::store::PartitionKey, pos: crate::wal::WalPosition| {
        files
            .entry(key.clone())
            .or_insert_with(|| {
                let mut held = HashSet::new();
                let files = crate::store::partition_files(data_dir, key).unwrap_or_else(|error| {
                    tracing::warn!(%error, partition = ?key, "cannot list a partition's span files");
                    Vec::new()
                });
                for file in files {
                    match crate::store::wal_positions(&file.path) {
                        Ok(positions) => held.extend(positions),
                        // A damaged file goes to quarantine and its records,
                        // if the log still has them, are buffered again: they
                        // are stored once, in a new file.
                        Err(error) => {
                            let outcome = crate::quarantine::set_aside_if_damaged(
                                data_dir,
                                &file.path,
                                crate::quarantine::Kind::Spans,
                                &error,
                            );
                            if !outcome.damaged() {
                                tracing::warn!(%error, path = %file.path.display(), ?outcome, "cannot read a span file's log positions");
                            }
                        }
                    }
                }
                held
            })
            .contains(&pos)
    };
    pipeline.observe_for_replay(&replayed);
    let mut spans = 0;
    for entry in replayed {
        spans += pipeline.replay(entry, &mut persisted, mark)?;
    }
    tracing::info!(
        records,
        spans,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replayed the write-ahead log"
    );
    Ok(())
}

/// Addresses actually bound (port 0 resolved).
#[derive(Clone, Copy, Debug)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
}

/// A running collector; [`RunningServer::shutdown`] stops it cleanly.
pub struct RunningServer {
    pub addrs: BoundAddrs,
    stop: watch::Sender<bool>,
    store: Arc<Store>,
    readiness: Readiness,
    grace: Duration,
    receivers: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
    flusher: JoinHandle<()>,
    retention: JoinHandle<()>,
    compactor: JoinHandle<()>,
    aggregator: Arc<Aggregator>,
    roller: JoinHandle<RollupSink>,
    log: Option<(Arc<Log>, Arc<Pipeline>)>,
    alerts: JoinHandle<()>,
    prober: JoinHandle<()>,
    assembler: JoinHandle<()>,
    pipeline: Arc<Pipeline>,
    /// Declared last so it is dropped last: after the log and everything else
    /// that writes the data dir.
    _lock: DataDirLock,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

/// Resolves once shutdown is requested (or the requester is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Serves `router` on `listener` until shutdown is requested, then drains.
fn spawn_axum(
    listener: TcpListener,
    router: axum::Router,
    options: listen::Options,
    stop_rx: watch::Receiver<bool>,
) -> JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        listen::serve(listener, router, options, stopped(stop_rx)).await;
        Ok(())
    })
}

/// Starts the collector with `config`. Returns once every listener is bound.
pub async fn start(config: &Config) -> Result<RunningServer, ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    // Before anything in the dir is read or written: a second collector
    // would replay this one's live log and store its spans twice.
    let lock = DataDirLock::acquire(&config.data_dir)?;
    let storage = &config.storage;
    let store = Arc::new(Store::new(
        &config.data_dir,
        storage.flush_bytes.as_usize(),
        storage.row_group_rows,
        storage.zstd_level,
    ));
    let limits = ingest::Limits {
        max_attribute_value_bytes: config.ingest.max_attribute_value_bytes.as_usize(),
        max_future_skew: config.ingest.max_future_skew.0,
        max_buffer_bytes: config.ingest.max_buffer_bytes.as_usize(),
        max_in_flight_bytes: config.ingest.max_in_flight_bytes.as_usize(),
        memory_limit: config.ingest.memory_limit.as_usize(),
        retry_after: config.ingest.retry_after.0,
    };
    let prices = Arc::new(PriceBook::load(config.pricing.file())?);
    tracing::info!(
        version = %prices.version,
        models = prices.entries.len(),
        "price book loaded"
    );
    // The rollups table lists rollups/ at each query, so it must exist first.
    let rollups_dir = config.data_dir.join("rollups");
    std::fs::create_dir_all(&rollups_dir).map_err(|source| ServeError::DataDir {
        path: rollups_dir,
        source,
    })?;
    let keys = Arc::new(crate::auth::Keys::from_config(&config.auth).map_err(ServeError::Auth)?);
    let metrics = Arc::new(Metrics::default());
    let aggregator = Arc::new(Aggregator::new(config.aggregate.config())?);
    let query = Arc::new(
        QueryEngine::live(store.clone(), &prices, config.query.limits())
            .await?
            .with_metrics(metrics.clone()),
    );
    // Before anything reads the store: a compaction cut short is finished or undone.
    crate::store::compaction::recover(&config.data_dir)?;
    let (log, replayed) = if config.wal.enabled {
        let options = crate::wal::WalOptions {
            quarantine_dir: Some(crate::quarantine::dir(&config.data_dir).join("wal")),
            ..config.wal.options()
        };
        let (log, replayed) = Log::open(&config.data_dir.join("wal"), options)?;
        (Some(Arc::new(log)), replayed)
    } else {
        (None, Vec::new())
    };
    let pipeline = Arc::new(
        Pipeline::new(
            limits,
            prices,
            log.clone(),
            store.clone(),
            aggregator.clone(),
            metrics.clone(),
        )
        .with_trace_wait(config.ingest.trace_wait.0),
    );
    // Also removes rollup rows a crash left written without their mark.
    let mark = log.as_ref().and_then(|l| RollupMark::recover(l.dir()));
    replay(
        &pipeline,
        &aggregator,
        &config.data_dir,
        mark.as_ref(),
        replayed,
    )?;
    let mut sink = RollupSink {
        writer: RollupWriter::new(&config.data_dir),
        pending: Vec::new(),
        metrics: metrics.clone(),
        log: log.clone().map(|l| (l, pipeline.clone())),
        mark,
        uncommitted: Vec::new(),
    };
    // Before the first request is acknowledged, the log has a mark: without
    // one, a crash could not tell which logged spans the rollups count.
    sink.tick(&aggregator, now_nanos());

    let grpc_listener = bind("grpc", config.server.grpc_addr).await?;
    let http_listener = bind("http", config.server.http_addr).await?;
    let api_listener = bind("api", config.server.api_addr).await?;
    let local = |l: &TcpListener, what, addr| {
        l.local_addr()
            .map_err(|source| ServeError::Bind { what, addr, source })
    };
    let addrs = BoundAddrs {
        grpc: local(&grpc_listener, "grpc", config.server.grpc_addr)?,
        http: local(&http_listener, "http", config.server.http_addr)?,
        api: local(&api_listener, "api", config.server.api_addr)?,
    };

    let (stop, stop_rx) = watch::channel(false);
    let readiness = Readiness::default();
    let max_decompressed = config.ingest.max_decompressed_bytes.as_usize();

    let server = &config.server;
    let limits = listen::Limits {
        header_read_timeout: server.header_read_timeout.0,
        body_read_timeout: server.body_read_timeout.0,
        idle_timeout: server.idle_timeout.0,
        max_connections: server.max_connections,
    };
    let ingest_listener = |what, protocol| listen::Options {
        what,
        limits,
        protocol,
        in_flight_until: listen::InFlightUntil::ResponseHead,
    };
    let grpc = {
        let service = TraceService::new(pipeline.clone(), keys.clone(), max_decompressed);
        let options = ingest_listener(
            "grpc",
            listen::Protocol::Grpc {
                stream_window: GRPC_STREAM_WINDOW,
                connection_window: GRPC_CONNECTION_WINDOW,
            },
        );
        let signal = stopped(stop_rx.clone());
        tokio::spawn(async move {
            listen::serve(grpc_listener, service, options, signal).await;
            Ok(())
        })
    };
    let http = spawn_axum(
        http_listener,
        ingest::http::router(
            pipeline.clone(),
            keys.clone(),
            config.ingest.max_request_bytes.as_usize(),
            max_decompressed,
        ),
        ingest_listener("http", listen::Protocol::Http),
        stop_rx.clone(),
    );
    let deliverer = Deliverer::new(DelivererOptions {
        origin: Origin {
            external_url: Some(format!("http://{}", addrs.api)),
            ..Origin::default()
        },
        ..DelivererOptions::default()
    })
    .map_err(|e| ServeError::Alerts(e.to_string()))?;
    let source = Arc::new(LiveSource {
        aggregator: aggregator.clone(),
        query: query.clone(),
    });
    let alert_engine = Arc::new(
        AlertEngine::new(
            config.alerts.clone(),
            source,
            Arc::new(deliverer),
            config.data_dir.join("alerts"),
            Arc::new(SystemClock),
        )
        .map_err(|e| ServeError::Alerts(e.to_string()))?,
    );
    let alerts = tokio::spawn(alert_engine.clone().run(stopped(stop_rx.clone())));
    let api = spawn_axum(
        api_listener,
        api::router(api::ApiState {
            readiness: readiness.clone(),
            query,
            aggregator: aggregator.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            alerts: alert_engine,
            keys: keys.clone(),
        }),
        // Query answers are streamed: a request is in flight until its
        // answer is sent.
        listen::Options {
            what: "api",
            limits,
            protocol: listen::Protocol::Http,
            in_flight_until: listen::InFlightUntil::ResponseEnd,
        },
        stop_rx.clone(),
    );
    let flusher = {
        let store = store.clone();
        let metrics = metrics.clone();
        let (log, pipeline) = (log.clone(), pipeline.clone());
        let interval = storage.flush_interval.0;
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = store.buffer().wait_full() => {}
                    _ = stop_rx.wait_for(|stop| *stop) => break,
                }
                let started = std::time::Instant::now();
                let flushed = store.flush().await;
                if let Some(log) = &log {
                    // Rotation and the directory fsync are blocking file work.
                    let (log, pipeline) = (log.clone(), pipeline.clone());
                    let _ =
                        tokio::task::spawn_blocking(move || truncate_log(&log, &pipeline)).await;
                }
                match flushed {
                    Ok(stats) => {
                        if stats.rows + stats.failed_rows > 0 {
                            metrics.flushed(started.elapsed(), stats.rows, stats.failed_rows > 0);
                        }
                        // Failed rows went back to the buffer, so a flush
                        // without failures has written them too.
                        match &stats.failure {
                            Some(failure) => metrics.write_failed(WriteTarget::Spans, failure),
                            None => metrics.write_succeeded(WriteTarget::Spans),
                        }
                    }
                    Err(error) => {
                        metrics.flushed(started.elapsed(), 0, true);
                        tracing::error!(%error, "flush failed");
                    }
                }
            }
        })
    };
    // Calls whose trace's ancestors did not come in time are buffered and
    // aggregated with what did come.
    let assembler = {
        let pipeline = pipeline.clone();
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ASSEMBLY_TICK) => {}
                    _ = stop_rx.wait_for(|stop| *stop) => break,
                }
                pipeline.release_waiting(false);
            }
        })
    };
    let prober = {
        let (log, metrics) = (log.clone(), metrics.clone());
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let Some(log) = log else { return };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(WAL_PROBE_TICK) => {}
                    _ = stop_rx.wait_for(|stop| *stop) => break,
                }
                if !metrics.is_failing(WriteTarget::Wal) {
                    continue;
                }
                let log = log.clone();
                match tokio::task::spawn_blocking(move || log.probe()).await {
                    // The next append says for sure; until then, clients
                    // and load balancers may try again.
                    Ok(Ok(())) => metrics.write_succeeded(WriteTarget::Wal),
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "the write-ahead log still cannot write")
                    }
                    Err(error) => tracing::error!(%error, "write-ahead log probe task failed"),
                }
            }
        })
    };
    let retention = {
        let (data_dir, metrics) = (config.data_dir.clone(), metrics.clone());
        let (spans_for, rollups_for) = (storage.retention.0, storage.rollup_retention.0);
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            if spans_for.is_zero() && rollups_for.is_zero() {
                return;
            }
            loop {
                let dir = data_dir.clone();
                let pass = tokio::task::spawn_blocking(move || {
                    crate::store::retention::enforce(
                        &dir,
                        chrono::Utc::now(),
                        spans_for,
                        rollups_for,
                    )
                })
                .await;
                match pass {
                    Ok(Ok(removed)) => metrics.expired(removed.span_files + removed.rollup_files),
                    Ok(Err(error)) => tracing::error!(%error, "retention pass failed"),
                    Err(error) => tracing::error!(%error, "retention task failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETENTION_TICK) => {}
                    _ = stop_rx.wait_for(|stop| *stop) => break,
                }
            }
        })
    };
    let compactor = {
        let (store, metrics) = (store.clone(), metrics.clone());
        let policy = crate::store::compaction::Policy {
            after: storage.compact_after.0,
            min_files: storage.compact_min_files,
        };
        let rollup_writer = Arc::new(RollupWriter::new(&config.data_dir));
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            if policy.min_files == 0 {
                return;
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(COMPACTION_TICK) => {}
                    _ = stop_rx.wait_for(|stop| *stop) => break,
                }
                match store.compact(std::time::SystemTime::now(), &policy).await {
                    Ok(done) => metrics.compacted(done.files),
                    Err(error) => tracing::error!(%error, "compaction pass failed"),
                }
                let (writer, policy) = (rollup_writer.clone(), policy.clone());
                let rollups = tokio::task::spawn_blocking(move || {
                    let now = std::time::SystemTime::now();
                    crate::store::compaction::compact_rollups(&writer, now, &policy)
                })
                .await;
                match rollups {
                    Ok(Ok(done)) => metrics.compacted(done.files),
                    Ok(Err(error)) => tracing::error!(%error, "rollup compaction pass failed"),
                    Err(error) => tracing::error!(%error, "rollup compaction task failed"),
                }
            }
        })
    };
    let roller = {
        let aggregator = aggregator.clone();
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ROLLUP_TICK) => {}
                    _ = stop_rx.wait_for(|stop| *stop) => break,
                }
                let aggregator = aggregator.clone();
                sink = tokio::task::spawn_blocking(move || {
                    sink.tick(&aggregator, now_nanos());
                    sink
                })
                .await
                .expect("rollup writing does not panic");
            }
            sink
        })
    };

    if keys.is_open() {
        let exposed: Vec<String> = [addrs.grpc, addrs.http, addrs.api]
            .iter()
            .filter(|a| !a.ip().is_loopback())
            .map(ToString::to_string)
            .collect();
        if exposed.is_empty() {
            tracing::warn!(
                "no API keys configured ([[auth.keys]]): anyone on this host can write and query"
            );
        } else {
            tracing::warn!(addrs = %exposed.join(","), "no API keys configured ([[auth.keys]]) and listening beyond loopback: anyone who reaches these ports can write and query");
        }
    }
    readiness.set(true);
    tracing::info!(
        "listening grpc={} http={} api={} data_dir={}",
        addrs.grpc,
        addrs.http,
        addrs.api,
        config.data_dir.display()
    );
    Ok(RunningServer {
        addrs,
        stop,
        store,
        readiness,
        grace: config.server.shutdown_grace.0,
        receivers: vec![("grpc", grpc), ("http", http), ("api", api)],
        retention,
        compactor,
        flusher,
        aggregator,
        roller,
        alerts,
        prober,
        _lock: lock,
        assembler,
        pipeline: pipeline.clone(),
        log: log.map(|l| (l, pipeline)),
    })
}

impl RunningServer {
    /// Stops accepting, drains in-flight requests (up to the grace period),
    /// then flushes every acknowledged span. Errors if spans could not be written.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        tracing::info!("shutting down: draining in-flight requests");
        self.readiness.set(false);
        let _ = self.stop.send(true);
        let mut first_error = None;
        for (what, handle) in self.receivers {
            let abort = handle.abort_handle();
            match tokio::time::timeout(self.grace, handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(message))) => {
                    tracing::error!(server = what, %message, "server failed");
                    first_error.get_or_insert(ServeError::Server { what, message });
                }
                Ok(Err(join)) => {
                    first_error.get_or_insert(ServeError::Server {
                        what,
                        message: join.to_string(),
                    });
                }
                Err(_) => {
                    tracing::warn!(server = what, grace = ?self.grace, "requests still in flight after the grace period; closing them unacknowledged");
                    abort.abort();
                }
            }
        }
        // Requests no longer come: calls still waiting for their ancestors
        // go in with what arrived, before the last rollups and flush.
        let _ = self.assembler.await;
        self.pipeline.release_waiting(true);
        let _ = self.flusher.await;
        let _ = self.prober.await;
        let _ = self.retention.await;
        let _ = self.compactor.await;
        // The last evaluation round finishes and its notifications go out.
        if let Err(error) = self.alerts.await {
            tracing::error!(%error, "alert engine failed");
        }
        // Every open minute is written, finished or not: a later run adds
        // its own rows for the same minute, and queries sum them.
        match self.roller.await {
            Ok(mut sink) => {
                let before = self.log.as_ref().and_then(|(_, p)| p.aggregated_before());
                sink.write(self.aggregator.close_all(now_nanos(), before), before);
                if !sink.pending.is_empty() {
                    tracing::error!(
                        rows = sink.pending.len(),
                        "rollup rows could not be written at shutdown"
                    );
                }
            }
            Err(error) => tracing::error!(%error, "rollup task failed"),
        }
        for attempt in 1..=FINAL_FLUSH_ATTEMPTS {
            let stats = self.store.flush().await?;
            if stats.failed_rows == 0 {
                break;
            }
            if attempt == FINAL_FLUSH_ATTEMPTS {
                return Err(StoreError::Unflushed(stats.failed_rows).into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Some((log, pipeline)) = &self.log {
            // Everything acknowledged is in Parquet now: the log can go.
            truncate_log(log, pipeline);
        }
        tracing::info!("shutdown complete");
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SpanRecord;

    /// An LLM call starting at `start` (unix ns).
    fn call(start: i64) -> SpanRecord {
        let mut r = SpanRecord::sample("chat", 1);
        r.start_unix_nano = start;
        r.end_unix_nano = start + 250_000_000;
        r.facts.llm = Some(crate::genai::LlmFacts {
            provider: Some("openai".into()),
            request_model: Some("gpt-4o".into()),
            operation: Some("chat".into()),
            ..Default::default()
        });
        r
    }

    fn rollup_files(dir: &std::path::Path) -> usize {
        crate::store::list_rollup_files(dir).unwrap().len()
    }

    /// A rollup write the disk refuses: the rows stay for the next tick, the
    /// failure is counted and named for `/readyz`, and once the disk takes
    /// writes again they are written, once, and the failure is cleared.
    #[test]
    fn rollup_rows_that_cannot_be_written_are_kept_and_written_once_the_disk_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let aggregator = Aggregator::new(crate::aggregate::AggregateConfig::default()).unwrap();
        let now = now_nanos();
        let tenant: Arc<str> = Arc::from("default");
        aggregator.record(&tenant, &[call(now - 3_600_000_000_000)], now, None);
        // A file where rollups/ should be: every write of the sink fails.
        let rollups = dir.path().join("rollups");
        std::fs::write(&rollups, b"in the way").unwrap();
        let mut sink = RollupSink {
            writer: RollupWriter::new(dir.path()),
            pending: Vec::new(),
            metrics: metrics.clone(),
            log: None,
            mark: None,
            uncommitted: Vec::new(),
        };
        sink.write(aggregator.close_all(now, None), None);
        assert_eq!(sink.pending.len(), 1, "the row is kept");
        assert!(metrics.is_failing(WriteTarget::Rollups));
        let failing = metrics.failing_writes();
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].0, WriteTarget::Rollups);
        let mut text = String::new();
        metrics.render(crate::metrics::Gauges::default(), &mut text);
        assert!(
            text.contains(
                "llmtrace_storage_write_failures_total{target=\"rollups\",error=\"io\"} 1"
            ),
            "{text}"
        );

        std::fs::remove_file(&rollups).unwrap();
        std::fs::create_dir(&rollups).unwrap();
        sink.write(aggregator.close_all(now, None), None);
        assert!(sink.pending.is_empty());
        assert!(!metrics.is_failing(WriteTarget::Rollups));
        assert!(metrics.failing_writes().is_empty());
        assert_eq!(rollup_files(dir.path()), 1);
        sink.write(aggregator.close_all(now, None), None);
        assert_eq!(rollup_files(dir.path()), 1, "written once");
    }
}
