//! The PostgreSQL catalog (`pg_catalog`, its functions) each session sees:
//! datafusion-pg-catalog's emulation, registered the way its
//! `setup_pg_catalog` does, but over one copy of its bundled static tables
//! for the whole server.
//!
//! `setup_pg_catalog` unpacks those tables (LZ4 Arrow IPC) afresh for every
//! session, which was most of a connection's set-up time. The tables are
//! read-only, so one copy serves every connection; the per-session parts
//! (the schema provider with its oids, the functions) stay per session.
//!
//! It registers only what `setup_pg_catalog` registers; the client and BI
//! tool suites fail if a function goes missing.
//!
//! The emulation follows several PostgreSQL versions at once; where a table
//! it serves lacks a column PostgreSQL 15 has, or names one as a later
//! version does, [`Pg15Catalog`] serves PostgreSQL 15's shape, which is the
//! version `version()` reports (the tools' suite compares the two).

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use datafusion::arrow::array::{ListBuilder, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::cast::as_string_array;
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlanBuilder, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, create_udf, lit,
};
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::generate_series_arg_coercion::CoerceIntArgsToBigInt;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::oid_field::OID_ALIAS_KEY;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::oid_type_planner::PgOidTypePlanner;

use super::describe::PG_TYPE_KEY;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    self as pg, PgCatalogSchemaProvider, PgCatalogStaticTables, array_bounds_udf, format_type, has_privilege_udf,
    pg_get_expr_udf, quote_ident_udf,
};

/// The bundled tables, unpacked once, on the first connection.
static STATIC_TABLES: LazyLock<Result<Arc<PgCatalogStaticTables>, String>> =
    LazyLock::new(|| PgCatalogStaticTables::try_new().map(Arc::new).map_err(|e| e.to_string()));

/// Registers `pg_catalog` in `catalog_name` of `session`, with its functions.
pub fn register(session: &SessionContext, catalog_name: &str) -> Result<(), DataFusionError> {
    let static_tables = STATIC_TABLES.as_ref().map_err(|e| DataFusionError::Execution(e.clone()))?;
    let schema = PgCatalogSchemaProvider::try_new(
        session.state().catalog_list().clone(),
        Arc::clone(static_tables),
        EmptyContextProvider,
    )?;
    session
        .catalog(catalog_name)
        .ok_or_else(|| DataFusionError::Configuration(format!("no catalog {catalog_name} for pg_catalog")))?
        .register_schema("pg_catalog", Arc::new(Pg15Catalog { emulated: schema }))?;

    // PostgreSQL answers these in its `name` type.
    for udf in
        [pg::create_current_database_udf(catalog_name), pg::create_current_schema_udf(), pg::create_session_user_udf()]
    {
        session.register_udf(ScalarUDF::new_from_impl(AnswersName { inner: udf }));
    }
    for udf in [
        pg::create_current_schemas_udf(),
        pg::create_pg_get_userbyid_udf(),
        has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
        pg::create_pg_table_is_visible(),
        format_type::create_format_type_udf(),
        pg_get_expr_udf::create_pg_get_expr_udf(),
        pg::create_pg_get_partkeydef_udf(),
        pg::create_pg_relation_is_publishable_udf(),
        pg::create_pg_get_statisticsobjdef_columns_udf(),
        pg::create_pg_encoding_to_char_udf(),
        pg::create_pg_backend_pid_udf(),
        pg::create_pg_relation_size_udf(),
        pg::create_pg_total_relation_size_udf(),
        pg::create_pg_stat_get_numscans(),
        pg::create_pg_get_constraintdef(),
        pg::create_pg_get_partition_ancestors_udf(),
        quote_ident_udf::create_quote_ident_udf(),
        quote_ident_udf::create_parse_ident_udf(),
        array_bounds_udf::create_array_upper_udf(),
        array_bounds_udf::create_array_lower_udf(),
    ] {
        session.register_udf(udf);
    }
    session.register_udtf("pg_get_keywords", static_tables.pg_get_keywords.clone());

    // `regclass`, `regproc`, ... as type names in casts.
    let state = session.state_ref();
    let with_oid_types = SessionStateBuilder::new_from_existing(state.read().clone())
        .with_type_planner(Arc::new(PgOidTypePlanner))
        .build();
    *state.write() = with_oid_types;
    // int4 bounds of `generate_series` / `range` widened to int8.
    CoerceIntArgsToBigInt::widen(session);
    Ok(())
}

