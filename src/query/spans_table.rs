//! The `spans` table: the Parquet files of the Hive layout plus, through a
//! running server, the spans acknowledged but not yet flushed.
//!
//! Each scan takes one [`SpanSnapshot`] (see `store`), so a query sees every
//! acknowledged span exactly once. Partitions are pruned from the filters: on
//! `tenant`, `date` and `hour` directly, and on `start_time`, since a file of
//! partition `date=D/hour=H` holds only spans that started in that hour.
//! Row groups are then pruned by the Parquet reader from the same filters
//! (statistics, page index, the trace_id bloom filter).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, DictionaryArray, RecordBatch, StringArray, UInt16Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;

use super::partitions::{
    file_scan, partition_type, partitioned_file, prune, FileSource, Layout, Partition,
};
use crate::record::span_schema;
use crate::store::{PartitionKey, SpanSnapshot, Store};

/// The partition columns of the Hive layout, in path order; a partition
/// holds an hour of `start_time`.
const LAYOUT: Layout = Layout {
    columns: &["tenant", "date", "hour"],
    time_column: "start_time",
};

/// Where a scan's snapshot comes from.
#[derive(Clone)]
pub enum SpanSource {
    /// The files of a data dir, for queries without a server.
    Dir(PathBuf),
    /// A running store: its files and its buffer.
    Live(Arc<Store>),
}

impl SpanSource {
    fn data_dir(&self) -> &std::path::Path {
        match self {
            SpanSource::Dir(dir) => dir,
            SpanSource::Live(store) => store.data_dir(),
        }
    }

    fn snapshot(&self) -> Result<SpanSnapshot, crate::store::StoreError> {
        match self {
            SpanSource::Dir(dir) => SpanSnapshot::of_dir(dir),
            SpanSource::Live(store) => store.snapshot(),
        }
    }
}

impl std::fmt::Debug for SpanSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpanSource::Dir(dir) => write!(f, "Dir({})", dir.display()),
            SpanSource::Live(_) => f.write_str("Live"),
        }
    }
}

#[derive(Debug)]
pub struct SpansTable {
    source: SpanSource,
    /// When set, only this tenant's partitions exist for this table.
    tenant: Option<Arc<str>>,
    /// The file columns as read (see [`read_schema`]).
    file_schema: SchemaRef,
    /// The file columns followed by the partition columns.
    schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
}

/// The file columns as the reader returns them: top-level strings as
/// Utf8View, which the Parquet reader fills without copying dictionary
/// values and which DataFusion groups and compares faster.
fn read_schema() -> SchemaRef {
    let fields: Vec<FieldRef> = span_schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8View)),
            _ => f.clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

impl SpansTable {
    pub fn new(source: SpanSource) -> Self {
        let partition_fields: Vec<FieldRef> = LAYOUT
            .columns
            .iter()
            .map(|c| Arc::new(Field::new(*c, partition_type(), false)))
            .collect();
        let file_schema = read_schema();
        let fields: Vec<FieldRef> = file_schema
            .fields()
            .iter()
            .cloned()
            .chain(partition_fields.iter().cloned())
            .collect();
        SpansTable {
            source,
            tenant: None,
            file_schema,
            schema: Arc::new(Schema::new(fields)),
            partition_fields,
        }
    }

    /// The same table, showing only `tenant`'s spans (all for `None`).
    pub fn for_tenant(mut self, tenant: Option<Arc<str>>) -> Self {
        self.tenant = tenant;
        self
    }

    /// Which of `keys` can hold rows matching `filters`.
    fn prune(&self, state: &dyn Session, filters: &[Expr], keys: &[&PartitionKey]) -> Vec<bool> {
        const HOUR_NANOS: i64 = 3_600_000_000_000;
        let partitions: Vec<Partition> = keys
            .iter()
            .map(|k| Partition {
                values: k.column_values().to_vec(),
                first: k.hour_start_nanos(),
                last: k.hour_start_nanos().saturating_add(HOUR_NANOS - 1),
            })
            .collect();
        prune(state, filters, &self.schema, &LAYOUT, &partitions)
    }

