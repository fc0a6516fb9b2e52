//! Correlated scalar subqueries, answered as PostgreSQL answers them.
//!
//! PostgreSQL runs `(SELECT x FROM t WHERE t.k = outer.k)` for each outer
//! row: NULL when no row matches, an error (21000) when more than one does.
//! DataFusion plans such a subquery only when it is an aggregate, and turns
//! it into a join only when its filter and select list keep the outer
//! columns to `inner = outer` equalities. ORMs and BI tools ask exactly this
//! of the catalog (SQLAlchemy's column reflection: a column's default, its
//! identity options, its collation), so this analyzer rule restates each
//! such subquery in the shape DataFusion takes, with the same answers:
//!
//! - the value is computed by an aggregate ([`single_row_value`]) that
//!   returns the one row's value, NULL for none, and fails like PostgreSQL
//!   for more;
//! - conditions on the outer row alone (`WHERE outer.has_default AND ...`)
//!   move out into `CASE WHEN condition THEN (subquery) END`;
//! - a select list that uses outer columns (`json_build_object(...,
//!   outer.x = 'a', ...)`) has the subquery return the inner columns it
//!   needs as one struct, and the expression is computed outside.
//!
//! It only restates plans; it never changes what a query reads, so the
//! tenant scope of `audit_events` applies below it as everywhere.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StructArray, UInt64Array};
use datafusion::arrow::compute::{not, nullif};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::config::ConfigOptions;
use datafusion::common::scalar::ScalarStructBuilder;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::functions::core::expr_fn::{get_field, named_struct};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Subquery, Volatility, when,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::lit;

/// What PostgreSQL says when a scalar subquery yields more than one row
/// (SQLSTATE 21000, see `sqlstate`).
pub const MORE_THAN_ONE_ROW: &str = "more than one row returned by a subquery used as an expression";

static SINGLE_ROW: LazyLock<Arc<AggregateUDF>> = LazyLock::new(|| Arc::new(AggregateUDF::from(SingleRow::new())));
static SINGLE_ROW_VALUE: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| Arc::new(ScalarUDF::from(SingleRowValue::new())));

/// The value of a subquery restated as `(SELECT single_row(x) ...)`: `x`
/// of its one row, NULL for none, an error for more than one.
///
/// Counting happens in the aggregate, the error where the value is used:
/// decorrelated, the aggregate runs for every group of the inner table,
/// also those no outer row asks for, where PostgreSQL never looks.
fn single_row_value(subquery: Expr) -> Expr {
    SINGLE_ROW_VALUE.call(vec![subquery])
}

/// `single_row(x)`: `{value, rows}`, with `value` the first row's `x`.
fn single_row(value: Expr) -> Expr {
    SINGLE_ROW.call(vec![value])
}

fn single_row_fields(value_type: &DataType) -> Fields {
    Fields::from(vec![Field::new("value", value_type.clone(), true), Field::new("rows", DataType::UInt64, false)])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SingleRow {
    signature: Signature,
}

impl SingleRow {
    fn new() -> Self {
        SingleRow { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl AggregateUDFImpl for SingleRow {
    fn name(&self) -> &str {
        "single_row"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(single_row_fields(&arg_types[0])))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let value_type = args.exprs[0].data_type(args.schema)?;
        Ok(Box::new(SingleRowAccumulator { value: ScalarValue::try_from(&value_type)?, rows: 0 }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new("value", args.input_fields[0].data_type().clone(), true)),
            Arc::new(Field::new("rows", DataType::UInt64, false)),
        ])
    }
}

#[derive(Debug)]
struct SingleRowAccumulator {
    value: ScalarValue,
    rows: u64,
}

impl SingleRowAccumulator {
    fn take(&mut self, values: &ArrayRef, rows: u64) -> Result<()> {
        if self.rows == 0 && rows > 0 {
            self.value = ScalarValue::try_from_array(values, 0)?;
        }
        self.rows += rows;
        Ok(())
    }
}

impl Accumulator for SingleRowAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values[0].len() as u64;
        self.take(&values[0], rows)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let counts = states[1].as_any().downcast_ref::<UInt64Array>().expect("row counts of single_row");
        for (index, rows) in counts.iter().enumerate() {
            self.take(&states[0].slice(index, 1), rows.unwrap_or(0))?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.value.clone(), ScalarValue::UInt64(Some(self.rows))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let fields = single_row_fields(&self.value.data_type());
        ScalarStructBuilder::new()
            .with_scalar(Arc::clone(&fields[0]), self.value.clone())
            .with_scalar(Arc::clone(&fields[1]), ScalarValue::UInt64(Some(self.rows)))
            .build()
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.value.size() - size_of_val(&self.value)
    }
}

/// `single_row_value({value, rows})`: `value`, or the error for `rows > 1`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SingleRowValue {
    signature: Signature,
}

