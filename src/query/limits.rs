//! Time and result size for one statement: a runaway query (a cross join, a
//! `select *` over the whole log) fails with an error that says which limit
//! it hit and how to change it, and frees what it held, instead of running on
//! while ingest and other clients wait.
//!
//! Every physical plan of a session gets a `StatementLimitsExec` on top (a
//! physical optimizer rule puts it there), so the limits hold for execution,
//! not only planning, whichever way the SQL arrived. The memory limits are in
//! [`memory`](super::memory); this module only bundles them with these.
//! Joins yield between their batches, so that a statement that ended stops.
//! It never changes what a query returns within its limits.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::RecordBatchStream;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PiecewiseMergeJoinExec, SortMergeJoinExec, SymmetricHashJoinExec,
};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, SendableRecordBatchStream};
use futures::Stream;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::task::AbortHandle;

use super::memory::{QueryMemory, out_of_memory};
use super::pass_through::{PassThrough, PassThroughExec};
use super::segment_cache::SegmentCache;
use crate::policy::UgcKey;
use crate::storage::segment::LiveSegment;

/// Default longest run of one statement.
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 60_000;
/// Default most rows one statement may return.
pub const DEFAULT_MAX_RESULT_ROWS: u64 = 1_000_000;

/// What every query session of a server starts from: the limits of each
/// statement (its share of memory, its time, its result size) and what all
/// statements share (the segment cache, and the UGC key `ugc_hash` derives
/// organisations' keys from).
#[derive(Debug, Clone)]
pub struct QueryConfig {
    pub memory: QueryMemory,
    pub statement_timeout: Duration,
    pub max_result_rows: u64,
    pub segment_cache: SegmentCache,
    pub ugc_key: Option<Arc<UgcKey>>,
    /// The workers scans may be handed to (a coordinator's); none on a
    /// single node.
    pub cluster: Option<crate::cluster::Cluster>,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            memory: QueryMemory::default(),
            statement_timeout: Duration::from_millis(DEFAULT_STATEMENT_TIMEOUT_MS),
            max_result_rows: DEFAULT_MAX_RESULT_ROWS,
            segment_cache: SegmentCache::default(),
            ugc_key: None,
            cluster: None,
        }
    }
}

/// Puts a [`StatementLimitsExec`] on top of every plan, after every other
/// rule, merging the plan's partitions first so the row count is the
/// statement's.
#[derive(Debug)]
pub(super) struct StatementLimitsRule {
    pub limits: StatementLimits,
}

impl StatementLimitsRule {
    pub const NAME: &str = "auditlake_statement_limits";
}

