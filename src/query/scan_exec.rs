//! The top of every `audit_events` scan in a plan: it does nothing to the
//! rows and exists so that `EXPLAIN` and `EXPLAIN ANALYZE` say how the
//! manifest pruned the log, e.g.
//! `AuditEventsScanExec: segments_read=3, segments_pruned=17, buffered_batches=2`.
//! Row groups, pages and rows skipped inside the segments read are in the
//! Parquet scan's own metrics below it.

use std::fmt;

use super::pass_through::{PassThrough, PassThroughExec};

/// What the manifest did for one scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    pub segments_read: usize,
    pub segments_pruned: usize,
    pub buffered_batches: usize,
}

impl PassThrough for ScanSummary {
    const NAME: &'static str = "AuditEventsScanExec";

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ScanSummary { segments_read, segments_pruned, buffered_batches } = *self;
        write!(
            f,
            "segments_read={segments_read}, segments_pruned={segments_pruned}, buffered_batches={buffered_batches}"
        )
    }
}

pub type AuditEventsScanExec = PassThroughExec<ScanSummary>;
