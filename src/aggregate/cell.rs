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
    fn record(&mut self, r: &SpanRecord, llm: &LlmFacts) {
        // Saturating everywhere: counts come from the client, and a sum
        // near the type's end must stay at it, never wrap (or panic).
        self.requests = self.requests.saturating_add(1);
        if r.facts.status == SpanStatus::Error {
            self.errors = self.errors.saturating_add(1);
        }
        if r.cost_status == CostStatus::Unpriced {
            self.unpriced = self.unpriced.saturating_add(1);
        }
        let t = &llm.tokens;
        let add = |sum: &mut u64, n: Option<u64>| *sum = sum.saturating_add(n.unwrap_or(0));
        add(&mut self.input_tokens, t.input);
        add(&mut self.output_tokens, t.output);
        add(&mut self.cache_read_tokens, t.cache_read);
        add(&mut self.cache_write_tokens, t.cache_write);
        add(&mut self.reasoning_tokens, t.reasoning);
        if let Some(usd) = r.cost_usd {
            self.cost_nano_usd = self.cost_nano_usd.saturating_add(nano_usd(usd));
        }
    }

    pub fn add(&mut self, o: &Counters) {
        for (sum, n) in [
            (&mut self.requests, o.requests),
            (&mut self.errors, o.errors),
            (&mut self.unpriced, o.unpriced),
            (&mut self.input_tokens, o.input_tokens),
            (&mut self.output_tokens, o.output_tokens),
            (&mut self.cache_read_tokens, o.cache_read_tokens),
            (&mut self.cache_write_tokens, o.cache_write_tokens),
            (&mut self.reasoning_tokens, o.reasoning_tokens),
        ] {
            *sum = sum.saturating_add(n);
        }
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

/// Values a live cell keeps as a plain list before switching to a
/// histogram: most (minute, key) cells see a handful of calls, and a list of
/// a few hundred values is a small fraction of a histogram's counts array
/// (16 KB and up at 3 digits).
const LIST_VALUES: usize = 256;

/// The values of one live histogram: a short list while few, then an
/// HdrHistogram. Either way the histogram built from it is the same, so
/// nothing about precision depends on the switch.
#[derive(Clone, Debug)]
pub enum Recorder {
    Few(Vec<u32>),
    Many(Histogram<u64>),
}

impl Recorder {
    fn new() -> Self {
        Recorder::Few(Vec::new())
    }

    fn record(&mut self, ms: f64, digits: u8) {
        match self {
            Recorder::Few(values) if values.len() < LIST_VALUES => {
                values.push(hdr::whole_ms(ms) as u32);
            }
            Recorder::Few(values) => {
                let mut h = hdr::new_histogram(digits).expect("digits checked by the aggregator");
                for v in values.iter() {
                    hdr::record_ms(&mut h, f64::from(*v));
                }
                hdr::record_ms(&mut h, ms);
                *self = Recorder::Many(h);
            }
            Recorder::Many(h) => hdr::record_ms(h, ms),
        }
    }

    /// Adds every value into `into`.
    pub fn add_to(&self, into: &mut Histogram<u64>) -> Result<(), HdrError> {
        match self {
            Recorder::Few(values) => {
                for v in values {
                    hdr::record_ms(into, f64::from(*v));
                }
                Ok(())
            }
            Recorder::Many(h) => hdr::merge(into, h),
        }
    }

    /// The values as a histogram of `digits` significant digits.
    pub fn histogram(&self, digits: u8) -> Result<Histogram<u64>, HdrError> {
        let mut h = hdr::new_histogram(digits)?;
        self.add_to(&mut h)?;
        Ok(h)
    }
}

/// A cell being filled: counters and compact recorders.
#[derive(Clone, Debug)]
pub struct LiveCell {
    pub counters: Counters,
    pub latency: Recorder,
    pub ttft: Option<Recorder>,
    digits: u8,
}

impl LiveCell {
    pub fn new(digits: u8) -> Self {
        LiveCell {
            counters: Counters::default(),
            latency: Recorder::new(),
            ttft: None,
            digits,
        }
    }

    pub fn digits(&self) -> u8 {
        self.digits
    }

    /// A cell holding what a rollup row holds, to be filled further.
    pub fn from_row(row: &super::Rollup, digits: u8) -> Result<Self, HdrError> {
        Ok(LiveCell {
            counters: row.counters.clone(),
            latency: Recorder::Many(hdr::decode(&row.latency)?),
            ttft: row
                .ttft
                .as_deref()
                .map(|t| hdr::decode(t).map(Recorder::Many))
                .transpose()?,
            digits,
        })
    }

    /// Adds `other`'s counters and values.
    pub fn merge(&mut self, other: &LiveCell) -> Result<(), HdrError> {
        self.counters.add(&other.counters);
        let mut latency = self.latency.histogram(self.digits)?;
        other.latency.add_to(&mut latency)?;
        self.latency = Recorder::Many(latency);
        if let Some(t) = &other.ttft {
            let mut ttft = match &self.ttft {
                Some(mine) => mine.histogram(self.digits)?,
                None => hdr::new_histogram(self.digits)?,
            };
            t.add_to(&mut ttft)?;
            self.ttft = Some(Recorder::Many(ttft));
        }
        Ok(())
    }

    pub fn record(&mut self, r: &SpanRecord, llm: &LlmFacts) {
        self.counters.record(r, llm);
        self.latency.record(r.duration_ms(), self.digits);
        if let Some(ttft) = llm.ttft_ms {
            self.ttft
                .get_or_insert_with(Recorder::new)
                .record(ttft, self.digits);
        }
    }
}

/// Merged counters and histograms: what stats and rollup rows are made of.
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

    /// Adds a live cell's counters and values.
    pub fn merge_live(&mut self, live: &LiveCell) -> Result<(), HdrError> {
        self.counters.add(&live.counters);
        live.latency.add_to(&mut self.latency)?;
        if let Some(t) = &live.ttft {
            match self.ttft.as_mut() {
                Some(into) => t.add_to(into)?,
                None => self.ttft = Some(t.histogram(self.latency.sigfig())?),
            }
        }
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(h: &Histogram<u64>) -> Vec<(u64, u64)> {
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    #[test]
    fn token_sums_near_the_end_of_the_type_stay_there() {
        let mut r = SpanRecord::sample("chat", 1);
        let llm = LlmFacts {
            tokens: crate::genai::Tokens {
                input: Some(u64::MAX - 1),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut c = Counters::default();
        c.record(&r, &llm);
        c.record(&r, &llm);
        assert_eq!(c.input_tokens, u64::MAX);
        let copy = c.clone();
        c.add(&copy);
        assert_eq!((c.input_tokens, c.requests), (u64::MAX, 4));
        r.cost_usd = Some(f64::MAX);
        c.record(&r, &llm);
        assert_eq!(c.cost_nano_usd, i64::MAX);
    }

    #[test]
    fn a_recorder_holds_the_same_values_as_a_list_or_a_histogram() {
        for n in [0usize, 1, LIST_VALUES, LIST_VALUES + 1, 5 * LIST_VALUES] {
            let mut recorder = Recorder::new();
            let mut direct = hdr::new_histogram(3).unwrap();
            for i in 0..n {
                let ms = (i * 37 % 5000) as f64 + 0.4;
                recorder.record(ms, 3);
                hdr::record_ms(&mut direct, ms);
            }
            assert_eq!(
                matches!(recorder, Recorder::Many(_)),
                n > LIST_VALUES,
                "switches past {LIST_VALUES} values"
            );
            assert_eq!(
                values(&recorder.histogram(3).unwrap()),
                values(&direct),
                "{n} values"
            );
        }
    }
}
