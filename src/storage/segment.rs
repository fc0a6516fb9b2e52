//! Sealed segments: immutable Parquet files of events sorted by `(org_id, time)`.
//!
//! A segment is plain Parquet (zstd, column statistics, page index, bloom
//! filters on the investigation keys) so that DuckDB, Spark or pyarrow read it
//! without auditlake. This module writes and fsyncs one file; publishing it in
//! the manifest is the engine's job, and until then the file does not exist
//! for readers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{self, SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;

use super::StorageError;
use super::faults::{Faults, IoOp};
use super::manifest::SegmentMeta;
use crate::model;

/// Rows per Parquet row group: the page index prunes within a group, so
/// groups can be large enough for zstd and the footer to stay small.
pub const SEGMENT_ROW_GROUP_ROWS: usize = 128 * 1024;
const ZSTD_LEVEL: i32 = 3;
/// Columns investigators look up by equality; each gets a bloom filter.
const BLOOM_FILTER_COLUMNS: [&str; 3] = ["actor_id", "content_id", "source_ip"];
/// Integer columns that rise within each `(org_id)` run: delta encoding stores
/// them in a few bits per row where a dictionary would not help.
const DELTA_COLUMNS: [&str; 3] = ["time", "received_at", "seq"];
/// Near-unique text columns: a dictionary would only be built and abandoned.
const NO_DICTIONARY_COLUMNS: [&str; 2] = ["id", "request_id"];

fn writer_properties() -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level")))
        .set_max_row_group_row_count(Some(SEGMENT_ROW_GROUP_ROWS));
    for column in BLOOM_FILTER_COLUMNS {
        props = props.set_column_bloom_filter_enabled(ColumnPath::from(column), true);
    }
    for column in DELTA_COLUMNS {
        props = props
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    for column in NO_DICTIONARY_COLUMNS {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    props.build()
}

/// Sorts the batches by `(org_id, time, seq)` into one batch.
/// The order rows have inside every segment.
pub const SORT_COLUMNS: [&str; 3] = ["org_id", "time", "seq"];

fn sort_for_segment(batches: &[RecordBatch]) -> Result<RecordBatch, StorageError> {
    let all = concat_batches(&model::schema(), batches)?;
    let key =
        |name: &str| SortColumn { values: Arc::clone(all.column_by_name(name).expect("schema column")), options: None };
    let keys: Vec<SortColumn> = SORT_COLUMNS.iter().map(|c| key(c)).collect();
    let indices = lexsort_to_indices(&keys, None)?;
    Ok(take_record_batch(&all, &indices)?)
}

/// A segment file being written: Parquet with the segment properties, made
/// durable by [`SegmentFileWriter::finish`]. Sealing and compaction both write
/// through it, so the durable path (fault check, fsync) exists once.
pub(super) struct SegmentFileWriter<'a> {
    path: &'a Path,
    writer: ArrowWriter<File>,
    faults: &'a Faults,
}

impl<'a> SegmentFileWriter<'a> {
    pub(super) fn create(path: &'a Path, faults: &'a Faults) -> Result<Self, StorageError> {
        let file = File::create(path).map_err(|e| StorageError::io(path, e))?;
        let writer = ArrowWriter::try_new(file, model::schema(), Some(writer_properties()))?;
        Ok(SegmentFileWriter { path, writer, faults })
    }

    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        Ok(self.writer.write(batch)?)
    }

    /// Closes and fsyncs the file; returns its size in bytes.
    pub(super) fn finish(self) -> Result<u64, StorageError> {
        let path = self.path;
        let file = self.writer.into_inner()?;
        if let Some(fault) = self.faults.check(IoOp::SegmentWrite) {
            return Err(StorageError::io(path, fault.to_error()));
        }
        file.sync_all().map_err(|e| StorageError::io(path, e))?;
        Ok(file.metadata().map_err(|e| StorageError::io(path, e))?.len())
    }
}

/// Writes one sorted batch as a Parquet file and fsyncs it; returns its size.
fn write_file(path: &Path, sorted: &RecordBatch, faults: &Faults) -> Result<u64, StorageError> {
    let mut writer = SegmentFileWriter::create(path, faults)?;
    writer.write(sorted)?;
    writer.finish()
}

/// Writes `batches` as a new segment file in `dir` and fsyncs it. The caller
/// fsyncs the directory and publishes the segment in the manifest.
pub fn write_segment(dir: &Path, batches: &[RecordBatch], faults: &Faults) -> Result<SegmentMeta, StorageError> {
    let sorted = sort_for_segment(batches)?;
    assert!(sorted.num_rows() > 0, "an empty segment is never written");
    let seq = sorted.column_by_name("seq").expect("seq column").as_primitive::<Int64Type>();
    let time = sorted.column_by_name("time").expect("time column").as_primitive::<TimestampMicrosecondType>();
    let org = sorted.column_by_name("org_id").expect("org_id column").as_string::<i32>();
    let min_seq = compute::min(seq).expect("non-empty") as u64;
    let max_seq = compute::max(seq).expect("non-empty") as u64;
    let file_name = format!("{min_seq:020}-{max_seq:020}.parquet");
    let path = dir.join(&file_name);

    let written = write_file(&path, &sorted, faults);
    if written.is_err() {
        // Debris would be removed at the next start anyway; don't keep it till then.
        let _ = std::fs::remove_file(&path);
    }
    let size_bytes = written?;

    Ok(SegmentMeta {
        file: file_name,
        size_bytes,
        rows: sorted.num_rows() as u64,
        min_seq,
        max_seq,
        min_time_us: compute::min(time).expect("non-empty"),
        max_time_us: compute::max(time).expect("non-empty"),
        min_org_id: org.value(0).to_owned(),
        max_org_id: org.value(org.len() - 1).to_owned(),
    })
}

/// A published segment as the engine and running queries hold it.
///
/// Compaction replaces segments while queries may still be reading them, so a
/// replaced segment is only *retired*: its file is deleted when the last
/// holder (the engine's list, or a query plan that was given it) lets go.
#[derive(Debug)]
pub struct LiveSegment {
    pub meta: SegmentMeta,
    pub path: PathBuf,
    retired: AtomicBool,
}

impl LiveSegment {
    pub fn new(meta: SegmentMeta, dir: &Path) -> Arc<Self> {
        let path = dir.join(&meta.file);
        Arc::new(LiveSegment { meta, path, retired: AtomicBool::new(false) })
    }

    /// The file's location for DataFusion's local object store (rooted at `/`).
    pub fn object_location(&self) -> String {
        self.path.to_string_lossy().trim_start_matches('/').to_owned()
    }

    /// Marks the file for deletion once nobody reads it any more. Called only
    /// after a manifest without this segment is durable.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

impl Drop for LiveSegment {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire) {
            match std::fs::remove_file(&self.path) {
                Ok(()) => tracing::debug!(file = %self.path.display(), "deleted retired segment"),
                // Left behind, it is removed at the next start (not in the manifest).
                Err(e) => tracing::warn!(file = %self.path.display(), error = %e, "cannot delete retired segment"),
            }
        }
    }
}
