//! SQL meant to take the collector down: deep and long statements, functions
//! asked for gigabytes, queries that run past their timeout. The real binary
//! answers each with a clear error or a bounded run, stays alive, and keeps
//! answering OTLP exports throughout; the embedded CLI and alert SQL rules
//! the same.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::binary::{batch, start_with_env, terminate};
use crate::support::now_nanos;

/// One hostile statement of `n` terms.
fn shape(name: &str, n: usize) -> String {
    let terms =
        |f: &dyn Fn(usize) -> String, sep: &str| (0..n).map(f).collect::<Vec<_>>().join(sep);
    match name {
        "plus" => format!("SELECT {}", vec!["1"; n].join("+")),
        "parens" => format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)),
        "calls" => format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n)),
        "case" => format!(
            "SELECT {}1{}",
            "CASE WHEN true THEN ".repeat(n),
            " END".repeat(n)
        ),
        "subqueries" => format!(
            "SELECT * FROM {}spans{}",
            "(SELECT * FROM ".repeat(n),
            ") t".repeat(n)
        ),
        "or" => format!(
            "SELECT count(*) FROM spans WHERE {}",
            terms(&|i| format!("span_name = 'x{i}'"), " OR ")
        ),
        "and" => format!(
            "SELECT count(*) FROM spans WHERE {}",
            terms(&|i| format!("duration_ms > {i}"), " AND ")
        ),
        "in" => format!(
            "SELECT count(*) FROM spans WHERE span_name IN ({})",
            terms(&|i| format!("'x{i}'"), ",")
        ),
        "union" => vec!["SELECT 1"; n].join(" UNION ALL "),
        "regex" => format!("SELECT 'a' ~ 'a{{{n}}}{{{n}}}{{{n}}}'"),
        "repeat" => format!("SELECT length(repeat('a', {}))", n.pow(3)),
        "levenshtein" => format!("SELECT levenshtein(repeat('a', {n}), repeat('b', {n}))"),
        other => panic!("no shape {other}"),
    }
}

const SHAPES: &[&str] = &[
    "plus",
    "parens",
    "calls",
    "case",
    "subqueries",
    "or",
    "and",
    "in",
    "union",
    "regex",
    "repeat",
    "levenshtein",
];

/// Sizes from harmless to past every bound, up to what fits a request body.
const SIZES: &[usize] = &[10, 300, 3_000, 30_000];

