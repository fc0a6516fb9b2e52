//! Where sealed segments and the manifest live: a local directory (the data
//! directory by default) or an S3-compatible bucket, both reached through one
//! `object_store` code path. The WAL never lives here: it stays on local disk,
//! where an fsync means durable.
//!
//! Durability differs by backend, and this module hides the difference:
//! - **Local**: `object_store` writes a staging file and renames it, without
//!   fsync. So every segment is fsynced here after it is written, its
//!   directory before the manifest names it, and the manifest itself is
//!   replaced by write-temporary, fsync, rename, fsync-directory.
//! - **S3**: a completed PUT (or multipart upload) is durable and atomic, so a
//!   single PUT of `manifest.json` replaces it for every reader at once.
//!
//! The engine's threads are plain threads; object-store calls are async. This
//! module owns a small runtime and blocks on it, so callers stay synchronous.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::parquet::arrow::async_writer::AsyncFileWriter;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::faults::{Faults, IoOp};
use super::{StorageError, fsync_dir};

const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_TMP_FILE: &str = "manifest.json.tmp";
const SEGMENTS_DIR: &str = "segments";
/// Threads of the runtime that drives object-store requests. Uploads and
/// reads are I/O-bound; the Parquet encoding runs on the caller's thread.
const OBJECT_IO_THREADS: usize = 2;

/// The segments and manifest of one log, wherever they are stored.
#[derive(Debug)]
pub struct SegmentStore {
    store: Arc<dyn ObjectStore>,
    /// The URL DataFusion finds `store` under (`file:///` or `s3://bucket`).
    url: ObjectStoreUrl,
    /// The log's root inside `store`; segments are under `root/segments/`.
    root: ObjectPath,
    /// The root on local disk, when the store is a local directory.
    local_root: Option<PathBuf>,
    /// For messages: where the log lives, as a user would write it.
    display: String,
    /// Always `Some` until drop, which shuts it down without waiting (a
    /// runtime may not be dropped inside async code, where the last handle
    /// to the engine often goes).
    runtime: Option<tokio::runtime::Runtime>,
    faults: Arc<Faults>,
}

