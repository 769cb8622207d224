//! One LLM call reported twice counts once. Two instrumentations on the same
//! call (the Anthropic SDK's own span next to OpenLLMetry's, often in
//! different traces, both roots), or a framework span around a provider
//! span: all but one of the spans lose their LLM facts and point at the one
//! that keeps them (`llmtrace.duplicate_of`). The rules, per tenant:
//!
//! 1. Same response id, overlapping times: one call, whatever trace or export
//!    request each span arrives in. Providers give every response a unique
//!    id, so a repeated id with times apart is another call, counted.
//! 2. A wrapping span: an LLM span whose descendant in the same request is
//!    an LLM call of the same model overlapping in time (LangChain over the
//!    provider SDK, a proxy over its request).
//! 3. Failed siblings: LLM spans of the same parent and model (or, both
//!    roots, of the same service and model), overlapping in time, both
//!    failed, neither with a response id, from different instrumentation
//!    scopes (the SDK's span next to an instrumentation's on a 429).
//!    Same-scope ones are parallel calls and all count.
//!
//! The one kept: within a request, the deepest span (closest to the network
//! call), then the one with more token counts, then the earliest start, then
//! the lowest (trace id, span id). Across requests, the first counted (the
//! first acknowledged, unless it waited for its trace's ancestors): what is
//! already counted is never taken back.
//!
//! Memory is bounded: the last [`REMEMBERED`] calls, for [`WINDOW`] at most.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::genai::SpanStatus;
use crate::pricing::Cost;
use crate::record::{hex, SpanRecord};

/// Calls remembered across requests (about 64 bytes each).
pub const REMEMBERED: usize = 500_000;

/// How long a call is remembered, in span time.
pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// How far up the parent chain a wrapping LLM span is looked for.
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, PartialEq, Eq)]
struct SpanRef {
    trace: [u8; 16],
    span: [u8; 8],
}

#[derive(Clone, Copy)]
struct Seen {
    kept: SpanRef,
    start: i64,
    end: i64,
    /// Instrumentation scope (hashed), for the failed-siblings rule.
    scope: u64,
}

#[derive(Default)]
struct Memory {
    /// Hash of (tenant, identity) -> the call that kept the facts.
    calls: HashMap<u64, Seen>,
    order: VecDeque<(u64, i64)>,
}

pub struct ResponseIds {
    memory: Mutex<Memory>,
    hasher: ahash::RandomState,
}

impl Default for ResponseIds {
    fn default() -> Self {
        ResponseIds {
            memory: Mutex::default(),
            hasher: ahash::RandomState::new(),
        }
    }
}

fn demote(r: &mut SpanRecord, kept: SpanRef) {
    r.facts.llm = None;
    let cost = Cost::not_llm();
    r.cost_usd = cost.usd;
    r.cost_status = cost.status;
    r.price_id = None;
    r.price_version = None;
    r.attributes
        .push(("llmtrace.duplicate_of".to_owned(), hex(&kept.span)));
}

fn of(r: &SpanRecord) -> SpanRef {
    SpanRef {
        trace: r.trace_id,
        span: r.span_id,
    }
}

