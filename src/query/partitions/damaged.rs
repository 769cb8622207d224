//! A Parquet scan that goes on past a damaged file.
//!
//! DataFusion's file scan fails the whole query at the first file it cannot
//! read, so one truncated or garbled file used to make every query over its
//! partition answer 500 until someone removed it by hand. [`SkipDamagedExec`]
//! sits on top of the scan and reads each output partition's files one at a
//! time, each as a scan of its own (the same config, filters and projection
//! pushed into it), so a failure is known to come from one file. That file
//! is then read again on its own, end to end ([`quarantine::set_aside_if_damaged`]):
//! if its bytes are damaged it is moved to `quarantine/` and the query goes on
//! with the next file; if it reads fine (the error was the query's: memory
//! limit, a file removed by compaction meanwhile), the error is the query's
//! answer, as before.
//!
//! Rows the damaged file gave before its damage was reached stay in the
//! answer of the query that found it; later queries do not see the file.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::object_store;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::CardinalityEffect;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, StatisticsArgs,
};
use futures::StreamExt;

use crate::quarantine::{self, Kind};

/// Where the files of a scan live and what they are, for setting one aside.
#[derive(Debug)]
pub struct ScanFiles {
    pub data_dir: PathBuf,
    pub kind: Kind,
    /// The local path of each file, by its location in the plan (object
    /// store paths are percent-encoded; the tenant directory may need it).
    pub paths: HashMap<object_store::path::Path, PathBuf>,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct SkipDamagedExec {
    input: Arc<dyn ExecutionPlan>,
    files: Arc<ScanFiles>,
    properties: Arc<PlanProperties>,
}

impl SkipDamagedExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, files: Arc<ScanFiles>) -> Self {
        let properties = input.properties().clone();
        SkipDamagedExec {
            input,
            files,
            properties,
        }
    }
}

impl DisplayAs for SkipDamagedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SkipDamagedExec: kind={}", self.files.kind.label())
    }
}

impl ExecutionPlan for SkipDamagedExec {
    fn name(&self) -> &str {
        "SkipDamagedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    /// The scan must stay this node's child: a repartition the optimizer
    /// put between them would hide the files. Spreading a scan of fewer
    /// files than cores over threads is done above this node instead.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("SkipDamagedExec takes one child, got {}", children.len());
        }
        Ok(Arc::new(SkipDamagedExec::new(
            children.swap_remove(0),
            self.files.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let config = self
            .input
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>());
        let Some(config) = config else {
            // Not a file scan any more (an optimizer rewrote it): read as is.
            return self.input.execute(partition, context);
        };
        let files: VecDeque<PartitionedFile> = config
            .file_groups
            .get(partition)
            .map(|group| group.files().iter().cloned().collect())
            .unwrap_or_default();
        // Without its file list: each file's copy holds that file alone,
        // and copying every file per file would cost files squared.
        let mut template = config.clone();
        template.file_groups = Vec::new();
        let state = FileByFile {
            remaining: config.limit,
            template,
            files,
            current: None,
            context,
            scan: self.files.clone(),
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            stream,
        )))
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(Arc::clone(&input_stats[0]))
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    /// Projections and filters go into the scan below, as without this node:
    /// each file's own scan is a copy of it.
    fn try_swapping_with_projection(
        &self,
        projection: &ProjectionExec,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        Ok(self
            .input
            .try_swapping_with_projection(projection)?
            .map(|input| Arc::new(SkipDamagedExec::new(input, self.files.clone())) as _))
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }
}

/// The files of one output partition, read one after the other.
struct FileByFile {
    /// The scan's config; each file is read with a copy of it.
    template: FileScanConfig,
    files: VecDeque<PartitionedFile>,
    current: Option<(object_store::path::Path, SendableRecordBatchStream)>,
    context: Arc<TaskContext>,
    /// Rows still wanted under the scan's limit.
    remaining: Option<usize>,
    scan: Arc<ScanFiles>,
}

