//! The top of every `audit_events` scan in a plan: it does nothing to the
//! rows and exists so that `EXPLAIN` and `EXPLAIN ANALYZE` say how the
//! manifest pruned the log, e.g.
//! `AuditEventsScanExec: segments_read=3, segments_pruned=17, buffered_batches=2`.
//! Row groups, pages and rows skipped inside the segments read are in the
//! Parquet scan's own metrics below it.
//!
//! Being transparent, it passes ordering, statistics, limits and filter
//! pushdown (e.g. a `LIMIT`'s dynamic filter) straight through to its input.

use std::fmt;
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Statistics, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};

/// What the manifest did for one scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    pub segments_read: usize,
    pub segments_pruned: usize,
    pub buffered_batches: usize,
}

#[derive(Debug)]
pub struct AuditEventsScanExec {
    input: Arc<dyn ExecutionPlan>,
    summary: ScanSummary,
}

impl AuditEventsScanExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, summary: ScanSummary) -> Self {
        AuditEventsScanExec { input, summary }
    }
}

impl DisplayAs for AuditEventsScanExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ScanSummary { segments_read, segments_pruned, buffered_batches } = self.summary;
        write!(
            f,
            "AuditEventsScanExec: segments_read={segments_read}, segments_pruned={segments_pruned}, \
             buffered_batches={buffered_batches}"
        )
    }
}

impl ExecutionPlan for AuditEventsScanExec {
    fn name(&self) -> &'static str {
        "AuditEventsScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("AuditEventsScanExec has one input, got {}", children.len());
        }
        Ok(Arc::new(AuditEventsScanExec { input: children.swap_remove(0), summary: self.summary }))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(datafusion::physical_plan::ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(Arc::clone(&input_stats[0]))
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }
}
