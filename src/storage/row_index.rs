//! The row indexes of a segment: for every `content_id`, and for every
//! `actor_id`, the rows that hold it, so "who touched this page" and
//! "what did this person do" read those rows and nothing else.
//!
//! Segments are sorted by actor, so one content id is scattered over many
//! row groups; bloom filters find the groups, but each group's `content_id`
//! pages (and their dictionary) still had to be decoded to find the rows:
//! most of a content lookup's time. One actor's rows are one run per
//! organisation, but finding them took statistics, a bloom filter and the
//! page index of every row group that might hold them, then decoding and
//! comparing the `actor_id` of every row in the pages found (16Ki rows
//! compared for 11 kept). An index names the rows exactly, so a query never
//! reads the column at all unless it asks for it.
//!
//! Both live inside the segment's own Parquet file, after the last row group
//! and before the footer (where Parquet writers also put page indexes and
//! bloom filters): Parquet readers follow the footer's offsets and never see
//! them, and the segment stays one file, published, copied and deleted as
//! one. The manifest records where they are ([`RowIndexLocation`]), and the
//! footer says so too ([`RowIndexKind::footer_key`]), for other tools.
//!
//! Format (versions 2 and 3), little-endian, built to be read with three range
//! reads per lookup, two of them the same for every key (the head, the
//! bucket starts) and one small (the bucket):
//!
//! ```text
//! magic         b"ALCIDX03" (content ids) or b"ALAIDX03" (actor ids)
//! buckets B     u32, a power of two
//! groups G      u32
//! group rows    G × u32            rows of each row group, in file order
//! bucket starts (B + 1) × u32      byte offsets into the entries
//! entries       per bucket, sorted by key:
//!               shared, len, key bytes after the first `shared` (UTF-8)
//!               it has in common with the bucket's previous key, then
//!   content:    n, first row, n - 1 row deltas
//!               (n = 0: the id is in more rows than its version lists,
//!               `max_listed_rows`, which are not listed)
//!   actor:      n, n × (rows since the previous run's end, run length)
//! ```
//!
//! Content ids are listed up to a number of rows: listing every row of every
//! frequent id cost 2 bytes per event, and a lookup of an id past the limit
//! scans the segment with the filter (bloom filters, then `content_id`
//! decoded and compared in every row group they keep). Version 2 listed at
//! most 16 rows, reasoning that an id in more rows than the segment has row
//! groups is in nearly every group anyway; but the scan also decodes and
//! compares the id column itself, the longest read, and on the independent
//! shape ids with 17 to 256 rows per segment (a sixth of the events) made a
//! content lookup's slow tail. Version 3 lists up to 256 (same layout; the
//! limit goes with the version, so `verify` rebuilds each index by its own).
//! Actors are always listed: their rows are runs (one per organisation the
//! id acts in), a few bytes each.
//!
//! Inside entries every number is an unsigned LEB128 varint: a content id's
//! rows are few and far apart, and varints keep the index smaller than
//! fixed-width u32s by about a third. Keys are front-coded: sorted within
//! their bucket, neighbours share a prefix (`page-1`, `user-61`), which
//! version 1 (`...01`, every key whole; still read) stored again each time.
//! Versions 2 and 3 differ only in how many rows of a content id they list.
//!
//! A key's bucket is the low bits of its 64-bit FNV-1a hash. Rows are
//! numbered from 0 over the whole file. This module builds and reads the
//! bytes; it never decides which segments a query reads.

use std::collections::HashMap;
use std::ops::Range;

use datafusion::arrow::array::{AsArray, RecordBatch};
use serde::{Deserialize, Serialize};

/// Most rows of one content id an index of format `version` lists (see above).
pub fn max_listed_rows(version: u8) -> usize {
    if version >= 3 { 256 } else { 16 }
}
/// Keys per bucket the index aims at: a lookup reads one bucket.
const KEYS_PER_BUCKET: usize = 32;
/// The format version written; versions 1 to 3 are read.
pub const VERSION: u8 = 3;
const MAX_BUCKETS: usize = 1 << 16;
/// Longest key the index takes. Validation keeps ids far shorter
/// (`model::MAX_KEY_FIELD_BYTES`); a segment with a longer one gets no index
/// rather than one that misses rows.
const MAX_KEY_BYTES: usize = 64 * 1024;

