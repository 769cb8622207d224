//! The `[alerts]` section of the config file (and the optional `rules_file`), and its validation.
//!
//! ```toml
//! [alerts]
//! eval_interval = "15s"        # default 15s
//! repeat_interval = "4h"       # default 4h
//! rules_file = "rules.toml"    # optional: more [[rules]] / [[destinations]]
//!
//! [[alerts.destinations]]      # see notify::Destination
//! name = "pd"
//! type = "pagerduty"
//! routing_key = "…"
//!
//! [[alerts.rules]]
//! name = "error-rate-spike"
//! metric = "error_rate"        # or sql = "SELECT model, … AS value FROM llm_calls WHERE …"
//! window = "5m"                # metric rules only (required)
//! group_by = ["model"]         # metric rules only
//! filter = { provider = "openai" }   # metric rules only
//! op = ">"                     # > >= < <= == !=
//! threshold = 0.05
//! for = "1m"                   # default 0s
//! keep_firing_for = "2m"       # default 0s
//! severity = "critical"        # critical | error | warning (default) | info
//! labels = { team = "ml" }
//! annotations = { summary = "Error rate of {{model}} is {{value}}" }
//! notify = ["pd"]
//! interval = "1m"              # optional, default eval_interval
//! ```
//!
//! Deserialization rejects unknown keys (typos) and malformed values (bad durations, an unknown
//! `op` or `severity`); the TOML error points at the line. Everything that needs context
//! (unknown metric or dimension, a missing window, a destination nobody defined, templates,
//! duplicate names) is checked by [`validate`]/[`compile`], which report every problem at once,
//! each naming the rule and the key: `rule "error-rate-spike": key "window": …`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::notify::{Destination, Severity};
use super::source::{Metric, MetricQuery, DIMENSIONS};
use super::template;

pub const DEFAULT_EVAL_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);

fn default_eval_interval() -> Duration {
    DEFAULT_EVAL_INTERVAL
}

fn default_repeat_interval() -> Duration {
    DEFAULT_REPEAT_INTERVAL
}

fn default_severity() -> Severity {
    Severity::Warning
}

