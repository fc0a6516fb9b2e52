//! The signing key and the checkpoint log.
//!
//! Each time a range of seqs is sealed, one line is appended to
//! `integrity/checkpoints.jsonl`: the range, its Merkle root, the hash of the
//! previous line (so lines form a chain), the time, and an Ed25519 signature
//! over all of that. The range's block hashes go first, durably, to
//! `integrity/blocks/{first:020}-{last:020}.blocks`; they need no signature,
//! since the signed root is computed from them.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::digest::{Context, SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::IntegrityError;
use super::merkle::{self, Hash};
use crate::digest::sha256;
use crate::model::Seq;
use crate::storage::settings::{from_hex32, to_hex};
use crate::storage::{truncate_synced, write_private_file};

pub const INTEGRITY_DIR: &str = "integrity";
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
const BLOCKS_DIR: &str = "blocks";
const REMOVALS_DIR: &str = "removals";
const SEED_BYTES: usize = 32;
/// Separates the UGC digest key from the signing key it derives from.
const DIGEST_KEY_CONTEXT: &[u8] = b"auditlake ugc digest key v1\0";
const SIGNED_DOMAIN: &str = "auditlake checkpoint v1";

/// The Ed25519 key checkpoints are signed with, kept outside the data
/// directory, and the UGC digest key derived from it.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    digest_key: hmac::Key,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public {})", self.public_hex())
    }
}

impl SigningKey {
    fn from_seed(seed: &[u8; SEED_BYTES]) -> Self {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("32-byte seeds are valid");
        let digest_key = hmac::Key::new(
            hmac::HMAC_SHA256,
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, seed), DIGEST_KEY_CONTEXT).as_ref(),
        );
        SigningKey { pair, digest_key }
    }

    /// Writes a new random key to `path` (owner-only) and its public half to
    /// `path.pub`; never replaces a file.
    pub fn create(path: &Path) -> Result<String, IntegrityError> {
        let key_error = |reason: String| IntegrityError::KeyFile { path: path.to_path_buf(), reason };
        if path.exists() {
            return Err(key_error("exists already; a new key could not sign on for the old one".into()));
        }
        let mut seed = [0u8; SEED_BYTES];
        SystemRandom::new().fill(&mut seed).expect("the system's random source works");
        write_private_file(path, format!("{}\n", to_hex(&seed)).as_bytes()).map_err(|e| key_error(e.to_string()))?;
        let public = SigningKey::from_seed(&seed).public_hex();
        let public_path = public_key_path(path);
        fs::write(&public_path, format!("{public}\n"))
            .map_err(|e| key_error(format!("{}: {e}", public_path.display())))?;
        Ok(public)
    }

    /// Reads a key file; refuses one that others than its owner may read,
    /// or one inside `data_dir` (a copy of the data would carry the key).
    pub fn load(path: &Path, data_dir: &Path) -> Result<Self, IntegrityError> {
        let key_error = |reason: String| IntegrityError::KeyFile { path: path.to_path_buf(), reason };
        let meta = fs::metadata(path).map_err(|e| key_error(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(key_error("group or others may read it; chmod 600 it".into()));
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        if let (Ok(key), Ok(dir)) = (path.canonicalize(), data_dir.canonicalize())
            && key.starts_with(&dir)
        {
            return Err(key_error(format!("is inside the data directory {}; keep it elsewhere", dir.display())));
        }
        let text = fs::read_to_string(path).map_err(|e| key_error(e.to_string()))?;
        let seed = from_hex32(text.trim()).ok_or_else(|| key_error("expected 64 hexadecimal digits".into()))?;
        Ok(SigningKey::from_seed(&seed))
    }

    pub fn public_hex(&self) -> String {
        to_hex(self.pair.public_key().as_ref())
    }

    pub fn digest_key(&self) -> &hmac::Key {
        &self.digest_key
    }

    fn sign(&self, message: &[u8]) -> String {
        to_hex(self.pair.sign(message).as_ref())
    }
}

/// Where `auditlake keygen --signing-key PATH` puts the public key.
pub fn public_key_path(key: &Path) -> PathBuf {
    let mut path = key.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

/// What a line of the checkpoint log records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineKind {
    /// A range of seqs sealed: `root` is the Merkle Tree Hash of its leaves.
    #[default]
    Events,
    /// Events removed by an organisation's retention: `root` is the SHA-256
    /// of the removal file listing their seqs and leaves.
    Removal,
}

/// What a removal line adds: whose events, removed for being older than what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalScope {
    pub org: String,
    /// The retention cutoff, RFC 3339: every removed event is older.
    pub before: String,
    pub count: u64,
}

