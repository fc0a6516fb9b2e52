//! Tamper evidence: every sealed event is a leaf of a Merkle tree, every
//! sealed range of seqs has a signed checkpoint, checkpoints form a hash
//! chain, and `auditlake verify` checks the stored log against them.
//!
//! ```text
//! seal (n events) ─► leaf hashes in seq order ─► block hashes ─► root ─► signed checkpoint line
//!                    (canonical.rs)               (merkle.rs)            (checkpoint.rs)
//! ```
//!
//! This layer owns `integrity/` in the data directory and the canonical
//! encoding of an event. It never changes an event or a segment, and never
//! signs a range it could not read back whole: seqs missing from a segment
//! stop the checkpoint instead of being signed over.

pub mod canonical;
pub mod checkpoint;
pub mod merkle;
pub mod proof;
pub mod verify;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use tracing::{info, warn};

pub use checkpoint::{Checkpoint, CheckpointLog, RemovalScope, SigningKey};
use merkle::Hash;

use crate::model::Seq;
use crate::storage::objects::SegmentStore;
use crate::storage::row_index::RowIndexes;
use crate::storage::segment::{LiveSegment, for_each_batch};
use crate::storage::{Expiry, SealWitness, StorageError, packed};

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("signing key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint would leave a gap: the next one must start at seq {expected}, not {got}")]
    Gap { expected: Seq, got: Seq },
    #[error(
        "segment {file} does not hold seqs {first}..={last} exactly once each; not signing it (run `auditlake verify`)"
    )]
    Incomplete { file: String, first: Seq, last: Seq },
    #[error(
        "{absent} seq(s) of {first}..={last} (the first {first_absent}) are neither in segment {file} nor in a removal record; \
         not signing them as removed (damage or tampering: compare with a backup)"
    )]
    Unexplained { file: String, first: Seq, last: Seq, absent: u64, first_absent: Seq },
    #[error("the checkpoint log is damaged: {0}")]
    Damaged(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl IntegrityError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        IntegrityError::Io { path: path.to_path_buf(), source }
    }
}

/// Whether `data_dir` has a checkpoint log (then every change to stored
/// UGC must keep the digests checkpoints cover).
pub fn is_checkpointed(data_dir: &Path) -> bool {
    data_dir.join(checkpoint::INTEGRITY_DIR).join(checkpoint::CHECKPOINTS_FILE).metadata().is_ok_and(|m| m.len() > 0)
}

/// What checking one event's inclusion proof found.
#[derive(Debug)]
pub enum Inclusion {
    /// The proof leads to a root this server's key signed.
    Verified(serde_json::Value),
    /// It does not, or it could not be made (a segment unreadable, say).
    Failed { reason: String, proof: Option<serde_json::Value> },
    /// The event is not sealed yet, so no checkpoint covers it.
    NotSealed,
}

/// The seal witness of a server or bulk load run with a signing key.
#[derive(Debug)]
pub struct Integrity {
    key: Arc<SigningKey>,
    log: CheckpointLog,
    data_dir: PathBuf,
}

impl Integrity {
    pub fn open(key: Arc<SigningKey>, data_dir: &Path) -> Result<Self, IntegrityError> {
        Ok(Integrity { key, log: CheckpointLog::open(data_dir)?, data_dir: data_dir.to_path_buf() })
    }

    /// The inclusion proof of event `seq` of `storage` (see [`proof`]);
    /// reads segments, so call it off the async runtime.
    pub fn prove(&self, storage: &crate::storage::Storage, seq: Seq) -> Result<serde_json::Value, proof::ProofError> {
        let segments = storage.snapshot().segments;
        proof::prove(&self.data_dir, storage.segment_store(), &segments, &self.key, seq)
    }

    /// Proves event `seq` and checks the proof against this server's key:
    /// what an investigator is shown beside the event. Reads segments, so
    /// call it off the async runtime.
    pub fn check_inclusion(&self, storage: &crate::storage::Storage, seq: Seq) -> Inclusion {
        match self.prove(storage, seq) {
            Err(proof::ProofError::NotCheckpointed(_)) => Inclusion::NotSealed,
            Err(error) => Inclusion::Failed { reason: error.to_string(), proof: None },
            Ok(made) => match proof::holds(&made, &self.key.public_hex()) {
                Ok(()) => Inclusion::Verified(made),
                Err(reason) => Inclusion::Failed { reason, proof: Some(made) },
            },
        }
    }

