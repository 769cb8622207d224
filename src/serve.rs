//! The `serve` daemon: wires the components together (receivers, the ingest
//! pipeline and its [`Ledger`], [`replay`], the [`RollupSink`], the alert
//! engine fed by [`alert_sources`], the API), runs the background jobs through
//! `periodic`, and shuts down in the order that loses nothing: stop
//! accepting, drain in-flight requests, write the last rollups, flush every
//! acknowledged span to Parquet, and only then truncate the log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod alert_sources;
mod periodic;

use crate::aggregate::mark::RollupMark;
use crate::aggregate::Aggregator;
use crate::alert::notify::{Deliverer, DelivererOptions, Origin};
use crate::alert::{AlertEngine, SystemClock};
use crate::api::{self, Readiness};
use crate::config::Config;
use crate::ingest::{self, grpc::TraceService, listen, Pipeline};
use crate::ledger::Ledger;
use crate::metrics::{Metrics, WriteTarget};
use crate::pricing::PriceBook;
use crate::query::QueryEngine;
use crate::replay::{replay, ReplayError};
use crate::rollup_sink::{now_nanos, RollupSink};
use crate::store::lock::DataDirLock;
use crate::store::{RollupWriter, Store, StoreError};
use crate::wal::Log;
use alert_sources::LiveSource;
use periodic::{Pass, Periodic, Schedule};

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

impl From<ReplayError> for ServeError {
    fn from(error: ReplayError) -> Self {
        match error {
            ReplayError::Aggregate(e) => e.into(),
            ReplayError::Ingest(e) => e.into(),
        }
    }
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
    flusher: Periodic<()>,
    retention: Periodic<()>,
    compactor: Periodic<()>,
    roller: Periodic<RollupSink>,
    ledger: Arc<Ledger>,
    alerts: JoinHandle<()>,
    prober: Periodic<()>,
    assembler: Periodic<()>,
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
    let limits = config.ingest.limits();
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
    let ledger = pipeline.ledger().clone();
    // Also removes rollup rows a crash left written without their mark.
    let mark = log.as_ref().and_then(|l| RollupMark::recover(l.dir()));
    replay(
        &pipeline,
        &aggregator,
        &config.data_dir,
        mark.as_ref(),
        replayed,
    )?;
    let mut sink = RollupSink::new(
        RollupWriter::new(&config.data_dir),
        metrics.clone(),
        &ledger,
        mark,
    );
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
    let jobs = Jobs {
        config,
        stop: &stop_rx,
        store: &store,
        metrics: &metrics,
        ledger: &ledger,
    };
    let flusher = jobs.flusher();
    let assembler = jobs.assembler(&pipeline);
    let prober = jobs.prober();
    let retention = jobs.retention();
    let compactor = jobs.compactor();
    let roller = jobs.roller(&aggregator, sink);

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
        roller,
        alerts,
        prober,
        _lock: lock,
        assembler,
        pipeline,
        ledger,
    })
}

/// What the background jobs are built from.
struct Jobs<'a> {
    config: &'a Config,
    stop: &'a watch::Receiver<bool>,
    store: &'a Arc<Store>,
    metrics: &'a Arc<Metrics>,
    ledger: &'a Arc<Ledger>,
}

