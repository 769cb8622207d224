//! Every LLM call counted once, with the context its trace gives it, however
//! the application's SDK splits the trace over export requests. The Rust
//! OpenTelemetry SDK exports each span as it ends (simple processor), so
//! every span below is its own export request, in the order the spans end.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde_json::{json, Value};

use crate::support::TestServer;

const MODEL: &str = "claude-sonnet-4-5";
const SDK_SCOPE: &str = "com.anthropic.sdk.python";
const OLM_SCOPE: &str = "opentelemetry.instrumentation.anthropic";
const INPUT: i64 = 1200;
const OUTPUT: i64 = 300;

/// A unique provider response id, as real providers give.
fn response_id() -> String {
    format!("msg_01{}", uuid_like())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{t:x}{n:04x}")
}

fn provider(endpoint: String, service: &str) -> SdkTracerProvider {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .expect("exporter");
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build()
}

/// The attributes of one Anthropic call as an instrumentation reports it.
fn call_attributes(response_id: Option<&str>, cache_read: bool) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("gen_ai.operation.name", "chat"),
        KeyValue::new("gen_ai.provider.name", "anthropic"),
        KeyValue::new("gen_ai.request.model", MODEL),
    ];
    if let Some(id) = response_id {
        a.push(KeyValue::new("gen_ai.response.id", id.to_owned()));
        a.push(KeyValue::new("gen_ai.usage.input_tokens", INPUT));
        a.push(KeyValue::new("gen_ai.usage.output_tokens", OUTPUT));
        if cache_read {
            a.push(KeyValue::new("gen_ai.usage.cache_read.input_tokens", 0));
        }
    }
    a
}

/// How the two spans of one call reach the collector.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::enum_variant_names)] // the order is what differs
enum Shape {
    /// Both roots of their own traces; the SDK's span ends first.
    TwoRootsSdkEndsFirst,
    /// Both roots; the instrumentation's span ends first.
    TwoRootsInstrumentationEndsFirst,
    /// The instrumentation's span under an app span, exported before it
    /// (child first); the SDK's span a root of another trace.
    ChildExportedFirst,
    /// The same, with the app span exported before the instrumentation's.
    ParentExportedFirst,
}

struct App {
    sdk: SdkTracer,
    olm: SdkTracer,
    app: SdkTracer,
}

impl App {
    fn new(provider: &SdkTracerProvider) -> Self {
        App {
            sdk: provider.tracer(SDK_SCOPE),
            olm: provider.tracer(OLM_SCOPE),
            app: provider.tracer("app"),
        }
    }

    /// One successful call reported by both instrumentations.
    fn call(&self, shape: Shape, base: SystemTime) {
        let id = response_id();
        let (start, end) = (base, base + Duration::from_millis(800));
        let sdk_span = |t: &SdkTracer| {
            t.span_builder("anthropic.messages.create")
                .with_kind(SpanKind::Client)
                .with_start_time(start)
                .with_attributes(call_attributes(Some(&id), false))
                .start_with_context(t, &Context::new())
        };
        let olm_span = |t: &SdkTracer, cx: &Context| {
            t.span_builder("anthropic.chat")
                .with_kind(SpanKind::Client)
                .with_start_time(start + Duration::from_millis(1))
                .with_attributes(call_attributes(Some(&id), true))
                .start_with_context(t, cx)
        };
        match shape {
            Shape::TwoRootsSdkEndsFirst | Shape::TwoRootsInstrumentationEndsFirst => {
                let mut s = sdk_span(&self.sdk);
                let mut o = olm_span(&self.olm, &Context::new());
                if matches!(shape, Shape::TwoRootsSdkEndsFirst) {
                    s.end_with_timestamp(end);
                    o.end_with_timestamp(end);
                } else {
                    o.end_with_timestamp(end);
                    s.end_with_timestamp(end);
                }
            }
            Shape::ChildExportedFirst | Shape::ParentExportedFirst => {
                let mut parent = self
                    .app
                    .span_builder("handle_request")
                    .with_start_time(start - Duration::from_millis(50))
                    .start_with_context(&self.app, &Context::new());
                let cx = Context::new().with_remote_span_context(parent.span_context().clone());
                let mut o = olm_span(&self.olm, &cx);
                let mut s = sdk_span(&self.sdk);
                if matches!(shape, Shape::ParentExportedFirst) {
                    parent.end_with_timestamp(end + Duration::from_millis(50));
                    o.end_with_timestamp(end);
                } else {
                    o.end_with_timestamp(end);
                    parent.end_with_timestamp(end + Duration::from_millis(50));
                }
                s.end_with_timestamp(end);
            }
        }
    }

