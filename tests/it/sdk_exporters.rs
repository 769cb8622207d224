//! The Rust OpenTelemetry SDK's own OTLP exporter (gRPC with gzip, and
//! HTTP/protobuf) sends spans; after shutdown the Parquet rows match them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_otlp::{
    Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::support::{Row, TestServer};

/// What the application sent, to compare with what was stored.
struct Sent {
    trace_id: String,
    root_span_id: String,
    llm_span_id: String,
    llm_start: SystemTime,
    llm_end: SystemTime,
    error_span_id: String,
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// A small agent run: a workflow span, a streamed chat call, a failed call.
fn emit(provider: &SdkTracerProvider) -> Sent {
    let tracer = provider.tracer("it-scope");
    let base = SystemTime::now() - Duration::from_secs(5);

    let mut root = tracer
        .span_builder("workflow")
        .with_kind(SpanKind::Internal)
        .with_start_time(base)
        .with_attributes(vec![
            KeyValue::new("ratio", 3.5),
            KeyValue::new("flag", true),
            KeyValue::new("ids", Value::Array(Array::I64(vec![1, 2, 3]))),
        ])
        .start(&tracer);
    let root_sc = root.span_context().clone();
    let cx = Context::new().with_remote_span_context(root_sc.clone());

    let llm_start = base + Duration::from_millis(100);
    let llm_end = llm_start + Duration::from_millis(1500);
    let mut llm = tracer
        .span_builder("chat gpt-4o")
        .with_kind(SpanKind::Client)
        .with_start_time(llm_start)
        .with_attributes(vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.provider.name", "openai"),
            KeyValue::new("gen_ai.request.model", "gpt-4o"),
            KeyValue::new("gen_ai.response.model", "gpt-4o-2024-08-06"),
            KeyValue::new("gen_ai.usage.input_tokens", 120),
            KeyValue::new("gen_ai.usage.output_tokens", 40),
            KeyValue::new("gen_ai.usage.cache_read.input_tokens", 100),
            KeyValue::new("gen_ai.usage.reasoning.output_tokens", 8),
            KeyValue::new("gen_ai.request.stream", true),
            KeyValue::new("gen_ai.response.time_to_first_chunk", 0.35),
            KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(vec![StringValue::from("stop")])),
            ),
            KeyValue::new("gen_ai.conversation.id", "conv-42"),
            KeyValue::new("user.id", "user-7"),
        ])
        .start_with_context(&tracer, &cx);
    llm.add_event_with_timestamp(
        "gen_ai.content.completion.chunk",
        llm_start + Duration::from_millis(350),
        vec![KeyValue::new("n", 1)],
    );
    llm.set_status(Status::Ok);
    let llm_span_id = llm.span_context().span_id().to_string();
    llm.end_with_timestamp(llm_end);

    let err_start = llm_end + Duration::from_millis(10);
    let mut failed = tracer
        .span_builder("chat in-house-model-v2")
        .with_kind(SpanKind::Client)
        .with_start_time(err_start)
        .with_attributes(vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.system", "anthropic"),
            KeyValue::new("gen_ai.request.model", "in-house-model-v2"),
            KeyValue::new("error.type", "RateLimitError"),
        ])
        .start_with_context(&tracer, &cx);
    failed.set_status(Status::error("rate limited"));
    let error_span_id = failed.span_context().span_id().to_string();
    failed.end_with_timestamp(err_start + Duration::from_millis(200));

    root.end_with_timestamp(base + Duration::from_secs(2));
    Sent {
        trace_id: root_sc.trace_id().to_string(),
        root_span_id: root_sc.span_id().to_string(),
        llm_span_id,
        llm_start,
        llm_end,
        error_span_id,
    }
}

fn run_app(exporter: SpanExporter) -> Sent {
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("it-service")
                .with_attribute(KeyValue::new("deployment.environment", "test"))
                .build(),
        )
        .build();
    let sent = emit(&provider);
    provider.force_flush().expect("spans exported");
    provider.shutdown().expect("provider shut down");
    sent
}

fn by_span<'a>(rows: &'a [Row], span_id: &str) -> &'a Row {
    let matching: Vec<_> = rows
        .iter()
        .filter(|r| r.s("span_id") == Some(span_id))
        .collect();
    assert_eq!(matching.len(), 1, "exactly one row for span {span_id}");
    matching[0]
}

