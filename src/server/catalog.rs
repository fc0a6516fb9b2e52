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

use std::collections::HashMap;
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
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    self as pg, PgCatalogSchemaProvider, PgCatalogStaticTables, array_bounds_udf, format_type, has_privilege_udf,
    pg_get_expr_udf, quote_ident_udf,
};

use super::describe::PG_TYPE_KEY;

/// The bundled tables, unpacked once, on the first connection.
static STATIC_TABLES: LazyLock<Result<Arc<PgCatalogStaticTables>, String>> =
    LazyLock::new(|| PgCatalogStaticTables::try_new().map(Arc::new).map_err(|e| e.to_string()));

/// Who a session's `session_user` (and `current_user`) is: the user who
/// logged in, known once the login is done.
pub type SessionUser = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Registers `pg_catalog` in `catalog_name` of `session`, with its functions.
pub fn register(session: &SessionContext, catalog_name: &str, user: SessionUser) -> Result<(), DataFusionError> {
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

    for (udf, answer) in [
        (pg::create_current_database_udf(catalog_name), Pg15Answer::Name),
        (pg::create_current_schema_udf(), Pg15Answer::Name),
        (session_user(user), Pg15Answer::Name),
        (pg::create_pg_relation_size_udf(), Pg15Answer::Bigint),
        (pg::create_pg_total_relation_size_udf(), Pg15Answer::Bigint),
        (pg::create_pg_stat_get_numscans(), Pg15Answer::Bigint),
    ] {
        session.register_udf(ScalarUDF::new_from_impl(AnswersAsPg15 { inner: udf, answer }));
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

/// `session_user`, which the catalog emulation answers `postgres` for
/// everyone (and `current_user`, which it plans as `session_user`): the user
/// who logged in.
fn session_user(user: SessionUser) -> ScalarUDF {
    create_udf(
        "session_user",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_: &[ColumnarValue]| Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::Utf8(user())))),
    )
}

/// What PostgreSQL 15 answers where the emulation's function answers
/// otherwise.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Pg15Answer {
    /// Text PostgreSQL types `name`: tagged, so clients are told so
    /// (`describe.rs`).
    Name,
    /// A size or a count PostgreSQL answers as `bigint` (the emulation's
    /// `pg_relation_size` answers `int4`): widened.
    Bigint,
}

/// An emulated function answering as PostgreSQL 15 does.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AnswersAsPg15 {
    inner: ScalarUDF,
    answer: Pg15Answer,
}

