//! Rollup queries over a day of rollup files as the roller writes them (one
//! file per minute), before and after compaction merges them into one.
//!
//!   cargo bench --bench rollups

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use llmtrace::aggregate::{rollup, AggregateConfig, Aggregator};
use llmtrace::ingest::normalise::normalise;
use llmtrace::loadgen::workload::Workload;
use llmtrace::pricing::PriceBook;
use llmtrace::query::{QueryEngine, QueryLimits};
use llmtrace::store::compaction::{compact_rollups, Policy};
use llmtrace::store::{list_rollup_files, RollupWriter};

mod common;
use common::limits;

const MINUTES: i64 = 1440;
/// LLM calls per minute, from loadgen's mix of models and services.
const CALLS_PER_MINUTE: usize = 200;
/// 2026-01-01T00:00:00Z: a finished day.
const DAY: i64 = 1_767_225_600_000_000_000;
const MINUTE: i64 = 60_000_000_000;

const P99_BY_MODEL: &str = "SELECT model, hdr_quantile(hdr_merge(latency_ms_hist), 0.99) AS p99 \
     FROM rollups GROUP BY model ORDER BY model";

/// A day of rollups under `dir`, one file per minute, as the roller writes.
fn write_day(dir: &std::path::Path) {
    let prices = PriceBook::default_book();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut workload = Workload::new(11, now - 60_000_000_000, 2_000_000);
    let mut calls = Vec::new();
    while calls.len() < CALLS_PER_MINUTE {
        let (req, _) = workload.batch(200);
        calls.extend(
            normalise(req, &limits(), &prices, SystemTime::now())
                .records
                .into_iter()
                .filter(|r| r.facts.llm.is_some()),
        );
    }
    calls.truncate(CALLS_PER_MINUTE);
    let tenant: Arc<str> = Arc::from("default");
    let aggregator = Aggregator::new(AggregateConfig::default()).unwrap();
    let writer = RollupWriter::new(dir);
    for m in 0..MINUTES {
        for (i, r) in calls.iter_mut().enumerate() {
            let length = r.end_unix_nano - r.start_unix_nano;
            r.start_unix_nano = DAY + m * MINUTE + i as i64;
            r.end_unix_nano = r.start_unix_nano + length;
        }
        let now = DAY + (m + 2) * MINUTE;
        aggregator.record(&tenant, &calls, now, None);
        let rows = aggregator.close_due(now, None).rows;
        for (tenant, date, batch) in rollup::to_batches(&rows).unwrap() {
            writer
                .write(&writer.path_for(&tenant, date), &batch)
                .unwrap();
        }
    }
}

fn queries(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    write_day(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let engine = runtime
        .block_on(QueryEngine::open(
            dir.path(),
            &PriceBook::default_book(),
            QueryLimits::default(),
        ))
        .unwrap();
    let answer = || runtime.block_on(engine.run(P99_BY_MODEL)).unwrap().batches;

    let mut g = c.benchmark_group("rollups_p99_by_model_one_day");
    g.sample_size(20);
    let files = list_rollup_files(dir.path()).unwrap().len();
    let before = answer();
    g.bench_function(format!("{files}_files"), |b| b.iter(answer));

    let policy = Policy {
        after: Duration::from_secs(600),
        min_files: 4,
    };
    let started = std::time::Instant::now();
    let done = compact_rollups(&RollupWriter::new(dir.path()), SystemTime::now(), &policy).unwrap();
    eprintln!(
        "compacted {} files ({} rows) in {:?}",
        done.files,
        done.rows,
        started.elapsed()
    );
    let after = answer();
    assert_eq!(
        arrow::util::pretty::pretty_format_batches(&before)
            .unwrap()
            .to_string(),
        arrow::util::pretty::pretty_format_batches(&after)
            .unwrap()
            .to_string(),
        "compaction changed the answer"
    );
    let files = list_rollup_files(dir.path()).unwrap().len();
    g.bench_function(format!("{files}_files_compacted"), |b| b.iter(answer));
    g.finish();
}

criterion_group!(benches, queries);
criterion_main!(benches);
