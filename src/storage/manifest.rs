//! The manifest: the one file that says which Parquet segments make up the log.
//!
//! A segment exists for readers only once the manifest names it; a file in
//! `segments/` that the manifest does not name is debris from a crash during
//! sealing and is deleted at start-up. The manifest is replaced atomically
//! (see [`super::objects::SegmentStore::write_manifest`]), so a crash leaves either the old or
//! the new manifest.
//!
//! Format: JSON, `{"version": 2, "sealed_seq": N, "segments": [...]}`.
//! Version 2 segments store UUID-shaped ids packed (see `packed.rs`); a
//! version 1 log (ids as text) is refused rather than misread.

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::row_index::RowIndexLocation;
use crate::model::Seq;

const FORMAT_VERSION: u32 = 2;

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
    /// Least and greatest `actor_id`; absent in manifests written before they
    /// were recorded (queries cannot prune such segments by actor). Segments
    /// of the server's own self-audit records hold only database users, so a
    /// lookup of one of the product's actors skips them unopened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_ids: Option<(String, String)>,
    /// When the segment's latest event was received; absent in manifests
    /// written before it was recorded (such segments count as recent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_received_at_us: Option<i64>,
    /// Where the segment's content index lies in its file; absent for
    /// segments written before there was one (queries scan those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_index: Option<RowIndexLocation>,
    /// Where the segment's actor index lies in its file; absent for segments
    /// written before there was one (queries find actors' rows by the
    /// Parquet statistics of those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_index: Option<RowIndexLocation>,
    /// The organisations with events in the segment and how many rows each
    /// has, sorted by org id (the segment's own order, so each one's rows are
    /// a run starting where the previous ones' end); absent in manifests
    /// written before they were recorded, and for segments of more than
    /// [`MAX_LISTED_ORGS`] organisations. A query scoped to one organisation
    /// does not open a segment that lists others only, and reads only its
    /// run of rows where an index names rows, so how long it takes depends
    /// on no other organisation's events there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orgs: Option<Vec<(String, u64)>>,
}

/// Most organisations a segment's entry lists (see [`SegmentMeta::orgs`]).
pub const MAX_LISTED_ORGS: usize = 1024;

impl SegmentMeta {
    /// What no segment this server wrote can be, and code reading the
    /// manifest relies on: a plain file name in `segments/`, a seq range in
    /// order, organisations sorted with counts that can be added. (Rows
    /// missing from a range or held twice, counts that disagree, segments
    /// out of order or overlapping are for `verify` to find and name, so
    /// they load.)
    fn check(&self) -> Result<(), String> {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.file.is_empty() || self.file.starts_with('.') || !self.file.chars().all(plain) {
            return Err("not a segment file name".into());
        }
        if self.min_seq == 0 || self.min_seq > self.max_seq {
            return Err(format!("seqs {}..={} are not a range", self.min_seq, self.max_seq));
        }
        if let Some(orgs) = &self.orgs {
            let sorted = orgs.windows(2).all(|pair| pair[0].0 < pair[1].0);
            let total = orgs.iter().try_fold(0u64, |total, (_, rows)| total.checked_add(*rows));
            if !sorted || total.is_none() {
                return Err("its organisations are not sorted, or their rows add up past any count".into());
            }
        }
        Ok(())
    }

    /// Whether the segment may hold events of `org`: it lies in the
    /// segment's range of org ids and, where the manifest lists them, among
    /// its organisations.
    pub fn may_hold_org(&self, org: &str) -> bool {
        (self.min_org_id.as_str()..=self.max_org_id.as_str()).contains(&org)
            && self.orgs.as_ref().is_none_or(|orgs| orgs.binary_search_by(|(o, _)| o.as_str().cmp(org)).is_ok())
    }

    /// The rows of `org` in the segment, numbered over the file, where the
    /// manifest lists them.
    pub fn org_rows(&self, org: &str) -> Option<std::ops::Range<u64>> {
        let orgs = self.orgs.as_ref()?;
        let at = orgs.binary_search_by(|(o, _)| o.as_str().cmp(org)).ok()?;
        let start: u64 = orgs[..at].iter().map(|(_, rows)| rows).sum();
        Some(start..start + orgs[at].1)
    }
}

/// The organisations of `org_ids` (one per row) with their row counts,
/// sorted, or `None` past [`MAX_LISTED_ORGS`].
pub fn org_counts<'a>(org_ids: impl IntoIterator<Item = (&'a str, u64)>) -> Option<Vec<(String, u64)>> {
    let mut counts = std::collections::BTreeMap::new();
    for (org, rows) in org_ids {
        *counts.entry(org).or_insert(0) += rows;
        if counts.len() > MAX_LISTED_ORGS {
            return None;
        }
    }
    Some(counts.into_iter().map(|(org, rows)| (org.to_owned(), rows)).collect())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Every event with `seq <= sealed_seq` is in a listed segment.
    pub sealed_seq: Seq,
    pub segments: Vec<SegmentMeta>,
}

impl Manifest {
    /// A manifest of the current format.
    pub fn new(sealed_seq: Seq, segments: Vec<SegmentMeta>) -> Self {
        Manifest { version: FORMAT_VERSION, sealed_seq, segments }
    }

