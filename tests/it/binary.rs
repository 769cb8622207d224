//! The real `llmtrace` binary as a child process, and clients that load it
//! over OTLP/HTTP while recording what it acknowledged: shared by the
//! SIGTERM and SIGKILL tests.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SPANS_PER_REQUEST: u64 = 50;

pub fn batch(request: u64, start: u64) -> String {
    let spans: Vec<String> = (0..SPANS_PER_REQUEST)
        .map(|i| {
            let id = request * SPANS_PER_REQUEST + i + 1;
            // Spans of one request straddle two hours, so a crash can fall
            // between the files of one request.
            let t = start + (id % 2) * 3_600_000_000_000;
            // Every fifth span is an LLM call, so rollups are fed too.
            let attributes = if id % 5 == 0 {
                format!(
                    r#","attributes":[{{"key":"gen_ai.system","value":{{"stringValue":"openai"}}}},{{"key":"gen_ai.request.model","value":{{"stringValue":"gpt-4o"}}}},{{"key":"gen_ai.usage.input_tokens","value":{{"intValue":"{}"}}}}]"#,
                    id % 1000
                )
            } else {
                String::new()
            };
            format!(
                r#"{{"traceId":"{id:032x}","spanId":"{id:016x}","name":"op","startTimeUnixNano":"{t}","endTimeUnixNano":"{}"{attributes}}}"#,
                t + 5_000
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

/// Stops the server with SIGTERM and waits for its exit; true when it
/// exited cleanly.
pub async fn terminate(mut server: Server) -> bool {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::task::spawn_blocking(move || server.0.wait().unwrap().success())
        .await
        .unwrap()
}

/// A server process, killed when dropped (also when a test assertion fails).
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` on `data` and returns it with its HTTP and API addresses.
pub fn start(data: &Path) -> (Server, String, String) {
    start_with_env(data, &[])
}

/// [`start`] with extra `LLMTRACE_*` settings.
pub fn start_with_env(data: &Path, settings: &[(&str, &str)]) -> (Server, String, String) {
    let (server, addrs) = start_with_addrs(data, settings);
    (server, addrs.http, addrs.api)
}

/// The addresses a server logged it listens on.
pub struct Addrs {
    pub grpc: String,
    pub http: String,
    pub api: String,
}

/// [`start_with_env`], returning the gRPC address too.
/// The binary under test: this build's, or the one `IT_LLMTRACE_BIN` names
/// (a build from before a fix, to see its tests fail).
pub fn binary() -> std::ffi::OsString {
    std::env::var_os("IT_LLMTRACE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_llmtrace").into())
}

/// The binary under test with the tests' own knobs removed (the server
/// refuses `LLMTRACE_*` variables it does not know).
pub fn command() -> Command {
    let mut command = Command::new(binary());
    command
        .env_remove("IT_LLMTRACE_BIN")
        .env_remove("LLMTRACE_CRASH_ROUNDS");
    command
}

/// `llmtrace serve` on `data` and free ports, logging at info.
pub fn serve_command(data: &Path) -> Command {
    let mut command = command();
    command
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
        ])
        .env("LLMTRACE_LOG", "info");
    command
}

/// Spawns a `serve` command and waits for the addresses it logs when it
/// listens; copies its log to `log` if given (for when a test fails). When
/// it exits without listening, what it printed.
pub fn spawn_listening(
    mut command: Command,
    log: Option<std::path::PathBuf>,
) -> Result<(Server, Addrs), String> {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut log = log.and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        let mut seen = Vec::new();
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(log) = &mut log {
                let _ = writeln!(log, "{line}");
            }
            if line.contains("listening") {
                let field = |name: &str| {
                    line.split(&format!("{name}="))
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or_default()
                        .to_owned()
                };
                let _ = tx.send(Ok(Addrs {
                    grpc: field("grpc"),
                    http: field("http"),
                    api: field("api"),
                }));
            } else {
                seen.push(line);
            }
        }
        // The process is gone without listening.
        let _ = tx.send(Err(seen.join("\n")));
    });
    let server = Server(child);
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(addrs)) => Ok((server, addrs)),
        Ok(Err(output)) => Err(output),
        Err(_) => Err("no listening line in 60 s".into()),
    }
}

/// The rows of `sql` through a server's API at `api`.
pub async fn api_rows(api: &str, sql: &str) -> Vec<serde_json::Value> {
    let body = serde_json::json!({ "sql": sql }).to_string();
    let text = reqwest::Client::new()
        .post(format!("http://{api}/api/v1/query"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["truncated"], false, "raise query.max_rows: {text}");
    v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{text}"))
        .clone()
}

pub fn start_with_addrs(data: &Path, settings: &[(&str, &str)]) -> (Server, Addrs) {
    let mut command = serve_command(data);
    command
        // Frequent flushes, so kills land before, during and after writes.
        .env("LLMTRACE_STORAGE_FLUSH_INTERVAL", "150ms")
        .env("LLMTRACE_QUERY_MAX_ROWS", "10000000")
        .envs(settings.iter().copied());
    spawn_listening(command, None).expect("listening line logged")
}

/// Span ids acknowledged so far.
pub type Acked = Arc<Mutex<HashSet<String>>>;

/// Four clients posting batches to `url` until `stop` is set or a request
/// is not acknowledged (refused, or cut off by the server going away); each
/// acknowledged span id goes into `acked`. Request numbers start at `base`.
pub fn spawn_senders(
    url: &str,
    acked: &Acked,
    base: u64,
    start_ns: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4u64)
        .map(|worker| {
            let (url, acked, stop) = (url.to_owned(), acked.clone(), stop.clone());
            let first = base + worker * 1_000_000;
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let request = first + n;
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(batch(request, start_ns))
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status() == 200 => {
                            let mut acked = acked.lock().unwrap();
                            for i in 0..SPANS_PER_REQUEST {
                                acked.insert(format!(
                                    "{:016x}",
                                    request * SPANS_PER_REQUEST + i + 1
                                ));
                            }
                        }
                        _ => break,
                    }
                }
            })
        })
        .collect()
}
