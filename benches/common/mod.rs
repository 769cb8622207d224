//! What the benches share.

use std::time::Duration;

use llmtrace::ingest::normalise::Limits;

/// Normalisation limits that never refuse the benches' traffic.
pub fn limits() -> Limits {
    Limits {
        max_attribute_value_bytes: 64 * 1024,
        max_future_skew: Duration::from_secs(86_400),
        max_buffer_bytes: usize::MAX,
        max_in_flight_bytes: usize::MAX,
        memory_limit: 0,
        retry_after: Duration::from_secs(1),
    }
}
