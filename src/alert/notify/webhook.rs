//! Generic webhook body in Alertmanager's webhook format (version "4"), so anything that already
//! consumes Alertmanager (alertmanager-webhook receivers, n8n, custom bridges) works unchanged.
//!
//! ```text
//! { "version": "4", "groupKey", "truncatedAlerts": 0, "status": "firing"|"resolved",
//!   "receiver", "groupLabels", "commonLabels", "commonAnnotations", "externalURL",
//!   "alerts": [{ "status", "labels", "annotations", "startsAt", "endsAt", "generatorURL",
//!                "fingerprint" }] }
//! ```
//!
//! Alertmanager conventions kept on purpose: `endsAt` is Go's zero time
//! `0001-01-01T00:00:00Z` when unset, `generatorURL` is `""` rather than absent, and the group
//! status is `firing` while any alert in it fires.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::{Notification, Origin, Status};

/// Go's `time.Time{}` as Alertmanager serialises it; receivers test for it to mean "unset".
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn timestamp(t: &DateTime<Utc>) -> String {
    // Alertmanager writes RFC 3339 with as many fractional digits as needed, `Z` for UTC.
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Labels (or annotations) that every map has with the same value.
fn common(maps: &[BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let Some((first, rest)) = maps.split_first() else {
        return BTreeMap::new();
    };
    first
        .iter()
        .filter(|(k, v)| rest.iter().all(|m| m.get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Quotes a label value the way Go's `strconv.Quote` does for printable text, which is how
/// Alertmanager writes `groupKey`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `groupKey` as Alertmanager builds it for a root route: `{}:{alertname="rule"}`.
fn group_key(group_labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = group_labels
        .iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    format!("{{}}:{{{}}}", inner.join(", "))
}

/// One entry of `alerts`.
pub fn alert(n: &Notification) -> Value {
    let ends_at = match n.ends_at {
        Some(t) => timestamp(&t),
        None => ZERO_TIME.to_owned(),
    };
    json!({
        "status": n.status.as_str(),
        "labels": n.alert_labels(),
        "annotations": n.annotations,
        "startsAt": timestamp(&n.starts_at),
        "endsAt": ends_at,
        "generatorURL": n.generator_url.as_deref().unwrap_or(""),
        "fingerprint": n.fingerprint,
    })
}

/// Builds the body for `receiver` (the destination name) from one or more notifications.
///
/// Alerts are grouped by rule, like Alertmanager's default `group_by: [alertname]`:
/// `groupLabels` is `{alertname}` when all alerts come from one rule and empty otherwise. An
/// empty slice yields a valid body with no alerts (status `resolved`) instead of panicking.
pub fn payload(receiver: &str, alerts: &[Notification], origin: &Origin) -> Value {
    let labels: Vec<BTreeMap<String, String>> = alerts.iter().map(|n| n.alert_labels()).collect();
    let annotations: Vec<BTreeMap<String, String>> =
        alerts.iter().map(|n| n.annotations.clone()).collect();
    let common_labels = common(&labels);
    let group_labels: BTreeMap<String, String> = common_labels
        .get_key_value("alertname")
        .map(|(k, v)| (k.clone(), v.clone()))
        .into_iter()
        .collect();
    let status = if alerts.iter().any(|n| n.status == Status::Firing) {
        Status::Firing
    } else {
        Status::Resolved
    };
    json!({
        "version": "4",
        "groupKey": group_key(&group_labels),
        "truncatedAlerts": 0,
        "status": status.as_str(),
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": common(&annotations),
        "externalURL": origin.external_url.as_deref().unwrap_or(""),
        "alerts": alerts.iter().map(alert).collect::<Vec<_>>(),
    })
}
