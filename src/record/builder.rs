//! Appends [`SpanRecord`]s to Arrow column builders, one column per schema field.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, MapBuilder, MapFieldNames,
    StringBuilder, TimestampNanosecondBuilder,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::schema::{span_schema, MAP_ENTRIES, MAP_KEY, MAP_VALUE};
use super::{hex_in, SpanRecord};

type StringMapBuilder = MapBuilder<StringBuilder, StringBuilder>;

fn map_builder() -> StringMapBuilder {
    let names = MapFieldNames {
        entry: MAP_ENTRIES.into(),
        key: MAP_KEY.into(),
        value: MAP_VALUE.into(),
    };
    MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// Column builders for one batch of span rows.
pub struct SpanBatchBuilder {
    rows: usize,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    trace_state: StringBuilder,
    start_time: TimestampNanosecondBuilder,
    end_time: TimestampNanosecondBuilder,
    duration_ms: Float64Builder,
    service_name: StringBuilder,
    span_name: StringBuilder,
    span_kind: StringBuilder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    status: StringBuilder,
    status_message: StringBuilder,
    error_type: StringBuilder,
    is_llm: BooleanBuilder,
    operation: StringBuilder,
    provider: StringBuilder,
    request_model: StringBuilder,
    response_model: StringBuilder,
    model: StringBuilder,
    response_id: StringBuilder,
    input_tokens: Int64Builder,
    output_tokens: Int64Builder,
    cache_read_tokens: Int64Builder,
    cache_write_tokens: Int64Builder,
    reasoning_tokens: Int64Builder,
    total_tokens: Int64Builder,
    cost_usd: Float64Builder,
    cost_status: StringBuilder,
    price_id: StringBuilder,
    price_version: StringBuilder,
    reported_cost_usd: Float64Builder,
    ttft_ms: Float64Builder,
    streaming: BooleanBuilder,
    finish_reason: StringBuilder,
    prompt_name: StringBuilder,
    prompt_version: StringBuilder,
    user_id: StringBuilder,
    session_id: StringBuilder,
    attributes: StringMapBuilder,
    resource_attributes: StringMapBuilder,
    events: StringBuilder,
    links: StringBuilder,
}

impl Default for SpanBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SpanBatchBuilder {
    pub fn new() -> Self {
        let ts = || TimestampNanosecondBuilder::new().with_timezone("UTC");
        Self {
            rows: 0,
            trace_id: StringBuilder::new(),
            span_id: StringBuilder::new(),
            parent_span_id: StringBuilder::new(),
            trace_state: StringBuilder::new(),
            start_time: ts(),
            end_time: ts(),
            duration_ms: Float64Builder::new(),
            service_name: StringBuilder::new(),
            span_name: StringBuilder::new(),
            span_kind: StringBuilder::new(),
            scope_name: StringBuilder::new(),
            scope_version: StringBuilder::new(),
            status: StringBuilder::new(),
            status_message: StringBuilder::new(),
            error_type: StringBuilder::new(),
            is_llm: BooleanBuilder::new(),
            operation: StringBuilder::new(),
            provider: StringBuilder::new(),
            request_model: StringBuilder::new(),
            response_model: StringBuilder::new(),
            model: StringBuilder::new(),
            response_id: StringBuilder::new(),
            input_tokens: Int64Builder::new(),
            output_tokens: Int64Builder::new(),
            cache_read_tokens: Int64Builder::new(),
            cache_write_tokens: Int64Builder::new(),
            reasoning_tokens: Int64Builder::new(),
            total_tokens: Int64Builder::new(),
            cost_usd: Float64Builder::new(),
            cost_status: StringBuilder::new(),
            price_id: StringBuilder::new(),
            price_version: StringBuilder::new(),
            reported_cost_usd: Float64Builder::new(),
            ttft_ms: Float64Builder::new(),
            streaming: BooleanBuilder::new(),
            finish_reason: StringBuilder::new(),
            prompt_name: StringBuilder::new(),
            prompt_version: StringBuilder::new(),
            user_id: StringBuilder::new(),
            session_id: StringBuilder::new(),
            attributes: map_builder(),
            resource_attributes: map_builder(),
            events: StringBuilder::new(),
            links: StringBuilder::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn append(&mut self, r: &SpanRecord) {
        self.rows += 1;
        let mut buf = [0u8; 32];
        self.trace_id.append_value(hex_in(&r.trace_id, &mut buf));
        self.span_id.append_value(hex_in(&r.span_id, &mut buf));
        match &r.parent_span_id {
            Some(p) => self.parent_span_id.append_value(hex_in(p, &mut buf)),
            None => self.parent_span_id.append_null(),
        }
        self.trace_state.append_option(r.trace_state.as_deref());
        self.start_time.append_value(r.start_unix_nano);
        self.end_time.append_value(r.end_unix_nano);
        self.duration_ms.append_value(r.duration_ms());
        self.service_name.append_option(r.service_name.as_deref());
        self.span_name.append_value(&r.span_name);
        self.span_kind.append_value(r.span_kind);
        self.scope_name.append_option(r.scope_name.as_deref());
        self.scope_version.append_option(r.scope_version.as_deref());
        self.status.append_value(r.facts.status.as_str());
        self.status_message
            .append_option(r.status_message.as_deref());
        self.error_type.append_option(r.facts.error_type);
        let context = &r.facts.context;
        self.user_id.append_option(context.user_id.as_deref());
        self.session_id.append_option(context.session_id.as_deref());
        self.cost_usd.append_option(r.cost_usd);
        self.cost_status.append_value(r.cost_status.as_str());
        self.price_id.append_option(r.price_id.as_deref());
        self.price_version.append_option(r.price_version.as_deref());

        let llm = r.facts.llm.as_ref();
        self.is_llm.append_value(llm.is_some());
        let s = |f: fn(&crate::genai::LlmFacts) -> Option<&str>| llm.and_then(f);
        self.operation.append_option(s(|l| l.operation.as_deref()));
        self.provider.append_option(s(|l| l.provider.as_deref()));
        self.request_model
            .append_option(s(|l| l.request_model.as_deref()));
        self.response_model
            .append_option(s(|l| l.response_model.as_deref()));
        self.model.append_option(s(|l| l.model()));
        self.response_id
            .append_option(s(|l| l.response_id.as_deref()));
        self.finish_reason
            .append_option(s(|l| l.finish_reason.as_deref()));
        self.prompt_name
            .append_option(context.prompt_name.as_deref());
        self.prompt_version
            .append_option(context.prompt_version.as_deref());
        let tokens = llm.map(|l| l.tokens).unwrap_or_default();
        self.input_tokens.append_option(opt_i64(tokens.input));
        self.output_tokens.append_option(opt_i64(tokens.output));
        self.cache_read_tokens
            .append_option(opt_i64(tokens.cache_read));
        self.cache_write_tokens
            .append_option(opt_i64(tokens.cache_write));
        self.reasoning_tokens
            .append_option(opt_i64(tokens.reasoning));
        self.total_tokens.append_option(opt_i64(tokens.total));
        self.reported_cost_usd
            .append_option(llm.and_then(|l| l.reported_cost_usd));
        self.ttft_ms.append_option(llm.and_then(|l| l.ttft_ms));
        self.streaming.append_option(llm.and_then(|l| l.streaming));

        append_map(&mut self.attributes, &r.attributes);
        append_map(&mut self.resource_attributes, &r.resource_attributes);
        self.events.append_option(r.events_json.as_deref());
        self.links.append_option(r.links_json.as_deref());
    }

    /// Finishes the rows appended so far into a batch and resets the builder.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.start_time.finish()),
            Arc::new(self.end_time.finish()),
            Arc::new(self.duration_ms.finish()),
            Arc::new(self.service_name.finish()),
            Arc::new(self.span_name.finish()),
            Arc::new(self.span_kind.finish()),
            Arc::new(self.scope_name.finish()),
            Arc::new(self.scope_version.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.status_message.finish()),
            Arc::new(self.error_type.finish()),
            Arc::new(self.is_llm.finish()),
            Arc::new(self.operation.finish()),
            Arc::new(self.provider.finish()),
            Arc::new(self.request_model.finish()),
            Arc::new(self.response_model.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.response_id.finish()),
            Arc::new(self.input_tokens.finish()),
            Arc::new(self.output_tokens.finish()),
            Arc::new(self.cache_read_tokens.finish()),
            Arc::new(self.cache_write_tokens.finish()),
            Arc::new(self.reasoning_tokens.finish()),
            Arc::new(self.total_tokens.finish()),
            Arc::new(self.cost_usd.finish()),
            Arc::new(self.cost_status.finish()),
            Arc::new(self.price_id.finish()),
            Arc::new(self.price_version.finish()),
            Arc::new(self.reported_cost_usd.finish()),
            Arc::new(self.ttft_ms.finish()),
            Arc::new(self.streaming.finish()),
            Arc::new(self.finish_reason.finish()),
            Arc::new(self.prompt_name.finish()),
            Arc::new(self.prompt_version.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.session_id.finish()),
            Arc::new(self.attributes.finish()),
            Arc::new(self.resource_attributes.finish()),
            Arc::new(self.events.finish()),
            Arc::new(self.links.finish()),
        ];
        RecordBatch::try_new(span_schema(), columns)
    }
}

fn append_map(builder: &mut StringMapBuilder, pairs: &[(String, String)]) {
    for (k, v) in pairs {
        builder.keys().append_value(k);
        builder.values().append_value(v);
    }
    // Appending a (possibly empty) entry list cannot fail: the key and value
    // builders were advanced together above.
    builder.append(true).expect("map keys and values in step");
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    fn record() -> SpanRecord {
        SpanRecord::sample("GET /", 0xab)
    }

    #[test]
    fn batch_matches_the_schema() {
        let mut b = SpanBatchBuilder::new();
        b.append(&record());
        b.append(&record());
        assert_eq!(b.len(), 2);
        let batch = b.finish().expect("valid batch");
        assert_eq!(batch.num_rows(), 2);
        assert!(b.is_empty());
        let trace = batch.column_by_name("trace_id").unwrap().as_string::<i32>();
        assert_eq!(trace.value(0), "abababababababababababababababab");
        let dur = batch
            .column_by_name("duration_ms")
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(dur.value(1), 500.0);
        let attrs = batch.column_by_name("attributes").unwrap().as_map();
        assert_eq!(attrs.value(0).len(), 1);
        assert!(batch.column_by_name("model").unwrap().is_null(0));
    }
}
