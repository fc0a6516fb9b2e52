//! The organisation scope as a barrier, not a conjunct: for a user scoped
//! to one organisation, nothing the user wrote is evaluated on another
//! organisation's rows, and nothing the plan shows or counts was computed
//! over them.
//!
//! Two things make it so (see ARCHITECTURE.md, "Tenancy", and SECURITY.md):
//!
//! - Only [leakproof](is_leakproof) filters reach the scan: comparisons of
//!   columns with constants, `IN` lists, `LIKE` with a constant pattern,
//!   `IS NULL`, and `AND`/`OR`/`NOT` of those. They cannot fail, so the order
//!   in which pruning, the Parquet row filter or the buffer evaluates them
//!   next to the scope tells nothing. Every other filter (a cast, a division,
//!   a function) is left to DataFusion above the scan, where only the
//!   organisation's rows arrive.
//! - The scan of one organisation is wrapped in an [`OrgScanExec`], which is
//!   a leaf to the optimizer and to `EXPLAIN`: no rule can push a user's
//!   predicate or projection below it, no dynamic filter of a join or a
//!   `LIMIT` reaches the files through it, and `EXPLAIN ANALYZE` shows only
//!   the rows it hands on, never the files, row groups, bloom filters or
//!   byte counts of segments other organisations share. It also hands rows
//!   on in a fixed number of partitions and declares no order, so the plan
//!   above it does not depend on how many segments the scope kept.
//!
//! This module decides what is safe and hides what is below; it never
//! widens what a scan returns.

use std::fmt;
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Like, Operator};
use datafusion::physical_plan::ExecutionPlan;

use super::engine::Choice;
use super::opaque::{Opaque, OpaqueExec};

/// Whether evaluating `filter` on any row can only answer true, false or
/// NULL: it raises no error and calls no function, so evaluating it on
/// another organisation's row (while pruning, in a row filter, on the
/// buffer) reveals nothing through an error. PostgreSQL calls such
/// functions `LEAKPROOF`; this is the subset filters of investigations use.
pub fn is_leakproof(filter: &Expr) -> bool {
    match filter {
        Expr::Column(_) | Expr::Literal(..) => true,
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => is_leakproof(left) && is_leakproof(right),
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => is_operand(left) && is_operand(right),
            _ => false,
        },
        Expr::Not(inner)
        | Expr::IsNull(inner)
        | Expr::IsNotNull(inner)
        | Expr::IsTrue(inner)
        | Expr::IsFalse(inner)
        | Expr::IsUnknown(inner)
        | Expr::IsNotTrue(inner)
        | Expr::IsNotFalse(inner)
        | Expr::IsNotUnknown(inner) => is_leakproof(inner),
        Expr::Between(between) => is_operand(&between.expr) && is_operand(&between.low) && is_operand(&between.high),
        Expr::InList(list) => is_operand(&list.expr) && list.list.iter().all(|item| matches!(item, Expr::Literal(..))),
        // The pattern is the user's own constant: compiling it may fail, but
        // only with the user's own text; matching a value cannot.
        Expr::Like(Like { expr, pattern, escape_char, .. }) => {
            matches!(expr.as_ref(), Expr::Column(_))
                && matches!(pattern.as_ref(), Expr::Literal(..))
                && escape_char.is_none_or(|c| c == '\\')
        }
        _ => false,
    }
}

/// A side of a comparison that cannot fail: a column as stored, or a constant.
fn is_operand(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(_) | Expr::Literal(..))
}

/// The scan of one organisation's events, opaque from above (see the
/// module's documentation and [`opaque`](super::opaque)).
#[derive(Debug)]
pub struct OrgScan {
    org: String,
    /// On a node with workers: that this scan stays here, and why.
    engine: Option<Choice>,
    inner: Arc<dyn ExecutionPlan>,
}

pub type OrgScanExec = OpaqueExec<OrgScan>;

impl OrgScanExec {
    pub fn new(org: &str, inner: Arc<dyn ExecutionPlan>, partitions: usize, engine: Option<Choice>) -> Self {
        let schema = inner.schema();
        OpaqueExec::over(OrgScan { org: org.to_owned(), engine, inner }, schema, partitions)
    }

    /// The scan below the barrier, for tests of what it reads.
    #[cfg(test)]
    pub fn inner(&self) -> Arc<dyn ExecutionPlan> {
        Arc::clone(&self.node().inner)
    }
}

impl Opaque for OrgScan {
    const NAME: &'static str = "OrgScanExec";

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "org_id={}", self.org)?;
        match &self.engine {
            Some(engine) => write!(f, ", {engine}"),
            None => Ok(()),
        }
    }

    fn inner(&self, _context: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::clone(&self.inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn only_filters_that_cannot_fail_are_leakproof() {
        let actor = || col("actor_id");
        for safe in [
            actor().eq(lit("u1")),
            actor().eq(lit("u1")).or(col("time").gt(lit(5))),
            actor().in_list(vec![lit("a"), lit("b")], false),
            actor().like(lit("jira.%")),
            !actor().is_null(),
            actor().between(lit("a"), lit("c")),
            col("actor_id").eq(col("content_id")),
        ] {
            assert!(is_leakproof(&safe), "{safe}");
        }
        for unsafe_ in [
            datafusion::logical_expr::cast(actor(), datafusion::arrow::datatypes::DataType::Int32).eq(lit(1)),
            (col("seq") / lit(0)).eq(lit(1)),
            actor().eq(lit("u1")).and(datafusion::functions::expr_fn::to_timestamp(vec![actor()]).is_null()),
            actor().in_list(vec![datafusion::functions::expr_fn::upper(col("action"))], false),
            datafusion::functions::expr_fn::regexp_like(actor(), lit("("), None),
        ] {
            assert!(!is_leakproof(&unsafe_), "{unsafe_}");
        }
    }
}
