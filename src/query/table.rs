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
use datafusion::common::{DFSchema, DataFusionError, Result, plan_err};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::union::UnionExec;
use datafusion::prelude::{col, lit};
use futures::StreamExt;
use tracing::debug;

use crate::model;
use crate::storage::Storage;
use crate::storage::segment::LiveSegment;

use super::fragment::{FragmentScanExec, ScanFragment, SegmentFile};
use super::limits::StatementPins;
use super::scan_exec::{AuditEventsScanExec, IndexSummary, ScanSummary};
use super::segments_scan::SegmentReader;
use super::{Scope, SegmentCache, SessionScope, TABLE, barrier, engine, index_lookup, owner_scope, pruning};

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
    /// Where the segments of distributed scans are held for the statement.
    pins: StatementPins,
}

impl AuditEventsTable {
    pub fn new(storage: Storage, cache: SegmentCache, scope: SessionScope) -> Self {
        AuditEventsTable { storage, pushdown: true, cache, scope, pins: StatementPins::default() }
    }

    pub(super) fn pins(&self) -> StatementPins {
        self.pins.clone()
    }

    /// Whose rows the table's scans read.
    pub(super) fn scope(&self) -> SessionScope {
        Arc::clone(&self.scope)
    }

    /// The same table read in full, filters applied only above the scan: the
    /// reference pruning is checked against.
    pub fn without_pushdown(storage: Storage) -> Self {
        let (cache, scope, pins) = (SegmentCache::new(0), owner_scope(), StatementPins::default());
        AuditEventsTable { storage, pushdown: false, cache, scope, pins }
    }
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
            let wanted = ScanRequest { projection, filters, limit, org: None };
            return match self.scan_all(state, &wanted).await? {
                Planned::Here(scan, _) => Ok(scan),
                Planned::Fragment(fragment) => Ok(Arc::new(FragmentScanExec::new(fragment)?)),
            };
        };
        // The scope first: the scan keeps the organisation's rows only
        // (buffer and manifest by org before anything else, then the
        // Parquet row filter), and only leakproof filters go with it.
        let scoped_filters = scoped_filters(org, filters);
        let wanted = ScanRequest { projection, filters: &scoped_filters, limit, org: Some(org) };
        let filter = Filtered::scope(org, limit);
        let columns = filter.columns(projection)?;
        // No `LIMIT` below the filter: it would count rows of other organisations.
        let all = ScanRequest { projection: Some(&columns.1), limit: None, ..wanted };
        match self.scan_all(state, &all).await? {
            Planned::Here(all, engine) => {
                let scan = filter.apply(state, columns, all)?;
                let partitions = state.config().target_partitions();
                Ok(Arc::new(barrier::OrgScanExec::new(org, scan, partitions, engine)))
            }
            Planned::Fragment(fragment) => {
                // The fragment is its own barrier, and applies the scope
                // itself wherever it runs; it scans what the query wants.
                let fragment = ScanFragment { projection: wanted.projection.cloned(), limit, ..fragment };
                Ok(Arc::new(FragmentScanExec::new(fragment)?))
            }
        }
    }
}

/// The filters an organisation's scan takes: the leakproof ones of the
/// query (see `barrier`), and the scope.
pub(super) fn scoped_filters(org: &str, filters: &[Expr]) -> Vec<Expr> {
    let mut scoped: Vec<Expr> = filters.iter().filter(|f| barrier::is_leakproof(f)).cloned().collect();
    scoped.push(in_org(org));
    scoped
}

fn in_org(org: &str) -> Expr {
    col("org_id").eq(lit(org))
}

/// What one scan is asked for: the table's columns, the filters it is
/// handed, its `LIMIT`, and the organisation it is scoped to, if any.
#[derive(Clone, Copy)]
struct ScanRequest<'a> {
    projection: Option<&'a Vec<usize>>,
    filters: &'a [Expr],
    limit: Option<usize>,
    org: Option<&'a str>,
}

/// Where a scan runs: planned here, or described as a fragment the
/// distributed engine may hand to workers (see [`fragment`](super::fragment)).
enum Planned {
    /// With the engine's choice, on a node with workers.
    Here(Arc<dyn ExecutionPlan>, Option<engine::Choice>),
    Fragment(ScanFragment),
}

/// A filter the scan applies itself (a tenant's scope, exact content and
/// actor lookups over what has no index), and the `LIMIT` it may apply after it.
/// The columns it reads are scanned too and projected away again above it.
pub(super) struct Filtered {
    pub predicate: Expr,
    pub limit: Option<usize>,
}

impl Filtered {
    /// An organisation's scope, applied by the scan.
    pub fn scope(org: &str, limit: Option<usize>) -> Self {
        Filtered { predicate: in_org(org), limit }
    }

