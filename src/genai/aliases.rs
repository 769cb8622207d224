//! The attribute alias table: which span attribute carries which LLM fact.
//!
//! Rows are in priority order per fact: the first present and valid value wins
//! (genai-attributes.md, section 4). Adding a dialect means adding rows here.
//! Keys are matched exactly; a key may feed several facts (OpenInference's
//! `llm.model_name` is the last resort for both models). Facts read from JSON
//! documents inside attributes (Langfuse usage details, Logfire raw usage,
//! Vercel provider metadata) are in [`super::usage`] and [`super::json_facts`].

use std::collections::HashMap;
use std::sync::LazyLock;

/// An LLM fact that one or more attributes can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Fact {
    // Classification signals, in the order they are consulted.
    LangfuseType,
    OpenInferenceKind,
    Operation,
    AiOperationId,
    LlmRequestType,
    LangsmithKind,
    TraceloopKind,
    // Facts.
    Provider,
    RequestModel,
    /// Read after the JSON invocation parameters.
    RequestModelFallback,
    ResponseModel,
    InputTokens,
    OutputTokens,
    TotalTokens,
    CacheReadTokens,
    CacheWriteTokens,
    ReasoningTokens,
    /// Time to first chunk in seconds.
    TtftSeconds,
    /// Time to first token in seconds, only meaningful when the call streamed
    /// (OpenLIT sets it to the whole duration otherwise).
    TtftSecondsIfStreaming,
    TtftMillis,
    /// ISO timestamp of the first chunk.
    CompletionStart,
    Streaming,
    FinishReasons,
    ResponseId,
    ErrorType,
    /// Langfuse observation level (`ERROR` marks a failure).
    Level,
    StatusMessage,
    HttpStatus,
    PromptName,
    PromptVersion,
    UserId,
    SessionId,
    ReportedCostUsd,
    ServerAddress,
    ServiceTier,
    ResponseCacheHit,
    // JSON documents inside string attributes, parsed only when needed.
    DocUsageDetails,
    DocUsageRaw,
    DocInputTokenDetails,
    DocOutputTokenDetails,
    DocProviderMetadata,
    DocInvocationParameters,
    DocCostDetails,
    DocLangfusePrompt,
    DocModelParameters,
    DocOutputValue,
}

use Fact::*;