/// Which column an index is over; the two differ in how they list rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowIndexKind {
    /// `content_id`: each id's rows one by one, up to [`max_listed_rows`].
    Content,
    /// `actor_id`: each id's runs of rows, all of them.
    Actor,
}

impl RowIndexKind {
    /// The table column the index is over.
    pub fn column(self) -> &'static str {
        match self {
            RowIndexKind::Content => "content_id",
            RowIndexKind::Actor => "actor_id",
        }
    }

    fn magic(self, version: u8) -> [u8; 8] {
        let mut magic = match self {
            RowIndexKind::Content => *b"ALCIDX00",
            RowIndexKind::Actor => *b"ALAIDX00",
        };
        magic[7] = b'0' + version;
        magic
    }

    /// The format version of index bytes of this kind, when they start with
    /// a magic it reads.
    pub fn version_of(self, bytes: &[u8]) -> Option<u8> {
        (1..=VERSION).find(|&version| bytes.starts_with(&self.magic(version)))
    }

    /// Key of the footer entry that points at the index (`"offset,length"`).
    pub fn footer_key(self) -> &'static str {
        match self {
            RowIndexKind::Content => "auditlake.content_index",
            RowIndexKind::Actor => "auditlake.actor_index",
        }
    }
}

/// Where a segment's row index lies in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowIndexLocation {
    pub offset: u64,
    pub length: u64,
}

impl RowIndexLocation {
    /// The byte range of the index's head: magic, sizes and group rows, for
    /// an index over `groups` row groups (the bucket starts follow it).
    fn head_length(groups: u32) -> u64 {
        16 + 4 * groups as u64
    }

    /// The first bytes to read: the head of any index over up to 250 row
    /// groups; [`RowIndexHead::parse`] asks for more when needed.
    pub fn first_read(&self) -> Range<u64> {
        self.offset..self.offset + self.length.min(1024)
    }
}

/// Collects each key's runs of rows as a segment is written.
#[derive(Debug)]
pub struct RowIndexBuilder {
    kind: RowIndexKind,
    runs: HashMap<String, Vec<Range<u32>>>,
    next_row: u64,
    unindexable: bool,
}

impl RowIndexBuilder {
    pub fn new(kind: RowIndexKind) -> Self {
        RowIndexBuilder { kind, runs: HashMap::new(), next_row: 0, unindexable: false }
    }

    pub fn kind(&self) -> RowIndexKind {
        self.kind
    }

