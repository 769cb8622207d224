//! loadgen against a real collector, over every protocol: what it reports as
//! acknowledged is what lands on disk, LLM calls are recognised, and the
//! demo's summary reads the same files.

use std::time::Duration;

use llmtrace::loadgen::{self, Options, Protocol};

use crate::support::TestServer;

async fn run(protocol: Protocol) {
    let server = TestServer::start().await;
    let endpoint = match protocol {
        Protocol::Grpc => server.grpc_url(),
        _ => server.http_url(""),
    };
    let report = loadgen::run(Options {
        endpoint,
        protocol,
        rate: 0,
        duration: Duration::from_secs(60),
        total_spans: Some(3000),
        seed: 11,
        batch: 100,
        connections: 2,
        pool: 8,
        progress: false,
        start_unix_nano: None,
        timeline_rate: None,
        api_key: None,
    })
    .await
    .expect("loadgen runs");
    assert_eq!(report.failed_requests, 0, "{report}");
    assert_eq!(report.rejected_spans, 0, "{report}");
    assert!(report.sent_spans >= 3000, "{report}");
    assert_eq!(report.acked_spans, report.sent_spans);

    let (rows, dir) = server.stop().await;
    assert_eq!(
        rows.len() as u64,
        report.acked_spans,
        "every acknowledged span stored"
    );
    let mut ids: Vec<_> = rows.iter().map(|r| r.s("span_id").unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "replayed spans get fresh ids");
    let llm = rows.iter().filter(|r| r.b("is_llm") == Some(true)).count();
    assert!(
        llm > rows.len() / 10,
        "LLM calls recognised: {llm} of {}",
        rows.len()
    );
    assert!(
        rows.iter()
            .any(|r| r.s("error_type") == Some("rate_limited")),
        "some calls are rate limited"
    );

    let summary = llmtrace::demo::summarise(&dir.path().join("data")).unwrap();
    assert_eq!(summary.spans, rows.len() as u64);
    let calls: u64 = summary.by_model.values().map(|m| m.calls).sum();
    assert_eq!(calls, llm as u64);
    let table = llmtrace::demo::render(&summary);
    assert!(table.contains("gpt-4o-mini (openai)"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc() {
    run(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_protobuf() {
    run(Protocol::HttpProto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_json() {
    run(Protocol::HttpJson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_at_the_requested_rate() {
    let server = TestServer::start().await;
    let report = loadgen::run(Options {
        endpoint: server.grpc_url(),
        protocol: Protocol::Grpc,
        rate: 2000,
        duration: Duration::from_secs(2),
        batch: 100,
        progress: false,
        ..Options::default()
    })
    .await
    .unwrap();
    // rate x duration spans, sent over (about) the duration, not in a burst.
    assert!((4000..4300).contains(&report.sent_spans), "{report}");
    assert!(report.elapsed >= Duration::from_millis(1800), "{report}");
    let (rows, _dir) = server.stop().await;
    assert_eq!(rows.len() as u64, report.acked_spans);
}
