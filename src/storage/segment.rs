//! Sealed segments: immutable Parquet files of events sorted by
//! `(org_id, actor_id, time)`.
//!
//! A segment is plain Parquet (zstd, column statistics, page index, bloom
//! filters on the investigation keys) so that DuckDB, Spark or pyarrow read it
//! without auditlake. This module writes and fsyncs one file; publishing it in
//! the manifest is the engine's job, and until then the file does not exist
//! for readers. Where the file goes (local directory or bucket) is
//! [`SegmentStore`]'s business.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;

use super::StorageError;
use super::manifest::{self, SegmentMeta};
use super::objects::SegmentStore;
use super::packed;

/// Rows per Parquet row group: the unit bloom filters prune. A content id
/// appears in a few row groups of a segment; at 128Ki rows those few were
/// most of it (a content lookup over 10M realistic events read 1.1M rows for
/// 11). Bloom filters are folded to each group's distinct count, so smaller
/// groups cost little space.
pub const SEGMENT_ROW_GROUP_ROWS: usize = 32 * 1024;
const ZSTD_LEVEL: i32 = 3;
/// Rows per data page (at most, give or take a write batch): the page index
/// narrows a one-actor read to the pages holding that actor. Smaller pages
/// restart delta encoding more often: 4Ki cost 2.4 % more bytes.
const DATA_PAGE_ROWS: usize = 8 * 1024;
/// Columns investigators look up by equality; each gets a bloom filter.
/// Lookups by `content_id` use the content index (see [`content_index`]),
/// which names rows rather than row groups; its bloom filter still serves
/// ids too frequent for the index to list, and other Parquet readers (DuckDB
/// took 4x longer over the same 10M events without it).
///
/// [`content_index`]: super::content_index
const BLOOM_FILTER_COLUMNS: [&str; 3] = ["actor_id", "content_id", "source_ip"];
/// Integer columns that rise within each `(org_id)` run: delta encoding stores
/// them in a few bits per row where a dictionary would not help.
const DELTA_COLUMNS: [&str; 3] = ["time", "received_at", "seq"];
/// Columns stored without zstd: delta encoding leaves little for it to find
/// (`time` shrank by under 1 %, `seq` and `received_at` by a few hundred bytes
/// per row group), while every column chunk a query reads through zstd costs
/// a compression and a decompression context, each created with a `cpuid`,
/// which traps to the hypervisor on a virtual machine (a tenth of a one-actor
/// lookup's time went there).
const UNCOMPRESSED_COLUMNS: [&str; 3] = DELTA_COLUMNS;
/// Near-unique columns: ids (see [`packed`]), and the free-text and content
/// columns that are nearly as varied within a row group (a `content_id` of
/// the realistic shape has 184k distinct values in 250k rows). A dictionary
/// would only be built and abandoned, or, worse, kept: reading one row of a
/// column chunk decodes its whole dictionary page, which was a third of a
/// one-actor lookup's scan.
const NO_DICTIONARY_COLUMNS: [&str; 8] = [
    "id_uuid",
    "id_text",
    "request_id_uuid",
    "request_id_text",
    "ugc_digest",
    "content_id",
    "content_title",
    "session_id",
];
/// Columns whose min/max statistics prune nothing, so computing them (a tenth
/// of a bulk load's encoding time) is wasted: random or free text (ids,
/// titles, user agents; exact lookups of ids are for bloom filters), and
/// small vocabularies that every row group and page of mixed activity spans
/// from end to end (categories, outcomes, products, locations, content types).
/// Columns that queries narrow by (time, org, actor, action, content, IP) keep
/// theirs.
const NO_STATISTICS_COLUMNS: [&str; 16] = [
    "ugc_digest",
    "id_uuid",
    "id_text",
    "request_id_uuid",
    "request_id_text",
    "actor_name",
    "content_title",
    "user_agent",
    "attributes",
    "actor_type",
    "category",
    "outcome",
    "product",
    "location",
    "content_type",
    "session_id",
];
/// Of those, the text ones get delta-length encoding, which stores lengths
/// apart from bytes so zstd sees only the characters.
const DELTA_LENGTH_COLUMNS: [&str; 2] = ["id_text", "request_id_text"];

/// A segment's file name: the seq range it holds, zero-padded so that names
/// sort in log order.
pub fn segment_file_name(min_seq: u64, max_seq: u64) -> String {
    format!("{min_seq:020}-{max_seq:020}.parquet")
}

