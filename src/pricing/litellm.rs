//! Reads LiteLLM's `model_prices_and_context_window.json` (USD per token as
//! floats, one object per model key) into price book entries.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde_json::Value;

use super::book::{Entry, PriceBook, PriceRow, Rates, Tier};
use super::PricingError;

/// LiteLLM provider -> semconv provider name.
const PROVIDERS: &[(&str, &str)] = &[
    ("openai", "openai"),
    ("text-completion-openai", "openai"),
    ("azure", "azure.ai.openai"),
    ("azure_ai", "azure.ai.inference"),
    ("anthropic", "anthropic"),
    ("bedrock", "aws.bedrock"),
    ("bedrock_converse", "aws.bedrock"),
    ("gemini", "gcp.gemini"),
    ("mistral", "mistral_ai"),
    ("codestral", "mistral_ai"),
    ("deepseek", "deepseek"),
    ("xai", "x_ai"),
    ("groq", "groq"),
    ("cohere", "cohere"),
    ("cohere_chat", "cohere"),
    ("perplexity", "perplexity"),
];

fn provider(litellm: &str) -> String {
    if litellm.starts_with("vertex_ai") {
        return "gcp.vertex_ai".into();
    }
    PROVIDERS
        .iter()
        .find(|(k, _)| *k == litellm)
        .map_or_else(|| litellm.to_owned(), |(_, v)| (*v).to_owned())
}

/// A per-token float as USD per 1M tokens, as an exact-looking decimal.
fn per_million(v: &Value) -> Option<Decimal> {
    let f = v.as_f64().filter(|f| f.is_finite() && *f >= 0.0)?;
    // Through the shortest decimal text of the float, so 2.5e-06 becomes 2.5
    // and not 2.4999999999999998.
    let exact = Decimal::from_scientific(&format!("{f:e}")).ok()?;
    Some((exact * Decimal::from(1_000_000u32)).normalize())
}

fn rates(m: &serde_json::Map<String, Value>, suffix: &str) -> Option<Rates> {
    let get = |k: &str| m.get(&format!("{k}{suffix}")).and_then(per_million);
    Some(Rates {
        input: get("input_cost_per_token")?,
        output: get("output_cost_per_token").unwrap_or_default(),
        cache_read: get("cache_read_input_token_cost"),
        cache_write: get("cache_creation_input_token_cost"),
        cache_write_1h: get("cache_creation_input_token_cost_above_1hr"),
        reasoning: get("output_cost_per_reasoning_token"),
    })
}

/// Context tiers LiteLLM spells as `*_above_<N>k_tokens`.
const TIERS: &[u64] = &[128, 200, 256, 272, 512];

pub fn parse(text: &str, origin: &str) -> Result<PriceBook, PricingError> {
    let root: HashMap<String, Value> =
        serde_json::from_str(text).map_err(|e| PricingError::Invalid {
            at: origin.to_owned(),
            message: format!("not a LiteLLM price file: {e}"),
        })?;
    let mut entries = Vec::new();
    let mut keys: Vec<&String> = root.keys().collect();
    keys.sort();
    for key in keys {
        // `sample_spec` documents the fields; it is not a model.
        let Some(m) = root[key].as_object().filter(|_| key != "sample_spec") else {
            continue;
        };
        let mode = m.get("mode").and_then(Value::as_str).unwrap_or("chat");
        let operation = match mode {
            "chat" | "completion" | "responses" => "chat",
            "embedding" => "embeddings",
            _ => continue,
        };
        let Some(base) = rates(m, "") else { continue };
        let mut tiers = Vec::new();
        for k in TIERS {
            let suffix = format!("_above_{k}k_tokens");
            if let Some(input) = m
                .get(&format!("input_cost_per_token{suffix}"))
                .and_then(per_million)
            {
                let mut r = base.clone();
                r.input = input;
                if let Some(o) = m
                    .get(&format!("output_cost_per_token{suffix}"))
                    .and_then(per_million)
                {
                    r.output = o;
                }
                if let Some(c) = m
                    .get(&format!("cache_read_input_token_cost{suffix}"))
                    .and_then(per_million)
                {
                    r.cache_read = Some(c);
                }
                tiers.push(Tier {
                    input_tokens_gt: k * 1000,
                    rates: r,
                });
            }
        }
        let row = |tier: &str, rates: Rates, tiers: Vec<Tier>| PriceRow {
            effective_from: None,
            effective_from_text: None,
            service_tier: tier.to_owned(),
            rates,
            tiers,
        };
        let mut prices = vec![row("default", base, tiers)];
        for (suffix, tier) in [
            ("_batches", "batch"),
            ("_priority", "priority"),
            ("_flex", "flex"),
        ] {
            if let Some(r) = rates(m, suffix) {
                prices.push(row(tier, r, Vec::new()));
            }
        }
        let litellm_provider = m
            .get("litellm_provider")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut exact = vec![key.to_lowercase()];
        if let Some((prefix, rest)) = key.split_once('/') {
            // `gemini/gemini-2.5-pro` is also reached as `gemini-2.5-pro`.
            if prefix == litellm_provider || litellm_provider.starts_with(prefix) {
                exact.push(rest.to_lowercase());
            }
        }
        entries.push(Entry {
            id: format!("litellm/{key}"),
            vendor: litellm_provider.to_owned(),
            hosts: vec![provider(litellm_provider)],
            operation: operation.to_owned(),
            checked: None,
            source: Some(origin.to_owned()),
            exact,
            prefix: Vec::new(),
            regex: Vec::new(),
            prices,
            origin: origin.to_owned(),
        });
    }
    let mut book = PriceBook {
        version: format!("litellm:{}", origin.rsplit('/').next().unwrap_or(origin)),
        entries,
        ..Default::default()
    };
    book.index();
    Ok(book)
}