/// One line of the checkpoint log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub index: u64,
    #[serde(default)]
    pub kind: LineKind,
    pub first_seq: Seq,
    pub last_seq: Seq,
    /// Merkle Tree Hash of the range's leaves (or, for a removal, SHA-256
    /// of its removal file), hex.
    pub root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal: Option<RemovalScope>,
    /// [`Checkpoint::chain_hash`] of the line before, hex; zeros for the first.
    pub prev: String,
    /// RFC 3339, UTC.
    pub written_at: String,
    pub public_key: String,
    pub signature: String,
}

impl Checkpoint {
    /// The bytes the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        let kind = serde_json::to_value(self.kind).expect("kinds serialise");
        let removal = self.removal.as_ref().map_or_else(String::new, |r| {
            format!("{}\n{}\n{}\n", serde_json::Value::from(r.org.as_str()), r.before, r.count)
        });
        format!(
            "{SIGNED_DOMAIN}\n{}\n{}\n{}\n{}\n{}\n{removal}{}\n{}\n{}\n",
            self.index,
            kind.as_str().unwrap_or_default(),
            self.first_seq,
            self.last_seq,
            self.root,
            self.prev,
            self.written_at,
            self.public_key
        )
        .into_bytes()
    }

    /// What the next line names as `prev`: SHA-256 of the signed message
    /// and the signature.
    pub fn chain_hash(&self) -> String {
        let mut context = Context::new(&SHA256);
        context.update(&self.signed_message());
        context.update(self.signature.as_bytes());
        to_hex(context.finish().as_ref())
    }

    /// Whether the signature is valid for `public_key` (hex).
    pub fn signature_holds(&self, public_key: &str) -> bool {
        let (Some(key), Some(signature)) = (hex_bytes(public_key), hex_bytes(&self.signature)) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, key).verify(&self.signed_message(), &signature).is_ok()
    }

    pub fn leaf_count(&self) -> usize {
        (self.last_seq - self.first_seq + 1) as usize
    }

    pub fn root_hash(&self) -> Option<Hash> {
        from_hex32(&self.root)
    }
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The checkpoint log of one data directory.
#[derive(Debug)]
pub struct CheckpointLog {
    dir: PathBuf,
    last: Mutex<Tail>,
}

/// Where the log ends: the line the next chains on, and the last seq an
/// events line covers.
#[derive(Debug, Default)]
struct Tail {
    line: Option<Checkpoint>,
    events_through: Seq,
    /// Why nothing may be appended: a whole line that does not parse. A
    /// line chained past it would vouch for a log nobody can check.
    damaged: Option<String>,
}

impl CheckpointLog {
    /// Opens the log of `data_dir` for appending; its last line is where the
    /// next one chains on.
    ///
    /// A last line cut short (no newline: the write of an append that never
    /// returned) is cut off, durably; its range is signed again by the
    /// catch-up. A whole line that does not parse is damage: the log opens,
    /// but every append is refused naming the line, until an operator looks.
    pub fn open(data_dir: &Path) -> Result<Self, IntegrityError> {
        let dir = data_dir.join(INTEGRITY_DIR);
        cut_torn_tail(&dir.join(CHECKPOINTS_FILE))?;
        let mut tail = Tail::default();
        for (number, line) in read_checkpoints(data_dir)?.into_iter().enumerate() {
            match line {
                Ok(line) => {
                    if line.kind == LineKind::Events {
                        tail.events_through = tail.events_through.max(line.last_seq);
                    }
                    tail.line = Some(line);
                }
                Err(reason) if tail.damaged.is_none() => {
                    let damaged = format!(
                        "line {} of {} does not parse ({reason}); no checkpoint is appended until it is repaired \
                         (run `auditlake verify`)",
                        number + 1,
                        dir.join(CHECKPOINTS_FILE).display()
                    );
                    tracing::error!(reason = %damaged, "the checkpoint log is damaged");
                    tail.damaged = Some(damaged);
                }
                Err(_) => {}
            }
        }
        Ok(CheckpointLog { dir, last: Mutex::new(tail) })
    }

    /// Refuses, naming the line, when the log is damaged.
    pub fn refuse_if_damaged(&self) -> Result<(), IntegrityError> {
        refuse_if_damaged(&self.last.lock().expect("checkpoint log lock"))
    }

    /// The last seq checkpointed (0 before the first checkpoint).
    pub fn last_seq(&self) -> Seq {
        self.last.lock().expect("checkpoint log lock").events_through
    }