/// Durations written the way people write them: `"15s"`, `"1m"`, `"4h"`, `"1h 30m"`.
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. \"30s\", \"5m\", \"1h\""
            ))
        })
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// The `[alerts]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// How often rules are evaluated (a rule's own `interval` overrides it).
    #[serde(default = "default_eval_interval", with = "duration_text")]
    pub eval_interval: Duration,
    /// How often a still-firing instance is notified again.
    #[serde(default = "default_repeat_interval", with = "duration_text")]
    pub repeat_interval: Duration,
    /// A TOML file with more `[[rules]]` and `[[destinations]]`; relative paths are resolved
    /// against the config file's directory (see [`AlertsConfig::with_rules_file`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_file: Option<PathBuf>,
    #[serde(default)]
    pub destinations: Vec<Destination>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            eval_interval: DEFAULT_EVAL_INTERVAL,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
            rules_file: None,
            destinations: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// Comparison between a sample's value and the rule's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// `value op threshold`. NaN compares false with everything (so a NaN value never fires,
    /// even for `!=`), as a missing value should not.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        if value.is_nan() || threshold.is_nan() {
            return false;
        }
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => value == threshold,
            Op::Ne => value != threshold,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[alerts.rules]]` entry as written. See [`compile`] for the checked form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    /// A metric name (see [`Metric`]); kept as text so an unknown one is reported with the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(
        default,
        with = "duration_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    pub op: Op,
    pub threshold: f64,
    /// How long the condition must hold before the instance fires (`for` in the file).
    #[serde(rename = "for", default, with = "duration_text")]
    pub for_duration: Duration,
    /// How long a firing instance keeps firing after the condition stopped holding.
    #[serde(default, with = "duration_text")]
    pub keep_firing_for: Duration,
    #[serde(default = "default_severity")]
    pub severity: Severity,
    /// Static labels, added to every instance (and to its fingerprint). Not templated.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Templated (see [`template`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Destination names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    #[serde(
        default,
        with = "duration_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
}

/// What a checked rule evaluates.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Metric(MetricQuery),
    Sql(String),
}

/// A rule that passed validation, with its defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    pub name: String,
    pub query: Query,
    pub op: Op,
    pub threshold: f64,
    pub for_duration: Duration,
    pub keep_firing_for: Duration,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub notify: Vec<String>,
    /// The rule's `interval`, else the global `eval_interval`.
    pub interval: Duration,
}

impl CompiledRule {
    /// Filter values, for templates (empty for SQL rules).
    pub fn filter(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        match &self.query {
            Query::Metric(q) => &q.filter,
            Query::Sql(_) => &EMPTY,
        }
    }

    /// `metric error_rate > 0.05 over 5m by model` / `sql > 100`, for logs and `alerts check`.
    pub fn describe(&self) -> String {
        let threshold = super::notify::format_value(self.threshold);
        match &self.query {
            Query::Metric(q) => {
                let mut s = format!(
                    "metric {} {} {threshold} over {}",
                    q.metric,
                    self.op,
                    humantime::format_duration(q.window)
                );
                if !q.group_by.is_empty() {
                    s.push_str(&format!(" by {}", q.group_by.join(",")));
                }
                if !q.filter.is_empty() {
                    let f: Vec<String> = q.filter.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    s.push_str(&format!(" where {}", f.join(",")));
                }
                s
            }
            Query::Sql(_) => format!("sql value {} {threshold}", self.op),
        }
    }
}

/// What a [`RuleError`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The `[alerts]` table itself (`eval_interval`, …).
    Alerts,
    /// A rule, by name (or by 1-based position when it has no name).
    Rule { name: String, index: usize },
    /// A destination, by name.
    Destination { name: String, index: usize },
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Alerts => f.write_str("alerts"),
            Subject::Rule { name, index } if name.trim().is_empty() => write!(f, "rule #{index}"),
            Subject::Rule { name, .. } => write!(f, "rule {name:?}"),
            Subject::Destination { name, index } if name.trim().is_empty() => {
                write!(f, "destination #{index}")
            }
            Subject::Destination { name, .. } => write!(f, "destination {name:?}"),
        }
    }
}

/// One problem in the alert configuration: `rule "error-rate-spike": key "window": …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{subject}: key {key:?}: {message}")]
pub struct RuleError {
    pub subject: Subject,
    /// The offending key, dotted for nested ones (`annotations.summary`, `labels.team`).
    pub key: String,
    pub message: String,
}

