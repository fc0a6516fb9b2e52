//! `auditlake verify`: the stored log against its signed checkpoints.
//!
//! 1. The checkpoint log: every line parses, is signed by the key, names the
//!    hash of the line before, and starts where the one before ended.
//! 2. Each checkpoint's stored block hashes lead to its signed root.
//! 3. The manifest lists segments that cover the log without gaps, and
//!    every segment file it lists is there; no file is there unlisted.
//! 4. Each segment is read whole: its rows are in segment order, hold each
//!    seq of its range once, and hash to the checkpointed blocks.
//!
//! Each finding names its kind and where: the segment, the seqs, the
//! checkpoint. Events sealed after the last checkpoint, and events not yet
//! sealed, are reported as not covered, which is not a finding.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::checkpoint::{self, Checkpoint, GENESIS_PREV, LineKind};
use super::merkle::{self, BLOCK_LEAVES, Hash};
use super::{IntegrityError, SigningKey, read_segment};
use crate::model::Seq;
use datafusion::parquet::file::metadata::ParquetMetaDataReader;

use crate::storage::manifest::{self, Manifest, SegmentMeta};
use crate::storage::objects::SegmentStore;
use crate::storage::row_index::{self, RowIndexBuilder, RowIndexLocation, RowIndexes};
use crate::storage::segment::LiveSegment;

/// What is wrong, by kind; the kinds differ in what an auditor does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// An event's stored fields differ from what was checkpointed.
    Modified,
    /// Seqs that were checkpointed are not stored.
    Missing,
    /// Rows stored that no checkpoint or segment range accounts for.
    Extra,
    /// Rows out of the order every segment is written in.
    Reordered,
    /// A checkpoint line not signed by the key.
    BadSignature,
    /// A checkpoint line that does not follow the one before.
    BrokenChain,
    /// A segment file or the manifest cannot be read as written.
    Unreadable,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Modified => "modified",
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Reordered => "reordered",
            Kind::BadSignature => "bad signature",
            Kind::BrokenChain => "broken chain",
            Kind::Unreadable => "unreadable",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub checkpoints: usize,
    /// Events whose leaves were checked against a checkpoint.
    pub events_verified: u64,
    /// Events removed by retention, as signed removal records list them.
    pub events_removed: u64,
    /// The last seq a checkpoint covers (0: none).
    pub checkpointed_through: Seq,
    /// The last seq the manifest says is sealed.
    pub sealed_through: Seq,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty()
    }

    fn found(&mut self, kind: Kind, detail: String) {
        self.findings.push(Finding { kind, detail });
    }
}

/// Seqs `from..=to` to verify; `None` for all.
pub type SeqRange = (Option<Seq>, Option<Seq>);

