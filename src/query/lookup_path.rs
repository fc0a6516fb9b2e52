//! The short road for the statements investigations send most: "what did
//! this person do", "who touched this page". Such a statement reads one
//! table through a filter that names actors or content ids, and at most
//! sorts, projects and limits what it finds; its best plan is known before
//! any optimizer looks at it. DataFusion's optimizers cost more than the
//! lookup itself (about a third of a 5 ms lookup, see BENCHMARKS.md), so
//! this module builds that plan directly: the table's own scan (with its
//! tenant scope, pruning and row indexes, exactly as for any statement),
//! the filters the scan does not apply exactly, the sort, the projections,
//! the limit, and the statement's limits on top.
//!
//! Every other statement (joins, aggregates, subqueries, window functions,
//! scans without a lookup key) takes DataFusion's full road: this module
//! answers `None` for anything it does not recognise, and never changes
//! what a statement returns, only how its plan is found.

use std::sync::Arc;

use async_trait::async_trait;

use datafusion::arrow::compute::SortOptions;
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::common::config::ConfigExtension;
use datafusion::common::display::ToStringifiedPlan;
use datafusion::common::format::{ExplainAnalyzeCategories, ExplainFormat};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, internal_err};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::source_as_provider;
use datafusion::execution::SessionState;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::logical_plan::{FetchType, SkipType};
use datafusion::logical_expr::{Analyze, Explain, Expr, Limit, LogicalPlan, PlanType, StringifiedPlan, TableScan};
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_plan::analyze::AnalyzeExec;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::displayable;
use datafusion::physical_plan::explain::ExplainExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

use super::AuditEventsTable;
use super::index_lookup::{self, Keyed};
use super::limits::StatementLimitsRule;
use super::scan_exec::AuditEventsScanExec;

datafusion::common::extensions_options! {
    /// Settings of auditlake's own in a session (`SET auditlake.…`, admins only).
    pub struct AuditlakeOptions {
        /// Whether actor and content lookups take this module's road; off,
        /// DataFusion plans them as every other statement (to compare the two).
        pub lookup_path: bool, default = true
        /// Which engine reads segments: `local`, `distributed` (the
        /// cluster's workers) or `auto` (see `engine`). Every user may set it.
        pub engine: String, default = "auto".to_owned()
        /// Under `auto`, the bytes left to read after pruning above which a
        /// scan goes to the workers.
        pub distribute_above_bytes: u64, default = super::engine::DEFAULT_DISTRIBUTE_ABOVE_BYTES
    }
}

impl ConfigExtension for AuditlakeOptions {
    const PREFIX: &'static str = "auditlake";
}

/// Plans with the lookup path first, and with DataFusion's planner (and
/// its physical optimizers) what that path does not take.
#[derive(Debug, Default)]
pub struct LookupFirstPlanner;

#[async_trait]
impl QueryPlanner for LookupFirstPlanner {
    async fn create_physical_plan(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
            return internal_err!("the lookup path plans in DataFusion's own sessions only");
        };
        // `EXPLAIN` and `EXPLAIN ANALYZE` show the plan the statement runs.
        let planned = match plan {
            LogicalPlan::Explain(explain) => explained(state, explain).await?,
            LogicalPlan::Analyze(analyze) => analyzed(state, analyze).await?,
            _ => self::plan(state, plan).await?,
        };
        match planned {
            Some(planned) => Ok(planned),
            None => DefaultPhysicalPlanner::default().create_physical_plan(plan, state).await,
        }
    }
}