    /// One call that failed with a 429: the SDK's span and the
    /// instrumentation's, siblings under the app span, no response id,
    /// each in its own request.
    fn rate_limited_call(&self, base: SystemTime) {
        let mut parent = self
            .app
            .span_builder("handle_request")
            .with_start_time(base)
            .start_with_context(&self.app, &Context::new());
        let cx = Context::new().with_remote_span_context(parent.span_context().clone());
        for (tracer, name, offset) in [
            (&self.sdk, "anthropic.messages.create", 10),
            (&self.olm, "anthropic.chat", 11),
        ] {
            let mut s = tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .with_start_time(base + Duration::from_millis(offset))
                .with_attributes(call_attributes(None, false))
                .start_with_context(tracer, &cx);
            s.set_attribute(KeyValue::new("error.type", "429"));
            s.set_status(Status::error("rate_limit_error"));
            s.end_with_timestamp(base + Duration::from_millis(200));
        }
        parent.end_with_timestamp(base + Duration::from_millis(250));
    }
}

async fn sql(server: &TestServer, sql: &str) -> Vec<Vec<Value>> {
    let resp = reqwest::Client::new()
        .post(server.api_url("/api/v1/query"))
        .header("content-type", "application/json")
        .body(json!({ "sql": sql }).to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(status, 200, "{sql}: {body}");
    serde_json::from_value(body["rows"].clone()).unwrap()
}

async fn stats(server: &TestServer, group_by: &str) -> Vec<Value> {
    let url = server.api_url(&format!("/api/v1/stats?window=1h&group_by={group_by}"));
    let body: Value =
        serde_json::from_str(&reqwest::get(url).await.unwrap().text().await.unwrap()).unwrap();
    body["groups"].as_array().cloned().unwrap_or_default()
}

/// Runs the application on a thread of its own: the SDK's HTTP exporter
/// blocks, and must not run on a runtime worker.
async fn run_app(server: &TestServer, app: impl FnOnce(&App) + Send + 'static) {
    let endpoint = server.http_url("/v1/traces");
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            let provider = provider(endpoint, "support-bot");
            app(&App::new(&provider));
            provider.shutdown().expect("provider shut down");
        })
        .join()
        .expect("app thread")
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reported_twice_counts_once_across_traces_and_requests() {
    let server = TestServer::start().await;
    let shapes = [
        Shape::TwoRootsSdkEndsFirst,
        Shape::TwoRootsInstrumentationEndsFirst,
        Shape::ChildExportedFirst,
        Shape::ParentExportedFirst,
    ];
    let per_shape = 3;
    run_app(&server, move |app| {
        let base = SystemTime::now() - Duration::from_secs(60);
        let mut at = base;
        for shape in shapes {
            for _ in 0..per_shape {
                app.call(shape, at);
                at += Duration::from_millis(900);
            }
        }
        app.rate_limited_call(at);
    })
    .await;
    let calls = (shapes.len() * per_shape) as i64;

    // Through the server, before anything is flushed.
    let rows = sql(
        &server,
        &format!(
            "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(cost_usd), \
             min(cost_usd) FILTER (WHERE response_id IS NOT NULL), \
             count(*) FILTER (WHERE status = 'error') \
             FROM llm_calls WHERE model = '{MODEL}'"
        ),
    )
    .await;
    let r = &rows[0];
    assert_eq!(
        r[0].as_i64(),
        Some(calls + 1),
        "each call once, the 429 too"
    );
    assert_eq!(
        r[1].as_i64(),
        Some(calls * INPUT),
        "input tokens once per call"
    );
    assert_eq!(r[2].as_i64(), Some(calls * OUTPUT));
    let (sum, one) = (r[3].as_f64().unwrap(), r[4].as_f64().unwrap());
    assert!(one > 0.0, "priced");
    assert!(
        (sum - calls as f64 * one).abs() < 1e-9,
        "cost once per call: {sum} vs {calls} x {one}"
    );
    assert_eq!(r[5].as_i64(), Some(1), "one failed call");

    // Every other span of a call points at the one kept.
    let dangling = sql(
        &server,
        "SELECT count(*) FROM spans d WHERE d.attributes['llmtrace.duplicate_of'] IS NOT NULL \
         AND d.is_llm = false AND NOT EXISTS (SELECT 1 FROM llm_calls k \
         WHERE k.span_id = d.attributes['llmtrace.duplicate_of'])",
    )
    .await;
    assert_eq!(dangling[0][0].as_i64(), Some(0));
    let duplicates = sql(
        &server,
        "SELECT count(*) FROM spans WHERE attributes['llmtrace.duplicate_of'] IS NOT NULL",
    )
    .await;
    assert_eq!(duplicates[0][0].as_i64(), Some(calls + 1));

    // The live aggregates count the same.
    let groups = stats(&server, "model").await;
    let g = groups
        .iter()
        .find(|g| g["model"] == MODEL)
        .unwrap_or_else(|| panic!("{MODEL} in {groups:?}"));
    assert_eq!(g["requests"].as_i64(), Some(calls + 1));
    assert_eq!(g["errors"].as_i64(), Some(1));
    assert_eq!(g["input_tokens"].as_i64(), Some(calls * INPUT));

    // And the files, after a clean stop.
    let (rows, _dir) = server.stop().await;
    let llm: Vec<_> = rows
        .iter()
        .filter(|r| r.b("is_llm") == Some(true) && r.s("model") == Some(MODEL))
        .collect();
    assert_eq!(llm.len() as i64, calls + 1);
    let tokens: i64 = llm.iter().filter_map(|r| r.i("input_tokens")).sum();
    assert_eq!(tokens, calls * INPUT);
}

