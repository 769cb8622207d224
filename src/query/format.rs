//! Query results as the API and CLI hand them out: JSON (the contract's
//! `{"columns", "rows", "row_count", "elapsed_ms"}`), CSV, Arrow IPC stream,
//! and a text table.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{json, Value};

use super::QueryResult;

fn cell(array: &dyn Array, row: usize) -> Result<Value, ArrowError> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        DataType::Boolean => json!(array.as_boolean().value(row)),
        DataType::Int8 => json!(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => json!(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => json!(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => json!(array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => json!(array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => json!(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => json!(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => json!(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => json!(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => json!(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => json!(array.as_string::<i64>().value(row)),
        DataType::Utf8View => json!(array.as_string_view().value(row)),
        // Decimals (rollup costs) as numbers, like every other figure.
        DataType::Decimal128(_, scale) => {
            let v = array.as_primitive::<Decimal128Type>().value(row);
            json!(v as f64 / 10f64.powi(i32::from(*scale)))
        }
        // Timestamps, maps, lists, decimals: their display form.
        _ => {
            let options = FormatOptions::default();
            let f = ArrayFormatter::try_new(array, &options)?;
            json!(f.value(row).to_string())
        }
    })
}

/// The type a client sees: how strings are held (views, dictionaries) is the
/// engine's business, not part of the answer.
fn logical_type(t: &DataType) -> String {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => "Utf8".to_owned(),
        DataType::Dictionary(_, value) => logical_type(value),
        other => other.to_string(),
    }
}

/// The JSON body of a query answer.
pub fn to_json(result: &QueryResult) -> Result<Value, ArrowError> {
    let columns: Vec<Value> = result
        .schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": logical_type(f.data_type())}))
        .collect();
    let mut rows = Vec::with_capacity(result.row_count);
    for batch in &result.batches {
        for r in 0..batch.num_rows() {
            let row: Result<Vec<Value>, ArrowError> = batch
                .columns()
                .iter()
                .map(|c| cell(c.as_ref(), r))
                .collect();
            rows.push(Value::Array(row?));
        }
    }
    Ok(json!({
        "columns": columns,
        "rows": rows,
        "row_count": result.row_count,
        "truncated": result.truncated,
        "elapsed_ms": result.elapsed.as_secs_f64() * 1e3,
    }))
}

pub fn to_csv(result: &QueryResult) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        if result.batches.is_empty() {
            let empty = datafusion::arrow::array::RecordBatch::new_empty(result.schema.clone());
            w.write(&empty)?;
        }
        for b in &result.batches {
            w.write(b)?;
        }
    }
    Ok(out)
}

pub fn to_arrow_ipc(result: &QueryResult) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    {
        let mut w =
            datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, &result.schema)?;
        for b in &result.batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(out)
}

pub fn to_table(result: &QueryResult) -> Result<String, ArrowError> {
    let table = datafusion::arrow::util::pretty::pretty_format_batches(&result.batches)?;
    let mut out = table.to_string();
    out.push_str(&format!(
        "\n{} row{}{} in {:.1} ms\n",
        result.row_count,
        if result.row_count == 1 { "" } else { "s" },
        if result.truncated {
            " (truncated at query.max_rows or query.max_result_bytes)"
        } else {
            ""
        },
        result.elapsed.as_secs_f64() * 1e3
    ));
    Ok(out)
}
