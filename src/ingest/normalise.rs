//! Validation and normalisation of decoded OTLP spans into [`SpanRecord`]s.
//!
//! A span that cannot be stored faithfully (bad ids, missing or absurd times) is
//! rejected on its own; the rest of the request goes on, and the client hears
//! how many were rejected and why through OTLP partial success.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use serde_json::json;

use crate::genai;
use crate::pricing::{Cost, PriceBook};
use crate::record::{hex, SpanRecord};

/// Spans starting before this are clock bugs, not history (2000-01-01T00:00:00Z).
const EARLIEST_START_NANOS: u64 = 946_684_800_000_000_000;
/// Nesting deeper than this inside one attribute value is cut off.
const MAX_VALUE_DEPTH: usize = 16;
/// How many rejection reasons are spelled out in the partial-success message.
const MAX_REASONS: usize = 5;

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_attribute_value_bytes: usize,
    pub max_future_skew: Duration,
    /// Requests are refused while the buffer (unflushed plus being written)
    /// holds this much.
    pub max_buffer_bytes: usize,
    /// Requests are refused while those already admitted hold this much
    /// (bodies, decoded requests and their records).
    pub max_in_flight_bytes: usize,
    /// Requests are refused while the process's RSS is within
    /// `max_in_flight_bytes` + 32 MiB of this; 0 leaves RSS unchecked.
    pub memory_limit: usize,
    /// The retry delay refused clients are given.
    pub retry_after: Duration,
}

/// What became of one export request.
#[derive(Debug, Default)]
pub struct Normalised {
    pub records: Vec<SpanRecord>,
    pub rejected: u64,
    /// A few of the rejection reasons, for the client.
    pub reasons: Vec<String>,
}

impl Normalised {
    pub fn message(&self) -> String {
        let mut msg = self.reasons.join("; ");
        if self.rejected as usize > self.reasons.len() {
            msg.push_str(&format!(
                " (and {} more)",
                self.rejected as usize - self.reasons.len()
            ));
        }
        msg
    }

    fn reject(&mut self, reason: String) {
        self.rejected += 1;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(reason);
        }
    }
}

/// Validates and normalises every span of `request`. Takes the request so
/// strings move into the records instead of being copied.
pub fn normalise(
    request: ExportTraceServiceRequest,
    limits: &Limits,
    prices: &PriceBook,
    now: SystemTime,
) -> Normalised {
    let price_version: Arc<str> = Arc::from(prices.version.as_str());
    let now_nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(limits.max_future_skew)
        .as_nanos();
    let latest = u64::try_from(now_nanos)
        .unwrap_or(u64::MAX)
        .min(i64::MAX as u64);
    let mut out = Normalised::default();
    for rs in request.resource_spans {
        let resource: &[KeyValue] = rs.resource.as_ref().map_or(&[], |r| &r.attributes);
        let service_name = resource
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        let resource_attributes: Arc<[(String, String)]> =
            render_attributes(resource.to_vec(), limits).into();
        for ss in rs.scope_spans {
            let scope = ss.scope.unwrap_or_default();
            let scope_name = (!scope.name.is_empty()).then_some(scope.name);
            let scope_version = (!scope.version.is_empty()).then_some(scope.version);
            for span in ss.spans {
                match validate(&span, latest) {
                    Err(reason) => out.reject(reason),
                    Ok(ids) => {
                        let facts = genai::extract(&span, resource, scope_name.as_deref());
                        let cost = match &facts.llm {
                            Some(llm) => {
                                prices.price(llm, facts.status, span.start_time_unix_nano as i64)
                            }
                            None => Cost::not_llm(),
                        };
                        let events_json = events_json(&span, limits);
                        let links_json = links_json(&span, limits);
                        out.records.push(SpanRecord {
                            trace_id: ids.trace_id,
                            span_id: ids.span_id,
                            parent_span_id: ids.parent_span_id,
                            trace_state: non_empty(span.trace_state),
                            start_unix_nano: span.start_time_unix_nano as i64,
                            end_unix_nano: span.end_time_unix_nano as i64,
                            service_name: service_name.clone(),
                            span_name: span.name,
                            span_kind: span_kind(span.kind),
                            scope_name: scope_name.clone(),
                            scope_version: scope_version.clone(),
                            status_message: span.status.and_then(|s| non_empty(s.message)),
                            facts,
                            cost_usd: cost.usd,
                            cost_status: cost.status,
                            price_version: cost.price_id.is_some().then(|| price_version.clone()),
                            price_id: cost.price_id,
                            attributes: render_attributes(span.attributes, limits),
                            resource_attributes: resource_attributes.clone(),
                            events_json,
                            links_json,
                        })
                    }
                }
            }
        }
    }
    out
}

