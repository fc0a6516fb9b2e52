//! SQL from the command line (`auditlake query`): one read-only statement,
//! run either in-process over a data directory or against a running server
//! over the Postgres wire, its rows rendered as a table, CSV or JSON.
//!
//! Either way the answer arrives as Arrow batches, so the renderers exist
//! once. This module never writes to stdout (the CLI does) and never changes
//! the log: in-process, DataFusion itself refuses DDL, DML, `COPY` and
//! session statements; a server enforces its own read-only gate.

use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use tokio_postgres::types::Type;

use crate::query;
use crate::storage::{Storage, StorageConfig, StorageError};

/// Where a statement runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// In this process, over a data directory no server is using.
    DataDir(StorageConfig),
    /// A running server: a libpq connection string or `postgres://` URL.
    Server(String),
}

/// How rows are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for reading.
    Table,
    /// A header line, then one line per row.
    Csv,
    /// One JSON array of objects, column names as keys.
    Json,
    /// One JSON object per line (NDJSON), column names as keys.
    Jsonl,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no data directory at {}", .0.display())]
    NoDataDir(std::path::PathBuf),
    #[error("cannot open the data directory (is a server using it? then pass --server): {0}")]
    Storage(#[from] StorageError),
    #[error("cannot execute {0}: auditlake query is read-only")]
    ReadOnly(String),
    #[error("{0}")]
    Syntax(#[from] datafusion::sql::sqlparser::parser::ParserError),
    #[error("{0}")]
    Query(#[from] DataFusionError),
    #[error("server: {0}")]
    Server(#[from] tokio_postgres::Error),
    #[error("column {column} has type {type_name}, which auditlake query cannot show yet")]
    UnsupportedType { column: String, type_name: String },
    #[error("cannot render the rows: {0}")]
    Render(#[from] ArrowError),
}

/// Runs one read-only statement at `target`.
pub async fn run(target: &Target, sql: &str) -> Result<Vec<RecordBatch>, ClientError> {
    let connection = Connection::open(target).await?;
    let result = connection.query(sql).await;
    connection.close().await;
    result
}

/// An open connection to a target, for several statements in a row.
pub enum Connection {
    /// A session of the data directory's owner (every event).
    Local {
        storage: Storage,
        session: datafusion::prelude::SessionContext,
    },
    Remote {
        client: tokio_postgres::Client,
        driver: tokio::task::JoinHandle<()>,
    },
}

impl Connection {
    pub async fn open(target: &Target) -> Result<Connection, ClientError> {
        Self::open_with_limits(target, query::QueryConfig::default()).await
    }

    /// [`Connection::open`], with `limits` for statements run in-process (a
    /// server applies its own).
    pub async fn open_with_limits(target: &Target, limits: query::QueryConfig) -> Result<Connection, ClientError> {
        match target {
            Target::DataDir(config) => {
                // Opening storage creates a missing directory; a query must not.
                if !config.data_dir.is_dir() {
                    return Err(ClientError::NoDataDir(config.data_dir.clone()));
                }
                let config = config.clone();
                let storage = tokio::task::spawn_blocking(move || Storage::open(config))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))??;
                match query::new_session_context(&storage, &limits) {
                    Ok(session) => Ok(Connection::Local { storage, session }),
                    Err(e) => {
                        close_storage(storage).await;
                        Err(e.into())
                    }
                }
            }
            Target::Server(connection) => {
                let (client, driver) = tokio_postgres::connect(connection, tokio_postgres::NoTls).await?;
                let driver = tokio::spawn(async move {
                    let _ = driver.await;
                });
                Ok(Connection::Remote { client, driver })
            }
        }
    }

    /// Runs one read-only statement.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, ClientError> {
        check_read_only(sql)?;
        match self {
            Connection::Local { session, .. } => {
                Ok(session.sql_with_options(sql, read_only()).await?.collect().await?)
            }
            Connection::Remote { client, .. } => query_on_server(client, sql).await,
        }
    }

    /// Runs one read-only statement, handing its rows to `each` batch by
    /// batch as they come, so memory stays at a batch whatever the result.
    pub async fn stream(
        &self,
        sql: &str,
        mut each: impl FnMut(RecordBatch) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        check_read_only(sql)?;
        match self {
            Connection::Local { session, .. } => {
                let mut batches = session.sql_with_options(sql, read_only()).await?.execute_stream().await?;
                while let Some(batch) = futures::StreamExt::next(&mut batches).await {
                    each(batch?)?;
                }
            }
            Connection::Remote { client, .. } => {
                let statement = client.prepare(sql).await?;
                let rows = client.query_raw(&statement, std::iter::empty::<i32>()).await?;
                let mut rows = std::pin::pin!(rows);
                let mut pending = Vec::with_capacity(STREAMED_BATCH_ROWS);
                while let Some(row) = futures::StreamExt::next(&mut rows).await {
                    pending.push(row?);
                    if pending.len() == STREAMED_BATCH_ROWS {
                        each(rows_to_batch(&statement, &std::mem::take(&mut pending))?)?;
                    }
                }
                if !pending.is_empty() {
                    each(rows_to_batch(&statement, &pending)?)?;
                }
            }
        }
        Ok(())
    }

    pub async fn close(self) {
        match self {
            Connection::Local { storage, .. } => close_storage(storage).await,
            Connection::Remote { client, driver } => {
                drop(client);
                let _ = driver.await;
            }
        }
    }
}

/// In-process, DataFusion itself refuses DDL, DML and session statements.
pub fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

pub fn check_read_only(sql: &str) -> Result<(), ClientError> {
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    for statement in datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql)? {
        if !query::is_read_only(&statement) {
            return Err(ClientError::ReadOnly(query::statement_verb(&statement)));
        }
    }
    Ok(())
}

