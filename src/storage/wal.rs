//! The write-ahead log: the only place an event is durable before it is sealed.
//!
//! # File format (version 2)
//!
//! A WAL directory holds files named `{first_seq:020}.wal`. Each file is
//!
//! ```text
//! header:  b"AUDWAL02"                      8 bytes: magic and format version
//! record:  len: u32 LE | crc32: u32 LE | payload (len bytes)   repeated
//! payload: first_seq: u64 LE | Arrow IPC stream of one `audit_events` batch
//! ```
//!
//! `crc32` is CRC-32 (IEEE) of the payload. A payload is one ingest batch
//! ([`WalBatch`]), whose rows take `seq = first_seq + i` (the `seq` column in
//! the IPC bytes is not used). One record per batch makes a batch
//! all-or-nothing on replay. Arrow IPC rather than JSON because the batch is
//! already Arrow when it is logged: encoding is a copy of its buffers, and
//! replay rebuilds the buffer without parsing. (Version 1 held JSON.)
//!
//! # Reading rules (recovery)
//!
//! Only the newest file can have a torn tail: older files were complete and
//! fsynced before the next file was created. In the newest file, an incomplete
//! header, a length running past the end, a zero-filled remainder, or a bad
//! checksum on the very last record is a torn write and is truncated away (it
//! was never acknowledged, because acknowledgement waits for fsync). Anything
//! else that does not check out is corruption, and start-up stops with the file
//! and offset.
//!
//! This module writes and fsyncs; it never decides *when* (that is the group
//! committer in `storage::engine`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

use super::faults::{FaultKind, Faults, IoOp};
use super::{StorageError, fsync_dir};
use crate::model::{self, Seq};

const MAGIC: &[u8; 8] = b"AUDWAL02";
const FIRST_SEQ_BYTES: usize = 8;
/// Length of a WAL file that holds no records.
pub const HEADER_BYTES: u64 = MAGIC.len() as u64;
const RECORD_HEADER_BYTES: usize = 8;
/// Largest record the reader will believe; a longer length field is corruption.
/// Appends refuse batches past it (`StorageConfig::max_record_bytes`), so
/// the writer never writes what the reader would refuse at the next start.
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

/// The payload length a record of `ipc` (from [`encode_batch`]) declares.
pub fn record_payload_bytes(ipc: &[u8]) -> usize {
    FIRST_SEQ_BYTES + ipc.len()
}

/// One acknowledged-as-a-unit batch of events.
#[derive(Debug, Clone, PartialEq)]
pub struct WalBatch {
    pub first_seq: Seq,
    /// Rows of the `audit_events` schema, not empty.
    pub batch: RecordBatch,
}

impl WalBatch {
    pub fn last_seq(&self) -> Seq {
        self.first_seq + self.batch.num_rows() as Seq - 1
    }
}

/// Encodes a batch as Arrow IPC, the part of a payload that does not depend
/// on seqs (so callers can encode before the WAL thread assigns them).
pub fn encode_batch(batch: &RecordBatch) -> Vec<u8> {
    let mut ipc = Vec::with_capacity(batch.get_array_memory_size() + 4096);
    let mut writer = StreamWriter::try_new(&mut ipc, &batch.schema()).expect("IPC into memory");
    writer.write(batch).expect("IPC into memory");
    writer.finish().expect("IPC into memory");
    drop(writer);
    ipc
}

/// Frames one record: length, checksum, then `first_seq` and the IPC bytes
/// from [`encode_batch`].
pub fn encode_record(first_seq: Seq, ipc: &[u8], out: &mut Vec<u8>) {
    let seq_bytes = first_seq.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq_bytes);
    crc.update(ipc);
    out.extend_from_slice(&(record_payload_bytes(ipc) as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq_bytes);
    out.extend_from_slice(ipc);
}

