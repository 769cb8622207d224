//! The Hive-style partition of a span row: `spans/tenant=T/date=YYYY-MM-DD/hour=HH/`.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Timelike};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub tenant: Arc<str>,
    pub date: NaiveDate,
    pub hour: u32,
}

impl PartitionKey {
    /// The partition of a span starting at `start_unix_nano` (UTC).
    pub fn for_span(tenant: &Arc<str>, start_unix_nano: i64) -> Self {
        let t = DateTime::from_timestamp_nanos(start_unix_nano);
        PartitionKey {
            tenant: tenant.clone(),
            date: t.date_naive(),
            hour: t.hour(),
        }
    }

    /// Directory of this partition's span files under the data dir.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        data_dir
            .join("spans")
            .join(format!("tenant={}", escape(&self.tenant)))
            .join(format!("date={}", self.date.format("%Y-%m-%d")))
            .join(format!("hour={:02}", self.hour))
    }
}

/// Hive escaping: anything but `[A-Za-z0-9._-]` becomes `%XX`, so a tenant name
/// can never climb out of its directory or clash with the `key=value` syntax.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_hive_style_utc() {
        // 2024-03-05T07:59:59.9Z
        let key = PartitionKey::for_span(&Arc::from("default"), 1_709_625_599_900_000_000);
        assert_eq!(
            key.dir(Path::new("/d")),
            PathBuf::from("/d/spans/tenant=default/date=2024-03-05/hour=07")
        );
    }

    #[test]
    fn tenant_names_cannot_escape() {
        assert_eq!(escape("../etc"), "%2E.%2Fetc");
        assert_eq!(escape("a=b/c"), "a%3Db%2Fc");
        assert_eq!(escape(""), "%00");
        assert_eq!(escape("team-1.prod"), "team-1.prod");
    }
}
