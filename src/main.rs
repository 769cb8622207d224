//! Command line: parse, load config, dispatch. Nothing else lives here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use llmtrace::config::Config;

/// glibc's allocator spent about a third of ingest CPU in malloc/free
/// (many small strings per span, freed on other threads); mimalloc is much
/// cheaper for that pattern. Measured in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "llmtrace",
    version,
    about = "OpenTelemetry trace collector for LLM applications"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector: OTLP gRPC and HTTP receivers, Parquet storage, API.
    Serve(ServeArgs),
    /// Send realistic, seeded LLM traffic to a collector over OTLP.
    Loadgen(LoadgenArgs),
    /// See llmtrace work in a minute: a collector, simulated traffic, a summary.
    Demo(DemoArgs),
    /// The price book.
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Run read-only SQL over the trace store (tables spans, llm_calls, prices).
    Query(QueryArgs),
    /// Run a canned report (queries/*.sql) over a time range; --list shows them.
    Report(ReportArgs),
    /// Alert rules.
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// API keys.
    #[command(subcommand)]
    Auth(AuthCommand),
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Print the SHA-256 of an API key, for `key_sha256` in [[auth.keys]]
    /// (the config then holds no working key).
    HashKey {
        /// The key; at least 16 characters.
        key: String,
    },
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// Validate the alert rules of a config file and evaluate each once over
    /// a data dir (metric rules read its rollups, SQL rules its tables);
    /// prints every rule's series and states. Nothing is sent or written.
    Check {
        /// Config file with [alerts] (and its rules_file).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Data dir to evaluate over [default: the config's data_dir].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Report name, e.g. latency_by_model (see --list).
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// List the reports and what each answers.
    #[arg(long)]
    list: bool,
    /// Start of the range, as a duration back from --until (e.g. 24h, 7d).
    #[arg(long, default_value = "24h")]
    since: humantime::Duration,
    /// End of the range (RFC 3339) [default: now].
    #[arg(long)]
    until: Option<humantime::Timestamp>,
    #[command(flatten)]
    target: QueryTarget,
}

#[derive(clap::Args)]
struct QueryArgs {
    /// The SQL statement, e.g. "SELECT model, count(*) FROM llm_calls GROUP BY model".
    sql: String,
    #[command(flatten)]
    target: QueryTarget,
}

/// Where a query runs and how its answer is printed.
#[derive(clap::Args)]
struct QueryTarget {
    /// Query this data dir directly, no server needed [default: ./llmtrace-data].
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    data_dir: Option<PathBuf>,
    /// Query a running server's API instead, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// table, json or csv.
    #[arg(long, default_value = "table")]
    format: String,
    /// Config file (price book, query limits, data dir).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// API key for --server (sent as a Bearer token).
    #[arg(
        long,
        env = "LLMTRACE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,
}

