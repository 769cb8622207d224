//! Hostile clients against the real binary (issue 22, items 4 and 6).
//!
//! Connections: clients that declare a body and never send it, send their
//! headers or body a few bytes at a time, or connect and say nothing, hold no
//! admission budget (other tenants' HTTP and gRPC exports are answered 200 /
//! OK meanwhile), and are closed after `server.header_read_timeout`,
//! `server.body_read_timeout` or `server.idle_timeout`, giving back their
//! file descriptors; past `server.max_connections`, new connections wait
//! until one closes.
//!
//! Memory: gzip bombs over HTTP and gRPC are charged as they inflate and
//! stopped at the in-flight budget (413 / RESOURCE_EXHAUSTED), and gRPC
//! messages that could never fit are refused from their length prefix,
//! before they are received; the process's peak RSS (VmHWM) stays within
//! `ingest.memory_limit` under the robustness review's shapes.
//!
//! `IT_LLMTRACE_BIN=path cargo test --test it hostile_clients` runs these
//! against another build (such as a release build); with `IT_LLMTRACE_OLD=1`
//! too, one from before the fix: the settings it does not know are left out,
//! as it refuses unknown keys.

use std::convert::Infallible;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};
use llmtrace::loadgen::send::EXPORT_PATH;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codegen::{http, Service};

use crate::binary::Server;

const MIB: usize = 1 << 20;

/// Keys the fix added: left out when running a build from before it.
const NEW_KEYS: [&str; 4] = [
    "LLMTRACE_SERVER_HEADER_READ_TIMEOUT",
    "LLMTRACE_SERVER_BODY_READ_TIMEOUT",
    "LLMTRACE_SERVER_IDLE_TIMEOUT",
    "LLMTRACE_SERVER_MAX_CONNECTIONS",
];

/// Short timeouts, so the test sees connections closed in seconds.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const TIMEOUTS: [(&str, &str); 3] = [
    ("LLMTRACE_SERVER_HEADER_READ_TIMEOUT", "2s"),
    ("LLMTRACE_SERVER_BODY_READ_TIMEOUT", "3s"),
    ("LLMTRACE_SERVER_IDLE_TIMEOUT", "3s"),
];

/// How much later than its timeout a connection may close: a debug build
/// on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

/// The default `ingest.memory_limit`, which peak RSS must stay within.
const MEMORY_LIMIT_MIB: f64 = 512.0;

/// A running `serve`, its addresses and pid.
struct Running {
    server: Server,
    http: String,
    grpc: String,
}

impl Running {
    fn pid(&self) -> u32 {
        self.server.0.id()
    }

    /// A field of /proc/PID/status in MiB (`VmHWM`: peak RSS, `VmRSS`).
    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        kib / 1024.0
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    fn http_url(&self) -> String {
        format!("http://{}/v1/traces", self.http)
    }
}

/// `llmtrace serve` on free ports, with `settings`.
fn start(data: &Path, settings: &[(&str, &str)]) -> Running {
    // For the test's own HTTP clients.
    llmtrace::install_crypto_provider();
    let mut command = crate::binary::serve_command(data);
    for (key, value) in settings {
        if std::env::var_os("IT_LLMTRACE_OLD").is_none() || !NEW_KEYS.contains(key) {
            command.env(key, value);
        }
    }
    let (server, addrs) =
        crate::binary::spawn_listening(command, None).expect("listening line logged");
    Running {
        server,
        http: addrs.http,
        grpc: addrs.grpc,
    }
}

/// A small OTLP/JSON batch of 50 spans, ids from `n`.
fn small_batch(n: u64) -> String {
    let start = crate::support::now_nanos() - 7_200_000_000_000;
    crate::binary::batch(n, start)
}

