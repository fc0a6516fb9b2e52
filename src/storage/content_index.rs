//! The content index of a segment: for every `content_id` in it, the rows
//! that hold it, so "who touched this page" reads those rows and nothing else.
//!
//! Segments are sorted by actor, so one content id is scattered over many
//! row groups; bloom filters find the groups, but each group's `content_id`
//! pages (and their dictionary) still had to be decoded to find the rows:
//! most of a content lookup's time. The index names the rows exactly, so a
//! query never reads `content_id` at all unless it asks for it.
//!
//! It lives inside the segment's own Parquet file, after the last row group
//! and before the footer (where Parquet writers also put page indexes and
//! bloom filters): Parquet readers follow the footer's offsets and never see
//! it, and the segment stays one file, published, copied and deleted as one.
//! The manifest records where it is ([`ContentIndexLocation`]), and the
//! footer says so too (`auditlake.content_index` key), for other tools.
//!
//! Format (version 1), little-endian, built to be read with three range
//! reads per lookup, two of them the same for every id (the head, the bucket
//! starts) and one small (the bucket):
//!
//! ```text
//! magic         b"ALCIDX01"
//! buckets B     u32, a power of two
//! groups G      u32
//! group rows    G × u32            rows of each row group, in file order
//! bucket starts (B + 1) × u32      byte offsets into the entries
//! entries       per bucket, sorted by content id:
//!               len, content id (UTF-8), n, first row, n - 1 row deltas
//!               (n = 0: the id is in more than MAX_LISTED_ROWS rows,
//!               which are not listed)
//! ```
//!
//! Only ids in a few rows of the segment are worth listing: an id in more
//! rows than the segment has row groups is in nearly every group, so reading
//! its rows costs what scanning the segment does, and listing every row of
//! every frequent id cost 2 bytes per event. A lookup of such an id scans
//! the segment with the filter.
//!
//! Inside entries every number is an unsigned LEB128 varint: an id's rows
//! are few and far apart (the segment is sorted by actor), and varints keep
//! the index smaller than fixed-width u32s by about a third.
//!
//! A content id's bucket is the low bits of its 64-bit FNV-1a hash. Rows are
//! numbered from 0 over the whole file. This module builds and reads the
//! bytes; it never decides which segments a query reads.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"ALCIDX01";
/// Key of the footer entry that points at the index (`"offset,length"`).
pub const FOOTER_KEY: &str = "auditlake.content_index";
/// Most rows of one id the index lists (see above).
pub const MAX_LISTED_ROWS: usize = 16;
/// Content ids per bucket the index aims at: a lookup reads one bucket.
const IDS_PER_BUCKET: usize = 16;
const MAX_BUCKETS: usize = 1 << 16;
/// Longest content id the index takes. Validation keeps ids far shorter
/// (`model::MAX_KEY_FIELD_BYTES`); a segment with a longer one gets no index
/// rather than one that misses rows.
const MAX_ID_BYTES: usize = 64 * 1024;

/// Where a segment's content index lies in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentIndexLocation {
    pub offset: u64,
    pub length: u64,
}

impl ContentIndexLocation {
    /// The byte range of the index's head: magic, sizes and group rows, for
    /// an index over `groups` row groups (the bucket starts follow it).
    fn head_length(groups: u32) -> u64 {
        16 + 4 * groups as u64
    }

    /// The first bytes to read: the head of any index over up to 250 row
    /// groups; [`ContentIndexHead::parse`] asks for more when needed.
    pub fn first_read(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.length.min(1024)
    }
}

/// Collects `(content id, row)` pairs as a segment is written.
#[derive(Debug, Default)]
pub struct ContentIndexBuilder {
    rows: HashMap<String, Vec<u32>>,
    next_row: u64,
    unindexable: bool,
}

