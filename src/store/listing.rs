//! The Parquet files on disk: a walk of `spans/tenant=T/date=D/hour=H/` and
//! of `rollups/tenant=T/date=D/` that reads each file's partition from its
//! directory names.
//!
//! Files being written have a hidden temp name and are skipped; directories
//! that are not ours (foreign names, unparsable values) are skipped with a
//! debug log rather than failing every query.

use std::path::{Path, PathBuf};

use super::compaction;
use super::partition::{PartitionKey, RollupKey};
use super::StoreError;

/// One Parquet file and the partition it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionFile<K> {
    pub key: K,
    pub path: PathBuf,
    pub size: u64,
    /// Readers cache footers by path, size and this time.
    pub modified: std::time::SystemTime,
}

/// A file of spans, partitioned by tenant, date and hour.
pub type SpanFile = PartitionFile<PartitionKey>;

/// A file of rollup rows, partitioned by tenant and date.
pub type RollupFile = PartitionFile<RollupKey>;

/// Entries of `dir` whose name is `{prefix}=value`, with the value. A missing
/// directory (never created, or removed while we walk) has none.
fn partition_dirs(dir: &Path, prefix: &str) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name();
        let Some(value) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_prefix('='))
        else {
            tracing::debug!(path = %entry.path().display(), "not a {prefix}= directory; skipped");
            continue;
        };
        out.push((value.to_owned(), entry.path()));
    }
    Ok(out)
}

/// The files of one partition directory; hidden temp files and other
/// names are not ours, and neither are the inputs of a finished compaction
/// (see [`super::compaction`]).
fn files_in<K: Clone>(key: &K, dir: &Path) -> Result<Vec<PartitionFile<K>>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let mut names = Vec::new();
    let mut markers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(output) = compaction::marker_output(&name) {
            markers.push((output.to_owned(), entry.path()));
        } else if !name.starts_with('.') && name.ends_with(".parquet") {
            names.push(name);
        }
    }
    // Markers are read before any file is looked at: their inputs are removed
    // before the marker, so a marker already gone means inputs already gone.
    let mut superseded = std::collections::HashSet::new();
    for (output, marker) in markers {
        if names.contains(&output) {
            superseded.extend(compaction::read_marker(&marker)?);
        }
    }
    let mut files = Vec::new();
    for name in names {
        if superseded.contains(&name) {
            continue;
        }
        let path = dir.join(&name);
        let (size, modified) = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => (m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        files.push(PartitionFile {
            key: key.clone(),
            path,
            size,
            modified,
        });
    }
    Ok(files)
}

/// The span files of partition `key`.
pub fn partition_files(data_dir: &Path, key: &PartitionKey) -> Result<Vec<SpanFile>, StoreError> {
    files_in(key, &key.dir(data_dir))
}

/// Every span partition directory under `data_dir/spans`, with its key.
pub(super) fn hour_dirs(data_dir: &Path) -> Result<Vec<(PartitionKey, PathBuf)>, StoreError> {
    let mut dirs = Vec::new();
    for (tenant, tenant_dir) in partition_dirs(&data_dir.join("spans"), "tenant")? {
        for (date, date_dir) in partition_dirs(&tenant_dir, "date")? {
            for (hour, hour_dir) in partition_dirs(&date_dir, "hour")? {
                let Some(key) = PartitionKey::from_dir_values(&tenant, &date, &hour) else {
                    tracing::debug!(path = %hour_dir.display(), "unparsable partition; skipped");
                    continue;
                };
                dirs.push((key, hour_dir));
            }
        }
    }
    Ok(dirs)
}

/// Every span file under `data_dir/spans`, in path order.
pub fn list_span_files(data_dir: &Path) -> Result<Vec<SpanFile>, StoreError> {
    list(hour_dirs(data_dir)?)
}

/// Every rollup partition directory under `data_dir/rollups`, with its key.
pub(super) fn rollup_dirs(data_dir: &Path) -> Result<Vec<(RollupKey, PathBuf)>, StoreError> {
    let mut dirs = Vec::new();
    for (tenant, tenant_dir) in partition_dirs(&data_dir.join("rollups"), "tenant")? {
        for (date, date_dir) in partition_dirs(&tenant_dir, "date")? {
            let Some(key) = RollupKey::from_dir_values(&tenant, &date) else {
                tracing::debug!(path = %date_dir.display(), "unparsable partition; skipped");
                continue;
            };
            dirs.push((key, date_dir));
        }
    }
    Ok(dirs)
}

/// Every rollup file under `data_dir/rollups`, in path order.
pub fn list_rollup_files(data_dir: &Path) -> Result<Vec<RollupFile>, StoreError> {
    list(rollup_dirs(data_dir)?)
}

fn list<K: Clone>(dirs: Vec<(K, PathBuf)>) -> Result<Vec<PartitionFile<K>>, StoreError> {
    let mut files = Vec::new();
    for (key, dir) in dirs {
        files.extend(files_in(&key, &dir)?);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reads_partitions_from_directory_names_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let key = PartitionKey::for_span(&Arc::from("team a/b"), 1_709_625_599_900_000_000);
        let part = key.dir(dir.path());
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(part.join("part-1.parquet"), b"x").unwrap();
        std::fs::write(part.join(".part-2.parquet.tmp"), b"x").unwrap();
        std::fs::write(part.join("notes.txt"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("spans/tenant=x/date=garbage/hour=01")).unwrap();
        std::fs::write(
            dir.path()
                .join("spans/tenant=x/date=garbage/hour=01/a.parquet"),
            b"x",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("spans/other")).unwrap();

        let files = list_span_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].key, key);
        assert_eq!(files[0].path, part.join("part-1.parquet"));
        assert_eq!(files[0].size, 1);
    }

    #[test]
    fn a_missing_spans_dir_has_no_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_span_files(dir.path()).unwrap().is_empty());
        assert!(list_rollup_files(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn rollup_files_are_listed_with_tenant_and_date() {
        let dir = tempfile::tempdir().unwrap();
        let key = RollupKey::from_dir_values("a%2Fb", "2024-03-05").unwrap();
        assert_eq!(&*key.tenant, "a/b");
        let part = key.dir(dir.path());
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(part.join("rollup-1.parquet"), b"xy").unwrap();
        std::fs::write(part.join(".rollup-2.parquet.tmp"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("rollups/tenant=x/date=never")).unwrap();

        let files = list_rollup_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].key, key);
        assert_eq!(files[0].path, part.join("rollup-1.parquet"));
        assert_eq!(files[0].size, 2);
    }
}