/// A function whose text answer PostgreSQL types `name`: its result is
/// tagged so that clients are told so (`describe.rs`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct AnswersName {
    inner: ScalarUDF,
}

impl ScalarUDFImpl for AnswersName {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType, DataFusionError> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef, DataFusionError> {
        let field = self.inner.return_field_from_args(args)?;
        let mut metadata = field.metadata().clone();
        metadata.insert(PG_TYPE_KEY.to_string(), "name".to_string());
        Ok(Arc::new(field.as_ref().clone().with_metadata(metadata)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        self.inner.invoke_with_args(args)
    }
}

/// How one emulated table differs from PostgreSQL 15's.
enum Pg15Column {
    /// The emulation names the column as a later PostgreSQL does.
    Renamed { emulated: &'static str, pg15: &'static str },
    /// PostgreSQL 15 has the column and the emulation does not: served as
    /// NULL (no access list, no options, no version recorded), placed where
    /// PostgreSQL places it.
    Missing { name: &'static str, after: &'static str, data_type: fn() -> DataType },
    /// PostgreSQL has an array where the emulation keeps text (`"[2, 3]"`):
    /// served as the array, so `attnum = ANY(conkey)` and `unnest(conkey)`
    /// plan, and clients read `{2,3}` as PostgreSQL writes it.
    Array { name: &'static str, element: fn() -> DataType },
    /// PostgreSQL types the column `oid`; the emulation says `int4` or a
    /// `reg*` type (whose text would be a name in PostgreSQL, where the
    /// emulation sends the number). Served tagged as an oid.
    Oid { name: &'static str },
    /// PostgreSQL 15 has a wider (or narrower) number: served cast to it.
    Cast { name: &'static str, to: fn() -> DataType },
    /// A column only later versions have: a PostgreSQL 15 client never asks
    /// for it, and `select *` would answer a column PostgreSQL 15 does not.
    Later { name: &'static str },
}

fn text() -> DataType {
    DataType::Utf8
}

fn int2() -> DataType {
    DataType::Int16
}

fn int4() -> DataType {
    DataType::Int32
}

fn float4() -> DataType {
    DataType::Float32
}

/// Oids are `int4` in the emulation.
fn oid() -> DataType {
    DataType::Int32
}

/// `text[]`, and `aclitem[]` (whose elements clients read as text).
fn text_array() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// The emulated tables whose columns differ from PostgreSQL 15's, by
/// table. SQLAlchemy's index reflection reads `pg_class.reloptions`.
const PG15_DIFFERENCES: [(&str, &[Pg15Column]); 16] = [
    (
        "pg_auth_members",
        &[
            Pg15Column::Later { name: "oid" },
            Pg15Column::Later { name: "inherit_option" },
            Pg15Column::Later { name: "set_option" },
        ],
    ),
    ("pg_namespace", &[Pg15Column::Later { name: "options" }, Pg15Column::Oid { name: "nspowner" }]),
    ("pg_replication_slots", &[Pg15Column::Later { name: "conflicting" }, Pg15Column::Oid { name: "datoid" }]),
    ("pg_stat_gssapi", &[Pg15Column::Later { name: "credentials_delegated" }]),
    (
        "pg_stat_user_tables",
        &[
            Pg15Column::Oid { name: "relid" },
            Pg15Column::Later { name: "last_seq_scan" },
            Pg15Column::Later { name: "last_idx_scan" },
            Pg15Column::Later { name: "n_tup_newpage_upd" },
            Pg15Column::Later { name: "total_vacuum_time" },
            Pg15Column::Later { name: "total_autovacuum_time" },
            Pg15Column::Later { name: "total_analyze_time" },
            Pg15Column::Later { name: "total_autoanalyze_time" },
        ],
    ),
    (
        "pg_subscription",
        &[
            Pg15Column::Later { name: "subpasswordrequired" },
            Pg15Column::Later { name: "subrunasowner" },
            Pg15Column::Later { name: "subfailover" },
            Pg15Column::Later { name: "suborigin" },
        ],
    ),
    (
        "pg_class",
        &[
            Pg15Column::Missing { name: "relacl", after: "relminmxid", data_type: text_array },
            Pg15Column::Missing { name: "reloptions", after: "relacl", data_type: text_array },
            Pg15Column::Oid { name: "relnamespace" },
            Pg15Column::Oid { name: "reltype" },
            Pg15Column::Oid { name: "reloftype" },
            Pg15Column::Oid { name: "relowner" },
            Pg15Column::Oid { name: "relam" },
            Pg15Column::Oid { name: "relfilenode" },
            Pg15Column::Oid { name: "reltablespace" },
            Pg15Column::Oid { name: "reltoastrelid" },
            Pg15Column::Oid { name: "relrewrite" },
            Pg15Column::Cast { name: "reltuples", to: float4 },
        ],
    ),
    (
        "pg_collation",
        &[
            Pg15Column::Renamed { emulated: "colllocale", pg15: "colliculocale" },
            Pg15Column::Later { name: "collicurules" },
        ],
    ),
    // SQLAlchemy 1.4 (Superset) reflects unique constraints with `ANY(conkey)`.
    (
        "pg_constraint",
        &[
            Pg15Column::Array { name: "conkey", element: int2 },
            Pg15Column::Array { name: "confkey", element: int2 },
            Pg15Column::Cast { name: "coninhcount", to: int4 },
        ],
    ),
    // psql's `\d` asks `'d' = any(stxkind)` and `oid = any(polroles)`.
    (
        "pg_statistic_ext",
        &[Pg15Column::Array { name: "stxkind", element: text }, Pg15Column::Cast { name: "stxstattarget", to: int4 }],
    ),
    (
        "pg_attribute",
        &[
            Pg15Column::Oid { name: "attrelid" },
            Pg15Column::Oid { name: "atttypid" },
            Pg15Column::Oid { name: "attcollation" },
        ],
    ),
    ("pg_roles", &[Pg15Column::Oid { name: "oid" }]),
    ("pg_policy", &[Pg15Column::Array { name: "polroles", element: oid }]),
    (
        "pg_settings",
        &[
            Pg15Column::Renamed { emulated: "bool_val", pg15: "boot_val" },
            Pg15Column::Array { name: "enumvals", element: text },
        ],
    ),
    (
        "pg_database",
        &[
            Pg15Column::Missing { name: "datcollversion", after: "datctype", data_type: text },
            Pg15Column::Oid { name: "oid" },
            Pg15Column::Oid { name: "datdba" },
            Pg15Column::Oid { name: "dattablespace" },
            Pg15Column::Later { name: "datlastsysoid" },
            Pg15Column::Later { name: "daticurules" },
        ],
    ),
    ("pg_tables", &[Pg15Column::Renamed { emulated: "hasindex", pg15: "hasindexes" }]),
];

/// PostgreSQL 15's types for the emulated columns it types `name`,
/// `"char"`, `xid`, `pg_node_tree`, `int2vector` or `oidvector`, where the
/// emulation holds the text PostgreSQL writes (or the xid as int4), as
/// `column:type` by table: the columns are tagged with [`PG_TYPE_KEY`] and
/// described by PostgreSQL's type (`describe.rs`). Read from PostgreSQL
/// 15's own `pg_attribute`; the tools' suite compares every table's types.
const PG15_WIRE_TYPES: [(&str, &str); 49] = [
    ("pg_aggregate", "aggkind:char aggfinalmodify:char aggmfinalmodify:char"),
    ("pg_am", "amname:name amtype:char"),
    ("pg_amop", "amoppurpose:char"),
    ("pg_attrdef", "adbin:pg_node_tree"),
    (
        "pg_attribute",
        "attname:name attalign:char attstorage:char attcompression:char attidentity:char attgenerated:char",
    ),
    ("pg_authid", "rolname:name"),
    ("pg_cast", "castcontext:char castmethod:char"),
    (
        "pg_class",
        "relname:name relpersistence:char relkind:char relreplident:char relfrozenxid:xid relminmxid:xid relpartbound:pg_node_tree",
    ),
    ("pg_collation", "collname:name collprovider:char"),
    (
        "pg_constraint",
        "conname:name contype:char confupdtype:char confdeltype:char confmatchtype:char conbin:pg_node_tree",
    ),
    ("pg_conversion", "conname:name"),
    ("pg_database", "datname:name datlocprovider:char datfrozenxid:xid datminmxid:xid"),
    ("pg_default_acl", "defaclobjtype:char"),
    ("pg_depend", "deptype:char"),
    ("pg_enum", "enumlabel:name"),
    ("pg_event_trigger", "evtname:name evtevent:name evtenabled:char"),
    ("pg_extension", "extname:name"),
    ("pg_foreign_data_wrapper", "fdwname:name"),
    ("pg_foreign_server", "srvname:name"),
    (
        "pg_index",
        "indkey:int2vector indcollation:oidvector indclass:oidvector indoption:int2vector indexprs:pg_node_tree indpred:pg_node_tree",
    ),
    ("pg_init_privs", "privtype:char"),
    ("pg_language", "lanname:name"),
    ("pg_matviews", "schemaname:name matviewname:name matviewowner:name tablespace:name"),
    ("pg_namespace", "nspname:name"),
    ("pg_opclass", "opcname:name"),
    ("pg_operator", "oprname:name oprkind:char"),
    ("pg_opfamily", "opfname:name"),
    (
        "pg_partitioned_table",
        "partstrat:char partattrs:int2vector partclass:oidvector partcollation:oidvector partexprs:pg_node_tree",
    ),
    ("pg_policy", "polname:name polcmd:char polqual:pg_node_tree polwithcheck:pg_node_tree"),
    (
        "pg_proc",
        "proname:name prokind:char provolatile:char proparallel:char proargtypes:oidvector proargdefaults:pg_node_tree prosqlbody:pg_node_tree",
    ),
    ("pg_publication", "pubname:name"),
    ("pg_publication_rel", "prqual:pg_node_tree prattrs:int2vector"),
    ("pg_replication_slots", "slot_name:name plugin:name database:name xmin:xid catalog_xmin:xid"),
    ("pg_rewrite", "rulename:name ev_type:char ev_enabled:char ev_qual:pg_node_tree ev_action:pg_node_tree"),
    ("pg_roles", "rolname:name"),
    ("pg_shdepend", "deptype:char"),
    ("pg_stat_user_tables", "schemaname:name relname:name"),
    ("pg_statistic_ext", "stxname:name stxkeys:int2vector stxexprs:pg_node_tree"),
    ("pg_subscription", "subname:name subtwophasestate:char subslotname:name"),
    ("pg_subscription_rel", "srsubstate:char"),
    ("pg_tables", "schemaname:name tablename:name tableowner:name tablespace:name"),
    ("pg_tablespace", "spcname:name"),
    ("pg_trigger", "tgname:name tgenabled:char tgattr:int2vector tgqual:pg_node_tree tgoldtable:name tgnewtable:name"),
    ("pg_ts_config", "cfgname:name"),
    ("pg_ts_dict", "dictname:name"),
    ("pg_ts_parser", "prsname:name"),
    ("pg_ts_template", "tmplname:name"),
    (
        "pg_type",
        "typname:name typtype:char typcategory:char typdelim:char typalign:char typstorage:char typdefaultbin:pg_node_tree",
    ),
    ("pg_views", "schemaname:name viewname:name viewowner:name"),
];

/// The emulated `pg_catalog`, with PostgreSQL 15's columns where the
/// emulation's differ ([`PG15_DIFFERENCES`]): such a table is a view over
/// the emulated one, so filters still reach it.
#[derive(Debug)]
struct Pg15Catalog<S> {
    emulated: S,
}

#[async_trait]
impl<S: SchemaProvider> SchemaProvider for Pg15Catalog<S> {
    fn table_names(&self) -> Vec<String> {
        self.emulated.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Some(table) = self.emulated.table(name).await? else { return Ok(None) };
        let differences = PG15_DIFFERENCES.iter().find(|(differing, _)| name.eq_ignore_ascii_case(differing));
        let wire_types = PG15_WIRE_TYPES.iter().find(|(typed, _)| name.eq_ignore_ascii_case(typed));
        if differences.is_none() && wire_types.is_none() {
            return Ok(Some(table));
        }
        let differences = differences.map_or(&[][..], |(_, differences)| *differences);
        Ok(Some(as_pg15(name, table, differences, wire_types.map_or("", |(_, types)| *types))?))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.emulated.table_exist(name)
    }
}

/// One emulated column as PostgreSQL 15 serves it, or `None` when only
/// later versions have it.
fn column_as_pg15<'a>(field: &'a Field, differences: &[Pg15Column], wire_types: &str) -> Option<(Expr, &'a str)> {
    let mut column = datafusion::prelude::col(datafusion::common::Column::new_unqualified(field.name()));
    let mut name = None;
    let mut metadata = None;
    if let Some(pg_type) = wire_types.split_whitespace().find_map(|typed| {
        typed.split_once(':').filter(|(column, _)| column == field.name()).map(|(_, pg_type)| pg_type)
    }) {
        let carried = metadata.get_or_insert_with(|| field.metadata().clone());
        carried.insert(PG_TYPE_KEY.to_string(), pg_type.to_string());
    }
    for difference in differences {
        match difference {
            Pg15Column::Later { name } if name == field.name() => return None,
            Pg15Column::Renamed { emulated, pg15 } if emulated == field.name() => name = Some(*pg15),
            Pg15Column::Array { name, element } if name == field.name() => {
                let elements = DataType::List(Arc::new(Field::new_list_field(element(), true)));
                column = datafusion::logical_expr::cast(TEXT_ARRAY.call(vec![column]), elements);
            }
            Pg15Column::Oid { name } if name == field.name() => {
                let carried = metadata.get_or_insert_with(|| field.metadata().clone());
                carried.insert(OID_ALIAS_KEY.to_string(), "oid".to_string());
            }
            Pg15Column::Cast { name, to } if name == field.name() => {
                column = datafusion::logical_expr::cast(column, to());
            }
            _ => continue,
        }
        // What the field carries (the emulation marks oid columns) stays
        // through a restated column.
        metadata.get_or_insert_with(|| field.metadata().clone());
    }
    let name = name.unwrap_or_else(|| field.name().as_str());
    match metadata {
        Some(metadata) => Some((column.alias_with_metadata(name, Some(metadata.into())), name)),
        None => Some((column, name)),
    }
}

fn as_pg15(
    name: &str,
    emulated: Arc<dyn TableProvider>,
    differences: &[Pg15Column],
    wire_types: &str,
) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    let schema = emulated.schema();
    let mut columns: Vec<Expr> = Vec::with_capacity(schema.fields().len() + differences.len());
    let mut names: Vec<&str> = Vec::with_capacity(columns.capacity());
    for field in schema.fields() {
        let Some((column, name)) = column_as_pg15(field, differences, wire_types) else { continue };
        columns.push(column);
        names.push(name);
        // A missing column may follow another missing one.
        while let Some((name, data_type)) = differences.iter().find_map(|difference| match difference {
            Pg15Column::Missing { name, after, data_type } if Some(after) == names.last() => Some((name, data_type)),
            _ => None,
        }) {
            columns.push(lit(datafusion::common::ScalarValue::try_from(data_type())?).alias(*name));
            names.push(name);
        }
    }
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(emulated), None)?.project(columns)?.build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// `auditlake_text_array(text)`: the elements of an array the emulation
/// keeps as text (`"[2, 20, 3]"`, `"{d,f}"`), as a `text[]` (cast on to the
/// element's type); NULL stays NULL.
static TEXT_ARRAY: LazyLock<ScalarUDF> = LazyLock::new(|| {
    create_udf(
        "auditlake_text_array",
        vec![DataType::Utf8],
        DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let texts = ColumnarValue::values_to_arrays(args)?;
            let texts = as_string_array(&texts[0])?;
            let mut arrays = ListBuilder::new(StringBuilder::new());
            for text in texts.iter() {
                match text {
                    Some(text) => {
                        let inside = text.trim().trim_start_matches(['[', '{']).trim_end_matches([']', '}']);
                        for element in inside.split(',').map(|e| e.trim().trim_matches(['\'', '"'])) {
                            if !element.is_empty() {
                                arrays.values().append_value(element);
                            }
                        }
                        arrays.append(true);
                    }
                    None => arrays.append(false),
                }
            }
            Ok(ColumnarValue::Array(Arc::new(arrays.finish())))
        }),
    )
});
