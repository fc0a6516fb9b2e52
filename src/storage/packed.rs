//! Ids packed for segment files.
//!
//! Most event ids and request ids are UUIDs in canonical text form: 36
//! bytes carrying 122 random bits, which no compressor brings below about 19
//! bytes. Segment files store such a value as its 16 bytes, in a
//! `{column}_uuid` column of Parquet's UUID logical type (DuckDB, Spark and
//! pyarrow read it as a UUID), and any other value unchanged in
//! `{column}_text`. Where the table's value is set, exactly one of the two is;
//! where it is NULL, both are. Only the canonical form (lowercase, hyphenated)
//! is packed, so every id reads back byte for byte as it was sent.
//!
//! This module owns the segment schema and the conversions both ways. It never
//! decides which rows go into a segment, and SQL never sees the packed
//! columns: the query layer unpacks them in its scan.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder, RecordBatch, StringArray, StringBuilder,
    new_null_array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowSchemaConverter;
use datafusion::parquet::basic::{LogicalType, Repetition, Type as PhysicalType};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::schema::types::{SchemaDescriptor, Type};

use crate::model;

/// The table's columns stored packed in segment files.
pub const PACKED_COLUMNS: [&str; 2] = ["id", "request_id"];
const UUID_BYTES: i32 = 16;
const UUID_TEXT_BYTES: usize = 36;

/// The segment column that holds, for a row whose UGC was rewritten or
/// erased after ingest, the digest of its UGC as received (see
/// `integrity::canonical`); NULL in every other row. Not a table column.
pub const UGC_DIGEST_COLUMN: &str = "ugc_digest";
const UGC_DIGEST_BYTES: i32 = 32;

pub fn is_packed(column: &str) -> bool {
    PACKED_COLUMNS.contains(&column)
}

/// The segment column holding the UUID-shaped values of a packed column.
pub fn uuid_column(column: &str) -> String {
    format!("{column}_uuid")
}

/// The segment column holding the other values of a packed column.
pub fn text_column(column: &str) -> String {
    format!("{column}_text")
}

static SEGMENT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = Vec::new();
    for field in model::schema().fields() {
        if is_packed(field.name()) {
            fields.push(Field::new(uuid_column(field.name()), DataType::FixedSizeBinary(UUID_BYTES), true));
            fields.push(Field::new(text_column(field.name()), DataType::Utf8, true));
        } else {
            fields.push(field.as_ref().clone());
        }
    }
    fields.push(Field::new(UGC_DIGEST_COLUMN, DataType::FixedSizeBinary(UGC_DIGEST_BYTES), true));
    Arc::new(Schema::new(fields))
});

/// The Arrow schema of segment files: the table's, with each packed column
/// split in two where it stood.
pub fn segment_schema() -> SchemaRef {
    Arc::clone(&SEGMENT_SCHEMA)
}

/// The Parquet schema of segment files: what Arrow's converter makes of
/// [`segment_schema`], with the UUID logical type on the `_uuid` columns
/// (the converter only sets it for Arrow's UUID extension type, a crate
/// feature that would change DataFusion's own types).
pub fn parquet_schema() -> Result<SchemaDescriptor, ParquetError> {
    let converted = ArrowSchemaConverter::new().convert(&segment_schema())?;
    let root = converted.root_schema();
    let uuid_columns: Vec<String> = PACKED_COLUMNS.iter().map(|c| uuid_column(c)).collect();
    let fields = root
        .get_fields()
        .iter()
        .map(|field| {
            if !uuid_columns.iter().any(|c| c == field.name()) {
                return Ok(Arc::clone(field));
            }
            let uuid = Type::primitive_type_builder(field.name(), PhysicalType::FIXED_LEN_BYTE_ARRAY)
                .with_repetition(Repetition::OPTIONAL)
                .with_length(UUID_BYTES)
                .with_logical_type(Some(LogicalType::Uuid))
                .build()?;
            Ok(Arc::new(uuid))
        })
        .collect::<Result<Vec<_>, ParquetError>>()?;
    let root = Type::group_type_builder(root.name()).with_fields(fields).build()?;
    Ok(SchemaDescriptor::new(Arc::new(root)))
}

/// A batch of the table's schema as segment files store it. A batch already
/// in the segment schema (see [`pack_with_uuids`]) is returned as it is.
pub fn pack(batch: &RecordBatch) -> RecordBatch {
    if batch.schema().fields() == segment_schema().fields() {
        return batch.clone();
    }
    pack_with_uuids(batch, [&[], &[]])
}

