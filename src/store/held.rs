//! Rows of LLM calls that wait for their trace's ancestors (see
//! `ingest::assemble`) before they are buffered for good. They are held here,
//! in the buffer's own state and under its lock, so that a snapshot sees a
//! held row exactly once: in the held set before its release, in the buffer
//! after, never in both nor in neither. Held rows are not flushed: the
//! write-ahead log keeps their request until they are released.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;

use super::{PartitionKey, SpanBuffer, StoreError};
use crate::record::{SpanBatchBuilder, SpanRecord};
use crate::wal::WalPosition;

/// Names one held request's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeldId(u64);

#[derive(Default)]
pub(super) struct HeldRows {
    next: u64,
    rows: HashMap<HeldId, (Arc<str>, Vec<SpanRecord>, usize)>,
    pub(super) bytes: usize,
}

impl HeldRows {
    /// The held rows as batches by partition, for a snapshot.
    pub(super) fn batches(&self) -> Result<Vec<(PartitionKey, RecordBatch)>, StoreError> {
        let mut by_key: HashMap<PartitionKey, SpanBatchBuilder> = HashMap::new();
        for (tenant, records, _) in self.rows.values() {
            for r in records {
                by_key
                    .entry(PartitionKey::for_span(tenant, r.start_unix_nano))
                    .or_default()
                    .append(r);
            }
        }
        let mut out = Vec::with_capacity(by_key.len());
        for (key, mut builder) in by_key {
            out.push((key, builder.finish()?));
        }
        Ok(out)
    }
}

impl SpanBuffer {
    /// Holds `records` of `tenant` out of the buffer until [`SpanBuffer::release`]:
    /// visible to queries, not written. Their bytes count towards the buffer's.
    pub fn hold(&self, tenant: &Arc<str>, records: Vec<SpanRecord>) -> HeldId {
        let bytes: usize = records.iter().map(SpanRecord::approx_bytes).sum();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let held = &mut state.held;
        let id = HeldId(held.next);
        held.next += 1;
        held.bytes += bytes;
        held.rows.insert(id, (tenant.clone(), records, bytes));
        id
    }

    /// Moves the rows held as `id` into the buffer, as rows of the log record
    /// at `wal`, after `settle` has had its say on them (context handed down,
    /// duplicates marked). Returns them, for the aggregator.
    pub fn release(
        &self,
        id: HeldId,
        wal: Option<WalPosition>,
        settle: impl FnOnce(&mut [SpanRecord]),
    ) -> Result<(Arc<str>, Vec<SpanRecord>), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some((tenant, mut records, bytes)) = state.held.rows.remove(&id) else {
            return Ok((Arc::from(""), Vec::new()));
        };
        state.held.bytes -= bytes;
        settle(&mut records);
        self.append_locked(&mut state, &tenant, &records, wal)?;
        Ok((tenant, records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_row_is_in_every_snapshot_exactly_once() {
        let buffer = SpanBuffer::new(usize::MAX);
        let tenant: Arc<str> = Arc::from("t");
        let rows = |b: &SpanBuffer| -> usize {
            b.snapshot()
                .unwrap()
                .0
                .iter()
                .map(|(_, batch)| batch.num_rows())
                .sum()
        };
        buffer
            .append(&tenant, &[SpanRecord::sample("plain", 1)], None)
            .unwrap();
        let id = buffer.hold(&tenant, vec![SpanRecord::sample("held", 2)]);
        assert_eq!(rows(&buffer), 2);
        assert!(buffer.total_bytes() > 0);

        let (_, released) = buffer
            .release(id, None, |records| {
                records[0].span_name = "settled".into();
            })
            .unwrap();
        assert_eq!(released[0].span_name, "settled");
        assert_eq!(rows(&buffer), 2, "moved, not copied");
        // Released once only.
        let (_, again) = buffer.release(id, None, |_| {}).unwrap();
        assert!(again.is_empty());
    }
}