    fn checkpoint_through(
        &self,
        store: &SegmentStore,
        segments: &[Arc<LiveSegment>],
        sealed_seq: Seq,
        fresh: Option<(Seq, &[RecordBatch])>,
    ) -> Result<(), IntegrityError> {
        self.log.refuse_if_damaged()?;
        let done = self.log.last_seq();
        if done >= sealed_seq {
            return Ok(());
        }
        // Ranges sealed while no key was given, or whose checkpoint failed,
        // are read back from their segments, one checkpoint per segment.
        let fresh_first = fresh.map_or(sealed_seq + 1, |(first, _)| first);
        if done + 1 < fresh_first {
            warn!(from_seq = done + 1, to_seq = fresh_first - 1, "checkpointing sealed events not yet checkpointed");
        }
        let mut ranges = Vec::new();
        for segment in segments.iter().filter(|s| s.meta.max_seq > done && s.meta.min_seq < fresh_first) {
            let first = ranges.last().map_or(done + 1, |(_, _, last)| last + 1);
            ranges.push((segment, first, segment.meta.max_seq.min(fresh_first - 1)));
        }
        if done == 0 {
            // Never checkpointed: what retention removed while no key was
            // given is not known any more. Every such absence is recorded
            // before the first range is signed, so that a catch-up cut short
            // never meets an absence it may not explain.
            for (segment, first, last) in &ranges {
                let mut present = segment_seqs(store, segment)?;
                present.extend(self.removed_leaves(*first, *last)?.into_iter().map(|(seq, _)| seq));
                self.record_absent(&present, *first, *last)?;
            }
        }
        for (segment, first, last) in ranges {
            let mut leaves = segment_leaves(store, segment, self.key.digest_key())?;
            // Retention may have removed events of a range before its
            // checkpoint was caught up with; their removal records keep them.
            leaves.extend(self.removed_leaves(first, last)?);
            leaves.sort_unstable();
            // A row both stored and recorded as removed (a crash between the
            // record and the manifest) counts once.
            leaves.dedup();
            refuse_unexplained_absences(&leaves, first, last, &segment.meta.file)?;
            let leaves = exact_range(leaves, first, last, &segment.meta.file)?;
            self.log.append(&self.key, first, &leaves)?;
        }
        if let Some((first, batches)) = fresh {
            let leaves: Vec<(Seq, Hash)> =
                batches.iter().flat_map(|b| canonical::leaves(b, self.key.digest_key())).collect();
            let leaves = exact_range(leaves, first, sealed_seq, "(sealed batches)")?;
            let checkpoint = self.log.append(&self.key, first, &leaves)?;
            info!(index = checkpoint.index, first, last = sealed_seq, root = %checkpoint.root, "checkpoint signed");
        }
        Ok(())
    }

    /// The leaves removal records keep for seqs `first..=last`.
    fn removed_leaves(&self, first: Seq, last: Seq) -> Result<Vec<(Seq, Hash)>, IntegrityError> {
        let lines = checkpoint::read_checkpoints(&self.data_dir)?.into_iter().filter_map(Result::ok);
        let mut leaves = Vec::new();
        for line in
            lines.filter(|c| c.kind == checkpoint::LineKind::Removal && c.first_seq <= last && first <= c.last_seq)
        {
            let removed = checkpoint::read_removal(&self.data_dir, &line)
                .map_err(|reason| IntegrityError::io(&self.data_dir, std::io::Error::other(reason)))?;
            leaves.extend(removed.into_iter().filter(|(seq, _)| (first..=last).contains(seq)));
        }
        Ok(leaves)
    }

    /// Seqs of `first..=last` not `present` (stored or in a removal record)
    /// in a directory never checkpointed were removed by retention run
    /// without a key: they are recorded as such, each with a placeholder
    /// leaf, so the range can be checkpointed and verified.
    fn record_absent(&self, present: &HashSet<Seq>, first: Seq, last: Seq) -> Result<(), IntegrityError> {
        let absent: Vec<(Seq, Hash)> =
            (first..=last).filter(|seq| !present.contains(seq)).map(|seq| (seq, absent_leaf(seq))).collect();
        if absent.is_empty() {
            return Ok(());
        }
        warn!(first, last, absent = absent.len(), "events removed before this directory was checkpointed");
        let scope = RemovalScope {
            org: "*".into(),
            before: "removed before the directory was checkpointed".into(),
            count: absent.len() as u64,
        };
        self.log.append_removal(&self.key, scope, &absent)?;
        Ok(())
    }

