//! The synthetic traffic: traces shaped like LLM applications in production.
//!
//! Each trace is one request to an LLM feature: an HTTP server span, an agent
//! or workflow span under it, and a sequence of steps (LLM calls, tool calls,
//! embeddings and retrieval). Models have their own log-normal latency and
//! token distributions; calls stream, hit the prompt cache, reason and fail at
//! realistic rates; and every service is instrumented by a different library,
//! so the attributes arrive in the dialects of genai-attributes.md (current
//! semconv, semconv 1.26, OpenLLMetry, OpenInference). Everything follows from
//! the seed. No message content is generated.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::{Event, SpanKind},
    status::StatusCode,
    ResourceSpans, ScopeSpans, Span, Status,
};

use crate::record::hex;

use super::rng::Rng;

/// Attribute dialect, by the instrumentation library a service uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OTel GenAI semconv >= 1.37 (with 1.40/1.41 cache, reasoning, TTFT names).
    Semconv,
    /// OTel GenAI semconv 1.26 (`gen_ai.system`, `prompt_tokens`).
    SemconvLegacy,
    /// OpenLLMetry 0.4x (`llm.request.type`, capitalised `gen_ai.system`).
    OpenLlmetry,
    /// OpenInference (`openinference.span.kind`, `llm.token_count.*`).
    OpenInference,
}

impl Dialect {
    fn scope(self) -> &'static str {
        match self {
            Dialect::Semconv => "opentelemetry.instrumentation.openai_v2",
            Dialect::SemconvLegacy => "opentelemetry.instrumentation.genai",
            Dialect::OpenLlmetry => "opentelemetry.instrumentation.openai",
            Dialect::OpenInference => "openinference.instrumentation.openai",
        }
    }
}

/// A service of the simulated fleet and the library that instruments it.
struct Service {
    name: &'static str,
    dialect: Dialect,
    /// Typical number of LLM steps per request.
    steps: (usize, usize),
    rag: bool,
    prompts: &'static [&'static str],
}

const SERVICES: &[Service] = &[
    Service {
        name: "support-bot",
        dialect: Dialect::Semconv,
        steps: (1, 4),
        rag: false,
        prompts: &["support-triage", "support-answer"],
    },
    Service {
        name: "rag-search",
        dialect: Dialect::OpenInference,
        steps: (1, 2),
        rag: true,
        prompts: &["rag-answer"],
    },
    Service {
        name: "code-assistant",
        dialect: Dialect::OpenLlmetry,
        steps: (2, 5),
        rag: false,
        prompts: &["code-plan", "code-edit"],
    },
    Service {
        name: "summarizer",
        dialect: Dialect::SemconvLegacy,
        steps: (1, 1),
        rag: false,
        prompts: &["summarise"],
    },
];

const SERVICE_WEIGHTS: &[f64] = &[0.35, 0.25, 0.25, 0.15];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Chat,
    Embeddings,
}

/// How one model behaves: who serves it, how long it takes, how many tokens.
struct ModelProfile {
    provider: &'static str,
    /// How OpenLLMetry 0.4x spells the provider.
    olm_system: &'static str,
    host: &'static str,
    model: &'static str,
    response_model: &'static str,
    op: Op,
    weight: f64,
    /// Median latency (ms) and log-space sigma.
    latency: (f64, f64),
    input: (f64, f64),
    output: (f64, f64),
    /// Probability that a call reads from the prompt cache.
    cache_read_p: f64,
    /// Probability that a call writes the prompt cache.
    cache_write_p: f64,
    /// Fraction of output spent reasoning (0 for non-reasoning models).
    reasoning: f64,
    stream_p: f64,
}

