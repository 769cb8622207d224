//! Trace assembly: user, session and prompt set on an ancestor span (the
//! request, agent or chain span) apply to the LLM calls under it.
//!
//! SDKs export a span when it ends, so a trace reaches us over several export
//! requests, the LLM call (a leaf, which ends first) usually before the spans
//! above it. The assembler remembers the parent link and call context of
//! recent spans (bounded: [`MAX_SPANS`] spans and [`MAX_AGE`]), and:
//! - an LLM call whose ancestry reaches a root among the spans seen (or that
//!   says all four facts itself) is complete: it takes its ancestors' context
//!   at once and is buffered and aggregated as usual;
//! - a request with an incomplete call waits, visible to queries but not yet
//!   aggregated, until the missing ancestors arrive or the wait (`ingest.trace_wait`)
//!   runs out; then it takes whatever ancestors arrived.
//!
//! Exact: ancestors that arrive within the wait, or before the call. Best
//! effort: ancestors later than that, or pushed out of the bounded memory
//! by heavier traffic; their calls keep only their own attributes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::genai::CallContext;
use crate::record::SpanRecord;

/// Spans whose links are remembered; the oldest traces go first beyond it.
pub const MAX_SPANS: usize = 262_144;

/// How long a trace's links are remembered after its first span.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// How far up an ancestry is walked (deeper ones count as complete).
const MAX_DEPTH: usize = 64;

type TraceKey = (Arc<str>, [u8; 16]);

struct Node {
    parent: Option<[u8; 8]>,
    /// Only spans that say something carry a context: most say nothing.
    context: Option<Box<CallContext>>,
}

struct Trace {
    nodes: HashMap<[u8; 8], Node>,
    /// Waiting requests with calls in this trace.
    waiting: Vec<u64>,
}

/// An LLM call of a waiting request.
#[derive(Clone, Copy)]
struct Call {
    trace: [u8; 16],
    span: [u8; 8],
}

/// A request that waits for ancestors of its calls; `T` is what the
/// pipeline needs to finish it.
pub struct Waiting<T> {
    pub tenant: Arc<str>,
    pub payload: T,
    calls: Vec<Call>,
    deadline: Instant,
}

struct State<T> {
    traces: HashMap<TraceKey, Trace>,
    /// Traces in the order first seen, for eviction.
    order: VecDeque<(TraceKey, Instant)>,
    spans: usize,
    waiting: BTreeMap<u64, Waiting<T>>,
    next: u64,
}

pub struct Assembler<T> {
    state: Mutex<State<T>>,
    wait: Duration,
}

/// What became of a request.
pub enum Arrival {
    /// Its calls are complete: buffer them now (their context is handed down).
    Ready(Vec<SpanRecord>),
    /// It waits; `hold` was given its records.
    Waiting,
}

