//! Span -> LLM facts: is this span an LLM call, which operation, provider and
//! model, how many tokens of each kind, how long to the first chunk, did it fail
//! and why. One pass over the attributes, driven by the alias table in
//! [`aliases`]; nothing here knows about storage.

mod aliases;
mod error_class;
mod provider;
mod usage;
mod value;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};

use aliases::{Fact, AI_SDK_CALLS, FIRST_CHUNK_EVENTS, INDEX, LLM_OPERATIONS, WRAPPER_OPERATIONS};

/// Outcome of a span, from its status and error attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error,
}

impl SpanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanStatus::Unset => "unset",
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
        }
    }
}

/// Token counts of one call, normalised: `input` includes cache reads and
/// writes, `output` includes reasoning, whatever the producer's convention was.
/// `None` means the producer did not say, which is not the same as zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
    /// Of `cache_write`, the part written with a 1-hour lifetime (priced higher).
    pub cache_write_1h: Option<u64>,
    pub reasoning: Option<u64>,
    pub total: Option<u64>,
}

impl Tokens {
    /// Applies the inclusive/exclusive rules of genai-attributes.md 5.4 to the
    /// raw values a span reported; `exclusive` when the source is known to
    /// count input without cache tokens.
    fn normalise(raw: Tokens, exclusive: bool) -> Tokens {
        // Saturating throughout: counts are producer input and may be absurd.
        let cached = raw.cached().unwrap_or(0);
        // Inclusive unless known otherwise or the cache tokens alone exceed
        // it, which an inclusive count cannot do.
        let input = raw.input.map(|i| {
            if exclusive || cached > i {
                i.saturating_add(cached)
            } else {
                i
            }
        });
        // Reasoning is part of output, unless it is larger (Gemini-style counts
        // that exclude thoughts).
        let output = raw.output.map(|o| match raw.reasoning {
            Some(r) if r > o => o.saturating_add(r),
            _ => o,
        });
        let total = match (input, output) {
            (Some(i), Some(o)) => Some(i.saturating_add(o)),
            (Some(i), None) if raw.total.is_none() => Some(i),
            _ => raw.total,
        };
        // An embedding call that only reports a total used it all as input.
        let input = input.or(match (raw.total, output) {
            (Some(t), None) => Some(t),
            _ => None,
        });
        Tokens {
            input,
            output,
            cache_read: raw.cache_read,
            cache_write: raw.cache_write,
            cache_write_1h: raw.cache_write_1h,
            reasoning: raw.reasoning,
            total,
        }
    }

    /// Input tokens billed at the plain input price.
    pub fn input_uncached(&self) -> Option<u64> {
        self.input
            .map(|i| i.saturating_sub(self.cached().unwrap_or(0)))
    }

    /// Cache reads plus cache writes, when either is known.
    fn cached(&self) -> Option<u64> {
        match (self.cache_read, self.cache_write) {
            (None, None) => None,
            (r, w) => Some(r.unwrap_or(0).saturating_add(w.unwrap_or(0))),
        }
    }

    fn is_empty(&self) -> bool {
        *self == Tokens::default()
    }
}

/// What an LLM call span says about the call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LlmFacts {
    /// Canonical operation (`chat`, `text_completion`, `embeddings`, ...).
    pub operation: Option<String>,
    /// Canonical provider (semconv >= 1.37 names).
    pub provider: Option<String>,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub tokens: Tokens,
    /// Time to first chunk, streaming calls only.
    pub ttft_ms: Option<f64>,
    pub streaming: Option<bool>,
    pub finish_reason: Option<String>,
    /// Cost the producer computed itself; kept for reconciliation, never used as ours.
    pub reported_cost_usd: Option<f64>,
    pub response_id: Option<String>,
    /// Pricing modifier (`default`, `batch`, `priority`, `flex`).
    pub service_tier: Option<String>,
    /// Served from a response cache (explicit flag only).
    pub response_cache_hit: Option<bool>,
}

impl LlmFacts {
    /// The model name used for pricing: what actually served the call if known,
    /// else what was asked for.
    pub fn model(&self) -> Option<&str> {
        self.response_model
            .as_deref()
            .or(self.request_model.as_deref())
    }
}

/// Who and what a call was made for. Read on every span, not only on LLM
/// calls, because frameworks set these on the request or agent span above
/// the call (Langfuse `propagate_attributes`, AI SDK telemetry metadata on
/// the wrapper, OpenInference on the chain span): trace assembly hands them
/// down to the calls below (`ingest::assemble`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallContext {
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub prompt_name: Option<String>,
    pub prompt_version: Option<String>,
}

impl CallContext {
    pub fn is_empty(&self) -> bool {
        *self == CallContext::default()
    }

