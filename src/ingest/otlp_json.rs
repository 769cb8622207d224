//! OTLP/JSON decoding into the protobuf types.
//!
//! OTLP/JSON is the protobuf JSON mapping with OTLP's own twists: trace and
//! span ids are hex (not base64), enums may be names or numbers, 64-bit integers
//! arrive as strings or numbers, field names may be lowerCamelCase or the proto
//! snake_case, and unknown fields are ignored. Every error names the path of the
//! offending field, e.g. `resourceSpans[0].scopeSpans[0].spans[3].traceId`.

use base64::Engine;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::{Event, Link, SpanKind},
    status::StatusCode,
    ResourceSpans, ScopeSpans, Span, Status,
};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct JsonError {
    pub path: String,
    pub message: String,
}

type Obj = Map<String, Value>;

/// Where in the document we are, for error messages.
#[derive(Clone)]
struct Path(String);

impl Path {
    fn field(&self, name: &str) -> Path {
        if self.0.is_empty() {
            Path(name.to_owned())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }
    fn index(&self, i: usize) -> Path {
        Path(format!("{}[{i}]", self.0))
    }
    fn err(&self, message: impl Into<String>) -> JsonError {
        JsonError {
            path: if self.0.is_empty() {
                "$".into()
            } else {
                self.0.clone()
            },
            message: message.into(),
        }
    }
}

pub fn decode(body: &[u8]) -> Result<ExportTraceServiceRequest, JsonError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| JsonError {
        path: "$".into(),
        message: format!("invalid JSON: {e}"),
    })?;
    let root = Path(String::new());
    let obj = as_object(&value, &root)?;
    Ok(ExportTraceServiceRequest {
        resource_spans: list(obj, "resourceSpans", &root, resource_spans)?,
    })
}

/// Field by its lowerCamelCase name or its proto snake_case name.
fn get<'a>(obj: &'a Obj, camel: &str) -> Option<&'a Value> {
    obj.get(camel)
        .or_else(|| obj.get(&to_snake(camel)))
        .filter(|v| !v.is_null())
}

fn to_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn as_object<'a>(v: &'a Value, path: &Path) -> Result<&'a Obj, JsonError> {
    v.as_object()
        .ok_or_else(|| path.err(format!("expected an object, got {}", kind(v))))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn list<T>(
    obj: &Obj,
    name: &str,
    path: &Path,
    item: impl Fn(&Value, &Path) -> Result<T, JsonError>,
) -> Result<Vec<T>, JsonError> {
    let path = path.field(name);
    match get(obj, name) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| item(v, &path.index(i)))
            .collect(),
        Some(other) => Err(path.err(format!("expected an array, got {}", kind(other)))),
    }
}

fn string(obj: &Obj, name: &str, path: &Path) -> Result<String, JsonError> {
    match get(obj, name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(path
            .field(name)
            .err(format!("expected a string, got {}", kind(other)))),
    }
}

/// An unsigned 64-bit integer as a JSON number or a decimal string.
fn uint64(obj: &Obj, name: &str, path: &Path) -> Result<u64, JsonError> {
    let path = path.field(name);
    match get(obj, name) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| path.err(format!("expected an unsigned integer, got {n}"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| path.err(format!("expected an unsigned integer, got {s:?}"))),
        Some(other) => Err(path.err(format!("expected an integer, got {}", kind(other)))),
    }
}

fn uint32(obj: &Obj, name: &str, path: &Path) -> Result<u32, JsonError> {
    let n = uint64(obj, name, path)?;
    u32::try_from(n).map_err(|_| path.field(name).err(format!("{n} does not fit in 32 bits")))
}

/// An enum as its number or its name (with or without the type prefix).
fn enumeration(
    obj: &Obj,
    name: &str,
    path: &Path,
    from_name: impl Fn(&str) -> Option<i32>,
) -> Result<i32, JsonError> {
    let path = path.field(name);
    match get(obj, name) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| path.err(format!("invalid enum number {n}"))),
        Some(Value::String(s)) => {
            from_name(s).ok_or_else(|| path.err(format!("unknown value {s:?}")))
        }
        Some(other) => Err(path.err(format!("expected an enum, got {}", kind(other)))),
    }
}

