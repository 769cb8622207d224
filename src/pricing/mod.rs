//! Pricing: the price book, model-name matching, cost arithmetic, LiteLLM's
//! price file. Every LLM call gets a cost, or an explicit `unpriced`: an
//! unknown model is never $0.

pub mod book;
pub mod cost;
mod litellm;
pub mod matching;

use std::path::Path;

use rust_decimal::prelude::ToPrimitive;

pub use book::PriceBook;

use crate::genai::{LlmFacts, SpanStatus};

/// The book shipped in the binary.
pub const DEFAULT_BOOK: &str = include_str!("default_prices.toml");

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("price book {at}: {message}")]
    Invalid { at: String, message: String },
    #[error("cannot read price file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// How a span's cost was determined (the `cost_status` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostStatus {
    Priced,
    Unpriced,
    Reported,
    CacheHit,
    NotLlm,
}

impl CostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CostStatus::Priced => "priced",
            CostStatus::Unpriced => "unpriced",
            CostStatus::Reported => "reported",
            CostStatus::CacheHit => "cache_hit",
            CostStatus::NotLlm => "not_llm",
        }
    }
}

/// The cost of one span.
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    pub usd: Option<f64>,
    pub status: CostStatus,
    /// The price entry used (`anthropic/claude-sonnet-4-5`), for re-pricing.
    pub price_id: Option<String>,
}

impl Cost {
    pub fn not_llm() -> Self {
        Cost {
            usd: None,
            status: CostStatus::NotLlm,
            price_id: None,
        }
    }
}

/// Token counts of the example call `prices lookup` prices.
pub const EXAMPLE_CALL: crate::genai::Tokens = crate::genai::Tokens {
    input: Some(10_000),
    output: Some(1_000),
    cache_read: Some(4_000),
    cache_write: None,
    cache_write_1h: None,
    reasoning: None,
    total: Some(11_000),
};

/// What `llmtrace prices lookup` shows: the entry a name matches, its
/// current default prices, and the cost of [`EXAMPLE_CALL`].
pub fn lookup_report(book: &PriceBook, model: &str, provider: Option<&str>) -> serde_json::Value {
    use serde_json::json;
    let Some(found) = book.lookup(&[model], provider) else {
        return json!({"model": model, "provider": provider, "book_version": book.version, "matched": null});
    };
    let e = found.entry;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let dec = |d: Option<rust_decimal::Decimal>| d.map(|d| d.to_string());
    let rates_json = |r: &book::Rates| {
        json!({
            "input": r.input.to_string(),
            "output": r.output.to_string(),
            "cache_read": dec(r.cache_read),
            "cache_write": dec(r.cache_write),
            "cache_write_1h": dec(r.cache_write_1h),
            "reasoning": dec(r.reasoning),
        })
    };
    let row = cost::row(e, now, None);
    let example = row.and_then(|r| {
        let rates = cost::rates(r, EXAMPLE_CALL.input.unwrap_or(0));
        cost::cost(rates, &EXAMPLE_CALL, e.operation == "embeddings")
    });
    json!({
        "model": model,
        "provider": provider,
        "book_version": book.version,
        "matched": {
            "id": e.id,
            "vendor": e.vendor,
            "hosts": e.hosts,
            "operation": e.operation,
            "matched_name": found.name,
            "step": found.step.as_str(),
            "checked": e.checked,
            "source": e.source,
            "origin": e.origin,
            "effective_from": row.and_then(|r| r.effective_from_text.clone()),
            "prices": row.map(|r| rates_json(&r.rates)),
            "tiers": row.map(|r| r.tiers.iter().map(|t| json!({
                "input_tokens_gt": t.input_tokens_gt,
                "prices": rates_json(&t.rates),
            })).collect::<Vec<_>>()),
            "service_tiers": e.prices.iter().map(|p| p.service_tier.clone()).collect::<std::collections::BTreeSet<_>>(),
        },
        "example": {
            "input_tokens": EXAMPLE_CALL.input,
            "cache_read_tokens": EXAMPLE_CALL.cache_read,
            "output_tokens": EXAMPLE_CALL.output,
            "cost_usd": example.map(|c| c.round_dp(8).normalize().to_string()),
        },
    })
}

impl PriceBook {
    /// The shipped book.
    pub fn default_book() -> PriceBook {
        PriceBook::from_toml(DEFAULT_BOOK, "default").expect("the shipped price book is valid")
    }

