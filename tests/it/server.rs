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
    for f in parquet_files(&server.data_dir()) {
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
    while parquet_files(&server.data_dir()).is_empty() {
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
