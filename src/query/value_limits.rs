//! How big a value one function call may make, and how much work it may do.
//!
//! Most SQL functions make values no bigger than their arguments, and the
//! operators that keep many rows (sorts, joins, aggregates) count what they
//! hold against the statement's memory pool. A few functions multiply their
//! arguments instead: `repeat('x', 1500000000)` is 40 bytes of SQL and
//! 1.5 GB of memory, `range(1, 120000000)` 1 GB, `levenshtein` of two
//! 50,000-character strings 2.5 billion steps of one core, and a chain of
//! `||` doubles what it was given each time. None of that passes through the
//! pool, and a constant argument is evaluated while the statement is still
//! being planned, before any deadline applies.
//!
//! So those functions are registered again, wrapped: before the real one
//! runs, its result is estimated from its arguments and the call is refused
//! if it would pass [`MAX_FUNCTION_RESULT_BYTES`] (or, for edit distances,
//! [`MAX_EDIT_DISTANCE_CELLS`]); after it ran, what it actually made is
//! measured against the same limit, so that a chain of calls each within the
//! limit cannot add up past it. `||`, which is an operator and not a
//! function, gets the second check by an analyzer rule.
//!
//! The limits are per call, that is per batch of rows, which is what is in
//! memory at once. This module never changes the result of a call that is
//! within them.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::compute::{cast, cast_with_options};
use datafusion::arrow::datatypes::{DataType, FieldRef, IntervalMonthDayNano, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DataFusionError, ExprSchema, Result, ScalarValue};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::udf_eq::UdfEq;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Documentation, Expr, ExpressionPlacement, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// The most bytes one call of a function may return: what one batch of its
/// results holds. A batch of 8,192 rows of 2 KiB each fits; a constant
/// result is also copied with the plan while it is optimised, so the limit
/// is kept well under what one statement may hold in memory.
pub const MAX_FUNCTION_RESULT_BYTES: usize = 16 * 1024 * 1024;

/// The most steps one call of `levenshtein` may take (the product of the
/// lengths, summed over the batch): about a tenth of a second of one core.
pub const MAX_EDIT_DISTANCE_CELLS: u64 = 50_000_000;

/// How every refusal here starts; the server answers it with SQLSTATE
/// 54000 (program limit exceeded), as PostgreSQL answers `repeat` past 1 GB.
pub const VALUE_TOO_LARGE: &str = "value too large";

/// How a call's cost is estimated before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Estimate {
    /// The result is never much bigger than the arguments: measured after.
    Measured,
    /// `repeat(text, count)`.
    Repeat,
    /// `lpad`/`rpad(text, length [, fill])`: `length` characters.
    Pad,
    /// `replace(text, from, to)`: every `from` may become a `to`.
    Replace,
    /// `regexp_replace(text, pattern, replacement [, flags])`: an empty
    /// pattern matches between every two bytes.
    RegexpReplace,
    /// `range`/`generate_series(start, stop [, step])` or `(stop)`.
    Series,
    /// `array_repeat(element, count)`.
    ArrayRepeat,
    /// `array_resize(array, size [, value])`.
    ArrayResize,
    /// `levenshtein(a, b)`: work, not memory.
    EditDistance,
}

/// The functions wrapped here, and how each is estimated.
const WRAPPED: &[(&str, Estimate)] = &[
    ("repeat", Estimate::Repeat),
    ("lpad", Estimate::Pad),
    ("rpad", Estimate::Pad),
    ("replace", Estimate::Replace),
    ("regexp_replace", Estimate::RegexpReplace),
    ("range", Estimate::Series),
    ("generate_series", Estimate::Series),
    ("array_repeat", Estimate::ArrayRepeat),
    ("array_resize", Estimate::ArrayResize),
    ("levenshtein", Estimate::EditDistance),
    ("concat", Estimate::Measured),
    ("concat_ws", Estimate::Measured),
    ("overlay", Estimate::Measured),
    ("encode", Estimate::Measured),
    ("array_concat", Estimate::Measured),
    ("array_append", Estimate::Measured),
    ("array_prepend", Estimate::Measured),
    ("string_to_array", Estimate::Measured),
];

/// Name of the identity function `||` is wrapped in.
const MEASURED_CONCAT: &str = "auditlake_measured_concat";