/// Context set on the request and agent spans only: the LLM call's row, the
/// live stats and the rollups carry it, whichever arrives first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ancestor_context_reaches_the_calls_whatever_arrives_first() {
    let server = TestServer::start().await;
    run_app(&server, |app| {
        let base = SystemTime::now() - Duration::from_secs(30);
        for (i, child_first) in [(0, true), (1, false)] {
            let start = base + Duration::from_secs(i * 5);
            let (user, session, version) =
                (format!("u-{i}"), format!("s-{i}"), format!("{}", 4 + i));
            // Langfuse `propagate_attributes` style on the request span...
            let mut root = app
                .app
                .span_builder("POST /chat")
                .with_kind(SpanKind::Server)
                .with_start_time(start)
                .with_attributes(vec![
                    KeyValue::new("langfuse.user.id", user),
                    KeyValue::new("session.id", session),
                ])
                .start_with_context(&app.app, &Context::new());
            let root_cx = Context::new().with_remote_span_context(root.span_context().clone());
            // ...and the prompt on the agent span.
            let mut agent = app
                .app
                .span_builder("agent support")
                .with_start_time(start + Duration::from_millis(10))
                .with_attributes(vec![
                    KeyValue::new("gen_ai.prompt.name", "support"),
                    KeyValue::new("gen_ai.prompt.version", version),
                ])
                .start_with_context(&app.app, &root_cx);
            let agent_cx = Context::new().with_remote_span_context(agent.span_context().clone());
            let mut call = app
                .olm
                .span_builder("anthropic.chat")
                .with_kind(SpanKind::Client)
                .with_start_time(start + Duration::from_millis(20))
                .with_attributes(call_attributes(Some(&response_id()), true))
                .start_with_context(&app.olm, &agent_cx);
            let end = start + Duration::from_millis(900);
            if child_first {
                call.end_with_timestamp(end);
                agent.end_with_timestamp(end + Duration::from_millis(10));
                root.end_with_timestamp(end + Duration::from_millis(20));
            } else {
                root.end_with_timestamp(end + Duration::from_millis(20));
                agent.end_with_timestamp(end + Duration::from_millis(10));
                call.end_with_timestamp(end);
            }
        }
    })
    .await;

    let rows = sql(
        &server,
        "SELECT user_id, session_id, prompt_name, prompt_version, service_name \
         FROM llm_calls ORDER BY user_id",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec![
                json!("u-0"),
                json!("s-0"),
                json!("support"),
                json!("4"),
                json!("support-bot")
            ],
            vec![
                json!("u-1"),
                json!("s-1"),
                json!("support"),
                json!("5"),
                json!("support-bot")
            ],
        ]
    );
    let mut by_version: Vec<(String, i64)> = stats(&server, "prompt_name,prompt_version")
        .await
        .iter()
        .map(|g| {
            assert_eq!(g["prompt_name"], "support", "{g}");
            (
                g["prompt_version"].as_str().unwrap_or("null").to_owned(),
                g["requests"].as_i64().unwrap(),
            )
        })
        .collect();
    by_version.sort();
    assert_eq!(by_version, vec![("4".into(), 1), ("5".into(), 1)]);

    // Rollups, written at shutdown, carry it too.
    let (_rows, dir) = server.stop().await;
    let engine = llmtrace::query::QueryEngine::open(
        &dir.path().join("data"),
        &llmtrace::pricing::PriceBook::default_book(),
        llmtrace::query::QueryLimits::default(),
    )
    .await
    .unwrap();
    let result = engine
        .run(
            "SELECT prompt_name, prompt_version, sum(requests) FROM rollups \
             GROUP BY 1, 2 ORDER BY 2",
        )
        .await
        .unwrap();
    let json = llmtrace::query::format::to_json(&result).unwrap();
    assert_eq!(
        json["rows"],
        json!([["support", "4", 1], ["support", "5", 1]])
    );
}