/// Checks the log of `data_dir` (segments in `store`) against its
/// checkpoints. Errors only when verification cannot run at all.
pub fn verify(
    data_dir: &Path,
    store: &Arc<SegmentStore>,
    key: &SigningKey,
    range: SeqRange,
) -> Result<Report, IntegrityError> {
    let mut report = Report::default();
    let in_range =
        |first: Seq, last: Seq| range.0.is_none_or(|from| last >= from) && range.1.is_none_or(|to| first <= to);
    let checkpoints = check_chain(data_dir, key, &mut report)?;
    report.checkpoints = checkpoints.len();
    report.checkpointed_through =
        checkpoints.iter().filter(|(c, _)| c.kind == LineKind::Events).map(|(c, _)| c.last_seq).max().unwrap_or(0);

    // Events removed by retention, as their removal lines recorded them.
    let mut removed: BTreeMap<Seq, Hash> = BTreeMap::new();
    for (line, _) in checkpoints.iter().filter(|(c, signed)| *signed && c.kind == LineKind::Removal) {
        match checkpoint::read_removal(data_dir, line) {
            Ok(leaves) => {
                report.events_removed += leaves.len() as u64;
                removed.extend(leaves);
            }
            Err(reason) => {
                report.found(Kind::Modified, format!("removal record of checkpoint {}: {reason}", line.index))
            }
        }
    }

    // Blocks of every checkpoint in range, checked against its signed root.
    let mut expected: Vec<(Checkpoint, Vec<Hash>)> = Vec::new();
    let events = checkpoints.into_iter().filter(|(c, _)| c.kind == LineKind::Events);
    for (checkpoint, _) in events.filter(|(c, signed)| *signed && in_range(c.first_seq, c.last_seq)) {
        match checkpoint::read_blocks(data_dir, &checkpoint) {
            Ok(blocks) if merkle::root_from_blocks(&blocks, checkpoint.leaf_count()) == checkpoint.root_hash() => {
                expected.push((checkpoint, blocks));
            }
            Ok(_) => report.found(
                Kind::Modified,
                format!(
                    "block hashes of checkpoint {} (seqs {}..={}) do not lead to its signed root",
                    checkpoint.index, checkpoint.first_seq, checkpoint.last_seq
                ),
            ),
            Err(reason) => {
                report.found(Kind::Missing, format!("block hashes of checkpoint {}: {reason}", checkpoint.index))
            }
        }
    }

    let manifest =
        match store.read_manifest().and_then(|bytes| Manifest::decode(bytes.as_deref(), &store.manifest_display())) {
            Ok(manifest) => manifest,
            Err(e) => {
                report.found(Kind::Unreadable, e.to_string());
                return Ok(report);
            }
        };
    report.sealed_through = manifest.sealed_seq;
    check_manifest(store, &manifest, report.checkpointed_through, &mut report)?;

    // Segments in seq order; a checkpoint is checked once every segment it
    // reaches into has been read.
    let mut leaves: BTreeMap<Seq, (Hash, usize)> = BTreeMap::new();
    let mut pending = expected.into_iter().peekable();
    let segments = &manifest.segments;
    for (at, meta) in segments.iter().enumerate() {
        if !in_range(meta.min_seq, meta.max_seq) {
            continue;
        }
        let segment = LiveSegment::new(meta.clone(), store);
        match read_segment(store, &segment, key.digest_key()) {
            Err(e) => report.found(
                Kind::Unreadable,
                format!("segment {} (seqs {}..={}): {e}", meta.file, meta.min_seq, meta.max_seq),
            ),
            Ok(rows) => {
                if let Err(reason) = check_row_indexes(store, meta, rows.indexes) {
                    report.found(Kind::Modified, format!("segment {}: {reason}", meta.file));
                }
                let counted = manifest::org_counts(rows.org_rows.iter().map(|(org, n)| (org.as_str(), *n)));
                if meta.orgs.is_some() && meta.orgs != counted {
                    report.found(
                        Kind::Modified,
                        format!(
                            "segment {}: the manifest's rows per organisation are not the ones its rows make \
                             (filters by org_id would select wrong rows)",
                            meta.file
                        ),
                    );
                }
                if let Some((a, b)) = rows.out_of_order {
                    report.found(
                        Kind::Reordered,
                        format!(
                            "segment {}: the row of seq {b} comes after the row of seq {a}, out of segment order",
                            meta.file
                        ),
                    );
                }
                for (seq, leaf) in rows.leaves {
                    if !(meta.min_seq..=meta.max_seq).contains(&seq) {
                        report.found(
                            Kind::Extra,
                            format!(
                                "segment {} holds seq {seq}, outside its range {}..={}",
                                meta.file, meta.min_seq, meta.max_seq
                            ),
                        );
                    } else if leaves.insert(seq, (leaf, at)).is_some() {
                        report.found(Kind::Extra, format!("segment {} holds seq {seq} more than once", meta.file));
                    }
                }
                let missing = missing_runs(&leaves, &removed, meta.min_seq, meta.max_seq);
                for (a, b) in missing {
                    report.found(Kind::Missing, format!("segment {} lacks seqs {a}..={b}", meta.file));
                }
            }
        }
        while let Some((checkpoint, _)) = pending.peek() {
            if checkpoint.last_seq > meta.max_seq {
                break;
            }
            let (checkpoint, blocks) = pending.next().expect("peeked");
            check_blocks(&checkpoint, &blocks, &leaves, &removed, segments, &mut report);
        }
        let below = meta.max_seq + 1;
        leaves = leaves.split_off(&below);
    }
    for (checkpoint, blocks) in pending {
        check_blocks(&checkpoint, &blocks, &leaves, &removed, segments, &mut report);
    }
    Ok(report)
}