/// Registers the wrapped functions and the `||` rule in `session`.
pub fn register(session: &SessionContext) {
    for (name, estimate) in WRAPPED {
        let Some(inner) = session.state().scalar_functions().get(*name).cloned() else {
            // Every name is one of DataFusion's; a test checks they all exist.
            continue;
        };
        session.register_udf(ScalarUDF::new_from_impl(Limited {
            inner: Arc::clone(inner.inner()).into(),
            estimate: *estimate,
        }));
    }
    session.register_udf(measured_concat());
    session.add_analyzer_rule(Arc::new(MeasureConcatenation));
}

fn too_large(what: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!(
        "{VALUE_TOO_LARGE}: {what}, more than the {MAX_FUNCTION_RESULT_BYTES} bytes one function call may make for \
         a batch of rows"
    ))
}

/// Fails if `bytes` are more than one call may make.
fn check_bytes(function: &str, bytes: u64) -> Result<()> {
    if bytes > MAX_FUNCTION_RESULT_BYTES as u64 {
        return Err(too_large(format_args!("{function} would make {bytes} bytes")));
    }
    Ok(())
}

/// Fails if the result a function made is bigger than one call may make.
fn check_result(function: &str, result: &ColumnarValue) -> Result<()> {
    let bytes = match result {
        ColumnarValue::Array(array) => array.get_array_memory_size(),
        ColumnarValue::Scalar(scalar) => scalar.size(),
    };
    if bytes > MAX_FUNCTION_RESULT_BYTES {
        return Err(too_large(format_args!("{function} made {bytes} bytes")));
    }
    Ok(())
}

/// One argument's per-row numbers (a length or an integer), null as zero;
/// a constant argument holds one number for every row.
struct PerRow {
    values: Vec<i64>,
}

impl PerRow {
    fn at(&self, row: usize) -> i64 {
        match self.values.as_slice() {
            [single] => *single,
            values => values.get(row).copied().unwrap_or(0),
        }
    }

    fn of(array: &ArrayRef) -> Result<PerRow> {
        let numbers = cast(array, &DataType::Int64)?;
        let numbers = numbers
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("a cast to Int64 did not make an Int64Array".to_string()))?;
        Ok(PerRow {
            values: (0..numbers.len()).map(|i| if numbers.is_null(i) { 0 } else { numbers.value(i) }).collect(),
        })
    }
}

fn as_array(arg: &ColumnarValue) -> Result<ArrayRef> {
    match arg {
        ColumnarValue::Array(array) => Ok(Arc::clone(array)),
        ColumnarValue::Scalar(scalar) => scalar.to_array_of_size(1),
    }
}

/// Byte lengths of a text or binary argument.
fn byte_lengths(arg: &ColumnarValue) -> Result<PerRow> {
    PerRow::of(&length(&as_array(arg)?)?)
}

/// An integer argument.
fn integers(arg: &ColumnarValue) -> Result<PerRow> {
    PerRow::of(&as_array(arg)?)
}

/// Size in bytes of each row's value of any argument, at least one.
fn element_bytes(arg: &ColumnarValue) -> u64 {
    match arg {
        ColumnarValue::Scalar(scalar) => scalar.size() as u64,
        ColumnarValue::Array(array) => (array.get_array_memory_size() / array.len().max(1)) as u64,
    }
    .max(1)
}

/// A time argument of a series in microseconds since the epoch (dates and
/// timestamps alike), or an integer one as it is.
fn series_points(arg: &ColumnarValue) -> Result<PerRow> {
    let array = as_array(arg)?;
    match array.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
            let micros =
                cast_with_options(&array, &DataType::Timestamp(TimeUnit::Microsecond, None), &Default::default())?;
            PerRow::of(&micros)
        }
        _ => PerRow::of(&array),
    }
}

