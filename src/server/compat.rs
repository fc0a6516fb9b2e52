//! PostgreSQL functions that drivers, ORMs and BI tools call when they
//! connect or look at the schema, which neither DataFusion nor
//! datafusion-postgres' catalog emulation provides (or provides in a shape
//! clients reject). Each is registered in every connection's session.
//!
//! Also the statements they wrap around their work that have no meaning on
//! a read-only endpoint (savepoints), answered as PostgreSQL would.
//!
//! They describe the server and the one table; they never read events.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use datafusion::arrow::array::{Int32Array, ListBuilder, StringArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::cast::as_string_array;
use datafusion::common::config::ConfigOptions;
use datafusion::common::plan_err;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DFSchema, ParamValues, ScalarValue};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::expr::Like;
use datafusion::logical_expr::{
    ColumnarValue, EmptyRelation, Expr, ExprSchemable, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility, binary_expr, create_udf, lit,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, Query, SelectItem,
    SetExpr, Statement, TableFactor, Value, Visit, Visitor, visit_expressions, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::QueryHook;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::format_type;
use datafusion_postgres::hooks::HookClient;
use pgwire::api::results::{Response, Tag};
use pgwire::api::{ClientInfo, Type};
use pgwire::error::PgWireResult;

use super::sqlstate::statement_error;

/// The PostgreSQL version whose protocol and catalog the endpoint emulates.
pub const SERVER_VERSION: &str = "15.0";

/// What `version()` answers: PostgreSQL's shape first, because clients parse
/// it (SQLAlchemy refuses to connect to a server whose version string does
/// not start with `PostgreSQL N.N`); the protocol and catalog we emulate are
/// PostgreSQL 15's.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (auditlake {}, Apache DataFusion {}) on {}-linux, 64-bit",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
        std::env::consts::ARCH
    )
}

fn constant_text(name: &str, value: String) -> ScalarUDF {
    let value = ScalarValue::Utf8(Some(value));
    create_udf(
        name,
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_: &[ColumnarValue]| Ok(ColumnarValue::Scalar(value.clone()))),
    )
}

/// The oid of each built-in type by name (`text`, `int8`, `timestamptz`, ...).
static BUILT_IN_TYPES: LazyLock<HashMap<String, i32>> = LazyLock::new(|| {
    (0..=MAX_BUILT_IN_TYPE_OID)
        .filter_map(|oid| Type::from_oid(oid).map(|t| (t.name().to_string(), oid as i32)))
        .collect()
});
/// Built-in type oids stay below this (PostgreSQL 15's highest is 4600s).
const MAX_BUILT_IN_TYPE_OID: u32 = 10_000;

/// `to_regtype(name)`: the type's oid, or NULL for a type this server does
/// not have (psycopg asks for `hstore` this way when SQLAlchemy connects).
fn to_regtype() -> ScalarUDF {
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let names = match &args[0] {
                ColumnarValue::Array(array) => Arc::clone(array),
                ColumnarValue::Scalar(scalar) => scalar.to_array()?,
            };
            let names = as_string_array(&names)?;
            let oids: Int32Array = names.iter().map(|name| name.and_then(|n| BUILT_IN_TYPES.get(n).copied())).collect();
            Ok(ColumnarValue::Array(Arc::new(oids)))
        }),
    )
}

/// A LIKE pattern written with escape character `escape`, rewritten for
/// the backslash, the only escape DataFusion's LIKE takes.
fn pattern_for_backslash(pattern: &str, escape: char) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c == escape => {
                out.push('\\');
                out.extend(chars.next());
            }
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out
}

fn like_pattern_for_backslash(escape: char) -> ScalarUDF {
    create_udf(
        "auditlake_like_pattern_for_backslash",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let patterns = match &args[0] {
                ColumnarValue::Array(array) => Arc::clone(array),
                ColumnarValue::Scalar(scalar) => scalar.cast_to(&DataType::Utf8)?.to_array()?,
            };
            let rewritten: StringArray =
                as_string_array(&patterns)?.iter().map(|p| p.map(|p| pattern_for_backslash(p, escape))).collect();
            Ok(ColumnarValue::Array(Arc::new(rewritten)))
        }),
    )
}

/// `x LIKE p ESCAPE '/'` (SQLAlchemy's schema listing) as `x LIKE p'` with
/// `p'` escaped by backslashes, on the plan (never on SQL text): DataFusion
/// refuses any other escape character at execution.
#[derive(Debug)]
struct ClientCatalogRule;

fn like_with_backslash(expr: Expr) -> datafusion::error::Result<Transformed<Expr>> {
    match expr {
        Expr::Like(like) if like.escape_char.is_some_and(|c| c != '\\') => {
            let escape = like.escape_char.unwrap_or('\\');
            let pattern = like_pattern_for_backslash(escape).call(vec![*like.pattern]);
            Ok(Transformed::yes(Expr::Like(Like { escape_char: None, pattern: Box::new(pattern), ..like })))
        }
        other => Ok(Transformed::no(other)),
    }
}

impl AnalyzerRule for ClientCatalogRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> datafusion::error::Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| node.map_expressions(|e| e.transform_up(like_with_backslash))).data()
    }

    fn name(&self) -> &str {
        "auditlake_client_catalog"
    }
}

/// A quoted literal compared with a boolean, read as a boolean before
/// DataFusion's type coercion (which refuses `Boolean = Utf8`): in
/// PostgreSQL a quoted literal has no type until its use gives it one, and
/// clients rely on it (SQLAlchemy 1.4, which Superset runs, reflects keys
/// with `ix.indisprimary = 't'`). Only PostgreSQL's spellings of a boolean
/// are read; anything else is left for the planner to refuse.
#[derive(Debug)]
struct UntypedLiteralsRule;

