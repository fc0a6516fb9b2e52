//! `auditlake export`: one organisation's events over a time range, to a
//! JSON Lines or Parquet file on local disk or in a bucket, for cold storage
//! and SIEMs that load files.
//!
//! Events are read in windows of `seq`, each streamed batch by batch (see
//! [`export`]): memory stays at a batch whatever the range, every event is
//! in one window only, and events that arrive while the export runs are in
//! it once or not at all. It reads through a
//! [`Connection`] (a data directory, or a server as a Postgres user, whose
//! tenant scope applies), and never changes the log.
//!
//! A local output file is fsynced before the export says it is done: it is
//! the one file auditlake syncs outside the storage layer, because it is the
//! user's, outside the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;

use crate::client::{ClientError, Connection, Target};
use crate::query::{QueryConfig, TABLE};

/// Seqs per window: under a server's default `--max-result-rows` (one
/// window is one statement).
pub const EXPORT_PAGE_EVENTS: usize = 500_000;
/// Longest one window's statement may run in-process.
const EXPORT_STATEMENT_TIMEOUT_SECS: u64 = 3_600;

/// What an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line; `attributes` as the object it was sent as.
    Jsonl,
    /// One Parquet file (zstd), the table's columns.
    Parquet,
}

/// Which events, and where they go.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub org: String,
    /// Events at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Events before this time.
    pub to: Option<DateTime<Utc>>,
    pub format: ExportFormat,
    /// A local path, `file:///path`, or `s3://bucket/key` (credentials and
    /// endpoint from the usual `AWS_*` variables).
    pub out: String,
    /// Seqs per window (see [`EXPORT_PAGE_EVENTS`]).
    pub page_events: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot encode the events: {0}")]
    Encode(String),
    #[error("cannot upload to {url}: {reason}")]
    Upload { url: String, reason: String },
    #[error("{0} exists already; export never overwrites a file")]
    Exists(String),
}

/// Where the file is written first: the destination itself, or a temporary
/// file uploaded when complete (a bucket never holds half an export).
enum Destination {
    Local(PathBuf),
    S3 { url: String, bucket: String, key: String, staging: tempfile::NamedTempFile },
}

impl Destination {
    fn parse(out: &str) -> Result<Self, ExportError> {
        if let Some(rest) = out.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
                return Err(ExportError::Upload { url: out.into(), reason: "expected s3://bucket/key".into() });
            }
            let staging = tempfile::NamedTempFile::new()
                .map_err(|source| ExportError::Write { path: std::env::temp_dir(), source })?;
            return Ok(Destination::S3 { url: out.into(), bucket: bucket.into(), key: key.into(), staging });
        }
        let path = PathBuf::from(out.strip_prefix("file://").unwrap_or(out));
        if path.exists() {
            return Err(ExportError::Exists(path.display().to_string()));
        }
        Ok(Destination::Local(path))
    }

    fn file_path(&self) -> &Path {
        match self {
            Destination::Local(path) => path,
            Destination::S3 { staging, .. } => staging.path(),
        }
    }

    async fn finish(self) -> Result<(), ExportError> {
        let Destination::S3 { url, bucket, key, staging } = self else { return Ok(()) };
        let failed = |reason: String| ExportError::Upload { url: url.clone(), reason };
        let store = AmazonS3Builder::from_env().with_bucket_name(&bucket).build().map_err(|e| failed(e.to_string()))?;
        let mut upload = object_store::buffered::BufWriter::new(Arc::new(store), ObjectPath::from(key.as_str()));
        let mut file = tokio::fs::File::open(staging.path()).await.map_err(|e| failed(e.to_string()))?;
        tokio::io::copy(&mut file, &mut upload).await.map_err(|e| failed(e.to_string()))?;
        tokio::io::AsyncWriteExt::shutdown(&mut upload).await.map_err(|e| failed(e.to_string()))?;
        Ok(())
    }
}

/// The open output file, in either format.
enum Output {
    Jsonl(std::io::BufWriter<std::fs::File>),
    /// The Parquet writer needs the schema, known with the first page.
    Parquet {
        file: Option<std::fs::File>,
        writer: Option<Box<ArrowWriter<std::fs::File>>>,
    },
}

