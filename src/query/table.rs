//! The `audit_events` table provider: one storage snapshot per statement,
//! scanned as the buffered batches plus the sealed segments the manifest and
//! the row indexes cannot rule out, inside the session's tenant scope.
//!
//! It plans only; it never writes to storage.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::TableParquetOptions;
use datafusion::common::{DFSchema, DataFusionError, Result, plan_err};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, ScalarUDF, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::prelude::{col, lit};
use futures::StreamExt;
use tracing::debug;

use crate::model;
use crate::storage::segment::LiveSegment;
use crate::storage::{Storage, packed};

use super::scan_exec::{AuditEventsScanExec, IndexSummary, ScanSummary};
use super::unpack_id::{UNPACK_ID, UnpackId};
use super::{Scope, SegmentCache, SessionScope, TABLE, barrier, index_lookup, owner_scope, pruning};

/// Segments whose row indexes one query looks into at once.
const INDEX_LOOKUPS_AT_ONCE: usize = 16;

/// The `audit_events` table: buffered and sealed events of one storage engine.
#[derive(Debug)]
pub struct AuditEventsTable {
    storage: Storage,
    /// Whether filters prune segments, row groups and pages; off only to
    /// check pruning against a full scan.
    pub(super) pushdown: bool,
    cache: SegmentCache,
    scope: SessionScope,
}

impl AuditEventsTable {
    pub fn new(storage: Storage, cache: SegmentCache, scope: SessionScope) -> Self {
        AuditEventsTable { storage, pushdown: true, cache, scope }
    }

    /// The same table read in full, filters applied only above the scan: the
    /// reference pruning is checked against.
    pub fn without_pushdown(storage: Storage) -> Self {
        AuditEventsTable { storage, pushdown: false, cache: SegmentCache::new(0), scope: owner_scope() }
    }
}