fn overlaps(a: (i64, i64), b: (i64, i64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Rule 2, within one request: the descendant keeps the facts.
fn demote_wrapping_calls(records: &mut [SpanRecord]) {
    let by_span: HashMap<[u8; 8], usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.span_id, i))
        .collect();
    let mut wrappers: Vec<(usize, SpanRef)> = Vec::new();
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
            let same_call = a.trace_id == r.trace_id
                && a.facts.llm.as_ref().and_then(|l| l.model()) == Some(model)
                && overlaps(
                    (a.start_unix_nano, a.end_unix_nano),
                    (r.start_unix_nano, r.end_unix_nano),
                );
            if same_call {
                wrappers.push((p, of(r)));
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

/// How much a span says about its tokens: the better witness of a call.
fn token_facts(r: &SpanRecord) -> usize {
    r.facts.llm.as_ref().map_or(0, |l| {
        let t = &l.tokens;
        [t.input, t.output, t.cache_read, t.cache_write, t.reasoning]
            .iter()
            .filter(|v| v.is_some())
            .count()
    })
}

/// The keeper among spans of one call in one request (see the module doc).
fn keeper(records: &[SpanRecord], group: &[usize]) -> usize {
    let is_parent = |i: usize| {
        group.iter().any(|&j| {
            records[j].trace_id == records[i].trace_id
                && records[j].parent_span_id == Some(records[i].span_id)
        })
    };
    group
        .iter()
        .copied()
        .filter(|&i| !is_parent(i))
        .min_by(|&a, &b| {
            let (ra, rb) = (&records[a], &records[b]);
            token_facts(rb)
                .cmp(&token_facts(ra))
                .then(ra.start_unix_nano.cmp(&rb.start_unix_nano))
                .then((ra.trace_id, ra.span_id).cmp(&(rb.trace_id, rb.span_id)))
        })
        .unwrap_or(group[0])
}

/// What makes two spans candidates for one call: the response id, or for a
/// failed call without one, its trace, parent and model.
#[derive(Hash, PartialEq, Eq)]
enum Identity<'a> {
    Response(&'a str),
    /// A failed call under a parent span: its siblings.
    FailedUnder([u8; 16], [u8; 8], &'a str),
    /// A failed call that is a root: without an app span around the call,
    /// each instrumentation starts a trace of its own, so the other span
    /// is a root of another trace, of the same service.
    FailedRoot(Option<&'a str>, &'a str),
}

fn identity(r: &SpanRecord) -> Option<Identity<'_>> {
    let llm = r.facts.llm.as_ref()?;
    let model = llm.model().unwrap_or_default();
    match (&llm.response_id, r.parent_span_id) {
        (Some(id), _) => Some(Identity::Response(id)),
        (None, _) if r.facts.status != SpanStatus::Error => None,
        (None, Some(parent)) => Some(Identity::FailedUnder(r.trace_id, parent, model)),
        (None, None) => Some(Identity::FailedRoot(r.service_name.as_deref(), model)),
    }
}

impl ResponseIds {
    /// Marks all but one span of each call among `records` of `tenant`,
    /// against each other and against the calls of earlier requests.
    pub fn dedup(&self, tenant: &str, records: &mut [SpanRecord]) {
        demote_wrapping_calls(records);
        let mut groups: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            if let Some(id) = identity(r) {
                groups
                    .entry(self.hasher.hash_one((tenant, &id)))
                    .or_default()
                    .push(i);
            }
        }
        if groups.is_empty() {
            return;
        }
        let scope_of = |r: &SpanRecord| self.hasher.hash_one(&r.scope_name);
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let mut demotions: Vec<(usize, SpanRef)> = Vec::new();
        for (key, mut group) in groups {
            let failed = records[group[0]]
                .facts
                .llm
                .as_ref()
                .is_some_and(|l| l.response_id.is_none());
            // Within the request: spans that overlap the keeper are the
            // same call; the rest stay (a repeated id apart in time is
            // another call; failed siblings of one scope are parallel calls).
            while !group.is_empty() {
                let k = keeper(records, &group);
                let kr = &records[k];
                let (span_k, scope_k) = ((kr.start_unix_nano, kr.end_unix_nano), scope_of(kr));
                let (same, rest): (Vec<usize>, Vec<usize>) = group.iter().partition(|&&i| {
                    let r = &records[i];
                    i == k
                        || (overlaps(span_k, (r.start_unix_nano, r.end_unix_nano))
                            && (!failed || scope_of(r) != scope_k))
                });
                group = rest;
                // The same span again is an exporter's retry: counted once too.
                let earlier = memory.calls.get(&key).copied().filter(|seen| {
                    seen.kept == of(&records[k])
                        || (overlaps((seen.start, seen.end), span_k)
                            && (!failed || seen.scope != scope_k))
                });
                match earlier {
                    Some(seen) => {
                        demotions.extend(same.iter().map(|&i| (i, seen.kept)));
                    }
                    None => {
                        let kept = of(&records[k]);
                        demotions.extend(same.iter().filter(|&&i| i != k).map(|&i| (i, kept)));
                        memory.remember(
                            key,
                            Seen {
                                kept,
                                start: span_k.0,
                                end: span_k.1,
                                scope: scope_k,
                            },
                        );
                    }
                }
            }
        }
        drop(memory);
        for (i, kept) in demotions {
            demote(&mut records[i], kept);
        }
    }
}

impl Memory {
    fn remember(&mut self, key: u64, seen: Seen) {
        // A later call of a repeated id replaces the earlier one: only
        // overlapping spans are the same call, and later spans overlap it.
        self.calls.insert(key, seen);
        self.order.push_back((key, seen.end));
        let newest = seen.end;
        while let Some(&(old, end)) = self.order.front() {
            let too_old = newest.saturating_sub(end) > WINDOW.as_nanos() as i64;
            if self.order.len() <= REMEMBERED && !too_old {
                break;
            }
            self.order.pop_front();
            if self.calls.get(&old).is_some_and(|s| s.end == end) {
                self.calls.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genai::{LlmFacts, Tokens};

    const SEC: i64 = 1_000_000_000;

    /// An LLM call span of `trace`/`span` with a response id, 0..2 s.
    fn call(trace: u8, span: u8, response_id: Option<&str>) -> SpanRecord {
        let mut r = SpanRecord::sample("anthropic.messages.create", span);
        r.trace_id = [trace; 16];
        r.span_id = [span; 8];
        r.start_unix_nano = 100 * SEC;
        r.end_unix_nano = 102 * SEC;
        r.scope_name = Some("com.anthropic.sdk.python".into());
        r.facts.llm = Some(LlmFacts {
            request_model: Some("claude-sonnet-4-5".into()),
            response_id: response_id.map(str::to_owned),
            tokens: Tokens {
                input: Some(100),
                output: Some(20),
                ..Tokens::default()
            },
            ..LlmFacts::default()
        });
        r
    }

    fn llm_rows(records: &[SpanRecord]) -> Vec<[u8; 8]> {
        records
            .iter()
            .filter(|r| r.facts.llm.is_some())
            .map(|r| r.span_id)
            .collect()
    }

    fn duplicate_of(r: &SpanRecord) -> Option<&str> {
        r.attributes
            .iter()
            .find(|(k, _)| k == "llmtrace.duplicate_of")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn one_call_in_two_traces_in_one_request_counts_once() {
        let ids = ResponseIds::default();
        let mut sdk = call(1, 1, Some("msg_01A"));
        sdk.facts.llm.as_mut().unwrap().tokens.cache_read = None;
        let mut olm = call(2, 2, Some("msg_01A"));
        olm.scope_name = Some("opentelemetry.instrumentation.anthropic".into());
        olm.facts.llm.as_mut().unwrap().tokens.cache_read = Some(0);
        olm.start_unix_nano += 1_000_000;
        let mut records = vec![sdk, olm];
        ids.dedup("t", &mut records);
        assert_eq!(llm_rows(&records), vec![[2; 8]], "more token facts wins");
        assert_eq!(duplicate_of(&records[0]), Some("0202020202020202"));
    }

    #[test]
    fn the_same_call_in_a_later_request_and_another_trace_counts_once() {
        for child_first in [true, false] {
            let ids = ResponseIds::default();
            let mut first = vec![call(1, 1, Some("msg_01B"))];
            let mut second = vec![call(2, 2, Some("msg_01B"))];
            if !child_first {
                second[0].parent_span_id = Some([9; 8]);
            }
            ids.dedup("t", &mut first);
            ids.dedup("t", &mut second);
            assert_eq!(llm_rows(&first), vec![[1; 8]]);
            assert!(llm_rows(&second).is_empty(), "counted by the first request");
            assert_eq!(duplicate_of(&second[0]), Some("0101010101010101"));
        }
    }

    #[test]
    fn a_retried_request_counts_its_calls_once() {
        let ids = ResponseIds::default();
        let mut first = vec![call(1, 1, Some("msg_01R"))];
        let mut retry = first.clone();
        ids.dedup("t", &mut first);
        ids.dedup("t", &mut retry);
        assert_eq!(llm_rows(&first), vec![[1; 8]]);
        assert!(llm_rows(&retry).is_empty());
    }

    #[test]
    fn a_repeated_id_apart_in_time_is_another_call() {
        let ids = ResponseIds::default();
        let mut first = vec![call(1, 1, Some("msg_01C"))];
        let mut later = vec![call(2, 2, Some("msg_01C"))];
        later[0].start_unix_nano += 60 * SEC;
        later[0].end_unix_nano += 60 * SEC;
        ids.dedup("t", &mut first);
        ids.dedup("t", &mut later);
        assert_eq!(llm_rows(&later), vec![[2; 8]]);
    }

    #[test]
    fn tenants_never_dedup_each_other() {
        let ids = ResponseIds::default();
        let mut a = vec![call(1, 1, Some("msg_01D"))];
        let mut b = vec![call(2, 2, Some("msg_01D"))];
        ids.dedup("a", &mut a);
        ids.dedup("b", &mut b);
        assert_eq!(llm_rows(&b), vec![[2; 8]]);
    }

    #[test]
    fn failed_siblings_of_two_scopes_count_once_and_parallel_failures_all_count() {
        let failed = |span: u8, scope: &str| {
            let mut r = call(1, span, None);
            r.parent_span_id = Some([9; 8]);
            r.facts.status = SpanStatus::Error;
            r.scope_name = Some(scope.into());
            r.facts.llm.as_mut().unwrap().tokens = Tokens::default();
            r
        };
        let ids = ResponseIds::default();
        let mut pair = vec![
            failed(1, "com.anthropic.sdk.python"),
            failed(2, "opentelemetry.instrumentation.anthropic"),
        ];
        ids.dedup("t", &mut pair);
        assert_eq!(llm_rows(&pair).len(), 1);

        // Across requests, too.
        let ids = ResponseIds::default();
        let mut first = vec![failed(1, "com.anthropic.sdk.python")];
        let mut second = vec![failed(2, "opentelemetry.instrumentation.anthropic")];
        ids.dedup("t", &mut first);
        ids.dedup("t", &mut second);
        assert_eq!(llm_rows(&first).len() + llm_rows(&second).len(), 1);

        // Both roots of their own traces: no app span around the call.
        let ids = ResponseIds::default();
        let mut roots = vec![
            failed(1, "com.anthropic.sdk.python"),
            failed(2, "opentelemetry.instrumentation.anthropic"),
        ];
        for (r, trace) in roots.iter_mut().zip([3u8, 4]) {
            r.parent_span_id = None;
            r.trace_id = [trace; 16];
        }
        ids.dedup("t", &mut roots);
        assert_eq!(llm_rows(&roots).len(), 1);

        let ids = ResponseIds::default();
        let mut parallel = vec![failed(1, "s"), failed(2, "s"), failed(3, "s")];
        ids.dedup("t", &mut parallel);
        assert_eq!(llm_rows(&parallel).len(), 3);
    }

    #[test]
    fn a_wrapping_span_of_the_same_model_gives_way_to_its_child() {
        let ids = ResponseIds::default();
        let wrapper = call(1, 1, None);
        let mut child = call(1, 2, None);
        child.parent_span_id = Some([1; 8]);
        let mut records = vec![wrapper, child];
        ids.dedup("t", &mut records);
        assert_eq!(llm_rows(&records), vec![[2; 8]]);
    }

    #[test]
    fn memory_forgets_beyond_the_window() {
        let ids = ResponseIds::default();
        let mut first = vec![call(1, 1, Some("msg_old"))];
        ids.dedup("t", &mut first);
        let mut much_later = vec![call(2, 2, Some("msg_new"))];
        much_later[0].start_unix_nano += WINDOW.as_nanos() as i64 + 10 * SEC;
        much_later[0].end_unix_nano += WINDOW.as_nanos() as i64 + 10 * SEC;
        ids.dedup("t", &mut much_later);
        let memory = ids.memory.lock().unwrap();
        assert_eq!(memory.calls.len(), 1);
    }
}
