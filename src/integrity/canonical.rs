//! The canonical encoding of an event, and its leaf hash.
//!
//! Version 1, all integers big-endian, a text value written as `0x00` when
//! NULL and as `0x01 ‖ u32 length ‖ UTF-8 bytes` otherwise:
//!
//! ```text
//! leaf data  = "auditlake event v1\0" ‖ i64 seq ‖ i64 time_us ‖ i64 received_at_us
//!              ‖ text(f) for f in PLAIN_FIELDS, in that order ‖ ugc_digest (32 bytes)
//! ugc_digest = HMAC-SHA256(digest key, "auditlake ugc v1\0" ‖ i64 seq
//!              ‖ text(f) for f in UGC_DIGEST_FIELDS, in that order)
//! leaf hash  = SHA-256(0x00 ‖ leaf data)                      (RFC 6962)
//! ```
//!
//! UGC enters only through its digest. An organisation's rewrite to a
//! stricter policy and the erasure of one actor's UGC change those values in
//! place, so the digest, not the values, is what the Merkle roots commit to.
//! `attributes` is among them because a policy may name attribute keys as
//! UGC. The digest is keyed (with a key derived from the signing key, see
//! [`super::SigningKey`]), so a digest left behind by an erasure does not let
//! anyone test guesses of the erased value.
//!
//! Rows whose UGC was changed after ingest keep the digest of what was
//! received in a [`STORED_DIGEST_COLUMN`] of their segment (NULL elsewhere,
//! which Parquet stores in a few bits); the encoding takes it from there.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, FixedSizeBinaryArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use ring::hmac;

use super::merkle::{self, Hash};
use crate::model::Seq;
use crate::storage::packed;

const LEAF_DOMAIN: &[u8] = b"auditlake event v1\0";
const UGC_DOMAIN: &[u8] = b"auditlake ugc v1\0";

/// The text columns that enter the leaf as they are.
pub const PLAIN_FIELDS: [&str; 15] = [
    "id",
    "org_id",
    "actor_id",
    "actor_name",
    "actor_type",
    "action",
    "category",
    "outcome",
    "product",
    "content_type",
    "source_ip",
    "user_agent",
    "location",
    "session_id",
    "request_id",
];

/// The text columns that enter the leaf only through the UGC digest:
/// [`crate::policy::UGC_FIELDS`] and `attributes`.
pub const UGC_DIGEST_FIELDS: [&str; 4] = ["content_id", "content_title", "container_id", "attributes"];

/// The segment column holding a row's UGC digest where its UGC values are
/// no longer those received.
pub const STORED_DIGEST_COLUMN: &str = packed::UGC_DIGEST_COLUMN;

/// The columns of a batch that the encoding reads, by position.
struct Columns<'a> {
    seq: &'a [i64],
    time: &'a [i64],
    received_at: &'a [i64],
    plain: Vec<&'a StringArray>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch) -> Self {
        let text = |name: &str| batch.column_by_name(name).expect("table column").as_string::<i32>();
        let micros = |name: &str| {
            batch.column_by_name(name).expect("table column").as_primitive::<TimestampMicrosecondType>().values()
        };
        Columns {
            seq: batch.column_by_name("seq").expect("table column").as_primitive::<Int64Type>().values(),
            time: micros("time"),
            received_at: micros("received_at"),
            plain: PLAIN_FIELDS.iter().map(|f| text(f)).collect(),
        }
    }
}

