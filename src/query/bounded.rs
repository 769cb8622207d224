//! Scalar functions whose cost is set by a number in the query rather than
//! by the data: `repeat('a', 1000000000)` builds a gigabyte string the memory
//! pool never sees, and `levenshtein` of two long strings runs for minutes
//! inside one call that no timeout can interrupt. The built-in functions are
//! registered again behind a check of what their arguments ask for, refused
//! with a memory-limit error before any work is done.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::prelude::SessionContext;

/// What a function's arguments make it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cost {
    /// `repeat(s, n)`: |s| x n bytes.
    Repeat,
    /// `lpad/rpad(s, n[, fill])`: n characters, 4 bytes each at most.
    Pad,
    /// `levenshtein(a, b)`: |a| x |b| steps.
    Quadratic,
}

const BOUNDED: &[(&str, Cost)] = &[
    ("repeat", Cost::Repeat),
    ("lpad", Cost::Pad),
    ("rpad", Cost::Pad),
    ("levenshtein", Cost::Quadratic),
];

/// Steps of a quadratic string function allowed per call: well under a
/// second of work.
const MAX_STEPS: u64 = 100_000_000;

/// Puts the checked versions in place of the built-ins in `ctx`; strings
/// built by one call may take `max_bytes` at most.
pub fn register(ctx: &SessionContext, max_bytes: usize) {
    for &(name, cost) in BOUNDED {
        let existing = ctx.state().scalar_functions().get(name).cloned();
        if let Some(inner) = existing {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner: inner.inner().clone(),
                cost,
                max_bytes: max_bytes as u64,
            }));
        }
    }
}

#[derive(Debug)]
struct Bounded {
    inner: Arc<dyn ScalarUDFImpl>,
    cost: Cost,
    max_bytes: u64,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner.name() == other.inner.name()
            && self.cost == other.cost
            && self.max_bytes == other.max_bytes
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.cost.hash(state);
        self.max_bytes.hash(state);
    }
}

/// Bytes of the strings an argument holds (all rows), or of a scalar.
fn string_bytes(v: &ColumnarValue) -> u64 {
    match v {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => s.len() as u64,
        ColumnarValue::Scalar(_) => 0,
        ColumnarValue::Array(a) => a.get_buffer_memory_size() as u64,
    }
}

/// The longest string an argument holds.
fn longest(v: &ColumnarValue) -> u64 {
    match v {
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().iter().flatten().map(str::len).max(),
            DataType::LargeUtf8 => a.as_string::<i64>().iter().flatten().map(str::len).max(),
            DataType::Utf8View => a.as_string_view().iter().flatten().map(str::len).max(),
            _ => None,
        }
        .unwrap_or(0) as u64,
        scalar => string_bytes(scalar),
    }
}

/// The largest count an argument asks for, and in how many rows.
fn count(v: &ColumnarValue) -> (u64, u64) {
    match v {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(n))) => ((*n).max(0) as u64, 1),
        ColumnarValue::Array(a) if a.data_type() == &DataType::Int64 => {
            let max = a.as_primitive::<Int64Type>().iter().flatten().max();
            (max.unwrap_or(0).max(0) as u64, a.len() as u64)
        }
        _ => (0, 1),
    }
}

impl Bounded {
    fn check(&self, args: &[ColumnarValue]) -> Result<()> {
        let name = self.inner.name();
        let (what, asked, limit) = match (self.cost, args) {
            (Cost::Repeat, [s, n, ..]) => {
                let (n, rows) = count(n);
                let per_row = longest(s).saturating_mul(n);
                ("bytes", per_row.saturating_mul(rows), self.max_bytes)
            }
            (Cost::Pad, [_, n, ..]) => {
                let (n, rows) = count(n);
                (
                    "bytes",
                    n.saturating_mul(4).saturating_mul(rows),
                    self.max_bytes,
                )
            }
            (Cost::Quadratic, [a, b, ..]) => {
                ("steps", longest(a).saturating_mul(longest(b)), MAX_STEPS)
            }
            _ => return Ok(()),
        };
        if asked > limit {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{name} would take {asked} {what}, over the {limit} one call may take"
            )));
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args.args)?;
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn huge_asks_are_refused_and_small_ones_answered() {
        let ctx = SessionContext::new();
        register(&ctx, 16 << 20);
        for sql in [
            "SELECT length(repeat('a', 1000000000))",
            "SELECT lpad('a', 1000000000)",
            "SELECT rpad('a', 1000000000, 'b')",
            "SELECT levenshtein(repeat('a', 230000), repeat('b', 230000))",
        ] {
            let err = run(&ctx, sql).await.unwrap_err();
            assert!(
                matches!(err.find_root(), DataFusionError::ResourcesExhausted(_)),
                "{sql}: {err}"
            );
        }
        assert_eq!(run(&ctx, "SELECT repeat('ab', 3)").await.unwrap(), 1);
        assert_eq!(
            run(&ctx, "SELECT levenshtein('kitten', 'sitting')")
                .await
                .unwrap(),
            1
        );
        let rows = run(
            &ctx,
            "SELECT repeat(v, 2) FROM (VALUES ('x'), ('yy')) AS t(v)",
        )
        .await
        .unwrap();
        assert_eq!(rows, 2);
    }
}
