//! The attribute alias table: which span attribute carries which LLM fact.
//!
//! Rows are in priority order per fact: the first present and valid value wins
//! (see genai-attributes.md, section 4). Adding a dialect means adding rows here,
//! not code elsewhere. Keys are matched exactly.

use std::collections::HashMap;
use std::sync::LazyLock;

/// An LLM fact that one or more attributes can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Fact {
    Operation,
    Provider,
    RequestModel,
    ResponseModel,
    InputTokens,
    OutputTokens,
    TotalTokens,
    CacheReadTokens,
    CacheWriteTokens,
    ReasoningTokens,
    /// Time to first chunk in seconds.
    TtftSeconds,
    /// Time to first token in seconds, but only meaningful when the call streamed
    /// (OpenLIT sets it to the whole duration otherwise).
    TtftSecondsIfStreaming,
    TtftMillis,
    Streaming,
    FinishReasons,
    ResponseId,
    ErrorType,
    HttpStatus,
    PromptName,
    PromptVersion,
    UserId,
    SessionId,
    ReportedCostUsd,
    ServerAddress,
}

/// (attribute key, fact), priority order within each fact.
pub(crate) const ALIASES: &[(&str, Fact)] = &[
    // Operation: semconv >= 1.27.
    ("gen_ai.operation.name", Fact::Operation),
    // Provider: semconv >= 1.37, then the deprecated 1.26-1.36 name.
    ("gen_ai.provider.name", Fact::Provider),
    ("gen_ai.system", Fact::Provider),
    // Models.
    ("gen_ai.request.model", Fact::RequestModel),
    ("gen_ai.response.model", Fact::ResponseModel),
    // Tokens: semconv >= 1.27 names, then the 1.26 names.
    ("gen_ai.usage.input_tokens", Fact::InputTokens),
    ("gen_ai.usage.prompt_tokens", Fact::InputTokens),
    ("gen_ai.usage.output_tokens", Fact::OutputTokens),
    ("gen_ai.usage.completion_tokens", Fact::OutputTokens),
    ("gen_ai.usage.total_tokens", Fact::TotalTokens),
    (
        "gen_ai.usage.cache_read.input_tokens",
        Fact::CacheReadTokens,
    ),
    (
        "gen_ai.usage.cache_write.input_tokens",
        Fact::CacheWriteTokens,
    ),
    (
        "gen_ai.usage.cache_creation.input_tokens",
        Fact::CacheWriteTokens,
    ),
    (
        "gen_ai.usage.reasoning.output_tokens",
        Fact::ReasoningTokens,
    ),
    // Streaming and time to first chunk (semconv 1.41; OpenLIT's span attribute).
    ("gen_ai.response.time_to_first_chunk", Fact::TtftSeconds),
    (
        "gen_ai.server.time_to_first_token",
        Fact::TtftSecondsIfStreaming,
    ),
    ("gen_ai.request.stream", Fact::Streaming),
    // Response.
    ("gen_ai.response.finish_reasons", Fact::FinishReasons),
    ("gen_ai.response.id", Fact::ResponseId),
    // Errors.
    ("error.type", Fact::ErrorType),
    ("http.response.status_code", Fact::HttpStatus),
    ("http.status_code", Fact::HttpStatus),
    // Prompt, user, session.
    ("gen_ai.prompt.name", Fact::PromptName),
    ("gen_ai.prompt.version", Fact::PromptVersion),
    ("user.id", Fact::UserId),
    ("enduser.id", Fact::UserId),
    ("session.id", Fact::SessionId),
    ("gen_ai.conversation.id", Fact::SessionId),
    // Cost the producer computed itself (reconciliation only).
    ("gen_ai.usage.cost", Fact::ReportedCostUsd),
    // Where the call went: a provider fallback.
    ("server.address", Fact::ServerAddress),
];

/// Key -> (fact, priority); lower priority wins.
pub(crate) static INDEX: LazyLock<HashMap<&'static str, (Fact, u16), ahash::RandomState>> =
    LazyLock::new(|| {
        let mut next: HashMap<Fact, u16> = HashMap::new();
        ALIASES
            .iter()
            .map(|&(key, fact)| {
                let p = next.entry(fact).or_insert(0);
                *p += 1;
                (key, (fact, *p))
            })
            .collect()
    });

/// `gen_ai.operation.name` values that are LLM inference calls, with the
/// canonical operation each one means.
pub(crate) const LLM_OPERATIONS: &[(&str, &str)] = &[
    ("chat", "chat"),
    ("text_completion", "text_completion"),
    ("completion", "text_completion"),
    ("generate_content", "generate_content"),
    ("generate", "generate_content"),
    ("embeddings", "embeddings"),
    ("embedding", "embeddings"),
    ("responses", "chat"),
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

/// Span events whose time marks the first streamed chunk.
pub(crate) const FIRST_CHUNK_EVENTS: &[&str] = &[
    "ai.stream.firstChunk",
    "First Token Stream Event",
    "gen_ai.content.completion.chunk",
    "llm.content.completion.chunk",
];
