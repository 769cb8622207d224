//! Streaming aggregation end to end: live stats, rollups through SQL and the
//! raw spans answer the same percentiles; rollups of two collectors merge to
//! those of one; /metrics counts what came in.

use std::collections::BTreeMap;
use std::path::Path;

use llmtrace::pricing::PriceBook;
use llmtrace::query::{QueryEngine, QueryLimits};
use serde_json::Value;

use crate::support::{load_with, now_nanos, TestServer};

const MINUTE_NS: u64 = 60_000_000_000;

/// Sends `spans` seeded spans starting at `start`, spread over the timeline at
/// `timeline_rate` spans per simulated second.
async fn send(server: &TestServer, spans: u64, seed: u64, start: u64, timeline_rate: f64) -> u64 {
    load_with(server, spans, seed, Some(start), Some(timeline_rate))
        .await
        .acked_spans
}

async fn engine(data_dir: &Path) -> QueryEngine {
    QueryEngine::open(data_dir, &PriceBook::default_book(), QueryLimits::default())
        .await
        .unwrap()
}

/// Every row of `sql` as JSON values.
async fn rows(engine: &QueryEngine, sql: &str) -> Vec<Vec<Value>> {
    let result = engine
        .run(sql)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    let json = llmtrace::query::format::to_json(&result).unwrap();
    serde_json::from_value(json["rows"].clone()).unwrap()
}

async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let resp = reqwest::get(server.api_url(path)).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Nearest-rank quantile, the definition HdrHistogram answers with.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stats_rollups_and_raw_spans_agree_on_percentiles() {
    let server = TestServer::start().await;
    // 30k spans over about 15 minutes of timeline, ending 10 minutes ago.
    let start = now_nanos() - 25 * MINUTE_NS;
    send(&server, 30_000, 7, start, 33.0).await;

    let (status, body) = get(&server, "/api/v1/stats?window=1h&group_by=model").await;
    assert_eq!(status, 200, "{body}");
    let live: Value = serde_json::from_str(&body).unwrap();
    let live: BTreeMap<String, Value> = live["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["model"].as_str().unwrap_or("").to_owned(), g.clone()))
        .collect();
    assert!(live.len() >= 5, "several models: {}", live.len());

    let (_rows, dir) = server.stop().await;
    let data = dir.path().join("data");
    let engine = engine(&data).await;
    let rollups = rows(
        &engine,
        "SELECT coalesce(model, ''), sum(requests), sum(errors), \
         hdr_quantile(hdr_merge(latency_ms_hist), 0.5), \
         hdr_quantile(hdr_merge(latency_ms_hist), 0.99), \
         hdr_count(hdr_merge(latency_ms_hist)), count(DISTINCT minute) \
         FROM rollups GROUP BY 1 ORDER BY 1",
    )
    .await;
    let raw = rows(
        &engine,
        "SELECT coalesce(model, ''), duration_ms, status FROM llm_calls",
    )
    .await;
    let mut by_model: BTreeMap<String, (Vec<f64>, u64)> = BTreeMap::new();
    for r in &raw {
        let e = by_model
            .entry(r[0].as_str().unwrap().to_owned())
            .or_default();
        e.0.push(r[1].as_f64().unwrap());
        e.1 += u64::from(r[2] == "error");
    }
    let names: Vec<_> = rollups
        .iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, by_model.keys().cloned().collect::<Vec<_>>());
    for r in &rollups {
        let model = r[0].as_str().unwrap();
        let (mut durations, errors) = by_model.remove(model).unwrap();
        durations.sort_by(f64::total_cmp);
        let n = durations.len() as u64;
        let (p50, p99) = (r[3].as_f64().unwrap(), r[4].as_f64().unwrap());
        // Counts are exact everywhere.
        assert_eq!(r[1].as_u64(), Some(n), "{model}: rollup requests");
        assert_eq!(r[2].as_u64(), Some(errors), "{model}: rollup errors");
        assert_eq!(r[5].as_u64(), Some(n), "{model}: histogram count");
        assert!(r[6].as_u64().unwrap() >= 10, "{model}: spread over minutes");
        let l = &live[model];
        assert_eq!(l["requests"].as_u64(), Some(n), "{model}: live requests");
        assert_eq!(l["errors"].as_u64(), Some(errors), "{model}: live errors");
        // Live stats and rollups merge the same cells: identical.
        assert_eq!(l["latency_ms"]["p50"].as_f64(), Some(p50), "{model}");
        assert_eq!(l["latency_ms"]["p99"].as_f64(), Some(p99), "{model}");
        // Against the exact nearest-rank value of the raw spans: within the
        // histogram's precision (3 digits: 1/1024 relative) plus rounding to ms.
        for (q, got) in [(0.5, p50), (0.99, p99)] {
            let exact = nearest_rank(&durations, q);
            let tolerance = 0.5 + exact / 1024.0;
            assert!(
                (got - exact).abs() <= tolerance,
                "{model} p{}: histogram {got} vs exact {exact}",
                q * 100.0
            );
        }
    }
}

