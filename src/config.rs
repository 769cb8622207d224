//! The configuration: TOML file, `LLMTRACE_*` environment overrides, defaults.
//!
//! Precedence, lowest to highest: built-in defaults, the config file, environment
//! variables, command-line flags (applied by the caller). Every key of the file has
//! an environment variable named after its path: `storage.flush_interval` is
//! `LLMTRACE_STORAGE_FLUSH_INTERVAL`, top-level `data_dir` is `LLMTRACE_DATA_DIR`.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "LLMTRACE_";

/// Environment variables with the prefix that are not config keys.
const ENV_NOT_CONFIG: &[&str] = &["LLMTRACE_LOG", "LLMTRACE_BIN", "LLMTRACE_API_KEY"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("alert rules file: {0}")]
    RulesFile(#[from] crate::alert::RulesFileError),
    /// Every problem of the alert rules, each naming its rule and key.
    #[error("invalid alert rules:\n  {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Alerts(Vec<crate::alert::RuleError>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Root of everything llmtrace writes (spans/, rollups/, wal/, alerts/).
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub ingest: IngestConfig,
    pub storage: StorageConfig,
    pub pricing: PricingConfig,
    pub query: QueryConfig,
    pub aggregate: AggregateSection,
    /// Alert rules and where they notify (see deploy/alerts.example.toml).
    pub alerts: crate::alert::AlertsConfig,
    /// API keys, their tenants and scopes; none means an open collector.
    pub auth: crate::auth::AuthConfig,
    pub wal: WalConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// Log every accepted request before acknowledging it, and replay the
    /// log at start: acknowledged spans survive a crash.
    pub enabled: bool,
    /// `always` (fsync before the ack; concurrent requests share an fsync),
    /// `interval` (fsync every `fsync_interval`), `never` (the OS decides).
    pub fsync: String,
    pub fsync_interval: HumanDuration,
    /// Size at which a log segment is closed and a new one started.
    pub segment_bytes: ByteSize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            enabled: true,
            fsync: "always".into(),
            fsync_interval: HumanDuration(Duration::from_millis(100)),
            segment_bytes: ByteSize(64 << 20),
        }
    }
}

