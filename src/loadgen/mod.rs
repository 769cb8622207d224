//! `llmtrace loadgen`: realistic, seeded LLM traffic over OTLP.
//!
//! The run: generate a pool of requests from the seed ([`workload`]), encode
//! them once ([`encode`]), then replay them from `connections` concurrent
//! senders ([`send`]) at the requested span rate (or as fast as the server
//! accepts), counting what was sent, acknowledged and rejected.

pub mod encode;
mod rng;
pub mod send;
pub mod workload;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use encode::{Encoding, Prepared};
use send::{Outcome, Sender};
use workload::Workload;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid endpoint {0}")]
    Endpoint(String),
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("{0}")]
    Options(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProto,
    HttpJson,
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(Protocol::Grpc),
            "http-proto" | "http/protobuf" => Ok(Protocol::HttpProto),
            "http-json" | "http/json" => Ok(Protocol::HttpJson),
            other => Err(format!(
                "unknown protocol {other:?}; use grpc, http-proto or http-json"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// `http://host:4317` for gRPC; `http://host:4318` (or a full `/v1/traces` URL) for HTTP.
    pub endpoint: String,
    pub protocol: Protocol,
    /// Spans per second; 0 sends as fast as the server accepts.
    pub rate: u64,
    /// How long to send for (the run also ends at `total_spans`).
    pub duration: Duration,
    /// Stop after this many spans (default: rate x duration when a rate is set).
    pub total_spans: Option<u64>,
    pub seed: u64,
    /// Spans per request (whole traces, so requests hold at least this many).
    pub batch: usize,
    /// Concurrent senders, each with its own connection.
    pub connections: usize,
    /// Distinct requests encoded before the run and replayed with fresh ids.
    pub pool: usize,
    /// Print a progress line every second (to stderr).
    pub progress: bool,
    /// Start of the first trace (Unix ns); default: so the traffic ends now.
    /// Fixed, it makes the whole data set the same on every run (golden tests).
    pub start_unix_nano: Option<u64>,
    /// Spans per second of simulated time, which spaces trace start times
    /// [default: `rate`, or 100k when unlimited]. Low values spread a fast
    /// run over days of timeline (rollup benchmarks, multi-minute tests).
    pub timeline_rate: Option<f64>,
    /// API key sent with every request (Bearer), for collectors with keys.
    pub api_key: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: Protocol::Grpc,
            rate: 1000,
            duration: Duration::from_secs(10),
            total_spans: None,
            seed: 1,
            batch: 200,
            connections: 4,
            pool: 128,
            progress: true,
            start_unix_nano: None,
            timeline_rate: None,
            api_key: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub requests: u64,
    pub failed_requests: u64,
    pub sent_spans: u64,
    /// Spans the server acknowledged (accepted, not rejected).
    pub acked_spans: u64,
    /// Spans refused through partial success.
    pub rejected_spans: u64,
    /// Spans in requests that failed as a whole.
    pub failed_spans: u64,
    pub elapsed: Duration,
    /// Request latency percentiles.
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    /// First few failure reasons.
    pub failures: Vec<String>,
}

impl Report {
    pub fn acked_per_second(&self) -> f64 {
        self.acked_spans as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sent {} spans in {} requests over {:.2} s",
            self.sent_spans,
            self.requests,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "acknowledged {} spans, rejected {}, failed {} ({} failed requests)",
            self.acked_spans, self.rejected_spans, self.failed_spans, self.failed_requests
        )?;
        writeln!(
            f,
            "achieved {:.0} spans/s; request latency p50 {:.1} ms, p99 {:.1} ms",
            self.acked_per_second(),
            self.latency_p50.as_secs_f64() * 1e3,
            self.latency_p99.as_secs_f64() * 1e3
        )?;
        for reason in &self.failures {
            writeln!(f, "failure: {reason}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    failed_requests: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
}

/// The pre-encoded pool and where each replayed batch starts in span count.
struct Pool {
    requests: Vec<Prepared>,
    /// Spans before request i within one round.
    prefix: Vec<u64>,
    spans_per_round: u64,
    /// Time covered by one round, ns: the shift applied per replay round.
    round_ns: u64,
}

impl Pool {
    fn build(opts: &Options) -> Pool {
        let encoding = match opts.protocol {
            Protocol::HttpJson => Encoding::Json,
            _ => Encoding::Protobuf,
        };
        // Pace trace start times like the requested rate (100k spans/s when
        // unlimited), ending now, so replays continue the timeline.
        let nominal_rate = opts
            .timeline_rate
            .filter(|r| *r > 0.0)
            .unwrap_or(if opts.rate > 0 { opts.rate } else { 100_000 } as f64);
        let per_trace = Workload::spans_per_trace(opts.seed);
        let gap_ns = (per_trace / nominal_rate * 1e9) as u64;
        let traces_estimate = (opts.pool * opts.batch) as f64 / per_trace;
        let round_ns = (traces_estimate * gap_ns as f64) as u64;
        let start = opts.start_unix_nano.unwrap_or_else(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            now.saturating_sub(round_ns)
        });
        let mut workload = Workload::new(opts.seed, start, gap_ns);
        let requests: Vec<Prepared> = (0..opts.pool.max(1))
            .map(|_| {
                let (req, n) = workload.batch(opts.batch);
                Prepared::new(&req, n, encoding)
            })
            .collect();
        let mut prefix = Vec::with_capacity(requests.len());
        let mut total = 0;
        for r in &requests {
            prefix.push(total);
            total += r.spans as u64;
        }
        Pool {
            requests,
            prefix,
            spans_per_round: total,
            round_ns: round_ns.max(1),
        }
    }

    /// Spans sent before batch `n` of the run.
    fn spans_before(&self, n: u64) -> u64 {
        let len = self.requests.len() as u64;
        (n / len) * self.spans_per_round + self.prefix[(n % len) as usize]
    }

    fn batch(&self, n: u64) -> (&Prepared, u64) {
        let len = self.requests.len() as u64;
        (&self.requests[(n % len) as usize], n / len)
    }
}

/// Runs the load; returns when the duration or span count is reached.
pub async fn run(opts: Options) -> Result<Report, LoadgenError> {
    if opts.batch == 0 || opts.connections == 0 || opts.pool == 0 {
        return Err(LoadgenError::Options(
            "--batch, --connections and --pool must be at least 1".into(),
        ));
    }
    crate::install_crypto_provider();
    let prepared_at = Instant::now();
    let pool = Arc::new(Pool::build(&opts));
    let pool_bytes: usize = pool.requests.iter().map(Prepared::len).sum();
    tracing::info!(
        requests = pool.requests.len(),
        spans = pool.spans_per_round,
        bytes = pool_bytes,
        elapsed_ms = prepared_at.elapsed().as_millis() as u64,
        "encoded request pool"
    );
    let total = opts
        .total_spans
        .or((opts.rate > 0).then_some((opts.rate as f64 * opts.duration.as_secs_f64()) as u64));
    let mut senders = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        senders.push(match opts.protocol {
            Protocol::Grpc => Sender::grpc(&opts.endpoint, opts.api_key.as_deref()).await?,
            Protocol::HttpProto => Sender::http(&opts.endpoint, false, opts.api_key.as_deref())?,
            Protocol::HttpJson => Sender::http(&opts.endpoint, true, opts.api_key.as_deref())?,
        });
    }

    let counters = Arc::new(Counters::default());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + opts.duration;
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for mut sender in senders {
        let (pool, counters, next, failures) = (
            pool.clone(),
            counters.clone(),
            next.clone(),
            failures.clone(),
        );
        let rate = opts.rate;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let before = pool.spans_before(n);
                if total.is_some_and(|t| before >= t) {
                    break;
                }
                if rate > 0 {
                    // Open loop: batch n is due when the spans before it are.
                    let due = start + Duration::from_secs_f64(before as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                if Instant::now() >= deadline && (total.is_none() || rate > 0) {
                    break;
                }
                let (prepared, round) = pool.batch(n);
                let body = prepared.render(round, round * pool.round_ns);
                let spans = prepared.spans as u64;
                let sent_at = Instant::now();
                let outcome = sender.send(body).await;
                latencies.push(sent_at.elapsed());
                counters.requests.fetch_add(1, Ordering::Relaxed);
                counters.sent.fetch_add(spans, Ordering::Relaxed);
                match outcome {
                    Outcome::Accepted { rejected } => {
                        counters
                            .acked
                            .fetch_add(spans.saturating_sub(rejected), Ordering::Relaxed);
                        counters.rejected.fetch_add(rejected, Ordering::Relaxed);
                    }
                    Outcome::Failed { reason, retryable } => {
                        counters.failed_requests.fetch_add(1, Ordering::Relaxed);
                        counters.failed.fetch_add(spans, Ordering::Relaxed);
                        {
                            let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
                            if f.len() < 5 {
                                f.push(reason);
                            }
                        }
                        // Back off a little when told to, instead of hammering.
                        let pause = if retryable { 100 } else { 10 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
            }
            latencies
        }));
    }

    let progress = opts.progress.then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let acked = counters.acked.load(Ordering::Relaxed);
                eprintln!(
                    "loadgen {:>6.1}s  sent {:>10}  acked {:>10}  rejected {:>6}  failed {:>6}  {:>8} spans/s",
                    start.elapsed().as_secs_f64(),
                    counters.sent.load(Ordering::Relaxed),
                    acked,
                    counters.rejected.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed),
                    acked - last,
                );
                last = acked;
            }
        })
    });

    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.expect("sender task does not panic"));
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
    }
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Report {
        requests: counters.requests.load(Ordering::Relaxed),
        failed_requests: counters.failed_requests.load(Ordering::Relaxed),
        sent_spans: counters.sent.load(Ordering::Relaxed),
        acked_spans: counters.acked.load(Ordering::Relaxed),
        rejected_spans: counters.rejected.load(Ordering::Relaxed),
        failed_spans: counters.failed.load(Ordering::Relaxed),
        elapsed,
        latency_p50: pct(0.5),
        latency_p99: pct(0.99),
        failures,
    })
}
