//! `llmtrace demo`: a collector on a fresh data dir, loadgen traffic for a
//! short while, then what a user wants to see first: calls, latency
//! percentiles, error rate, tokens and cost by model, read back from the
//! Parquet files that were written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::config::{Config, HumanDuration};
use crate::loadgen::{self, Protocol};
use crate::serve;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    #[error(transparent)]
    Loadgen(#[from] loadgen::LoadgenError),
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
}

pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub duration: Duration,
    pub rate: u64,
    pub seed: u64,
}

/// Per-model figures of the LLM calls in a data dir (by requested model).
#[derive(Default, Debug, Clone, PartialEq)]
pub struct ModelStats {
    pub provider: String,
    pub calls: u64,
    pub errors: u64,
    pub latencies_ms: Vec<f64>,
    pub ttfts_ms: Vec<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub unpriced: u64,
}

/// Spans and LLM calls found in a data dir.
#[derive(Default, Debug)]
pub struct Summary {
    pub spans: u64,
    pub by_model: BTreeMap<String, ModelStats>,
}

/// Exact percentile (nearest rank) of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn span_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            span_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
}

const COLUMNS: &[&str] = &[
    "is_llm",
    "request_model",
    "model",
    "provider",
    "duration_ms",
    "status",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "ttft_ms",
];

fn add_batch(summary: &mut Summary, batch: &RecordBatch) {
    let col = |name: &str| batch.column_by_name(name).expect("projected column");
    let is_llm = col("is_llm").as_boolean();
    let requested = col("request_model").as_string::<i32>();
    let model = col("model").as_string::<i32>();
    let provider = col("provider").as_string::<i32>();
    let duration = col("duration_ms").as_primitive::<Float64Type>();
    let status = col("status").as_string::<i32>();
    let input = col("input_tokens").as_primitive::<Int64Type>();
    let output = col("output_tokens").as_primitive::<Int64Type>();
    let cost = col("cost_usd").as_primitive::<Float64Type>();
    let ttft = col("ttft_ms").as_primitive::<Float64Type>();
    summary.spans += batch.num_rows() as u64;
    for i in 0..batch.num_rows() {
        if !is_llm.value(i) {
            continue;
        }
        // By the model asked for, so failed calls (which have no response
        // model) count against the model that failed.
        let name = if requested.is_valid(i) {
            requested.value(i)
        } else if model.is_valid(i) {
            model.value(i)
        } else {
            "(unknown)"
        };
        let m = summary.by_model.entry(name.to_owned()).or_default();
        if m.provider.is_empty() && provider.is_valid(i) {
            m.provider = provider.value(i).to_owned();
        }
        m.calls += 1;
        m.errors += u64::from(status.value(i) == "error");
        m.latencies_ms.push(duration.value(i));
        if ttft.is_valid(i) {
            m.ttfts_ms.push(ttft.value(i));
        }
        if input.is_valid(i) {
            m.input_tokens += input.value(i).max(0) as u64;
        }
        if output.is_valid(i) {
            m.output_tokens += output.value(i).max(0) as u64;
        }
        if cost.is_valid(i) {
            m.cost_usd += cost.value(i);
        } else {
            m.unpriced += 1;
        }
    }
}

/// Reads every span file under `data_dir` into a per-model summary.
pub fn summarise(data_dir: &Path) -> Result<Summary, DemoError> {
    let mut files = Vec::new();
    span_files(&data_dir.join("spans"), &mut files);
    let mut summary = Summary::default();
    for path in files {
        let err = |message: String| DemoError::Read {
            path: path.clone(),
            message,
        };
        let file = std::fs::File::open(&path).map_err(|e| err(e.to_string()))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(e.to_string()))?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), COLUMNS.iter().copied());
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| err(e.to_string()))?;
        for batch in reader {
            add_batch(&mut summary, &batch.map_err(|e| err(e.to_string()))?);
        }
    }
    for m in summary.by_model.values_mut() {
        m.latencies_ms.sort_by(f64::total_cmp);
        m.ttfts_ms.sort_by(f64::total_cmp);
    }
    Ok(summary)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Width of the model column.
