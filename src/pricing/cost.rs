//! Cost arithmetic: price row by date and service tier, long-context tier by
//! input size, then the formula of docs/price-book.md, in decimals.

use rust_decimal::Decimal;

use super::book::{Entry, PriceRow, Rates};
use crate::genai::Tokens;

/// The price row in force at `at` (Unix seconds) for `service_tier`, falling
/// back to the default tier; before the first row's date, the first row.
pub fn row<'a>(entry: &'a Entry, at: i64, service_tier: Option<&str>) -> Option<&'a PriceRow> {
    let tier = service_tier.unwrap_or("default");
    let in_force = |tier: &str| {
        let rows = entry.prices.iter().filter(move |r| r.service_tier == tier);
        rows.clone()
            .filter(|r| r.effective_from.is_none_or(|d| d <= at))
            .max_by_key(|r| r.effective_from.unwrap_or(i64::MIN))
            .or_else(|| rows.min_by_key(|r| r.effective_from.unwrap_or(i64::MIN)))
    };
    in_force(tier).or_else(|| in_force("default"))
}

/// Rates for a call with `input_total` input tokens.
pub fn rates(row: &PriceRow, input_total: u64) -> &Rates {
    row.tiers
        .iter()
        .rev()
        .find(|t| input_total > t.input_tokens_gt)
        .map_or(&row.rates, |t| &t.rates)
}

fn d(n: u64) -> Decimal {
    Decimal::from(n)
}

/// USD of one call. `None` when there is nothing to price (no token counts).
pub fn cost(rates: &Rates, tokens: &Tokens, embeddings: bool) -> Option<Decimal> {
    if tokens.input.is_none() && tokens.output.is_none() {
        return None;
    }
    let million = Decimal::from(1_000_000u32);
    let input_total = tokens.input.unwrap_or(0);
    if embeddings {
        return Some(d(input_total) * rates.input / million);
    }
    let cache_read = tokens.cache_read.unwrap_or(0).min(input_total);
    let cache_write = tokens
        .cache_write
        .unwrap_or(0)
        .min(input_total.saturating_sub(cache_read));
    let write_1h = tokens.cache_write_1h.unwrap_or(0).min(cache_write);
    let write_5m = cache_write - write_1h;
    let uncached = input_total - cache_read - cache_write;
    let output = tokens.output.unwrap_or(0);
    let reasoning = tokens.reasoning.unwrap_or(0).min(output);
    let cache_write_price = rates.cache_write.unwrap_or(rates.input);
    let sum = d(uncached) * rates.input
        + d(cache_read) * rates.cache_read.unwrap_or(rates.input)
        + d(write_5m) * cache_write_price
        + d(write_1h) * rates.cache_write_1h.unwrap_or(cache_write_price)
        + d(output - reasoning) * rates.output
        + d(reasoning) * rates.reasoning.unwrap_or(rates.output);
    Some(sum / million)
}
