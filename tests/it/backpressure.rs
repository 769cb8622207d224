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
        let resp = client
            .post(server.http_url("/v1/traces"))
            .header("content-type", "application/json")
            .body(request(first))
            .send()
            .await
            .unwrap();
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

    let metrics = reqwest::get(server.api_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let ok = client
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/json")
        .body(request(1_000_000))
        .send()
        .await
        .unwrap();
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
