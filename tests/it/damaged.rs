//! Damaged files on disk, against the real binary: a truncated or garbled
//! span or rollup Parquet file is set aside in `quarantine/` and queries
//! (through the server, and the embedded `llmtrace query`) answer over the
//! rest; compaction and log replay skip it too. A write-ahead log segment
//! damaged in the middle replays every record after the damage and keeps a
//! copy of the damaged bytes; a segment with a garbled header is set aside
//! and the server starts.
//!
//! `IT_LLMTRACE_BIN=/path/to/llmtrace` runs these tests against another
//! build (one from before the fix fails each of them).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;

use crate::binary::{
    api_rows, batch, command, serve_command, spawn_listening, terminate, Server, SPANS_PER_REQUEST,
};
use crate::support::now_nanos;

const HOUR: u64 = 3_600_000_000_000;

/// `serve` on `data` and free ports with `settings`; its HTTP and API
/// addresses, or what it printed if it exited instead of listening.
fn start(data: &Path, settings: &[(&str, &str)]) -> Result<(Server, String, String), String> {
    let mut command = serve_command(data);
    command
        .env("LLMTRACE_QUERY_MAX_ROWS", "10000000")
        .envs(settings.iter().copied());
    // The server's log, beside the data dir, for when a test fails.
    spawn_listening(command, Some(data.with_extension("log")))
        .map(|(server, addrs)| (server, addrs.http, addrs.api))
}