    /// Whether every fact an ancestor could give is already known.
    pub fn is_full(&self) -> bool {
        self.user_id.is_some()
            && self.session_id.is_some()
            && self.prompt_name.is_some()
            && self.prompt_version.is_some()
    }

    /// Fills what this span does not say from an ancestor's context (the
    /// nearest ancestor first). A prompt travels as a pair: a version is
    /// only taken with its name, so a call's own prompt never gets the
    /// version of another prompt set higher up.
    pub fn inherit(&mut self, ancestor: &CallContext) {
        if self.user_id.is_none() {
            self.user_id.clone_from(&ancestor.user_id);
        }
        if self.session_id.is_none() {
            self.session_id.clone_from(&ancestor.session_id);
        }
        match &self.prompt_name {
            None if ancestor.prompt_name.is_some() => {
                self.prompt_name.clone_from(&ancestor.prompt_name);
                self.prompt_version.clone_from(&ancestor.prompt_version);
            }
            Some(name)
                if self.prompt_version.is_none() && ancestor.prompt_name.as_ref() == Some(name) =>
            {
                self.prompt_version.clone_from(&ancestor.prompt_version);
            }
            _ => {}
        }
    }
}

/// Facts of any span; `llm` is set for LLM calls only.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanFacts {
    pub status: SpanStatus,
    /// Normalised error class when the span failed.
    pub error_type: Option<&'static str>,
    pub context: CallContext,
    pub llm: Option<LlmFacts>,
}

/// The attributes of one span that the alias table knows, sorted by fact and
/// priority, so each fact is read by scanning its few candidates in order.
struct Candidates<'a> {
    found: Vec<(Fact, u16, &'a AnyValue)>,
}

impl<'a> Candidates<'a> {
    fn collect(attributes: &'a [KeyValue]) -> Self {
        let mut found: Vec<(Fact, u16, &AnyValue)> = Vec::new();
        for kv in attributes {
            if let (Some(rows), Some(v)) = (INDEX.get(kv.key.as_str()), kv.value.as_ref()) {
                found.extend(rows.iter().map(|(fact, prio)| (*fact, *prio, v)));
            }
        }
        found.sort_unstable_by_key(|(f, p, _)| (*f, *p));
        Candidates { found }
    }