    /// Decodes a stored manifest; none at all (`None`) is an empty log.
    /// `file` names the manifest in errors.
    pub fn decode(bytes: Option<&[u8]>, file: &str) -> Result<Manifest, StorageError> {
        let corrupt = |reason: String| StorageError::CorruptManifest { file: file.to_owned(), reason };
        let Some(bytes) = bytes else {
            return Ok(Manifest::new(0, Vec::new()));
        };
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if manifest.version != FORMAT_VERSION {
            return Err(corrupt(format!("unsupported manifest version {}", manifest.version)));
        }
        for (i, segment) in manifest.segments.iter().enumerate() {
            segment.check().map_err(|reason| corrupt(format!("segment {} ({:?}): {reason}", i + 1, segment.file)))?;
        }
        Ok(manifest)
    }

    /// The manifest as it is stored: pretty JSON, for people who read it.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("manifest serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/data/manifest.json";

    #[test]
    fn encode_then_decode_gives_the_manifest_back() {
        assert_eq!(Manifest::decode(None, FILE).unwrap().segments.len(), 0);
        let mut manifest = Manifest::decode(None, FILE).unwrap();
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
            actor_ids: Some(("u1".into(), "u7".into())),
            max_received_at_us: Some(7),
            content_index: Some(RowIndexLocation { offset: 4, length: 20 }),
            actor_index: Some(RowIndexLocation { offset: 24, length: 30 }),
            orgs: Some(vec![("acme".into(), 4), ("globex".into(), 5)]),
        });
        assert_eq!(Manifest::decode(Some(&manifest.encode()), FILE).unwrap(), manifest);
    }

    #[test]
    fn a_segment_listing_its_organisations_may_hold_only_those() {
        let meta = |orgs: Option<Vec<(String, u64)>>| SegmentMeta {
            file: "a.parquet".into(),
            size_bytes: 1,
            rows: 3,
            min_seq: 1,
            max_seq: 3,
            min_time_us: 0,
            max_time_us: 5,
            min_org_id: "acme".into(),
            max_org_id: "initech".into(),
            actor_ids: None,
            max_received_at_us: None,
            content_index: None,
            actor_index: None,
            orgs,
        };
        let listed = meta(org_counts(["initech", "acme", "acme", "initech", "initech"].map(|o| (o, 1))));
        assert_eq!(listed.orgs, Some(vec![("acme".to_string(), 2), ("initech".to_string(), 3)]));
        assert!(listed.may_hold_org("acme") && listed.may_hold_org("initech"));
        assert!(!listed.may_hold_org("globex"), "inside the range, not listed");
        assert_eq!((listed.org_rows("acme"), listed.org_rows("initech")), (Some(0..2), Some(2..5)));
        assert_eq!(listed.org_rows("globex"), None);
        let unknown = meta(None);
        assert!(unknown.may_hold_org("globex") && !unknown.may_hold_org("zeta") && !unknown.may_hold_org("a"));
        assert_eq!(unknown.org_rows("acme"), None);
        let many: Vec<String> = (0..=MAX_LISTED_ORGS).map(|i| format!("org-{i:05}")).collect();
        assert_eq!(org_counts(many.iter().map(|o| (o.as_str(), 1))), None);
    }

    #[test]
    fn garbage_manifest_is_an_error_naming_the_file() {
        let err = Manifest::decode(Some(b"{not json"), FILE).unwrap_err().to_string();
        assert!(err.contains(FILE), "{err}");
    }

    fn any_segment() -> impl proptest::strategy::Strategy<Value = SegmentMeta> {
        use proptest::prelude::*;
        let seq = prop_oneof![0u64..5, Just(u64::MAX), any::<u64>()];
        let orgs =
            proptest::option::of(proptest::collection::vec(("[a-c]{0,2}", prop_oneof![0u64..5, Just(u64::MAX)]), 0..4));
        (("[a-z./%-]{0,12}", seq.clone(), seq.clone(), seq), (any::<i64>(), any::<i64>()), orgs).prop_map(
            |((file, min_seq, max_seq, rows), (min_time_us, max_time_us), orgs)| SegmentMeta {
                file,
                size_bytes: 100,
                rows,
                min_seq,
                max_seq,
                min_time_us,
                max_time_us,
                min_org_id: "a".into(),
                max_org_id: "c".into(),
                actor_ids: None,
                max_received_at_us: None,
                content_index: None,
                actor_index: None,
                orgs,
            },
        )
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_cases(512))]

        /// Any bytes load as a manifest, or as an error naming the file.
        #[test]
        fn any_bytes_load_or_are_refused_by_name(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Err(e) = Manifest::decode(Some(&bytes), FILE) {
                proptest::prop_assert!(e.to_string().contains(FILE), "{}", e);
            }
        }

        /// A manifest edited by hand loads only if what readers rely on
        /// holds; what loads is safe to ask about any organisation.
        #[test]
        fn an_edited_manifest_loads_only_if_readers_can_rely_on_it(segments in proptest::collection::vec(any_segment(), 0..3)) {
            if let Ok(manifest) = Manifest::decode(Some(&Manifest::new(9, segments).encode()), FILE) {
                for segment in &manifest.segments {
                    proptest::prop_assert!(!segment.file.contains('/') && !segment.file.starts_with('.'));
                    proptest::prop_assert!(segment.min_seq <= segment.max_seq);
                    for org in ["", "a", "b", "bb", "c"] {
                        // Neither overflows nor indexes out of bounds.
                        let _ = (segment.org_rows(org), segment.may_hold_org(org));
                    }
                }
            }
        }
    }
}
