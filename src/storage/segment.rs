//! Sealed segments: immutable Parquet files of events sorted by
//! `(org_id, actor_id, time)`.
//!
//! A segment is plain Parquet (zstd, column statistics, page index, bloom
//! filters on the investigation keys) so that DuckDB, Spark or pyarrow read it
//! without auditlake. Each row group picks its own encodings from its values
//! (a dictionary where they repeat, plain where they do not): the same
//! column is a handful of values in one product's log and new on every event
//! in another's. This module writes and fsyncs one file; publishing it in
//! the manifest is the engine's job, and until then the file does not exist
//! for readers. Where the file goes (local directory or bucket) is
//! [`SegmentStore`]'s business.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves,
};
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use datafusion::parquet::file::writer::SerializedFileWriter;
use datafusion::parquet::schema::types::ColumnPath;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;

mod writer;

pub use writer::{SegmentWriter, WrittenSegment};

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
/// Ids (see [`packed`]): unique by nature, so never worth a dictionary.
const NO_DICTIONARY_COLUMNS: [&str; 5] = ["id_uuid", "id_text", "request_id_uuid", "request_id_text", "ugc_digest"];
/// Whether a value repeats depends on the data, not on the column, so every
/// text column but the ids ([`NO_DICTIONARY_COLUMNS`]) gets its encoding
/// from each row group's values (see [`encode_row_group`]), as does
/// `received_at`. Source addresses repeat per person in one product and are
/// new on every event in another; session ids repeat within a session;
/// `received_at` is one value per batch (one for a whole import); content ids
/// repeat for popular pages and are unique for most.
fn chosen_dictionary_columns() -> Vec<String> {
    let schema = packed::segment_schema();
    let text = schema.fields().iter().filter(|f| f.data_type() == &datafusion::arrow::datatypes::DataType::Utf8);
    text.filter(|f| !NO_DICTIONARY_COLUMNS.contains(&f.name().as_str())).map(|f| f.name().clone()).collect()
}
/// Below this many rows per distinct value a row group stores a column's
/// values plain: a dictionary costs more than it saves (zstd finds the
/// repeats of plain values too), and a reader of one row decodes the whole
/// dictionary page first (for addresses new on every event, that was a
/// lookup's largest decode).
const MIN_ROWS_PER_DICTIONARY_VALUE: usize = 4;
/// From this many rows per distinct value on, a dictionary is taken without
/// trying: a few values over many rows (orgs, actions, one `received_at` per
/// batch) is what dictionaries are for.
const SURE_ROWS_PER_DICTIONARY_VALUE: usize = 64;
/// Between the two, the column is encoded both ways and the dictionary kept
/// only when it is at least this much smaller (per cent): values that repeat
/// next to each other (a session's ids) zstd compresses as well without one,
/// and plain pages are cheaper to read.
const DICTIONARY_MIN_SAVING_PERCENT: u64 = 10;
/// `received_at`: delta encoded (it rises with `seq`), or a dictionary when
/// few batches make up the row group.
const RECEIVED_AT: &str = "received_at";

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

/// The settings of the file as a whole; each row group's column encodings
/// are chosen by [`encode_row_group`].
pub(super) fn writer_properties() -> WriterProperties {
    properties_builder().build()
}

fn properties_builder() -> WriterPropertiesBuilder {
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
    props
}

/// Whether a column of one row group gets a dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dictionary {
    No,
    Yes,
    /// Encode both ways, keep the smaller (see [`DICTIONARY_MIN_SAVING_PERCENT`]).
    Try,
}