/// The smallest step a series' step argument can mean, in the unit of
/// [`series_points`]: a month is at least 28 days and a day at least 23
/// hours (a daylight-saving change).
fn series_steps(arg: &ColumnarValue) -> Result<PerRow> {
    let array = as_array(arg)?;
    if let DataType::Interval(_) = array.data_type() {
        let intervals = cast(&array, &DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano))?;
        let intervals = intervals
            .as_any()
            .downcast_ref::<datafusion::arrow::array::IntervalMonthDayNanoArray>()
            .ok_or_else(|| DataFusionError::Internal("an interval cast made no MonthDayNano array".to_string()))?;
        const HOUR_US: i128 = 3_600_000_000;
        let least = |i: IntervalMonthDayNano| -> i64 {
            let micros = (i.months as i128 * 28 * 24 + i.days as i128 * 23) * HOUR_US + i.nanoseconds as i128 / 1_000;
            micros.unsigned_abs().min(i64::MAX as u128) as i64
        };
        return Ok(PerRow {
            values: (0..intervals.len())
                .map(|r| if intervals.is_null(r) { 0 } else { least(intervals.value(r)) })
                .collect(),
        });
    }
    PerRow::of(&array)
}

/// How many values `range`/`generate_series` make for its arguments.
fn series_length(args: &[ColumnarValue], rows: usize) -> Result<u64> {
    let (start, stop, step) = match args {
        [stop] => (None, series_points(stop)?, None),
        [start, stop] => (Some(series_points(start)?), series_points(stop)?, None),
        [start, stop, step, ..] => (Some(series_points(start)?), series_points(stop)?, Some(series_steps(step)?)),
        [] => return Ok(0),
    };
    let mut total = 0u64;
    for row in 0..rows.max(1) {
        let span = (stop.at(row) as i128 - start.as_ref().map_or(0, |s| s.at(row)) as i128).unsigned_abs();
        // A zero step is refused by the function itself.
        let step = step.as_ref().map_or(1, |s| s.at(row)).unsigned_abs().max(1) as u128;
        total = total.saturating_add((span / step + 1).min(u64::MAX as u128) as u64);
    }
    Ok(total)
}

/// The bytes (or, for edit distances, steps) a call is estimated to need.
fn estimate(estimate: Estimate, args: &[ColumnarValue], rows: usize) -> Result<u64> {
    let rows = rows.max(1);
    let sum = |f: &dyn Fn(usize) -> u64| (0..rows).fold(0u64, |total, row| total.saturating_add(f(row)));
    let positive = |n: i64| n.max(0) as u64;
    Ok(match (estimate, args) {
        (Estimate::Repeat, [text, count, ..]) => {
            let (text, count) = (byte_lengths(text)?, integers(count)?);
            sum(&|row| positive(text.at(row)).saturating_mul(positive(count.at(row))))
        }
        (Estimate::Pad, [_, target, ..]) => {
            let target = integers(target)?;
            sum(&|row| positive(target.at(row)))
        }
        (Estimate::Replace, [text, from, to, ..]) => {
            let (text, from, to) = (byte_lengths(text)?, byte_lengths(from)?, byte_lengths(to)?);
            sum(&|row| {
                let text = positive(text.at(row));
                let matches = text / positive(from.at(row)).max(1);
                text.saturating_add(matches.saturating_mul(positive(to.at(row))))
            })
        }
        (Estimate::RegexpReplace, [text, _, replacement, ..]) => {
            let (text, replacement) = (byte_lengths(text)?, byte_lengths(replacement)?);
            sum(&|row| {
                let text = positive(text.at(row));
                text.saturating_add((text + 1).saturating_mul(positive(replacement.at(row))))
            })
        }
        (Estimate::Series, args) => series_length(args, rows)?.saturating_mul(8),
        (Estimate::ArrayRepeat, [element, count, ..]) => {
            let (size, count) = (element_bytes(element), integers(count)?);
            sum(&|row| positive(count.at(row)).saturating_mul(size))
        }
        (Estimate::ArrayResize, [array, size, rest @ ..]) => {
            let each = rest.first().map_or(8, element_bytes).max(element_bytes(array) / 8).max(8);
            let size = integers(size)?;
            sum(&|row| positive(size.at(row)).saturating_mul(each))
        }
        (Estimate::EditDistance, [a, b, ..]) => {
            let (a, b) = (byte_lengths(a)?, byte_lengths(b)?);
            sum(&|row| positive(a.at(row)).saturating_mul(positive(b.at(row))))
        }
        // Too few arguments: the function itself says what is wrong.
        _ => 0,
    })
}

