//! SQL over the store: tables over loadgen data, the read-only guard, the
//! timeout and row cap, an empty data dir, and the HTTP endpoint's formats.

use std::time::Duration;

use llmtrace::config::HumanDuration;
use llmtrace::pricing::PriceBook;
use llmtrace::query::{QueryEngine, QueryError, QueryLimits};
use serde_json::Value;

use crate::support::{self, load, Row, TestServer};

/// A data dir with loadgen traffic in it, and the rows as written.
async fn loaded() -> (Vec<Row>, tempfile::TempDir) {
    let server = TestServer::start().await;
    load(&server, 2000, 5, None).await;
    server.stop().await
}

async fn engine(dir: &std::path::Path, limits: QueryLimits) -> QueryEngine {
    QueryEngine::open(dir, &PriceBook::default_book(), limits)
        .await
        .unwrap()
}

async fn scalar(engine: &QueryEngine, sql: &str) -> Value {
    let result = engine
        .run(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let json = llmtrace::query::format::to_json(&result).unwrap();
    json["rows"][0][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_answer_over_the_parquet_files() {
    let (rows, dir) = loaded().await;
    let e = engine(&dir.path().join("data"), QueryLimits::default()).await;
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM spans").await,
        Value::from(rows.len())
    );
    let llm = rows.iter().filter(|r| r.b("is_llm") == Some(true)).count();
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM llm_calls").await,
        Value::from(llm)
    );
    let input: i64 = rows.iter().filter_map(|r| r.i("input_tokens")).sum();
    assert_eq!(
        scalar(&e, "SELECT sum(input_tokens) FROM spans").await,
        Value::from(input)
    );
    assert_eq!(
        scalar(
            &e,
            "SELECT count(DISTINCT tenant) FROM spans WHERE tenant = 'default'"
        )
        .await,
        Value::from(1)
    );
    let priced = scalar(
        &e,
        "SELECT count(*) FROM llm_calls WHERE cost_status = 'priced' AND cost_usd > 0",
    )
    .await;
    assert!(priced.as_u64().unwrap() > 0);
    let models = scalar(&e, "SELECT count(*) FROM prices").await;
    assert!(models.as_u64().unwrap() >= 60);
    // llm_cost re-prices stored token counts: the same answer as ingest gave.
    let differ = scalar(
        &e,
        "SELECT count(*) FROM llm_calls WHERE cost_status = 'priced' AND abs(cost_usd - \
         llm_cost(model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, provider)) > 1e-12",
    )
    .await;
    assert_eq!(differ, Value::from(0));
    assert_eq!(
        scalar(&e, "SELECT llm_cost('no-such-model', 10, 10)").await,
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_read_only_statements_run() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), QueryLimits::default()).await;
    for (sql, names) in [
        ("CREATE TABLE t (a INT)", "CreateMemoryTable"),
        (
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
            "CreateExternalTable",
        ),
        ("CREATE VIEW v AS SELECT 1", "CreateView"),
        ("DROP TABLE spans", "DropTable"),
        ("INSERT INTO spans SELECT * FROM spans", "Insert"),
        ("COPY (SELECT 1) TO '/tmp/llmtrace-copy-test.csv'", "COPY"),
        ("SET datafusion.execution.batch_size = 1", "SetVariable"),
    ] {
        match e.run(sql).await {
            Err(QueryError::Refused(what)) => assert!(what.contains(names), "{sql}: {what}"),
            other => panic!(
                "{sql}: expected a refusal, got {:?}",
                other.map(|r| r.row_count)
            ),
        }
    }
    assert!(!std::path::Path::new("/tmp/llmtrace-copy-test.csv").exists());
    // Paths are not tables.
    assert!(matches!(
        e.run("SELECT * FROM '/etc/passwd'").await,
        Err(QueryError::Invalid(_))
    ));
    assert!(matches!(
        e.run("SELEKT 1").await,
        Err(QueryError::Invalid(_))
    ));
    // Still answering.
    assert_eq!(scalar(&e, "SELECT 1 + 1").await, Value::from(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_missing_data_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), QueryLimits::default()).await;
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM spans").await,
        Value::from(0)
    );
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM llm_calls").await,
        Value::from(0)
    );
    let missing = QueryEngine::open(
        &dir.path().join("nope"),
        &PriceBook::default_book(),
        QueryLimits::default(),
    )
    .await;
    assert!(matches!(missing, Err(QueryError::NoDataDir(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_queries_end_with_a_clear_error() {
    let (_rows, dir) = loaded().await;
    let limits = QueryLimits {
        timeout: Duration::from_millis(50),
        ..QueryLimits::default()
    };
    let e = engine(&dir.path().join("data"), limits).await;
    let err = e
        .run("SELECT count(*) FROM spans a, spans b, spans c WHERE a.span_id < b.span_id")
        .await
        .err()
        .expect("times out");
    assert!(matches!(err, QueryError::Timeout(_)), "{err}");
    assert!(err.to_string().contains("timed out after 50ms"), "{err}");

    let capped = engine(
        &dir.path().join("data"),
        QueryLimits {
            max_rows: 10,
            ..QueryLimits::default()
        },
    )
    .await;
    let result = capped.run("SELECT span_id FROM spans").await.unwrap();
    assert_eq!((result.row_count, result.truncated), (10, true));
}

/// POSTs `sql` to the server's query endpoint and returns the JSON answer.
async fn ask(server: &TestServer, sql: &str) -> Value {
    let text = reqwest::Client::new()
        .post(server.api_url("/api/v1/query"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "sql": sql }).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_are_queryable_before_any_flush() {
    // The default 10 s flush interval: nothing reaches Parquet during the test.
    let server = TestServer::start().await;
    let acked = load(&server, 500, 1, None).await.acked_spans;
    let v = ask(
        &server,
        "SELECT count(*), count(DISTINCT span_id) FROM spans",
    )
    .await;
    assert_eq!(v["rows"][0], serde_json::json!([acked, acked]));
    assert!(
        support::parquet_files(&server.data_dir().join("spans")).is_empty(),
        "answered from the buffer"
    );
    let v = ask(
        &server,
        "SELECT count(*) FROM llm_calls WHERE tenant = 'default'",
    )
    .await;
    assert!(v["rows"][0][0].as_u64().unwrap() > 0, "{v}");
    let (rows, _dir) = server.stop().await;
    assert_eq!(rows.len() as u64, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_see_each_span_once_while_flushes_run() {
    let server = TestServer::start_with(|c| {
        c.storage.flush_interval = HumanDuration(Duration::from_millis(5));
    })
    .await;
    let mut acked = 0;
    for round in 0..25 {
        acked += load(&server, 200, round, None).await.acked_spans;
        let v = ask(
            &server,
            "SELECT count(*), count(DISTINCT trace_id || span_id) FROM spans",
        )
        .await;
        assert_eq!(
            v["rows"][0],
            serde_json::json!([acked, acked]),
            "round {round}"
        );
    }
    let files = support::parquet_files(&server.data_dir().join("spans")).len();
    assert!(files > 1, "flushes ran during the test: {files} files");
    let (rows, _dir) = server.stop().await;
    assert_eq!(rows.len() as u64, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoint_answers_json_csv_and_arrow() {
    let server = TestServer::start().await;
    load(&server, 500, 1, None).await;
    let client = reqwest::Client::new();
    let url = server.api_url("/api/v1/query");
    let post = |sql: &str, accept: &str| {
        client
            .post(&url)
            .header("accept", accept)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "sql": sql }).to_string())
            .send()
    };

    let resp = post(
        "SELECT span_name, count(*) AS n FROM spans GROUP BY span_name ORDER BY n DESC",
        "application/json",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp
        .text()
        .await
        .map(|t| serde_json::from_str::<Value>(&t).unwrap())
        .unwrap();
    assert_eq!(v["columns"][0]["name"], "span_name");
    assert_eq!(
        v["columns"][0]["type"], "Utf8",
        "strings are Utf8 however held"
    );
    assert_eq!(v["columns"][1]["type"], "Int64");
    assert!(v["row_count"].as_u64().unwrap() > 1);
    assert!(v["elapsed_ms"].as_f64().is_some());

    let csv = post("SELECT 1 AS a, 'x' AS b", "text/csv").await.unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv");
    assert_eq!(csv.text().await.unwrap(), "a,b\n1,x\n");

    let arrow = post("SELECT 42 AS answer", llmtrace::api::ARROW_STREAM)
        .await
        .unwrap();
    let bytes = arrow.bytes().await.unwrap();
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .unwrap();
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches[0].num_rows(), 1);

    let refused = post("DROP TABLE spans", "application/json").await.unwrap();
    assert_eq!(refused.status(), 400);
    let v: Value = refused
        .text()
        .await
        .map(|t| serde_json::from_str::<Value>(&t).unwrap())
        .unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("refused: DDL not supported: DropTable"),
        "{v}"
    );

    let bad = client.post(&url).body("not json").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let (_rows, _dir) = server.stop().await;
}

/// `llmtrace query` with a relative data dir, as `./llmtrace-data` (the
/// default) is: span files are read through absolute object-store paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_data_dir_is_queried_like_an_absolute_one() {
    let (rows, dir) = loaded().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmtrace"))
        .current_dir(dir.path())
        .args(["query", "--data-dir", "data", "--format", "csv"])
        .arg("SELECT count(*) FROM spans")
        .env_remove("LLMTRACE_CRASH_ROUNDS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().last(), Some(rows.len().to_string().as_str()));
}
