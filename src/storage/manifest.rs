//! The manifest: the one file that says which Parquet segments make up the log.
//!
//! A segment exists for readers only once the manifest names it; a file in
//! `segments/` that the manifest does not name is debris from a crash during
//! sealing and is deleted at start-up. The manifest is replaced atomically:
//! written to a temporary file, fsynced, renamed over the old one, and the
//! directory fsynced, so a crash leaves either the old or the new manifest.
//!
//! Format: JSON, `{"version": 1, "sealed_seq": N, "segments": [...]}`.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::faults::{Faults, IoOp};
use super::{StorageError, fsync_dir};
use crate::model::Seq;

const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_TMP_FILE: &str = "manifest.json.tmp";
const FORMAT_VERSION: u32 = 1;

/// What the manifest records about one sealed segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// File name inside `segments/`.
    pub file: String,
    pub size_bytes: u64,
    pub rows: u64,
    pub min_seq: Seq,
    pub max_seq: Seq,
    pub min_time_us: i64,
    pub max_time_us: i64,
    pub min_org_id: String,
    pub max_org_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Every event with `seq <= sealed_seq` is in a listed segment.
    pub sealed_seq: Seq,
    pub segments: Vec<SegmentMeta>,
}

impl Manifest {
    /// Loads the manifest of a data directory; a missing one means an empty log.
    pub fn load(data_dir: &Path) -> Result<Manifest, StorageError> {
        let path = data_dir.join(MANIFEST_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let manifest: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| StorageError::CorruptManifest { file: path.clone(), reason: e.to_string() })?;
                if manifest.version != FORMAT_VERSION {
                    return Err(StorageError::CorruptManifest {
                        file: path,
                        reason: format!("unsupported manifest version {}", manifest.version),
                    });
                }
                Ok(manifest)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Manifest { version: FORMAT_VERSION, ..Manifest::default() })
            }
            Err(e) => Err(StorageError::io(&path, e)),
        }
    }

    /// Atomically replaces the manifest on disk with `self`.
    pub fn store(&self, data_dir: &Path, faults: &Faults) -> Result<(), StorageError> {
        let tmp = data_dir.join(MANIFEST_TMP_FILE);
        if let Some(fault) = faults.check(IoOp::ManifestWrite) {
            return Err(StorageError::io(&tmp, fault.to_error()));
        }
        let bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        let mut file = fs::File::create(&tmp).map_err(|e| StorageError::io(&tmp, e))?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(|e| StorageError::io(&tmp, e))?;
        drop(file);
        let path = data_dir.join(MANIFEST_FILE);
        fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, e))?;
        fsync_dir(data_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_replaces_and_load_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap().segments.len(), 0);
        let mut manifest = Manifest::load(dir.path()).unwrap();
        manifest.sealed_seq = 9;
        manifest.segments.push(SegmentMeta {
            file: "a.parquet".into(),
            size_bytes: 1,
            rows: 9,
            min_seq: 1,
            max_seq: 9,
            min_time_us: 0,
            max_time_us: 5,
            min_org_id: "acme".into(),
            max_org_id: "globex".into(),
        });
        manifest.store(dir.path(), &Faults::default()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), manifest);
        assert!(!dir.path().join(MANIFEST_TMP_FILE).exists());
    }

    #[test]
    fn garbage_manifest_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MANIFEST_FILE), b"{not json").unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifest.json"), "{err}");
    }
}
