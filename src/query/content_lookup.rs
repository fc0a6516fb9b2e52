//! Content-id lookups answered by the segments' content indexes
//! ([`content_index`]): "who viewed this page" names the rows to read.
//!
//! `content_id = 'x'` and `content_id IN ('x', 'y')` are the filters the
//! table applies exactly itself: segments with an index get a Parquet access
//! plan selecting exactly their rows (a segment without them is not opened),
//! and segments without one (written before there were indexes), like the
//! in-memory buffer, get the filter applied inside the scan. Because the
//! filter is exact, DataFusion adds no filter of its own above the scan, so
//! `content_id` is not even read unless the query selects it.
//!
//! This module only finds rows; it never widens what a scan returns: a
//! segment whose index cannot be read is scanned with the filter instead.

use std::collections::BTreeSet;
use std::ops::Range;

use datafusion::common::ScalarValue;
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccess};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use tracing::warn;

use super::segment_cache::SegmentCache;
use crate::storage::content_index::{ContentIndexHead, Parsed};
use crate::storage::segment::LiveSegment;

const COLUMN: &str = "content_id";

/// The content ids `filter` keeps rows of, when it is one the table applies
/// exactly: `content_id = literal` (either way round), a non-negated
/// `content_id IN (literals)`, or an `OR` of those (DataFusion turns short
/// `IN` lists into one). NULL literals match no row, so they add no id.
pub fn exact_values(filter: &Expr) -> Option<BTreeSet<String>> {
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => {
            let mut values = exact_values(left)?;
            values.extend(exact_values(right)?);
            Some(values)
        }
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(value, _)) | (Expr::Literal(value, _), Expr::Column(c))
                if c.name == COLUMN =>
            {
                text(value).map(|v| v.into_iter().collect())
            }
            _ => None,
        },
        Expr::InList(list) if !list.negated && matches!(list.expr.as_ref(), Expr::Column(c) if c.name == COLUMN) => {
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

/// The content ids every exact filter of `filters` allows (their
/// intersection), or `None` when none of them is an exact content filter.
pub fn wanted(filters: &[Expr]) -> Option<BTreeSet<String>> {
    filters.iter().filter_map(exact_values).reduce(|a, b| a.intersection(&b).cloned().collect())
}

/// What a segment's index says about the wanted ids.
pub enum Lookup {
    /// The segment has no usable index, or holds a wanted id in too many
    /// rows for the index to list: scan it with the filter.
    Unindexed,
    /// Exactly these rows hold a wanted id: scan them only.
    Rows(ParquetAccessPlan),
    /// No row holds a wanted id.
    None,
}

/// Looks the wanted `ids` up in `segment`'s content index. With `within`
/// (a scan of one organisation), only rows in that run count: `Some(None)`
/// when the manifest does not say where its rows lie, and the index is then
/// not used, so that whether it names another organisation's rows never
/// changes what is read.
pub async fn lookup(
    cache: &SegmentCache,
    segment: &LiveSegment,
    ids: &BTreeSet<String>,
    within: Option<Option<Range<u64>>>,
) -> Lookup {
    let Some(location) = segment.meta.content_index else {
        return Lookup::Unindexed;
    };
    let within = match within {
        Some(None) => return Lookup::Unindexed,
        Some(Some(run)) => Some(run),
        None => None,
    };
    match rows_of(cache, segment, location, ids).await {
        Ok(None) => Lookup::Unindexed,
        Ok(Some((head, mut rows))) => {
            if let Some(run) = within {
                rows.retain(|&row| run.contains(&u64::from(row)));
            }
            if rows.is_empty() { Lookup::None } else { Lookup::Rows(access_plan(&head.group_rows, &rows)) }
        }
        Err(reason) => {
            warn!(segment = %segment.meta.file, %reason, "content index unusable; scanning the segment instead");
            Lookup::Unindexed
        }
    }
}

async fn rows_of(
    cache: &SegmentCache,
    segment: &LiveSegment,
    location: crate::storage::content_index::ContentIndexLocation,
    ids: &BTreeSet<String>,
) -> Result<Option<(ContentIndexHead, Vec<u32>)>, String> {
    let mut range = location.first_read();
    let head = loop {
        let bytes = cache.read(segment, range.clone()).await.map_err(|e| e.to_string())?;
        match ContentIndexHead::parse(location, &bytes).map_err(|e| e.to_string())? {
            Parsed::Head(head) => break head,
            Parsed::NeedRange(whole) if whole != range => range = whole,
            Parsed::NeedRange(_) => return Err("the index head cannot be read whole".into()),
        }
    };
    let starts = cache.read(segment, head.starts_range()).await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for id in ids {
        let bucket_range = head.bucket_range(id, &starts).map_err(|e| e.to_string())?;
        let bucket = cache.read(segment, bucket_range).await.map_err(|e| e.to_string())?;
        match head.rows_in_bucket(id, &bucket).map_err(|e| e.to_string())? {
            Some(found) => rows.extend(found),
            None => return Ok(None),
        }
    }
    rows.sort_unstable();
    rows.dedup();
    Ok(Some((head, rows)))
}

/// A Parquet access plan reading exactly `rows` (sorted, numbered over the
/// whole file) of a file whose row groups hold `group_rows`.
fn access_plan(group_rows: &[u32], rows: &[u32]) -> ParquetAccessPlan {
    let mut groups = Vec::with_capacity(group_rows.len());
    let mut rows = rows.iter().copied().peekable();
    let mut group_start = 0u32;
    for &size in group_rows {
        let group_end = group_start + size;
        let mut selectors = Vec::new();
        let mut at = group_start;
        while let Some(row) = rows.next_if(|&r| r < group_end) {
            if row > at {
                selectors.push(RowSelector::skip((row - at) as usize));
            }
            selectors.push(RowSelector::select(1));
            at = row + 1;
        }
        groups.push(if selectors.is_empty() {
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

    use super::*;

    #[test]
    fn only_equality_and_in_lists_of_text_literals_are_exact() {
        let ids = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        assert_eq!(exact_values(&col("content_id").eq(lit("p1"))), ids(&["p1"]));
        assert_eq!(exact_values(&lit("p1").eq(col("content_id"))), ids(&["p1"]));
        let listed = col("content_id").in_list(vec![lit("p2"), lit("p1"), lit(ScalarValue::Utf8(None))], false);
        assert_eq!(exact_values(&listed), ids(&["p1", "p2"]));
        assert_eq!(exact_values(&col("content_id").in_list(vec![lit("p1")], true)), None, "NOT IN");
        assert_eq!(exact_values(&col("content_id").not_eq(lit("p1"))), None);
        assert_eq!(exact_values(&col("actor_id").eq(lit("p1"))), None);
        assert_eq!(exact_values(&col("content_id").eq(col("actor_id"))), None);
        assert_eq!(exact_values(&col("content_id").eq(lit(1))), None);
        let either = col("content_id").eq(lit("p1")).or(lit("p3").eq(col("content_id")));
        assert_eq!(exact_values(&either), ids(&["p1", "p3"]));
        assert_eq!(exact_values(&col("content_id").eq(lit("p1")).or(col("actor_id").eq(lit("u")))), None);
        let filters = [col("content_id").in_list(vec![lit("p1"), lit("p2")], false), col("content_id").eq(lit("p2"))];
        assert_eq!(wanted(&filters), ids(&["p2"]), "both must hold");
        assert_eq!(wanted(&[col("time").gt(lit(1))]), None);
    }

    #[test]
    fn access_plans_select_exactly_the_rows() {
        let plan = access_plan(&[4, 4, 3], &[1, 2, 3, 9]);
        let groups = plan.inner();
        assert!(matches!(groups[1], RowGroupAccess::Skip));
        let RowGroupAccess::Selection(first) = &groups[0] else { panic!("{groups:?}") };
        assert_eq!(first.iter().map(|s| (s.skip, s.row_count)).collect::<Vec<_>>(), [(true, 1), (false, 3)]);
        let RowGroupAccess::Selection(last) = &groups[2] else { panic!("{groups:?}") };
        assert_eq!(last.iter().map(|s| (s.skip, s.row_count)).collect::<Vec<_>>(), [(true, 1), (false, 1), (true, 1)]);
    }
}
