//! Compaction: merging runs of small segments into one larger segment.
//!
//! Age-based sealing under light traffic makes many small segments; each costs
//! a file open and a footer read per query. Compaction picks a run of segments
//! adjacent in `seq` (so the manifest keeps covering the log in order, without
//! gaps or overlaps) and merges them into one file. Segments are already sorted
//! by [`SORT_COLUMNS`], so the merge streams: DataFusion's sort-preserving
//! merge over one scan per input, written row group by row group. Memory stays
//! at a few row groups, whatever the size of the inputs.
//!
//! Publishing follows the sealing rules: the new file is fsynced, then a
//! manifest naming it instead of its inputs is made durable, then the inputs are
//! retired (deleted when the last running query lets go of them). A crash at
//! any step leaves either the inputs or the output in the manifest, and the
//! other is removed at start-up as debris.

use std::ops::Range;

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::UnionExec;

use super::StorageError;
use super::manifest::{self, SegmentMeta};
use super::objects::SegmentStore;
use super::packed;
use super::segment::{self, LiveSegment, SORT_COLUMNS, SegmentWriter, WrittenSegment, segment_file_name};

/// When to compact, and how big a merged segment may get.
#[derive(Debug, Clone, Copy)]
pub struct CompactionPolicy {
    /// A merged segment holds at most this many rows.
    pub target_rows: u64,
    /// Merge only runs of at least this many segments (merging two large
    /// segments buys little and rewrites a lot).
    pub min_inputs: usize,
}

impl CompactionPolicy {
    /// Segments at least this large are never merged again. Without this
    /// bound a growing merged segment would be rewritten with every few new
    /// small ones (write amplification growing with its size); with it, an
    /// event is rewritten at most a few times (once, when seals are large).
    pub fn small_segment_rows(&self) -> u64 {
        self.target_rows / self.min_inputs.max(2) as u64
    }
}

/// The first run of adjacent small segments worth merging, as indexes into
/// the segment list, given each segment's row count.
pub fn plan(segment_rows: &[u64], policy: CompactionPolicy) -> Option<Range<usize>> {
    let small = |rows: u64| rows < policy.small_segment_rows();
    for start in 0..segment_rows.len() {
        let mut total = 0;
        let mut end = start;
        while end < segment_rows.len() && small(segment_rows[end]) && total + segment_rows[end] <= policy.target_rows {
            total += segment_rows[end];
            end += 1;
        }
        if end - start >= policy.min_inputs.max(2) {
            return Some(start..end);
        }
    }
    None
}

fn sort_order() -> Result<LexOrdering, StorageError> {
    let schema = packed::segment_schema();
    let exprs = SORT_COLUMNS
        .iter()
        .map(|c| Ok(PhysicalSortExpr::new(col(c, &schema)?, SortOptions::default())))
        .collect::<Result<Vec<_>, datafusion::error::DataFusionError>>()
        .map_err(StorageError::Compaction)?;
    Ok(LexOrdering::new(exprs).expect("sort columns are not empty"))
}

/// Merges `inputs` (adjacent in seq) into one new segment file in `dir`,
/// fsynced. Publishing it is the caller's job.
pub fn merge(inputs: &[Arc<LiveSegment>], store: &SegmentStore) -> Result<SegmentMeta, StorageError> {
    let min_seq = inputs.iter().map(|s| s.meta.min_seq).min().expect("inputs");
    let max_seq = inputs.iter().map(|s| s.meta.max_seq).max().expect("inputs");
    let rows: u64 = inputs.iter().map(|s| s.meta.rows).sum();
    // Adjacent segments cover their seq range, less what retention removed.
    debug_assert!(rows <= max_seq - min_seq + 1, "{rows} rows in seqs {min_seq}..={max_seq}");
    let file_name = segment_file_name(min_seq, max_seq);

    let written = write_merged(inputs, store, &file_name);
    if written.is_err() {
        let _ = store.delete_segment(&file_name);
    }
    let (rows_written, written) = written?;
    if rows_written != rows {
        let _ = store.delete_segment(&file_name);
        return Err(StorageError::MergeLostRows { written: rows_written, expected: rows });
    }
    Ok(SegmentMeta {
        file: file_name,
        size_bytes: written.size_bytes,
        rows,
        min_seq,
        max_seq,
        min_time_us: inputs.iter().map(|s| s.meta.min_time_us).min().expect("inputs"),
        max_time_us: inputs.iter().map(|s| s.meta.max_time_us).max().expect("inputs"),
        min_org_id: inputs.iter().map(|s| s.meta.min_org_id.clone()).min().expect("inputs"),
        max_org_id: inputs.iter().map(|s| s.meta.max_org_id.clone()).max().expect("inputs"),
        // Unknown for one input means unknown for the merge.
        actor_ids: inputs
            .iter()
            .map(|s| s.meta.actor_ids.clone())
            .collect::<Option<Vec<_>>>()
            .and_then(|ranges| ranges.into_iter().reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))),
        max_received_at_us: inputs
            .iter()
            .map(|s| s.meta.max_received_at_us)
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max()),
        content_index: written.content_index,
        actor_index: written.actor_index,
        // Unknown for one input means unknown for the merge.
        orgs: inputs.iter().map(|s| s.meta.orgs.as_ref()).collect::<Option<Vec<_>>>().and_then(|lists| {
            manifest::org_counts(lists.into_iter().flatten().map(|(org, rows)| (org.as_str(), *rows)))
        }),
    })
}

/// Streams the sort-preserving merge of the inputs into segment `file`;
/// returns its rows and what was written.
fn write_merged(
    inputs: &[Arc<LiveSegment>],
    store: &SegmentStore,
    file: &str,
) -> Result<(u64, WrittenSegment), StorageError> {
    let order = sort_order()?;
    let df = StorageError::Compaction;
    let scans = inputs
        .iter()
        .map(|segment| {
            let config = segment.scan().with_output_ordering(vec![order.clone()]).build();
            DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
        })
        .collect::<Vec<_>>();
    let union = UnionExec::try_new(scans).map_err(df)?;
    let merged = Arc::new(SortPreservingMergeExec::new(order, union));

    let mut writer = SegmentWriter::create(store, file)?;
    let mut rows = 0u64;
    segment::for_each_batch(store, merged, |batch| {
        rows += batch.num_rows() as u64;
        writer.write(&batch)
    })?;
    Ok((rows, writer.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_the_first_run_of_small_adjacent_segments() {
        let policy = CompactionPolicy { target_rows: 100, min_inputs: 3 };
        let segments = [90, 10, 30, 30, 30];
        assert_eq!(plan(&segments, policy), Some(1..5), "10 + 30 + 30 + 30 fit in 100 rows");
        assert_eq!(plan(&segments[..3], policy), None, "no run of three fits");
        let policy = CompactionPolicy { target_rows: 100, min_inputs: 2 };
        assert_eq!(plan(&segments, policy), Some(1..5), "90 is not small (>= 50); 10 + 30 + 30 + 30 fit");
        assert_eq!(plan(&[], policy), None);
        let policy = CompactionPolicy { target_rows: 1_000, min_inputs: 4 };
        assert_eq!(plan(&[400, 100, 100, 100], policy), None, "a merged segment is not merged again");
        assert_eq!(plan(&[400, 100, 100, 100, 100], policy), Some(1..5));
    }
}