impl<T> Assembler<T> {
    /// `wait`: how long a request may wait for its calls' ancestors; zero
    /// turns waiting off (ancestors that came first still apply).
    pub fn new(wait: Duration) -> Self {
        Assembler {
            state: Mutex::new(State {
                traces: HashMap::new(),
                order: VecDeque::new(),
                spans: 0,
                waiting: BTreeMap::new(),
                next: 0,
            }),
            wait,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in a request's records. Complete calls get their ancestors'
    /// context and the records come back [`Arrival::Ready`]; otherwise
    /// `hold` keeps the records and its payload waits. Either way, waiting
    /// requests that this one completed are returned for release.
    pub fn arrive(
        &self,
        tenant: &Arc<str>,
        mut records: Vec<SpanRecord>,
        now: Instant,
        hold: impl FnOnce(Vec<SpanRecord>) -> T,
    ) -> (Arrival, Vec<Waiting<T>>) {
        let mut state = self.lock();
        state.evict(now);
        let mut touched = Vec::new();
        for r in &records {
            let context = (!r.facts.context.is_empty()).then_some(&r.facts.context);
            if state.observe(
                tenant,
                r.trace_id,
                r.span_id,
                r.parent_span_id,
                context,
                now,
            ) {
                touched.push(r.trace_id);
            }
        }
        let incomplete: Vec<Call> = records
            .iter()
            .filter(|r| r.facts.llm.is_some() && !r.facts.context.is_full())
            .filter(|r| !state.rooted(tenant, r.trace_id, r.span_id))
            .map(|r| Call {
                trace: r.trace_id,
                span: r.span_id,
            })
            .collect();
        let released = state.completed(tenant, &touched);
        if incomplete.is_empty() || self.wait.is_zero() {
            for r in records.iter_mut().filter(|r| r.facts.llm.is_some()) {
                for ancestor in state.ancestors(tenant, r.trace_id, r.span_id) {
                    r.facts.context.inherit(&ancestor);
                }
            }
            return (Arrival::Ready(records), released);
        }
        let id = state.next;
        state.next += 1;
        for call in &incomplete {
            if let Some(trace) = state.traces.get_mut(&(tenant.clone(), call.trace)) {
                if !trace.waiting.contains(&id) {
                    trace.waiting.push(id);
                }
            }
        }
        let payload = hold(records);
        state.waiting.insert(
            id,
            Waiting {
                tenant: tenant.clone(),
                payload,
                calls: incomplete,
                deadline: now + self.wait,
            },
        );
        (Arrival::Waiting, released)
    }

    /// Remembers the links and contexts of a request read back from the
    /// log, before any of it is replayed: replay hands context down with
    /// the whole log known, with no waiting.
    pub fn observe_request(
        &self,
        tenant: &Arc<str>,
        request: &ExportTraceServiceRequest,
        now: Instant,
    ) {
        let mut state = self.lock();
        for rs in &request.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map_or(&[][..], |r| r.attributes.as_slice());
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let (Ok(trace), Ok(id)) = (
                    <[u8; 16]>::try_from(span.trace_id.as_slice()),
                    <[u8; 8]>::try_from(span.span_id.as_slice()),
                ) else {
                    continue;
                };
                let parent = <[u8; 8]>::try_from(span.parent_span_id.as_slice()).ok();
                let context = crate::genai::read_context(span, resource);
                let context = (!context.is_empty()).then_some(&context);
                state.observe(tenant, trace, id, parent, context, now);
            }
        }
    }

    /// Hands ancestors' context down to the LLM calls among `records`.
    pub fn settle(&self, tenant: &Arc<str>, records: &mut [SpanRecord]) {
        let state = self.lock();
        for r in records.iter_mut().filter(|r| r.facts.llm.is_some()) {
            for ancestor in state.ancestors(tenant, r.trace_id, r.span_id) {
                r.facts.context.inherit(&ancestor);
            }
        }
    }

    /// The contexts of the calls' ancestors, nearest first, by call: for
    /// a waiting request about to be released (its records are held
    /// elsewhere, under another lock).
    pub fn ancestry(&self, waiting: &Waiting<T>) -> HashMap<([u8; 16], [u8; 8]), Vec<CallContext>> {
        let state = self.lock();
        waiting
            .calls
            .iter()
            .map(|c| {
                (
                    (c.trace, c.span),
                    state.ancestors(&waiting.tenant, c.trace, c.span),
                )
            })
            .collect()
    }

