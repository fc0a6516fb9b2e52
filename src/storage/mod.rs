//! The storage engine: how an accepted batch becomes durable, visible, and
//! finally a sealed Parquet segment.
//!
//! ```text
//! append ─► WAL record ─► fsync (shared by concurrent appends) ─► buffer ─► ack
//!                                                               │ seal (rows / age)
//!                                                               ▼
//!                          segment file ─► fsync ─► manifest (atomic) ─► drop buffer rows, old WAL
//! ```
//!
//! This layer owns every byte in the data directory and is the only code that
//! calls fsync on it (small files through `durable.rs`). It never parses SQL
//! or HTTP, and never acknowledges a batch before its WAL record is on disk.
//!
//! Where things are: the engine and its threads in `engine.rs` and
//! `engine/`; the WAL format in `wal.rs`; the segment format (Parquet, row
//! indexes in `row_index.rs`, packed ids in `packed.rs`) in `segment.rs` and
//! `segment/writer.rs`; where segments and the manifest are kept in
//! `objects.rs`; the manifest itself, as data, in `manifest.rs`; merging in
//! `compaction.rs`; the settings files in `settings.rs`.
//!
//! Data directory layout:
//!
//! ```text
//! LOCK                 held (flock) by the one process using the directory
//! manifest.json        the published segment list, replaced atomically
//! wal/{seq:020}.wal    write-ahead log files (format in `wal.rs`)
//! segments/*.parquet   sealed segments (named by their seq range)
//! users.json, tokens.json, policies.json
//!                      settings files (`settings.rs`), each with its FILE.lock
//! login-secret         what unknown users' made-up SCRAM salts derive from
//! integrity/           the checkpoint log, block and removal files (written by
//!                      the integrity layer through `durable.rs`)
//! ```

pub mod compaction;
pub mod durable;
mod engine;
mod faults;
pub mod idempotency;
pub mod manifest;
pub mod objects;
pub mod packed;
pub mod row_index;
pub mod segment;
pub mod settings;
pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;

use crate::model::Seq;

pub use durable::{truncate_synced, write_private_file, write_synced};
pub use engine::{Appended, Expiry, Snapshot, Storage, StorageConfig, StorageStats};
pub use settings::{SettingsError, WatchedFile, read_json, update_json, with_lock, write_json};

/// An error of a layer above storage, carried whole as a cause.
pub type BoxedError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong below the query and ingest layers.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("WAL file {} is corrupt at byte offset {offset}: {reason}; refusing to start (move the file aside only if you accept losing its events)", file.display())]
    CorruptWal { file: PathBuf, offset: u64, reason: String },
    #[error("manifest {file} is unusable: {reason}")]
    CorruptManifest { file: String, reason: String },
    #[error("object store error on {location}: {source}")]
    Object { location: String, source: object_store::Error },
    #[error("cannot use segments URL {url:?}: {reason}")]
    SegmentsUrl { url: String, reason: String },
    #[error("data directory {} is in use by another auditlake process", path.display())]
    Locked { path: PathBuf },
    // The WAL's failures are shared: one failed write answers every append
    // of its group commit.
    #[error("the disk is full; nothing of this batch was stored ({0})")]
    DiskFull(#[source] Arc<StorageError>),
    #[error("writing the write-ahead log failed; nothing of this batch was stored ({0})")]
    WalWrite(#[source] Arc<StorageError>),
    #[error("the write-ahead log failed earlier ({0}); no further writes are accepted until restart")]
    WalPoisoned(#[source] Arc<StorageError>),
    #[error(
        "this batch would be a write-ahead log record of {bytes} bytes, more than the {limit_bytes} one record may hold; send it in smaller batches"
    )]
    RecordTooLarge { bytes: usize, limit_bytes: usize },
    #[error(
        "{buffered_bytes} bytes of events are waiting to be sealed, over the limit of {limit_bytes}; retry shortly"
    )]
    Backpressure { buffered_bytes: usize, limit_bytes: usize },
    #[error("compaction failed: {0}")]
    Compaction(#[source] DataFusionError),
    #[error("compaction wrote {written} rows from inputs holding {expected}; the inputs are kept")]
    MergeLostRows { written: u64, expected: u64 },
    // The integrity layer's and the policies' errors are not storage's to
    // name: they are kept whole, as the cause.
    #[error("checkpoint failed: {0}")]
    Checkpoint(#[source] BoxedError),
    #[error("recording the removal failed: {0}")]
    Removal(#[source] BoxedError),
    #[error("reading segments failed: {0}")]
    Scan(#[source] DataFusionError),
    #[error("rewriting segments failed: {0}")]
    Rewrite(#[source] BoxedError),
    #[error("the storage engine has shut down")]
    ShutDown,
    #[error("Arrow error: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("Parquet error: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
}

impl StorageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StorageError::Io { path: path.to_path_buf(), source }
    }
}

/// Takes the data directory's lock (`LOCK`, flock), held while the file
/// is open: one process at a time opens a data directory.
pub fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StorageError> {
    let lock_path = data_dir.join("LOCK");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StorageError::io(&lock_path, e))?;
    lock.try_lock().map_err(|_| StorageError::Locked { path: data_dir.to_path_buf() })?;
    Ok(lock)
}

/// Makes a directory's entries (created, renamed, deleted files) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::io(dir, e))
}

/// Told of every range of seqs once it is sealed and published: the
/// integrity layer signs a checkpoint of it. It cannot fail the seal, whose
/// events are durable by then; it catches up on what it missed next time,
/// and what it could not do is reported as a health problem.
pub trait SealWitness: Send + Sync + std::fmt::Debug {
    /// Everything up to `sealed_seq` is in `segments` (the published list).
    /// `fresh`, when given, is the first seq of the range just sealed and
    /// its rows, so that they need not be read back.
    fn sealed(
        &self,
        store: &objects::SegmentStore,
        segments: &[Arc<segment::LiveSegment>],
        sealed_seq: Seq,
        fresh: Option<(Seq, &[RecordBatch])>,
    ) -> Result<(), StorageError>;

    /// `removed` (segment schema) is about to leave the log by `expiry`;
    /// the removal goes ahead only once this has recorded it.
    fn removing(&self, expiry: &Expiry, removed: &[RecordBatch]) -> Result<(), StorageError>;
}

/// What organisations' retention lets go, asked before each retention pass.
pub trait RetentionSource: Send + Sync + std::fmt::Debug {
    fn expiries(&self, now_us: i64) -> Vec<Expiry>;
}