    /// Appends the checkpoint of `first..=last` whose leaves are `leaves`
    /// (in seq order), durably: block hashes, then the signed line.
    pub fn append(&self, key: &SigningKey, first: Seq, leaves: &[Hash]) -> Result<Checkpoint, IntegrityError> {
        let mut tail = self.last.lock().expect("checkpoint log lock");
        refuse_if_damaged(&tail)?;
        let expected_first = tail.events_through + 1;
        if first != expected_first || leaves.is_empty() {
            return Err(IntegrityError::Gap { expected: expected_first, got: first });
        }
        let last = first + leaves.len() as Seq - 1;
        let blocks_dir = self.dir.join(BLOCKS_DIR);
        fs::create_dir_all(&blocks_dir).map_err(|e| IntegrityError::io(&blocks_dir, e))?;
        let blocks = merkle::block_hashes(leaves);
        write_synced(&blocks_dir.join(blocks_file_name(first, last)), &blocks.concat(), false)?;
        let root = merkle::root_from_blocks(&blocks, leaves.len()).expect("blocks fit their leaves");
        let line = self.append_line(&mut tail, key, LineKind::Events, (first, last), &root, None)?;
        tail.events_through = last;
        Ok(line)
    }

    /// Records, durably and before the segments change, that `removed`
    /// (`(seq, leaf)`, ascending) leave the log by `scope`'s retention: a
    /// removal file of their seqs and leaves, then the signed line.
    pub fn append_removal(
        &self,
        key: &SigningKey,
        scope: RemovalScope,
        removed: &[(Seq, Hash)],
    ) -> Result<Checkpoint, IntegrityError> {
        let mut tail = self.last.lock().expect("checkpoint log lock");
        refuse_if_damaged(&tail)?;
        let index = tail.line.as_ref().map_or(0, |c| c.index + 1);
        let dir = self.dir.join(REMOVALS_DIR);
        fs::create_dir_all(&dir).map_err(|e| IntegrityError::io(&dir, e))?;
        let bytes: Vec<u8> =
            removed.iter().flat_map(|(seq, leaf)| seq.to_be_bytes().into_iter().chain(*leaf)).collect();
        write_synced(&dir.join(removal_file_name(index)), &bytes, false)?;
        let range = (removed.first().map_or(0, |r| r.0), removed.last().map_or(0, |r| r.0));
        let digest = sha256(&bytes);
        self.append_line(&mut tail, key, LineKind::Removal, range, &digest, Some(scope))
    }

    fn append_line(
        &self,
        tail: &mut Tail,
        key: &SigningKey,
        kind: LineKind,
        (first_seq, last_seq): (Seq, Seq),
        root: &Hash,
        removal: Option<RemovalScope>,
    ) -> Result<Checkpoint, IntegrityError> {
        let mut checkpoint = Checkpoint {
            index: tail.line.as_ref().map_or(0, |c| c.index + 1),
            kind,
            first_seq,
            last_seq,
            root: to_hex(root),
            removal,
            prev: tail.line.as_ref().map_or_else(|| GENESIS_PREV.to_string(), Checkpoint::chain_hash),
            written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            public_key: key.public_hex(),
            signature: String::new(),
        };
        checkpoint.signature = key.sign(&checkpoint.signed_message());
        let mut line = serde_json::to_string(&checkpoint).expect("checkpoints serialise");
        line.push('\n');
        write_synced(&self.dir.join(CHECKPOINTS_FILE), line.as_bytes(), true)?;
        tail.line = Some(checkpoint.clone());
        Ok(checkpoint)
    }
}

pub fn removal_file_name(index: u64) -> String {
    format!("{index:020}.removed")
}

/// The `(seq, leaf)` pairs a removal line records, read back and checked
/// against its signed digest.
pub fn read_removal(data_dir: &Path, line: &Checkpoint) -> Result<Vec<(Seq, Hash)>, String> {
    let path = data_dir.join(INTEGRITY_DIR).join(REMOVALS_DIR).join(removal_file_name(line.index));
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if to_hex(&sha256(&bytes)) != line.root {
        return Err(format!("{} is not what checkpoint {} signed", path.display(), line.index));
    }
    Ok(bytes
        .chunks(40)
        .filter(|c| c.len() == 40)
        .map(|c| (Seq::from_be_bytes(c[..8].try_into().expect("8 bytes")), c[8..].try_into().expect("32 bytes")))
        .collect())
}

pub fn blocks_file_name(first: Seq, last: Seq) -> String {
    format!("{first:020}-{last:020}.blocks")
}

