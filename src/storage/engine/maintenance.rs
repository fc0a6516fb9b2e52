//! Maintenance of sealed segments, on the compactor thread or on demand:
//! merging small segments, rewriting an organisation's events (UGC policy)
//! and removing what retention lets go. Each replaces segments by new files
//! and publishes the manifest under the seal lock; readers holding an old
//! snapshot keep reading the old files until they let go.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::datasource::source::DataSourceExec;
use tracing::{error, info};

use super::sealing::SEAL_CHECK_INTERVAL_MS;
use super::{Expiry, Storage};
use crate::storage::StorageError;
use crate::storage::compaction;
use crate::storage::manifest::{self, SegmentMeta};
use crate::storage::segment::{self, LiveSegment, SegmentWriter};

impl Storage {
    /// Merges the first run of small segments the policy picks. Returns the
    /// merged segment, or `None` when nothing is worth merging.
    pub fn compact_now(&self) -> Result<Option<SegmentMeta>, StorageError> {
        let _one_merge_at_a_time = self.shared.compaction_lock.lock().expect("compaction lock poisoned");
        let segments = Arc::clone(&self.state().segments);
        let rows: Vec<u64> = segments.iter().map(|s| s.meta.rows).collect();
        let Some(run) = compaction::plan(&rows, self.shared.config.compaction) else {
            return Ok(None);
        };
        let started = Instant::now();
        let inputs = &segments[run.clone()];
        let meta = compaction::merge(inputs, &self.shared.segments)?;
        let merged = LiveSegment::new(meta.clone(), &self.shared.segments);

        // Publish against the segment list as it is now: seals and bulk loads
        // may have appended segments during the merge. Only compaction removes
        // segments, one merge at a time, so the inputs are still listed, in place.
        let _one_manifest_writer = self.shared.seal_lock.lock().expect("seal lock poisoned");
        let (current, sealed_seq) = {
            let state = self.state();
            (Arc::clone(&state.segments), state.sealed_seq)
        };
        let start = current.iter().position(|s| Arc::ptr_eq(s, &inputs[0])).expect("merge inputs are still listed");
        let end = start + inputs.len();
        debug_assert!(current[start..end].iter().zip(inputs).all(|(a, b)| Arc::ptr_eq(a, b)));
        let mut next: Vec<Arc<LiveSegment>> = current[..start].to_vec();
        next.push(Arc::clone(&merged));
        next.extend_from_slice(&current[end..]);
        self.publish(&next, sealed_seq, &meta.file)?;
        self.state().segments = Arc::new(next);
        for input in inputs {
            input.retire();
        }
        info!(
            segment = %meta.file,
            inputs = inputs.len(),
            rows = meta.rows,
            bytes = meta.size_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted segments"
        );
        Ok(Some(meta))
    }

    /// Rewrites the stored events of organisation `org`: seals the buffer
    /// first (so that no WAL file holds them any more), then replaces every
    /// segment that may hold the organisation's events by a copy with
    /// `rewrite` applied to each batch, published like a compaction. `rewrite`
    /// gets batches in the segment schema and must return the same rows in
    /// the same order with the same sort columns: it changes values only.
    /// Returns how many segments were rewritten.
    pub fn rewrite_org(
        &self,
        org: &str,
        rewrite: &dyn Fn(&RecordBatch) -> Result<RecordBatch, StorageError>,
    ) -> Result<usize, StorageError> {
        self.seal_now()?;
        let _one_merge_at_a_time = self.shared.compaction_lock.lock().expect("compaction lock poisoned");
        let segments = Arc::clone(&self.state().segments);
        let mut rewritten = 0;
        for old in segments.iter().filter(|s| s.meta.min_org_id.as_str() <= org && org <= s.meta.max_org_id.as_str()) {
            let meta = self.write_copy(old, &mut |batch| rewrite(batch))?;
            let (file, size_bytes) = (meta.file.clone(), meta.size_bytes);
            self.publish_replacement(old, meta)?;
            rewritten += 1;
            info!(org, replaced = %old.meta.file, segment = %file, size_bytes, "rewrote segment");
        }
        Ok(rewritten)
    }