    /// First candidate of `fact` that `read` accepts.
    fn first<T>(&self, fact: Fact, read: impl Fn(&'a AnyValue) -> Option<T>) -> Option<T> {
        self.found
            .iter()
            .filter(|(f, _, _)| *f == fact)
            .find_map(|(_, _, v)| read(v))
    }

    fn string(&self, fact: Fact) -> Option<String> {
        self.first(fact, value::as_str).map(|s| s.trim().to_owned())
    }

    fn count(&self, fact: Fact) -> Option<u64> {
        self.first(fact, value::as_count)
    }

    /// The JSON document of the first candidate of `fact` that parses.
    fn json(&self, fact: Fact) -> Option<serde_json::Value> {
        self.first(fact, value::json_doc)
    }

    fn has(&self, fact: Fact) -> bool {
        self.found.iter().any(|(f, _, _)| *f == fact)
    }
}

/// Reads only the call context of a span: what trace assembly needs of the
/// spans of a request read back from the log.
pub fn read_context(span: &Span, resource: &[KeyValue]) -> CallContext {
    call_context(
        &Candidates::collect(&span.attributes),
        &Candidates::collect(resource),
    )
}

fn call_context(attrs: &Candidates, res: &Candidates) -> CallContext {
    CallContext {
        user_id: attrs
            .string(Fact::UserId)
            .or_else(|| res.string(Fact::UserId)),
        session_id: attrs
            .string(Fact::SessionId)
            .or_else(|| res.string(Fact::SessionId)),
        prompt_name: attrs
            .string(Fact::PromptName)
            .or_else(|| langfuse_prompt(attrs, "name")),
        prompt_version: attrs
            .first(Fact::PromptVersion, |v| {
                value::as_str(v)
                    .map(str::to_owned)
                    .or_else(|| value::as_count(v).map(|n| n.to_string()))
            })
            .or_else(|| langfuse_prompt(attrs, "version")),
    }
}

/// Reads the facts of one span. `resource` supplies user and session ids when
/// the span itself has none (some SDKs set them on the resource); `scope` is
/// the instrumentation scope name (some dialect rules depend on it).
pub fn extract(span: &Span, resource: &[KeyValue], scope: Option<&str>) -> SpanFacts {
    let attrs = Candidates::collect(&span.attributes);
    let res = Candidates::collect(resource);

    let (status, error_type) = status_and_error(span, &attrs);
    let context = call_context(&attrs, &res);
    SpanFacts {
        status,
        error_type,
        context,
        llm: llm_facts(span, &attrs, scope),
    }
}

fn status_and_error(span: &Span, attrs: &Candidates) -> (SpanStatus, Option<&'static str>) {
    let code = span.status.as_ref().map(|s| s.code).unwrap_or(0);
    let declared = match StatusCode::try_from(code) {
        Ok(StatusCode::Ok) => SpanStatus::Ok,
        Ok(StatusCode::Error) => SpanStatus::Error,
        _ => SpanStatus::Unset,
    };
    let error_attr = attrs.string(Fact::ErrorType);
    // An unset span still failed if it says so another way (row 16):
    // `error.type` (semconv sets it only on failure), Langfuse's ERROR level,
    // an exception event, an HTTP error status. An explicit OK wins.
    let failed_otherwise = || {
        error_attr.is_some()
            || attrs
                .string(Fact::Level)
                .is_some_and(|l| l.eq_ignore_ascii_case("error"))
            || span.events.iter().any(|e| e.name == "exception")
            || attrs
                .count(Fact::HttpStatus)
                .is_some_and(|c| (400..600).contains(&c))
    };
    let status = match declared {
        SpanStatus::Unset if failed_otherwise() => SpanStatus::Error,
        s => s,
    };
    if status != SpanStatus::Error {
        return (status, None);
    }
    let exception_type = span
        .events
        .iter()
        .filter(|e| e.name == "exception")
        .flat_map(|e| e.attributes.iter())
        .find(|kv| kv.key == "exception.type")
        .and_then(|kv| kv.value.as_ref())
        .and_then(value::as_str);
    let class = error_attr
        .as_deref()
        .or(exception_type)
        .map(error_class::classify)
        .filter(|c| *c != error_class::OTHER)
        .or_else(|| {
            attrs
                .count(Fact::HttpStatus)
                .and_then(error_class::from_http_status)
        })
        .or_else(|| {
            attrs
                .string(Fact::StatusMessage)
                .or_else(|| span.status.as_ref().map(|s| s.message.clone()))
                .filter(|m| !m.is_empty())
                .map(|m| error_class::classify(&m))
        })
        .unwrap_or(error_class::OTHER);
    (status, Some(class))
}

/// What kind of span this is, by the first classifier that speaks
/// (genai-attributes.md, row 1): an LLM call with its operation (if known),
/// or not an LLM call.
enum Kind {
    Llm(Option<String>),
    NotLlm,
    Unknown,
}

fn canonical_operation(op: &str) -> Option<String> {
    LLM_OPERATIONS
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(op))
        .map(|(_, canonical)| (*canonical).to_owned())
}

fn classify(attrs: &Candidates) -> Kind {
    let llm = |op: &str| Kind::Llm(Some(op.to_owned()));
    if let Some(t) = attrs.string(Fact::LangfuseType) {
        return match t.as_str() {
            "generation" => llm("chat"),
            "embedding" => llm("embeddings"),
            _ => Kind::NotLlm,
        };
    }
    if let Some(k) = attrs.string(Fact::OpenInferenceKind) {
        return match k.to_ascii_uppercase().as_str() {
            "LLM" => Kind::Llm(None),
            "EMBEDDING" => llm("embeddings"),
            _ => Kind::NotLlm,
        };
    }
    if let Some(op) = attrs.string(Fact::Operation) {
        if WRAPPER_OPERATIONS.contains(&op.as_str()) {
            return Kind::NotLlm;
        }
        if let Some(canonical) = canonical_operation(&op) {
            return Kind::Llm(Some(canonical));
        }
    }
    if let Some(id) = attrs.string(Fact::AiOperationId) {
        // Vercel AI SDK: only the provider calls (`do*`) are LLM calls; the
        // wrappers around them carry the same usage summed over steps.
        let op_id = id.split(' ').next().unwrap_or(&id);
        if let Some((_, op)) = AI_SDK_CALLS.iter().find(|(call, _)| *call == op_id) {
            return llm(op);
        }
        if op_id.starts_with("ai.") {
            return Kind::NotLlm;
        }
    }
    if let Some(t) = attrs.string(Fact::LlmRequestType) {
        if let Some(canonical) = canonical_operation(&t) {
            return Kind::Llm(Some(canonical));
        }
    }
    if let Some(k) = attrs.string(Fact::LangsmithKind) {
        return match k.as_str() {
            "llm" => llm("chat"),
            "embedding" => llm("embeddings"),
            _ => Kind::NotLlm,
        };
    }
    if attrs.has(Fact::TraceloopKind) {
        return Kind::NotLlm;
    }
    Kind::Unknown
}

