//! Disk full, for real: the real binary with its data dir on a small tmpfs,
//! filled up with a ballast file. Nothing is acknowledged that is not
//! stored: exports are refused with retry hints (HTTP 503 + Retry-After +
//! RetryInfo, gRPC UNAVAILABLE + RetryInfo), `/readyz` says why, metrics
//! count it, no temp file is left holding space; once the ballast goes the
//! server recovers by itself, and after a clean stop every acknowledged span
//! is in Parquet exactly once.
//!
//! Mounting needs root (CI runs as root); elsewhere the tests say why they
//! skip and pass.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use llmtrace::ingest::grpc::{RetryInfo, RpcStatus};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use serde_json::Value;

use crate::binary::{start_with_addrs, terminate};
use crate::support::{now_nanos, read_rows};

/// A tmpfs mounted on a fresh temp dir, unmounted when dropped (also when
/// an assertion fails; a server still using it is killed first by being
/// declared after it).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes, or says why it cannot.
    fn mount(size: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (needs root or CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Still busy: detach it, so it never outlives the test.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Mounts a tmpfs, or prints why this test skips.
fn tmpfs_or_skip(size: u64, test: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(size) {
        Ok(fs) => Some(fs),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// Fills the file system of `dir` up with a file `ballast` until writes
/// fail with ENOSPC.
fn fill(ballast: &Path) {
    let mut file = std::fs::File::create(ballast).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let bytes = vec![0xa5u8; chunk];
        loop {
            match file.write_all(&bytes) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", ballast.display()),
            }
        }
    }
}

/// Free bytes of the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let s = rustix::fs::statvfs(path).unwrap();
    s.f_bavail * s.f_frsize
}

/// Files under `dir` whose names say they are being written.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".tmp") || name == ".probe" {
                out.push(p);
            }
        }
    }
    out
}