async fn post(http: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The status and body of `sql` through the API.
async fn query(api: &str, sql: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{api}/api/v1/query"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "sql": sql }).to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// The one number `sql` answers, asserting a 200.
async fn number(api: &str, sql: &str) -> i64 {
    let (status, body) = query(api, sql).await;
    assert_eq!(status, 200, "{sql}: {body}");
    body["rows"][0][0].as_i64().unwrap_or(0)
}

async fn metrics(api: &str) -> String {
    reqwest::get(format!("http://{api}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn quarantined_total(metrics: &str, kind: &str) -> u64 {
    let prefix = format!("llmtrace_quarantined_files_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .parse()
        .unwrap()
}

/// Parquet files under `dir`, sorted by name (their names start with the
/// time they were written), temp files left out.
fn parquet_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.map(Result::unwrap) {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".parquet") && !name.starts_with('.') {
                files.push(path);
            }
        }
    }
    files.sort_by_key(|p| p.file_name().unwrap().to_owned());
    files
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

/// Garbles 200 bytes from `at` (every byte changes).
fn garble(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    for (i, b) in bytes[at..at + 200].iter_mut().enumerate() {
        *b ^= 0x80 | (i as u8).wrapping_mul(31);
    }
    std::fs::write(path, &bytes).unwrap();
}

/// Garbles the first page of a Parquet file (its first column's header
/// and data), which a query reading that column cannot decode.
fn garble_first_page(path: &Path) {
    garble(path, 4);
}

/// Where a file under `data` is kept once set aside.
fn quarantined(data: &Path, path: &Path) -> PathBuf {
    data.join("quarantine")
        .join(path.strip_prefix(data).unwrap())
}

/// Rows of a Parquet file, from its footer.
fn rows_in(path: &Path) -> i64 {
    let file = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .metadata()
        .file_metadata()
        .num_rows()
}

/// Sum of the `requests` column of a rollup file.
fn rollup_requests(path: &Path) -> i64 {
    use arrow::array::AsArray;
    let file = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            let column = b.column_by_name("requests").unwrap();
            column
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .flatten()
                .sum::<i64>()
        })
        .sum()
}

/// Reading the first column of every span file (the spans table's first
/// column is trace_id).
const COUNT_SPANS: &str = "SELECT count(trace_id) FROM spans";
const SUM_REQUESTS: &str = "SELECT CAST(sum(requests) AS BIGINT) FROM rollups";
/// Reading the first column of every rollup file.
const COUNT_ROLLUPS: &str = "SELECT count(minute) FROM rollups";

/// The last line of `llmtrace query --data-dir data --format csv sql`,
/// asserting it succeeds.
fn cli_query(data: &Path, sql: &str) -> String {
    let out = command()
        .args(["query", "--data-dir"])
        .arg(data)
        .args(["--format", "csv", sql])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{sql}: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().unwrap_or_default().to_owned()
}

/// A truncated and a garbled span file and a garbled rollup file under a
/// running server; then the embedded CLI over the stopped server's dir;
/// then a restarted server. Each time the queries answer 200 over the rest,
/// and the damaged files are in quarantine/, counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_span_and_rollup_files_are_set_aside_and_queries_answer_over_the_rest() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Compaction off: it would merge the files this test damages.
    let no_compaction = ("LLMTRACE_STORAGE_COMPACT_MIN_FILES", "0");
    let (server, http, api) = start(
        &data,
        &[("LLMTRACE_STORAGE_FLUSH_INTERVAL", "150ms"), no_compaction],
    )
    .expect("serve starts");
    // Three hours back: the minutes are long closed, so each request's LLM
    // calls reach a rollup file at the roller's next tick (5 s). Each
    // request's spans go to two hours, so to a file in each.
    let start_ns = now_nanos() - 3 * HOUR;
    let mut span_files = Vec::new();
    for request in 0..3u64 {
        assert_eq!(post(&http, batch(request, start_ns)).await, 200);
        let want = 2 * (request as usize + 1);
        wait_for("span files", || {
            parquet_under(&data.join("spans")).len() == want
        })
        .await;
        let new: Vec<PathBuf> = parquet_under(&data.join("spans"))
            .into_iter()
            .filter(|p| !span_files.iter().flatten().any(|q| q == p))
            .collect();
        span_files.push(new);
    }
    let total = 3 * SPANS_PER_REQUEST as i64;
    assert_eq!(number(&api, COUNT_SPANS).await, total);
    // Every fifth span is an LLM call.
    let calls = total / 5;
    let deadline = Instant::now() + Duration::from_secs(60);
    while number(&api, SUM_REQUESTS).await != calls {
        assert!(
            Instant::now() < deadline,
            "rollups never counted every call"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rollups = parquet_under(&data.join("rollups"));
    assert!(!rollups.is_empty());

    // The first request's file of the first hour cut in half, the second
    // request's garbled; a rollup file cut in half.
    let hour_a = |files: &Vec<PathBuf>| files.iter().min().unwrap().clone();
    let (cut, garbled) = (hour_a(&span_files[0]), hour_a(&span_files[1]));
    let per_file = (SPANS_PER_REQUEST / 2) as i64;
    truncate(&cut);
    garble_first_page(&garbled);
    let bad_rollup = rollups[0].clone();
    let bad_requests = rollup_requests(&bad_rollup);
    truncate(&bad_rollup);

    assert_eq!(
        number(&api, COUNT_SPANS).await,
        total - 2 * per_file,
        "the query answers over the other files"
    );
    let (status, body) = query(&api, "SELECT * FROM spans").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["row_count"], total - 2 * per_file);
    assert_eq!(number(&api, SUM_REQUESTS).await, calls - bad_requests);
    for (path, what) in [
        (&cut, "truncated"),
        (&garbled, "garbled"),
        (&bad_rollup, "rollup"),
    ] {
        assert!(!path.exists(), "{what} moved away");
        assert!(
            quarantined(&data, path).is_file(),
            "{what} kept in quarantine/"
        );
    }
    let text = metrics(&api).await;
    assert_eq!(quarantined_total(&text, "spans"), 2, "{text}");
    assert_eq!(quarantined_total(&text, "rollups"), 1);
    // Ingest and queries go on.
    assert_eq!(post(&http, batch(3, start_ns)).await, 200);
    assert_eq!(
        number(&api, COUNT_SPANS).await,
        total - 2 * per_file + SPANS_PER_REQUEST as i64
    );
    assert!(terminate(server).await, "clean exit");

    // The embedded CLI, over the stopped server's data dir: a span file and
    // a rollup file garbled.
    let cli_garbled = hour_a(&span_files[2]);
    garble_first_page(&cli_garbled);
    let expected = total - 3 * per_file + SPANS_PER_REQUEST as i64;
    assert_eq!(cli_query(&data, COUNT_SPANS), expected.to_string());
    assert!(quarantined(&data, &cli_garbled).is_file());
    let rollup_rows: i64 = cli_query(&data, COUNT_ROLLUPS).parse().unwrap();
    let newest = parquet_under(&data.join("rollups")).pop().unwrap();
    let newest_rows = rows_in(&newest);
    garble_first_page(&newest);
    assert_eq!(
        cli_query(&data, COUNT_ROLLUPS),
        (rollup_rows - newest_rows).to_string()
    );
    assert!(quarantined(&data, &newest).is_file());

    // A restarted server, with one more span file damaged while it was down.
    let down = span_files[2].iter().max().unwrap().clone();
    truncate(&down);
    let (server, _http, api) = start(&data, &[no_compaction]).expect("serve restarts");
    assert_eq!(number(&api, COUNT_SPANS).await, expected - per_file);
    assert!(quarantined(&data, &down).is_file());
    let text = metrics(&api).await;
    assert_eq!(quarantined_total(&text, "spans"), 1, "{text}");
    drop(server);
}

/// Spans that are not LLM calls (no rollups to keep in step), half in each
/// of two hours.
fn plain_batch(request: u64, start: u64) -> String {
    let spans: Vec<String> = (0..SPANS_PER_REQUEST)
        .map(|i| {
            let id = request * SPANS_PER_REQUEST + i + 1;
            let t = start + (id % 2) * HOUR;
            format!(
                r#"{{"traceId":"{id:032x}","spanId":"{id:016x}","name":"op","startTimeUnixNano":"{t}","endTimeUnixNano":"{}"}}"#,
                t + 5_000
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

fn ids_of(requests: std::ops::Range<u64>) -> HashSet<String> {
    requests
        .flat_map(|r| {
            (0..SPANS_PER_REQUEST).map(move |i| format!("{:016x}", r * SPANS_PER_REQUEST + i + 1))
        })
        .collect()
}

async fn stored_ids(api: &str) -> Vec<String> {
    api_rows(api, "SELECT span_id FROM spans")
        .await
        .iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().map(Result::unwrap) {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A crash between a flush and the log's truncation leaves span files and
/// the log records they hold; replay reads each file's footer to skip those
/// records. A damaged span file's footer is set aside and its records
/// replayed instead: every acknowledged span is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sets_a_damaged_span_file_aside_and_stores_its_spans_again() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start_ns = now_nanos() - 3 * HOUR;
    let long = [("LLMTRACE_STORAGE_FLUSH_INTERVAL", "1h")];
    let (mut server, http, _api) = start(&data, &long).expect("serve starts");
    for request in 0..20 {
        assert_eq!(post(&http, plain_batch(request, start_ns)).await, 200);
    }
    server.0.kill().unwrap();
    let _ = server.0.wait();
    assert!(
        parquet_under(&data.join("spans")).is_empty(),
        "nothing flushed"
    );
    let saved = dir.path().join("wal-saved");
    copy_dir(&data.join("wal"), &saved);

    // Replayed and flushed; then the log is put back as it was, as if the
    // process had died right after the flush.
    let (server, _http, api) = start(&data, &[]).expect("serve restarts");
    assert_eq!(
        stored_ids(&api).await.len(),
        20 * SPANS_PER_REQUEST as usize
    );
    assert!(terminate(server).await);
    let files = parquet_under(&data.join("spans"));
    assert_eq!(files.len(), 2, "{files:?}");
    std::fs::remove_dir_all(data.join("wal")).unwrap();
    copy_dir(&saved, &data.join("wal"));
    truncate(&files[0]);

    let (server, _http, api) = start(&data, &[]).expect("serve restarts");
    let stored = stored_ids(&api).await;
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "a span stored twice");
    assert_eq!(unique, ids_of(0..20), "every acknowledged span, once");
    assert!(quarantined(&data, &files[0]).is_file());
    assert_eq!(quarantined_total(&metrics(&api).await, "spans"), 1);
    drop(server);
}

/// The one write-ahead log segment of `data` (asserted alone).
fn only_segment(data: &Path) -> PathBuf {
    let segments: Vec<PathBuf> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("wal-") && name.ends_with(".log")
        })
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments[0].clone()
}

/// The span ids of each record of a segment, by the record's byte range.
fn records_of(segment: &[u8]) -> Vec<(usize, usize, Vec<String>)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let mut records = Vec::new();
    let mut at = 24; // the segment header
    while at + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        let payload = &segment[at + 8..at + 8 + len];
        let entry = llmtrace::wal::proto::WalEntry::decode(payload).unwrap();
        let request = ExportTraceServiceRequest::decode(entry.otlp_request.as_slice()).unwrap();
        let ids = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.span_id.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        records.push((at, at + 8 + len, ids));
        at += 8 + len;
    }
    records
}

/// The reproduction: 40,000 acknowledged spans in the log of a killed
/// server, 200 bytes garbled in the first third of its segment. The old
/// recovery truncated the segment at the damage and lost every record after
/// it; now only the records the damage touches are not replayed, and the
/// damaged bytes are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_segment_damaged_in_the_middle_replays_every_record_after_the_damage() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start_ns = now_nanos() - 3 * HOUR;
    let long = [("LLMTRACE_STORAGE_FLUSH_INTERVAL", "1h")];
    let (mut server, http, _api) = start(&data, &long).expect("serve starts");
    const REQUESTS: u64 = 800;
    let senders: Vec<_> = (0..4u64)
        .map(|w| {
            let http = http.clone();
            tokio::spawn(async move {
                for r in (w..REQUESTS).step_by(4) {
                    assert_eq!(post(&http, batch(r, start_ns)).await, 200);
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    server.0.kill().unwrap();
    let _ = server.0.wait();
    assert!(
        parquet_under(&data.join("spans")).is_empty(),
        "all in the log"
    );
    let acked = ids_of(0..REQUESTS);
    assert_eq!(acked.len(), 40_000);

    let segment = only_segment(&data);
    let original = std::fs::read(&segment).unwrap();
    let records = records_of(&original);
    assert_eq!(records.len() as u64, REQUESTS, "every request logged once");
    let at = original.len() / 4;
    garble(&segment, at);
    let garbled = std::fs::read(&segment).unwrap();
    let touched: HashSet<String> = records
        .iter()
        .filter(|(start, end, _)| *start < at + 200 && at < *end)
        .flat_map(|(_, _, ids)| ids.iter().cloned())
        .collect();
    assert!(!touched.is_empty() && touched.len() <= 3 * SPANS_PER_REQUEST as usize);

    let (server, http, api) = start(&data, &[]).expect("serve restarts");
    let stored = stored_ids(&api).await;
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "a span stored twice");
    let lost: HashSet<&String> = acked.difference(&unique).collect();
    eprintln!(
        "segment of {} bytes garbled at {at}: {} of {} acknowledged spans replayed, {} lost with the damaged records",
        original.len(),
        unique.len(),
        acked.len(),
        lost.len()
    );
    let outside: Vec<&&String> = lost.iter().filter(|id| !touched.contains(**id)).collect();
    assert!(
        outside.is_empty(),
        "{} acknowledged spans lost outside the records the damage touched ({} touched), e.g. {:?}",
        outside.len(),
        touched.len(),
        &outside[..outside.len().min(5)]
    );
    assert_eq!(
        lost.len(),
        touched.len(),
        "the spans of the records the damage touched are not replayed"
    );
    assert!(unique.is_subset(&acked));

    // The damaged bytes are kept, as they are on disk.
    let kept: Vec<PathBuf> = std::fs::read_dir(data.join("quarantine/wal"))
        .expect("quarantine/wal")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let name = kept[0].file_name().unwrap().to_string_lossy().into_owned();
    let (start, end) = name
        .rsplit_once(".log.")
        .and_then(|(_, r)| r.strip_suffix(".damaged"))
        .and_then(|r| r.split_once('-'))
        .map(|(s, e)| (s.parse::<usize>().unwrap(), e.parse::<usize>().unwrap()))
        .unwrap_or_else(|| panic!("{name}"));
    assert!(start <= at && at + 200 <= end, "{name}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), garbled[start..end]);
    assert_eq!(quarantined_total(&metrics(&api).await, "wal_records"), 1);
    // It takes new spans.
    assert_eq!(post(&http, batch(REQUESTS, start_ns)).await, 200);
    drop(server);
}

/// A garbled segment header used to stop `serve` from starting until the
/// file was removed by hand: now the segment is set aside and it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_segment_with_a_garbled_header_is_set_aside_and_serve_starts() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start_ns = now_nanos() - 3 * HOUR;
    let long = [("LLMTRACE_STORAGE_FLUSH_INTERVAL", "1h")];
    let (mut server, http, _api) = start(&data, &long).expect("serve starts");
    for request in 0..10 {
        assert_eq!(post(&http, plain_batch(request, start_ns)).await, 200);
    }
    server.0.kill().unwrap();
    let _ = server.0.wait();
    let segment = only_segment(&data);
    let before = std::fs::read(&segment).unwrap();
    let mut bytes = before.clone();
    for b in &mut bytes[..24] {
        *b ^= 0xa5;
    }
    std::fs::write(&segment, &bytes).unwrap();

    let (server, http, api) = match start(&data, &[]) {
        Ok(started) => started,
        Err(output) => panic!("serve refused to start:\n{output}"),
    };
    let name = segment.file_name().unwrap();
    let kept = data.join("quarantine/wal").join(name);
    assert_eq!(std::fs::read(&kept).unwrap(), bytes, "kept as it was");
    assert!(!segment.exists(), "moved out of the log");
    assert_eq!(quarantined_total(&metrics(&api).await, "wal_segment"), 1);
    // Its records are not replayed (nothing says whose they are), and the
    // server takes and answers new spans.
    assert_eq!(number(&api, COUNT_SPANS).await, 0);
    assert_eq!(post(&http, plain_batch(10, start_ns)).await, 200);
    assert_eq!(number(&api, COUNT_SPANS).await, SPANS_PER_REQUEST as i64);
    drop(server);
}
