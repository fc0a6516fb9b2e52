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

use std::sync::{Arc, LazyLock};

use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::generate_series_arg_coercion::CoerceIntArgsToBigInt;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::oid_type_planner::PgOidTypePlanner;
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
        .register_schema("pg_catalog", Arc::new(schema))?;

    for udf in [
        pg::create_current_database_udf(catalog_name),
        pg::create_current_schema_udf(),
        pg::create_current_schemas_udf(),
        pg::create_pg_get_userbyid_udf(),
        has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
        pg::create_pg_table_is_visible(),
        format_type::create_format_type_udf(),
        pg::create_session_user_udf(),
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