    /// Waiting requests whose wait is over.
    pub fn due(&self, now: Instant) -> Vec<Waiting<T>> {
        let mut state = self.lock();
        let ids: Vec<u64> = state
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| state.waiting.remove(&id))
            .collect()
    }

    /// Every waiting request (shutdown).
    pub fn drain(&self) -> Vec<Waiting<T>> {
        std::mem::take(&mut self.lock().waiting)
            .into_values()
            .collect()
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

impl<T> State<T> {
    /// Records a span's link; true if its trace has waiting requests.
    fn observe(
        &mut self,
        tenant: &Arc<str>,
        trace: [u8; 16],
        span: [u8; 8],
        parent: Option<[u8; 8]>,
        context: Option<&CallContext>,
        now: Instant,
    ) -> bool {
        let key = (tenant.clone(), trace);
        let entry = match self.traces.get_mut(&key) {
            Some(t) => t,
            None => {
                self.order.push_back((key.clone(), now));
                self.traces.entry(key).or_insert_with(|| Trace {
                    nodes: HashMap::new(),
                    waiting: Vec::new(),
                })
            }
        };
        let node = Node {
            parent,
            context: context.map(|c| Box::new(c.clone())),
        };
        if entry.nodes.insert(span, node).is_none() {
            self.spans += 1;
        }
        !entry.waiting.is_empty()
    }

    /// Forgets the oldest traces beyond the bounds.
    fn evict(&mut self, now: Instant) {
        while let Some((key, first_seen)) = self.order.front() {
            let old = now.saturating_duration_since(*first_seen) > MAX_AGE;
            if !old && self.spans <= MAX_SPANS {
                break;
            }
            if let Some(trace) = self.traces.remove(key) {
                self.spans -= trace.nodes.len();
            }
            self.order.pop_front();
        }
    }

    /// Whether the span's ancestry reaches a root among the spans seen.
    fn rooted(&self, tenant: &Arc<str>, trace: [u8; 16], span: [u8; 8]) -> bool {
        let Some(t) = self.traces.get(&(tenant.clone(), trace)) else {
            return false;
        };
        let mut at = span;
        for _ in 0..MAX_DEPTH {
            match t.nodes.get(&at) {
                None => return false,
                Some(Node { parent: None, .. }) => return true,
                Some(Node {
                    parent: Some(p), ..
                }) => at = *p,
            }
        }
        true
    }

    /// Contexts of the span's ancestors that say something, nearest first.
    fn ancestors(&self, tenant: &Arc<str>, trace: [u8; 16], span: [u8; 8]) -> Vec<CallContext> {
        let Some(t) = self.traces.get(&(tenant.clone(), trace)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut parent = t.nodes.get(&span).and_then(|n| n.parent);
        for _ in 0..MAX_DEPTH {
            let Some(node) = parent.and_then(|p| t.nodes.get(&p)) else {
                break;
            };
            if let Some(c) = &node.context {
                out.push((**c).clone());
            }
            parent = node.parent;
        }
        out
    }

    /// Waiting requests of `traces` whose calls are all complete now.
    fn completed(&mut self, tenant: &Arc<str>, traces: &[[u8; 16]]) -> Vec<Waiting<T>> {
        let mut candidates: Vec<u64> = traces
            .iter()
            .filter_map(|t| self.traces.get(&(tenant.clone(), *t)))
            .flat_map(|t| t.waiting.iter().copied())
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut out = Vec::new();
        for id in candidates {
            let complete = self.waiting.get(&id).is_some_and(|w| {
                w.calls
                    .iter()
                    .all(|c| self.rooted(&w.tenant, c.trace, c.span))
            });
            if complete {
                if let Some(w) = self.waiting.remove(&id) {
                    for c in &w.calls {
                        if let Some(t) = self.traces.get_mut(&(w.tenant.clone(), c.trace)) {
                            t.waiting.retain(|x| *x != id);
                        }
                    }
                    out.push(w);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genai::LlmFacts;

    fn span(id: u8, parent: Option<u8>) -> SpanRecord {
        let mut r = SpanRecord::sample("span", id);
        r.trace_id = [7; 16];
        r.span_id = [id; 8];
        r.parent_span_id = parent.map(|p| [p; 8]);
        r
    }

    fn call(id: u8, parent: u8) -> SpanRecord {
        let mut r = span(id, Some(parent));
        r.facts.llm = Some(LlmFacts::default());
        r
    }

    fn with_user(mut r: SpanRecord, user: &str, prompt: (&str, &str)) -> SpanRecord {
        r.facts.context.user_id = Some(user.into());
        r.facts.context.prompt_name = Some(prompt.0.into());
        r.facts.context.prompt_version = Some(prompt.1.into());
        r
    }

    fn ready(a: Arrival) -> Vec<SpanRecord> {
        match a {
            Arrival::Ready(records) => records,
            Arrival::Waiting => panic!("expected ready"),
        }
    }

    #[test]
    fn parent_first_hands_context_down_at_once() {
        let asm = Assembler::<Vec<SpanRecord>>::new(Duration::from_secs(30));
        let t: Arc<str> = Arc::from("t");
        let now = Instant::now();
        let root = with_user(span(1, None), "u-1", ("support", "3"));
        let (a, _) = asm.arrive(&t, vec![root, span(2, Some(1))], now, |r| r);
        assert_eq!(ready(a).len(), 2);
        let (a, released) = asm.arrive(&t, vec![call(3, 2)], now, |r| r);
        assert!(released.is_empty());
        let got = ready(a);
        let ctx = &got[0].facts.context;
        assert_eq!(ctx.user_id.as_deref(), Some("u-1"));
        assert_eq!(
            (ctx.prompt_name.as_deref(), ctx.prompt_version.as_deref()),
            (Some("support"), Some("3"))
        );
    }

    #[test]
    fn child_first_waits_for_its_ancestors_then_takes_their_context() {
        let asm = Assembler::<Vec<SpanRecord>>::new(Duration::from_secs(30));
        let t: Arc<str> = Arc::from("t");
        let now = Instant::now();
        let (a, _) = asm.arrive(&t, vec![call(3, 2)], now, |r| r);
        assert!(matches!(a, Arrival::Waiting));
        // The agent span alone does not complete it: its parent is unknown.
        let (_, released) = asm.arrive(&t, vec![span(2, Some(1))], now, |r| r);
        assert!(released.is_empty());
        let root = with_user(span(1, None), "u-1", ("support", "3"));
        let (_, released) = asm.arrive(&t, vec![root], now, |r| r);
        assert_eq!(released.len(), 1);
        let w = &released[0];
        let ancestry = asm.ancestry(w);
        let mut held = w.payload.clone();
        for ancestor in &ancestry[&(held[0].trace_id, held[0].span_id)] {
            held[0].facts.context.inherit(ancestor);
        }
        assert_eq!(held[0].facts.context.user_id.as_deref(), Some("u-1"));
        assert_eq!(asm.waiting(), 0);
    }

    #[test]
    fn a_wait_that_runs_out_releases_with_what_arrived() {
        let asm = Assembler::<Vec<SpanRecord>>::new(Duration::from_secs(30));
        let t: Arc<str> = Arc::from("t");
        let now = Instant::now();
        let (a, _) = asm.arrive(&t, vec![call(3, 2)], now, |r| r);
        assert!(matches!(a, Arrival::Waiting));
        assert!(asm.due(now + Duration::from_secs(29)).is_empty());
        assert_eq!(asm.due(now + Duration::from_secs(30)).len(), 1);
        assert_eq!(asm.waiting(), 0);
    }

    #[test]
    fn tenants_do_not_see_each_others_ancestors() {
        let asm = Assembler::<Vec<SpanRecord>>::new(Duration::ZERO);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let now = Instant::now();
        let root = with_user(span(1, None), "u-1", ("p", "1"));
        let _ = asm.arrive(&a, vec![root], now, |r| r);
        let (arrival, _) = asm.arrive(&b, vec![call(3, 1)], now, |r| r);
        assert_eq!(ready(arrival)[0].facts.context.user_id, None);
    }

    #[test]
    fn memory_is_bounded_by_spans_and_age() {
        let asm = Assembler::<Vec<SpanRecord>>::new(Duration::ZERO);
        let t: Arc<str> = Arc::from("t");
        let now = Instant::now();
        let _ = asm.arrive(&t, vec![span(1, None)], now, |r| r);
        let later = now + MAX_AGE + Duration::from_secs(1);
        let _ = asm.arrive(&t, vec![], later, |r| r);
        let state = asm.lock();
        assert_eq!(state.spans, 0);
        assert!(state.traces.is_empty());
    }
}
