//! SQL over the log: the `audit_events` table provider ([`table`]) and the
//! DataFusion session every query runs in ([`session`]), under a tenant
//! [`Scope`] fixed at login.
//!
//! The provider plans only: it takes one storage [`Snapshot`](crate::storage::Snapshot), then builds a
//! scan of the buffered Arrow batches and of the sealed Parquet segments, and
//! unions them. The manifest prunes segments first; filters are then handed to
//! DataFusion's Parquet source as a pruning predicate (row-group statistics,
//! bloom filters, page index) and reported as `Inexact`, so DataFusion
//! re-applies them above the scan. Content-id and actor lookups are the
//! exception: the segments' row indexes answer them exactly (see
//! [`index_lookup`]), and their statements are planned without DataFusion's
//! physical optimizers (see [`lookup_path`]).
//!
//! This layer never writes to storage and never sees a connection.

use std::sync::{Arc, OnceLock};

mod barrier;
pub mod engine;
pub mod fragment;
mod index_lookup;
mod limits;
pub mod lookup_path;
mod memory;
pub mod opaque;
mod pass_through;
mod pruning;
mod read_only;
mod scan_exec;
mod segment_cache;
mod segments_scan;
mod session;
mod table;
#[cfg(test)]
mod tests;
mod ugc_hash;
mod unpack_id;
mod value_limits;

pub use limits::{
    DEFAULT_MAX_RESULT_ROWS, DEFAULT_STATEMENT_TIMEOUT_MS, LimitHit, QueryConfig, STATEMENT_TIMEOUT, SessionTimeout,
    StatementCancel, TOO_MANY_ROWS, limit_hit,
};
pub use memory::{DEFAULT_QUERY_MEMORY_BYTES, DEFAULT_TOTAL_QUERY_MEMORY_BYTES, QueryMemory};
pub use read_only::{is_read_only, selects_into, statement_verb};
pub use segment_cache::{DEFAULT_SEGMENT_CACHE_BYTES, SegmentCache};
pub use segments_scan::SegmentReader;
pub use session::{SessionControls, new_scoped_session_context, new_session_context, register_functions};
pub use table::AuditEventsTable;
pub use value_limits::VALUE_TOO_LARGE;

/// The catalog and schema clients see: `auditlake.public.audit_events`.
pub const CATALOG: &str = "auditlake";
pub const SCHEMA: &str = "public";
pub const TABLE: &str = "audit_events";

/// Which events a session may read. Fixed once, when the connection logs
/// in, and enforced inside the scan: no SQL (joins, subqueries, `UNION`,
/// window functions) reaches a row outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every organisation's events (admins, and the data directory's owner).
    All,
    /// One organisation's events.
    Org(String),
}

/// A session's scope, set at login; a session without one reads nothing.
pub type SessionScope = Arc<OnceLock<Scope>>;

/// The scope of sessions opened on the data directory itself (`auditlake
/// query --data-dir`): whoever can read the files can read every event.
pub fn owner_scope() -> SessionScope {
    Arc::new(OnceLock::from(Scope::All))
}
