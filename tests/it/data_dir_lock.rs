//! One data dir, one process: a second `serve` on a data dir in use is
//! refused (exit 1, naming the dir and the pid holding it) before it touches
//! the dir, embedded queries still read it, and the lock of a process killed
//! with SIGKILL does not outlive it.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::binary::{batch, start, start_with_env, terminate, SPANS_PER_REQUEST};
use crate::support::now_nanos;

/// Runs `command` to its end, failing the test if it takes longer than
/// `limit` (a second server that wrongly starts would serve forever).
pub fn run_with_timeout(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Span ids stored, through a server's API.
async fn stored_ids(api: &str) -> Vec<String> {
    crate::binary::api_rows(api, "SELECT span_id FROM spans")
        .await
        .iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_is_refused_and_the_lock_of_a_killed_one_does_not_block_a_restart() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No flush: what it acknowledges stays in its live log, which a second
    // server would replay (and store a second time) if it were let in.
    let (mut first, http, _api) =
        start_with_env(&data, &[("LLMTRACE_STORAGE_FLUSH_INTERVAL", "1h")]);
    let first_pid = first.0.id();

    // The first server has acknowledged requests in its live log.
    let client = reqwest::Client::new();
    let start_ns = now_nanos() - 3_600_000_000_000;
    let mut acked = HashSet::new();
    for request in 0..4u64 {
        let resp = client
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/json")
            .body(batch(request, start_ns))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        acked.extend(
            (0..SPANS_PER_REQUEST).map(|i| format!("{:016x}", request * SPANS_PER_REQUEST + i + 1)),
        );
    }

    // A second server on the same dir: refused, naming the dir and the pid.
    let wal_before = wal_files(&data);
    let second = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            run_with_timeout(
                &mut crate::binary::serve_command(&data),
                Duration::from_secs(60),
            )
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&data.display().to_string()),
        "names the dir: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {first_pid}")),
        "names the holder: {stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(
        !stderr.contains("replayed the write-ahead log"),
        "refused before touching the log: {stderr}"
    );
    assert_eq!(wal_files(&data), wal_before, "the log is left alone");

    // Embedded queries are readers: they take no lock and work meanwhile.
    let query = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            run_with_timeout(
                Command::new(env!("CARGO_BIN_EXE_llmtrace"))
                    .args(["query", "--format", "json", "--data-dir"])
                    .arg(&data)
                    .arg("SELECT count(*) AS n FROM spans")
                    .env_remove("LLMTRACE_CRASH_ROUNDS"),
                Duration::from_secs(60),
            )
        }
    })
    .await
    .unwrap();
    assert!(
        query.status.success(),
        "{}",
        String::from_utf8_lossy(&query.stderr)
    );

    // SIGKILL: the kernel drops the lock; the file with the dead pid stays.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let lock_text = std::fs::read_to_string(data.join(".lock")).unwrap();
    assert_eq!(lock_text.trim(), first_pid.to_string());

    let (restarted, _http, api) = start(&data);
    let restarted_pid = restarted.0.id();
    let lock_text = std::fs::read_to_string(data.join(".lock")).unwrap();
    assert_eq!(lock_text.trim(), restarted_pid.to_string());
    // What the killed server acknowledged was replayed, once.
    let stored = stored_ids(&api).await;
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "no span twice");
    assert_eq!(unique, acked);
    assert!(terminate(restarted).await, "clean exit");
}

fn wal_files(data: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}