struct Ids {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
}

fn validate(span: &Span, latest: u64) -> Result<Ids, String> {
    let name = &span.name;
    let trace_id: [u8; 16] = span.trace_id.as_slice().try_into().map_err(|_| {
        format!(
            "span {name:?}: trace_id must be 16 bytes, got {}",
            span.trace_id.len()
        )
    })?;
    if trace_id == [0; 16] {
        return Err(format!("span {name:?}: trace_id is all zeroes"));
    }
    let span_id: [u8; 8] = span.span_id.as_slice().try_into().map_err(|_| {
        format!(
            "span {name:?}: span_id must be 8 bytes, got {}",
            span.span_id.len()
        )
    })?;
    if span_id == [0; 8] {
        return Err(format!("span {name:?}: span_id is all zeroes"));
    }
    let parent_span_id = match span.parent_span_id.len() {
        0 => None,
        8 => Some(span.parent_span_id.as_slice().try_into().expect("8 bytes"))
            .filter(|p: &[u8; 8]| *p != [0; 8]),
        n => {
            return Err(format!(
                "span {name:?}: parent_span_id must be 0 or 8 bytes, got {n}"
            ))
        }
    };
    let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
    if start == 0 || end == 0 {
        return Err(format!("span {name:?}: start and end time are required"));
    }
    if start < EARLIEST_START_NANOS || start > latest || end > latest {
        return Err(format!(
            "span {name:?}: time {start}..{end} ns is outside the accepted range (2000-01-01 to now + max_future_skew)"
        ));
    }
    if end < start {
        return Err(format!("span {name:?}: end time is before start time"));
    }
    Ok(Ids {
        trace_id,
        span_id,
        parent_span_id,
    })
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn span_kind(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    }
}

/// Attributes as the map columns store them; strings are moved, not copied.
fn render_attributes(attrs: Vec<KeyValue>, limits: &Limits) -> Vec<(String, String)> {
    attrs
        .into_iter()
        .map(|kv| {
            let value = match kv.value {
                Some(AnyValue {
                    value: Some(Value::StringValue(s)),
                }) => truncate(s, limits.max_attribute_value_bytes),
                Some(v) => render(&v, limits),
                None => String::new(),
            };
            (truncate(kv.key, limits.max_attribute_value_bytes), value)
        })
        .collect()
}

/// An attribute value as the string stored in the map columns: scalars as
/// text, arrays and maps as JSON, bytes as hex; cut at the size limit.
fn render(v: &AnyValue, limits: &Limits) -> String {
    let s = match &v.value {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(Value::ArrayValue(_) | Value::KvlistValue(_)) => to_json(v, 0).to_string(),
        Some(Value::StringValueStrindex(_)) => String::new(),
    };
    truncate(s, limits.max_attribute_value_bytes)
}