impl Drop for SegmentStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl SegmentStore {
    /// Opens the segment store: `url` is `None` for `data_dir` itself, a
    /// `file:///absolute/path`, or `s3://bucket/prefix` (credentials, region
    /// and endpoint from the usual `AWS_*` environment variables).
    pub fn open(data_dir: &Path, url: Option<&str>, faults: Arc<Faults>) -> Result<SegmentStore, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(OBJECT_IO_THREADS)
            .thread_name("auditlake-objects")
            .enable_all()
            .build()
            .map_err(|e| StorageError::io(Path::new("<object store runtime>"), e))?;
        let bad_url = |reason: String| StorageError::SegmentsUrl { url: url.unwrap_or_default().to_owned(), reason };
        let local = |dir: &Path| -> Result<_, StorageError> {
            std::fs::create_dir_all(dir.join(SEGMENTS_DIR)).map_err(|e| StorageError::io(dir, e))?;
            let dir = std::fs::canonicalize(dir).map_err(|e| StorageError::io(dir, e))?;
            let root = ObjectPath::from_absolute_path(&dir).map_err(|e| bad_url(e.to_string()))?;
            Ok((Arc::new(LocalFileSystem::new()) as Arc<dyn ObjectStore>, root, dir))
        };
        let (store, object_url, root, local_root, display) = match url {
            None => {
                let (store, root, dir) = local(data_dir)?;
                (store, "file:///".to_owned(), root, Some(dir.clone()), dir.display().to_string())
            }
            Some(url) if url.starts_with("file://") => {
                let (store, root, dir) = local(Path::new(url.trim_start_matches("file://")))?;
                (store, "file:///".to_owned(), root, Some(dir.clone()), dir.display().to_string())
            }
            Some(url) if url.starts_with("s3://") => {
                let rest = url.trim_start_matches("s3://");
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad_url("no bucket name".into()));
                }
                let store =
                    AmazonS3Builder::from_env().with_bucket_name(bucket).build().map_err(|e| bad_url(e.to_string()))?;
                let root = ObjectPath::parse(prefix.trim_matches('/')).map_err(|e| bad_url(e.to_string()))?;
                (Arc::new(store) as Arc<dyn ObjectStore>, format!("s3://{bucket}"), root, None, url.to_owned())
            }
            Some(_) => return Err(bad_url("expected s3://bucket/prefix or file:///path".into())),
        };
        let url = ObjectStoreUrl::parse(object_url).map_err(|e| bad_url(e.to_string()))?;
        Ok(SegmentStore { store, url, root, local_root, display, runtime: Some(runtime), faults })
    }

    /// The segment store at `url` of a process that only reads it (a
    /// worker): no data directory of its own.
    pub fn open_elsewhere(url: &str) -> Result<SegmentStore, StorageError> {
        if !url.starts_with("s3://") && !url.starts_with("file://") {
            return Err(StorageError::SegmentsUrl {
                url: url.to_owned(),
                reason: "expected s3://bucket/prefix or file:///path".into(),
            });
        }
        SegmentStore::open(Path::new(""), Some(url), Arc::default())
    }

    /// The store, for registering with a DataFusion runtime under [`Self::url`].
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    pub fn url(&self) -> &ObjectStoreUrl {
        &self.url
    }

    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// Where a segment file lives inside the store.
    pub fn segment_location(&self, file: &str) -> ObjectPath {
        self.root.clone().join(SEGMENTS_DIR).join(file)
    }

    /// A segment's path on local disk, when the store is a local directory.
    pub fn local_path(&self, file: &str) -> Option<PathBuf> {
        self.local_root.as_ref().map(|root| root.join(SEGMENTS_DIR).join(file))
    }

    fn describe(&self, location: &ObjectPath) -> String {
        match &self.local_root {
            Some(_) => format!("/{location}"),
            None => format!("{}/{location}", self.url.as_str().trim_end_matches('/')),
        }
    }

    fn object_error(&self, location: &ObjectPath, source: object_store::Error) -> StorageError {
        StorageError::Object { location: self.describe(location), source }
    }

    /// Runs `future` in the store's runtime and waits for it, on the
    /// calling thread. Safe to call from plain threads and from inside
    /// another runtime (a blocking-pool thread, a command's `block_on`),
    /// where tokio refuses a nested `block_on`: there the future is polled
    /// by a plain executor while the store's runtime, whose own threads
    /// drive its I/O and timers, is entered.
    pub(super) fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let runtime = self.runtime();
        if tokio::runtime::Handle::try_current().is_ok() {
            let _in_store_runtime = runtime.enter();
            futures::executor::block_on(future)
        } else {
            runtime.block_on(future)
        }
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    /// Names of the files under `segments/`. Locally this includes
    /// `object_store`'s staging files from an interrupted write, so that
    /// start-up can remove them too.
    pub fn list_segment_files(&self) -> Result<Vec<String>, StorageError> {
        if let Some(root) = &self.local_root {
            let dir = root.join(SEGMENTS_DIR);
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(|e| StorageError::io(&dir, e))? {
                let entry = entry.map_err(|e| StorageError::io(&dir, e))?;
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
            return Ok(names);
        }
        let prefix = self.root.clone().join(SEGMENTS_DIR);
        let objects: Vec<_> = self
            .block_on(self.store.list(Some(&prefix)).try_collect::<Vec<_>>())
            .map_err(|e| self.object_error(&prefix, e))?;
        Ok(objects.into_iter().filter_map(|o| o.location.filename().map(str::to_owned)).collect())
    }

    /// A whole segment file's bytes (for checks that read every byte).
    pub fn read_segment_file(&self, file: &str) -> Result<bytes::Bytes, StorageError> {
        let location = self.segment_location(file);
        self.block_on(async { self.store.get(&location).await?.bytes().await })
            .map_err(|e| self.object_error(&location, e))
    }

    /// Deletes one segment file. Deleting one already gone is not an error.
    pub fn delete_segment(&self, file: &str) -> Result<(), StorageError> {
        if let Some(path) = self.local_path(file) {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(&path, e)),
                _ => Ok(()),
            };
        }
        let location = self.segment_location(file);
        match self.block_on(self.store.delete(&location)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.object_error(&location, e)),
        }
    }

    /// Makes created and deleted segment files durable before a manifest
    /// names them (local only: object stores have no directories to sync).
    pub fn sync_segments(&self) -> Result<(), StorageError> {
        match &self.local_root {
            Some(root) => fsync_dir(&root.join(SEGMENTS_DIR)),
            None => Ok(()),
        }
    }

    /// Starts writing segment file `file`; see [`Upload`].
    pub fn upload_segment(&self, file: &str) -> Upload<'_> {
        let location = self.segment_location(file);
        let sink = BufWriter::new(Arc::clone(&self.store), location.clone());
        Upload { store: self, file: file.to_owned(), location, sink }
    }

    /// The manifest's bytes, or `None` when the log has none yet.
    pub fn read_manifest(&self) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(root) = &self.local_root {
            let path = root.join(MANIFEST_FILE);
            return match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StorageError::io(&path, e)),
            };
        }
        let location = self.root.clone().join(MANIFEST_FILE);
        match self.block_on(async { self.store.get(&location).await?.bytes().await }) {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.object_error(&location, e)),
        }
    }

    /// Replaces the manifest atomically and durably.
    pub fn write_manifest(&self, bytes: Vec<u8>) -> Result<(), StorageError> {
        if let Some(root) = &self.local_root {
            let tmp = root.join(MANIFEST_TMP_FILE);
            if let Some(fault) = self.faults.check(IoOp::ManifestWrite) {
                return Err(StorageError::io(&tmp, fault.to_error()));
            }
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()
            };
            write().map_err(|e| StorageError::io(&tmp, e))?;
            let path = root.join(MANIFEST_FILE);
            std::fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, e))?;
            return fsync_dir(root);
        }
        let location = self.root.clone().join(MANIFEST_FILE);
        if let Some(fault) = self.faults.check(IoOp::ManifestWrite) {
            return Err(StorageError::io(Path::new(&self.describe(&location)), fault.to_error()));
        }
        self.block_on(self.store.put(&location, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.object_error(&location, e))
    }

    /// For messages: where the manifest lives.
    pub fn manifest_display(&self) -> String {
        match &self.local_root {
            Some(root) => root.join(MANIFEST_FILE).display().to_string(),
            None => self.describe(&self.root.clone().join(MANIFEST_FILE)),
        }
    }

    /// Deletes a segment file in the background: used when the last reader of
    /// a retired segment lets go, which may happen inside async code.
    pub(super) fn delete_segment_soon(self: &Arc<Self>, file: String) {
        if self.is_local() {
            // A local unlink is quick; doing it now keeps the directory tidy
            // for whoever looks next.
            if let Err(e) = self.delete_segment(&file) {
                tracing::warn!(file, error = %e, "cannot delete retired segment");
            }
            return;
        }
        let store = Arc::clone(self);
        self.runtime().spawn(async move {
            let location = store.segment_location(&file);
            match store.store.delete(&location).await {
                Ok(()) => tracing::debug!(file, "deleted retired segment"),
                // Left behind, it is removed at the next start (not in the manifest).
                Err(e) => tracing::warn!(file, error = %e, "cannot delete retired segment"),
            }
        });
    }

    pub fn display(&self) -> &str {
        &self.display
    }
}

