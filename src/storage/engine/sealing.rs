//! Sealing: the buffer becomes a Parquet segment, published in the manifest
//! before its WAL files are dropped (the numbered steps of `seal_locked`).
//! Bulk loads write segments the same way, without the WAL.

use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use tracing::{debug, error, info, warn};

use super::Storage;
use super::buffer::{State, with_seq};
use crate::model::Seq;
use crate::storage::manifest::{Manifest, SegmentMeta};
use crate::storage::segment::{self, LiveSegment};
use crate::storage::{StorageError, fsync_dir, idempotency, wal};

/// How often the sealer checks its triggers when nobody wakes it.
pub(super) const SEAL_CHECK_INTERVAL_MS: u64 = 250;
/// How often the sealer forgets ids that left the idempotency window.
const FORGET_EXPIRED_IDS_INTERVAL_MS: u64 = 60_000;

impl Storage {
    /// Seals everything buffered right now into one segment. Returns the new
    /// segment, or `None` when the buffer was empty.
    pub fn seal_now(&self) -> Result<Option<SegmentMeta>, StorageError> {
        let _one_seal_at_a_time = self.shared.seal_lock.lock().expect("seal lock poisoned");
        let sealed = self.seal_locked();
        self.problems().sealing = sealed.as_ref().err().map(ToString::to_string);
        sealed
    }

    /// Deletes WAL files that hold only sealed events (`seq <= upto`).
    fn drop_sealed_wal(&self, upto: Seq) -> Result<(), StorageError> {
        for (first_seq, path) in wal::list_files(&self.shared.wal_dir)? {
            if first_seq <= upto {
                fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
            }
        }
        fsync_dir(&self.shared.wal_dir)
    }

    fn seal_locked(&self) -> Result<Option<SegmentMeta>, StorageError> {
        // 1. Switch WAL files, so that every file before the new one holds only
        //    events this seal covers and can be deleted once it is published.
        let upto = self.rotate_wal(0)?;

        // 2. Write the segment from the buffered batches up to `upto`. The WAL
        //    thread pushes a batch into the buffer before it answers, so the
        //    buffer holds all of them.
        let (batches, sealed_seq, mut live_segments) = {
            let state = self.state();
            let batches: Vec<RecordBatch> =
                state.buffer.iter().filter(|(_, _, last)| *last <= upto).map(|(b, _, _)| b.clone()).collect();
            (batches, state.sealed_seq, state.segments.as_ref().clone())
        };
        if batches.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let meta = segment::write_segment(&self.shared.segments, &batches)?;
        debug_assert_eq!(meta.min_seq, sealed_seq + 1, "segments cover the log without gaps");
        debug_assert_eq!(meta.max_seq, upto);

        // 3. Publish: the manifest is durable before anything is dropped.
        live_segments.push(LiveSegment::new(meta.clone(), &self.shared.segments));
        self.publish(&live_segments, upto, &meta.file)?;

        // 4. Swap the published segment in and its rows out, in one step for readers.
        {
            let mut state = self.state();
            state.segments = Arc::new(live_segments);
            state.sealed_seq = upto;
            state.buffer.retain(|(_, first, _)| *first > upto);
            state.recount_buffer();
        }
        self.witness_seal(upto, Some((sealed_seq + 1, &batches)));

        // 5. The WAL files before the rotation are now redundant.
        self.drop_sealed_wal(upto)?;
        info!(
            segment = %meta.file,
            rows = meta.rows,
            bytes = meta.size_bytes,
            sealed_seq = upto,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sealed segment"
        );
        Ok(Some(meta))
    }

    /// Tells the witness, if any, that everything up to `sealed_seq` is
    /// published. Callers hold the seal lock, so ranges arrive in order.
    pub(super) fn witness_seal(&self, sealed_seq: Seq, fresh: Option<(Seq, &[RecordBatch])>) {
        if let Some(witness) = &self.shared.config.witness {
            let segments = Arc::clone(&self.state().segments);
            // The events are durable and published already: a checkpoint
            // that fails is retried at the next seal or start, and reported.
            let signed = witness.sealed(&self.shared.segments, &segments, sealed_seq, fresh);
            if let Err(e) = &signed {
                error!(error = %e, sealed_seq, "checkpoint failed; retried at the next seal");
            }
            self.problems().checkpointing = signed.err().map(|e| e.to_string());
        }
    }

    /// Makes `segments` the durable manifest (with `sealed_seq`), where
    /// `new_file` is the one segment file the previous manifest did not name.
    /// If that fails, the old manifest stands and `new_file`, not part of the
    /// log, is deleted. Callers hold the seal lock, so manifests are written
    /// one at a time.
    pub(super) fn publish(
        &self,
        segments: &[Arc<LiveSegment>],
        sealed_seq: Seq,
        new_file: &str,
    ) -> Result<(), StorageError> {
        debug_assert!(
            segments.windows(2).all(|w| w[0].meta.max_seq + 1 == w[1].meta.min_seq),
            "segments cover the log in order without gaps or overlaps"
        );
        let manifest = Manifest::new(sealed_seq, segments.iter().map(|s| s.meta.clone()).collect());
        let published =
            self.shared.segments.sync_segments().and_then(|()| self.shared.segments.write_manifest(manifest.encode()));
        if published.is_err() {
            let _ = self.shared.segments.delete_segment(new_file);
        }
        published
    }