impl ScalarUDFImpl for AnswersAsPg15 {
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
        match self.answer {
            Pg15Answer::Name => self.inner.return_type(arg_types),
            Pg15Answer::Bigint => Ok(DataType::Int64),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef, DataFusionError> {
        let field = self.inner.return_field_from_args(args)?.as_ref().clone();
        Ok(Arc::new(match self.answer {
            Pg15Answer::Name => {
                let mut metadata = field.metadata().clone();
                metadata.insert(PG_TYPE_KEY.to_string(), "name".to_string());
                field.with_metadata(metadata)
            }
            Pg15Answer::Bigint => field.with_data_type(DataType::Int64),
        }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let answer = self.inner.invoke_with_args(args)?;
        match self.answer {
            Pg15Answer::Name => Ok(answer),
            Pg15Answer::Bigint => answer.cast_to(&DataType::Int64, None),
        }
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
    /// PostgreSQL 15 holds other values: served restated (from the
    /// emulation's column) by `restate`.
    Restated { name: &'static str, restate: fn(Expr) -> Expr },
    /// PostgreSQL 15 places the column after another.
    Moved { name: &'static str, after: &'static str },
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

fn boolean() -> DataType {
    DataType::Boolean
}

/// The emulation's statistics times have no zone; PostgreSQL's do.
fn timestamptz() -> DataType {
    DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()))
}

/// Oids are `int4` in the emulation.
fn oid() -> DataType {
    DataType::Int32
}

/// `pg_database.datlocprovider` is a `"char"`, `c` for libc and `i` for
/// ICU; the emulation names the provider.
fn locale_provider_letter(provider: Expr) -> Expr {
    datafusion::logical_expr::when(provider.clone().eq(lit("libc")), lit("c"))
        .when(provider.clone().eq(lit("icu")), lit("i"))
        .otherwise(provider)
        .expect("a CASE with branches")
}

/// A `text[]` column the emulation keeps as text.
const fn texts(name: &'static str) -> Pg15Column {
    Pg15Column::Array { name, element: text }
}

/// A `float4[]` column the emulation keeps as text.
const fn floats(name: &'static str) -> Pg15Column {
    Pg15Column::Array { name, element: float4 }
}

/// An `oid[]` column the emulation keeps as text.
const fn oids(name: &'static str) -> Pg15Column {
    Pg15Column::Array { name, element: oid }
}

/// `text[]`, and `aclitem[]` (whose elements clients read as text).
fn text_array() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// The emulated tables whose columns differ from PostgreSQL 15's, by
/// table. SQLAlchemy's index reflection reads `pg_class.reloptions`.
const PG15_DIFFERENCES: [(&str, &[Pg15Column]); 31] = [
    (
        "pg_auth_members",
        &[
            Pg15Column::Later { name: "oid" },
            Pg15Column::Later { name: "inherit_option" },
            Pg15Column::Later { name: "set_option" },
        ],
    ),
    ("pg_namespace", &[Pg15Column::Later { name: "options" }, Pg15Column::Oid { name: "nspowner" }, texts("nspacl")]),
    ("pg_replication_slots", &[Pg15Column::Later { name: "conflicting" }, Pg15Column::Oid { name: "datoid" }]),
    ("pg_stat_gssapi", &[Pg15Column::Later { name: "credentials_delegated" }]),
    (
        "pg_stat_user_tables",
        &[
            Pg15Column::Oid { name: "relid" },
            Pg15Column::Cast { name: "last_vacuum", to: timestamptz },
            Pg15Column::Cast { name: "last_autovacuum", to: timestamptz },
            Pg15Column::Cast { name: "last_analyze", to: timestamptz },
            Pg15Column::Cast { name: "last_autoanalyze", to: timestamptz },
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
            Pg15Column::Cast { name: "substream", to: boolean },
            texts("subpublications"),
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
            oids("conpfeqop"),
            oids("conppeqop"),
            oids("conffeqop"),
            oids("conexclop"),
            Pg15Column::Array { name: "confdelsetcols", element: int2 },
        ],
    ),
    // psql's `\d` asks `'d' = any(stxkind)` and `oid = any(polroles)`.
    (
        "pg_statistic_ext",
        &[
            texts("stxkind"),
            Pg15Column::Cast { name: "stxstattarget", to: int4 },
            Pg15Column::Moved { name: "stxkeys", after: "stxstattarget" },
        ],
    ),
    (
        "pg_attribute",
        &[
            Pg15Column::Oid { name: "attrelid" },
            Pg15Column::Oid { name: "atttypid" },
            Pg15Column::Oid { name: "attcollation" },
            texts("attoptions"),
            texts("attfdwoptions"),
            texts("attacl"),
        ],
    ),
    ("pg_roles", &[Pg15Column::Oid { name: "oid" }]),
    ("pg_policy", &[oids("polroles")]),
    (
        "pg_proc",
        &[
            texts("proargnames"),
            texts("proargmodes"),
            texts("proconfig"),
            texts("proacl"),
            oids("proallargtypes"),
            oids("protrftypes"),
        ],
    ),
    (
        "pg_statistic",
        &[
            floats("stanumbers1"),
            floats("stanumbers2"),
            floats("stanumbers3"),
            floats("stanumbers4"),
            floats("stanumbers5"),
        ],
    ),
    ("pg_db_role_setting", &[texts("setconfig")]),
    ("pg_event_trigger", &[texts("evttags")]),
    ("pg_extension", &[oids("extconfig"), texts("extcondition")]),
    ("pg_foreign_data_wrapper", &[texts("fdwacl"), texts("fdwoptions")]),
    ("pg_foreign_server", &[texts("srvacl"), texts("srvoptions")]),
    ("pg_foreign_table", &[texts("ftoptions")]),
    ("pg_tablespace", &[texts("spcacl"), texts("spcoptions")]),
    ("pg_user_mapping", &[texts("umoptions")]),
    ("pg_type", &[texts("typacl")]),
    ("pg_language", &[texts("lanacl")]),
    ("pg_largeobject_metadata", &[texts("lomacl")]),
    ("pg_default_acl", &[texts("defaclacl")]),
    ("pg_init_privs", &[texts("initprivs")]),
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
            Pg15Column::Moved { name: "datcollate", after: "dattablespace" },
            Pg15Column::Moved { name: "datctype", after: "datcollate" },
            Pg15Column::Moved { name: "daticulocale", after: "datctype" },
            Pg15Column::Missing { name: "datcollversion", after: "daticulocale", data_type: text },
            Pg15Column::Cast { name: "datacl", to: text_array },
            Pg15Column::Restated { name: "datlocprovider", restate: locale_provider_letter },
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
/// `"char"`, `xid`, `pg_node_tree`, `pg_lsn`, `int2vector`, `oidvector`, `aclitem[]`,
/// `"char"[]` or `oid[]`, where the emulation holds the text PostgreSQL
/// writes (the xid as int4, the arrays as `text[]` and `int4[]`), as
/// `column:type` by table: the columns are tagged with [`PG_TYPE_KEY`] and
/// described by PostgreSQL's type (`describe.rs`). Read from PostgreSQL
/// 15's own `pg_attribute`; the tools' suite compares every table's types.
const PG15_WIRE_TYPES: [(&str, &str); 50] = [
    ("pg_aggregate", "aggkind:char aggfinalmodify:char aggmfinalmodify:char"),
    ("pg_am", "amname:name amtype:char"),
    ("pg_amop", "amoppurpose:char"),
    ("pg_attrdef", "adbin:pg_node_tree"),
    (
        "pg_attribute",
        "attname:name attalign:char attstorage:char attcompression:char attidentity:char attgenerated:char attacl:_aclitem",
    ),
    ("pg_authid", "rolname:name"),
    ("pg_cast", "castcontext:char castmethod:char"),
    (
        "pg_class",
        "relacl:_aclitem relname:name relpersistence:char relkind:char relreplident:char relfrozenxid:xid relminmxid:xid relpartbound:pg_node_tree",
    ),
    ("pg_collation", "collname:name collprovider:char"),
    (
        "pg_constraint",
        "conname:name contype:char confupdtype:char confdeltype:char confmatchtype:char conbin:pg_node_tree conpfeqop:_oid conppeqop:_oid conffeqop:_oid conexclop:_oid",
    ),
    ("pg_conversion", "conname:name"),
    ("pg_database", "datname:name datlocprovider:char datfrozenxid:xid datminmxid:xid datacl:_aclitem"),
    ("pg_default_acl", "defaclobjtype:char defaclacl:_aclitem"),
    ("pg_depend", "deptype:char"),
    ("pg_enum", "enumlabel:name"),
    ("pg_event_trigger", "evtname:name evtevent:name evtenabled:char"),
    ("pg_extension", "extname:name extconfig:_oid"),
    ("pg_foreign_data_wrapper", "fdwname:name fdwacl:_aclitem"),
    ("pg_foreign_server", "srvname:name srvacl:_aclitem"),
    (
        "pg_index",
        "indkey:int2vector indcollation:oidvector indclass:oidvector indoption:int2vector indexprs:pg_node_tree indpred:pg_node_tree",
    ),
    ("pg_init_privs", "privtype:char initprivs:_aclitem"),
    ("pg_language", "lanname:name lanacl:_aclitem"),
    ("pg_largeobject_metadata", "lomacl:_aclitem"),
    ("pg_matviews", "schemaname:name matviewname:name matviewowner:name tablespace:name"),
    ("pg_namespace", "nspname:name nspacl:_aclitem"),
    ("pg_opclass", "opcname:name"),
    ("pg_operator", "oprname:name oprkind:char"),
    ("pg_opfamily", "opfname:name"),
    (
        "pg_partitioned_table",
        "partstrat:char partattrs:int2vector partclass:oidvector partcollation:oidvector partexprs:pg_node_tree",
    ),
    ("pg_policy", "polname:name polcmd:char polqual:pg_node_tree polwithcheck:pg_node_tree polroles:_oid"),
    (
        "pg_proc",
        "proname:name prokind:char provolatile:char proparallel:char proargtypes:oidvector proargdefaults:pg_node_tree prosqlbody:pg_node_tree proargmodes:_char proacl:_aclitem proallargtypes:_oid protrftypes:_oid",
    ),
    ("pg_publication", "pubname:name"),
    ("pg_publication_rel", "prqual:pg_node_tree prattrs:int2vector"),
    (
        "pg_replication_slots",
        "slot_name:name plugin:name database:name xmin:xid catalog_xmin:xid restart_lsn:pg_lsn confirmed_flush_lsn:pg_lsn",
    ),
    ("pg_rewrite", "rulename:name ev_type:char ev_enabled:char ev_qual:pg_node_tree ev_action:pg_node_tree"),
    ("pg_roles", "rolname:name"),
    ("pg_shdepend", "deptype:char"),
    ("pg_stat_user_tables", "schemaname:name relname:name"),
    ("pg_statistic_ext", "stxname:name stxkeys:int2vector stxexprs:pg_node_tree stxkind:_char"),
    ("pg_subscription", "subname:name subtwophasestate:char subslotname:name subskiplsn:pg_lsn"),
    ("pg_subscription_rel", "srsubstate:char srsublsn:pg_lsn"),
    ("pg_tables", "schemaname:name tablename:name tableowner:name tablespace:name"),
    ("pg_tablespace", "spcname:name spcacl:_aclitem"),
    ("pg_trigger", "tgname:name tgenabled:char tgattr:int2vector tgqual:pg_node_tree tgoldtable:name tgnewtable:name"),
    ("pg_ts_config", "cfgname:name"),
    ("pg_ts_dict", "dictname:name"),
    ("pg_ts_parser", "prsname:name"),
    ("pg_ts_template", "tmplname:name"),
    (
        "pg_type",
        "typname:name typtype:char typcategory:char typdelim:char typalign:char typstorage:char typdefaultbin:pg_node_tree typacl:_aclitem",
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
    if let Some(pg_type) = pg_type_of(wire_types, field.name()) {
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
            Pg15Column::Restated { name, restate } if name == field.name() => {
                column = restate(column);
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

/// The type `column` has in a table's [`PG15_WIRE_TYPES`].
fn pg_type_of<'a>(wire_types: &'a str, column: &str) -> Option<&'a str> {
    wire_types
        .split_whitespace()
        .find_map(|typed| typed.split_once(':').filter(|(name, _)| *name == column))
        .map(|(_, t)| t)
}

fn pg_type_metadata(pg_type: &str) -> HashMap<String, String> {
    HashMap::from([(PG_TYPE_KEY.to_string(), pg_type.to_string())])
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
    let moved = |field: &Field| {
        differences
            .iter()
            .any(|difference| matches!(difference, Pg15Column::Moved { name, .. } if name == field.name()))
    };
    for field in schema.fields().iter().filter(|field| !moved(field)) {
        let Some((column, name)) = column_as_pg15(field, differences, wire_types) else { continue };
        columns.push(column);
        names.push(name);
        // What PostgreSQL places after it, which may have more after it.
        loop {
            let follows = differences.iter().find(|difference| match difference {
                Pg15Column::Missing { after, .. } | Pg15Column::Moved { after, .. } => Some(after) == names.last(),
                _ => false,
            });
            match follows {
                Some(Pg15Column::Missing { name, data_type, .. }) => {
                    let null = lit(datafusion::common::ScalarValue::try_from(data_type())?);
                    columns.push(match pg_type_of(wire_types, name) {
                        Some(pg_type) => null.alias_with_metadata(*name, Some(pg_type_metadata(pg_type).into())),
                        None => null.alias(*name),
                    });
                    names.push(name);
                }
                Some(Pg15Column::Moved { name, .. }) => {
                    let field = schema.field_with_name(name)?;
                    let Some((column, name)) = column_as_pg15(field, differences, wire_types) else { break };
                    columns.push(column);
                    names.push(name);
                }
                _ => break,
            }
        }
    }
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(emulated), None)?.project(columns)?.build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// The elements of an array the emulation keeps as text: a Python list
/// (`[2, 20, 3]`, `['', 'x']`) or PostgreSQL's braces (`{d,f}`). An empty
/// element is kept when quoted (`proargnames` has one per unnamed argument).
fn array_elements(text: &str) -> Vec<&str> {
    let inside = text.trim().trim_start_matches(['[', '{']).trim_end_matches([']', '}']);
    if inside.trim().is_empty() {
        return Vec::new();
    }
    inside.split(',').map(|element| element.trim().trim_matches(['\'', '"'])).collect()
}

/// `auditlake_text_array(text)`: [`array_elements`] as a `text[]` (cast on
/// to the element's type); NULL stays NULL.
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
                        for element in array_elements(text) {
                            arrays.values().append_value(element);
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
