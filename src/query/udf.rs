//! `llm_cost(model, input_tokens, output_tokens [, cache_read_tokens,
//! cache_write_tokens, reasoning_tokens [, provider]])`: prices token counts
//! with the loaded price book at today's prices, in SQL. Re-prices history
//! (`SELECT sum(llm_cost(model, input_tokens, …)) FROM llm_calls`) and answers
//! "what if we used model Y" (`llm_cost('claude-haiku-4-5', input_tokens, …)`).
//! Null when the model is unknown, like `cost_usd`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{plan_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::genai::{LlmFacts, SpanStatus, Tokens};
use crate::pricing::PriceBook;

#[derive(Debug)]
pub struct LlmCost {
    book: Arc<PriceBook>,
    signature: Signature,
}

impl LlmCost {
    pub fn new(book: Arc<PriceBook>) -> Self {
        LlmCost {
            book,
            signature: Signature::user_defined(Volatility::Stable),
        }
    }
}

impl PartialEq for LlmCost {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.book, &other.book)
    }
}

impl Eq for LlmCost {}

impl Hash for LlmCost {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "llm_cost".hash(state);
    }
}

const USAGE: &str = "llm_cost(model, input_tokens, output_tokens [, cache_read_tokens, cache_write_tokens, reasoning_tokens [, provider]])";

impl ScalarUDFImpl for LlmCost {
    fn name(&self) -> &str {
        "llm_cost"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !matches!(arg_types.len(), 3 | 6 | 7) {
            return plan_err!("{USAGE}: got {} arguments", arg_types.len());
        }
        Ok((0..arg_types.len())
            .map(|i| {
                if i == 0 || i == 6 {
                    DataType::Utf8
                } else {
                    DataType::Int64
                }
            })
            .collect())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let array = a.to_array(n)?;
                let want = if i == 0 || i == 6 {
                    DataType::Utf8
                } else {
                    DataType::Int64
                };
                Ok(cast(&array, &want)?)
            })
            .collect::<Result<_>>()?;
        let text = |i: usize, row: usize| -> Option<String> {
            let a = arrays.get(i)?.as_string::<i32>();
            a.is_valid(row).then(|| a.value(row).to_owned())
        };
        let count = |i: usize, row: usize| -> Option<u64> {
            let a = arrays.get(i)?.as_primitive::<Int64Type>();
            a.is_valid(row).then(|| a.value(row).max(0) as u64)
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i64;
        let mut out = Float64Builder::with_capacity(n);
        for row in 0..n {
            let Some(model) = text(0, row) else {
                out.append_null();
                continue;
            };
            let (input, output) = (count(1, row), count(2, row));
            let llm = LlmFacts {
                request_model: Some(model),
                provider: text(6, row),
                tokens: Tokens {
                    input,
                    output,
                    cache_read: count(3, row),
                    cache_write: count(4, row),
                    cache_write_1h: None,
                    reasoning: count(5, row),
                    total: None,
                },
                ..LlmFacts::default()
            };
            out.append_option(self.book.price(&llm, SpanStatus::Ok, now).usd);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
