//! SQL over the serialized HdrHistograms of the `rollups` table:
//!
//! - `hdr_merge(hist)`: aggregate; the histogram of all rows' values.
//! - `hdr_quantile(hist, q)`: the value at quantile `q` (0 to 1), in the
//!   histogram's unit (ms for `latency_ms_hist` and `ttft_ms_hist`).
//! - `hdr_count(hist)`: how many values the histogram holds.
//!
//! So `SELECT model, hdr_quantile(hdr_merge(latency_ms_hist), 0.99) FROM
//! rollups GROUP BY model` is the exact-to-precision p99 over any range,
//! without touching the spans. Nulls are skipped; bytes that are not a V2
//! histogram are a query error, not a crash.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Builder, Int64Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    Volatility,
};
use hdrhistogram::Histogram;

use crate::aggregate::hdr;

fn decode(name: &str, bytes: &[u8]) -> Result<Histogram<u64>> {
    hdr::decode(bytes).map_err(|e| DataFusionError::Execution(format!("{name}: {e}")))
}

/// Histogram arguments as binary, whatever binary flavour the column is.
fn binary(name: &str, a: &ArrayRef) -> Result<ArrayRef> {
    match a.data_type() {
        DataType::Binary => Ok(a.clone()),
        DataType::LargeBinary | DataType::BinaryView | DataType::Null => {
            Ok(cast(a, &DataType::Binary)?)
        }
        other => exec_err!("{name}: expects a histogram column (binary), got {other}"),
    }
}

fn check_binary(name: &str, t: &DataType) -> Result<()> {
    match t {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::Null => Ok(()),
        other => plan_err!("{name}: expects a histogram column (binary), got {other}"),
    }
}

macro_rules! same_by_name {
    ($t:ty) => {
        impl PartialEq for $t {
            fn eq(&self, _: &Self) -> bool {
                true
            }
        }
        impl Eq for $t {}
        impl Default for $t {
            fn default() -> Self {
                Self::new()
            }
        }
        impl Hash for $t {
            fn hash<H: Hasher>(&self, state: &mut H) {
                stringify!($t).hash(state);
            }
        }
    };
}

#[derive(Debug)]
pub struct HdrMerge {
    signature: Signature,
}

#[derive(Debug)]
pub struct HdrQuantile {
    signature: Signature,
}

#[derive(Debug)]
pub struct HdrCount {
    signature: Signature,
}

same_by_name!(HdrMerge);
same_by_name!(HdrQuantile);
same_by_name!(HdrCount);

impl HdrMerge {
    pub fn new() -> Self {
        HdrMerge {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl HdrQuantile {
    pub fn new() -> Self {
        HdrQuantile {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl HdrCount {
    pub fn new() -> Self {
        HdrCount {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for HdrMerge {
    fn name(&self) -> &str {
        "hdr_merge"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        check_binary("hdr_merge", &arg_types[0])?;
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(MergeAccumulator::default()))
    }
}

/// The running merge; `None` until a non-null histogram arrives, so the
/// merge of no rows is null rather than an empty histogram.
#[derive(Debug, Default)]
struct MergeAccumulator {
    merged: Option<Histogram<u64>>,
}

impl Accumulator for MergeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let array = binary("hdr_merge", &values[0])?;
        let array = array.as_binary::<i32>();
        for i in 0..array.len() {
            if array.is_null(i) {
                continue;
            }
            let bytes = array.value(i);
            match self.merged.as_mut() {
                // Walking the encoding into the running merge skips building
                // a histogram per row.
                Some(m) => {
                    hdr::merge_encoded(m, bytes)
                        .map_err(|e| DataFusionError::Execution(format!("hdr_merge: {e}")))?;
                }
                None => self.merged = Some(decode("hdr_merge", bytes)?),
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(self.merged.as_ref().map(hdr::encode)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self
                .merged
                .as_ref()
                .map_or(0, |h| h.distinct_values() * std::mem::size_of::<u64>())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }
}

impl ScalarUDFImpl for HdrQuantile {
    fn name(&self) -> &str {
        "hdr_quantile"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        check_binary("hdr_quantile", &arg_types[0])?;
        if !arg_types[1].is_numeric() && arg_types[1] != DataType::Null {
            return plan_err!("hdr_quantile(hist, q): q must be a number from 0 to 1");
        }
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let hists = binary("hdr_quantile", &args.args[0].to_array(n)?)?;
        let hists = hists.as_binary::<i32>();
        let qs = cast(&args.args[1].to_array(n)?, &DataType::Float64)?;
        let qs = qs.as_primitive::<Float64Type>();
        let mut out = Float64Builder::with_capacity(n);
        for i in 0..n {
            if hists.is_null(i) || qs.is_null(i) {
                out.append_null();
                continue;
            }
            let q = qs.value(i);
            if !(0.0..=1.0).contains(&q) {
                return exec_err!("hdr_quantile(hist, q): q must be from 0 to 1, got {q}");
            }
            let h = decode("hdr_quantile", hists.value(i))?;
            out.append_option(hdr::quantile(&h, q));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

impl ScalarUDFImpl for HdrCount {
    fn name(&self) -> &str {
        "hdr_count"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        check_binary("hdr_count", &arg_types[0])?;
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let hists = binary("hdr_count", &args.args[0].to_array(n)?)?;
        let hists = hists.as_binary::<i32>();
        let mut out = Int64Builder::with_capacity(n);
        for i in 0..n {
            if hists.is_null(i) {
                out.append_null();
            } else {
                let h = decode("hdr_count", hists.value(i))?;
                out.append_value(i64::try_from(h.len()).unwrap_or(i64::MAX));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