/// [`pack`] for a producer that already holds UUID-shaped ids as bytes (the
/// demo generator), sparing a round trip through text: `uuids[c][row]`, where
/// present, is the value of `PACKED_COLUMNS[c]` at `row`, and the batch's
/// text there is ignored; elsewhere the text is packed as usual.
pub fn pack_with_uuids(batch: &RecordBatch, uuids: [&[Option<[u8; 16]>]; PACKED_COLUMNS.len()]) -> RecordBatch {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(segment_schema().fields().len());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match PACKED_COLUMNS.iter().position(|c| c == field.name()) {
            Some(c) => {
                let (packed, others) = split(column.as_string::<i32>(), uuids[c]);
                columns.push(Arc::new(packed));
                columns.push(Arc::new(others));
            }
            None => columns.push(Arc::clone(column)),
        }
    }
    if batch.column_by_name(UGC_DIGEST_COLUMN).is_none() {
        columns.push(new_null_array(&DataType::FixedSizeBinary(UGC_DIGEST_BYTES), batch.num_rows()));
    }
    RecordBatch::try_new(segment_schema(), columns).expect("pack follows the segment schema")
}

fn split(values: &StringArray, known: &[Option<[u8; 16]>]) -> (FixedSizeBinaryArray, StringArray) {
    let mut uuids = FixedSizeBinaryBuilder::with_capacity(values.len(), UUID_BYTES);
    let mut others = StringBuilder::new();
    for (row, value) in values.iter().enumerate() {
        match known.get(row).copied().flatten().or_else(|| value.and_then(canonical_uuid)) {
            Some(bytes) => {
                uuids.append_value(bytes).expect("sixteen bytes");
                others.append_null();
            }
            None => {
                uuids.append_null();
                others.append_option(value);
            }
        }
    }
    (uuids.finish(), others.finish())
}

/// The bytes of `text` if it is a UUID in canonical form (lowercase hex,
/// hyphens at 8, 13, 18, 23), the only form that formats back identically.
fn canonical_uuid(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != UUID_TEXT_BYTES {
        return None;
    }
    let canonical = bytes.iter().enumerate().all(|(i, &c)| match i {
        8 | 13 | 18 | 23 => c == b'-',
        _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
    });
    canonical.then(|| uuid::Uuid::try_parse_ascii(bytes).ok()).flatten().map(|u| u.into_bytes())
}

/// The table's text values back from a packed column's two segment columns.
pub fn unpack(uuids: &FixedSizeBinaryArray, others: &StringArray) -> StringArray {
    let mut values = StringBuilder::with_capacity(uuids.len(), uuids.len() * UUID_TEXT_BYTES);
    let mut text = [0u8; UUID_TEXT_BYTES];
    for i in 0..uuids.len() {
        if uuids.is_valid(i) {
            let bytes: [u8; 16] = uuids.value(i).try_into().expect("sixteen bytes");
            values.append_value(uuid::Uuid::from_bytes(bytes).hyphenated().encode_lower(&mut text));
        } else {
            values.append_option(others.is_valid(i).then(|| others.value(i)));
        }
    }
    values.finish()
}

