//! Memory for queries: one budget for all of them and a cap for each, so a
//! runaway query (a sort or aggregation over the whole log) fails with a
//! clear error instead of taking the server, and ingest, down with it.
//!
//! Each Postgres connection, and each HTTP read, runs one statement at a
//! time in its own session, so a session's pool is its running query's.
//! Nothing spills to disk (the session's disk manager is disabled, see
//! `session.rs`): what cannot fit fails, and the HTTP API answers 503.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::{Result, resources_datafusion_err};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// Default cap of one query's working memory (sorts, hash tables, buffers).
pub const DEFAULT_QUERY_MEMORY_BYTES: usize = 256 * 1024 * 1024;
/// Default budget of all running queries together.
pub const DEFAULT_TOTAL_QUERY_MEMORY_BYTES: usize = 512 * 1024 * 1024;

/// The shared budget, and the cap each query gets out of it.
#[derive(Debug, Clone)]
pub struct QueryMemory {
    total: Arc<dyn MemoryPool>,
    per_query_bytes: usize,
}

impl QueryMemory {
    pub fn new(per_query_bytes: usize, total_bytes: usize) -> Self {
        QueryMemory { total: Arc::new(GreedyMemoryPool::new(total_bytes)), per_query_bytes }
    }

    pub fn per_query_bytes(&self) -> usize {
        self.per_query_bytes
    }

    /// A pool for one session, drawing on the shared budget.
    pub fn session_pool(&self) -> Arc<dyn MemoryPool> {
        Arc::new(QueryPool { total: Arc::clone(&self.total), limit_bytes: self.per_query_bytes, used: 0.into() })
    }
}

impl Default for QueryMemory {
    fn default() -> Self {
        QueryMemory::new(DEFAULT_QUERY_MEMORY_BYTES, DEFAULT_TOTAL_QUERY_MEMORY_BYTES)
    }
}

/// What a query that ran out of memory is told, whichever operator ran out.
pub(super) fn out_of_memory(limit_bytes: usize) -> String {
    format!(
        "query memory limit of {limit_bytes} bytes reached: narrow the query (time range, actor, LIMIT) or raise \
         --query-memory-bytes"
    )
}

#[derive(Debug)]
struct QueryPool {
    total: Arc<dyn MemoryPool>,
    limit_bytes: usize,
    used: AtomicUsize,
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "query pool: {} of {} bytes used", self.reserved(), self.limit_bytes)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "auditlake query pool"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.total.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.total.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.total.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.total.shrink(reservation, shrink);
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let fits = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + additional <= self.limit_bytes).then_some(used + additional)
            })
            .is_ok();
        if !fits {
            return Err(resources_datafusion_err!(
                "{} ({} wanted {additional} more)",
                out_of_memory(self.limit_bytes),
                reservation.consumer().name()
            ));
        }
        // The shared pool's own error says how much the other queries hold,
        // which may be other organisations' queries: none of it is passed on.
        if self.total.try_grow(reservation, additional).is_err() {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(resources_datafusion_err!(
                "the server's memory for queries (--total-query-memory-bytes) is taken by other queries; retry \
                 shortly, or narrow the query (time range, actor, LIMIT)"
            ));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query refused because others hold the shared budget learns that,
    /// and nothing of how much they hold: the other queries may be another
    /// organisation's.
    #[test]
    fn a_refusal_by_the_shared_budget_tells_no_figure_of_other_queries() {
        let memory = QueryMemory::new(1 << 20, 1 << 20);
        let (busy, refused) = (memory.session_pool(), memory.session_pool());
        let other = MemoryConsumer::new("another organisation's sort").register(&busy);
        other.try_grow(1_000_000).unwrap();
        let mine = MemoryConsumer::new("my sort").register(&refused);
        let error = mine.try_grow(100_000).unwrap_err().to_string();
        assert!(error.contains("--total-query-memory-bytes"), "{error}");
        for figure in ["976", "47.4", "1024", "used", "remain", "another organisation"] {
            assert!(!error.contains(figure), "{figure} in {error}");
        }
        // Within its own share and the budget, it goes on.
        drop(other);
        mine.try_grow(100_000).unwrap();
    }
}