fn llm_facts(span: &Span, attrs: &Candidates, scope: Option<&str>) -> Option<LlmFacts> {
    let invocation = attrs.json(Fact::DocInvocationParameters);
    let invocation_parameter = |key: &str| invocation.as_ref().and_then(|d| d.get(key));
    let request_model = attrs
        .string(Fact::RequestModel)
        .or_else(|| invocation_parameter("model").and_then(|v| v.as_str().map(str::to_owned)))
        .or_else(|| attrs.string(Fact::RequestModelFallback));
    let response_model = attrs.string(Fact::ResponseModel);
    let provider = provider(attrs, request_model.as_deref(), response_model.as_deref());
    let usage = usage::read(attrs, scope, provider.as_deref());
    let operation = match classify(attrs) {
        Kind::NotLlm => return None,
        Kind::Llm(op) => op,
        // Producers that predate operation names: a model and token counts.
        Kind::Unknown => {
            let has_model = request_model.is_some() || response_model.is_some();
            if !has_model || usage.tokens.is_empty() {
                return None;
            }
            None
        }
    };
    let operation = operation
        .or_else(|| operation_from_span_name(&span.name))
        .or_else(|| {
            // An LLM call nobody named is a chat call unless it only has input.
            Some("chat".to_owned())
        });

    let streaming = attrs
        .first(Fact::Streaming, value::as_bool)
        .or_else(|| invocation_parameter("stream").and_then(|v| v.as_bool()))
        .or_else(|| {
            attrs
                .string(Fact::AiOperationId)
                .map(|id| id.contains("doStream"))
                .filter(|s| *s)
        });
    let duration_ms = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano) as f64
        / 1e6;
    let ttft_ms = ttft_ms(span, attrs, streaming).filter(|t| *t >= 0.0 && *t <= duration_ms);
    let streaming = streaming.or(ttft_ms.map(|_| true));

    Some(LlmFacts {
        operation,
        provider,
        request_model,
        response_model,
        tokens: Tokens::normalise(usage.tokens, usage.exclusive_input),
        ttft_ms,
        streaming,
        finish_reason: attrs.first(Fact::FinishReasons, value::first_of_list),
        reported_cost_usd: attrs
            .json(Fact::DocCostDetails)
            .and_then(|d| d.get("total").and_then(serde_json::Value::as_f64))
            .or_else(|| attrs.first(Fact::ReportedCostUsd, value::as_f64))
            .filter(|c| *c >= 0.0),
        response_id: attrs.string(Fact::ResponseId).or_else(|| {
            // OpenInference keeps the provider response only in `output.value`.
            attrs
                .json(Fact::DocOutputValue)
                .and_then(|d| d.get("id")?.as_str().map(str::to_owned))
        }),
        service_tier: attrs
            .string(Fact::ServiceTier)
            .map(|t| t.to_ascii_lowercase())
            .or_else(|| {
                attrs
                    .json(Fact::DocModelParameters)
                    .and_then(|d| d.get("service_tier")?.as_str().map(str::to_owned))
            }),
        response_cache_hit: attrs.first(Fact::ResponseCacheHit, value::as_bool),
    })
}