/// PostgreSQL's text forms of a boolean (`boolin`), by meaning.
fn boolean_text(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn literal_as_boolean(expr: Expr, schema: &DFSchema) -> datafusion::error::Result<Transformed<Expr>> {
    let Expr::BinaryExpr(binary) = &expr else { return Ok(Transformed::no(expr)) };
    if !matches!(binary.op, Operator::Eq | Operator::NotEq | Operator::IsDistinctFrom | Operator::IsNotDistinctFrom) {
        return Ok(Transformed::no(expr));
    }
    let is_boolean = |side: &Expr| matches!(side.get_type(schema), Ok(DataType::Boolean));
    let as_boolean = |side: &Expr| match side {
        Expr::Literal(ScalarValue::Utf8(Some(text)), _) => boolean_text(text),
        _ => None,
    };
    let (left, right) = match (as_boolean(&binary.left), as_boolean(&binary.right)) {
        (None, Some(b)) if is_boolean(&binary.left) => ((*binary.left).clone(), lit(b)),
        (Some(b), None) if is_boolean(&binary.right) => (lit(b), (*binary.right).clone()),
        _ => return Ok(Transformed::no(expr)),
    };
    Ok(Transformed::yes(binary_expr(left, binary.op, right)))
}

impl AnalyzerRule for UntypedLiteralsRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> datafusion::error::Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            // What the node's expressions can name: its inputs' columns (both
            // sides of a join), or its own for a leaf.
            let mut schema = DFSchema::empty();
            for input in node.inputs() {
                schema.merge(input.schema());
            }
            if node.inputs().is_empty() {
                schema.merge(node.schema());
            }
            node.map_expressions(|e| e.transform_up(|e| literal_as_boolean(e, &schema)))
        })
        .data()
    }

    fn name(&self) -> &str {
        "auditlake_untyped_literals"
    }
}

/// `information_schema.columns.data_type` in PostgreSQL's words
/// (`timestamp with time zone`, `bigint`, `text`): DataFusion's own
/// information schema writes Arrow's (`Timestamp(µs, "UTC")`, `Int64`,
/// `Utf8`), and tools decide by it which columns hold time (Grafana's query
/// builder offers only PostgreSQL's time types as the time column). The scan
/// of that view is wrapped in a projection that restates the one column;
/// the schema above is unchanged.
#[derive(Debug)]
struct InformationSchemaTypesRule;

impl AnalyzerRule for InformationSchemaTypesRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> datafusion::error::Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = &node else { return Ok(Transformed::no(node)) };
            let is_columns = scan.table_name.table() == "columns"
                && scan.table_name.schema().is_some_and(|schema| schema == "information_schema");
            if !is_columns || scan.projected_schema.index_of_column_by_name(None, "data_type").is_none() {
                return Ok(Transformed::no(node));
            }
            let schema = Arc::clone(&scan.projected_schema);
            let columns: Vec<Expr> = schema
                .iter()
                .map(|(qualifier, field)| {
                    let column = Expr::Column(datafusion::common::Column::new(qualifier.cloned(), field.name()));
                    if field.name() == "data_type" {
                        POSTGRES_TYPE_NAME.call(vec![column]).alias_qualified(qualifier.cloned(), field.name())
                    } else {
                        column
                    }
                })
                .collect();
            let projected = datafusion::logical_expr::LogicalPlanBuilder::from(node).project(columns)?.build()?;
            Ok(Transformed::yes(projected))
        })
        .data()
    }

    fn name(&self) -> &str {
        "auditlake_information_schema_types"
    }
}

/// PostgreSQL's name for the type Arrow writes as `arrow` (as
/// `information_schema.columns.data_type` says it); anything without one
/// is left as written.
fn postgres_data_type(arrow: &str) -> Cow<'_, str> {
    let name = match arrow {
        "Utf8" | "LargeUtf8" | "Utf8View" => "text",
        "Int64" | "UInt32" => "bigint",
        "Int32" | "UInt16" => "integer",
        "Int16" | "Int8" | "UInt8" => "smallint",
        "UInt64" => "numeric",
        "Float64" => "double precision",
        "Float32" | "Float16" => "real",
        "Boolean" => "boolean",
        "Date32" | "Date64" => "date",
        "Binary" | "LargeBinary" | "BinaryView" => "bytea",
        timestamp if timestamp.starts_with("Timestamp(") => match timestamp.contains(", \"") {
            true => "timestamp with time zone",
            false => "timestamp without time zone",
        },
        time if time.starts_with("Time32(") || time.starts_with("Time64(") => "time without time zone",
        interval if interval.starts_with("Interval(") || interval.starts_with("Duration(") => "interval",
        decimal if decimal.starts_with("Decimal") => "numeric",
        list if list.starts_with("List(") || list.starts_with("LargeList(") || list.starts_with("FixedSizeList(") => {
            "ARRAY"
        }
        other => return Cow::Borrowed(other),
    };
    Cow::Borrowed(name)
}

static POSTGRES_TYPE_NAME: LazyLock<ScalarUDF> = LazyLock::new(|| {
    create_udf(
        "auditlake_postgres_data_type",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names: StringArray =
                as_string_array(&arrays[0])?.iter().map(|arrow| arrow.map(postgres_data_type)).collect();
            Ok(ColumnarValue::Array(Arc::new(names)))
        }),
    )
});

/// A function of any arguments that answers text, known by its name: the
/// shape of the catalog functions clients call that DataFusion lacks.
#[derive(Debug)]
struct TextFunction {
    name: &'static str,
    signature: Signature,
    invoke: fn(ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue>,
}

impl PartialEq for TextFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for TextFunction {}

impl std::hash::Hash for TextFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for TextFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        (self.invoke)(args)
    }
}

fn text_function(
    name: &'static str,
    volatility: Volatility,
    invoke: fn(ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue>,
) -> ScalarUDF {
    ScalarUDF::from(TextFunction { name, signature: Signature::variadic_any(volatility), invoke })
}

/// `json_build_object(k1, v1, ...)`: a JSON object of the pairs, as text
/// (SQLAlchemy's column introspection asks for it).
fn json_build_object(args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
    if !args.args.len().is_multiple_of(2) {
        return plan_err!("json_build_object takes pairs of keys and values, got {} arguments", args.args.len());
    }
    let arrays = ColumnarValue::values_to_arrays(&args.args)?;
    let objects = (0..args.number_rows)
        .map(|row| {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                object.insert(json_text(&key), json_value(&value));
            }
            Ok(Some(serde_json::Value::Object(object).to_string()))
        })
        .collect::<datafusion::error::Result<StringArray>>()?;
    Ok(ColumnarValue::Array(Arc::new(objects)))
}

fn json_text(value: &ScalarValue) -> String {
    match value {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => s.clone(),
        other => other.to_string(),
    }
}