/// A splitmix64 step: payloads zstd cannot shrink much, so that span files
/// are as big as the test needs.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// An OTLP/JSON request of spans `ids`, each with `pad` bytes of random
/// hex in an attribute; with `llm`, every fifth is an LLM call, so rollups
/// are written too.
fn request(ids: std::ops::Range<u64>, pad: usize, llm: bool) -> String {
    let start = now_nanos() - 2_000_000_000;
    let spans: Vec<String> = ids
        .map(|id| {
            let payload: String = (0..pad.div_ceil(16))
                .map(|i| format!("{:016x}", mix(id * 1_000_003 + i as u64)))
                .collect::<String>()[..pad]
                .to_owned();
            let llm = if llm && id % 5 == 0 {
                r#",{"key":"gen_ai.system","value":{"stringValue":"openai"}},{"key":"gen_ai.request.model","value":{"stringValue":"gpt-4o"}},{"key":"gen_ai.usage.input_tokens","value":{"intValue":"7"}}"#
            } else {
                ""
            };
            format!(
                r#"{{"traceId":"{id:032x}","spanId":"{id:016x}","name":"op","startTimeUnixNano":"{start}","endTimeUnixNano":"{}","attributes":[{{"key":"payload","value":{{"stringValue":"{payload}"}}}}{llm}]}}"#,
                start + 5_000
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

async fn post(client: &reqwest::Client, http: &str, body: String) -> reqwest::Response {
    client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn get(url: String) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The value of the Prometheus sample `series` (name and labels).
async fn metric(api: &str, series: &str) -> u64 {
    let (_, text) = get(format!("http://{api}/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

/// Waits until `/readyz` answers `status`; returns its body.
async fn readyz_until(api: &str, status: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (got, body) = get(format!("http://{api}/readyz")).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {got} after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a moment when no file under `data` is being written (a retry
/// or a probe may be at any moment, and removes its file when it fails), so
/// that a file left behind by a failed write, there at every moment, fails
/// the test. Returns the free bytes then.
async fn no_temp_files_left(data: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = temp_files(data);
        let free = free_bytes(data);
        if before.is_empty() && temp_files(data).is_empty() {
            return free;
        }
        assert!(Instant::now() < deadline, "temp files stay: {before:?}");
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
}

/// Every acknowledged span is in the span files once, and nothing else is.
fn assert_stored_once(data: &Path, acked: &BTreeSet<u64>) {
    let rows = read_rows(data);
    let stored: Vec<u64> = rows
        .iter()
        .map(|r| u64::from_str_radix(r.s("span_id").unwrap(), 16).unwrap())
        .collect();
    let unique: BTreeSet<u64> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "a span stored twice");
    assert_eq!(
        &unique, acked,
        "stored spans are exactly the acknowledged ones"
    );
}

/// With the write-ahead log on (the default), the log append is the first
/// write of a request, so a full disk refuses exports before anything is
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_exports_with_retry_hints_and_recovery_loses_nothing() {
    llmtrace::install_crypto_provider();
    let Some(fs) = tmpfs_or_skip(24 << 20, "disk full (log)") else {
        return;
    };
    let data = fs.path().join("data");
    let ballast = fs.path().join("ballast");
    let (server, addrs) = start_with_addrs(&data, &[]);
    let (http, api) = (addrs.http, addrs.api);
    let client = reqwest::Client::new();
    let mut acked = BTreeSet::new();
    let mut next = 1u64;
    let mut send = |n: u64| {
        let ids = next..next + n;
        next += n;
        ids
    };

    // Before: accepted.
    for _ in 0..4 {
        let ids = send(50);
        let resp = post(&client, &http, request(ids.clone(), 200, true)).await;
        assert_eq!(resp.status(), 200);
        acked.extend(ids);
    }

    fill(&ballast);

    // HTTP: 503, Retry-After, a google.rpc.Status with RetryInfo naming the cause.
    let resp = post(&client, &http, request(send(50), 200, true)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], 14, "UNAVAILABLE: {body}");
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    assert_eq!(body["details"][0]["retryDelay"], "1s");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("write-ahead log") && message.contains("No space left on device"),
        "{message}"
    );

    // gRPC: UNAVAILABLE with RetryInfo.
    let mut grpc = TraceServiceClient::connect(format!("http://{}", addrs.grpc))
        .await
        .unwrap();
    let proto =
        llmtrace::ingest::otlp_json::decode(request(send(50), 200, true).as_bytes()).unwrap();
    let status = grpc.export(proto).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("No space left"), "{status:?}");
    let details = RpcStatus::decode(status.details()).unwrap();
    assert_eq!(details.code, 14);
    let info = RetryInfo::decode(details.details[0].value.as_slice()).unwrap();
    assert_eq!(info.retry_delay.unwrap().seconds, 1);

    // /readyz says why, the metrics count it.
    let why = readyz_until(&api, 503, Duration::from_secs(5)).await;
    assert!(
        why.contains("write-ahead log cannot write") && why.contains("No space left on device"),
        "{why}"
    );
    let failures = metric(
        &api,
        r#"llmtrace_storage_write_failures_total{target="wal",error="no_space"}"#,
    )
    .await;
    assert!(failures >= 2, "{failures} log failures counted");
    assert_eq!(
        metric(&api, r#"llmtrace_storage_failing{target="wal"}"#).await,
        1
    );
    // Failed writes leave nothing behind to hold the space.
    no_temp_files_left(&data).await;

    // Space comes back: without a request or a restart, the server says it
    // is ready again (its log probe) and accepts exports.
    std::fs::remove_file(&ballast).unwrap();
    readyz_until(&api, 200, Duration::from_secs(30)).await;
    assert_eq!(
        metric(&api, r#"llmtrace_storage_failing{target="wal"}"#).await,
        0
    );
    for _ in 0..4 {
        let ids = send(50);
        let resp = post(&client, &http, request(ids.clone(), 200, true)).await;
        assert_eq!(resp.status(), 200);
        acked.extend(ids);
    }
    let ids = send(50);
    let proto =
        llmtrace::ingest::otlp_json::decode(request(ids.clone(), 200, true).as_bytes()).unwrap();
    grpc.export(proto).await.expect("gRPC accepted again");
    acked.extend(ids);

    assert!(
        terminate(server).await,
        "clean exit after the disk filled up"
    );
    assert_stored_once(&data, &acked);
    drop(fs);
}

/// With the log off, spans are acknowledged once buffered, so a full disk
/// shows in the flush: a span file cut short by ENOSPC is removed (its space
/// given back), the spans stay buffered and are written once space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_cut_short_by_a_full_disk_leaves_no_temp_file_and_is_retried() {
    llmtrace::install_crypto_provider();
    let Some(fs) = tmpfs_or_skip(24 << 20, "disk full (flush)") else {
        return;
    };
    let data = fs.path().join("data");
    let ballast = fs.path().join("ballast");
    let reserve = fs.path().join("reserve");
    let settings = [
        ("LLMTRACE_WAL_ENABLED", "false"),
        ("LLMTRACE_STORAGE_FLUSH_INTERVAL", "1s"),
    ];
    let (server, addrs) = start_with_addrs(&data, &settings);
    let (http, api) = (addrs.http, addrs.api);
    let client = reqwest::Client::new();
    let mut acked = BTreeSet::new();

    // 256 KiB left free once the reserve goes: a span file of the spans
    // below (about 1 MB) starts and is cut short half way.
    const RESERVE: u64 = 256 << 10;
    std::fs::write(&reserve, vec![0u8; RESERVE as usize]).unwrap();
    fill(&ballast);
    std::fs::remove_file(&reserve).unwrap();
    let free = free_bytes(fs.path());
    assert!(free >= RESERVE, "{free} bytes free");

    let resp = post(&client, &http, request(1..2001, 600, false)).await;
    assert_eq!(resp.status(), 200, "buffered, so acknowledged");
    acked.extend(1..2001);

    let deadline = Instant::now() + Duration::from_secs(20);
    let series = r#"llmtrace_storage_write_failures_total{target="spans",error="no_space"}"#;
    while metric(&api, series).await == 0 {
        assert!(Instant::now() < deadline, "no flush failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let why = readyz_until(&api, 503, Duration::from_secs(5)).await;
    assert!(
        why.contains("span files cannot be written") && why.contains("No space left on device"),
        "{why}"
    );
    assert_eq!(
        metric(&api, r#"llmtrace_storage_failing{target="spans"}"#).await,
        1
    );
    // The cut-short file is gone and its space is free again.
    let free = no_temp_files_left(&data).await;
    assert!(free + 16 * 4096 >= RESERVE, "{free} bytes free");
    assert!(read_rows(&data).is_empty(), "no span file made it");

    // Space comes back: the buffered spans are written, readiness returns.
    std::fs::remove_file(&ballast).unwrap();
    readyz_until(&api, 200, Duration::from_secs(30)).await;
    let resp = post(&client, &http, request(5001..5051, 100, false)).await;
    assert_eq!(resp.status(), 200);
    acked.extend(5001..5051);

    assert!(terminate(server).await, "clean exit");
    assert_stored_once(&data, &acked);
    drop(fs);
}