    /// Adds the next rows of the file; `keys` yields each row's key (`None`
    /// for rows without one).
    pub fn add<'a>(&mut self, keys: impl Iterator<Item = Option<&'a str>>) {
        for key in keys {
            if let Some(key) = key {
                self.unindexable |= key.len() > MAX_KEY_BYTES || self.next_row >= u64::from(u32::MAX);
                let row = self.next_row as u32;
                match self.runs.get_mut(key) {
                    Some(runs) => match runs.last_mut() {
                        Some(run) if run.end == row => run.end += 1,
                        _ => runs.push(row..row + 1),
                    },
                    None => {
                        self.runs.insert(key.to_owned(), std::iter::once(row..row + 1).collect());
                    }
                }
            }
            self.next_row += 1;
        }
    }

    /// Adds the rows of `batch` (table or segment schema), whose column
    /// this index is over.
    pub fn add_batch(&mut self, batch: &RecordBatch) {
        let keys = batch.column_by_name(self.kind.column()).expect("every schema has the indexed columns");
        self.add(keys.as_string::<i32>().iter());
    }

    /// The index's bytes, for a file whose row groups hold `group_rows`;
    /// `None` when some row cannot be indexed exactly.
    pub fn finish(self, group_rows: &[u64]) -> Option<Vec<u8>> {
        self.finish_as(VERSION, group_rows)
    }

    /// [`RowIndexBuilder::finish`] in format `version` (`verify` compares a
    /// stored index with the one the rows make in its own version).
    pub fn finish_as(self, version: u8, group_rows: &[u64]) -> Option<Vec<u8>> {
        if self.unindexable || group_rows.iter().sum::<u64>() != self.next_row {
            return None;
        }
        let buckets = (self.runs.len() / KEYS_PER_BUCKET).clamp(1, MAX_BUCKETS).next_power_of_two();
        type Entry<'a> = (&'a String, &'a Vec<Range<u32>>);
        let mut by_bucket: Vec<Vec<Entry>> = vec![Vec::new(); buckets];
        for (key, runs) in &self.runs {
            by_bucket[bucket_of(key, buckets as u32)].push((key, runs));
        }
        for bucket in &mut by_bucket {
            bucket.sort_unstable_by_key(|(key, _)| *key);
        }
        let mut entries = Vec::new();
        let mut starts = Vec::with_capacity(buckets + 1);
        for bucket in by_bucket {
            starts.push(entries.len() as u32);
            let mut previous: &[u8] = &[];
            for (key, runs) in bucket {
                let key = key.as_bytes();
                let shared = match version {
                    1 => 0,
                    _ => previous.iter().zip(key).take_while(|(a, b)| a == b).count(),
                };
                if version > 1 {
                    put_varint(&mut entries, shared as u32);
                }
                put_varint(&mut entries, (key.len() - shared) as u32);
                entries.extend_from_slice(&key[shared..]);
                previous = key;
                match self.kind {
                    RowIndexKind::Content => put_rows(&mut entries, runs, max_listed_rows(version)),
                    RowIndexKind::Actor => put_runs(&mut entries, runs),
                }
            }
        }
        starts.push(entries.len() as u32);

        let mut out = Vec::with_capacity(16 + 4 * (group_rows.len() + starts.len()) + entries.len());
        out.extend_from_slice(&self.kind.magic(version));
        out.extend_from_slice(&(buckets as u32).to_le_bytes());
        out.extend_from_slice(&(group_rows.len() as u32).to_le_bytes());
        for rows in group_rows {
            out.extend_from_slice(&(*rows as u32).to_le_bytes());
        }
        for start in starts {
            out.extend_from_slice(&start.to_le_bytes());
        }
        out.extend_from_slice(&entries);
        Some(out)
    }
}

/// A content id's entry: its rows one by one, or none past `listed`.
fn put_rows(entries: &mut Vec<u8>, runs: &[Range<u32>], listed: usize) {
    let rows: usize = runs.iter().map(|run| run.len()).sum();
    if rows > listed {
        put_varint(entries, 0);
        return;
    }
    put_varint(entries, rows as u32);
    let mut previous = 0;
    for row in runs.iter().flat_map(|run| run.clone()) {
        put_varint(entries, row - previous);
        previous = row;
    }
}

/// An actor's entry: its runs, each as the gap since the previous one's end
/// and its length.
fn put_runs(entries: &mut Vec<u8>, runs: &[Range<u32>]) {
    put_varint(entries, runs.len() as u32);
    let mut previous_end = 0;
    for run in runs {
        put_varint(entries, run.start - previous_end);
        put_varint(entries, run.end - run.start);
        previous_end = run.end;
    }
}

/// Both indexes of a segment, built from its rows as they are written (and
/// again by `verify`, from the rows read back).
#[derive(Debug)]
pub struct RowIndexes {
    pub content: RowIndexBuilder,
    pub actor: RowIndexBuilder,
}

impl Default for RowIndexes {
    fn default() -> Self {
        RowIndexes {
            content: RowIndexBuilder::new(RowIndexKind::Content),
            actor: RowIndexBuilder::new(RowIndexKind::Actor),
        }
    }
}

impl RowIndexes {
    pub fn add_batch(&mut self, batch: &RecordBatch) {
        self.content.add_batch(batch);
        self.actor.add_batch(batch);
    }
}

fn bucket_of(id: &str, buckets: u32) -> usize {
    (fnv1a(id.as_bytes()) & (buckets as u64 - 1)) as usize
}

/// 64-bit FNV-1a: stable across versions and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Why index bytes could not be read. The query falls back to scanning.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} index at byte {offset} is unusable: {reason}")]
pub struct RowIndexError {
    kind: RowIndexKind,
    offset: u64,
    reason: &'static str,
}

