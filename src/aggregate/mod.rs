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
pub mod mark;
pub mod prometheus;
pub mod rollup;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use cell::{Cell, Counters, LiveCell};
pub use key::{AggKey, Dimension};
pub use rollup::Rollup;

use crate::record::SpanRecord;
use crate::wal::WalPosition;

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

/// What one close handed out, and what it leaves open.
#[derive(Debug, Default)]
pub struct Closed {
    pub rows: Vec<Arc<Rollup>>,
    /// Minutes ending at or before this (unix ns) have been closed.
    pub closed_until: Option<i64>,
    /// The cells left open, as rows, when the close was given an
    /// `aggregated_before` (for the rollup mark, see [`mark`]).
    pub open: Vec<Arc<Rollup>>,
    /// Log records at or after the `aggregated_before` given to the close
    /// whose LLM calls were aggregated before it anyway (requests finish
    /// out of log order), ascending.
    pub aggregated_since: Vec<WalPosition>,
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
    /// Log records whose LLM calls were aggregated, from the last close's
    /// `aggregated_before` on.
    logged: std::collections::BTreeSet<WalPosition>,
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

/// Start of the minute (unix ns) holding `unix_nanos`.
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

    /// Continues where the run that wrote `mark` left off: its open cells
    /// open again, and late spans of the minutes it closed become
    /// corrections, as they would have.
    pub fn restore(&self, mark: &mark::RollupMark) -> Result<(), AggregateError> {
        let mut state = self.lock();
        let state = &mut *state;
        let until = mark.closed_until;
        state.closed_until = Some(state.closed_until.map_or(until, |u| u.max(until)));
        for row in &mark.open {
            let cell = LiveCell::from_row(row, self.config.digits)?;
            let minutes = &mut state.minutes;
            match state.open.entry((row.minute, row.key.clone())) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.get_mut().cell.merge(&cell)?;
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    *minutes.entry(row.minute).or_default() += 1;
                    e.insert(OpenCell {
                        cell,
                        correction: row.correction,
                    });
                }
            }
        }
        Ok(())
    }

    /// Counts the LLM calls among `records` (other spans are skipped), at
    /// `now` (unix ns); `logged_at` is the log record they came in.
    pub fn record(
        &self,
        tenant: &Arc<str>,
        records: &[SpanRecord],
        now: i64,
        logged_at: Option<WalPosition>,
    ) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut overflowed = 0;
        let mut calls = false;
        for r in records {
            let Some(llm) = r.facts.llm.as_ref() else {
                continue;
            };
            calls = true;
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
        if let (true, Some(position)) = (calls, logged_at) {
            state.logged.insert(position);
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
    /// handing out its rows, and forgets rows older than the retention.
    /// `aggregated_before`: every log record before it has been aggregated.
    pub fn close_due(&self, now: i64, aggregated_before: Option<WalPosition>) -> Closed {
        let until = now.saturating_sub(nanos(self.config.close_after));
        self.close(now, Some(until), aggregated_before)
    }

    /// Closes every open cell, finished minute or not (at shutdown).
    pub fn close_all(&self, now: i64, aggregated_before: Option<WalPosition>) -> Closed {
        self.close(now, None, aggregated_before)
    }

    fn close(
        &self,
        now: i64,
        until: Option<i64>,
        aggregated_before: Option<WalPosition>,
    ) -> Closed {
        let mut state = self.lock();
        // Minutes once closed stay closed even if the clock steps back.
        let until = until.map(|u| state.closed_until.map_or(u, |c| c.max(u)));
        let due = |minute: i64| until.is_none_or(|u| minute + MINUTE_NANOS <= u);
        let mut rows = std::mem::take(&mut state.ready);
        rows.extend(self.close_locked(&mut state, now, due, until));
        let mut open = Vec::new();
        if let Some(before) = aggregated_before {
            state.logged = state.logged.split_off(&before);
            // Copied under the lock, encoded after it: ingest waits for the
            // copy only.
            open = state
                .open
                .iter()
                .map(|((minute, key), o)| (*minute, key.clone(), o.cell.clone(), o.correction))
                .collect();
        }
        let closed_until = state.closed_until;
        let aggregated_since = state.logged.iter().copied().collect();
        drop(state);
        Closed {
            rows,
            closed_until,
            open: open
                .into_iter()
                .map(|(minute, key, cell, correction)| {
                    Arc::new(Rollup::of(minute, key, &cell, correction))
                })
                .collect(),
            aggregated_since,
        }
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
            None,
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
        a.record(&tenant(), &[call("m", T0 + 5 * SEC, 100, false)], T0, None);
        // The minute ends at T0+60s and waits close_after (60 s) more.
        assert!(a.close_due(T0 + 119 * SEC, None).rows.is_empty());
        let first = a.close_due(T0 + 120 * SEC, None).rows;
        assert_eq!(first.len(), 1);
        assert!(!first[0].correction);
        assert_eq!(first[0].minute, T0);

        // A span of that minute arriving now is counted, in a correction row.
        a.record(&tenant(), &[call("m", T0 + 6 * SEC, 200, false)], T0, None);
        let late = a.close_due(T0 + 125 * SEC, None).rows;
        assert_eq!(late.len(), 1);
        assert!(late[0].correction);
        assert_eq!(late[0].minute, T0);

        // Live stats see both rows while they are retained.
        let g = a.stats(&all(600, vec![]), T0 + 130 * SEC).unwrap();
        assert_eq!(g[0].cell.counters.requests, 2);
        assert_eq!(hdr::quantile(&g[0].cell.latency, 1.0), Some(200.0));
        // ... and forget them after the retention (1 h).
        a.close_due(T0 + 3 * 3600 * SEC, None);
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
            None,
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
        a.record(&tenant(), &calls, T0, None);
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
        a.record(&tenant(), &calls, T0 + 3600 * SEC, None);
        assert_eq!(a.stats_counts().overflowed_calls, 0);
        let rows = a.close_due(T0 + 3600 * SEC, None).rows;
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
            None,
        );
        let rows = a.close_all(T0 + 601 * SEC, None).rows;
        assert_eq!(rows.len(), 2);
        assert_eq!(a.stats_counts().open_cells, 0);
    }

    #[test]
    fn a_close_for_the_mark_hands_out_the_cells_left_open() {
        let a = agg(100);
        let at = |offset| Some(WalPosition { segment: 1, offset });
        a.record(&tenant(), &[call("m", T0, 10, false)], T0, at(100));
        a.record(
            &tenant(),
            &[call("m", T0 + 70 * SEC, 10, false)],
            T0,
            at(200),
        );
        let closed = a.close_due(T0 + 120 * SEC, at(300));
        assert_eq!(closed.rows.len(), 1);
        assert_eq!(closed.closed_until, Some(T0 + 60 * SEC));
        assert_eq!(closed.open.len(), 1);
        assert_eq!(closed.open[0].minute, T0 + 60 * SEC);
        assert_eq!(closed.open[0].counters.requests, 1);
        // Without a log position there is no mark to take.
        assert!(a.close_due(T0 + 121 * SEC, None).open.is_empty());
    }

    #[test]
    fn a_close_names_the_records_aggregated_beyond_the_prefix_it_was_told() {
        let a = agg(100);
        let at = |offset| Some(WalPosition { segment: 1, offset });
        for offset in [100, 300, 500] {
            a.record(&tenant(), &[call("m", T0, 10, false)], T0, at(offset));
        }
        // Records before 200 are all aggregated; 300 and 500 finished
        // before the one at 200 did.
        let closed = a.close_due(T0 + 120 * SEC, at(200));
        assert_eq!(
            closed.aggregated_since,
            vec![at(300).unwrap(), at(500).unwrap()]
        );
        a.record(&tenant(), &[call("m", T0, 10, false)], T0, at(200));
        let closed = a.close_due(T0 + 125 * SEC, at(600));
        assert!(closed.aggregated_since.is_empty());
    }

    #[test]
    fn a_restored_aggregator_goes_on_with_the_open_cells_and_corrections() {
        let before = agg(100);
        let at = |offset| Some(WalPosition { segment: 1, offset });
        before.record(&tenant(), &[call("m", T0, 10, false)], T0, at(1));
        before.record(&tenant(), &[call("m", T0 + 60 * SEC, 30, false)], T0, at(2));
        let closed = before.close_due(T0 + 120 * SEC, at(3));
        let mark = mark::RollupMark {
            sequence: 1,
            aggregated_before: at(3).unwrap(),
            aggregated_since: closed.aggregated_since,
            closed_until: closed.closed_until.unwrap(),
            open: closed.open,
        };

        let after = agg(100);
        after.restore(&mark).unwrap();
        // A late call of the closed minute, and one more of the open one.
        after.record(&tenant(), &[call("m", T0 + SEC, 10, false)], T0, None);
        after.record(&tenant(), &[call("m", T0 + 61 * SEC, 50, false)], T0, None);
        let rows = after.close_all(T0 + 130 * SEC, None).rows;
        let got: Vec<(i64, bool, u64)> = rows
            .iter()
            .map(|r| (r.minute, r.correction, r.counters.requests))
            .collect();
        assert_eq!(got, vec![(T0, true, 1), (T0 + 60 * SEC, false, 2)]);
        let latency = hdr::decode(&rows[1].latency).unwrap();
        assert_eq!(latency.len(), 2, "the restored value and the new one");
        assert_eq!(hdr::quantile(&latency, 1.0), Some(50.0));
    }
}
