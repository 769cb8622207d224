//! OTLP/JSON bodies, as POST /v1/traces receives them: decode, then normalise
//! whatever decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = llmtrace::ingest::otlp_json::decode(data) {
        common::normalise_checked(request);
    }
});