    fn record_removal(&self, expiry: &Expiry, removed: &[RecordBatch]) -> Result<(), IntegrityError> {
        let mut leaves: Vec<(Seq, Hash)> =
            removed.iter().flat_map(|b| canonical::leaves(b, self.key.digest_key())).collect();
        leaves.sort_unstable_by_key(|(seq, _)| *seq);
        let before = chrono::DateTime::from_timestamp_micros(expiry.before_us).unwrap_or_default();
        let scope = RemovalScope {
            org: expiry.org.clone(),
            before: before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            count: leaves.len() as u64,
        };
        let line = self.log.append_removal(&self.key, scope, &leaves)?;
        info!(index = line.index, org = %expiry.org, count = leaves.len(), "removal by retention recorded");
        Ok(())
    }
}

impl SealWitness for Integrity {
    fn sealed(
        &self,
        store: &SegmentStore,
        segments: &[Arc<LiveSegment>],
        sealed_seq: Seq,
        fresh: Option<(Seq, &[RecordBatch])>,
    ) -> Result<(), StorageError> {
        self.checkpoint_through(store, segments, sealed_seq, fresh).map_err(|e| StorageError::Checkpoint(Box::new(e)))
    }

    fn removing(&self, expiry: &Expiry, removed: &[RecordBatch]) -> Result<(), StorageError> {
        self.record_removal(expiry, removed).map_err(|e| StorageError::Removal(Box::new(e)))
    }
}

/// The leaf that stands for an event removed before its range was
/// checkpointed: what it held is not known any more.
pub fn absent_leaf(seq: Seq) -> Hash {
    let mut data = b"auditlake absent v1\0".to_vec();
    data.extend_from_slice(&seq.to_be_bytes());
    merkle::leaf_hash(&data)
}

/// Refuses to sign `first..=last` when seqs of it (`leaves`, sorted by
/// seq) are neither stored nor
/// recorded as removed: once a directory is checkpointed, every removal is
/// recorded first, so such a gap is damage or tampering, not retention.
fn refuse_unexplained_absences(
    leaves: &[(Seq, Hash)],
    first: Seq,
    last: Seq,
    file: &str,
) -> Result<(), IntegrityError> {
    // `leaves` are sorted: the seqs of the range held, each once.
    let mut held: Vec<Seq> = leaves.iter().map(|(seq, _)| *seq).filter(|seq| (first..=last).contains(seq)).collect();
    held.dedup();
    let absent = last - first + 1 - held.len() as Seq;
    if absent == 0 {
        return Ok(());
    }
    let first_absent =
        (first..).zip(&held).find(|(want, held)| want != *held).map_or(first + held.len() as Seq, |(want, _)| want);
    Err(IntegrityError::Unexplained { file: file.to_string(), first, last, absent, first_absent })
}

/// `leaves` sorted by seq, if they are exactly `first..=last` once each;
/// otherwise `file` (where they were read) does not hold that range whole.
fn exact_range(mut leaves: Vec<(Seq, Hash)>, first: Seq, last: Seq, file: &str) -> Result<Vec<Hash>, IntegrityError> {
    leaves.retain(|(seq, _)| (first..=last).contains(seq));
    leaves.sort_unstable_by_key(|(seq, _)| *seq);
    let exact =
        leaves.len() as Seq == last - first + 1 && leaves.iter().zip(first..).all(|((seq, _), want)| *seq == want);
    if !exact {
        return Err(IntegrityError::Incomplete { file: file.to_string(), first, last });
    }
    Ok(leaves.into_iter().map(|(_, leaf)| leaf).collect())
}

/// The key by which rows of a segment must be ordered (see
/// [`crate::storage::segment::SORT_COLUMNS`]).
pub type SortKey = (String, String, i64, Seq);