/// A call whose parent never comes is queryable at once and counted once
/// its wait is over, with what it says itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_parent_never_comes_waits_then_counts() {
    let server = TestServer::start_with(|c| {
        c.ingest.trace_wait = llmtrace::config::HumanDuration(Duration::from_secs(2));
    })
    .await;
    run_app(&server, |app| {
        let start = SystemTime::now() - Duration::from_secs(5);
        // The parent is a span of another service that never exports.
        let parent = opentelemetry::trace::SpanContext::new(
            opentelemetry::trace::TraceId::from_hex("5b8efff798038103d269b633813fc60c").unwrap(),
            opentelemetry::trace::SpanId::from_hex("eee19b7ec3c1b174").unwrap(),
            opentelemetry::trace::TraceFlags::SAMPLED,
            true,
            Default::default(),
        );
        let cx = Context::new().with_remote_span_context(parent);
        let mut call = app
            .olm
            .span_builder("anthropic.chat")
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(call_attributes(Some(&response_id()), true))
            .start_with_context(&app.olm, &cx);
        call.set_attribute(KeyValue::new("user.id", "u-own"));
        call.end_with_timestamp(start + Duration::from_millis(500));
    })
    .await;
    let rows = sql(&server, "SELECT user_id FROM llm_calls").await;
    assert_eq!(rows, vec![vec![json!("u-own")]], "queryable while it waits");
    let mut counted = 0;
    for _ in 0..50 {
        counted = stats(&server, "model")
            .await
            .iter()
            .map(|g| g["requests"].as_i64().unwrap_or(0))
            .sum::<i64>();
        if counted > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(counted, 1, "counted once its wait is over");
    let (rows, _dir) = server.stop().await;
    assert_eq!(
        rows.iter().filter(|r| r.b("is_llm") == Some(true)).count(),
        1
    );
}
