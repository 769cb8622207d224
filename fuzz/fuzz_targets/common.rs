//! What every ingest target shares: the server's default limits and a fixed
//! clock, so a crash found once reproduces the same way.

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use llmtrace::ingest::normalise::{normalise, Limits};
use llmtrace::pricing::PriceBook;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

pub fn book() -> &'static PriceBook {
    static BOOK: OnceLock<PriceBook> = OnceLock::new();
    BOOK.get_or_init(PriceBook::default_book)
}

/// Normalises `request` as `serve` would with its defaults, and checks what
/// every caller relies on: each span is either a record or a rejection.
#[allow(dead_code)] // price_lookup uses the book only
pub fn normalise_checked(request: ExportTraceServiceRequest) {
    let spans = llmtrace::ingest::span_count(&request);
    let limits = Limits {
        max_attribute_value_bytes: 64 << 10,
        max_future_skew: Duration::from_secs(24 * 3600),
        max_buffer_bytes: 256 << 20,
        max_in_flight_bytes: 64 << 20,
        memory_limit: 0,
        retry_after: Duration::from_secs(1),
    };
    // 2027-01-01, after every seed's spans: a fixed "now" keeps the
    // future-skew check deterministic.
    let now = UNIX_EPOCH + Duration::from_secs(1_798_761_600);
    let out = normalise(request, &limits, book(), now);
    assert_eq!(out.records.len() + out.rejected as usize, spans);
    for r in &out.records {
        assert!(r.end_unix_nano >= r.start_unix_nano);
        // An LLM call we could not price is never $0 by our hand.
        if let Some(cost) = r.cost_usd {
            assert!(cost.is_finite() && cost >= 0.0, "cost {cost}");
        }
    }
    let _ = out.message();
}