/// The name of a rewrite of segment `file` (same seq range):
/// `{min}-{max}.r{n}.parquet`, one generation after `file`'s.
pub fn rewritten_file_name(file: &str) -> String {
    let stem = file.strip_suffix(".parquet").unwrap_or(file);
    let (range, generation) = match stem.rsplit_once(".r") {
        Some((range, n)) if n.parse::<u64>().is_ok() => (range, n.parse::<u64>().expect("checked")),
        _ => (stem, 0),
    };
    format!("{range}.r{}.parquet", generation + 1)
}

pub(super) fn writer_properties() -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level")))
        .set_max_row_group_row_count(Some(SEGMENT_ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(DATA_PAGE_ROWS);
    for column in BLOOM_FILTER_COLUMNS {
        props = props.set_column_bloom_filter_enabled(ColumnPath::from(column), true);
    }
    for column in DELTA_COLUMNS {
        props = props
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    for column in UNCOMPRESSED_COLUMNS {
        props = props.set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED);
    }
    for column in NO_DICTIONARY_COLUMNS {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    for column in NO_STATISTICS_COLUMNS {
        props = props.set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    for column in DELTA_LENGTH_COLUMNS {
        props = props.set_column_encoding(ColumnPath::from(column), Encoding::DELTA_LENGTH_BYTE_ARRAY);
    }
    props.build()
}

/// The order rows have inside every segment: one actor's events are
/// adjacent, so the page index and row-group statistics on `actor_id` land
/// a one-actor query on a few pages instead of every page of its org.
pub const SORT_COLUMNS: [&str; 4] = ["org_id", "actor_id", "time", "seq"];
/// Rows gathered into one sorted chunk on their way to the writer.
const WRITE_CHUNK_ROWS: usize = 32 * 1024;

/// The rank of each row's value of text column `name` among the distinct
/// values of `batches`, per batch: comparing ranks instead of strings made
/// sorting several times faster (a segment has few orgs and actors, each
/// repeated many times).
fn ranks(batches: &[RecordBatch], name: &str) -> Vec<Vec<u32>> {
    let columns: Vec<_> =
        batches.iter().map(|b| b.column_by_name(name).expect("schema column").as_string::<i32>().clone()).collect();
    let mut rank_of: HashMap<&str, u32> = HashMap::new();
    for value in columns.iter().flat_map(|c| c.iter().flatten()) {
        let next = rank_of.len() as u32;
        rank_of.entry(value).or_insert(next);
    }
    let mut by_value: Vec<&str> = rank_of.keys().copied().collect();
    by_value.sort_unstable();
    for (rank, value) in by_value.into_iter().enumerate() {
        rank_of.insert(value, rank as u32);
    }
    columns.iter().map(|c| c.iter().map(|v| rank_of[v.expect("sort columns are required")]).collect()).collect()
}

/// The rows of `batches` in [`SORT_COLUMNS`] order, as `(batch, row)`
/// positions. Only the sort keys are copied, so sealing never holds a second
/// full copy of the buffer (see [`write_segment`]).
fn sorted_positions(batches: &[RecordBatch]) -> Result<Vec<(usize, usize)>, StorageError> {
    let (orgs, actors) = (ranks(batches, "org_id"), ranks(batches, "actor_id"));
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut keys: Vec<(u32, u32, i64, i64, u32, u32)> = Vec::with_capacity(rows);
    for (b, batch) in batches.iter().enumerate() {
        let times = batch.column_by_name("time").expect("schema column").as_primitive::<TimestampMicrosecondType>();
        let seqs = batch.column_by_name("seq").expect("schema column").as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            keys.push((orgs[b][row], actors[b][row], times.value(row), seqs.value(row), b as u32, row as u32));
        }
    }
    // Seqs are unique, so the order is total and stability does not matter.
    keys.sort_unstable();
    Ok(keys.into_iter().map(|(_, _, _, _, b, row)| (b as usize, row as usize)).collect())
}

/// Whether the rows of `batches`, taken in order, are already sorted by
/// [`SORT_COLUMNS`], as bulk loads that sort on their own thread hand them.
fn in_segment_order(batches: &[RecordBatch]) -> bool {
    let mut previous: Option<(&str, &str, i64, i64)> = None;
    for batch in batches {
        let text = |name| batch.column_by_name(name).expect("schema column").as_string::<i32>();
        let (orgs, actors) = (text("org_id"), text("actor_id"));
        let times = batch.column_by_name("time").expect("schema column").as_primitive::<TimestampMicrosecondType>();
        let seqs = batch.column_by_name("seq").expect("schema column").as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let key = (orgs.value(row), actors.value(row), times.value(row), seqs.value(row));
            if previous.is_some_and(|p| p > key) {
                return false;
            }
            previous = Some(key);
        }
    }
    true
}

/// Writes `batches` as a new segment file in the store, durably, sorted by
/// [`SORT_COLUMNS`]. Rows are gathered into the sorted order a chunk at a
/// time, so memory stays at the buffer plus one chunk. The caller publishes
/// the segment in the manifest.
pub fn write_segment(store: &SegmentStore, batches: &[RecordBatch]) -> Result<SegmentMeta, StorageError> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert!(rows > 0, "an empty segment is never written");
    let column = |name: &'static str| batches.iter().map(move |b| b.column_by_name(name).expect("schema column"));
    let seqs = column("seq").flat_map(|c| c.as_primitive::<Int64Type>().values().iter().copied());
    let (min_seq, max_seq) = seqs.fold((i64::MAX, i64::MIN), |(lo, hi), s| (lo.min(s), hi.max(s)));
    let times = column("time").flat_map(|c| c.as_primitive::<TimestampMicrosecondType>().values().iter().copied());
    let (min_time_us, max_time_us) = times.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let received =
        column("received_at").flat_map(|c| c.as_primitive::<TimestampMicrosecondType>().values().iter().copied());
    let max_received_at_us = received.max();
    let actors = column("actor_id").flat_map(|c| c.as_string::<i32>().iter().flatten());
    let actor_ids = actors
        .fold(None, |range: Option<(&str, &str)>, a| Some(range.map_or((a, a), |(lo, hi)| (lo.min(a), hi.max(a)))))
        .map(|(lo, hi)| (lo.to_owned(), hi.to_owned()));
    let orgs =
        manifest::org_counts(column("org_id").flat_map(|c| c.as_string::<i32>().iter().flatten().map(|o| (o, 1))));
    let file_name = segment_file_name(min_seq as u64, max_seq as u64);

    let org_of = |batch: &RecordBatch, row: usize| {
        batch.column_by_name("org_id").expect("org_id").as_string::<i32>().value(row).to_owned()
    };
    let org_at = |(b, row): (usize, usize)| org_of(&batches[b], row);
    let written;
    let (min_org_id, max_org_id);
    if in_segment_order(batches) {
        let non_empty: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
        let last = non_empty[non_empty.len() - 1];
        (min_org_id, max_org_id) = (org_of(non_empty[0], 0), org_of(last, last.num_rows() - 1));
        written = store.create_segment(&file_name).and_then(|mut writer| {
            for batch in non_empty {
                for offset in (0..batch.num_rows()).step_by(WRITE_CHUNK_ROWS) {
                    let len = WRITE_CHUNK_ROWS.min(batch.num_rows() - offset);
                    writer.write(&packed::pack(&batch.slice(offset, len)))?;
                }
            }
            writer.finish()
        });
    } else {
        let positions = sorted_positions(batches)?;
        (min_org_id, max_org_id) = (org_at(positions[0]), org_at(positions[rows - 1]));
        let sources: Vec<&RecordBatch> = batches.iter().collect();
        written = store.create_segment(&file_name).and_then(|mut writer| {
            for chunk in positions.chunks(WRITE_CHUNK_ROWS) {
                writer.write(&packed::pack(&interleave_record_batch(&sources, chunk)?))?;
            }
            writer.finish()
        });
    }
    if written.is_err() {
        // Debris would be removed at the next start anyway; don't keep it till then.
        let _ = store.delete_segment(&file_name);
    }
    let written = written?;

    Ok(SegmentMeta {
        file: file_name,
        size_bytes: written.size_bytes,
        rows: rows as u64,
        min_seq: min_seq as u64,
        max_seq: max_seq as u64,
        min_time_us,
        max_time_us,
        min_org_id,
        max_org_id,
        actor_ids,
        max_received_at_us,
        content_index: written.content_index,
        orgs,
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

    /// The file's path inside the segment store.
    pub fn object_path(&self) -> object_store::path::Path {
        self.store.segment_location(&self.meta.file)
    }

    /// The store holding the file.
    pub fn object_store(&self) -> Arc<dyn object_store::ObjectStore> {
        self.store.object_store()
    }

    /// A scan of this segment's file in the segment schema, for the storage
    /// layer's own reads (compaction, start-up); queries plan their own.
    pub fn scan(&self) -> FileScanConfigBuilder {
        FileScanConfigBuilder::new(self.store.url().clone(), Arc::new(ParquetSource::new(packed::segment_schema())))
            .with_file_group(FileGroup::new(vec![PartitionedFile::new(self.object_location(), self.meta.size_bytes)]))
    }

    /// A scan of only the named columns of this segment.
    pub fn scan_columns(&self, columns: &[&str]) -> Result<Arc<dyn ExecutionPlan>, StorageError> {
        let schema = packed::segment_schema();
        let indices = columns.iter().map(|c| schema.index_of(c)).collect::<Result<Vec<_>, _>>();
        let config = indices.map_err(|e| StorageError::Scan(e.to_string())).and_then(|i| {
            self.scan().with_projection_indices(Some(i)).map_err(|e| StorageError::Scan(e.to_string()))
        })?;
        Ok(DataSourceExec::from_data_source(config.build()))
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

/// Runs a plan over segment scans to the end on the store's runtime (the
/// sealer thread and start-up have none of their own), handing each batch to
/// `each`.
pub fn for_each_batch(
    store: &SegmentStore,
    plan: Arc<dyn ExecutionPlan>,
    mut each: impl FnMut(RecordBatch) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let scan_error = |e: datafusion::error::DataFusionError| StorageError::Scan(e.to_string());
    let runtime_env = RuntimeEnvBuilder::new().build_arc().map_err(scan_error)?;
    runtime_env.register_object_store(store.url().as_ref(), store.object_store());
    let task = Arc::new(TaskContext::default().with_runtime(runtime_env));
    let mut stream = plan.execute(0, task).map_err(scan_error)?;
    while let Some(batch) = store.block_on(stream.next()) {
        each(batch.map_err(scan_error)?)?;
    }
    Ok(())
}

impl Drop for LiveSegment {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire) {
            self.store.delete_segment_soon(std::mem::take(&mut self.meta.file));
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader;

    use super::*;
    use crate::model::{self, Event};

    /// One event of actor `u`, its id telling org and time apart.
    fn event(org: &str, time_us: i64) -> Event {
        Event {
            time_us,
            org_id: org.into(),
            actor_id: "u".into(),
            action: "a".into(),
            id: format!("{org}-{time_us}"),
            ..Event::default()
        }
    }

    #[test]
    fn segments_are_sorted_across_batches_and_described_by_their_meta() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), None, Default::default()).unwrap();
        // Two batches whose rows interleave in (org_id, actor_id, time) order.
        let first = model::events_to_batch(&[event("globex", 5), event("acme", 9), event("acme", 1)], 1);
        let second = model::events_to_batch(&[event("acme", 5), event("globex", 2)], 4);
        let meta = write_segment(&store, &[first, second]).unwrap();
        assert_eq!((meta.rows, meta.min_seq, meta.max_seq), (5, 1, 5));
        assert_eq!((meta.min_time_us, meta.max_time_us), (1, 9));
        assert_eq!((meta.min_org_id.as_str(), meta.max_org_id.as_str()), ("acme", "globex"));

        let file = std::fs::File::open(store.local_path(&meta.file).unwrap()).unwrap();
        let batch = ParquetRecordBatchReader::try_new(file, 1024).unwrap().next().unwrap().unwrap();
        let (uuids, others) = (batch.column_by_name("id_uuid").unwrap(), batch.column_by_name("id_text").unwrap());
        let ids = packed::unpack(uuids.as_fixed_size_binary(), others.as_string::<i32>());
        let ids: Vec<&str> = ids.iter().map(Option::unwrap).collect();
        assert_eq!(ids, ["acme-1", "acme-5", "acme-9", "globex-2", "globex-5"]);
        let seqs = batch.column_by_name("seq").unwrap().as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(seqs, [3, 4, 2, 5, 1], "rows keep their seqs");
    }

    #[test]
    fn rows_already_in_segment_order_are_written_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), None, Default::default()).unwrap();
        let acme = model::events_to_batch(&[event("acme", 4), event("acme", 9)], 1);
        let none = model::events_to_batch(&[], 3);
        let globex = model::events_to_batch(&[event("globex", 2)], 3);
        assert!(in_segment_order(&[acme.clone(), none.clone(), globex.clone()]));
        assert!(!in_segment_order(&[globex.clone(), acme.clone()]));
        let meta = write_segment(&store, &[acme, none, globex]).unwrap();
        assert_eq!((meta.min_org_id.as_str(), meta.max_org_id.as_str()), ("acme", "globex"));
        assert_eq!((meta.rows, meta.min_time_us, meta.max_time_us), (3, 2, 9));

        let file = std::fs::File::open(store.local_path(&meta.file).unwrap()).unwrap();
        let batch = ParquetRecordBatchReader::try_new(file, 1024).unwrap().next().unwrap().unwrap();
        let seqs = batch.column_by_name("seq").unwrap().as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(seqs, [1, 2, 3]);
    }
}
