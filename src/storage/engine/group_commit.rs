//! Group commit: appenders hand their batch to the one WAL writer thread,
//! which writes every waiting request with one `write` and one `fdatasync`,
//! pushes the rows into the buffer and only then answers each appender.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::buffer::with_seq;
use super::{Appended, Shared, Storage};
use crate::model::{self, Event, Seq};
use crate::storage::StorageError;
use crate::storage::idempotency::{self, EventKey};
use crate::storage::wal::{self, WalWriter};

/// Most requests one group commit takes before it fsyncs.
const MAX_GROUP_COMMIT_REQUESTS: usize = 1024;
/// Queue of appends waiting for the WAL writer.
pub(super) const WAL_QUEUE_REQUESTS: usize = 4096;

pub(super) type AppendReply = oneshot::Sender<Result<Appended, StorageError>>;

pub(super) enum WalCommand {
    Append {
        /// The batch as Arrow IPC (see `wal::encode_batch`).
        ipc: Vec<u8>,
        batch: RecordBatch,
        /// Idempotency keys of the batch's rows, in row order.
        keys: Vec<EventKey>,
        received_at_us: i64,
        reply: AppendReply,
    },
    /// Close the current WAL file and start a new one, first setting aside
    /// `reserve` seqs (for segments written without the WAL, see
    /// `bulk_load`). Answers the last seq written before the switch; the
    /// reserved seqs follow it.
    Rotate { reserve: u64, reply: oneshot::Sender<Result<Seq, StorageError>> },
}

impl std::fmt::Debug for WalCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalCommand::Append { batch, .. } => write!(f, "Append({} rows)", batch.num_rows()),
            WalCommand::Rotate { reserve, .. } => write!(f, "Rotate(reserve {reserve})"),
        }
    }
}

impl Storage {
    /// Appends a batch durably. Events whose `(org_id, id)` was stored within
    /// the idempotency window are not stored again; the answer, sent once the
    /// new events are fsynced and visible to queries, says which seqs the new
    /// ones got and how many were duplicates.
    pub async fn append(&self, events: Vec<Event>) -> Result<Appended, StorageError> {
        assert!(!events.is_empty(), "callers reject empty batches");
        {
            let state = self.state();
            if state.buffered_bytes > self.shared.config.max_buffered_bytes {
                self.shared.seal_wakeup.notify_all();
                return Err(StorageError::Backpressure {
                    buffered_bytes: state.buffered_bytes,
                    limit_bytes: self.shared.config.max_buffered_bytes,
                });
            }
        }
        // Encoding and hashing happen here, on the caller's task, so that the
        // single WAL thread only looks keys up, frames, writes and fsyncs.
        let keys = events.iter().map(|e| idempotency::event_key(&e.org_id, &e.id)).collect();
        let received_at_us = events.iter().map(|e| e.received_at_us).max().expect("not empty");
        let batch = model::events_to_batch(&events, 0);
        let ipc = wal::encode_batch(&batch);
        let limit_bytes = self.shared.config.max_record_bytes.min(wal::MAX_RECORD_BYTES);
        let bytes = wal::record_payload_bytes(&ipc);
        if bytes > limit_bytes {
            return Err(StorageError::RecordTooLarge { bytes, limit_bytes });
        }
        let (reply, answer) = oneshot::channel();
        let command = WalCommand::Append { ipc, batch, keys, received_at_us, reply };
        self.wal_tx.send(command).await.map_err(|_| StorageError::ShutDown)?;
        answer.await.map_err(|_| StorageError::ShutDown)?
    }

    /// Asks the WAL thread to switch files (after reserving `reserve` seqs).
    pub(super) fn rotate_wal(&self, reserve: u64) -> Result<Seq, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.wal_tx.blocking_send(WalCommand::Rotate { reserve, reply }).map_err(|_| StorageError::ShutDown)?;
        answer.blocking_recv().map_err(|_| StorageError::ShutDown)?
    }
}

