//! Hot paths of ingest, each in spans per second, on loadgen's traffic:
//! OTLP decode (protobuf and JSON), normalisation, Arrow append, Parquet write,
//! and the streaming aggregation of LLM calls (HdrHistogram cells).
//!
//!   cargo bench --bench ingest

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use llmtrace::aggregate::{AggregateConfig, Aggregator};
use llmtrace::ingest::normalise::normalise;
use llmtrace::loadgen::encode::to_json;
use llmtrace::loadgen::workload::Workload;
use llmtrace::pricing::PriceBook;
use llmtrace::record::SpanBatchBuilder;
use llmtrace::store::{ParquetWriter, PartitionKey};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

mod common;
use common::limits;

/// The allocator of the llmtrace binary, so the figures match it, counting
/// live bytes for [`memory_per_wire_byte`] (one relaxed add per call).
#[global_allocator]
static ALLOCATOR: Counting = Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Spans per request, as loadgen sends by default.
const BATCH: usize = 200;

fn request() -> (ExportTraceServiceRequest, usize) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    Workload::new(7, now - 60_000_000_000, 2_000_000).batch(BATCH)
}

/// The normalised records of one request, and how many spans it held.
fn records() -> (Vec<llmtrace::record::SpanRecord>, usize) {
    let (req, spans) = request();
    let prices = PriceBook::default_book();
    (
        normalise(req, &limits(), &prices, SystemTime::now()).records,
        spans,
    )
}

fn decode(c: &mut Criterion) {
    let (req, spans) = request();
    let proto = req.encode_to_vec();
    let json = to_json(&req).into_bytes();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(spans as u64));
    g.bench_function("protobuf", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(black_box(proto.as_slice())).unwrap())
    });
    g.bench_function("json", |b| {
        b.iter(|| llmtrace::ingest::otlp_json::decode(black_box(&json)).unwrap())
    });
    g.finish();
}

