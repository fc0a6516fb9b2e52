//! The engine: group commit, the queryable buffer, sealing, and recovery.
//!
//! Concurrency model:
//! - One **WAL writer thread** owns the open WAL file. Appenders send it their
//!   batch and park on a oneshot. The thread takes every request waiting at that
//!   moment, writes them with one `write`, calls `fdatasync` once, pushes the
//!   rows into the buffer, and only then answers each appender. So an ack means
//!   durable *and* visible, and concurrent appenders share one fsync.
//! - One **sealer thread** turns the buffer into a Parquet segment when it holds
//!   too many rows or its oldest row is too old.
//! - The WAL writer also decides which events are new: an event whose
//!   `(org_id, id)` was stored within the idempotency window is acknowledged
//!   again without a second copy (see `idempotency.rs`). Deciding on the one
//!   thread that orders all writes means two concurrent retries of the same
//!   batch store it once.
//! - Readers take a [`Snapshot`]: the segment list and the buffered batches,
//!   copied under the same lock the sealer uses to publish a segment and drop its
//!   rows from the buffer. A snapshot therefore sees every event exactly once.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::datasource::source::DataSourceExec;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::compaction::{self, CompactionPolicy};
use super::faults::Faults;
use super::idempotency::{self, EventKey, RecentIds};
use super::manifest::{self, Manifest, SegmentMeta};
use super::objects::SegmentStore;
use super::segment::LiveSegment;
use super::wal::{self, WalBatch, WalWriter};
use super::{RetentionSource, SealWitness, StorageError, fsync_dir, segment};
use crate::model::{self, Event, Seq};

/// Most requests one group commit takes before it fsyncs.
const MAX_GROUP_COMMIT_REQUESTS: usize = 1024;
/// Queue of appends waiting for the WAL writer.
const WAL_QUEUE_REQUESTS: usize = 4096;
/// How often the sealer checks its triggers when nobody wakes it.
const SEAL_CHECK_INTERVAL_MS: u64 = 250;
/// How often the sealer forgets ids that left the idempotency window.
const FORGET_EXPIRED_IDS_INTERVAL_MS: u64 = 60_000;
/// Small appends (one self-audit record, one event) are merged into larger
/// buffered batches while a merge stays under this many rows: every query
/// scans the buffer, and thousands of one-row batches cost far more to scan
/// than their rows.
const BUFFER_MERGE_MAX_ROWS: usize = 4096;

/// Limits and paths of one engine.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Holds the lock file and the WAL, and the segments unless
    /// `segments_url` puts them elsewhere.
    pub data_dir: PathBuf,
    /// Where segments and the manifest live: `None` for `data_dir`, or a
    /// `file:///` or `s3://bucket/prefix` URL (see [`SegmentStore::open`]).
    pub segments_url: Option<String>,
    /// Seal when the buffer holds this many rows.
    pub seal_max_buffered_rows: usize,
    /// Seal when the buffer's Arrow arrays take this many bytes.
    pub seal_max_buffered_bytes: usize,
    /// Seal when the oldest buffered row is this old.
    pub seal_after_ms: u64,
    /// Refuse appends (backpressure, HTTP 503) while the buffer takes more
    /// bytes than this: sealing has fallen behind.
    pub max_buffered_bytes: usize,
    /// Which small segments the sealer thread merges.
    pub compaction: CompactionPolicy,
    /// An event whose organisation sent its id this recently (by receive
    /// time) is acknowledged again instead of being stored twice.
    pub idempotency_window_ms: u64,
    /// The most ids remembered for idempotency; past it the oldest are
    /// forgotten before their window ends.
    pub max_idempotency_keys: usize,
    /// Told of every sealed range (checkpoints); `None` without a signing key.
    pub witness: Option<Arc<dyn SealWitness>>,
    /// Organisations' retention, applied by the compactor thread; `None`
    /// applies none.
    pub retention: Option<Arc<dyn RetentionSource>>,
    /// How often retention is applied.
    pub retention_interval_ms: u64,
    /// Largest WAL record one append may make (at most
    /// [`wal::MAX_RECORD_BYTES`], what the reader believes): a larger batch
    /// is refused, never acknowledged and then refused at the next start.
    pub max_record_bytes: usize,
}

impl StorageConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            data_dir: data_dir.into(),
            segments_url: None,
            seal_max_buffered_rows: 1_000_000,
            seal_max_buffered_bytes: 128 * 1024 * 1024,
            seal_after_ms: 60_000,
            max_buffered_bytes: 384 * 1024 * 1024,
            compaction: CompactionPolicy { target_rows: 1_000_000, min_inputs: 4 },
            idempotency_window_ms: idempotency::DEFAULT_IDEMPOTENCY_WINDOW_HOURS * 3_600_000,
            max_idempotency_keys: idempotency::DEFAULT_MAX_IDEMPOTENCY_KEYS,
            witness: None,
            retention: None,
            retention_interval_ms: 3_600_000,
            max_record_bytes: wal::MAX_RECORD_BYTES,
        }
    }
}

/// What an organisation's retention lets go: its events before `before_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub org: String,
    pub before_us: i64,
}

/// What one append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The seqs given to the new events, in batch order; `None` when every
    /// event of the batch was already stored.
    pub seqs: Option<(Seq, Seq)>,
    /// Events acknowledged again without a second copy: their id was stored
    /// within the idempotency window, or repeats an earlier line of the batch.
    pub duplicates: usize,
}

/// A consistent view of the log for one query.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub segments: Arc<Vec<Arc<LiveSegment>>>,
    /// Buffered rows not yet in any listed segment, in `seq` order.
    pub buffer: Vec<RecordBatch>,
}

/// Counters for the CLI, benchmarks and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageStats {
    pub last_seq: Seq,
    pub sealed_seq: Seq,
    pub buffered_rows: usize,
    pub buffered_bytes: usize,
    pub segments: usize,
    pub segment_bytes: u64,
    pub segment_rows: u64,
    /// A merge is running or due.
    pub compacting: bool,
}

/// What readers and the sealer share.
#[derive(Debug)]
struct State {
    /// Published segments, ascending and contiguous in seq.
    segments: Arc<Vec<Arc<LiveSegment>>>,
    sealed_seq: Seq,
    /// `(batch, first_seq, last_seq)`, ascending, every seq above `sealed_seq`.
    buffer: Vec<(RecordBatch, Seq, Seq)>,
    buffered_rows: usize,
    buffered_bytes: usize,
    oldest_buffered_at: Option<Instant>,
    last_seq: Seq,
    shutting_down: bool,
    /// The last seq of the latest WAL rotation: a seal may be taking the
    /// buffered batches up to it, so appends are never merged into those.
    merge_barrier: Seq,
}

type AppendReply = oneshot::Sender<Result<Appended, StorageError>>;