const LABEL: usize = 48;

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// The summary as a table, most-called model first.
pub fn render(summary: &Summary) -> String {
    let mut rows: Vec<(&String, &ModelStats)> = summary.by_model.iter().collect();
    rows.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(b.0)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<LABEL$} {:>7} {:>7} {:>8} {:>8} {:>9} {:>12} {:>12} {:>12}",
        "model (provider)",
        "calls",
        "errors",
        "p50 ms",
        "p99 ms",
        "ttft p50",
        "input tok",
        "output tok",
        "cost USD"
    );
    let mut total = ModelStats::default();
    for (model, m) in rows {
        let mut label = format!(
            "{model} ({})",
            if m.provider.is_empty() {
                "?"
            } else {
                &m.provider
            }
        );
        if label.chars().count() > LABEL {
            label = label.chars().take(LABEL - 1).collect::<String>() + "…";
        }
        let cost = if m.unpriced == m.calls {
            "unpriced".to_owned()
        } else if m.unpriced > 0 {
            format!("{:.4} +{} unpriced", m.cost_usd, m.unpriced)
        } else {
            format!("{:.4}", m.cost_usd)
        };
        let _ = writeln!(
            out,
            "{:<LABEL$} {:>7} {:>6.1}% {:>8} {:>8} {:>9} {:>12} {:>12} {:>12}",
            label,
            thousands(m.calls),
            100.0 * m.errors as f64 / m.calls.max(1) as f64,
            ms(percentile(&m.latencies_ms, 0.5)),
            ms(percentile(&m.latencies_ms, 0.99)),
            ms(percentile(&m.ttfts_ms, 0.5)),
            thousands(m.input_tokens),
            thousands(m.output_tokens),
            cost
        );
        total.calls += m.calls;
        total.errors += m.errors;
        total.input_tokens += m.input_tokens;
        total.output_tokens += m.output_tokens;
        total.cost_usd += m.cost_usd;
        total.unpriced += m.unpriced;
    }
    let _ = writeln!(
        out,
        "{:<LABEL$} {:>7} {:>6.1}% {:>8} {:>8} {:>9} {:>12} {:>12} {:>12}",
        "all models",
        thousands(total.calls),
        100.0 * total.errors as f64 / total.calls.max(1) as f64,
        "",
        "",
        "",
        thousands(total.input_tokens),
        thousands(total.output_tokens),
        if total.unpriced == total.calls {
            "unpriced".to_owned()
        } else if total.unpriced > 0 {
            format!("{:.4} +{} unpriced", total.cost_usd, total.unpriced)
        } else {
            format!("{:.4}", total.cost_usd)
        }
    );
    out
}

/// Runs the demo and returns what to print.
pub async fn run(opts: DemoOptions) -> Result<String, DemoError> {
    let mut config = Config {
        data_dir: opts.data_dir.clone(),
        ..Config::default()
    };
    config.server.grpc_addr = "127.0.0.1:0".parse().expect("valid address");
    config.server.http_addr = "127.0.0.1:0".parse().expect("valid address");
    config.server.api_addr = "127.0.0.1:0".parse().expect("valid address");
    config.storage.flush_interval = HumanDuration(Duration::from_secs(2));
    let server = serve::start(&config).await?;
    let grpc = server.addrs.grpc;
    eprintln!(
        "llmtrace demo: collector on grpc={} http={}, data in {}",
        server.addrs.grpc,
        server.addrs.http,
        opts.data_dir.display()
    );
    eprintln!(
        "sending {} spans/s of simulated LLM traffic for {} ...",
        opts.rate,
        humantime::format_duration(opts.duration)
    );
    let report = loadgen::run(loadgen::Options {
        endpoint: format!("http://{grpc}"),
        protocol: Protocol::Grpc,
        rate: opts.rate,
        duration: opts.duration,
        seed: opts.seed,
        progress: true,
        ..loadgen::Options::default()
    })
    .await;
    // Flush whatever was acknowledged, even if the load failed part way.
    server.shutdown().await?;
    let report = report?;
    let summary = summarise(&opts.data_dir)?;

    let dir = opts.data_dir.display();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} spans sent, {} acknowledged and written to Parquet; {} spans on disk, {} of them LLM calls.\n",
        thousands(report.sent_spans),
        thousands(report.acked_spans),
        thousands(summary.spans),
        thousands(summary.by_model.values().map(|m| m.calls).sum())
    );
    out.push_str(&render(&summary));
    let _ = writeln!(
        out,
        "\nThe data is kept in {dir}. Try next:\n\
         \x20 llmtrace serve --data-dir {dir}        # keep collecting into the same store\n\
         \x20 llmtrace loadgen --rate 5000 --duration 30s   # more traffic, against a running serve\n\
         \x20 duckdb -c \"SELECT model, count(*) calls, quantile_cont(duration_ms, 0.99) p99_ms, sum(input_tokens) input\n\
         \x20            FROM read_parquet('{dir}/spans/**/*.parquet', hive_partitioning=true)\n\
         \x20            WHERE is_llm GROUP BY model ORDER BY calls DESC\"\n\
         Point your own app's OpenTelemetry SDK at http://127.0.0.1:4318 (OTLP/HTTP) or :4317 (gRPC); see README.md."
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
