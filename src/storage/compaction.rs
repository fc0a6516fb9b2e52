//! Compaction: merging runs of small segments into one larger segment.
//!
//! Age-based sealing under light traffic makes many small segments; each costs
//! a file open and a footer read per query. Compaction picks a run of segments
//! adjacent in `seq` (so the manifest keeps covering the log in order, without
//! gaps or overlaps) and merges them into one file. Segments are already sorted
//! by `(org_id, time, seq)`, so the merge streams: DataFusion's sort-preserving
//! merge over one scan per input, written row group by row group. Memory stays
//! at a few row groups, whatever the size of the inputs.
//!
//! Publishing follows the sealing rules: the new file is fsynced, then a
//! manifest naming it instead of its inputs is made durable, then the inputs are
//! retired (deleted when the last running query lets go of them). A crash at
//! any step leaves either the inputs or the output in the manifest, and the
//! other is removed at start-up as debris.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::UnionExec;
use futures::StreamExt;

use super::StorageError;
use super::faults::Faults;
use super::manifest::SegmentMeta;
use super::segment::{LiveSegment, SORT_COLUMNS, SegmentFileWriter};
use crate::model;

/// When to compact, and how big a merged segment may get.
#[derive(Debug, Clone, Copy)]
pub struct CompactionPolicy {
    /// A merged segment holds at most this many rows.
    pub target_rows: u64,
    /// Merge only runs of at least this many segments (merging two large
    /// segments buys little and rewrites a lot).
    pub min_inputs: usize,
}

/// The first run of adjacent segments worth merging, as indexes into `segments`.
pub fn plan(segments: &[Arc<LiveSegment>], policy: CompactionPolicy) -> Option<Range<usize>> {
    for start in 0..segments.len() {
        let mut total = 0;
        let mut end = start;
        while end < segments.len() && total + segments[end].meta.rows <= policy.target_rows {
            total += segments[end].meta.rows;
            end += 1;
        }
        if end - start >= policy.min_inputs.max(2) {
            return Some(start..end);
        }
    }
    None
}

fn sort_order() -> Result<LexOrdering, StorageError> {
    let schema = model::schema();
    let exprs = SORT_COLUMNS
        .iter()
        .map(|c| Ok(PhysicalSortExpr::new(col(c, &schema)?, SortOptions::default())))
        .collect::<Result<Vec<_>, datafusion::error::DataFusionError>>()
        .map_err(|e| StorageError::Compaction(e.to_string()))?;
    Ok(LexOrdering::new(exprs).expect("sort columns are not empty"))
}

/// Merges `inputs` (adjacent in seq) into one new segment file in `dir`,
/// fsynced. Publishing it is the caller's job.
pub fn merge(inputs: &[Arc<LiveSegment>], dir: &Path, faults: &Faults) -> Result<SegmentMeta, StorageError> {
    let min_seq = inputs.iter().map(|s| s.meta.min_seq).min().expect("inputs");
    let max_seq = inputs.iter().map(|s| s.meta.max_seq).max().expect("inputs");
    let rows: u64 = inputs.iter().map(|s| s.meta.rows).sum();
    debug_assert_eq!(rows, max_seq - min_seq + 1, "adjacent segments cover their seq range");
    let file_name = format!("{min_seq:020}-{max_seq:020}.parquet");
    let path = dir.join(&file_name);

    let written = write_merged(inputs, &path, faults);
    if written.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let (rows_written, size_bytes) = written?;
    if rows_written != rows {
        let _ = std::fs::remove_file(&path);
        return Err(StorageError::Compaction(format!("merged {rows_written} rows from inputs holding {rows}")));
    }
    Ok(SegmentMeta {
        file: file_name,
        size_bytes,
        rows,
        min_seq,
        max_seq,
        min_time_us: inputs.iter().map(|s| s.meta.min_time_us).min().expect("inputs"),
        max_time_us: inputs.iter().map(|s| s.meta.max_time_us).max().expect("inputs"),
        min_org_id: inputs.iter().map(|s| s.meta.min_org_id.clone()).min().expect("inputs"),
        max_org_id: inputs.iter().map(|s| s.meta.max_org_id.clone()).max().expect("inputs"),
    })
}

/// Streams the sort-preserving merge of the inputs into `path`; returns rows and bytes.
fn write_merged(inputs: &[Arc<LiveSegment>], path: &Path, faults: &Faults) -> Result<(u64, u64), StorageError> {
    let schema = model::schema();
    let order = sort_order()?;
    let df = |e: datafusion::error::DataFusionError| StorageError::Compaction(e.to_string());
    let scans = inputs
        .iter()
        .map(|segment| {
            let config = FileScanConfigBuilder::new(
                ObjectStoreUrl::local_filesystem(),
                Arc::new(ParquetSource::new(Arc::clone(&schema))),
            )
            .with_file_group(FileGroup::new(vec![PartitionedFile::new(
                segment.object_location(),
                segment.meta.size_bytes,
            )]))
            .with_output_ordering(vec![order.clone()])
            .build();
            DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
        })
        .collect::<Vec<_>>();
    let union = UnionExec::try_new(scans).map_err(df)?;
    let merged = Arc::new(SortPreservingMergeExec::new(order, union));

    // The sealer thread has no runtime of its own; the Parquet reader needs one.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| StorageError::io(path, e))?;
    runtime.block_on(async {
        let mut stream = merged.execute(0, Arc::new(TaskContext::default())).map_err(df)?;
        let mut writer = SegmentFileWriter::create(path, faults)?;
        let mut rows = 0u64;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(df)?;
            rows += batch.num_rows() as u64;
            writer.write(&batch)?;
        }
        Ok((rows, writer.finish()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(min_seq: u64, rows: u64) -> Arc<LiveSegment> {
        let meta = SegmentMeta {
            file: format!("{min_seq}.parquet"),
            size_bytes: 1,
            rows,
            min_seq,
            max_seq: min_seq + rows - 1,
            min_time_us: 0,
            max_time_us: 0,
            min_org_id: "a".into(),
            max_org_id: "b".into(),
        };
        LiveSegment::new(meta, Path::new("/nonexistent"))
    }

    #[test]
    fn plans_the_first_run_of_small_adjacent_segments() {
        let policy = CompactionPolicy { target_rows: 100, min_inputs: 3 };
        let segments = [segment(1, 90), segment(91, 10), segment(101, 30), segment(131, 30), segment(161, 30)];
        assert_eq!(plan(&segments, policy), Some(1..5), "10 + 30 + 30 + 30 fit in 100 rows");
        assert_eq!(plan(&segments[..3], policy), None, "no run of three fits");
        let policy = CompactionPolicy { target_rows: 100, min_inputs: 2 };
        assert_eq!(plan(&segments, policy), Some(0..2));
        assert_eq!(plan(&[], policy), None);
    }
}
