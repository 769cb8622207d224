//! Model-name matching and pricing: up to three lines (response model,
//! request model, provider) and token counts from the bytes after them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmtrace::genai::{LlmFacts, SpanStatus, Tokens};

#[path = "common.rs"]
mod common;

fn count(bytes: &mut std::slice::Iter<'_, u8>) -> Option<u64> {
    let tag = *bytes.next()?;
    if tag & 1 == 0 {
        return None;
    }
    // Small, huge and everything between: overflow is what we look for.
    let mut v = 0u64;
    for _ in 0..(tag >> 5) {
        v = (v << 8) | u64::from(*bytes.next().unwrap_or(&0xff));
    }
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(text) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let response_model = lines.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let request_model = lines.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let provider = lines.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let mut rest = data.get(split + 1..).unwrap_or(&[]).iter();
    let tokens = Tokens {
        input: count(&mut rest),
        output: count(&mut rest),
        cache_read: count(&mut rest),
        cache_write: count(&mut rest),
        cache_write_1h: count(&mut rest),
        reasoning: count(&mut rest),
        total: count(&mut rest),
    };
    let start = i64::from_le_bytes(
        rest.as_slice()
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 8]),
    );
    let book = common::book();
    let llm = LlmFacts {
        provider,
        request_model,
        response_model,
        tokens,
        ..LlmFacts::default()
    };
    let models: Vec<&str> = [llm.response_model.as_deref(), llm.request_model.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let found = book.lookup(&models, llm.provider.as_deref());
    let cost = book.price(&llm, SpanStatus::Ok, start);
    if let Some(usd) = cost.usd {
        assert!(usd.is_finite() && usd >= 0.0, "cost {usd}");
    }
    // An unmatched model is never priced by us.
    if found.is_none() {
        assert!(cost.price_id.is_none());
    }
    if let Some(model) = models.first() {
        let _ = llmtrace::pricing::lookup_report(book, model, llm.provider.as_deref());
    }
});
