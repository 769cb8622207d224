//! Which logged spans the rollup files already count, so that a restart
//! after a crash re-aggregates exactly the others.
//!
//! Aggregation state lives in memory until a minute closes. The roller
//! writes the rows it closed, then this mark: every span logged before
//! `aggregated_before`, or in one of the `aggregated_since` records, had
//! been aggregated when the rows were closed, so such a span is in a written
//! row unless its minute was still open, that is unless the minute ended
//! after `closed_until`. Other spans were not aggregated yet. (Requests reach
//! the aggregator out of log order, so the aggregated records are a prefix
//! of the log plus a few records beyond it.) The log keeps every record
//! from `replay_from` (the oldest span of a still open cell), and a restart
//! feeds the aggregator the spans of those records that the mark does not
//! count.
//!
//! Rows and mark must move together: rows written without their mark would
//! be counted twice after a crash. So the rows' files are listed in an
//! intent file (with the mark they go with) before they are written, and
//! the mark's rename commits them. At open, an intent whose mark is not the
//! mark on disk never committed: its files are removed, and the log still
//! holds every span in them.

use std::io::Write;
use std::path::Path;

use super::WalPosition;

const FILE: &str = "rollups.mark";
const TMP: &str = "rollups.mark.tmp";
const INTENT: &str = "rollups.intent";
const MAGIC: &str = "llmtrace-rollup-mark-v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupMark {
    /// Every span logged before this position had been aggregated.
    pub aggregated_before: WalPosition,
    /// And so had those of these records, ascending.
    pub aggregated_since: Vec<WalPosition>,
    /// Minutes ending at or before this (unix ns) were closed and written.
    pub closed_until: i64,
    /// The first record that may hold a span not in a written row.
    pub replay_from: WalPosition,
}

impl RollupMark {
    /// Whether the span logged at `position`, of the minute ending at
    /// `minute_end` (unix ns), is in a written rollup row.
    pub fn counts(&self, position: WalPosition, minute_end: i64) -> bool {
        minute_end <= self.closed_until
            && (position < self.aggregated_before
                || self.aggregated_since.binary_search(&position).is_ok())
    }

    fn encode(&self) -> String {
        let since: Vec<String> = self
            .aggregated_since
            .iter()
            .map(|p| p.to_string())
            .collect();
        format!(
            "{MAGIC} {} {} {} {}\n",
            self.aggregated_before,
            self.closed_until,
            self.replay_from,
            if since.is_empty() {
                "-".to_owned()
            } else {
                since.join(",")
            }
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let position = |s: &str| -> Option<WalPosition> {
            let (segment, offset) = s.split_once(':')?;
            Some(WalPosition {
                segment: segment.parse().ok()?,
                offset: offset.parse().ok()?,
            })
        };
        let mut fields = text.split_whitespace();
        if fields.next()? != MAGIC {
            return None;
        }
        let aggregated_before = position(fields.next()?)?;
        let closed_until = fields.next()?.parse().ok()?;
        let replay_from = position(fields.next()?)?;
        let aggregated_since = match fields.next()? {
            "-" => Vec::new(),
            list => list.split(',').map(position).collect::<Option<Vec<_>>>()?,
        };
        if !aggregated_since.is_sorted() {
            return None;
        }
        let mark = RollupMark {
            aggregated_before,
            aggregated_since,
            closed_until,
            replay_from,
        };
        fields.next().is_none().then_some(mark)
    }

    /// The mark in the log directory `dir`, after undoing a write of rows
    /// that never committed; `None` when there is no mark yet or it cannot
    /// be read (with a warning: rollups of the minutes open at a crash may
    /// then miss calls; spans are unaffected).
    pub fn recover(dir: &Path) -> Option<Self> {
        let mark = Self::read(dir);
        let intent = dir.join(INTENT);
        match std::fs::read_to_string(&intent) {
            Ok(text) => {
                let mut lines = text.lines();
                let committed = lines
                    .next()
                    .and_then(Self::decode)
                    .is_some_and(|m| Some(&m) == mark.as_ref());
                if !committed {
                    for file in lines.filter(|l| !l.is_empty()) {
                        match std::fs::remove_file(file) {
                            Ok(()) => tracing::info!(file, "removed rollup rows written without their mark; they are aggregated again from the log"),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(error) => tracing::warn!(%error, file, "cannot remove rollup rows written without their mark; they may be counted twice"),
                        }
                    }
                }
                if let Err(error) = remove_intent(dir) {
                    tracing::warn!(%error, file = %intent.display(), "cannot remove the rollup intent file");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%error, file = %intent.display(), "cannot read the rollup intent file")
            }
        }
        mark
    }

    fn read(dir: &Path) -> Option<Self> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(%error, file = %path.display(), "cannot read the rollup mark; rollups of minutes open at the last stop may miss calls");
                return None;
            }
        };
        let mark = Self::decode(&text);
        if mark.is_none() {
            tracing::warn!(file = %path.display(), "ignoring an unreadable rollup mark; rollups of minutes open at the last stop may miss calls");
        }
        mark
    }

    /// Records, before they are written, the files of rows this mark will
    /// commit. `files` are absolute paths.
    pub fn intend(&self, dir: &Path, files: &[std::path::PathBuf]) -> std::io::Result<()> {
        let mut text = self.encode();
        for f in files {
            text.push_str(&f.to_string_lossy());
            text.push('\n');
        }
        let mut file = std::fs::File::create(dir.join(INTENT))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Replaces the mark in `dir`, committing the rows of an intent: written
    /// aside, fsynced, renamed, so a crash leaves the old mark or the new one.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(TMP);
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(self.encode().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(FILE))?;
        std::fs::File::open(dir)?.sync_all()?;
        remove_intent(dir)
    }
}

