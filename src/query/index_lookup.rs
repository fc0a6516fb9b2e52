//! Lookups answered by the segments' row indexes ([`row_index`]): "who
//! viewed this page" and "what did this person do" name the rows to read;
//! and the manifest's runs of each organisation's rows: "this
//! organisation's last day" reads that run only.
//!
//! `content_id = 'x'`, `actor_id = 'x'`, `org_id = 'x'` and their
//! `IN ('x', 'y')` forms are the filters the table applies exactly itself:
//! segments with the indexes (and organisations listed in the manifest) get
//! a Parquet access plan selecting exactly their rows (a segment without any
//! is not opened; with several filters, the rows all of them name), and
//! segments without them (written before there were indexes), like the
//! in-memory buffer, get the filters applied inside the scan. Because the filters are
//! exact, DataFusion adds no filter of its own above the scan, so the
//! columns are not even read unless the query selects them.
//!
//! This module only finds rows; it never widens what a scan returns: a
//! segment whose index cannot be read is scanned with the filters instead.
//!
//! [`row_index`]: crate::storage::row_index

use std::collections::BTreeSet;
use std::ops::Range;

use datafusion::common::ScalarValue;
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccess};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use datafusion::prelude::{col, lit};
use tracing::warn;

use super::segment_cache::SegmentCache;
use crate::storage::row_index::{Parsed, RowIndexHead, RowIndexKind, RowIndexLocation};
use crate::storage::segment::LiveSegment;

/// A column whose rows a segment can name without a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyed {
    /// The manifest lists each organisation's run of rows.
    Org,
    Actor,
    Content,
}

/// In the order lookups go: the manifest's runs first (no read at all),
/// then the indexes.
const KEYED: [Keyed; 3] = [Keyed::Org, Keyed::Actor, Keyed::Content];

impl Keyed {
    pub fn column(self) -> &'static str {
        match self {
            Keyed::Org => "org_id",
            Keyed::Actor => RowIndexKind::Actor.column(),
            Keyed::Content => RowIndexKind::Content.column(),
        }
    }

    /// The row index naming this column's rows, and where a segment keeps it.
    fn index(self, segment: &LiveSegment) -> Option<(RowIndexKind, Option<RowIndexLocation>)> {
        match self {
            Keyed::Org => None,
            Keyed::Actor => Some((RowIndexKind::Actor, segment.meta.actor_index)),
            Keyed::Content => Some((RowIndexKind::Content, segment.meta.content_index)),
        }
    }
}

/// The keys of one such column a query keeps rows of.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub keyed: Keyed,
    pub keys: BTreeSet<String>,
}

/// The values of `column` that `filter` keeps rows of, when it is one the
/// table applies exactly: `column = literal` (either way round), a
/// non-negated `column IN (literals)`, or an `OR` of those (DataFusion
/// turns short `IN` lists into one). NULL literals match no row, so they add
/// no value.
fn exact_values(filter: &Expr, column: &str) -> Option<BTreeSet<String>> {
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => {
            let mut values = exact_values(left, column)?;
            values.extend(exact_values(right, column)?);
            Some(values)
        }
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(value, _)) | (Expr::Literal(value, _), Expr::Column(c))
                if c.name == column =>
            {
                text(value).map(|v| v.into_iter().collect())
            }
            _ => None,
        },
        Expr::InList(list) if !list.negated && matches!(list.expr.as_ref(), Expr::Column(c) if c.name == column) => {
            let mut values = BTreeSet::new();
            for item in &list.list {
                let Expr::Literal(value, _) = item else { return None };
                values.extend(text(value)?);
            }
            Some(values)
        }
        _ => None,
    }
}

/// A text literal's value (`Some(None)` for a NULL), `None` for other types.
fn text(value: &ScalarValue) -> Option<Option<String>> {
    match value {
        ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => Some(v.clone()),
        _ => None,
    }
}

/// Whether `filter` is one the table applies exactly (see [`exact_values`]).
pub fn is_exact(filter: &Expr) -> bool {
    KEYED.iter().any(|keyed| exact_values(filter, keyed.column()).is_some())
}

/// Per indexed column, the keys every exact filter of `filters` on it
/// allows (their intersection); empty when there is no exact filter.
pub fn wanted(filters: &[Expr]) -> Vec<Wanted> {
    KEYED
        .iter()
        .filter_map(|&keyed| {
            let keys = filters
                .iter()
                .filter_map(|f| exact_values(f, keyed.column()))
                .reduce(|a, b| a.intersection(&b).cloned().collect())?;
            Some(Wanted { keyed, keys })
        })
        .collect()
}

