//! The `rollups` table: the rollup files of the data dir, partitioned by
//! `tenant` and `date`, listed at each scan so files the roller or the
//! compactor just wrote are seen, and the inputs of a finished compaction
//! are not (see `store::compaction`).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;

use super::partitions::{
    file_scan, partition_type, partitioned_file, prune, FileSource, Layout, Partition,
};
use crate::aggregate::rollup::rollup_schema;
use crate::store::list_rollup_files;

/// A partition holds a day of `minute`.
const LAYOUT: Layout = Layout {
    columns: &["tenant", "date"],
    time_column: "minute",
};

const DAY_NANOS: i64 = 86_400_000_000_000;

#[derive(Debug)]
pub struct RollupsTable {
    data_dir: PathBuf,
    /// When set, only this tenant's partitions exist for this table.
    tenant: Option<Arc<str>>,
    file_schema: SchemaRef,
    /// The file columns followed by the partition columns.
    schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
}

impl RollupsTable {
    pub fn new(data_dir: PathBuf, tenant: Option<Arc<str>>) -> Self {
        let partition_fields: Vec<FieldRef> = LAYOUT
            .columns
            .iter()
            .map(|c| Arc::new(Field::new(*c, partition_type(), false)))
            .collect();
        let file_schema = rollup_schema();
        let fields: Vec<FieldRef> = file_schema
            .fields()
            .iter()
            .cloned()
            .chain(partition_fields.iter().cloned())
            .collect();
        RollupsTable {
            data_dir,
            tenant,
            file_schema,
            schema: Arc::new(Schema::new(fields)),
            partition_fields,
        }
    }
}

#[async_trait]
impl TableProvider for RollupsTable {
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
        let dir = self.data_dir.clone();
        let mut files = tokio::task::spawn_blocking(move || list_rollup_files(&dir))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        // Another tenant's data is not there at all, whatever the query says.
        if let Some(t) = &self.tenant {
            files.retain(|f| f.key.tenant == *t);
        }
        let partitions: Vec<Partition> = files
            .iter()
            .map(|f| Partition {
                values: f.key.column_values().to_vec(),
                first: f.key.day_start_nanos(),
                last: f.key.day_start_nanos().saturating_add(DAY_NANOS - 1),
            })
            .collect();
        let keep = prune(state, filters, &self.schema, &LAYOUT, &partitions);
        let files = files
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(f, _)| {
                partitioned_file(&f.path, f.size, f.modified, f.key.column_values().to_vec())
                    .map(|file| (file, f.path.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let source = FileSource {
            data_dir: &self.data_dir,
            kind: crate::quarantine::Kind::Rollups,
        };
        file_scan(
            state,
            source,
            self.file_schema.clone(),
            self.partition_fields.clone(),
            files,
            projection,
            limit,
        )
        .await
    }
}
