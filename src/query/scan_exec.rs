//! The top of every `audit_events` scan in a plan: it does nothing to the
//! rows and exists so that `EXPLAIN` and `EXPLAIN ANALYZE` say how the
//! manifest pruned the log, e.g.
//! `AuditEventsScanExec: segments_read=3, segments_pruned=17, buffered_batches=2`
//! (plus, for content-id and actor lookups,
//! `indexed_by=actor_id, index_pruned=12, index_scanned=0`).
//! Row groups, pages and rows skipped inside the segments read are in the
//! Parquet scan's own metrics below it.

use std::fmt;
use std::sync::Arc;

use datafusion::execution::memory_pool::MemoryReservation;

use super::engine::Choice;
use super::pass_through::{PassThrough, PassThroughExec};

/// What the manifest (and the row indexes) did for one scan.
#[derive(Debug, Clone)]
pub struct ScanSummary {
    pub segments_read: usize,
    /// Ruled out by the manifest.
    pub segments_pruned: usize,
    /// Buffered batches holding rows the filters may keep (each filtered
    /// while planning to those rows).
    pub buffered_batches: usize,
    /// Set when row indexes were looked up.
    pub index: Option<IndexSummary>,
    /// On a node with workers: that this scan stays here, and why.
    pub engine: Option<Choice>,
    /// The query's memory the buffered rows copied while planning take:
    /// never read, only held as long as the plan that holds the copies.
    pub _buffered_memory: Arc<MemoryReservation>,
}

/// What the row indexes did for one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSummary {
    /// The columns whose rows were named (`org_id`, `actor_id`, `content_id`).
    pub columns: Vec<&'static str>,
    /// Segments whose indexes name no row wanted (not opened).
    pub segments_pruned: usize,
    /// Segments scanned with the filters: without a usable index, or holding
    /// a wanted content id in too many rows for the index to list.
    pub segments_scanned: usize,
}

impl ScanSummary {
    /// Whether the scan reads rows no index listed (a frequent content id,
    /// a segment without indexes, no lookup at all): then it reads many.
    pub fn reads_unlisted_rows(&self) -> bool {
        self.index.as_ref().is_none_or(|index| index.segments_scanned > 0)
    }
}

impl PassThrough for ScanSummary {
    const NAME: &'static str = "AuditEventsScanExec";

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ScanSummary { segments_read, segments_pruned, buffered_batches, index, engine, _buffered_memory: _ } = self;
        write!(
            f,
            "segments_read={segments_read}, segments_pruned={segments_pruned}, buffered_batches={buffered_batches}"
        )?;
        if let Some(IndexSummary { columns, segments_pruned, segments_scanned }) = index {
            let columns = columns.join("+");
            write!(f, ", indexed_by={columns}, index_pruned={segments_pruned}, index_scanned={segments_scanned}")?;
        }
        if let Some(engine) = engine {
            write!(f, ", {engine}")?;
        }
        Ok(())
    }
}

pub type AuditEventsScanExec = PassThroughExec<ScanSummary>;