fn json_value(value: &ScalarValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        v if v.is_null() => Value::Null,
        ScalarValue::Boolean(Some(b)) => Value::Bool(*b),
        ScalarValue::Int8(Some(n)) => (*n).into(),
        ScalarValue::Int16(Some(n)) => (*n).into(),
        ScalarValue::Int32(Some(n)) => (*n).into(),
        ScalarValue::Int64(Some(n)) => (*n).into(),
        ScalarValue::UInt32(Some(n)) => (*n).into(),
        ScalarValue::UInt64(Some(n)) => (*n).into(),
        ScalarValue::Float64(Some(n)) => (*n).into(),
        other => Value::String(json_text(other)),
    }
}

/// `pg_get_serial_sequence(table, column)`: NULL, as for every column
/// without a sequence (nothing here has one).
fn pg_get_serial_sequence() -> ScalarUDF {
    create_udf(
        "pg_get_serial_sequence",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
    )
}

/// `pg_get_indexdef(index [, column, pretty])`: NULL. `audit_events` has no
/// indexes (its pruning lives in the segments' row index, which no client
/// could use as a PostgreSQL index), and the emulated catalog keeps no
/// definition for its own tables' indexes; PostgreSQL also answers NULL for
/// an oid that is not an index it knows. SQLAlchemy's index reflection calls
/// it for expression columns only.
fn pg_get_indexdef(args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
    if !matches!(args.args.len(), 1 | 3) {
        return plan_err!("pg_get_indexdef takes an index oid, or an oid, a column number and a flag");
    }
    Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
}

/// The catalog emulation's `format_type`, which names types for
/// [`regtype_names`].
static FORMAT_TYPE: LazyLock<ScalarUDF> = LazyLock::new(format_type::create_format_type_udf);

/// `auditlake_regtype_names(vector)`: the type names of an oid vector the
/// emulated catalog keeps as text (`"2275 16"`), or of an `oid[]` cast to
/// text (`"[2276]"`), as
/// `vector::regtype[]::text[]` answers in PostgreSQL (`{cstring,boolean}`);
/// the names are `format_type`'s, which is what a `regtype` prints.
fn regtype_names() -> ScalarUDF {
    let names = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
    create_udf(
        "auditlake_regtype_names",
        vec![DataType::Utf8],
        names,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let vectors = ColumnarValue::values_to_arrays(args)?;
            let vectors = as_string_array(&vectors[0])?;
            let oids_of = |text: &str| -> Vec<i32> {
                text.split(|c: char| !c.is_ascii_digit()).filter_map(|oid| oid.parse().ok()).collect()
            };
            let oids: Int32Array = vectors.iter().flatten().flat_map(oids_of).map(Some).collect();
            let count = oids.len();
            let named = FORMAT_TYPE.invoke_with_args(ScalarFunctionArgs {
                args: vec![
                    ColumnarValue::Array(Arc::new(oids)),
                    ColumnarValue::Array(Arc::new(Int32Array::new_null(count))),
                ],
                arg_fields: vec![
                    Arc::new(Field::new("oid", DataType::Int32, true)),
                    Arc::new(Field::new("typmod", DataType::Int32, true)),
                ],
                number_rows: count,
                return_field: Arc::new(Field::new("name", DataType::Utf8, true)),
                config_options: Arc::new(ConfigOptions::default()),
            })?;
            let named = named.into_array(count)?;
            let mut names = as_string_array(&named)?.iter();
            let mut lists = ListBuilder::new(StringBuilder::new());
            for vector in vectors.iter() {
                match vector {
                    Some(text) => {
                        for _ in oids_of(text) {
                            lists.values().append_option(names.next().flatten());
                        }
                        lists.append(true);
                    }
                    None => lists.append(false),
                }
            }
            Ok(ColumnarValue::Array(Arc::new(lists.finish())))
        }),
    )
}

/// The settings a session cannot change, as PostgreSQL 15 reports them to
/// `current_setting` (SQLAlchemy's table reflection asks for the default
/// access method; drivers for the version and encodings).
const SERVER_SETTINGS: [(&str, &str); 13] = [
    ("default_table_access_method", "heap"),
    ("server_version", SERVER_VERSION),
    ("server_version_num", "150000"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("max_identifier_length", "63"),
    ("max_index_keys", "32"),
    ("block_size", "8192"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    // Every session is read-only: nothing a client sends writes.
    ("default_transaction_read_only", "on"),
];

/// `current_setting(name [, missing_ok])` for [`SERVER_SETTINGS`]. What a
/// session may change (`TimeZone`, `search_path`, ...) lives in the
/// connection, which a function cannot see: those are refused with a pointer
/// to `SHOW`, rather than answered with a default the session may have
/// changed. An unknown name is PostgreSQL's 42704, or NULL when `missing_ok`.
fn current_setting(args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(&args.args)?;
    let (names, missing_ok) = match arrays.as_slice() {
        [names] => (names, None),
        [names, missing_ok] => (names, Some(missing_ok)),
        _ => return plan_err!("current_setting takes a setting's name and, optionally, missing_ok"),
    };
    let names = datafusion::arrow::compute::cast(names, &DataType::Utf8)?;
    let missing_ok = missing_ok.map(|m| datafusion::arrow::compute::cast(m, &DataType::Boolean)).transpose()?;
    let missing_ok = missing_ok.as_ref().map(|m| datafusion::common::cast::as_boolean_array(m)).transpose()?;
    let values = as_string_array(&names)?
        .iter()
        .enumerate()
        .map(|(row, name)| {
            let Some(name) = name else { return Ok(None) };
            if let Some((_, value)) = SERVER_SETTINGS.iter().find(|(known, _)| known.eq_ignore_ascii_case(name)) {
                return Ok(Some(value.to_string()));
            }
            if super::settings::is_session_setting(name) {
                return datafusion::common::not_impl_err!(
                    "current_setting('{name}') is not supported: the session's value is what SHOW {name} answers"
                );
            }
            match missing_ok {
                Some(missing_ok) if missing_ok.value(row) => Ok(None),
                _ => plan_err!("unrecognized configuration parameter \"{name}\""),
            }
        })
        .collect::<datafusion::error::Result<StringArray>>()?;
    Ok(ColumnarValue::Array(Arc::new(values)))
}

/// `pg_collation_is_visible(oid)` and friends: true, one schema holds all.
fn always_visible(name: &str) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    )
}

