//! Segment pruning from the manifest: a query's filters are checked against
//! each segment's recorded min/max of `time`, `org_id`, `actor_id` and `seq` before any
//! file is opened, so a question about last week reads last week's segments
//! only. Row groups and pages inside the kept segments are pruned later by
//! the Parquet scan (statistics, bloom filters, page index).
//!
//! This module only answers "may this segment hold a matching row?"; a
//! wrong "no" would hide events, so anything it cannot decide is kept.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::{PruningPredicateBuilder, PruningStatistics};
use tracing::debug;

use crate::model;
use crate::storage::segment::LiveSegment;

/// The segments of `segments` that may hold rows matching `predicate` (a
/// conjunction of the query's filters over the table schema), in order.
pub fn prune_segments(
    segments: &[Arc<LiveSegment>],
    predicate: Option<Arc<dyn PhysicalExpr>>,
) -> Result<Vec<Arc<LiveSegment>>> {
    let Some(predicate) = predicate else {
        return Ok(segments.to_vec());
    };
    // No pruning predicate (trivially true, or one the builder cannot
    // handle) keeps every segment.
    let Some(pruning) = PruningPredicateBuilder::new().with_file_schema(model::schema()).build(predicate) else {
        return Ok(segments.to_vec());
    };
    // A predicate that fails on the statistics keeps every segment: its
    // error could name a bound, a value of any organisation's events, and
    // the filters above the scan decide anyway.
    let keep = match pruning.prune(&ManifestStatistics(segments)) {
        Ok(keep) => keep,
        Err(error) => {
            debug!(%error, "the manifest could not prune; every segment is kept");
            return Ok(segments.to_vec());
        }
    };
    Ok(segments.iter().zip(keep).filter(|(_, keep)| *keep).map(|(s, _)| Arc::clone(s)).collect())
}

/// Each segment is one container; the manifest knows min/max of four
/// columns, none of which can be NULL (`actor_id`'s only for segments written
/// since it was recorded).
struct ManifestStatistics<'a>(&'a [Arc<LiveSegment>]);

impl ManifestStatistics<'_> {
    fn bound(&self, column: &Column, max: bool) -> Option<ArrayRef> {
        let metas = self.0.iter().map(|s| &s.meta);
        Some(match column.name.as_str() {
            "time" => Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    metas.map(|m| if max { m.max_time_us } else { m.min_time_us }),
                )
                .with_timezone("UTC"),
            ),
            "org_id" => Arc::new(StringArray::from_iter_values(
                metas.map(|m| if max { m.max_org_id.as_str() } else { m.min_org_id.as_str() }),
            )),
            // NULL where the manifest does not know: the segment is kept.
            "actor_id" => Arc::new(StringArray::from_iter(
                metas.map(|m| m.actor_ids.as_ref().map(|(lo, hi)| if max { hi.as_str() } else { lo.as_str() })),
            )),
            "seq" => {
                Arc::new(Int64Array::from_iter_values(metas.map(|m| (if max { m.max_seq } else { m.min_seq }) as i64)))
            }
            _ => return None,
        })
    }
}

impl PruningStatistics for ManifestStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, false)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, true)
    }

    fn num_containers(&self) -> usize {
        self.0.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, false)?;
        Some(Arc::new(UInt64Array::from(vec![0; self.0.len()])))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(self.0.iter().map(|s| s.meta.rows))))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}