impl State {
    /// Adds an acknowledged batch to the buffer, then merges the two newest
    /// batches for as long as the older is no larger than the newer (and the
    /// two fit in [`BUFFER_MERGE_MAX_ROWS`]), like carries in a binary counter:
    /// the buffer holds a few batches per doubling of size, and each row is
    /// copied about log2(BUFFER_MERGE_MAX_ROWS) times in all. Merging every
    /// append into the last batch copied the whole batch each time, which a
    /// stream of one-row self-audit records made quadratic.
    fn push_buffered(&mut self, batch: &RecordBatch, first: Seq, last: Seq) {
        self.buffer.push((batch.clone(), first, last));
        while let [.., (older, older_first, older_last), (newer, newer_first, newer_last)] = self.buffer.as_slice()
            && *older_first > self.merge_barrier
            && *older_last + 1 == *newer_first
            && older.num_rows() <= newer.num_rows()
            && older.num_rows() + newer.num_rows() <= BUFFER_MERGE_MAX_ROWS
            && let Ok(merged) = concat_batches(&older.schema(), [older, newer])
        {
            let (merged_first, merged_last) = (*older_first, *newer_last);
            self.buffer.truncate(self.buffer.len() - 2);
            self.buffer.push((merged, merged_first, merged_last));
        }
    }

    /// Recomputes the buffer's counters after replay or after rows left it (a
    /// seal); the age of what remains counts from now.
    fn recount_buffer(&mut self) {
        self.buffered_rows = self.buffer.iter().map(|(b, _, _)| b.num_rows()).sum();
        self.buffered_bytes = self.buffer.iter().map(|(b, _, _)| b.get_array_memory_size()).sum();
        self.oldest_buffered_at = (self.buffered_rows > 0).then(Instant::now);
    }
}

enum WalCommand {
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

#[derive(Debug)]
struct Shared {
    config: StorageConfig,
    wal_dir: PathBuf,
    segments: Arc<SegmentStore>,
    state: Mutex<State>,
    /// Ids stored within the idempotency window; only the WAL writer adds to it.
    recent_ids: Mutex<RecentIds>,
    /// Wakes the sealer early (buffer over its row trigger, or shutdown).
    seal_wakeup: Condvar,
    /// One seal at a time, whether from the sealer thread or `seal_now`.
    seal_lock: Mutex<()>,
    /// One merge at a time. Held for the whole merge; the seal lock only
    /// while the merge is published, so seals go on during a long merge.
    compaction_lock: Mutex<()>,
    faults: Arc<Faults>,
    /// The sealer and compactor threads, joined at shutdown.
    background_threads: Mutex<Vec<thread::JoinHandle<()>>>,
    /// What keeps storage from working as it should right now.
    problems: Mutex<Problems>,
}

/// Conditions that `/healthz` reports as degraded, each with its error.
#[derive(Debug, Default, Clone)]
struct Problems {
    /// A failed WAL fsync: no writes until restart.
    wal_poisoned: Option<String>,
    /// The last WAL write found the disk full (cleared by the next write).
    disk_full: Option<String>,
    /// The last seal failed (cleared by the next seal that works).
    sealing: Option<String>,
    /// The last checkpoint failed (cleared by the next that works).
    checkpointing: Option<String>,
}

/// The storage engine of one data directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Storage {
    shared: Arc<Shared>,
    wal_tx: mpsc::Sender<WalCommand>,
    _lock: Arc<File>,
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
    /// Opens (creating if needed) a data directory, recovering its state:
    /// unpublished segment files are deleted, the WAL is replayed past the last
    /// sealed seq, and a torn WAL tail is truncated.
    pub fn open(config: StorageConfig) -> Result<Storage, StorageError> {
        Self::open_with_faults(config, Arc::default())
    }

    /// [`Storage::open`] with a fault plan the caller (a test) controls.
    pub fn open_with_faults(mut config: StorageConfig, faults: Arc<Faults>) -> Result<Storage, StorageError> {
        fs::create_dir_all(&config.data_dir).map_err(|e| StorageError::io(&config.data_dir, e))?;
        // Absolute, because segment paths are handed to the query engine as
        // object-store locations rooted at `/`.
        config.data_dir = fs::canonicalize(&config.data_dir).map_err(|e| StorageError::io(&config.data_dir, e))?;
        let data_dir = config.data_dir.clone();
        let wal_dir = data_dir.join("wal");
        fs::create_dir_all(&wal_dir).map_err(|e| StorageError::io(&wal_dir, e))?;
        let lock = super::lock_data_dir(&data_dir)?;

        let segments = Arc::new(SegmentStore::open(&data_dir, config.segments_url.as_deref(), Arc::clone(&faults))?);
        let manifest = Manifest::load(&segments)?;
        remove_unpublished_segments(&segments, &manifest)?;
        let recovered = replay_wal(&wal_dir, manifest.sealed_seq)?;
        let last_seq = recovered.batches.last().map_or(manifest.sealed_seq, |b| b.last_seq().max(manifest.sealed_seq));
        let writer = match recovered.newest {
            Some((first_seq, path, valid_len)) if first_seq == last_seq + 1 || valid_len > wal::HEADER_BYTES => {
                WalWriter::reopen(&path, first_seq, valid_len, Arc::clone(&faults))?
            }
            _ => {
                // No WAL yet, or empty files named for seqs a bulk load reserved
                // but never published. Files past `last_seq` hold no records
                // (replay would have raised `last_seq`): start afresh after it.
                for (first_seq, path) in wal::list_files(&wal_dir)? {
                    if first_seq > last_seq {
                        fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
                    }
                }
                WalWriter::create(&wal_dir, last_seq + 1, Arc::clone(&faults))?
            }
        };

        let mut state = State {
            segments: Arc::new(manifest.segments.iter().map(|m| LiveSegment::new(m.clone(), &segments)).collect()),
            sealed_seq: manifest.sealed_seq,
            buffer: Vec::new(),
            buffered_rows: 0,
            buffered_bytes: 0,
            oldest_buffered_at: None,
            last_seq,
            shutting_down: false,
            merge_barrier: 0,
        };
        // Merged as appends are: a WAL of one-event records (every statement's
        // self-audit record is one) would otherwise leave every query after a
        // restart scanning hundreds of one-row batches until the next seal.
        for b in &recovered.batches {
            state.push_buffered(&with_seq(b.batch.clone(), b.first_seq), b.first_seq, b.last_seq());
        }
        state.recount_buffer();
        let recent_ids =
            recall_recent_ids(&segments, &state, config.idempotency_window_ms, config.max_idempotency_keys)?;
        info!(
            remembered_ids = recent_ids.len(),
            window_ms = config.idempotency_window_ms,
            "idempotency window rebuilt"
        );
        info!(
            data_dir = %data_dir.display(),
            segments_at = segments.display(),
            segments = manifest.segments.len(),
            sealed_seq = manifest.sealed_seq,
            replayed_rows = state.buffered_rows,
            last_seq,
            "storage opened"
        );
        let shared = Arc::new(Shared {
            wal_dir,
            segments,
            state: Mutex::new(state),
            recent_ids: Mutex::new(recent_ids),
            seal_wakeup: Condvar::new(),
            seal_lock: Mutex::new(()),
            compaction_lock: Mutex::new(()),
            faults,
            background_threads: Mutex::new(Vec::new()),
            problems: Mutex::new(Problems::default()),
            config,
        });

        let (wal_tx, wal_rx) = mpsc::channel(WAL_QUEUE_REQUESTS);
        let writer_shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("auditlake-wal".into())
            .spawn(move || run_wal_writer(writer_shared, writer, last_seq + 1, wal_rx))
            .map_err(|e| StorageError::io(Path::new("<wal thread>"), e))?;
        let storage = Storage { shared, wal_tx, _lock: Arc::new(lock) };
        // Ranges sealed before a witness was given, or whose checkpoint was
        // lost to a crash, are caught up with before anything new is sealed.
        if manifest.sealed_seq > 0 {
            let _one_manifest_writer = storage.shared.seal_lock.lock().expect("seal lock poisoned");
            storage.witness_seal(manifest.sealed_seq, None);
        }
        for (name, run) in
            [("auditlake-sealer", Storage::run_sealer as fn(Storage)), ("auditlake-compactor", Storage::run_compactor)]
        {
            let background = storage.clone();
            let handle = thread::Builder::new()
                .name(name.into())
                .spawn(move || run(background))
                .map_err(|e| StorageError::io(Path::new(name), e))?;
            storage.shared.background_threads.lock().expect("thread list lock poisoned").push(handle);
        }
        Ok(storage)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("storage state lock poisoned")
    }

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

