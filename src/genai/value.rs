//! Coercion of OTLP attribute values into the scalar a fact needs.
//!
//! Producers send the same fact with different types: token counts as ints,
//! doubles or strings (`"650"`), booleans as `true` or `"True"`, string arrays
//! or JSON strings. Each accessor accepts every spelling it can read
//! unambiguously and answers `None` for the rest, so a bad value reads as absent.

use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue};

pub(crate) fn as_str(v: &AnyValue) -> Option<&str> {
    match v.value.as_ref()? {
        Value::StringValue(s) if !s.trim().is_empty() => Some(s.as_str()),
        _ => None,
    }
}

/// A non-negative count: int, integral double or numeric string.
pub(crate) fn as_count(v: &AnyValue) -> Option<u64> {
    match v.value.as_ref()? {
        Value::IntValue(i) => u64::try_from(*i).ok(),
        Value::DoubleValue(d) if d.is_finite() && *d >= 0.0 && d.fract() == 0.0 => Some(*d as u64),
        Value::StringValue(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                let d: f64 = s.parse().ok()?;
                (d.is_finite() && d >= 0.0 && d.fract() == 0.0).then_some(d as u64)
            })
        }
        _ => None,
    }
}

/// A finite number: int, double or numeric string.
pub(crate) fn as_f64(v: &AnyValue) -> Option<f64> {
    let d = match v.value.as_ref()? {
        Value::IntValue(i) => *i as f64,
        Value::DoubleValue(d) => *d,
        Value::StringValue(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    d.is_finite().then_some(d)
}

/// A boolean: `true`, or a string `true`/`True`/`1`/`false`/...
pub(crate) fn as_bool(v: &AnyValue) -> Option<bool> {
    match v.value.as_ref()? {
        Value::BoolValue(b) => Some(*b),
        Value::IntValue(i) if *i == 0 || *i == 1 => Some(*i == 1),
        Value::StringValue(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The first element of a string list, a JSON array in a string, a
/// comma-joined string, or a plain string.
pub(crate) fn first_of_list(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        Value::ArrayValue(a) => a.values.iter().find_map(as_str).map(str::to_owned),
        Value::StringValue(s) => {
            let s = s.trim();
            if s.starts_with('[') {
                let parsed: Vec<serde_json::Value> = serde_json::from_str(s).ok()?;
                parsed
                    .into_iter()
                    .find_map(|x| x.as_str().map(str::to_owned))
                    .filter(|x| !x.is_empty())
            } else {
                s.split(',')
                    .map(str::trim)
                    .find(|x| !x.is_empty())
                    .map(str::to_owned)
            }
        }
        _ => None,
    }
}

/// The JSON object in a string attribute value (parsed twice when a
/// producer JSON-encoded a JSON string).
pub(crate) fn json_doc(v: &AnyValue) -> Option<serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(as_str(v)?).ok()? {
        serde_json::Value::String(inner) => serde_json::from_str(&inner).ok(),
        v @ serde_json::Value::Object(_) => Some(v),
        _ => None,
    }
}

/// Unix nanoseconds of an ISO-8601 timestamp, also when JSON-quoted.
pub(crate) fn iso_time_nanos(v: &AnyValue) -> Option<i64> {
    let s = as_str(v)?.trim().trim_matches('"');
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> AnyValue {
        AnyValue {
            value: Some(Value::StringValue(x.into())),
        }
    }

    #[test]
    fn counts_from_every_spelling() {
        let int = AnyValue {
            value: Some(Value::IntValue(42)),
        };
        let dbl = AnyValue {
            value: Some(Value::DoubleValue(42.0)),
        };
        assert_eq!(as_count(&int), Some(42));
        assert_eq!(as_count(&dbl), Some(42));
        assert_eq!(as_count(&s(" 42 ")), Some(42));
        assert_eq!(as_count(&s("-1")), None);
        assert_eq!(as_count(&s("4.5")), None);
        assert_eq!(as_count(&s("lots")), None);
    }

    #[test]
    fn booleans_from_python_strings() {
        assert_eq!(as_bool(&s("True")), Some(true));
        assert_eq!(as_bool(&s("False")), Some(false));
        assert_eq!(as_bool(&s("maybe")), None);
    }

    #[test]
    fn finish_reason_lists() {
        assert_eq!(first_of_list(&s("[\"stop\"]")).as_deref(), Some("stop"));
        assert_eq!(first_of_list(&s("length, stop")).as_deref(), Some("length"));
        assert_eq!(first_of_list(&s("[1, 2")), None);
    }
}