    /// Removes the events retention lets go: for each expiry, the
    /// organisation's events older than its cutoff, from every segment that
    /// may hold some. The witness records each removal (durably, before the
    /// manifest changes), so that verification tells it from tampering.
    /// Returns how many events were removed.
    pub fn expire(&self, expiries: &[Expiry]) -> Result<u64, StorageError> {
        let _one_merge_at_a_time = self.shared.compaction_lock.lock().expect("compaction lock poisoned");
        let mut removed_total = 0;
        for expiry in expiries {
            let org = expiry.org.as_str();
            let segments = Arc::clone(&self.state().segments);
            for old in segments.iter().filter(|s| may_hold_expired(&s.meta, expiry)) {
                // Old rows of other organisations beside young ones of this
                // one make a segment look expired from the manifest: two
                // columns are read to be sure before the whole is copied.
                if !self.holds_expired(old, expiry)? {
                    continue;
                }
                let mut removed: Vec<RecordBatch> = Vec::new();
                let mut meta = self.write_copy(old, &mut |batch| {
                    let expired = expired_rows(batch, expiry);
                    removed.push(filter_record_batch(batch, &expired)?);
                    Ok(filter_record_batch(batch, &datafusion::arrow::compute::not(&expired)?)?)
                })?;
                let count: u64 = removed.iter().map(|b| b.num_rows() as u64).sum();
                if count == 0 {
                    let _ = self.shared.segments.delete_segment(&meta.file);
                    continue;
                }
                meta.rows -= count;
                if let Some(witness) = &self.shared.config.witness
                    && let Err(e) = witness.removing(expiry, &removed)
                {
                    let _ = self.shared.segments.delete_segment(&meta.file);
                    return Err(e);
                }
                let file = meta.file.clone();
                self.publish_replacement(old, meta)?;
                removed_total += count;
                info!(org, before_us = expiry.before_us, removed = count, replaced = %old.meta.file, segment = %file, "removed events past retention");
            }
        }
        Ok(removed_total)
    }

    /// Whether `segment` holds rows `expiry` lets go (reads two columns).
    fn holds_expired(&self, segment: &LiveSegment, expiry: &Expiry) -> Result<bool, StorageError> {
        let mut holds = false;
        segment::for_each_batch(&self.shared.segments, segment.scan_columns(&["org_id", "time"])?, |batch| {
            holds = holds || expired_rows(&batch, expiry).true_count() > 0;
            Ok(())
        })?;
        Ok(holds)
    }

    /// Writes a copy of segment `old` with `rewrite` applied to each batch,
    /// durably, under the name of its next generation. Its meta is `old`'s
    /// but for the file, its size and row indexes; the copy is deleted if
    /// writing fails.
    fn write_copy(
        &self,
        old: &LiveSegment,
        rewrite: &mut dyn FnMut(&RecordBatch) -> Result<RecordBatch, StorageError>,
    ) -> Result<SegmentMeta, StorageError> {
        let file = segment::rewritten_file_name(&old.meta.file);
        let store = &self.shared.segments;
        // The organisations and times left once `rewrite` removed rows, if
        // any: a segment whose oldest rows retention removed must not look
        // as old as before (it would be rewritten at every pass).
        let mut orgs = std::collections::BTreeMap::new();
        let mut times: Option<(i64, i64)> = None;
        let written = SegmentWriter::create(store, &file).and_then(|mut writer| {
            let scan = DataSourceExec::from_data_source(old.scan().build());
            segment::for_each_batch(store, scan, |batch| {
                let rewritten = rewrite(&batch)?;
                let org_ids = rewritten.column_by_name("org_id").expect("org_id").as_string::<i32>();
                for org in org_ids.iter().flatten() {
                    *orgs.entry(org.to_owned()).or_insert(0) += 1;
                }
                let time = rewritten.column_by_name("time").expect("time");
                for t in time.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>().values() {
                    times = Some(times.map_or((*t, *t), |(lo, hi)| (lo.min(*t), hi.max(*t))));
                }
                writer.write(&rewritten)
            })?;
            writer.finish()
        });
        let written = written.inspect_err(|_| {
            let _ = store.delete_segment(&file);
        })?;
        Ok(SegmentMeta {
            file,
            size_bytes: written.size_bytes,
            content_index: written.content_index,
            actor_index: written.actor_index,
            orgs: old.meta.orgs.as_ref().and_then(|_| manifest::org_counts(orgs.iter().map(|(o, n)| (o.as_str(), *n)))),
            min_time_us: times.map_or(old.meta.min_time_us, |(lo, _)| lo),
            max_time_us: times.map_or(old.meta.max_time_us, |(_, hi)| hi),
            ..old.meta.clone()
        })
    }

