//! SQL over the log: the `audit_events` table provider and the DataFusion
//! session every query runs in.
//!
//! The provider plans only: it takes one storage [`Snapshot`], then builds a
//! scan of the buffered Arrow batches and of the sealed Parquet segments, and
//! unions them. Filters are handed to DataFusion's Parquet source as a pruning
//! predicate (row-group statistics, bloom filters, page index) and reported as
//! `Inexact`, so DataFusion re-applies them above the scan; later pruning work
//! (manifest statistics, tenant scoping) extends this one path.
//!
//! This layer never writes to storage and never sees a connection.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::TableParquetOptions;
use datafusion::common::{DFSchema, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::model;
use crate::storage::Storage;

/// The catalog and schema clients see: `auditlake.public.audit_events`.
pub const CATALOG: &str = "auditlake";
pub const SCHEMA: &str = "public";
pub const TABLE: &str = "audit_events";

/// The `audit_events` table: buffered and sealed events of one storage engine.
#[derive(Debug)]
pub struct AuditEventsTable {
    storage: Storage,
}

impl AuditEventsTable {
    pub fn new(storage: Storage) -> Self {
        AuditEventsTable { storage }
    }
}

#[async_trait]
impl TableProvider for AuditEventsTable {
    fn schema(&self) -> SchemaRef {
        model::schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Every filter is used for pruning, none is guaranteed exact yet.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = model::schema();
        let snapshot = self.storage.snapshot();
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        if !snapshot.buffer.is_empty() {
            // Spread the buffered batches over partitions so both cores scan.
            let partitions_wanted = state.config().target_partitions().clamp(1, snapshot.buffer.len());
            let mut partitions = vec![Vec::new(); partitions_wanted];
            for (i, batch) in snapshot.buffer.into_iter().enumerate() {
                partitions[i % partitions_wanted].push(batch);
            }
            let memory =
                MemorySourceConfig::try_new(&partitions, Arc::clone(&schema), projection.cloned())?.with_limit(limit);
            inputs.push(DataSourceExec::from_data_source(memory));
        }

        if !snapshot.segments.is_empty() {
            // The session's Parquet options, so `SET datafusion.execution.parquet.*`
            // works per connection; strings stay `Utf8` as in our schema.
            let mut options =
                TableParquetOptions { global: state.config_options().execution.parquet.clone(), ..Default::default() };
            options.global.schema_force_view_types = false;
            let mut source = ParquetSource::new(Arc::clone(&schema)).with_table_parquet_options(options);
            if let Some(predicate) = conjunction(filters.to_vec()) {
                let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
                source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
            }
            let files = snapshot
                .segments
                .iter()
                .map(|s| {
                    // The plan holds the segment: compaction cannot delete its
                    // file while this query may still open it.
                    PartitionedFile::new(s.object_location(), s.meta.size_bytes).with_extension(Arc::clone(s))
                })
                .collect();
            let store_url = self.storage.segment_store().url().clone();
            let config = FileScanConfigBuilder::new(store_url, Arc::new(source))
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .with_file_group(FileGroup::new(files))
                .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }

        Ok(match inputs.len() {
            0 => {
                let projected = match projection {
                    Some(p) => Arc::new(schema.project(p)?),
                    None => schema,
                };
                Arc::new(EmptyExec::new(projected))
            }
            1 => inputs.pop().expect("one input"),
            _ => UnionExec::try_new(inputs)?,
        })
    }
}

/// A fresh DataFusion session over `storage` with `audit_events` registered.
/// Each Postgres connection gets its own, so `SET` in one never leaks into another.
pub fn new_session_context(storage: &Storage) -> Result<SessionContext> {
    let config = SessionConfig::new().with_information_schema(true).with_default_catalog_and_schema(CATALOG, SCHEMA);
    let ctx = SessionContext::new_with_config(config);
    let segments = storage.segment_store();
    ctx.register_object_store(segments.url().as_ref(), segments.object_store());
    ctx.register_table(TABLE, Arc::new(AuditEventsTable::new(storage.clone())))?;
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;
    use crate::storage::StorageConfig;
    use crate::storage::compaction::CompactionPolicy;
    use datafusion::arrow::array::{AsArray, RecordBatch};
    use datafusion::arrow::datatypes::Int64Type;

    fn events(batch: usize, n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                time_us: 1_795_000_000_000_000 + (batch * n + i) as i64,
                id: format!("b{batch}-{i}"),
                org_id: "acme".into(),
                actor_id: format!("u{}", i % 5),
                action: "jira.issue.viewed".into(),
                ..Event::default()
            })
            .collect()
    }

    fn int(batches: &[RecordBatch], column: usize) -> i64 {
        batches[0].column(column).as_primitive::<Int64Type>().value(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sealing_never_shows_an_event_twice_or_hides_it() {
        const BATCHES: usize = 20;
        const ROWS: usize = 100;
        let dir = tempfile::tempdir().unwrap();
        let compaction = CompactionPolicy { target_rows: 500, min_inputs: 3 };
        let config = StorageConfig { seal_after_ms: 3_600_000, compaction, ..StorageConfig::new(dir.path()) };
        let storage = Storage::open(config).unwrap();
        let ctx = new_session_context(&storage).unwrap();

        let writer = storage.clone();
        let ingest_and_seal = tokio::spawn(async move {
            for batch in 0..BATCHES {
                writer.append(events(batch, ROWS)).await.unwrap();
                let sealer = writer.clone();
                tokio::task::spawn_blocking(move || {
                    sealer.seal_now().unwrap();
                    sealer.compact_now().unwrap();
                })
                .await
                .unwrap();
            }
        });
        let mut last_count = 0;
        let mut queries = 0;
        while !ingest_and_seal.is_finished() || queries == 0 {
            let result = ctx
                .sql("select count(*), count(distinct id), cast(max(seq) as bigint) from audit_events")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let (count, distinct, max_seq) = (int(&result, 0), int(&result, 1), int(&result, 2));
            assert_eq!(count, distinct, "an event was seen twice");
            assert_eq!(count % ROWS as i64, 0, "a batch was seen in part");
            assert!(count >= last_count, "events vanished: {count} after {last_count}");
            assert!(count == 0 || max_seq == count, "seqs are not contiguous");
            last_count = count;
            queries += 1;
        }
        ingest_and_seal.await.unwrap();
        // Each run of three 100-row segments is merged once (300 rows is no
        // longer small: at least 500 / 3): six merged, two left from the end.
        assert_eq!(storage.stats().segments, BATCHES / 3 + BATCHES % 3);
        let result = ctx.sql("select count(*) from audit_events where actor_id = 'u3'").await.unwrap();
        assert_eq!(int(&result.collect().await.unwrap(), 0), (BATCHES * ROWS / 5) as i64);
    }
}