/// Encodes `rows` (segment schema, in segment order) as the column chunks of
/// row group number `index` of the file `file` is writing, each column of
/// [`chosen_dictionary_columns`] and `received_at` with a dictionary or
/// without as its values in these rows call for.
pub(super) fn encode_row_group<W: std::io::Write + Send>(
    rows: &[RecordBatch],
    file: &SerializedFileWriter<W>,
    index: usize,
) -> Result<Vec<ArrowColumnChunk>, StorageError> {
    let choices = dictionary_choices(rows);
    let trying: Vec<&str> =
        choices.iter().filter(|(_, c)| *c == Dictionary::Try).map(|(name, _)| name.as_str()).collect();
    let schema = packed::segment_schema();
    // Column writers take their settings from a file writer's: ones that
    // write nowhere, holding this row group's.
    let writers = |dictionary_when_trying: bool| -> Result<Vec<ArrowColumnWriter>, StorageError> {
        let mut props = properties_builder();
        for (column, choice) in &choices {
            let dictionary = *choice == Dictionary::Yes || (*choice == Dictionary::Try && dictionary_when_trying);
            props = props.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), dictionary);
        }
        let shaper =
            SerializedFileWriter::new(std::io::sink(), file.schema_descr().root_schema_ptr(), Arc::new(props.build()))?;
        Ok(ArrowRowGroupWriterFactory::new(&shaper, Arc::clone(&schema)).create_column_writers(index)?)
    };
    let mut chosen = writers(true)?;
    let mut plain = if trying.is_empty() { None } else { Some(writers(false)?) };
    let tried: Vec<bool> = schema.fields().iter().map(|f| trying.contains(&f.name().as_str())).collect();
    for batch in rows {
        for (i, (field, array)) in schema.fields().iter().zip(batch.columns()).enumerate() {
            // Every segment column is a leaf: one writer per field.
            for leaf in compute_leaves(field, array)? {
                if let (true, Some(plain)) = (tried[i], plain.as_mut()) {
                    plain[i].write(&leaf)?;
                }
                chosen[i].write(&leaf)?;
            }
        }
    }
    let mut plain = plain.map(Vec::into_iter);
    let mut chunks = Vec::with_capacity(chosen.len());
    for (i, writer) in chosen.into_iter().enumerate() {
        let with_dictionary = writer.close()?;
        // The plain writers of columns not tried were never written to.
        let without = plain.as_mut().and_then(Iterator::next).filter(|_| tried[i]);
        chunks.push(match without.map(ArrowColumnWriter::close).transpose()? {
            Some(without) if !saves_enough(&with_dictionary, &without) => without,
            _ => with_dictionary,
        });
    }
    Ok(chunks)
}

/// Whether a column chunk with a dictionary is enough smaller than the same
/// values without one to be worth its dictionary page.
fn saves_enough(with_dictionary: &ArrowColumnChunk, without: &ArrowColumnChunk) -> bool {
    let bytes = |chunk: &ArrowColumnChunk| chunk.close().metadata.compressed_size().max(0) as u64;
    bytes(with_dictionary) * 100 <= bytes(without) * (100 - DICTIONARY_MIN_SAVING_PERCENT)
}

/// For each column whose encoding the row group chooses, whether it gets a
/// dictionary, from how often its values recur in these rows.
fn dictionary_choices(batches: &[RecordBatch]) -> Vec<(String, Dictionary)> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let choose = |distinct: Option<usize>| match distinct {
        Some(n) if n * SURE_ROWS_PER_DICTIONARY_VALUE <= rows => Dictionary::Yes,
        Some(_) => Dictionary::Try,
        None => Dictionary::No,
    };
    let most = rows / MIN_ROWS_PER_DICTIONARY_VALUE;
    fn column<'a>(batches: &'a [RecordBatch], name: &'a str) -> impl Iterator<Item = &'a ArrayRef> + 'a {
        batches.iter().map(move |batch| batch.column_by_name(name).expect("segment column"))
    }
    let mut choices: Vec<(String, Dictionary)> = chosen_dictionary_columns()
        .into_iter()
        .map(|name| {
            let values = column(batches, &name).flat_map(|c| c.as_string::<i32>().iter().flatten());
            let choice = choose(distinct_up_to(values, most));
            (name, choice)
        })
        .collect();
    let received =
        column(batches, RECEIVED_AT).flat_map(|c| c.as_primitive::<TimestampMicrosecondType>().values().iter());
    choices.push((RECEIVED_AT.to_owned(), choose(distinct_up_to(received, most))));
    choices
}