/// The block hashes stored for a checkpoint, or why they cannot be read.
pub fn read_blocks(data_dir: &Path, checkpoint: &Checkpoint) -> Result<Vec<Hash>, String> {
    let path =
        data_dir.join(INTEGRITY_DIR).join(BLOCKS_DIR).join(blocks_file_name(checkpoint.first_seq, checkpoint.last_seq));
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !bytes.len().is_multiple_of(32) {
        return Err(format!("{}: {} bytes is not a whole number of hashes", path.display(), bytes.len()));
    }
    Ok(bytes.chunks(32).map(|c| c.try_into().expect("32-byte chunks")).collect())
}

/// The lines of the checkpoint log in order, each parsed or the reason it
/// could not be. No log is no lines.
pub fn read_checkpoints(data_dir: &Path) -> Result<Vec<Result<Checkpoint, String>>, IntegrityError> {
    let path = data_dir.join(INTEGRITY_DIR).join(CHECKPOINTS_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IntegrityError::io(&path, e)),
    };
    // Line by line, so that bytes damaged in one line (not even UTF-8) are
    // that line's finding, not a log that cannot be read at all.
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let lines = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    Ok(lines.split(|b| *b == b'\n').map(|line| serde_json::from_slice(line).map_err(|e| e.to_string())).collect())
}

fn refuse_if_damaged(tail: &Tail) -> Result<(), IntegrityError> {
    match &tail.damaged {
        Some(reason) => Err(IntegrityError::Damaged(reason.clone())),
        None => Ok(()),
    }
}

/// Cuts off bytes after the last newline of the log at `path`: what an
/// append wrote before a crash stopped it, never acknowledged to anyone.
fn cut_torn_tail(path: &Path) -> Result<(), IntegrityError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(IntegrityError::io(path, e)),
    };
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if whole == bytes.len() {
        return Ok(());
    }
    tracing::warn!(path = %path.display(), torn_bytes = bytes.len() - whole, "cutting off a checkpoint line an interrupted append left unfinished");
    truncate_synced(path, whole as u64).map_err(|e| IntegrityError::io(path, e))
}