impl RuleError {
    /// The rule's name, when the error is about a rule.
    pub fn rule(&self) -> Option<&str> {
        match &self.subject {
            Subject::Rule { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// The contents of a `rules_file`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub destinations: Vec<Destination>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A rules file that cannot be read or parsed. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum RulesFileError {
    #[error("cannot read alert rules file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid alert rules file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

/// Reads and parses a rules file (`[[rules]]` and `[[destinations]]` tables). Validation is
/// separate: merge it into the [`AlertsConfig`] and call [`validate`], so names are checked
/// across both files.
pub fn load_rules_file(path: &Path) -> Result<RulesFile, RulesFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| RulesFileError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl AlertsConfig {
    /// Appends the rules and destinations of a rules file.
    pub fn merge(&mut self, file: RulesFile) {
        self.destinations.extend(file.destinations);
        self.rules.extend(file.rules);
    }

    /// Loads `rules_file` (if set; relative to `base_dir`, normally the config file's directory)
    /// and merges it in. `rules_file` is cleared so calling this twice does not duplicate rules.
    pub fn with_rules_file(mut self, base_dir: Option<&Path>) -> Result<Self, RulesFileError> {
        if let Some(path) = self.rules_file.take() {
            let path = match base_dir {
                Some(base) if path.is_relative() => base.join(path),
                _ => path,
            };
            let file = load_rules_file(&path)?;
            self.merge(file);
        }
        Ok(self)
    }
}

/// Checks the whole `[alerts]` configuration; every problem is reported, not only the first.
pub fn validate(config: &AlertsConfig) -> Result<(), Vec<RuleError>> {
    compile(config).map(|_| ())
}

/// Validates and returns the rules with defaults applied, in config order.
pub fn compile(config: &AlertsConfig) -> Result<Vec<CompiledRule>, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut top = |key: &str, message: &str| {
        errors.push(RuleError {
            subject: Subject::Alerts,
            key: key.to_owned(),
            message: message.to_owned(),
        })
    };
    if config.eval_interval.is_zero() {
        top("eval_interval", "must be greater than 0");
    }
    if config.repeat_interval.is_zero() {
        top("repeat_interval", "must be greater than 0");
    }

    let mut destination_names = BTreeSet::new();
    for (i, d) in config.destinations.iter().enumerate() {
        let subject = Subject::Destination {
            name: d.name().to_owned(),
            index: i + 1,
        };
        if let Err(e) = d.validate() {
            errors.push(RuleError {
                subject: subject.clone(),
                key: e.key.to_owned(),
                message: e.reason,
            });
        }
        if !d.name().trim().is_empty() && !destination_names.insert(d.name()) {
            errors.push(RuleError {
                subject,
                key: "name".into(),
                message: "another destination has the same name".into(),
            });
        }
    }

    let mut rule_names = BTreeSet::new();
    let mut compiled = Vec::with_capacity(config.rules.len());
    for (i, rule) in config.rules.iter().enumerate() {
        let subject = Subject::Rule {
            name: rule.name.clone(),
            index: i + 1,
        };
        let mut check = RuleCheck {
            subject,
            errors: Vec::new(),
        };
        if !rule.name.trim().is_empty() && !rule_names.insert(rule.name.as_str()) {
            check.err("name", "another rule has the same name");
        }
        if let Some(rule) = check.rule(rule, config, &destination_names) {
            if check.errors.is_empty() {
                compiled.push(rule);
            }
        }
        errors.extend(check.errors);
    }

    if errors.is_empty() {
        Ok(compiled)
    } else {
        Err(errors)
    }
}

struct RuleCheck {
    subject: Subject,
    errors: Vec<RuleError>,
}

impl RuleCheck {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(RuleError {
            subject: self.subject.clone(),
            key: key.into(),
            message: message.into(),
        });
    }

    fn rule(
        &mut self,
        rule: &Rule,
        config: &AlertsConfig,
        destinations: &BTreeSet<&str>,
    ) -> Option<CompiledRule> {
        if rule.name.trim().is_empty() {
            self.err("name", "must not be empty");
        } else if rule.name.trim() != rule.name {
            self.err("name", "must not start or end with whitespace");
        }

        let query = match (&rule.metric, &rule.sql) {
            (Some(_), Some(_)) => {
                self.err("metric", "set either `metric` or `sql`, not both");
                None
            }
            (None, None) => {
                self.err("metric", "set either `metric` or `sql`");
                None
            }
            (Some(metric), None) => self.metric_query(rule, metric),
            (None, Some(sql)) => self.sql_query(rule, sql),
        };

        if !rule.threshold.is_finite() {
            self.err("threshold", "must be a finite number");
        }
        if rule.interval.is_some_and(|d| d.is_zero()) {
            self.err("interval", "must be greater than 0");
        }

        for (k, v) in &rule.labels {
            let key = format!("labels.{k}");
            if !is_label_name(k) {
                self.err(
                    &key,
                    "label names must match [a-zA-Z_][a-zA-Z0-9_]* (as in Prometheus)",
                );
            } else if k == "alertname" || k == "severity" {
                self.err(
                    &key,
                    format!("`{k}` is set by the engine; it cannot be a rule label"),
                );
            } else if rule.group_by.contains(k) {
                self.err(
                    &key,
                    format!(
                        "`{k}` is also in group_by; the static value would merge every group into one instance"
                    ),
                );
            }
            if v.contains("{{") {
                self.err(
                    &key,
                    "labels are not templated (they identify the instance); use an annotation",
                );
            }
        }

        // Names a metric rule's templates can use; SQL rules' label columns are unknown here.
        let known: Option<BTreeSet<&str>> = match &query {
            Some(Query::Metric(q)) => Some(
                q.group_by
                    .iter()
                    .chain(q.filter.keys())
                    .chain(rule.labels.keys())
                    .map(String::as_str)
                    .chain(template::BUILTIN_VARIABLES.iter().copied())
                    .collect(),
            ),
            _ => None,
        };
        for (k, text) in &rule.annotations {
            let key = format!("annotations.{k}");
            match template::variables(text) {
                Err(e) => self.err(&key, format!("bad template: {e}")),
                Ok(names) => {
                    if let Some(known) = &known {
                        for name in names.iter().filter(|n| !known.contains(n.as_str())) {
                            let available: Vec<&str> = known.iter().copied().collect();
                            self.err(
                                &key,
                                format!(
                                    "unknown template variable {{{{{name}}}}} (available: {})",
                                    available.join(", ")
                                ),
                            );
                        }
                    }
                }
            }
        }

        let mut seen = BTreeSet::new();
        for name in &rule.notify {
            if !destinations.contains(name.as_str()) {
                let known: Vec<&str> = destinations.iter().copied().collect();
                self.err(
                    "notify",
                    format!(
                        "unknown destination {name:?} (defined: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            } else if !seen.insert(name.as_str()) {
                self.err("notify", format!("destination {name:?} is listed twice"));
            }
        }

        Some(CompiledRule {
            name: rule.name.clone(),
            query: query?,
            op: rule.op,
            threshold: rule.threshold,
            for_duration: rule.for_duration,
            keep_firing_for: rule.keep_firing_for,
            severity: rule.severity,
            labels: rule.labels.clone(),
            annotations: rule.annotations.clone(),
            notify: rule.notify.clone(),
            interval: rule.interval.unwrap_or(config.eval_interval),
        })
    }

    fn metric_query(&mut self, rule: &Rule, metric: &str) -> Option<Query> {
        let metric = match metric.parse::<Metric>() {
            Ok(m) => Some(m),
            Err(_) => {
                let names: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
                self.err(
                    "metric",
                    format!(
                        "unknown metric {metric:?} (expected one of: {})",
                        names.join(", ")
                    ),
                );
                None
            }
        };
        let window = match rule.window {
            None => {
                self.err("window", "required for metric rules (e.g. window = \"5m\")");
                None
            }
            Some(w) if w.is_zero() => {
                self.err("window", "must be greater than 0");
                None
            }
            Some(w) => Some(w),
        };
        let dims = DIMENSIONS.join(", ");
        let mut seen = BTreeSet::new();
        for d in &rule.group_by {
            if !DIMENSIONS.contains(&d.as_str()) {
                self.err(
                    "group_by",
                    format!("unknown dimension {d:?} (expected one of: {dims})"),
                );
            } else if !seen.insert(d) {
                self.err("group_by", format!("dimension {d:?} is listed twice"));
            }
        }
        for d in rule.filter.keys() {
            if !DIMENSIONS.contains(&d.as_str()) {
                self.err(
                    "filter",
                    format!("unknown dimension {d:?} (expected one of: {dims})"),
                );
            }
        }
        Some(Query::Metric(MetricQuery {
            metric: metric?,
            window: window?,
            group_by: rule.group_by.clone(),
            filter: rule.filter.clone(),
        }))
    }

    fn sql_query(&mut self, rule: &Rule, sql: &str) -> Option<Query> {
        const ONLY_METRIC: &str =
            "applies only to metric rules; a SQL rule filters, groups and picks its window in the query";
        if rule.window.is_some() {
            self.err("window", ONLY_METRIC);
        }
        if !rule.group_by.is_empty() {
            self.err("group_by", ONLY_METRIC);
        }
        if !rule.filter.is_empty() {
            self.err("filter", ONLY_METRIC);
        }
        match check_sql(sql) {
            Ok(()) => Some(Query::Sql(sql.trim().to_owned())),
            Err(message) => {
                self.err("sql", message);
                None
            }
        }
    }
}

/// Prometheus' label name rule.
fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The rule's SQL parsed with the query engine's parser (DataFusion's generic dialect): exactly
/// one statement, and that statement a query (`SELECT`, `WITH`, `VALUES`, set operations,
/// parenthesised). The query layer's read-only guard is the real protection; this catches
/// mistakes at config load instead of at the first evaluation.
fn check_sql(sql: &str) -> Result<(), String> {
    use datafusion::sql::sqlparser::ast::Statement;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    let statements =
        Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| format!("is not valid SQL: {e}"))?;
    match statements.as_slice() {
        [] => Err("must not be empty".into()),
        [Statement::Query(_)] => Ok(()),
        [_] => Err(format!(
            "must be a query starting with SELECT or WITH, not {:?}",
            first_word(sql)
        )),
        _ => Err(format!(
            "must be a single statement, not {}",
            statements.len()
        )),
    }
}

/// The first word of `sql` after comments and opening parentheses, as written: what a
/// statement that is not a query is named by in its error.
fn first_word(sql: &str) -> String {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .unwrap_or_default();
    tokens
        .iter()
        .find(|t| !matches!(t, Token::Whitespace(_) | Token::LParen))
        .map(|t| match t {
            Token::Word(w) => w.value.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn sql_check_accepts_queries_and_rejects_the_rest() {
        assert!(check_sql("SELECT 1 AS value").is_ok());
        assert!(check_sql("  -- budget\n with x AS (select 1) SELECT * FROM x;").is_ok());
        assert!(check_sql("/* c */ (SELECT 1 AS value)").is_ok());
        assert!(check_sql("select ';' as label, 1 as value").is_ok());
        assert!(check_sql("DELETE FROM spans")
            .unwrap_err()
            .contains("DELETE"));
        assert!(check_sql("SELECT 1; DROP TABLE x")
            .unwrap_err()
            .contains("single"));
        assert!(check_sql("  -- only a comment").is_err());
        assert!(check_sql("selection").is_err());
    }

    #[test]
    fn sql_check_names_what_is_not_one_query() {
        assert!(check_sql("VALUES (1)").is_ok());
        assert!(check_sql("SELECT 1 AS value UNION ALL SELECT 2").is_ok());
        assert_eq!(
            check_sql("/* why */ EXPLAIN SELECT 1").unwrap_err(),
            r#"must be a query starting with SELECT or WITH, not "EXPLAIN""#
        );
        assert_eq!(
            check_sql("SELECT 1; SELECT 2").unwrap_err(),
            "must be a single statement, not 2"
        );
        assert!(check_sql("SELEC 1 AS value")
            .unwrap_err()
            .starts_with("is not valid SQL: "));
        assert_eq!(check_sql(";").unwrap_err(), "must not be empty");
    }

    #[test]
    fn ops_compare_and_nan_never_holds() {
        assert!(Op::Gt.holds(2.0, 1.0) && !Op::Gt.holds(1.0, 1.0));
        assert!(Op::Ge.holds(1.0, 1.0) && Op::Le.holds(1.0, 1.0));
        assert!(Op::Lt.holds(0.5, 1.0) && Op::Eq.holds(3.0, 3.0) && Op::Ne.holds(3.0, 4.0));
        for op in [Op::Gt, Op::Ge, Op::Lt, Op::Le, Op::Eq, Op::Ne] {
            assert!(!op.holds(f64::NAN, 1.0), "{op}");
        }
    }

    #[test]
    fn label_names_follow_prometheus() {
        assert!(is_label_name("team") && is_label_name("_x1"));
        assert!(!is_label_name("1x") && !is_label_name("a-b") && !is_label_name(""));
    }
}