/// One segment's rows read back: `(seq, leaf)` in storage order, and the
/// first pair of neighbouring rows out of segment order, if any.
pub struct SegmentRows {
    pub leaves: Vec<(Seq, Hash)>,
    pub out_of_order: Option<(Seq, Seq)>,
    /// The row indexes the rows make, as the segment writer built them.
    pub indexes: RowIndexes,
    /// Rows per organisation, as the manifest lists them.
    pub org_rows: std::collections::BTreeMap<String, u64>,
}

/// Reads every row of a segment and hashes it.
pub fn read_segment(
    store: &SegmentStore,
    segment: &LiveSegment,
    digest_key: &ring::hmac::Key,
) -> Result<SegmentRows, StorageError> {
    let mut rows = SegmentRows {
        leaves: Vec::with_capacity(rows_hint(segment)),
        out_of_order: None,
        indexes: RowIndexes::default(),
        org_rows: Default::default(),
    };
    let mut previous: Option<SortKey> = None;
    for_each_batch(store, every_column(segment)?, |batch| {
        let (orgs, actors) = (batch.column_by_name("org_id"), batch.column_by_name("actor_id"));
        let (orgs, actors) = (orgs.expect("org_id").as_string::<i32>(), actors.expect("actor_id").as_string::<i32>());
        let times = batch.column_by_name("time").expect("time").as_primitive::<TimestampMicrosecondType>();
        let seqs = batch.column_by_name("seq").expect("seq").as_primitive::<Int64Type>();
        let key = |row: usize| (orgs.value(row), actors.value(row), times.value(row), seqs.value(row) as Seq);
        for row in 0..batch.num_rows() {
            let here = key(row);
            let before = match row {
                0 => previous.as_ref().map(|(o, a, t, s)| (o.as_str(), a.as_str(), *t, *s)),
                _ => Some(key(row - 1)),
            };
            if let Some(before) = before
                && before > here
                && rows.out_of_order.is_none()
            {
                rows.out_of_order = Some((before.3, here.3));
            }
        }
        if batch.num_rows() > 0 {
            let (o, a, t, s) = key(batch.num_rows() - 1);
            previous = Some((o.to_string(), a.to_string(), t, s));
        }
        rows.indexes.add_batch(&batch);
        for org in orgs.iter().flatten() {
            // One allocation per organisation, not per row.
            match rows.org_rows.get_mut(org) {
                Some(count) => *count += 1,
                None => _ = rows.org_rows.insert(org.to_owned(), 1),
            }
        }
        rows.leaves.extend(canonical::leaves(&batch, digest_key));
        Ok(())
    })?;
    Ok(rows)
}

/// A scan of every column of a segment, the stored digests included.
fn every_column(segment: &LiveSegment) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, StorageError> {
    let schema = packed::segment_schema();
    segment.scan_columns(&schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>())
}

/// Every batch of a segment, in the segment schema.
pub fn read_segment_batches(store: &SegmentStore, segment: &LiveSegment) -> Result<Vec<RecordBatch>, StorageError> {
    let mut batches = Vec::new();
    for_each_batch(store, every_column(segment)?, |batch| {
        batches.push(batch);
        Ok(())
    })?;
    Ok(batches)
}

/// The manifest's row count of `segment` as a capacity to reserve, bounded:
/// the manifest is what `verify` checks, so it may have been edited.
fn rows_hint(segment: &LiveSegment) -> usize {
    const MOST_ROWS_RESERVED: u64 = 1 << 20;
    segment.meta.rows.min(MOST_ROWS_RESERVED) as usize
}

/// The seqs a segment holds.
fn segment_seqs(store: &SegmentStore, segment: &LiveSegment) -> Result<HashSet<Seq>, StorageError> {
    let mut seqs = HashSet::with_capacity(rows_hint(segment));
    for_each_batch(store, segment.scan_columns(&["seq"])?, |batch| {
        seqs.extend(batch.column(0).as_primitive::<Int64Type>().values().iter().map(|s| *s as Seq));
        Ok(())
    })?;
    Ok(seqs)
}

fn segment_leaves(
    store: &SegmentStore,
    segment: &LiveSegment,
    digest_key: &ring::hmac::Key,
) -> Result<Vec<(Seq, Hash)>, StorageError> {
    Ok(read_segment(store, segment, digest_key)?.leaves)
}
