//! A scan that may run on another machine: the unit of work the distributed
//! engine hands to workers (see [`crate::cluster`]).
//!
//! A [`ScanFragment`] describes a scan instead of holding its plan: whose
//! rows (the scope), which segment files of the snapshot the query pinned,
//! the columns, the filters the scan is handed, and the buffered rows the
//! coordinator already took for the scope. [`FragmentScanExec`] builds the
//! plan from it where it runs, with that process's own segment reader (its
//! own object store and credentials), through the same functions as a scan
//! planned on one node, the scope first: so a fragment reads exactly what
//! the local scan would, on any machine.
//!
//! Like [`OrgScanExec`](super::barrier::OrgScanExec), the node is opaque
//! (see [`opaque`](super::opaque)): nothing a user writes is pushed below
//! it, and it shows and counts only the rows it hands on.
//!
//! It never widens a scan: a fragment is split into parts that together
//! read what it reads, each once.

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::model;
use crate::storage::segment::LiveSegment;

use super::Scope;
use super::engine::Choice;
use super::index_lookup;
use super::opaque::{Opaque, OpaqueExec};
use super::segments_scan::SegmentReader;
use super::table::{Filtered, buffered_scan, union_of};

/// One segment file a fragment reads, named as in the manifest. (The
/// statement holds the segment itself while it runs: `StatementPins`.)
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub file: String,
    pub size_bytes: u64,
}

impl SegmentFile {
    pub fn of(segment: &LiveSegment) -> Self {
        SegmentFile { file: segment.meta.file.clone(), size_bytes: segment.meta.size_bytes }
    }

    /// A segment file named by a fragment that came over the network: a
    /// plain file name of the segment directory, never a path.
    pub fn named(file: String, size_bytes: u64) -> Result<Self> {
        let plain = file.ends_with(".parquet")
            && !file.starts_with('.')
            && file.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !plain {
            return Err(DataFusionError::Plan(format!("{file:?} is not a segment file name")));
        }
        Ok(SegmentFile { file, size_bytes })
    }
}

/// A scan of the log, described (see the module's documentation).
#[derive(Debug, Clone)]
pub struct ScanFragment {
    pub scope: Scope,
    /// Newest first, as the local scan reads them.
    pub segments: Vec<SegmentFile>,
    /// The table's columns the scan hands on (all when `None`).
    pub projection: Option<Vec<usize>>,
    /// The filters the scan was handed; for an organisation's scan, the
    /// leakproof ones and the scope (see `barrier`).
    pub filters: Vec<Expr>,
    pub limit: Option<usize>,
    /// Buffered rows of the snapshot, taken on the coordinator for the
    /// scope and the filters.
    pub buffered: Vec<RecordBatch>,
    /// Partitions the scan hands rows on in, wherever it runs.
    pub partitions: usize,
    pub engine: Choice,
    /// The query's memory the buffered rows take on the coordinator.
    pub _buffered_memory: Option<Arc<MemoryReservation>>,
}

impl ScanFragment {
    pub fn schema(&self) -> Result<SchemaRef> {
        let schema = model::schema();
        Ok(match &self.projection {
            Some(columns) => Arc::new(schema.project(columns)?),
            None => schema,
        })
    }

    /// `tasks` fragments that together scan what this one does, each
    /// segment in exactly one of them (dealt out in turn, so each reads
    /// from the newest down), and the buffered rows in the first.
    pub fn split(&self, tasks: usize) -> Vec<ScanFragment> {
        let tasks = tasks.max(1);
        let mut parts: Vec<ScanFragment> = (0..tasks)
            .map(|task| ScanFragment {
                segments: Vec::new(),
                buffered: if task == 0 { self.buffered.clone() } else { Vec::new() },
                ..self.clone()
            })
            .collect();
        for (i, segment) in self.segments.iter().enumerate() {
            parts[i % tasks].segments.push(segment.clone());
        }
        parts
    }