const MODELS: &[ModelProfile] = &[
    ModelProfile {
        provider: "openai",
        olm_system: "OpenAI",
        host: "api.openai.com",
        model: "gpt-4o",
        response_model: "gpt-4o-2024-08-06",
        op: Op::Chat,
        weight: 0.22,
        latency: (1400.0, 0.45),
        input: (1800.0, 0.8),
        output: (220.0, 0.7),
        cache_read_p: 0.35,
        cache_write_p: 0.0,
        reasoning: 0.0,
        stream_p: 0.6,
    },
    ModelProfile {
        provider: "openai",
        olm_system: "OpenAI",
        host: "api.openai.com",
        model: "gpt-4o-mini",
        response_model: "gpt-4o-mini-2024-07-18",
        op: Op::Chat,
        weight: 0.25,
        latency: (750.0, 0.5),
        input: (1200.0, 0.9),
        output: (150.0, 0.7),
        cache_read_p: 0.3,
        cache_write_p: 0.0,
        reasoning: 0.0,
        stream_p: 0.5,
    },
    ModelProfile {
        provider: "openai",
        olm_system: "OpenAI",
        host: "api.openai.com",
        model: "o3-mini",
        response_model: "o3-mini-2025-01-31",
        op: Op::Chat,
        weight: 0.05,
        latency: (6500.0, 0.6),
        input: (2500.0, 0.7),
        output: (1800.0, 0.6),
        cache_read_p: 0.2,
        cache_write_p: 0.0,
        reasoning: 0.7,
        stream_p: 0.3,
    },
    ModelProfile {
        provider: "anthropic",
        olm_system: "Anthropic",
        host: "api.anthropic.com",
        model: "claude-sonnet-4-5",
        response_model: "claude-sonnet-4-5-20250929",
        op: Op::Chat,
        weight: 0.18,
        latency: (2100.0, 0.5),
        input: (3500.0, 0.8),
        output: (380.0, 0.7),
        cache_read_p: 0.55,
        cache_write_p: 0.15,
        reasoning: 0.0,
        stream_p: 0.7,
    },
    ModelProfile {
        provider: "anthropic",
        olm_system: "Anthropic",
        host: "api.anthropic.com",
        model: "claude-haiku-4-5",
        response_model: "claude-haiku-4-5-20251001",
        op: Op::Chat,
        weight: 0.08,
        latency: (900.0, 0.45),
        input: (1500.0, 0.8),
        output: (200.0, 0.7),
        cache_read_p: 0.45,
        cache_write_p: 0.1,
        reasoning: 0.0,
        stream_p: 0.6,
    },
    ModelProfile {
        provider: "gcp.gemini",
        olm_system: "Google",
        host: "generativelanguage.googleapis.com",
        model: "gemini-2.5-flash",
        response_model: "gemini-2.5-flash",
        op: Op::Chat,
        weight: 0.08,
        latency: (1100.0, 0.55),
        input: (2200.0, 0.9),
        output: (300.0, 0.8),
        cache_read_p: 0.2,
        cache_write_p: 0.0,
        reasoning: 0.3,
        stream_p: 0.5,
    },
    ModelProfile {
        provider: "aws.bedrock",
        olm_system: "AWS",
        host: "bedrock-runtime.us-east-1.amazonaws.com",
        model: "us.anthropic.claude-3-5-haiku-20241022-v1:0",
        response_model: "us.anthropic.claude-3-5-haiku-20241022-v1:0",
        op: Op::Chat,
        weight: 0.04,
        latency: (1300.0, 0.5),
        input: (1600.0, 0.8),
        output: (250.0, 0.7),
        cache_read_p: 0.0,
        cache_write_p: 0.0,
        reasoning: 0.0,
        stream_p: 0.4,
    },
    ModelProfile {
        provider: "mistral_ai",
        olm_system: "MistralAI",
        host: "api.mistral.ai",
        model: "mistral-large-latest",
        response_model: "mistral-large-2411",
        op: Op::Chat,
        weight: 0.03,
        latency: (1600.0, 0.5),
        input: (1400.0, 0.8),
        output: (260.0, 0.7),
        cache_read_p: 0.0,
        cache_write_p: 0.0,
        reasoning: 0.0,
        stream_p: 0.4,
    },
    ModelProfile {
        provider: "deepseek",
        olm_system: "DeepSeek",
        host: "api.deepseek.com",
        model: "deepseek-chat",
        response_model: "deepseek-chat",
        op: Op::Chat,
        weight: 0.03,
        latency: (2400.0, 0.6),
        input: (1700.0, 0.8),
        output: (300.0, 0.7),
        cache_read_p: 0.4,
        cache_write_p: 0.0,
        reasoning: 0.0,
        stream_p: 0.5,
    },
    ModelProfile {
        provider: "x_ai",
        olm_system: "XAI",
        host: "api.x.ai",
        model: "grok-3-mini",
        response_model: "grok-3-mini",
        op: Op::Chat,
        weight: 0.02,
        latency: (1900.0, 0.55),
        input: (1300.0, 0.8),
        output: (500.0, 0.7),
        cache_read_p: 0.1,
        cache_write_p: 0.0,
        reasoning: 0.5,
        stream_p: 0.4,
    },
    ModelProfile {
        provider: "openai",
        olm_system: "OpenAI",
        host: "api.openai.com",
        model: "text-embedding-3-small",
        response_model: "text-embedding-3-small",
        op: Op::Embeddings,
        weight: 0.0,
        latency: (120.0, 0.4),
        input: (400.0, 0.7),
        output: (0.0, 0.0),
        cache_read_p: 0.0,
        cache_write_p: 0.0,
        reasoning: 0.0,
        stream_p: 0.0,
    },
];

