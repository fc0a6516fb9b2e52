//! Recovery at start-up: what the manifest does not name is deleted, the WAL
//! is replayed past the sealed seq (a torn tail is cut), and the idempotency
//! window is rebuilt from what was stored.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use super::buffer::State;
use crate::model::Seq;
use crate::storage::StorageError;
use crate::storage::faults::Faults;
use crate::storage::idempotency::RecentIds;
use crate::storage::manifest::Manifest;
use crate::storage::objects::SegmentStore;
use crate::storage::segment;
use crate::storage::wal::{self, WalBatch, WalWriter};

/// Deletes segment files the manifest does not name (a crash during sealing
/// or compaction) and checks that every named one exists.
pub(super) fn remove_unpublished_segments(store: &SegmentStore, manifest: &Manifest) -> Result<(), StorageError> {
    let present = store.list_segment_files()?;
    for file in &present {
        if !manifest.segments.iter().any(|s| &s.file == file) {
            warn!(file, "removing segment file not in the manifest (interrupted seal or compaction)");
            store.delete_segment(file)?;
        }
    }
    store.sync_segments()?;
    for segment in &manifest.segments {
        if !present.contains(&segment.file) {
            return Err(StorageError::CorruptManifest {
                file: store.manifest_display(),
                reason: format!("it lists segment {} which does not exist", segment.file),
            });
        }
    }
    Ok(())
}

pub(super) struct Replayed {
    /// Batches above the sealed seq, ascending and contiguous.
    pub(super) batches: Vec<WalBatch>,
    /// The newest WAL file: first seq, path, and length of its valid prefix.
    pub(super) newest: Option<(Seq, PathBuf, u64)>,
}

pub(super) fn replay_wal(wal_dir: &Path, sealed_seq: Seq) -> Result<Replayed, StorageError> {
    let files = wal::list_files(wal_dir)?;
    let mut batches: Vec<WalBatch> = Vec::new();
    let mut newest = None;
    let mut expected_next: Option<Seq> = None;
    for (i, (first_seq, path)) in files.iter().enumerate() {
        let is_newest = i + 1 == files.len();
        let outcome = wal::read_file(path, is_newest)?;
        if outcome.torn_tail {
            warn!(file = %path.display(), valid_len = outcome.valid_len, "truncating torn WAL tail");
        }
        for (batch, offset) in outcome.batches.into_iter().zip(outcome.offsets) {
            if let Some(expected) = expected_next
                && batch.first_seq != expected
            {
                return Err(StorageError::CorruptWal {
                    file: path.clone(),
                    offset,
                    reason: format!("sequence gap: expected seq {expected}, found {}", batch.first_seq),
                });
            }
            expected_next = Some(batch.last_seq() + 1);
            if batch.last_seq() > sealed_seq {
                if batch.first_seq <= sealed_seq {
                    return Err(StorageError::CorruptWal {
                        file: path.clone(),
                        offset,
                        reason: format!(
                            "batch {}..={} straddles the sealed seq {sealed_seq}",
                            batch.first_seq,
                            batch.last_seq()
                        ),
                    });
                }
                batches.push(batch);
            }
        }
        if is_newest {
            newest = Some((*first_seq, path.clone(), outcome.valid_len));
        }
    }
    if let Some(first) = batches.first()
        && first.first_seq != sealed_seq + 1
    {
        return Err(StorageError::CorruptWal {
            file: wal_dir.to_path_buf(),
            offset: 0,
            reason: format!("WAL resumes at seq {} but the manifest is sealed up to {sealed_seq}", first.first_seq),
        });
    }
    Ok(Replayed { batches, newest })
}

/// Rebuilds the idempotency window at start-up: the ids of buffered events,
/// and of events in segments that may hold some received within the window.
pub(super) fn recall_recent_ids(
    store: &SegmentStore,
    state: &State,
    window_ms: u64,
    max_keys: usize,
) -> Result<RecentIds, StorageError> {
    let window_us = i64::try_from(window_ms.saturating_mul(1_000)).unwrap_or(i64::MAX);
    let mut recent = RecentIds::new(window_us, max_keys);
    let cutoff_us = recent.cutoff_us(chrono::Utc::now().timestamp_micros());
    let columns = ["org_id", "id_uuid", "id_text", "received_at"];
    for segment in state.segments.iter() {
        if segment.meta.max_received_at_us.is_some_and(|at| at < cutoff_us) {
            continue;
        }
        let scan = segment.scan_columns(&columns)?;
        segment::for_each_batch(store, scan, |batch| {
            recent.remember_batch(&batch, cutoff_us);
            Ok(())
        })?;
    }
    for (batch, _, _) in &state.buffer {
        recent.remember_batch(batch, cutoff_us);
    }
    Ok(recent)
}

/// The WAL file appends go on in after replay: the newest file, from the end
/// of its valid prefix, when it continues the log; else a new file after
/// `last_seq`.
pub(super) fn resume_wal(
    wal_dir: &Path,
    newest: Option<(Seq, PathBuf, u64)>,
    last_seq: Seq,
    faults: &Arc<Faults>,
) -> Result<WalWriter, StorageError> {
    Ok(match newest {
        Some((first_seq, path, valid_len)) if first_seq == last_seq + 1 || valid_len > wal::HEADER_BYTES => {
            WalWriter::reopen(&path, first_seq, valid_len, Arc::clone(faults))?
        }
        _ => {
            // No WAL yet, or empty files named for seqs a bulk load reserved
            // but never published. Files past `last_seq` hold no records
            // (replay would have raised `last_seq`): start afresh after it.
            for (first_seq, path) in wal::list_files(wal_dir)? {
                if first_seq > last_seq {
                    fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
                }
            }
            WalWriter::create(wal_dir, last_seq + 1, Arc::clone(faults))?
        }
    })
}