/// What a set of rollups says per (minute, key): sums and the merged
/// histograms' counts and quantiles.
const MERGED: &str = "SELECT minute, service_name, provider, model, operation, prompt_name, \
     prompt_version, sum(requests), sum(errors), sum(unpriced_calls), sum(input_tokens), \
     sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens), \
     sum(cost_usd), hdr_count(hdr_merge(latency_ms_hist)), \
     hdr_quantile(hdr_merge(latency_ms_hist), 0.5), hdr_quantile(hdr_merge(latency_ms_hist), 0.9), \
     hdr_quantile(hdr_merge(latency_ms_hist), 0.99), hdr_quantile(hdr_merge(latency_ms_hist), 1.0), \
     hdr_count(hdr_merge(ttft_ms_hist)), hdr_quantile(hdr_merge(ttft_ms_hist), 0.5) \
     FROM rollups GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7";

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_of_two_collectors_merge_to_those_of_one() {
    let start = now_nanos() - 40 * MINUTE_NS;
    let (a, b, one) = (
        TestServer::start().await,
        TestServer::start().await,
        TestServer::start().await,
    );
    // The same seeded traffic: half to a, half to b, all of it to `one`.
    send(&a, 8_000, 1, start, 20.0).await;
    send(&b, 8_000, 2, start, 20.0).await;
    send(&one, 8_000, 1, start, 20.0).await;
    send(&one, 8_000, 2, start, 20.0).await;
    let (_, dir_a) = a.stop().await;
    let (_, dir_b) = b.stop().await;
    let (_, dir_one) = one.stop().await;

    let shared = tempfile::tempdir().unwrap();
    for d in [&dir_a, &dir_b] {
        let to = shared.path().join("rollups");
        std::fs::create_dir_all(&to).unwrap();
        copy_tree(&d.path().join("data/rollups"), &to);
    }
    let merged = rows(&engine(shared.path()).await, MERGED).await;
    let single = rows(&engine(&dir_one.path().join("data")).await, MERGED).await;
    assert!(merged.len() > 20, "{} (minute, key) groups", merged.len());
    assert_eq!(merged, single);
}

/// The value of every sample line of `name` (any labels) in Prometheus text.
fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let bare = series.split('{').next()?;
            (bare == name).then(|| (series, value.parse().unwrap()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_spans_rejections_and_genai_calls() {
    let server = TestServer::start().await;
    let acked = send(&server, 2_000, 3, now_nanos() - 5 * MINUTE_NS, 100.0).await;
    let garbage = reqwest::Client::new()
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);

    let (status, text) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    let one = |name: &str| samples(&text, name)[0].1;
    assert_eq!(one("llmtrace_spans_accepted_total"), acked as f64);
    assert_eq!(one("llmtrace_spans_received_total"), acked as f64);
    let rejected = samples(&text, "llmtrace_export_requests_rejected_total");
    assert!(
        rejected.contains(&(
            "llmtrace_export_requests_rejected_total{reason=\"malformed\"}",
            1.0
        )),
        "{rejected:?}"
    );

    let llm_calls = one("llmtrace_llm_calls_total");
    let counts = samples(&text, "gen_ai_client_operation_duration_seconds_count");
    assert!(counts.len() > 3, "series per provider/model/operation");
    assert_eq!(counts.iter().map(|(_, v)| v).sum::<f64>(), llm_calls);
    assert!(
        counts.iter().any(|(s, _)| s.contains("error_type=")),
        "errors labelled"
    );
    // Buckets are cumulative and end at the count.
    let buckets = samples(&text, "gen_ai_client_operation_duration_seconds_bucket");
    let series = counts[0]
        .0
        .trim_start_matches("gen_ai_client_operation_duration_seconds_count");
    let labels = &series[1..series.len() - 1];
    let own: Vec<f64> = buckets
        .iter()
        .filter(|(s, _)| s.contains(&format!("{{{labels},le=")))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(own.len(), 15, "14 semconv bounds and +Inf");
    assert!(own.windows(2).all(|w| w[0] <= w[1]), "{own:?}");
    assert_eq!(*own.last().unwrap(), counts[0].1);
    let tokens = samples(&text, "gen_ai_client_token_usage_count");
    assert!(tokens
        .iter()
        .any(|(s, _)| s.contains("gen_ai_token_type=\"input\"")));
    assert!(tokens
        .iter()
        .any(|(s, _)| s.contains("gen_ai_token_type=\"output\"")));
    assert!(!samples(
        &text,
        "gen_ai_client_operation_time_to_first_chunk_seconds_count"
    )
    .is_empty());

    // The live stats agree with the call count.
    let (_, body) = get(&server, "/api/v1/stats?window=1h").await;
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["groups"][0]["requests"].as_f64(), Some(llm_calls));
    let (status, body) = get(&server, "/api/v1/stats?window=later").await;
    assert_eq!(status, 400);
    assert!(body.contains("window=later"), "{body}");
    let (status, body) = get(&server, "/api/v1/stats?window=1d").await;
    assert_eq!(status, 400);
    assert!(body.contains("rollups"), "{body}");
    server.stop().await;
}
