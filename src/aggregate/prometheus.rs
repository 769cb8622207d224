//! The GenAI client metrics of the OpenTelemetry semantic conventions, as
//! Prometheus histograms with the conventions' bucket boundaries:
//! `gen_ai.client.operation.duration`, `gen_ai.client.token.usage` and
//! `gen_ai.client.operation.time_to_first_chunk`, labelled by provider,
//! model, operation and (for durations) error type.
//!
//! Cardinality is bounded: past `max_series` label sets, new ones are counted
//! under labels all set to `_overflow`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use super::key::OVERFLOW;
use crate::genai::LlmFacts;
use crate::record::SpanRecord;

/// Seconds; the conventions' advice for durations and time to first chunk.
pub const DURATION_BOUNDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Tokens; the conventions' advice for token usage.
pub const TOKEN_BOUNDS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

#[derive(Clone, Debug, Default)]
struct Buckets {
    /// Per bound, observations <= it (not cumulative; summed when rendered).
    counts: [u64; 15],
    sum: f64,
    count: u64,
}

impl Buckets {
    fn observe(&mut self, bounds: &[f64; 14], v: f64) {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn add(&mut self, o: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Labels {
    provider: Arc<str>,
    model: Arc<str>,
    operation: Arc<str>,
    error_type: Option<&'static str>,
}

#[derive(Default)]
struct Series {
    duration: Buckets,
    ttft: Buckets,
    input_tokens: Buckets,
    output_tokens: Buckets,
}

pub struct GenAiMetrics {
    max_series: usize,
    series: Mutex<BTreeMap<Labels, Series>>,
}

impl GenAiMetrics {
    pub fn new(max_series: usize) -> Self {
        GenAiMetrics {
            max_series,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn record<'a>(&self, calls: impl Iterator<Item = (&'a SpanRecord, &'a LlmFacts)>) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for (r, llm) in calls {
            let text = |s: Option<&str>| Arc::from(s.unwrap_or(""));
            let mut labels = Labels {
                provider: text(llm.provider.as_deref()),
                model: text(llm.request_model.as_deref().or(llm.model())),
                operation: text(llm.operation.as_deref()),
                error_type: r.facts.error_type,
            };
            if !series.contains_key(&labels) && series.len() >= self.max_series {
                let overflow: Arc<str> = Arc::from(OVERFLOW);
                labels = Labels {
                    provider: overflow.clone(),
                    model: overflow.clone(),
                    operation: overflow,
                    error_type: None,
                };
            }
            let s = series.entry(labels).or_default();
            s.duration
                .observe(&DURATION_BOUNDS, r.duration_ms().max(0.0) / 1e3);
            if let Some(ttft) = llm.ttft_ms {
                s.ttft.observe(&DURATION_BOUNDS, ttft.max(0.0) / 1e3);
            }
            if let Some(n) = llm.tokens.input {
                s.input_tokens.observe(&TOKEN_BOUNDS, n as f64);
            }
            if let Some(n) = llm.tokens.output {
                s.output_tokens.observe(&TOKEN_BOUNDS, n as f64);
            }
        }
    }

    /// Appends the metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let base = |l: &Labels| {
            format!(
                "gen_ai_provider_name=\"{}\",gen_ai_request_model=\"{}\",gen_ai_operation_name=\"{}\"",
                escape(&l.provider),
                escape(&l.model),
                escape(&l.operation)
            )
        };
        let name = "gen_ai_client_operation_duration_seconds";
        header(
            out,
            name,
            "Duration of GenAI client operations (LLM calls), seconds.",
        );
        for (l, s) in series.iter() {
            let mut labels = base(l);
            if let Some(e) = l.error_type {
                let _ = write!(labels, ",error_type=\"{}\"", escape(e));
            }
            histogram(out, name, &labels, &DURATION_BOUNDS, &s.duration);
        }
        let name = "gen_ai_client_operation_time_to_first_chunk_seconds";
        header(
            out,
            name,
            "Time to the first chunk of streaming GenAI calls, seconds.",
        );
        // Neither this nor token usage carries error type: merge across it.
        let mut merged: BTreeMap<String, (Buckets, Buckets, Buckets)> = BTreeMap::new();
        for (l, s) in series.iter() {
            let m = merged.entry(base(l)).or_default();
            m.0.add(&s.ttft);
            m.1.add(&s.input_tokens);
            m.2.add(&s.output_tokens);
        }
        for (labels, (ttft, _, _)) in merged.iter().filter(|(_, m)| m.0.count > 0) {
            histogram(out, name, labels, &DURATION_BOUNDS, ttft);
        }
        let name = "gen_ai_client_token_usage";
        header(out, name, "Tokens used by GenAI calls, by token type.");
        for (labels, (_, input, output)) in merged.iter() {
            for (kind, b) in [("input", input), ("output", output)] {
                if b.count > 0 {
                    let labels = format!("{labels},gen_ai_token_type=\"{kind}\"");
                    histogram(out, name, &labels, &TOKEN_BOUNDS, b);
                }
            }
        }
    }

    pub fn series_count(&self) -> usize {
        self.series.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
}

fn histogram(out: &mut String, name: &str, labels: &str, bounds: &[f64; 14], b: &Buckets) {
    let mut cumulative = 0;
    for (bound, n) in bounds.iter().zip(b.counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", b.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", b.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", b.count);
}

/// Prometheus label value escaping.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
