//! Where rule values come from. The engine knows nothing about the aggregator or DataFusion: the
//! server implements [`Source`] over them, tests implement it over a table of samples.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Dimension names a metric rule may use in `group_by` and `filter`.
pub const DIMENSIONS: &[&str] = &[
    "tenant",
    "service",
    "provider",
    "model",
    "operation",
    "prompt_name",
    "prompt_version",
];

/// One evaluated series: its labels (group-by dimension values or SQL label columns) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn new<K: Into<String>, V: Into<String>>(
        labels: impl IntoIterator<Item = (K, V)>,
        value: f64,
    ) -> Self {
        Sample {
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            value,
        }
    }
}

/// The live aggregates a metric rule can watch (names as written in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    LatencyP50,
    LatencyP90,
    LatencyP95,
    LatencyP99,
    TtftP99,
    ErrorRate,
    Requests,
    CostUsd,
    InputTokens,
    OutputTokens,
    TotalTokens,
    UnpricedCalls,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::LatencyP50,
        Metric::LatencyP90,
        Metric::LatencyP95,
        Metric::LatencyP99,
        Metric::TtftP99,
        Metric::ErrorRate,
        Metric::Requests,
        Metric::CostUsd,
        Metric::InputTokens,
        Metric::OutputTokens,
        Metric::TotalTokens,
        Metric::UnpricedCalls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::LatencyP50 => "latency_p50",
            Metric::LatencyP90 => "latency_p90",
            Metric::LatencyP95 => "latency_p95",
            Metric::LatencyP99 => "latency_p99",
            Metric::TtftP99 => "ttft_p99",
            Metric::ErrorRate => "error_rate",
            Metric::Requests => "requests",
            Metric::CostUsd => "cost_usd",
            Metric::InputTokens => "input_tokens",
            Metric::OutputTokens => "output_tokens",
            Metric::TotalTokens => "total_tokens",
            Metric::UnpricedCalls => "unpriced_calls",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of [`Metric::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {0:?}")]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

/// What a metric rule asks for: the value of `metric` over the last `window`, one sample per
/// group (the `group_by` dimensions as labels), counting only calls matching every `filter`
/// pair exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricQuery {
    pub metric: Metric,
    pub window: Duration,
    pub group_by: Vec<String>,
    pub filter: BTreeMap<String, String>,
}

/// A rule's data could not be obtained. The rule is skipped for this round and its instances
/// keep their state: an outage of the query layer must not resolve (or fire) anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The query failed to run (parse error, refused by the read-only guard, I/O, ...).
    #[error("query failed: {0}")]
    Query(String),
    /// The query ran but its result is unusable (a SQL rule without a numeric `value` column).
    #[error("invalid result: {0}")]
    InvalidResult(String),
    /// Set by the engine when the source did not answer within the rule's interval.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// The engine's only way to read data.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// A metric rule: the value of `q.metric` over `q.window` ending at `now`, one sample per
    /// group (group_by dimensions as labels), only calls matching `q.filter`. No traffic = no
    /// samples.
    async fn metric(&self, q: &MetricQuery, now: DateTime<Utc>)
        -> Result<Vec<Sample>, SourceError>;

    /// A SQL rule: rows with a numeric `value` column; every other column is a label (its
    /// value as text; NULL as the empty string).
    async fn sql(&self, sql: &str) -> Result<Vec<Sample>, SourceError>;
}