    /// Publishes `meta` in place of `old` (whose file is deleted once no
    /// reader holds it). Callers hold the compaction lock, so `old` is still
    /// listed.
    fn publish_replacement(&self, old: &Arc<LiveSegment>, meta: SegmentMeta) -> Result<(), StorageError> {
        let _one_manifest_writer = self.shared.seal_lock.lock().expect("seal lock poisoned");
        let (mut next, sealed_seq) = {
            let state = self.state();
            (state.segments.as_ref().clone(), state.sealed_seq)
        };
        let at = next.iter().position(|s| Arc::ptr_eq(s, old)).expect("only compaction replaces segments");
        let file = meta.file.clone();
        next[at] = LiveSegment::new(meta, &self.shared.segments);
        self.publish(&next, sealed_seq, &file)?;
        self.state().segments = Arc::new(next);
        old.retire();
        Ok(())
    }

    /// The compactor thread: merges runs of small segments, one after the
    /// other, on its own thread so that a long merge never delays a seal.
    pub(super) fn run_compactor(self) {
        let mut retention_applied_at: Option<Instant> = None;
        loop {
            let config = &self.shared.config;
            if let Some(retention) = &config.retention
                && retention_applied_at
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(config.retention_interval_ms))
            {
                retention_applied_at = Some(Instant::now());
                let expiries = retention.expiries(chrono::Utc::now().timestamp_micros());
                if let Err(e) = self.expire(&expiries) {
                    error!(error = %e, "applying retention failed; will retry");
                }
            }
            {
                let state = self.state();
                let (state, _) = self
                    .shared
                    .seal_wakeup
                    .wait_timeout(state, Duration::from_millis(SEAL_CHECK_INTERVAL_MS))
                    .expect("storage state lock poisoned");
                if state.shutting_down {
                    return;
                }
            }
            loop {
                match self.compact_now() {
                    Ok(Some(_)) if !self.state().shutting_down => continue,
                    Ok(_) => break,
                    Err(e) => {
                        error!(error = %e, "compaction failed; will retry");
                        break;
                    }
                }
            }
        }
    }
}

/// Whether a segment may hold events `expiry` removes: it may hold the
/// organisation (its range of org ids and, where listed, its organisations:
/// a segment retention already emptied of it is not copied again at every
/// pass) and its oldest event is older than the cutoff.
pub(super) fn may_hold_expired(meta: &SegmentMeta, expiry: &Expiry) -> bool {
    meta.may_hold_org(&expiry.org) && meta.min_time_us < expiry.before_us
}

/// The rows of `batch` (segment schema) that `expiry` lets go.
fn expired_rows(batch: &RecordBatch, expiry: &Expiry) -> BooleanArray {
    let orgs = batch.column_by_name("org_id").expect("org_id column").as_string::<i32>();
    let times = batch.column_by_name("time").expect("time column").as_primitive::<TimestampMicrosecondType>();
    (0..batch.num_rows())
        .map(|row| Some(orgs.value(row) == expiry.org && times.value(row) < expiry.before_us))
        .collect()
}
