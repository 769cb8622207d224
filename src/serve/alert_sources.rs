//! Where alert rules read their values: [`LiveSource`] answers metric rules
//! from the aggregator's live cells (a running server), [`RollupSource`] from
//! the `rollups` table (`llmtrace alerts check` on a data dir); both run SQL
//! rules on the query engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::aggregate::{hdr, Aggregator, Cell, Counters, Dimension, StatsQuery};
use crate::alert::source::{Metric, MetricQuery, Sample, Source, SourceError};
use crate::query::{QueryEngine, QueryResult};

/// The value of `metric` for the calls merged in `cell`; `None` when the
/// cell has nothing to say (no streaming calls for TTFT, no calls at all).
pub fn metric_value(metric: Metric, cell: &Cell) -> Option<f64> {
    let c = &cell.counters;
    if c.requests == 0 {
        return None;
    }
    match metric {
        Metric::LatencyP50 => hdr::quantile(&cell.latency, 0.5),
        Metric::LatencyP90 => hdr::quantile(&cell.latency, 0.9),
        Metric::LatencyP95 => hdr::quantile(&cell.latency, 0.95),
        Metric::LatencyP99 => hdr::quantile(&cell.latency, 0.99),
        Metric::TtftP99 => cell.ttft.as_ref().and_then(|h| hdr::quantile(h, 0.99)),
        Metric::ErrorRate => c.error_rate(),
        Metric::Requests => Some(c.requests as f64),
        Metric::CostUsd => Some(c.cost_usd()),
        Metric::InputTokens => Some(c.input_tokens as f64),
        Metric::OutputTokens => Some(c.output_tokens as f64),
        Metric::TotalTokens => Some((c.input_tokens + c.output_tokens) as f64),
        Metric::UnpricedCalls => Some(c.unpriced as f64),
    }
}

fn dimensions(names: &[String]) -> Result<Vec<Dimension>, SourceError> {
    names
        .iter()
        .map(|n| {
            Dimension::parse(n)
                .ok_or_else(|| SourceError::Query(format!("unknown dimension {n:?}")))
        })
        .collect()
}

/// Rows of a SQL answer as samples: the `value` column, every other column a label.
fn samples_of(result: &QueryResult) -> Result<Vec<Sample>, SourceError> {
    let value_at = result
        .schema
        .fields()
        .iter()
        .position(|f| f.name() == "value")
        .ok_or_else(|| SourceError::InvalidResult("the query has no `value` column".into()))?;
    let options = FormatOptions::default().with_null("");
    let mut out = Vec::new();
    for batch in &result.batches {
        let values = cast(batch.column(value_at), &DataType::Float64)
            .map_err(|e| SourceError::InvalidResult(format!("`value` is not a number: {e}")))?;
        let values = values.as_primitive::<Float64Type>();
        let labels: Vec<(String, ArrayFormatter)> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .enumerate()
            .filter(|(i, _)| *i != value_at)
            .map(|(_, (f, c))| {
                Ok((
                    f.name().clone(),
                    ArrayFormatter::try_new(c.as_ref(), &options)?,
                ))
            })
            .collect::<Result<_, datafusion::arrow::error::ArrowError>>()
            .map_err(|e| SourceError::InvalidResult(e.to_string()))?;
        for row in 0..batch.num_rows() {
            if values.is_null(row) {
                continue;
            }
            out.push(Sample {
                labels: labels
                    .iter()
                    .map(|(name, f)| (name.clone(), f.value(row).to_string()))
                    .collect(),
                value: values.value(row),
            });
        }
    }
    Ok(out)
}

async fn run_sql(query: &QueryEngine, sql: &str) -> Result<Vec<Sample>, SourceError> {
    let result = query
        .run(sql)
        .await
        .map_err(|e| SourceError::Query(e.to_string()))?;
    samples_of(&result)
}

/// Metric rules over the live aggregates of a running server.
pub struct LiveSource {
    pub aggregator: Arc<Aggregator>,
    pub query: Arc<QueryEngine>,
}

#[async_trait]
impl Source for LiveSource {
    async fn metric(
        &self,
        q: &MetricQuery,
        now: DateTime<Utc>,
    ) -> Result<Vec<Sample>, SourceError> {
        let stats = StatsQuery {
            window: q.window,
            group_by: dimensions(&q.group_by)?,
            filters: q
                .filter
                .iter()
                .map(|(k, v)| Ok((dimensions(std::slice::from_ref(k))?[0], v.clone())))
                .collect::<Result<_, SourceError>>()?,
        };
        let now = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let groups = self
            .aggregator
            .stats(&stats, now)
            .map_err(|e| SourceError::Query(e.to_string()))?;
        Ok(groups
            .iter()
            .filter_map(|g| {
                let value = metric_value(q.metric, &g.cell)?;
                let labels = g
                    .group
                    .iter()
                    .map(|(d, v)| (d.name().to_owned(), v.as_deref().unwrap_or("").to_owned()))
                    .collect();
                Some(Sample { labels, value })
            })
            .collect())
    }

