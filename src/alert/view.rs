//! How alert instances are shown: by the API (`GET /api/v1/alerts`) and by `alerts check`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::notify;
use super::state::{AlertState, Instance};

/// One instance as shown by the API and `alerts check`.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    pub rule: String,
    pub fingerprint: String,
    pub state: AlertState,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
    pub threshold: f64,
    pub severity: notify::Severity,
    /// When it entered its current state.
    pub since: DateTime<Utc>,
    /// Start of the current episode (became pending).
    pub active_at: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub last_notified: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
}

impl From<&Instance> for InstanceView {
    fn from(i: &Instance) -> Self {
        InstanceView {
            rule: i.rule.clone(),
            fingerprint: i.fingerprint.clone(),
            state: i.state,
            labels: i.labels.clone(),
            annotations: i.annotations.clone(),
            value: i.value,
            threshold: i.threshold,
            severity: i.severity,
            since: i.since(),
            active_at: i.active_since,
            fired_at: i.fired_at,
            last_notified: i.last_notified_at,
            resolved_at: i.resolved_at,
        }
    }
}

fn ts(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn opt_ts(t: Option<DateTime<Utc>>) -> Value {
    t.map(ts).unwrap_or(Value::Null)
}

fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// The body of `GET /api/v1/alerts`:
/// `{"alerts":[{"rule","fingerprint","state","labels","annotations","value","threshold",
/// "since","last_notified","severity","active_at","fired_at","resolved_at"}]}`.
/// `state` is `pending`, `firing` or `resolved`; times are RFC 3339 (UTC, milliseconds) or
/// null; `since` is when the instance entered its current state; a non-finite value is null.
pub fn alerts_json(views: &[InstanceView]) -> Value {
    let alerts: Vec<Value> = views
        .iter()
        .map(|v| {
            json!({
                "rule": v.rule,
                "fingerprint": v.fingerprint,
                "state": v.state.as_str(),
                "labels": v.labels,
                "annotations": v.annotations,
                "value": number(v.value),
                "threshold": number(v.threshold),
                "since": ts(v.since),
                "last_notified": opt_ts(v.last_notified),
                "severity": v.severity.as_str(),
                "active_at": ts(v.active_at),
                "fired_at": opt_ts(v.fired_at),
                "resolved_at": opt_ts(v.resolved_at),
            })
        })
        .collect();
    json!({ "alerts": alerts })
}