impl PhysicalOptimizerRule for StatementLimitsRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        if plan.is::<StatementLimitsExec>() {
            return Ok(plan);
        }
        let input: Arc<dyn ExecutionPlan> = if plan.output_partitioning().partition_count() > 1 {
            Arc::new(CoalescePartitionsExec::new(plan))
        } else {
            plan
        };
        let limits = StatementLimits { pins: self.limits.pins.taken(), ..self.limits.clone() };
        Ok(Arc::new(StatementLimitsExec::new(input, limits)))
    }

    fn name(&self) -> &str {
        Self::NAME
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Makes every join give its thread back between output batches.
///
/// A join can make billions of rows out of a few thousand without reading
/// its inputs again, and an aggregate over it then loops without ever
/// waiting: nothing in the statement's task yields, so its timeout, a
/// cancel, or the coordinator dropping a worker's stream cannot stop it,
/// and the task runs on to the end after the client got its error. Behind
/// a `CooperativeExec`, each of the join's batches costs the task some of
/// the runtime's budget; when that is spent the task yields, and a
/// statement that ended is dropped there. The rule runs before the
/// distributed planner cuts stages, so the workers' parts of a plan yield
/// the same way.
#[derive(Debug)]
pub(super) struct JoinsYieldRule;

impl JoinsYieldRule {
    fn is_join(plan: &Arc<dyn ExecutionPlan>) -> bool {
        plan.is::<HashJoinExec>()
            || plan.is::<NestedLoopJoinExec>()
            || plan.is::<CrossJoinExec>()
            || plan.is::<SortMergeJoinExec>()
            || plan.is::<SymmetricHashJoinExec>()
            || plan.is::<PiecewiseMergeJoinExec>()
    }

    fn yielding(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        if Self::is_join(&plan) { Arc::new(CooperativeExec::new(plan)) } else { plan }
    }
}

impl PhysicalOptimizerRule for JoinsYieldRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        // Joins are wrapped from their parent, so a plan that already
        // passed here (a parent that is the wrapper) is left as it is.
        let wrapped = plan.transform_up(|node| {
            if node.is::<CooperativeExec>() || !node.children().into_iter().any(Self::is_join) {
                return Ok(Transformed::no(node));
            }
            let children = node.children().into_iter().map(|child| Self::yielding(Arc::clone(child))).collect();
            let recompute = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
            Ok(Transformed::yes(node.replace_children(children, recompute)?))
        })?;
        Ok(Self::yielding(wrapped.data))
    }

    fn name(&self) -> &str {
        "auditlake_joins_yield"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Cancels whatever statement a session is running when asked from outside
/// it (a client's cancel request arrives on a connection of its own). A
/// request while no statement runs cancels nothing, as in PostgreSQL.
#[derive(Debug, Clone, Default)]
pub struct StatementCancel {
    requests: Arc<AtomicU64>,
    /// `requests` when the session's current statement arrived: later
    /// requests are for it, even while it is still being planned.
    requests_at_begin: Arc<AtomicU64>,
    wake: Arc<Notify>,
}

impl StatementCancel {
    pub fn cancel(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Marks the arrival of the session's next statement.
    pub fn begin_statement(&self) {
        self.requests_at_begin.store(self.requests.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// A session's statement timeout: the server's default until a login sets
/// the user's own (`auditlake user add --statement-timeout-ms`). That is
/// also the session's ceiling: `SET statement_timeout` may lower it for the
/// session, never raise it past what the login set.
#[derive(Debug, Clone)]
pub struct SessionTimeout {
    millis: Arc<AtomicU64>,
    ceiling_millis: Arc<AtomicU64>,
}

impl SessionTimeout {
    pub fn new(timeout: Duration) -> Self {
        let millis = timeout.as_millis() as u64;
        SessionTimeout { millis: Arc::new(AtomicU64::new(millis)), ceiling_millis: Arc::new(AtomicU64::new(millis)) }
    }

    /// The login's limit: the timeout and its ceiling.
    pub fn set(&self, timeout: Duration) {
        self.ceiling_millis.store(timeout.as_millis() as u64, Ordering::SeqCst);
        self.millis.store(timeout.as_millis() as u64, Ordering::SeqCst);
    }

    /// `requested`, or the ceiling when it asks for more or for none at all
    /// (`None`: PostgreSQL's 0 or `DEFAULT`); returns what now applies.
    pub fn lower_to(&self, requested: Option<Duration>) -> Duration {
        let ceiling = self.ceiling_millis.load(Ordering::SeqCst);
        let millis = requested.map_or(ceiling, |r| (r.as_millis() as u64).min(ceiling));
        self.millis.store(millis, Ordering::SeqCst);
        Duration::from_millis(millis)
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

/// The limits one statement runs under. As a plan node, it passes its
/// input's rows through until the statement runs out of time or returns too
/// many rows, then ends it with an error. Errors of running out of memory
/// come out of it naming the limit, whichever operator hit it and however it
/// reworded the error (e.g. after failing to spill).
#[derive(Debug, Clone)]
pub(super) struct StatementLimits {
    pub statement_timeout: SessionTimeout,
    pub max_result_rows: u64,
    /// Only to name the limit in errors.
    pub query_memory_bytes: usize,
    pub cancel: StatementCancel,
    pub pins: StatementPins,
}

/// The segments a statement's distributed scans read, held until its result
/// is dropped: compaction and retention delete a retired segment's file
/// only when nothing holds it, and a plan sent to workers is not held on the
/// coordinator once it is sent. The scan adds them while planning; the
/// statement's `StatementLimitsExec` takes them, and its rows' stream holds
/// them.
#[derive(Debug, Clone, Default)]
pub struct StatementPins {
    /// Added by scans of the statement being planned (one at a time per session).
    pending: Arc<Mutex<Vec<Arc<LiveSegment>>>>,
    /// Taken by one statement's plan.
    held: Arc<Vec<Arc<LiveSegment>>>,
}

impl StatementPins {
    pub fn pin(&self, segments: impl IntoIterator<Item = Arc<LiveSegment>>) {
        self.pending.lock().expect("statement pins lock").extend(segments);
    }

    /// These pins with what was pinned since the last statement, held.
    fn taken(&self) -> StatementPins {
        let pending = std::mem::take(&mut *self.pending.lock().expect("statement pins lock"));
        StatementPins { pending: Arc::clone(&self.pending), held: Arc::new(pending) }
    }
}

pub(super) type StatementLimitsExec = PassThroughExec<StatementLimits>;

impl PassThrough for StatementLimits {
    const NAME: &'static str = "StatementLimitsExec";

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timeout_ms={}, max_result_rows={}", self.statement_timeout.get().as_millis(), self.max_result_rows)
    }

    fn wrap(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let timeout = self.statement_timeout.get();
        let deadline_at = tokio::time::Instant::now() + timeout;
        let schema = input.schema();
        let input = Arc::new(Mutex::new(Some(input)));
        // A result nobody reads (a cursor declared and left, a portal
        // suspended after its first rows) would hold its sorts' and hash
        // tables' memory until the session ends: at the deadline it is
        // dropped, read or not.
        let reaper = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let parked = Arc::downgrade(&input);
            runtime
                .spawn(async move {
                    tokio::time::sleep_until(deadline_at).await;
                    if let Some(input) = parked.upgrade() {
                        let stream = input.lock().expect("statement input lock").take();
                        drop(stream);
                    }
                })
                .abort_handle()
        });
        Box::pin(LimitedStream {
            schema,
            input,
            reaper,
            timeout,
            deadline_at,
            deadline: None,
            rows: 0,
            max_rows: self.max_result_rows,
            query_memory_bytes: self.query_memory_bytes,
            ended: false,
            cancel: self.cancel.clone(),
            cancels_before: self.cancel.requests_at_begin.load(Ordering::SeqCst),
            cancel_wake: None,
            _pinned: Arc::clone(&self.pins.held),
        })
    }
}

struct LimitedStream {
    schema: SchemaRef,
    /// The segments the statement's distributed scans read (see `StatementPins`).
    _pinned: Arc<Vec<Arc<LiveSegment>>>,
    /// `None` once the statement ended or its deadline dropped it.
    input: Arc<Mutex<Option<SendableRecordBatchStream>>>,
    /// The task that drops `input` at the deadline, stopped with the stream.
    reaper: Option<AbortHandle>,
    timeout: Duration,
    deadline_at: tokio::time::Instant,
    /// The timer for `deadline_at`, made at the first poll, inside the
    /// runtime whose timer wakes it.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    rows: u64,
    max_rows: u64,
    query_memory_bytes: usize,
    ended: bool,
    cancel: StatementCancel,
    /// Cancel requests made before this statement started: not for it.
    cancels_before: u64,
    cancel_wake: Option<Pin<Box<OwnedNotified>>>,
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        if let Some(reaper) = &self.reaper {
            reaper.abort();
        }
    }
}

/// How the statement timeout's error starts, wherever it strikes (while
/// planning, or while the rows stream).
pub const STATEMENT_TIMEOUT: &str = "canceling statement after the statement timeout";
/// How a cancel request's error reads.
const CANCELED_BY_REQUEST: &str = "canceling statement due to user request";
/// How the result-row limit's error starts. Memory errors name rows too
/// ("buffered rows wanted ..."): only this start tells the two apart.
pub const TOO_MANY_ROWS: &str = "the result has more than";

/// Which of a statement's limits ended it. The query layer makes these
/// errors; the Postgres endpoint turns them into SQLSTATEs and the HTTP API
/// into status codes, each in its one mapping, by asking [`limit_hit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// The statement timeout.
    Timeout,
    /// A cancel request.
    Canceled,
    /// More rows than one statement may return.
    TooManyRows,
    /// More memory than the statement's share or than is left.
    OutOfMemory,
    /// A value larger than one function call may make.
    ValueTooLarge,
}

/// The limit that ended a statement with `error`, if one did.
pub fn limit_hit(error: &DataFusionError) -> Option<LimitHit> {
    Some(match error.find_root() {
        DataFusionError::ResourcesExhausted(message) if message.starts_with(TOO_MANY_ROWS) => LimitHit::TooManyRows,
        DataFusionError::ResourcesExhausted(_) => LimitHit::OutOfMemory,
        DataFusionError::Execution(message) if message.starts_with(STATEMENT_TIMEOUT) => LimitHit::Timeout,
        DataFusionError::Execution(message) if message.starts_with(CANCELED_BY_REQUEST) => LimitHit::Canceled,
        DataFusionError::Execution(message) if message.starts_with(super::VALUE_TOO_LARGE) => LimitHit::ValueTooLarge,
        _ => return None,
    })
}

impl LimitedStream {
    /// Ends the statement with `error`, letting go of what its plan holds.
    fn end(&mut self, error: DataFusionError) -> Poll<Option<Result<RecordBatch>>> {
        self.ended = true;
        let stream = self.input.lock().expect("statement input lock").take();
        drop(stream);
        Poll::Ready(Some(Err(error)))
    }

    fn timed_out(&mut self) -> Poll<Option<Result<RecordBatch>>> {
        let ms = self.timeout.as_millis();
        self.end(DataFusionError::Execution(format!(
            "{STATEMENT_TIMEOUT} of {ms} ms; narrow it (time range, actor, LIMIT) or \
             raise --statement-timeout-ms"
        )))
    }
}

impl Stream for LimitedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // Listen first, then look: a request between the two still wakes us.
        let wake = Arc::clone(&self.cancel.wake);
        let cancel_wake = self.cancel_wake.get_or_insert_with(|| Box::pin(wake.notified_owned()));
        if cancel_wake.as_mut().poll(cx).is_ready() {
            self.cancel_wake = None;
            // Poll again so that a later request wakes us too.
            cx.waker().wake_by_ref();
        }
        if self.cancel.requests.load(Ordering::SeqCst) > self.cancels_before {
            return self.end(DataFusionError::Execution(CANCELED_BY_REQUEST.into()));
        }
        let deadline_at = self.deadline_at;
        let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline_at)));
        if deadline.as_mut().poll(cx).is_ready() {
            return self.timed_out();
        }
        let input = Arc::clone(&self.input);
        let mut input = input.lock().expect("statement input lock");
        let Some(stream) = input.as_mut() else {
            drop(input);
            return self.timed_out();
        };
        let polled = stream.as_mut().poll_next(cx);
        drop(input);
        match polled {
            Poll::Ready(Some(Ok(batch))) => {
                self.rows += batch.num_rows() as u64;
                if self.rows > self.max_rows {
                    let max = self.max_rows;
                    return self.end(DataFusionError::ResourcesExhausted(format!(
                        "{TOO_MANY_ROWS} {max} rows, the most one statement may return; add LIMIT, \
                         aggregate, or raise --max-result-rows"
                    )));
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(error))) => {
                let hint = out_of_memory(self.query_memory_bytes);
                match error.find_root() {
                    DataFusionError::ResourcesExhausted(message) if !message.contains(&hint) => {
                        let error = DataFusionError::ResourcesExhausted(format!("{hint} ({message})"));
                        self.end(error)
                    }
                    _ => self.end(error),
                }
            }
            other => other,
        }
    }
}

impl RecordBatchStream for LimitedStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}