    /// A consistent view of segments plus buffer for one query.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.state();
        Snapshot {
            segments: Arc::clone(&state.segments),
            buffer: state.buffer.iter().map(|(b, _, _)| b.clone()).collect(),
        }
    }

    pub fn stats(&self) -> StorageStats {
        let state = self.state();
        StorageStats {
            last_seq: state.last_seq,
            sealed_seq: state.sealed_seq,
            buffered_rows: state.buffered_rows,
            buffered_bytes: state.buffered_bytes,
            segments: state.segments.len(),
            segment_bytes: state.segments.iter().map(|s| s.meta.size_bytes).sum(),
            segment_rows: state.segments.iter().map(|s| s.meta.rows).sum(),
            compacting: self.shared.compaction_lock.try_lock().is_err()
                || compaction::plan(
                    &state.segments.iter().map(|s| s.meta.rows).collect::<Vec<_>>(),
                    self.shared.config.compaction,
                )
                .is_some(),
        }
    }

    /// Where segments and the manifest live; queries register it with DataFusion.
    pub fn segment_store(&self) -> &Arc<SegmentStore> {
        &self.shared.segments
    }

    pub fn data_dir(&self) -> &Path {
        &self.shared.config.data_dir
    }

    /// Seals everything buffered right now into one segment. Returns the new
    /// segment, or `None` when the buffer was empty.
    pub fn seal_now(&self) -> Result<Option<SegmentMeta>, StorageError> {
        let _one_seal_at_a_time = self.shared.seal_lock.lock().expect("seal lock poisoned");
        let sealed = self.seal_locked();
        self.problems().sealing = sealed.as_ref().err().map(ToString::to_string);
        sealed
    }

    fn problems(&self) -> std::sync::MutexGuard<'_, Problems> {
        self.shared.problems.lock().expect("problems lock poisoned")
    }

    /// Why storage is not working as it should, if it is not: a poisoned
    /// WAL, a full disk, failing seals or checkpoints. Empty when all is well.
    pub fn health(&self) -> Vec<String> {
        let Problems { wal_poisoned, disk_full, sealing, checkpointing } = self.problems().clone();
        let mut reasons = Vec::new();
        reasons.extend(
            wal_poisoned.map(|e| format!("the write-ahead log failed ({e}); no events are accepted until restart")),
        );
        reasons.extend(disk_full.map(|e| format!("the disk is full ({e}); events are refused until space returns")));
        reasons.extend(sealing.map(|e| format!("sealing fails ({e}); events wait in the buffer and the WAL")));
        reasons.extend(
            checkpointing.map(|e| format!("checkpointing fails ({e}); sealed events are stored but not signed")),
        );
        reasons
    }

    /// Asks the WAL thread to switch files (after reserving `reserve` seqs).
    fn rotate_wal(&self, reserve: u64) -> Result<Seq, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.wal_tx.blocking_send(WalCommand::Rotate { reserve, reply }).map_err(|_| StorageError::ShutDown)?;
        answer.blocking_recv().map_err(|_| StorageError::ShutDown)?
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
    fn witness_seal(&self, sealed_seq: Seq, fresh: Option<(Seq, &[RecordBatch])>) {
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
    fn publish(&self, segments: &[Arc<LiveSegment>], sealed_seq: Seq, new_file: &str) -> Result<(), StorageError> {
        debug_assert!(
            segments.windows(2).all(|w| w[0].meta.max_seq + 1 == w[1].meta.min_seq),
            "segments cover the log in order without gaps or overlaps"
        );
        let manifest = Manifest::new(sealed_seq, segments.iter().map(|s| s.meta.clone()).collect());
        let published = self.shared.segments.sync_segments().and_then(|()| manifest.store(&self.shared.segments));
        if published.is_err() {
            let _ = self.shared.segments.delete_segment(new_file);
        }
        published
    }

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
        let written = store.create_segment(&file).and_then(|mut writer| {
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

    /// Loads events straight into segments, without the WAL: the bulk path
    /// for imports and generated data, whose source can be read again. Each
    /// chunk becomes one segment, published (durable) before the next is
    /// written. Seqs are reserved from the WAL thread, so appends that arrive
    /// meanwhile get later seqs; they wait in the buffer, since sealing waits
    /// for the load. Returns the first and last seq loaded.
    ///
    /// Each chunk is one or more Arrow batches of the `audit_events` schema
    /// (see [`model::BatchBuilder`]); their `seq` column is overwritten here,
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

    fn run_sealer(self) {
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

    /// The compactor thread: merges runs of small segments, one after the
    /// other, on its own thread so that a long merge never delays a seal.
    fn run_compactor(self) {
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

    /// Stops the sealer and compactor threads and waits for them (so that the
    /// directory lock is released once the last handle is dropped). Buffered
    /// events stay safe in the WAL.
    pub fn shutdown(&self) {
        self.state().shutting_down = true;
        self.shared.seal_wakeup.notify_all();
        let handles = std::mem::take(&mut *self.shared.background_threads.lock().expect("thread list lock poisoned"));
        for handle in handles {
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// Deletes segment files the manifest does not name (a crash during sealing
/// or compaction) and checks that every named one exists.
fn remove_unpublished_segments(store: &SegmentStore, manifest: &Manifest) -> Result<(), StorageError> {
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

struct Replayed {
    /// Batches above the sealed seq, ascending and contiguous.
    batches: Vec<WalBatch>,
    /// The newest WAL file: first seq, path, and length of its valid prefix.
    newest: Option<(Seq, PathBuf, u64)>,
}

fn replay_wal(wal_dir: &Path, sealed_seq: Seq) -> Result<Replayed, StorageError> {
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

/// The WAL writer thread: group commit. See the module docs.
fn run_wal_writer(shared: Arc<Shared>, mut writer: WalWriter, mut next_seq: Seq, mut rx: mpsc::Receiver<WalCommand>) {
    let mut poisoned: Option<String> = None;
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
                    if let Some(reason) = &poisoned {
                        let _ = reply.send(Err(StorageError::WalPoisoned(reason.clone())));
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
                    let error = match failure {
                        // A failed write was cut away again (see WalWriter::append):
                        // the file still ends with the last acknowledged record, so
                        // the next group can try again (e.g. once the disk has space).
                        WalFailure::Write(e) if !writer.is_broken() => {
                            warn!(error = %e, "WAL write failed; batch refused");
                            e
                        }
                        // After a failed fsync the kernel may have dropped dirty pages
                        // and marked them clean: a later fsync that succeeds would not
                        // prove earlier records reached the disk. The file is done for,
                        // and so is writing until a restart recovers from what is on disk.
                        WalFailure::Write(e) | WalFailure::Sync(e) => {
                            error!(error = %e, file = %writer.path().display(), "WAL fsync failed; refusing writes until restart");
                            let reason = e.to_string();
                            poisoned = Some(reason.clone());
                            StorageError::WalPoisoned(reason)
                        }
                    };
                    let reason = error.to_string();
                    let full = matches!(&error, StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull);
                    {
                        let mut problems = shared.problems.lock().expect("problems lock poisoned");
                        problems.wal_poisoned = poisoned.clone();
                        problems.disk_full = full.then(|| reason.clone());
                    }
                    for append in appended {
                        let _ = append.reply.send(Err(if full {
                            StorageError::DiskFull(reason.clone())
                        } else if poisoned.is_some() {
                            StorageError::WalPoisoned(reason.clone())
                        } else {
                            StorageError::WalWrite(reason.clone())
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
            let result = if let Some(reason) = &poisoned {
                Err(StorageError::WalPoisoned(reason.clone()))
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

/// Rebuilds the idempotency window at start-up: the ids of buffered events,
/// and of events in segments that may hold some received within the window.
fn recall_recent_ids(
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

/// Which step of a group commit failed.
enum WalFailure {
    Write(StorageError),
    Sync(StorageError),
}

/// The rows of `batch` (segment schema) that `expiry` lets go.
/// Whether a segment may hold events `expiry` removes: it may hold the
/// organisation (its range of org ids and, where listed, its organisations:
/// a segment retention already emptied of it is not copied again at every
/// pass) and its oldest event is older than the cutoff.
fn may_hold_expired(meta: &SegmentMeta, expiry: &Expiry) -> bool {
    meta.may_hold_org(&expiry.org) && meta.min_time_us < expiry.before_us
}

fn expired_rows(batch: &RecordBatch, expiry: &Expiry) -> BooleanArray {
    let orgs = batch.column_by_name("org_id").expect("org_id column").as_string::<i32>();
    let times = batch.column_by_name("time").expect("time column").as_primitive::<TimestampMicrosecondType>();
    (0..batch.num_rows())
        .map(|row| Some(orgs.value(row) == expiry.org && times.value(row) < expiry.before_us))
        .collect()
}

/// Stamps seqs `first_seq..` into a batch built with placeholder seqs.
fn with_seq(batch: RecordBatch, first_seq: Seq) -> RecordBatch {
    let mut columns = batch.columns().to_vec();
    let first = first_seq as i64;
    let seq = Int64Array::from_iter_values((0..batch.num_rows() as i64).map(|i| first + i));
    let at = batch.schema().index_of("seq").expect("a seq column");
    columns[at] = Arc::new(seq);
    RecordBatch::try_new(batch.schema(), columns).expect("same schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> Event {
        Event {
            time_us: 1_795_000_000_000_000 + i as i64,
            id: format!("e{i}"),
            org_id: if i.is_multiple_of(2) { "acme" } else { "globex" }.into(),
            actor_id: format!("u{}", i % 3),
            action: "confluence.page.viewed".into(),
            ..Event::default()
        }
    }

    fn config(dir: &Path) -> StorageConfig {
        StorageConfig { seal_after_ms: 3_600_000, ..StorageConfig::new(dir) }
    }

    fn rows(snapshot: &Snapshot) -> usize {
        snapshot.buffer.iter().map(|b| b.num_rows()).sum::<usize>()
            + snapshot.segments.iter().map(|s| s.meta.rows as usize).sum::<usize>()
    }

    async fn append_n(storage: &Storage, from: usize, n: usize) -> (Seq, Seq) {
        let appended = storage.append((from..from + n).map(event).collect()).await.unwrap();
        assert_eq!(appended.duplicates, 0);
        appended.seqs.expect("new events")
    }

    /// A gap in the WAL's sequence numbers is named by file and by the byte
    /// offset of the record where it shows, for whoever opens the file.
    #[test]
    fn a_sequence_gap_names_the_record_where_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        fs::create_dir_all(&wal_dir).unwrap();
        let mut writer = WalWriter::create(&wal_dir, 1, Arc::default()).unwrap();
        let mut gap_at = wal::HEADER_BYTES;
        for (i, (first_seq, n)) in [(1, 2), (3, 1), (5, 2)].into_iter().enumerate() {
            let batch = model::events_to_batch(&(0..n).map(event).collect::<Vec<_>>(), 0);
            let mut framed = Vec::new();
            wal::encode_record(first_seq, &wal::encode_batch(&batch), &mut framed);
            writer.append(&framed).unwrap();
            if i < 2 {
                gap_at += framed.len() as u64;
            }
        }
        writer.sync().unwrap();
        match Storage::open(config(dir.path())) {
            Err(StorageError::CorruptWal { file, offset, reason }) => {
                assert_eq!(file, wal::file_path(&wal_dir, 1));
                assert_eq!(offset, gap_at, "{reason}");
                assert!(reason.contains("expected seq 4, found 5"), "{reason}");
            }
            other => panic!("expected a corrupt WAL, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn appends_are_visible_sealed_and_recovered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(config(dir.path())).unwrap();
            assert_eq!(append_n(&storage, 0, 3).await, (1, 3));
            assert_eq!(append_n(&storage, 3, 2).await, (4, 5));
            assert_eq!(rows(&storage.snapshot()), 5);
            let s = storage.clone();
            let meta = tokio::task::spawn_blocking(move || s.seal_now()).await.unwrap().unwrap().unwrap();
            assert_eq!((meta.min_seq, meta.max_seq, meta.rows), (1, 5, 5));
            assert_eq!((meta.min_org_id.as_str(), meta.max_org_id.as_str()), ("acme", "globex"));
            assert_eq!(append_n(&storage, 5, 4).await, (6, 9));
            let snapshot = storage.snapshot();
            assert_eq!((snapshot.segments.len(), rows(&snapshot)), (1, 9));
            storage.shutdown();
        }
        let storage = Storage::open(config(dir.path())).unwrap();
        let stats = storage.stats();
        assert_eq!((stats.sealed_seq, stats.last_seq, stats.buffered_rows), (5, 9, 4));
        assert_eq!(append_n(&storage, 9, 1).await, (10, 10));
        // Only the WAL file written after the seal remains.
        assert_eq!(wal::list_files(&dir.path().join("wal")).unwrap().len(), 1);
    }

    /// Events `range`, received `age_ms` ago.
    fn received(range: std::ops::Range<usize>, age_ms: i64) -> Vec<Event> {
        let at = chrono::Utc::now().timestamp_micros() - age_ms * 1_000;
        range.map(|i| Event { received_at_us: at, ..event(i) }).collect()
    }

    #[tokio::test]
    async fn a_retried_batch_is_stored_once_across_sealing_and_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(config(dir.path())).unwrap();
            let stored = |seqs| Appended { seqs: Some(seqs), duplicates: 0 };
            assert_eq!(storage.append(received(0..10, 0)).await.unwrap(), stored((1, 10)));
            assert_eq!(storage.append(received(0..10, 0)).await.unwrap(), Appended { seqs: None, duplicates: 10 });
            // Five new, five stored already, and one line repeating another.
            let mut overlapping = received(5..15, 0);
            overlapping.push(overlapping[7].clone());
            assert_eq!(storage.append(overlapping).await.unwrap(), Appended { seqs: Some((11, 15)), duplicates: 6 });
            // The same id in another organisation is another event.
            let elsewhere = Event { org_id: "initech".into(), ..received(0..1, 0).remove(0) };
            assert_eq!(storage.append(vec![elsewhere]).await.unwrap(), stored((16, 16)));

            seal(&storage).expect("a segment");
            assert_eq!(storage.append(received(0..15, 0)).await.unwrap().duplicates, 15, "sealed ids are remembered");
            assert_eq!(storage.append(received(15..20, 0)).await.unwrap(), stored((17, 21)));
            // Shutdown seals nothing: the WAL and the manifest are all the next start has.
            storage.shutdown();
        }
        let storage = Storage::open(config(dir.path())).unwrap();
        assert_eq!(storage.stats().sealed_seq, 16);
        let retried = storage.append(received(0..25, 0)).await.unwrap();
        assert_eq!(retried, Appended { seqs: Some((22, 26)), duplicates: 20 }, "segment and WAL ids recalled");
        assert_eq!(rows(&storage.snapshot()), 26);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_retries_store_a_batch_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(config(dir.path())).unwrap();
        let tries: Vec<_> = (0..8)
            .map(|_| {
                let storage = storage.clone();
                tokio::spawn(async move { storage.append(received(0..100, 0)).await.unwrap() })
            })
            .collect();
        let mut duplicates = 0;
        for attempt in tries {
            duplicates += attempt.await.unwrap().duplicates;
        }
        assert_eq!(duplicates, 700);
        assert_eq!(rows(&storage.snapshot()), 100);
    }

    #[tokio::test]
    async fn ids_older_than_the_window_are_not_recalled_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig { idempotency_window_ms: 3_600_000, ..config(dir.path()) };
        {
            let storage = Storage::open(config.clone()).unwrap();
            storage.append(received(0..3, 2 * 3_600_000)).await.unwrap();
            storage.append(received(3..6, 0)).await.unwrap();
            storage.shutdown();
        }
        let storage = Storage::open(config).unwrap();
        let again = storage.append(received(0..6, 0)).await.unwrap();
        assert_eq!(again, Appended { seqs: Some((7, 9)), duplicates: 3 }, "only the recent three are remembered");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_appends_share_buffer_batches_and_seals_taken_meanwhile_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(config(dir.path())).unwrap();
        for i in 0..200 {
            append_n(&storage, i, 1).await;
        }
        let snapshot = storage.snapshot();
        let sizes = |snapshot: &Snapshot| snapshot.buffer.iter().map(|b| b.num_rows()).collect::<Vec<_>>();
        assert_eq!(sizes(&snapshot), [128, 64, 8], "200 one-event appends, merged as a binary counter carries");
        // And so after a restart, replayed from 200 WAL records.
        storage.shutdown();
        drop((snapshot, storage));
        let storage = Storage::open(config(dir.path())).unwrap();
        let snapshot = storage.snapshot();
        assert_eq!(sizes(&snapshot), [128, 64, 8], "replayed into the same batches");
        let seqs: Vec<i64> = {
            use datafusion::arrow::datatypes::Int64Type;
            let seq = |b: &RecordBatch| b.column_by_name("seq").unwrap().as_primitive::<Int64Type>().values().to_vec();
            snapshot.buffer.iter().flat_map(seq).collect()
        };
        assert_eq!(seqs, (1..=200).collect::<Vec<i64>>());

        // One-event appends from many tasks while seals run: every seq once.
        let appends: Vec<_> = (0..400)
            .map(|i| {
                let s = storage.clone();
                tokio::spawn(async move { append_n(&s, 200 + i, 1).await })
            })
            .collect();
        let sealer = storage.clone();
        let seals = tokio::task::spawn_blocking(move || {
            for _ in 0..20 {
                sealer.seal_now().unwrap();
            }
        });
        for append in appends {
            append.await.unwrap();
        }
        seals.await.unwrap();
        let s = storage.clone();
        tokio::task::spawn_blocking(move || s.seal_now()).await.unwrap().unwrap();
        let snapshot = storage.snapshot();
        assert_eq!(rows(&snapshot), 600);
        let covered: u64 = snapshot.segments.iter().map(|s| s.meta.max_seq - s.meta.min_seq + 1).sum();
        assert_eq!(covered, 600, "segments cover every seq once");
        assert_eq!(snapshot.segments.iter().map(|s| s.meta.rows).sum::<u64>(), 600);
    }

    #[tokio::test]
    async fn concurrent_appends_get_distinct_contiguous_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(config(dir.path())).unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let s = storage.clone();
                tokio::spawn(async move { append_n(&s, i * 10, 10).await })
            })
            .collect();
        let mut ranges = Vec::new();
        for t in tasks {
            ranges.push(t.await.unwrap());
        }
        ranges.sort();
        for (i, (first, last)) in ranges.iter().enumerate() {
            assert_eq!((*first, *last), (i as Seq * 10 + 1, i as Seq * 10 + 10));
        }
    }

    #[tokio::test]
    async fn half_written_segment_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(config(dir.path())).unwrap();
            append_n(&storage, 0, 5).await;
            storage.shutdown();
        }
        let debris = dir.path().join("segments").join("00000000000000000001-00000000000000000005.parquet");
        fs::write(&debris, b"PAR1 half a segment").unwrap();
        let storage = Storage::open(config(dir.path())).unwrap();
        assert!(!debris.exists(), "unpublished segment file is removed");
        assert_eq!(rows(&storage.snapshot()), 5, "its events come back from the WAL");
    }

    #[tokio::test]
    async fn corrupt_wal_record_before_the_tail_stops_startup() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(config(dir.path())).unwrap();
            append_n(&storage, 0, 5).await;
            append_n(&storage, 5, 5).await;
            storage.shutdown();
        }
        let (_, path) = wal::list_files(&dir.path().join("wal")).unwrap().remove(0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[30] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = Storage::open(config(dir.path())).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("offset 8"), "{err}");
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_and_writing_resumes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(config(dir.path())).unwrap();
            append_n(&storage, 0, 5).await;
            append_n(&storage, 5, 5).await;
            storage.shutdown();
        }
        let (_, path) = wal::list_files(&dir.path().join("wal")).unwrap().remove(0);
        let len = fs::metadata(&path).unwrap().len();
        File::options().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        {
            let storage = Storage::open(config(dir.path())).unwrap();
            assert_eq!(storage.stats().last_seq, 5, "the torn second batch was never acknowledged");
            assert_eq!(append_n(&storage, 5, 2).await, (6, 7));
            storage.shutdown();
        }
        let storage = Storage::open(config(dir.path())).unwrap();
        assert_eq!(rows(&storage.snapshot()), 7);
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Storage::open(config(dir.path())).unwrap();
        assert!(matches!(Storage::open(config(dir.path())), Err(StorageError::Locked { .. })));
    }

    fn seal(storage: &Storage) -> Option<SegmentMeta> {
        let s = storage.clone();
        std::thread::spawn(move || s.seal_now()).join().unwrap().unwrap()
    }

    fn compact(storage: &Storage) -> Result<Option<SegmentMeta>, StorageError> {
        let s = storage.clone();
        std::thread::spawn(move || s.compact_now()).join().unwrap()
    }

    fn segment_files(dir: &Path) -> usize {
        fs::read_dir(dir.join("segments")).unwrap().count()
    }

    /// Appends `n` batches of ten events, sealing each into its own segment.
    async fn small_segments(storage: &Storage, n: usize) {
        for i in 0..n {
            append_n(storage, i * 10, 10).await;
            seal(storage);
        }
    }

    fn compacting(dir: &Path) -> StorageConfig {
        StorageConfig { compaction: CompactionPolicy { target_rows: 1_000, min_inputs: 3 }, ..config(dir) }
    }

    #[tokio::test]
    async fn compaction_merges_small_segments_sorted_and_keeps_every_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(compacting(dir.path())).unwrap();
        small_segments(&storage, 6).await;
        append_n(&storage, 60, 5).await; // stays buffered
        assert_eq!(compact(&storage).unwrap().map(|m| (m.min_seq, m.max_seq, m.rows)), Some((1, 60, 60)));
        assert_eq!(compact(&storage).unwrap(), None, "one segment left: nothing to merge");
        assert_eq!(segment_files(dir.path()), 1, "inputs are deleted once nobody reads them");
        let snapshot = storage.snapshot();
        assert_eq!((snapshot.segments.len(), rows(&snapshot)), (1, 65));

        let file = File::open(snapshot.segments[0].local_path().unwrap()).unwrap();
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024).unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        let all =
            datafusion::arrow::compute::concat_batches(&crate::storage::packed::segment_schema(), &batches).unwrap();
        let text = |name| datafusion::arrow::array::AsArray::as_string::<i32>(all.column_by_name(name).unwrap());
        let (orgs, actors) = (text("org_id"), text("actor_id"));
        let times = datafusion::arrow::array::AsArray::as_primitive::<
            datafusion::arrow::datatypes::TimestampMicrosecondType,
        >(all.column_by_name("time").unwrap());
        let keys: Vec<(&str, &str, i64)> =
            (0..all.num_rows()).map(|i| (orgs.value(i), actors.value(i), times.value(i))).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "merged segment is sorted by (org_id, actor_id, time)");
        let mut ids: Vec<String> =
            datafusion::arrow::array::AsArray::as_string::<i32>(all.column_by_name("id_text").unwrap())
                .iter()
                .map(|s| s.unwrap().to_owned())
                .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 60);
        drop(snapshot);
        storage.shutdown();
        drop(storage);
        let storage = Storage::open(compacting(dir.path())).unwrap();
        assert_eq!((storage.stats().segments, storage.stats().sealed_seq, rows(&storage.snapshot())), (1, 60, 65));
    }

    #[tokio::test]
    async fn a_reader_keeps_retired_segments_until_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(compacting(dir.path())).unwrap();
        small_segments(&storage, 3).await;
        let reader = storage.snapshot();
        compact(&storage).unwrap().unwrap();
        assert_eq!(segment_files(dir.path()), 4, "the reader's three files and the merged one");
        assert!(reader.segments.iter().all(|s| s.local_path().unwrap().exists()));
        drop(reader);
        assert_eq!(segment_files(dir.path()), 1);
    }

    #[tokio::test]
    async fn failed_compaction_changes_nothing() {
        for op in [crate::storage::faults::IoOp::SegmentWrite, crate::storage::faults::IoOp::ManifestWrite] {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(Faults::default());
            let storage = Storage::open_with_faults(compacting(dir.path()), Arc::clone(&faults)).unwrap();
            small_segments(&storage, 3).await;
            faults.inject(op, crate::storage::faults::FaultKind::Eio, Some(1));
            assert!(compact(&storage).is_err(), "{op:?}");
            assert_eq!((storage.stats().segments, segment_files(dir.path())), (3, 3), "{op:?}");
            assert_eq!(compact(&storage).unwrap().map(|m| m.rows), Some(30), "{op:?}: retried");
            storage.shutdown();
            drop(storage);
            let storage = Storage::open(compacting(dir.path())).unwrap();
            assert_eq!((storage.stats().segments, rows(&storage.snapshot())), (1, 30), "{op:?}");
        }
    }

    #[tokio::test]
    async fn bulk_load_writes_segments_after_what_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(config(dir.path())).unwrap();
            append_n(&storage, 0, 5).await;
            let loader = storage.clone();
            let chunk = |ids: std::ops::Range<usize>| model::events_to_batch(&ids.map(event).collect::<Vec<_>>(), 0);
            let chunks = vec![vec![chunk(100..110)], vec![chunk(0..0)], vec![chunk(110..120), chunk(120..130)]];
            let loaded = std::thread::spawn(move || loader.bulk_load(chunks.into_iter())).join().unwrap().unwrap();
            assert_eq!(loaded, Some((6, 35)));
            assert_eq!(append_n(&storage, 200, 2).await, (36, 37));
            let stats = storage.stats();
            assert_eq!(
                (stats.segments, stats.sealed_seq, stats.buffered_rows, rows(&storage.snapshot())),
                (3, 35, 2, 37)
            );
            storage.shutdown();
        }
        let storage = Storage::open(config(dir.path())).unwrap();
        let stats = storage.stats();
        assert_eq!((stats.segments, stats.sealed_seq, stats.last_seq, rows(&storage.snapshot())), (3, 35, 37, 37));
        assert_eq!(wal::list_files(&dir.path().join("wal")).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn seqs_reserved_by_an_unfinished_bulk_load_are_given_out_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(config(dir.path())).unwrap();
            append_n(&storage, 0, 5).await;
            let s = storage.clone();
            std::thread::spawn(move || {
                s.seal_now().unwrap();
                s.rotate_wal(1_000).unwrap() // then "crash" before any segment is published
            })
            .join()
            .unwrap();
            storage.shutdown();
        }
        let storage = Storage::open(config(dir.path())).unwrap();
        assert_eq!(append_n(&storage, 5, 1).await, (6, 6));
        storage.shutdown();
        drop(storage);
        let storage = Storage::open(config(dir.path())).unwrap();
        assert_eq!((storage.stats().last_seq, rows(&storage.snapshot())), (6, 6));
    }

    #[allow(clippy::single_range_in_vec_init)] // id ranges read best as `&[0..5]`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_leaves_segments_that_say_what_they_hold_and_merges_them_after() {
        let dir = tempfile::tempdir().unwrap();
        let compaction = CompactionPolicy { target_rows: 1_000, min_inputs: 2 };
        let storage = Storage::open(StorageConfig { compaction, ..config(dir.path()) }).unwrap();
        // Two segments of acme and globex (events alternate), ten each.
        for from in [0, 10] {
            append_n(&storage, from, 10).await;
            let sealer = storage.clone();
            tokio::task::spawn_blocking(move || sealer.seal_now().unwrap()).await.unwrap();
        }
        let cutoff = event(0).time_us + 4;
        let expiry = Expiry { org: "acme".into(), before_us: cutoff };
        let expirer = storage.clone();
        let removed = tokio::task::spawn_blocking(move || expirer.expire(&[expiry])).await.unwrap().unwrap();
        assert_eq!(removed, 2, "acme's events 0 and 2");
        let first = storage.snapshot().segments[0].meta.clone();
        assert_eq!((first.rows, first.min_time_us), (8, event(1).time_us), "the oldest row left");
        assert_eq!(first.orgs, Some(vec![("acme".to_string(), 3), ("globex".to_string(), 5)]));
        // Merging a thinned segment with its neighbour keeps every row left.
        let merger = storage.clone();
        tokio::task::spawn_blocking(move || merger.compact_now().unwrap()).await.unwrap();
        assert_eq!((storage.stats().segments, storage.stats().segment_rows), (1, 18));
        storage.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_segment_emptied_of_an_organisation_is_not_copied_again_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(config(dir.path())).unwrap();
        // acme, beta and globex in one segment: beta lies inside the range
        // of org ids whatever retention removes of it.
        let orgs = ["acme", "beta", "globex"];
        let events: Vec<Event> = (0..9).map(|i| Event { org_id: orgs[i % 3].into(), ..event(i) }).collect();
        storage.append(events).await.unwrap();
        let sealer = storage.clone();
        tokio::task::spawn_blocking(move || sealer.seal_now().unwrap()).await.unwrap();
        let expiry = Expiry { org: "beta".into(), before_us: event(100).time_us };
        let expirer = storage.clone();
        let first = expiry.clone();
        let removed = tokio::task::spawn_blocking(move || expirer.expire(&[first])).await.unwrap().unwrap();
        assert_eq!(removed, 3);
        let segments = storage.snapshot().segments.clone();
        let meta = &segments[0].meta;
        assert_eq!((meta.min_org_id.as_str(), meta.max_org_id.as_str()), ("acme", "globex"));
        assert!(meta.min_time_us < expiry.before_us, "acme's and globex's old events keep it old");
        assert!(!may_hold_expired(meta, &expiry), "the next pass leaves it alone");
        storage.shutdown();
    }

    /// The ids stored in `storage`'s segments, each once, or a panic.
    fn sealed_ids(storage: &Storage) -> std::collections::BTreeSet<String> {
        let mut ids = std::collections::BTreeSet::new();
        for segment in storage.snapshot().segments.iter() {
            let scan = segment.scan_columns(&["id_text"]).unwrap(); // the ids here are not UUIDs
            segment::for_each_batch(storage.segment_store(), scan, |batch| {
                for id in batch.column(0).as_string::<i32>().iter().flatten() {
                    assert!(ids.insert(id.to_owned()), "{id} stored twice");
                }
                Ok(())
            })
            .unwrap();
        }
        ids
    }

    #[test]
    fn retention_while_segments_are_sealed_and_merged_removes_exactly_what_expired() {
        const BATCHES: usize = 24;
        const PER_BATCH: usize = 50;
        let dir = tempfile::tempdir().unwrap();
        let compaction = CompactionPolicy { target_rows: 400, min_inputs: 2 };
        let storage = Storage::open(StorageConfig { compaction, ..config(dir.path()) }).unwrap();
        // acme's events before the cutoff (the first half) expire.
        let cutoff = event(BATCHES * PER_BATCH / 2).time_us;
        let expiry = Expiry { org: "acme".into(), before_us: cutoff };
        let writing = std::sync::atomic::AtomicBool::new(true);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let removed = std::thread::scope(|s| {
            s.spawn(|| {
                for batch in 0..BATCHES {
                    runtime.block_on(append_n(&storage, batch * PER_BATCH, PER_BATCH));
                    storage.seal_now().unwrap();
                }
                writing.store(false, std::sync::atomic::Ordering::SeqCst);
            });
            s.spawn(|| {
                while writing.load(std::sync::atomic::Ordering::SeqCst) {
                    storage.compact_now().unwrap();
                }
            });
            let expirer = s.spawn(|| {
                let mut removed = 0;
                while writing.load(std::sync::atomic::Ordering::SeqCst) {
                    removed += storage.expire(std::slice::from_ref(&expiry)).unwrap();
                }
                removed
            });
            expirer.join().unwrap()
        });
        let removed = removed + storage.expire(std::slice::from_ref(&expiry)).unwrap();
        storage.compact_now().unwrap();

        let expected: std::collections::BTreeSet<String> = (0..BATCHES * PER_BATCH)
            .filter(|i| !(i % 2 == 0 && event(*i).time_us < cutoff))
            .map(|i| format!("e{i}"))
            .collect();
        assert_eq!(removed as usize, BATCHES * PER_BATCH / 4, "each expired event removed once");
        assert_eq!(sealed_ids(&storage), expected);
        let files = |storage: &Storage| storage.snapshot().segments.iter().map(|s| s.meta.file.clone()).collect();
        let before: Vec<String> = files(&storage);
        assert_eq!(storage.expire(std::slice::from_ref(&expiry)).unwrap(), 0);
        assert_eq!(files(&storage), before, "no segment rewritten twice for the same cutoff");
        storage.shutdown();
        drop(storage);
        // And so it stays once reopened.
        let storage = Storage::open(config(dir.path())).unwrap();
        assert_eq!(sealed_ids(&storage), expected);
        storage.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_segment_whose_organisation_rows_are_all_young_is_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(crate::storage::faults::Faults::default());
        let storage = Storage::open_with_faults(config(dir.path()), Arc::clone(&faults)).unwrap();
        // globex's events are old, acme's young: the segment is as old as
        // globex's, and lists acme.
        let events: Vec<Event> = (0..10)
            .map(|i| match i % 2 {
                0 => Event { org_id: "globex".into(), ..event(i) },
                _ => Event { org_id: "acme".into(), ..event(100 + i) },
            })
            .collect();
        storage.append(events).await.unwrap();
        let sealer = storage.clone();
        tokio::task::spawn_blocking(move || sealer.seal_now().unwrap()).await.unwrap();
        let expiry = Expiry { org: "acme".into(), before_us: event(50).time_us };
        assert!(may_hold_expired(&storage.snapshot().segments[0].meta, &expiry));
        // Any segment write now fails: an expiry that copies the segment
        // reports it.
        faults.inject(crate::storage::faults::IoOp::SegmentWrite, crate::storage::faults::FaultKind::Eio, None);
        let expirer = storage.clone();
        let removed = tokio::task::spawn_blocking(move || expirer.expire(&[expiry])).await.unwrap();
        assert_eq!(removed.unwrap(), 0, "nothing to remove, nothing copied");
        faults.clear();
        storage.shutdown();
    }

    // `expected_ids(&[0..5])` is a list of id ranges that happens to hold one.
    #[allow(clippy::single_range_in_vec_init)]
    mod faults {
        use super::*;
        use crate::storage::faults::{FaultKind, Faults, IoOp};

        fn open(dir: &Path, faults: &Arc<Faults>) -> Storage {
            Storage::open_with_faults(config(dir), Arc::clone(faults)).unwrap()
        }

        fn ids(storage: &Storage) -> Vec<String> {
            let mut ids = Vec::new();
            let snapshot = storage.snapshot();
            assert!(snapshot.segments.is_empty(), "these tests read the buffer only");
            for batch in &snapshot.buffer {
                let column = batch.column_by_name("id").unwrap();
                let strings = datafusion::arrow::array::AsArray::as_string::<i32>(column);
                ids.extend(strings.iter().map(|s| s.unwrap().to_owned()));
            }
            ids
        }

        fn expected_ids(ranges: &[std::ops::Range<usize>]) -> Vec<String> {
            ranges.iter().flat_map(|r| r.clone().map(|i| format!("e{i}"))).collect()
        }

        async fn reopen(dir: &Path, storage: Storage) -> Storage {
            storage.shutdown();
            drop(storage);
            open(dir, &Arc::default())
        }

        #[tokio::test]
        async fn a_batch_past_the_record_limit_is_refused_not_written() {
            let dir = tempfile::tempdir().unwrap();
            let config = StorageConfig { max_record_bytes: 64 * 1024, ..config(dir.path()) };
            let storage = Storage::open(config.clone()).unwrap();
            let large: Vec<Event> = (0..10)
                .map(|i| Event { attributes: Some(format!("\"{}\"", "x".repeat(10_000))), ..event(i) })
                .collect();
            let err = storage.append(large).await.unwrap_err();
            assert!(matches!(err, StorageError::RecordTooLarge { limit_bytes: 65_536, .. }), "{err}");
            assert_eq!(storage.stats().last_seq, 0, "nothing written, no seq taken");
            assert_eq!(append_n(&storage, 10, 2).await, (1, 2));
            storage.shutdown();
            drop(storage);
            // The next start reads back what was acknowledged.
            let storage = Storage::open(config).unwrap();
            assert_eq!(ids(&storage), expected_ids(&[10..12]));
        }

        #[tokio::test]
        async fn disk_full_refuses_then_recovers_when_space_returns() {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(Faults::default());
            let storage = open(dir.path(), &faults);
            assert_eq!(append_n(&storage, 0, 5).await, (1, 5));
            faults.inject(IoOp::WalWrite, FaultKind::NoSpace, None);
            for attempt in 0..3 {
                let err = storage.append((5..8).map(event).collect()).await.unwrap_err();
                assert!(matches!(err, StorageError::DiskFull(_)), "attempt {attempt}: {err}");
            }
            assert_eq!(storage.stats().last_seq, 5, "a refused batch takes no seqs");
            let health = storage.health();
            assert!(health.len() == 1 && health[0].contains("disk is full"), "{health:?}");
            faults.clear();
            assert_eq!(append_n(&storage, 8, 2).await, (6, 7), "writing resumes by itself");
            assert_eq!(storage.health(), Vec::<String>::new());
            assert_eq!(ids(&storage), expected_ids(&[0..5, 8..10]));
            let storage = reopen(dir.path(), storage).await;
            assert_eq!(ids(&storage), expected_ids(&[0..5, 8..10]));
        }

        #[tokio::test]
        async fn short_write_or_eio_is_cut_away_and_never_read_back() {
            for kind in [FaultKind::ShortWrite, FaultKind::Eio] {
                let dir = tempfile::tempdir().unwrap();
                let faults = Arc::new(Faults::default());
                let storage = open(dir.path(), &faults);
                append_n(&storage, 0, 5).await;
                faults.inject(IoOp::WalWrite, kind, Some(1));
                let err = storage.append((5..50).map(event).collect()).await.unwrap_err();
                assert!(matches!(err, StorageError::WalWrite(_)), "{kind:?}: {err}");
                assert_eq!(append_n(&storage, 50, 3).await, (6, 8));
                let storage = reopen(dir.path(), storage).await;
                assert_eq!(ids(&storage), expected_ids(&[0..5, 50..53]), "{kind:?}");
            }
        }

        #[tokio::test]
        async fn failed_fsync_stops_writing_until_restart_and_loses_nothing_acknowledged() {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(Faults::default());
            let storage = open(dir.path(), &faults);
            append_n(&storage, 0, 5).await;
            faults.inject(IoOp::WalSync, FaultKind::Eio, Some(1));
            let err = storage.append((5..7).map(event).collect()).await.unwrap_err();
            assert!(matches!(err, StorageError::WalPoisoned(_)), "{err}");
            // The fault is gone, but this WAL file is not trusted again.
            let err = storage.append((7..9).map(event).collect()).await.unwrap_err();
            assert!(matches!(err, StorageError::WalPoisoned(_)), "{err}");
            let health = storage.health();
            assert!(health.len() == 1 && health[0].contains("until restart"), "{health:?}");
            assert_eq!(ids(&storage), expected_ids(&[0..5]), "nothing unacknowledged is visible");
            let storage = reopen(dir.path(), storage).await;
            // The unacknowledged batch may or may not have reached the disk;
            // the acknowledged ones must have, and nothing else may appear.
            let after = ids(&storage);
            assert!(after == expected_ids(&[0..5]) || after == expected_ids(&[0..7]), "{after:?}");
            let (first, _) = append_n(&storage, 100, 1).await;
            assert_eq!(first, after.len() as Seq + 1);
        }

        #[tokio::test]
        async fn failed_seal_keeps_events_buffered_and_leaves_no_debris() {
            for op in [IoOp::SegmentWrite, IoOp::ManifestWrite] {
                let dir = tempfile::tempdir().unwrap();
                let faults = Arc::new(Faults::default());
                let storage = open(dir.path(), &faults);
                append_n(&storage, 0, 5).await;
                faults.inject(op, FaultKind::NoSpace, Some(1));
                let sealer = storage.clone();
                let err = tokio::task::spawn_blocking(move || sealer.seal_now()).await.unwrap().unwrap_err();
                assert!(err.to_string().contains("No space left"), "{op:?}: {err}");
                let health = storage.health();
                assert!(health.len() == 1 && health[0].contains("sealing fails"), "{op:?}: {health:?}");
                assert_eq!(fs::read_dir(dir.path().join("segments")).unwrap().count(), 0, "{op:?}");
                assert_eq!(ids(&storage), expected_ids(&[0..5]), "{op:?}");
                append_n(&storage, 5, 1).await;
                let sealer = storage.clone();
                let meta = tokio::task::spawn_blocking(move || sealer.seal_now()).await.unwrap().unwrap().unwrap();
                assert_eq!((meta.min_seq, meta.max_seq), (1, 6), "{op:?}");
                assert_eq!(storage.health(), Vec::<String>::new(), "{op:?}: a seal that works clears it");
                let storage = reopen(dir.path(), storage).await;
                assert_eq!((storage.stats().sealed_seq, storage.stats().buffered_rows), (6, 0), "{op:?}");
            }
        }
    }
}
