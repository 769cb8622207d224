//! Requests encoded once, replayed many times.
//!
//! Generating and encoding traces costs more CPU than receiving them, and on a
//! two-core machine the generator would steal from the server it measures. So
//! a pool of requests is encoded before the run, with the byte offsets of every
//! id and timestamp. Each replay copies a body and rewrites those fixed-width
//! fields in place: ids XORed with a key per replay round (parent links stay
//! intact, ids stay unique), timestamps shifted forward by a whole pool's
//! duration, so every span sent is new. Provider response ids
//! (`gen_ai.response.id`, `chatcmpl-` and 24 hex digits) are XORed with the
//! round's key too: a real provider never hands two calls one id, and a
//! collector that counts spans with one response id and overlapping times as
//! one call would otherwise merge a replayed call (a long one outlasts a
//! pool's duration) with its original.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use prost::Message;
use serde_json::{json, Map};

use crate::record::hex;

use super::rng::mix;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// 16 raw bytes.
    TraceId,
    /// 8 raw bytes.
    SpanId,
    /// fixed64 little-endian Unix ns.
    Time,
    /// 32 lowercase hex digits.
    HexTraceId,
    /// 16 lowercase hex digits.
    HexSpanId,
    /// 19 decimal digits of Unix ns.
    DecimalTime,
    /// The 24 lowercase hex digits of a `chatcmpl-…` response id.
    HexResponseId,
}

/// The attribute holding a call's provider response id, and the shape the
/// workload gives its value: this prefix, then 12 random bytes in hex.
const RESPONSE_ID_KEY: &str = "gen_ai.response.id";
const RESPONSE_ID_PREFIX: &[u8] = b"chatcmpl-";
const RESPONSE_ID_HEX: usize = 24;

/// One encoded request and where its ids and times are.
pub struct Prepared {
    body: Vec<u8>,
    patches: Vec<(usize, Field)>,
    pub spans: usize,
}

impl Prepared {
    pub fn new(request: &ExportTraceServiceRequest, spans: usize, encoding: Encoding) -> Self {
        let (body, patches) = match encoding {
            Encoding::Protobuf => {
                let body = request.encode_to_vec();
                let mut patches = Vec::new();
                walk(&body, 0, Level::Request, &mut patches);
                (body, patches)
            }
            Encoding::Json => {
                let body = to_json(request).into_bytes();
                let patches = json_patches(&body);
                (body, patches)
            }
        };
        Prepared {
            body,
            patches,
            spans,
        }
    }

    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The body of replay round `round`, times moved `shift_ns` forward.
    /// Round 0 is the body as generated.
    pub fn render(&self, round: u64, shift_ns: u64) -> Vec<u8> {
        let mut out = self.body.clone();
        if round == 0 && shift_ns == 0 {
            return out;
        }
        let k1 = if round == 0 { 0 } else { mix(round) };
        let k2 = if round == 0 { 0 } else { mix(k1) };
        for &(at, field) in &self.patches {
            match field {
                Field::TraceId => {
                    xor(&mut out[at..at + 8], k1);
                    xor(&mut out[at + 8..at + 16], k2);
                }
                Field::SpanId => xor(&mut out[at..at + 8], k1),
                Field::Time => {
                    let t = u64::from_le_bytes(out[at..at + 8].try_into().expect("8 bytes"));
                    out[at..at + 8].copy_from_slice(&t.wrapping_add(shift_ns).to_le_bytes());
                }
                Field::HexTraceId => {
                    xor_hex(&mut out[at..at + 16], k1);
                    xor_hex(&mut out[at + 16..at + 32], k2);
                }
                Field::HexSpanId => xor_hex(&mut out[at..at + 16], k1),
                Field::HexResponseId => {
                    xor_hex(&mut out[at..at + 16], k1);
                    xor_hex(&mut out[at + 16..at + RESPONSE_ID_HEX], k2);
                }
                Field::DecimalTime => {
                    let digits = std::str::from_utf8(&out[at..at + 19]).expect("ascii digits");
                    let t: u64 = digits.parse().expect("decimal time");
                    let shifted = format!("{:019}", t + shift_ns);
                    out[at..at + 19].copy_from_slice(&shifted.as_bytes()[..19]);
                }
            }
        }
        out
    }
}

fn xor(bytes: &mut [u8], key: u64) {
    for (b, k) in bytes.iter_mut().zip(key.to_le_bytes()) {
        *b ^= k;
    }
}