    /// Loads events straight into segments, without the WAL: the bulk path
    /// for imports and generated data, whose source can be read again. Each
    /// chunk becomes one segment, published (durable) before the next is
    /// written. Seqs are reserved from the WAL thread, so appends that arrive
    /// meanwhile get later seqs; they wait in the buffer, since sealing waits
    /// for the load. Returns the first and last seq loaded.
    ///
    /// Each chunk is one or more Arrow batches of the `audit_events` schema
    /// (see [`crate::model::BatchBuilder`]); their `seq` column is overwritten here,
    /// numbering the chunk's rows in order, so callers can build them on
    /// another thread before seqs are known. A chunk whose rows are already
    /// in segment order (see [`segment::SORT_COLUMNS`]) is written without
    /// being sorted again.
    pub fn bulk_load(
        &self,
        chunks: impl Iterator<Item = Vec<RecordBatch>>,
    ) -> Result<Option<(Seq, Seq)>, StorageError> {
        let _one_manifest_writer = self.shared.seal_lock.lock().expect("seal lock poisoned");
        // Everything acknowledged so far is sealed first, so that the segments
        // keep covering the log in seq order.
        self.seal_locked()?;
        let mut loaded: Option<(Seq, Seq)> = None;
        for chunk in chunks {
            let rows: usize = chunk.iter().map(RecordBatch::num_rows).sum();
            if rows == 0 {
                continue;
            }
            let first = self.rotate_wal(rows as u64)? + 1;
            let last = first + rows as Seq - 1;
            let mut next = first;
            let numbered: Vec<RecordBatch> = chunk
                .into_iter()
                .map(|batch| {
                    let batch_first = next;
                    next += batch.num_rows() as Seq;
                    with_seq(batch, batch_first)
                })
                .collect();
            let started = Instant::now();
            let meta = segment::write_segment(&self.shared.segments, &numbered)?;
            debug!(first, last, written_ms = started.elapsed().as_millis() as u64, "bulk-loaded segment");
            let mut segments = self.state().segments.as_ref().clone();
            segments.push(LiveSegment::new(meta.clone(), &self.shared.segments));
            self.publish(&segments, last, &meta.file)?;
            {
                let mut state = self.state();
                state.segments = Arc::new(segments);
                state.sealed_seq = last;
                state.last_seq = state.last_seq.max(last);
            }
            self.witness_seal(last, Some((first, &numbered)));
            self.drop_sealed_wal(last)?;
            loaded = Some((loaded.map_or(first, |(f, _)| f), last));
        }
        Ok(loaded)
    }

    fn seal_due(&self, state: &State) -> bool {
        let config = &self.shared.config;
        state.buffered_rows >= config.seal_max_buffered_rows
            || state.buffered_bytes >= config.seal_max_buffered_bytes
            || state.oldest_buffered_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(config.seal_after_ms))
    }

    pub(super) fn run_sealer(self) {
        let mut forgot_expired_at = Instant::now();
        loop {
            if forgot_expired_at.elapsed() >= Duration::from_millis(FORGET_EXPIRED_IDS_INTERVAL_MS) {
                forgot_expired_at = Instant::now();
                let now_us = chrono::Utc::now().timestamp_micros();
                // A slice per lock hold: the WAL writer takes the same lock.
                let mut forgotten = 0;
                let forgotten_early = loop {
                    let mut recent = self.shared.recent_ids.lock().expect("recent ids lock poisoned");
                    let slice = recent.forget_expired(now_us);
                    forgotten += slice;
                    if slice < idempotency::MAX_FORGOTTEN_PER_CALL {
                        break recent.forgotten_early();
                    }
                };
                debug!(forgotten, "ids left the idempotency window");
                if forgotten_early > 0 {
                    warn!(
                        forgotten_early,
                        max_keys = self.shared.config.max_idempotency_keys,
                        "ids forgotten before the idempotency window ended, to stay within the most keys"
                    );
                }
            }
            let seal_due = {
                let state = self.state();
                let (state, _) = self
                    .shared
                    .seal_wakeup
                    .wait_timeout_while(state, Duration::from_millis(SEAL_CHECK_INTERVAL_MS), |s| {
                        !s.shutting_down && !self.seal_due(s)
                    })
                    .expect("storage state lock poisoned");
                if state.shutting_down {
                    return;
                }
                self.seal_due(&state)
            };
            if !seal_due {
                continue;
            }
            match self.seal_now() {
                // A new segment: the compactor may have a run to merge.
                Ok(Some(_)) => self.shared.seal_wakeup.notify_all(),
                Ok(None) => {}
                Err(e) => {
                    // The buffer and WAL still hold everything; sealing is retried.
                    error!(error = %e, "sealing failed; will retry");
                    thread::sleep(Duration::from_millis(SEAL_CHECK_INTERVAL_MS * 4));
                }
            }
        }
    }
}