impl Jobs<'_> {
    /// Writes the buffer to Parquet on the flush interval or once it is
    /// full, then truncates the log below what every consumer has made
    /// durable. The last flush is [`RunningServer::shutdown`]'s, after the
    /// last rollups.
    fn flusher(&self) -> Periodic<()> {
        let (store, metrics, ledger) = (
            self.store.clone(),
            self.metrics.clone(),
            self.ledger.clone(),
        );
        let full = store.clone();
        let schedule = Schedule::every(self.config.storage.flush_interval.0).or_when(move || {
            let full = full.clone();
            async move { full.buffer().wait_full().await }
        });
        periodic::spawn("flush", schedule, self.stop.clone(), (), move |(), pass| {
            let (store, metrics, ledger) = (store.clone(), metrics.clone(), ledger.clone());
            async move {
                if pass == Pass::Last {
                    return;
                }
                let started = std::time::Instant::now();
                let flushed = store.flush().await;
                if ledger.log().is_some() {
                    // Rotation and the directory fsync are blocking file work.
                    let _ = tokio::task::spawn_blocking(move || ledger.truncate()).await;
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
    }

    /// Calls whose trace's ancestors did not come in time are buffered and
    /// aggregated with what did come.
    fn assembler(&self, pipeline: &Arc<Pipeline>) -> Periodic<()> {
        let pipeline = pipeline.clone();
        let schedule = Schedule::every(ASSEMBLY_TICK);
        periodic::spawn(
            "assembly",
            schedule,
            self.stop.clone(),
            (),
            move |(), pass| {
                // The last release is shutdown's own step.
                if pass == Pass::Tick {
                    pipeline.release_waiting(false);
                }
                std::future::ready(())
            },
        )
    }

    /// Probes a failing log for space (see [`WAL_PROBE_TICK`]).
    fn prober(&self) -> Periodic<()> {
        let Some(log) = self.ledger.log().cloned() else {
            return Periodic::off("wal probe");
        };
        let metrics = self.metrics.clone();
        let schedule = Schedule::every(WAL_PROBE_TICK);
        periodic::spawn(
            "wal probe",
            schedule,
            self.stop.clone(),
            (),
            move |(), pass| {
                let (log, metrics) = (log.clone(), metrics.clone());
                async move {
                    if pass == Pass::Last || !metrics.is_failing(WriteTarget::Wal) {
                        return;
                    }
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
            },
        )
    }

    /// Removes expired partitions, at the start and then every
    /// [`RETENTION_TICK`].
    fn retention(&self) -> Periodic<()> {
        let storage = &self.config.storage;
        let (spans_for, rollups_for) = (storage.retention.0, storage.rollup_retention.0);
        if spans_for.is_zero() && rollups_for.is_zero() {
            return Periodic::off("retention");
        }
        let (data_dir, metrics) = (self.config.data_dir.clone(), self.metrics.clone());
        let schedule = Schedule::every(RETENTION_TICK).starting_now();
        periodic::spawn(
            "retention",
            schedule,
            self.stop.clone(),
            (),
            move |(), pass| {
                let (dir, metrics) = (data_dir.clone(), metrics.clone());
                async move {
                    if pass == Pass::Last {
                        return;
                    }
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
                        Ok(Ok(removed)) => {
                            metrics.expired(removed.span_files + removed.rollup_files)
                        }
                        Ok(Err(error)) => tracing::error!(%error, "retention pass failed"),
                        Err(error) => tracing::error!(%error, "retention task failed"),
                    }
                }
            },
        )
    }

    /// Compacts span and rollup partitions that are due.
    fn compactor(&self) -> Periodic<()> {
        let storage = &self.config.storage;
        let policy = crate::store::compaction::Policy {
            after: storage.compact_after.0,
            min_files: storage.compact_min_files,
        };
        if policy.min_files == 0 {
            return Periodic::off("compaction");
        }
        let (store, metrics) = (self.store.clone(), self.metrics.clone());
        let rollup_writer = Arc::new(RollupWriter::new(&self.config.data_dir));
        let schedule = Schedule::every(COMPACTION_TICK);
        periodic::spawn(
            "compaction",
            schedule,
            self.stop.clone(),
            (),
            move |(), pass| {
                let (store, metrics) = (store.clone(), metrics.clone());
                let (writer, policy) = (rollup_writer.clone(), policy.clone());
                async move {
                    if pass == Pass::Last {
                        return;
                    }
                    match store.compact(std::time::SystemTime::now(), &policy).await {
                        Ok(done) => metrics.compacted(done.files),
                        Err(error) => tracing::error!(%error, "compaction pass failed"),
                    }
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
            },
        )
    }

    /// Writes closed minutes to rollups/; at shutdown, every open minute.
    fn roller(&self, aggregator: &Arc<Aggregator>, sink: RollupSink) -> Periodic<RollupSink> {
        let aggregator = aggregator.clone();
        let schedule = Schedule::every(ROLLUP_TICK);
        periodic::spawn(
            "rollups",
            schedule,
            self.stop.clone(),
            sink,
            move |mut sink, pass| {
                let aggregator = aggregator.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        match pass {
                            Pass::Tick => sink.tick(&aggregator, now_nanos()),
                            Pass::Last => sink.finish(&aggregator, now_nanos()),
                        }
                        sink
                    })
                    .await
                    .expect("rollup writing does not panic")
                }
            },
        )
    }
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
        // (Done here, not as the job's last pass: it must run even if the
        // job's task failed.)
        self.assembler.finish().await;
        self.pipeline.release_waiting(true);
        self.flusher.finish().await;
        self.prober.finish().await;
        self.retention.finish().await;
        self.compactor.finish().await;
        // The last evaluation round finishes and its notifications go out.
        if let Err(error) = self.alerts.await {
            tracing::error!(%error, "alert engine failed");
        }
        // Every open minute is written, finished or not: a later run adds
        // its own rows for the same minute, and queries sum them.
        self.roller.finish().await;
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
        // Everything acknowledged is in Parquet now: the log can go.
        self.ledger.truncate();
        tracing::info!("shutdown complete");
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