    /// How many columns the query wants, and the table columns to scan for
    /// them and for the predicate (the wanted ones first).
    pub fn columns(&self, projection: Option<&Vec<usize>>) -> Result<(usize, Vec<usize>)> {
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
    pub fn apply(
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
    pub fn over(
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
    fn reader(&self) -> SegmentReader {
        SegmentReader { store: Arc::clone(self.storage.segment_store()), cache: self.cache.clone() }
    }

    /// Every event the filters do not rule out, of every organisation, or
    /// with `org` of that organisation only: its buffered rows are taken
    /// before any filter is evaluated on them, and the segments' Parquet scan
    /// gets the filters (the scope among them) as its own predicate, since
    /// no optimizer rule will push them there (see `barrier`). On a node with
    /// workers, a scan the engine hands to them is returned as a fragment.
    async fn scan_all(&self, state: &dyn Session, request: &ScanRequest<'_>) -> Result<Planned> {
        let ScanRequest { projection, filters, limit, org } = *request;
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
                let in_org = state.create_physical_expr(in_org(org), &df_schema)?;
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
        // Content and actor ids the scan must keep exactly (see
        // `supports_filters_pushdown`).
        let wanted = if self.pushdown { index_lookup::wanted(filters) } else { Vec::new() };
        let exact_filter = index_lookup::predicate(&wanted).map(|predicate| Filtered { predicate, limit });

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

        let engine = engine::choose(state, org, &segments, !wanted.is_empty())?;
        if let Some(choice) = engine.as_ref().filter(|c| c.distributed) {
            self.pins.pin(segments.iter().cloned());
            let fragment = ScanFragment {
                scope: org.map_or(Scope::All, |org| Scope::Org(org.to_owned())),
                segments: segments.iter().map(|s| SegmentFile::of(s)).collect(),
                projection: projection.cloned(),
                // What the scan must apply (the scope, exact lookups) is
                // leakproof; the rest only prunes and is applied again above
                // it, so what a worker cannot decode (a function) stays here.
                filters: filters.iter().filter(|f| barrier::is_leakproof(f)).cloned().collect(),
                limit,
                buffered: buffer,
                // Two at least once planned for the workers (see
                // `engine::WideForWorkers`).
                partitions: state.config().target_partitions(),
                engine: choice.clone(),
                _buffered_memory: Some(Arc::new(buffered_memory)),
            };
            return Ok(Planned::Fragment(fragment));
        }

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !buffer.is_empty() {
            inputs.push(buffered_scan(state, buffer, projection, exact_filter.as_ref(), limit)?);
        }
        // The plan holds the segment: compaction cannot delete its file
        // while this query may still open it.
        let file = |s: &Arc<LiveSegment>| {
            PartitionedFile::new(s.object_location(), s.meta.size_bytes).with_extension(Arc::clone(s))
        };
        let reader = self.reader();
        let mut index = None;
        let mut segments_read = segments.len();
        match &exact_filter {
            None if !segments.is_empty() => {
                let files = segments.iter().map(file).collect();
                inputs.push(reader.segments_scan(state, files, projection, filters, limit, in_source)?);
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
                    inputs.push(reader.segments_scan(state, files, projection, &other_filters, limit, in_source)?);
                }
                if !unindexed.is_empty() {
                    let files = unindexed.into_iter().map(|(_, file)| file).collect();
                    inputs.push(exact_filter.over(state, projection, |p| {
                        reader.segments_scan(state, files, p, filters, None, in_source)
                    })?);
                }
            }
        }

        let summary = ScanSummary {
            segments_read,
            segments_pruned: pruned_by_manifest,
            buffered_batches,
            index,
            engine: engine.clone(),
            _buffered_memory: Arc::new(buffered_memory),
        };
        let scan = Arc::new(AuditEventsScanExec::new(union_of(inputs, projection)?, summary));
        Ok(Planned::Here(scan, engine))
    }
}

/// The buffered rows (already taken for the scope and the filters) as a
/// scan of `projection`, spread over partitions so every core scans, with
/// the exact lookup filter over them if there is one.
pub(super) fn buffered_scan(
    state: &dyn Session,
    buffer: Vec<RecordBatch>,
    projection: Option<&Vec<usize>>,
    exact_filter: Option<&Filtered>,
    limit: Option<usize>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = model::schema();
    let partitions_wanted = state.config().target_partitions().clamp(1, buffer.len().max(1));
    let mut partitions = vec![Vec::new(); partitions_wanted];
    for (i, batch) in buffer.into_iter().enumerate() {
        partitions[i % partitions_wanted].push(batch);
    }
    let buffered = |projection: Option<&Vec<usize>>, limit| -> Result<Arc<dyn ExecutionPlan>> {
        let memory =
            MemorySourceConfig::try_new(&partitions, Arc::clone(&schema), projection.cloned())?.with_limit(limit);
        Ok(DataSourceExec::from_data_source(memory))
    };
    match exact_filter {
        Some(filter) => filter.over(state, projection, |p| buffered(p, None)),
        None => buffered(projection, limit),
    }
}

/// The inputs of a scan as one plan: their union, the one input, or an
/// empty scan of the projected columns.
pub(super) fn union_of(
    mut inputs: Vec<Arc<dyn ExecutionPlan>>,
    projection: Option<&Vec<usize>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(match inputs.len() {
        0 => {
            let schema = model::schema();
            let projected = match projection {
                Some(p) => Arc::new(schema.project(p)?),
                None => schema,
            };
            Arc::new(EmptyExec::new(projected))
        }
        1 => inputs.pop().expect("one input"),
        _ => UnionExec::try_new(inputs)?,
    })
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
