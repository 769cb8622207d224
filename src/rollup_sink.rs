//! The rollup sink: writes the rows of closed minutes to rollups/, then the
//! log's rollup mark that commits them (see `aggregate::mark`), and reports
//! the mark to the [`Ledger`] so the log keeps what the rollups do not count.

use std::sync::Arc;

use crate::aggregate::mark::{self, RollupMark};
use crate::aggregate::{rollup, Aggregator, Closed, Rollup};
use crate::ledger::Ledger;
use crate::metrics::{Metrics, WriteFailure, WriteTarget};
use crate::store::RollupWriter;
use crate::wal::{Log, WalPosition};

/// Now, in unix nanoseconds.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Writes rollup rows, keeping those whose write failed for the next call,
/// and then the log's rollup mark.
pub struct RollupSink {
    writer: RollupWriter,
    pending: Vec<Arc<Rollup>>,
    metrics: Arc<Metrics>,
    /// With a log: the log and the ledger that keeps it.
    log: Option<(Arc<Log>, Arc<Ledger>)>,
    /// The last mark written.
    mark: Option<RollupMark>,
    /// Rollup files written since that mark: every intent names them all,
    /// so a mark that failed to write leaves none unaccounted for.
    uncommitted: Vec<std::path::PathBuf>,
}

impl RollupSink {
    /// A sink writing with `writer`; `ledger` keeps the log when there is
    /// one, `mark` is the log's last (recovered) rollup mark.
    pub fn new(
        writer: RollupWriter,
        metrics: Arc<Metrics>,
        ledger: &Arc<Ledger>,
        mark: Option<RollupMark>,
    ) -> Self {
        Self {
            writer,
            pending: Vec::new(),
            metrics,
            log: ledger.log().map(|log| (log.clone(), ledger.clone())),
            mark,
            uncommitted: Vec::new(),
        }
    }

    /// Closes the due minutes and writes them.
    pub fn tick(&mut self, aggregator: &Aggregator, now: i64) {
        let before = self.log.as_ref().and_then(|(_, l)| l.aggregated_before());
        self.write(aggregator.close_due(now, before), before);
    }

    /// At shutdown: every open minute is written, finished or not (a later
    /// run adds its own rows for the same minute, and queries sum them).
    pub fn finish(&mut self, aggregator: &Aggregator, now: i64) {
        let before = self.log.as_ref().and_then(|(_, l)| l.aggregated_before());
        self.write(aggregator.close_all(now, before), before);
        if !self.pending.is_empty() {
            tracing::error!(
                rows = self.pending.len(),
                "rollup rows could not be written at shutdown"
            );
        }
    }

    /// Writes `closed` rows, then the mark that says the logged requests
    /// before `aggregated_before` (read before the rows were closed) are
    /// counted, in those rows or in the cells left open; see [`RollupMark`].
    fn write(&mut self, closed: Closed, aggregated_before: Option<WalPosition>) {
        self.pending.extend(closed.rows);
        let mark = aggregated_before.map(|before| RollupMark {
            sequence: self.mark.as_ref().map_or(1, |m| m.sequence + 1),
            aggregated_before: before,
            aggregated_since: closed.aggregated_since,
            closed_until: closed.closed_until.unwrap_or(i64::MIN),
            open: closed.open,
        });
        let log = match (&self.log, mark) {
            (Some((log, _)), Some(mark)) => Some((log.clone(), mark)),
            _ => None,
        };
        let rows = !self.pending.is_empty();
        if rows && !self.write_rows(log.as_ref()) {
            // The rows stay in memory for the next tick; the mark stays
            // where it was, and the log keeps their spans.
            return;
        }
        let (Some((log, mark)), Some((_, ledger))) = (log, &self.log) else {
            return;
        };
        let unchanged = self.mark.as_ref().is_some_and(|last| {
            RollupMark {
                sequence: mark.sequence,
                ..last.clone()
            } == mark
        });
        // Rows written under an intent need their mark to commit them.
        if unchanged && !rows {
            return;
        }
        match mark.write(log.dir()) {
            Ok(()) => {
                ledger.set_rollup_floor(Some(mark.aggregated_before));
                self.mark = Some(mark);
                self.uncommitted.clear();
                self.metrics.write_succeeded(WriteTarget::Rollups);
            }
            Err(error) => {
                tracing::warn!(%error, "cannot write the rollup mark; the log keeps more records until it can");
                self.metrics
                    .write_failed(WriteTarget::Rollups, &WriteFailure::of(&error));
            }
        }
    }

