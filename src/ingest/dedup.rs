//! One LLM call reported twice (two instrumentations on the same call, a
//! framework span over a provider span) counts once: spans that carry a
//! response id already seen lose their LLM facts and point at the span that
//! keeps them (`llmtrace.duplicate_of`). Within a request the deepest span
//! wins (closest to the network call); across requests, the first one seen,
//! which for SDK batch exporters is the child, since children end first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::pricing::Cost;
use crate::record::{hex, SpanRecord};

/// Response ids remembered across requests.
const REMEMBERED: usize = 100_000;

#[derive(Default)]
struct Seen {
    span_of: HashMap<String, [u8; 8]>,
    order: VecDeque<String>,
}

#[derive(Default)]
pub struct ResponseIds {
    seen: Mutex<Seen>,
}

fn demote(r: &mut SpanRecord, kept: [u8; 8]) {
    r.facts.llm = None;
    let cost = Cost::not_llm();
    r.cost_usd = cost.usd;
    r.cost_status = cost.status;
    r.price_id = None;
    r.price_version = None;
    r.attributes
        .push(("llmtrace.duplicate_of".to_owned(), hex(&kept)));
}

impl ResponseIds {
    pub fn dedup(&self, records: &mut [SpanRecord]) {
        let mut in_batch: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            if let Some(id) = r.facts.llm.as_ref().and_then(|l| l.response_id.as_ref()) {
                in_batch.entry(id.clone()).or_default().push(i);
            }
        }
        if in_batch.is_empty() {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (id, indices) in in_batch {
            // The keeper: a span no other span of the group has as parent.
            let is_parent = |i: usize| {
                indices
                    .iter()
                    .any(|&j| records[j].parent_span_id == Some(records[i].span_id))
            };
            let mut keeper = indices
                .iter()
                .copied()
                .find(|&i| !is_parent(i))
                .unwrap_or(indices[0]);
            let mut kept_span = records[keeper].span_id;
            if let Some(earlier) = seen.span_of.get(&id) {
                if *earlier != kept_span {
                    kept_span = *earlier;
                    keeper = usize::MAX;
                }
            } else {
                seen.span_of.insert(id.clone(), kept_span);
                seen.order.push_back(id);
                if seen.order.len() > REMEMBERED {
                    if let Some(old) = seen.order.pop_front() {
                        seen.span_of.remove(&old);
                    }
                }
            }
            for i in indices {
                if i != keeper && records[i].span_id != kept_span {
                    demote(&mut records[i], kept_span);
                }
            }
        }
    }
}
