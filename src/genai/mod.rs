//! Span -> LLM facts: is this span an LLM call, which operation, provider and
//! model, how many tokens of each kind, how long to the first chunk, did it fail
//! and why. One pass over the attributes, driven by the alias table in
//! [`aliases`]; nothing here knows about storage.

mod aliases;
mod error_class;
mod provider;
mod value;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};

use aliases::{Fact, FIRST_CHUNK_EVENTS, INDEX, LLM_OPERATIONS, WRAPPER_OPERATIONS};

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
    pub reasoning: Option<u64>,
    pub total: Option<u64>,
}

impl Tokens {
    /// Applies the inclusive/exclusive rules of genai-attributes.md 5.4 to the
    /// raw values a span reported.
    fn normalise(raw: Tokens) -> Tokens {
        // Saturating throughout: counts are producer input and may be absurd.
        let cached = raw.cached().unwrap_or(0);
        // Inclusive unless the cache tokens alone exceed it, which an inclusive
        // count cannot do: then the producer reported uncached input only.
        let input = raw.input.map(|i| {
            if cached > i {
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
    pub prompt_name: Option<String>,
    pub prompt_version: Option<String>,
    /// Cost the producer computed itself; kept for reconciliation, never used as ours.
    pub reported_cost_usd: Option<f64>,
    pub response_id: Option<String>,
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

/// Facts of any span; `llm` is set for LLM calls only.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanFacts {
    pub status: SpanStatus,
    /// Normalised error class when the span failed.
    pub error_type: Option<&'static str>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub llm: Option<LlmFacts>,
}

/// The attributes of one span that the alias table knows, sorted by fact and
/// priority, so each fact is read by scanning its few candidates in order.
struct Candidates<'a> {
    found: Vec<(Fact, u16, &'a AnyValue)>,
}

impl<'a> Candidates<'a> {
    fn collect(attributes: &'a [KeyValue]) -> Self {
        let mut found: Vec<(Fact, u16, &AnyValue)> = attributes
            .iter()
            .filter_map(|kv| {
                let (fact, prio) = INDEX.get(kv.key.as_str())?;
                Some((*fact, *prio, kv.value.as_ref()?))
            })
            .collect();
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
}

/// Reads the facts of one span. `resource` supplies user and session ids when
/// the span itself has none (some SDKs set them on the resource).
pub fn extract(span: &Span, resource: &[KeyValue]) -> SpanFacts {
    let attrs = Candidates::collect(&span.attributes);
    let res = Candidates::collect(resource);

    let (status, error_type) = status_and_error(span, &attrs);
    let user_id = attrs
        .string(Fact::UserId)
        .or_else(|| res.string(Fact::UserId));
    let session_id = attrs
        .string(Fact::SessionId)
        .or_else(|| res.string(Fact::SessionId));

    SpanFacts {
        status,
        error_type,
        user_id,
        session_id,
        llm: llm_facts(span, &attrs),
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
    // `error.type` on an unset span still means the operation failed (semconv
    // sets it only on failure); an explicit OK wins.
    let status = match declared {
        SpanStatus::Unset if error_attr.is_some() => SpanStatus::Error,
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
            span.status
                .as_ref()
                .map(|s| s.message.as_str())
                .filter(|m| !m.is_empty())
                .map(error_class::classify)
        })
        .unwrap_or(error_class::OTHER);
    (status, Some(class))
}

fn llm_facts(span: &Span, attrs: &Candidates) -> Option<LlmFacts> {
    let raw_operation = attrs.string(Fact::Operation);
    let operation = match raw_operation.as_deref() {
        Some(op) if WRAPPER_OPERATIONS.contains(&op) => return None,
        Some(op) => LLM_OPERATIONS
            .iter()
            .find(|(alias, _)| *alias == op)
            .map(|(_, canonical)| (*canonical).to_owned()),
        None => None,
    };
    let request_model = attrs.string(Fact::RequestModel);
    let response_model = attrs.string(Fact::ResponseModel);
    let raw_tokens = Tokens {
        input: attrs.count(Fact::InputTokens),
        output: attrs.count(Fact::OutputTokens),
        cache_read: attrs.count(Fact::CacheReadTokens),
        cache_write: attrs.count(Fact::CacheWriteTokens),
        reasoning: attrs.count(Fact::ReasoningTokens),
        total: attrs.count(Fact::TotalTokens),
    };
    // An LLM call is a span with a known inference operation, or, for producers
    // that predate `gen_ai.operation.name`, one that names a model and counts tokens.
    let has_model = request_model.is_some() || response_model.is_some();
    let is_llm = operation.is_some() || (has_model && !raw_tokens.is_empty());
    if !is_llm {
        return None;
    }
    let operation = operation.or_else(|| operation_from_span_name(&span.name));

    let provider = attrs
        .first(Fact::Provider, |v| {
            value::as_str(v).and_then(provider::canonical)
        })
        .or_else(|| {
            attrs
                .first(Fact::ServerAddress, value::as_str)
                .and_then(provider::from_host)
                .map(str::to_owned)
        })
        .or_else(|| {
            response_model
                .as_deref()
                .or(request_model.as_deref())
                .and_then(provider::from_model)
                .map(str::to_owned)
        });

    let streaming = attrs.first(Fact::Streaming, value::as_bool);
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
        tokens: Tokens::normalise(raw_tokens),
        ttft_ms,
        streaming,
        finish_reason: attrs.first(Fact::FinishReasons, value::first_of_list),
        prompt_name: attrs.string(Fact::PromptName),
        prompt_version: attrs.first(Fact::PromptVersion, |v| {
            value::as_str(v)
                .map(str::to_owned)
                .or_else(|| value::as_count(v).map(|n| n.to_string()))
        }),
        reported_cost_usd: attrs
            .first(Fact::ReportedCostUsd, value::as_f64)
            .filter(|c| *c >= 0.0),
        response_id: attrs.string(Fact::ResponseId),
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
        let facts = extract(&sp, &[]);
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

    #[test]
    fn semconv_1_26_names_without_operation() {
        let sp = span(vec![
            s("gen_ai.system", "OpenAI"),
            s("gen_ai.request.model", "gpt-4"),
            s("gen_ai.usage.prompt_tokens", "12"),
            i("gen_ai.usage.completion_tokens", 3),
        ]);
        let llm = extract(&sp, &[]).llm.expect("an LLM call");
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
        let t = extract(&sp, &[]).llm.unwrap().tokens;
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
        let t = extract(&sp, &[]).llm.unwrap().tokens;
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
        assert!(extract(&sp, &[]).llm.is_none());
    }

    #[test]
    fn plain_spans_are_not_llm_calls() {
        let sp = span(vec![s("http.request.method", "GET")]);
        let facts = extract(&sp, &[]);
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
        let facts = extract(&sp, &[]);
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
        assert_eq!(extract(&sp, &[]).error_type, Some("timeout"));

        // From the HTTP status.
        let mut sp = span(vec![i("http.response.status_code", 503)]);
        sp.status = Some(Status {
            code: StatusCode::Error as i32,
            message: String::new(),
        });
        assert_eq!(extract(&sp, &[]).error_type, Some("server_error"));
    }

    #[test]
    fn ttft_from_first_chunk_event_and_never_beyond_the_span() {
        let mut sp = span(vec![s("gen_ai.operation.name", "chat")]);
        sp.events.push(Event {
            name: "gen_ai.content.completion.chunk".into(),
            time_unix_nano: 1_400_000_000,
            ..Default::default()
        });
        let llm = extract(&sp, &[]).llm.unwrap();
        assert_eq!(llm.ttft_ms, Some(400.0));
        assert_eq!(llm.streaming, Some(true));

        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            kv(
                "gen_ai.response.time_to_first_chunk",
                Value::DoubleValue(9.0),
            ),
        ]);
        assert_eq!(extract(&sp, &[]).llm.unwrap().ttft_ms, None);
    }

    #[test]
    fn user_and_session_fall_back_to_the_resource() {
        let sp = span(vec![s("gen_ai.conversation.id", "conv-1")]);
        let facts = extract(&sp, &[s("user.id", "u-9")]);
        assert_eq!(facts.session_id.as_deref(), Some("conv-1"));
        assert_eq!(facts.user_id.as_deref(), Some("u-9"));
    }

    #[test]
    fn framework_provider_falls_through_to_host() {
        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.system", "langchain"),
            s("server.address", "api.anthropic.com"),
        ]);
        let llm = extract(&sp, &[]).llm.unwrap();
        assert_eq!(llm.provider.as_deref(), Some("anthropic"));
    }
}