/// Registers the functions and plan rewrites in `session`.
pub fn register(session: &SessionContext) {
    session.register_udf(constant_text("version", version_string()));
    session.register_udf(to_regtype());
    session.register_udf(regtype_names());
    session.register_udf(pg_get_serial_sequence());
    session.register_udf(text_function("current_setting", Volatility::Stable, current_setting));
    session.register_udf(text_function("pg_get_indexdef", Volatility::Stable, pg_get_indexdef));
    session.register_udf(text_function("json_build_object", Volatility::Immutable, json_build_object));
    for name in ["pg_collation_is_visible", "pg_function_is_visible", "pg_type_is_visible"] {
        session.register_udf(always_visible(name));
    }
    session.add_analyzer_rule(Arc::new(ClientCatalogRule));
    session.add_analyzer_rule(Arc::new(InformationSchemaTypesRule));
    // Before type coercion, which would refuse what it rewrites.
    let state = session.state_ref();
    let mut rules = state.read().analyzer().rules.clone();
    rules.insert(0, Arc::new(UntypedLiteralsRule));
    let with_literals_first =
        SessionStateBuilder::new_from_existing(state.read().clone()).with_analyzer_rules(rules).build();
    *state.write() = with_literals_first;
    session.add_analyzer_rule(Arc::new(super::subqueries::SingleRowSubqueries));
}

/// Savepoints, which ORMs wrap around statements (SQLAlchemy's psycopg
/// dialect, JDBC's autosave): nothing is ever written, so there is nothing
/// to roll back to and each is answered as done, inside the transaction.
#[derive(Debug)]
pub(super) struct SavepointHook;

fn savepoint_tag(statement: &Statement) -> Option<&'static str> {
    match statement {
        Statement::Savepoint { .. } => Some("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => Some("RELEASE"),
        Statement::Rollback { savepoint: Some(_), .. } => Some("ROLLBACK"),
        _ => None,
    }
}

/// Whether `statement` is one [`SavepointHook`] answers.
pub fn is_savepoint(statement: &Statement) -> bool {
    savepoint_tag(statement).is_some()
}

