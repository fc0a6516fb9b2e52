//! What the views ask of the log: one page of events after a cursor, the
//! events over time, the top values of a column, an actor's first sightings
//! of addresses and places. Each runs as a DataFrame over `audit_events` in
//! a session scoped to the reader's tenant, its search turned into one
//! condition of literal values; nothing here builds SQL text or renders.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::dataframe::DataFrame;
use datafusion::functions_aggregate::expr_fn::{count, min};
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{col, lit};
use serde_json::Value;

use super::super::ApiError;
use super::super::export;

/// Events a page shows when the URL does not say.
pub const DEFAULT_PAGE_ROWS: usize = 100;
/// The most events one page shows.
pub const MAX_PAGE_ROWS: usize = 500;
/// Bars of the events-over-time histogram.
pub const HISTOGRAM_BUCKETS: i64 = 48;
/// Values a facet lists.
pub const FACET_VALUES: usize = 8;

/// The columns a page of events shows, besides `time_us` and `seq`.
pub const PAGE_COLUMNS: [&str; 17] = [
    "id",
    "org_id",
    "actor_id",
    "actor_name",
    "actor_type",
    "action",
    "category",
    "outcome",
    "product",
    "content_type",
    "content_id",
    "content_title",
    "container_id",
    "source_ip",
    "user_agent",
    "location",
    "session_id",
];

/// Where a page starts: after (or, newest first, before) this event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub time_us: i64,
    pub seq: i64,
}

impl Cursor {
    /// `1733270400000000.42`, as the page links write it.
    pub fn parse(text: &str) -> Option<Cursor> {
        let (time, seq) = text.split_once('.')?;
        Some(Cursor { time_us: time.parse().ok()?, seq: seq.parse().ok()? })
    }

    pub fn of(event: &Value) -> Option<Cursor> {
        Some(Cursor { time_us: event["time_us"].as_i64()?, seq: event["seq"].as_i64()? })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.time_us, self.seq)
    }
}

fn time_us() -> Expr {
    cast(col("time"), DataType::Int64)
}

/// Events past `cursor` in the page's order: (time, seq) after it, oldest
/// first, or before it, newest first. Ties in time are ordered by `seq`, so
/// no event is skipped or shown twice across pages.
fn past(cursor: Cursor, oldest_first: bool) -> Expr {
    let (time, seq) = (lit(cursor.time_us), lit(cursor.seq));
    match oldest_first {
        true => time_us().gt(time.clone()).or(time_us().eq(time).and(col("seq").gt(seq))),
        false => time_us().lt(time.clone()).or(time_us().eq(time).and(col("seq").lt(seq))),
    }
}

/// Up to `rows` events matching `condition` after `cursor`, in time order
/// (oldest or newest first), and whether more follow: `columns` of them,
/// with `time_us` and `seq`.
pub async fn page(
    table: DataFrame,
    condition: Expr,
    cursor: Option<Cursor>,
    oldest_first: bool,
    rows: usize,
    columns: &[&str],
) -> Result<(Vec<Value>, bool), ApiError> {
    let failed = ApiError::Query;
    let condition = match cursor {
        Some(cursor) => condition.and(past(cursor, oldest_first)),
        None => condition,
    };
    let mut selected: Vec<Expr> = vec![time_us().alias("time_us"), col("seq")];
    selected.extend(columns.iter().map(|name| col(*name)));
    let batches = table
        .filter(condition)
        .map_err(failed)?
        .sort(vec![time_us().sort(oldest_first, false), col("seq").sort(oldest_first, false)])
        .map_err(failed)?
        .limit(0, Some(rows + 1))
        .map_err(failed)?
        .select(selected)
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;
    let mut events = export::as_json(&batches)?;
    let more = events.len() > rows;
    events.truncate(rows);
    Ok((events, more))
}

