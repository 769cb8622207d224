//! Which logged spans the rollups already count, so that a restart after a
//! crash neither loses nor double-counts an LLM call.
//!
//! Each roller tick closes the due minutes and writes their rows, then this
//! mark, in the log directory: every request logged before
//! `aggregated_before`, or at one of `aggregated_since`, had been aggregated
//! when the rows were closed, so its calls are in a written row or in one of
//! the cells still `open`, which the mark carries. (Requests reach the
//! aggregator out of log order, so the aggregated ones are a prefix of the
//! log plus a few beyond it.) A restart restores the open cells and feeds
//! the aggregator the logged requests the mark does not count; the log keeps
//! every request from `aggregated_before` on.
//!
//! Rows and mark must move together: rows written without their mark would
//! be counted twice after a crash. So the rows' files are listed in an
//! intent file, with the sequence number of the mark that commits them,
//! before they are written, and the mark's rename commits them. At start an
//! intent whose mark is not the one on disk never committed: its files are
//! removed, and the log still holds every call in them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;

use super::cell::Counters;
use super::key::AggKey;
use super::Rollup;
use crate::wal::proto;
use crate::wal::WalPosition;

const FILE: &str = "rollups.mark";
const TMP: &str = "rollups.mark.tmp";
const INTENT: &str = "rollups.intent";
const INTENT_TMP: &str = "rollups.intent.tmp";

#[derive(Debug, Clone, PartialEq)]
pub struct RollupMark {
    /// One more than the previous mark's.
    pub sequence: u64,
    /// Every request logged before this position had been aggregated.
    pub aggregated_before: WalPosition,
    /// And so had these, ascending.
    pub aggregated_since: Vec<WalPosition>,
    /// Minutes ending at or before this (unix ns) were closed and written.
    pub closed_until: i64,
    /// The cells not closed yet, as rows.
    pub open: Vec<Arc<Rollup>>,
}

impl RollupMark {
    /// Whether the calls of the request logged at `position` are counted.
    pub fn counts(&self, position: WalPosition) -> bool {
        position < self.aggregated_before || self.aggregated_since.binary_search(&position).is_ok()
    }

