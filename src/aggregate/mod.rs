//! Streaming aggregation of LLM calls: per minute (of span start time) and
//! key (tenant, service, provider, model, operation, prompt name, prompt
//! version), counters and HdrHistograms of latency and time to first token.
//!
//! Fed by the ingest pipeline with the normalised records, so nothing is
//! parsed twice. A minute's cells stay open until `close_after` past its end
//! (spans arrive late: clients batch, retry, and export when a trace ends),
//! then close into [`Rollup`] rows for the `rollups/` files, and stay in
//! memory for `retention` to answer live stats. A span for a minute that has
//! already closed opens a fresh cell that closes as a correction row: counted,
//! never dropped, and summed with the first row by any query over rollups.
//!
//! The clock is the caller's: every time-dependent call takes `now`.

pub mod cell;
pub mod hdr;
pub mod key;
pub mod prometheus;
pub mod rollup;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use cell::{Cell, Counters, LiveCell};
pub use key::{AggKey, Dimension};
pub use rollup::Rollup;

use crate::record::SpanRecord;

pub const MINUTE_NANOS: i64 = 60_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error(transparent)]
    Hdr(#[from] hdr::HdrError),
    #[error("window {} is longer than the live stats retention of {}; query the rollups table for longer ranges", humantime::format_duration(*.window), humantime::format_duration(*.retention))]
    WindowTooLong {
        window: Duration,
        retention: Duration,
    },
}

#[derive(Clone, Debug)]
pub struct AggregateConfig {
    /// HdrHistogram significant digits (0 to 5).
    pub digits: u8,
    /// Open cells allowed before new keys go to the overflow key.
    pub max_live_keys: usize,
    /// How long after its end a minute stays open for late spans.
    pub close_after: Duration,
    /// How long closed minutes stay in memory for live stats.
    pub retention: Duration,
    /// Label sets of the Prometheus GenAI metrics before `_overflow`.
    pub max_metric_series: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            digits: 3,
            max_live_keys: 2_000,
            close_after: Duration::from_secs(60),
            retention: Duration::from_secs(3600),
            max_metric_series: 1_000,
        }
    }
}

struct OpenCell {
    cell: LiveCell,
    /// Opened after its minute had closed: the rollup row is a correction.
    correction: bool,
}

#[derive(Default)]
struct State {
    open: HashMap<(i64, AggKey), OpenCell>,
    /// Minutes ending at or before this (unix ns) have been closed once.
    closed_until: Option<i64>,
    /// Closed rows kept for live stats, oldest first.
    recent: VecDeque<Arc<Rollup>>,
    /// Rows closed early to make room under the live-key cap, not yet
    /// handed out by `close_due`.
    ready: Vec<Arc<Rollup>>,
    /// Open cells per minute: whether any minute is due, without a scan.
    minutes: BTreeMap<i64, usize>,
}

/// Calls counted since start, for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct AggregatorStats {
    pub open_cells: usize,
    pub overflowed_calls: u64,
}

pub struct Aggregator {
    config: AggregateConfig,
    state: Mutex<State>,
    prometheus: prometheus::GenAiMetrics,
    overflowed: std::sync::atomic::AtomicU64,
}