/// The exact filters of `wanted` as one predicate, for what has no index.
pub fn predicate(wanted: &[Wanted]) -> Option<Expr> {
    conjunction(
        wanted.iter().map(|w| col(w.keyed.column()).in_list(w.keys.iter().map(|k| lit(k.as_str())).collect(), false)),
    )
}

/// What a segment's indexes say about the wanted keys.
pub enum Lookup {
    /// The segment lacks a usable index, or holds a wanted content id in too
    /// many rows for the index to list: scan it with the filters.
    Unindexed,
    /// Exactly these rows hold the wanted keys: scan them only.
    Rows(ParquetAccessPlan),
    /// No row holds them.
    None,
}

/// Looks the `wanted` keys up in `segment`'s manifest entry and indexes:
/// the rows every wanted column names. A scan of one organisation always
/// wants its `org_id`, so when the manifest does not say where its rows
/// lie, the indexes are not used at all, and whether they name another
/// organisation's rows never changes what is read.
pub async fn lookup(cache: &SegmentCache, segment: &LiveSegment, wanted: &[Wanted]) -> Lookup {
    let mut rows: Option<Vec<Range<u32>>> = None;
    let mut group_rows = None;
    for want in wanted {
        let found = match want.keyed.index(segment) {
            None => match org_runs(segment, &want.keys) {
                Some(runs) => runs,
                None => return Lookup::Unindexed,
            },
            Some((_, None)) => return Lookup::Unindexed,
            Some((kind, Some(location))) => match rows_of(cache, segment, kind, location, &want.keys).await {
                Ok(None) => return Lookup::Unindexed,
                Ok(Some((head, found))) => {
                    group_rows = Some(head.group_rows);
                    found
                }
                Err(reason) => {
                    warn!(segment = %segment.meta.file, %reason, "row index unusable; scanning the segment instead");
                    return Lookup::Unindexed;
                }
            },
        };
        let found = match rows {
            Some(rows) => intersection(&rows, &found),
            None => found,
        };
        if found.is_empty() {
            return Lookup::None;
        }
        rows = Some(found);
    }
    let Some(rows) = rows else { return Lookup::Unindexed };
    let group_rows = match group_rows {
        Some(group_rows) => group_rows,
        // Only organisations wanted: the row group sizes come from either
        // index's head (one cached read).
        None => match any_head(cache, segment).await {
            Some(head) => head.group_rows,
            None => return Lookup::Unindexed,
        },
    };
    Lookup::Rows(access_plan(&group_rows, &rows))
}

/// The runs of rows of the organisations `orgs` in `segment`, from the
/// manifest; `None` when it does not list the segment's organisations.
fn org_runs(segment: &LiveSegment, orgs: &BTreeSet<String>) -> Option<Vec<Range<u32>>> {
    segment.meta.orgs.as_ref()?;
    let runs = orgs.iter().filter_map(|org| segment.meta.org_rows(org)).map(|run| clamp(run.start)..clamp(run.end));
    Some(merged(runs.collect()))
}

fn clamp(row: u64) -> u32 {
    row.min(u64::from(u32::MAX)) as u32
}

/// The head of the segment's actor or content index, whichever it has.
async fn any_head(cache: &SegmentCache, segment: &LiveSegment) -> Option<RowIndexHead> {
    for (kind, location) in
        [(RowIndexKind::Actor, segment.meta.actor_index), (RowIndexKind::Content, segment.meta.content_index)]
    {
        if let Some(location) = location
            && let Ok(head) = read_head(cache, segment, kind, location).await
        {
            return Some(head);
        }
    }
    None
}

async fn read_head(
    cache: &SegmentCache,
    segment: &LiveSegment,
    kind: RowIndexKind,
    location: RowIndexLocation,
) -> Result<RowIndexHead, String> {
    let mut range = location.first_read();
    loop {
        let bytes = cache.read(segment, range.clone()).await.map_err(|e| e.to_string())?;
        match RowIndexHead::parse(kind, location, &bytes).map_err(|e| e.to_string())? {
            Parsed::Head(head) => return Ok(head),
            Parsed::NeedRange(whole) if whole != range => range = whole,
            Parsed::NeedRange(_) => return Err("the index head cannot be read whole".into()),
        }
    }
}

