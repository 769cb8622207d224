//! Slack incoming-webhook payload (Block Kit).
//!
//! Shape: a top-level `text` (the fallback Slack shows in push notifications and to clients
//! that cannot render blocks), `blocks` (header, section with fields, context, optional
//! buttons) and one legacy attachment whose only job is the coloured bar (`color` by severity,
//! green when resolved); Block Kit itself has no colour.
//!
//! Slack rejects the whole message (HTTP 400 `invalid_blocks`) when a block breaks a limit, and
//! a rejected alert is a lost alert, so every limit below is enforced by truncating, never by
//! failing: header ≤ 150 chars, section text ≤ 3000, ≤ 10 fields of ≤ 2000 chars, ≤ 10 context
//! elements, button text ≤ 75 and button URL ≤ 3000 (a URL cannot be shortened, so an unusable
//! one drops its button instead).

use serde_json::{json, Value};

use super::{truncate_chars, Notification, Status};

pub const HEADER_MAX_CHARS: usize = 150;
pub const SECTION_TEXT_MAX_CHARS: usize = 3000;
pub const FIELD_TEXT_MAX_CHARS: usize = 2000;
pub const MAX_FIELDS: usize = 10;
pub const MAX_CONTEXT_ELEMENTS: usize = 10;
pub const BUTTON_TEXT_MAX_CHARS: usize = 75;
pub const BUTTON_URL_MAX_CHARS: usize = 3000;
/// Fallback `text`: Slack accepts far more, but a notification preview longer than this is noise.
pub const FALLBACK_TEXT_MAX_CHARS: usize = 3000;

pub const COLOR_CRITICAL: &str = "#d00000";
pub const COLOR_ERROR: &str = "#e01e5a";
pub const COLOR_WARNING: &str = "#ecb22e";
pub const COLOR_INFO: &str = "#439fe0";
pub const COLOR_RESOLVED: &str = "#2eb67d";

/// Attachment bar colour: by severity while firing, green once resolved.
pub fn color(n: &Notification) -> &'static str {
    use super::Severity::*;
    match (n.status, n.severity) {
        (Status::Resolved, _) => COLOR_RESOLVED,
        (Status::Firing, Critical) => COLOR_CRITICAL,
        (Status::Firing, Error) => COLOR_ERROR,
        (Status::Firing, Warning) => COLOR_WARNING,
        (Status::Firing, Info) => COLOR_INFO,
    }
}