/// `EXPLAIN` of a lookup as DataFusion shows any plan (the indented form):
/// the logical plans, then the physical plan this module made.
async fn explained(state: &SessionState, explain: &Explain) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let shown = explain.logical_optimization_succeeded && explain.explain_format == ExplainFormat::Indent;
    if !shown || explain.verbose {
        return Ok(None);
    }
    let Some(physical) = plan(state, &explain.plan).await? else { return Ok(None) };
    let options = &state.config_options().explain;
    let mut plans = Vec::new();
    if !options.physical_plan_only {
        plans.clone_from(&explain.stringified_plans);
        plans.push(explain.plan.to_stringified(PlanType::FinalLogicalPlan));
    }
    if !options.logical_plan_only {
        let shown = displayable(physical.as_ref())
            .set_show_statistics(explain.show_statistics.unwrap_or(options.show_statistics))
            .set_show_schema(options.show_schema)
            .indent(false)
            .to_string();
        plans.push(StringifiedPlan::new(PlanType::FinalPhysicalPlan, shown));
    }
    Ok(Some(Arc::new(ExplainExec::new(Arc::clone(explain.schema.inner()), plans, false))))
}

/// `EXPLAIN ANALYZE` of a lookup: the plan this module made, run and measured.
async fn analyzed(state: &SessionState, analyze: &Analyze) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(input) = plan(state, &analyze.input).await? else { return Ok(None) };
    let options = &state.config_options().explain;
    let level = analyze.analyze_level.unwrap_or(options.analyze_level);
    let categories = match analyze.analyze_categories.clone().unwrap_or_else(|| options.analyze_categories.clone()) {
        ExplainAnalyzeCategories::All => None,
        ExplainAnalyzeCategories::Only(categories) => Some(categories),
    };
    let schema = Arc::clone(analyze.schema.inner());
    let exec = AnalyzeExec::builder(analyze.verbose, options.show_statistics, input, schema)
        .with_metric_types(level.included_types())
        .with_metric_categories(categories)
        .with_format(analyze.format.clone())
        .build();
    Ok(Some(Arc::new(exec)))
}

/// The plan of `plan` (optimised by DataFusion's logical optimizer) when it
/// is a lookup this module plans itself, `None` when DataFusion should.
pub async fn plan(state: &SessionState, plan: &LogicalPlan) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if !state.config_options().extensions.get::<AuditlakeOptions>().is_none_or(|o| o.lookup_path) {
        return Ok(None);
    }
    let Some(shape) = Shape::of(plan) else { return Ok(None) };
    let table = source_as_provider(&shape.scan.source)?;
    // The table read in full is the reference every road is checked against.
    if !table.downcast_ref::<AuditEventsTable>().is_some_and(|t| t.pushdown) {
        return Ok(None);
    }
    // The statement's timeout, row limit and cancel, as every plan gets them.
    let Some(limits) = state.physical_optimizers().iter().find(|r| r.name() == StatementLimitsRule::NAME) else {
        return Ok(None);
    };
    let built = shape.build(state, table.as_ref()).await?;
    Ok(Some(limits.optimize(built, state.config_options())?))
}

/// A statement of the recognised shape, top down: projections, sorts,
/// limits and filters over one scan of `audit_events` with a lookup among
/// its filters.
struct Shape<'a> {
    above: Vec<&'a LogicalPlan>,
    scan: &'a TableScan,
}

