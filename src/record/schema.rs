//! The Arrow schema of a span row (the `spans` table, less the partition
//! columns `tenant`, `date`, `hour`, which live in the file path).

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

pub(crate) const MAP_ENTRIES: &str = "key_value";
pub(crate) const MAP_KEY: &str = "key";
pub(crate) const MAP_VALUE: &str = "value";

pub(crate) fn string_map() -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            MAP_ENTRIES,
            DataType::Struct(Fields::from(vec![
                Field::new(MAP_KEY, DataType::Utf8, false),
                Field::new(MAP_VALUE, DataType::Utf8, true),
            ])),
            false,
        )),
        false,
    )
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::{Boolean, Float64, Int64, Utf8};
    let f = |name: &str, ty: DataType, nullable: bool| Field::new(name, ty, nullable);
    Arc::new(Schema::new(vec![
        f("trace_id", Utf8, false),
        f("span_id", Utf8, false),
        f("parent_span_id", Utf8, true),
        f("trace_state", Utf8, true),
        f("start_time", timestamp(), false),
        f("end_time", timestamp(), false),
        f("duration_ms", Float64, false),
        f("service_name", Utf8, true),
        f("span_name", Utf8, false),
        f("span_kind", Utf8, false),
        f("scope_name", Utf8, true),
        f("scope_version", Utf8, true),
        f("status", Utf8, false),
        f("status_message", Utf8, true),
        f("error_type", Utf8, true),
        f("is_llm", Boolean, false),
        f("operation", Utf8, true),
        f("provider", Utf8, true),
        f("request_model", Utf8, true),
        f("response_model", Utf8, true),
        f("model", Utf8, true),
        f("response_id", Utf8, true),
        f("input_tokens", Int64, true),
        f("output_tokens", Int64, true),
        f("cache_read_tokens", Int64, true),
        f("cache_write_tokens", Int64, true),
        f("reasoning_tokens", Int64, true),
        f("total_tokens", Int64, true),
        f("cost_usd", Float64, true),
        f("cost_status", Utf8, false),
        f("price_id", Utf8, true),
        f("price_version", Utf8, true),
        f("reported_cost_usd", Float64, true),
        f("ttft_ms", Float64, true),
        f("streaming", Boolean, true),
        f("finish_reason", Utf8, true),
        f("prompt_name", Utf8, true),
        f("prompt_version", Utf8, true),
        f("user_id", Utf8, true),
        f("session_id", Utf8, true),
        f("attributes", string_map(), false),
        f("resource_attributes", string_map(), false),
        f("events", Utf8, true),
        f("links", Utf8, true),
    ]))
});

/// Schema of the span rows as written to Parquet.
pub fn span_schema() -> SchemaRef {
    SCHEMA.clone()
}