    /// The plan of this scan, built with `reader` where it runs: the same
    /// scan as on one node, the scope applied first.
    fn plan(&self, context: &TaskContext, reader: &SegmentReader) -> Result<Arc<dyn ExecutionPlan>> {
        let state = SessionStateBuilder::new()
            .with_config(context.session_config().clone())
            .with_runtime_env(context.runtime_env())
            .build();
        match &self.scope {
            Scope::All => self.inputs(&state, reader, self.projection.as_ref(), self.limit, false),
            Scope::Org(org) => {
                let filter = Filtered::scope(org, self.limit);
                let columns = filter.columns(self.projection.as_ref())?;
                // No `LIMIT` below the scope: it would count other organisations' rows.
                let all = self.inputs(&state, reader, Some(&columns.1), None, true)?;
                filter.apply(&state, columns, all)
            }
        }
    }

    /// The buffered rows and the segments, as the local scan reads them
    /// when no row index is looked into: the exact lookup filters applied
    /// by the scan itself.
    fn inputs(
        &self,
        state: &dyn datafusion::catalog::Session,
        reader: &SegmentReader,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
        in_source: bool,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted = index_lookup::wanted(&self.filters);
        let exact_filter = index_lookup::predicate(&wanted).map(|predicate| Filtered { predicate, limit });
        let mut inputs = Vec::new();
        if !self.buffered.is_empty() {
            inputs.push(buffered_scan(state, self.buffered.clone(), projection, exact_filter.as_ref(), limit)?);
        }
        if !self.segments.is_empty() {
            let files = || -> Vec<PartitionedFile> {
                let location = |s: &SegmentFile| reader.store.segment_location(&s.file).to_string();
                self.segments.iter().map(|s| PartitionedFile::new(location(s), s.size_bytes)).collect()
            };
            let filters = &self.filters;
            inputs.push(match &exact_filter {
                None => reader.segments_scan(state, files(), projection, filters, limit, in_source)?,
                Some(exact) => exact
                    .over(state, projection, |p| reader.segments_scan(state, files(), p, filters, None, in_source))?,
            });
        }
        union_of(inputs, projection)
    }
}

/// The scan a [`ScanFragment`] describes (see the module's documentation).
#[derive(Debug)]
pub struct FragmentScan {
    fragment: ScanFragment,
    /// Built on first execution, where the node runs.
    plan: Mutex<Option<Arc<dyn ExecutionPlan>>>,
}

pub type FragmentScanExec = OpaqueExec<FragmentScan>;

impl FragmentScanExec {
    pub fn new(fragment: ScanFragment) -> Result<Self> {
        let (schema, partitions) = (fragment.schema()?, fragment.partitions);
        Ok(OpaqueExec::over(FragmentScan { fragment, plan: Mutex::new(None) }, schema, partitions))
    }

    pub fn fragment(&self) -> &ScanFragment {
        &self.node().fragment
    }
}

impl Opaque for FragmentScan {
    const NAME: &'static str = "AuditEventsFragmentExec";

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ScanFragment { scope, segments, buffered, engine, .. } = &self.fragment;
        match scope {
            // An organisation's plan shows nothing of segments other
            // organisations share (see `barrier`).
            Scope::Org(org) => write!(f, "org_id={org}, {engine}"),
            Scope::All => write!(f, "{engine}, segments={}, buffered_batches={}", segments.len(), buffered.len()),
        }
    }

    fn inner(&self, context: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
        let mut plan = self.plan.lock().map_err(|_| DataFusionError::Internal("fragment plan lock".into()))?;
        if let Some(plan) = plan.as_ref() {
            return Ok(Arc::clone(plan));
        }
        let Some(reader) = context.session_config().get_extension::<SegmentReader>() else {
            return internal_err!("this process has no segment store to scan a fragment with");
        };
        let built = self.fragment.plan(context, &reader)?;
        *plan = Some(Arc::clone(&built));
        Ok(built)
    }
}