/// A DataFusion function, refused before it runs when its estimated
/// result is too big and after it ran when its real one is.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Limited {
    inner: UdfEq<Arc<dyn ScalarUDFImpl>>,
    estimate: Estimate,
}

impl Limited {
    fn check_before(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let name = self.inner.name();
        if self.estimate == Estimate::Measured {
            return Ok(());
        }
        // An argument the estimate cannot read could hide any size: refused.
        let needed = estimate(self.estimate, &args.args, args.number_rows).map_err(|e| {
            DataFusionError::Execution(format!("{VALUE_TOO_LARGE}: cannot tell what {name} would make ({e})"))
        })?;
        match self.estimate {
            Estimate::EditDistance if needed > MAX_EDIT_DISTANCE_CELLS => Err(DataFusionError::Execution(format!(
                "{VALUE_TOO_LARGE}: {name} over these strings takes {needed} steps, more than the \
                 {MAX_EDIT_DISTANCE_CELLS} one call may take for a batch of rows"
            ))),
            Estimate::EditDistance => Ok(()),
            _ => check_bytes(name, needed),
        }
    }
}

#[warn(clippy::missing_trait_methods)]
impl ScalarUDFImpl for Limited {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.inner.display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.inner.is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check_before(&args)?;
        let result = self.inner.invoke_with_args(args)?;
        check_result(self.inner.name(), &result)?;
        Ok(result)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let updated = self.inner.with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Limited { inner: Arc::clone(updated.inner()).into(), estimate: self.estimate }))
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    /// What the inner function simplifies to, with the functions in it
    /// wrapped again: `concat` rebuilds itself from DataFusion's own.
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        match self.inner.simplify(args, info)? {
            ExprSimplifyResult::Simplified(expr) => {
                Ok(ExprSimplifyResult::Simplified(expr.transform_up(limit_function).data()?))
            }
            original => Ok(original),
        }
    }

    fn preimage(&self, args: &[Expr], lit_expr: &Expr, info: &SimplifyContext) -> Result<PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(&self, args: &'a [Expr]) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(&self, interval: &Interval, inputs: &[&Interval]) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(&self, literal_args: &[Option<ScalarValue>]) -> Option<StructFieldMapping> {
        self.inner.struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.placement(args)
    }
}

/// `expr` with a function of [`WRAPPED`] that is not wrapped, wrapped.
fn limit_function(expr: Expr) -> Result<Transformed<Expr>> {
    match expr {
        Expr::ScalarFunction(ScalarFunction { func, args }) if !func.inner().is::<Limited>() => {
            match WRAPPED.iter().find(|(name, _)| *name == func.name()) {
                Some((_, estimate)) => {
                    let limited = Limited { inner: Arc::clone(func.inner()).into(), estimate: *estimate };
                    let func = Arc::new(ScalarUDF::new_from_impl(limited));
                    Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction { func, args })))
                }
                None => Ok(Transformed::no(Expr::ScalarFunction(ScalarFunction { func, args }))),
            }
        }
        other => Ok(Transformed::no(other)),
    }
}

/// Identity on the result of a `||`, refusing it when it is too big.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MeasuredConcat {
    signature: Signature,
}

impl ScalarUDFImpl for MeasuredConcat {
    fn name(&self) -> &str {
        MEASURED_CONCAT
    }

    /// The name of the `||` itself, so that columns keep their names.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(args.first().map(|a| a.schema_name().to_string()).unwrap_or_default())
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        self.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Null))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args.arg_fields.first().cloned().ok_or_else(|| DataFusionError::Internal(format!("{MEASURED_CONCAT}()")))
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let value = args.args.pop().ok_or_else(|| DataFusionError::Internal(format!("{MEASURED_CONCAT}()")))?;
        check_result("||", &value)?;
        Ok(value)
    }
}

fn measured_concat() -> ScalarUDF {
    ScalarUDF::new_from_impl(MeasuredConcat { signature: Signature::any(1, Volatility::Immutable) })
}

/// Wraps every `a || b` in [`MeasuredConcat`]: each `||` in a chain is then
/// given operands within the limit and makes at most twice it.
#[derive(Debug)]
struct MeasureConcatenation;

