//! One cell of the aggregate: the LLM calls of one key in one minute, as
//! counters and HdrHistograms. Cells merge exactly (counts add, histograms
//! add bucket by bucket), which is what makes any window, any grouping and any
//! number of collectors answerable from them.

use hdrhistogram::Histogram;

use super::hdr::{self, HdrError};
use crate::genai::{LlmFacts, SpanStatus};
use crate::pricing::CostStatus;
use crate::record::SpanRecord;

/// Cost is summed in nano-dollars: integer sums are exact and independent of
/// the order spans arrive in, so rollups of several collectors add up to the
/// same figure as one collector's.
pub const NANOS_PER_USD: f64 = 1e9;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub errors: u64,
    /// Calls of a model the price book does not know.
    pub unpriced: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_nano_usd: i64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.unpriced += o.unpriced;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_read_tokens += o.cache_read_tokens;
        self.cache_write_tokens += o.cache_write_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.cost_nano_usd = self.cost_nano_usd.saturating_add(o.cost_nano_usd);
    }

    pub fn cost_usd(&self) -> f64 {
        self.cost_nano_usd as f64 / NANOS_PER_USD
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// Nano-dollars of one call's cost.
pub fn nano_usd(usd: f64) -> i64 {
    if usd.is_finite() {
        (usd * NANOS_PER_USD).round() as i64
    } else {
        0
    }
}

#[derive(Clone, Debug)]
pub struct Cell {
    pub counters: Counters,
    /// Call duration, ms.
    pub latency: Histogram<u64>,
    /// Time to first chunk of streaming calls, ms; `None` until one is seen.
    pub ttft: Option<Histogram<u64>>,
}

impl Cell {
    pub fn new(digits: u8) -> Result<Self, HdrError> {
        Ok(Cell {
            counters: Counters::default(),
            latency: hdr::new_histogram(digits)?,
            ttft: None,
        })
    }

    pub fn record(&mut self, r: &SpanRecord, llm: &LlmFacts) {
        let c = &mut self.counters;
        c.requests += 1;
        if r.facts.status == SpanStatus::Error {
            c.errors += 1;
        }
        if r.cost_status == CostStatus::Unpriced {
            c.unpriced += 1;
        }
        let t = &llm.tokens;
        c.input_tokens += t.input.unwrap_or(0);
        c.output_tokens += t.output.unwrap_or(0);
        c.cache_read_tokens += t.cache_read.unwrap_or(0);
        c.cache_write_tokens += t.cache_write.unwrap_or(0);
        c.reasoning_tokens += t.reasoning.unwrap_or(0);
        if let Some(usd) = r.cost_usd {
            c.cost_nano_usd = c.cost_nano_usd.saturating_add(nano_usd(usd));
        }
        hdr::record_ms(&mut self.latency, r.duration_ms());
        if let Some(ttft) = llm.ttft_ms {
            let digits = self.latency.sigfig();
            if let Some(h) = self.ttft.as_mut() {
                hdr::record_ms(h, ttft);
            } else if let Ok(mut h) = hdr::new_histogram(digits) {
                hdr::record_ms(&mut h, ttft);
                self.ttft = Some(h);
            }
        }
    }

    /// Adds a rollup row's counters and V2-encoded histograms.
    pub fn merge_encoded(
        &mut self,
        counters: &Counters,
        latency: &[u8],
        ttft: Option<&[u8]>,
    ) -> Result<(), HdrError> {
        self.counters.add(counters);
        hdr::merge_encoded(&mut self.latency, latency)?;
        if let Some(bytes) = ttft {
            match self.ttft.as_mut() {
                Some(into) => {
                    hdr::merge_encoded(into, bytes)?;
                }
                None => self.ttft = Some(hdr::decode(bytes)?),
            }
        }
        Ok(())
    }

    /// Adds the counters and histograms of another cell.
    pub fn merge(
        &mut self,
        counters: &Counters,
        latency: &Histogram<u64>,
        ttft: Option<&Histogram<u64>>,
    ) -> Result<(), HdrError> {
        self.counters.add(counters);
        hdr::merge(&mut self.latency, latency)?;
        if let Some(from) = ttft {
            match self.ttft.as_mut() {
                Some(into) => hdr::merge(into, from)?,
                None => self.ttft = Some(from.clone()),
            }
        }
        Ok(())
    }
}