impl FileByFile {
    async fn next(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            if self.remaining == Some(0) {
                return None;
            }
            if self.current.is_none() {
                let file = self.files.pop_front()?;
                let location = file.object_meta.location.clone();
                let known = self.scan.paths.get(&location);
                if known.is_some_and(|p| quarantine::known_damaged(p)) {
                    continue;
                }
                let mut one = self.template.clone();
                one.file_groups = vec![FileGroup::new(vec![file])];
                match DataSourceExec::new(Arc::new(one)).execute(0, self.context.clone()) {
                    Ok(stream) => self.current = Some((location, stream)),
                    Err(error) => {
                        if let Err(error) = self.skip(&location, error).await {
                            return Some(Err(error));
                        }
                        continue;
                    }
                }
            }
            let Some((_, stream)) = &mut self.current else {
                continue;
            };
            match stream.next().await {
                Some(Ok(batch)) => {
                    let batch = match &mut self.remaining {
                        Some(remaining) => {
                            let rows = batch.num_rows().min(*remaining);
                            *remaining -= rows;
                            batch.slice(0, rows)
                        }
                        None => batch,
                    };
                    return Some(Ok(batch));
                }
                None => self.current = None,
                Some(Err(error)) => {
                    let location = self.current.take().map(|(l, _)| l).unwrap_or_default();
                    if let Err(error) = self.skip(&location, error).await {
                        return Some(Err(error));
                    }
                }
            }
        }
    }

    /// Whether reading may go on after `error` from the file at `location`:
    /// `Ok` when the file is damaged (and set aside); else the error, and
    /// the stream ends with it.
    async fn skip(
        &mut self,
        location: &object_store::path::Path,
        error: DataFusionError,
    ) -> Result<()> {
        let Some(path) = self.scan.paths.get(location).cloned() else {
            self.files.clear();
            return Err(error);
        };
        let (data_dir, kind) = (self.scan.data_dir.clone(), self.scan.kind);
        let message = error.to_string();
        let checked = tokio::task::spawn_blocking(move || {
            quarantine::set_aside_if_damaged(&data_dir, &path, kind, &message)
        })
        .await;
        match checked {
            Ok(outcome) if outcome.damaged() => Ok(()),
            _ => {
                self.files.clear();
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::pricing::PriceBook;
    use crate::query::{QueryEngine, QueryLimits};
    use crate::record::SpanRecord;
    use crate::store::{list_span_files, Store};

    /// 2024-03-05T10:00:00Z
    const TEN: i64 = 1_709_632_800_000_000_000;
    const HOUR: i64 = 3_600_000_000_000;

    /// Three span files: two in hour 10 (100 and 200 spans), one in hour 11
    /// (400 spans); returns them in that order.
    async fn three_files(dir: &Path) -> (Arc<Store>, Vec<PathBuf>) {
        let store = Arc::new(Store::new(dir, usize::MAX, 1024, 1));
        let mut files = Vec::new();
        for (start, n) in [(TEN, 100), (TEN + 60_000_000_000, 200), (TEN + HOUR, 400)] {
            let records: Vec<SpanRecord> = (0..n)
                .map(|i| {
                    let mut r = SpanRecord::sample("call", (i % 200) as u8);
                    r.start_unix_nano = start + i as i64;
                    r.end_unix_nano = r.start_unix_nano + 1_000;
                    r
                })
                .collect();
            store
                .buffer()
                .append(&Arc::from("default"), &records, None)
                .unwrap();
            store.flush().await.unwrap();
            let new = list_span_files(dir)
                .unwrap()
                .into_iter()
                .map(|f| f.path)
                .find(|p| !files.contains(p))
                .unwrap();
            files.push(new);
        }
        (store, files)
    }

    fn truncate(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    }

    /// 200 bytes of the first column's first page (header and data).
    fn garble(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        for b in &mut bytes[4..204] {
            *b ^= 0xa5;
        }
        std::fs::write(path, &bytes).unwrap();
    }

    async fn count(engine: &QueryEngine, sql: &str) -> i64 {
        let result = engine
            .run(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let column = result.batches[0].column(0);
        datafusion::arrow::array::cast::as_primitive_array::<
            datafusion::arrow::datatypes::Int64Type,
        >(column)
        .value(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_span_file_is_set_aside_and_queries_answer_over_the_rest() {
        for truncated in [true, false] {
            let (what, damage): (_, fn(&Path)) = if truncated {
                ("truncated", truncate)
            } else {
                ("garbled", garble)
            };
            for live in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let (store, files) = three_files(dir.path()).await;
                damage(&files[0]);
                let prices = PriceBook::default_book();
                let limits = QueryLimits::default();
                let engine = if live {
                    QueryEngine::live(store.clone(), &prices, limits).await
                } else {
                    QueryEngine::open(dir.path(), &prices, limits).await
                }
                .unwrap();
                let before = quarantine::files_total(Kind::Spans);
                // Reads the first column of every file of hour 10 and 11.
                let sql = "SELECT count(trace_id) FROM spans";
                assert_eq!(count(&engine, sql).await, 600, "{what}, live {live}");
                let moved = quarantine::destination(dir.path(), &files[0]);
                assert!(moved.is_file(), "{what}: {} set aside", moved.display());
                assert!(!files[0].exists());
                assert!(quarantine::files_total(Kind::Spans) > before);
                // And again, now without it; the partition's other file and
                // the other partition are all there.
                assert_eq!(count(&engine, sql).await, 600);
                let by_hour = "SELECT count(trace_id) FROM spans WHERE hour = '10'";
                assert_eq!(count(&engine, by_hour).await, 200);
                assert!(files[1].exists() && files[2].exists());
            }
        }
    }

    /// An error that is not the file's (here: a file removed between the
    /// listing and the read) leaves good files where they are.
    #[tokio::test]
    async fn a_readable_file_is_never_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, files) = three_files(dir.path()).await;
        let outcome = quarantine::set_aside_if_damaged(dir.path(), &files[1], Kind::Spans, &"x");
        assert!(
            matches!(outcome, quarantine::Outcome::Readable),
            "{outcome:?}"
        );
        std::fs::remove_file(&files[2]).unwrap();
        let outcome = quarantine::set_aside_if_damaged(dir.path(), &files[2], Kind::Spans, &"x");
        assert!(matches!(outcome, quarantine::Outcome::Unavailable(_)));
        assert!(!quarantine::dir(dir.path()).exists());
    }
}

#[cfg(test)]
mod rollup_tests {
    use super::*;
    use crate::pricing::PriceBook;
    use crate::query::{QueryEngine, QueryLimits};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_rollup_file_is_set_aside_and_queries_answer_over_the_rest() {
        use crate::aggregate::{hdr, AggKey, Counters, Rollup};
        let dir = tempfile::tempdir().unwrap();
        let writer = crate::store::RollupWriter::new(dir.path());
        let tenant: Arc<str> = Arc::from("default");
        for m in 0..3i64 {
            let mut latency = hdr::new_histogram(3).unwrap();
            latency.record(5).unwrap();
            let row = Arc::new(Rollup {
                minute: 1_700_000_000_000_000_000 + m * 60_000_000_000,
                key: AggKey::overflow(&tenant),
                counters: Counters {
                    requests: 10 + m as u64,
                    ..Counters::default()
                },
                latency: hdr::encode(&latency),
                ttft: None,
                correction: false,
            });
            for (tenant, date, batch) in crate::aggregate::rollup::to_batches(&[row]).unwrap() {
                writer
                    .write(&writer.path_for(&tenant, date), &batch)
                    .unwrap();
            }
        }
        let files = crate::store::list_rollup_files(dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        // Alone in its partition and in the scan: one file is one scan
        // partition, fewer than the engine's threads.
        let single = tempfile::tempdir().unwrap();
        let only = quarantine::destination(dir.path(), &files[0].path);
        let only = single
            .path()
            .join(only.strip_prefix(quarantine::dir(dir.path())).unwrap());
        std::fs::create_dir_all(only.parent().unwrap()).unwrap();
        std::fs::copy(&files[0].path, &only).unwrap();
        let engine = QueryEngine::open(
            dir.path(),
            &PriceBook::default_book(),
            QueryLimits::default(),
        )
        .await
        .unwrap();
        let sql = "SELECT CAST(sum(requests) AS BIGINT) FROM rollups";
        let sum = |result: crate::query::QueryResult| {
            datafusion::arrow::array::cast::as_primitive_array::<
                datafusion::arrow::datatypes::Int64Type,
            >(result.batches[0].column(0))
            .value(0)
        };
        assert_eq!(sum(engine.run(sql).await.unwrap()), 33);
        let bytes = std::fs::read(&files[1].path).unwrap();
        std::fs::write(&files[1].path, &bytes[..bytes.len() / 2]).unwrap();
        let result = engine.run(sql).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sum(result), 22);
        assert!(quarantine::destination(dir.path(), &files[1].path).is_file());

        let engine = QueryEngine::open(
            single.path(),
            &PriceBook::default_book(),
            QueryLimits::default(),
        )
        .await
        .unwrap();
        assert_eq!(sum(engine.run(sql).await.unwrap()), 10);
        let bytes = std::fs::read(&only).unwrap();
        std::fs::write(&only, &bytes[..bytes.len() / 2]).unwrap();
        let result = engine.run(sql).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(result.batches[0].column(0).null_count(), 1, "no rows left");
        assert!(quarantine::destination(single.path(), &only).is_file());
    }
}
