//! Overload: when the buffer cannot drain, exports are refused with retry
//! hints (HTTP 503 + Retry-After + RetryInfo, gRPC UNAVAILABLE + RetryInfo),
//! and every span that was acknowledged is stored once the store recovers.

use std::collections::BTreeSet;
use std::time::Duration;

use llmtrace::config::{ByteSize, HumanDuration};
use llmtrace::ingest::grpc::{RetryInfo, RpcStatus};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::Value;

use crate::support::{now_nanos, TestServer};

/// One OTLP/JSON request of 50 spans with ids from `first`.
fn request(first: u64) -> String {
    let start = now_nanos() - 1_000_000_000;
    let spans: Vec<String> = (first..first + 50)
        .map(|i| {
            format!(
                r#"{{"traceId":"{i:032x}","spanId":"{i:016x}","name":"work","startTimeUnixNano":"{start}","endTimeUnixNano":"{}","attributes":[{{"key":"payload","value":{{"stringValue":"{}"}}}}]}}"#,
                start + 1000,
                "x".repeat(200)
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

/// POSTs [`request`]`(first)` to the server's OTLP/HTTP endpoint.
async fn export(client: &reqwest::Client, server: &TestServer, first: u64) -> reqwest::Response {
    client
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/json")
        .body(request(first))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_retry_hints_and_nothing_acknowledged_is_lost() {
    let server = TestServer::start_with(|c| {
        c.storage.flush_bytes = ByteSize(64 << 10);
        c.ingest.max_buffer_bytes = ByteSize(256 << 10);
        c.storage.flush_interval = HumanDuration(Duration::from_millis(100));
    })
    .await;
    // A file where the spans directory should be: every flush fails, so the
    // buffer can only fill up.
    let spans_dir = server.data_dir().join("spans");
    std::fs::write(&spans_dir, b"not a directory").unwrap();

    let client = reqwest::Client::new();
    let mut acked = BTreeSet::new();
    let mut refused = None;
    for n in 0..2_000u64 {
        let first = n * 50 + 1;
        let resp = export(&client, &server, first).await;
        match resp.status().as_u16() {
            200 => acked.extend(first..first + 50),
            503 => {
                refused = Some(resp);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let refused = refused.expect("the buffer filled up and requests were refused");
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], 14, "UNAVAILABLE: {body}");
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    assert_eq!(body["details"][0]["retryDelay"], "1s");
    assert!(!acked.is_empty());

    // gRPC clients hear UNAVAILABLE with a RetryInfo detail.
    let mut grpc = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    let status = grpc
        .export(ExportTraceServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let details = RpcStatus::decode(status.details()).unwrap();
    assert_eq!(details.code, 14);
    assert_eq!(
        details.details[0].type_url,
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    let info = RetryInfo::decode(details.details[0].value.as_slice()).unwrap();
    assert_eq!(info.retry_delay.unwrap().seconds, 1);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("llmtrace_export_requests_rejected_total{reason=\"overloaded\"} 2"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("llmtrace_flush_failures_total 0"),
        "flushes failed"
    );

    // The store recovers: the acknowledged spans are all written, once.
    std::fs::remove_file(&spans_dir).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while crate::support::read_rows(&server.data_dir()).len() < acked.len() {
        assert!(std::time::Instant::now() < deadline, "buffer did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = export(&client, &server, 1_000_000).await;
    assert_eq!(ok.status(), 200, "accepting again");
    acked.extend(1_000_000..1_000_050);
    let (rows, _dir) = server.stop().await;
    let stored: Vec<u64> = rows
        .iter()
        .map(|r| u64::from_str_radix(r.s("span_id").unwrap(), 16).unwrap())
        .collect();
    assert_eq!(stored.len(), acked.len(), "no span twice");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), acked);
}

/// Requests in flight are bounded by the memory they hold: while one body
/// that has sent about the whole `max_in_flight_bytes` is still arriving,
/// other exports are refused with retry hints over both protocols, before
/// their bodies are kept; once it is done, they are accepted again. (What a
/// body declares is not charged, only what it has sent: see the
/// `hostile_clients` tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded_by_memory_and_refused_with_retry_hints() {
    use tokio::io::AsyncWriteExt;

    let server = TestServer::start_with(|c| {
        c.ingest.max_in_flight_bytes = ByteSize(1 << 20);
    })
    .await;
    let client = reqwest::Client::new();

    // A slow client: a 1 MiB gzip body declared, 900 KiB of it sent, then
    // nothing. Its buffer grows by doubling, to the whole 1 MiB.
    let mut slow = tokio::net::TcpStream::connect(server.addrs.http)
        .await
        .unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: llmtrace\r\ncontent-type: application/x-protobuf\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
        1 << 20
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&vec![0u8; 900 << 10]).await.unwrap();
    slow.flush().await.unwrap();
    // Time for the server to read it: an export growing meanwhile could
    // take budget the slow body then finds spent (and is refused for).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Until the server has admitted it, others still get in.
    let mut refused = None;
    for i in 0..100 {
        let resp = export(&client, &server, 10_000 + i * 50).await;
        if resp.status() == 503 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("the slow body holds the whole in-flight budget");
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], 14, "UNAVAILABLE: {body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("of requests are being decoded (limit 1048576)"),
        "{message}"
    );
    assert_eq!(body["details"][0]["retryDelay"], "1s");

    // gRPC: UNAVAILABLE with RetryInfo.
    let mut grpc = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    let json = request(1_000);
    let proto = llmtrace::ingest::otlp_json::decode(json.as_bytes()).unwrap();
    let status = grpc.export(proto.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("being decoded"), "{status:?}");
    let details = RpcStatus::decode(status.details()).unwrap();
    let info = RetryInfo::decode(details.details[0].value.as_slice()).unwrap();
    assert_eq!(info.retry_delay.unwrap().seconds, 1);

    // The slow client gives up; its memory is given back and exports are
    // accepted again.
    drop(slow);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = export(&client, &server, 2_000).await;
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 503);
        assert!(std::time::Instant::now() < deadline, "budget never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    grpc.export(proto).await.expect("gRPC accepted again");

    let metrics = server.metrics().await;
    let overloaded: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("llmtrace_export_requests_rejected_total{reason=\"overloaded\"} ")
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(overloaded >= 2, "{overloaded} refusals counted");
    let (rows, _dir) = server.stop().await;
    let ids: BTreeSet<&str> = rows.iter().filter_map(|r| r.s("span_id")).collect();
    // Every acknowledged request's spans, each once.
    assert_eq!(ids.len(), rows.len(), "no span twice");
    assert!(ids.contains(format!("{:016x}", 2_000).as_str()));
    assert!(ids.contains(format!("{:016x}", 1_000).as_str()));
}

/// One export to a real binary with small budgets and `memory_limit`.
async fn export_with_memory_limit(dir: &std::path::Path, memory_limit: &str) -> reqwest::Response {
    let settings = [
        ("LLMTRACE_STORAGE_FLUSH_BYTES", "4MiB"),
        ("LLMTRACE_INGEST_MAX_BUFFER_BYTES", "4MiB"),
        ("LLMTRACE_INGEST_MAX_IN_FLIGHT_BYTES", "1MiB"),
        ("LLMTRACE_INGEST_MEMORY_LIMIT", memory_limit),
    ];
    let (_server, http, _) = crate::binary::start_with_env(dir, &settings);
    reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/json")
        .body(request(1))
        .send()
        .await
        .unwrap()
}

/// The real binary refuses exports while its resident memory is within the
/// in-flight budget (and 32 MiB) of `ingest.memory_limit`, whatever holds the
/// memory: a limit below what the idle process already takes refuses every
/// export, with a retry hint naming the limit; a roomy one accepts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_exports_while_its_rss_is_near_the_memory_limit() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let resp = export_with_memory_limit(&dir.path().join("a"), "5MiB").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("resident (near ingest.memory_limit)")
            && message.contains("(limit 5242880)"),
        "{message}"
    );
    let resp = export_with_memory_limit(&dir.path().join("b"), "4GiB").await;
    assert_eq!(resp.status(), 200);
}