/// One export over OTLP/HTTP: its status.
async fn http_export(client: &reqwest::Client, running: &Running, n: u64) -> u16 {
    client
        .post(running.http_url())
        .header("content-type", "application/json")
        .body(small_batch(n))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// One export over gRPC: its status code.
async fn grpc_export(
    client: &mut TraceServiceClient<tonic::transport::Channel>,
    n: u64,
) -> tonic::Code {
    let request = llmtrace::ingest::otlp_json::decode(small_batch(n).as_bytes()).unwrap();
    match client.export(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// Reads until the peer closes (EOF or reset) or `wait` passes: what was
/// read, and when it closed, or None while still open.
async fn until_closed(
    mut stream: impl AsyncRead + Unpin,
    opened: Instant,
    wait: Duration,
) -> Option<(Duration, Vec<u8>)> {
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((opened.elapsed(), read)),
            Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
        }
    }
}

/// A hostile connection: what it does, and a task reporting when the server
/// closed it and what it answered first.
struct Hostile {
    what: &'static str,
    /// The timeout that should close it.
    timeout: Duration,
    /// What the answer starts with, when one is expected.
    answer: Option<&'static str>,
    closed: tokio::task::JoinHandle<Option<(Duration, Vec<u8>)>>,
}

/// Opens a connection to `addr`, writes `head`, then writes `drip` every
/// `every` (bounded: 40 times) until the server closes it.
async fn hostile(
    what: &'static str,
    addr: &str,
    head: Vec<u8>,
    drip: Option<(&'static [u8], Duration)>,
    timeout: Duration,
    answer: Option<&'static str>,
) -> Hostile {
    let stream = TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    let (read, mut write) = stream.into_split();
    write.write_all(&head).await.unwrap();
    tokio::spawn(async move {
        let Some((bytes, every)) = drip else {
            // Kept open, silent, until the server closes it.
            tokio::time::sleep(Duration::from_secs(20)).await;
            drop(write);
            return;
        };
        for _ in 0..40 {
            tokio::time::sleep(every).await;
            if write.write_all(bytes).await.is_err() {
                return;
            }
        }
    });
    let closed = tokio::spawn(until_closed(read, opened, Duration::from_secs(15)));
    Hostile {
        what,
        timeout,
        answer,
        closed,
    }
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    bytes
}

/// The prefix of an uncompressed gRPC message of `length` bytes, and 5 of
/// them.
fn grpc_prefix(length: usize) -> Vec<u8> {
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&u32::try_from(length).unwrap().to_be_bytes());
    prefix.extend_from_slice(&[0x0a, 0x00, 0x0a, 0x00, 0x0a]);
    prefix
}

/// An HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The preface, then a whole gRPC Export of an empty request on stream 1:
/// HEADERS (HPACK literals, no Huffman) and DATA ending the stream.
fn h2_empty_export() -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", EXPORT_PATH),
        (":authority", "llmtrace"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(u8::try_from(name.len()).unwrap());
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    let mut bytes = h2_preface();
    bytes.extend(h2_frame(1, 0x4, 1, &block));
    bytes.extend(h2_frame(0, 0x1, 1, &[0, 0, 0, 0, 0]));
    bytes
}

fn declared_body_head(length: usize) -> Vec<u8> {
    format!(
        "POST /v1/traces HTTP/1.1\r\nhost: llmtrace\r\ncontent-type: application/x-protobuf\r\ncontent-length: {length}\r\n\r\n"
    )
    .into_bytes()
}

/// A gRPC Export whose body is `prefix` and then whatever `more` sends: a
/// client that declares a large message and trickles it, or sends nothing.
async fn slow_grpc_export(
    grpc: &str,
    prefix: Vec<u8>,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<Option<(String, Instant)>>,
) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (more, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    more.send(Bytes::from(prefix)).await.unwrap();
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(http_body::Frame::data(b)), rx))
    });
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{grpc}{EXPORT_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::StreamBody::new(
            frames,
        )))
        .unwrap();
    let answered = tokio::spawn(async move {
        let mut channel = channel;
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .ok()?;
        let response = channel.call(request).await.ok()?;
        let answered = Instant::now();
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(|status| (status.to_owned(), answered))
    });
    (more, answered)
}

