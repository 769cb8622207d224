//! Start-up replay of the write-ahead log: what the log holds and neither
//! Parquet nor the rollups do is buffered and aggregated again.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::aggregate::mark::RollupMark;
use crate::aggregate::{AggregateError, Aggregator};
use crate::ingest::{IngestError, Pipeline};
use crate::store::PartitionKey;
use crate::wal::{Replayed, WalPosition};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The mark's open cells could not be restored.
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// Buffers again what the log holds and Parquet does not: the spans of each
/// record, minus those of partitions whose files say they hold the record.
/// Aggregates again what the rollup files do not count, per the log's mark.
pub fn replay(
    pipeline: &Pipeline,
    aggregator: &Aggregator,
    data_dir: &Path,
    mark: Option<&RollupMark>,
    replayed: Vec<Replayed>,
) -> Result<(), ReplayError> {
    if let Some(mark) = mark {
        aggregator.restore(mark)?;
    }
    // The records replayed stay in the log until rollups count them.
    pipeline.ledger().set_rollup_floor(match mark {
        Some(mark) => Some(mark.aggregated_before),
        None => replayed.first().map(|r| r.position),
    });
    if replayed.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let records = replayed.len();
    let mut files: HashMap<PartitionKey, HashSet<WalPosition>> = HashMap::new();
    let mut persisted = |key: &PartitionKey, pos: WalPosition| {
        files
            .entry(key.clone())
            .or_insert_with(|| persisted_positions(data_dir, key))
            .contains(&pos)
    };
    pipeline.observe_for_replay(&replayed);
    let mut spans = 0;
    for entry in replayed {
        spans += pipeline.replay(entry, &mut persisted, mark)?;
    }
    tracing::info!(
        records,
        spans,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replayed the write-ahead log"
    );
    Ok(())
}

/// The log positions the span files of partition `key` say they hold.
fn persisted_positions(data_dir: &Path, key: &PartitionKey) -> HashSet<WalPosition> {
    let mut held = HashSet::new();
    let files = crate::store::partition_files(data_dir, key).unwrap_or_else(|error| {
        tracing::warn!(%error, partition = ?key, "cannot list a partition's span files");
        Vec::new()
    });
    for file in files {
        match crate::store::wal_positions(&file.path) {
            Ok(positions) => held.extend(positions),
            // A damaged file goes to quarantine and its records,
            // if the log still has them, are buffered again: they
            // are stored once, in a new file.
            Err(error) => {
                let outcome = crate::quarantine::set_aside_if_damaged(
                    data_dir,
                    &file.path,
                    crate::quarantine::Kind::Spans,
                    &error,
                );
                if !outcome.damaged() {
                    tracing::warn!(%error, path = %file.path.display(), ?outcome, "cannot read a span file's log positions");
                }
            }
        }
    }
    held
}
