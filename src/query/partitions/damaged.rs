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
        let state = FileByFile {
            remaining: config.limit,
            template: config.clone(),
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