/// The review's reproduction: four connections declare 16 MiB bodies and
/// send none; more send their headers or body a few bytes at a time, or
/// connect and say nothing, over HTTP and gRPC. Other clients' exports are
/// answered 200 / OK all along (before the fix: 503 / UNAVAILABLE for as
/// long as the four stayed open), and each hostile connection is closed
/// after its timeout, its file descriptor given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_hold_nothing_and_are_closed_after_their_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &TIMEOUTS);
    let client = reqwest::Client::new();
    let mut grpc = TraceServiceClient::connect(format!("http://{}", running.grpc))
        .await
        .unwrap();
    assert_eq!(http_export(&client, &running, 1).await, 200);
    assert_eq!(grpc_export(&mut grpc, 2).await, tonic::Code::Ok);
    let fds_before = running.open_fds();

    let (http, grpc_addr) = (running.http.clone(), running.grpc.clone());
    let mut hostiles = Vec::new();
    for _ in 0..4 {
        hostiles.push(
            hostile(
                "HTTP body of 16 MiB declared, none sent",
                &http,
                declared_body_head(16 * MIB),
                None,
                BODY_TIMEOUT,
                Some("HTTP/1.1 408"),
            )
            .await,
        );
    }
    hostiles.push(
        hostile(
            "HTTP body sent 10 bytes per 300ms",
            &http,
            declared_body_head(100_000),
            Some((b"0123456789", Duration::from_millis(300))),
            BODY_TIMEOUT,
            Some("HTTP/1.1 408"),
        )
        .await,
    );
    hostiles.push(
        hostile(
            "HTTP headers sent a line per 500ms",
            &http,
            b"POST /v1/traces HTTP/1.1\r\nhost: llmtrace\r\n".to_vec(),
            Some((b"x-slow: 1\r\n", Duration::from_millis(500))),
            HEADER_TIMEOUT,
            None,
        )
        .await,
    );
    hostiles.push(
        hostile(
            "HTTP, silent",
            &http,
            Vec::new(),
            None,
            HEADER_TIMEOUT,
            None,
        )
        .await,
    );
    hostiles.push(
        hostile(
            "HTTP/1.1 keep-alive, idle after a request",
            &http,
            format!(
                "POST /v1/traces HTTP/1.1\r\nhost: llmtrace\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                small_batch(3).len(),
                small_batch(3)
            )
            .into_bytes(),
            None,
            HEADER_TIMEOUT,
            Some("HTTP/1.1 200"),
        )
        .await,
    );
    hostiles.push(
        hostile(
            "gRPC, silent",
            &grpc_addr,
            Vec::new(),
            None,
            HEADER_TIMEOUT,
            None,
        )
        .await,
    );
    hostiles.push(
        hostile(
            "gRPC, HTTP/2 preface then silent",
            &grpc_addr,
            h2_preface(),
            None,
            HEADER_TIMEOUT,
            None,
        )
        .await,
    );
    hostiles.push(
        hostile(
            "gRPC (HTTP/2), idle after a request",
            &grpc_addr,
            h2_empty_export(),
            None,
            IDLE_TIMEOUT,
            None,
        )
        .await,
    );
    // A gRPC message of 1 MiB declared, sent 10 bytes per 300ms.
    let grpc_opened = Instant::now();
    let (more, grpc_answer) = slow_grpc_export(&grpc_addr, grpc_prefix(MIB)).await;
    let _trickle = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if more
                .send(Bytes::from_static(&[
                    0x0a, 0x00, 0x0a, 0x00, 0x0a, 0, 0, 0, 0, 0,
                ]))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // The server has read every head above.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_during = running.open_fds();

    // Other clients, over both protocols, are answered meanwhile.
    for round in 0..3u64 {
        let http_status = http_export(&client, &running, 100 + round).await;
        let grpc_code = grpc_export(&mut grpc, 200 + round).await;
        assert_eq!(
            (http_status, grpc_code),
            (200, tonic::Code::Ok),
            "round {round}: exports refused while slow clients are connected"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // One of 16 MiB declared, 5 bytes of it sent: it could never fit the
    // in-flight budget once decoded (160 MiB of 64), so it is refused at once.
    let (_held, refused) = slow_grpc_export(&grpc_addr, grpc_prefix(16 * MIB)).await;
    let refused_at = Instant::now();
    let (status, answered) = tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("answered")
        .unwrap()
        .expect("a grpc-status");
    let after = answered - refused_at;
    eprintln!("gRPC message of 16 MiB declared: grpc-status {status} after {after:?}");
    assert_eq!(status, "8", "RESOURCE_EXHAUSTED");
    assert!(after < Duration::from_secs(1), "{after:?}");

    // And every hostile connection is closed after its timeout.
    for h in hostiles {
        let closed = h.closed.await.unwrap();
        let (after, answered) =
            closed.unwrap_or_else(|| panic!("{}: still open after 15s", h.what));
        let answered = String::from_utf8_lossy(&answered);
        eprintln!(
            "{}: closed after {:.2}s (timeout {:?}), answered {:?}",
            h.what,
            after.as_secs_f64(),
            h.timeout,
            answered
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(40)
                .collect::<String>()
        );
        assert!(
            after + Duration::from_millis(300) >= h.timeout && after <= h.timeout + SLACK,
            "{}: closed after {after:?}, timeout {:?}",
            h.what,
            h.timeout
        );
        if let Some(answer) = h.answer {
            assert!(answered.starts_with(answer), "{}: {answered}", h.what);
        }
    }
    let (status, answered) = tokio::time::timeout(Duration::from_secs(10), grpc_answer)
        .await
        .expect("the slow gRPC request is answered")
        .unwrap()
        .expect("a grpc-status");
    let after = answered - grpc_opened;
    eprintln!("gRPC message trickled: answered grpc-status {status} after {after:?}");
    assert_eq!(status, "4", "DEADLINE_EXCEEDED");
    assert!(
        after >= BODY_TIMEOUT && after <= BODY_TIMEOUT + SLACK,
        "{after:?}"
    );

    // Their file descriptors are given back (the good clients' idle
    // connections are closed too by now).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_after = running.open_fds();
    eprintln!(
        "open fds: {fds_before} before, {fds_during} with the slow clients, {fds_after} after"
    );
    assert!(
        fds_during >= fds_before + 10,
        "{fds_during} vs {fds_before}"
    );
    // Two to spare for files the server may have opened meanwhile.
    assert!(fds_after <= fds_before + 2, "{fds_after} vs {fds_before}");

    // Still answering.
    assert_eq!(http_export(&client, &running, 300).await, 200);
    assert_eq!(grpc_export(&mut grpc, 301).await, tonic::Code::Ok);
}

/// Past `server.max_connections`, a new connection waits in the accept
/// queue until one closes (here: silent ones, closed by the header
/// timeout), then is served, on both OTLP listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_new_connections_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = TIMEOUTS.to_vec();
    settings.push(("LLMTRACE_SERVER_MAX_CONNECTIONS", "4"));
    let running = start(dir.path(), &settings);
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(&running.http).await.unwrap());
        silent.push(TcpStream::connect(&running.grpc).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let client = reqwest::Client::new();
    let http = async {
        let status = http_export(&client, &running, 1).await;
        (status, started.elapsed())
    };
    let grpc = async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", running.grpc))
            .unwrap()
            .connect_lazy();
        let code = grpc_export(&mut TraceServiceClient::new(channel), 2).await;
        (code, started.elapsed())
    };
    let ((status, http_waited), (code, grpc_waited)) = tokio::join!(http, grpc);
    eprintln!("served after {http_waited:?} (HTTP) and {grpc_waited:?} (gRPC)");
    assert_eq!((status, code), (200, tonic::Code::Ok));
    // Not before the silent ones were closed, and soon after.
    let floor = HEADER_TIMEOUT - Duration::from_millis(500);
    assert!(
        http_waited >= floor && http_waited <= HEADER_TIMEOUT + SLACK,
        "HTTP export served after {http_waited:?}"
    );
    assert!(
        grpc_waited >= floor && grpc_waited <= HEADER_TIMEOUT + SLACK,
        "gRPC export served after {grpc_waited:?}"
    );
    for stream in silent {
        let closed = until_closed(stream, started, Duration::from_secs(1)).await;
        assert!(closed.is_some(), "a silent connection is still open");
    }
}

