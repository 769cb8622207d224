//! One LLM call reported twice (two instrumentations on the same call, a
//! framework span over a provider span) counts once: spans of one trace that
//! carry a response id already seen in that trace lose their LLM facts and
//! point at the span that keeps them (`llmtrace.duplicate_of`). Scoped to the
//! trace, because ids do repeat across traces (mock servers, replays).
//! Wrapping spans without a shared response id are caught by model and time
//! overlap within a request. Within a request the deepest span
//! wins (closest to the network call); across requests, the first one seen,
//! which for SDK batch exporters is the child, since children end first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::pricing::Cost;
use crate::record::{hex, SpanRecord};

/// Response ids remembered across requests.
const REMEMBERED: usize = 100_000;

/// (trace id, response id)
type Key = ([u8; 16], String);

#[derive(Default)]
struct Seen {
    span_of: HashMap<Key, [u8; 8]>,
    order: VecDeque<Key>,
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

/// How far up the parent chain a wrapping LLM span is looked for.
const MAX_DEPTH: usize = 32;

/// Rule 5.2.3: an LLM span whose descendant in the same request is an LLM
/// call of the same model, overlapping in time, is a framework span around
/// that call (LangChain over the provider SDK, a proxy over its request):
/// the descendant, closest to the network call, keeps the facts.
fn demote_wrapping_calls(records: &mut [SpanRecord]) {
    let by_span: HashMap<[u8; 8], usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.span_id, i))
        .collect();
    let mut wrappers: Vec<(usize, [u8; 8])> = Vec::new();
    for r in records.iter() {
        let Some(model) = r.facts.llm.as_ref().and_then(|l| l.model()) else {
            continue;
        };
        let mut parent = r.parent_span_id;
        for _ in 0..MAX_DEPTH {
            let Some(p) = parent.and_then(|p| by_span.get(&p).copied()) else {
                break;
            };
            let a = &records[p];
            let same_call = a.facts.llm.as_ref().and_then(|l| l.model()) == Some(model)
                && a.start_unix_nano <= r.end_unix_nano
                && r.start_unix_nano <= a.end_unix_nano;
            if same_call {
                wrappers.push((p, r.span_id));
            }
            parent = a.parent_span_id;
        }
    }
    for (i, kept) in wrappers {
        if records[i].facts.llm.is_some() {
            demote(&mut records[i], kept);
        }
    }
}

impl ResponseIds {
    pub fn dedup(&self, records: &mut [SpanRecord]) {
        demote_wrapping_calls(records);
        let mut in_batch: HashMap<Key, Vec<usize>> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            if let Some(id) = r.facts.llm.as_ref().and_then(|l| l.response_id.as_ref()) {
                in_batch
                    .entry((r.trace_id, id.clone()))
                    .or_default()
                    .push(i);
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
