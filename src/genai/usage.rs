//! Token usage: the attribute aliases first, then the JSON documents some
//! producers put usage in (Langfuse `usage_details`, Logfire/Pydantic
//! `gen_ai.usage.raw`, LangSmith token details, Vercel provider metadata),
//! then the inclusive/exclusive rules of genai-attributes.md 5.4.

use serde_json::Value;

use super::aliases::Fact;
use super::{Candidates, Tokens};

fn count(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// First count found at any of `paths` (dotted) in `doc`.
fn first(doc: &Value, paths: &[&str]) -> Option<u64> {
    paths.iter().find_map(|p| {
        let mut node = doc;
        for part in p.split('.') {
            node = node.get(part)?;
        }
        count(Some(node))
    })
}

/// Usage as the span reported it, and whether its input excludes cache tokens.
pub(crate) struct RawUsage {
    pub tokens: Tokens,
    pub exclusive_input: bool,
}

pub(crate) fn read(attrs: &Candidates, scope: Option<&str>, provider: Option<&str>) -> RawUsage {
    let mut t = Tokens {
        input: attrs.count(Fact::InputTokens),
        output: attrs.count(Fact::OutputTokens),
        cache_read: attrs.count(Fact::CacheReadTokens),
        cache_write: attrs.count(Fact::CacheWriteTokens),
        cache_write_1h: None,
        reasoning: attrs.count(Fact::ReasoningTokens),
        total: attrs.count(Fact::TotalTokens),
    };
    // OpenLIT's Anthropic instrumentation reports Anthropic's raw input count,
    // which excludes cache reads and writes.
    let mut exclusive =
        scope.is_some_and(|s| s.starts_with("openlit")) && provider == Some("anthropic");

    // LangSmith: details as JSON strings.
    if let Some(d) = attrs.json(Fact::DocInputTokenDetails) {
        t.cache_read = t.cache_read.or(first(&d, &["cache_read"]));
        t.cache_write = t.cache_write.or(first(&d, &["cache_creation"]));
    }
    if let Some(d) = attrs.json(Fact::DocOutputTokenDetails) {
        t.reasoning = t.reasoning.or(first(&d, &["reasoning"]));
    }

    // Langfuse usage_details: disjoint buckets, `input` is uncached.
    if let Some(d) = attrs.json(Fact::DocUsageDetails) {
        if t.input.is_none() {
            if let Some(i) = first(&d, &["input"]) {
                t.input = Some(i);
                exclusive = true;
            } else {
                t.input = first(&d, &["input_tokens", "prompt_tokens"]);
            }
        }
        let reasoning = first(
            &d,
            &[
                "output_reasoning_tokens",
                "output_reasoning",
                "reasoning_tokens",
            ],
        );
        if t.output.is_none() {
            t.output = first(&d, &["output", "output_tokens", "completion_tokens"]).map(|o| {
                o + if d.get("output").is_some() {
                    reasoning.unwrap_or(0)
                } else {
                    0
                }
            });
        }
        t.reasoning = t.reasoning.or(reasoning);
        t.total = t.total.or(first(&d, &["total", "total_tokens"]));
        t.cache_read = t.cache_read.or(first(
            &d,
            &[
                "input_cached_tokens",
                "cache_read_input_tokens",
                "input_cache_read",
            ],
        ));
        let w5 = first(&d, &["input_cache_creation_5m"]);
        let w1 = first(&d, &["input_cache_creation_1h"]);
        let split = match (w5, w1) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        t.cache_write = t
            .cache_write
            .or(first(
                &d,
                &["input_cache_creation", "cache_creation_input_tokens"],
            ))
            .or(split);
        t.cache_write_1h = t.cache_write_1h.or(w1);
    }

    // Vercel AI SDK provider metadata.
    if let Some(d) = attrs.json(Fact::DocProviderMetadata) {
        t.cache_read = t.cache_read.or(first(
            &d,
            &[
                "openai.cachedPromptTokens",
                "anthropic.usage.cache_read_input_tokens",
                "anthropic.cacheReadInputTokens",
                "bedrock.usage.cacheReadInputTokens",
            ],
        ));
        t.cache_write = t.cache_write.or(first(
            &d,
            &[
                "anthropic.usage.cache_creation_input_tokens",
                "anthropic.cacheCreationInputTokens",
                "bedrock.usage.cacheWriteInputTokens",
            ],
        ));
        t.cache_write_1h = t.cache_write_1h.or(first(
            &d,
            &["anthropic.usage.cache_creation.ephemeral_1h_input_tokens"],
        ));
        t.reasoning = t.reasoning.or(first(&d, &["openai.reasoningTokens"]));
    }

    // Logfire / Pydantic AI: the provider's raw usage object.
    if let Some(d) = attrs.json(Fact::DocUsageRaw) {
        let anthropic_style = d.get("cache_read_input_tokens").is_some()
            || d.get("cache_creation_input_tokens").is_some();
        if t.input.is_none() {
            if let Some(i) = first(&d, &["prompt_tokens"]) {
                t.input = Some(i);
            } else if let Some(i) = first(&d, &["input_tokens"]) {
                t.input = Some(i);
                exclusive |= anthropic_style;
            }
        }
        t.output = t
            .output
            .or(first(&d, &["completion_tokens", "output_tokens"]));
        t.cache_read = t.cache_read.or(first(
            &d,
            &[
                "prompt_tokens_details.cached_tokens",
                "input_tokens_details.cached_tokens",
                "cache_read_input_tokens",
            ],
        ));
        t.cache_write = t
            .cache_write
            .or(first(&d, &["cache_creation_input_tokens"]));
        t.cache_write_1h = t
            .cache_write_1h
            .or(first(&d, &["cache_creation.ephemeral_1h_input_tokens"]));
        t.reasoning = t.reasoning.or(first(
            &d,
            &[
                "completion_tokens_details.reasoning_tokens",
                "output_tokens_details.reasoning_tokens",
            ],
        ));
        t.total = t.total.or(first(&d, &["total_tokens"]));
    }
    RawUsage {
        tokens: t,
        exclusive_input: exclusive,
    }
}