impl SingleRowValue {
    fn new() -> Self {
        SingleRowValue { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for SingleRowValue {
    fn name(&self) -> &str {
        "single_row_value"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match &arg_types[0] {
            DataType::Struct(fields) if fields.len() == 2 => Ok(fields[0].data_type().clone()),
            other => exec_err!("single_row_value takes what single_row returns, not {other}"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let found = args.args[0].to_array(args.number_rows)?;
        let found = found.as_any().downcast_ref::<StructArray>().expect("single_row's struct");
        let rows = found.column(1).as_any().downcast_ref::<UInt64Array>().expect("single_row's row count");
        for index in 0..found.len() {
            if found.is_valid(index) && rows.is_valid(index) && rows.value(index) > 1 {
                return exec_err!("{MORE_THAN_ONE_ROW}");
            }
        }
        let value = Arc::clone(found.column(0));
        // A missing row (no match in the join) is a NULL struct: its value is NULL too.
        let value = match found.nulls() {
            Some(present) => nullif(&value, &not(&BooleanArray::new(present.inner().clone(), None))?)?,
            None => value,
        };
        Ok(ColumnarValue::Array(value))
    }
}

/// The analyzer rule; see the module comment.
#[derive(Debug)]
pub(super) struct SingleRowSubqueries;

impl AnalyzerRule for SingleRowSubqueries {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let outer: Vec<DFSchemaRef> = node.inputs().iter().map(|input| Arc::clone(input.schema())).collect();
            let names = NamePreserver::new(&node);
            let node = node.map_expressions(|expr| {
                let name = names.save(&expr);
                let restated = expr.transform_up(|expr| restate(expr, &outer))?;
                Ok(restated.update_data(|expr| name.restore(expr)))
            })?;
            if node.transformed { node.map_data(|plan| plan.recompute_schema()) } else { Ok(node) }
        })
        .data()
    }

    fn name(&self) -> &str {
        "single_row_subqueries"
    }
}

fn restate(expr: Expr, outer: &[DFSchemaRef]) -> Result<Transformed<Expr>> {
    let Expr::ScalarSubquery(subquery) = &expr else { return Ok(Transformed::no(expr)) };
    if subquery.outer_ref_columns.is_empty() || already_single_row(&subquery.subquery) {
        return Ok(Transformed::no(expr));
    }
    let LogicalPlan::Projection(projection) = subquery.subquery.as_ref() else { return Ok(Transformed::no(expr)) };
    let [value] = projection.expr.as_slice() else { return Ok(Transformed::no(expr)) };
    let value = value.clone().unalias();

    let (guards, input) = split_outer_conditions(projection.input.as_ref().clone())?;
    if !guards.iter().chain([&value]).all(|expr| outer_columns_resolve(expr, outer)) {
        return Ok(Transformed::no(expr)); // an outer column of a level further out: left as written
    }
    let guards = guards.into_iter().map(outer_to_local).collect::<Result<Vec<_>>>()?;
    let value_uses_outer = value.contains_outer();

    let restated = if value_uses_outer {
        // The inner columns the value needs travel out as one struct; the
        // value is computed where the outer columns are.
        let mut inner: Vec<Column> = value.column_refs().into_iter().cloned().collect();
        inner.sort_by_key(|column| column.flat_name());
        let row = if inner.is_empty() {
            lit(true)
        } else {
            named_struct(
                inner.iter().enumerate().flat_map(|(i, c)| [lit(format!("c{i}")), Expr::Column(c.clone())]).collect(),
            )
        };
        let found = scalar_subquery(input, row, subquery)?;
        let computed = outer_to_local(value)?
            .transform(|expr| match &expr {
                Expr::Column(column) => match inner.iter().position(|c| c == column) {
                    Some(i) => Ok(Transformed::yes(get_field(found.clone(), format!("c{i}")))),
                    None => Ok(Transformed::no(expr)),
                },
                _ => Ok(Transformed::no(expr)),
            })?
            .data;
        when(found.is_not_null(), computed).end()?
    } else {
        scalar_subquery(input, value, subquery)?
    };
    let restated = match conjunction(guards) {
        Some(condition) => when(condition, restated).end()?,
        None => restated,
    };
    Ok(Transformed::yes(restated))
}

/// Whether DataFusion already knows the subquery yields at most one row.
fn already_single_row(plan: &LogicalPlan) -> bool {
    let mut inner = plan;
    while let LogicalPlan::Projection(projection) = inner {
        inner = projection.input.as_ref();
    }
    match inner {
        LogicalPlan::Aggregate(_) => true,
        LogicalPlan::Filter(filter) => matches!(filter.input.as_ref(), LogicalPlan::Aggregate(_)),
        _ => plan.max_rows().is_some_and(|rows| rows <= 1),
    }
}

/// The conditions of `plan`'s filter that read only the outer row, and the
/// plan without them.
fn split_outer_conditions(plan: LogicalPlan) -> Result<(Vec<Expr>, LogicalPlan)> {
    let LogicalPlan::Filter(filter) = plan else { return Ok((vec![], plan)) };
    let (outer_only, rest): (Vec<Expr>, Vec<Expr>) = split_conjunction_owned(filter.predicate)
        .into_iter()
        .partition(|condition| condition.contains_outer() && condition.column_refs().is_empty());
    let input = Arc::unwrap_or_clone(filter.input);
    let plan = match conjunction(rest) {
        Some(predicate) => LogicalPlanBuilder::from(input).filter(predicate)?.build()?,
        None => input,
    };
    Ok((outer_only, plan))
}

/// `expr` with its outer references read as the outer plan's own columns.
fn outer_to_local(expr: Expr) -> Result<Expr> {
    expr.transform(|expr| match expr {
        Expr::OuterReferenceColumn(_, column) => Ok(Transformed::yes(Expr::Column(column))),
        other => Ok(Transformed::no(other)),
    })
    .data()
}

/// Whether the outer references of `expr` are columns of the plan the
/// subquery sits in (and not of one further out).
fn outer_columns_resolve(expr: &Expr, outer: &[DFSchemaRef]) -> bool {
    let mut resolve = true;
    expr.apply(|expr| {
        if let Expr::OuterReferenceColumn(_, column) = expr {
            resolve &= outer.iter().any(|schema| schema.has_column(column));
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visiting an expression cannot fail");
    resolve
}

/// `(SELECT value FROM input)` restated, correlated as `original` was.
fn scalar_subquery(input: LogicalPlan, value: Expr, original: &Subquery) -> Result<Expr> {
    let plan = LogicalPlanBuilder::from(input).aggregate(Vec::<Expr>::new(), vec![single_row(value)])?.build()?;
    let outer_ref_columns = plan.all_out_ref_exprs();
    let subquery = Subquery { subquery: Arc::new(plan), outer_ref_columns, spans: original.spans.clone() };
    Ok(single_row_value(Expr::ScalarSubquery(subquery)))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn session() -> SessionContext {
        let ctx = SessionContext::new();
        ctx.add_analyzer_rule(Arc::new(SingleRowSubqueries));
        for sql in [
            "create table col(rel int, num int, has_default boolean, kind varchar) as values \
             (1, 1, true, 'a'), (1, 2, false, ''), (2, 1, true, 'd'), (3, 1, true, 'a')",
            // rel 1 col 1 has one default; rel 2 col 1 has none; rel 3 col 1 has two.
            "create table def(rel int, num int, expr varchar) as values (1, 1, 'now()'), (3, 1, 'x'), (3, 1, 'y')",
        ] {
            ctx.sql(sql).await.unwrap().collect().await.unwrap();
        }
        ctx
    }

    async fn rows(ctx: &SessionContext, sql: &str) -> Result<String> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(pretty_format_batches(&batches)?.to_string())
    }

    #[tokio::test]
    async fn one_row_is_the_value_none_is_null() {
        let ctx = session().await;
        let sql = "select c.rel, c.num, \
                   (select d.expr from def d where d.rel = c.rel and d.num = c.num) as plain, \
                   case when c.has_default then (select d.expr from def d where c.has_default and d.rel = c.rel \
                   and d.num = c.num) end as guarded, \
                   (select concat(c.kind, ':', d.expr) from def d where c.kind <> '' and d.rel = c.rel \
                   and d.num = c.num) as computed_outside \
                   from col c where c.rel < 3 order by c.rel, c.num";
        assert_eq!(
            rows(&ctx, sql).await.unwrap(),
            "+-----+-----+-------+---------+------------------+\n\
             | rel | num | plain | guarded | computed_outside |\n\
             +-----+-----+-------+---------+------------------+\n\
             | 1   | 1   | now() | now()   | a:now()          |\n\
             | 1   | 2   |       |         |                  |\n\
             | 2   | 1   |       |         |                  |\n\
             +-----+-----+-------+---------+------------------+"
        );
    }

    #[tokio::test]
    async fn more_than_one_row_fails_as_in_postgres() {
        let ctx = session().await;
        for sql in [
            "select c.rel, (select d.expr from def d where d.rel = c.rel and d.num = c.num) from col c",
            "select c.rel from col c where (select d.expr from def d where d.rel = c.rel) = 'x'",
        ] {
            let error = rows(&ctx, sql).await.unwrap_err();
            assert_eq!(error.find_root().to_string(), format!("Execution error: {MORE_THAN_ONE_ROW}"), "{sql}");
        }
    }

    #[tokio::test]
    async fn aggregated_subqueries_are_left_as_written() {
        let ctx = session().await;
        let sql = "select c.rel, (select count(*) from def d where d.rel = c.rel) as n from col c \
                   where c.num = 1 order by c.rel";
        assert_eq!(
            rows(&ctx, sql).await.unwrap(),
            "+-----+---+\n| rel | n |\n+-----+---+\n| 1   | 1 |\n| 2   | 0 |\n| 3   | 2 |\n+-----+---+"
        );
    }
}