/// How many events match `condition` in each of [`HISTOGRAM_BUCKETS`]
/// equal spans of `[from_us, to_us)`.
pub async fn histogram(table: DataFrame, condition: Expr, from_us: i64, to_us: i64) -> Result<Vec<i64>, ApiError> {
    let failed = ApiError::Query;
    let width_us = ((to_us - from_us) / HISTOGRAM_BUCKETS).max(1);
    let in_window = time_us().gt_eq(lit(from_us)).and(time_us().lt(lit(to_us)));
    let bucket = (time_us() - lit(from_us)) / lit(width_us);
    let batches = table
        .filter(condition.and(in_window))
        .map_err(failed)?
        .aggregate(vec![bucket.alias("bucket")], vec![count(lit(1)).alias("events")])
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;
    let mut counts = vec![0; HISTOGRAM_BUCKETS as usize];
    for (bucket, events) in pairs(&batches) {
        if let (Some(bucket), Some(events)) = (bucket.as_i64(), events.as_i64()) {
            // The last span takes what rounding leaves at the window's end.
            let at = (bucket.max(0) as usize).min(counts.len() - 1);
            counts[at] += events;
        }
    }
    Ok(counts)
}

/// The [`FACET_VALUES`] most frequent values of `column` among the events
/// matching `condition`, with their counts, most frequent first.
pub async fn facet(table: DataFrame, condition: Expr, column: &str) -> Result<Vec<(String, i64)>, ApiError> {
    let failed = ApiError::Query;
    let batches = per_value(table, condition, column, count(lit(1)).alias("events"))?
        .sort(vec![col("events").sort(false, false), col("value").sort(true, false)])
        .map_err(failed)?
        .limit(0, Some(FACET_VALUES))
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;
    Ok(pairs(&batches)
        .into_iter()
        .filter_map(|(value, events)| Some((value.as_str()?.to_string(), events.as_i64()?)))
        .collect())
}

/// When each value of `column` first appears among the events matching
/// `condition` (one actor's, say), in microseconds.
pub async fn first_seen(table: DataFrame, condition: Expr, column: &str) -> Result<HashMap<String, i64>, ApiError> {
    let batches = per_value(table, condition, column, min(time_us()).alias("first_us"))?
        .collect()
        .await
        .map_err(ApiError::Query)?;
    Ok(pairs(&batches)
        .into_iter()
        .filter_map(|(value, first)| Some((value.as_str()?.to_string(), first.as_i64()?)))
        .collect())
}

/// `aggregate` of the events matching `condition`, per value of `column`
/// (named `value`; events without one left out).
fn per_value(table: DataFrame, condition: Expr, column: &str, aggregate: Expr) -> Result<DataFrame, ApiError> {
    table
        .filter(condition.and(col(column).is_not_null()))
        .and_then(|matching| matching.aggregate(vec![col(column).alias("value")], vec![aggregate]))
        .map_err(ApiError::Query)
}

/// The two columns of small aggregate results, row by row.
fn pairs(batches: &[RecordBatch]) -> Vec<(Value, Value)> {
    let cell = |array: &dyn Array, row: usize| -> Value {
        if array.is_null(row) {
            return Value::Null;
        }
        match array.data_type() {
            DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
            DataType::Utf8 => Value::from(array.as_string::<i32>().value(row)),
            DataType::Utf8View => Value::from(array.as_string_view().value(row)),
            _ => Value::Null,
        }
    };
    batches
        .iter()
        .flat_map(|batch| {
            (0..batch.num_rows()).map(move |row| (cell(batch.column(0), row), cell(batch.column(1), row)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_what_links_write() {
        let cursor = Cursor { time_us: 1_733_270_400_000_000, seq: 42 };
        assert_eq!(Cursor::parse(&cursor.to_string()), Some(cursor));
        assert_eq!(Cursor::parse("12"), None);
        assert_eq!(Cursor::parse("a.1"), None);
        assert_eq!(Cursor::parse("1.-"), None);
    }
}
