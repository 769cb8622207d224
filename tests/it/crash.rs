//! The real binary killed with SIGKILL mid-stream, restarted on the same data
//! dir, several times over: every span it acknowledged is queryable after the
//! restart, none twice (write-ahead log replay).
//!
//! `LLMTRACE_CRASH_ROUNDS` sets the number of kill/restart rounds (default 3);
//! `scripts/crash_test.sh` runs this test repeatedly.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::now_nanos;

const SPANS_PER_REQUEST: u64 = 50;

fn batch(request: u64, start: u64) -> String {
    let spans: Vec<String> = (0..SPANS_PER_REQUEST)
        .map(|i| {
            let id = request * SPANS_PER_REQUEST + i + 1;
            // Spans of one request straddle two hours, so a crash can fall
            // between the files of one request.
            let t = start + (id % 2) * 3_600_000_000_000;
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

/// A server process, killed when dropped (also when a test assertion fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` on `data` and returns it with its HTTP and API addresses.
fn start(data: &Path) -> (Server, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmtrace"))
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
        // Frequent flushes, so kills land before, during and after writes.
        .env("LLMTRACE_STORAGE_FLUSH_INTERVAL", "150ms")
        .env("LLMTRACE_QUERY_MAX_ROWS", "10000000")
        // The test's own knob is not a server setting (the server refuses
        // LLMTRACE_* variables it does not know).
        .env_remove("LLMTRACE_CRASH_ROUNDS")
        .env("LLMTRACE_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("listening") {
                let field = |name: &str| {
                    line.split(&format!("{name}="))
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .map(str::to_owned)
                };
                let _ = tx.send((field("http"), field("api")));
            }
        }
    });
    let child = Server(child);
    let (http, api) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("listening line logged");
    (child, http.unwrap(), api.unwrap())
}

async fn stored_span_ids(api: &str) -> Vec<String> {
    let body = serde_json::json!({ "sql": "SELECT span_id FROM spans" }).to_string();
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
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["truncated"], false, "raise query.max_rows");
    v["rows"]
        .as_array()
        .unwrap()
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
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let start_ns = now_nanos() - 2 * 3_600_000_000_000;
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
        let mut senders = Vec::new();
        for worker in 0..4u64 {
            let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
            let base = next_request + worker * 1_000_000;
            senders.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let request = base + n;
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
            }));
        }
        next_request += 10_000_000;
        // Kill at a different moment each round.
        tokio::time::sleep(Duration::from_millis(300 + 170 * round)).await;
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
    let acked = acked.lock().unwrap();
    assert!(
        acked.len() >= 1000,
        "the load ran: {} acknowledged",
        acked.len()
    );
    let missing = acked.iter().filter(|id| !unique.contains(id)).count();
    assert_eq!(missing, 0, "acknowledged spans lost");
    eprintln!(
        "crash test: {rounds} SIGKILLs, {} spans acknowledged, {} stored, none lost, none twice",
        acked.len(),
        stored.len()
    );
    drop(child);
}