/// An OTLP request of about `bytes` encoded: the same block of 100 LLM
/// spans (a prompt attribute each) repeated, as repeated `resource_spans`
/// concatenate. Compresses about 100:1.
fn llm_request(bytes: usize) -> Vec<u8> {
    let start = crate::support::now_nanos() - 3_600_000_000_000;
    let attr = |key: &str, value: &str| KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    };
    let spans = (0..100u8)
        .map(|i| Span {
            trace_id: vec![i + 1; 16],
            span_id: vec![i + 1; 8],
            name: "chat gpt-4o".into(),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 1_000_000,
            attributes: vec![
                attr("gen_ai.system", "openai"),
                attr("gen_ai.request.model", "gpt-4o"),
                attr("gen_ai.prompt.0.content", &"Summarise this. ".repeat(25)),
            ],
            ..Default::default()
        })
        .collect();
    let block = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(bytes + block.len());
    while out.len() < bytes {
        out.extend_from_slice(&block);
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Sends `body` as `count` concurrent OTLP/HTTP gzip requests: the statuses.
async fn concurrent_gzip_posts(running: &Running, body: &Bytes, count: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let sends = (0..count).map(|_| {
        let request = client
            .post(running.http_url())
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "gzip")
            .body(body.clone());
        async move {
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    });
    futures::future::join_all(sends).await
}

/// A gRPC Export request of `message`, framed, gzip-compressed when
/// `gzip`: compressed once here, sent many times.
fn grpc_body(message: &[u8], gzip_it: bool) -> Bytes {
    let payload = if gzip_it {
        gzip(message)
    } else {
        message.to_vec()
    };
    let mut framed = Vec::with_capacity(5 + payload.len());
    framed.push(u8::from(gzip_it));
    framed.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&payload);
    framed.into()
}

