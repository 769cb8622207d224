//! Notifiers: turn one alert state change into the JSON that Slack, PagerDuty or a generic
//! (Alertmanager-compatible) webhook expects, and deliver it with retries.
//!
//! The alert engine owns the lifecycle (pending, firing, resolved); this layer only sees the
//! finished [`Notification`] and a configured [`Destination`]. Payload builders are pure
//! functions so they can be checked field by field without a network; [`deliver::Deliverer`]
//! does the HTTP part (timeouts, backoff with jitter, `Retry-After`, counters) and never logs a
//! secret (Slack webhook paths and PagerDuty routing keys are credentials).

pub mod deliver;
pub mod pagerduty;
pub mod slack;
pub mod webhook;

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use deliver::{
    parse_retry_after, redact, ClientBuildError, Deliverer, DelivererOptions, DeliveryError,
    DeliveryMetrics, DeliveryOutcome, FailureKind, MetricsSnapshot, RetryPolicy, SleepFuture,
    Sleeper, TokioSleeper,
};

/// The PagerDuty Events API v2 endpoint used when a destination does not name another one.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Whether an alert instance started or stopped firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    /// The lowercase word used by Alertmanager and in our own payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rule severity. The four values are exactly PagerDuty's Events API v2 severities, so the
/// mapping to PagerDuty is the identity and nothing is lost on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert instance changing state, as handed to a notifier.
///
/// Not serde-derived on purpose: that would need chrono's `serde` feature, which llmtrace does
/// not enable; persisted alert state has its own shape in the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Rule name; becomes the `alertname` label.
    pub rule: String,
    /// Stable identity of the instance (see [`fingerprint`]); PagerDuty's `dedup_key`.
    pub fingerprint: String,
    pub status: Status,
    pub severity: Severity,
    /// Instance labels: the rule's static labels plus the group-by values. `alertname` and
    /// `severity` are added by [`Notification::alert_labels`] and need not be here.
    pub labels: BTreeMap<String, String>,
    /// Rendered annotations (`summary`, `description`, `runbook_url`, ...).
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
    pub threshold: f64,
    pub starts_at: DateTime<Utc>,
    /// Set when the instance resolved.
    pub ends_at: Option<DateTime<Utc>>,
    /// Link back to the query that produced the value.
    pub generator_url: Option<String>,
}

impl Notification {
    /// A firing notification whose fingerprint is computed from `labels` plus
    /// `alertname = rule` (see [`Notification::identity_labels`]).
    pub fn firing(
        rule: impl Into<String>,
        severity: Severity,
        labels: BTreeMap<String, String>,
        value: f64,
        threshold: f64,
        starts_at: DateTime<Utc>,
    ) -> Self {
        let rule = rule.into();
        let fingerprint = fingerprint(&identity_labels(&rule, &labels));
        Notification {
            rule,
            fingerprint,
            status: Status::Firing,
            severity,
            labels,
            annotations: BTreeMap::new(),
            value,
            threshold,
            starts_at,
            ends_at: None,
            generator_url: None,
        }
    }

    /// The same instance, resolved at `ends_at` (the fingerprint is kept, so PagerDuty closes the
    /// incident the trigger opened).
    pub fn resolved(mut self, ends_at: DateTime<Utc>) -> Self {
        self.status = Status::Resolved;
        self.ends_at = Some(ends_at);
        self
    }

    /// The labels that identify the instance: its labels plus `alertname`. Severity is left out
    /// on purpose: changing a rule's severity must not orphan an open PagerDuty incident.
    pub fn identity_labels(&self) -> BTreeMap<String, String> {
        identity_labels(&self.rule, &self.labels)
    }

    /// Labels as an Alertmanager receiver expects them: instance labels plus `alertname` (the
    /// rule name) and `severity`. Ours win over same-named instance labels, as in Prometheus.
    pub fn alert_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.identity_labels();
        labels.insert("severity".to_owned(), self.severity.as_str().to_owned());
        labels
    }

    /// Instance labels worth showing to a person (not `alertname`/`severity`, which every
    /// message already shows in its title).
    pub(crate) fn display_labels(&self) -> impl Iterator<Item = (&String, &String)> {
        self.labels
            .iter()
            .filter(|(k, _)| k.as_str() != "alertname" && k.as_str() != "severity")
    }

    /// The one-line summary: the rendered `summary` annotation when the rule has a non-blank
    /// one, else a generated line naming the rule, the instance labels, value and threshold.
    pub fn summary(&self) -> String {
        if let Some(s) = self.annotations.get("summary") {
            if !s.trim().is_empty() {
                return s.clone();
            }
        }
        let labels: Vec<String> = self
            .display_labels()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let scope = if labels.is_empty() {
            String::new()
        } else {
            format!(" for {}", labels.join(", "))
        };
        let verb = match self.status {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        };
        format!(
            "{} {verb}{scope}: value {} (threshold {})",
            self.rule,
            format_value(self.value),
            format_value(self.threshold)
        )
    }
}

fn identity_labels(rule: &str, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = labels.clone();
    out.insert("alertname".to_owned(), rule.to_owned());
    out
}

/// Stable fingerprint of a label set: 16 lowercase hex digits.
///
/// Algorithm (identical to Prometheus' `model.LabelSet.Fingerprint`, so an instance gets the
/// same id here as it would in Prometheus/Alertmanager): FNV-1a 64-bit, offset basis
/// 0xcbf29ce484222325, prime 0x100000001b3, over the labels sorted by name, feeding for each
/// label the name bytes, a 0xFF byte, the value bytes, a 0xFF byte. 0xFF never occurs in UTF-8,
/// so `{a="b\xffc"}`-style collisions are impossible. The empty set hashes to the offset basis.
///
/// It must not use std's `DefaultHasher`/`RandomState`: those are seeded per process or may
/// change between Rust releases, and this value is persisted and sent to PagerDuty as the
/// `dedup_key`, so it has to survive restarts and upgrades.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    const SEP: u8 = 0xff;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    // BTreeMap iterates in byte order of the keys, which is Go's sort.Strings order too.
    for (k, v) in labels {
        add(k.as_bytes());
        add(&[SEP]);
        add(v.as_bytes());
        add(&[SEP]);
    }
    format!("{h:016x}")
}