/// Decodes a payload whose checksum matched.
fn decode_payload(payload: &[u8]) -> Result<WalBatch, String> {
    let (seq_bytes, ipc) =
        payload.split_at_checked(FIRST_SEQ_BYTES).ok_or("payload shorter than its first_seq field")?;
    let first_seq = Seq::from_le_bytes(seq_bytes.try_into().expect("8 bytes"));
    let mut reader = StreamReader::try_new(ipc, None).map_err(|e| e.to_string())?;
    if reader.schema() != model::schema() {
        return Err("the batch does not have the audit_events schema".into());
    }
    let batch = reader.next().ok_or("no batch in the record")?.map_err(|e| e.to_string())?;
    if reader.next().is_some() {
        return Err("more than one batch in the record".into());
    }
    if batch.num_rows() == 0 || first_seq == 0 {
        return Err(format!("empty batch or seq 0 (first_seq {first_seq}, {} rows)", batch.num_rows()));
    }
    Ok(WalBatch { first_seq, batch })
}

/// What reading one WAL file found.
#[derive(Debug)]
pub struct ReadOutcome {
    pub batches: Vec<WalBatch>,
    /// Where each batch's record starts in the file, in bytes.
    pub offsets: Vec<u64>,
    /// Byte length of the valid prefix (header plus whole, checked records).
    pub valid_len: u64,
    /// True when bytes after `valid_len` were a torn tail.
    pub torn_tail: bool,
}

/// Reads every record of one WAL file, applying the rules in the module docs.
/// `is_newest` says whether a torn tail is allowed in this file.
pub fn read_file(path: &Path, is_newest: bool) -> Result<ReadOutcome, StorageError> {
    let bytes = fs::read(path).map_err(|e| StorageError::io(path, e))?;
    let corrupt = |offset: usize, reason: String| StorageError::CorruptWal {
        file: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let torn = |valid_len: usize, batches: Vec<WalBatch>, offsets: Vec<u64>| {
        Ok(ReadOutcome { batches, offsets, valid_len: valid_len as u64, torn_tail: true })
    };

    if bytes.len() < MAGIC.len() {
        return if is_newest && MAGIC.starts_with(&bytes) {
            torn(0, Vec::new(), Vec::new())
        } else {
            Err(corrupt(0, format!("file is {} bytes, shorter than the header", bytes.len())))
        };
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        let found = String::from_utf8_lossy(&bytes[..MAGIC.len()]);
        return Err(corrupt(0, format!("bad magic {found:?}: not an auditlake WAL file of format version 2")));
    }

    let mut batches = Vec::new();
    let mut offsets = Vec::new();
    let mut offset = MAGIC.len();
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < RECORD_HEADER_BYTES {
            return if is_newest {
                torn(offset, batches, offsets)
            } else {
                Err(corrupt(offset, "truncated record header".into()))
            };
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD_BYTES {
            return if is_newest && rest.iter().all(|b| *b == 0) {
                torn(offset, batches, offsets)
            } else {
                Err(corrupt(offset, format!("impossible record length {len}")))
            };
        }
        let end = RECORD_HEADER_BYTES + len;
        if rest.len() < end {
            return if is_newest {
                torn(offset, batches, offsets)
            } else {
                Err(corrupt(offset, format!("record of {len} bytes runs past the end of the file")))
            };
        }
        let payload = &rest[RECORD_HEADER_BYTES..end];
        if crc32fast::hash(payload) != crc {
            return if is_newest && rest.len() == end {
                torn(offset, batches, offsets)
            } else {
                Err(corrupt(offset, "checksum mismatch".into()))
            };
        }
        let batch = decode_payload(payload)
            .map_err(|e| corrupt(offset, format!("record checks out but does not decode: {e}")))?;
        batches.push(batch);
        offsets.push(offset as u64);
        offset += end;
    }
    Ok(ReadOutcome { batches, offsets, valid_len: offset as u64, torn_tail: false })
}

/// Path of the WAL file whose first record starts at `first_seq`.
pub fn file_path(dir: &Path, first_seq: Seq) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

/// WAL files in `dir`, oldest first, with the first seq their name promises.
pub fn list_files(dir: &Path) -> Result<Vec<(Seq, PathBuf)>, StorageError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let path = entry.map_err(|e| StorageError::io(dir, e))?.path();
        let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        let first_seq = stem.parse::<Seq>().map_err(|_| StorageError::CorruptWal {
            file: path.clone(),
            offset: 0,
            reason: "WAL file name is not a sequence number".into(),
        })?;
        files.push((first_seq, path));
    }
    files.sort();
    Ok(files)
}