/// The head of an index: enough to find the table of bucket starts. A
/// lookup reads that table as it is (up to 256 KiB, kept by the segment
/// cache), picks its bucket's two starts without decoding the rest (at 100M
/// events a query looks into hundreds of indexes), and reads the bucket.
#[derive(Debug, Clone)]
pub struct RowIndexHead {
    kind: RowIndexKind,
    version: u8,
    location: RowIndexLocation,
    buckets: u32,
    /// Rows of each row group, in file order.
    pub group_rows: Vec<u32>,
}

/// What parsing the first bytes of an index gave.
pub enum Parsed {
    Head(RowIndexHead),
    /// The head is longer than the bytes given: read this range instead.
    NeedRange(Range<u64>),
}

impl RowIndexHead {
    /// Parses the head of a `kind` index from `bytes`, read from its start.
    pub fn parse(kind: RowIndexKind, location: RowIndexLocation, bytes: &[u8]) -> Result<Parsed, RowIndexError> {
        let bad = |reason| RowIndexError { kind, offset: location.offset, reason };
        let Some(version) = kind.version_of(bytes).filter(|_| bytes.len() >= 16) else {
            return Err(bad("no index magic of its kind"));
        };
        let buckets = u32_at(bytes, 8);
        let groups = u32_at(bytes, 12);
        if !buckets.is_power_of_two() || buckets as usize > MAX_BUCKETS {
            return Err(bad("bucket count is not a power of two up to 65536"));
        }
        let head_length = RowIndexLocation::head_length(groups);
        if head_length + 4 * (u64::from(buckets) + 1) > location.length {
            return Err(bad("bucket starts run past the index"));
        }
        if (bytes.len() as u64) < head_length {
            return Ok(Parsed::NeedRange(location.offset..location.offset + head_length));
        }
        let group_rows = (0..groups as usize).map(|g| u32_at(bytes, 16 + 4 * g)).collect();
        Ok(Parsed::Head(RowIndexHead { kind, version, location, buckets, group_rows }))
    }

    fn bad(&self, reason: &'static str) -> RowIndexError {
        RowIndexError { kind: self.kind, offset: self.location.offset, reason }
    }

    fn starts_at(&self) -> u64 {
        self.location.offset + RowIndexLocation::head_length(self.group_rows.len() as u32)
    }

    /// The byte range of the file holding the table of bucket starts.
    pub fn starts_range(&self) -> Range<u64> {
        self.starts_at()..self.starts_at() + 4 * (u64::from(self.buckets) + 1)
    }

    /// The byte range of the file holding `key`'s bucket, given the table
    /// [`RowIndexHead::starts_range`] named.
    pub fn bucket_range(&self, key: &str, starts: &[u8]) -> Result<Range<u64>, RowIndexError> {
        if starts.len() as u64 != 4 * (u64::from(self.buckets) + 1) {
            return Err(self.bad("truncated bucket starts"));
        }
        let bucket = bucket_of(key, self.buckets);
        let (start, end) = (u64::from(u32_at(starts, 4 * bucket)), u64::from(u32_at(starts, 4 * bucket + 4)));
        let entries_at = self.starts_range().end;
        if start > end || entries_at + end > self.location.offset + self.location.length {
            return Err(self.bad("bucket starts out of order or past the index"));
        }
        Ok(entries_at + start..entries_at + end)
    }