impl<'a> Shape<'a> {
    fn of(plan: &'a LogicalPlan) -> Option<Shape<'a>> {
        let mut above = Vec::new();
        let mut node = plan;
        loop {
            let input = match node {
                LogicalPlan::Projection(p) if p.expr.iter().all(plain) => &p.input,
                LogicalPlan::Sort(s) if !s.expr.is_empty() && s.expr.iter().all(|e| plain(&e.expr)) => &s.input,
                LogicalPlan::Filter(f) if plain(&f.predicate) => &f.input,
                LogicalPlan::Limit(limit) if limit_of(limit).is_some() => &limit.input,
                LogicalPlan::TableScan(scan) if scan.filters.iter().all(plain) => {
                    // Only lookups: the rows an index names bound what is
                    // read, so no optimizer's limit or dynamic filter could
                    // read less.
                    let keyed = index_lookup::wanted(&scan.filters);
                    if !keyed.iter().any(|w| matches!(w.keyed, Keyed::Actor | Keyed::Content)) {
                        return None;
                    }
                    return Some(Shape { above, scan });
                }
                _ => return None,
            };
            above.push(node);
            node = input;
        }
    }

    /// The plan DataFusion's planner would start from for these nodes,
    /// node for node, with the scan's partitions merged where a sort or a
    /// limit needs all rows.
    async fn build(self, state: &SessionState, table: &dyn TableProvider) -> Result<Arc<dyn ExecutionPlan>> {
        let filters: Vec<Expr> = self.scan.filters.iter().cloned().map(unnormalize_col).collect();
        let scan = table.scan(state, self.scan.projection.as_ref(), &filters, self.scan.fetch).await?;
        let mut plan = spread_over_partitions(scan, state)?;
        let mut input: &DFSchema = self.scan.projected_schema.as_ref();
        let mut top_n = false;
        for (i, node) in self.above.iter().enumerate().rev() {
            plan = match node {
                LogicalPlan::Filter(filter) => {
                    let predicate = state.create_physical_expr(filter.predicate.clone(), input)?;
                    let filtered = Arc::new(FilterExec::try_new(predicate, plan)?);
                    // The one optimizer rule the road keeps: it hands the
                    // filters the scan does not apply exactly (a time range)
                    // to the Parquet source, to prune row groups and pages
                    // and to decode the other columns of matching rows only.
                    // It never passes below an organisation's scope.
                    FilterPushdown::new().optimize(filtered, state.config_options())?
                }
                LogicalPlan::Sort(sort) => {
                    let mut ordering = Vec::with_capacity(sort.expr.len());
                    for e in &sort.expr {
                        let expr = state.create_physical_expr(e.expr.clone(), input)?;
                        let options = SortOptions { descending: !e.asc, nulls_first: e.nulls_first };
                        ordering.push(PhysicalSortExpr { expr, options });
                    }
                    let Some(ordering) = LexOrdering::new(ordering) else {
                        return internal_err!("a sort without keys on the lookup road");
                    };
                    // A limit right above the sort keeps only the top rows while sorting.
                    let fetch = match (sort.fetch, i.checked_sub(1).map(|j| self.above[j])) {
                        (Some(fetch), _) => Some(fetch),
                        (None, Some(LogicalPlan::Limit(limit))) => match limit_of(limit) {
                            Some((skip, Some(fetch))) => Some(skip.saturating_add(fetch)),
                            _ => None,
                        },
                        _ => None,
                    };
                    top_n |= fetch.is_some();
                    // Each partition sorts its rows, then one merge: a
                    // frequent content id's thousands of rows sort on both cores.
                    let partitions = plan.output_partitioning().partition_count();
                    let sort = SortExec::new(ordering.clone(), plan).with_fetch(fetch);
                    if partitions > 1 {
                        let sorted = Arc::new(sort.with_preserve_partitioning(true));
                        Arc::new(SortPreservingMergeExec::new(ordering, sorted).with_fetch(fetch))
                    } else {
                        Arc::new(sort)
                    }
                }
                LogicalPlan::Projection(projection) => {
                    let mut exprs = Vec::with_capacity(projection.expr.len());
                    for (e, field) in projection.expr.iter().zip(projection.schema.fields()) {
                        exprs.push((state.create_physical_expr(e.clone(), input)?, field.name().clone()));
                    }
                    Arc::new(ProjectionExec::try_new(exprs, plan)?)
                }
                LogicalPlan::Limit(limit) => {
                    let Some((skip, fetch)) = limit_of(limit) else {
                        return internal_err!("a limit that is not a number on the lookup road");
                    };
                    Arc::new(GlobalLimitExec::new(one_partition(plan), skip, fetch))
                }
                other => return internal_err!("{} on the lookup road", other.display()),
            };
            input = node.schema().as_ref();
        }
        // "The newest n of an actor": the sort's top-n hands the scan a
        // dynamic filter (time above the n-th newest so far), which rules
        // out the row groups of older segments (read newest first) from
        // their footers alone. The second half of DataFusion's filter
        // pushdown, which only such a sort needs.
        if top_n {
            plan = FilterPushdown::new_post_optimization().optimize(plan, state.config_options())?;
        }
        // `StatementLimitsRule` merges what partitions are left.
        Ok(plan)
    }
}

/// The scan's files split into byte ranges over the session's partitions
/// where they are large enough, as DataFusion's optimizer splits them, when
/// the scan reads rows no index listed: a frequent content id's rows are
/// then read from one large segment on both cores.
fn spread_over_partitions(scan: Arc<dyn ExecutionPlan>, state: &SessionState) -> Result<Arc<dyn ExecutionPlan>> {
    let config = state.config_options();
    // Rows an index listed are a few pages: one more opening of a file per
    // partition costs more than it saves (about 0.5 ms of a 4 ms lookup).
    let reads_many = scan.exists(|node| {
        Ok(node.downcast_ref::<AuditEventsScanExec>().is_some_and(|scan| scan.node().reads_unlisted_rows()))
    })?;
    if !config.optimizer.repartition_file_scans || !reads_many {
        return Ok(scan);
    }
    let partitions = config.execution.target_partitions;
    let spread = scan.transform_up(|node| {
        if !node.is::<DataSourceExec>() {
            return Ok(Transformed::no(node));
        }
        Ok(match node.repartitioned(partitions, config)? {
            Some(spread) => Transformed::yes(spread),
            None => Transformed::no(node),
        })
    })?;
    Ok(spread.data)
}

/// `OFFSET` and `LIMIT` as numbers, when they are literals.
fn limit_of(limit: &Limit) -> Option<(usize, Option<usize>)> {
    match (limit.get_skip_type().ok()?, limit.get_fetch_type().ok()?) {
        (SkipType::Literal(skip), FetchType::Literal(fetch)) => Some((skip, fetch)),
        _ => None,
    }
}

fn one_partition(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    if plan.output_partitioning().partition_count() > 1 { Arc::new(CoalescePartitionsExec::new(plan)) } else { plan }
}

/// An expression evaluated row by row on this one table: no subquery, no
/// reference to an outer query, no parameter left unbound.
fn plain(expr: &Expr) -> bool {
    !expr
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_)
                    | Expr::Exists(_)
                    | Expr::InSubquery(_)
                    | Expr::SetComparison(_)
                    | Expr::OuterReferenceColumn(..)
                    | Expr::Placeholder(_)
                    | Expr::AggregateFunction(_)
                    | Expr::WindowFunction(_)
                    | Expr::GroupingSet(_)
                    | Expr::Unnest(_)
            ))
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;
    use crate::query::{QueryConfig, new_session_context};
    use crate::storage::{Storage, StorageConfig};

    async fn takes_the_road(ctx: &datafusion::prelude::SessionContext, sql: &str) -> bool {
        let optimized = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
        plan(&ctx.state(), &optimized).await.unwrap().is_some()
    }

    /// The rows as text, in an order of their own (the order of sorted
    /// statements is checked by the property test in `query`).
    fn sorted_lines(batches: &[datafusion::arrow::array::RecordBatch]) -> Vec<String> {
        let text = datafusion::arrow::util::pretty::pretty_format_batches(batches).unwrap().to_string();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_take_the_short_road_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        let events: Vec<Event> = (0..40)
            .map(|i| Event {
                time_us: 1_795_000_000_000_000 + i * 1_000_000,
                id: format!("e{i}"),
                org_id: ["acme", "globex"][i as usize % 2].into(),
                actor_id: format!("u{}", i % 4),
                content_id: Some(format!("c{}", i % 3)),
                action: "page.viewed".into(),
                ..Event::default()
            })
            .collect();
        storage.append(events[..20].to_vec()).await.unwrap();
        let sealer = storage.clone();
        tokio::task::spawn_blocking(move || sealer.seal_now().unwrap()).await.unwrap();
        storage.append(events[20..].to_vec()).await.unwrap();
        let ctx = new_session_context(&storage, &QueryConfig::default()).unwrap();

        let lookups = [
            "select time, action, source_ip, content_id from audit_events where actor_id = 'u1' \
             and time > timestamptz '2026-11-18T00:00:00Z' - interval '7 days' order by time, seq",
            "select time, actor_id, action from audit_events where content_id in ('c1', 'c2') order by time desc limit 5",
            "select upper(action) as a, seq + 1 from audit_events where actor_id = 'u2' and action like 'page.%' order by seq limit 3 offset 1",
            "select * from audit_events where content_id = 'c0'",
        ];
        for sql in lookups {
            assert!(takes_the_road(&ctx, sql).await, "{sql}");
        }
        let others = [
            "select count(*) from audit_events where actor_id = 'u1'",
            "select * from audit_events where action = 'page.viewed' order by time desc limit 5",
            "select * from audit_events where org_id = 'acme'",
            "select distinct action from audit_events where actor_id = 'u1'",
            "select a.seq from audit_events a join audit_events b on a.seq = b.seq where a.actor_id = 'u1'",
            "select seq from audit_events where actor_id = 'u1' and seq in (select seq from audit_events where content_id = 'c1')",
            "select seq, row_number() over (order by time) from audit_events where actor_id = 'u1'",
            "select seq from audit_events where actor_id = 'u1' union all select seq from audit_events where actor_id = 'u2'",
        ];
        for sql in others {
            assert!(!takes_the_road(&ctx, sql).await, "{sql}");
        }
        // `EXPLAIN` shows the plan the road makes, `EXPLAIN ANALYZE` runs it.
        let optimized = ctx.sql(lookups[1]).await.unwrap().into_optimized_plan().unwrap();
        let road = plan(&ctx.state(), &optimized).await.unwrap().unwrap();
        let explain = ctx.sql(&format!("explain {}", lookups[1])).await.unwrap().collect().await.unwrap();
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&explain).unwrap().to_string();
        let expected = displayable(road.as_ref()).indent(false).to_string();
        for line in expected.lines() {
            assert!(shown.contains(line.trim_end()), "{line} not in {shown}");
        }
        assert!(expected.contains("StatementLimitsExec"), "{expected}");
        let analyze = ctx.sql(&format!("explain analyze {}", lookups[1])).await.unwrap().collect().await.unwrap();
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&analyze).unwrap().to_string();
        assert!(shown.contains("StatementLimitsExec") && shown.contains("output_rows=5"), "{shown}");
        // An admin can turn the road off to compare.
        let off = new_session_context(&storage, &QueryConfig::default()).unwrap();
        off.sql("set auditlake.lookup_path = false").await.unwrap().collect().await.unwrap();
        assert!(!takes_the_road(&off, lookups[0]).await);
        assert!(takes_the_road(&ctx, lookups[0]).await, "a setting of one session only");

        // What the road answers is what DataFusion's road answers, row for row.
        let reference = |sql: &str| {
            let ctx = ctx.clone();
            let sql = sql.to_string();
            async move {
                let df = ctx.sql(&sql).await.unwrap();
                let (state, logical) = df.into_parts();
                let optimized = state.optimize(&logical).unwrap();
                let physical =
                    DefaultPhysicalPlanner::default().create_physical_plan(&optimized, &state).await.unwrap();
                let batches = datafusion::physical_plan::collect(physical, state.task_ctx()).await.unwrap();
                sorted_lines(&batches)
            }
        };
        for sql in lookups {
            let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            let ours = sorted_lines(&batches);
            assert!(ours.len() > 4, "{sql} found rows: {ours:?}");
            assert_eq!(ours, reference(sql).await, "{sql}");
        }
        storage.shutdown();
    }
}