impl AuditEventsTable {
    /// Scans segment `files`, which store ids packed (see
    /// [`packed`](crate::storage::packed)): the Parquet scan reads segment
    /// columns, and a projection above it gives the table's columns back.
    /// With `in_source`, the filters are the Parquet source's predicate
    /// (pruning, and the row filter) whatever the session's settings.
    fn segments_scan(
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
        let store = self.storage.segment_store();
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

        let store_url = self.storage.segment_store().url().clone();
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

#[async_trait]
impl TableProvider for AuditEventsTable {
    fn schema(&self) -> SchemaRef {
        model::schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Every filter is used for pruning; content-id and actor lookups are
        // applied exactly by the scan itself (see `index_lookup`), the rest again
        // by DataFusion above it. A session scoped to one organisation hands
        // the scan only filters that cannot fail (see `barrier`): the others
        // run above it, on that organisation's rows alone.
        let scoped = matches!(self.scope.get(), Some(Scope::Org(_)));
        Ok(filters
            .iter()
            .map(|f| match index_lookup::is_exact(f) {
                _ if scoped && !barrier::is_leakproof(f) => TableProviderFilterPushDown::Unsupported,
                true if self.pushdown => TableProviderFilterPushDown::Exact,
                _ => TableProviderFilterPushDown::Inexact,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(scope) = self.scope.get() else {
            return plan_err!("{TABLE} cannot be read before the session has logged in");
        };
        let Scope::Org(org) = scope else {
            return self.scan_all(state, projection, filters, limit, None).await;
        };
        // The scope first: the scan keeps the organisation's rows only
        // (buffer and manifest by org before anything else, then the
        // Parquet row filter), and only leakproof filters go with it.
        let in_org = col("org_id").eq(lit(org.as_str()));
        let mut scoped_filters: Vec<Expr> = filters.iter().filter(|f| barrier::is_leakproof(f)).cloned().collect();
        scoped_filters.push(in_org.clone());
        let filter = Filtered { predicate: in_org, limit };
        let columns = filter.columns(projection)?;
        // No `LIMIT` below the filter: it would count rows of other organisations.
        let all = self.scan_all(state, Some(&columns.1), &scoped_filters, None, Some(org)).await?;
        let scan = filter.apply(state, columns, all)?;
        Ok(Arc::new(barrier::OrgScanExec::new(org, scan, state.config().target_partitions())))
    }
}

/// A filter the scan applies itself (a tenant's scope, exact content and
/// actor lookups over what has no index), and the `LIMIT` it may apply after it.
/// The columns it reads are scanned too and projected away again above it.
struct Filtered {
    predicate: Expr,
    limit: Option<usize>,
}

impl Filtered {
    /// How many columns the query wants, and the table columns to scan for
    /// them and for the predicate (the wanted ones first).
    fn columns(&self, projection: Option<&Vec<usize>>) -> Result<(usize, Vec<usize>)> {
        let schema = model::schema();
        let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..schema.fields().len()).collect());
        let mut scanned = wanted.clone();
        for column in self.predicate.column_refs() {
            let i = schema.index_of(&column.name)?;
            if !scanned.contains(&i) {
                scanned.push(i);
            }
        }
        Ok((wanted.len(), scanned))
    }

    /// The filter over `input`, a scan of the columns [`Filtered::columns`] named.
    fn apply(
        &self,
        state: &dyn Session,
        (wanted, scanned): (usize, Vec<usize>),
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let scanned_schema = DFSchema::try_from(Arc::new(model::schema().project(&scanned)?))?;
        let predicate = state.create_physical_expr(self.predicate.clone(), &scanned_schema)?;
        let filter = FilterExecBuilder::new(predicate, input)
            .with_fetch(self.limit)
            .apply_projection(Some((0..wanted).collect()))?
            .build()?;
        Ok(Arc::new(filter))
    }

    /// The filter over the scan `input` builds for the columns it is given.
    fn over(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        input: impl FnOnce(Option<&Vec<usize>>) -> Result<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let columns = self.columns(projection)?;
        let scan = input(Some(&columns.1))?;
        self.apply(state, columns, scan)
    }
}

impl AuditEventsTable {
    /// Every event the filters do not rule out, of every organisation, or
    /// with `org` of that organisation only: its buffered rows are taken
    /// before any filter is evaluated on them, and the segments' Parquet scan
    /// gets the filters (the scope among them) as its own predicate, since
    /// no optimizer rule will push them there (see `barrier`).
    async fn scan_all(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
        org: Option<&str>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = model::schema();
        let snapshot = self.storage.snapshot();
        let filters = if self.pushdown || org.is_some() { filters } else { &[] };
        let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
        let predicate = match conjunction(filters.to_vec()) {
            Some(predicate) => Some(state.create_physical_expr(predicate, &df_schema)?),
            None => None,
        };
        // Rows copied out of the buffer count against the query's memory.
        let mut buffered_memory = MemoryConsumer::new("buffered rows").register(&state.runtime_env().memory_pool);
        let buffer = match org {
            Some(org) => {
                let in_org = state.create_physical_expr(col("org_id").eq(lit(org)), &df_schema)?;
                matching_buffered(snapshot.buffer, &in_org, &mut buffered_memory)?
            }
            None => snapshot.buffer,
        };
        let buffer = match &predicate {
            Some(predicate) => matching_buffered(buffer, predicate, &mut buffered_memory)?,
            None => buffer,
        };
        // What is reserved for copies is what the copies left now take (the
        // scope's copies are gone once filtered again).
        if buffered_memory.size() > 0 {
            buffered_memory.resize(buffer.iter().map(RecordBatch::get_array_memory_size).sum());
        }
        let in_source = org.is_some();
        let buffered_batches = buffer.len();
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        // Content and actor ids the scan must keep exactly (see
        // `supports_filters_pushdown`).
        let wanted = if self.pushdown { index_lookup::wanted(filters) } else { Vec::new() };
        let exact_filter = index_lookup::predicate(&wanted).map(|predicate| Filtered { predicate, limit });

        if !buffer.is_empty() {
            // Spread the buffered batches over partitions so both cores scan.
            let partitions_wanted = state.config().target_partitions().clamp(1, buffer.len());
            let mut partitions = vec![Vec::new(); partitions_wanted];
            for (i, batch) in buffer.into_iter().enumerate() {
                partitions[i % partitions_wanted].push(batch);
            }
            let buffered = |projection: Option<&Vec<usize>>, limit| -> Result<Arc<dyn ExecutionPlan>> {
                let memory = MemorySourceConfig::try_new(&partitions, Arc::clone(&schema), projection.cloned())?
                    .with_limit(limit);
                Ok(DataSourceExec::from_data_source(memory))
            };
            inputs.push(match &exact_filter {
                Some(filter) => filter.over(state, projection, |p| buffered(p, None))?,
                None => buffered(projection, limit)?,
            });
        }

        // A segment the manifest says holds none of the organisation's
        // events is never opened for it.
        // (Admins' scans borrow the snapshot's list: no copy per query.)
        let in_scope: std::borrow::Cow<[Arc<LiveSegment>]> = match org {
            Some(org) => snapshot.segments.iter().filter(|s| s.meta.may_hold_org(org)).cloned().collect(),
            None => std::borrow::Cow::Borrowed(snapshot.segments.as_slice()),
        };
        let mut segments = pruning::prune_segments(&in_scope, predicate)?;
        debug!(segments = snapshot.segments.len(), kept = segments.len(), "pruned segments with the manifest");
        // Newest first: investigations mostly want recent activity, and an
        // `ORDER BY time DESC LIMIT n` fills its top n from the first files
        // read; its dynamic filter (time above the n-th newest so far) then
        // prunes the row groups of every older file from the footer alone.
        segments.sort_by_key(|s| std::cmp::Reverse(s.meta.max_time_us));
        let pruned_by_manifest = snapshot.segments.len() - segments.len();
        // The plan holds the segment: compaction cannot delete its file
        // while this query may still open it.
        let file = |s: &Arc<LiveSegment>| {
            PartitionedFile::new(s.object_location(), s.meta.size_bytes).with_extension(Arc::clone(s))
        };
        let mut index = None;
        let mut segments_read = segments.len();
        match &exact_filter {
            None if !segments.is_empty() => {
                let files = segments.iter().map(file).collect();
                inputs.push(self.segments_scan(state, files, projection, filters, limit, in_source)?);
            }
            None => {}
            Some(exact_filter) => {
                let (mut indexed, mut unindexed) = (Vec::new(), Vec::new());
                let mut pruned = 0;
                // Concurrently: each lookup not in the cache is a read (one
                // syscall, or a request to a bucket).
                let wanted = Arc::new(wanted.clone());
                let lookups = futures::stream::iter(segments.iter().cloned())
                    .map(|segment| {
                        let (cache, wanted) = (self.cache.clone(), Arc::clone(&wanted));
                        // An organisation's scan wants its `org_id` (the scope
                        // is among the filters), so it takes only rows in its
                        // own run, and rows of other organisations are not read.
                        async move { index_lookup::lookup(&cache, &segment, &wanted).await }
                    })
                    .buffered(INDEX_LOOKUPS_AT_ONCE)
                    .collect::<Vec<_>>()
                    .await;
                for (segment, found) in segments.iter().zip(lookups) {
                    match found {
                        index_lookup::Lookup::Rows(plan) => indexed.push((segment, file(segment).with_extension(plan))),
                        index_lookup::Lookup::Unindexed => unindexed.push((segment, file(segment))),
                        index_lookup::Lookup::None => pruned += 1,
                    }
                }
                let columns = wanted.iter().map(|w| w.keyed.column()).collect();
                index = Some(IndexSummary { columns, segments_pruned: pruned, segments_scanned: unindexed.len() });
                segments_read = indexed.len() + unindexed.len();
                let other_filters: Vec<Expr> = filters.iter().filter(|f| !index_lookup::is_exact(f)).cloned().collect();
                if !indexed.is_empty() {
                    let files = indexed.into_iter().map(|(_, file)| file).collect();
                    inputs.push(self.segments_scan(state, files, projection, &other_filters, limit, in_source)?);
                }
                if !unindexed.is_empty() {
                    let files = unindexed.into_iter().map(|(_, file)| file).collect();
                    inputs.push(
                        exact_filter.over(state, projection, |p| {
                            self.segments_scan(state, files, p, filters, None, in_source)
                        })?,
                    );
                }
            }
        }

        let plan = match inputs.len() {
            0 => {
                let projected = match projection {
                    Some(p) => Arc::new(schema.project(p)?),
                    None => schema,
                };
                Arc::new(EmptyExec::new(projected))
            }
            1 => inputs.pop().expect("one input"),
            _ => UnionExec::try_new(inputs)?,
        };
        let summary = ScanSummary {
            segments_read,
            segments_pruned: pruned_by_manifest,
            buffered_batches,
            index,
            _buffered_memory: Arc::new(buffered_memory),
        };
        Ok(Arc::new(AuditEventsScanExec::new(plan, summary)))
    }
}

/// The buffered rows `predicate` (the conjunction of the pushed filters)
/// keeps, batch by batch, batches left empty dropped. Done while planning:
/// the buffer is small (it is sealed at `seal_max_buffered_rows`), and on a
/// server being queried it is mostly the server's own self-audit records,
/// which a lookup by actor or content never matches, so most lookups plan no
/// branch for the buffer at all (no union, no second sort). The copies are
/// taken out of the query's memory (`memory`), as an operator's would be.
/// DataFusion still applies every filter above the scan. A predicate that
/// fails to evaluate keeps `buffer` whole, so the error, if any, is the one
/// execution gives; for a session scoped to one organisation `buffer`
/// already holds only that organisation's rows, and its predicate cannot
/// fail (see `barrier`).
fn matching_buffered(
    buffer: Vec<RecordBatch>,
    predicate: &Arc<dyn PhysicalExpr>,
    memory: &mut MemoryReservation,
) -> Result<Vec<RecordBatch>> {
    let mut kept = Vec::with_capacity(buffer.len());
    let mut copied_bytes = 0;
    for batch in &buffer {
        let matching = predicate
            .evaluate(batch)
            .and_then(|mask| mask.into_array(batch.num_rows()))
            .and_then(|mask| Ok(filter_record_batch(batch, mask.as_boolean_opt().ok_or_else(not_boolean)?)?));
        match matching {
            Ok(rows) if rows.num_rows() == 0 => {}
            Ok(rows) => {
                let bytes = rows.get_array_memory_size();
                memory.try_grow(bytes)?;
                copied_bytes += bytes;
                kept.push(rows);
            }
            Err(_) => {
                memory.shrink(copied_bytes);
                return Ok(buffer);
            }
        }
    }
    Ok(kept)
}

fn not_boolean() -> DataFusionError {
    DataFusionError::Internal("a filter evaluated to something other than booleans".into())
}
