//! Command line: parse, load config, dispatch. Nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    };
    let report = runtime()?.block_on(llmtrace::loadgen::run(options))?;
    print!("{report}");
    if report.acked_spans == 0 && report.sent_spans > 0 {
        anyhow::bail!("the collector acknowledged nothing");
    }
    Ok(())
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
