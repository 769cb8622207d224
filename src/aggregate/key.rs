//! What LLM calls are aggregated by: the dimensions of a cell's key.

use std::sync::Arc;

use crate::genai::LlmFacts;
use crate::record::SpanRecord;

/// One dimension of an aggregation key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    Tenant,
    Service,
    Provider,
    Model,
    Operation,
    PromptName,
    PromptVersion,
}

/// Every dimension with its name in the API, the rollup table and
/// Prometheus labels, and the other names it is accepted under.
pub const DIMENSIONS: [(Dimension, &str, &[&str]); 7] = [
    (Dimension::Tenant, "tenant", &[]),
    (Dimension::Service, "service", &["service_name"]),
    (Dimension::Provider, "provider", &[]),
    (Dimension::Model, "model", &[]),
    (Dimension::Operation, "operation", &[]),
    (Dimension::PromptName, "prompt_name", &[]),
    (Dimension::PromptVersion, "prompt_version", &[]),
];

impl Dimension {
    pub fn name(self) -> &'static str {
        DIMENSIONS[self as usize].1
    }

    /// The dimension called `name` (or one of its aliases).
    pub fn parse(name: &str) -> Option<Self> {
        DIMENSIONS
            .iter()
            .find(|(_, n, aliases)| *n == name || aliases.contains(&name))
            .map(|(d, _, _)| *d)
    }

    /// Names accepted by [`Dimension::parse`], for error messages.
    pub fn names() -> String {
        DIMENSIONS
            .iter()
            .map(|(_, n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Value every dimension but the tenant takes in the overflow key, which
/// collects calls once the live-key cap is reached.
pub const OVERFLOW: &str = "_overflow";

/// The values of every dimension; `None` where the span did not say.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggKey(pub [Option<Arc<str>>; 7]);

impl AggKey {
    pub fn of(tenant: &Arc<str>, record: &SpanRecord, llm: &LlmFacts) -> Self {
        let text = |s: Option<&str>| s.map(Arc::from);
        AggKey([
            Some(tenant.clone()),
            text(record.service_name.as_deref()),
            text(llm.provider.as_deref()),
            text(llm.model()),
            text(llm.operation.as_deref()),
            text(record.facts.context.prompt_name.as_deref()),
            text(record.facts.context.prompt_version.as_deref()),
        ])
    }

    pub fn overflow(tenant: &Arc<str>) -> Self {
        let mut values: [Option<Arc<str>>; 7] = Default::default();
        values[0] = Some(tenant.clone());
        for v in values.iter_mut().skip(1) {
            *v = Some(Arc::from(OVERFLOW));
        }
        AggKey(values)
    }

    pub fn get(&self, d: Dimension) -> Option<&str> {
        self.0[d as usize].as_deref()
    }

    pub fn tenant(&self) -> &str {
        self.get(Dimension::Tenant).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_parse() {
        for (d, name, aliases) in DIMENSIONS {
            assert_eq!(Dimension::parse(name), Some(d));
            assert_eq!(d.name(), name);
            for a in aliases {
                assert_eq!(Dimension::parse(a), Some(d));
            }
        }
        assert_eq!(Dimension::parse("colour"), None);
    }
}