const EMBEDDING_MODEL: usize = MODELS.len() - 1;

const TOOLS: &[&str] = &[
    "search_docs",
    "get_order",
    "run_sql",
    "create_ticket",
    "read_file",
    "web_fetch",
];

/// Share of LLM calls that fail, and how.
const ERROR_RATE: f64 = 0.02;

#[derive(Clone, Copy)]
enum Failure {
    RateLimited,
    ServerError,
    Timeout,
}

/// The traffic generator. Deterministic: the same seed and the same calls
/// give the same traces.
pub struct Workload {
    rng: Rng,
    /// Start of the next trace, Unix ns.
    next_start: u64,
    /// Gap between trace starts, ns.
    trace_gap: u64,
    users: usize,
}

/// One generated span and where it goes in the request.
struct Generated {
    service: usize,
    span: Span,
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}
fn s(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}
fn i(key: &str, v: u64) -> KeyValue {
    kv(key, Value::IntValue(v as i64))
}
fn f(key: &str, v: f64) -> KeyValue {
    kv(key, Value::DoubleValue(v))
}
fn b(key: &str, v: bool) -> KeyValue {
    kv(key, Value::BoolValue(v))
}
fn strings(key: &str, vs: &[&str]) -> KeyValue {
    let values = vs
        .iter()
        .map(|v| AnyValue {
            value: Some(Value::StringValue((*v).to_owned())),
        })
        .collect();
    kv(key, Value::ArrayValue(ArrayValue { values }))
}

/// What one LLM call did, before it is spelled in a dialect.
struct Call<'a> {
    m: &'a ModelProfile,
    start: u64,
    end: u64,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    reasoning: u64,
    stream: bool,
    ttft_ns: u64,
    failure: Option<Failure>,
    response_id: String,
    prompt: &'static str,
    prompt_version: u64,
    user: String,
    session: String,
}

impl Workload {
    /// `start` is the start time of the first trace (Unix ns); traces begin
    /// `trace_gap_ns` apart.
    pub fn new(seed: u64, start: u64, trace_gap_ns: u64) -> Self {
        Workload {
            rng: Rng::new(seed),
            next_start: start,
            trace_gap: trace_gap_ns.max(1),
            users: 2000,
        }
    }

    /// Average spans per trace of this workload, measured on a sample.
    pub fn spans_per_trace(seed: u64) -> f64 {
        let mut w = Workload::new(seed, 1_700_000_000_000_000_000, 1_000_000);
        let spans: usize = (0..200).map(|_| w.trace().len()).sum();
        spans as f64 / 200.0
    }

