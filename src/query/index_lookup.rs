//! Lookups answered by the segments' row indexes ([`row_index`]): "who
//! viewed this page" and "what did this person do" name the rows to read.
//!
//! `content_id = 'x'`, `actor_id = 'x'` and their `IN ('x', 'y')` forms are
//! the filters the table applies exactly itself: segments with the indexes
//! get a Parquet access plan selecting exactly their rows (a segment without
//! any is not opened; with both filters, the rows both name), and segments
//! without them (written before there were indexes), like the in-memory
//! buffer, get the filters applied inside the scan. Because the filters are
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

const KINDS: [RowIndexKind; 2] = [RowIndexKind::Content, RowIndexKind::Actor];

/// The keys of one indexed column a query keeps rows of.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub kind: RowIndexKind,
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
    KINDS.iter().any(|kind| exact_values(filter, kind.column()).is_some())
}

/// Per indexed column, the keys every exact filter of `filters` on it
/// allows (their intersection); empty when there is no exact filter.
pub fn wanted(filters: &[Expr]) -> Vec<Wanted> {
    KINDS
        .iter()
        .filter_map(|&kind| {
            let keys = filters
                .iter()
                .filter_map(|f| exact_values(f, kind.column()))
                .reduce(|a, b| a.intersection(&b).cloned().collect())?;
            Some(Wanted { kind, keys })
        })
        .collect()
}

/// The exact filters of `wanted` as one predicate, for what has no index.
pub fn predicate(wanted: &[Wanted]) -> Option<Expr> {
    conjunction(
        wanted.iter().map(|w| col(w.kind.column()).in_list(w.keys.iter().map(|k| lit(k.as_str())).collect(), false)),
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

/// Looks the `wanted` keys up in `segment`'s indexes: the rows every wanted
/// column's index names. With `within` (a scan of one organisation), only
/// rows in that run count: `Some(None)` when the manifest does not say where
/// its rows lie, and the indexes are then not used, so that whether they
/// name another organisation's rows never changes what is read.
pub async fn lookup(
    cache: &SegmentCache,
    segment: &LiveSegment,
    wanted: &[Wanted],
    within: Option<Option<Range<u64>>>,
) -> Lookup {
    let mut rows: Option<Vec<Range<u32>>> = match within {
        Some(None) => return Lookup::Unindexed,
        Some(Some(run)) => Some(std::iter::once(clamp(run.start)..clamp(run.end)).collect()),
        None => None,
    };
    let mut group_rows = None;
    for want in wanted {
        let location = match want.kind {
            RowIndexKind::Content => segment.meta.content_index,
            RowIndexKind::Actor => segment.meta.actor_index,
        };
        let Some(location) = location else { return Lookup::Unindexed };
        match rows_of(cache, segment, want.kind, location, &want.keys).await {
            Ok(None) => return Lookup::Unindexed,
            Ok(Some((head, found))) => {
                rows = Some(match rows {
                    Some(rows) => intersection(&rows, &found),
                    None => found,
                });
                group_rows = Some(head.group_rows);
            }
            Err(reason) => {
                warn!(segment = %segment.meta.file, %reason, "row index unusable; scanning the segment instead");
                return Lookup::Unindexed;
            }
        }
    }
    match (rows, group_rows) {
        (Some(rows), Some(group_rows)) if !rows.is_empty() => Lookup::Rows(access_plan(&group_rows, &rows)),
        (Some(_), Some(_)) => Lookup::None,
        _ => Lookup::Unindexed,
    }
}

fn clamp(row: u64) -> u32 {
    row.min(u64::from(u32::MAX)) as u32
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
    let mut range = location.first_read();
    let head = loop {
        let bytes = cache.read(segment, range.clone()).await.map_err(|e| e.to_string())?;
        match RowIndexHead::parse(kind, location, &bytes).map_err(|e| e.to_string())? {
            Parsed::Head(head) => break head,
            Parsed::NeedRange(whole) if whole != range => range = whole,
            Parsed::NeedRange(_) => return Err("the index head cannot be read whole".into()),
        }
    };
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
        assert!(is_exact(&col("actor_id").eq(lit("u"))) && !is_exact(&col("org_id").eq(lit("acme"))));

        let filters = [
            col("content_id").in_list(vec![lit("p1"), lit("p2")], false),
            col("content_id").eq(lit("p2")),
            col("actor_id").eq(lit("u")),
            col("time").gt(lit(1)),
        ];
        let wanted = wanted(&filters);
        let found: Vec<_> = wanted.iter().map(|w| (w.kind, w.keys.clone())).collect();
        assert_eq!(
            found,
            [(RowIndexKind::Content, ids(&["p2"]).unwrap()), (RowIndexKind::Actor, ids(&["u"]).unwrap())]
        );
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