/// XORs the bytes spelled by `hex` (at most 16 digits) with the low bytes of `key`.
fn xor_hex(hex: &mut [u8], key: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let nibble = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    };
    for (i, k) in key
        .to_le_bytes()
        .into_iter()
        .take(hex.len() / 2)
        .enumerate()
    {
        let v = (nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1])) ^ k;
        hex[2 * i] = DIGITS[(v >> 4) as usize];
        hex[2 * i + 1] = DIGITS[(v & 0xf) as usize];
    }
}

/// Which OTLP message a protobuf walk is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Request,
    ResourceSpans,
    ScopeSpans,
    Span,
    Event,
    Link,
}

fn varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Records the offsets of ids and times in an encoded request we built
/// ourselves (so it is well-formed).
fn walk(buf: &[u8], base: usize, level: Level, out: &mut Vec<(usize, Field)>) {
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(buf, &mut pos);
            }
            1 => {
                let time = matches!((level, field), (Level::Span, 7 | 8) | (Level::Event, 1));
                if time {
                    out.push((base + pos, Field::Time));
                }
                pos += 8;
            }
            2 => {
                let len = varint(buf, &mut pos) as usize;
                let data = &buf[pos..pos + len];
                let at = base + pos;
                match (level, field, len) {
                    (Level::Request, 1, _) => walk(data, at, Level::ResourceSpans, out),
                    (Level::ResourceSpans, 2, _) => walk(data, at, Level::ScopeSpans, out),
                    (Level::ScopeSpans, 2, _) => walk(data, at, Level::Span, out),
                    (Level::Span, 9, _) => response_id(data, at, out),
                    (Level::Span, 11, _) => walk(data, at, Level::Event, out),
                    (Level::Span, 13, _) => walk(data, at, Level::Link, out),
                    (Level::Span | Level::Link, 1, 16) => out.push((at, Field::TraceId)),
                    (Level::Span, 2 | 4, 8) | (Level::Link, 2, 8) => out.push((at, Field::SpanId)),
                    _ => {}
                }
                pos += len;
            }
            5 => pos += 4,
            other => unreachable!("wire type {other} in a request we encoded"),
        }
    }
}

/// The length-delimited fields of an encoded message we built: (field number,
/// offset of the value within `buf`, value).
fn fields(buf: &[u8]) -> Vec<(u64, usize, &[u8])> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos);
        match key & 7 {
            0 => {
                varint(buf, &mut pos);
            }
            1 => pos += 8,
            2 => {
                let len = varint(buf, &mut pos) as usize;
                out.push((key >> 3, pos, &buf[pos..pos + len]));
                pos += len;
            }
            5 => pos += 4,
            other => unreachable!("wire type {other} in a request we encoded"),
        }
    }
    out
}

/// Records the hex digits of a span attribute (a `KeyValue` at `base`) that
/// is a response id of the workload's shape.
fn response_id(kv: &[u8], base: usize, out: &mut Vec<(usize, Field)>) {
    let kv_fields = fields(kv);
    let is_key = kv_fields
        .iter()
        .any(|&(f, _, v)| f == 1 && v == RESPONSE_ID_KEY.as_bytes());
    if !is_key {
        return;
    }
    for &(f, at, any) in &kv_fields {
        if f != 2 {
            continue;
        }
        for (g, s_at, s) in fields(any) {
            if g == 1 && is_response_id(s) {
                out.push((
                    base + at + s_at + RESPONSE_ID_PREFIX.len(),
                    Field::HexResponseId,
                ));
            }
        }
    }
}