#[async_trait]
impl QueryHook for SavepointHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        savepoint_tag(statement).map(|tag| Ok(Response::Execution(Tag::new(tag))))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        savepoint_tag(statement).map(|_| {
            let nothing = EmptyRelation { produce_one_row: false, schema: Arc::new(DFSchema::empty()) };
            Ok(LogicalPlan::EmptyRelation(nothing))
        })
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        savepoint_tag(statement).map(|tag| Ok(Response::Execution(Tag::new(tag))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlated_select_list_subqueries_over_audit_events_are_refused() {
        let refused = |sql: &str| refuse_nulled_subqueries(sql).is_err();
        assert!(refused(
            "select a.actor_id, (select count(*) from audit_events b where b.actor_id = a.actor_id) from audit_events a"
        ));
        assert!(refused("select id, (select max(seq) from audit_events x where x.org_id = $1) as m from audit_events"));
        assert!(!refused("select (select max(seq) from audit_events) as newest"));
        assert!(!refused("select actor_id from audit_events where seq = (select max(seq) from audit_events)"));
        // Catalog queries keep datafusion-postgres' behaviour (BI tools need them to plan).
        assert!(!refused(
            "select c.relname, (select n.nspname from pg_namespace n where n.oid = c.relnamespace) from pg_class c"
        ));
    }

    #[test]
    fn catalog_types_kept_as_text_are_read_as_their_type() {
        let sql = "select unnest(i.indkey) as k, generate_subscripts(i.indkey, $1::INTEGER) as o, \
                   unnest(c.conkey) from pg_catalog.pg_index i";
        assert_eq!(
            restate_postgres_forms(sql).unwrap(),
            "SELECT unnest(CAST(string_to_array(i.indkey, ' ') AS SMALLINT[])) AS k, \
             unnest(CASE WHEN $1::INTEGER = 1 THEN generate_series(0, \
             CAST(array_length(CAST(string_to_array(i.indkey, ' ') AS SMALLINT[]), 1) AS BIGINT) - 1) END) AS o, \
             unnest(c.conkey) AS \"unnest\" FROM pg_catalog.pg_index i"
        );
        assert_eq!(restate_postgres_forms("select unnest(tags) as tag from audit_events"), None);
        assert_eq!(
            restate_postgres_forms(
                "select a.attname from pg_attribute a join pg_index ix on a.attnum = ANY(ix.indkey)"
            )
            .unwrap(),
            "SELECT a.attname FROM pg_attribute a JOIN pg_index ix ON a.attnum = \
             ANY(CAST(string_to_array(ix.indkey, ' ') AS SMALLINT[]))"
        );
        // SQLAlchemy's index reflection: operator classes are an oidvector.
        assert_eq!(
            restate_postgres_forms("select unnest(pg_catalog.pg_index.indclass) from pg_catalog.pg_index").unwrap(),
            "SELECT unnest(CAST(string_to_array(pg_catalog.pg_index.indclass, ' ') AS INT[])) AS \"unnest\" \
             FROM pg_catalog.pg_index"
        );
        assert_eq!(
            restate_postgres_forms("select user, current_role from t where actor_type = 'user'").unwrap(),
            "SELECT current_user AS \"user\", current_user AS \"current_role\" FROM t WHERE actor_type = 'user'"
        );
        // Quoted, it is a column.
        assert_eq!(restate_postgres_forms("select \"user\" from t"), None);
        assert_eq!(restate_postgres_forms("select actor_id from t where actor_type = 'user'"), None);
        assert_eq!(
            restate_postgres_forms("SELECT typinput='pg_catalog.array_in'::regproc AS a, 'x'::regproc <> t.typoutput")
                .unwrap(),
            "SELECT typinput = 'array_in' AS a, 'x' <> t.typoutput AS \"?column?\""
        );
        assert_eq!(
            restate_postgres_forms(
                "select prorettype::regtype::text, COALESCE(proallargtypes::regtype[], proargtypes::regtype[])::text[] \
                 from pg_proc"
            )
            .unwrap(),
            "SELECT format_type(prorettype, NULL) AS \"prorettype\", \
             auditlake_regtype_names(COALESCE(CAST(proallargtypes AS TEXT), CAST(proargtypes AS TEXT))) AS \"coalesce\" \
             FROM pg_proc"
        );
        assert_eq!(
            client_sql("select indkey from pg_catalog.pg_index").unwrap(),
            "select indkey from pg_catalog.pg_index"
        );
    }

    #[test]
    fn postgresql_time_templates_read_as_chrono_formats() {
        assert_eq!(chrono_format("YYYY-MM-DD HH24:MI:SS.US"), "%Y-%m-%d %H:%M:%S.%6f");
        assert_eq!(chrono_format("DD Mon YYYY HH12:MI AM"), "%d %b %Y %I:%M %p");
        assert_eq!(chrono_format("YYYY\"% done\"MM"), "%Y%% done%m");
        assert_eq!(
            restate_postgres_forms(
                "SELECT 1 FROM t WHERE time >= TO_TIMESTAMP('2026-11-04 00:00:00.000000', 'YYYY-MM-DD HH24:MI:SS.US')"
            )
            .unwrap(),
            "SELECT 1 AS \"?column?\" FROM t WHERE time >= \
             to_timestamp('2026-11-04 00:00:00.000000', '%Y-%m-%d %H:%M:%S.%6f')"
        );
        assert_eq!(restate_postgres_forms("select to_timestamp(x, '%Y') as y from t"), None);
        // The parsed instant: chrono reads the restated template as PostgreSQL reads its own.
        let parsed = chrono::NaiveDateTime::parse_from_str(
            "2026-11-04 01:02:03.000450",
            &chrono_format("YYYY-MM-DD HH24:MI:SS.US"),
        );
        assert_eq!(parsed.unwrap().to_string(), "2026-11-04 01:02:03.000450");
    }

    #[test]
    fn result_columns_are_named_as_postgresql_names_them() {
        let named = |sql: &str| restate_postgres_forms(sql);
        assert_eq!(
            named("select action, count(*), max(time)::date, CASE WHEN true THEN 1 END, 1 + 1 from audit_events")
                .unwrap(),
            "SELECT action, count(*) AS \"count\", max(time)::DATE AS \"max\", \
             CASE WHEN true THEN 1 END AS \"case\", 1 + 1 AS \"?column?\" FROM audit_events"
        );
        assert_eq!(
            named("SELECT '1'::integer, COUNT(*) AS n").unwrap(),
            "SELECT '1'::INTEGER AS \"int4\", COUNT(*) AS n"
        );
        // Names that would repeat, or hide behind a `*`, are left to DataFusion.
        assert_eq!(named("select count(*), count(distinct actor_id) from audit_events"), None);
        assert_eq!(named("select *, lower(action) from audit_events"), None);
        assert_eq!(named("select actor_id from audit_events"), None);
    }

    proptest::proptest! {
        /// Whatever a client sends, restating it never panics, and a time
        /// template always comes out as some chrono format.
        #[test]
        fn restating_any_text_never_panics(sql in "\\PC{0,120}", template in "\\PC{0,40}") {
            let _ = restate_postgres_forms(&sql);
            let _ = restate_postgres_forms(&format!("select to_timestamp(t, '{}') from x", template.replace('\'', "''")));
            let _ = chrono_format(&template);
        }
    }

    #[test]
    fn arrow_types_read_as_postgresqls_data_types() {
        assert_eq!(postgres_data_type("Timestamp(µs, \"UTC\")"), "timestamp with time zone");
        assert_eq!(postgres_data_type("Timestamp(ns)"), "timestamp without time zone");
        assert_eq!(postgres_data_type("Utf8"), "text");
        assert_eq!(postgres_data_type("Int64"), "bigint");
        assert_eq!(postgres_data_type("List(Int32)"), "ARRAY");
        assert_eq!(postgres_data_type("Struct(\"a\": Int32)"), "Struct(\"a\": Int32)");
    }

    #[test]
    fn like_patterns_move_to_the_backslash_escape() {
        assert_eq!(pattern_for_backslash("pg/_%", '/'), "pg\\_%");
        assert_eq!(pattern_for_backslash("a//b", '/'), "a\\/b");
        assert_eq!(pattern_for_backslash("c:\\x", '/'), "c:\\\\x");
    }

    #[test]
    fn built_in_types_by_name() {
        assert_eq!(BUILT_IN_TYPES.get("text"), Some(&25));
        assert_eq!(BUILT_IN_TYPES.get("timestamptz"), Some(&1184));
        assert_eq!(BUILT_IN_TYPES.get("hstore"), None);
        assert!(version_string().starts_with("PostgreSQL 15.0 (auditlake "));
    }
}

/// What the endpoint hands datafusion-postgres for the SQL a client sent:
/// the same text, refused when too complex to plan safely
/// ([`complexity`](super::complexity)) or where rewriting would answer wrongly
/// ([`refuse_nulled_subqueries`]), restated where the catalog emulation
/// keeps a PostgreSQL type as text ([`restate_postgres_forms`]). The
/// self-audit records what the client sent.
pub fn client_sql(sql: &str) -> PgWireResult<Cow<'_, str>> {
    // Before anything recurses over the statement.
    super::complexity::check(sql)?;
    refuse_nulled_subqueries(sql)?;
    Ok(restate_postgres_forms(sql).map_or(Cow::Borrowed(sql), Cow::Owned))
}

