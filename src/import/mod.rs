//! `auditlake import`: audit logs exported from other products (AWS
//! CloudTrail, Kubernetes, GitHub, Okta, Atlassian, OCSF, or auditlake's own
//! NDJSON) into a data directory.
//!
//! Each file (gzip inflated) is split into source records (a CloudTrail
//! `Records` array, a Kubernetes `EventList`, an Atlassian `data` list, a
//! JSON array, one JSON document, or JSON lines). JSON lines are read a line
//! at a time and stored a batch at a time, so a file of any size imports in
//! the memory of one batch; a single document is read whole, up to
//! [`MAX_DOCUMENT_BYTES`]. Each record is mapped
//! onto the event schema with the source event kept in `attributes`
//! (`formats.rs`), validated as `POST /v1/events` validates, put under the
//! organisation's UGC policy, and appended through the WAL in batches. So an
//! imported event is as durable as a posted one, and importing a file twice
//! stores it once (source ids, or ids derived from the record, are
//! idempotency keys). A record that is not an event is reported with its
//! reason and position, never stored; the rest of the file still is.
//!
//! This module reads files and calls storage; it never writes files itself.

mod formats;

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::{self, Event, FieldError};
use crate::policy::{Policies, PolicyError};
use crate::storage::{Storage, StorageError};

/// Events appended per WAL record.
pub const IMPORT_BATCH_EVENTS: usize = 10_000;
/// Largest single JSON document (an array, a `Records` file) read whole;
/// larger exports must come as JSON lines, which stream. A document takes
/// several times its size once parsed.
pub const MAX_DOCUMENT_BYTES: u64 = 512 * 1024 * 1024;
/// Rejections listed per file; the count covers all of them.
pub const MAX_LISTED_REJECTIONS: usize = 20;

/// The formats `import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// AWS CloudTrail: `{"Records": [...]}` files as delivered to S3 (gzip
    /// or not), or one event per line.
    Cloudtrail,
    /// Kubernetes audit log (`audit.k8s.io/v1` `Event`s, one per line, or an `EventList`).
    K8s,
    /// GitHub organisation or enterprise audit log (JSON array or lines).
    Github,
    /// Okta System Log (JSON array or lines).
    Okta,
    /// Atlassian organisation audit log (Admin API `events` responses or lines).
    Atlassian,
    /// OCSF events as JSON (array or lines), or Parquet as Amazon Security Lake stores them.
    Ocsf,
    /// auditlake's own events, as `POST /v1/events` takes them.
    Ndjson,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Why one source record was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 1-based: the line of a JSON-lines file, else the position in the file's list.
    pub record: usize,
    pub reason: String,
}

/// What became of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileReport {
    pub path: PathBuf,
    /// Events acknowledged: newly stored plus duplicates.
    pub imported: usize,
    /// Of those, stored before (same organisation and id).
    pub duplicates: usize,
    pub rejected: usize,
    /// The first [`MAX_LISTED_REJECTIONS`] rejections.
    pub rejections: Vec<Rejection>,
    /// The file's size on disk.
    pub bytes: u64,
}

impl FileReport {
    fn reject(&mut self, record: usize, reason: String) {
        self.rejected += 1;
        if self.rejections.len() < MAX_LISTED_REJECTIONS {
            self.rejections.push(Rejection { record, reason });
        }
    }
}

/// One source record: its position (the line of a JSON-lines file, else the
/// place in the file's list) and its JSON, or why it is not JSON.
type SourceRecord = (usize, Result<Value, String>);

/// A file's source records, read as they are needed.
enum SourceRecords {
    /// JSON lines: the next line is read when the last is taken.
    Lines { reader: Box<dyn BufRead>, line: usize, read_ahead: std::vec::IntoIter<SourceRecord> },
    /// A document read whole (or a Parquet file), already split.
    Listed(std::vec::IntoIter<SourceRecord>),
}