/// How many distinct values `values` holds, or `None` past `most`: counting
/// stops there, so a column of unique values costs `most` insertions, not
/// one per row.
fn distinct_up_to<T: std::hash::Hash + Eq>(values: impl Iterator<Item = T>, most: usize) -> Option<usize> {
    let mut seen = std::collections::HashSet::new();
    for value in values {
        seen.insert(value);
        if seen.len() > most {
            return None;
        }
    }
    Some(seen.len())
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
        written = SegmentWriter::create(store, &file_name).and_then(|mut writer| {
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
        written = SegmentWriter::create(store, &file_name).and_then(|mut writer| {
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
        actor_index: written.actor_index,
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
        let config = indices
            .map_err(|e| StorageError::Scan(e.into()))
            .and_then(|i| self.scan().with_projection_indices(Some(i)).map_err(StorageError::Scan))?;
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
    let scan_error = StorageError::Scan;
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

    fn chunk<'a>(
        group: &'a datafusion::parquet::file::metadata::RowGroupMetaData,
        column: &str,
    ) -> &'a datafusion::parquet::file::metadata::ColumnChunkMetaData {
        group.columns().iter().find(|c| c.column_path().string() == column).unwrap()
    }

    fn dictionary_page(group: &datafusion::parquet::file::metadata::RowGroupMetaData, column: &str) -> bool {
        chunk(group, column).dictionary_page_offset().is_some()
    }

    #[test]
    fn each_row_group_gets_a_dictionary_only_where_its_values_repeat() {
        use datafusion::parquet::basic::Encoding;
        use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};

        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), None, Default::default()).unwrap();
        // Two row groups of one org: in the first, every event comes from a
        // new address and a new batch; in the second, one address and one
        // batch serve all of them.
        let rows = SEGMENT_ROW_GROUP_ROWS;
        let events: Vec<Event> = (0..2 * rows)
            .map(|i| {
                let repeating = i >= rows;
                Event {
                    source_ip: Some(if repeating {
                        "10.0.0.1".into()
                    } else {
                        format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
                    }),
                    received_at_us: if repeating { 7 } else { i as i64 },
                    ..event("acme", i as i64)
                }
            })
            .collect();
        let meta = write_segment(&store, &[model::events_to_batch(&events, 1)]).unwrap();

        let file = std::fs::File::open(store.local_path(&meta.file).unwrap()).unwrap();
        let reader = SerializedFileReader::new(file).unwrap();
        let groups = reader.metadata().row_groups();
        assert_eq!(groups.len(), 2);
        let dictionary = |group: usize, column: &str| {
            dictionary_page(&groups[group], column)
                && chunk(&groups[group], column).encodings().any(|e| e == Encoding::RLE_DICTIONARY)
        };
        for column in ["source_ip", "received_at"] {
            assert!(!dictionary(0, column), "{column}: unique values are stored plain");
            assert!(dictionary(1, column), "{column}: one repeated value gets a dictionary");
        }
        // Columns whose values repeat in both groups have a dictionary in both.
        assert!(dictionary(0, "org_id") && dictionary(1, "org_id"));

        // Whatever the encoding, every value reads back as written.
        let batches: Vec<RecordBatch> = ParquetRecordBatchReader::try_new(
            std::fs::File::open(store.local_path(&meta.file).unwrap()).unwrap(),
            4096,
        )
        .unwrap()
        .map(Result::unwrap)
        .collect();
        let ips: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                b.column_by_name("source_ip")
                    .unwrap()
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        let sent: Vec<String> = events.iter().map(|e| e.source_ip.clone().unwrap()).collect();
        assert_eq!(ips, sent);
    }

    #[test]
    fn between_few_and_unique_values_the_smaller_encoding_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), None, Default::default()).unwrap();
        let rows = SEGMENT_ROW_GROUP_ROWS;
        let hex = |n: usize| format!("{:032x}", (n as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        // Both columns have one distinct value per ten rows (the band where
        // both encodings are tried): session ids each used by ten events in a
        // row, which zstd compresses as well without a dictionary, and
        // container ids drawn in no order, which a dictionary stores in a
        // dozen bits a row.
        let events: Vec<Event> = (0..rows)
            .map(|i| Event {
                session_id: Some(hex(i / 10)),
                container_id: Some(hex((i * 7919) % (rows / 10) + 1_000_000)),
                ..event("acme", i as i64)
            })
            .collect();
        let meta = write_segment(&store, &[model::events_to_batch(&events, 1)]).unwrap();
        let file = std::fs::File::open(store.local_path(&meta.file).unwrap()).unwrap();
        let reader = datafusion::parquet::file::reader::SerializedFileReader::new(file).unwrap();
        use datafusion::parquet::file::reader::FileReader;
        let group = &reader.metadata().row_groups()[0];
        let dictionary = |column: &str| dictionary_page(group, column);
        assert!(!dictionary("session_id"), "adjacent repeats: plain is as small");
        assert!(dictionary("container_id"), "scattered repeats: the dictionary is smaller");
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