fn put_text(out: &mut Vec<u8>, values: &StringArray, row: usize) {
    if values.is_null(row) {
        out.push(0);
    } else {
        let value = values.value(row).as_bytes();
        out.push(1);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
}

/// The UGC digest of each row of a batch (table or segment schema): the
/// stored one where the row has one, else computed from its values.
pub fn ugc_digests(batch: &RecordBatch, digest_key: &hmac::Key) -> Vec<Hash> {
    let stored = batch.column_by_name(STORED_DIGEST_COLUMN).map(|c| c.as_fixed_size_binary());
    let seqs = batch.column_by_name("seq").expect("table column").as_primitive::<Int64Type>().values();
    let text = |name: &str| batch.column_by_name(name).expect("table column").as_string::<i32>();
    let values: Vec<&StringArray> = UGC_DIGEST_FIELDS.iter().map(|f| text(f)).collect();
    let mut buffer = Vec::with_capacity(256);
    (0..batch.num_rows())
        .map(|row| match stored.filter(|d| d.is_valid(row)) {
            Some(stored) => stored.value(row).try_into().expect("32-byte digests"),
            None => ugc_digest(seqs[row], &values, row, digest_key, &mut buffer),
        })
        .collect()
}

/// The leaf hashes of a batch's rows, in row order, with `(seq, leaf)`.
/// The batch is of the table's schema or of the segment schema.
pub fn leaves(batch: &RecordBatch, digest_key: &hmac::Key) -> Vec<(Seq, Hash)> {
    let digests = ugc_digests(batch, digest_key);
    let unpacked;
    let batch = if batch.schema().field_with_name("id").is_ok() {
        batch
    } else {
        unpacked = packed::unpack_batch(batch);
        &unpacked
    };
    let columns = Columns::of(batch);
    let mut data = Vec::with_capacity(512);
    (0..batch.num_rows())
        .map(|row| {
            let seq = columns.seq[row];
            data.clear();
            data.extend_from_slice(LEAF_DOMAIN);
            data.extend_from_slice(&seq.to_be_bytes());
            data.extend_from_slice(&columns.time[row].to_be_bytes());
            data.extend_from_slice(&columns.received_at[row].to_be_bytes());
            for values in &columns.plain {
                put_text(&mut data, values, row);
            }
            data.extend_from_slice(&digests[row]);
            (seq as Seq, merkle::leaf_hash(&data))
        })
        .collect()
}

/// Wraps a rewrite of stored batches (segment schema) that may change UGC
/// values, so that every row whose UGC it changes keeps the digest of its
/// UGC as received in [`STORED_DIGEST_COLUMN`], and so its leaf.
pub fn keeping_digests<'a, E>(
    digest_key: &'a hmac::Key,
    rewrite: impl Fn(&RecordBatch) -> Result<RecordBatch, E> + 'a,
) -> impl Fn(&RecordBatch) -> Result<RecordBatch, E> + 'a {
    move |batch: &RecordBatch| {
        let digests = ugc_digests(batch, digest_key);
        let rewritten = rewrite(batch)?;
        let already = batch.column_by_name(STORED_DIGEST_COLUMN).map(|c| c.as_fixed_size_binary());
        let before: Vec<&StringArray> = UGC_DIGEST_FIELDS
            .iter()
            .map(|f| batch.column_by_name(f).expect("table column").as_string::<i32>())
            .collect();
        let after: Vec<&StringArray> = UGC_DIGEST_FIELDS
            .iter()
            .map(|f| rewritten.column_by_name(f).expect("table column").as_string::<i32>())
            .collect();
        let same = |a: &StringArray, b: &StringArray, row: usize| {
            a.is_valid(row) == b.is_valid(row) && (a.is_null(row) || a.value(row) == b.value(row))
        };
        let keep = (0..batch.num_rows()).map(|row| {
            let changed = before.iter().zip(&after).any(|(a, b)| !same(a, b, row));
            let stored = already.is_some_and(|d| d.is_valid(row));
            (changed || stored).then_some(digests[row])
        });
        let column = FixedSizeBinaryArray::try_from_sparse_iter_with_size(keep, 32).expect("32-byte digests");
        let index = rewritten.schema().index_of(STORED_DIGEST_COLUMN).expect("segment schema");
        let mut columns = rewritten.columns().to_vec();
        columns[index] = Arc::new(column);
        Ok(RecordBatch::try_new(rewritten.schema(), columns).expect("same schema"))
    }
}

fn ugc_digest(seq: i64, values: &[&StringArray], row: usize, key: &hmac::Key, buffer: &mut Vec<u8>) -> Hash {
    buffer.clear();
    buffer.extend_from_slice(UGC_DOMAIN);
    buffer.extend_from_slice(&seq.to_be_bytes());
    for values in values {
        put_text(buffer, values, row);
    }
    hmac::sign(key, buffer).as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, Event};

    fn event() -> Event {
        Event {
            time_us: 1_700_000_000_000_000,
            org_id: "acme".into(),
            actor_id: "alice".into(),
            action: "confluence.page.viewed".into(),
            id: "e1".into(),
            content_id: Some("page-1".into()),
            content_title: Some("Q3 plan".into()),
            ..Event::default()
        }
    }

    fn leaf(event: &Event, seq: Seq) -> Hash {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        leaves(&model::events_to_batch(std::slice::from_ref(event), seq), &key)[0].1
    }

    #[test]
    fn every_field_and_the_seq_change_the_leaf_and_packing_does_not() {
        let base = event();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        let batch = model::events_to_batch(std::slice::from_ref(&base), 5);
        assert_eq!(leaves(&batch, &key), leaves(&packed::pack(&batch), &key));
        let changed = [
            Event { actor_id: "mallory".into(), ..base.clone() },
            Event { time_us: base.time_us + 1, ..base.clone() },
            Event { content_title: Some("Q4 plan".into()), ..base.clone() },
            Event { content_title: None, ..base.clone() },
            Event { source_ip: Some(String::new()), ..base.clone() },
        ];
        for other in &changed {
            assert_ne!(leaf(other, 5), leaf(&base, 5), "{other:?}");
        }
        assert_ne!(leaf(&base, 6), leaf(&base, 5));
        let other_key = hmac::Key::new(hmac::HMAC_SHA256, &[8; 32]);
        assert_ne!(leaves(&batch, &other_key), leaves(&batch, &key), "the digest is keyed");
    }
}