/// A segment file being written, as bytes: they stream to the store
/// (multipart when large) and are durable once [`Upload::complete`] returns.
/// What the bytes mean is the segment format's business (see
/// `segment/writer.rs`); the durable path (fault check, fsync) is here, once.
pub struct Upload<'a> {
    store: &'a SegmentStore,
    file: String,
    location: ObjectPath,
    sink: BufWriter,
}

impl Upload<'_> {
    /// Sends the next bytes of the file.
    pub fn write(&mut self, bytes: Vec<u8>) -> Result<(), StorageError> {
        Ok(self.store.block_on(self.sink.write(bytes.into()))?)
    }

    /// Completes the upload and, locally, fsyncs the file. On error the
    /// caller deletes whatever was written.
    pub fn complete(mut self) -> Result<(), StorageError> {
        let store = self.store;
        store.block_on(self.sink.complete())?;
        if let Some(fault) = store.faults.check(IoOp::SegmentWrite) {
            return Err(StorageError::io(Path::new(&self.describe()), fault.to_error()));
        }
        if let Some(path) = store.local_path(&self.file) {
            std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| StorageError::io(&path, e))?;
        }
        Ok(())
    }

    /// Where the file goes, as a user would write it (for errors).
    pub fn describe(&self) -> String {
        self.store.describe(&self.location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_error(url: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        SegmentStore::open(dir.path(), Some(url), Default::default()).unwrap_err().to_string()
    }

    #[test]
    fn object_calls_from_inside_another_runtime_run_on_the_calling_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), None, Default::default()).unwrap();
        let outer = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let caller = std::thread::current().id();
        let (ran_on, manifest) = outer.block_on(async {
            store.write_manifest(b"{\"x\": 1}".to_vec()).unwrap();
            // I/O and a timer, as a remote store's requests need.
            let ran_on = store.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                tokio::task::spawn_blocking(|| ()).await.unwrap();
                std::thread::current().id()
            });
            (ran_on, store.read_manifest().unwrap())
        });
        assert_eq!(ran_on, caller, "no thread is started per call");
        assert_eq!(manifest, Some(b"{\"x\": 1}".to_vec()));
    }

    #[test]
    fn unusable_urls_are_refused_by_name() {
        for (url, reason) in [
            ("gs://bucket/x", "expected s3://bucket/prefix or file:///path"),
            ("s3:///prefix", "no bucket name"),
            ("ftp://host/x", "expected s3://bucket/prefix"),
        ] {
            let err = open_error(url);
            assert!(err.contains(url) && err.contains(reason), "{url}: {err}");
        }
    }

    #[test]
    fn a_file_url_keeps_segments_and_manifest_in_that_directory() {
        let data = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let url = format!("file://{}", elsewhere.path().display());
        let store = SegmentStore::open(data.path(), Some(&url), Default::default()).unwrap();
        store.write_manifest(b"{}".to_vec()).unwrap();
        assert_eq!(store.read_manifest().unwrap(), Some(b"{}".to_vec()));
        assert!(elsewhere.path().join("manifest.json").exists() && elsewhere.path().join("segments").is_dir());
        assert!(!data.path().join("manifest.json").exists());
        assert_eq!(store.list_segment_files().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_manifest_write_replaces_the_last_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), None, Default::default()).unwrap();
        assert_eq!(store.read_manifest().unwrap(), None);
        store.write_manifest(b"first".to_vec()).unwrap();
        store.write_manifest(b"second".to_vec()).unwrap();
        assert_eq!(store.read_manifest().unwrap(), Some(b"second".to_vec()));
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!files.iter().any(|f| f.to_string_lossy().contains("tmp")), "{files:?}");
    }
}