/// Who is sending: shown in PagerDuty (`source`, `client_url`) and the webhook `externalURL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// PagerDuty `payload.source`: "the unique location of the affected system"; by default
    /// `llmtrace`, a deployment would set its host or cluster name.
    pub source: String,
    /// Base URL of this llmtrace server (e.g. `http://llmtrace:8080`), if known.
    pub external_url: Option<String>,
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            source: "llmtrace".to_owned(),
            external_url: None,
        }
    }
}

/// A configured place to send notifications (`[[alerts.destinations]]` in the config file).
///
/// `Debug` is hand-written so that a config dump or a `{:?}` in a log never shows the Slack
/// webhook path, the PagerDuty routing key or webhook header values.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Destination {
    /// Slack incoming webhook; the whole URL is the credential.
    Slack { name: String, url: String },
    /// PagerDuty Events API v2.
    #[serde(rename = "pagerduty")]
    PagerDuty {
        name: String,
        routing_key: String,
        /// Override for a proxy or a test receiver.
        #[serde(default = "default_pagerduty_url")]
        url: String,
    },
    /// Generic webhook receiving the Alertmanager webhook JSON (version 4).
    Webhook {
        name: String,
        url: String,
        /// Extra request headers (e.g. `Authorization`); values are treated as secrets.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

fn default_pagerduty_url() -> String {
    PAGERDUTY_EVENTS_URL.to_owned()
}

/// A destination entry that cannot be used; names the destination and the offending key so a
/// config error message can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alert destination {destination:?}: invalid `{key}`: {reason}")]
pub struct DestinationError {
    pub destination: String,
    pub key: &'static str,
    pub reason: String,
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Slack { name, .. }
            | Destination::PagerDuty { name, .. }
            | Destination::Webhook { name, .. } => name,
        }
    }

    /// `slack`, `pagerduty` or `webhook`, as written in the config file.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Slack { .. } => "slack",
            Destination::PagerDuty { .. } => "pagerduty",
            Destination::Webhook { .. } => "webhook",
        }
    }

    /// The URL requests go to (a secret for Slack: log it only through [`redact`]).
    pub fn url(&self) -> &str {
        match self {
            Destination::Slack { url, .. }
            | Destination::PagerDuty { url, .. }
            | Destination::Webhook { url, .. } => url,
        }
    }

    /// Checks what can be checked without sending anything: a name, an http(s) URL, a routing
    /// key, valid header names and values. Called at config load so mistakes surface at start
    /// (exit code 2) instead of at the first alert.
    pub fn validate(&self) -> Result<(), DestinationError> {
        let err = |key: &'static str, reason: String| DestinationError {
            destination: self.name().to_owned(),
            key,
            reason,
        };
        if self.name().trim().is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        deliver::check_url(self.url()).map_err(|reason| err("url", reason))?;
        match self {
            Destination::PagerDuty { routing_key, .. } if routing_key.trim().is_empty() => {
                return Err(err("routing_key", "must not be empty".into()));
            }
            Destination::Webhook { headers, .. } => {
                deliver::header_map(headers).map_err(|reason| err("headers", reason))?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Slack { name, url } => f
                .debug_struct("Slack")
                .field("name", name)
                .field("url", &redact(url))
                .finish(),
            Destination::PagerDuty { name, url, .. } => f
                .debug_struct("PagerDuty")
                .field("name", name)
                .field("routing_key", &"<redacted>")
                .field("url", &redact(url))
                .finish(),
            Destination::Webhook { name, url, headers } => {
                let names: Vec<&String> = headers.keys().collect();
                f.debug_struct("Webhook")
                    .field("name", name)
                    .field("url", &redact(url))
                    .field("headers", &names)
                    .finish()
            }
        }
    }
}

/// The JSON body `destination` expects for one notification.
pub fn payload_for(
    destination: &Destination,
    notification: &Notification,
    origin: &Origin,
) -> serde_json::Value {
    match destination {
        Destination::Slack { .. } => slack::payload(notification),
        Destination::PagerDuty { routing_key, .. } => {
            pagerduty::payload(notification, routing_key, origin)
        }
        Destination::Webhook { name, .. } => {
            webhook::payload(name, std::slice::from_ref(notification), origin)
        }
    }
}

/// Human formatting of a metric value: integers without decimals, otherwise 3 significant
/// digits for small numbers (costs like 0.000123 stay readable) and 3 decimals above 1.
/// Never panics on NaN or infinities (they print as `NaN`, `inf`).
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let abs = v.abs();
    let decimals = if abs >= 1.0 {
        3
    } else {
        // 3 significant digits: 0.0123 -> 4 decimals, 0.000123 -> 6; capped for tiny values.
        let lead = (-abs.log10()).floor() as i64;
        (lead + 3).clamp(3, 12) as usize
    };
    let s = format!("{v:.decimals$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" || s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// A JSON number for finite values; non-finite ones become strings because JSON has no NaN and
/// serde_json would silently turn them into `null`.
pub(crate) fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(v.to_string()))
}

/// Truncates to at most `max` characters (Slack and PagerDuty count characters, not bytes),
/// ending with `…` when something was cut. Always cuts on a char boundary.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}
