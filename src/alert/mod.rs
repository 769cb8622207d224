//! The alert engine: rules (`[alerts]` in the config file), evaluation against a [`Source`],
//! the Prometheus alerting lifecycle (pending, firing, resolved) with persisted state, and
//! dispatch of notifications to the notifiers in [`notify`].
//!
//! - [`rules`]: config types, `rules_file` loading, validation that names the rule and the key;
//! - [`template`]: `{{name}}` substitution in annotations;
//! - [`state`]: one alert instance, its transitions, and the `state.json` store;
//! - [`engine`]: [`AlertEngine`] (evaluation rounds) and [`check`] for `llmtrace alerts check`;
//! - `clock`: [`Clock`], [`SystemClock`] and the [`ManualClock`] of tests;
//! - `metrics`: the engine's counters ([`EngineMetrics`]);
//! - `view`: [`InstanceView`] and the `GET /api/v1/alerts` shape ([`alerts_json`]);
//! - `dispatch`: delivery on spawned tasks, bounded and ordered per instance and destination;
//! - [`source`]: the [`Source`] trait through which the engine reads metrics and runs SQL, so it
//!   depends on nothing else in the crate. The sources that feed it from the aggregator and the
//!   query engine live with the wiring, in `serve::alert_sources`.

pub mod notify;

mod clock;
mod dispatch;
pub mod engine;
mod metrics;
pub mod rules;
pub mod source;
/// Moved to `serve::alert_sources`: alert/ imports nothing of what feeds it.
/// This alias only keeps `llmtrace alerts check` (src/main.rs) compiling until
/// it names `serve::alert_sources`; then it goes.
pub use crate::serve::alert_sources as sources;
pub mod state;
pub mod template;
mod view;

#[cfg(test)]
mod tests;

pub use engine::{
    alerts_json, check, AlertEngine, CheckReport, Clock, EngineError, EngineMetrics,
    EngineMetricsSnapshot, EvalOutcome, InstanceView, ManualClock, SystemClock,
};
pub use rules::{
    compile, load_rules_file, validate, AlertsConfig, CompiledRule, Op, Query, Rule, RuleError,
    RulesFile, RulesFileError, Subject,
};
pub use source::{Metric, MetricQuery, Sample, Source, SourceError, DIMENSIONS};
pub use state::{AlertState, Instance, StateStore};