impl WalConfig {
    pub fn options(&self) -> crate::wal::WalOptions {
        crate::wal::WalOptions {
            segment_size: self.segment_bytes.0,
            fsync: match self.fsync.as_str() {
                "interval" => crate::wal::FsyncPolicy::Interval(self.fsync_interval.0),
                "never" => crate::wal::FsyncPolicy::Never,
                _ => crate::wal::FsyncPolicy::Always,
            },
            ..crate::wal::WalOptions::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregateSection {
    /// Significant digits of the latency and TTFT HdrHistograms (0 to 5).
    pub significant_digits: u8,
    /// Open (minute, key) cells before new keys are counted under `_overflow`.
    pub max_live_keys: usize,
    /// How long after a minute ends its cells wait for late spans.
    pub close_after: HumanDuration,
    /// How long closed minutes stay in memory for /api/v1/stats.
    pub retention: HumanDuration,
    /// Label sets of the Prometheus GenAI metrics before `_overflow`.
    pub max_metric_series: usize,
}

impl Default for AggregateSection {
    fn default() -> Self {
        let d = crate::aggregate::AggregateConfig::default();
        Self {
            significant_digits: d.digits,
            max_live_keys: d.max_live_keys,
            close_after: HumanDuration(d.close_after),
            retention: HumanDuration(d.retention),
            max_metric_series: d.max_metric_series,
        }
    }
}

impl AggregateSection {
    pub fn config(&self) -> crate::aggregate::AggregateConfig {
        crate::aggregate::AggregateConfig {
            digits: self.significant_digits,
            max_live_keys: self.max_live_keys,
            close_after: self.close_after.0,
            retention: self.retention.0,
            max_metric_series: self.max_metric_series,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// A query running longer than this is cancelled with an error.
    pub timeout: HumanDuration,
    /// Memory a query may use (sorts, joins, aggregations) before it fails.
    pub memory_limit: ByteSize,
    /// Rows returned at most; the answer says when it was truncated.
    pub max_rows: usize,
    /// Bytes of the answer (as Arrow) at most; cut like `max_rows`.
    pub max_result_bytes: ByteSize,
    /// Statements longer than this are refused before they are parsed.
    pub max_sql_bytes: ByteSize,
    /// Statements whose expressions nest deeper than this (an operator
    /// chain counts one level per operator) are refused before planning.
    pub max_expr_depth: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            timeout: HumanDuration(Duration::from_secs(30)),
            memory_limit: ByteSize(256 << 20),
            max_rows: 100_000,
            max_result_bytes: ByteSize(32 << 20),
            max_sql_bytes: ByteSize(1 << 20),
            max_expr_depth: 1000,
        }
    }
}

impl QueryConfig {
    pub fn limits(&self) -> crate::query::QueryLimits {
        crate::query::QueryLimits {
            timeout: self.timeout.0,
            memory_bytes: self.memory_limit.as_usize(),
            max_rows: self.max_rows,
            max_result_bytes: self.max_result_bytes.as_usize(),
            statement: crate::query::guard::StatementLimits {
                max_bytes: self.max_sql_bytes.as_usize(),
                max_depth: self.max_expr_depth,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// A price file layered over the shipped price book: llmtrace's TOML
    /// format (docs/price-book.md) or LiteLLM's
    /// `model_prices_and_context_window.json`. Empty: the shipped book only.
    pub file: String,
}

impl PricingConfig {
    pub fn file(&self) -> Option<&Path> {
        (!self.file.trim().is_empty()).then(|| Path::new(self.file.trim()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// OTLP/gRPC listener.
    pub grpc_addr: SocketAddr,
    /// OTLP/HTTP listener (`POST /v1/traces`).
    pub http_addr: SocketAddr,
    /// Query, stats, health and metrics API.
    pub api_addr: SocketAddr,
    /// How long shutdown waits for in-flight requests before flushing anyway.
    pub shutdown_grace: HumanDuration,
    /// A connection must send a complete request head within this (its first
    /// one from accept, later HTTP/1.1 ones from the end of the previous
    /// response), or it is closed: slow or silent clients hold no slot.
    pub header_read_timeout: HumanDuration,
    /// A request body must arrive completely within this from its head;
    /// longer, it is refused (HTTP 408, gRPC DEADLINE_EXCEEDED) and
    /// everything charged for it is given back.
    pub body_read_timeout: HumanDuration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 and gRPC; an idle HTTP/1.1 one is closed sooner, by
    /// `header_read_timeout`).
    pub idle_timeout: HumanDuration,
    /// Open connections per listener (OTLP gRPC, OTLP HTTP, API); past it,
    /// new ones wait in the kernel's accept queue until one closes.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest request body accepted on the wire (compressed size).
    pub max_request_bytes: ByteSize,
    /// Largest request after decompression; protects against gzip bombs.
    pub max_decompressed_bytes: ByteSize,
    /// Attribute string values longer than this are cut (and marked as cut).
    pub max_attribute_value_bytes: ByteSize,
    /// Spans whose start time lies further in the future than this are rejected.
    pub max_future_skew: HumanDuration,
    /// Export requests are refused (HTTP 503 with Retry-After, gRPC
    /// UNAVAILABLE with RetryInfo) while this much is buffered, unflushed or
    /// being written; the client retries, nothing acknowledged is lost.
    pub max_buffer_bytes: ByteSize,
    /// Requests are refused the same way while those already admitted hold
    /// this much memory: bodies, decompressed bodies, decoded requests and
    /// their records, until their spans are in the buffer.
    pub max_in_flight_bytes: ByteSize,
    /// Requests are refused the same way while the process's resident memory
    /// is within `max_in_flight_bytes` + 32 MiB of this, whatever holds it;
    /// 0 turns the check off.
    pub memory_limit: ByteSize,
    /// The retry delay given with a refusal.
    pub retry_after: HumanDuration,
    /// How long an LLM call whose parent spans have not arrived yet waits
    /// for them (it is queryable meanwhile, but not yet in stats and
    /// rollups), so user, session and prompt set on an ancestor apply to
    /// it. 0 turns waiting off: ancestors that arrived first still apply.
    pub trace_wait: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Flush the span buffer to Parquet at least this often.
    pub flush_interval: HumanDuration,
    /// Flush as soon as the buffered Arrow data reaches this size.
    pub flush_bytes: ByteSize,
    /// Maximum rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd compression level of the Parquet files (1-22).
    pub zstd_level: i32,
    /// Span partitions (hours) older than this are removed; 0 keeps them forever.
    pub retention: HumanDuration,
    /// Rollup partitions (days) older than this are removed; 0 keeps them forever.
    pub rollup_retention: HumanDuration,
    /// A span partition's small files are merged into one this long after its
    /// hour ends (time for late spans to arrive).
    pub compact_after: HumanDuration,
    /// Partitions with fewer small files than this are left alone; 0 turns
    /// compaction off.
    pub compact_min_files: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./llmtrace-data"),
            server: ServerConfig::default(),
            ingest: IngestConfig::default(),
            storage: StorageConfig::default(),
            pricing: PricingConfig::default(),
            query: QueryConfig::default(),
            aggregate: AggregateSection::default(),
            alerts: crate::alert::AlertsConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            wal: WalConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 4318)),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            body_read_timeout: HumanDuration(Duration::from_secs(30)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            max_connections: 1024,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: ByteSize(16 << 20),
            max_decompressed_bytes: ByteSize(64 << 20),
            max_attribute_value_bytes: ByteSize(64 << 10),
            max_future_skew: HumanDuration(Duration::from_secs(24 * 3600)),
            max_buffer_bytes: ByteSize(256 << 20),
            max_in_flight_bytes: ByteSize(64 << 20),
            memory_limit: ByteSize(512 << 20),
            retry_after: HumanDuration(Duration::from_secs(1)),
            trace_wait: HumanDuration(Duration::from_secs(30)),
        }
    }
}

impl IngestConfig {
    /// The limits every accepted request is normalised and admitted under.
    pub fn limits(&self) -> crate::ingest::Limits {
        crate::ingest::Limits {
            max_attribute_value_bytes: self.max_attribute_value_bytes.as_usize(),
            max_future_skew: self.max_future_skew.0,
            max_buffer_bytes: self.max_buffer_bytes.as_usize(),
            max_in_flight_bytes: self.max_in_flight_bytes.as_usize(),
            memory_limit: self.memory_limit.as_usize(),
            retry_after: self.retry_after.0,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            flush_interval: HumanDuration(Duration::from_secs(10)),
            flush_bytes: ByteSize(64 << 20),
            row_group_rows: 128 * 1024,
            zstd_level: 1,
            retention: HumanDuration(Duration::ZERO),
            rollup_retention: HumanDuration(Duration::ZERO),
            compact_after: HumanDuration(Duration::from_secs(10 * 60)),
            compact_min_files: 4,
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then `LLMTRACE_*` from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut tree, env)?;
        let mut config: Config =
            Config::deserialize(toml::Value::Table(tree)).map_err(|e| ConfigError::Parse {
                path: file
                    .map(Path::to_owned)
                    .unwrap_or_else(|| "<environment>".into()),
                message: e.to_string(),
            })?;
        // A relative rules file sits next to the config file.
        config.alerts = config.alerts.with_rules_file(file.and_then(Path::parent))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if self.storage.flush_interval.0.is_zero() {
            return invalid("storage.flush_interval", "must be greater than 0");
        }
        if self.storage.flush_bytes.0 == 0 {
            return invalid("storage.flush_bytes", "must be greater than 0");
        }
        if self.storage.row_group_rows == 0 {
            return invalid("storage.row_group_rows", "must be greater than 0");
        }
        if !(1..=22).contains(&self.storage.zstd_level) {
            return invalid("storage.zstd_level", "must be between 1 and 22");
        }
        for (key, value) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
        ] {
            if value.0.is_zero() {
                return invalid(key, "must be greater than 0");
            }
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be greater than 0");
        }
        if self.ingest.max_request_bytes.0 == 0 {
            return invalid("ingest.max_request_bytes", "must be greater than 0");
        }
        if self.ingest.max_decompressed_bytes.0 < self.ingest.max_request_bytes.0 {
            return invalid(
                "ingest.max_decompressed_bytes",
                "must be at least ingest.max_request_bytes",
            );
        }
        if self.query.max_rows == 0 {
            return invalid("query.max_rows", "must be greater than 0");
        }
        if self.query.timeout.0.is_zero() {
            return invalid("query.timeout", "must be greater than 0");
        }
        if self.aggregate.significant_digits > crate::aggregate::hdr::MAX_DIGITS {
            return invalid("aggregate.significant_digits", "must be between 0 and 5");
        }
        if self.aggregate.max_live_keys == 0 {
            return invalid("aggregate.max_live_keys", "must be greater than 0");
        }
        if self.aggregate.max_metric_series == 0 {
            return invalid("aggregate.max_metric_series", "must be greater than 0");
        }
        if self.aggregate.retention.0 < Duration::from_secs(60) {
            return invalid("aggregate.retention", "must be at least 1m");
        }
        if self.ingest.max_buffer_bytes.0 < self.storage.flush_bytes.0 {
            return invalid(
                "ingest.max_buffer_bytes",
                "must be at least storage.flush_bytes, or a size-triggered flush could never happen",
            );
        }
        if self.ingest.max_in_flight_bytes.0 < 1 << 20 {
            return invalid("ingest.max_in_flight_bytes", "must be at least 1MiB");
        }
        let memory = self.ingest.memory_limit.0;
        if memory != 0
            && memory < self.ingest.max_in_flight_bytes.0 + self.ingest.max_buffer_bytes.0
        {
            return invalid(
                "ingest.memory_limit",
                "must be 0 (off) or at least ingest.max_buffer_bytes + ingest.max_in_flight_bytes",
            );
        }
        if self.ingest.retry_after.0.is_zero() {
            return invalid("ingest.retry_after", "must be greater than 0");
        }
        if self.ingest.max_attribute_value_bytes.0 < 16 {
            return invalid("ingest.max_attribute_value_bytes", "must be at least 16");
        }
        if !["always", "interval", "never"].contains(&self.wal.fsync.as_str()) {
            return invalid("wal.fsync", "must be always, interval or never");
        }
        if self.wal.segment_bytes.0 < 1 << 20 {
            return invalid("wal.segment_bytes", "must be at least 1MiB");
        }
        crate::alert::validate(&self.alerts).map_err(ConfigError::Alerts)?;
        if let Err(message) = crate::auth::Keys::from_config(&self.auth) {
            return invalid("auth.keys", &message);
        }
        Ok(())
    }
}

/// Every leaf key path of the config, from the defaults: the set of valid env names.
fn leaf_paths() -> Vec<Vec<String>> {
    fn walk(prefix: &mut Vec<String>, value: &toml::Value, out: &mut Vec<Vec<String>>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    prefix.push(k.clone());
                    walk(prefix, v, out);
                    prefix.pop();
                }
            }
            // Lists (alert rules and destinations) live in the file only.
            toml::Value::Array(_) => {}
            _ => out.push(prefix.clone()),
        }
    }
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let mut out = Vec::new();
    walk(&mut Vec::new(), &defaults, &mut out);
    out
}

fn apply_env(
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let paths = leaf_paths();
    for (var, raw) in env {
        let Some(suffix) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if ENV_NOT_CONFIG.contains(&var.as_str()) {
            continue;
        }
        let Some(path) = paths
            .iter()
            .find(|p| p.join("_").eq_ignore_ascii_case(suffix))
        else {
            return Err(ConfigError::Env {
                var,
                message: "not a config key (see deploy/llmtrace.example.toml)".into(),
            });
        };
        // A number or boolean is taken as such; anything else is a string.
        let value = if let Ok(n) = raw.parse::<i64>() {
            toml::Value::Integer(n)
        } else if let Ok(b) = raw.parse::<bool>() {
            toml::Value::Boolean(b)
        } else {
            toml::Value::String(raw)
        };
        let (leaf, parents) = path.split_last().expect("non-empty path");
        let mut table = &mut *tree;
        for p in parents {
            let entry = table
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                message: format!("`{p}` in the config file is not a table"),
            })?;
        }
        table.insert(leaf.clone(), value);
    }
    Ok(())
}