    fn encode(&self) -> Vec<u8> {
        let position = |p: &WalPosition| proto::LogPosition {
            segment: p.segment,
            offset: p.offset,
        };
        proto::RollupMark {
            sequence: self.sequence,
            aggregated_before: Some(position(&self.aggregated_before)),
            aggregated_since: self.aggregated_since.iter().map(position).collect(),
            closed_until: self.closed_until,
            open: self.open.iter().map(|r| open_cell(r)).collect(),
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let m = proto::RollupMark::decode(bytes).ok()?;
        let position = |p: &proto::LogPosition| WalPosition {
            segment: p.segment,
            offset: p.offset,
        };
        let aggregated_since: Vec<WalPosition> = m.aggregated_since.iter().map(position).collect();
        if !aggregated_since.is_sorted() {
            return None;
        }
        Some(RollupMark {
            sequence: m.sequence,
            aggregated_before: position(m.aggregated_before.as_ref()?),
            aggregated_since,
            closed_until: m.closed_until,
            open: m.open.into_iter().map(|c| Arc::new(row(c))).collect(),
        })
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
                let sequence = lines.next().and_then(|l| l.parse::<u64>().ok());
                let committed = sequence.is_some() && sequence == mark.as_ref().map(|m| m.sequence);
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
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(%error, file = %path.display(), "cannot read the rollup mark; rollups of minutes open at the last stop may miss calls");
                return None;
            }
        };
        let mark = Self::decode(&bytes);
        if mark.is_none() {
            tracing::warn!(file = %path.display(), "ignoring an unreadable rollup mark; rollups of minutes open at the last stop may miss calls");
        }
        mark
    }

    /// Records, before they are written, the files of rows this mark will
    /// commit. `files` are absolute paths.
    pub fn intend(&self, dir: &Path, files: &[PathBuf]) -> std::io::Result<()> {
        let mut text = format!("{}\n", self.sequence);
        for f in files {
            text.push_str(&f.to_string_lossy());
            text.push('\n');
        }
        // Written aside and renamed: a write cut short (disk full) must not
        // leave a truncated intent in place of one that names rows written
        // earlier and not committed yet, which a crash would then keep.
        let tmp = dir.join(INTENT_TMP);
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, dir.join(INTENT))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Replaces the mark in `dir`, committing the rows of an intent: written
    /// aside, fsynced, renamed, so a crash leaves the old mark or the new one.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(TMP);
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&self.encode())?;
            file.sync_all()?;
            std::fs::rename(&tmp, dir.join(FILE))
        })();
        if written.is_err() {
            // Not left behind taking space from the retry.
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
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

fn open_cell(r: &Rollup) -> proto::OpenCell {
    let key = |i: usize| r.key.0[i].as_deref().map(str::to_owned);
    let c = &r.counters;
    proto::OpenCell {
        minute: r.minute,
        tenant: key(0),
        service: key(1),
        provider: key(2),
        model: key(3),
        operation: key(4),
        prompt_name: key(5),
        prompt_version: key(6),
        requests: c.requests,
        errors: c.errors,
        unpriced: c.unpriced,
        input_tokens: c.input_tokens,
        output_tokens: c.output_tokens,
        cache_read_tokens: c.cache_read_tokens,
        cache_write_tokens: c.cache_write_tokens,
        reasoning_tokens: c.reasoning_tokens,
        cost_nano_usd: c.cost_nano_usd,
        latency_ms_hist: r.latency.clone(),
        ttft_ms_hist: r.ttft.clone(),
        correction: r.correction,
    }
}

fn row(c: proto::OpenCell) -> Rollup {
    let text = |s: Option<String>| s.map(Arc::from);
    Rollup {
        minute: c.minute,
        key: AggKey([
            text(c.tenant),
            text(c.service),
            text(c.provider),
            text(c.model),
            text(c.operation),
            text(c.prompt_name),
            text(c.prompt_version),
        ]),
        counters: Counters {
            requests: c.requests,
            errors: c.errors,
            unpriced: c.unpriced,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cache_read_tokens: c.cache_read_tokens,
            cache_write_tokens: c.cache_write_tokens,
            reasoning_tokens: c.reasoning_tokens,
            cost_nano_usd: c.cost_nano_usd,
        },
        latency: c.latency_ms_hist,
        ttft: c.ttft_ms_hist,
        correction: c.correction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::hdr;

    fn at(segment: u64, offset: u64) -> WalPosition {
        WalPosition { segment, offset }
    }

    fn mark(sequence: u64) -> RollupMark {
        RollupMark {
            sequence,
            aggregated_before: at(1, 100 * sequence),
            aggregated_since: vec![],
            closed_until: 60 * sequence as i64,
            open: vec![],
        }
    }

    #[test]
    fn a_mark_with_its_open_cells_survives_a_write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RollupMark::recover(dir.path()), None);
        let mut latency = hdr::new_histogram(3).unwrap();
        latency.record(120).unwrap();
        let tenant: Arc<str> = Arc::from("team");
        let mut key = AggKey::overflow(&tenant);
        key.0[5] = None;
        let mark = RollupMark {
            sequence: 7,
            aggregated_before: at(3, 4096),
            aggregated_since: vec![at(3, 5000), at(4, 24)],
            closed_until: 1_700_000_040_000_000_000,
            open: vec![Arc::new(Rollup {
                minute: 1_700_000_040_000_000_000,
                key,
                counters: Counters {
                    requests: 3,
                    cost_nano_usd: 42,
                    ..Counters::default()
                },
                latency: hdr::encode(&latency),
                ttft: Some(hdr::encode(&latency)),
                correction: true,
            })],
        };
        mark.write(dir.path()).unwrap();
        assert_eq!(RollupMark::recover(dir.path()), Some(mark));
    }

    #[test]
    fn a_damaged_mark_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = mark(1).encode();
        bytes.truncate(bytes.len() - 1);
        for bytes in [
            vec![],
            bytes,
            b"llmtrace-rollup-mark-v1 3:4096 12 2:24 -".to_vec(),
        ] {
            std::fs::write(dir.path().join(FILE), &bytes).unwrap();
            assert_eq!(RollupMark::recover(dir.path()), None, "{bytes:?}");
        }
    }

    #[test]
    fn rows_written_without_their_mark_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let old = mark(1);
        old.write(dir.path()).unwrap();

        // Crash after the rows, before the mark: rows go, the old mark stays.
        let rows = dir.path().join("rows-1.parquet");
        let never_written = dir.path().join("rows-2.parquet");
        mark(2)
            .intend(dir.path(), &[rows.clone(), never_written])
            .unwrap();
        std::fs::write(&rows, b"rows").unwrap();
        assert_eq!(RollupMark::recover(dir.path()), Some(old));
        assert!(!rows.exists());
        assert!(!dir.path().join(INTENT).exists());

        // Crash after the mark, before the intent was removed: rows stay.
        let new = mark(2);
        new.intend(dir.path(), std::slice::from_ref(&rows)).unwrap();
        std::fs::write(&rows, b"rows").unwrap();
        std::fs::rename(dir.path().join(INTENT), dir.path().join("keep")).unwrap();
        new.write(dir.path()).unwrap();
        std::fs::rename(dir.path().join("keep"), dir.path().join(INTENT)).unwrap();
        assert_eq!(RollupMark::recover(dir.path()), Some(new));
        assert!(rows.exists());
        assert!(!dir.path().join(INTENT).exists());
    }

    #[test]
    fn a_request_is_counted_when_logged_before_the_mark_or_aggregated_beyond_it() {
        let mark = RollupMark {
            aggregated_since: vec![at(5, 300)],
            aggregated_before: at(5, 100),
            ..mark(1)
        };
        assert!(mark.counts(at(5, 99)));
        assert!(mark.counts(at(4, 10)));
        // A request that finished before an earlier one.
        assert!(mark.counts(at(5, 300)));
        // Not aggregated when the mark was taken.
        assert!(!mark.counts(at(5, 100)));
        assert!(!mark.counts(at(5, 200)));
        assert!(!mark.counts(at(6, 0)));
    }
}
