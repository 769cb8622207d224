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

    /// The partition named by the values of a `tenant=/date=/hour=` path, as
    /// [`PartitionKey::dir`] writes them; `None` if they are not ours.
    pub fn from_dir_values(tenant: &str, date: &str, hour: &str) -> Option<Self> {
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        let hour: u32 = hour.parse().ok().filter(|h| *h < 24)?;
        Some(PartitionKey {
            tenant: Arc::from(unescape(tenant)?),
            date,
            hour,
        })
    }

    /// Unix nanoseconds of the first instant of this partition's hour.
    pub fn hour_start_nanos(&self) -> i64 {
        self.date
            .and_hms_opt(self.hour, 0, 0)
            .and_then(|t| t.and_utc().timestamp_nanos_opt())
            .unwrap_or(i64::MAX)
    }

    /// The values of the `tenant`, `date` and `hour` columns.
    pub fn column_values(&self) -> [String; 3] {
        [
            self.tenant.to_string(),
            self.date.format("%Y-%m-%d").to_string(),
            format!("{:02}", self.hour),
        ]
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

/// The partition of a rollup row: `rollups/tenant=T/date=YYYY-MM-DD/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RollupKey {
    pub tenant: Arc<str>,
    pub date: NaiveDate,
}

impl RollupKey {
    /// The partition named by the values of a `tenant=/date=` path; `None`
    /// if they are not ours.
    pub fn from_dir_values(tenant: &str, date: &str) -> Option<Self> {
        Some(RollupKey {
            tenant: Arc::from(unescape(tenant)?),
            date: NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?,
        })
    }

    /// Unix nanoseconds of the first instant of this partition's day.
    pub fn day_start_nanos(&self) -> i64 {
        self.date
            .and_hms_opt(0, 0, 0)
            .and_then(|t| t.and_utc().timestamp_nanos_opt())
            .unwrap_or(i64::MAX)
    }

    /// The values of the `tenant` and `date` columns.
    pub fn column_values(&self) -> [String; 2] {
        [
            self.tenant.to_string(),
            self.date.format("%Y-%m-%d").to_string(),
        ]
    }

    /// Directory of this partition's rollup files under the data dir.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        data_dir
            .join("rollups")
            .join(format!("tenant={}", escape(&self.tenant)))
            .join(format!("date={}", self.date.format("%Y-%m-%d")))
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

/// Inverse of [`escape`]; `None` for malformed escapes or non-UTF-8 results.
fn unescape(value: &str) -> Option<String> {
    if value == "%00" {
        return Some(String::new());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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

    #[test]
    fn directory_values_read_back_to_the_key() {
        for tenant in ["default", "../etc", "a=b/c", "", "ünï"] {
            let key = PartitionKey::for_span(&Arc::from(tenant), 1_709_625_599_900_000_000);
            let [_, date, hour] = key.column_values();
            let parsed = PartitionKey::from_dir_values(&escape(tenant), &date, &hour);
            assert_eq!(parsed, Some(key), "{tenant}");
        }
        assert_eq!(PartitionKey::from_dir_values("x", "2024-13-01", "01"), None);
        assert_eq!(PartitionKey::from_dir_values("x", "2024-03-01", "24"), None);
        assert_eq!(
            PartitionKey::from_dir_values("%G0", "2024-03-01", "01"),
            None
        );
    }
}