/// A duration written as `10s`, `500ms`, `2m`, `1h 30m` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| {
                format!("invalid duration {s:?} ({e}); use e.g. \"10s\", \"500ms\", \"2m\"")
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size in bytes written as an integer or with a unit: `512KiB`, `64MiB`, `1GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("invalid size {s:?}; use e.g. 65536, \"512KiB\", \"64MiB\"");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (m, u) in UNITS {
            if self.0 >= m && self.0 % m == 0 {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl ByteSize {
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: a number of bytes (0 or more) or a string like \"64MiB\"")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n).map(ByteSize).map_err(|_| {
                    E::custom(format!(
                        "{n} is not a size: give a number of bytes (0 or more) or a string like \"64MiB\""
                    ))
                })
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ByteSize, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_negative_size_names_the_key_and_the_form() {
        let err = Config::load(None, env(&[("LLMTRACE_INGEST_MEMORY_LIMIT", "-1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory_limit"), "{err}");
        assert!(err.contains("-1 is not a size"), "{err}");
        assert!(!err.contains("untagged"), "{err}");
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./llmtrace-data"));
        assert_eq!(c.server.grpc_addr.to_string(), "127.0.0.1:4317");
        assert_eq!(c.server.http_addr.to_string(), "127.0.0.1:4318");
        assert_eq!(c.server.api_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.storage.flush_interval.0, Duration::from_secs(10));
        assert_eq!(c.storage.flush_bytes.0, 64 << 20);
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/x\"\n[storage]\nflush_interval = \"2s\"\nflush_bytes = \"1MiB\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("LLMTRACE_STORAGE_FLUSH_INTERVAL", "250ms"),
                ("LLMTRACE_STORAGE_ROW_GROUP_ROWS", "1000"),
                ("LLMTRACE_SERVER_GRPC_ADDR", "0.0.0.0:14317"),
                ("LLMTRACE_LOG", "debug"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/x"));
        assert_eq!(c.storage.flush_interval.0, Duration::from_millis(250));
        assert_eq!(c.storage.flush_bytes.0, 1 << 20);
        assert_eq!(c.storage.row_group_rows, 1000);
        assert_eq!(c.server.grpc_addr.to_string(), "0.0.0.0:14317");
    }

    #[test]
    fn unknown_file_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[storage]\nflush_intervl = \"2s\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("flush_intervl"), "{err}");
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = Config::load(None, env(&[("LLMTRACE_STORAGE_FLUSH_EVERY", "1s")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("LLMTRACE_STORAGE_FLUSH_EVERY"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Config::load(None, env(&[("LLMTRACE_STORAGE_FLUSH_INTERVAL", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
        let err = Config::load(None, env(&[("LLMTRACE_STORAGE_ZSTD_LEVEL", "99")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.zstd_level"), "{err}");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().0, 64 << 20);
        assert_eq!("1kb".parse::<ByteSize>().unwrap().0, 1000);
        assert_eq!("123".parse::<ByteSize>().unwrap().0, 123);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/llmtrace.example.toml");

    #[test]
    fn example_config_is_the_defaults() {
        let loaded = Config::load(Some(Path::new(EXAMPLE)), Vec::new()).unwrap();
        assert_eq!(loaded, Config::default());
    }

    #[test]
    fn alert_templates_load_and_validate() {
        let alerts = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/alerts.example.toml");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("llmtrace.toml");
        std::fs::write(&file, format!("[alerts]\nrules_file = {alerts:?}\n")).unwrap();
        let config = Config::load(Some(&file), Vec::new()).unwrap();
        let names: Vec<_> = config
            .alerts
            .rules
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "error-rate-spike",
                "p99-latency-regression",
                "hourly-cost-over-budget",
                "unpriced-calls"
            ]
        );
        assert_eq!(config.alerts.destinations.len(), 3);
    }

    #[test]
    fn bad_alert_rules_are_named_by_rule_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("llmtrace.toml");
        std::fs::write(
            &file,
            "[[alerts.rules]]\nname = \"r1\"\nmetric = \"error_rate\"\nop = \">\"\nthreshold = 0.1\nnotify = [\"nowhere\"]\n",
        )
        .unwrap();
        let e = Config::load(Some(&file), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("rule \"r1\": key \"window\""), "{e}");
        assert!(e.contains("rule \"r1\": key \"notify\""), "{e}");
    }

    #[test]
    fn example_config_documents_every_key() {
        let text = std::fs::read_to_string(EXAMPLE).unwrap();
        let table: toml::Table = text.parse().unwrap();
        for path in leaf_paths() {
            let mut node = table.get(&path[0]);
            for key in &path[1..] {
                node = node.and_then(|n| n.get(key));
            }
            assert!(
                node.is_some(),
                "{} missing from the example",
                path.join(".")
            );
        }
    }
}