/// The runs of rows holding any of `keys`, sorted and merged, and the head
/// of the index they came from; `None` when a key is in too many rows to
/// be listed.
async fn rows_of(
    cache: &SegmentCache,
    segment: &LiveSegment,
    kind: RowIndexKind,
    location: RowIndexLocation,
    keys: &BTreeSet<String>,
) -> Result<Option<(RowIndexHead, Vec<Range<u32>>)>, String> {
    let head = read_head(cache, segment, kind, location).await?;
    let starts = cache.read(segment, head.starts_range()).await.map_err(|e| e.to_string())?;
    let mut runs = Vec::new();
    for key in keys {
        let bucket_range = head.bucket_range(key, &starts).map_err(|e| e.to_string())?;
        let bucket = cache.read(segment, bucket_range).await.map_err(|e| e.to_string())?;
        match head.rows_in_bucket(key, &bucket).map_err(|e| e.to_string())? {
            Some(found) => runs.extend(found),
            None => return Ok(None),
        }
    }
    Ok(Some((head, merged(runs))))
}

/// `runs` sorted, overlapping and touching ones made one.
fn merged(mut runs: Vec<Range<u32>>) -> Vec<Range<u32>> {
    runs.sort_unstable_by_key(|run| (run.start, run.end));
    let mut out: Vec<Range<u32>> = Vec::with_capacity(runs.len());
    for run in runs.into_iter().filter(|run| !run.is_empty()) {
        match out.last_mut() {
            Some(last) if run.start <= last.end => last.end = last.end.max(run.end),
            _ => out.push(run),
        }
    }
    out
}

/// The rows in both `a` and `b` (each sorted and merged).
fn intersection(a: &[Range<u32>], b: &[Range<u32>]) -> Vec<Range<u32>> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (start, end) = (a[i].start.max(b[j].start), a[i].end.min(b[j].end));
        if start < end {
            out.push(start..end);
        }
        if a[i].end < b[j].end { i += 1 } else { j += 1 }
    }
    out
}

