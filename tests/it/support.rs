//! A collector started in-process on free ports and a temp data dir, and a
//! reader of the Parquet rows it left behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};
use llmtrace::config::Config;
use llmtrace::serve::{self, BoundAddrs, RunningServer};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tempfile::TempDir;

pub struct TestServer {
    server: RunningServer,
    pub addrs: BoundAddrs,
    pub dir: TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        llmtrace::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
        config.server.http_addr = "127.0.0.1:0".parse().unwrap();
        config.server.api_addr = "127.0.0.1:0".parse().unwrap();
        // RSS is the whole test process's, shared by every server of the
        // tests running at once: the memory limit is tested on the real binary.
        config.ingest.memory_limit = llmtrace::config::ByteSize(0);
        adjust(&mut config);
        let server = serve::start(&config).await.expect("server starts");
        let addrs = server.addrs;
        TestServer { server, addrs, dir }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addrs.grpc)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.api)
    }

    /// The Prometheus text of GET /metrics (an open server: no key).
    pub async fn metrics(&self) -> String {
        reqwest::get(self.api_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Shuts the server down (draining and flushing) and returns every stored row.
    pub async fn stop(self) -> (Vec<Row>, TempDir) {
        let data = self.data_dir();
        self.server.shutdown().await.expect("clean shutdown");
        (read_rows(&data), self.dir)
    }
}

/// One stored span row, with the partition values taken from its file path.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub tenant: String,
    pub date: String,
    pub hour: String,
    pub strings: HashMap<String, Option<String>>,
    pub ints: HashMap<String, Option<i64>>,
    pub floats: HashMap<String, Option<f64>>,
    pub bools: HashMap<String, Option<bool>>,
    pub attributes: HashMap<String, String>,
    pub resource_attributes: HashMap<String, String>,
}

impl Row {
    pub fn s(&self, col: &str) -> Option<&str> {
        self.strings
            .get(col)
            .unwrap_or_else(|| panic!("no string column {col}"))
            .as_deref()
    }
    pub fn i(&self, col: &str) -> Option<i64> {
        *self
            .ints
            .get(col)
            .unwrap_or_else(|| panic!("no int column {col}"))
    }
    pub fn f(&self, col: &str) -> Option<f64> {
        *self
            .floats
            .get(col)
            .unwrap_or_else(|| panic!("no float column {col}"))
    }
    pub fn b(&self, col: &str) -> Option<bool> {
        *self
            .bools
            .get(col)
            .unwrap_or_else(|| panic!("no bool column {col}"))
    }
}

pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn partition_value(path: &Path, key: &str) -> String {
    path.components()
        .filter_map(|c| c.as_os_str().to_str())
        .find_map(|c| c.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .unwrap_or_default()
}

fn map_column(batch: &RecordBatch, col: &str, row: usize) -> HashMap<String, String> {
    let map = batch.column_by_name(col).unwrap().as_map();
    let entries = map.value(row);
    let keys = entries.column(0).as_string::<i32>();
    let values = entries.column(1).as_string::<i32>();
    (0..entries.len())
        .map(|i| (keys.value(i).to_owned(), values.value(i).to_owned()))
        .collect()
}

pub fn read_rows(data_dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for path in parquet_files(&data_dir.join("spans")) {
        let file = std::fs::File::open(&path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let schema = batch.schema();
            for i in 0..batch.num_rows() {
                let mut row = Row {
                    tenant: partition_value(&path, "tenant"),
                    date: partition_value(&path, "date"),
                    hour: partition_value(&path, "hour"),
                    ..Default::default()
                };
                for (field, col) in schema.fields().iter().zip(batch.columns()) {
                    let name = field.name().clone();
                    let valid = col.is_valid(i);
                    use arrow::datatypes::DataType as T;
                    match field.data_type() {
                        T::Utf8 => {
                            let v = valid.then(|| col.as_string::<i32>().value(i).to_owned());
                            row.strings.insert(name, v);
                        }
                        T::Int64 => {
                            let v = valid.then(|| col.as_primitive::<Int64Type>().value(i));
                            row.ints.insert(name, v);
                        }
                        T::Timestamp(..) => {
                            let v = valid
                                .then(|| col.as_primitive::<TimestampNanosecondType>().value(i));
                            row.ints.insert(name, v);
                        }
                        T::Float64 => {
                            let v = valid.then(|| col.as_primitive::<Float64Type>().value(i));
                            row.floats.insert(name, v);
                        }
                        T::Boolean => {
                            let v = valid.then(|| col.as_boolean().value(i));
                            row.bools.insert(name, v);
                        }
                        T::Map(..) => {}
                        other => panic!("unexpected column type {other} of {name}"),
                    }
                }
                row.attributes = map_column(&batch, "attributes", i);
                row.resource_attributes = map_column(&batch, "resource_attributes", i);
                rows.push(row);
            }
        }
    }
    rows
}

/// Nanoseconds since the epoch, now.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Sends `spans` spans of seeded loadgen traffic to `server` over gRPC, as
/// fast as it accepts them; `start` fixes the timeline (Unix ns).
pub async fn load(
    server: &TestServer,
    spans: u64,
    seed: u64,
    start: Option<u64>,
) -> llmtrace::loadgen::Report {
    load_with(server, spans, seed, start, None).await
}

/// [`load`], with trace start times spaced at `timeline_rate` spans per
/// simulated second.
pub async fn load_with(
    server: &TestServer,
    spans: u64,
    seed: u64,
    start: Option<u64>,
    timeline_rate: Option<f64>,
) -> llmtrace::loadgen::Report {
    let report = llmtrace::loadgen::run(llmtrace::loadgen::Options {
        endpoint: server.grpc_url(),
        protocol: llmtrace::loadgen::Protocol::Grpc,
        rate: 0,
        duration: std::time::Duration::from_secs(120),
        total_spans: Some(spans),
        seed,
        batch: 100,
        connections: 1,
        pool: 16,
        progress: false,
        start_unix_nano: start,
        timeline_rate,
        api_key: None,
    })
    .await
    .expect("loadgen runs");
    assert_eq!(report.acked_spans, report.sent_spans, "{report}");
    report
}

/// An OTLP/JSON request of `n` chat calls to `model`, failed ones with a
/// rate-limit error.
pub fn llm_calls_json(model: &str, n: u64, failed: bool, seed: u64) -> String {
    let now = now_nanos() - 2_000_000_000;
    let spans: Vec<String> = (0..n)
        .map(|i| {
            let status = if failed {
                r#","status":{"code":2,"message":"rate limited"}"#
            } else {
                ""
            };
            let error = if failed {
                r#",{"key":"error.type","value":{"stringValue":"RateLimitError"}}"#
            } else {
                ""
            };
            format!(
                r#"{{"traceId":"{:032x}","spanId":"{:016x}","name":"chat {model}","kind":3,
                "startTimeUnixNano":"{}","endTimeUnixNano":"{}","attributes":[
                {{"key":"gen_ai.operation.name","value":{{"stringValue":"chat"}}}},
                {{"key":"gen_ai.provider.name","value":{{"stringValue":"openai"}}}},
                {{"key":"gen_ai.request.model","value":{{"stringValue":"{model}"}}}},
                {{"key":"gen_ai.usage.input_tokens","value":{{"intValue":"12"}}}},
                {{"key":"gen_ai.usage.output_tokens","value":{{"intValue":"3"}}}}{error}]{status}}}"#,
                seed * 1000 + i + 1,
                seed * 1000 + i + 1,
                now + i,
                now + i + 300_000_000
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"chatbot"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}