/// The checkpoint lines that parse, in order, each with whether its
/// signature holds; what is wrong with them goes to `report`.
fn check_chain(
    data_dir: &Path,
    key: &SigningKey,
    report: &mut Report,
) -> Result<Vec<(Checkpoint, bool)>, IntegrityError> {
    let public = key.public_hex();
    let mut good: Vec<(Checkpoint, bool)> = Vec::new();
    for (line, parsed) in checkpoint::read_checkpoints(data_dir)?.into_iter().enumerate() {
        let checkpoint = match parsed {
            Ok(checkpoint) => checkpoint,
            Err(reason) => {
                report.found(Kind::BrokenChain, format!("checkpoint line {} cannot be read: {reason}", line + 1));
                continue;
            }
        };
        let before = good.last().map(|(c, _)| c);
        let (prev, index) = before.map_or((GENESIS_PREV.to_string(), 0), |b| (b.chain_hash(), b.index + 1));
        // Events lines cover the log in order; removal lines name seqs of
        // ranges already or about to be covered.
        let events = good.iter().filter(|(c, _)| c.kind == LineKind::Events);
        let first = events.map(|(c, _)| c.last_seq).max().unwrap_or(0) + 1;
        let signed = checkpoint.public_key == public && checkpoint.signature_holds(&public);
        if !signed {
            report.found(
                Kind::BadSignature,
                format!(
                    "checkpoint {} (line {}, seqs {}..={}) is not signed by key {public}",
                    checkpoint.index,
                    line + 1,
                    checkpoint.first_seq,
                    checkpoint.last_seq
                ),
            );
        }
        if checkpoint.prev != prev || checkpoint.index != index {
            report.found(
                Kind::BrokenChain,
                format!(
                    "checkpoint {} (line {}) does not follow checkpoint {}",
                    checkpoint.index,
                    line + 1,
                    index as i64 - 1
                ),
            );
        }
        let continues = checkpoint.kind == LineKind::Removal || checkpoint.first_seq == first;
        if !continues || checkpoint.last_seq < checkpoint.first_seq {
            report.found(
                Kind::BrokenChain,
                format!(
                    "checkpoint {} covers seqs {}..={}, expected a range from {first}",
                    checkpoint.index, checkpoint.first_seq, checkpoint.last_seq
                ),
            );
        }
        // An unsigned line vouches for nothing: its range goes unverified,
        // but the next line still chains on it.
        good.push((checkpoint, signed));
    }
    Ok(good)
}

/// The manifest's segments against each other, the checkpoints and the files.
fn check_manifest(
    store: &SegmentStore,
    manifest: &Manifest,
    checkpointed: Seq,
    report: &mut Report,
) -> Result<(), IntegrityError> {
    let mut next = 1;
    for meta in &manifest.segments {
        if meta.min_seq > next {
            report.found(
                Kind::Missing,
                format!("no segment holds seqs {next}..={} (the manifest lists none)", meta.min_seq - 1),
            );
        } else if meta.min_seq < next {
            report.found(Kind::Extra, format!("segment {} overlaps the seqs of the segment before it", meta.file));
        }
        next = next.max(meta.max_seq + 1);
    }
    if manifest.sealed_seq < checkpointed {
        report.found(
            Kind::Missing,
            format!("the manifest says seqs up to {} are sealed, but checkpoints cover up to {checkpointed}: segments were dropped or the manifest replaced", manifest.sealed_seq),
        );
    }
    let files = store.list_segment_files()?;
    for meta in &manifest.segments {
        if !files.contains(&meta.file) {
            report.found(
                Kind::Missing,
                format!("segment file {} (seqs {}..={}) is gone", meta.file, meta.min_seq, meta.max_seq),
            );
        }
    }
    for file in files.iter().filter(|f| f.ends_with(".parquet") && !manifest.segments.iter().any(|m| &m.file == *f)) {
        report.found(Kind::Extra, format!("segment file {file} is not in the manifest"));
    }
    Ok(())
}

