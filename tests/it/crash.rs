//! The real binary killed with SIGKILL mid-stream, restarted on the same data
//! dir, several times over: every span it acknowledged is queryable after the
//! restart, none twice (write-ahead log replay), and the rollups count every
//! LLM call among them exactly once (the log's rollup mark).
//!
//! `LLMTRACE_CRASH_ROUNDS` sets the number of kill/restart rounds (default 3);
//! `scripts/crash_test.sh` runs this test repeatedly.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::binary::{spawn_senders, start, terminate, Acked};
use crate::support::now_nanos;

async fn rows(api: &str, sql: &str) -> Vec<Value> {
    crate::binary::api_rows(api, sql).await
}

async fn stored_span_ids(api: &str) -> Vec<String> {
    rows(api, "SELECT span_id FROM spans")
        .await
        .iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_acknowledged_and_doubles_nothing() {
    llmtrace::install_crypto_provider();
    let rounds: u64 = std::env::var("LLMTRACE_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acked: Acked = Default::default();
    // Half the spans an hour back (minutes long closed: late spans), half
    // now (minutes open when the server is killed).
    let start_ns = now_nanos() - 3_600_000_000_000;
    let mut next_request = 0u64;
    for round in 0..rounds {
        let (mut child, http, api) = start(&data);
        // What the previous round acknowledged is all there, once.
        let stored = stored_span_ids(&api).await;
        let unique: HashSet<&String> = stored.iter().collect();
        assert_eq!(
            unique.len(),
            stored.len(),
            "round {round}: a span stored twice"
        );
        let missing = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|id| !unique.contains(id))
            .count();
        assert_eq!(missing, 0, "round {round}: acknowledged spans lost");

        let url = format!("http://{http}/v1/traces");
        let stop = Arc::new(AtomicBool::new(false));
        let senders = spawn_senders(&url, &acked, next_request, start_ns, &stop);
        next_request += 10_000_000;
        // Kill at a different moment each round; in the second, after the
        // roller's first tick (5 s) wrote rows and moved the rollup mark.
        let tick = if round == 1 { 5_500 } else { 0 };
        tokio::time::sleep(Duration::from_millis(300 + 170 * round + tick)).await;
        child.0.kill().expect("SIGKILL");
        let _ = child.0.wait();
        stop.store(true, Ordering::Relaxed);
        for s in senders {
            s.await.unwrap();
        }
    }
    let (child, _http, api) = start(&data);
    let stored = stored_span_ids(&api).await;
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "a span stored twice");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 1000,
        "the load ran: {} acknowledged",
        acked.len()
    );
    let missing = acked.iter().filter(|id| !unique.contains(id)).count();
    assert_eq!(missing, 0, "acknowledged spans lost");

    // A clean stop writes every open minute; then rollups and spans agree
    // on every minute's calls and tokens.
    assert!(terminate(child).await, "clean exit");
    let (child, _http, api) = start(&data);
    let per_minute = |from: &str| {
        format!(
            "SELECT CAST(minute AS BIGINT), CAST(calls AS BIGINT), CAST(tokens AS BIGINT) FROM ({from}) ORDER BY 1"
        )
    };
    let from_spans = rows(
        &api,
        &per_minute(
            "SELECT date_trunc('minute', start_time) AS minute, count(*) AS calls, \
             sum(input_tokens) AS tokens FROM spans WHERE is_llm GROUP BY 1",
        ),
    )
    .await;
    let from_rollups = rows(
        &api,
        &per_minute(
            "SELECT minute, sum(requests) AS calls, sum(input_tokens) AS tokens \
             FROM rollups GROUP BY minute",
        ),
    )
    .await;
    let calls: i64 = from_spans.iter().map(|r| r[1].as_i64().unwrap()).sum();
    assert!(calls > 0, "LLM calls were sent");
    assert_eq!(
        from_rollups, from_spans,
        "rollups (left) and spans (right) per minute: calls, input tokens"
    );
    eprintln!(
        "crash test: {rounds} SIGKILLs, {} spans acknowledged, {} stored, none lost, none twice; \
         rollups count all {calls} LLM calls once",
        acked.len(),
        stored.len()
    );
    drop(child);
}