fn minute_of(unix_nanos: i64) -> i64 {
    unix_nanos.div_euclid(MINUTE_NANOS) * MINUTE_NANOS
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Aggregator {
    pub fn new(config: AggregateConfig) -> Result<Self, AggregateError> {
        hdr::new_histogram(config.digits)?;
        Ok(Aggregator {
            prometheus: prometheus::GenAiMetrics::new(config.max_metric_series),
            config,
            state: Mutex::new(State::default()),
            overflowed: Default::default(),
        })
    }

    pub fn config(&self) -> &AggregateConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the LLM calls among `records` (other spans are skipped), at
    /// `now` (unix ns).
    pub fn record(&self, tenant: &Arc<str>, records: &[SpanRecord], now: i64) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut overflowed = 0;
        for r in records {
            let Some(llm) = r.facts.llm.as_ref() else {
                continue;
            };
            let minute = minute_of(r.start_unix_nano);
            let mut key = AggKey::of(tenant, r, llm);
            if state.open.len() >= self.config.max_live_keys
                && !state.open.contains_key(&(minute, key.clone()))
            {
                // Minutes already due make room first (a backfill or a burst
                // of old spans fills the map with them); only live keys
                // beyond the cap share the overflow key.
                let until = now.saturating_sub(nanos(self.config.close_after));
                let oldest = state.minutes.keys().next().copied();
                if oldest.is_some_and(|m| m + MINUTE_NANOS <= until) {
                    let rows =
                        self.close_locked(state, now, |m| m + MINUTE_NANOS <= until, Some(until));
                    state.ready.extend(rows);
                }
                if state.open.len() >= self.config.max_live_keys {
                    key = AggKey::overflow(tenant);
                    overflowed += 1;
                }
            }
            let correction = state
                .closed_until
                .is_some_and(|until| minute + MINUTE_NANOS <= until);
            let minutes = &mut state.minutes;
            let open = state.open.entry((minute, key)).or_insert_with(|| {
                *minutes.entry(minute).or_default() += 1;
                OpenCell {
                    cell: LiveCell::new(self.config.digits),
                    correction,
                }
            });
            open.cell.record(r, llm);
        }
        if overflowed > 0 {
            self.overflowed
                .fetch_add(overflowed, std::sync::atomic::Ordering::Relaxed);
        }
        self.prometheus.record(
            records
                .iter()
                .filter_map(|r| r.facts.llm.as_ref().map(|llm| (r, llm))),
        );
    }

    /// The GenAI metrics in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        self.prometheus.render(out);
    }

    /// Closes every minute that ended `close_after` before `now` (unix ns),
    /// returning its rows, and forgets rows older than the retention.
    pub fn close_due(&self, now: i64) -> Vec<Arc<Rollup>> {
        let until = now.saturating_sub(nanos(self.config.close_after));
        self.close(now, |minute| minute + MINUTE_NANOS <= until, Some(until))
    }

    /// Closes every open cell, finished minute or not (at shutdown).
    pub fn close_all(&self, now: i64) -> Vec<Arc<Rollup>> {
        self.close(now, |_| true, None)
    }

    fn close(&self, now: i64, due: impl Fn(i64) -> bool, until: Option<i64>) -> Vec<Arc<Rollup>> {
        let mut state = self.lock();
        let mut rows = std::mem::take(&mut state.ready);
        rows.extend(self.close_locked(&mut state, now, due, until));
        rows
    }

    /// Moves the due cells out as rows (also kept for live stats) and
    /// forgets rows older than the retention.
    fn close_locked(
        &self,
        state: &mut State,
        now: i64,
        due: impl Fn(i64) -> bool,
        until: Option<i64>,
    ) -> Vec<Arc<Rollup>> {
        let keys: Vec<(i64, AggKey)> = state
            .open
            .keys()
            .filter(|(minute, _)| due(*minute))
            .cloned()
            .collect();
        let mut rows = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(open) = state.open.remove(&k) {
                let (minute, key) = k;
                if let std::collections::btree_map::Entry::Occupied(mut e) =
                    state.minutes.entry(minute)
                {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
                rows.push(Arc::new(Rollup::of(
                    minute,
                    key,
                    &open.cell,
                    open.correction,
                )));
            }
        }
        rows.sort_by(|a, b| (a.minute, &a.key).cmp(&(b.minute, &b.key)));
        if let Some(until) = until {
            state.closed_until = Some(state.closed_until.map_or(until, |u| u.max(until)));
        }
        state.recent.extend(rows.iter().cloned());
        let keep_from = now.saturating_sub(nanos(self.config.retention));
        // Rows close roughly in minute order; corrections of old minutes may
        // sit behind newer ones, so drop by minute rather than only the front.
        state.recent.retain(|r| r.minute + MINUTE_NANOS > keep_from);
        rows
    }

    pub fn stats_counts(&self) -> AggregatorStats {
        AggregatorStats {
            open_cells: self.lock().open.len(),
            overflowed_calls: self.overflowed.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Live aggregates of the minutes overlapping `[now - window, now]`,
    /// merged per group.
    pub fn stats(&self, query: &StatsQuery, now: i64) -> Result<Vec<GroupStats>, AggregateError> {
        if query.window > self.config.retention {
            return Err(AggregateError::WindowTooLong {
                window: query.window,
                retention: self.config.retention,
            });
        }
        let from = now.saturating_sub(nanos(query.window));
        let in_window = |minute: i64, key: &AggKey| {
            minute + MINUTE_NANOS > from
                && query
                    .filters
                    .iter()
                    .all(|(d, v)| key.get(*d) == Some(v.as_str()))
        };
        let group_of = |key: &AggKey| -> Vec<Option<Arc<str>>> {
            query
                .group_by
                .iter()
                .map(|d| key.0[*d as usize].clone())
                .collect()
        };
        let mut groups = Groups::new();
        let digits = self.config.digits;
        let state = self.lock();
        for ((minute, key), open) in state.open.iter() {
            if in_window(*minute, key) {
                cell_in(&mut groups, group_of(key), digits)?.merge_live(&open.cell)?;
            }
        }
        for row in state.recent.iter() {
            if in_window(row.minute, &row.key) {
                cell_in(&mut groups, group_of(&row.key), digits)?.merge_encoded(
                    &row.counters,
                    &row.latency,
                    row.ttft.as_deref(),
                )?;
            }
        }
        drop(state);
        Ok(groups
            .into_iter()
            .map(|(values, cell)| GroupStats {
                group: query
                    .group_by
                    .iter()
                    .zip(values)
                    .map(|(d, v)| (*d, v))
                    .collect(),
                cell,
            })
            .collect())
    }
}

type Groups = BTreeMap<Vec<Option<Arc<str>>>, Cell>;

/// The cell of group `g`, created empty on first use.
fn cell_in(
    groups: &mut Groups,
    g: Vec<Option<Arc<str>>>,
    digits: u8,
) -> Result<&mut Cell, AggregateError> {
    Ok(match groups.entry(g) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => e.insert(Cell::new(digits)?),
    })
}

