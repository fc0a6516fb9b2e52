//! Small files of the data directory made durable: the settings files, the
//! integrity layer's checkpoint log and proofs, the signing keys. With the
//! WAL writer and the segment store, this is where auditlake calls fsync; no
//! layer above storage does, but for the exporter, whose output file is the
//! user's and lies outside the data directory (see `exporter.rs`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces a small file of the data directory atomically (write, fsync,
/// rename, fsync the directory), readable by its owner only: how the user
/// and token files, which hold verifiers and hashes, are written.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    // A name of its own per write: two writers never share a temp file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}.{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
    let tmp = PathBuf::from(tmp);
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(&tmp)?;
        out.write_all(bytes)?;
        out.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `bytes` to `path` (appended, or replacing what was there) and
/// fsyncs the file, and its directory when the file is new.
pub fn write_synced(path: &Path, bytes: &[u8], append: bool) -> std::io::Result<()> {
    let created = !path.exists();
    let mut file = fs::OpenOptions::new().create(true).append(append).write(true).truncate(!append).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if created && let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Cuts the file at `path` to `len` bytes, durably.
pub fn truncate_synced(path: &Path, len: u64) -> std::io::Result<()> {
    let file = fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}