    async fn sql(&self, sql: &str) -> Result<Vec<Sample>, SourceError> {
        run_sql(&self.query, sql).await
    }
}

/// Metric rules over the `rollups` table, for evaluating rules without a
/// server. Rollups hold closed minutes only, so the newest minute or two
/// are not seen.
pub struct RollupSource {
    pub query: Arc<QueryEngine>,
}

/// The rollups column of a dimension.
fn column(d: Dimension) -> &'static str {
    match d {
        Dimension::Service => "service_name",
        other => other.name(),
    }
}

fn quoted(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

#[async_trait]
impl Source for RollupSource {
    async fn metric(
        &self,
        q: &MetricQuery,
        now: DateTime<Utc>,
    ) -> Result<Vec<Sample>, SourceError> {
        let group = dimensions(&q.group_by)?;
        let from = now - chrono::Duration::from_std(q.window).unwrap_or_default();
        let mut conditions = vec![format!(
            "minute > TIMESTAMP '{}' - INTERVAL '1 minute'",
            from.format("%Y-%m-%dT%H:%M:%S%.fZ")
        )];
        for (k, v) in &q.filter {
            let d = dimensions(std::slice::from_ref(k))?[0];
            conditions.push(format!("{} = {}", column(d), quoted(v)));
        }
        let keys: Vec<String> = group.iter().map(|d| column(*d).to_owned()).collect();
        let mut select = keys.clone();
        select.extend(
            [
                "sum(requests)",
                "sum(errors)",
                "sum(unpriced_calls)",
                "sum(input_tokens)",
                "sum(output_tokens)",
                "sum(cost_usd)",
                "hdr_merge(latency_ms_hist)",
                "hdr_merge(ttft_ms_hist)",
            ]
            .map(str::to_owned),
        );
        let mut sql = format!(
            "SELECT {} FROM rollups WHERE {}",
            select.join(", "),
            conditions.join(" AND ")
        );
        if !keys.is_empty() {
            sql.push_str(&format!(" GROUP BY {}", keys.join(", ")));
        }
        let result = self
            .query
            .run(&sql)
            .await
            .map_err(|e| SourceError::Query(e.to_string()))?;
        let n = keys.len();
        let mut out = Vec::new();
        let options = FormatOptions::default().with_null("");
        for batch in &result.batches {
            let ints: Vec<_> = (n..n + 5)
                .map(|i| cast(batch.column(i), &DataType::Float64))
                .collect::<Result<_, _>>()
                .map_err(|e| SourceError::InvalidResult(e.to_string()))?;
            let cost = cast(batch.column(n + 5), &DataType::Float64)
                .map_err(|e| SourceError::InvalidResult(e.to_string()))?;
            let (latency, ttft) = (
                batch.column(n + 6).as_binary::<i32>(),
                batch.column(n + 7).as_binary::<i32>(),
            );
            for row in 0..batch.num_rows() {
                let num = |a: &dyn Array| {
                    let a = a.as_primitive::<Float64Type>();
                    if a.is_null(row) {
                        0.0
                    } else {
                        a.value(row)
                    }
                };
                if latency.is_null(row) {
                    continue;
                }
                let decode = |b: &[u8]| {
                    hdr::decode(b).map_err(|e| SourceError::InvalidResult(e.to_string()))
                };
                let cell = Cell {
                    counters: Counters {
                        requests: num(ints[0].as_ref()) as u64,
                        errors: num(ints[1].as_ref()) as u64,
                        unpriced: num(ints[2].as_ref()) as u64,
                        input_tokens: num(ints[3].as_ref()) as u64,
                        output_tokens: num(ints[4].as_ref()) as u64,
                        cost_nano_usd: crate::aggregate::cell::nano_usd(num(cost.as_ref())),
                        ..Counters::default()
                    },
                    latency: decode(latency.value(row))?,
                    ttft: (!ttft.is_null(row))
                        .then(|| decode(ttft.value(row)))
                        .transpose()?,
                };
                let Some(value) = metric_value(q.metric, &cell) else {
                    continue;
                };
                let mut labels = BTreeMap::new();
                for (i, d) in group.iter().enumerate() {
                    let f = ArrayFormatter::try_new(batch.column(i).as_ref(), &options)
                        .map_err(|e| SourceError::InvalidResult(e.to_string()))?;
                    labels.insert(d.name().to_owned(), f.value(row).to_string());
                }
                out.push(Sample { labels, value });
            }
        }
        Ok(out)
    }

    async fn sql(&self, sql: &str) -> Result<Vec<Sample>, SourceError> {
        run_sql(&self.query, sql).await
    }
}