impl Output {
    fn create(path: &Path, format: ExportFormat) -> Result<Self, ExportError> {
        let file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .or_else(|e| match e.kind() {
                // The staging file of an upload exists, empty.
                std::io::ErrorKind::AlreadyExists if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) => {
                    std::fs::File::options().write(true).open(path)
                }
                _ => Err(e),
            })
            .map_err(|source| ExportError::Write { path: path.to_path_buf(), source })?;
        Ok(match format {
            ExportFormat::Jsonl => Output::Jsonl(std::io::BufWriter::new(file)),
            ExportFormat::Parquet => Output::Parquet { file: Some(file), writer: None },
        })
    }

    fn write(&mut self, batch: &RecordBatch, path: &Path) -> Result<(), ExportError> {
        let encode = |e: &dyn std::fmt::Display| ExportError::Encode(e.to_string());
        match self {
            Output::Jsonl(out) => {
                let mut lines = Vec::new();
                let mut writer = LineDelimitedWriter::new(&mut lines);
                writer.write(batch).map_err(|e| encode(&e))?;
                writer.finish().map_err(|e| encode(&e))?;
                for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let line = with_attributes_as_object(line).map_err(|e| encode(&e))?;
                    out.write_all(&line)
                        .and_then(|()| out.write_all(b"\n"))
                        .map_err(|source| ExportError::Write { path: path.to_path_buf(), source })?;
                }
            }
            Output::Parquet { file, writer } => {
                if let Some(file) = file.take() {
                    let properties = WriterProperties::builder()
                        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
                        .build();
                    *writer = Some(Box::new(
                        ArrowWriter::try_new(file, batch.schema(), Some(properties)).map_err(|e| encode(&e))?,
                    ));
                }
                writer.as_mut().expect("just made").write(batch).map_err(|e| encode(&e))?;
            }
        }
        Ok(())
    }

    fn finish(self, path: &Path) -> Result<(), ExportError> {
        let write_error = |source| ExportError::Write { path: path.to_path_buf(), source };
        match self {
            Output::Jsonl(mut out) => out.flush().and_then(|()| out.get_ref().sync_all()).map_err(write_error),
            Output::Parquet { writer: Some(writer), .. } => {
                let file = writer.into_inner().map_err(|e| ExportError::Encode(e.to_string()))?;
                file.sync_all().map_err(write_error)
            }
            // No event: an empty file says so (Parquet needs a schema).
            Output::Parquet { writer: None, .. } => Ok(()),
        }
    }
}

/// A JSON line with its `attributes` text turned back into the object.
fn with_attributes_as_object(line: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let mut event: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line)?;
    if let Some(serde_json::Value::String(text)) = event.get("attributes")
        && let Ok(object) = serde_json::from_str::<serde_json::Value>(text)
    {
        event.insert("attributes".into(), object);
    }
    serde_json::to_vec(&event)
}

/// `'text'` as an SQL literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl ExportRequest {
    /// The condition on events, without the cursor.
    fn condition(&self) -> String {
        let mut condition = format!("org_id = {}", literal(&self.org));
        let at = |t: &DateTime<Utc>| literal(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        if let Some(from) = &self.from {
            condition += &format!(" and time >= {}::timestamptz", at(from));
        }
        if let Some(to) = &self.to {
            condition += &format!(" and time < {}::timestamptz", at(to));
        }
        condition
    }
}

/// Exports the events `request` names from `target`; `progress` hears the
/// total first, then the count written after each batch. Returns the count.
///
/// The log is read in windows of `page_events` seqs (`seq > a and seq <= b`),
/// each streamed as it is scanned: the manifest prunes each window to the
/// segments that hold it, so every segment is read about once, and memory
/// stays at one batch. Windows follow each other in `seq` order; within a
/// window events come in storage order (organisation, actor, time), since
/// sorting a window would hold it in memory. Each window is one statement,
/// so a server's `--max-result-rows` bounds `page_events`.
pub async fn export(
    target: &Target,
    request: &ExportRequest,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ExportError> {
    let destination = Destination::parse(&request.out)?;
    // In-process, an export is bounded by its windows, not a statement's limits.
    let limits = QueryConfig {
        max_result_rows: u64::MAX,
        statement_timeout: std::time::Duration::from_secs(EXPORT_STATEMENT_TIMEOUT_SECS),
        ..QueryConfig::default()
    };
    let connection = Connection::open_with_limits(target, limits).await?;
    let result = async {
        let condition = request.condition();
        let counted = connection.query(&format!("select count(*), max(seq) from {TABLE} where {condition}")).await?;
        let number = |column: usize| {
            counted.first().and_then(|b| {
                let values = b.column(column).as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                (b.num_rows() > 0 && values.is_valid(0)).then(|| values.value(0))
            })
        };
        let (total, last_seq) = (number(0).unwrap_or(0) as u64, number(1).unwrap_or(0));
        progress(total, 0);

        let path = destination.file_path().to_path_buf();
        let mut output = Output::create(&path, request.format)?;
        let mut written = 0u64;
        let mut after = 0i64;
        while after < last_seq {
            let upto = after.saturating_add(request.page_events as i64).min(last_seq);
            let sql = format!("select * from {TABLE} where {condition} and seq > {after} and seq <= {upto}");
            let mut failure = None;
            connection
                .stream(&sql, |batch| {
                    if batch.num_rows() == 0 {
                        return Ok(());
                    }
                    if let Err(e) = output.write(&batch, &path) {
                        failure = Some(e);
                        return Err(ClientError::Render(datafusion::arrow::error::ArrowError::ExternalError(
                            "export write failed".into(),
                        )));
                    }
                    written += batch.num_rows() as u64;
                    progress(total, written);
                    Ok(())
                })
                .await
                .map_err(|e| failure.take().unwrap_or(ExportError::Client(e)))?;
            after = upto;
        }
        output.finish(&path)?;
        Ok::<u64, ExportError>(written)
    }
    .await;
    connection.close().await;
    let written = result?;
    destination.finish().await?;
    Ok(written)
}