/// A Parquet access plan reading exactly the rows of `runs` (sorted,
/// disjoint, numbered over the whole file) of a file whose row groups hold
/// `group_rows`.
fn access_plan(group_rows: &[u32], runs: &[Range<u32>]) -> ParquetAccessPlan {
    let mut groups = Vec::with_capacity(group_rows.len());
    let mut runs = runs.iter().cloned().peekable();
    let mut group_start = 0u32;
    for &size in group_rows {
        let group_end = group_start.saturating_add(size);
        let mut selectors = Vec::new();
        let mut at = group_start;
        while let Some(run) = runs.peek_mut() {
            if run.start >= group_end {
                break;
            }
            let start = run.start.max(at);
            let end = run.end.min(group_end);
            if start > at {
                selectors.push(RowSelector::skip((start - at) as usize));
            }
            if end > start {
                selectors.push(RowSelector::select((end - start) as usize));
                at = end;
            }
            if run.end <= group_end {
                runs.next();
            } else {
                // The rest of the run lies in the next row group.
                run.start = group_end;
                break;
            }
        }
        groups.push(if selectors.iter().all(|s| s.skip) {
            RowGroupAccess::Skip
        } else {
            if at < group_end {
                selectors.push(RowSelector::skip((group_end - at) as usize));
            }
            RowGroupAccess::Selection(RowSelection::from(selectors))
        });
        group_start = group_end;
    }
    ParquetAccessPlan::new(groups)
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};
    use proptest::prelude::*;

    use super::*;

    fn exact(filter: &Expr) -> Option<BTreeSet<String>> {
        exact_values(filter, "content_id")
    }

    #[test]
    fn only_equality_and_in_lists_of_text_literals_are_exact() {
        let ids = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        assert_eq!(exact(&col("content_id").eq(lit("p1"))), ids(&["p1"]));
        assert_eq!(exact(&lit("p1").eq(col("content_id"))), ids(&["p1"]));
        let listed = col("content_id").in_list(vec![lit("p2"), lit("p1"), lit(ScalarValue::Utf8(None))], false);
        assert_eq!(exact(&listed), ids(&["p1", "p2"]));
        assert_eq!(exact(&col("content_id").in_list(vec![lit("p1")], true)), None, "NOT IN");
        assert_eq!(exact(&col("content_id").not_eq(lit("p1"))), None);
        assert_eq!(exact(&col("actor_id").eq(lit("p1"))), None);
        assert_eq!(exact(&col("content_id").eq(col("actor_id"))), None);
        assert_eq!(exact(&col("content_id").eq(lit(1))), None);
        let either = col("content_id").eq(lit("p1")).or(lit("p3").eq(col("content_id")));
        assert_eq!(exact(&either), ids(&["p1", "p3"]));
        assert_eq!(exact(&col("content_id").eq(lit("p1")).or(col("actor_id").eq(lit("u")))), None);
        assert!(is_exact(&col("actor_id").eq(lit("u"))) && is_exact(&col("org_id").eq(lit("acme"))));
        assert!(!is_exact(&col("action").eq(lit("page.viewed"))));

        let filters = [
            col("content_id").in_list(vec![lit("p1"), lit("p2")], false),
            col("content_id").eq(lit("p2")),
            col("actor_id").eq(lit("u")),
            col("time").gt(lit(1)),
        ];
        let wanted = wanted(&filters);
        let found: Vec<_> = wanted.iter().map(|w| (w.keyed, w.keys.clone())).collect();
        assert_eq!(found, [(Keyed::Actor, ids(&["u"]).unwrap()), (Keyed::Content, ids(&["p2"]).unwrap())]);
        assert!(super::wanted(&[col("time").gt(lit(1))]).is_empty());
    }

    fn selected(plan: &ParquetAccessPlan) -> Vec<(usize, Vec<(bool, usize)>)> {
        let groups = plan.inner().iter().enumerate();
        groups
            .filter_map(|(g, access)| match access {
                RowGroupAccess::Skip => None,
                RowGroupAccess::Scan => Some((g, vec![(false, usize::MAX)])),
                RowGroupAccess::Selection(s) => Some((g, s.iter().map(|s| (s.skip, s.row_count)).collect())),
            })
            .collect()
    }

    #[test]
    fn access_plans_select_exactly_the_rows() {
        let plan = access_plan(&[4, 4, 3], &[1..4, 9..10]);
        assert_eq!(selected(&plan), [(0, vec![(true, 1), (false, 3)]), (2, vec![(true, 1), (false, 1), (true, 1)])]);
        // A run over a row group's end goes on in the next one.
        let plan = access_plan(&[4, 4, 3], &[2..7, 8..9]);
        assert_eq!(
            selected(&plan),
            [(0, vec![(true, 2), (false, 2)]), (1, vec![(false, 3), (true, 1)]), (2, vec![(false, 1), (true, 2)])]
        );
    }

    proptest! {
        /// Whatever the runs, the plan selects exactly their rows.
        #[test]
        fn access_plans_select_the_rows_of_any_runs(
            group_rows in proptest::collection::vec(1u32..50, 1..6),
            rows in proptest::collection::btree_set(0u32..300, 0..60),
            other in proptest::collection::btree_set(0u32..300, 0..200),
        ) {
            let total: u32 = group_rows.iter().sum();
            let rows: BTreeSet<u32> = rows.into_iter().filter(|&r| r < total).collect();
            let runs = merged(rows.iter().map(|&r| r..r + 1).collect());
            let mut expected = Vec::new();
            let mut start = 0;
            for (g, &size) in group_rows.iter().enumerate() {
                for row in start..start + size {
                    if rows.contains(&row) {
                        expected.push((g, row - start));
                    }
                }
                start += size;
            }
            let plan = access_plan(&group_rows, &runs);
            let mut got = Vec::new();
            for (g, access) in plan.inner().iter().enumerate() {
                if let RowGroupAccess::Selection(selection) = access {
                    let mut at = 0;
                    for s in selection.iter() {
                        if !s.skip {
                            got.extend((at..at + s.row_count as u32).map(|r| (g, r)));
                        }
                        at += s.row_count as u32;
                    }
                    prop_assert_eq!(at, group_rows[g], "a selection covers its row group");
                } else {
                    prop_assert!(matches!(access, RowGroupAccess::Skip));
                }
            }
            prop_assert_eq!(got, expected);

            let other_runs = merged(other.iter().map(|&r| r..r + 1).collect());
            let both: Vec<u32> = intersection(&runs, &other_runs).into_iter().flatten().collect();
            let want: Vec<u32> = rows.intersection(&other).copied().collect();
            prop_assert_eq!(both, want);
        }
    }
}