/// A live stats question.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsQuery {
    pub window: Duration,
    pub group_by: Vec<Dimension>,
    /// Only calls whose dimension equals the value.
    pub filters: Vec<(Dimension, String)>,
}

/// The merged cell of one group.
#[derive(Debug)]
pub struct GroupStats {
    pub group: Vec<(Dimension, Option<Arc<str>>)>,
    pub cell: Cell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genai::{LlmFacts, SpanStatus, Tokens};
    use crate::pricing::CostStatus;

    /// 2024-03-05T10:00:00Z
    const T0: i64 = 1_709_632_800_000_000_000;
    const SEC: i64 = 1_000_000_000;

    fn call(model: &str, start: i64, ms: i64, error: bool) -> SpanRecord {
        let mut r = SpanRecord::sample("chat", 1);
        r.start_unix_nano = start;
        r.end_unix_nano = start + ms * 1_000_000;
        r.facts.status = if error {
            SpanStatus::Error
        } else {
            SpanStatus::Ok
        };
        r.facts.llm = Some(LlmFacts {
            provider: Some("openai".into()),
            request_model: Some(model.into()),
            operation: Some("chat".into()),
            tokens: Tokens {
                input: Some(100),
                output: Some(10),
                ..Tokens::default()
            },
            ttft_ms: Some(ms as f64 / 4.0),
            ..LlmFacts::default()
        });
        r.cost_usd = Some(0.000_123);
        r.cost_status = CostStatus::Priced;
        r
    }

    fn agg(max_live_keys: usize) -> Aggregator {
        Aggregator::new(AggregateConfig {
            max_live_keys,
            ..AggregateConfig::default()
        })
        .unwrap()
    }

    fn all(window_s: u64, group_by: Vec<Dimension>) -> StatsQuery {
        StatsQuery {
            window: Duration::from_secs(window_s),
            group_by,
            filters: vec![],
        }
    }

    fn tenant() -> Arc<str> {
        Arc::from("default")
    }

    #[test]
    fn only_llm_calls_are_counted_with_tokens_cost_and_errors() {
        let a = agg(100);
        let plain = SpanRecord::sample("GET /", 1);
        a.record(
            &tenant(),
            &[
                call("gpt-4o", T0, 100, false),
                call("gpt-4o", T0 + SEC, 300, true),
                plain,
            ],
            T0,
        );
        let g = a.stats(&all(300, vec![]), T0 + 2 * SEC).unwrap();
        assert_eq!(g.len(), 1);
        let c = &g[0].cell.counters;
        assert_eq!(
            (c.requests, c.errors, c.input_tokens, c.output_tokens),
            (2, 1, 200, 20)
        );
        assert_eq!(c.cost_nano_usd, 246_000);
        assert_eq!(c.error_rate(), Some(0.5));
        assert_eq!(hdr::quantile(&g[0].cell.latency, 1.0), Some(300.0));
        assert_eq!(
            hdr::quantile(g[0].cell.ttft.as_ref().unwrap(), 0.5),
            Some(25.0)
        );
    }