/// Whether the row indexes stored in a segment file are the ones its rows
/// make: a damaged one that still parses would make lookups by `content_id`
/// or `actor_id` select other events' rows.
fn check_row_indexes(store: &SegmentStore, meta: &SegmentMeta, rebuilt: RowIndexes) -> Result<(), String> {
    let wanted = [(meta.content_index, rebuilt.content), (meta.actor_index, rebuilt.actor)];
    let wanted: Vec<(RowIndexLocation, RowIndexBuilder)> =
        wanted.into_iter().filter_map(|(location, index)| Some((location?, index))).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let bytes = store.read_segment_file(&meta.file).map_err(|e| e.to_string())?;
    let footer =
        ParquetMetaDataReader::new().parse_and_finish(&bytes).map_err(|e| format!("footer unreadable: {e}"))?;
    let group_rows: Vec<u64> = footer.row_groups().iter().map(|g| g.num_rows() as u64).collect();
    for (location, rebuilt) in wanted {
        let column = rebuilt.kind().column();
        let stored = bytes.get(location.offset as usize..(location.offset + location.length) as usize);
        // Rebuilt in the format the stored index was written in.
        let version = stored.and_then(|stored| rebuilt.kind().version_of(stored)).unwrap_or(row_index::VERSION);
        match (rebuilt.finish_as(version, &group_rows), stored) {
            (Some(want), Some(stored)) if want == stored => {}
            _ => {
                return Err(format!(
                    "its {} index is not the one its rows make (lookups by {column} would select wrong rows)",
                    column.trim_end_matches("_id")
                ));
            }
        }
    }
    Ok(())
}

/// Runs of seqs in `first..=last` that neither `leaves` nor `removed` has.
fn missing_runs(
    leaves: &BTreeMap<Seq, (Hash, usize)>,
    removed: &BTreeMap<Seq, Hash>,
    first: Seq,
    last: Seq,
) -> Vec<(Seq, Seq)> {
    let mut runs = Vec::new();
    let mut next = first;
    let mut accounted: Vec<Seq> = leaves.range(first..=last).map(|(seq, _)| *seq).collect();
    accounted.extend(removed.range(first..=last).map(|(seq, _)| *seq));
    accounted.sort_unstable();
    accounted.dedup();
    for seq in accounted {
        if seq > next {
            runs.push((next, seq - 1));
        }
        next = seq + 1;
    }
    if next <= last {
        runs.push((next, last));
    }
    runs
}

/// One checkpoint's blocks against the leaves read; names each block that
/// differs (blocks with missing seqs were reported as missing already).
fn check_blocks(
    checkpoint: &Checkpoint,
    blocks: &[Hash],
    leaves: &BTreeMap<Seq, (Hash, usize)>,
    removed: &BTreeMap<Seq, Hash>,
    segments: &[SegmentMeta],
    report: &mut Report,
) {
    for (b, want) in blocks.iter().enumerate() {
        let first = checkpoint.first_seq + (b * BLOCK_LEAVES) as Seq;
        let last = (first + BLOCK_LEAVES as Seq - 1).min(checkpoint.last_seq);
        // Stored rows first: a removal recorded just before a crash may
        // list rows its segment still holds.
        let found: Vec<(Hash, Option<usize>)> = (first..=last)
            .map_while(|seq| match leaves.get(&seq) {
                Some((leaf, at)) => Some((*leaf, Some(*at))),
                None => removed.get(&seq).map(|leaf| (*leaf, None)),
            })
            .collect();
        if found.len() as Seq != last - first + 1 {
            continue;
        }
        let hashes: Vec<Hash> = found.iter().map(|(h, _)| *h).collect();
        if merkle::root(&hashes).as_ref() == Some(want) {
            report.events_verified += found.iter().filter(|(_, at)| at.is_some()).count() as u64;
        } else {
            let files: std::collections::BTreeSet<&str> =
                found.iter().filter_map(|(_, at)| at.map(|at| segments[at].file.as_str())).collect();
            report.found(
                Kind::Modified,
                format!(
                    "an event among seqs {first}..={last} (segment {}) differs from checkpoint {}",
                    files.into_iter().collect::<Vec<_>>().join(", "),
                    checkpoint.index
                ),
            );
        }
    }
}
