//! PagerDuty Events API v2 payloads (`POST https://events.pagerduty.com/v2/enqueue`).
//!
//! - trigger: `routing_key`, `event_action: "trigger"`, `dedup_key`, `payload { summary (required,
//!   ≤ 1024 chars), source (required), severity (required: critical|error|warning|info),
//!   timestamp, component?, group?, class?, custom_details }`, `links`, `client`, `client_url`.
//! - resolve: only `routing_key`, `event_action: "resolve"`, `dedup_key`, as the API documents;
//!   PagerDuty matches it to the open alert by `dedup_key` (and the same routing key).
//!
//! `dedup_key` is the instance fingerprint, so a repeated trigger updates the open alert instead
//! of paging again, and the resolve closes exactly the alert the trigger opened, across restarts.

use serde_json::{json, Map, Value};

use super::{json_number, truncate_chars, Notification, Origin, Status};

pub const SUMMARY_MAX_CHARS: usize = 1024;
pub const DEDUP_KEY_MAX_CHARS: usize = 255;
/// `client` shown by PagerDuty as the monitoring tool that sent the event.
pub const CLIENT: &str = "llmtrace";

/// `component`, `group` and `class` are optional PagerDuty fields used for grouping and
/// filtering. They are taken from instance labels (then annotations) of the same name when a
/// rule sets them; `class` falls back to the rule name, which is what "type of event" means here.
fn optional_field(n: &Notification, key: &str) -> Option<String> {
    n.labels
        .get(key)
        .or_else(|| n.annotations.get(key))
        .filter(|v| !v.trim().is_empty())
        .cloned()
}

/// Builds the Events API v2 body for `n`, sent with `routing_key`.
pub fn payload(n: &Notification, routing_key: &str, origin: &Origin) -> Value {
    let dedup_key = truncate_chars(&n.fingerprint, DEDUP_KEY_MAX_CHARS);
    if n.status == Status::Resolved {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }

    let mut details = Map::new();
    details.insert("rule".into(), json!(n.rule));
    details.insert("labels".into(), json!(n.alert_labels()));
    details.insert("annotations".into(), json!(n.annotations));
    details.insert("value".into(), json_number(n.value));
    details.insert("threshold".into(), json_number(n.threshold));
    details.insert("fingerprint".into(), json!(n.fingerprint));

    let source = if origin.source.trim().is_empty() {
        CLIENT.to_owned()
    } else {
        origin.source.clone()
    };
    let mut body = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": truncate_chars(&n.summary(), SUMMARY_MAX_CHARS),
            "source": source,
            "severity": n.severity.as_str(),
            "timestamp": n.starts_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "class": optional_field(n, "class").unwrap_or_else(|| n.rule.clone()),
            "custom_details": details,
        },
        "client": CLIENT,
    });
    for key in ["component", "group"] {
        if let Some(v) = optional_field(n, key) {
            body["payload"][key] = json!(v);
        }
    }
    if let Some(url) = origin.external_url.as_deref().filter(|u| !u.is_empty()) {
        body["client_url"] = json!(url);
    }

    let mut links = Vec::new();
    if let Some(url) = n.generator_url.as_deref().filter(|u| !u.is_empty()) {
        links.push(json!({ "href": url, "text": "View query" }));
    }
    if let Some(url) = n.annotations.get("runbook_url").filter(|u| !u.is_empty()) {
        links.push(json!({ "href": url, "text": "Runbook" }));
    }
    if !links.is_empty() {
        body["links"] = Value::Array(links);
    }
    body
}