    #[test]
    fn minutes_close_after_their_grace_and_late_spans_become_corrections() {
        let a = agg(100);
        a.record(&tenant(), &[call("m", T0 + 5 * SEC, 100, false)], T0);
        // The minute ends at T0+60s and waits close_after (60 s) more.
        assert!(a.close_due(T0 + 119 * SEC).is_empty());
        let first = a.close_due(T0 + 120 * SEC);
        assert_eq!(first.len(), 1);
        assert!(!first[0].correction);
        assert_eq!(first[0].minute, T0);

        // A span of that minute arriving now is counted, in a correction row.
        a.record(&tenant(), &[call("m", T0 + 6 * SEC, 200, false)], T0);
        let late = a.close_due(T0 + 125 * SEC);
        assert_eq!(late.len(), 1);
        assert!(late[0].correction);
        assert_eq!(late[0].minute, T0);

        // Live stats see both rows while they are retained.
        let g = a.stats(&all(600, vec![]), T0 + 130 * SEC).unwrap();
        assert_eq!(g[0].cell.counters.requests, 2);
        assert_eq!(hdr::quantile(&g[0].cell.latency, 1.0), Some(200.0));
        // ... and forget them after the retention (1 h).
        a.close_due(T0 + 3 * 3600 * SEC);
        assert!(a
            .stats(&all(3600, vec![]), T0 + 3 * 3600 * SEC)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn windows_group_by_and_filters() {
        let a = agg(100);
        let mut other = call("claude", T0 + 61 * SEC, 50, false);
        other.facts.llm.as_mut().unwrap().provider = Some("anthropic".into());
        a.record(
            &tenant(),
            &[
                call("gpt-4o", T0, 100, false),
                call("gpt-4o", T0 + 70 * SEC, 100, true),
                other,
            ],
            T0,
        );
        let now = T0 + 90 * SEC;
        let by_model = a.stats(&all(3600, vec![Dimension::Model]), now).unwrap();
        let names: Vec<_> = by_model
            .iter()
            .map(|g| {
                (
                    g.group[0].1.as_deref().unwrap().to_owned(),
                    g.cell.counters.requests,
                )
            })
            .collect();
        assert_eq!(names, vec![("claude".into(), 1), ("gpt-4o".into(), 2)]);
        // A 20 s window overlaps only the second minute.
        let recent = a.stats(&all(20, vec![]), now).unwrap();
        assert_eq!(recent[0].cell.counters.requests, 2);
        let openai = a
            .stats(
                &StatsQuery {
                    filters: vec![(Dimension::Provider, "openai".into())],
                    ..all(3600, vec![])
                },
                now,
            )
            .unwrap();
        assert_eq!(openai[0].cell.counters.requests, 2);
        assert!(matches!(
            a.stats(&all(7200, vec![]), now),
            Err(AggregateError::WindowTooLong { .. })
        ));
    }

    #[test]
    fn keys_past_the_cap_go_to_the_overflow_key() {
        let a = agg(3);
        let calls: Vec<SpanRecord> = (0..10)
            .map(|i| call(&format!("m{i}"), T0, 10, false))
            .collect();
        a.record(&tenant(), &calls, T0);
        assert_eq!(
            a.stats_counts().open_cells,
            4,
            "3 keys and the overflow key"
        );
        assert_eq!(a.stats_counts().overflowed_calls, 7);
        let g = a.stats(&all(300, vec![Dimension::Model]), T0).unwrap();
        let total: u64 = g.iter().map(|g| g.cell.counters.requests).sum();
        assert_eq!(total, 10, "nothing lost");
        assert!(g
            .iter()
            .any(|g| g.group[0].1.as_deref() == Some(key::OVERFLOW)));
    }

    #[test]
    fn old_minutes_make_room_before_the_overflow_key() {
        let a = agg(3);
        // Ten past minutes of one key, recorded an hour later: all due.
        let calls: Vec<SpanRecord> = (0..10)
            .map(|i| call("m", T0 + i * 60 * SEC, 10, false))
            .collect();
        a.record(&tenant(), &calls, T0 + 3600 * SEC);
        assert_eq!(a.stats_counts().overflowed_calls, 0);
        let rows = a.close_due(T0 + 3600 * SEC);
        assert_eq!(rows.len(), 10);
        assert!(rows
            .iter()
            .all(|r| r.key.get(Dimension::Model) == Some("m")));
        assert_eq!(a.stats_counts().open_cells, 0);
    }

    #[test]
    fn shutdown_closes_every_open_minute() {
        let a = agg(100);
        a.record(
            &tenant(),
            &[
                call("m", T0, 10, false),
                call("m", T0 + 600 * SEC, 10, false),
            ],
            T0,
        );
        let rows = a.close_all(T0 + 601 * SEC);
        assert_eq!(rows.len(), 2);
        assert_eq!(a.stats_counts().open_cells, 0);
    }
}
