//! User price files: llmtrace's TOML and LiteLLM's JSON. Whatever parses is
//! layered over the shipped book and used to price a call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmtrace::genai::{LlmFacts, SpanStatus, Tokens};
use llmtrace::pricing::PriceBook;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(top) = PriceBook::from_text(text, "fuzz", false) else {
        return;
    };
    let ids: Vec<String> = top.entries.iter().map(|e| e.id.clone()).collect();
    let book = PriceBook::default_book().layered(top);
    for id in ids.iter().take(8) {
        let llm = LlmFacts {
            request_model: Some(id.clone()),
            tokens: Tokens {
                input: Some(1_000),
                output: Some(1_000),
                cache_read: Some(100),
                ..Tokens::default()
            },
            ..LlmFacts::default()
        };
        let cost = book.price(&llm, SpanStatus::Ok, 1_767_225_600_000_000_000);
        if let Some(usd) = cost.usd {
            assert!(usd.is_finite() && usd >= 0.0, "cost {usd} for {id}");
        }
    }
});