/// (attribute key, fact), priority order within each fact.
pub(crate) const ALIASES: &[(&str, Fact)] = &[
    ("langfuse.observation.type", LangfuseType),
    ("openinference.span.kind", OpenInferenceKind),
    ("gen_ai.operation.name", Operation),
    ("ai.operationId", AiOperationId),
    ("operation.name", AiOperationId),
    ("llm.request.type", LlmRequestType),
    ("langsmith.span.kind", LangsmithKind),
    ("traceloop.span.kind", TraceloopKind),
    // 3. Provider.
    ("gen_ai.provider.name", Provider),
    ("gen_ai.system", Provider),
    ("llm.provider", Provider),
    ("llm.system", Provider),
    ("ai.model.provider", Provider),
    ("langsmith.metadata.ls_provider", Provider),
    ("llm.vendor", Provider),
    ("gen_ai.request.provider", Provider),
    ("error.llm_provider", Provider),
    ("server.address", ServerAddress),
    ("gen_ai.openai.api_base", ServerAddress),
    ("gen_ai.endpoint", ServerAddress),
    // 4. Requested model.
    ("gen_ai.request.model", RequestModel),
    ("llm.request.model_name", RequestModel),
    ("ai.model.id", RequestModel),
    ("llm.request.model", RequestModel),
    ("langfuse.observation.model.name", RequestModel),
    ("embedding.model_name", RequestModel),
    ("reranker.model_name", RequestModel),
    ("langsmith.metadata.ls_model_name", RequestModel),
    // (then OpenInference's llm.invocation_parameters JSON `model`)
    ("model", RequestModelFallback),
    ("llm.model_name", RequestModelFallback),
    // 5. Response model.
    ("gen_ai.response.model", ResponseModel),
    ("llm.response.model_name", ResponseModel),
    ("ai.response.model", ResponseModel),
    ("llm.model_name", ResponseModel),
    ("llm.response.model", ResponseModel),
    // 6. Input tokens (inclusive of cache unless the source is known exclusive).
    ("gen_ai.usage.input_tokens", InputTokens),
    ("gen_ai.usage.prompt_tokens", InputTokens),
    ("llm.token_count.prompt", InputTokens),
    ("ai.usage.inputTokens", InputTokens),
    ("ai.usage.promptTokens", InputTokens),
    ("llm.usage.prompt_tokens", InputTokens),
    // 7. Output tokens.
    ("gen_ai.usage.output_tokens", OutputTokens),
    ("gen_ai.usage.completion_tokens", OutputTokens),
    ("llm.token_count.completion", OutputTokens),
    ("ai.usage.outputTokens", OutputTokens),
    ("ai.usage.completionTokens", OutputTokens),
    ("llm.usage.completion_tokens", OutputTokens),
    // 8. Total tokens.
    ("gen_ai.usage.total_tokens", TotalTokens),
    ("llm.usage.total_tokens", TotalTokens),
    ("llm.token_count.total", TotalTokens),
    ("ai.usage.totalTokens", TotalTokens),
    ("ai.usage.tokens", TotalTokens),
    // 9. Cache reads.
    ("gen_ai.usage.cache_read.input_tokens", CacheReadTokens),
    ("gen_ai.usage.cache_read_input_tokens", CacheReadTokens),
    ("llm.token_count.prompt_details.cache_read", CacheReadTokens),
    (
        "ai.usage.inputTokenDetails.cacheReadTokens",
        CacheReadTokens,
    ),
    ("ai.usage.cachedInputTokens", CacheReadTokens),
    ("gen_ai.usage.details.cache_read_tokens", CacheReadTokens),
    (
        "gen_ai.usage.prompt_tokens_details.cached_tokens",
        CacheReadTokens,
    ),
    ("gen_ai.usage.input_tokens.cached", CacheReadTokens),
    (
        "llm.token_count.prompt_details.cache_input",
        CacheReadTokens,
    ),
    // 10. Cache writes.
    ("gen_ai.usage.cache_write.input_tokens", CacheWriteTokens),
    ("gen_ai.usage.cache_creation.input_tokens", CacheWriteTokens),
    ("gen_ai.usage.cache_creation_input_tokens", CacheWriteTokens),
    (
        "llm.token_count.prompt_details.cache_write",
        CacheWriteTokens,
    ),
    (
        "ai.usage.inputTokenDetails.cacheWriteTokens",
        CacheWriteTokens,
    ),
    ("gen_ai.usage.details.cache_write_tokens", CacheWriteTokens),
    (
        "gen_ai.usage.prompt_tokens_details.cache_creation_tokens",
        CacheWriteTokens,
    ),
    // 11. Reasoning.
    ("gen_ai.usage.reasoning.output_tokens", ReasoningTokens),
    ("gen_ai.usage.reasoning_tokens", ReasoningTokens),
    ("llm.usage.reasoning_tokens", ReasoningTokens),
    (
        "llm.token_count.completion_details.reasoning",
        ReasoningTokens,
    ),
    (
        "ai.usage.outputTokenDetails.reasoningTokens",
        ReasoningTokens,
    ),
    ("ai.usage.reasoningTokens", ReasoningTokens),
    ("gen_ai.usage.details.reasoning_tokens", ReasoningTokens),
    (
        "gen_ai.usage.completion_tokens_details.reasoning_tokens",
        ReasoningTokens,
    ),
    ("gen_ai.usage.output_tokens.reasoning", ReasoningTokens),
    // 14. Time to first token/chunk.
    ("gen_ai.response.time_to_first_chunk", TtftSeconds),
    // The semconv metric names used as span attributes: the Vercel AI SDK 7
    // (`@ai-sdk/otel`, semconv mode) reports TTFT under the metric's name,
    // and the genai repo renames that metric `…inference…`; LiteLLM's
    // metric of the same meaning is `gen_ai.client.response.…`. All seconds.
    ("gen_ai.client.operation.time_to_first_chunk", TtftSeconds),
    ("gen_ai.client.inference.time_to_first_chunk", TtftSeconds),
    ("gen_ai.client.response.time_to_first_token", TtftSeconds),
    ("gen_ai.server.time_to_first_token", TtftSecondsIfStreaming),
    ("ai.response.msToFirstChunk", TtftMillis),
    ("ai.stream.msToFirstChunk", TtftMillis),
    (
        "langfuse.observation.completion_start_time",
        CompletionStart,
    ),
    // 15. Streaming.
    ("gen_ai.request.stream", Streaming),
    ("gen_ai.is_streaming", Streaming),
    ("llm.is_streaming", Streaming),
    ("gen_ai.request.is_stream", Streaming),
    ("langsmith.request.streaming", Streaming),
    // 17. Errors.
    ("error.type", ErrorType),
    ("langfuse.observation.level", Level),
    ("langfuse.observation.status_message", StatusMessage),
    ("http.response.status_code", HttpStatus),
    ("http.status_code", HttpStatus),
    ("error.code", HttpStatus),
    // 18. Finish reasons.
    ("gen_ai.response.finish_reasons", FinishReasons),
    ("gen_ai.response.finish_reason", FinishReasons),
    ("llm.finish_reason", FinishReasons),
    ("ai.response.finishReason", FinishReasons),
    ("gen_ai.completion.0.finish_reason", FinishReasons),
    ("llm.completions.0.finish_reason", FinishReasons),
    ("anthropic.message.stop_reason", FinishReasons),
    // 28. Response id.
    ("gen_ai.response.id", ResponseId),
    ("ai.response.id", ResponseId),
    // 19. Producer-reported cost.
    ("gen_ai.usage.cost", ReportedCostUsd),
    ("gen_ai.usage.cost.amount", ReportedCostUsd),
    ("llm.cost.total", ReportedCostUsd),
    ("operation.cost", ReportedCostUsd),
    ("gen_ai.cost.total_cost", ReportedCostUsd),
    ("gen_ai.usage.total_cost", ReportedCostUsd),
    // 20-21. Prompt.
    ("langfuse.observation.prompt.name", PromptName),
    ("langfuse.prompt.name", PromptName),
    ("traceloop.prompt.key", PromptName),
    ("gen_ai.prompt.name", PromptName),
    ("prompt.id", PromptName),
    ("langfuse.observation.prompt.version", PromptVersion),
    ("langfuse.prompt.version", PromptVersion),
    ("traceloop.prompt.version", PromptVersion),
    ("traceloop.prompt.version_name", PromptVersion),
    ("traceloop.prompt.version_hash", PromptVersion),
    ("llm.prompt_template.version", PromptVersion),
    ("gen_ai.prompt.version", PromptVersion),
    ("openlit.agent.version_hash", PromptVersion),
    // 22. User.
    ("user.id", UserId),
    ("langfuse.user.id", UserId),
    ("enduser.id", UserId),
    ("gen_ai.user.id", UserId),
    ("traceloop.association.properties.user_id", UserId),
    ("langfuse.trace.metadata.langfuse_user_id", UserId),
    ("langfuse.observation.metadata.langfuse_user_id", UserId),
    ("ai.telemetry.metadata.userId", UserId),
    ("langsmith.metadata.user_id", UserId),
    ("metadata.user_api_key_user_id", UserId),
    ("metadata.user_api_key_end_user_id", UserId),
    ("gen_ai.request.user", UserId),
    ("gen_ai.user", UserId),
    ("llm.user", UserId),
    // 23. Session / conversation.
    ("session.id", SessionId),
    ("langfuse.session.id", SessionId),
    ("gen_ai.conversation.id", SessionId),
    ("gen_ai.session.id", SessionId),
    ("traceloop.association.properties.session_id", SessionId),
    ("traceloop.association.properties.chat_id", SessionId),
    (
        "traceloop.association.properties.conversation_id",
        SessionId,
    ),
    ("langfuse.trace.metadata.langfuse_session_id", SessionId),
    ("ai.telemetry.metadata.sessionId", SessionId),
    ("langsmith.metadata.session_id", SessionId),
    ("langsmith.metadata.thread_id", SessionId),
    ("langsmith.metadata.conversation_id", SessionId),
    // 25. Response-cache hits.
    ("gen_ai.cache.hit", ResponseCacheHit),
    ("llm.cache_hit", ResponseCacheHit),
    ("cache.hit", ResponseCacheHit),
    // 26. Service tier.
    ("openai.response.service_tier", ServiceTier),
    ("openai.request.service_tier", ServiceTier),
    ("gen_ai.openai.response.service_tier", ServiceTier),
    ("gen_ai.openai.request.service_tier", ServiceTier),
    ("gen_ai.response.service_tier", ServiceTier),
    // JSON documents.
    ("langfuse.observation.usage_details", DocUsageDetails),
    ("gen_ai.usage.raw", DocUsageRaw),
    ("gen_ai.usage.input_token_details", DocInputTokenDetails),
    ("gen_ai.usage.output_token_details", DocOutputTokenDetails),
    ("ai.response.providerMetadata", DocProviderMetadata),
    ("llm.invocation_parameters", DocInvocationParameters),
    ("langfuse.observation.cost_details", DocCostDetails),
    ("ai.telemetry.metadata.langfusePrompt", DocLangfusePrompt),
    ("langfuse.observation.model.parameters", DocModelParameters),
    ("output.value", DocOutputValue),
];