fn to_json(v: &AnyValue, depth: usize) -> serde_json::Value {
    if depth >= MAX_VALUE_DEPTH {
        return json!("…(nested too deep)");
    }
    match &v.value {
        None | Some(Value::StringValueStrindex(_)) => serde_json::Value::Null,
        Some(Value::StringValue(s)) => json!(s),
        Some(Value::BoolValue(b)) => json!(b),
        Some(Value::IntValue(i)) => json!(i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| json!(d.to_string())),
        Some(Value::BytesValue(b)) => json!(hex(b)),
        Some(Value::ArrayValue(a)) => a.values.iter().map(|x| to_json(x, depth + 1)).collect(),
        Some(Value::KvlistValue(kv)) => kv
            .values
            .iter()
            .map(|x| {
                let inner = x
                    .value
                    .as_ref()
                    .map_or(serde_json::Value::Null, |v| to_json(v, depth + 1));
                (x.key.clone(), inner)
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

fn attributes_json(attrs: &[KeyValue], limits: &Limits) -> serde_json::Value {
    attrs
        .iter()
        .map(|kv| {
            let v = kv
                .value
                .as_ref()
                .map_or(serde_json::Value::Null, |v| match &v.value {
                    Some(Value::StringValue(s)) => {
                        json!(truncate(s.clone(), limits.max_attribute_value_bytes))
                    }
                    _ => to_json(v, 0),
                });
            (kv.key.clone(), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn events_json(span: &Span, limits: &Limits) -> Option<String> {
    if span.events.is_empty() {
        return None;
    }
    let events: Vec<_> = span
        .events
        .iter()
        .map(|e| {
            json!({
                "time_unix_nano": e.time_unix_nano,
                "name": e.name,
                "attributes": attributes_json(&e.attributes, limits),
            })
        })
        .collect();
    Some(serde_json::Value::from(events).to_string())
}

fn links_json(span: &Span, limits: &Limits) -> Option<String> {
    if span.links.is_empty() {
        return None;
    }
    let links: Vec<_> = span
        .links
        .iter()
        .map(|l| {
            json!({
                "trace_id": hex(&l.trace_id),
                "span_id": hex(&l.span_id),
                "trace_state": l.trace_state,
                "attributes": attributes_json(&l.attributes, limits),
            })
        })
        .collect();
    Some(serde_json::Value::from(links).to_string())
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let original = s.len();
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(&format!("…(truncated from {original} bytes)"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    const NOW: u64 = 1_750_000_000_000_000_000;

    fn limits() -> Limits {
        Limits {
            max_attribute_value_bytes: 64,
            max_future_skew: Duration::from_secs(3600),
            max_buffer_bytes: usize::MAX,
            max_in_flight_bytes: usize::MAX,
            memory_limit: 0,
            retry_after: Duration::from_secs(1),
        }
    }

    fn good_span() -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "op".into(),
            start_time_unix_nano: NOW - 2_000_000,
            end_time_unix_nano: NOW - 1_000_000,
            ..Default::default()
        }
    }

    fn run(spans: Vec<Span>) -> Normalised {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        normalise(
            req,
            &limits(),
            &PriceBook::default(),
            UNIX_EPOCH + Duration::from_nanos(NOW),
        )
    }

    #[test]
    fn bad_spans_are_rejected_one_by_one() {
        let mut short_trace = good_span();
        short_trace.trace_id = vec![1; 15];
        let mut zero_span = good_span();
        zero_span.span_id = vec![0; 8];
        let mut long_parent = good_span();
        long_parent.parent_span_id = vec![3; 9];
        let mut no_time = good_span();
        no_time.start_time_unix_nano = 0;
        let mut future = good_span();
        future.end_time_unix_nano = NOW + 2 * 3600 * 1_000_000_000;
        let mut ancient = good_span();
        ancient.start_time_unix_nano = 5;
        let mut absurd = good_span();
        absurd.start_time_unix_nano = u64::MAX;
        absurd.end_time_unix_nano = u64::MAX;
        let mut backwards = good_span();
        backwards.end_time_unix_nano = backwards.start_time_unix_nano - 1;

        let out = run(vec![
            good_span(),
            short_trace,
            zero_span,
            long_parent,
            no_time,
            future,
            ancient,
            absurd,
            backwards,
        ]);
        assert_eq!(out.records.len(), 1);
        assert_eq!(out.rejected, 8);
        let msg = out.message();
        assert!(msg.contains("trace_id must be 16 bytes, got 15"), "{msg}");
        assert!(msg.contains("span_id is all zeroes"), "{msg}");
        assert!(msg.contains("(and 3 more)"), "{msg}");
    }

    #[test]
    fn huge_and_deep_values_are_cut_not_fatal() {
        let mut deep = AnyValue {
            value: Some(Value::StringValue("leaf".into())),
        };
        for _ in 0..50 {
            deep = AnyValue {
                value: Some(Value::ArrayValue(ArrayValue { values: vec![deep] })),
            };
        }
        let mut span = good_span();
        span.attributes = vec![
            KeyValue {
                key: "big".into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue("é".repeat(1000))),
                }),
                ..Default::default()
            },
            KeyValue {
                key: "deep".into(),
                value: Some(deep),
                ..Default::default()
            },
            KeyValue {
                key: "map".into(),
                value: Some(AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList {
                        values: vec![KeyValue {
                            key: "n".into(),
                            value: Some(AnyValue {
                                value: Some(Value::IntValue(7)),
                            }),
                            ..Default::default()
                        }],
                    })),
                }),
                ..Default::default()
            },
        ];
        let out = run(vec![span]);
        let attrs = &out.records[0].attributes;
        assert!(attrs[0].1.starts_with("éé"));
        assert!(attrs[0].1.contains("truncated from 2000 bytes"));
        assert!(attrs[1].1.contains("nested too deep"));
        assert_eq!(attrs[2].1, r#"{"n":7}"#);
    }

    #[test]
    fn ids_and_kind_are_kept() {
        let mut span = good_span();
        span.parent_span_id = vec![9; 8];
        span.kind = SpanKind::Client as i32;
        let out = run(vec![span]);
        let r = &out.records[0];
        assert_eq!(r.parent_span_id, Some([9; 8]));
        assert_eq!(r.span_kind, "client");
        assert_eq!(r.cost_status, crate::pricing::CostStatus::NotLlm);
    }
}