fn write_synced(path: &Path, bytes: &[u8], append: bool) -> Result<(), IntegrityError> {
    crate::storage::write_synced(path, bytes, append).map_err(|e| IntegrityError::io(path, e))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn lines_chain_and_signatures_cover_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let key_path = keys.path().join("signing.key");
        let public = SigningKey::create(&key_path).unwrap();
        assert!(SigningKey::create(&key_path).is_err(), "never replaced");
        let key = SigningKey::load(&key_path, dir.path()).unwrap();
        assert_eq!(key.public_hex(), public);
        assert_eq!(fs::read_to_string(public_key_path(&key_path)).unwrap().trim(), public);

        let log = CheckpointLog::open(dir.path()).unwrap();
        let leaves: Vec<Hash> = (0..300u32).map(|i| merkle::leaf_hash(&i.to_be_bytes())).collect();
        let first = log.append(&key, 1, &leaves[..100]).unwrap();
        assert!(matches!(log.append(&key, 102, &leaves[100..]), Err(IntegrityError::Gap { expected: 101, got: 102 })));
        let second = CheckpointLog::open(dir.path()).unwrap().append(&key, 101, &leaves[100..]).unwrap();
        assert_eq!((second.index, second.prev.clone()), (1, first.chain_hash()));
        assert_eq!(second.root_hash(), merkle::root(&leaves[100..]));
        assert_eq!(read_blocks(dir.path(), &second).unwrap(), merkle::block_hashes(&leaves[100..]));
        let lines: Vec<Checkpoint> = read_checkpoints(dir.path()).unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(lines, [first.clone(), second]);
        assert!(first.signature_holds(&public));
        let forged = Checkpoint { last_seq: 99, ..first };
        assert!(!forged.signature_holds(&public));
    }

    fn key_and_log(dir: &Path, keys: &Path) -> (SigningKey, Vec<Hash>) {
        let key_path = keys.join("signing.key");
        SigningKey::create(&key_path).unwrap();
        let leaves = (0..30u32).map(|i| merkle::leaf_hash(&i.to_be_bytes())).collect();
        (SigningKey::load(&key_path, dir).unwrap(), leaves)
    }

    #[test]
    fn a_line_an_interrupted_append_left_unfinished_is_cut_off_and_the_chain_goes_on() {
        let (dir, keys) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (key, leaves) = key_and_log(dir.path(), keys.path());
        let first = CheckpointLog::open(dir.path()).unwrap().append(&key, 1, &leaves[..10]).unwrap();
        let path = dir.path().join(INTEGRITY_DIR).join(CHECKPOINTS_FILE);
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"index":1,"kind":"events","first_seq":11,"last"#).unwrap();
        drop(file);

        let second = CheckpointLog::open(dir.path()).unwrap().append(&key, 11, &leaves[10..]).unwrap();
        assert_eq!((second.index, second.prev.clone()), (1, first.chain_hash()));
        let lines: Vec<Result<Checkpoint, String>> = read_checkpoints(dir.path()).unwrap();
        assert_eq!(lines, [Ok(first), Ok(second)]);
    }

    #[test]
    fn a_damaged_whole_line_stops_every_append_instead_of_being_chained_over() {
        let (dir, keys) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (key, leaves) = key_and_log(dir.path(), keys.path());
        let log = CheckpointLog::open(dir.path()).unwrap();
        for first in [1, 11, 21] {
            log.append(&key, first, &leaves[first as usize - 1..first as usize + 9]).unwrap();
        }
        let path = dir.path().join(INTEGRITY_DIR).join(CHECKPOINTS_FILE);
        let text = fs::read_to_string(&path).unwrap();
        let damaged: Vec<String> =
            text.lines().enumerate().map(|(i, l)| if i == 1 { l.replacen('{', "#", 1) } else { l.into() }).collect();
        fs::write(&path, damaged.join("\n") + "\n").unwrap();

        let log = CheckpointLog::open(dir.path()).unwrap();
        let more: Vec<Hash> = (0..5u32).map(|i| merkle::leaf_hash(&i.to_le_bytes())).collect();
        let refused = log.append(&key, 31, &more).unwrap_err().to_string();
        assert!(refused.contains("line 2 of") && refused.contains("does not parse"), "{refused}");
        let removal = RemovalScope { org: "acme".into(), before: "2026-01-01T00:00:00Z".into(), count: 1 };
        assert!(matches!(log.append_removal(&key, removal, &[(3, more[0])]), Err(IntegrityError::Damaged(_))));
        assert_eq!(fs::read_to_string(&path).unwrap(), damaged.join("\n") + "\n", "nothing appended");
    }

    #[test]
    fn a_key_others_can_read_or_inside_the_data_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("signing.key");
        SigningKey::create(&inside).unwrap();
        let err = SigningKey::load(&inside, dir.path()).unwrap_err().to_string();
        assert!(err.contains("inside the data directory"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let elsewhere = tempfile::tempdir().unwrap();
            fs::set_permissions(&inside, fs::Permissions::from_mode(0o644)).unwrap();
            let err = SigningKey::load(&inside, elsewhere.path()).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_cases(256))]

        /// Whatever follows a log's whole lines, it opens: bytes with no
        /// newline are cut off and the chain goes on from the last line;
        /// whole lines that do not parse stop every append, naming the first.
        #[test]
        fn any_bytes_after_a_log_open_as_cut_off_or_damaged(
            lines in 0..3usize,
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let key = SigningKey::from_seed(&[7; SEED_BYTES]);
            let leaves: Vec<Hash> = (0..10u32).map(|i| merkle::leaf_hash(&i.to_be_bytes())).collect();
            let log = CheckpointLog::open(dir.path()).unwrap();
            let written: Vec<Checkpoint> =
                (0..lines).map(|i| log.append(&key, 1 + 3 * i as Seq, &leaves[3 * i..3 * i + 3]).unwrap()).collect();
            let path = dir.path().join(INTEGRITY_DIR).join(CHECKPOINTS_FILE);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::OpenOptions::new().create(true).append(true).open(&path).unwrap().write_all(&garbage).unwrap();

            let log = CheckpointLog::open(dir.path()).unwrap();
            let appended = log.append(&key, 1 + 3 * lines as Seq, &leaves[9..]);
            if garbage.contains(&b'\n') {
                let refused = appended.unwrap_err().to_string();
                proptest::prop_assert!(refused.contains(&format!("line {} of", lines + 1)), "{}", refused);
            } else {
                let line = appended.unwrap();
                let prev = written.last().map_or_else(|| GENESIS_PREV.to_string(), Checkpoint::chain_hash);
                proptest::prop_assert_eq!(line.prev, prev);
                let read: Vec<Checkpoint> = read_checkpoints(dir.path()).unwrap().into_iter().map(Result::unwrap).collect();
                proptest::prop_assert_eq!(read.len(), lines + 1);
            }
        }
    }
}