/// A batch of the segment schema back in the table's schema: what [`pack`]
/// undoes, for callers that read segments outside a query.
pub fn unpack_batch(batch: &RecordBatch) -> RecordBatch {
    let columns = model::schema()
        .fields()
        .iter()
        .map(|field| {
            let name = field.name();
            let column = |name: &str| batch.column_by_name(name).expect("segment schema column");
            if is_packed(name) {
                let (uuids, others) = (column(&uuid_column(name)), column(&text_column(name)));
                Arc::new(unpack(uuids.as_fixed_size_binary(), others.as_string::<i32>())) as ArrayRef
            } else {
                Arc::clone(column(name))
            }
        })
        .collect();
    RecordBatch::try_new(model::schema(), columns).expect("unpack follows the table schema")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::Event;

    fn round_trip(ids: &[Option<&str>]) -> Vec<Option<String>> {
        let (uuids, others) = split(&ids.iter().copied().collect(), &[]);
        unpack(&uuids, &others).iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn only_canonical_uuids_are_packed() {
        let uuid = "0b5e2f4a-9c1d-4e8f-a7b6-3d2c1b0a9f8e";
        let ids = [
            Some(uuid),
            Some("0B5E2F4A-9C1D-4E8F-A7B6-3D2C1B0A9F8E"),
            Some("0b5e2f4a9c1d4e8fa7b63d2c1b0a9f8e"),
            Some("{0b5e2f4a-9c1d-4e8f-a7b6-3d2c1b0a9f8e}"),
            Some("0b5e2f4a-9c1d-4e8f-a7b6-3d2c1b0a9f8g"),
            Some("evt-1"),
            Some(""),
            None,
        ];
        let (uuids, others) = split(&ids.iter().copied().collect(), &[]);
        assert_eq!(
            uuids.iter().map(|u| u.is_some()).collect::<Vec<_>>(),
            [true, false, false, false, false, false, false, false]
        );
        assert_eq!(others.null_count(), 2, "the packed UUID and the NULL");
        let expected: Vec<Option<String>> = ids.iter().map(|v| v.map(str::to_owned)).collect();
        assert_eq!(round_trip(&ids), expected);
    }

    #[test]
    fn packing_splits_only_the_packed_columns() {
        let event = |id: &str, request_id: Option<&str>| Event {
            id: id.into(),
            request_id: request_id.map(Into::into),
            org_id: "acme".into(),
            actor_id: "u1".into(),
            action: "a".into(),
            ..Event::default()
        };
        let batch = model::events_to_batch(
            &[event("0b5e2f4a-9c1d-4e8f-a7b6-3d2c1b0a9f8e", None), event("evt-2", Some("req-2"))],
            7,
        );
        let packed = pack(&batch);
        assert_eq!(packed.schema(), segment_schema());
        // Each packed column split in two, and the stored UGC digests, NULL.
        assert_eq!(packed.num_columns(), batch.num_columns() + PACKED_COLUMNS.len() + 1);
        assert_eq!(packed.column_by_name(UGC_DIGEST_COLUMN).unwrap().null_count(), 2);
        for column in PACKED_COLUMNS {
            let uuids = packed.column_by_name(&uuid_column(column)).unwrap().as_fixed_size_binary();
            let others = packed.column_by_name(&text_column(column)).unwrap().as_string::<i32>();
            assert_eq!(&unpack(uuids, others), batch.column_by_name(column).unwrap().as_string::<i32>());
        }
        assert_eq!(packed.column_by_name("seq").unwrap(), batch.column_by_name("seq").unwrap());
        assert_eq!(unpack_batch(&packed), batch);
        assert_eq!(pack(&packed), packed, "packing a packed batch changes nothing");
    }

    #[test]
    fn known_uuids_take_the_place_of_the_text() {
        let uuid = uuid::Uuid::from_u128(0x0b5e_2f4a_9c1d_4e8f_a7b6_3d2c_1b0a_9f8e);
        let ids = [Event { id: String::new(), ..Event::default() }, Event { id: "evt-2".into(), ..Event::default() }];
        let batch = model::events_to_batch(&ids, 1);
        let packed = pack_with_uuids(&batch, [&[Some(uuid.into_bytes()), None], &[]]);
        let ids = unpack_batch(&packed).column_by_name("id").unwrap().as_string::<i32>().clone();
        assert_eq!(ids.iter().collect::<Vec<_>>(), [Some(uuid.to_string().as_str()), Some("evt-2")]);
    }

    #[test]
    fn the_parquet_schema_marks_uuid_columns() {
        let schema = parquet_schema().unwrap();
        let uuid_columns: Vec<_> = schema
            .columns()
            .iter()
            .filter(|c| c.logical_type_ref() == Some(&LogicalType::Uuid))
            .map(|c| c.name().to_owned())
            .collect();
        assert_eq!(uuid_columns, ["id_uuid", "request_id_uuid"]);
        assert_eq!(schema.num_columns(), segment_schema().fields().len());
    }

    proptest! {
        #[test]
        fn every_id_reads_back_as_sent(
            ids in proptest::collection::vec(proptest::option::of(prop_oneof![
                any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
                any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string().to_uppercase()),
                "[0-9a-f-]{30,40}",
                ".{0,40}",
            ]), 0..50)
        ) {
            let borrowed: Vec<Option<&str>> = ids.iter().map(Option::as_deref).collect();
            prop_assert_eq!(round_trip(&borrowed), ids);
        }
    }
}