    /// The shipped book with a user file layered over it: llmtrace's TOML
    /// format, or LiteLLM's JSON (by extension or first character).
    pub fn load(user_file: Option<&Path>) -> Result<PriceBook, PricingError> {
        let base = PriceBook::default_book();
        let Some(path) = user_file else {
            return Ok(base);
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PricingError::Read {
            path: shown.clone(),
            source,
        })?;
        let is_json = path.extension().is_some_and(|e| e == "json");
        Ok(base.layered(PriceBook::from_text(&text, &shown, is_json)?))
    }

    /// A user price book from its text: LiteLLM's JSON when `json` is set or
    /// the text opens with `{`, else llmtrace's TOML.
    pub fn from_text(text: &str, origin: &str, json: bool) -> Result<PriceBook, PricingError> {
        if json || text.trim_start().starts_with('{') {
            litellm::parse(text, origin)
        } else {
            PriceBook::from_toml(text, origin)
        }
    }

    /// The entry pricing `llm`'s model, remembered per model names and provider.
    fn entry_for(&self, llm: &LlmFacts) -> Option<&book::Entry> {
        let key = (
            llm.response_model.as_deref(),
            llm.request_model.as_deref(),
            llm.provider.as_deref(),
        );
        if let Some(hit) = self.memo.get(key) {
            return hit.map(|i| &self.entries[i]);
        }
        let models: Vec<&str> = [llm.response_model.as_deref(), llm.request_model.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let index = self
            .lookup(&models, llm.provider.as_deref())
            .map(|m| m.index);
        self.memo.put(key, index);
        index.map(|i| &self.entries[i])
    }

    /// Prices one call. `start_unix_nano` picks the price row in force.
    pub fn price(&self, llm: &LlmFacts, status: SpanStatus, start_unix_nano: i64) -> Cost {
        // Not priced by us: the producer's own cost if it gave one, else null.
        let unpriced = || Cost {
            usd: llm.reported_cost_usd,
            status: if llm.reported_cost_usd.is_some() {
                CostStatus::Reported
            } else {
                CostStatus::Unpriced
            },
            price_id: None,
        };
        if llm.response_cache_hit == Some(true) {
            // Served from a response cache: no provider charge unless reported.
            return Cost {
                usd: Some(llm.reported_cost_usd.unwrap_or(0.0)),
                status: CostStatus::CacheHit,
                price_id: None,
            };
        }
        let Some(entry) = self.entry_for(llm) else {
            return unpriced();
        };
        let at = start_unix_nano.div_euclid(1_000_000_000);
        let priced = |usd: Option<f64>| Cost {
            usd,
            status: CostStatus::Priced,
            price_id: Some(entry.id.clone()),
        };
        let Some(row) = cost::row(entry, at, llm.service_tier.as_deref()) else {
            return unpriced();
        };
        let rates = cost::rates(row, llm.tokens.input.unwrap_or(0));
        let embeddings =
            entry.operation == "embeddings" || llm.operation.as_deref() == Some("embeddings");
        match cost::cost(rates, &llm.tokens, embeddings) {
            Some(usd) => priced(usd.to_f64()),
            // A failed call that reported no usage was not billed.
            None if status == SpanStatus::Error => priced(Some(0.0)),
            None => unpriced(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genai::{LlmFacts, SpanStatus, Tokens};

    const TEST_BOOK: &str = include_str!("test_prices.toml");
    /// 2026-01-15T00:00:00Z
    const AT: i64 = 1_768_435_200_000_000_000;

    fn book() -> PriceBook {
        PriceBook::from_toml(TEST_BOOK, "test").unwrap()
    }

    fn call(model: &str, provider: &str, tokens: Tokens) -> LlmFacts {
        LlmFacts {
            operation: Some("chat".into()),
            provider: Some(provider.into()),
            request_model: Some(model.into()),
            tokens,
            ..LlmFacts::default()
        }
    }

    fn tokens(
        input: u64,
        cache_read: u64,
        cache_write: u64,
        output: u64,
        reasoning: u64,
    ) -> Tokens {
        let opt = |n: u64| (n > 0).then_some(n);
        Tokens {
            input: Some(input),
            output: Some(output),
            cache_read: opt(cache_read),
            cache_write: opt(cache_write),
            cache_write_1h: None,
            reasoning: opt(reasoning),
            total: Some(input + output),
        }
    }

    fn usd(book: &PriceBook, llm: &LlmFacts) -> f64 {
        let cost = book.price(llm, SpanStatus::Ok, AT);
        assert_eq!(cost.status, CostStatus::Priced, "{llm:?}");
        cost.usd.unwrap()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn shipped_book_covers_the_vendors_with_dated_prices() {
        let b = PriceBook::default_book();
        assert!(b.entries.len() >= 60, "{} entries", b.entries.len());
        for vendor in [
            "openai",
            "anthropic",
            "google",
            "mistral_ai",
            "deepseek",
            "x_ai",
        ] {
            assert!(b.entries.iter().any(|e| e.vendor == vendor), "{vendor}");
        }
        for e in &b.entries {
            assert!(
                e.checked.is_some() && e.source.is_some(),
                "{} has checked and source",
                e.id
            );
        }
        for (name, provider, want) in [
            ("gpt-4o-2024-08-06", "openai", "openai/gpt-4o"),
            ("gpt-4o-2024-05-13", "openai", "openai/gpt-4o-2024-05-13"),
            (
                "claude-sonnet-4-5-20250929",
                "anthropic",
                "anthropic/claude-sonnet-4-5",
            ),
            (
                "claude-sonnet-4-5@20250929",
                "gcp.vertex_ai",
                "anthropic/claude-sonnet-4-5",
            ),
            ("gemini-2.5-flash", "gcp.gemini", "google/gemini-2.5-flash"),
            ("deepseek-chat", "deepseek", "deepseek/deepseek-chat"),
            ("grok-3-mini", "x_ai", "x_ai/grok-3-mini"),
        ] {
            let m = b.lookup(&[name], Some(provider));
            assert_eq!(m.map(|m| m.entry.id.as_str()), Some(want), "{name}");
        }
        assert!(b
            .lookup(
                &["us.anthropic.claude-sonnet-4-5-20250929-v1:0"],
                Some("aws.bedrock")
            )
            .is_some());
    }

    #[test]
    fn openai_cached_input_is_billed_at_the_cache_price() {
        // 6,000 uncached x $2.50 + 4,000 cached x $1.25 + 1,000 output x $10, per 1M.
        let llm = call("gpt-4o", "openai", tokens(10_000, 4_000, 0, 1_000, 0));
        close(usd(&book(), &llm), 0.015 + 0.005 + 0.010);
    }

    #[test]
    fn anthropic_cache_writes_5m_and_1h_and_reads() {
        // 10,000 input = 1,000 uncached + 5,000 read + 4,000 written (1,000 of
        // them with the 1-hour lifetime); 500 output.
        let mut t = tokens(10_000, 5_000, 4_000, 500, 0);
        t.cache_write_1h = Some(1_000);
        let llm = call("claude-sonnet-4-5-20250929", "anthropic", t);
        let want =
            (1_000.0 * 3.0 + 5_000.0 * 0.30 + 3_000.0 * 3.75 + 1_000.0 * 6.0 + 500.0 * 15.0) / 1e6;
        close(usd(&book(), &llm), want);
    }

    #[test]
    fn long_context_tier_applies_above_its_threshold() {
        let below = call(
            "claude-sonnet-4-5-20250929",
            "anthropic",
            tokens(200_000, 0, 0, 1_000, 0),
        );
        close(
            usd(&book(), &below),
            (200_000.0 * 3.0 + 1_000.0 * 15.0) / 1e6,
        );
        let above = call(
            "claude-sonnet-4-5-20250929",
            "anthropic",
            tokens(250_000, 0, 0, 1_000, 0),
        );
        close(
            usd(&book(), &above),
            (250_000.0 * 6.0 + 1_000.0 * 22.5) / 1e6,
        );
    }

    #[test]
    fn reasoning_tokens_are_output_unless_priced_apart() {
        // 2,000 output of which 1,500 reasoning: all at the output price.
        let llm = call("o3", "openai", tokens(1_000, 0, 0, 2_000, 1_500));
        close(usd(&book(), &llm), (1_000.0 * 2.0 + 2_000.0 * 8.0) / 1e6);
        let priced_apart = PriceBook::from_toml(
            &TEST_BOOK.replace("id = \"openai/o3\"\nvendor = \"openai\"\n[[models.prices]]\n", "id = \"openai/o3\"\nvendor = \"openai\"\n[[models.prices]]\nreasoning = \"4.00\"\n"),
            "test",
        )
        .unwrap();
        close(
            usd(&priced_apart, &llm),
            (1_000.0 * 2.0 + 500.0 * 8.0 + 1_500.0 * 4.0) / 1e6,
        );
    }

    #[test]
    fn bedrock_region_prefixed_id_matches_the_model() {
        let b = book();
        let m = b
            .lookup(
                &["us.anthropic.claude-sonnet-4-5-20250929-v1:0"],
                Some("aws.bedrock"),
            )
            .unwrap();
        assert_eq!(m.entry.id, "anthropic/claude-sonnet-4-5");
        let llm = call(
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "aws.bedrock",
            tokens(1_000, 0, 0, 100, 0),
        );
        close(usd(&b, &llm), (1_000.0 * 3.0 + 100.0 * 15.0) / 1e6);
        let vertex = b
            .lookup(&["claude-sonnet-4-5@20250929"], Some("gcp.vertex_ai"))
            .unwrap();
        assert_eq!(vertex.entry.id, "anthropic/claude-sonnet-4-5");
    }

    #[test]
    fn azure_deployment_alias_prices_as_its_model() {
        let llm = call(
            "prod-gpt4o-deployment",
            "azure.ai.openai",
            tokens(1_000, 0, 0, 1_000, 0),
        );
        close(usd(&book(), &llm), (1_000.0 * 2.5 + 1_000.0 * 10.0) / 1e6);
        let b = book();
        let m = b.lookup(&["prod-gpt4o-deployment"], None).unwrap();
        assert_eq!(m.step, matching::Step::Alias);
    }

    #[test]
    fn dated_snapshot_priced_apart_from_its_undated_name() {
        let b = book();
        let old = call("gpt-4o-2024-05-13", "openai", tokens(1_000_000, 0, 0, 0, 0));
        close(usd(&b, &old), 5.0);
        // Listed dated snapshot: same price as gpt-4o.
        let listed = call("gpt-4o-2024-08-06", "openai", tokens(1_000_000, 0, 0, 0, 0));
        close(usd(&b, &listed), 2.5);
        // Unlisted dated snapshot: falls back to the undated name.
        let m = b.lookup(&["gpt-4o-2024-11-20"], None).unwrap();
        assert_eq!(
            (m.entry.id.as_str(), m.step),
            ("openai/gpt-4o", matching::Step::Undated)
        );
    }

    #[test]
    fn response_model_is_preferred_over_the_requested_one() {
        let mut llm = call("gpt-4o", "openai", tokens(1_000_000, 0, 0, 0, 0));
        llm.response_model = Some("gpt-4o-2024-05-13".into());
        close(usd(&book(), &llm), 5.0);
    }

    #[test]
    fn unknown_model_is_unpriced_never_zero() {
        let llm = call("mystery-model-9000", "acme", tokens(1_000, 0, 0, 1_000, 0));
        let cost = book().price(&llm, SpanStatus::Ok, AT);
        assert_eq!(
            cost,
            Cost {
                usd: None,
                status: CostStatus::Unpriced,
                price_id: None
            }
        );
        // With a producer-reported cost, that cost is used and says so.
        let mut reported = llm.clone();
        reported.reported_cost_usd = Some(0.25);
        let cost = book().price(&reported, SpanStatus::Ok, AT);
        assert_eq!((cost.usd, cost.status), (Some(0.25), CostStatus::Reported));
    }

    #[test]
    fn service_tier_picks_its_row() {
        let mut llm = call("gpt-4o", "openai", tokens(1_000_000, 0, 0, 1_000_000, 0));
        llm.service_tier = Some("batch".into());
        close(usd(&book(), &llm), 1.25 + 5.0);
        llm.service_tier = Some("flex".into()); // no flex row: default prices
        close(usd(&book(), &llm), 2.5 + 10.0);
    }

    #[test]
    fn embeddings_bill_input_only() {
        let mut llm = call(
            "text-embedding-3-small",
            "openai",
            tokens(1_000_000, 0, 0, 0, 0),
        );
        llm.operation = Some("embeddings".into());
        llm.tokens.output = None;
        close(usd(&book(), &llm), 0.02);
    }

    #[test]
    fn failed_calls_without_usage_cost_nothing_and_cache_hits_are_free() {
        let mut llm = call("gpt-4o", "openai", Tokens::default());
        let cost = book().price(&llm, SpanStatus::Error, AT);
        assert_eq!((cost.usd, cost.status), (Some(0.0), CostStatus::Priced));
        let cost = book().price(&llm, SpanStatus::Ok, AT);
        assert_eq!(
            cost.status,
            CostStatus::Unpriced,
            "success without usage is not $0"
        );
        llm.response_cache_hit = Some(true);
        let cost = book().price(&llm, SpanStatus::Ok, AT);
        assert_eq!((cost.usd, cost.status), (Some(0.0), CostStatus::CacheHit));
    }

    #[test]
    fn price_rows_follow_effective_dates() {
        let text = TEST_BOOK.replace(
            "[[models.prices]]\neffective_from = \"2025-09-29\"",
            "[[models.prices]]\neffective_from = \"2026-06-01\"\ninput = \"2.00\"\noutput = \"10.00\"\n\n[[models.prices]]\neffective_from = \"2025-09-29\"",
        );
        let b = PriceBook::from_toml(&text, "test").unwrap();
        let llm = call(
            "claude-sonnet-4-5-20250929",
            "anthropic",
            tokens(100_000, 0, 0, 0, 0),
        );
        close(usd(&b, &llm), 0.3); // AT is 2026-01-15: the 2025 row
        let later = b.price(&llm, SpanStatus::Ok, AT + 200 * 86_400 * 1_000_000_000);
        close(later.usd.unwrap(), 0.2);
    }

    #[test]
    fn bad_books_name_the_problem() {
        for (text, want) in [
            ("schema = \"x\"\nversion = \"1\"", "schema"),
            ("schema = \"llmtrace-prices/v1\"\nversion = \"1\"\n[[models]]\nid = \"a/b\"\n[[models.prices]]\ninput = \"abc\"\noutput = \"1\"", "not a decimal"),
            ("schema = \"llmtrace-prices/v1\"\nversion = \"1\"\n[[models]]\nid = \"a/b\"\n[[models.prices]]\ninput = \"-1\"\noutput = \"1\"", "negative"),
            ("schema = \"llmtrace-prices/v1\"\nversion = \"1\"\n[[models]]\nid = \"a/b\"\n[models.match]\nregex = [\"(\"]\n[[models.prices]]\ninput = \"1\"\noutput = \"1\"", "regex"),
            ("schema = \"llmtrace-prices/v1\"\nversion = \"1\"\n[[models]]\nid = \"a/b\"\n[[models.prices]]\noutput = \"1\"", "input"),
        ] {
            let err = PriceBook::from_toml(text, "t").unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn litellm_file_is_read_directly_and_layered_over_the_book() {
        let json = r#"{
          "sample_spec": {"input_cost_per_token": 0},
          "acme-large": {"litellm_provider": "openai", "mode": "chat",
             "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
             "cache_read_input_token_cost": 1.25e-06,
             "input_cost_per_token_above_200k_tokens": 5e-06, "output_cost_per_token_above_200k_tokens": 2e-05,
             "input_cost_per_token_batches": 1.25e-06, "output_cost_per_token_batches": 5e-06},
          "gemini/acme-flash": {"litellm_provider": "gemini", "mode": "chat",
             "input_cost_per_token": 3e-07, "output_cost_per_token": 2.5e-06},
          "gpt-4o": {"litellm_provider": "openai", "mode": "chat",
             "input_cost_per_token": 9e-06, "output_cost_per_token": 9e-06},
          "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation", "input_cost_per_pixel": 1e-08}
        }"#;
        let top = litellm::parse(json, "prices.json").unwrap();
        assert_eq!(
            top.entries.len(),
            3,
            "chat models only, sample_spec skipped"
        );
        let b = book().layered(top);
        let m = b.lookup(&["acme-large"], None).unwrap();
        let row = &m.entry.prices[0];
        assert_eq!(row.rates.input.to_string(), "2.5");
        assert_eq!(row.rates.cache_read.unwrap().to_string(), "1.25");
        assert_eq!(row.tiers[0].input_tokens_gt, 200_000);
        assert!(m.entry.prices.iter().any(|p| p.service_tier == "batch"));
        assert_eq!(
            b.lookup(&["acme-flash"], Some("gcp.gemini"))
                .unwrap()
                .entry
                .id,
            "litellm/gemini/acme-flash"
        );
        // The user's file wins over the shipped book for the names it prices.
        let llm = call("gpt-4o", "openai", tokens(1_000_000, 0, 0, 0, 0));
        close(usd(&b, &llm), 9.0);
        assert!(b.version.contains("litellm"));
    }
}