/// Forgets an intent: committed, or its files removed.
pub fn remove_intent(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(INTENT)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u64, offset: u64) -> WalPosition {
        WalPosition { segment, offset }
    }

    #[test]
    fn a_mark_survives_a_write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RollupMark::recover(dir.path()), None);
        let mut mark = RollupMark {
            aggregated_before: at(3, 4096),
            aggregated_since: vec![],
            closed_until: 1_700_000_040_000_000_000,
            replay_from: at(2, 24),
        };
        mark.write(dir.path()).unwrap();
        assert_eq!(RollupMark::recover(dir.path()), Some(mark.clone()));
        mark.aggregated_since = vec![at(3, 5000), at(4, 24)];
        mark.write(dir.path()).unwrap();
        assert_eq!(RollupMark::recover(dir.path()), Some(mark));
    }

    fn mark(closed_until: i64) -> RollupMark {
        RollupMark {
            aggregated_before: at(1, closed_until as u64),
            aggregated_since: vec![],
            closed_until,
            replay_from: at(1, 0),
        }
    }

    #[test]
    fn rows_written_without_their_mark_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let old = mark(60);
        old.write(dir.path()).unwrap();

        // Crash after the rows, before the mark: rows go, the old mark stays.
        let rows = dir.path().join("rows-1.parquet");
        let never_written = dir.path().join("rows-2.parquet");
        mark(120)
            .intend(dir.path(), &[rows.clone(), never_written])
            .unwrap();
        std::fs::write(&rows, b"rows").unwrap();
        assert_eq!(RollupMark::recover(dir.path()), Some(old.clone()));
        assert!(!rows.exists());
        assert!(!dir.path().join(INTENT).exists());

        // Crash after the mark, before the intent was removed: rows stay.
        let new = mark(180);
        new.intend(dir.path(), std::slice::from_ref(&rows)).unwrap();
        std::fs::write(&rows, b"rows").unwrap();
        std::fs::rename(dir.path().join(INTENT), dir.path().join("keep")).unwrap();
        new.write(dir.path()).unwrap();
        std::fs::rename(dir.path().join("keep"), dir.path().join(INTENT)).unwrap();
        assert_eq!(RollupMark::recover(dir.path()), Some(new.clone()));
        assert!(rows.exists());
        assert!(!dir.path().join(INTENT).exists());
    }

    #[test]
    fn a_damaged_mark_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "",
            "llmtrace-rollup-mark-v1 3:4096 12 2:24",
            "llmtrace-rollup-mark-v1 3:4096 x 2:24 -",
            "llmtrace-rollup-mark-v1 3:4096 12 2:24 4:1,3:9",
            "llmtrace-rollup-mark-v1 3:4096 12 2:24 - extra",
            "other 3:4096 12 2:24 -",
        ] {
            std::fs::write(dir.path().join(FILE), text).unwrap();
            assert_eq!(RollupMark::recover(dir.path()), None, "{text:?}");
        }
    }

    #[test]
    fn a_span_is_counted_when_logged_before_the_mark_and_its_minute_closed() {
        let mark = RollupMark {
            aggregated_before: at(5, 100),
            aggregated_since: vec![at(5, 300)],
            closed_until: 600,
            replay_from: at(4, 0),
        };
        assert!(mark.counts(at(5, 99), 600));
        assert!(mark.counts(at(4, 10), 60));
        // A request that finished before an earlier one.
        assert!(mark.counts(at(5, 300), 60));
        // Its minute was still open.
        assert!(!mark.counts(at(5, 99), 660));
        assert!(!mark.counts(at(5, 300), 660));
        // Not aggregated when the rows were closed.
        assert!(!mark.counts(at(5, 100), 60));
        assert!(!mark.counts(at(6, 0), 60));
    }
}
