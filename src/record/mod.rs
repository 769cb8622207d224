//! The span row: its typed form ([`SpanRecord`]), its Arrow schema and the
//! batch builder that turns records into Arrow `RecordBatch`es.

mod builder;
mod schema;

use std::sync::Arc;

pub use builder::SpanBatchBuilder;
pub use schema::span_schema;

use crate::genai::SpanFacts;
pub use crate::pricing::CostStatus;

/// One span, decoded, validated and normalised: everything a row holds except
/// the tenant, which is the row's partition.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: Option<String>,
    pub start_unix_nano: i64,
    pub end_unix_nano: i64,
    pub service_name: Option<String>,
    pub span_name: String,
    pub span_kind: &'static str,
    pub scope_name: Option<String>,
    pub scope_version: Option<String>,
    pub status_message: Option<String>,
    pub facts: SpanFacts,
    /// `None` until pricing has run; never 0 for a model we could not price.
    pub cost_usd: Option<f64>,
    pub cost_status: CostStatus,
    /// The price book entry used, and the book's version: what a re-pricing
    /// of history needs to know.
    pub price_id: Option<String>,
    pub price_version: Option<Arc<str>>,
    /// Every span attribute, values rendered as strings (arrays and maps as JSON).
    pub attributes: Vec<(String, String)>,
    /// Shared by all spans of one resource.
    pub resource_attributes: Arc<[(String, String)]>,
    /// Span events as a JSON array, `None` when there are none.
    pub events_json: Option<String>,
    /// Span links as a JSON array, `None` when there are none.
    pub links_json: Option<String>,
}

impl SpanRecord {
    pub fn duration_ms(&self) -> f64 {
        (self.end_unix_nano - self.start_unix_nano) as f64 / 1e6
    }

    /// Rough heap size, used to decide when the buffer is big enough to flush.
    pub fn approx_bytes(&self) -> usize {
        let strings = [
            &self.trace_state,
            &self.service_name,
            &self.scope_name,
            &self.scope_version,
            &self.status_message,
            &self.events_json,
            &self.links_json,
        ]
        .iter()
        .map(|s| s.as_ref().map_or(0, String::len))
        .sum::<usize>();
        let attrs: usize = self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        let res: usize = self
            .resource_attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        256 + strings + self.span_name.len() + attrs + res
    }
}

#[cfg(test)]
impl SpanRecord {
    /// A plain (non-LLM) span for tests: ids filled with `n`, one attribute.
    pub(crate) fn sample(span_name: &str, n: u8) -> SpanRecord {
        use crate::genai::SpanStatus;
        SpanRecord {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            trace_state: None,
            start_unix_nano: 1_700_000_000_000_000_000,
            end_unix_nano: 1_700_000_000_500_000_000,
            service_name: Some("svc".into()),
            span_name: span_name.into(),
            span_kind: "server",
            scope_name: None,
            scope_version: None,
            status_message: None,
            facts: SpanFacts {
                status: SpanStatus::Ok,
                error_type: None,
                context: Default::default(),
                llm: None,
            },
            cost_usd: None,
            cost_status: CostStatus::NotLlm,
            price_id: None,
            price_version: None,
            attributes: vec![("http.method".into(), "GET".into())],
            resource_attributes: Arc::from(vec![]),
            events_json: None,
            links_json: None,
        }
    }
}

/// Lowercase hex of an id of at most 16 bytes, written into `buf`: no
/// allocation on the per-span path.
pub(crate) fn hex_in<'a>(bytes: &[u8], buf: &'a mut [u8; 32]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = bytes.len().min(16);
    for (i, b) in bytes[..n].iter().enumerate() {
        buf[2 * i] = DIGITS[(b >> 4) as usize];
        buf[2 * i + 1] = DIGITS[(b & 0xf) as usize];
    }
    std::str::from_utf8(&buf[..2 * n]).expect("hex digits are ascii")
}

/// Lowercase hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}
