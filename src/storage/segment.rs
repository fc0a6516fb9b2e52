//! Sealed segments: immutable Parquet files of events sorted by `(org_id, time)`.
//!
//! A segment is plain Parquet (zstd, column statistics, page index, bloom
//! filters on the investigation keys) so that DuckDB, Spark or pyarrow read it
//! without auditlake. This module writes and fsyncs one file; publishing it in
//! the manifest is the engine's job, and until then the file does not exist
//! for readers. Where the file goes (local directory or bucket) is
//! [`SegmentStore`]'s business.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{self, SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;

use super::StorageError;
use super::manifest::SegmentMeta;
use super::objects::SegmentStore;
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
/// Near-unique text columns (UUIDs, mostly): a dictionary would only be built
/// and abandoned. Delta-length encoding stores the lengths apart from the
/// bytes, so zstd sees only the characters: 19.0 instead of 20.5 bytes per
/// random UUID (DuckDB: 20.6).
const NO_DICTIONARY_COLUMNS: [&str; 2] = ["id", "request_id"];

/// A segment's file name: the seq range it holds, zero-padded so that names
/// sort in log order.
pub fn segment_file_name(min_seq: u64, max_seq: u64) -> String {
    format!("{min_seq:020}-{max_seq:020}.parquet")
}

pub(super) fn writer_properties() -> WriterProperties {
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
        props = props
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_LENGTH_BYTE_ARRAY);
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

/// Writes `batches` as a new segment file in the store, durably. The caller
/// publishes the segment in the manifest.
pub fn write_segment(store: &SegmentStore, batches: &[RecordBatch]) -> Result<SegmentMeta, StorageError> {
    let sorted = sort_for_segment(batches)?;
    assert!(sorted.num_rows() > 0, "an empty segment is never written");
    let seq = sorted.column_by_name("seq").expect("seq column").as_primitive::<Int64Type>();
    let time = sorted.column_by_name("time").expect("time column").as_primitive::<TimestampMicrosecondType>();
    let org = sorted.column_by_name("org_id").expect("org_id column").as_string::<i32>();
    let min_seq = compute::min(seq).expect("non-empty") as u64;
    let max_seq = compute::max(seq).expect("non-empty") as u64;
    let file_name = segment_file_name(min_seq, max_seq);

    let written = store.create_segment(&file_name).and_then(|mut writer| {
        writer.write(&sorted)?;
        writer.finish()
    });
    if written.is_err() {
        // Debris would be removed at the next start anyway; don't keep it till then.
        let _ = store.delete_segment(&file_name);
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
    store: Arc<SegmentStore>,
    retired: AtomicBool,
}

impl LiveSegment {
    pub fn new(meta: SegmentMeta, store: &Arc<SegmentStore>) -> Arc<Self> {
        Arc::new(LiveSegment { meta, store: Arc::clone(store), retired: AtomicBool::new(false) })
    }

    /// The file's location inside the segment store, as DataFusion's scan
    /// wants it (the store is registered under [`SegmentStore::url`]).
    pub fn object_location(&self) -> String {
        self.store.segment_location(&self.meta.file).to_string()
    }

    /// The file on local disk, when segments are stored locally.
    pub fn local_path(&self) -> Option<PathBuf> {
        self.store.local_path(&self.meta.file)
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
            self.store.delete_segment_soon(std::mem::take(&mut self.meta.file));
        }
    }
}