    /// The runs of rows holding `key`, in file order, given the bytes of its
    /// bucket: empty when no row does, `None` when too many do to be listed.
    pub fn rows_in_bucket(&self, key: &str, bucket: &[u8]) -> Result<Option<Vec<Range<u32>>>, RowIndexError> {
        let truncated = || self.bad("truncated entry");
        let out_of_range = || self.bad("row number out of range");
        let mut at = 0;
        // The key being read, built from its neighbour's shared bytes.
        let mut name: Vec<u8> = Vec::new();
        while at < bucket.len() {
            let shared = match self.version {
                1 => 0,
                _ => take_varint(bucket, &mut at).ok_or_else(truncated)? as usize,
            };
            if shared > name.len() {
                return Err(self.bad("a key shares more than its neighbour has"));
            }
            name.truncate(shared);
            let length = take_varint(bucket, &mut at).ok_or_else(truncated)? as usize;
            name.extend_from_slice(bucket.get(at..at.saturating_add(length)).ok_or_else(truncated)?);
            at += length;
            let wanted = name == key.as_bytes();
            let count = take_varint(bucket, &mut at).ok_or_else(truncated)?;
            let mut runs = Vec::new();
            let mut row = 0u32;
            for _ in 0..count {
                let start =
                    row.checked_add(take_varint(bucket, &mut at).ok_or_else(truncated)?).ok_or_else(out_of_range)?;
                let length = match self.kind {
                    RowIndexKind::Content => 1,
                    RowIndexKind::Actor => take_varint(bucket, &mut at).ok_or_else(truncated)?,
                };
                let end = start.checked_add(length).ok_or_else(out_of_range)?;
                if wanted {
                    runs.push(start..end);
                }
                // Content rows are deltas from the previous row, actor runs
                // gaps from the previous run's end.
                row = match self.kind {
                    RowIndexKind::Content => start,
                    RowIndexKind::Actor => end,
                };
            }
            if wanted {
                let unlisted = self.kind == RowIndexKind::Content && runs.is_empty();
                return Ok(Some(runs).filter(|_| !unlisted));
            }
        }
        Ok(Some(Vec::new()))
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The varint at `*at`, moving past it; `None` when truncated or too long.
fn take_varint(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let mut value = 0u32;
    for shift in [0, 7, 14, 21, 28] {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u32::from(byte & 0x7f).checked_shl(shift)?;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn lookup(kind: RowIndexKind, bytes: &[u8], key: &str) -> Option<Vec<Range<u32>>> {
        let location = RowIndexLocation { offset: 100, length: bytes.len() as u64 };
        // As a file would hold it: 100 bytes of something else first.
        let file: Vec<u8> = std::iter::repeat_n(0u8, 100).chain(bytes.iter().copied()).collect();
        let range = |r: Range<u64>| &file[r.start as usize..r.end as usize];
        let head = match RowIndexHead::parse(kind, location, range(location.first_read())).unwrap() {
            Parsed::Head(head) => head,
            Parsed::NeedRange(r) => match RowIndexHead::parse(kind, location, range(r)).unwrap() {
                Parsed::Head(head) => head,
                Parsed::NeedRange(_) => panic!("asked twice"),
            },
        };
        let bucket = head.bucket_range(key, range(head.starts_range())).unwrap();
        head.rows_in_bucket(key, range(bucket)).unwrap()
    }

    /// A content id's rows, one by one.
    fn content_rows(bytes: &[u8], id: &str) -> Option<Vec<u32>> {
        lookup(RowIndexKind::Content, bytes, id).map(|runs| runs.into_iter().flatten().collect())
    }

    fn build(kind: RowIndexKind, keys: &[Option<String>], group_rows: &[u64]) -> Vec<u8> {
        build_as(VERSION, kind, keys, group_rows)
    }

    fn build_as(version: u8, kind: RowIndexKind, keys: &[Option<String>], group_rows: &[u64]) -> Vec<u8> {
        let mut builder = RowIndexBuilder::new(kind);
        let (first, rest) = keys.split_at(keys.len() / 2);
        builder.add(first.iter().map(|k| k.as_deref()));
        builder.add(rest.iter().map(|k| k.as_deref()));
        builder.finish_as(version, group_rows).expect("an index")
    }

    /// What a full scan finds: the runs of rows holding `key`.
    fn scanned_runs(keys: &[Option<String>], key: &str) -> Vec<Range<u32>> {
        let mut runs: Vec<Range<u32>> = Vec::new();
        for (row, k) in keys.iter().enumerate() {
            let row = row as u32;
            if k.as_deref() == Some(key) {
                match runs.last_mut() {
                    Some(run) if run.end == row => run.end += 1,
                    _ => runs.push(row..row + 1),
                }
            }
        }
        runs
    }

    #[test]
    fn every_content_id_finds_exactly_its_rows() {
        // 70,000 ids in 4,096 buckets.
        let ids: Vec<Option<String>> = (0..200_000)
            .map(|i| match i {
                _ if i % 7 == 0 => None,
                _ if i % 500 == 1 => Some("home".to_owned()),
                _ => Some(format!("page-{}", i % 70_000)),
            })
            .collect();
        let bytes = build(RowIndexKind::Content, &ids, &[65_536, 65_536, 68_928]);
        for probe in [2, 3, 699, 12_345, 69_999] {
            let id = format!("page-{probe}");
            let expected: Vec<u32> =
                (0..200_000u32).filter(|&i| ids[i as usize].as_deref() == Some(id.as_str())).collect();
            assert!(!expected.is_empty() && expected.len() <= max_listed_rows(VERSION), "{id}: {expected:?}");
            assert_eq!(content_rows(&bytes, &id), Some(expected), "{id}");
        }
        assert_eq!(content_rows(&bytes, "home"), None, "in 400 rows: not listed");
        assert_eq!(content_rows(&bytes, "page-70000"), Some(vec![]));
        assert_eq!(content_rows(&bytes, ""), Some(vec![]));
    }

    #[test]
    fn every_actor_finds_its_runs_in_each_organisation() {
        // Sorted by organisation, then actor: the same actor id in two
        // organisations is two runs; every actor is listed, however many rows.
        let mut actors: Vec<Option<String>> = Vec::new();
        for org in 0..3 {
            for actor in 0..5_000 {
                if (actor + org) % 4 != 0 {
                    let rows = 1 + (actor * 7 + org) % 40;
                    actors.extend(std::iter::repeat_n(Some(format!("user-{actor}@example.com")), rows));
                }
            }
            actors.extend(std::iter::repeat_n(None, 3));
        }
        let total = actors.len() as u64;
        let bytes = build(RowIndexKind::Actor, &actors, &[32_768, 32_768, total - 65_536]);
        for actor in [1, 2, 3, 4, 39, 1_234, 4_999] {
            let key = format!("user-{actor}@example.com");
            let expected = scanned_runs(&actors, &key);
            assert!(!expected.is_empty(), "{key}");
            assert_eq!(lookup(RowIndexKind::Actor, &bytes, &key), Some(expected), "{key}");
        }
        let in_two = lookup(RowIndexKind::Actor, &bytes, "user-4@example.com").unwrap();
        assert_eq!(in_two.len(), 2, "not in the first organisation: {in_two:?}");
        assert_eq!(lookup(RowIndexKind::Actor, &bytes, "user-5000@example.com"), Some(vec![]));
        assert_eq!(lookup(RowIndexKind::Actor, &bytes, "user-1@example.co"), Some(vec![]), "a prefix");
    }

    #[test]
    fn version_3_lists_content_ids_in_up_to_256_rows_and_version_2_in_16() {
        let keys: Vec<Option<String>> = (0..10_000u32)
            .map(|i| match i % 100 {
                0 => Some("every-hundredth".to_owned()),
                1 if i % 2_000 == 1 => Some("every-two-thousandth".to_owned()),
                _ => Some(format!("rare-{i}")),
            })
            .collect();
        let (v2, v3) = (
            build_as(2, RowIndexKind::Content, &keys, &[10_000]),
            build_as(3, RowIndexKind::Content, &keys, &[10_000]),
        );
        assert_eq!(RowIndexKind::Content.version_of(&v2), Some(2));
        assert_eq!(RowIndexKind::Content.version_of(&v3), Some(3));
        let hundredth: Vec<u32> = (0..10_000).step_by(100).collect();
        assert_eq!(lookup(RowIndexKind::Content, &v2, "every-hundredth"), None, "100 rows: past 16");
        let listed = lookup(RowIndexKind::Content, &v3, "every-hundredth").expect("100 rows: listed");
        assert_eq!(listed, hundredth.iter().map(|&row| row..row + 1).collect::<Vec<_>>());
        for bytes in [&v2, &v3] {
            assert_eq!(lookup(RowIndexKind::Content, bytes, "rare-7"), Some(std::iter::once(7..8).collect()));
            let five: Vec<Range<u32>> = (0..5).map(|k| 2_000 * k + 1..2_000 * k + 2).collect();
            assert_eq!(lookup(RowIndexKind::Content, bytes, "every-two-thousandth"), Some(five));
        }
    }

    #[test]
    fn keys_sharing_a_prefix_are_stored_once_and_version_1_still_reads() {
        let keys: Vec<Option<String>> =
            (0..20_000).map(|i| Some(format!("user-{i}@org-{:03}.example", i % 50))).collect();
        let (v1, v2) =
            (build_as(1, RowIndexKind::Actor, &keys, &[20_000]), build_as(2, RowIndexKind::Actor, &keys, &[20_000]));
        assert!(v2.len() * 10 < v1.len() * 9, "front coding saves a tenth at least: {} vs {}", v2.len(), v1.len());
        assert_eq!(RowIndexKind::Actor.version_of(&v1), Some(1));
        assert_eq!(RowIndexKind::Actor.version_of(&v2), Some(2));
        assert_eq!(RowIndexKind::Content.version_of(&v2), None);
        for bytes in [&v1, &v2] {
            for i in [0, 7, 19_999] {
                let key = format!("user-{i}@org-{:03}.example", i % 50);
                assert_eq!(
                    lookup(RowIndexKind::Actor, bytes, &key),
                    Some(std::iter::once(i..i + 1).collect()),
                    "{key}"
                );
            }
            assert_eq!(lookup(RowIndexKind::Actor, bytes, "user-"), Some(vec![]));
        }
    }

    #[test]
    fn rows_far_apart_and_keys_too_long_to_index() {
        for kind in [RowIndexKind::Content, RowIndexKind::Actor] {
            let mut builder = RowIndexBuilder::new(kind);
            builder.add([Some("a")].into_iter());
            builder.add(std::iter::repeat_n(None, 300_000));
            builder.add([Some("a"), Some("b")].into_iter());
            let bytes = builder.finish(&[100_000, 200_003]).unwrap();
            assert_eq!(lookup(kind, &bytes, "a"), Some(vec![0..1, 300_001..300_002]));
            assert_eq!(lookup(kind, &bytes, "b"), Some(std::iter::once(300_002..300_003).collect()));

            let mut builder = RowIndexBuilder::new(kind);
            builder.add([Some("x".repeat(MAX_KEY_BYTES + 1).as_str())].into_iter());
            assert!(builder.finish(&[1]).is_none(), "no index rather than one missing a row");
            let mut builder = RowIndexBuilder::new(kind);
            builder.add([Some("x")].into_iter());
            assert!(builder.finish(&[2]).is_none(), "row groups that do not add up to the rows");
        }
    }

    #[test]
    fn an_empty_index_and_damaged_bytes_are_told_apart() {
        let bytes = RowIndexBuilder::new(RowIndexKind::Content).finish(&[]).unwrap();
        assert_eq!(content_rows(&bytes, "x"), Some(vec![]));
        let location = RowIndexLocation { offset: 0, length: bytes.len() as u64 };
        let mut damaged = bytes.clone();
        damaged[0] = b'X';
        assert!(RowIndexHead::parse(RowIndexKind::Content, location, &damaged).is_err());
        let mut damaged = bytes.clone();
        damaged[8] = 3;
        assert!(RowIndexHead::parse(RowIndexKind::Content, location, &damaged).is_err(), "3 buckets");
        assert!(RowIndexHead::parse(RowIndexKind::Actor, location, &bytes).is_err(), "a content index");

        // 300 row groups: the head takes a second read.
        let mut builder = RowIndexBuilder::new(RowIndexKind::Content);
        builder.add((0..300).map(|_| Some("x")));
        let bytes = builder.finish(&[1; 300]).unwrap();
        let location = RowIndexLocation { offset: 0, length: bytes.len() as u64 };
        let first = location.first_read();
        let parsed =
            RowIndexHead::parse(RowIndexKind::Content, location, &bytes[first.start as usize..first.end as usize]);
        assert!(matches!(parsed.unwrap(), Parsed::NeedRange(_)));
        assert_eq!(content_rows(&bytes, "x"), None, "in 300 rows: not listed");
    }

    /// A lookup in damaged bytes: any answer or error, and no panic. Ranges
    /// the head asks for past the file end the lookup, as a failed read would.
    fn lookup_in_damaged(kind: RowIndexKind, bytes: &[u8], key: &str) {
        let location = RowIndexLocation { offset: 0, length: bytes.len() as u64 };
        let range = |r: Range<u64>| bytes.get(r.start as usize..r.end as usize);
        let Some(first) = range(location.first_read()) else { return };
        let head = match RowIndexHead::parse(kind, location, first) {
            Ok(Parsed::Head(head)) => head,
            Ok(Parsed::NeedRange(r)) => match range(r).map(|b| RowIndexHead::parse(kind, location, b)) {
                Some(Ok(Parsed::Head(head))) => head,
                _ => return,
            },
            Err(_) => return,
        };
        let Some(starts) = range(head.starts_range()) else { return };
        let Ok(bucket) = head.bucket_range(key, starts) else { return };
        if let Some(bucket) = range(bucket) {
            let _ = head.rows_in_bucket(key, bucket);
        }
    }

    fn kind() -> impl Strategy<Value = RowIndexKind> {
        prop_oneof![Just(RowIndexKind::Content), Just(RowIndexKind::Actor)]
    }

    proptest! {
        #![proptest_config(crate::proptest_cases(1024))]

        /// The index's answer is the full scan's: every key of any sequence
        /// of rows (in any order, runs or scattered, some rows without one)
        /// finds exactly the rows holding it, or for content ids past
        /// their version's `max_listed_rows` is told unlisted; a key in no row
        /// finds nothing.
        #[test]
        fn the_index_answers_what_a_full_scan_finds(
            version in 1..=VERSION,
            kind in kind(),
            distinct in prop_oneof![Just(2u32), Just(40u32)],
            keys in proptest::collection::vec(proptest::option::weighted(0.9, 0u32..40), 0..3_000),
            groups in 1usize..6,
            absent in 40u32..50,
        ) {
            // Two keys: each in more rows than any version lists.
            let keys: Vec<Option<String>> = keys.into_iter().map(|k| k.map(|k| format!("key-{}", k % distinct))).collect();
            let total = keys.len() as u64;
            let mut group_rows = vec![total / groups as u64; groups];
            group_rows[0] += total % groups as u64;
            let bytes = build_as(version, kind, &keys, &group_rows);
            for key in (0..40).map(|k| format!("key-{k}")) {
                let scanned = scanned_runs(&keys, &key);
                let rows: usize = scanned.iter().map(|run| run.len()).sum();
                let expected = match kind {
                    RowIndexKind::Content if rows > max_listed_rows(version) => None,
                    RowIndexKind::Content => Some(scanned.into_iter().flat_map(|run| run.map(|row| row..row + 1)).collect()),
                    RowIndexKind::Actor => Some(scanned),
                };
                prop_assert_eq!(lookup(kind, &bytes, &key), expected, "{}", key);
            }
            prop_assert_eq!(lookup(kind, &bytes, &format!("key-{absent}")), Some(vec![]));
        }

        #[test]
        fn damaged_indexes_are_refused_or_read_without_a_panic(
            version in 1..=VERSION,
            kind in kind(),
            flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..8),
            cut in 0usize..4096,
            key in "page-[0-9]{1,3}",
        ) {
            let keys: Vec<Option<String>> = (0..3_000).map(|i| Some(format!("page-{}", i % 400))).collect();
            let mut bytes = build_as(version, kind, &keys, &[1_000, 1_000, 1_000]);
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] ^= value;
            }
            bytes.truncate(bytes.len() - cut % bytes.len());
            lookup_in_damaged(kind, &bytes, &key);
        }

        #[test]
        fn any_bytes_are_refused_or_read_without_a_panic(kind in kind(), bytes in proptest::collection::vec(any::<u8>(), 0..512), key in ".{0,8}") {
            lookup_in_damaged(kind, &bytes, &key);
            let mut with_magic = kind.magic(VERSION).to_vec();
            with_magic.extend_from_slice(&bytes);
            lookup_in_damaged(kind, &with_magic, &key);
        }
    }
}