fn measure_concat(expr: Expr) -> Result<Transformed<Expr>> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { op: Operator::StringConcat, .. }) => {
            let measured = measured_concat();
            Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(measured), vec![expr]))))
        }
        other => Ok(Transformed::no(other)),
    }
}

impl AnalyzerRule for MeasureConcatenation {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| node.map_expressions(|e| e.transform_up(measure_concat))).data()
    }

    fn name(&self) -> &str {
        "auditlake_measure_concatenation"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;

    async fn run(sql: &str) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        let session = SessionContext::new();
        register(&session);
        session.sql(sql).await?.collect().await
    }

    async fn number(sql: &str) -> i64 {
        let batches = run(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let column = cast(batches[0].column(0), &DataType::Int64).unwrap();
        column.as_primitive::<Int64Type>().value(0)
    }

    async fn refusal(sql: &str) -> String {
        let error = run(sql).await.expect_err(sql).to_string();
        assert!(error.contains(VALUE_TOO_LARGE), "{sql}: {error}");
        error
    }

    #[test]
    fn every_wrapped_function_exists() {
        let session = SessionContext::new();
        let functions = session.state().scalar_functions().clone();
        for (name, _) in WRAPPED {
            assert!(functions.contains_key(*name), "{name} is not a DataFusion function");
        }
    }

    #[tokio::test]
    async fn calls_within_the_limits_answer_as_before() {
        assert_eq!(number("select length(repeat('ab', 1000000))").await, 2_000_000);
        assert_eq!(number("select length(lpad('x', 10, '-'))").await, 10);
        assert_eq!(number("select length(rpad('x', 1000000))").await, 1_000_000);
        assert_eq!(number("select cardinality(range(1, 100001))").await, 100_000);
        assert_eq!(number("select cardinality(generate_series(1, 10, 3))").await, 4);
        let days = "select cardinality(range(date '2026-01-01', date '2027-01-01', interval '1 day'))";
        assert_eq!(number(days).await, 365);
        assert_eq!(number("select cardinality(array_repeat(7, 1000))").await, 1000);
        assert_eq!(number("select levenshtein('kitten', 'sitting')").await, 3);
        assert_eq!(number("select length(replace('abcabc', 'b', 'xyz'))").await, 10);
        assert_eq!(number("select length('ab' || 'cd' || repeat('e', 3))").await, 7);
        // `||` keeps its null: concat() would not.
        let batches = run("select 'a' || null").await.unwrap();
        assert!(batches[0].column(0).is_null(0));
        // Over a column, the estimate is per row.
        let per_row = "select sum(length(repeat('x', v))) from unnest(range(1, 1001)) as t(v)";
        assert_eq!(number(per_row).await, 500_500);
    }

    #[tokio::test]
    async fn calls_past_the_limits_are_refused_before_they_allocate() {
        refusal("select length(repeat('x', 1500000000))").await;
        refusal("select length(lpad('x', 2000000000))").await;
        refusal("select length(rpad('x', 2000000000, 'yz'))").await;
        refusal("select cardinality(range(1, 120000000))").await;
        refusal("select cardinality(generate_series(1, 120000000))").await;
        refusal("select cardinality(range(timestamp '2000-01-01', timestamp '2030-01-01', interval '1 second'))").await;
        refusal("select cardinality(array_repeat(1, 200000000))").await;
        refusal("select cardinality(array_repeat(array_repeat(1, 10000), 10000))").await;
        refusal("select length(replace(repeat('a', 10000000), 'a', repeat('b', 100)))").await;
        refusal("select length(regexp_replace(repeat('a', 1000000), '', repeat('b', 1000), 'g'))").await;
        let steps = refusal("select levenshtein(repeat('a', 50000), repeat('b', 50000))").await;
        assert!(steps.contains("2500000000 steps"), "{steps}");
    }

    #[tokio::test]
    async fn chains_of_calls_within_the_limit_cannot_add_up_past_it() {
        let part = "repeat('x', 10000000)";
        refusal(&format!("select length({part} || {part} || {part} || {part})")).await;
        refusal(&format!("select length(concat({part}, {part}, {part}))")).await;
        refusal(&format!("select cardinality(array_concat(range({}), range({})))", 1_500_000, 1_500_000)).await;
    }
}