async fn post_query(client: &reqwest::Client, api: &str, sql: &str) -> Result<u16, String> {
    let resp = client
        .post(format!("http://{api}/api/v1/query"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "sql": sql }).to_string())
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// An OTLP/HTTP export answered 200 within an exporter's usual deadline.
async fn export_answered(client: &reqwest::Client, http: &str, n: u64) {
    let resp = client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/json")
        .body(batch(n, now_nanos()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("export {n} not answered: {e}"));
    assert_eq!(resp.status(), 200, "export {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_statement_takes_the_server_down_and_ingest_is_answered_throughout() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (server, http, api) = start_with_env(
        &dir.path().join("data"),
        &[("LLMTRACE_QUERY_TIMEOUT", "5s")],
    );
    let client = reqwest::Client::new();
    export_answered(&client, &http, 0).await;
    let mut exports = 1;
    let mut outcomes = Vec::new();
    for name in SHAPES {
        for &n in SIZES {
            let sql = shape(name, n);
            let status = post_query(&client, &api, &sql)
                .await
                .unwrap_or_else(|e| panic!("{name} x{n}: no answer ({e}): the server died"));
            assert!(
                [200, 400, 408, 413].contains(&status),
                "{name} x{n}: {status}"
            );
            outcomes.push(format!("{name} x{n}: {status}"));
            export_answered(&client, &http, exports).await;
            exports += 1;
        }
    }
    eprintln!("{}", outcomes.join("\n"));
    // Past the bounds, refused as the client's fault, not the server's.
    for (name, n) in [
        ("plus", 3_000),
        ("or", 3_000),
        ("repeat", 3_000),
        ("regex", 1_000),
    ] {
        let status = post_query(&client, &api, &shape(name, n)).await.unwrap();
        assert_eq!(status, 400, "{name} x{n}");
    }
    assert!(terminate(server).await, "clean exit after all of it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_timeout_does_not_hold_ingest() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (server, http, api) = start_with_env(
        &dir.path().join("data"),
        &[("LLMTRACE_QUERY_TIMEOUT", "3s")],
    );
    let client = reqwest::Client::new();
    // Two of them, one per core: every query thread busy.
    let slow = "SELECT count(*) FROM generate_series(1, 100000000000)";
    let queries: Vec<_> = (0..2)
        .map(|_| {
            let (client, api) = (client.clone(), api.clone());
            tokio::spawn(async move { post_query(&client, &api, slow).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..20 {
        export_answered(&client, &http, n).await;
        let health = client
            .get(format!("http://{api}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }
    for q in queries {
        assert_eq!(q.await.unwrap(), Ok(408), "answered at its timeout");
    }
    assert!(terminate(server).await);
}

fn llmtrace(args: &[&str], data: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llmtrace"))
        .args(args)
        .env("LLMTRACE_DATA_DIR", data)
        .output()
        .unwrap()
}

#[test]
fn the_cli_and_alert_rules_refuse_deep_statements_without_dying() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for name in ["plus", "or", "calls", "union"] {
        let sql = shape(name, 3_000);
        let out = llmtrace(
            &["query", "--data-dir", data.to_str().unwrap(), &sql],
            &data,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("query.max_expr_depth") || stderr.contains("RecursionLimitExceeded"),
            "{name}: {stderr}"
        );
    }
    // An alert SQL rule of the same shape: evaluated once, refused, no crash.
    let config = dir.path().join("alerts.toml");
    let rule_sql = format!(
        "SELECT model, {} AS value FROM llm_calls GROUP BY model",
        vec!["1"; 3_000].join("+")
    );
    std::fs::write(
        &config,
        format!(
            "[[alerts.rules]]\nname = \"deep\"\nsql = \"{rule_sql}\"\nop = \">\"\nthreshold = 1.0\n"
        ),
    )
    .unwrap();
    let out = llmtrace(
        &[
            "alerts",
            "check",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &data,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.code().is_some(), "exited, not killed: {text}");
    assert!(text.contains("query.max_expr_depth"), "{text}");
}

/// The smaller points of the review: sums near the end of the type, cut
/// CSV and Arrow answers, a negative size in the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_saturate_cut_answers_say_so_and_bad_sizes_name_their_key() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (server, http, api) = start_with_env(
        &dir.path().join("data"),
        &[("LLMTRACE_QUERY_MAX_ROWS", "5")],
    );
    let client = reqwest::Client::new();
    let now = now_nanos();
    // Three calls near i64::MAX each: their sum passes u64::MAX too.
    for i in 1..=3u64 {
        let body = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": format!("{i:032x}"), "spanId": format!("{i:016x}"), "name": "chat gpt-4o",
        "startTimeUnixNano": (now - 1_000_000).to_string(), "endTimeUnixNano": now.to_string(),
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": (i64::MAX - 1).to_string()}}
        ]}]}]}]});
        let resp = client
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let stats: serde_json::Value = serde_json::from_str(
        &client
            .get(format!("http://{api}/api/v1/stats?window=5m"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        stats["groups"][0]["input_tokens"].as_u64(),
        Some(u64::MAX),
        "saturated, not wrapped: {stats}"
    );

    for accept in ["text/csv", llmtrace::api::ARROW_STREAM, "application/json"] {
        let resp = client
            .post(format!("http://{api}/api/v1/query"))
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(r#"{"sql":"SELECT * FROM generate_series(1, 100)"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()
                .get(llmtrace::api::TRUNCATED_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("true"),
            "{accept}"
        );
    }
    assert!(terminate(server).await);

    let out = Command::new(env!("CARGO_BIN_EXE_llmtrace"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("other"))
        .env("LLMTRACE_INGEST_MEMORY_LIMIT", "-1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ingest.memory_limit") && stderr.contains("-1 is not a size"),
        "{stderr}"
    );
}
