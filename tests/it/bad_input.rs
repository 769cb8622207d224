//! Bad input gets a clear error and the server stays up: every malformed body,
//! limit breach and invalid span, over HTTP and gRPC. At the end only the
//! valid spans are stored.

use std::io::Write;

use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};
use llmtrace::config::ByteSize;
use llmtrace::loadgen::send::{RawCodec, EXPORT_PATH};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::Code;

use crate::support::{now_nanos, TestServer};

const MAX_REQUEST: u64 = 256 * 1024;
const MAX_DECOMPRESSED: u64 = 1024 * 1024;

async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.ingest.max_request_bytes = ByteSize(MAX_REQUEST);
        c.ingest.max_decompressed_bytes = ByteSize(MAX_DECOMPRESSED);
        c.ingest.max_attribute_value_bytes = ByteSize(1024);
    })
    .await
}

fn span(name: &str, n: u8) -> Span {
    let start = now_nanos() - 1_000_000_000;
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        name: name.into(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn nested(depth: usize) -> AnyValue {
    let mut v = AnyValue {
        value: Some(any_value::Value::StringValue("leaf".into())),
    };
    for _ in 0..depth {
        v = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
        };
    }
    v
}

struct HttpCase {
    name: &'static str,
    content_type: &'static str,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// Fragment of the error message (or partial-success message).
    says: &'static str,
}

fn http_cases() -> Vec<HttpCase> {
    let valid = request(vec![span("ok", 1)]).encode_to_vec();
    let mut bad_utf8 = request(vec![span("AAAA", 2)]).encode_to_vec();
    let at = bad_utf8.windows(4).position(|w| w == b"AAAA").unwrap();
    bad_utf8[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
    let mut wrong_ids = span("short-ids", 3);
    wrong_ids.trace_id = vec![3; 8];
    let mut zero_time = span("zero-time", 4);
    zero_time.start_time_unix_nano = 0;
    let mut absurd_time = span("absurd-time", 5);
    absurd_time.start_time_unix_nano = u64::MAX - 1;
    absurd_time.end_time_unix_nano = u64::MAX;
    let deep_value = format!(
        "{}{{\"stringValue\":\"leaf\"}}{}",
        r#"{"arrayValue":{"values":["#.repeat(200),
        "]}}".repeat(200)
    );
    let deep_json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"attributes":[{{"key":"k","value":{deep_value}}}]}}]}}]}}]}}"#
    );
    let bomb = gzip(&vec![0u8; 8 * MAX_DECOMPRESSED as usize]);
    assert!(
        bomb.len() < MAX_REQUEST as usize,
        "the bomb itself is small"
    );

    vec![
        HttpCase {
            name: "truncated protobuf",
            content_type: "application/x-protobuf",
            encoding: None,
            body: valid[..valid.len() / 2].to_vec(),
            status: 400,
            says: "invalid OTLP protobuf",
        },
        HttpCase {
            name: "garbage protobuf",
            content_type: "application/x-protobuf",
            encoding: None,
            body: b"\xff\xff\xff\xff\xff\xff garbage".to_vec(),
            status: 400,
            says: "invalid OTLP protobuf",
        },
        HttpCase {
            name: "invalid UTF-8 in a protobuf string",
            content_type: "application/x-protobuf",
            encoding: None,
            body: bad_utf8,
            status: 400,
            says: "invalid OTLP protobuf",
        },
        HttpCase {
            name: "invalid JSON",
            content_type: "application/json",
            encoding: None,
            body: b"{\"resourceSpans\": [".to_vec(),
            status: 400,
            says: "invalid JSON",
        },
        HttpCase {
            name: "invalid UTF-8 in JSON",
            content_type: "application/json",
            encoding: None,
            body: b"{\"resourceSpans\": [{\"schemaUrl\": \"\xff\xfe\"}]}".to_vec(),
            status: 400,
            says: "invalid JSON",
        },
        HttpCase {
            name: "JSON of the wrong shape",
            content_type: "application/json",
            encoding: None,
            body: br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":42}]}]}]}"#.to_vec(),
            status: 400,
            says: "resourceSpans[0].scopeSpans[0].spans[0].traceId: expected a string",
        },
        HttpCase {
            name: "deeply nested JSON",
            content_type: "application/json",
            encoding: None,
            body: deep_json.into_bytes(),
            status: 400,
            says: "recursion limit",
        },
        HttpCase {
            name: "deeply nested protobuf",
            content_type: "application/x-protobuf",
            encoding: None,
            body: {
                let mut s = span("deep", 6);
                s.attributes = vec![KeyValue {
                    key: "k".into(),
                    value: Some(nested(120)),
                    ..Default::default()
                }];
                request(vec![s]).encode_to_vec()
            },
            status: 400,
            says: "recursion limit",
        },
        HttpCase {
            name: "unknown content type",
            content_type: "text/plain",
            encoding: None,
            body: b"hello".to_vec(),
            status: 415,
            says: "unsupported content type",
        },
        HttpCase {
            name: "unknown content encoding",
            content_type: "application/x-protobuf",
            encoding: Some("br"),
            body: valid.clone(),
            status: 415,
            says: "unsupported content encoding",
        },
        HttpCase {
            name: "invalid gzip",
            content_type: "application/x-protobuf",
            encoding: Some("gzip"),
            body: b"definitely not gzip".to_vec(),
            status: 400,
            says: "invalid gzip",
        },
        HttpCase {
            name: "oversized body",
            content_type: "application/x-protobuf",
            encoding: None,
            body: vec![0u8; MAX_REQUEST as usize + 1],
            status: 413,
            says: "exceeds 262144 bytes",
        },
        HttpCase {
            name: "gzip bomb",
            content_type: "application/x-protobuf",
            encoding: Some("gzip"),
            body: bomb,
            status: 413,
            says: "decompressed request body exceeds 1048576 bytes",
        },
        HttpCase {
            name: "ids of the wrong length",
            content_type: "application/x-protobuf",
            encoding: None,
            body: request(vec![wrong_ids]).encode_to_vec(),
            status: 200,
            says: "trace_id must be 16 bytes, got 8",
        },
        HttpCase {
            name: "zero timestamps",
            content_type: "application/x-protobuf",
            encoding: None,
            body: request(vec![zero_time]).encode_to_vec(),
            status: 200,
            says: "start and end time are required",
        },
        HttpCase {
            name: "absurd timestamps",
            content_type: "application/x-protobuf",
            encoding: None,
            body: request(vec![absurd_time]).encode_to_vec(),
            status: 200,
            says: "outside the accepted range",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_input_gets_clear_errors_and_the_server_stays_up() {
    let server = start().await;
    let client = reqwest::Client::new();
    for case in http_cases() {
        let mut req = client
            .post(server.http_url("/v1/traces"))
            .header("content-type", case.content_type)
            .body(case.body);
        if let Some(enc) = case.encoding {
            req = req.header("content-encoding", enc);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(resp.status().as_u16(), case.status, "{}", case.name);
        let proto = resp.headers()["content-type"] == "application/x-protobuf";
        let body = resp.bytes().await.unwrap();
        let message = match (case.status, proto) {
            (200, true) => {
                let r = ExportTraceServiceResponse::decode(body).unwrap();
                let p = r
                    .partial_success
                    .unwrap_or_else(|| panic!("{}: partial success", case.name));
                assert_eq!(p.rejected_spans, 1, "{}", case.name);
                p.error_message
            }
            (_, true) => {
                llmtrace::ingest::grpc::RpcStatus::decode(body)
                    .unwrap()
                    .message
            }
            (_, false) => String::from_utf8(body.to_vec()).unwrap(),
        };
        assert!(message.contains(case.says), "{}: {message}", case.name);
    }

    // Still up, and a good request after all that is accepted.
    let health = reqwest::get(server.api_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let good = client
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request(vec![span("good", 9)]).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    let (rows, _dir) = server.stop().await;
    let names: Vec<_> = rows.iter().map(|r| r.s("span_name").unwrap()).collect();
    assert_eq!(names, ["good"], "only valid spans are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deep_attribute_values_are_cut_not_rejected() {
    let server = start().await;
    let mut s = span("big-values", 7);
    s.attributes = vec![
        attr("huge", any_value::Value::StringValue("x".repeat(200_000))),
        KeyValue {
            key: "deep".into(),
            value: Some(nested(40)),
            ..Default::default()
        },
    ];
    let resp = reqwest::Client::new()
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request(vec![s]).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (rows, _dir) = server.stop().await;
    let huge = &rows[0].attributes["huge"];
    assert!(huge.starts_with(&"x".repeat(1024)));
    assert!(
        huge.ends_with("(truncated from 200000 bytes)"),
        "{}",
        &huge[1000..]
    );
    assert!(rows[0].attributes["deep"].contains("nested too deep"));
}

async fn grpc_export(
    server: &TestServer,
    body: Vec<u8>,
    gzip: bool,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    if gzip {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    client.ready().await.unwrap();
    client
        .unary(
            tonic::Request::new(Bytes::from(body)),
            EXPORT_PATH.parse().unwrap(),
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_input_gets_the_otlp_status_codes() {
    let server = start().await;
    let valid = request(vec![span("ok", 1)]).encode_to_vec();

    let err = grpc_export(&server, valid[..valid.len() / 2].to_vec(), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "truncated: {err}");
    let err = grpc_export(&server, b"\xff\xff\xff\xff garbage".to_vec(), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "garbage: {err}");
    assert!(err.message().contains("invalid OTLP protobuf"), "{err}");

    let mut big = span("bomb", 2);
    big.attributes = vec![attr(
        "pad",
        any_value::Value::StringValue("a".repeat(2 * MAX_DECOMPRESSED as usize)),
    )];
    let err = grpc_export(&server, request(vec![big]).encode_to_vec(), true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "gzip bomb: {err}");

    let mut short = span("short-span-id", 3);
    short.span_id = vec![3; 4];
    let resp = grpc_export(
        &server,
        request(vec![short, span("fine", 4)]).encode_to_vec(),
        true,
    )
    .await
    .expect("partial success is a success");
    let partial = resp.partial_success.expect("partial success set");
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial
        .error_message
        .contains("span_id must be 8 bytes, got 4"));

    let resp = grpc_export(
        &server,
        request(vec![span("fine-too", 5)]).encode_to_vec(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        resp.partial_success, None,
        "full success leaves partial_success unset"
    );

    let (rows, _dir) = server.stop().await;
    let mut names: Vec<_> = rows.iter().map(|r| r.s("span_name").unwrap()).collect();
    names.sort();
    assert_eq!(names, ["fine", "fine-too"]);
}

/// Thousands of randomly corrupted requests through decode and normalise:
/// each is either refused with an error or stored, never a panic.
#[test]
fn corrupted_requests_never_panic() {
    use llmtrace::ingest::normalise::{normalise, Limits};

    let mut s = span("chat gpt-4o", 1);
    s.attributes = vec![
        attr(
            "gen_ai.operation.name",
            any_value::Value::StringValue("chat".into()),
        ),
        attr(
            "gen_ai.request.model",
            any_value::Value::StringValue("gpt-4o".into()),
        ),
        attr("gen_ai.usage.input_tokens", any_value::Value::IntValue(100)),
        attr(
            "gen_ai.usage.cache_read.input_tokens",
            any_value::Value::StringValue("90".into()),
        ),
        attr(
            "gen_ai.response.time_to_first_chunk",
            any_value::Value::DoubleValue(0.2),
        ),
        KeyValue {
            key: "nested".into(),
            value: Some(nested(5)),
            ..Default::default()
        },
    ];
    let valid_request = request(vec![s.clone(), s]);
    let valid = valid_request.encode_to_vec();
    let json = llmtrace::loadgen::encode::to_json(&valid_request);
    let limits = Limits {
        max_attribute_value_bytes: 1024,
        max_future_skew: std::time::Duration::from_secs(3600),
        max_buffer_bytes: usize::MAX,
        max_in_flight_bytes: usize::MAX,
        memory_limit: 0,
        retry_after: std::time::Duration::from_secs(1),
    };
    let prices = llmtrace::pricing::PriceBook::default_book();
    // A fixed-seed xorshift: the same corruptions on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut decoded, mut refused) = (0, 0);
    for _ in 0..5000 {
        let mut bytes = valid.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        match ExportTraceServiceRequest::decode(bytes.as_slice()) {
            Ok(req) => {
                decoded += 1;
                let _ = normalise(req, &limits, &prices, std::time::SystemTime::now());
            }
            Err(_) => refused += 1,
        }
        let mut text = json.clone().into_bytes();
        let at = (next() % text.len() as u64) as usize;
        text[at] = b"{}[]\",:0-9aeE.\\ "[(next() % 16) as usize];
        if let Ok(req) = llmtrace::ingest::otlp_json::decode(&text) {
            let _ = normalise(req, &limits, &prices, std::time::SystemTime::now());
        }
    }
    assert!(
        decoded > 0 && refused > 0,
        "both outcomes exercised: {decoded} decoded, {refused} refused"
    );
}

/// Every input a fuzz target once crashed on (fuzz/regressions/<target>/),
/// through the same path again: decoded as that target decodes it, then
/// normalised, with each span a record or a rejection.
#[test]
fn inputs_the_fuzzers_crashed_on_are_handled() {
    use llmtrace::ingest::normalise::{normalise, Limits};

    let limits = Limits {
        max_attribute_value_bytes: 64 << 10,
        max_future_skew: std::time::Duration::from_secs(86_400),
        max_buffer_bytes: usize::MAX,
        max_in_flight_bytes: usize::MAX,
        memory_limit: 0,
        retry_after: std::time::Duration::from_secs(1),
    };
    let prices = llmtrace::pricing::PriceBook::default_book();
    // The fuzz targets' fixed clock, 2027-01-01.
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_798_761_600);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut seen = 0;
    for (target, json) in [("otlp_protobuf", false), ("otlp_json", true)] {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in entries {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let request = if json {
                llmtrace::ingest::otlp_json::decode(&bytes).ok()
            } else {
                ExportTraceServiceRequest::decode(bytes.as_slice()).ok()
            };
            let Some(request) = request else { continue };
            let spans = llmtrace::ingest::span_count(&request);
            let out = normalise(request, &limits, &prices, now);
            assert_eq!(out.records.len() + out.rejected as usize, spans);
            seen += 1;
        }
    }
    assert!(seen > 0, "the regression inputs were found and decoded");
}
