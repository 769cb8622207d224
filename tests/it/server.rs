//! Daemon behaviour: health endpoints, flush on interval and on size while
//! running, and shutdown that flushes what was acknowledged.

use std::time::Duration;

use llmtrace::config::{ByteSize, HumanDuration};

use crate::support::{now_nanos, parquet_files, read_rows, TestServer};

fn json_span(i: u64, start: u64) -> String {
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{:032x}","spanId":"{:016x}","name":"op","startTimeUnixNano":"{start}","endTimeUnixNano":"{}"}}]}}]}}]}}"#,
        i + 1,
        i + 1,
        start + 1000
    )
}

async fn post(client: &reqwest::Client, server: &TestServer, body: String) {
    let resp = client
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let server = TestServer::start().await;
    for path in ["/healthz", "/readyz"] {
        let resp = reqwest::get(server.api_url(path)).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let (rows, _dir) = server.stop().await;
    assert!(rows.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_on_interval_while_running() {
    let server = TestServer::start_with(|c| {
        c.storage.flush_interval = HumanDuration(Duration::from_millis(200));
    })
    .await;
    let client = reqwest::Client::new();
    post(&client, &server, json_span(1, now_nanos() - 1_000_000)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while read_rows(&server.data_dir()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no flush within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No temp files are ever visible under a .parquet name.
    for f in parquet_files(&server.data_dir().join("spans")) {
        assert!(!f.file_name().unwrap().to_str().unwrap().starts_with('.'));
    }
    let (rows, _dir) = server.stop().await;
    assert_eq!(rows.len(), 1, "flushed once, not twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_on_size_and_keeps_every_span() {
    let server = TestServer::start_with(|c| {
        c.storage.flush_interval = HumanDuration(Duration::from_secs(3600));
        c.storage.flush_bytes = ByteSize(16 * 1024);
    })
    .await;
    let client = reqwest::Client::new();
    let start = now_nanos() - 1_000_000_000;
    for i in 0..200 {
        post(&client, &server, json_span(i, start)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while parquet_files(&server.data_dir().join("spans")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no size-triggered flush"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rows, _dir) = server.stop().await;
    assert_eq!(rows.len(), 200);
    let mut ids: Vec<_> = rows
        .iter()
        .map(|r| r.s("span_id").unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "no span lost or duplicated across flushes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_partitioned_by_start_hour() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    // 2024-03-05T07:30:00Z and 2024-03-05T09:10:00Z
    post(&client, &server, json_span(1, 1_709_623_800_000_000_000)).await;
    post(&client, &server, json_span(2, 1_709_629_800_000_000_000)).await;
    let (rows, _dir) = server.stop().await;
    let mut parts: Vec<_> = rows
        .iter()
        .map(|r| format!("{}/{}/{}", r.tenant, r.date, r.hour))
        .collect();
    parts.sort();
    assert_eq!(parts, ["default/2024-03-05/07", "default/2024-03-05/09"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_zstd_with_statistics_page_index_and_trace_id_bloom_filter() {
    use parquet::basic::Compression;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    post(&client, &server, json_span(1, now_nanos() - 1_000_000)).await;
    let (_rows, dir) = server.stop().await;
    let files = parquet_files(&dir.path().join("data/spans"));
    assert_eq!(files.len(), 1);

    let file = std::fs::File::open(&files[0]).unwrap();
    let reader = SerializedFileReader::new(file).unwrap();
    let meta = reader.metadata();
    let rg = meta.row_group(0);
    let schema = rg.schema_descr();
    let trace_idx = (0..schema.num_columns())
        .find(|&i| schema.column(i).name() == "trace_id")
        .unwrap();
    for col in rg.columns() {
        assert!(
            matches!(col.compression(), Compression::ZSTD(_)),
            "{} is {:?}",
            col.column_path(),
            col.compression()
        );
    }
    let trace = rg.column(trace_idx);
    assert!(trace.statistics().is_some(), "row-group statistics");
    assert!(
        trace.bloom_filter_offset().is_some(),
        "bloom filter on trace_id"
    );
    assert!(
        trace.column_index_offset().is_some(),
        "page index (column index)"
    );
    assert!(
        trace.offset_index_offset().is_some(),
        "page index (offset index)"
    );
    let span_name_idx = (0..schema.num_columns())
        .find(|&i| schema.column(i).name() == "span_name")
        .unwrap();
    assert!(
        rg.column(span_name_idx).bloom_filter_offset().is_none(),
        "bloom filter only where it pays"
    );
}