    /// A request of whole traces holding at least `min_spans` spans.
    pub fn batch(&mut self, min_spans: usize) -> (ExportTraceServiceRequest, usize) {
        let mut spans = Vec::new();
        while spans.len() < min_spans.max(1) {
            spans.extend(self.trace());
        }
        let count = spans.len();
        // One ResourceSpans per service, one ScopeSpans per service's library.
        let mut by_service: BTreeMap<usize, Vec<Span>> = BTreeMap::new();
        for g in spans {
            by_service.entry(g.service).or_default().push(g.span);
        }
        let resource_spans = by_service
            .into_iter()
            .map(|(svc, spans)| {
                let service = &SERVICES[svc];
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![
                            s("service.name", service.name),
                            s("service.version", "2.14.0"),
                            s("deployment.environment", "production"),
                            s("telemetry.sdk.name", "opentelemetry"),
                            s("telemetry.sdk.language", "python"),
                            s("telemetry.sdk.version", "1.45.2"),
                            s("host.name", format!("{}-7d9f8c6b5-x2k4p", service.name)),
                        ],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: service.dialect.scope().to_owned(),
                            version: "0.45.0".to_owned(),
                            ..Default::default()
                        }),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }
            })
            .collect();
        (ExportTraceServiceRequest { resource_spans }, count)
    }

    fn trace(&mut self) -> Vec<Generated> {
        let svc_idx = self.rng.weighted(SERVICE_WEIGHTS);
        let service = &SERVICES[svc_idx];
        let d = service.dialect;
        let trace_id: [u8; 16] = self.rng.bytes();
        let t0 = self.next_start;
        self.next_start += self.trace_gap;
        let user = format!("user-{:05}", self.rng.zipf(self.users));
        let session = format!("sess-{}", hex(&self.rng.bytes::<6>()));
        let prompt = service.prompts[self.rng.below(service.prompts.len())];
        let prompt_version = 1 + self.rng.below(4) as u64;

        let root_id: [u8; 8] = self.rng.bytes();
        let agent_id: [u8; 8] = self.rng.bytes();
        let mut out = Vec::new();
        let mut cursor = t0 + 2_000_000 + self.rng.below(3_000_000) as u64;
        let agent_start = cursor;
        let mut failed = false;

        let child = |span: Span| Generated {
            service: svc_idx,
            span,
        };
        let steps = service.steps.0 + self.rng.below(service.steps.1 - service.steps.0 + 1);
        if service.rag {
            let (embed, end) = self.llm_call(
                d,
                &MODELS[EMBEDDING_MODEL],
                cursor,
                prompt,
                prompt_version,
                &user,
                &session,
            );
            out.push(child(self.with_ids(embed, trace_id, agent_id)));
            cursor = end + 1_000_000;
            let dur = (self.rng.log_normal(35.0, 0.5) * 1e6) as u64;
            out.push(child(self.with_ids(
                retrieval(d, cursor, cursor + dur),
                trace_id,
                agent_id,
            )));
            cursor += dur + 500_000;
        }
        for step in 0..steps {
            let m = &MODELS[self
                .rng
                .weighted(&MODELS.iter().map(|m| m.weight).collect::<Vec<_>>())];
            let (call, end) = self.llm_call(d, m, cursor, prompt, prompt_version, &user, &session);
            failed |= call
                .status
                .as_ref()
                .is_some_and(|s| s.code == StatusCode::Error as i32);
            out.push(child(self.with_ids(call, trace_id, agent_id)));
            cursor = end + 300_000;
            if step + 1 < steps && self.rng.chance(0.6) {
                let tool = TOOLS[self.rng.below(TOOLS.len())];
                let dur = (self.rng.log_normal(80.0, 0.9) * 1e6) as u64;
                out.push(child(self.with_ids(
                    tool_span(d, tool, cursor, cursor + dur),
                    trace_id,
                    agent_id,
                )));
                cursor += dur + 300_000;
            }
        }
        let agent_end = cursor + 1_000_000;
        let mut agent = agent_span(d, service.name, agent_start, agent_end, &user, &session);
        agent.trace_id = trace_id.to_vec();
        agent.span_id = agent_id.to_vec();
        agent.parent_span_id = root_id.to_vec();
        out.push(child(agent));

        let root_end = agent_end + 1_500_000;
        let code = if failed { 500 } else { 200 };
        let mut root = Span {
            trace_id: trace_id.to_vec(),
            span_id: root_id.to_vec(),
            name: "POST /v1/chat".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: t0,
            end_time_unix_nano: root_end,
            attributes: vec![
                s("http.request.method", "POST"),
                s("http.route", "/v1/chat"),
                i("http.response.status_code", code),
                s("url.scheme", "https"),
                s("user.id", user.clone()),
            ],
            ..Default::default()
        };
        if failed {
            root.status = Some(Status {
                code: StatusCode::Error as i32,
                message: String::new(),
            });
        }
        out.push(child(root));
        out
    }

    fn with_ids(&mut self, mut span: Span, trace_id: [u8; 16], parent: [u8; 8]) -> Span {
        span.trace_id = trace_id.to_vec();
        span.span_id = self.rng.bytes::<8>().to_vec();
        span.parent_span_id = parent.to_vec();
        span
    }

    #[allow(clippy::too_many_arguments)]
    fn llm_call(
        &mut self,
        d: Dialect,
        m: &ModelProfile,
        start: u64,
        prompt: &'static str,
        prompt_version: u64,
        user: &str,
        session: &str,
    ) -> (Span, u64) {
        let r = &mut self.rng;
        let failure = r
            .chance(ERROR_RATE)
            .then(|| match r.weighted(&[0.55, 0.3, 0.15]) {
                0 => Failure::RateLimited,
                1 => Failure::ServerError,
                _ => Failure::Timeout,
            });
        let latency_ms = match failure {
            Some(Failure::RateLimited) => r.log_normal(90.0, 0.4),
            Some(Failure::ServerError) => r.log_normal(m.latency.0 * 0.4, 0.5),
            Some(Failure::Timeout) => 60_000.0,
            None => r.log_normal(m.latency.0, m.latency.1),
        };
        let end = start + (latency_ms * 1e6) as u64;
        let input = r.log_normal(m.input.0, m.input.1).max(1.0) as u64;
        let output = if m.op == Op::Chat {
            r.log_normal(m.output.0, m.output.1).max(1.0) as u64
        } else {
            0
        };
        let cache_read = if r.chance(m.cache_read_p) {
            (input as f64 * (0.5 + 0.45 * r.unit())) as u64
        } else {
            0
        };
        let cache_write = if cache_read == 0 && r.chance(m.cache_write_p) {
            (input as f64 * 0.8) as u64
        } else {
            0
        };
        let reasoning = (output as f64 * m.reasoning) as u64;
        let stream = m.op == Op::Chat && r.chance(m.stream_p);
        let ttft_ns = if stream {
            ((end - start) as f64 * (0.1 + 0.3 * r.unit())) as u64
        } else {
            0
        };
        let response_id = format!("chatcmpl-{}", hex(&r.bytes::<12>()));
        let call = Call {
            m,
            start,
            end,
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
            stream,
            ttft_ns,
            failure,
            response_id,
            prompt,
            prompt_version,
            user: user.to_owned(),
            session: session.to_owned(),
        };
        (spell(d, &call), end)
    }
}