    /// Writes every pending row, one file per tenant and day, all or none:
    /// with a log, the files are named in an intent first (`log`'s mark
    /// commits them). True when all were written.
    fn write_rows(&mut self, log: Option<&(Arc<Log>, RollupMark)>) -> bool {
        let parts = match rollup::to_batches(&self.pending) {
            Ok(parts) => parts,
            Err(error) => {
                tracing::error!(%error, "rollup rows could not be encoded");
                self.metrics.rollups_written(0, true);
                self.metrics
                    .write_failed(WriteTarget::Rollups, &WriteFailure::of(&error));
                return false;
            }
        };
        let files: Vec<std::path::PathBuf> = parts
            .iter()
            .map(|(tenant, date, _)| self.writer.path_for(tenant, *date))
            .map(|p| std::path::absolute(&p).unwrap_or(p))
            .collect();
        if let Some((log, mark)) = log {
            let named: Vec<_> = self.uncommitted.iter().chain(&files).cloned().collect();
            if let Err(error) = mark.intend(log.dir(), &named) {
                tracing::error!(%error, "cannot record the rollup files about to be written; retrying at the next tick");
                self.metrics.rollups_written(0, true);
                self.metrics
                    .write_failed(WriteTarget::Rollups, &WriteFailure::of(&error));
                return false;
            }
        }
        for (i, ((_, _, batch), path)) in parts.iter().zip(&files).enumerate() {
            match self.writer.write(path, batch) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), rows = batch.num_rows(), "wrote rollups");
                }
                Err(error) => {
                    tracing::error!(%error, "rollup write failed; retrying at the next tick");
                    self.metrics.rollups_written(0, true);
                    self.metrics
                        .write_failed(WriteTarget::Rollups, &WriteFailure::of(&error));
                    // All or none: the written files go, or their rows would
                    // be written again with the rest.
                    let mut undone = true;
                    for written in &files[..i] {
                        if let Err(error) = std::fs::remove_file(written) {
                            tracing::error!(%error, path = %written.display(), "cannot remove rollup rows of a failed write; they will be counted twice");
                            undone = false;
                        }
                    }
                    if let (Some((log, _)), true, true) = (log, undone, self.uncommitted.is_empty())
                    {
                        if let Err(error) = mark::remove_intent(log.dir()) {
                            tracing::warn!(%error, "cannot remove the rollup intent file");
                        }
                    }
                    return false;
                }
            }
        }
        self.metrics.rollups_written(self.pending.len(), false);
        if log.is_none() {
            // With a log, the mark written next commits these rows.
            self.metrics.write_succeeded(WriteTarget::Rollups);
        }
        self.pending.clear();
        if log.is_some() {
            self.uncommitted.extend(files);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SpanRecord;

    /// An LLM call starting at `start` (unix ns).
    fn call(start: i64) -> SpanRecord {
        let mut r = SpanRecord::sample("chat", 1);
        r.start_unix_nano = start;
        r.end_unix_nano = start + 250_000_000;
        r.facts.llm = Some(crate::genai::LlmFacts {
            provider: Some("openai".into()),
            request_model: Some("gpt-4o".into()),
            operation: Some("chat".into()),
            ..Default::default()
        });
        r
    }

    fn rollup_files(dir: &std::path::Path) -> usize {
        crate::store::list_rollup_files(dir).unwrap().len()
    }

    /// A rollup write the disk refuses: the rows stay for the next tick, the
    /// failure is counted and named for `/readyz`, and once the disk takes
    /// writes again they are written, once, and the failure is cleared.
    #[test]
    fn rollup_rows_that_cannot_be_written_are_kept_and_written_once_the_disk_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let aggregator = Aggregator::new(crate::aggregate::AggregateConfig::default()).unwrap();
        let now = now_nanos();
        let tenant: Arc<str> = Arc::from("default");
        aggregator.record(&tenant, &[call(now - 3_600_000_000_000)], now, None);
        // A file where rollups/ should be: every write of the sink fails.
        let rollups = dir.path().join("rollups");
        std::fs::write(&rollups, b"in the way").unwrap();
        let mut sink = RollupSink {
            writer: RollupWriter::new(dir.path()),
            pending: Vec::new(),
            metrics: metrics.clone(),
            log: None,
            mark: None,
            uncommitted: Vec::new(),
        };
        sink.write(aggregator.close_all(now, None), None);
        assert_eq!(sink.pending.len(), 1, "the row is kept");
        assert!(metrics.is_failing(WriteTarget::Rollups));
        let failing = metrics.failing_writes();
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].0, WriteTarget::Rollups);
        let mut text = String::new();
        metrics.render(crate::metrics::Gauges::default(), &mut text);
        assert!(
            text.contains(
                "llmtrace_storage_write_failures_total{target=\"rollups\",error=\"io\"} 1"
            ),
            "{text}"
        );

        std::fs::remove_file(&rollups).unwrap();
        std::fs::create_dir(&rollups).unwrap();
        sink.write(aggregator.close_all(now, None), None);
        assert!(sink.pending.is_empty());
        assert!(!metrics.is_failing(WriteTarget::Rollups));
        assert!(metrics.failing_writes().is_empty());
        assert_eq!(rollup_files(dir.path()), 1);
        sink.write(aggregator.close_all(now, None), None);
        assert_eq!(rollup_files(dir.path()), 1, "written once");
    }
}
