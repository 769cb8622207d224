//! Model name -> price entry, by the normalisation pipeline of
//! genai-attributes.md 6.5.2 (docs/price-book.md, "Matching a model name").

use std::sync::LazyLock;

use regex::Regex;

use super::book::{Entry, PriceBook};

/// Which step of the pipeline found the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Exact,
    Alias,
    Normalised,
    Regex,
    Prefix,
    Undated,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Exact => "exact",
            Step::Alias => "alias",
            Step::Normalised => "exact after stripping routing prefixes",
            Step::Regex => "regex",
            Step::Prefix => "prefix",
            Step::Undated => "exact after stripping a date or version suffix",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Match<'a> {
    pub entry: &'a Entry,
    /// Position of `entry` in the book.
    pub index: usize,
    /// The name as it was matched (after normalisation).
    pub name: String,
    pub step: Step,
}

/// Bedrock cross-region prefixes (`us.anthropic.claude-…`).
static REGION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(us|eu|apac|au|jp|ca|global|us-gov)\.").expect("valid"));
/// Bedrock version suffixes (`…-v1:0`, `…-v2`).
static BEDROCK_VERSION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"-v\d+(:\d+)?$").expect("valid"));
/// Bedrock vendor namespaces (`anthropic.claude-…`, `meta.llama3-…`).
static BEDROCK_VENDOR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(anthropic|amazon|meta|mistral|cohere|ai21|deepseek|qwen|openai|writer)\.")
        .expect("valid")
});
/// Date and version suffixes, tried one at a time.
static SUFFIXES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r"-\d{4}-\d{2}-\d{2}$",
        r"-\d{8}$",
        r"-\d{3}$",
        r"-latest$",
        r"-preview(-\d{2}-\d{2})?$",
        r"-exp(-\d{2}-\d{2})?$",
    ]
    .iter()
    .map(|r| Regex::new(r).expect("valid"))
    .collect()
});

/// Routing and hosting spellings stripped in step 2, most specific first.
fn normalised(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |s: String| {
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    };
    // OpenAI fine-tunes: ft:base-model:org:suffix:id -> base-model.
    let base = match name.strip_prefix("ft:") {
        Some(rest) => rest.split(':').next().unwrap_or(rest).to_owned(),
        None => name.to_owned(),
    };
    // Routing prefixes (openai/, openrouter/anthropic/, models/, accounts/x/models/…).
    let last = base.rsplit('/').next().unwrap_or(&base).to_owned();
    // Vertex ids: claude-sonnet-4-5@20250929, gemini-1.5-pro@latest.
    let (at_dated, at_stripped) = match last.split_once('@') {
        Some((model, "latest")) => (model.to_owned(), model.to_owned()),
        Some((model, date)) => (format!("{model}-{date}"), model.to_owned()),
        None => (last.clone(), last.clone()),
    };
    for candidate in [base.clone(), last, at_dated, at_stripped] {
        // Bedrock: region prefix, version suffix, vendor namespace.
        let no_region = REGION.replace(&candidate, "").into_owned();
        let no_version = BEDROCK_VERSION.replace(&no_region, "").into_owned();
        let no_vendor = BEDROCK_VENDOR.replace(&no_version, "").into_owned();
        push(candidate);
        push(no_region);
        push(no_version);
        push(no_vendor);
    }
    out
}

impl PriceBook {
    /// Best entry for `name`, preferring one priced for `provider`.
    fn pick(&self, indices: &[usize], provider: Option<&str>) -> Option<usize> {
        let hosts = |i: &usize| &self.entries[*i].hosts;
        let hosted = |i: &&usize| provider.is_some_and(|p| hosts(i).iter().any(|h| h == p));
        indices
            .iter()
            .find(hosted)
            .or_else(|| indices.iter().find(|i| hosts(i).is_empty()))
            .or_else(|| indices.first())
            .copied()
    }

    fn exact_match(&self, name: &str, provider: Option<&str>) -> Option<usize> {
        self.exact
            .get(name)
            .and_then(|indices| self.pick(indices, provider))
    }

    fn rule_match(&self, name: &str, provider: Option<&str>) -> Option<(usize, Step)> {
        let regex: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].regex.iter().any(|r| r.is_match(name)))
            .collect();
        if let Some(e) = self.pick(&regex, provider) {
            return Some((e, Step::Regex));
        }
        // Longest prefix wins.
        let mut best: Option<(usize, Vec<usize>)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            for p in &e.prefix {
                if name.starts_with(p.as_str()) {
                    match &mut best {
                        Some((len, v)) if *len == p.len() => v.push(i),
                        Some((len, _)) if *len > p.len() => {}
                        _ => best = Some((p.len(), vec![i])),
                    }
                }
            }
        }
        best.and_then(|(_, v)| self.pick(&v, provider))
            .map(|e| (e, Step::Prefix))
    }

    /// The price entry for a call, trying the response model then the
    /// requested model at each step; `None` when nothing matches.
    pub fn lookup(&self, models: &[&str], provider: Option<&str>) -> Option<Match<'_>> {
        let names: Vec<String> = models
            .iter()
            .map(|m| m.trim().to_lowercase())
            .filter(|m| !m.is_empty())
            .collect();
        let found = |index: usize, name: &str, step| {
            Some(Match {
                entry: &self.entries[index],
                index,
                name: name.to_owned(),
                step,
            })
        };
        // 1. exact, then aliases.
        for n in &names {
            if let Some(e) = self.exact_match(n, provider) {
                return found(e, n, Step::Exact);
            }
        }
        for n in &names {
            let alias = self.aliases.get(n);
            if let Some(i) = alias.and_then(|id| self.entries.iter().position(|e| &e.id == id)) {
                return found(i, n, Step::Alias);
            }
        }
        // 2. routing prefixes stripped: exact, then regex and prefix clauses.
        let stripped: Vec<Vec<String>> = names.iter().map(|n| normalised(n)).collect();
        for variants in &stripped {
            for v in variants {
                if let Some(e) = self.exact_match(v, provider) {
                    return found(e, v, Step::Normalised);
                }
            }
        }
        for variants in &stripped {
            for v in variants {
                if let Some((e, step)) = self.rule_match(v, provider) {
                    return found(e, v, step);
                }
            }
        }
        // 3. date and version suffixes stripped: a dated name only falls back
        // to its undated entry when nothing named the dated one.
        for variants in &stripped {
            for v in variants {
                for suffix in SUFFIXES.iter() {
                    let undated = suffix.replace(v, "");
                    if undated != v.as_str() {
                        if let Some(e) = self.exact_match(&undated, provider) {
                            return found(e, &undated, Step::Undated);
                        }
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_variants() {
        let v = normalised("us.anthropic.claude-sonnet-4-5-20250929-v1:0");
        assert!(
            v.contains(&"claude-sonnet-4-5-20250929".to_owned()),
            "{v:?}"
        );
        let v = normalised("claude-sonnet-4-5@20250929");
        assert!(
            v.contains(&"claude-sonnet-4-5-20250929".to_owned()),
            "{v:?}"
        );
        assert!(v.contains(&"claude-sonnet-4-5".to_owned()), "{v:?}");
        let v = normalised("ft:gpt-4o-mini-2024-07-18:acme::abc123");
        assert!(v.contains(&"gpt-4o-mini-2024-07-18".to_owned()), "{v:?}");
        let v = normalised("openrouter/anthropic/claude-3.5-sonnet");
        assert!(v.contains(&"claude-3.5-sonnet".to_owned()), "{v:?}");
    }
}