/// The span of an LLM call, in a dialect.
fn spell(d: Dialect, c: &Call) -> Span {
    let m = c.m;
    let ok = c.failure.is_none();
    let op = if m.op == Op::Chat {
        "chat"
    } else {
        "embeddings"
    };
    let mut a: Vec<KeyValue> = Vec::with_capacity(20);
    let mut events = Vec::new();
    let name;
    let mut kind = SpanKind::Client;
    match d {
        Dialect::Semconv => {
            name = format!("{op} {}", m.model);
            a.push(s("gen_ai.operation.name", op));
            a.push(s("gen_ai.provider.name", m.provider));
            a.push(s("gen_ai.request.model", m.model));
            if m.op == Op::Chat {
                a.push(i("gen_ai.request.max_tokens", 4096));
                a.push(f("gen_ai.request.temperature", 0.2));
            }
            a.push(s("server.address", m.host));
            a.push(i("server.port", 443));
            if c.stream {
                a.push(b("gen_ai.request.stream", true));
            }
            if ok {
                a.push(s("gen_ai.response.model", m.response_model));
                a.push(s("gen_ai.response.id", c.response_id.clone()));
                a.push(i("gen_ai.usage.input_tokens", c.input));
                if m.op == Op::Chat {
                    a.push(i("gen_ai.usage.output_tokens", c.output));
                    a.push(strings("gen_ai.response.finish_reasons", &["stop"]));
                }
                if c.cache_read > 0 {
                    a.push(i("gen_ai.usage.cache_read.input_tokens", c.cache_read));
                }
                if c.cache_write > 0 {
                    a.push(i("gen_ai.usage.cache_creation.input_tokens", c.cache_write));
                }
                if c.reasoning > 0 {
                    a.push(i("gen_ai.usage.reasoning.output_tokens", c.reasoning));
                }
                if c.stream {
                    a.push(f(
                        "gen_ai.response.time_to_first_chunk",
                        c.ttft_ns as f64 / 1e9,
                    ));
                }
            }
            a.push(s("gen_ai.conversation.id", c.session.clone()));
            a.push(s("user.id", c.user.clone()));
            a.push(s("gen_ai.prompt.name", c.prompt));
            a.push(s("gen_ai.prompt.version", c.prompt_version.to_string()));
        }
        Dialect::SemconvLegacy => {
            name = format!("{op} {}", m.model);
            a.push(s("gen_ai.operation.name", op));
            a.push(s("gen_ai.system", m.provider));
            a.push(s("gen_ai.request.model", m.model));
            a.push(s("server.address", m.host));
            if ok {
                a.push(s("gen_ai.response.model", m.response_model));
                a.push(s("gen_ai.response.id", c.response_id.clone()));
                a.push(i("gen_ai.usage.prompt_tokens", c.input));
                if m.op == Op::Chat {
                    a.push(i("gen_ai.usage.completion_tokens", c.output));
                    a.push(strings("gen_ai.response.finish_reasons", &["stop"]));
                }
            }
        }
        Dialect::OpenLlmetry => {
            let vendor = m.provider.split('.').next().unwrap_or(m.provider);
            name = format!(
                "{vendor}.{}",
                if m.op == Op::Chat {
                    "chat"
                } else {
                    "embeddings"
                }
            );
            a.push(s(
                "llm.request.type",
                if m.op == Op::Chat {
                    "chat"
                } else {
                    "embedding"
                },
            ));
            a.push(s("gen_ai.system", m.olm_system));
            a.push(s("gen_ai.request.model", m.model));
            a.push(s(
                "gen_ai.openai.api_base",
                format!("https://{}/v1/", m.host),
            ));
            a.push(b("llm.is_streaming", c.stream));
            if ok {
                a.push(s("gen_ai.response.model", m.response_model));
                a.push(s("gen_ai.response.id", c.response_id.clone()));
                a.push(i("gen_ai.usage.prompt_tokens", c.input));
                a.push(i("gen_ai.usage.completion_tokens", c.output));
                a.push(i("llm.usage.total_tokens", c.input + c.output));
                if c.cache_read > 0 {
                    a.push(i("gen_ai.usage.cache_read_input_tokens", c.cache_read));
                }
                if c.cache_write > 0 {
                    a.push(i("gen_ai.usage.cache_creation_input_tokens", c.cache_write));
                }
                if c.reasoning > 0 {
                    a.push(i("llm.usage.reasoning_tokens", c.reasoning));
                }
                if c.stream {
                    events.push(Event {
                        time_unix_nano: c.start + c.ttft_ns,
                        name: "llm.content.completion.chunk".into(),
                        ..Default::default()
                    });
                }
            }
            a.push(s(
                "traceloop.association.properties.user_id",
                c.user.clone(),
            ));
            a.push(s(
                "traceloop.association.properties.session_id",
                c.session.clone(),
            ));
            a.push(s("traceloop.prompt.key", c.prompt));
            a.push(i("traceloop.prompt.version", c.prompt_version));
        }
        Dialect::OpenInference => {
            name = if m.op == Op::Chat {
                "ChatCompletion".into()
            } else {
                "CreateEmbeddings".into()
            };
            kind = SpanKind::Internal;
            a.push(s(
                "openinference.span.kind",
                if m.op == Op::Chat { "LLM" } else { "EMBEDDING" },
            ));
            let provider = match m.provider {
                "gcp.gemini" => "google",
                "aws.bedrock" => "aws",
                "mistral_ai" => "mistralai",
                "x_ai" => "xai",
                p => p,
            };
            a.push(s("llm.provider", provider));
            a.push(s("llm.system", provider));
            if m.op == Op::Embeddings {
                a.push(s("embedding.model_name", m.model));
            }
            a.push(s(
                "llm.invocation_parameters",
                format!(
                    r#"{{"model": "{}", "temperature": 0.2, "stream": {}}}"#,
                    m.model, c.stream
                ),
            ));
            if ok {
                a.push(s("llm.model_name", m.response_model));
                a.push(i("llm.token_count.prompt", c.input));
                a.push(i("llm.token_count.completion", c.output));
                a.push(i("llm.token_count.total", c.input + c.output));
                if c.cache_read > 0 {
                    a.push(i("llm.token_count.prompt_details.cache_read", c.cache_read));
                }
                if c.cache_write > 0 {
                    a.push(i(
                        "llm.token_count.prompt_details.cache_write",
                        c.cache_write,
                    ));
                }
                if c.reasoning > 0 {
                    a.push(i(
                        "llm.token_count.completion_details.reasoning",
                        c.reasoning,
                    ));
                }
                if c.stream {
                    events.push(Event {
                        time_unix_nano: c.start + c.ttft_ns,
                        name: "First Token Stream Event".into(),
                        ..Default::default()
                    });
                }
            }
            a.push(s("session.id", c.session.clone()));
            a.push(s("user.id", c.user.clone()));
            a.push(s(
                "llm.prompt_template.version",
                format!("v{}", c.prompt_version),
            ));
        }
    }
    let mut status = None;
    if let Some(failure) = c.failure {
        let (class, message, http) = match (failure, m.provider) {
            (Failure::RateLimited, _) => (
                "RateLimitError",
                "Error code: 429 - rate limit exceeded",
                429,
            ),
            (Failure::ServerError, "anthropic") => {
                ("OverloadedError", "Error code: 529 - overloaded_error", 529)
            }
            (Failure::ServerError, _) => (
                "InternalServerError",
                "Error code: 500 - internal server error",
                500,
            ),
            (Failure::Timeout, _) => ("APITimeoutError", "Request timed out.", 0),
        };
        if d != Dialect::OpenInference {
            a.push(s("error.type", class));
        }
        if http != 0 {
            a.push(i("http.response.status_code", http));
        }
        events.push(Event {
            time_unix_nano: c.end,
            name: "exception".into(),
            attributes: vec![
                s("exception.type", format!("openai.{class}")),
                s("exception.message", message),
                b("exception.escaped", false),
            ],
            ..Default::default()
        });
        status = Some(Status {
            code: StatusCode::Error as i32,
            message: message.to_owned(),
        });
    }
    Span {
        name,
        kind: kind as i32,
        start_time_unix_nano: c.start,
        end_time_unix_nano: c.end,
        attributes: a,
        events,
        status,
        ..Default::default()
    }
}

