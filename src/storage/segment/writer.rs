//! Writing one segment file: Parquet with the segment properties, each row
//! group encoded as its own values call for, followed by the row indexes.
//! The bytes go to an [`Upload`] of the segment store, which makes them
//! durable; this file decides only what they are.

use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_writer::ArrowWriterOptions;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::writer::SerializedFileWriter;

use super::{SEGMENT_ROW_GROUP_ROWS, encode_row_group, writer_properties};
use crate::storage::StorageError;
use crate::storage::objects::{SegmentStore, Upload};
use crate::storage::packed;
use crate::storage::row_index::{RowIndexBuilder, RowIndexLocation, RowIndexes};

/// A segment file being written: Parquet with the segment properties, each
/// row group encoded as its own values call for (see [`encode_row_group`]),
/// and its row indexes (see [`crate::storage::row_index`]), streamed to the
/// store and made durable by [`SegmentWriter::finish`]. Sealing, bulk loads
/// and compaction all write through it, so the format and the index exist
/// once.
pub struct SegmentWriter<'a> {
    upload: Upload<'a>,
    /// Encodes into memory; each finished row group goes on to `upload`.
    writer: SerializedFileWriter<Vec<u8>>,
    /// The rows of the row group being gathered: its encodings are chosen
    /// from all of them.
    group: Vec<RecordBatch>,
    indexes: RowIndexes,
}

/// A segment file as [`SegmentWriter::finish`] left it.
#[derive(Debug, Clone, Copy)]
pub struct WrittenSegment {
    pub size_bytes: u64,
    pub content_index: Option<RowIndexLocation>,
    pub actor_index: Option<RowIndexLocation>,
}

impl<'a> SegmentWriter<'a> {
    /// Starts writing segment file `file` into `store`.
    pub fn create(store: &'a SegmentStore, file: &str) -> Result<Self, StorageError> {
        let options = ArrowWriterOptions::new()
            .with_properties(writer_properties())
            .with_parquet_schema(packed::parquet_schema()?);
        // The Arrow writer sets the file up (schema, embedded Arrow schema);
        // row groups are then encoded here, each with its own encodings.
        let (writer, _) = ArrowWriter::try_new_with_options(Vec::new(), packed::segment_schema(), options)?
            .into_serialized_writer()?;
        Ok(SegmentWriter {
            upload: store.upload_segment(file),
            writer,
            group: Vec::new(),
            indexes: RowIndexes::default(),
        })
    }

    /// Appends `batch` (segment schema, in segment order).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        self.indexes.add_batch(batch);
        let mut offset = 0;
        while offset < batch.num_rows() {
            let gathered: usize = self.group.iter().map(RecordBatch::num_rows).sum();
            let len = (SEGMENT_ROW_GROUP_ROWS - gathered).min(batch.num_rows() - offset);
            self.group.push(batch.slice(offset, len));
            offset += len;
            if gathered + len == SEGMENT_ROW_GROUP_ROWS {
                self.write_row_group()?;
            }
        }
        Ok(())
    }

    /// Encodes the gathered rows as one row group, with the encodings their
    /// values call for, and hands it to the store.
    fn write_row_group(&mut self) -> Result<(), StorageError> {
        let rows = std::mem::take(&mut self.group);
        if rows.is_empty() {
            return Ok(());
        }
        let columns = encode_row_group(&rows, &self.writer, self.writer.flushed_row_groups().len())?;
        let mut group = self.writer.next_row_group()?;
        for column in columns {
            column.append_to_row_group(&mut group)?;
        }
        group.close()?;
        self.send_encoded()
    }

    /// Hands what the encoder has produced so far to the store.
    fn send_encoded(&mut self) -> Result<(), StorageError> {
        let encoded = std::mem::take(self.writer.inner_mut());
        self.upload.write(encoded)
    }

    /// Writes the row indexes and the footer, and completes the upload
    /// (durable once this returns). On error the caller deletes whatever
    /// was written.
    pub fn finish(mut self) -> Result<WrittenSegment, StorageError> {
        self.write_row_group()?;
        let group_rows: Vec<u64> = self.writer.flushed_row_groups().iter().map(|g| g.num_rows() as u64).collect();
        let RowIndexes { content, actor } = std::mem::take(&mut self.indexes);
        let content_index = self.write_index(content, &group_rows)?;
        let actor_index = self.write_index(actor, &group_rows)?;
        self.writer.finish()?;
        self.send_encoded()?;
        let size_bytes = self.writer.bytes_written() as u64;
        self.upload.complete()?;
        Ok(WrittenSegment { size_bytes, content_index, actor_index })
    }

    /// Writes an index after the last row group, before the footer: Parquet
    /// readers follow the footer's offsets and never read it. `None` when
    /// the rows could not be indexed exactly.
    fn write_index(
        &mut self,
        index: RowIndexBuilder,
        group_rows: &[u64],
    ) -> Result<Option<RowIndexLocation>, StorageError> {
        let kind = index.kind();
        let Some(bytes) = index.finish(group_rows) else { return Ok(None) };
        let location = RowIndexLocation { offset: self.writer.bytes_written() as u64, length: bytes.len() as u64 };
        self.writer.write_all(&bytes).map_err(|e| StorageError::io(Path::new(&self.upload.describe()), e))?;
        let pointer = format!("{},{}", location.offset, location.length);
        self.writer.append_key_value_metadata(KeyValue::new(kind.footer_key().to_owned(), pointer));
        Ok(Some(location))
    }
}
