//! The alert engine: rules (`[alerts]` in the config file), evaluation against a [`Source`],
//! the Prometheus alerting lifecycle (pending, firing, resolved) with persisted state, and
//! dispatch of notifications to the notifiers in [`notify`].
//!
//! - [`rules`]: config types, `rules_file` loading, validation that names the rule and the key;
//! - [`template`]: `{{name}}` substitution in annotations;
//! - [`state`]: one alert instance, its transitions, and the `state.json` store;
//! - [`engine`]: [`AlertEngine`] (evaluation rounds, delivery on spawned tasks, counters, the
//!   `GET /api/v1/alerts` shape) and [`check`] for `llmtrace alerts check`;
//! - [`source`]: the [`Source`] trait through which the engine reads metrics and runs SQL, so it
//!   depends on nothing else in the crate.

pub mod notify;

pub mod engine;
pub mod rules;
pub mod source;
pub mod sources;
pub mod state;
pub mod template;

#[cfg(test)]
mod tests;

pub use engine::{
    alerts_json, check, AlertEngine, CheckReport, Clock, EngineError, EngineMetrics,
    EngineMetricsSnapshot, EvalOutcome, InstanceView, ManualClock, SystemClock,
};
pub use rules::{
    compile, load_rules_file, validate, AlertsConfig, CompiledRule, Op, Query, Rule, RuleError,
    RulesFile, RulesFileError, Scope,
};
pub use source::{Metric, MetricQuery, Sample, Source, SourceError, DIMENSIONS};
pub use state::{AlertState, Instance, StateStore};