fn agent_span(d: Dialect, service: &str, start: u64, end: u64, user: &str, session: &str) -> Span {
    let agent = format!("{service}-agent");
    let (name, attributes) = match d {
        Dialect::Semconv => (
            format!("invoke_agent {agent}"),
            vec![
                s("gen_ai.operation.name", "invoke_agent"),
                s("gen_ai.agent.name", agent),
                s("gen_ai.conversation.id", session),
                s("user.id", user),
            ],
        ),
        Dialect::SemconvLegacy => (format!("{agent}.run"), vec![s("user.id", user)]),
        Dialect::OpenLlmetry => (
            format!("{agent}.workflow"),
            vec![
                s("traceloop.span.kind", "workflow"),
                s("traceloop.workflow.name", agent.clone()),
                s("traceloop.entity.name", agent),
                s("traceloop.association.properties.user_id", user),
            ],
        ),
        Dialect::OpenInference => (
            agent,
            vec![
                s("openinference.span.kind", "AGENT"),
                s("session.id", session),
                s("user.id", user),
            ],
        ),
    };
    Span {
        name,
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        ..Default::default()
    }
}

fn tool_span(d: Dialect, tool: &str, start: u64, end: u64) -> Span {
    let (name, attributes) = match d {
        Dialect::Semconv => (
            format!("execute_tool {tool}"),
            vec![
                s("gen_ai.operation.name", "execute_tool"),
                s("gen_ai.tool.name", tool),
                s("gen_ai.tool.type", "function"),
            ],
        ),
        Dialect::SemconvLegacy => (format!("tool {tool}"), vec![s("tool.name", tool)]),
        Dialect::OpenLlmetry => (
            format!("{tool}.tool"),
            vec![
                s("traceloop.span.kind", "tool"),
                s("traceloop.entity.name", tool),
            ],
        ),
        Dialect::OpenInference => (
            tool.to_owned(),
            vec![s("openinference.span.kind", "TOOL"), s("tool.name", tool)],
        ),
    };
    Span {
        name,
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        ..Default::default()
    }
}