async fn close_storage(storage: Storage) {
    let _ = tokio::task::spawn_blocking(move || storage.shutdown()).await;
}

async fn query_on_server(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<RecordBatch>, ClientError> {
    let statement = client.prepare(sql).await?;
    let rows = client.query(&statement, &[]).await?;
    Ok(vec![rows_to_batch(&statement, &rows)?])
}

/// Rows of a statement, as they arrive, in batches of at most this many.
const STREAMED_BATCH_ROWS: usize = 8192;

/// Rows of one statement as Arrow.
fn rows_to_batch(
    statement: &tokio_postgres::Statement,
    rows: &[tokio_postgres::Row],
) -> Result<RecordBatch, ClientError> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (i, column) in statement.columns().iter().enumerate() {
        let (data_type, values): (DataType, ArrayRef) = match *column.type_() {
            Type::BOOL => (
                DataType::Boolean,
                Arc::new(rows.iter().map(|r| r.get::<_, Option<bool>>(i)).collect::<BooleanArray>()),
            ),
            Type::INT2 | Type::INT4 | Type::INT8 => {
                let values: Int64Array = rows.iter().map(|r| integer(r, i, column.type_())).collect();
                (DataType::Int64, Arc::new(values))
            }
            Type::FLOAT4 | Type::FLOAT8 => {
                let values: Float64Array = rows.iter().map(|r| float(r, i, column.type_())).collect();
                (DataType::Float64, Arc::new(values))
            }
            Type::TIMESTAMPTZ => {
                let values: TimestampMicrosecondArray =
                    rows.iter().map(|r| r.get::<_, Option<DateTime<Utc>>>(i).map(|t| t.timestamp_micros())).collect();
                (DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), Arc::new(values.with_timezone("UTC")))
            }
            Type::TIMESTAMP => {
                let values: TimestampMicrosecondArray = rows
                    .iter()
                    .map(|r| r.get::<_, Option<NaiveDateTime>>(i).map(|t| t.and_utc().timestamp_micros()))
                    .collect();
                (DataType::Timestamp(TimeUnit::Microsecond, None), Arc::new(values))
            }
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                (DataType::Utf8, Arc::new(rows.iter().map(|r| r.get::<_, Option<String>>(i)).collect::<StringArray>()))
            }
            ref other => {
                return Err(ClientError::UnsupportedType {
                    column: column.name().to_owned(),
                    type_name: other.name().to_owned(),
                });
            }
        };
        fields.push(Field::new(column.name(), data_type, true));
        columns.push(values);
    }
    let schema = Arc::new(Schema::new(fields));
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )?)
}

fn integer(row: &tokio_postgres::Row, i: usize, type_: &Type) -> Option<i64> {
    match *type_ {
        Type::INT2 => row.get::<_, Option<i16>>(i).map(i64::from),
        Type::INT4 => row.get::<_, Option<i32>>(i).map(i64::from),
        _ => row.get::<_, Option<i64>>(i),
    }
}

fn float(row: &tokio_postgres::Row, i: usize, type_: &Type) -> Option<f64> {
    match *type_ {
        Type::FLOAT4 => row.get::<_, Option<f32>>(i).map(f64::from),
        _ => row.get::<_, Option<f64>>(i),
    }
}

/// The rows of `batches` as `format`, ending with a newline.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    match format {
        Format::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(batches)?;
            out.extend_from_slice(format!("{table}\n").as_bytes());
        }
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Format::Json => {
            let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                out = b"[]".to_vec();
            }
            out.push(b'\n');
        }
        Format::Jsonl => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    Ok(out)
}
