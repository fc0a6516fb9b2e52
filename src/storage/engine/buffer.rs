//! The queryable buffer: acknowledged batches not yet in a segment, merged
//! as they arrive so that queries scan a few batches rather than thousands.
//! It never touches the disk: the WAL holds the same rows until they are sealed.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::compute::concat_batches;

use crate::model::Seq;
use crate::storage::segment::LiveSegment;

/// Small appends (one self-audit record, one event) are merged into larger
/// buffered batches while a merge stays under this many rows: every query
/// scans the buffer, and thousands of one-row batches cost far more to scan
/// than their rows.
const BUFFER_MERGE_MAX_ROWS: usize = 4096;

/// What readers and the sealer share.
#[derive(Debug)]
pub(super) struct State {
    /// Published segments, ascending and contiguous in seq.
    pub(super) segments: Arc<Vec<Arc<LiveSegment>>>,
    pub(super) sealed_seq: Seq,
    /// `(batch, first_seq, last_seq)`, ascending, every seq above `sealed_seq`.
    pub(super) buffer: Vec<(RecordBatch, Seq, Seq)>,
    pub(super) buffered_rows: usize,
    pub(super) buffered_bytes: usize,
    pub(super) oldest_buffered_at: Option<Instant>,
    pub(super) last_seq: Seq,
    pub(super) shutting_down: bool,
    /// The last seq of the latest WAL rotation: a seal may be taking the
    /// buffered batches up to it, so appends are never merged into those.
    pub(super) merge_barrier: Seq,
}

impl State {
    /// Adds an acknowledged batch to the buffer, then merges the two newest
    /// batches for as long as the older is no larger than the newer (and the
    /// two fit in [`BUFFER_MERGE_MAX_ROWS`]), like carries in a binary counter:
    /// the buffer holds a few batches per doubling of size, and each row is
    /// copied about log2(BUFFER_MERGE_MAX_ROWS) times in all. Merging every
    /// append into the last batch copied the whole batch each time, which a
    /// stream of one-row self-audit records made quadratic.
    pub(super) fn push_buffered(&mut self, batch: &RecordBatch, first: Seq, last: Seq) {
        self.buffer.push((batch.clone(), first, last));
        while let [.., (older, older_first, older_last), (newer, newer_first, newer_last)] = self.buffer.as_slice()
            && *older_first > self.merge_barrier
            && *older_last + 1 == *newer_first
            && older.num_rows() <= newer.num_rows()
            && older.num_rows() + newer.num_rows() <= BUFFER_MERGE_MAX_ROWS
            && let Ok(merged) = concat_batches(&older.schema(), [older, newer])
        {
            let (merged_first, merged_last) = (*older_first, *newer_last);
            self.buffer.truncate(self.buffer.len() - 2);
            self.buffer.push((merged, merged_first, merged_last));
        }
    }

    /// Recomputes the buffer's counters after replay or after rows left it (a
    /// seal); the age of what remains counts from now.
    pub(super) fn recount_buffer(&mut self) {
        self.buffered_rows = self.buffer.iter().map(|(b, _, _)| b.num_rows()).sum();
        self.buffered_bytes = self.buffer.iter().map(|(b, _, _)| b.get_array_memory_size()).sum();
        self.oldest_buffered_at = (self.buffered_rows > 0).then(Instant::now);
    }
}

/// Stamps seqs `first_seq..` into a batch built with placeholder seqs.
pub(super) fn with_seq(batch: RecordBatch, first_seq: Seq) -> RecordBatch {
    let mut columns = batch.columns().to_vec();
    let first = first_seq as i64;
    let seq = Int64Array::from_iter_values((0..batch.num_rows() as i64).map(|i| first + i));
    let at = batch.schema().index_of("seq").expect("a seq column");
    columns[at] = Arc::new(seq);
    RecordBatch::try_new(batch.schema(), columns).expect("same schema")
}
