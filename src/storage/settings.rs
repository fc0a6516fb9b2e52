//! The small settings files of the data directory: `users.json`,
//! `tokens.json`, `policies.json`. They hold verifiers, hashes and policies,
//! never a secret in clear, and are changed by the command line while a
//! server may be running.
//!
//! This module owns how they are written (atomically, owner-only) and how a
//! running server notices a change (the file's version is checked on use and
//! the file parsed again only when it differs). It never interprets them.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::durable::write_private_file;

/// Why a settings file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

/// A settings file parsed from JSON; a missing file is the default value.
pub fn read_json<T: DeserializeOwned + Default>(path: &Path) -> Result<T, SettingsError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
        Err(source) => return Err(SettingsError::Read { path: path.to_path_buf(), source }),
    };
    serde_json::from_str(&text).map_err(|e| SettingsError::Damaged { path: path.to_path_buf(), reason: e.to_string() })
}

/// Changes the settings file at `path` with `change`, reading and writing it
/// under an exclusive lock on `PATH.lock` that every changer takes, in this
/// process or another (the command line beside a running server): two
/// changes never start from the same old file, so neither is lost. Returns
/// what `change` returned once the new file is durable; a `change` that
/// fails writes nothing.
pub fn update_json<T, R, E>(path: &Path, change: impl FnOnce(&mut T) -> Result<R, E>) -> Result<R, E>
where
    T: Serialize + DeserializeOwned + Default,
    E: From<SettingsError>,
{
    with_lock(path, || {
        let mut value: T = read_json(path)?;
        let result = change(&mut value)?;
        write_json(path, &value)?;
        Ok(result)
    })
}

/// Runs `change`, which reads and rewrites the settings file at `path`,
/// under the exclusive lock on `PATH.lock` (see [`update_json`]), for files
/// with a format of their own.
pub fn with_lock<R, E: From<SettingsError>>(path: &Path, change: impl FnOnce() -> Result<R, E>) -> Result<R, E> {
    let locked = |source| SettingsError::Write { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(locked)?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let lock = options.open(PathBuf::from(lock_path)).map_err(locked)?;
    lock.lock().map_err(locked)?;
    let result = change();
    // Closing the file releases the lock.
    drop(lock);
    result
}

/// Replaces a settings file with `value` as pretty JSON (see [`write_private_file`]).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SettingsError> {
    let text = serde_json::to_string_pretty(value).expect("settings serialise");
    write_private_file(path, text.as_bytes())
        .map_err(|source| SettingsError::Write { path: path.to_path_buf(), source })
}

/// A settings file as last parsed, parsed again when it changes, so that
/// what the command line changes while the server runs applies at once.
#[derive(Debug)]
pub struct WatchedFile<T> {
    path: PathBuf,
    loaded: Mutex<Option<(FileVersion, Arc<T>)>>,
}

impl<T> WatchedFile<T> {
    pub fn new(path: PathBuf) -> Self {
        WatchedFile { path, loaded: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed file as it is now: `parse` runs only when the file changed
    /// since the last call (a missing file is a version of its own).
    pub fn current<E: From<SettingsError>>(&self, parse: impl FnOnce(&Path) -> Result<T, E>) -> Result<Arc<T>, E> {
        let version = match fs::metadata(&self.path) {
            Ok(meta) => FileVersion::of(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileVersion::default(),
            Err(source) => return Err(SettingsError::Read { path: self.path.clone(), source }.into()),
        };
        let mut loaded = self.loaded.lock().expect("settings file lock poisoned");
        if let Some((at, parsed)) = loaded.as_ref()
            && *at == version
        {
            return Ok(Arc::clone(parsed));
        }
        let parsed = Arc::new(parse(&self.path)?);
        *loaded = Some((version, Arc::clone(&parsed)));
        Ok(parsed)
    }
}

/// What tells one version of the file from the next: every write replaces
/// it by rename, so its inode changes even within one mtime tick.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    modified: Option<SystemTime>,
    inode: u64,
    len: u64,
}

impl FileVersion {
    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileVersion { modified: meta.modified().ok(), inode, len: meta.len() }
    }
}

/// Bytes as lowercase hex: how settings files hold hashes and keys.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits as 32 bytes; `None` for anything else.
pub fn from_hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
