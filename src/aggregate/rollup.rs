//! Rollup rows: one closed (minute, key) cell, as written to `rollups/` and
//! read back by SQL with `hdr_merge`, `hdr_quantile` and `hdr_count`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Decimal128Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use chrono::{DateTime, NaiveDate};

use super::cell::{Counters, LiveCell, Recorder};
use super::hdr;
use super::key::{AggKey, Dimension};

/// Scale of `cost_usd`: nano-dollars, the unit cells sum in.
pub const COST_SCALE: i8 = 9;

#[derive(Clone, Debug, PartialEq)]
pub struct Rollup {
    /// Start of the minute, unix ns.
    pub minute: i64,
    pub key: AggKey,
    pub counters: Counters,
    /// V2-encoded latency histogram (ms).
    pub latency: Vec<u8>,
    /// V2-encoded time-to-first-token histogram (ms), if any call streamed.
    pub ttft: Option<Vec<u8>>,
    /// Counts spans that arrived after this minute had closed once.
    pub correction: bool,
}

impl Rollup {
    pub fn of(minute: i64, key: AggKey, cell: &LiveCell, correction: bool) -> Self {
        // Digits were checked when the aggregator was built, so the
        // histograms build; an empty encoding would only lose the values.
        let encode = |r: &Recorder| {
            r.histogram(cell.digits())
                .map(|h| hdr::encode(&h))
                .unwrap_or_default()
        };
        Rollup {
            minute,
            key,
            counters: cell.counters.clone(),
            latency: encode(&cell.latency),
            ttft: cell.ttft.as_ref().map(encode),
            correction,
        }
    }

    pub fn date(&self) -> NaiveDate {
        DateTime::from_timestamp_nanos(self.minute).date_naive()
    }
}

/// Key columns after `minute`, named as in the spans table.
const KEY_COLUMNS: [(Dimension, &str); 6] = [
    (Dimension::Service, "service_name"),
    (Dimension::Provider, "provider"),
    (Dimension::Model, "model"),
    (Dimension::Operation, "operation"),
    (Dimension::PromptName, "prompt_name"),
    (Dimension::PromptVersion, "prompt_version"),
];

const COUNT_COLUMNS: [&str; 8] = [
    "requests",
    "errors",
    "unpriced_calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
];

fn counts(c: &Counters) -> [u64; 8] {
    [
        c.requests,
        c.errors,
        c.unpriced,
        c.input_tokens,
        c.output_tokens,
        c.cache_read_tokens,
        c.cache_write_tokens,
        c.reasoning_tokens,
    ]
}

/// Columns of a rollup file (the `tenant` and `date` partition columns are
/// the file's directory).
pub fn rollup_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields = vec![Field::new(
                "minute",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            )];
            fields.extend(
                KEY_COLUMNS
                    .iter()
                    .map(|(_, n)| Field::new(*n, DataType::Utf8, true)),
            );
            fields.extend(
                COUNT_COLUMNS
                    .iter()
                    .map(|n| Field::new(*n, DataType::Int64, false)),
            );
            fields.push(Field::new(
                "cost_usd",
                DataType::Decimal128(38, COST_SCALE),
                false,
            ));
            fields.push(Field::new("latency_ms_hist", DataType::Binary, false));
            fields.push(Field::new("ttft_ms_hist", DataType::Binary, true));
            fields.push(Field::new("correction", DataType::Boolean, false));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// Rows as one batch per (tenant, date) partition.
pub fn to_batches(
    rows: &[Arc<Rollup>],
) -> Result<Vec<(Arc<str>, NaiveDate, RecordBatch)>, ArrowError> {
    let mut parts: BTreeMap<(Arc<str>, NaiveDate), Vec<&Rollup>> = BTreeMap::new();
    for r in rows {
        let tenant: Arc<str> = Arc::from(r.key.tenant());
        parts.entry((tenant, r.date())).or_default().push(r);
    }
    parts
        .into_iter()
        .map(|((tenant, date), rows)| Ok((tenant, date, batch(&rows)?)))
        .collect()
}

fn batch(rows: &[&Rollup]) -> Result<RecordBatch, ArrowError> {
    let mut minute = TimestampNanosecondBuilder::new().with_timezone("UTC");
    let mut keys: Vec<StringBuilder> = KEY_COLUMNS.iter().map(|_| StringBuilder::new()).collect();
    let mut nums: Vec<Int64Builder> = COUNT_COLUMNS.iter().map(|_| Int64Builder::new()).collect();
    let mut cost = Decimal128Builder::new().with_precision_and_scale(38, COST_SCALE)?;
    let mut latency = BinaryBuilder::new();
    let mut ttft = BinaryBuilder::new();
    let mut correction = BooleanBuilder::new();
    for r in rows {
        minute.append_value(r.minute);
        for ((d, _), b) in KEY_COLUMNS.iter().zip(keys.iter_mut()) {
            b.append_option(r.key.get(*d));
        }
        for (v, b) in counts(&r.counters).into_iter().zip(nums.iter_mut()) {
            b.append_value(i64::try_from(v).unwrap_or(i64::MAX));
        }
        cost.append_value(i128::from(r.counters.cost_nano_usd));
        latency.append_value(&r.latency);
        ttft.append_option(r.ttft.as_deref());
        correction.append_value(r.correction);
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(minute.finish())];
    columns.extend(keys.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.extend(nums.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.push(Arc::new(cost.finish()));
    columns.push(Arc::new(latency.finish()));
    columns.push(Arc::new(ttft.finish()));
    columns.push(Arc::new(correction.finish()));
    RecordBatch::try_new(rollup_schema(), columns)
}
