//! Inclusion proofs: that one event is a leaf under a signed checkpoint.
//!
//! A proof carries the event's leaf input (its plain fields, times, seq and
//! UGC digest, as `canonical` encodes them), its index in the checkpoint's
//! range, the audit path (RFC 9162 §2.1.3) and the checkpoint line itself.
//! `scripts/verify_proof.py` checks one with Python's standard library
//! only: it encodes the leaf, climbs the path, and compares the root with
//! the checkpoint the auditor holds (published elsewhere, or the line from
//! `integrity/checkpoints.jsonl`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use serde_json::{Value, json};

use super::checkpoint::{self, LineKind};
use super::merkle::{self, BLOCK_LEAVES, Hash};
use super::{IntegrityError, SigningKey, canonical, read_segment_batches};
use crate::model::Seq;
use crate::storage::StorageError;
use crate::storage::objects::SegmentStore;
use crate::storage::segment::LiveSegment;
use crate::storage::settings::to_hex;

/// Why there is no proof of a seq.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("event seq {0} is not checkpointed yet; it will be once sealed")]
    NotCheckpointed(Seq),
    #[error("event seq {0} is no longer stored")]
    Gone(Seq),
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
}

/// The proof that event `seq` is included in the checkpoint covering it.
pub fn prove(
    data_dir: &Path,
    store: &SegmentStore,
    segments: &[Arc<LiveSegment>],
    key: &SigningKey,
    seq: Seq,
) -> Result<Value, ProofError> {
    let lines: Vec<_> = checkpoint::read_checkpoints(data_dir)?.into_iter().filter_map(Result::ok).collect();
    let line = lines
        .iter()
        .find(|c| c.kind == LineKind::Events && (c.first_seq..=c.last_seq).contains(&seq))
        .ok_or(ProofError::NotCheckpointed(seq))?;
    let blocks = checkpoint::read_blocks(data_dir, line)
        .map_err(|reason| IntegrityError::Io { path: data_dir.into(), source: std::io::Error::other(reason) })?;
    let index = (seq - line.first_seq) as usize;
    let block_first = line.first_seq + (index / BLOCK_LEAVES * BLOCK_LEAVES) as Seq;
    let block_last = (block_first + BLOCK_LEAVES as Seq - 1).min(line.last_seq);

    // The block's leaves: stored rows, else those removal records kept.
    let mut leaves: BTreeMap<Seq, Hash> = BTreeMap::new();
    for removal in
        lines.iter().filter(|c| c.kind == LineKind::Removal && c.first_seq <= block_last && block_first <= c.last_seq)
    {
        if let Ok(removed) = checkpoint::read_removal(data_dir, removal) {
            leaves.extend(removed.into_iter().filter(|(s, _)| (block_first..=block_last).contains(s)));
        }
    }
    let mut input = None;
    let mut holder = None;
    for segment in segments.iter().filter(|s| s.meta.min_seq <= block_last && block_first <= s.meta.max_seq) {
        for batch in read_segment_batches(store, segment).map_err(IntegrityError::from)? {
            // Only the block's rows are hashed: a segment holds hundreds of
            // thousands, the block at most BLOCK_LEAVES.
            let in_block: BooleanArray = batch
                .column_by_name("seq")
                .expect("seq")
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|&s| Some((block_first..=block_last).contains(&(s as Seq))))
                .collect();
            if in_block.true_count() == 0 {
                continue;
            }
            let batch = filter_record_batch(&batch, &in_block)
                .map_err(|e| IntegrityError::from(StorageError::Scan(e.into())))?;
            for (row, leaf) in canonical::leaves(&batch, key.digest_key()).into_iter().enumerate() {
                leaves.insert(leaf.0, leaf.1);
                if leaf.0 == seq {
                    input = Some(leaf_input(&batch, row, key));
                    holder = Some(segment.meta.file.clone());
                }
            }
        }
    }
    let input = input.ok_or(ProofError::Gone(seq))?;
    let leaf = *leaves.get(&seq).ok_or(ProofError::Gone(seq))?;
    let block: Vec<Hash> = (block_first..=block_last).filter_map(|s| leaves.get(&s).copied()).collect();
    if block.len() as Seq != block_last - block_first + 1 {
        return Err(ProofError::Gone(seq));
    }
    let path = merkle::path_in_range(index, &block, &blocks, line.leaf_count());
    Ok(json!({
        "leaf": input,
        "leaf_hash": to_hex(&leaf),
        "segment": holder,
        "leaf_index": index,
        "tree_size": line.leaf_count(),
        "path": path.iter().map(|h| to_hex(h)).collect::<Vec<_>>(),
        "checkpoint": line,
    }))
}

/// The fields of row `row` the leaf encodes, by name.
fn leaf_input(batch: &RecordBatch, row: usize, key: &SigningKey) -> Value {
    let one = batch.slice(row, 1);
    let table = crate::storage::packed::unpack_batch(&one);
    let digest = canonical::ugc_digests(&one, key.digest_key())[0];
    let text = |name: &str| {
        let values = table.column_by_name(name).expect("table column").as_string::<i32>();
        if values.is_valid(0) { Value::from(values.value(0)) } else { Value::Null }
    };
    let micros = |name: &str| {
        table
            .column_by_name(name)
            .expect("table column")
            .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
            .value(0)
    };
    let fields: serde_json::Map<String, Value> =
        canonical::PLAIN_FIELDS.iter().map(|name| (name.to_string(), text(name))).collect();
    json!({
        "seq": table.column_by_name("seq").expect("seq").as_primitive::<Int64Type>().value(0),
        "time_us": micros("time"),
        "received_at_us": micros("received_at"),
        "fields": fields,
        "ugc_digest": to_hex(&digest),
    })
}

/// Whether a proof [`prove`] made holds: its audit path leads from the
/// event's leaf hash (as its segment's bytes give it now) to the root of
/// its checkpoint, and that checkpoint is signed by `public_key` (hex).
/// `Err` says what does not hold.
pub fn holds(proof: &Value, public_key: &str) -> Result<(), String> {
    let hash = |value: &Value| value.as_str().and_then(crate::storage::settings::from_hex32);
    let line: checkpoint::Checkpoint = serde_json::from_value(proof["checkpoint"].clone())
        .map_err(|e| format!("the proof's checkpoint cannot be read: {e}"))?;
    let leaf = hash(&proof["leaf_hash"]).ok_or("the proof has no leaf hash")?;
    let path: Vec<Hash> = proof["path"]
        .as_array()
        .ok_or("the proof has no audit path")?
        .iter()
        .map(|h| hash(h).ok_or("an audit path hash is not 32 bytes of hex"))
        .collect::<Result<_, _>>()?;
    let (index, size) = (proof["leaf_index"].as_u64(), proof["tree_size"].as_u64());
    let (Some(index), Some(size)) = (index, size) else {
        return Err("the proof has no leaf index or tree size".into());
    };
    if line.public_key != public_key {
        return Err(format!("checkpoint {} is signed by another key ({})", line.index, line.public_key));
    }
    if !line.signature_holds(public_key) {
        return Err(format!("the signature of checkpoint {} does not hold", line.index));
    }
    let root = merkle::root_from_path(index as usize, size as usize, &leaf, &path);
    if root.is_none() || root != line.root_hash() {
        return Err(format!(
            "the event's leaf, as its segment holds it now, does not lead to the signed root of checkpoint {} \
             (the segment or the checkpoint's blocks were changed)",
            line.index
        ));
    }
    Ok(())
}
