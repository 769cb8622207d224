//! The real binary under load: SIGTERM mid-stream drains in-flight requests,
//! exits 0, and every span it acknowledged is on disk exactly once.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{now_nanos, read_rows};

const SPANS_PER_REQUEST: u64 = 50;

fn batch(request: u64, start: u64) -> String {
    let spans: Vec<String> = (0..SPANS_PER_REQUEST)
        .map(|i| {
            let id = request * SPANS_PER_REQUEST + i + 1;
            format!(
                r#"{{"traceId":"{id:032x}","spanId":"{id:016x}","name":"op","startTimeUnixNano":"{start}","endTimeUnixNano":"{}"}}"#,
                start + 5_000
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_loses_nothing_acknowledged() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmtrace"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
        ])
        .env("LLMTRACE_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log_writer = log.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.split("http=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
            }
            log_writer.lock().unwrap().push(line);
        }
    });
    let http = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("listening line logged");
    let url = format!("http://{http}/v1/traces");

    let acked = Arc::new(Mutex::new(HashSet::new()));
    let start = now_nanos() - 1_000_000_000;
    let mut senders = Vec::new();
    for worker in 0..4u64 {
        let (url, acked) = (url.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 0.. {
                let request = worker * 1_000_000 + n;
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(batch(request, start))
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status() == 200 => {
                        let mut acked = acked.lock().unwrap();
                        for i in 0..SPANS_PER_REQUEST {
                            acked.insert(format!("{:016x}", request * SPANS_PER_REQUEST + i + 1));
                        }
                    }
                    // Refused or cut off by the shutdown: not acknowledged.
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    for s in senders {
        s.await.unwrap();
    }
    assert!(
        exit.success(),
        "exit status {exit:?}; log:\n{}",
        log.lock().unwrap().join("\n")
    );

    let acked = acked.lock().unwrap();
    assert!(
        acked.len() >= 1000,
        "the load ran: {} spans acknowledged",
        acked.len()
    );
    let rows = read_rows(&data);
    let mut stored = HashSet::new();
    for r in &rows {
        assert!(
            stored.insert(r.s("span_id").unwrap().to_owned()),
            "span stored twice"
        );
    }
    let missing: Vec<_> = acked.difference(&stored).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
}