/// A field of the Vercel AI SDK's Langfuse prompt link
/// (`ai.telemetry.metadata.langfusePrompt`).
fn langfuse_prompt(attrs: &Candidates, key: &str) -> Option<String> {
    let doc = attrs.json(Fact::DocLangfusePrompt)?;
    match doc.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The provider: provider attributes (framework names fall through), then
/// the server address, then the model name.
fn provider(attrs: &Candidates, request: Option<&str>, response: Option<&str>) -> Option<String> {
    attrs
        .first(Fact::Provider, |v| {
            value::as_str(v).and_then(provider::canonical)
        })
        .or_else(|| {
            attrs
                .first(Fact::ServerAddress, |v| {
                    let raw = value::as_str(v)?;
                    // `gen_ai.openai.api_base` is a URL; take its host.
                    let host = raw
                        .split("://")
                        .last()
                        .unwrap_or(raw)
                        .split(['/', ':'])
                        .next()
                        .unwrap_or(raw);
                    provider::from_host(host)
                })
                .map(str::to_owned)
        })
        .or_else(|| {
            response
                .or(request)
                .and_then(provider::from_model)
                .map(str::to_owned)
        })
}

fn ttft_ms(span: &Span, attrs: &Candidates, streaming: Option<bool>) -> Option<f64> {
    attrs
        .first(Fact::TtftSeconds, value::as_f64)
        .map(|s| s * 1e3)
        .or_else(|| {
            (streaming == Some(true))
                .then(|| attrs.first(Fact::TtftSecondsIfStreaming, value::as_f64))
                .flatten()
                .map(|s| s * 1e3)
        })
        .or_else(|| attrs.first(Fact::TtftMillis, value::as_f64))
        .or_else(|| {
            attrs
                .first(Fact::CompletionStart, value::iso_time_nanos)
                // Saturating: the time is the producer's, any year from 1677.
                .map(|t| t.saturating_sub(span.start_time_unix_nano as i64) as f64 / 1e6)
        })
        .or_else(|| {
            span.events
                .iter()
                .filter(|e| FIRST_CHUNK_EVENTS.contains(&e.name.as_str()))
                .map(|e| e.time_unix_nano)
                .min()
                .filter(|t| *t >= span.start_time_unix_nano)
                .map(|t| (t - span.start_time_unix_nano) as f64 / 1e6)
        })
}

/// Operation from the span name when no attribute says it: semconv names are
/// `{operation} {model}`, OpenLLMetry's `openai.chat`.
fn operation_from_span_name(name: &str) -> Option<String> {
    let first = name.split([' ', '.']).find(|w| !w.is_empty())?;
    let last = name.rsplit('.').next()?;
    [first, last].into_iter().find_map(|word| {
        LLM_OPERATIONS
            .iter()
            .find(|(alias, _)| *alias == word)
            .map(|(_, canonical)| (*canonical).to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::{span::Event, Status};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }
    fn s(key: &str, v: &str) -> KeyValue {
        kv(key, Value::StringValue(v.into()))
    }
    fn i(key: &str, v: i64) -> KeyValue {
        kv(key, Value::IntValue(v))
    }
    fn span(attributes: Vec<KeyValue>) -> Span {
        Span {
            name: "chat gpt-4o".into(),
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 3_000_000_000,
            attributes,
            ..Default::default()
        }
    }

    #[test]
    fn semconv_1_37_chat_call() {
        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.provider.name", "openai"),
            s("gen_ai.request.model", "gpt-4o"),
            s("gen_ai.response.model", "gpt-4o-2024-08-06"),
            i("gen_ai.usage.input_tokens", 100),
            i("gen_ai.usage.output_tokens", 20),
            i("gen_ai.usage.cache_read.input_tokens", 60),
            i("gen_ai.usage.reasoning.output_tokens", 5),
            s("gen_ai.response.finish_reasons", "[\"stop\"]"),
            kv("gen_ai.request.stream", Value::BoolValue(true)),
            kv(
                "gen_ai.response.time_to_first_chunk",
                Value::DoubleValue(0.25),
            ),
        ]);
        let facts = extract(&sp, &[], None);
        assert_eq!(facts.status, SpanStatus::Unset);
        let llm = facts.llm.expect("an LLM call");
        assert_eq!(llm.operation.as_deref(), Some("chat"));
        assert_eq!(llm.provider.as_deref(), Some("openai"));
        assert_eq!(llm.model(), Some("gpt-4o-2024-08-06"));
        assert_eq!(llm.tokens.input, Some(100));
        assert_eq!(llm.tokens.input_uncached(), Some(40));
        assert_eq!(llm.tokens.output, Some(20));
        assert_eq!(llm.tokens.reasoning, Some(5));
        assert_eq!(llm.tokens.total, Some(120));
        assert_eq!(llm.finish_reason.as_deref(), Some("stop"));
        assert_eq!(llm.streaming, Some(true));
        assert_eq!(llm.ttft_ms, Some(250.0));
    }

    /// Found by the otlp_protobuf fuzz target: a completion start centuries
    /// before the span overflowed the subtraction.
    #[test]
    fn a_completion_start_centuries_away_is_no_ttft_and_no_panic() {
        for when in [
            "1695-05-12T09:15:02.35Z",
            "1677-09-21T00:12:44Z",
            "2262-04-11T23:47:16Z",
        ] {
            let mut sp = span(vec![
                s("gen_ai.system", "openai"),
                s("gen_ai.request.model", "gpt-4o"),
                i("gen_ai.usage.input_tokens", 10),
                s("langfuse.observation.completion_start_time", when),
            ]);
            sp.start_time_unix_nano = 1_790_000_000_000_000_000;
            sp.end_time_unix_nano = sp.start_time_unix_nano + 2_000_000_000;
            let llm = extract(&sp, &[], None).llm.expect("an LLM call");
            assert_eq!(llm.ttft_ms, None, "{when}");
        }
    }

    #[test]
    fn semconv_1_26_names_without_operation() {
        let sp = span(vec![
            s("gen_ai.system", "OpenAI"),
            s("gen_ai.request.model", "gpt-4"),
            s("gen_ai.usage.prompt_tokens", "12"),
            i("gen_ai.usage.completion_tokens", 3),
        ]);
        let llm = extract(&sp, &[], None).llm.expect("an LLM call");
        assert_eq!(llm.provider.as_deref(), Some("openai"));
        assert_eq!(llm.operation.as_deref(), Some("chat"), "from the span name");
        assert_eq!(llm.tokens.input, Some(12));
        assert_eq!(llm.tokens.output, Some(3));
    }

    #[test]
    fn exclusive_cache_counts_are_made_inclusive() {
        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            i("gen_ai.usage.input_tokens", 10),
            i("gen_ai.usage.cache_read.input_tokens", 1000),
            i("gen_ai.usage.cache_creation.input_tokens", 200),
            i("gen_ai.usage.output_tokens", 5),
        ]);
        let t = extract(&sp, &[], None).llm.unwrap().tokens;
        assert_eq!(t.input, Some(1210));
        assert_eq!(t.input_uncached(), Some(10));
        assert_eq!(t.cache_write, Some(200));
    }

    #[test]
    fn absurd_token_counts_saturate_instead_of_overflowing() {
        let max = u64::MAX.to_string();
        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.usage.input_tokens", "5"),
            s("gen_ai.usage.cache_read.input_tokens", &max),
            s("gen_ai.usage.cache_write.input_tokens", &max),
            s("gen_ai.usage.output_tokens", &max),
            s("gen_ai.usage.reasoning.output_tokens", &max),
        ]);
        let t = extract(&sp, &[], None).llm.unwrap().tokens;
        assert_eq!(t.input, Some(u64::MAX));
        assert_eq!(t.total, Some(u64::MAX));
        assert_eq!(t.input_uncached(), Some(0));
    }

    #[test]
    fn agent_spans_are_not_llm_calls() {
        let sp = span(vec![
            s("gen_ai.operation.name", "invoke_agent"),
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", 100),
        ]);
        assert!(extract(&sp, &[], None).llm.is_none());
    }

    #[test]
    fn plain_spans_are_not_llm_calls() {
        let sp = span(vec![s("http.request.method", "GET")]);
        let facts = extract(&sp, &[], None);
        assert!(facts.llm.is_none());
        assert_eq!(facts.error_type, None);
    }

    #[test]
    fn errors_get_a_class() {
        let mut sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            s("error.type", "RateLimitError"),
        ]);
        sp.status = Some(Status {
            code: StatusCode::Error as i32,
            message: "Error code: 429".into(),
        });
        let facts = extract(&sp, &[], None);
        assert_eq!(facts.status, SpanStatus::Error);
        assert_eq!(facts.error_type, Some("rate_limited"));

        // From an exception event when there is no error.type.
        let mut sp = span(vec![]);
        sp.status = Some(Status {
            code: StatusCode::Error as i32,
            message: String::new(),
        });
        sp.events.push(Event {
            name: "exception".into(),
            attributes: vec![s("exception.type", "httpx.ReadTimeout")],
            ..Default::default()
        });
        assert_eq!(extract(&sp, &[], None).error_type, Some("timeout"));

        // From the HTTP status.
        let mut sp = span(vec![i("http.response.status_code", 503)]);
        sp.status = Some(Status {
            code: StatusCode::Error as i32,
            message: String::new(),
        });
        assert_eq!(extract(&sp, &[], None).error_type, Some("server_error"));
    }

    #[test]
    fn ttft_from_first_chunk_event_and_never_beyond_the_span() {
        let mut sp = span(vec![s("gen_ai.operation.name", "chat")]);
        sp.events.push(Event {
            name: "gen_ai.content.completion.chunk".into(),
            time_unix_nano: 1_400_000_000,
            ..Default::default()
        });
        let llm = extract(&sp, &[], None).llm.unwrap();
        assert_eq!(llm.ttft_ms, Some(400.0));
        assert_eq!(llm.streaming, Some(true));

        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            kv(
                "gen_ai.response.time_to_first_chunk",
                Value::DoubleValue(9.0),
            ),
        ]);
        assert_eq!(extract(&sp, &[], None).llm.unwrap().ttft_ms, None);
    }

    #[test]
    fn user_and_session_fall_back_to_the_resource() {
        let sp = span(vec![s("gen_ai.conversation.id", "conv-1")]);
        let facts = extract(&sp, &[s("user.id", "u-9")], None);
        assert_eq!(facts.context.session_id.as_deref(), Some("conv-1"));
        assert_eq!(facts.context.user_id.as_deref(), Some("u-9"));
    }

    #[test]
    fn framework_provider_falls_through_to_host() {
        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.system", "langchain"),
            s("server.address", "api.anthropic.com"),
        ]);
        let llm = extract(&sp, &[], None).llm.unwrap();
        assert_eq!(llm.provider.as_deref(), Some("anthropic"));
    }

    fn b(key: &str, v: bool) -> KeyValue {
        kv(key, Value::BoolValue(v))
    }

    #[test]
    fn openinference_llm_span() {
        let sp = span(vec![
            s("openinference.span.kind", "LLM"),
            s("llm.provider", "openai"),
            s("llm.model_name", "gpt-4o-2024-08-06"),
            s(
                "llm.invocation_parameters",
                r#"{"model": "gpt-4o", "stream": true}"#,
            ),
            i("llm.token_count.prompt", 1200),
            i("llm.token_count.completion", 80),
            i("llm.token_count.prompt_details.cache_read", 1024),
            i("llm.token_count.completion_details.reasoning", 30),
            s("session.id", "s-1"),
        ]);
        let llm = extract(&sp, &[], None).llm.expect("LLM");
        assert_eq!(llm.operation.as_deref(), Some("chat"));
        assert_eq!(
            llm.request_model.as_deref(),
            Some("gpt-4o"),
            "invocation parameters before llm.model_name"
        );
        assert_eq!(llm.model(), Some("gpt-4o-2024-08-06"));
        assert_eq!(llm.streaming, Some(true), "from invocation parameters");
        assert_eq!(
            (
                llm.tokens.input,
                llm.tokens.cache_read,
                llm.tokens.reasoning
            ),
            (Some(1200), Some(1024), Some(30))
        );
        let chain = span(vec![
            s("openinference.span.kind", "CHAIN"),
            i("llm.token_count.prompt", 1200),
        ]);
        assert!(
            extract(&chain, &[], None).llm.is_none(),
            "chains carry aggregated usage"
        );
    }

    #[test]
    fn openllmetry_0_4_span() {
        let mut sp = span(vec![
            s("llm.request.type", "chat"),
            s("gen_ai.system", "Anthropic"),
            s("gen_ai.request.model", "claude-3-5-sonnet-20241022"),
            i("gen_ai.usage.prompt_tokens", 1500),
            i("gen_ai.usage.completion_tokens", 100),
            i("gen_ai.usage.cache_read_input_tokens", 1000),
            b("llm.is_streaming", true),
            s("traceloop.association.properties.user_id", "u-2"),
        ]);
        sp.name = "anthropic.chat".into();
        let facts = extract(&sp, &[], None);
        let llm = facts.llm.expect("LLM");
        assert_eq!(llm.provider.as_deref(), Some("anthropic"));
        assert_eq!(
            llm.tokens.input,
            Some(1500),
            "OpenLLMetry Anthropic input is inclusive"
        );
        assert_eq!(llm.streaming, Some(true));
        assert_eq!(facts.context.user_id.as_deref(), Some("u-2"));
        let workflow = span(vec![
            s("traceloop.span.kind", "workflow"),
            s("gen_ai.request.model", "x"),
            i("gen_ai.usage.prompt_tokens", 5),
        ]);
        assert!(extract(&workflow, &[], None).llm.is_none());
    }

    #[test]
    fn vercel_ai_sdk_wrapper_and_provider_call() {
        let wrapper = span(vec![
            s("ai.operationId", "ai.streamText"),
            s("ai.model.id", "gpt-4o"),
            i("ai.usage.inputTokens", 100),
        ]);
        assert!(
            extract(&wrapper, &[], None).llm.is_none(),
            "wrappers sum their steps"
        );
        let call = span(vec![
            s("ai.operationId", "ai.streamText.doStream"),
            s("operation.name", "ai.streamText.doStream my-fn"),
            s("ai.model.provider", "openai.chat"),
            s("ai.model.id", "gpt-4o"),
            i("ai.usage.inputTokens", 100),
            i("ai.usage.outputTokens", 20),
            i("ai.usage.inputTokenDetails.cacheReadTokens", 64),
            kv("ai.response.msToFirstChunk", Value::DoubleValue(420.0)),
        ]);
        let llm = extract(&call, &[], None).llm.expect("LLM");
        assert_eq!(llm.provider.as_deref(), Some("openai"));
        assert_eq!(llm.ttft_ms, Some(420.0));
        assert_eq!(llm.streaming, Some(true));
        assert_eq!(llm.tokens.cache_read, Some(64));
    }

    #[test]
    fn ttft_under_the_semconv_metric_name_is_read_in_seconds() {
        // The Vercel AI SDK 7 semconv mode names the attribute after the
        // metric `gen_ai.client.operation.time_to_first_chunk`.
        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.provider.name", "openai"),
            s("gen_ai.request.model", "gpt-4o-mini"),
            kv(
                "gen_ai.client.operation.time_to_first_chunk",
                Value::DoubleValue(0.35),
            ),
        ]);
        let llm = extract(&sp, &[], None).llm.expect("LLM");
        assert_eq!(llm.ttft_ms, Some(350.0));
        assert_eq!(llm.streaming, Some(true));
    }

    #[test]
    fn a_call_inherits_what_it_does_not_say_and_a_prompt_as_a_pair() {
        let ctx = |u: Option<&str>, p: Option<&str>, v: Option<&str>| CallContext {
            user_id: u.map(str::to_owned),
            session_id: None,
            prompt_name: p.map(str::to_owned),
            prompt_version: v.map(str::to_owned),
        };
        let agent = ctx(Some("u-1"), Some("support"), Some("4"));

        let mut bare = CallContext::default();
        bare.inherit(&agent);
        assert_eq!(bare, agent);

        let mut own_user = ctx(Some("u-2"), None, None);
        own_user.inherit(&agent);
        assert_eq!(own_user, ctx(Some("u-2"), Some("support"), Some("4")));

        let mut other_prompt = ctx(None, Some("triage"), None);
        other_prompt.inherit(&agent);
        assert_eq!(
            other_prompt,
            ctx(Some("u-1"), Some("triage"), None),
            "no version of another prompt"
        );

        let mut same_prompt = ctx(None, Some("support"), None);
        same_prompt.inherit(&agent);
        assert_eq!(same_prompt.prompt_version.as_deref(), Some("4"));
    }

    #[test]
    fn langfuse_usage_details_are_exclusive() {
        let sp = span(vec![
            s("langfuse.observation.type", "generation"),
            s("langfuse.observation.model.name", "claude-sonnet-4-5"),
            s(
                "langfuse.observation.usage_details",
                r#"{"input": 100, "output": 50, "input_cached_tokens": 900, "input_cache_creation": 200, "output_reasoning_tokens": 10}"#,
            ),
            s("langfuse.observation.cost_details", r#"{"total": 0.0123}"#),
            s("langfuse.observation.prompt.name", "support"),
            i("langfuse.observation.prompt.version", 3),
            s(
                "langfuse.observation.completion_start_time",
                "\"1970-01-01T00:00:01.250Z\"",
            ),
        ]);
        let facts = extract(&sp, &[], None);
        let llm = facts.llm.expect("LLM");
        assert_eq!(
            llm.tokens.input,
            Some(1200),
            "uncached 100 + read 900 + write 200"
        );
        assert_eq!(llm.tokens.output, Some(60), "output 50 + reasoning 10");
        assert_eq!(llm.reported_cost_usd, Some(0.0123));
        assert_eq!(
            (
                facts.context.prompt_name.as_deref(),
                facts.context.prompt_version.as_deref()
            ),
            (Some("support"), Some("3"))
        );
        assert_eq!(llm.ttft_ms, Some(250.0));
    }

    #[test]
    fn openlit_anthropic_input_is_exclusive() {
        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.system", "anthropic"),
            s("gen_ai.request.model", "claude-3-5-sonnet-20241022"),
            i("gen_ai.usage.input_tokens", 50),
            i("gen_ai.usage.cache_read.input_tokens", 30),
            i("gen_ai.usage.output_tokens", 10),
        ]);
        let t = extract(&sp, &[], Some("openlit.otel.tracing"))
            .llm
            .unwrap()
            .tokens;
        assert_eq!(t.input, Some(80), "exclusive input made inclusive");
        let t = extract(&sp, &[], Some("opentelemetry.instrumentation.anthropic"))
            .llm
            .unwrap()
            .tokens;
        assert_eq!(t.input, Some(50), "other producers are inclusive");
    }

    #[test]
    fn langsmith_and_logfire_json_usage() {
        let ls = span(vec![
            s("langsmith.span.kind", "llm"),
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", 500),
            i("gen_ai.usage.output_tokens", 40),
            s("gen_ai.usage.input_token_details", r#"{"cache_read": 256}"#),
            s("gen_ai.usage.output_token_details", r#"{"reasoning": 12}"#),
            s("gen_ai.response.finish_reasons", "stop,length"),
        ]);
        let llm = extract(&ls, &[], None).llm.expect("LLM");
        assert_eq!(
            (llm.tokens.cache_read, llm.tokens.reasoning),
            (Some(256), Some(12))
        );
        assert_eq!(llm.finish_reason.as_deref(), Some("stop"));
        let logfire = span(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.request.model", "claude-sonnet-4-5"),
            s(
                "gen_ai.usage.raw",
                r#"{"input_tokens": 20, "cache_read_input_tokens": 300, "cache_creation_input_tokens": 0, "output_tokens": 7}"#,
            ),
            kv("operation.cost", Value::DoubleValue(0.002)),
        ]);
        let llm = extract(&logfire, &[], None).llm.expect("LLM");
        assert_eq!(
            llm.tokens.input,
            Some(320),
            "Anthropic raw usage is exclusive"
        );
        assert_eq!(llm.reported_cost_usd, Some(0.002));
    }
}
