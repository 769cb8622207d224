//! The price book: its file format (docs/price-book.md), validation, and the
//! compiled form that matching and cost arithmetic use.

use std::collections::HashMap;
use std::str::FromStr;

use regex::Regex;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::PricingError;

/// USD per 1M tokens of each token kind. `None` falls back as the cost
/// formula says (cache prices to input, reasoning to output).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    pub input: Decimal,
    pub output: Decimal,
    pub cache_read: Option<Decimal>,
    pub cache_write: Option<Decimal>,
    pub cache_write_1h: Option<Decimal>,
    pub reasoning: Option<Decimal>,
}

/// Rates that replace the base ones above an input size.
#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    pub input_tokens_gt: u64,
    pub rates: Rates,
}

/// One price row: from a date, for a service tier.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceRow {
    /// First day (UTC, Unix seconds at midnight) the row applies; `None` = always.
    pub effective_from: Option<i64>,
    pub effective_from_text: Option<String>,
    pub service_tier: String,
    pub rates: Rates,
    /// Long-context tiers, ascending by threshold.
    pub tiers: Vec<Tier>,
}

/// A priced model.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    pub vendor: String,
    /// Providers this price applies to; empty = any.
    pub hosts: Vec<String>,
    pub operation: String,
    pub checked: Option<String>,
    pub source: Option<String>,
    pub exact: Vec<String>,
    pub prefix: Vec<String>,
    pub regex: Vec<Regex>,
    pub prices: Vec<PriceRow>,
    /// Which book the entry came from (`default`, a file path).
    pub origin: String,
}

/// A compiled price book, possibly layered from several files.
#[derive(Clone, Debug, Default)]
pub struct PriceBook {
    /// Version label of each layer, joined: recorded with every priced span.
    pub version: String,
    pub entries: Vec<Entry>,
    /// Lower-cased exact name -> entry indices (several hosts may share a name).
    pub(crate) exact: HashMap<String, Vec<usize>>,
    /// Alias name (lower-cased) -> entry id.
    pub(crate) aliases: HashMap<String, String>,
    /// Lookups already made: model names are few, spans are many.
    pub(crate) memo: Memo,
}

/// (response model, request model, provider) -> entry index, remembered
/// across lookups, keyed by hash so a hit allocates nothing. Bounded: cleared
/// when full.
#[derive(Default)]
pub(crate) struct Memo(
    std::sync::RwLock<HashMap<u64, (MemoKey, Option<usize>)>>,
    ahash::RandomState,
);

pub(crate) type MemoKey = (Option<String>, Option<String>, Option<String>);

/// Distinct lookups remembered before the memo starts over.
const MEMO_ENTRIES: usize = 10_000;

impl Memo {
    pub(crate) fn get(
        &self,
        key: (Option<&str>, Option<&str>, Option<&str>),
    ) -> Option<Option<usize>> {
        let hash = self.1.hash_one(key);
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        let (stored, value) = map.get(&hash)?;
        let same = (
            stored.0.as_deref(),
            stored.1.as_deref(),
            stored.2.as_deref(),
        ) == key;
        same.then_some(*value)
    }

    pub(crate) fn put(
        &self,
        key: (Option<&str>, Option<&str>, Option<&str>),
        value: Option<usize>,
    ) {
        let hash = self.1.hash_one(key);
        let owned = (
            key.0.map(str::to_owned),
            key.1.map(str::to_owned),
            key.2.map(str::to_owned),
        );
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MEMO_ENTRIES {
            map.clear();
        }
        map.insert(hash, (owned, value));
    }
}

impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