/// Escapes the three characters Slack's mrkdwn treats as control characters (`&`, `<`, `>`), so
/// label values cannot inject links or mentions (`<!channel>`).
pub fn escape_mrkdwn(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// Truncates already-escaped mrkdwn without leaving half an entity (`&am…`) behind.
fn truncate_mrkdwn(s: &str, max: usize) -> String {
    let t = truncate_chars(s, max);
    if t == s {
        return t;
    }
    let body = t.strip_suffix('…').unwrap_or(&t);
    match body.rfind('&') {
        Some(amp) if !body[amp..].contains(';') => format!("{}…", &body[..amp]),
        _ => t,
    }
}

fn mrkdwn(text: String) -> Value {
    json!({ "type": "mrkdwn", "text": text })
}

/// Accepts only absolute http(s) URLs that fit Slack's button limit.
fn usable_url(url: &str) -> bool {
    url.chars().count() <= BUTTON_URL_MAX_CHARS
        && reqwest::Url::parse(url)
            .map(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .unwrap_or(false)
}

fn button(text: &str, url: &str, primary: bool) -> Value {
    let mut b = json!({
        "type": "button",
        "text": { "type": "plain_text", "text": truncate_chars(text, BUTTON_TEXT_MAX_CHARS) },
        "url": url,
    });
    if primary {
        b["style"] = json!("primary");
    }
    b
}

/// The fallback `text`: status, rule, severity and the summary on one line.
pub fn fallback_text(n: &Notification) -> String {
    let line = format!(
        "[{}] {} ({}): {}",
        n.status.as_str().to_uppercase(),
        n.rule,
        n.severity,
        n.summary()
    );
    truncate_mrkdwn(&escape_mrkdwn(&line), FALLBACK_TEXT_MAX_CHARS)
}

/// Builds the JSON body to POST to a Slack incoming webhook.
pub fn payload(n: &Notification) -> Value {
    let (emoji, word) = match n.status {
        Status::Firing => (":rotating_light:", "FIRING"),
        Status::Resolved => (":white_check_mark:", "RESOLVED"),
    };
    // Header is plain_text: no escaping; `emoji` turns the shortcode into the icon.
    let header = truncate_chars(&format!("{emoji} {word}: {}", n.rule), HEADER_MAX_CHARS);

    let mut text = format!("*{}*", escape_mrkdwn(&n.summary()));
    if let Some(d) = n
        .annotations
        .get("description")
        .filter(|d| !d.trim().is_empty())
    {
        text.push('\n');
        text.push_str(&escape_mrkdwn(d));
    }
    let text = truncate_mrkdwn(&text, SECTION_TEXT_MAX_CHARS);

    let mut fields = vec![
        format!("*Severity*\n{}", n.severity),
        format!(
            "*Value*\n{} (threshold {})",
            super::format_value(n.value),
            super::format_value(n.threshold)
        ),
    ];
    let labels: Vec<_> = n.display_labels().collect();
    let room = MAX_FIELDS - fields.len();
    // When the labels do not fit, the last field lists the names of the ones left out, so the
    // message still says they exist.
    let (shown, hidden) = if labels.len() > room {
        labels.split_at(room - 1)
    } else {
        (&labels[..], &[][..])
    };
    for (k, v) in shown {
        fields.push(format!("*{}*\n{}", escape_mrkdwn(k), escape_mrkdwn(v)));
    }
    if !hidden.is_empty() {
        let names: Vec<String> = hidden.iter().map(|(k, _)| escape_mrkdwn(k)).collect();
        fields.push(format!(
            "*+{} more labels*\n{}",
            hidden.len(),
            names.join(", ")
        ));
    }
    let fields: Vec<Value> = fields
        .into_iter()
        .map(|f| mrkdwn(truncate_mrkdwn(&f, FIELD_TEXT_MAX_CHARS)))
        .collect();

    let mut context = vec![format!(
        "Started {}",
        n.starts_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )];
    if let Some(end) = n.ends_at.filter(|_| n.status == Status::Resolved) {
        context.push(format!(
            "Resolved {}",
            end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    context.push(format!("Fingerprint `{}`", escape_mrkdwn(&n.fingerprint)));
    let context: Vec<Value> = context
        .into_iter()
        .take(MAX_CONTEXT_ELEMENTS)
        .map(|c| mrkdwn(truncate_mrkdwn(&c, SECTION_TEXT_MAX_CHARS)))
        .collect();

    let mut blocks = vec![
        json!({
            "type": "header",
            "text": { "type": "plain_text", "text": header, "emoji": true },
        }),
        json!({ "type": "section", "text": mrkdwn(text), "fields": fields }),
        json!({ "type": "context", "elements": context }),
    ];

    let mut buttons = Vec::new();
    match n.generator_url.as_deref() {
        Some(url) if usable_url(url) => buttons.push(button("View query", url, true)),
        Some(_) => tracing::warn!(
            rule = %n.rule,
            "generator_url is not an http(s) URL within Slack's limit; sending without the button"
        ),
        None => {}
    }
    if let Some(url) = n.annotations.get("runbook_url") {
        if usable_url(url) {
            buttons.push(button("Runbook", url, false));
        }
    }
    if !buttons.is_empty() {
        blocks.push(json!({ "type": "actions", "elements": buttons }));
    }

    let fallback = fallback_text(n);
    json!({
        "text": fallback,
        "blocks": blocks,
        "attachments": [{
            "color": color(n),
            "fallback": fallback,
            "text": format!(
                "*{}* · {} · value {} · threshold {}",
                n.status.as_str().to_uppercase(),
                n.severity,
                super::format_value(n.value),
                super::format_value(n.threshold)
            ),
            "mrkdwn_in": ["text"],
        }],
    })
}