fn normalisation(c: &mut Criterion) {
    let (req, spans) = request();
    let limits = limits();
    let prices = PriceBook::default_book();
    let now = SystemTime::now();
    let mut g = c.benchmark_group("normalise");
    g.throughput(Throughput::Elements(spans as u64));
    g.bench_function("request", |b| {
        b.iter_batched(
            || req.clone(),
            |req| {
                let out = normalise(black_box(req), &limits, &prices, now);
                assert_eq!(out.records.len(), spans);
                out
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn arrow_append(c: &mut Criterion) {
    let (records, spans) = records();
    let mut g = c.benchmark_group("arrow");
    g.throughput(Throughput::Elements(spans as u64));
    g.bench_function("append+finish", |b| {
        b.iter(|| {
            let mut builder = SpanBatchBuilder::new();
            for r in &records {
                builder.append(r);
            }
            builder.finish().unwrap()
        })
    });
    g.finish();
}

fn aggregation(c: &mut Criterion) {
    let (records, spans) = records();
    let tenant: Arc<str> = Arc::from("default");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let aggregator = Aggregator::new(AggregateConfig::default()).unwrap();
    let mut g = c.benchmark_group("aggregate");
    // Per span of all kinds, as the pipeline hands them over: non-LLM spans
    // are skipped, LLM calls update a cell and the Prometheus series.
    g.throughput(Throughput::Elements(spans as u64));
    g.bench_function("record", |b| {
        b.iter(|| aggregator.record(&tenant, black_box(&records), now, None))
    });
    g.finish();
}

fn parquet_write(c: &mut Criterion) {
    // One flushed file of 64 requests' worth of spans.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut workload = Workload::new(9, now - 60_000_000_000, 200_000);
    let mut builder = SpanBatchBuilder::new();
    let mut spans = 0;
    for _ in 0..64 {
        let (req, n) = workload.batch(BATCH);
        for r in &normalise(
            req,
            &limits(),
            &PriceBook::default_book(),
            SystemTime::now(),
        )
        .records
        {
            builder.append(r);
        }
        spans += n;
    }
    let batch = builder.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = llmtrace::config::StorageConfig::default();
    let writer = ParquetWriter::new(dir.path(), storage.row_group_rows, storage.zstd_level);
    let key = PartitionKey::for_span(&Arc::from("default"), now as i64);
    let mut g = c.benchmark_group("parquet");
    g.throughput(Throughput::Elements(spans as u64));
    g.sample_size(20);
    g.bench_function("write_file", |b| {
        b.iter_batched(
            || batch.clone(),
            |batch| {
                let path = writer.path_for(&key);
                writer
                    .write(&path, std::slice::from_ref(&batch), &[])
                    .unwrap();
                std::fs::remove_file(path).unwrap();
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Not a timing: the memory a request holds on its way to the buffer, per
/// byte of its protobuf encoding, which `ingest::DECODED_PER_WIRE_BYTE`
/// charges against `ingest.max_in_flight_bytes`. Printed once.
fn memory_per_wire_byte(_: &mut Criterion) {
    let (req, _) = request();
    let wire = req.encode_to_vec();
    let prices = PriceBook::default_book();
    let limits = limits();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let decoded = ExportTraceServiceRequest::decode(&wire[..]).unwrap();
    let after_decode = LIVE.load(Ordering::Relaxed) - before;
    // Records are built while the request is consumed: the peak is the point.
    let records = normalise(decoded, &limits, &prices, SystemTime::now()).records;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let per_wire = |n: usize| n as f64 / wire.len() as f64;
    println!(
        "memory per wire byte: decoded request {:.2}, peak while normalising {:.2} ({} spans, {} wire bytes)",
        per_wire(after_decode),
        per_wire(peak),
        records.len(),
        wire.len()
    );
    black_box(records);

    // And what writing a flush's worth of batches (64 MiB, `storage.flush_bytes`)
    // allocates beyond the batches themselves: the Parquet writer's encoders,
    // dictionaries and buffered row group.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut workload = Workload::new(11, now - 60_000_000_000, 1_000_000);
    let mut batches = Vec::new();
    let mut arrow_bytes = 0;
    while arrow_bytes < 64 << 20 {
        let mut builder = SpanBatchBuilder::new();
        for _ in 0..40 {
            let (req, _) = workload.batch(BATCH);
            for r in &normalise(req, &limits, &prices, SystemTime::now()).records {
                builder.append(r);
            }
        }
        let batch = builder.finish().unwrap();
        arrow_bytes += batch.get_array_memory_size();
        batches.push(batch);
    }
    let dir = tempfile::tempdir().unwrap();
    let storage = llmtrace::config::StorageConfig::default();
    let writer = ParquetWriter::new(dir.path(), storage.row_group_rows, storage.zstd_level);
    let key = PartitionKey::for_span(&Arc::from("default"), now as i64);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    writer.write(&writer.path_for(&key), &batches, &[]).unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "parquet write of {} MiB of Arrow batches: peak {} MiB allocated beyond them",
        arrow_bytes >> 20,
        peak >> 20
    );
    drop(batches);

    // And what the span buffer holds against what it counts, for 300K spans
    // of loadgen traffic appended request by request.
    let buffer = llmtrace::store::SpanBuffer::new(usize::MAX);
    let tenant: Arc<str> = Arc::from("default");
    let mut workload = Workload::new(13, now - 60_000_000_000, 20_000);
    let mut held = 0;
    for _ in 0..1500 {
        let (req, _) = workload.batch(BATCH);
        let records = normalise(req, &limits, &prices, SystemTime::now()).records;
        let before = LIVE.load(Ordering::Relaxed);
        buffer.append(&tenant, &records, None).unwrap();
        held += LIVE.load(Ordering::Relaxed) - before;
    }
    println!(
        "span buffer after 300K spans: holds {} MiB, counts {} MiB",
        held >> 20,
        buffer.bytes() >> 20
    );
}

criterion_group!(
    benches,
    memory_per_wire_byte,
    decode,
    normalisation,
    arrow_append,
    aggregation,
    parquet_write
);
criterion_main!(benches);