impl SourceRecords {
    /// Opens `path`: inflated if it is gzip; a Parquet file (OCSF as Amazon
    /// Security Lake stores it) as a list, one record per row. Whether the
    /// file is JSON lines is told from its first non-empty line: a JSON
    /// value of its own with more lines after it.
    fn open(path: &Path) -> Result<Self, ImportError> {
        let read_error = |source| ImportError::Read { path: path.to_path_buf(), source };
        let invalid = |message: String| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, message));
        let mut file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(read_error)?);
        let head = file.fill_buf().map_err(read_error)?;
        if head.starts_with(b"PAR1") {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(read_error)?;
            let text = parquet_as_json_lines(bytes).map_err(invalid)?;
            return Ok(SourceRecords::Listed(records(&text).into_iter()));
        }
        let reader: Box<dyn BufRead> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(std::io::BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(file)))
        } else {
            Box::new(file)
        };
        Self::over(reader).map_err(read_error)
    }

    /// The records of JSON text read from `reader`.
    fn over(mut reader: Box<dyn BufRead>) -> std::io::Result<Self> {
        let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidData, message);
        let mut line = 0;
        let Some(first) = next_line(&mut reader, &mut line)? else {
            return Ok(SourceRecords::Listed(Vec::new().into_iter()));
        };
        let first_line = line;
        if let Ok(value) = serde_json::from_str::<Value>(&first) {
            match next_line(&mut reader, &mut line)? {
                Some(second) => {
                    let read_ahead = vec![(first_line, Ok(value)), (line, parse_line(&second))];
                    return Ok(SourceRecords::Lines { reader, line, read_ahead: read_ahead.into_iter() });
                }
                None => return Ok(SourceRecords::Listed(listed(value).into_iter())),
            }
        }
        // One document over several lines: read whole, within bounds.
        // Blank lines before it keep their numbers, as JSON lines' positions.
        let mut text = "\n".repeat(first_line - 1) + &first + "\n";
        let limit = MAX_DOCUMENT_BYTES.saturating_sub(text.len() as u64);
        reader.take(limit + 1).read_to_string(&mut text)?;
        if text.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(invalid(format!(
                "one JSON document larger than {} MiB: export it as JSON lines (one event per line), which \
                 import reads a line at a time",
                MAX_DOCUMENT_BYTES >> 20
            )));
        }
        Ok(SourceRecords::Listed(records(&text).into_iter()))
    }

    /// The next record, `None` at the end of the file.
    fn next_record(&mut self) -> std::io::Result<Option<SourceRecord>> {
        match self {
            SourceRecords::Listed(records) => Ok(records.next()),
            SourceRecords::Lines { reader, line, read_ahead } => {
                if let Some(record) = read_ahead.next() {
                    return Ok(Some(record));
                }
                Ok(next_line(reader, line)?.map(|text| (*line, parse_line(&text))))
            }
        }
    }
}

/// The next non-empty line of `reader` without its line ending, `line`
/// counting the lines read.
fn next_line(reader: &mut dyn BufRead, line: &mut usize) -> std::io::Result<Option<String>> {
    let mut text = String::new();
    loop {
        text.clear();
        if reader.read_line(&mut text)? == 0 {
            return Ok(None);
        }
        *line += 1;
        // Without its ending, as `str::lines` gives it.
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        if !text.trim().is_empty() {
            return Ok(Some(text));
        }
    }
}

fn parse_line(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

fn parquet_as_json_lines(bytes: Vec<u8>) -> Result<String, String> {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|builder| builder.build())
        .map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut lines);
    for batch in reader {
        writer.write(&batch.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    let lines = String::from_utf8(lines).map_err(|e| e.to_string())?;
    Ok(format!("[{}]", lines.lines().collect::<Vec<_>>().join(",")))
}

/// The source records of a file, each with its position, or why a line is
/// not JSON.
fn records(text: &str) -> Vec<SourceRecord> {
    match serde_json::from_str::<Value>(text) {
        Ok(document) => listed(document),
        // Not one JSON document: JSON lines.
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| (i + 1, parse_line(line)))
            .collect(),
    }
}

/// The source records of a file that is one JSON document.
fn listed(document: Value) -> Vec<SourceRecord> {
    let numbered = |values: Vec<Value>| values.into_iter().enumerate().map(|(i, v)| (i + 1, Ok(v))).collect();
    match document {
        Value::Array(items) => numbered(items),
        Value::Object(mut document) => {
            let list = ["Records", "items", "data"].into_iter().find(|key| document.contains_key(*key));
            match list.and_then(|key| document.remove(key)) {
                Some(Value::Array(items)) => numbered(items),
                // A single-event response (`{"data": {...}}`).
                Some(one @ Value::Object(_)) => numbered(vec![one]),
                Some(other) => vec![(1, Err(format!("expected a list of events, found {other}")))],
                None => numbered(vec![Value::Object(document)]),
            }
        }
        other => vec![(1, Err(format!("expected a JSON object or array, found {other}")))],
    }
}

