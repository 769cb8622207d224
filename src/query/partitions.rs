//! What the tables over Hive-partitioned files share: partition columns as
//! one-entry dictionaries, pruning of whole partitions from a query's
//! filters, and the Parquet scan of the files that remain.
//!
//! Each partition has one value per partition column and holds rows of one
//! time range (an hour of `start_time` for spans, a day of `minute` for
//! rollups), so filters on either rule it out without opening a file.
//!
//! The scan skips (and sets aside) files that turn out to be damaged; see
//! [`damaged`].

mod damaged;

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::Expr;
use datafusion::object_store;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;

/// Partition values are one string per file: a dictionary of one entry
/// costs nothing per row, where plain strings would be copied into every batch.
pub fn partition_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8))
}

fn partition_value(v: String) -> ScalarValue {
    ScalarValue::Dictionary(
        Box::new(DataType::UInt16),
        Box::new(ScalarValue::Utf8(Some(v))),
    )
}

/// A table's partitioning: its partition columns, in path order, and the
/// time column whose values each partition bounds.
pub struct Layout {
    pub columns: &'static [&'static str],
    pub time_column: &'static str,
}

/// One partition as pruning sees it.
pub struct Partition {
    /// One value per partition column.
    pub values: Vec<String>,
    /// First and last instant (unix ns) of the time column in it.
    pub first: i64,
    pub last: i64,
}

/// Which of `partitions` can hold rows matching `filters` (all, when the
/// filters say nothing about partitions or cannot be analysed). `schema`
/// is the table's: file columns, then partition columns.
pub fn prune(
    state: &dyn Session,
    filters: &[Expr],
    schema: &SchemaRef,
    layout: &Layout,
    partitions: &[Partition],
) -> Vec<bool> {
    let all = vec![true; partitions.len()];
    let Some(predicate) = conjunction(filters.iter().cloned()) else {
        return all;
    };
    let pruned = (|| {
        let df_schema = DFSchema::try_from(schema.clone())?;
        let physical = state.create_physical_expr(predicate, &df_schema)?;
        let Some(predicate) = PruningPredicateBuilder::new()
            .with_file_schema(schema.clone())
            .build(physical)
        else {
            return Ok(all.clone());
        };
        predicate.prune(&PartitionStatistics::new(layout, partitions, schema)?)
    })();
    pruned.unwrap_or_else(|e: DataFusionError| {
        tracing::debug!(error = %e, "partition pruning skipped");
        all
    })
}

/// A file of a partition with `values`, for a file scan.
pub fn partitioned_file(
    path: &std::path::Path,
    size: u64,
    modified: std::time::SystemTime,
    values: Vec<String>,
) -> Result<PartitionedFile> {
    // The data dir may be relative (`./llmtrace-data` by default); object
    // store paths are absolute.
    let location = std::path::absolute(path)
        .map_err(DataFusionError::IoError)
        .and_then(|p| {
            object_store::path::Path::from_absolute_path(p)
                .map_err(|e| DataFusionError::External(Box::new(e)))
        })?;
    let meta = object_store::ObjectMeta {
        location,
        last_modified: modified.into(),
        size,
        e_tag: None,
        version: None,
    };
    Ok(PartitionedFile::new_from_meta(meta)
        .with_partition_values(values.into_iter().map(partition_value).collect()))
}

/// Where a table's files are: the data dir, and what is in them.
pub struct FileSource<'a> {
    pub data_dir: &'a std::path::Path,
    pub kind: crate::quarantine::Kind,
}

/// A Parquet scan of `files` (each with its local path), with the partition
/// columns after the file's. A file that cannot be read because its bytes
/// are damaged is set aside and the scan goes on without it.
pub async fn file_scan(
    state: &dyn Session,
    source: FileSource<'_>,
    file_schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
    files: Vec<(PartitionedFile, std::path::PathBuf)>,
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let paths = files
        .iter()
        .map(|(f, path)| (f.object_meta.location.clone(), path.clone()))
        .collect();
    let files = files.into_iter().map(|(f, _)| f).collect();
    let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
    let table_schema = TableSchema::builder(file_schema)
        .with_table_partition_cols(partition_fields)
        .build();
    let groups = FileGroup::new(files).split_files(state.config().target_partitions());
    let config = FileScanConfigBuilder::new(
        ObjectStoreUrl::local_filesystem(),
        format.file_source(table_schema),
    )
    .with_file_groups(groups)
    .with_projection_indices(projection.cloned())?
    .with_limit(limit)
    .build();
    let scan = format.create_physical_plan(state, config).await?;
    let files = damaged::ScanFiles {
        data_dir: source.data_dir.to_owned(),
        kind: source.kind,
        paths,
    };
    Ok(Arc::new(damaged::SkipDamagedExec::new(
        scan,
        Arc::new(files),
    )))
}

fn text_of(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s),
        ScalarValue::Dictionary(_, inner) => text_of(inner),
        _ => None,
    }
}

/// Partitions as pruning containers: each partition column takes one value
/// per partition, the time column spans the partition's range.
struct PartitionStatistics {
    columns: &'static [&'static str],
    time_column: &'static str,
    /// Per partition column, its value per container, as text and as the
    /// column's own type (what the predicate compares with).
    values: Vec<StringArray>,
    typed: Vec<ArrayRef>,
    time_min: ArrayRef,
    time_max: ArrayRef,
    containers: usize,
}

impl PartitionStatistics {
    fn new(layout: &Layout, partitions: &[Partition], schema: &Schema) -> Result<Self> {
        let values: Vec<StringArray> = (0..layout.columns.len())
            .map(|i| {
                partitions
                    .iter()
                    .map(|p| p.values.get(i).map(String::as_str))
                    .collect()
            })
            .collect();
        let typed = values
            .iter()
            .map(|v| datafusion::arrow::compute::cast(v, &partition_type()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let time_type = schema.field_with_name(layout.time_column)?.data_type();
        let firsts = Int64Array::from_iter_values(partitions.iter().map(|p| p.first));
        let lasts = Int64Array::from_iter_values(partitions.iter().map(|p| p.last));
        Ok(PartitionStatistics {
            columns: layout.columns,
            time_column: layout.time_column,
            values,
            typed,
            time_min: datafusion::arrow::compute::cast(&firsts, time_type)?,
            time_max: datafusion::arrow::compute::cast(&lasts, time_type)?,
            containers: partitions.len(),
        })
    }

    fn column_index(&self, column: &Column) -> Option<usize> {
        self.columns.iter().position(|c| *c == column.name())
    }
}

impl PruningStatistics for PartitionStatistics {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        if column.name() == self.time_column {
            return Some(self.time_min.clone());
        }
        self.column_index(column).map(|i| self.typed[i].clone())
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        if column.name() == self.time_column {
            return Some(self.time_max.clone());
        }
        self.column_index(column).map(|i| self.typed[i].clone())
    }

    fn num_containers(&self) -> usize {
        self.containers
    }

    fn null_counts(&self, _column: &Column) -> Option<ArrayRef> {
        None
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        None
    }

    #[allow(clippy::mutable_key_type)] // the trait's signature
    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        let column = &self.values[self.column_index(column)?];
        // The literals arrive in the column's type (a dictionary) or as
        // plain text; anything else we cannot judge.
        let texts: Option<HashSet<&str>> = values.iter().map(text_of).collect();
        let texts = texts?;
        Some(
            (0..column.len())
                .map(|i| Some(texts.contains(column.value(i))))
                .collect(),
        )
    }
}