/// Sends `framed` (see [`grpc_body`]) as `count` concurrent gRPC Export
/// requests, on a connection each: their grpc-status codes.
async fn concurrent_grpc_exports(
    running: &Running,
    framed: &Bytes,
    count: usize,
    gzip: bool,
) -> Vec<tonic::Code> {
    let sends = (0..count).map(|_| {
        let (addr, framed) = (running.grpc.clone(), framed.clone());
        async move {
            let mut channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut request = http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}{EXPORT_PATH}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if gzip {
                request = request.header("grpc-encoding", "gzip");
            }
            let request = request
                .body(tonic::body::Body::new(http_body_util::Full::new(framed)))
                .unwrap();
            std::future::poll_fn(|cx| channel.poll_ready(cx))
                .await
                .unwrap();
            let Ok(response) = channel.call(request).await else {
                return tonic::Code::Unknown;
            };
            // Trailers-only (a refusal), or the message and then trailers.
            let (parts, body) = response.into_parts();
            let status = match parts.headers.get("grpc-status") {
                Some(status) => status.clone(),
                None => {
                    let collected = http_body_util::BodyExt::collect(body).await.unwrap();
                    collected.trailers().unwrap()["grpc-status"].clone()
                }
            };
            tonic::Code::from_i32(status.to_str().unwrap().parse().unwrap())
        }
    });
    futures::future::join_all(sends).await
}

fn count<T: PartialEq>(items: &[T], item: T) -> usize {
    items.iter().filter(|i| **i == item).count()
}