impl ContentIndexBuilder {
    /// Adds the next `count` rows of the file; `content_ids` yields each
    /// row's content id (`None` for rows without one).
    pub fn add<'a>(&mut self, content_ids: impl Iterator<Item = Option<&'a str>>) {
        for id in content_ids {
            if let Some(id) = id {
                self.unindexable |= id.len() > MAX_ID_BYTES || self.next_row > u64::from(u32::MAX);
                let row = self.next_row as u32;
                match self.rows.get_mut(id) {
                    Some(rows) => rows.push(row),
                    None => {
                        self.rows.insert(id.to_owned(), vec![row]);
                    }
                }
            }
            self.next_row += 1;
        }
    }

    /// The index's bytes, for a file whose row groups hold `group_rows`;
    /// `None` when some row cannot be indexed exactly.
    pub fn finish(self, group_rows: &[u64]) -> Option<Vec<u8>> {
        if self.unindexable || group_rows.iter().sum::<u64>() != self.next_row {
            return None;
        }
        let buckets = (self.rows.len() / IDS_PER_BUCKET).clamp(1, MAX_BUCKETS).next_power_of_two();
        let mut by_bucket: Vec<Vec<(&String, &Vec<u32>)>> = vec![Vec::new(); buckets];
        for (id, rows) in &self.rows {
            by_bucket[bucket_of(id, buckets as u32)].push((id, rows));
        }
        for bucket in &mut by_bucket {
            bucket.sort_unstable_by_key(|(id, _)| *id);
        }
        let mut entries = Vec::new();
        let mut starts = Vec::with_capacity(buckets + 1);
        for bucket in by_bucket {
            starts.push(entries.len() as u32);
            for (id, rows) in bucket {
                put_varint(&mut entries, id.len() as u32);
                entries.extend_from_slice(id.as_bytes());
                let listed: &[u32] = if rows.len() <= MAX_LISTED_ROWS { rows } else { &[] };
                put_varint(&mut entries, listed.len() as u32);
                let mut previous = 0;
                for &row in listed {
                    put_varint(&mut entries, row - previous);
                    previous = row;
                }
            }
        }
        starts.push(entries.len() as u32);

        let mut out = Vec::with_capacity(16 + 4 * (group_rows.len() + starts.len()) + entries.len());
        out.extend_from_slice(MAGIC);
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

fn bucket_of(id: &str, buckets: u32) -> usize {
    (fnv1a(id.as_bytes()) & (buckets as u64 - 1)) as usize
}

/// 64-bit FNV-1a: stable across versions and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Why index bytes could not be read. The query falls back to scanning.
#[derive(Debug, thiserror::Error)]
#[error("content index at byte {offset} is unusable: {reason}")]
pub struct ContentIndexError {
    offset: u64,
    reason: &'static str,
}

/// The head of an index: enough to find the table of bucket starts. A
/// lookup reads that table as it is (up to 256 KiB, kept by the segment
/// cache), picks its bucket's two starts without decoding the rest (at 100M
/// events a query looks into hundreds of indexes), and reads the bucket.
#[derive(Debug, Clone)]
pub struct ContentIndexHead {
    location: ContentIndexLocation,
    buckets: u32,
    /// Rows of each row group, in file order.
    pub group_rows: Vec<u32>,
}

/// What parsing the first bytes of an index gave.
pub enum Parsed {
    Head(ContentIndexHead),
    /// The head is longer than the bytes given: read this range instead.
    NeedRange(std::ops::Range<u64>),
}

impl ContentIndexHead {
    /// Parses the head from `bytes`, read from the start of the index.
    pub fn parse(location: ContentIndexLocation, bytes: &[u8]) -> Result<Parsed, ContentIndexError> {
        let bad = |reason| ContentIndexError { offset: location.offset, reason };
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad("no content index magic"));
        }
        let buckets = u32_at(bytes, 8);
        let groups = u32_at(bytes, 12);
        if !buckets.is_power_of_two() || buckets as usize > MAX_BUCKETS {
            return Err(bad("bucket count is not a power of two up to 65536"));
        }
        let head_length = ContentIndexLocation::head_length(groups);
        if head_length + 4 * (u64::from(buckets) + 1) > location.length {
            return Err(bad("bucket starts run past the index"));
        }
        if (bytes.len() as u64) < head_length {
            return Ok(Parsed::NeedRange(location.offset..location.offset + head_length));
        }
        let group_rows = (0..groups as usize).map(|g| u32_at(bytes, 16 + 4 * g)).collect();
        Ok(Parsed::Head(ContentIndexHead { location, buckets, group_rows }))
    }

    fn starts_at(&self) -> u64 {
        self.location.offset + ContentIndexLocation::head_length(self.group_rows.len() as u32)
    }

    /// The byte range of the file holding the table of bucket starts.
    pub fn starts_range(&self) -> std::ops::Range<u64> {
        self.starts_at()..self.starts_at() + 4 * (u64::from(self.buckets) + 1)
    }

    /// The byte range of the file holding `id`'s bucket, given the table
    /// [`ContentIndexHead::starts_range`] named.
    pub fn bucket_range(&self, id: &str, starts: &[u8]) -> Result<std::ops::Range<u64>, ContentIndexError> {
        let bad = |reason| ContentIndexError { offset: self.location.offset, reason };
        if starts.len() as u64 != 4 * (u64::from(self.buckets) + 1) {
            return Err(bad("truncated bucket starts"));
        }
        let bucket = bucket_of(id, self.buckets);
        let (start, end) = (u64::from(u32_at(starts, 4 * bucket)), u64::from(u32_at(starts, 4 * bucket + 4)));
        let entries_at = self.starts_range().end;
        if start > end || entries_at + end > self.location.offset + self.location.length {
            return Err(bad("bucket starts out of order or past the index"));
        }
        Ok(entries_at + start..entries_at + end)
    }

    /// The rows holding `id`, given the bytes of its bucket: empty when no
    /// row does, `None` when too many do to be listed.
    pub fn rows_in_bucket(&self, id: &str, bucket: &[u8]) -> Result<Option<Vec<u32>>, ContentIndexError> {
        let bad = |reason| ContentIndexError { offset: self.location.offset, reason };
        let truncated = || bad("truncated entry");
        let mut at = 0;
        while at < bucket.len() {
            let length = take_varint(bucket, &mut at).ok_or_else(truncated)? as usize;
            let name = bucket.get(at..at + length).ok_or_else(truncated)?;
            at += length;
            let wanted = name == id.as_bytes();
            let count = take_varint(bucket, &mut at).ok_or_else(truncated)?;
            let mut rows = Vec::new();
            let mut row = 0u32;
            for _ in 0..count {
                let delta = take_varint(bucket, &mut at).ok_or_else(truncated)?;
                row = row.checked_add(delta).ok_or_else(|| bad("row number out of range"))?;
                if wanted {
                    rows.push(row);
                }
            }
            if wanted {
                return Ok(Some(rows).filter(|rows| !rows.is_empty()));
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
    use super::*;

    fn lookup(bytes: &[u8], id: &str) -> Option<Vec<u32>> {
        let location = ContentIndexLocation { offset: 100, length: bytes.len() as u64 };
        // As a file would hold it: 100 bytes of something else first.
        let file: Vec<u8> = std::iter::repeat_n(0u8, 100).chain(bytes.iter().copied()).collect();
        let range = |r: std::ops::Range<u64>| &file[r.start as usize..r.end as usize];
        let head = match ContentIndexHead::parse(location, range(location.first_read())).unwrap() {
            Parsed::Head(head) => head,
            Parsed::NeedRange(r) => match ContentIndexHead::parse(location, range(r)).unwrap() {
                Parsed::Head(head) => head,
                Parsed::NeedRange(_) => panic!("asked twice"),
            },
        };
        let bucket = head.bucket_range(id, range(head.starts_range())).unwrap();
        head.rows_in_bucket(id, range(bucket)).unwrap()
    }

    #[test]
    fn every_content_id_finds_exactly_its_rows() {
        // 70,000 ids in 4,096 buckets.
        let ids: Vec<Option<String>> = (0..200_000)
            .map(|i| match i {
                _ if i % 7 == 0 => None,
                _ if i % 1_000 == 1 => Some("home".to_owned()),
                _ => Some(format!("page-{}", i % 70_000)),
            })
            .collect();
        let mut builder = ContentIndexBuilder::default();
        builder.add(ids[..120_000].iter().map(|id| id.as_deref()));
        builder.add(ids[120_000..].iter().map(|id| id.as_deref()));
        let bytes = builder.finish(&[65_536, 65_536, 68_928]).unwrap();
        for probe in [2, 3, 699, 12_345, 69_999] {
            let id = format!("page-{probe}");
            let expected: Vec<u32> =
                (0..200_000u32).filter(|&i| ids[i as usize].as_deref() == Some(id.as_str())).collect();
            assert!(!expected.is_empty() && expected.len() <= MAX_LISTED_ROWS, "{id}: {expected:?}");
            assert_eq!(lookup(&bytes, &id), Some(expected), "{id}");
        }
        assert_eq!(lookup(&bytes, "home"), None, "in 200 rows: not listed");
        assert_eq!(lookup(&bytes, "page-70000"), Some(vec![]));
        assert_eq!(lookup(&bytes, ""), Some(vec![]));
    }

    #[test]
    fn rows_far_apart_and_ids_too_long_to_index() {
        let mut builder = ContentIndexBuilder::default();
        builder.add([Some("a")].into_iter());
        builder.add(std::iter::repeat_n(None, 300_000));
        builder.add([Some("a"), Some("b")].into_iter());
        let bytes = builder.finish(&[100_000, 200_003]).unwrap();
        assert_eq!(lookup(&bytes, "a"), Some(vec![0, 300_001]));
        assert_eq!(lookup(&bytes, "b"), Some(vec![300_002]));

        let mut builder = ContentIndexBuilder::default();
        builder.add([Some("x".repeat(MAX_ID_BYTES + 1).as_str())].into_iter());
        assert!(builder.finish(&[1]).is_none(), "no index rather than one missing a row");
    }

    #[test]
    fn an_empty_index_and_damaged_bytes_are_told_apart() {
        let bytes = ContentIndexBuilder::default().finish(&[]).unwrap();
        assert_eq!(lookup(&bytes, "x"), Some(vec![]));
        let location = ContentIndexLocation { offset: 0, length: bytes.len() as u64 };
        let mut damaged = bytes.clone();
        damaged[0] = b'X';
        assert!(ContentIndexHead::parse(location, &damaged).is_err());
        let mut damaged = bytes.clone();
        damaged[8] = 3;
        assert!(ContentIndexHead::parse(location, &damaged).is_err(), "3 buckets");

        // 300 row groups: the head takes a second read.
        let mut builder = ContentIndexBuilder::default();
        builder.add((0..300).map(|_| Some("x")));
        let bytes = builder.finish(&[1; 300]).unwrap();
        let location = ContentIndexLocation { offset: 0, length: bytes.len() as u64 };
        let first = location.first_read();
        let parsed = ContentIndexHead::parse(location, &bytes[first.start as usize..first.end as usize]).unwrap();
        assert!(matches!(parsed, Parsed::NeedRange(_)));
        assert_eq!(lookup(&bytes, "x"), None, "in 300 rows: not listed");
    }

    /// A lookup in damaged bytes: any answer or error, and no panic. Ranges
    /// the head asks for past the file end the lookup, as a failed read would.
    fn lookup_in_damaged(bytes: &[u8], id: &str) {
        let location = ContentIndexLocation { offset: 0, length: bytes.len() as u64 };
        let range = |r: std::ops::Range<u64>| bytes.get(r.start as usize..r.end as usize);
        let Some(first) = range(location.first_read()) else { return };
        let head = match ContentIndexHead::parse(location, first) {
            Ok(Parsed::Head(head)) => head,
            Ok(Parsed::NeedRange(r)) => match range(r).map(|b| ContentIndexHead::parse(location, b)) {
                Some(Ok(Parsed::Head(head))) => head,
                _ => return,
            },
            Err(_) => return,
        };
        let Some(starts) = range(head.starts_range()) else { return };
        let Ok(bucket) = head.bucket_range(id, starts) else { return };
        if let Some(bucket) = range(bucket) {
            let _ = head.rows_in_bucket(id, bucket);
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_cases(1024))]

        #[test]
        fn damaged_indexes_are_refused_or_read_without_a_panic(
            flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
            cut in 0usize..4096,
            id in "page-[0-9]{1,3}",
        ) {
            let ids: Vec<String> = (0..3_000).map(|i| format!("page-{}", i % 400)).collect();
            let mut builder = ContentIndexBuilder::default();
            builder.add(ids.iter().map(|id| Some(id.as_str())));
            let mut bytes = builder.finish(&[1_000, 1_000, 1_000]).expect("an index");
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] ^= value;
            }
            bytes.truncate(bytes.len() - cut % bytes.len());
            lookup_in_damaged(&bytes, &id);
        }

        #[test]
        fn any_bytes_are_refused_or_read_without_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), id in ".{0,8}") {
            lookup_in_damaged(&bytes, &id);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            lookup_in_damaged(&with_magic, &id);
        }
    }
}