    /// Buffered batches with their partition columns added, spread over
    /// `partitions` streams.
    fn memory_scan(
        &self,
        batches: Vec<(PartitionKey, RecordBatch)>,
        partitions: usize,
        projection: Option<&Vec<usize>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions.max(1)];
        for (i, (key, batch)) in batches.into_iter().enumerate() {
            let rows = batch.num_rows();
            let mut columns = Vec::with_capacity(self.schema.fields().len());
            for (column, field) in batch.columns().iter().zip(self.file_schema.fields()) {
                columns.push(if column.data_type() == field.data_type() {
                    column.clone()
                } else {
                    datafusion::arrow::compute::cast(column, field.data_type())?
                });
            }
            for value in key.column_values() {
                let keys = UInt16Array::from(vec![0u16; rows]);
                let values = Arc::new(StringArray::from(vec![value])) as ArrayRef;
                columns.push(Arc::new(DictionaryArray::try_new(keys, values)?) as ArrayRef);
            }
            let n = parts.len();
            parts[i % n].push(RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        parts.retain(|p| !p.is_empty());
        Ok(MemorySourceConfig::try_new_exec(
            &parts,
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

#[async_trait]
impl TableProvider for SpansTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters only prune here; rows are still filtered above the scan.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let source = self.source.clone();
        let mut snapshot = tokio::task::spawn_blocking(move || source.snapshot())
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        // Another tenant's data is not there at all, whatever the query says.
        if let Some(t) = &self.tenant {
            snapshot.files.retain(|f| f.key.tenant == *t);
            snapshot.batches.retain(|(k, _)| k.tenant == *t);
        }
        let keys: Vec<&PartitionKey> = snapshot
            .files
            .iter()
            .map(|f| &f.key)
            .chain(snapshot.batches.iter().map(|(k, _)| k))
            .collect();
        let keep = self.prune(state, filters, &keys);
        let (keep_files, keep_batches) = keep.split_at(snapshot.files.len());

        let files = snapshot
            .files
            .iter()
            .zip(keep_files)
            .filter(|(_, k)| **k)
            .map(|(f, _)| {
                partitioned_file(&f.path, f.size, f.modified, f.key.column_values().to_vec())
                    .map(|file| (file, f.path.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        let batches: Vec<(PartitionKey, RecordBatch)> = snapshot
            .batches
            .into_iter()
            .zip(keep_batches)
            .filter_map(|(b, k)| k.then_some(b))
            .collect();

        let mut inputs = Vec::new();
        if !files.is_empty() {
            inputs.push(
                file_scan(
                    state,
                    FileSource {
                        data_dir: self.source.data_dir(),
                        kind: crate::quarantine::Kind::Spans,
                    },
                    self.file_schema.clone(),
                    self.partition_fields.clone(),
                    files,
                    projection,
                    limit,
                )
                .await?,
            );
        }
        if !batches.is_empty() {
            let partitions = state.config().target_partitions();
            inputs.push(self.memory_scan(batches, partitions, projection)?);
        }
        if inputs.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        UnionExec::try_new(inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::PriceBook;
    use crate::query::{QueryEngine, QueryLimits};
    use crate::record::SpanRecord;
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::{col, lit};
    use datafusion::prelude::SessionContext;

    /// 2024-03-05T10:00:00Z
    const TEN: i64 = 1_709_632_800_000_000_000;
    const HOUR: i64 = 3_600_000_000_000;

    fn spans_at(start: i64, n: u8) -> Vec<SpanRecord> {
        (0..n)
            .map(|i| {
                let mut r = SpanRecord::sample("call", i);
                r.start_unix_nano = start + i as i64;
                r.end_unix_nano = start + i as i64 + 1_000_000;
                r
            })
            .collect()
    }

    /// Hours 10 and 11 flushed to files (11 under an awkward tenant name),
    /// hour 12 still in the buffer.
    async fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::new(dir.path(), usize::MAX, 1024, 1));
        let buffer = store.buffer();
        buffer
            .append(&Arc::from("default"), &spans_at(TEN, 3), None)
            .unwrap();
        buffer
            .append(&Arc::from("a/b=%c"), &spans_at(TEN + HOUR, 4), None)
            .unwrap();
        store.flush().await.unwrap();
        buffer
            .append(&Arc::from("default"), &spans_at(TEN + 2 * HOUR, 5), None)
            .unwrap();
        (dir, store)
    }

    async fn text(engine: &QueryEngine, sql: &str) -> String {
        let result = engine.run(sql).await.unwrap();
        datafusion::arrow::util::pretty::pretty_format_batches(&result.batches)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn files_and_buffer_answer_together_with_partition_columns() {
        let (_dir, store) = store().await;
        let engine = QueryEngine::live(store, &PriceBook::default_book(), QueryLimits::default())
            .await
            .unwrap();
        let got = text(
            &engine,
            "SELECT tenant, date, hour, count(*) AS n FROM spans GROUP BY 1, 2, 3 ORDER BY 3",
        )
        .await;
        let want = "\
+---------+------------+------+---+
| tenant  | date       | hour | n |
+---------+------------+------+---+
| default | 2024-03-05 | 10   | 3 |
| a/b=%c  | 2024-03-05 | 11   | 4 |
| default | 2024-03-05 | 12   | 5 |
+---------+------------+------+---+";
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn start_time_and_partition_filters_prune_partitions() {
        let (dir, store) = store().await;
        let table = SpansTable::new(SpanSource::Live(store.clone()));
        let snapshot = store.snapshot().unwrap();
        let mut keys: Vec<&PartitionKey> = snapshot.files.iter().map(|f| &f.key).collect();
        keys.extend(snapshot.batches.iter().map(|(k, _)| k));
        let hours: Vec<u32> = keys.iter().map(|k| k.hour).collect();
        let ctx = SessionContext::new();
        let state = ctx.state();
        let ts = |nanos: i64| {
            lit(ScalarValue::TimestampNanosecond(
                Some(nanos),
                Some("UTC".into()),
            ))
        };
        let kept = |filters: Vec<Expr>| -> Vec<u32> {
            let keep = table.prune(&state, &filters, &keys);
            hours
                .iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(h, _)| *h)
                .collect()
        };
        let mut all = hours.clone();
        all.sort();
        assert_eq!(all, vec![10, 11, 12]);
        let sorted = |mut v: Vec<u32>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(kept(vec![col("start_time").gt_eq(ts(TEN + HOUR + 5))])),
            vec![11, 12]
        );
        assert_eq!(
            sorted(kept(vec![col("start_time").lt(ts(TEN + HOUR))])),
            vec![10]
        );
        assert_eq!(
            sorted(kept(vec![
                col("start_time").between(ts(TEN + 10), ts(TEN + HOUR - 1))
            ])),
            vec![10]
        );
        assert_eq!(sorted(kept(vec![col("hour").eq(lit("12"))])), vec![12]);
        assert_eq!(
            sorted(kept(vec![col("tenant").eq(lit("a/b=%c"))])),
            vec![11]
        );
        assert_eq!(
            sorted(kept(vec![
                col("tenant").in_list(vec![lit("default")], false)
            ])),
            vec![10, 12]
        );
        assert_eq!(
            sorted(kept(vec![col("date").lt(lit("2024-03-05"))])),
            Vec::<u32>::new()
        );
        // Filters on other columns keep everything.
        assert_eq!(
            sorted(kept(vec![col("span_name").eq(lit("x"))])),
            vec![10, 11, 12]
        );

        // And through SQL: the plan reads only the file of hour 11.
        let engine = QueryEngine::open(
            dir.path(),
            &PriceBook::default_book(),
            QueryLimits::default(),
        )
        .await
        .unwrap();
        let plan = text(
            &engine,
            "EXPLAIN SELECT count(*) FROM spans WHERE start_time >= TIMESTAMP '2024-03-05T11:00:00Z'",
        )
        .await;
        assert!(plan.contains("hour=11"), "{plan}");
        assert!(!plan.contains("hour=10"), "{plan}");
        let n = text(
            &engine,
            "SELECT count(*) AS n FROM spans WHERE start_time >= TIMESTAMP '2024-03-05T11:00:00Z'",
        )
        .await;
        assert!(n.contains("| 4 |"), "{n}");
    }
}