fn is_response_id(value: &[u8]) -> bool {
    value.len() == RESPONSE_ID_PREFIX.len() + RESPONSE_ID_HEX
        && value.starts_with(RESPONSE_ID_PREFIX)
        && value[RESPONSE_ID_PREFIX.len()..]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn json_patches(body: &[u8]) -> Vec<(usize, Field)> {
    const MARKERS: &[(&[u8], Field)] = &[
        (b"\"traceId\":\"", Field::HexTraceId),
        (b"\"spanId\":\"", Field::HexSpanId),
        (b"\"parentSpanId\":\"", Field::HexSpanId),
        (b"\"startTimeUnixNano\":\"", Field::DecimalTime),
        (b"\"endTimeUnixNano\":\"", Field::DecimalTime),
        (b"\"timeUnixNano\":\"", Field::DecimalTime),
    ];
    let response_id = format!("\"key\":\"{RESPONSE_ID_KEY}\",\"value\":{{\"stringValue\":\"");
    let response_id = response_id.as_bytes();
    let mut out = Vec::new();
    for (pos, _) in body.iter().enumerate().filter(|(_, c)| **c == b'"') {
        for (marker, field) in MARKERS {
            if body[pos..].starts_with(marker) {
                let at = pos + marker.len();
                // An empty parentSpanId (root span) has nothing to rewrite.
                if body.get(at) != Some(&b'"') {
                    out.push((at, *field));
                }
            }
        }
        if body[pos..].starts_with(response_id) {
            let at = pos + response_id.len();
            let end = at + RESPONSE_ID_PREFIX.len() + RESPONSE_ID_HEX;
            if body.get(end) == Some(&b'"') && is_response_id(&body[at..end]) {
                out.push((at + RESPONSE_ID_PREFIX.len(), Field::HexResponseId));
            }
        }
    }
    out
}

fn any_json(v: &AnyValue) -> serde_json::Value {
    match &v.value {
        Some(Value::StringValue(s)) => json!({"stringValue": s}),
        Some(Value::IntValue(i)) => json!({"intValue": i.to_string()}),
        Some(Value::DoubleValue(d)) => json!({"doubleValue": d}),
        Some(Value::BoolValue(b)) => json!({"boolValue": b}),
        Some(Value::ArrayValue(a)) => {
            json!({"arrayValue": {"values": a.values.iter().map(any_json).collect::<Vec<_>>()}})
        }
        Some(Value::KvlistValue(kv)) => json!({"kvlistValue": {"values": attrs_json(&kv.values)}}),
        Some(Value::BytesValue(_)) | Some(Value::StringValueStrindex(_)) | None => json!({}),
    }
}

fn attrs_json(attrs: &[KeyValue]) -> Vec<serde_json::Value> {
    attrs
        .iter()
        .map(|kv| {
            let value = kv.value.as_ref().map_or(json!({}), any_json);
            json!({"key": kv.key, "value": value})
        })
        .collect()
}

/// OTLP/JSON of a request: hex ids, int64 and times as strings (times always
/// 19 digits, so replays can rewrite them in place).
pub fn to_json(req: &ExportTraceServiceRequest) -> String {
    let resource_spans: Vec<_> = req
        .resource_spans
        .iter()
        .map(|rs| {
            let scope_spans: Vec<_> = rs
                .scope_spans
                .iter()
                .map(|ss| {
                    let spans: Vec<_> = ss
                        .spans
                        .iter()
                        .map(|sp| {
                            let mut o = Map::new();
                            o.insert("traceId".into(), json!(hex(&sp.trace_id)));
                            o.insert("spanId".into(), json!(hex(&sp.span_id)));
                            o.insert("parentSpanId".into(), json!(hex(&sp.parent_span_id)));
                            o.insert("name".into(), json!(sp.name));
                            o.insert("kind".into(), json!(sp.kind));
                            o.insert(
                                "startTimeUnixNano".into(),
                                json!(format!("{:019}", sp.start_time_unix_nano)),
                            );
                            o.insert(
                                "endTimeUnixNano".into(),
                                json!(format!("{:019}", sp.end_time_unix_nano)),
                            );
                            o.insert("attributes".into(), json!(attrs_json(&sp.attributes)));
                            if !sp.events.is_empty() {
                                let events: Vec<_> = sp
                                    .events
                                    .iter()
                                    .map(|e| {
                                        json!({
                                            "timeUnixNano": format!("{:019}", e.time_unix_nano),
                                            "name": e.name,
                                            "attributes": attrs_json(&e.attributes),
                                        })
                                    })
                                    .collect();
                                o.insert("events".into(), json!(events));
                            }
                            if let Some(st) = &sp.status {
                                o.insert(
                                    "status".into(),
                                    json!({"code": st.code, "message": st.message}),
                                );
                            }
                            serde_json::Value::Object(o)
                        })
                        .collect();
                    let scope = ss
                        .scope
                        .as_ref()
                        .map(|s| json!({"name": s.name, "version": s.version}));
                    json!({"scope": scope, "spans": spans})
                })
                .collect();
            let attrs = rs
                .resource
                .as_ref()
                .map_or(Vec::new(), |r| attrs_json(&r.attributes));
            json!({"resource": {"attributes": attrs}, "scopeSpans": scope_spans})
        })
        .collect();
    json!({ "resourceSpans": resource_spans }).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::workload::Workload;
    use super::*;
    use std::collections::HashSet;

    const T0: u64 = 1_760_000_000_000_000_000;

    /// Span ids, (span, parent) links and all timestamps of a request.
    type Shape = (HashSet<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u64>);

    fn ids_and_times(req: &ExportTraceServiceRequest) -> Shape {
        let spans: Vec<_> = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        let ids = spans.iter().map(|s| s.span_id.clone()).collect();
        let links = spans
            .iter()
            .map(|s| (s.span_id.clone(), s.parent_span_id.clone()))
            .collect();
        let times = spans
            .iter()
            .flat_map(|s| [s.start_time_unix_nano, s.end_time_unix_nano])
            .chain(
                spans
                    .iter()
                    .flat_map(|s| s.events.iter().map(|e| e.time_unix_nano)),
            )
            .collect();
        (ids, links, times)
    }

    /// The `gen_ai.response.id` values of a request, in order.
    fn response_ids(req: &ExportTraceServiceRequest) -> Vec<String> {
        req.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .flat_map(|s| &s.attributes)
            .filter(|kv| kv.key == RESPONSE_ID_KEY)
            .filter_map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                },
            )
            .collect()
    }

    /// Every response id of a replay round is new and keeps the shape.
    fn assert_new_response_ids(original: &[String], replay: &[String]) {
        assert!(!original.is_empty(), "the workload sets response ids");
        assert_eq!(original.len(), replay.len());
        let before: HashSet<&String> = original.iter().collect();
        let after: HashSet<&String> = replay.iter().collect();
        assert_eq!(
            before.len(),
            original.len(),
            "response ids unique within a request"
        );
        assert_eq!(
            after.len(),
            replay.len(),
            "response ids unique within a replay"
        );
        assert!(
            before.is_disjoint(&after),
            "every replayed response id is new"
        );
        for id in replay {
            assert!(is_response_id(id.as_bytes()), "{id}");
        }
    }

    #[test]
    fn replays_give_every_call_a_new_response_id() {
        let (req, n) = Workload::new(5, T0, 1_000_000).batch(300);
        let original = response_ids(&req);

        let p = Prepared::new(&req, n, Encoding::Protobuf);
        let mut seen: HashSet<String> = original.iter().cloned().collect();
        for round in 1..4 {
            let replay =
                ExportTraceServiceRequest::decode(p.render(round, 1_000).as_slice()).unwrap();
            let ids = response_ids(&replay);
            assert_new_response_ids(&original, &ids);
            assert!(
                ids.iter().all(|id| seen.insert(id.clone())),
                "round {round} repeats an id"
            );
        }
        // The same seed replays the same ids: runs stay reproducible.
        let again = Prepared::new(&req, n, Encoding::Protobuf);
        assert_eq!(again.render(2, 1_000), p.render(2, 1_000));

        let p = Prepared::new(&req, n, Encoding::Json);
        let json0 = crate::ingest::otlp_json::decode(&p.render(0, 0)).unwrap();
        assert_eq!(response_ids(&json0), original);
        let replay = crate::ingest::otlp_json::decode(&p.render(2, 7)).unwrap();
        assert_new_response_ids(&original, &response_ids(&replay));
    }

    #[test]
    fn protobuf_replays_are_new_spans_with_links_intact() {
        let (req, n) = Workload::new(5, T0, 1_000_000).batch(300);
        let p = Prepared::new(&req, n, Encoding::Protobuf);
        assert_eq!(p.render(0, 0), req.encode_to_vec());
        let replay = ExportTraceServiceRequest::decode(p.render(3, 1_000).as_slice()).unwrap();
        let (ids0, links0, times0) = ids_and_times(&req);
        let (ids3, links3, times3) = ids_and_times(&replay);
        assert!(ids0.is_disjoint(&ids3), "every replayed span id is new");
        for (s, parent) in links3.iter().filter(|(_, p)| !p.is_empty()) {
            assert!(ids3.contains(parent), "parent of {s:?} is in the replay");
        }
        assert_eq!(links0.len(), links3.len());
        let shifted: Vec<u64> = times0.iter().map(|t| t + 1_000).collect();
        assert_eq!(times3, shifted);
    }

    #[test]
    fn json_replays_decode_and_shift() {
        let (req, n) = Workload::new(6, T0, 1_000_000).batch(200);
        let p = Prepared::new(&req, n, Encoding::Json);
        let original = crate::ingest::otlp_json::decode(&p.render(0, 0)).unwrap();
        assert_eq!(ids_and_times(&original).2, ids_and_times(&req).2);
        let replay = crate::ingest::otlp_json::decode(&p.render(2, 7)).unwrap();
        let (ids0, _, times0) = ids_and_times(&original);
        let (ids2, links2, times2) = ids_and_times(&replay);
        assert!(ids0.is_disjoint(&ids2));
        for (_, parent) in links2.iter().filter(|(_, p)| !p.is_empty()) {
            assert!(ids2.contains(parent));
        }
        assert_eq!(times2, times0.iter().map(|t| t + 7).collect::<Vec<_>>());
    }
}
