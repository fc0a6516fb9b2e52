//! Which engine reads a statement's segments: this node, or the cluster's
//! workers (`SET auditlake.engine = local | distributed | auto`).
//!
//! The choice is made in the scan, once the manifest has pruned the
//! segments, because only then is it known how much there is to read:
//! `auto` hands a scan to the workers when more than
//! `auditlake.distribute_above_bytes` is left (1 GiB by default), and
//! keeps actor and content lookups here, where the row indexes answer them
//! in milliseconds. For a session scoped to one organisation the bytes
//! counted are that organisation's own share of each segment (from the
//! manifest's per-organisation row counts), so the choice does not depend
//! on how much other organisations logged.
//!
//! This module decides only; the fragment it leads to is in
//! [`fragment`](super::fragment), the network in [`crate::cluster`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, internal_err, plan_err};
use datafusion::execution::SessionState;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;

use crate::storage::segment::LiveSegment;

use super::fragment::FragmentScanExec;
use super::lookup_path::AuditlakeOptions;
use super::{Scope, SessionScope};

/// The default of `auditlake.distribute_above_bytes`: 1 GiB.
pub const DEFAULT_DISTRIBUTE_ABOVE_BYTES: u64 = 1 << 30;

/// The values `auditlake.engine` takes.
pub const ENGINES: [&str; 3] = ["local", "distributed", "auto"];

/// Present in the session config of a node started with workers: how many
/// answer now. A node without it has no workers to hand scans to.
#[derive(Debug, Clone)]
pub struct Workers(pub Arc<AtomicUsize>);

