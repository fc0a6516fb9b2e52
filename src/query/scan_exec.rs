//! The top of every `audit_events` scan in a plan: it does nothing to the
//! rows and exists so that `EXPLAIN` and `EXPLAIN ANALYZE` say how the
//! manifest pruned the log, e.g.
//! `AuditEventsScanExec: segments_read=3, segments_pruned=17, buffered_batches=2`
//! (plus, for content-id lookups, `content_index_pruned=12, content_index_scanned=0`).
//! Row groups, pages and rows skipped inside the segments read are in the
//! Parquet scan's own metrics below it.

use std::fmt;
use std::sync::Arc;

use datafusion::execution::memory_pool::MemoryReservation;

use super::pass_through::{PassThrough, PassThroughExec};

/// What the manifest (and the content indexes) did for one scan.
#[derive(Debug, Clone)]
pub struct ScanSummary {
    pub segments_read: usize,
    /// Ruled out by the manifest.
    pub segments_pruned: usize,
    /// Buffered batches holding rows the filters may keep (each filtered
    /// while planning to those rows).
    pub buffered_batches: usize,
    /// Set when content indexes were looked up.
    pub content_index: Option<ContentIndexSummary>,
    /// The query's memory the buffered rows copied while planning take:
    /// never read, only held as long as the plan that holds the copies.
    pub _buffered_memory: Arc<MemoryReservation>,
}

/// What the content indexes did for one scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentIndexSummary {
    /// Segments whose index holds none of the content ids (not opened).
    pub segments_pruned: usize,
    /// Segments scanned with the filter: without a usable index, or holding
    /// a wanted id in too many rows for the index to list.
    pub segments_scanned: usize,
}

impl PassThrough for ScanSummary {
    const NAME: &'static str = "AuditEventsScanExec";

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ScanSummary { segments_read, segments_pruned, buffered_batches, content_index, _buffered_memory: _ } = self;
        write!(
            f,
            "segments_read={segments_read}, segments_pruned={segments_pruned}, buffered_batches={buffered_batches}"
        )?;
        if let Some(ContentIndexSummary { segments_pruned, segments_scanned }) = content_index {
            write!(f, ", content_index_pruned={segments_pruned}, content_index_scanned={segments_scanned}")?;
        }
        Ok(())
    }
}

pub type AuditEventsScanExec = PassThroughExec<ScanSummary>;
