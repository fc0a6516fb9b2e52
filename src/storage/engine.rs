//! The engine: the [`Storage`] handle of one data directory, and the threads
//! behind it. Each concern has its own file: `group_commit.rs` (appends and
//! the WAL writer thread), `buffer.rs` (the queryable buffer), `sealing.rs`
//! (buffer to segment, bulk loads), `maintenance.rs` (compaction, retention,
//! UGC rewrites) and `recovery.rs` (start-up).
//!
//! Concurrency model:
//! - One **WAL writer thread** owns the open WAL file. Appenders send it their
//!   batch and park on a oneshot. The thread takes every request waiting at that
//!   moment, writes them with one `write`, calls `fdatasync` once, pushes the
//!   rows into the buffer, and only then answers each appender. So an ack means
//!   durable *and* visible, and concurrent appenders share one fsync.
//! - One **sealer thread** turns the buffer into a Parquet segment when it holds
//!   too many rows or its oldest row is too old, and forgets ids that left the
//!   idempotency window.
//! - One **compactor thread** merges runs of small segments and applies
//!   retention, so that a long merge never delays a seal. It holds the
//!   compaction lock for a whole merge or rewrite, and the seal lock only
//!   while it publishes the manifest: manifests are written one at a time.
//! - The WAL writer also decides which events are new: an event whose
//!   `(org_id, id)` was stored within the idempotency window is acknowledged
//!   again without a second copy (see `idempotency.rs`). Deciding on the one
//!   thread that orders all writes means two concurrent retries of the same
//!   batch store it once.
//! - Readers take a [`Snapshot`]: the segment list and the buffered batches,
//!   copied under the same lock the sealer uses to publish a segment and drop its
//!   rows from the buffer. A snapshot therefore sees every event exactly once.

mod buffer;
mod group_commit;
mod maintenance;
mod recovery;
mod sealing;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

use datafusion::arrow::array::RecordBatch;
use tokio::sync::mpsc;
use tracing::info;

use self::buffer::{State, with_seq};
use self::group_commit::{WAL_QUEUE_REQUESTS, WalCommand, run_wal_writer};
use super::compaction::{self, CompactionPolicy};
use super::faults::Faults;
use super::idempotency::{self, RecentIds};
use super::manifest::Manifest;
use super::objects::SegmentStore;
use super::segment::LiveSegment;
use super::wal;
use super::{RetentionSource, SealWitness, StorageError};
use crate::model::Seq;

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

impl Storage {
    /// Opens (creating if needed) a data directory, recovering its state:
    /// unpublished segment files are deleted, the WAL is replayed past the last
    /// sealed seq, and a torn WAL tail is truncated.
    pub fn open(config: StorageConfig) -> Result<Storage, StorageError> {
        Self::open_in(config, Arc::default())
    }

    /// [`Storage::open`] with a fault plan the caller (a test) controls.
    #[cfg(test)]
    pub(crate) fn open_with_faults(config: StorageConfig, faults: Arc<Faults>) -> Result<Storage, StorageError> {
        Self::open_in(config, faults)
    }

    fn open_in(mut config: StorageConfig, faults: Arc<Faults>) -> Result<Storage, StorageError> {
        fs::create_dir_all(&config.data_dir).map_err(|e| StorageError::io(&config.data_dir, e))?;
        // Absolute, because segment paths are handed to the query engine as
        // object-store locations rooted at `/`.
        config.data_dir = fs::canonicalize(&config.data_dir).map_err(|e| StorageError::io(&config.data_dir, e))?;
        let data_dir = config.data_dir.clone();
        let wal_dir = data_dir.join("wal");
        fs::create_dir_all(&wal_dir).map_err(|e| StorageError::io(&wal_dir, e))?;
        let lock = super::lock_data_dir(&data_dir)?;

        let segments = Arc::new(SegmentStore::open(&data_dir, config.segments_url.as_deref(), Arc::clone(&faults))?);
        let manifest = Manifest::decode(segments.read_manifest()?.as_deref(), &segments.manifest_display())?;
        recovery::remove_unpublished_segments(&segments, &manifest)?;
        let recovered = recovery::replay_wal(&wal_dir, manifest.sealed_seq)?;
        let last_seq = recovered.batches.last().map_or(manifest.sealed_seq, |b| b.last_seq().max(manifest.sealed_seq));
        let writer = recovery::resume_wal(&wal_dir, recovered.newest, last_seq, &faults)?;

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
            recovery::recall_recent_ids(&segments, &state, config.idempotency_window_ms, config.max_idempotency_keys)?;
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

#[cfg(test)]
mod tests;