impl Workers {
    fn answering(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the scan decided, and why (shown by `EXPLAIN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub distributed: bool,
    pub why: String,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let engine = if self.distributed { "distributed" } else { "local" };
        write!(f, "engine={engine} ({})", self.why)
    }
}

/// The engine for a scan of `segments` (what is left after the manifest
/// pruned), `org`'s share of them if scoped. `None` on a node without
/// workers, whose scans are all local and say nothing about engines.
pub fn choose(
    state: &dyn Session,
    org: Option<&str>,
    segments: &[Arc<LiveSegment>],
    is_lookup: bool,
) -> Result<Option<Choice>> {
    let options = options(state);
    let workers = state.config().get_extension::<Workers>();
    let choice = |distributed: bool, why: String| Ok(Some(Choice { distributed, why }));
    match (options.engine.as_str(), workers) {
        ("local", None) | ("auto", None) => Ok(None),
        ("distributed", None) => {
            plan_err!("auditlake.engine = distributed needs workers: this node was started without --workers")
        }
        ("distributed", Some(w)) if w.answering() == 0 => {
            plan_err!("auditlake.engine = distributed, but no worker answers; SET auditlake.engine = local reads here")
        }
        ("auto", Some(w)) if w.answering() == 0 => choice(false, "auto: no worker answers".into()),
        ("local", Some(_)) => choice(false, "set by the session".into()),
        ("distributed", Some(_)) => choice(true, "set by the session".into()),
        ("auto", Some(_)) if is_lookup => choice(false, "auto: a lookup the row indexes answer".into()),
        ("auto", Some(_)) => {
            let bytes = bytes_to_read(org, segments);
            let limit = options.distribute_above_bytes;
            let (size, limit_size) = (human_bytes(bytes), human_bytes(limit));
            if bytes > limit {
                choice(true, format!("auto: {size} to read, over {limit_size}"))
            } else {
                choice(false, format!("auto: {size} to read, within {limit_size}"))
            }
        }
        (other, _) => plan_err!("auditlake.engine is {other:?}; it takes one of {}", ENGINES.join(", ")),
    }
}

/// Plans on this node what must not run on workers, whatever the session
/// chose, and passes everything else to `inner` (the distributed planner):
/// - an organisation's `EXPLAIN ANALYZE`: the metrics of a distributed run
///   (each worker's rows, bytes and timings) are for admins only, and the
///   local run's are the ones the barrier was built for (see `barrier`);
/// - a statement still calling `ugc_hash` once constants are folded (over a
///   column, say): it needs organisations' keys, which stay here.
#[derive(Debug)]
pub struct StaysHere {
    pub scope: SessionScope,
    pub inner: Arc<dyn QueryPlanner + Send + Sync>,
}

#[async_trait]
impl QueryPlanner for StaysHere {
    async fn create_physical_plan(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        let scoped = matches!(self.scope.get(), Some(Scope::Org(_)));
        let analyzed_by_org = scoped && matches!(plan, LogicalPlan::Analyze(_));
        if !analyzed_by_org && !calls(plan, UGC_HASH)? {
            return self.inner.create_physical_plan(plan, session).await;
        }
        let mut here = own_state(session)?;
        if let Some(options) = here.config_mut().options_mut().extensions.get_mut::<AuditlakeOptions>() {
            options.engine = "local".to_owned();
        }
        self.inner.create_physical_plan(plan, &here).await
    }
}

/// The fewest partitions a statement whose scans go to the workers is
/// planned over. With one (a coordinator of one core), DataFusion plans an
/// aggregate's last step over a single partition, which only this node can
/// run: every group of an all-organisation report would be merged here, on
/// one core and in this node's memory, while the workers wait.
const MIN_DISTRIBUTED_PARTITIONS: usize = 2;

/// Plans again, at least [`MIN_DISTRIBUTED_PARTITIONS`] wide, a statement
/// whose scans the engine sent to the workers, so that the distributed
/// planner finds the hash repartitioning it cuts into stages, and the
/// workers run the aggregates' and joins' last steps too. Local statements
/// keep the session's own width: a second partition on a node of one core
/// only costs them. Under `auto` the engine is chosen in the scan, after
/// the manifest pruned, so it is known only once planned: the first plan
/// is dropped, with the segments it pinned, and the statement planned again.
#[derive(Debug)]
pub struct WideForWorkers {
    pub inner: Arc<dyn QueryPlanner + Send + Sync>,
}

#[async_trait]
impl QueryPlanner for WideForWorkers {
    async fn create_physical_plan(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        if session.config().target_partitions() >= MIN_DISTRIBUTED_PARTITIONS {
            return self.inner.create_physical_plan(plan, session).await;
        }
        let wider = || {
            let mut wider = own_state(session)?;
            wider.config_mut().options_mut().execution.target_partitions = MIN_DISTRIBUTED_PARTITIONS;
            Ok::<_, DataFusionError>(wider)
        };
        // Chosen by the session: no need to plan to know.
        if options(session).engine == "distributed" {
            return self.inner.create_physical_plan(plan, &wider()?).await;
        }
        let planned = self.inner.create_physical_plan(plan, session).await?;
        if !planned.exists(|node| Ok(node.is::<FragmentScanExec>()))? {
            return Ok(planned);
        }
        drop(planned);
        self.inner.create_physical_plan(plan, &wider()?).await
    }
}

/// The session's `auditlake.*` settings.
fn options(session: &dyn Session) -> AuditlakeOptions {
    session.config_options().extensions.get::<AuditlakeOptions>().cloned().unwrap_or_default()
}

/// A copy of `session`'s state, to plan a statement again with other settings.
fn own_state(session: &dyn Session) -> Result<SessionState> {
    match session.as_any().downcast_ref::<SessionState>() {
        Some(state) => Ok(state.clone()),
        None => internal_err!("statements plan in DataFusion's own sessions only"),
    }
}

/// The name of the function that needs organisations' keys.
const UGC_HASH: &str = "ugc_hash";

/// Whether `plan` (its subqueries included) calls the function `name`.
fn calls(plan: &LogicalPlan, name: &str) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        for expr in node.expressions() {
            found |= expr.exists(|e| Ok(matches!(e, Expr::ScalarFunction(f) if f.name() == name)))?;
        }
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    Ok(found)
}

/// What a scan of `segments` reads: whole segments, or for `org` its share
/// of each, in proportion to its rows (a segment that does not list its
/// organisations counts whole).
fn bytes_to_read(org: Option<&str>, segments: &[Arc<LiveSegment>]) -> u64 {
    segments
        .iter()
        .map(|s| {
            let meta = &s.meta;
            match org.and_then(|org| meta.org_rows(org)) {
                Some(rows) if meta.rows > 0 => {
                    (u128::from(meta.size_bytes) * u128::from(rows.end - rows.start) / u128::from(meta.rows)) as u64
                }
                _ => meta.size_bytes,
            }
        })
        .sum()
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = "bytes";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if unit == "bytes" { format!("{bytes} bytes") } else { format!("{value:.1} {unit}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(DEFAULT_DISTRIBUTE_ABOVE_BYTES), "1.0 GiB");
    }
}
