//! `{{name}}` templates for annotations.
//!
//! Syntax: `{{name}}`, with optional spaces inside the braces (`{{ model }}`). There is no
//! escaping, no filters and no logic: annotations are short human sentences, and a template
//! language would be one more thing to get wrong at 3 a.m.
//!
//! Names resolve, later entries winning: the rule's `filter` values, the instance labels
//! (group-by values or SQL label columns, then the rule's static `labels`), then `rule`,
//! `severity`, `value` and `threshold`. Numbers are printed with
//! [`notify::format_value`](super::notify::format_value) (`0.0734`, `1234.5`, `42`; never
//! scientific notation), the same formatting the Slack message uses for its Value field.
//!
//! **Unknown names are left as written** (`{{modle}}` stays `{{modle}}`), so a typo shows up in
//! the message instead of silently vanishing. For metric rules, where the label names are known
//! up front, validation rejects unknown names before the engine starts.

use std::collections::BTreeMap;

/// A template that cannot be rendered reliably.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{{{` at byte {0}")]
    Unclosed(usize),
    #[error("empty `{{{{}}}}` at byte {0}")]
    EmptyName(usize),
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part<'a> {
    Text(&'a str),
    /// The trimmed name and the raw `{{ … }}` text (kept for unknown names).
    Var(&'a str, &'a str),
}

fn parse(template: &str) -> Result<Vec<Part<'_>>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = template;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or(TemplateError::Unclosed(offset + open))?;
        let inner = &after[..close];
        // `{{a {{b}}`: the first one was never closed.
        if inner.contains("{{") {
            return Err(TemplateError::Unclosed(offset + open));
        }
        let name = inner.trim();
        if name.is_empty() {
            return Err(TemplateError::EmptyName(offset + open));
        }
        let end = open + 2 + close + 2;
        parts.push(Part::Var(name, &rest[open..end]));
        offset += end;
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

/// Checks the syntax and returns the variable names used, in order of appearance.
pub fn variables(template: &str) -> Result<Vec<String>, TemplateError> {
    Ok(parse(template)?
        .into_iter()
        .filter_map(|p| match p {
            Part::Var(name, _) => Some(name.to_owned()),
            Part::Text(_) => None,
        })
        .collect())
}

/// Renders `template` with `vars`. Unknown names are left as written; a template with a syntax
/// error (which validation rejects before the engine starts) is returned unchanged rather than
/// half-rendered.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> String {
    let Ok(parts) = parse(template) else {
        return template.to_owned();
    };
    let mut out = String::with_capacity(template.len());
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Var(name, raw) => match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(raw),
            },
        }
    }
    out
}

/// Names every template can use whatever the rule (besides labels and filter values).
pub const BUILTIN_VARIABLES: &[&str] = &["rule", "severity", "value", "threshold"];

/// The variables of one instance, in the precedence documented at the top of this module.
pub fn context(
    filter: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    rule: &str,
    severity: &str,
    value: f64,
    threshold: f64,
) -> BTreeMap<String, String> {
    let mut vars = filter.clone();
    vars.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars.insert("rule".to_owned(), rule.to_owned());
    vars.insert("severity".to_owned(), severity.to_owned());
    vars.insert("value".to_owned(), super::notify::format_value(value));
    vars.insert(
        "threshold".to_owned(),
        super::notify::format_value(threshold),
    );
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitutes_names_with_optional_spaces() {
        let v = vars(&[("model", "gpt-4o"), ("value", "0.0734")]);
        assert_eq!(
            render("Error rate of {{model}} is {{ value }}", &v),
            "Error rate of gpt-4o is 0.0734"
        );
        assert_eq!(render("{{model}}{{model}}", &v), "gpt-4ogpt-4o");
        assert_eq!(render("no vars", &v), "no vars");
        assert_eq!(render("", &v), "");
    }

    #[test]
    fn unknown_names_stay_as_written() {
        let v = vars(&[("model", "m")]);
        assert_eq!(render("{{modle}} / {{ model }}", &v), "{{modle}} / m");
    }

    #[test]
    fn syntax_errors_are_reported_with_position() {
        assert_eq!(variables("a {{b"), Err(TemplateError::Unclosed(2)));
        assert_eq!(variables("{{a {{b}}"), Err(TemplateError::Unclosed(0)));
        assert_eq!(variables("x {{ }}"), Err(TemplateError::EmptyName(2)));
        assert_eq!(
            variables("{{a}} and {{ b }} }} {").unwrap(),
            vec!["a".to_owned(), "b".to_owned()]
        );
        // A broken template renders unchanged, never half-substituted.
        assert_eq!(render("{{a}} {{b", &vars(&[("a", "x")])), "{{a}} {{b");
    }

    #[test]
    fn context_formats_numbers_and_applies_precedence() {
        let filter = vars(&[("provider", "openai"), ("model", "from-filter")]);
        let labels = vars(&[("model", "gpt-4o"), ("team", "ml")]);
        let c = context(&filter, &labels, "r", "critical", 0.0734, 1234.5);
        assert_eq!(c["provider"], "openai");
        assert_eq!(c["model"], "gpt-4o");
        assert_eq!(c["value"], "0.0734");
        assert_eq!(c["threshold"], "1234.5");
        assert_eq!(c["rule"], "r");
        assert_eq!(c["severity"], "critical");
        let big = context(&filter, &labels, "r", "info", 123456789.0, 1e-7);
        assert_eq!(big["value"], "123456789");
        assert!(!big["threshold"].contains('e'), "{}", big["threshold"]);
    }
}