/// The WAL file currently being appended to.
#[derive(Debug)]
pub struct WalWriter {
    file: File,
    path: PathBuf,
    first_seq: Seq,
    /// Length of the valid prefix: header plus whole records.
    len: u64,
    /// Set when a failed append could not be rolled back: the file may hold
    /// garbage after `len`, and nothing more may be written to it.
    broken: bool,
    faults: Arc<Faults>,
}

impl WalWriter {
    /// Creates a new, empty WAL file (header fsynced, directory fsynced).
    pub fn create(dir: &Path, first_seq: Seq, faults: Arc<Faults>) -> Result<Self, StorageError> {
        let path = file_path(dir, first_seq);
        let file =
            OpenOptions::new().create_new(true).write(true).open(&path).map_err(|e| StorageError::io(&path, e))?;
        let mut writer = WalWriter { file, path, first_seq, len: 0, broken: false, faults };
        let created = writer.append(MAGIC).and_then(|()| writer.sync()).and_then(|()| fsync_dir(dir));
        if let Err(e) = created {
            // A WAL file without its header would stop the next start-up.
            let _ = fs::remove_file(&writer.path);
            return Err(e);
        }
        Ok(writer)
    }

    /// Reopens the newest WAL file after recovery, cutting it to its valid prefix.
    pub fn reopen(path: &Path, first_seq: Seq, valid_len: u64, faults: Arc<Faults>) -> Result<Self, StorageError> {
        let file = OpenOptions::new().write(true).open(path).map_err(|e| StorageError::io(path, e))?;
        let current = file.metadata().map_err(|e| StorageError::io(path, e))?.len();
        if current != valid_len {
            file.set_len(valid_len).and_then(|()| file.sync_all()).map_err(|e| StorageError::io(path, e))?;
        }
        let mut writer = WalWriter { file, path: path.to_path_buf(), first_seq, len: valid_len, broken: false, faults };
        if valid_len < MAGIC.len() as u64 {
            writer.file.set_len(0).map_err(|e| StorageError::io(path, e))?;
            writer.len = 0;
            writer.append(MAGIC)?;
            writer.sync()?;
        }
        Ok(writer)
    }