/// The WAL writer thread: group commit. See the module docs.
pub(super) fn run_wal_writer(
    shared: Arc<Shared>,
    mut writer: WalWriter,
    mut next_seq: Seq,
    mut rx: mpsc::Receiver<WalCommand>,
) {
    // The failure that stopped writing, given to every later append.
    let mut poisoned: Option<Arc<StorageError>> = None;
    let mut framed = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut commands = vec![first];
        while commands.len() < MAX_GROUP_COMMIT_REQUESTS {
            match rx.try_recv() {
                Ok(command) => commands.push(command),
                Err(_) => break,
            }
        }

        // Frame every append of this group with its assigned seqs, leaving
        // out events already stored (or held by an earlier append of the
        // group). The ids lock is held until the group's keys are remembered,
        // so no other writer of keys runs in between.
        framed.clear();
        let mut recent = shared.recent_ids.lock().expect("recent ids lock poisoned");
        let mut pending = HashSet::new();
        let mut appended: Vec<GroupedAppend> = Vec::new();
        let mut rotations = Vec::new();
        let group_first_seq = next_seq;
        for command in commands {
            match command {
                WalCommand::Append { ipc, batch, keys, received_at_us, reply } => {
                    if let Some(cause) = &poisoned {
                        let _ = reply.send(Err(StorageError::WalPoisoned(Arc::clone(cause))));
                        continue;
                    }
                    let fresh = recent.fresh(&keys, &mut pending);
                    let (ipc, batch, keys) = if fresh.duplicates == 0 {
                        (ipc, batch, keys)
                    } else {
                        let rows = UInt32Array::from_iter_values(fresh.rows.iter().map(|&r| r as u32));
                        let batch = take_record_batch(&batch, &rows).expect("row indices are in range");
                        let keys = fresh.rows.iter().map(|&r| keys[r]).collect();
                        (wal::encode_batch(&batch), batch, keys)
                    };
                    let stored = (batch.num_rows() > 0).then(|| {
                        let first = next_seq;
                        let last = first + batch.num_rows() as Seq - 1;
                        wal::encode_record(first, &ipc, &mut framed);
                        next_seq = last + 1;
                        (with_seq(batch, first), first, last)
                    });
                    appended.push(GroupedAppend { stored, keys, received_at_us, duplicates: fresh.duplicates, reply });
                }
                WalCommand::Rotate { reserve, reply } => rotations.push((reserve, reply)),
            }
        }

        if !appended.is_empty() {
            // A group of duplicates only has nothing to write: what it repeats
            // is already durable.
            let written = if framed.is_empty() {
                Ok(())
            } else {
                writer.append(&framed).map_err(WalFailure::Write).and_then(|()| writer.sync().map_err(WalFailure::Sync))
            };
            match written {
                Ok(()) => {
                    let mut state = shared.state.lock().expect("storage state lock poisoned");
                    for (batch, first, last) in appended.iter().filter_map(|a| a.stored.as_ref()) {
                        debug_assert!(*first > state.last_seq, "seq strictly increases");
                        state.buffered_rows += batch.num_rows();
                        state.buffered_bytes += batch.get_array_memory_size();
                        state.push_buffered(batch, *first, *last);
                        state.last_seq = *last;
                        state.oldest_buffered_at.get_or_insert_with(Instant::now);
                    }
                    if state.buffered_rows >= shared.config.seal_max_buffered_rows
                        || state.buffered_bytes >= shared.config.seal_max_buffered_bytes
                    {
                        shared.seal_wakeup.notify_all();
                    }
                    drop(state);
                    shared.problems.lock().expect("problems lock poisoned").disk_full = None;
                    for append in appended {
                        recent.remember(append.keys, append.received_at_us);
                        let seqs = append.stored.map(|(_, first, last)| (first, last));
                        let _ = append.reply.send(Ok(Appended { seqs, duplicates: append.duplicates }));
                    }
                }
                Err(failure) => {
                    // Nothing of this group is acknowledged, and its seqs are reused.
                    next_seq = group_first_seq;
                    let cause = match failure {
                        // A failed write was cut away again (see WalWriter::append):
                        // the file still ends with the last acknowledged record, so
                        // the next group can try again (e.g. once the disk has space).
                        WalFailure::Write(e) if !writer.is_broken() => {
                            warn!(error = %e, "WAL write failed; batch refused");
                            Arc::new(e)
                        }
                        // After a failed fsync the kernel may have dropped dirty pages
                        // and marked them clean: a later fsync that succeeds would not
                        // prove earlier records reached the disk. The file is done for,
                        // and so is writing until a restart recovers from what is on disk.
                        WalFailure::Write(e) | WalFailure::Sync(e) => {
                            error!(error = %e, file = %writer.path().display(), "WAL fsync failed; refusing writes until restart");
                            let cause = Arc::new(e);
                            poisoned = Some(Arc::clone(&cause));
                            cause
                        }
                    };
                    // Appends refused before this group never got here: a
                    // poisoned WAL here is this group's doing.
                    let full = poisoned.is_none()
                        && matches!(cause.as_ref(), StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull);
                    {
                        let mut problems = shared.problems.lock().expect("problems lock poisoned");
                        problems.wal_poisoned = poisoned.as_ref().map(ToString::to_string);
                        problems.disk_full = full.then(|| cause.to_string());
                    }
                    for append in appended {
                        let cause = Arc::clone(&cause);
                        let _ = append.reply.send(Err(if full {
                            StorageError::DiskFull(cause)
                        } else if poisoned.is_some() {
                            StorageError::WalPoisoned(cause)
                        } else {
                            StorageError::WalWrite(cause)
                        }));
                    }
                }
            }
        }
        drop(recent);

        for (reserve, reply) in rotations {
            let last_written = next_seq - 1;
            // A seal may take everything up to here: no later append may be
            // merged into a batch it takes.
            shared.state.lock().expect("storage state lock poisoned").merge_barrier = last_written;
            let result = if let Some(cause) = &poisoned {
                Err(StorageError::WalPoisoned(Arc::clone(cause)))
            } else if reserve == 0 && writer.first_seq() == next_seq {
                Ok(last_written) // current file is empty: nothing to close
            } else {
                WalWriter::create(&shared.wal_dir, next_seq + reserve, Arc::clone(&shared.faults)).map(|new| {
                    debug!(file = %new.path().display(), reserve, "rotated WAL");
                    writer = new;
                    next_seq += reserve;
                    last_written
                })
            };
            let _ = reply.send(result);
        }
    }
}

/// One append of a group commit, between framing and the answer.
struct GroupedAppend {
    /// The new events with their seqs; `None` when all were duplicates.
    stored: Option<(RecordBatch, Seq, Seq)>,
    /// Keys of the new events, remembered once they are durable.
    keys: Vec<EventKey>,
    received_at_us: i64,
    duplicates: usize,
    reply: AppendReply,
}

/// Which step of a group commit failed.
enum WalFailure {
    Write(StorageError),
    Sync(StorageError),
}