#[derive(Subcommand)]
enum PricesCommand {
    /// Show which price entry a model name matches, and what an example call costs.
    Lookup {
        /// Model name as a span reports it (e.g. gpt-4o-2024-08-06, us.anthropic.claude-sonnet-4-5-20250929-v1:0).
        model: String,
        /// Provider (semconv name, e.g. aws.bedrock) when the price depends on the host.
        #[arg(long)]
        provider: Option<String>,
        /// Config file whose `pricing.file` is layered over the shipped book.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// text or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
}

#[derive(clap::Args)]
struct DemoArgs {
    /// How long to send traffic.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// Spans per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seed of the traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to keep the data [default: a new directory under the system temp dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct LoadgenArgs {
    /// Collector endpoint: http://host:4317 for grpc, http://host:4318 for http-*.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    endpoint: String,
    /// grpc, http-proto or http-json.
    #[arg(long, default_value = "grpc")]
    protocol: llmtrace::loadgen::Protocol,
    /// Spans per second; 0 sends as fast as the server accepts.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to send, e.g. 30s, 5m.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// Stop after this many spans [default: rate x duration].
    #[arg(long)]
    spans: Option<u64>,
    /// Seed of the traffic: the same seed sends the same traces.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Spans per request (whole traces, so a request may hold a few more).
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Distinct requests encoded up front and replayed with fresh ids and times.
    #[arg(long, default_value_t = 128)]
    pool: usize,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Start time of the first trace (RFC 3339, e.g. 2026-01-15T10:00:00Z)
    /// [default: so the traffic ends now]. Fixed, the data is the same on every run.
    #[arg(long)]
    start: Option<humantime::Timestamp>,
    /// Spans per second of simulated time, spacing trace start times
    /// [default: --rate, or 100000 when unlimited]; e.g. 2 spreads 5M spans
    /// over 29 days of timeline.
    #[arg(long, value_name = "SPANS_PER_S")]
    timeline_rate: Option<f64>,
    /// API key for collectors that require one (sent as a Bearer token).
    #[arg(
        long,
        env = "LLMTRACE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (see deploy/llmtrace.example.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where spans are stored [default: ./llmtrace-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// OTLP/HTTP listen address [default: 127.0.0.1:4318].
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<SocketAddr>,
    /// API listen address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    api_addr: Option<SocketAddr>,
}

impl ServeArgs {
    fn config(&self) -> Result<Config, llmtrace::config::ConfigError> {
        let mut config = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(a) = self.grpc_addr {
            config.server.grpc_addr = a;
        }
        if let Some(a) = self.http_addr {
            config.server.http_addr = a;
        }
        if let Some(a) = self.api_addr {
            config.server.api_addr = a;
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    llmtrace::disable_transparent_huge_pages();
    llmtrace::install_crypto_provider();
    let cli = Cli::parse();
    // The demo prints its own story; the server's info logs would drown it.
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LLMTRACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Prices(PricesCommand::Lookup {
            model,
            provider,
            config,
            format,
        }) => prices_lookup(&model, provider.as_deref(), config.as_deref(), &format),
        Command::Query(args) => query(args),
        Command::Auth(AuthCommand::HashKey { key }) => {
            if key.len() < 16 {
                eprintln!("llmtrace: a key must be at least 16 characters");
                return ExitCode::from(2);
            }
            println!("{}", llmtrace::auth::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::Alerts(AlertsCommand::Check { config, data_dir }) => {
            alerts_check(&config, data_dir)
        }
        Command::Report(args) => report(args),
        Command::Demo(args) => match demo(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
        Command::Loadgen(args) => match loadgen(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
        Command::Serve(args) => {
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("llmtrace: {e}");
                    return ExitCode::from(2);
                }
            };
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn loadgen(args: LoadgenArgs) -> anyhow::Result<()> {
    let options = llmtrace::loadgen::Options {
        endpoint: args.endpoint,
        protocol: args.protocol,
        rate: args.rate,
        duration: args.duration.into(),
        total_spans: args.spans,
        seed: args.seed,
        batch: args.batch,
        connections: args.connections,
        pool: args.pool,
        progress: !args.quiet,
        start_unix_nano: args
            .start
            .map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .map_err(|_| anyhow::anyhow!("--start before 1970"))
            })
            .transpose()?,
        timeline_rate: args.timeline_rate,
        api_key: args.api_key,
    };
    let report = runtime()?.block_on(llmtrace::loadgen::run(options))?;
    print!("{report}");
    if report.acked_spans == 0 && report.sent_spans > 0 {
        anyhow::bail!("the collector acknowledged nothing");
    }
    Ok(())
}

fn report(args: ReportArgs) -> ExitCode {
    use llmtrace::query::reports;
    if args.list {
        for (name, text) in reports::REPORTS {
            println!("{name:<20} {}", reports::description(text));
        }
        return ExitCode::SUCCESS;
    }
    let name = args.name.unwrap_or_default();
    let until: std::time::SystemTime = args
        .until
        .map(Into::into)
        .unwrap_or_else(std::time::SystemTime::now);
    let since = until - std::time::Duration::from(args.since);
    let Some(sql) = reports::sql(&name, since, until) else {
        eprintln!("llmtrace: no report {name:?}; `llmtrace report --list` shows them");
        return ExitCode::from(2);
    };
    query(QueryArgs {
        sql,
        target: args.target,
    })
}

fn query(QueryArgs { sql, target: args }: QueryArgs) -> ExitCode {
    use llmtrace::query::{format, QueryEngine, QueryError};
    if !["table", "json", "csv"].contains(&args.format.as_str()) {
        eprintln!(
            "llmtrace: --format {:?}: use table, json or csv",
            args.format
        );
        return ExitCode::from(2);
    }
    let config = match Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("llmtrace: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("llmtrace: {e:#}");
            return ExitCode::from(1);
        }
    };
    if let Some(server) = args.server {
        return runtime.block_on(query_server(
            &server,
            &sql,
            &args.format,
            args.api_key.as_deref(),
        ));
    }
    let data_dir = args.data_dir.unwrap_or(config.data_dir.clone());
    let outcome: Result<String, QueryError> = runtime.block_on(async {
        let book = llmtrace::pricing::PriceBook::load(config.pricing.file())
            .map_err(|e| QueryError::Failed(e.to_string()))?;
        let engine = QueryEngine::open(&data_dir, &book, config.query.limits()).await?;
        let result = engine.run(&sql).await?;
        if result.truncated && args.format == "csv" {
            // CSV has no room for it; the table and JSON say it themselves.
            eprintln!("{TRUNCATED_NOTE}");
        }
        let text = match args.format.as_str() {
            "json" => format::to_json(&result).map(|v| format!("{v:#}\n")),
            "csv" => format::to_csv(&result).map(|b| String::from_utf8_lossy(&b).into_owned()),
            _ => format::to_table(&result),
        };
        text.map_err(|e| QueryError::Failed(e.to_string()))
    });
    match outcome {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("llmtrace: {e}");
            ExitCode::from(if e.is_client_error() { 2 } else { 1 })
        }
    }
}

/// `llmtrace alerts check`: exit 0 when every rule is valid and evaluated,
/// 2 when the config or a rule is invalid, 1 when an evaluation failed.
fn alerts_check(config_path: &Path, data_dir: Option<PathBuf>) -> ExitCode {
    use llmtrace::alert::{sources::RollupSource, SystemClock};
    let config = match Config::load(Some(config_path), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("llmtrace: {e}");
            return ExitCode::from(2);
        }
    };
    let data_dir = data_dir.unwrap_or(config.data_dir.clone());
    let run = async {
        let book = llmtrace::pricing::PriceBook::load(config.pricing.file())?;
        let query =
            llmtrace::query::QueryEngine::open(&data_dir, &book, config.query.limits()).await?;
        let source = std::sync::Arc::new(RollupSource {
            query: std::sync::Arc::new(query),
        });
        let state_dir = data_dir.join("alerts");
        let report = llmtrace::alert::check(
            &config.alerts,
            source,
            Some(state_dir.as_path()),
            std::sync::Arc::new(SystemClock),
        )
        .await
        .map_err(|errors| {
            anyhow::anyhow!(
                "invalid alert rules:\n  {}",
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n  ")
            )
        })?;
        anyhow::Ok(report)
    };
    let outcome = match runtime() {
        Ok(rt) => rt.block_on(run),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(report) => {
            for line in &report.lines {
                println!("{line}");
            }
            if report.errors > 0 {
                eprintln!("llmtrace: {} rule(s) could not be evaluated", report.errors);
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("llmtrace: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `llmtrace query --server`: the same statement through a running server.
/// Said on stderr when a CSV answer was cut.
const TRUNCATED_NOTE: &str =
    "llmtrace: the answer was truncated at query.max_rows or query.max_result_bytes";

async fn query_server(server: &str, sql: &str, format: &str, api_key: Option<&str>) -> ExitCode {
    let url = format!("{}/api/v1/query", server.trim_end_matches('/'));
    let accept = match format {
        "csv" => "text/csv",
        "table" => llmtrace::api::ARROW_STREAM,
        _ => "application/json",
    };
    let mut request = reqwest::Client::new()
        .post(&url)
        .header("accept", accept)
        .header("content-type", "application/json");
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let resp = request
        .body(serde_json::json!({ "sql": sql }).to_string())
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            eprintln!("llmtrace: cannot reach {url}: {e}");
            return ExitCode::from(1);
        }
    };
    let status = resp.status();
    let truncated = resp
        .headers()
        .get(llmtrace::api::TRUNCATED_HEADER)
        .is_some_and(|v| v == "true");
    if truncated && format == "csv" {
        eprintln!("{TRUNCATED_NOTE}");
    }
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("llmtrace: reading the answer from {url}: {e}");
            return ExitCode::from(1);
        }
    };
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        eprintln!("llmtrace: {message}");
        return ExitCode::from(if status.is_client_error() { 2 } else { 1 });
    }
    if format == "table" {
        let reader = match datafusion::arrow::ipc::reader::StreamReader::try_new(
            std::io::Cursor::new(body),
            None,
        ) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("llmtrace: bad Arrow answer: {e}");
                return ExitCode::from(1);
            }
        };
        let batches: Result<Vec<_>, _> = reader.collect();
        match batches.and_then(|b| {
            datafusion::arrow::util::pretty::pretty_format_batches(&b).map(|t| t.to_string())
        }) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("llmtrace: bad Arrow answer: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", String::from_utf8_lossy(&body));
        if format == "json" {
            println!();
        }
    }
    ExitCode::SUCCESS
}

fn prices_lookup(
    model: &str,
    provider: Option<&str>,
    config: Option<&Path>,
    format: &str,
) -> ExitCode {
    let config = match Config::load(config, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("llmtrace: {e}");
            return ExitCode::from(2);
        }
    };
    let book = match llmtrace::pricing::PriceBook::load(config.pricing.file()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("llmtrace: config key `pricing.file`: {e}");
            return ExitCode::from(2);
        }
    };
    let report = llmtrace::pricing::lookup_report(&book, model, provider);
    match format {
        "json" => println!("{report:#}"),
        "text" => print!("{}", render_lookup(&report)),
        other => {
            eprintln!("llmtrace: --format {other:?}: use text or json");
            return ExitCode::from(2);
        }
    }
    if report["matched"].is_null() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn render_lookup(r: &serde_json::Value) -> String {
    use std::fmt::Write;
    let s = |v: &serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    let mut out = String::new();
    let m = &r["matched"];
    if m.is_null() {
        let _ = writeln!(
            out,
            "{}: no price entry matches (book {}); calls to it are recorded as unpriced, never $0",
            s(&r["model"]),
            s(&r["book_version"])
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{} -> {} (matched {:?} by {})",
        s(&r["model"]),
        s(&m["id"]),
        s(&m["matched_name"]),
        s(&m["step"])
    );
    let _ = writeln!(
        out,
        "  vendor {}, hosts {}, operation {}",
        s(&m["vendor"]),
        m["hosts"],
        s(&m["operation"])
    );
    let _ = writeln!(
        out,
        "  checked {} ({}), from {}",
        s(&m["checked"]),
        s(&m["source"]),
        s(&m["origin"])
    );
    let _ = writeln!(
        out,
        "  USD per 1M tokens (from {}):",
        s(&m["effective_from"])
    );
    for k in [
        "input",
        "cache_read",
        "cache_write",
        "cache_write_1h",
        "output",
        "reasoning",
    ] {
        let _ = writeln!(out, "    {k:<15} {}", s(&m["prices"][k]));
    }
    if let Some(tiers) = m["tiers"].as_array() {
        for t in tiers {
            let _ = writeln!(
                out,
                "    above {} input tokens: input {}, output {}",
                t["input_tokens_gt"],
                s(&t["prices"]["input"]),
                s(&t["prices"]["output"])
            );
        }
    }
    let _ = writeln!(out, "  service tiers: {}", m["service_tiers"]);
    let e = &r["example"];
    let _ = writeln!(
        out,
        "  example: {} input tokens ({} cached), {} output tokens -> ${}",
        e["input_tokens"],
        e["cache_read_tokens"],
        e["output_tokens"],
        s(&e["cost_usd"])
    );
    let _ = writeln!(out, "  price book version {}", s(&r["book_version"]));
    out
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        std::env::temp_dir().join(format!("llmtrace-demo-{stamp}"))
    });
    let options = llmtrace::demo::DemoOptions {
        data_dir,
        duration: args.duration.into(),
        rate: args.rate,
        seed: args.seed,
    };
    let text = runtime()?.block_on(llmtrace::demo::run(options))?;
    println!("{text}");
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let server = llmtrace::serve::start(&config).await?;
        wait_for_signal().await?;
        server.shutdown().await?;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => { r.context("cannot listen for SIGINT")?; tracing::info!("SIGINT received") }
    }
    Ok(())
}