// ---- file format ---------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBook {
    schema: String,
    version: String,
    #[serde(default)]
    models: Vec<FileModel>,
    #[serde(default)]
    aliases: Vec<FileAlias>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    id: String,
    vendor: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    operation: Option<String>,
    checked: Option<String>,
    source: Option<String>,
    #[serde(rename = "match", default)]
    matching: FileMatch,
    prices: Vec<FilePrices>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileMatch {
    #[serde(default)]
    exact: Vec<String>,
    #[serde(default)]
    prefix: Vec<String>,
    #[serde(default)]
    regex: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRates {
    input: Option<String>,
    output: Option<String>,
    cache_read: Option<String>,
    cache_write: Option<String>,
    cache_write_1h: Option<String>,
    reasoning: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePrices {
    effective_from: Option<String>,
    service_tier: Option<String>,
    #[serde(flatten)]
    rates: FileRates,
    #[serde(default)]
    tiers: Vec<FileTier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTier {
    input_tokens_gt: u64,
    #[serde(flatten)]
    rates: FileRates,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAlias {
    exact: Vec<String>,
    model: String,
}

pub const SCHEMA: &str = "llmtrace-prices/v1";

fn decimal(where_: &str, key: &str, v: &Option<String>) -> Result<Option<Decimal>, PricingError> {
    match v {
        None => Ok(None),
        Some(s) => {
            let d = Decimal::from_str(s.trim()).map_err(|_| PricingError::Invalid {
                at: where_.to_owned(),
                message: format!("`{key}` = {s:?} is not a decimal number"),
            })?;
            if d.is_sign_negative() {
                return Err(PricingError::Invalid {
                    at: where_.to_owned(),
                    message: format!("`{key}` = {s:?} is negative"),
                });
            }
            Ok(Some(d))
        }
    }
}

fn rates(at: &str, r: &FileRates, base: Option<&Rates>) -> Result<Rates, PricingError> {
    let required = |key: &str, v: Option<Decimal>, fallback: Option<Decimal>| {
        v.or(fallback).ok_or_else(|| PricingError::Invalid {
            at: at.to_owned(),
            message: format!("`{key}` price is missing"),
        })
    };
    let input = decimal(at, "input", &r.input)?;
    let output = decimal(at, "output", &r.output)?;
    Ok(Rates {
        input: required("input", input, base.map(|b| b.input))?,
        output: required("output", output, base.map(|b| b.output))?,
        cache_read: decimal(at, "cache_read", &r.cache_read)?.or(base.and_then(|b| b.cache_read)),
        cache_write: decimal(at, "cache_write", &r.cache_write)?
            .or(base.and_then(|b| b.cache_write)),
        cache_write_1h: decimal(at, "cache_write_1h", &r.cache_write_1h)?
            .or(base.and_then(|b| b.cache_write_1h)),
        reasoning: decimal(at, "reasoning", &r.reasoning)?.or(base.and_then(|b| b.reasoning)),
    })
}

/// Unix seconds of a `YYYY-MM-DD` date at 00:00 UTC.
fn day(at: &str, text: &str) -> Result<i64, PricingError> {
    chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp()
        })
        .map_err(|_| PricingError::Invalid {
            at: at.to_owned(),
            message: format!("date {text:?} is not YYYY-MM-DD"),
        })
}

impl PriceBook {
    /// Parses a book in llmtrace's TOML format.
    pub fn from_toml(text: &str, origin: &str) -> Result<PriceBook, PricingError> {
        let file: FileBook = toml::from_str(text).map_err(|e| PricingError::Invalid {
            at: origin.to_owned(),
            message: e.to_string(),
        })?;
        if file.schema != SCHEMA {
            return Err(PricingError::Invalid {
                at: origin.to_owned(),
                message: format!("schema is {:?}, expected {SCHEMA:?}", file.schema),
            });
        }
        let mut entries = Vec::with_capacity(file.models.len());
        for m in file.models {
            let at = format!("{origin}: model {}", m.id);
            if m.prices.is_empty() {
                return Err(PricingError::Invalid {
                    at,
                    message: "has no [[models.prices]]".into(),
                });
            }
            let mut prices = Vec::new();
            for p in &m.prices {
                let base = rates(&at, &p.rates, None)?;
                let mut tiers = Vec::new();
                for t in &p.tiers {
                    tiers.push(Tier {
                        input_tokens_gt: t.input_tokens_gt,
                        rates: rates(&at, &t.rates, Some(&base))?,
                    });
                }
                tiers.sort_by_key(|t| t.input_tokens_gt);
                prices.push(PriceRow {
                    effective_from: p
                        .effective_from
                        .as_deref()
                        .map(|d| day(&at, d))
                        .transpose()?,
                    effective_from_text: p.effective_from.clone(),
                    service_tier: p.service_tier.clone().unwrap_or_else(|| "default".into()),
                    rates: base,
                    tiers,
                });
            }
            if let Some(checked) = &m.checked {
                day(&at, checked)?;
            }
            let regex = m
                .matching
                .regex
                .iter()
                .map(|r| {
                    regex::RegexBuilder::new(r)
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| PricingError::Invalid {
                            at: at.clone(),
                            message: format!("regex {r:?}: {e}"),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let lower = |v: Vec<String>| v.into_iter().map(|s| s.to_lowercase()).collect();
            let mut exact: Vec<String> = lower(m.matching.exact);
            // An entry always matches its own model name (the part after vendor/).
            let own = m.id.rsplit('/').next().unwrap_or(&m.id).to_lowercase();
            if !exact.contains(&own) {
                exact.push(own);
            }
            entries.push(Entry {
                vendor: m
                    .vendor
                    .unwrap_or_else(|| m.id.split('/').next().unwrap_or("").to_owned()),
                id: m.id,
                hosts: m.hosts,
                operation: m.operation.unwrap_or_else(|| "chat".into()),
                checked: m.checked,
                source: m.source,
                exact,
                prefix: lower(m.matching.prefix),
                regex,
                prices,
                origin: origin.to_owned(),
            });
        }
        let mut book = PriceBook {
            version: file.version,
            entries,
            ..Default::default()
        };
        for a in file.aliases {
            for name in a.exact {
                book.aliases.insert(name.to_lowercase(), a.model.clone());
            }
        }
        book.index();
        Ok(book)
    }

    pub(crate) fn index(&mut self) {
        self.exact.clear();
        for (i, e) in self.entries.iter().enumerate() {
            for name in &e.exact {
                self.exact.entry(name.clone()).or_default().push(i);
            }
        }
    }

    /// `top` over `self`: entries of `top` win for the names they match.
    pub fn layered(mut self, top: PriceBook) -> PriceBook {
        let ids: std::collections::HashSet<String> =
            top.entries.iter().map(|e| e.id.clone()).collect();
        let top_names: std::collections::HashSet<&String> = top.exact.keys().collect();
        // Base entries replaced by id, or shadowed on every exact name, drop out.
        self.entries.retain(|e| !ids.contains(&e.id));
        for e in &mut self.entries {
            e.exact.retain(|n| !top_names.contains(n));
        }
        let mut entries = top.entries;
        entries.extend(self.entries);
        let mut aliases = self.aliases;
        aliases.extend(top.aliases);
        let mut book = PriceBook {
            version: format!("{}+{}", self.version, top.version),
            entries,
            aliases,
            ..Default::default()
        };
        book.index();
        book
    }

    pub fn entry_by_id(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }
}