/// Most of a WAL record an import batch aims to fill: events with large
/// attributes make a 10,000-event chunk larger than one record may be.
const IMPORT_BATCH_MAX_BYTES: usize = crate::storage::wal::MAX_RECORD_BYTES / 4;

/// `batch` in parts each within `max_bytes` (by [`Event::approx_bytes`];
/// an event larger than that alone is a part of its own), in order.
fn within_record_size(batch: Vec<Event>, max_bytes: usize) -> Vec<Vec<Event>> {
    let mut parts = vec![Vec::new()];
    let mut bytes = 0;
    for event in batch {
        let size = event.approx_bytes();
        let last = parts.last_mut().expect("one part");
        if !last.is_empty() && bytes + size > max_bytes {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        parts.last_mut().expect("one part").push(event);
    }
    parts
}

/// Imports `paths` as `format` into `storage`, under organisation `org`
/// (vendor formats) or the events' own (`ndjson`, where `org`, if given,
/// must match). `progress` hears bytes read so far after each file.
pub async fn import(
    storage: &Storage,
    policies: &Policies,
    format: ImportFormat,
    org: Option<&str>,
    paths: &[PathBuf],
    mut progress: impl FnMut(u64),
) -> Result<Vec<FileReport>, ImportError> {
    let mut reports = Vec::with_capacity(paths.len());
    let mut bytes_read = 0;
    for path in paths {
        let mut report = FileReport { path: path.clone(), ..FileReport::default() };
        report.bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or_default();
        let mut source = SourceRecords::open(path)?;
        let mut mapped = Vec::with_capacity(IMPORT_BATCH_EVENTS);
        let read_error = |source| ImportError::Read { path: path.clone(), source };
        while let Some((position, record)) = source.next_record().map_err(read_error)? {
            match record.and_then(|r| formats::map(format, &r, org.unwrap_or_default())) {
                Ok(event) => mapped.push((position, event)),
                Err(reason) => report.reject(position, reason),
            }
            if mapped.len() == IMPORT_BATCH_EVENTS {
                store_chunk(storage, policies, format, org, &mapped, &mut report).await?;
                mapped.clear();
            }
        }
        if !mapped.is_empty() {
            store_chunk(storage, policies, format, org, &mapped, &mut report).await?;
        }
        bytes_read += report.bytes;
        progress(bytes_read);
        reports.push(report);
    }
    Ok(reports)
}

/// Validates a chunk of mapped records, applies the organisations'
/// policies and appends what passes through the WAL.
async fn store_chunk(
    storage: &Storage,
    policies: &Policies,
    format: ImportFormat,
    org: Option<&str>,
    chunk: &[(usize, Value)],
    report: &mut FileReport,
) -> Result<(), ImportError> {
    let mut events = validated(chunk, report);
    if let (Some(org), ImportFormat::Ndjson) = (org, format) {
        let (ours, others): (Vec<_>, Vec<_>) = events.into_iter().partition(|(_, e)| e.org_id == org);
        for (position, event) in others {
            report.reject(position, format!("org_id {:?} is not {org:?}", event.org_id));
        }
        events = ours;
    }
    if events.is_empty() {
        return Ok(());
    }
    let mut batch: Vec<Event> = events.into_iter().map(|(_, e)| e).collect();
    policies.apply(&mut batch)?;
    for part in within_record_size(batch, IMPORT_BATCH_MAX_BYTES) {
        let count = part.len();
        let appended = storage.append(part).await?;
        report.imported += count;
        report.duplicates += appended.duplicates;
    }
    Ok(())
}

/// The mapped events of a chunk that pass ingest validation; the others
/// are rejected with the validation's reasons.
fn validated(chunk: &[(usize, Value)], report: &mut FileReport) -> Vec<(usize, Event)> {
    let received_at = chrono::Utc::now();
    let body: String = chunk.iter().map(|(_, e)| e.to_string() + "\n").collect();
    let errors = match model::parse_batch(body.as_bytes(), received_at) {
        Ok(events) => return chunk.iter().map(|(p, _)| *p).zip(events).collect(),
        Err(errors) => errors,
    };
    // Name each bad record once, with every problem it has, then take the rest.
    let mut bad = std::collections::BTreeMap::<usize, Vec<String>>::new();
    for FieldError { line, field, error } in errors {
        let problem = field.map_or(error.clone(), |f| format!("{f}: {error}"));
        bad.entry(line).or_default().push(problem);
    }
    for (line, problems) in &bad {
        report.reject(chunk[line - 1].0, problems.join("; "));
    }
    let good: Vec<&(usize, Value)> =
        chunk.iter().enumerate().filter(|(i, _)| !bad.contains_key(&(i + 1))).map(|(_, e)| e).collect();
    if good.is_empty() {
        // An empty body is itself an error, naming no record of the chunk.
        return Vec::new();
    }
    let body: String = good.iter().map(|(_, e)| e.to_string() + "\n").collect();
    match model::parse_batch(body.as_bytes(), received_at) {
        Ok(events) => good.iter().map(|(p, _)| *p).zip(events).collect(),
        Err(errors) => {
            // Not expected: the rest passed one by one above. Reject, never store unchecked.
            for error in errors {
                report.reject(good[error.line - 1].0, error.error);
            }
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chunk_of_large_events_is_split_to_fit_a_record() {
        let event = |kib: usize| Event { attributes: Some("x".repeat(kib * 1024)), ..Event::default() };
        let batch = vec![event(40), event(40), event(10), event(100), event(1)];
        let sizes: Vec<usize> = within_record_size(batch, 64 * 1024).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 2, 1, 1], "in order; the 100 KiB event alone");
        assert_eq!(within_record_size(vec![event(1); 3], 64 * 1024).len(), 1);
    }

    use super::*;

    #[test]
    fn a_chunk_of_only_invalid_events_is_rejected_whole() {
        let bad =
            serde_json::json!({"time": "not a time", "id": "b", "org_id": "acme", "actor_id": "a", "action": "x"});
        let mut report = FileReport::default();
        assert!(validated(&[(7, bad.clone()), (9, bad)], &mut report).is_empty());
        assert_eq!(report.rejected, 2);
        assert_eq!(report.rejections.iter().map(|r| r.record).collect::<Vec<_>>(), [7, 9]);
    }

    /// JSON lines without end: whoever reads them all never returns.
    struct EndlessLines(u64);

    impl std::io::Read for EndlessLines {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let line = format!("{{\"n\": {}}}\n", self.0);
            let n = line.len().min(buf.len());
            buf[..n].copy_from_slice(&line.as_bytes()[..n]);
            // A line cut by a small buffer is not resumed: make buffers large.
            assert_eq!(n, line.len(), "a buffer too small for one line");
            self.0 += 1;
            Ok(n)
        }
    }

    #[test]
    fn json_lines_are_read_as_they_are_taken_not_whole() {
        let reader = std::io::BufReader::with_capacity(64 * 1024, EndlessLines(0));
        let mut source = SourceRecords::over(Box::new(reader)).unwrap();
        for n in 0..50_000u64 {
            let (position, record) = source.next_record().unwrap().unwrap();
            assert_eq!((position, record.unwrap()), (n as usize + 1, serde_json::json!({ "n": n })));
        }
    }

    #[test]
    fn records_come_from_lists_documents_and_lines() {
        let positions =
            |text: &str| -> Vec<(usize, bool)> { records(text).into_iter().map(|(p, r)| (p, r.is_ok())).collect() };
        assert_eq!(positions(r#"{"Records": [{"a": 1}, {"b": 2}]}"#), [(1, true), (2, true)]);
        assert_eq!(positions(r#"{"data": {"id": "x"}}"#), [(1, true)]);
        assert_eq!(positions(r#"[{"a": 1}]"#), [(1, true)]);
        assert_eq!(positions(r#"{"kind": "Event"}"#), [(1, true)]);
        assert_eq!(positions("{\"a\": 1}\n\n{broken\n{\"c\": 3}\n"), [(1, true), (3, false), (4, true)]);
        assert_eq!(positions(r#"{"Records": 5}"#), [(1, false)]);
    }

    use proptest::prelude::*;

    /// JSON built from the field names the formats read (and others), so
    /// that mappings get past their first lookup.
    fn source_record() -> impl Strategy<Value = Value> {
        let keys = prop::sample::select(vec![
            "eventTime",
            "eventName",
            "eventSource",
            "eventID",
            "userIdentity",
            "arn",
            "type",
            "sourceIPAddress",
            "userAgent",
            "requestID",
            "recipientAccountId",
            "requestReceivedTimestamp",
            "stageTimestamp",
            "verb",
            "user",
            "username",
            "objectRef",
            "resource",
            "name",
            "namespace",
            "auditID",
            "responseStatus",
            "code",
            "@timestamp",
            "created_at",
            "action",
            "actor",
            "actor_ip",
            "org",
            "repo",
            "published",
            "eventType",
            "displayMessage",
            "outcome",
            "result",
            "client",
            "ipAddress",
            "uuid",
            "id",
            "alternateId",
            "target",
            "time",
            "timestamp",
            "attributes",
            "metadata",
            "class_uid",
            "activity_id",
            "src_endpoint",
            "ip",
            "org_id",
            "actor_id",
            "content_id",
            "location",
            "context",
            "data",
            "Records",
            "items",
            "events",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop::sample::select(vec![
                "2026-12-01T10:00:00Z",
                "2026-12-01 10:00:00.5",
                "1764583200000",
                "9999-12-31T23:59:60Z",
                "0000-01-01T00:00:00Z",
                "",
                "\u{0}",
                "acme",
                "arn:aws:iam::1:user/alice",
                "10.0.0.1",
                "fe80::1%eth0",
            ])
            .prop_map(Value::from),
            Just(Value::from("x".repeat(300))),
            ".{0,40}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone().prop_map(String::from), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const FORMATS: [ImportFormat; 7] = [
        ImportFormat::Cloudtrail,
        ImportFormat::K8s,
        ImportFormat::Github,
        ImportFormat::Okta,
        ImportFormat::Atlassian,
        ImportFormat::Ocsf,
        ImportFormat::Ndjson,
    ];

    proptest! {
        #![proptest_config(crate::proptest_cases(512))]

        /// Every format maps any record to an event ingest validates, or to
        /// a reason; validation then keeps or names each record.
        #[test]
        fn any_record_of_any_format_is_mapped_or_refused_with_a_reason(record in source_record()) {
            for format in FORMATS {
                let mapped = formats::map(format, &record, "acme");
                if let Err(reason) = &mapped {
                    prop_assert!(!reason.is_empty());
                }
                let Ok(event) = mapped else { continue };
                // As `import` validates it: in a chunk, beside a good event.
                let good = serde_json::json!({"time": "2026-12-01T10:00:00Z", "id": "good-1", "org_id": "acme",
                    "actor_id": "alice", "action": "confluence.page.viewed"});
                let chunk = [(1, event), (2, good)];
                let mut report = FileReport::default();
                let kept = validated(&chunk, &mut report);
                prop_assert_eq!(kept.len() + report.rejected, chunk.len());
                prop_assert_eq!(kept.last().map(|(position, _)| *position), Some(2));
            }
        }

        /// Any file text gives numbered records, each a value or a reason.
        #[test]
        fn any_text_splits_into_numbered_records(text in "(\\{|\\}|\\[|\\]|\"|:|,|\n|[a-z0-9 ]){0,200}") {
            let records = records(&text);
            for (i, (position, _)) in records.iter().enumerate() {
                prop_assert!(*position >= 1 && (i == 0 || *position > records[i - 1].0));
            }
        }

        /// Read a line at a time, any text gives the records it gives read whole.
        #[test]
        fn records_streamed_are_the_records_of_the_whole_text(text in "(\\{|\\}|\\[|\\]|\"|:|,|\n|\n\n|[a-z0-9 ]){0,200}") {
            let mut source = SourceRecords::over(Box::new(std::io::Cursor::new(text.clone().into_bytes()))).unwrap();
            let mut streamed = Vec::new();
            while let Some(record) = source.next_record().unwrap() {
                streamed.push(record);
            }
            prop_assert_eq!(streamed, records(&text));
        }

        /// Bytes that start like Parquet but are not are a reason, never a crash.
        #[test]
        fn bytes_that_are_not_parquet_are_refused(tail in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = b"PAR1".to_vec();
            bytes.extend(tail);
            prop_assert!(parquet_as_json_lines(bytes).is_err());
        }
    }
}
