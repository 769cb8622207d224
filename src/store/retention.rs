//! Retention: whole partitions older than the configured age are removed,
//! span partitions by hour and rollup partitions by day, so an expired hour
//! disappears at once rather than file by file.
//!
//! A query that listed a partition just before it was removed can fail with
//! a missing-file error; asked again, it runs without the expired data.

use std::path::Path;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};

use super::listing::list_span_files;
use super::StoreError;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub span_files: usize,
    pub rollup_files: usize,
}

/// Removes `path`; false when it was already gone.
pub(super) fn remove_file(path: &Path) -> Result<bool, StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Removes `dir` and then its parents up to (not including) `stop`, as
/// long as each is empty.
fn remove_empty_dirs(mut dir: &Path, stop: &Path) {
    while dir != stop && dir.starts_with(stop) {
        if std::fs::remove_dir(dir).is_err() {
            return;
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return,
        }
    }
}

/// Removes span partitions whose hour ended before `now - spans_for`, and
/// rollup partitions whose day ended before `now - rollups_for`. A zero
/// duration keeps that kind forever.
pub fn enforce(
    data_dir: &Path,
    now: DateTime<Utc>,
    spans_for: std::time::Duration,
    rollups_for: std::time::Duration,
) -> Result<Removed, StoreError> {
    let mut removed = Removed::default();
    let age = |d: std::time::Duration| ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX);
    if !spans_for.is_zero() {
        let cutoff = now - age(spans_for);
        let spans_root = data_dir.join("spans");
        for file in list_span_files(data_dir)? {
            let hour_end = DateTime::from_timestamp_nanos(file.key.hour_start_nanos())
                + ChronoDuration::hours(1);
            if hour_end <= cutoff && remove_file(&file.path)? {
                removed.span_files += 1;
                if let Some(dir) = file.path.parent() {
                    remove_empty_dirs(dir, &spans_root);
                }
            }
        }
    }
    if !rollups_for.is_zero() {
        let cutoff = (now - age(rollups_for)).date_naive();
        let root = data_dir.join("rollups");
        for tenant in read_dir(&root)? {
            for date_dir in read_dir(&tenant)? {
                let date = date_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("date="))
                    .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
                // A day is kept while any part of it is within retention.
                let Some(date) = date.filter(|d| *d < cutoff) else {
                    continue;
                };
                for file in read_dir(&date_dir)? {
                    let is_parquet = file.extension().is_some_and(|e| e == "parquet");
                    if is_parquet && remove_file(&file)? {
                        removed.rollup_files += 1;
                    }
                }
                tracing::debug!(%date, dir = %date_dir.display(), "rollup partition expired");
                remove_empty_dirs(&date_dir, &root);
            }
        }
    }
    if removed != Removed::default() {
        tracing::info!(
            span_files = removed.span_files,
            rollup_files = removed.rollup_files,
            "removed expired partitions"
        );
    }
    Ok(removed)
}

fn read_dir(dir: &Path) -> Result<Vec<std::path::PathBuf>, StoreError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(|e| StoreError::io(dir, e)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io(dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PartitionKey;
    use std::sync::Arc;
    use std::time::Duration;

    /// 2024-03-05T10:00:00Z
    const TEN: i64 = 1_709_632_800_000_000_000;
    const HOUR: i64 = 3_600_000_000_000;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn expired_hours_and_days_go_whole_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let tenant: Arc<str> = Arc::from("default");
        for h in 0..4 {
            let key = PartitionKey::for_span(&tenant, TEN + h * HOUR);
            touch(&key.dir(dir.path()).join("part-1.parquet"));
            touch(&key.dir(dir.path()).join("part-2.parquet"));
        }
        for day in ["2024-03-01", "2024-03-04", "2024-03-05"] {
            touch(
                &dir.path()
                    .join(format!("rollups/tenant=default/date={day}/r.parquet")),
            );
        }
        // Now 13:30; keep 2 h of spans (hours ending after 11:30: 11, 12, 13)
        // and 1 day of rollups (days from 2024-03-04 on).
        let now = DateTime::from_timestamp_nanos(TEN + 3 * HOUR + HOUR / 2);
        let removed = enforce(
            dir.path(),
            now,
            Duration::from_secs(2 * 3600),
            Duration::from_secs(86_400),
        )
        .unwrap();
        assert_eq!(
            removed,
            Removed {
                span_files: 2,
                rollup_files: 1
            }
        );
        let hours: Vec<u32> = list_span_files(dir.path())
            .unwrap()
            .iter()
            .map(|f| f.key.hour)
            .collect();
        assert_eq!(hours, [11, 11, 12, 12, 13, 13]);
        assert!(!dir
            .path()
            .join("spans/tenant=default/date=2024-03-05/hour=10")
            .exists());
        assert!(!dir
            .path()
            .join("rollups/tenant=default/date=2024-03-01")
            .exists());
        assert!(dir
            .path()
            .join("rollups/tenant=default/date=2024-03-04")
            .exists());

        // Zero keeps everything.
        let none = enforce(dir.path(), now, Duration::ZERO, Duration::ZERO).unwrap();
        assert_eq!(none, Removed::default());
    }
}