/// A hex id. Its length is checked by the validator, which rejects the span
/// rather than the whole request.
fn hex_id(obj: &Obj, name: &str, path: &Path) -> Result<Vec<u8>, JsonError> {
    let s = string(obj, name, path)?;
    decode_hex(&s).ok_or_else(|| path.field(name).err(format!("invalid hex id {s:?}")))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

fn resource_spans(v: &Value, path: &Path) -> Result<ResourceSpans, JsonError> {
    let obj = as_object(v, path)?;
    let resource = match get(obj, "resource") {
        None => None,
        Some(r) => {
            let rpath = path.field("resource");
            let robj = as_object(r, &rpath)?;
            Some(Resource {
                attributes: list(robj, "attributes", &rpath, key_value)?,
                dropped_attributes_count: uint32(robj, "droppedAttributesCount", &rpath)?,
                ..Default::default()
            })
        }
    };
    Ok(ResourceSpans {
        resource,
        scope_spans: list(obj, "scopeSpans", path, scope_spans)?,
        schema_url: string(obj, "schemaUrl", path)?,
    })
}

fn scope_spans(v: &Value, path: &Path) -> Result<ScopeSpans, JsonError> {
    let obj = as_object(v, path)?;
    let scope = match get(obj, "scope") {
        None => None,
        Some(s) => {
            let spath = path.field("scope");
            let sobj = as_object(s, &spath)?;
            Some(InstrumentationScope {
                name: string(sobj, "name", &spath)?,
                version: string(sobj, "version", &spath)?,
                attributes: list(sobj, "attributes", &spath, key_value)?,
                dropped_attributes_count: uint32(sobj, "droppedAttributesCount", &spath)?,
            })
        }
    };
    Ok(ScopeSpans {
        scope,
        spans: list(obj, "spans", path, span)?,
        schema_url: string(obj, "schemaUrl", path)?,
    })
}

fn span(v: &Value, path: &Path) -> Result<Span, JsonError> {
    let obj = as_object(v, path)?;
    let status = match get(obj, "status") {
        None => None,
        Some(s) => {
            let spath = path.field("status");
            let sobj = as_object(s, &spath)?;
            Some(Status {
                message: string(sobj, "message", &spath)?,
                code: enumeration(sobj, "code", &spath, |n| {
                    StatusCode::from_str_name(n)
                        .or_else(|| StatusCode::from_str_name(&format!("STATUS_CODE_{n}")))
                        .map(|c| c as i32)
                })?,
            })
        }
    };
    Ok(Span {
        trace_id: hex_id(obj, "traceId", path)?,
        span_id: hex_id(obj, "spanId", path)?,
        trace_state: string(obj, "traceState", path)?,
        parent_span_id: hex_id(obj, "parentSpanId", path)?,
        flags: uint32(obj, "flags", path)?,
        name: string(obj, "name", path)?,
        kind: enumeration(obj, "kind", path, |n| {
            SpanKind::from_str_name(n)
                .or_else(|| SpanKind::from_str_name(&format!("SPAN_KIND_{n}")))
                .map(|k| k as i32)
        })?,
        start_time_unix_nano: uint64(obj, "startTimeUnixNano", path)?,
        end_time_unix_nano: uint64(obj, "endTimeUnixNano", path)?,
        attributes: list(obj, "attributes", path, key_value)?,
        dropped_attributes_count: uint32(obj, "droppedAttributesCount", path)?,
        events: list(obj, "events", path, event)?,
        dropped_events_count: uint32(obj, "droppedEventsCount", path)?,
        links: list(obj, "links", path, link)?,
        dropped_links_count: uint32(obj, "droppedLinksCount", path)?,
        status,
    })
}

fn event(v: &Value, path: &Path) -> Result<Event, JsonError> {
    let obj = as_object(v, path)?;
    Ok(Event {
        time_unix_nano: uint64(obj, "timeUnixNano", path)?,
        name: string(obj, "name", path)?,
        attributes: list(obj, "attributes", path, key_value)?,
        dropped_attributes_count: uint32(obj, "droppedAttributesCount", path)?,
    })
}

fn link(v: &Value, path: &Path) -> Result<Link, JsonError> {
    let obj = as_object(v, path)?;
    Ok(Link {
        trace_id: hex_id(obj, "traceId", path)?,
        span_id: hex_id(obj, "spanId", path)?,
        trace_state: string(obj, "traceState", path)?,
        attributes: list(obj, "attributes", path, key_value)?,
        dropped_attributes_count: uint32(obj, "droppedAttributesCount", path)?,
        flags: uint32(obj, "flags", path)?,
    })
}

fn key_value(v: &Value, path: &Path) -> Result<KeyValue, JsonError> {
    let obj = as_object(v, path)?;
    let value = match get(obj, "value") {
        None => None,
        Some(v) => Some(any_value(v, &path.field("value"))?),
    };
    Ok(KeyValue {
        key: string(obj, "key", path)?,
        value,
        ..Default::default()
    })
}

fn any_value(v: &Value, path: &Path) -> Result<AnyValue, JsonError> {
    use any_value::Value as V;
    let obj = as_object(v, path)?;
    // An empty object is a valid, empty AnyValue.
    let Some((name, inner)) = obj.iter().find(|(_, v)| !v.is_null()) else {
        return Ok(AnyValue { value: None });
    };
    let vpath = path.field(name);
    let value = match name.as_str() {
        "stringValue" | "string_value" => V::StringValue(
            inner
                .as_str()
                .ok_or_else(|| vpath.err(format!("expected a string, got {}", kind(inner))))?
                .to_owned(),
        ),
        "boolValue" | "bool_value" => V::BoolValue(
            inner
                .as_bool()
                .ok_or_else(|| vpath.err(format!("expected a boolean, got {}", kind(inner))))?,
        ),
        "intValue" | "int_value" => V::IntValue(match inner {
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| vpath.err(format!("expected a 64-bit integer, got {n}")))?,
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| vpath.err(format!("expected a 64-bit integer, got {s:?}")))?,
            other => return Err(vpath.err(format!("expected an integer, got {}", kind(other)))),
        }),
        "doubleValue" | "double_value" => V::DoubleValue(match inner {
            Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
            Value::String(s) => match s.as_str() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                other => other
                    .parse()
                    .map_err(|_| vpath.err(format!("expected a number, got {other:?}")))?,
            },
            other => return Err(vpath.err(format!("expected a number, got {}", kind(other)))),
        }),
        "bytesValue" | "bytes_value" => {
            let s = inner
                .as_str()
                .ok_or_else(|| vpath.err(format!("expected base64, got {}", kind(inner))))?;
            V::BytesValue(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| vpath.err(format!("invalid base64: {e}")))?,
            )
        }
        "arrayValue" | "array_value" => {
            let aobj = as_object(inner, &vpath)?;
            V::ArrayValue(ArrayValue {
                values: list(aobj, "values", &vpath, any_value)?,
            })
        }
        "kvlistValue" | "kvlist_value" => {
            let kobj = as_object(inner, &vpath)?;
            V::KvlistValue(KeyValueList {
                values: list(kobj, "values", &vpath, key_value)?,
            })
        }
        other => return Err(path.err(format!("unknown value type {other:?}"))),
    };
    Ok(AnyValue { value: Some(value) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN: &str = r#"{"resourceSpans":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"svc"}}]},
      "scopeSpans":[{"scope":{"name":"lib","version":"1.0"},"spans":[{
        "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174",
        "parentSpanId":"","name":"chat gpt-4o","kind":"SPAN_KIND_CLIENT",
        "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
        "attributes":[{"key":"n","value":{"intValue":"42"}},
                      {"key":"d","value":{"doubleValue":0.5}},
                      {"key":"b","value":{"boolValue":true}},
                      {"key":"a","value":{"arrayValue":{"values":[{"stringValue":"x"}]}}},
                      {"key":"bytes","value":{"bytesValue":"AQI="}}],
        "events":[{"timeUnixNano":"1544712660500000000","name":"e"}],
        "status":{"code":"STATUS_CODE_ERROR","message":"boom"},
        "unknownField":{"ignored":true}}]}]}]}"#;

    #[test]
    fn decodes_the_spec_shape() {
        let req = decode(SPAN.as_bytes()).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.trace_id[0], 0x5b);
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(span.status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert_eq!(span.attributes.len(), 5);
        assert_eq!(
            span.attributes[0].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(42))
        );
        assert_eq!(
            span.attributes[4].value.as_ref().unwrap().value,
            Some(any_value::Value::BytesValue(vec![1, 2]))
        );
        assert_eq!(span.events[0].time_unix_nano, 1_544_712_660_500_000_000);
    }

    #[test]
    fn snake_case_and_enum_numbers() {
        let body = r#"{"resource_spans":[{"scope_spans":[{"spans":[
            {"trace_id":"00000000000000000000000000000001","span_id":"0000000000000001",
             "kind":3,"status":{"code":1}}]}]}]}"#;
        let req = decode(body.as_bytes()).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.kind, 3);
        assert_eq!(span.status.as_ref().unwrap().code, 1);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"resourceSpans":{}}"#,
                "resourceSpans: expected an array",
            ),
            (
                r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#,
                "resourceSpans[0].scopeSpans[0].spans[0].traceId: invalid hex",
            ),
            (
                r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"-5"}]}]}]}"#,
                "spans[0].startTimeUnixNano: expected an unsigned integer",
            ),
            (
                r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":"SIDEWAYS"}]}]}]}"#,
                "spans[0].kind: unknown value",
            ),
            (
                r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"k","value":{"intValue":"1.5"}}]}]}]}]}"#,
                "attributes[0].value.intValue: expected a 64-bit integer",
            ),
            ("[1,2", "$: invalid JSON"),
            ("\"just a string\"", "$: expected an object"),
        ];
        for (body, want) in cases {
            let err = decode(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: got {err}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let depth = 10_000;
        let body = format!(
            "{}{}",
            "{\"arrayValue\":{\"values\":[".repeat(depth),
            "]}}".repeat(depth)
        );
        let doc = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"attributes":[{{"key":"k","value":{body}}}]}}]}}]}}]}}"#
        );
        let err = decode(doc.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("recursion limit"), "{err}");
    }
}