fn retrieval(d: Dialect, start: u64, end: u64) -> Span {
    let mut attributes = vec![
        s("db.system.name", "qdrant"),
        s("db.collection.name", "docs"),
        i("db.response.returned_rows", 8),
    ];
    let name = match d {
        Dialect::OpenInference => {
            attributes.push(s("openinference.span.kind", "RETRIEVER"));
            "retrieve".to_owned()
        }
        _ => {
            attributes.push(s("gen_ai.operation.name", "retrieval"));
            attributes.push(s("gen_ai.data_source.id", "docs"));
            "retrieval docs".to_owned()
        }
    };
    Span {
        name,
        kind: SpanKind::Client as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_760_000_000_000_000_000;

    #[test]
    fn deterministic_for_a_seed() {
        let a = Workload::new(42, T0, 1_000_000).batch(500);
        let b = Workload::new(42, T0, 1_000_000).batch(500);
        let c = Workload::new(43, T0, 1_000_000).batch(500);
        assert_eq!(a, b);
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn traces_are_well_formed() {
        let (req, count) = Workload::new(1, T0, 1_000_000).batch(2000);
        let spans: Vec<&Span> = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        assert_eq!(spans.len(), count);
        assert!(count >= 2000);
        let ids: std::collections::HashSet<&[u8]> =
            spans.iter().map(|s| s.span_id.as_slice()).collect();
        assert_eq!(ids.len(), count, "span ids are unique");
        // Providers never give two calls one response id; neither does the workload.
        let response_ids: Vec<&str> = spans
            .iter()
            .flat_map(|s| &s.attributes)
            .filter(|kv| kv.key == "gen_ai.response.id")
            .filter_map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => Some(s.as_str()),
                    _ => None,
                },
            )
            .collect();
        let distinct: std::collections::HashSet<&str> = response_ids.iter().copied().collect();
        assert!(response_ids.len() > 100, "{}", response_ids.len());
        assert_eq!(
            distinct.len(),
            response_ids.len(),
            "response ids are unique"
        );
        for s in &spans {
            assert_eq!(s.trace_id.len(), 16);
            assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
            if !s.parent_span_id.is_empty() {
                assert!(
                    ids.contains(s.parent_span_id.as_slice()),
                    "parent in the same batch"
                );
            }
        }
        let errors = spans
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.code == StatusCode::Error as i32)
            })
            .count();
        assert!(errors > 0, "some calls fail");
        for dialect_key in [
            "gen_ai.provider.name",
            "gen_ai.usage.prompt_tokens",
            "llm.request.type",
            "openinference.span.kind",
        ] {
            assert!(
                spans
                    .iter()
                    .any(|s| s.attributes.iter().any(|a| a.key == dialect_key)),
                "{dialect_key} appears"
            );
        }
    }
}
