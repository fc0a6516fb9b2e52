//! Plan nodes that are leaves to everything above them: the generic node,
//! and what each kind of it adds (a name, a line in `EXPLAIN`, and the plan
//! it reads, found or built where it runs).
//!
//! Being a leaf, such a node lets no optimizer rule, dynamic filter or
//! projection through, shows nothing of the plan below in `EXPLAIN` or
//! `EXPLAIN ANALYZE` but the rows it hands on, declares no order and no
//! statistics, and hands rows on in a fixed number of partitions: partition
//! `i` streams the inner plan's partitions `i`, `i + n`, `i + 2n`, ... one
//! after another. It never changes a row.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, Statistics, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
    SendableRecordBatchStream,
};
use futures::StreamExt;

/// What one kind of opaque node adds.
pub trait Opaque: fmt::Debug + Send + Sync + 'static {
    /// The node's name in plans.
    const NAME: &'static str;

    /// The rest of its line in `EXPLAIN`, after `NAME: `.
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;

    /// The plan below, where the node runs.
    fn inner(&self, context: &TaskContext) -> Result<Arc<dyn ExecutionPlan>>;
}

#[derive(Debug)]
pub struct OpaqueExec<T> {
    node: T,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl<T: Opaque> OpaqueExec<T> {
    /// `node`, handing on rows of `schema` in `partitions` partitions.
    pub fn over(node: T, schema: SchemaRef, partitions: usize) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        OpaqueExec { node, properties: Arc::new(properties), metrics: ExecutionPlanMetricsSet::new() }
    }

    pub fn node(&self) -> &T {
        &self.node
    }
}

impl<T: Opaque> DisplayAs for OpaqueExec<T> {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", T::NAME)?;
        self.node.describe(f)
    }
}

impl<T: Opaque> ExecutionPlan for OpaqueExec<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    /// None: the plan below is never shown, optimised or pushed into.
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return internal_err!("{} has no inputs, got {}", T::NAME, children.len());
        }
        Ok(self)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let inner = self.node.inner(&context)?;
        let outputs = self.properties.partitioning.partition_count();
        let inputs = inner.properties().partitioning.partition_count();
        let streams = (partition..inputs)
            .step_by(outputs)
            .map(|i| inner.execute(i, Arc::clone(&context)))
            .collect::<Result<Vec<_>>>()?;
        // Only the rows handed on are counted: they are the scope's.
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let rows = futures::stream::iter(streams).flatten().inspect(move |batch| {
            if let Ok(batch) = batch {
                output_rows.add(batch.num_rows());
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), rows)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    /// Unknown: the files' statistics count every organisation's rows.
    #[allow(deprecated)]
    fn partition_statistics(&self, _partition: Option<usize>) -> Result<Arc<Statistics>> {
        Ok(Arc::new(Statistics::new_unknown(&self.schema())))
    }
}
