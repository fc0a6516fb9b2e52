//! The Parquet scan of sealed segments, the same wherever it runs: on the
//! node that planned the query, or on a worker that was handed a fragment
//! of it (see [`fragment`](super::fragment)). A [`SegmentReader`] is one
//! process's way to the segments: its own object store (its own
//! credentials) and its own cache of footers and indexes.
//!
//! It reads segments only; it never decides which ones, nor whose rows.

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::config::TableParquetOptions;
use datafusion::common::{DFSchema, Result};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, ScalarUDF};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::model;
use crate::storage::objects::SegmentStore;
use crate::storage::packed;

use super::SegmentCache;
use super::unpack_id::{UNPACK_ID, UnpackId};

/// One process's way to the sealed segments: where they are stored, and the
/// cache their footers and indexes are kept in.
#[derive(Debug, Clone)]
pub struct SegmentReader {
    pub store: Arc<SegmentStore>,
    pub cache: SegmentCache,
}

impl SegmentReader {
    /// Scans segment `files`, which store ids packed (see
    /// [`packed`](crate::storage::packed)): the Parquet scan reads segment
    /// columns, and a projection above it gives the table's columns back.
    /// With `in_source`, the filters are the Parquet source's predicate
    /// (pruning, and the row filter) whatever the session's settings.
    pub fn segments_scan(
        &self,
        state: &dyn Session,
        files: Vec<PartitionedFile>,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
        in_source: bool,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let table = model::schema();
        let segment = packed::segment_schema();
        // The session's Parquet options, so `SET datafusion.execution.parquet.*`
        // works per connection; strings stay `Utf8` as in our schema.
        let mut options =
            TableParquetOptions { global: state.config_options().execution.parquet.clone(), ..Default::default() };
        options.global.schema_force_view_types = false;
        if in_source {
            options.global.pushdown_filters = true;
        }
        let store = &self.store;
        let mut source = ParquetSource::new(Arc::clone(&segment))
            .with_table_parquet_options(options)
            .with_parquet_file_reader_factory(self.cache.reader_factory(store.object_store()));
        // Filters on packed columns cannot prune segment files; DataFusion
        // applies them above the scan like every other filter.
        let prunable = filters.iter().filter(|f| f.column_refs().iter().all(|c| !packed::is_packed(&c.name)));
        // With `pushdown_filters` on, DataFusion's physical optimizer pushes
        // the filters it keeps above the scan down into this source itself;
        // handing them over here too made every row filter run twice.
        let pushed_later = state.config_options().execution.parquet.pushdown_filters && !in_source;
        if let Some(predicate) = conjunction(prunable.cloned()).filter(|_| !pushed_later) {
            let df_schema = DFSchema::try_from(Arc::clone(&segment))?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }

        let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..table.fields().len()).collect());
        let mut read: Vec<usize> = Vec::new();
        let mut read_column = |name: &str| -> Result<Arc<dyn PhysicalExpr>> {
            read.push(segment.index_of(name)?);
            Ok(Arc::new(Column::new(name, read.len() - 1)))
        };
        let mut outputs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(wanted.len());
        for &i in &wanted {
            let field = table.field(i);
            let expr: Arc<dyn PhysicalExpr> = if packed::is_packed(field.name()) {
                let args = vec![
                    read_column(&packed::uuid_column(field.name()))?,
                    read_column(&packed::text_column(field.name()))?,
                ];
                let udf = Arc::new(ScalarUDF::new_from_impl(UnpackId::new()));
                let config = Arc::new(state.config_options().clone());
                Arc::new(ScalarFunctionExpr::new(UNPACK_ID, udf, args, Arc::new(field.clone()), config))
            } else {
                read_column(field.name())?
            };
            outputs.push((expr, field.name().clone()));
        }

        let store_url = self.store.url().clone();
        let unpacking = wanted.iter().any(|&i| packed::is_packed(table.field(i).name()));
        let config = FileScanConfigBuilder::new(store_url, Arc::new(source))
            .with_projection_indices(Some(read))?
            .with_limit(limit)
            .with_file_groups(newest_first_groups(files, state.config().target_partitions()))
            .build();
        let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
        if !unpacking {
            // Every column read is a table column as it is.
            return Ok(scan);
        }
        Ok(Arc::new(ProjectionExec::try_new(outputs, scan)?))
    }
}

/// Segment files (newest first) dealt out to `partitions` groups in turn,
/// so that every partition reads from the newest down: handed out in
/// contiguous runs, one partition would start at the oldest segments and
/// read them before a `LIMIT` over the newest could rule them out.
fn newest_first_groups(files: Vec<PartitionedFile>, partitions: usize) -> Vec<FileGroup> {
    let mut groups = vec![Vec::new(); partitions.clamp(1, files.len().max(1))];
    let count = groups.len();
    for (i, file) in files.into_iter().enumerate() {
        groups[i % count].push(file);
    }
    groups.into_iter().map(FileGroup::new).collect()
}