/// What clients write in PostgreSQL's terms that DataFusion would read
/// otherwise, restated in DataFusion's. First, the catalog emulation keeps
/// some PostgreSQL types as their text, and clients use them as those types:
///
/// - `pg_index.indkey`, an `int2vector` (`"1 5"`): ORMs list a primary key's
///   columns with `unnest(indkey)` and their order with
///   `generate_subscripts(indkey, 1)` (SQLAlchemy's `get_pk_constraint`),
///   which DataFusion cannot plan over text. Both are restated over the
///   parsed vector; an `int2vector` is indexed from 0.
/// - `regproc` columns (`pg_type.typinput`, ...) hold the function's name:
///   `typinput = 'pg_catalog.array_in'::regproc` (DBeaver telling array
///   types apart) compares names, as PostgreSQL's text form of a regproc
///   in a visible schema is its bare name.
///
/// - `regtype` is planned as the bare oid, so its text would be the number:
///   `oid::regtype::text` and `vector::regtype[]::text[]` (pgcli's function
///   listing) are restated to answer the type names.
///
/// Then `to_timestamp(text, 'YYYY-MM-DD HH24:MI:SS.US')` (Superset's time
/// filters): DataFusion's `to_timestamp` takes chrono's `%Y-%m-%d ...`, so a
/// constant PostgreSQL template is restated as chrono's ([`chrono_format`]).
///
/// Returns the restated statement's text when something was restated.
fn restate_postgres_forms(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    let vectors = VECTOR_COLUMNS.iter().any(|(column, _)| lower.contains(column))
        && (lower.contains("unnest") || lower.contains("generate_subscripts") || lower.contains("any"));
    let forms = vectors || lower.contains("regproc") || lower.contains("regtype") || lower.contains("to_timestamp");
    // Only an expression (a call, a cast, a CASE, `current_user`) gets a
    // name of its own.
    let names = lower.contains('(')
        || lower.contains("::")
        || lower.contains("case")
        || lower.contains("user")
        || lower.contains("current_role");
    if !forms && !names {
        return None;
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    // Named from what the client wrote, before anything below restates it.
    let mut restated = false;
    if names {
        for statement in &mut statements {
            restated |= user_keywords_selected(statement);
            restated |= name_columns_as_postgres(statement);
        }
    }
    let _ = visit_expressions_mut(&mut statements, |expr| {
        if let Some(by_type) = int2vector_function(expr)
            .or_else(|| regproc_by_name(expr))
            .or_else(|| regtype_as_text(expr))
            .or_else(|| to_timestamp_in_chrono(expr))
        {
            *expr = by_type;
            restated = true;
        }
        ControlFlow::<()>::Continue(())
    });
    restated.then(|| statements.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
}

/// `to_timestamp(text, 'template')` with a PostgreSQL template, restated
/// with the template in chrono's terms. A template that is not a constant,
/// or already chrono's (holds `%`), is left as written.
/// `user` and `current_role`, PostgreSQL's other spellings of
/// `current_user`, which DataFusion reads as column names (unquoted, they
/// are keywords in PostgreSQL, never columns).
fn user_keyword(ident: &datafusion::sql::sqlparser::ast::Ident) -> bool {
    ident.quote_style.is_none()
        && (ident.value.eq_ignore_ascii_case("user") || ident.value.eq_ignore_ascii_case("current_role"))
}

/// `SELECT user, current_role` as `SELECT current_user AS "user", current_user
/// AS "current_role"` (only as items of the select list: elsewhere the
/// catalog emulation's own rewriting already reads them, in Grafana's
/// search-path query).
fn user_keywords_selected(statement: &mut Statement) -> bool {
    let Statement::Query(query) = statement else { return false };
    let SetExpr::Select(select) = query.body.as_mut() else { return false };
    let mut restated = false;
    for item in &mut select.projection {
        let SelectItem::UnnamedExpr(expr) = item else { continue };
        let Some(current_user) = current_user_for_keyword(expr) else { continue };
        let (name, _) = postgres_column_name(expr);
        let alias = datafusion::sql::sqlparser::ast::Ident::with_quote('"', name);
        *item = SelectItem::ExprWithAlias { expr: current_user, alias };
        restated = true;
    }
    restated
}

/// sqlparser reads `user` as a call without parentheses, `current_role` as
/// a name; both mean `current_user`.
fn current_user_for_keyword(expr: &SqlExpr) -> Option<SqlExpr> {
    let keyword = match expr {
        SqlExpr::Identifier(ident) => user_keyword(ident),
        SqlExpr::Function(function) => {
            matches!(function.args, datafusion::sql::sqlparser::ast::FunctionArguments::None)
                && matches!(&function.name.0[..], [part] if part.as_ident().is_some_and(user_keyword))
        }
        _ => false,
    };
    keyword.then(|| parse_expr("current_user")).flatten()
}

fn to_timestamp_in_chrono(expr: &SqlExpr) -> Option<SqlExpr> {
    let SqlExpr::Function(function) = expr else { return None };
    let name = function.name.0.last()?.as_ident()?.value.to_ascii_lowercase();
    let FunctionArguments::List(list) = &function.args else { return None };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(text)), FunctionArg::Unnamed(FunctionArgExpr::Expr(template))] =
        list.args.as_slice()
    else {
        return None;
    };
    let SqlExpr::Value(value) = template else { return None };
    let Value::SingleQuotedString(template) = &value.value else { return None };
    if name != "to_timestamp" || template.contains('%') {
        return None;
    }
    let chrono = SqlExpr::Value(Value::SingleQuotedString(chrono_format(template)).into());
    parse_expr(&format!("to_timestamp({text}, {chrono})"))
}