/// The review's gzip shape: 20 concurrent ~1 MB gzip bodies that inflate to
/// 60 MiB of OTLP each (before the fix: every one inflated whole before it
/// was charged, RSS to about 2 GB). Each is charged as it inflates and
/// stopped with 413 once decoding it could never fit the in-flight budget
/// (or 503 while others hold it); bodies that do fit are accepted in turn.
/// Peak RSS stays within the memory limit throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bombs_are_stopped_as_they_inflate_and_peak_rss_stays_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &[]);
    let baseline = running.status_mib("VmRSS");

    let bomb = Bytes::from(gzip(&llm_request(60 * MIB)));
    eprintln!("bomb: {} bytes of gzip, 60 MiB inflated", bomb.len());
    let started = Instant::now();
    let statuses = concurrent_gzip_posts(&running, &bomb, 20).await;
    let bombs_took = started.elapsed();
    let peak_bombs = running.status_mib("VmHWM");
    eprintln!("20 bombs: {statuses:?} in {bombs_took:?}; VmRSS at start {baseline:.0} MiB, VmHWM {peak_bombs:.0} MiB");
    assert!(peak_bombs <= MEMORY_LIMIT_MIB, "VmHWM {peak_bombs:.0} MiB");
    assert!(
        statuses.iter().all(|s| *s == 413 || *s == 503),
        "{statuses:?}"
    );
    assert!(count(&statuses, 413) >= 1, "{statuses:?}");

    // Bodies that fit alone (5 MiB inflated: 50 MiB charged of 64) are
    // accepted one or a few at a time, the rest told to retry.
    let fits = Bytes::from(gzip(&llm_request(5 * MIB)));
    let statuses = concurrent_gzip_posts(&running, &fits, 20).await;
    let peak = running.status_mib("VmHWM");
    eprintln!("20 gzip bodies of 5 MiB: {statuses:?}; VmHWM {peak:.0} MiB");
    assert!(peak <= MEMORY_LIMIT_MIB, "VmHWM {peak:.0} MiB");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(count(&statuses, 200) >= 1, "{statuses:?}");

    let client = reqwest::Client::new();
    assert_eq!(http_export(&client, &running, 1).await, 200);
}

/// The review's gRPC shape: messages of 50 MB (before the fix: buffered
/// whole, then admitted alone; RSS to 722 MiB). Refused with
/// RESOURCE_EXHAUSTED from their length prefix, before they are received;
/// a gzip-compressed one that inflates to 60 MiB is stopped as it inflates;
/// messages that fit are accepted in turn. Peak RSS stays within the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_grpc_messages_are_refused_before_they_are_received_and_peak_rss_stays_within_the_limit(
) {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &[]);
    let baseline = running.status_mib("VmRSS");

    let large = grpc_body(&llm_request(50_000_000), false);
    let mut codes = Vec::new();
    let started = Instant::now();
    for _round in 0..3 {
        codes.extend(concurrent_grpc_exports(&running, &large, 8, false).await);
    }
    let peak_large = running.status_mib("VmHWM");
    eprintln!(
        "3 rounds of 8 messages of 50 MB: {codes:?} in {:?}; VmRSS at start {baseline:.0} MiB, VmHWM {peak_large:.0} MiB",
        started.elapsed()
    );
    assert!(peak_large <= MEMORY_LIMIT_MIB, "VmHWM {peak_large:.0} MiB");
    assert!(
        codes.iter().all(|c| *c == tonic::Code::ResourceExhausted),
        "{codes:?}"
    );

    // gzip over gRPC: 8 concurrent messages inflating to 60 MiB each.
    let bomb = grpc_body(&llm_request(60 * MIB), true);
    eprintln!("gRPC bomb: {} bytes framed, 60 MiB inflated", bomb.len());
    let codes = concurrent_grpc_exports(&running, &bomb, 8, true).await;
    let peak_bombs = running.status_mib("VmHWM");
    eprintln!("8 gzip messages of 60 MiB: {codes:?}; VmHWM {peak_bombs:.0} MiB");
    assert!(peak_bombs <= MEMORY_LIMIT_MIB, "VmHWM {peak_bombs:.0} MiB");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, tonic::Code::ResourceExhausted | tonic::Code::Unavailable)),
        "{codes:?}"
    );
    assert!(
        count(&codes, tonic::Code::ResourceExhausted) >= 1,
        "{codes:?}"
    );

    // Messages that fit alone are accepted one or a few at a time.
    let fits = grpc_body(&llm_request(5 * MIB), false);
    let codes = concurrent_grpc_exports(&running, &fits, 8, false).await;
    let peak = running.status_mib("VmHWM");
    eprintln!("8 messages of 5 MiB: {codes:?}; VmHWM {peak:.0} MiB");
    assert!(peak <= MEMORY_LIMIT_MIB, "VmHWM {peak:.0} MiB");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, tonic::Code::Ok | tonic::Code::Unavailable)),
        "{codes:?}"
    );
    assert!(count(&codes, tonic::Code::Ok) >= 1, "{codes:?}");
}