fn check(rows: &[Row], sent: &Sent) {
    assert_eq!(rows.len(), 3, "three spans stored");
    for r in rows {
        assert_eq!(r.tenant, "default");
        assert_eq!(r.s("trace_id"), Some(sent.trace_id.as_str()));
        assert_eq!(r.s("service_name"), Some("it-service"));
        assert_eq!(r.s("scope_name"), Some("it-scope"));
        assert_eq!(
            r.resource_attributes
                .get("deployment.environment")
                .map(String::as_str),
            Some("test")
        );
    }

    let root = by_span(rows, &sent.root_span_id);
    assert_eq!(root.s("parent_span_id"), None);
    assert_eq!(root.s("span_kind"), Some("internal"));
    assert_eq!(root.b("is_llm"), Some(false));
    assert_eq!(root.s("cost_status"), Some("not_llm"));
    assert_eq!(root.attributes["ratio"], "3.5");
    assert_eq!(root.attributes["flag"], "true");
    assert_eq!(root.attributes["ids"], "[1,2,3]");

    let llm = by_span(rows, &sent.llm_span_id);
    assert_eq!(llm.s("parent_span_id"), Some(sent.root_span_id.as_str()));
    assert_eq!(llm.i("start_time"), Some(nanos(sent.llm_start)));
    assert_eq!(llm.i("end_time"), Some(nanos(sent.llm_end)));
    assert_eq!(llm.f("duration_ms"), Some(1500.0));
    assert_eq!(llm.s("span_kind"), Some("client"));
    assert_eq!(llm.s("status"), Some("ok"));
    assert_eq!(llm.b("is_llm"), Some(true));
    assert_eq!(llm.s("operation"), Some("chat"));
    assert_eq!(llm.s("provider"), Some("openai"));
    assert_eq!(llm.s("request_model"), Some("gpt-4o"));
    assert_eq!(llm.s("response_model"), Some("gpt-4o-2024-08-06"));
    assert_eq!(llm.s("model"), Some("gpt-4o-2024-08-06"));
    assert_eq!(llm.i("input_tokens"), Some(120));
    assert_eq!(llm.i("output_tokens"), Some(40));
    assert_eq!(llm.i("cache_read_tokens"), Some(100));
    assert_eq!(llm.i("cache_write_tokens"), None);
    assert_eq!(llm.i("reasoning_tokens"), Some(8));
    assert_eq!(llm.i("total_tokens"), Some(160));
    assert_eq!(llm.f("ttft_ms"), Some(350.0));
    assert_eq!(llm.b("streaming"), Some(true));
    assert_eq!(llm.s("finish_reason"), Some("stop"));
    assert_eq!(llm.s("session_id"), Some("conv-42"));
    assert_eq!(llm.s("user_id"), Some("user-7"));
    // Priced from the shipped book: recompute from its prices for this model.
    let book = llmtrace::pricing::PriceBook::default_book();
    let report = llmtrace::pricing::lookup_report(&book, "gpt-4o-2024-08-06", Some("openai"));
    let prices = &report["matched"]["prices"];
    let price = |k: &str| -> Option<f64> { prices[k].as_str().map(|p| p.parse().unwrap()) };
    let (input, output) = (price("input").unwrap(), price("output").unwrap());
    // 120 input of which 100 cached; 40 output of which 8 reasoning.
    let want = (20.0 * input
        + 100.0 * price("cache_read").unwrap_or(input)
        + 32.0 * output
        + 8.0 * price("reasoning").unwrap_or(output))
        / 1e6;
    assert_eq!(llm.s("cost_status"), Some("priced"));
    let cost = llm.f("cost_usd").expect("priced");
    assert!((cost - want).abs() < 1e-12, "{cost} != {want}");
    assert_eq!(llm.s("price_id"), report["matched"]["id"].as_str());
    assert_eq!(llm.s("price_version"), Some(book.version.as_str()));
    assert_eq!(llm.attributes["gen_ai.request.model"], "gpt-4o");
    assert_eq!(llm.attributes["gen_ai.usage.input_tokens"], "120");
    assert_eq!(
        llm.attributes["gen_ai.response.finish_reasons"],
        r#"["stop"]"#
    );
    let events = llm.s("events").expect("events stored");
    assert!(
        events.contains("gen_ai.content.completion.chunk"),
        "{events}"
    );

    let failed = by_span(rows, &sent.error_span_id);
    assert_eq!(failed.s("status"), Some("error"));
    assert_eq!(failed.s("status_message"), Some("rate limited"));
    assert_eq!(failed.s("error_type"), Some("rate_limited"));
    assert_eq!(failed.s("provider"), Some("anthropic"));
    assert_eq!(failed.s("model"), Some("in-house-model-v2"));
    assert_eq!(failed.i("input_tokens"), None, "unknown is not zero");
    assert_eq!(failed.s("cost_status"), Some("unpriced"));
    assert_eq!(
        failed.f("cost_usd"),
        None,
        "an unknown model costs null, never 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exporter_with_gzip_round_trips() {
    let server = TestServer::start().await;
    let endpoint = server.grpc_url();
    // The tonic exporter needs the runtime; the SDK's blocking calls must not
    // run on a runtime worker.
    let sent = tokio::task::spawn_blocking(move || {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_compression(opentelemetry_otlp::Compression::Gzip)
            .build()
            .expect("exporter");
        run_app(exporter)
    })
    .await
    .unwrap();
    let (rows, _dir) = server.stop().await;
    check(&rows, &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_exporter_round_trips() {
    let server = TestServer::start().await;
    let endpoint = server.http_url("/v1/traces");
    // The blocking HTTP client must live outside any runtime context.
    let app = std::thread::spawn(move || {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_compression(opentelemetry_otlp::Compression::Gzip)
            .build()
            .expect("exporter");
        run_app(exporter)
    });
    let sent = tokio::task::spawn_blocking(move || app.join().expect("app thread"))
        .await
        .unwrap();
    let (rows, _dir) = server.stop().await;
    check(&rows, &sent);
}
