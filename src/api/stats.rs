//! `GET /api/v1/stats?window=5m&group_by=model,provider&provider=openai`:
//! live aggregates of LLM calls per group, merged over the minutes that
//! overlap the window. Every other parameter named after a dimension filters
//! on it.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{error, ApiState};
use crate::aggregate::{hdr, Cell, Dimension, GroupStats, StatsQuery};
use crate::auth::Scope;

const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
pub const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)];

/// Reads the query string; errors name the parameter at fault.
pub fn parse(params: &HashMap<String, String>) -> Result<StatsQuery, String> {
    let mut query = StatsQuery {
        window: DEFAULT_WINDOW,
        group_by: Vec::new(),
        filters: Vec::new(),
    };
    for (name, value) in params {
        match name.as_str() {
            "window" => {
                query.window = humantime::parse_duration(value)
                    .map_err(|e| format!("window={value}: {e} (e.g. 5m, 1h)"))?;
                if query.window.is_zero() {
                    return Err("window must be greater than 0".into());
                }
            }
            "group_by" => {
                for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let d = Dimension::parse(part).ok_or_else(|| {
                        format!(
                            "group_by: unknown dimension {part:?}; one of {}",
                            Dimension::names()
                        )
                    })?;
                    if !query.group_by.contains(&d) {
                        query.group_by.push(d);
                    }
                }
            }
            other => {
                let d = Dimension::parse(other).ok_or_else(|| {
                    format!(
                        "unknown parameter {other:?}: use window, group_by, or a dimension to filter on ({})",
                        Dimension::names()
                    )
                })?;
                query.filters.push((d, value.clone()));
            }
        }
    }
    query.filters.sort();
    Ok(query)
}

fn quantiles(h: Option<&hdrhistogram::Histogram<u64>>) -> Value {
    match h.filter(|h| !h.is_empty()) {
        None => Value::Null,
        Some(h) => Value::Object(
            QUANTILES
                .iter()
                .map(|(name, q)| ((*name).to_owned(), json!(hdr::quantile(h, *q))))
                .collect(),
        ),
    }
}

/// The JSON of one group: its dimension values, then the figures.
pub fn group_json(g: &GroupStats) -> Value {
    let mut out = Map::new();
    for (d, v) in &g.group {
        out.insert(d.name().to_owned(), json!(v.as_deref()));
    }
    let Cell {
        counters: c,
        latency,
        ttft,
    } = &g.cell;
    let figures = json!({
        "requests": c.requests,
        "errors": c.errors,
        "error_rate": c.error_rate(),
        "latency_ms": quantiles(Some(latency)),
        "ttft_ms": quantiles(ttft.as_ref()),
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "cache_read_tokens": c.cache_read_tokens,
        "cache_write_tokens": c.cache_write_tokens,
        "reasoning_tokens": c.reasoning_tokens,
        "cost_usd": c.cost_usd(),
        "unpriced": c.unpriced,
    });
    if let Value::Object(f) = figures {
        out.extend(f);
    }
    Value::Object(out)
}

pub async fn stats(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let principal = match state.authorize(&headers, Scope::Query) {
        Ok(p) => p,
        Err(e) => return super::denied(e),
    };
    let mut query = match parse(&params) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    // A tenant's key sees its own calls only, whatever it filters on.
    if let Some(tenant) = principal.read_tenant() {
        query.filters.retain(|(d, _)| *d != Dimension::Tenant);
        query.filters.push((Dimension::Tenant, tenant.to_owned()));
    }
    let now = chrono::Utc::now();
    let now_nanos = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
    let groups = match state.aggregator.stats(&query, now_nanos) {
        Ok(g) => g,
        Err(e @ crate::aggregate::AggregateError::WindowTooLong { .. }) => {
            return error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let from = now - chrono::Duration::from_std(query.window).unwrap_or_default();
    Json(json!({
        "window": humantime::format_duration(query.window).to_string(),
        "from": from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "to": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "group_by": query.group_by.iter().map(|d| d.name()).collect::<Vec<_>>(),
        "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parameters_parse_and_bad_ones_are_named() {
        let q = parse(&params(&[
            ("window", "15m"),
            ("group_by", "model, provider,model"),
            ("provider", "openai"),
        ]))
        .unwrap();
        assert_eq!(q.window, Duration::from_secs(900));
        assert_eq!(q.group_by, vec![Dimension::Model, Dimension::Provider]);
        assert_eq!(q.filters, vec![(Dimension::Provider, "openai".to_owned())]);
        assert_eq!(parse(&params(&[])).unwrap().window, DEFAULT_WINDOW);

        let e = parse(&params(&[("window", "soon")])).unwrap_err();
        assert!(e.starts_with("window=soon"), "{e}");
        let e = parse(&params(&[("group_by", "model,colour")])).unwrap_err();
        assert!(e.contains("\"colour\""), "{e}");
        let e = parse(&params(&[("colour", "red")])).unwrap_err();
        assert!(e.contains("unknown parameter \"colour\""), "{e}");
        assert!(parse(&params(&[("window", "0s")])).is_err());
    }
}