/// Attribute key -> every (fact, priority) it feeds; lower priority wins.
pub(crate) type Index = HashMap<&'static str, Vec<(Fact, u16)>, ahash::RandomState>;

pub(crate) static INDEX: LazyLock<Index> = LazyLock::new(|| {
    let mut next: HashMap<Fact, u16> = HashMap::new();
    let mut index = Index::default();
    for &(key, fact) in ALIASES {
        let p = next.entry(fact).or_insert(0);
        *p += 1;
        index.entry(key).or_default().push((fact, *p));
    }
    index
});

/// Operation names (semconv, OpenLLMetry `llm.request.type`, LiteLLM call
/// types) that are LLM calls, with the canonical operation each one means.
pub(crate) const LLM_OPERATIONS: &[(&str, &str)] = &[
    ("chat", "chat"),
    ("text_completion", "text_completion"),
    ("completion", "text_completion"),
    ("generate_content", "generate_content"),
    ("generate", "generate_content"),
    ("embeddings", "embeddings"),
    ("embedding", "embeddings"),
    ("responses", "chat"),
    ("rerank", "rerank"),
    ("acompletion", "chat"),
    ("aresponses", "chat"),
    ("atext_completion", "text_completion"),
    ("aembedding", "embeddings"),
];

/// Operations that wrap or orchestrate LLM calls: never LLM calls themselves,
/// even when they carry (aggregated) usage.
pub(crate) const WRAPPER_OPERATIONS: &[&str] = &[
    "invoke_agent",
    "agent_step",
    "invoke_workflow",
    "create_agent",
    "execute_tool",
    "retrieval",
    "plan",
    "search_memory",
    "create_memory",
    "update_memory",
    "upsert_memory",
    "delete_memory",
    "create_memory_store",
    "delete_memory_store",
];

/// Vercel AI SDK operation ids of provider calls (the leaves), and their operation.
pub(crate) const AI_SDK_CALLS: &[(&str, &str)] = &[
    ("ai.generateText.doGenerate", "chat"),
    ("ai.streamText.doStream", "chat"),
    ("ai.generateObject.doGenerate", "chat"),
    ("ai.streamObject.doStream", "chat"),
    ("ai.embed.doEmbed", "embeddings"),
    ("ai.embedMany.doEmbed", "embeddings"),
];

/// Span events whose time marks the first streamed chunk.
pub(crate) const FIRST_CHUNK_EVENTS: &[&str] = &[
    "ai.stream.firstChunk",
    "First Token Stream Event",
    "gen_ai.content.completion.chunk",
    "llm.content.completion.chunk",
];