/// A PostgreSQL date/time template (`YYYY-MM-DD HH24:MI:SS.US`) in chrono's
/// terms (`%Y-%m-%d %H:%M:%S.%6f`). Template patterns are matched longest
/// first, as PostgreSQL does; double-quoted text and anything else is
/// literal.
fn chrono_format(template: &str) -> String {
    const PATTERNS: [(&str, &str); 22] = [
        ("YYYY", "%Y"),
        ("HH24", "%H"),
        ("HH12", "%I"),
        ("Month", "%B"),
        ("MONTH", "%B"),
        ("Mon", "%b"),
        ("MON", "%b"),
        ("Day", "%A"),
        ("DAY", "%A"),
        ("DDD", "%j"),
        ("Dy", "%a"),
        ("DY", "%a"),
        ("YY", "%y"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("HH", "%I"),
        ("MI", "%M"),
        ("SS", "%S"),
        ("MS", "%3f"),
        ("US", "%6f"),
        ("AM", "%p"),
        ("PM", "%p"),
    ];
    let mut out = String::with_capacity(template.len() + 8);
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if c == '"' {
            let quoted = &rest[1..];
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push_str(&quoted[..end].replace('%', "%%"));
            rest = quoted.get(end + 1..).unwrap_or("");
        } else if let Some((pattern, chrono)) = PATTERNS.iter().find(|(pattern, _)| rest.starts_with(pattern)) {
            out.push_str(chrono);
            rest = &rest[pattern.len()..];
        } else {
            if c == '%' {
                out.push('%');
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Gives each unaliased expression of a query's result the name PostgreSQL
/// gives it (`count`, `current_schema`, `?column?`; DataFusion would say
/// `count(*)`), so clients that read columns by name (JDBC, pandas, BI
/// tools) find them. Left alone when the names would repeat (PostgreSQL
/// allows that, DataFusion refuses it) or a `*` hides what else is named.
/// Returns whether a name was given.
fn name_columns_as_postgres(statement: &mut Statement) -> bool {
    let Statement::Query(query) = statement else { return false };
    let mut body = query.body.as_mut();
    // A set operation takes its names from its first branch.
    while let SetExpr::SetOperation { left, .. } = body {
        body = left.as_mut();
    }
    let SetExpr::Select(select) = body else { return false };
    let mut names = Vec::with_capacity(select.projection.len());
    let mut given = Vec::new();
    for (at, item) in select.projection.iter().enumerate() {
        match item {
            SelectItem::UnnamedExpr(SqlExpr::Identifier(ident)) => names.push(folded(ident)),
            SelectItem::UnnamedExpr(SqlExpr::CompoundIdentifier(parts)) => {
                names.push(parts.last().map(folded).unwrap_or_default())
            }
            SelectItem::UnnamedExpr(expr) => {
                let (name, _) = postgres_column_name(expr);
                names.push(name.clone());
                given.push((at, name));
            }
            SelectItem::ExprWithAlias { alias, .. } => names.push(folded(alias)),
            _ => return false,
        }
    }
    let unique: HashSet<&String> = names.iter().collect();
    if given.is_empty() || unique.len() != names.len() {
        return false;
    }
    for (at, name) in given {
        let SelectItem::UnnamedExpr(expr) = &select.projection[at] else { unreachable!("collected above") };
        let alias = datafusion::sql::sqlparser::ast::Ident::with_quote('"', name);
        select.projection[at] = SelectItem::ExprWithAlias { expr: expr.clone(), alias };
    }
    true
}

/// An identifier as PostgreSQL reads it: folded to lower case unless quoted.
fn folded(ident: &datafusion::sql::sqlparser::ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// PostgreSQL's name for an unaliased expression (its `FigureColname`), and
/// how firmly: 2 a name of its own (a column, a function, `case`), 1 a
/// cast's type, 0 none (`?column?`). A cast keeps its operand's name when
/// that holds firmly, else takes its type's.
fn postgres_column_name(expr: &SqlExpr) -> (String, u8) {
    match expr {
        SqlExpr::Identifier(ident) => (folded(ident), 2),
        SqlExpr::CompoundIdentifier(parts) => (parts.last().map(folded).unwrap_or_default(), 2),
        SqlExpr::Function(function) => match function.name.0.last().and_then(|part| part.as_ident()) {
            Some(ident) => (folded(ident), 2),
            None => ("?column?".into(), 0),
        },
        SqlExpr::Cast { expr, data_type, .. } => match postgres_column_name(expr) {
            (name, 2) => (name, 2),
            _ => (postgres_type_name(&data_type.to_string()), 1),
        },
        SqlExpr::Nested(inner) => postgres_column_name(inner),
        SqlExpr::Case { .. } => ("case".into(), 2),
        SqlExpr::Array(_) => ("array".into(), 2),
        SqlExpr::Exists { .. } => ("exists".into(), 2),
        _ => ("?column?".into(), 0),
    }
}

/// The name PostgreSQL uses for a type written in SQL (`integer` is `int4`).
fn postgres_type_name(written: &str) -> String {
    let lower = written.to_ascii_lowercase();
    let base = lower.trim_start_matches("pg_catalog.").trim_end_matches("[]");
    let base = base.split('(').next().unwrap_or(base).trim();
    match base {
        "int" | "integer" | "int4" => "int4",
        "bigint" | "int8" => "int8",
        "smallint" | "int2" => "int2",
        "boolean" | "bool" => "bool",
        "real" | "float4" => "float4",
        "double precision" | "float8" | "double" => "float8",
        "decimal" | "numeric" => "numeric",
        "character varying" | "varchar" => "varchar",
        "character" | "char" => "bpchar",
        "timestamp with time zone" | "timestamptz" => "timestamptz",
        "timestamp" | "timestamp without time zone" => "timestamp",
        "time with time zone" | "timetz" => "timetz",
        "time" | "time without time zone" => "time",
        other => other,
    }
    .to_string()
}

fn is_cast_to(expr: &SqlExpr, type_name: &str) -> bool {
    matches!(expr, SqlExpr::Cast { data_type, .. }
        if data_type.to_string().to_ascii_lowercase().trim_start_matches("pg_catalog.") == type_name)
}

/// `oid::regtype::text` as `format_type(oid, NULL)` (the emulation plans a
/// `regtype` as the bare oid, so the text would be the number), and
/// `vector::regtype[]::text[]` (pgcli's function listing) as
/// [`regtype_names`] of the vector's text.
fn regtype_as_text(expr: &SqlExpr) -> Option<SqlExpr> {
    let SqlExpr::Cast { expr: inner, .. } = expr else { return None };
    let restated = if is_cast_to(expr, "text") && is_cast_to(inner, "regtype") {
        let SqlExpr::Cast { expr: oid, .. } = inner.as_ref() else { return None };
        format!("format_type({oid}, NULL)")
    } else if is_cast_to(expr, "text[]") {
        let mut vectors = (**inner).clone();
        let mut found = false;
        let _ = visit_expressions_mut(&mut vectors, |e| {
            if is_cast_to(e, "regtype[]") {
                let SqlExpr::Cast { expr: vector, .. } = e else { unreachable!("checked") };
                // A vector the emulation keeps as text, or an `oid[]`
                // (`proallargtypes`): both as text, which the function reads.
                *e = parse_expr(&format!("CAST({vector} AS TEXT)")).unwrap_or_else(|| (**vector).clone());
                found = true;
            }
            ControlFlow::<()>::Continue(())
        });
        if !found {
            return None;
        }
        format!("auditlake_regtype_names({vectors})")
    } else {
        return None;
    };
    parse_expr(&restated)
}

/// The `regproc` columns of the emulated catalog, which hold names.
const REGPROC_COLUMNS: [&str; 13] = [
    "typinput",
    "typoutput",
    "typreceive",
    "typsend",
    "typmodin",
    "typmodout",
    "typanalyze",
    "typsubscript",
    "aggfnoid",
    "aggtransfn",
    "aggfinalfn",
    "oprcode",
    "oprrest",
];

fn column_named(expr: &SqlExpr, names: &[&str]) -> bool {
    let last = match expr {
        SqlExpr::Identifier(ident) => ident,
        SqlExpr::CompoundIdentifier(parts) => match parts.last() {
            Some(last) => last,
            None => return false,
        },
        _ => return false,
    };
    names.iter().any(|name| last.value.eq_ignore_ascii_case(name))
}

/// `column = 'schema.name'::regproc` (or `<>`) as `column = 'name'`.
fn regproc_by_name(expr: &SqlExpr) -> Option<SqlExpr> {
    let SqlExpr::BinaryOp { left, op, right } = expr else { return None };
    if !matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq) {
        return None;
    }
    let name_of = |cast: &SqlExpr| match cast {
        SqlExpr::Cast { expr, data_type, .. } if data_type.to_string().eq_ignore_ascii_case("regproc") => {
            match expr.as_ref() {
                SqlExpr::Value(value) => match &value.value {
                    Value::SingleQuotedString(name) => {
                        let bare = name.strip_prefix("pg_catalog.").unwrap_or(name);
                        Some(SqlExpr::Value(Value::SingleQuotedString(bare.to_string()).into()))
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    };
    let (left, right) = if column_named(left, &REGPROC_COLUMNS) {
        ((**left).clone(), name_of(right)?)
    } else if column_named(right, &REGPROC_COLUMNS) {
        (name_of(left)?, (**right).clone())
    } else {
        return None;
    };
    Some(SqlExpr::BinaryOp { left: Box::new(left), op: op.clone(), right: Box::new(right) })
}

/// The `int2vector` and `oidvector` columns of `pg_index`, which the
/// emulation keeps as their text (`"1 5"`), with the SQL type of an element
/// (oids are `int4` in the emulation).
const VECTOR_COLUMNS: [(&str, &str); 4] =
    [("indkey", "SMALLINT"), ("indoption", "SMALLINT"), ("indclass", "INT"), ("indcollation", "INT")];

/// `unnest(x.indkey)`, `generate_subscripts(x.indkey, 1)` or
/// `n = ANY(x.indkey)` over the vector (any of [`VECTOR_COLUMNS`]).
fn int2vector_function(expr: &SqlExpr) -> Option<SqlExpr> {
    if let SqlExpr::AnyOp { left, compare_op, right, is_some } = expr {
        // `attnum = ANY(indkey)` (SQLAlchemy 1.4's key and index reflection).
        let vector = vector_of(right)?;
        return Some(SqlExpr::AnyOp {
            left: left.clone(),
            compare_op: compare_op.clone(),
            right: Box::new(parse_expr(&vector)?),
            is_some: *is_some,
        });
    }
    let SqlExpr::Function(function) = expr else { return None };
    let name = function.name.0.last()?.as_ident()?.value.to_ascii_lowercase();
    let FunctionArguments::List(list) = &function.args else { return None };
    let args: Vec<&SqlExpr> = list
        .args
        .iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Some(expr),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let restated = match (name.as_str(), args.as_slice()) {
        ("unnest", [column]) => format!("unnest({})", vector_of(column)?),
        // The dimension is often a bound parameter; a vector has only the first.
        ("generate_subscripts", [column, dimension]) => format!(
            "unnest(CASE WHEN {dimension} = 1 THEN generate_series(0, CAST(array_length({}, 1) AS BIGINT) - 1) END)",
            vector_of(column)?
        ),
        _ => return None,
    };
    parse_expr(&restated)
}

/// A [`VECTOR_COLUMNS`] column as the array it stands for.
fn vector_of(column: &SqlExpr) -> Option<String> {
    let (_, element) = VECTOR_COLUMNS.iter().find(|(name, _)| column_named(column, &[name]))?;
    Some(format!("CAST(string_to_array({column}, ' ') AS {element}[])"))
}

fn parse_expr(sql: &str) -> Option<SqlExpr> {
    Parser::new(&PostgreSqlDialect {}).try_with_sql(sql).ok()?.parse_expr().ok()
}

/// datafusion-postgres' SQL rewriting replaces every correlated subquery in
/// a select list with NULL (so catalog queries of BI tools plan), and the
/// answer is silently wrong. Over `audit_events` that would be a false
/// finding in an investigation, so such a statement is refused (with the
/// same test of "correlated" that rewriting uses) before it is parsed there.
fn refuse_nulled_subqueries(sql: &str) -> PgWireResult<()> {
    // Most statements need no second parse: the table must be named, and a
    // subquery needs a SELECT of its own.
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("audit_events") || lower.matches("select").count() < 2 {
        return Ok(());
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Ok(()); // the normal path reports the syntax error
    };
    let mut check = NulledSubqueries::default();
    for statement in &statements {
        let _ = statement.visit(&mut check);
    }
    if check.reads_audit_events && check.correlated {
        return Err(statement_error(
            "0A000",
            "a subquery in the select list that refers to the outer query is not supported over audit_events \
             (it would answer NULL); write it as a join or move it to WHERE"
                .into(),
        ));
    }
    Ok(())
}

#[derive(Default)]
struct NulledSubqueries {
    reads_audit_events: bool,
    correlated: bool,
}

impl Visitor for NulledSubqueries {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        let last = relation.0.last().and_then(|part| part.as_ident()).map(|ident| ident.value.to_lowercase());
        self.reads_audit_events |= last.as_deref() == Some("audit_events");
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_ref() {
            for item in &select.projection {
                if let SelectItem::UnnamedExpr(SqlExpr::Subquery(subquery))
                | SelectItem::ExprWithAlias { expr: SqlExpr::Subquery(subquery), .. } = item
                {
                    self.correlated |= refers_outside(subquery);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Whether a subquery names a table it does not alias itself, or holds a
/// parameter: what the rewriting treats as correlated.
fn refers_outside(subquery: &Query) -> bool {
    let SetExpr::Select(select) = subquery.body.as_ref() else { return false };
    let mut aliases = HashSet::new();
    for from in &select.from {
        for factor in std::iter::once(&from.relation).chain(from.joins.iter().map(|join| &join.relation)) {
            if let TableFactor::Table { alias: Some(alias), .. } = factor {
                aliases.insert(alias.name.value.clone());
            }
        }
    }
    let mut outside = false;
    let _ = visit_expressions(subquery, |expr| {
        match expr {
            SqlExpr::Value(value) if matches!(value.value, Value::Placeholder(_)) => outside = true,
            SqlExpr::CompoundIdentifier(idents) if idents.first().is_some_and(|i| !aliases.contains(&i.value)) => {
                outside = true
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    outside
}
