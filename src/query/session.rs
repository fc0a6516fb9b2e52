//! The DataFusion session each connection or command runs its statements in:
//! the table registered under the session's scope, the limits (memory,
//! timeout, cancel, value sizes) and the functions the log adds.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::Dialect;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::storage::Storage;

use super::limits::{self, QueryConfig, SessionTimeout, StatementCancel};
use super::{
    AuditEventsTable, CATALOG, SCHEMA, SegmentReader, SessionScope, TABLE, engine, lookup_path, owner_scope, ugc_hash,
    value_limits,
};

/// A fresh DataFusion session over `storage` with `audit_events` registered.
/// Each Postgres connection gets its own, so `SET` in one never leaks into another.
/// Its scope is the data directory owner's (every event); see
/// [`new_scoped_session_context`] for sessions of logged-in users.
pub fn new_session_context(storage: &Storage, limits: &QueryConfig) -> Result<SessionContext> {
    let controls = SessionControls { scope: owner_scope(), ..SessionControls::new(limits) };
    new_scoped_session_context(storage, limits, controls)
}

/// What a login decides about a session after it is made: whose rows it
/// reads, how long its statements may run, and how to stop the running one.
#[derive(Debug, Clone)]
pub struct SessionControls {
    pub scope: SessionScope,
    pub timeout: SessionTimeout,
    pub cancel: StatementCancel,
}

impl SessionControls {
    /// Unset scope (nothing can be read until it is set), the server's timeout.
    pub fn new(limits: &QueryConfig) -> Self {
        SessionControls {
            scope: SessionScope::default(),
            timeout: SessionTimeout::new(limits.statement_timeout),
            cancel: StatementCancel::default(),
        }
    }
}

/// A session that reads only what its controls' scope allows, once it is
/// set, under their timeout and cancel.
pub fn new_scoped_session_context(
    storage: &Storage,
    limits: &QueryConfig,
    controls: SessionControls,
) -> Result<SessionContext> {
    let table = AuditEventsTable::new(storage.clone(), limits.segment_cache.clone(), Arc::clone(&controls.scope));
    let ctx = session_with_controls(storage, limits, table, controls.timeout, controls.cancel)?;
    ctx.register_udf(ugc_hash::ugc_hash(controls.scope, limits.ugc_key.clone()));
    Ok(ctx)
}

#[cfg(test)]
pub(super) fn session_over(storage: &Storage, limits: &QueryConfig, table: AuditEventsTable) -> Result<SessionContext> {
    let timeout = SessionTimeout::new(limits.statement_timeout);
    session_with_controls(storage, limits, table, timeout, StatementCancel::default())
}

/// The functions the log adds to SQL, on a coordinator and on a worker
/// alike, so that a stage runs the same functions wherever it runs.
pub fn register_functions(ctx: &mut SessionContext) -> Result<()> {
    // `attributes` holds JSON text: json_get_str(attributes, 'role'),
    // attributes->>'role', json_contains(...), etc.
    datafusion_functions_json::register_all(ctx)?;
    value_limits::register(ctx);
    Ok(())
}

fn session_with_controls(
    storage: &Storage,
    limits: &QueryConfig,
    table: AuditEventsTable,
    timeout: SessionTimeout,
    cancel: StatementCancel,
) -> Result<SessionContext> {
    let mut config =
        SessionConfig::new().with_information_schema(true).with_default_catalog_and_schema(CATALOG, SCHEMA);
    // SQL as Postgres reads it: among others `attributes->>'k' = 'v'` binds
    // `->>` before `=` (the generic dialect does not).
    config.options_mut().sql_parser.dialect = Dialect::PostgreSQL;
    let mut config = config.with_option_extension(lookup_path::AuditlakeOptions::default()).with_extension(Arc::new(
        SegmentReader { store: Arc::clone(storage.segment_store()), cache: limits.segment_cache.clone() },
    ));
    if let Some(cluster) = &limits.cluster {
        config = config.with_extension(Arc::new(cluster.live_workers()));
    }
    // Late materialisation: the Parquet scan decodes the filtered columns
    // first and the others only for matching rows. A content-id lookup over
    // 10M realistic events went from 62 to 38 ms (BENCHMARKS.md).
    config.options_mut().execution.parquet.pushdown_filters = true;
    config.options_mut().execution.parquet.reorder_filters = true;
    // Queries never write to disk: audit rows must not land in temporary
    // files, and a full disk must not reach the WAL's. A query that does not
    // fit in its memory fails instead. (This also keeps DataFusion 55's
    // nested-loop join off its spilling fallback, which re-runs a
    // repartitioned input and panics.)
    let no_spilling = DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(limits.memory.session_pool())
        .with_disk_manager_builder(no_spilling)
        .build_arc()?;
    let statement_limits = limits::StatementLimitsRule {
        limits: limits::StatementLimits {
            statement_timeout: timeout,
            max_result_rows: limits.max_result_rows,
            query_memory_bytes: limits.memory.per_query_bytes(),
            cancel,
            pins: table.pins(),
        },
    };
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_query_planner(Arc::new(lookup_path::LookupFirstPlanner))
        .with_physical_optimizer_rule(Arc::new(limits::JoinsYieldRule))
        .with_physical_optimizer_rule(Arc::new(statement_limits));
    if let Some(cluster) = &limits.cluster {
        // Around the planner set above: it plans (again, wider, when the
        // engine sent scans out), then the distributed planner cuts what
        // the engine sent out into stages.
        if let Some(inner) = state.query_planner().take() {
            state = state.with_query_planner(Arc::new(engine::WideForWorkers { inner }));
        }
        state = cluster.coordinate(state)?;
        if let Some(inner) = state.query_planner().take() {
            let scope = table.scope();
            state = state.with_query_planner(Arc::new(engine::StaysHere { scope, inner }));
        }
    }
    let mut ctx = SessionContext::new_with_state(state.build());
    register_functions(&mut ctx)?;
    let segments = storage.segment_store();
    ctx.register_object_store(segments.url().as_ref(), segments.object_store());
    ctx.register_table(TABLE, Arc::new(table))?;
    Ok(ctx)
}