    pub fn first_seq(&self) -> Seq {
        self.first_seq
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when a failed append left bytes that could not be cut away.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Appends already-framed records. Not durable until [`WalWriter::sync`].
    ///
    /// On failure the file is cut back to its valid prefix, so a later append
    /// never lands after garbage (which recovery would call corruption). If
    /// even that fails, the writer is [broken](WalWriter::is_broken).
    pub fn append(&mut self, framed: &[u8]) -> Result<(), StorageError> {
        assert!(!self.broken, "append to a broken WAL file");
        let written = match self.faults.check(IoOp::WalWrite) {
            Some(fault) => {
                if fault == FaultKind::ShortWrite {
                    let _ = self.write_at_len(&framed[..framed.len() / 2]);
                }
                Err(fault.to_error())
            }
            None => self.write_at_len(framed),
        };
        match written {
            Ok(()) => {
                self.len += framed.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self.file.set_len(self.len).is_err() {
                    self.broken = true;
                }
                Err(StorageError::io(&self.path, e))
            }
        }
    }

    fn write_at_len(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::io::Seek;
        self.file.seek(io::SeekFrom::Start(self.len))?;
        self.file.write_all(bytes)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(fault) = self.faults.check(IoOp::WalSync) {
            return Err(StorageError::io(&self.path, fault.to_error()));
        }
        self.file.sync_data().map_err(|e| StorageError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(first_seq: Seq, n: usize) -> WalBatch {
        let events: Vec<_> = (0..n)
            .map(|i| crate::model::Event {
                time_us: 1_700_000_000_000_000 + i as i64,
                id: format!("e{first_seq}-{i}"),
                org_id: "acme".into(),
                actor_id: "u1".into(),
                action: "page.viewed".into(),
                ..Default::default()
            })
            .collect();
        WalBatch { first_seq, batch: model::events_to_batch(&events, 0) }
    }

    fn write_batches(dir: &Path, batches: &[WalBatch]) -> PathBuf {
        let mut writer = WalWriter::create(dir, batches[0].first_seq, Arc::default()).unwrap();
        for b in batches {
            let mut framed = Vec::new();
            encode_record(b.first_seq, &encode_batch(&b.batch), &mut framed);
            writer.append(&framed).unwrap();
        }
        writer.sync().unwrap();
        writer.path().to_path_buf()
    }

    #[test]
    fn round_trips_batches() {
        let dir = tempfile::tempdir().unwrap();
        let batches = vec![batch(1, 3), batch(4, 1), batch(5, 10)];
        let path = write_batches(dir.path(), &batches);
        let outcome = read_file(&path, true).unwrap();
        assert_eq!(outcome.batches, batches);
        assert!(!outcome.torn_tail);
        assert_eq!(outcome.valid_len, fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn torn_tail_in_newest_file_is_cut_but_is_corruption_in_older_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_batches(dir.path(), &[batch(1, 2), batch(3, 2)]);
        let full = fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 5).unwrap();
        let outcome = read_file(&path, true).unwrap();
        assert!(outcome.torn_tail);
        assert_eq!(outcome.batches, vec![batch(1, 2)]);
        let err = read_file(&path, false).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn checksum_failure_before_the_tail_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_batches(dir.path(), &[batch(1, 2), batch(3, 2)]);
        let mut bytes = fs::read(&path).unwrap();
        bytes[MAGIC.len() + RECORD_HEADER_BYTES + 10] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        match read_file(&path, true) {
            Err(StorageError::CorruptWal { file, offset, reason }) => {
                assert_eq!(file, path);
                assert_eq!(offset, MAGIC.len() as u64);
                assert!(reason.contains("checksum"));
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_batches(dir.path(), &[batch(1, 2)]);
        let valid = fs::metadata(&path).unwrap().len();
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        fs::write(&path, &bytes).unwrap();
        let outcome = read_file(&path, true).unwrap();
        assert!(outcome.torn_tail);
        assert_eq!(outcome.valid_len, valid);
    }

    proptest! {
        #![proptest_config(crate::proptest_cases(64))]

        /// Cutting the newest file anywhere loses only whole trailing batches.
        #[test]
        fn any_truncation_keeps_a_prefix_of_whole_batches(sizes in prop::collection::vec(1usize..5, 1..6), cut in any::<prop::sample::Index>()) {
            let dir = tempfile::tempdir().unwrap();
            let mut first = 1;
            let batches: Vec<WalBatch> = sizes.iter().map(|n| { let b = batch(first, *n); first += *n as Seq; b }).collect();
            let path = write_batches(dir.path(), &batches);
            let full = fs::read(&path).unwrap();
            let at = cut.index(full.len() + 1);
            fs::write(&path, &full[..at]).unwrap();
            let outcome = read_file(&path, true).unwrap();
            prop_assert!(outcome.batches.len() <= batches.len());
            prop_assert_eq!(&outcome.batches[..], &batches[..outcome.batches.len()]);
            prop_assert_eq!(outcome.torn_tail, (outcome.valid_len as usize) < at || at < MAGIC.len());
        }

        /// A flipped bit is never read back as different data: it is either a
        /// detected error or a torn tail that drops the damaged batch.
        #[test]
        fn any_bit_flip_is_detected(sizes in prop::collection::vec(1usize..4, 1..5), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let dir = tempfile::tempdir().unwrap();
            let mut first = 1;
            let batches: Vec<WalBatch> = sizes.iter().map(|n| { let b = batch(first, *n); first += *n as Seq; b }).collect();
            let path = write_batches(dir.path(), &batches);
            let mut bytes = fs::read(&path).unwrap();
            let at = pos.index(bytes.len());
            bytes[at] ^= 1 << bit;
            fs::write(&path, &bytes).unwrap();
            if let Ok(outcome) = read_file(&path, true) {
                prop_assert!(outcome.batches.len() < batches.len() || outcome.batches == batches);
                prop_assert_eq!(&outcome.batches[..], &batches[..outcome.batches.len()]);
                prop_assert!(outcome.batches.len() < batches.len(), "a flip was not noticed at byte {}", at);
            }
        }
    }
}
