//! The audit log's own audit trail: every statement a client sends over the
//! wire, and every login, becomes an event of `audit_events` with
//! `category = 'audit_access'`, so auditors can ask who searched the log,
//! for what, and who tried to get in.
//!
//! A statement's record is made when it ends (only then are its rows,
//! duration and outcome known) and goes to one background writer, which
//! appends records in batches through the same durable path as ingest. A
//! statement never waits for its record; a record is lost only if the
//! process dies before the writer's next group commit, if storage has shut
//! down, or if [`MAX_PENDING_RECORDS`] already wait for a storage that
//! refuses them: then it is counted, and one record saying how many were
//! dropped is stored once storage takes records again. Records name the database user, the tenant (the user's org;
//! [`SYSTEM_ORG_ID`] for admins and unknown names), the client address and
//! application, the SQL text and its parameters.
//!
//! It never records a password, nor any value a statement returned. Errors
//! pass through [`classify`](super::sqlstate::classify) here, the one place
//! every statement's outcome goes by, so clients and records see the same
//! SQLSTATE.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion_postgres::DfSessionService;
use futures::{Sink, Stream};
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, DEFAULT_NAME};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::extendedquery::Parse;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use super::compat::client_sql;
use super::describe::DescribedAsPostgres;
use super::sqlstate::classify;
use crate::model::{AUDIT_ACCESS_CATEGORY, Event, SYSTEM_ORG_ID};
use crate::policy::Policies;
use crate::query::{SessionTimeout, StatementCancel};
use crate::storage::{Storage, StorageError};

/// Most records the writer appends in one batch.
pub const MAX_RECORDS_PER_APPEND: usize = 1_000;
/// Longest SQL text kept in a record, in bytes; longer text is cut (and the
/// record says so), as one statement could otherwise fill the log.
pub const MAX_RECORDED_SQL_BYTES: usize = 16 * 1024;
/// Longest error message or parameter value kept in a record, in bytes.
pub const MAX_RECORDED_VALUE_BYTES: usize = 1024;
/// Pause before the writer tries again after storage refused a batch.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// What a record says was done.
pub const ACTION_QUERY: &str = "audit_log.query";
pub const ACTION_LOGIN: &str = "audit_log.login";
pub const ACTION_LOGIN_FAILED: &str = "audit_log.login_failed";
/// What the record of a page of the web view (or of the embedded viewer) says.
pub const ACTION_UI_READ: &str = "audit_log.ui_read";
/// What the record of records dropped (see [`MAX_PENDING_RECORDS`]) says.
pub const ACTION_RECORDS_DROPPED: &str = "audit_log.records_dropped";

/// The most records waiting for the writer: while storage refuses them (a
/// full disk) they wait in memory, and statements and failed logins go on
/// making more. Past this they are counted instead of held.
pub const MAX_PENDING_RECORDS: usize = 16 * 1024;

enum Message {
    Record(Box<Event>),
    /// Answered once every record sent before it is stored.
    Flush(oneshot::Sender<()>),
}

/// Where records go: a handle on the background writer, one per server.
#[derive(Debug, Clone)]
pub struct AccessLog {
    records: mpsc::Sender<Message>,
    /// Records not held because [`MAX_PENDING_RECORDS`] were waiting.
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer on the current runtime. Records pass through the
    /// organisations' UGC policies before they are stored.
    pub fn start(storage: Storage, policies: Arc<Policies>) -> AccessLog {
        let (log, received) = AccessLog::unstarted(MAX_PENDING_RECORDS);
        tokio::spawn(write_records(storage, policies, received, Arc::clone(&log.dropped)));
        log
    }

    /// A log holding at most `pending` records, and where they arrive.
    fn unstarted(pending: usize) -> (AccessLog, mpsc::Receiver<Message>) {
        let (records, received) = mpsc::channel(pending);
        (AccessLog { records, dropped: Arc::default() }, received)
    }

    fn record(&self, event: Event) {
        match self.records.try_send(Message::Record(Box::new(event))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    warn!(
                        dropped,
                        pending = MAX_PENDING_RECORDS,
                        "records of audit-log use dropped: storage takes none"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                error!("the access-log writer has stopped; a record of audit-log use is lost")
            }
        }
    }

    /// Records what a reader of the web view was shown: the HTTP layer
    /// makes the event (who, which view, which search), as it alone knows
    /// them; it goes the way statements' records go.
    pub fn read_over_http(&self, record: Event) {
        self.record(record);
    }

    /// Waits until every record made before this call is stored.
    pub async fn flush(&self) {
        let (done, stored) = oneshot::channel();
        if self.records.send(Message::Flush(done)).await.is_ok() {
            let _ = stored.await;
        }
    }

    /// Records a login, or with `failure` (SQLSTATE, reason) a refused one.
    pub fn login(&self, accessor: &Accessor, failure: Option<(&str, &str)>) {
        let (action, attributes) = match failure {
            None => (ACTION_LOGIN, json!({ "tls": accessor.tls })),
            Some((sqlstate, reason)) => {
                (ACTION_LOGIN_FAILED, json!({ "tls": accessor.tls, "sqlstate": sqlstate, "error": reason }))
            }
        };
        self.record(accessor.event(action, failure.is_none(), now_us(), attributes));
    }
}

/// The record that `count` records were dropped.
fn dropped_record(count: u64) -> Event {
    Event::system(
        SYSTEM_ORG_ID,
        ("auditlake", "system"),
        ACTION_RECORDS_DROPPED,
        AUDIT_ACCESS_CATEGORY,
        false,
        &json!({ "dropped": count, "max_pending": MAX_PENDING_RECORDS }),
    )
}

async fn write_records(
    storage: Storage,
    policies: Arc<Policies>,
    mut received: mpsc::Receiver<Message>,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = received.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(event) => batch.push(*event),
                Message::Flush(done) => flushes.push(done),
            }
            if batch.len() < MAX_RECORDS_PER_APPEND {
                next = received.try_recv().ok();
            }
        }
        // Told as soon as records flow again: the batch goes to storage now.
        let dropped_now = dropped.swap(0, Ordering::Relaxed);
        if dropped_now > 0 {
            batch.push(dropped_record(dropped_now));
        }
        if !batch.is_empty() {
            policies.protect_statement_records(&mut batch, SYSTEM_ORG_ID);
            append_until_stored(&storage, std::mem::take(&mut batch)).await;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Storage refuses a batch only for a while (back-pressure, a full disk
/// being cleared) or for good (shut down): records wait, in order, until
/// it takes them.
async fn append_until_stored(storage: &Storage, records: Vec<Event>) {
    loop {
        match storage.append(records.clone()).await {
            Ok(_) => return,
            Err(StorageError::ShutDown) => {
                error!(lost = records.len(), "storage shut down before these records of audit-log use were stored");
                return;
            }
            Err(e) => {
                warn!(error = %e, waiting = records.len(), "storing records of audit-log use failed; retrying");
                tokio::time::sleep(RETRY_AFTER_FAILURE).await;
            }
        }
    }
}

/// Who is on one connection, as its records name them.
#[derive(Debug, Clone)]
pub struct Accessor {
    pub user: String,
    /// The user's tenant; `None` for admins and names no user has.
    pub org: Option<String>,
    pub address: IpAddr,
    /// The client's `application_name`.
    pub application: Option<String>,
    pub tls: bool,
    /// The connection, as `pg-<backend pid>` once logged in.
    pub session: Option<String>,
}

impl Accessor {
    fn event(&self, action: &str, success: bool, time_us: i64, attributes: Value) -> Event {
        let org = self.org.as_deref().unwrap_or(SYSTEM_ORG_ID);
        Event {
            time_us,
            source_ip: Some(self.address.to_string()),
            user_agent: self.application.clone(),
            session_id: self.session.clone(),
            ..Event::system(org, (&self.user, "database_user"), action, AUDIT_ACCESS_CATEGORY, success, &attributes)
        }
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Cuts `text` to at most `max_bytes` on a character boundary; says whether it cut.
pub(crate) fn cut(text: &str, max_bytes: usize) -> (&str, bool) {
    if text.len() <= max_bytes {
        return (text, false);
    }
    let end = (0..=max_bytes).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    (&text[..end], true)
}

/// One statement being recorded: shared by the streams of its results, and
/// written when the last of them ends (or is dropped unread).
struct StatementRecord {
    log: AccessLog,
    accessor: Accessor,
    sql: String,
    protocol: &'static str,
    parameters: Option<Vec<Value>>,
    time_us: i64,
    started: Instant,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    rows: u64,
    /// SQLSTATE and message of the first error.
    error: Option<(String, String)>,
    open_streams: usize,
    /// A result stream was dropped before its end (client gone, portal closed).
    unfinished: bool,
    written: bool,
}

impl StatementRecord {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().expect("statement record")
    }

    fn failed(&self, error: &PgWireError) {
        let mut tally = self.tally();
        if tally.error.is_none() {
            tally.error = Some(sqlstate_and_message(error));
        }
    }

    /// Watches one response of the statement: its rows are counted as the
    /// client reads them.
    fn watch(self: &Arc<Self>, response: Response) -> Response {
        match response {
            Response::Query(mut query) => {
                let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
                query.data_rows = Box::pin(self.count(rows));
                Response::Query(query)
            }
            Response::CopyOut(mut copy) => {
                let rows = std::mem::replace(&mut copy.data_stream, Box::pin(futures::stream::empty()));
                copy.data_stream = Box::pin(self.count(rows));
                Response::CopyOut(copy)
            }
            Response::Error(info) => {
                let mut tally = self.tally();
                if tally.error.is_none() {
                    tally.error = Some((info.code.clone(), info.message.clone()));
                }
                drop(tally);
                Response::Error(info)
            }
            other => other,
        }
    }

    fn count<T>(self: &Arc<Self>, rows: RowStream<T>) -> CountedRows<T> {
        self.tally().open_streams += 1;
        CountedRows { rows, count: 0, record: Arc::clone(self), ended: false }
    }

    fn stream_ended(&self, rows: u64, ended: bool) {
        let mut tally = self.tally();
        tally.rows += rows;
        tally.unfinished |= !ended;
        tally.open_streams -= 1;
        if tally.open_streams == 0 {
            self.write(&mut tally);
        }
    }

    fn write(&self, tally: &mut Tally) {
        if std::mem::replace(&mut tally.written, true) {
            return;
        }
        let (sql, sql_cut) = cut(&self.sql, MAX_RECORDED_SQL_BYTES);
        let mut attributes = json!({
            "sql": sql,
            "rows": tally.rows,
            "duration_ms": self.started.elapsed().as_secs_f64() * 1000.0,
            "protocol": self.protocol,
        });
        let fields = attributes.as_object_mut().expect("an object");
        if sql_cut {
            fields.insert("sql_cut_at_bytes".into(), json!(MAX_RECORDED_SQL_BYTES));
        }
        if let Some(parameters) = &self.parameters {
            fields.insert("parameters".into(), json!(parameters));
        }
        if let Some((sqlstate, message)) = &tally.error {
            fields.insert("sqlstate".into(), json!(sqlstate));
            fields.insert("error".into(), json!(cut(message, MAX_RECORDED_VALUE_BYTES).0));
        }
        if tally.unfinished {
            fields.insert("unfinished".into(), json!(true));
        }
        self.log.record(self.accessor.event(ACTION_QUERY, tally.error.is_none(), self.time_us, attributes));
    }
}

impl Drop for StatementRecord {
    fn drop(&mut self) {
        let mut tally = std::mem::take(&mut *self.tally());
        self.write(&mut tally);
    }
}

fn sqlstate_and_message(error: &PgWireError) -> (String, String) {
    match error {
        PgWireError::UserError(info) => (info.code.clone(), info.message.clone()),
        other => ("XX000".into(), other.to_string()),
    }
}

/// Rows on their way to the client: data rows, or COPY data.
type RowStream<T> = Pin<Box<dyn Stream<Item = PgWireResult<T>> + Send>>;

/// A result's rows on their way to the client, counted.
struct CountedRows<T> {
    rows: RowStream<T>,
    count: u64,
    record: Arc<StatementRecord>,
    ended: bool,
}

impl<T> Stream for CountedRows<T> {
    type Item = PgWireResult<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = match self.rows.as_mut().poll_next(cx) {
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(classify(error)))),
            other => other,
        };
        match &polled {
            Poll::Ready(Some(Ok(_))) => self.count += 1,
            Poll::Ready(Some(Err(error))) => self.record.failed(error),
            Poll::Ready(None) if !self.ended => {
                self.ended = true;
                self.record.stream_ended(self.count, true);
            }
            _ => {}
        }
        polled
    }
}

impl<T> Drop for CountedRows<T> {
    fn drop(&mut self) {
        if !self.ended {
            self.record.stream_ended(self.count, false);
        }
    }
}

/// A connection's query handlers (datafusion-postgres' session service),
/// with every statement recorded and made cancellable from its start.
pub(super) struct AuditedSession {
    pub inner: Arc<DfSessionService>,
    /// The inner service's parser, describing results as PostgreSQL does.
    pub parser: Arc<DescribedAsPostgres<<DfSessionService as ExtendedQueryHandler>::QueryParser>>,
    pub log: AccessLog,
    /// Set by the login, before any statement.
    pub accessor: Arc<OnceLock<Accessor>>,
    pub cancel: StatementCancel,
    /// Bounds planning, which happens before the plan's own limits exist.
    pub timeout: SessionTimeout,
    /// The SQL of each prepared statement as the client wrote it (the parsed
    /// statement only keeps a rendering), by statement name.
    pub prepared_sql: Mutex<HashMap<String, String>>,
}

impl AuditedSession {
    /// `planning` (parsing, planning, and starting the plan's streams) under
    /// the session's statement timeout; the rows are then bounded by the
    /// plan's `StatementLimitsExec`.
    async fn within_timeout<T>(&self, planning: impl Future<Output = PgWireResult<T>>) -> PgWireResult<T> {
        let timeout = self.timeout.get();
        tokio::time::timeout(timeout, planning).await.unwrap_or_else(|_| {
            let ms = timeout.as_millis();
            Err(super::sqlstate::statement_error(
                "57014",
                format!("{} of {ms} ms, while planning it", crate::query::STATEMENT_TIMEOUT),
            ))
        })
    }

    fn begin(&self, sql: &str, protocol: &'static str, parameters: Option<Vec<Value>>) -> Arc<StatementRecord> {
        self.cancel.begin_statement();
        let accessor = self.accessor.get().cloned().unwrap_or_else(|| Accessor {
            user: String::new(),
            org: None,
            address: IpAddr::from([0, 0, 0, 0]),
            application: None,
            tls: false,
            session: None,
        });
        Arc::new(StatementRecord {
            log: self.log.clone(),
            accessor,
            sql: sql.to_string(),
            protocol,
            parameters,
            time_us: now_us(),
            started: Instant::now(),
            tally: Mutex::default(),
        })
    }
}

/// The bound parameters as a record shows them: text as sent; binary values
/// decoded by the type the plan gives the parameter (text, integers,
/// booleans, timestamps), else as `\x` hex.
fn parameter_values(portal: &Portal<<DfSessionService as ExtendedQueryHandler>::Statement>) -> Vec<Value> {
    let types = match &portal.statement.statement.1 {
        Some((_, plan)) => plan.get_parameter_types().unwrap_or_default(),
        None => Default::default(),
    };
    let value = |index: usize, bytes: &[u8]| {
        if !portal.parameter_format.is_binary(index) {
            return Value::String(cut(&String::from_utf8_lossy(bytes), MAX_RECORDED_VALUE_BYTES).0.to_string());
        }
        let data_type = types.get(&format!("${}", index + 1)).cloned().flatten();
        decode_binary(data_type.as_ref(), bytes).unwrap_or_else(|| {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Value::String(format!("\\x{}", cut(&hex, MAX_RECORDED_VALUE_BYTES).0))
        })
    };
    portal
        .parameters
        .iter()
        .enumerate()
        .map(|(index, bytes)| bytes.as_deref().map_or(Value::Null, |bytes| value(index, bytes)))
        .collect()
}

/// A value in PostgreSQL's binary format for the types investigations bind.
fn decode_binary(data_type: Option<&DataType>, bytes: &[u8]) -> Option<Value> {
    /// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
    const PG_EPOCH_US: i64 = 946_684_800_000_000;
    let int = |bytes: &[u8]| -> Option<i64> {
        Some(match bytes.len() {
            2 => i16::from_be_bytes(bytes.try_into().ok()?).into(),
            4 => i32::from_be_bytes(bytes.try_into().ok()?).into(),
            8 => i64::from_be_bytes(bytes.try_into().ok()?),
            _ => return None,
        })
    };
    match data_type? {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = std::str::from_utf8(bytes).ok()?;
            Some(Value::String(cut(text, MAX_RECORDED_VALUE_BYTES).0.to_string()))
        }
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => int(bytes).map(Value::from),
        DataType::Boolean => (bytes.len() == 1).then(|| Value::Bool(bytes[0] != 0)),
        DataType::Timestamp(_, _) => {
            let micros = PG_EPOCH_US.checked_add(int(bytes)?)?;
            let time = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros)?;
            Some(Value::String(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
        }
        _ => None,
    }
}

#[async_trait]
impl SimpleQueryHandler for AuditedSession {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let record = self.begin(query, "simple", None);
        let result = match client_sql(query) {
            Ok(sql) => {
                self.within_timeout(SimpleQueryHandler::do_query(&*self.inner, client, &sql)).await.map_err(classify)
            }
            Err(refused) => Err(refused),
        };
        match result {
            Ok(responses) => Ok(responses.into_iter().map(|response| record.watch(response)).collect()),
            Err(error) => {
                record.failed(&error);
                Err(error)
            }
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for AuditedSession {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = DescribedAsPostgres<<DfSessionService as ExtendedQueryHandler>::QueryParser>;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    /// A statement refused while parsing (a write, bad SQL) never executes:
    /// it is recorded here.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = message.query.clone();
        let name = message.name.clone().unwrap_or_else(|| DEFAULT_NAME.to_string());
        let result = match client_sql(&sql) {
            Ok(restated) => {
                let mut message = message;
                message.query = restated.into_owned();
                self.within_timeout(self.inner.on_parse(client, message)).await.map_err(classify)
            }
            Err(refused) => Err(refused),
        };
        match &result {
            Ok(()) => _ = self.prepared_sql.lock().expect("prepared SQL").insert(name, sql),
            Err(error) => self.begin(&sql, "extended", None).failed(error),
        }
        result
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = self.prepared_sql.lock().expect("prepared SQL").get(&portal.statement.id).cloned();
        let sql = prepared.as_deref().unwrap_or(&portal.statement.statement.0);
        let record = self.begin(sql, "extended", Some(parameter_values(portal)));
        let result = self
            .within_timeout(ExtendedQueryHandler::do_query(&*self.inner, client, portal, max_rows))
            .await
            .map_err(classify);
        match result {
            Ok(response) => Ok(record.watch(response)),
            Err(error) => {
                record.failed(&error);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_parameters_read_by_their_planned_type() {
        let text = decode_binary(Some(&DataType::Utf8), b"alice");
        assert_eq!(text, Some(json!("alice")));
        assert_eq!(decode_binary(Some(&DataType::Int64), &7i64.to_be_bytes()), Some(json!(7)));
        assert_eq!(decode_binary(Some(&DataType::Int32), &(-3i32).to_be_bytes()), Some(json!(-3)));
        assert_eq!(decode_binary(Some(&DataType::Boolean), &[1]), Some(json!(true)));
        // 2026-11-20T08:00:00Z is 848 476 800 s after 2000-01-01.
        let micros = 848_476_800_000_000i64.to_be_bytes();
        let time = decode_binary(
            Some(&DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None)),
            &micros,
        );
        assert_eq!(time, Some(json!("2026-11-20T08:00:00Z")));
        assert_eq!(decode_binary(None, b"x"), None);
        assert_eq!(decode_binary(Some(&DataType::Int64), &[1, 2, 3]), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_past_the_pending_limit_are_counted_and_the_count_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(crate::storage::StorageConfig::new(dir.path())).unwrap();
        let (log, received) = AccessLog::unstarted(3);
        let accessor = Accessor {
            user: "mallory".into(),
            org: None,
            address: IpAddr::from([10, 0, 0, 9]),
            application: None,
            tls: false,
            session: None,
        };
        // Nobody writes yet, as while storage refuses: three wait, five are counted.
        for _ in 0..8 {
            log.login(&accessor, Some(("28P01", "password authentication failed")));
        }
        assert_eq!(log.dropped.load(Ordering::Relaxed), 5);
        let policies = Arc::new(Policies::in_data_dir(dir.path(), None));
        tokio::spawn(write_records(storage.clone(), policies, received, Arc::clone(&log.dropped)));
        log.flush().await;
        let mut stored: Vec<(String, String)> = Vec::new();
        for batch in &storage.snapshot().buffer {
            use datafusion::arrow::array::AsArray;
            let actions = batch.column_by_name("action").unwrap().as_string::<i32>();
            let attributes = batch.column_by_name("attributes").unwrap().as_string::<i32>();
            for row in 0..batch.num_rows() {
                stored.push((actions.value(row).to_string(), attributes.value(row).to_string()));
            }
        }
        assert_eq!(stored.iter().filter(|(a, _)| a == ACTION_LOGIN_FAILED).count(), 3, "{stored:?}");
        let summary = stored.iter().find(|(a, _)| a == ACTION_RECORDS_DROPPED).expect("the count is stored");
        assert!(summary.1.contains("\"dropped\":5"), "{summary:?}");
        assert_eq!(log.dropped.load(Ordering::Relaxed), 0);
        storage.shutdown();
    }

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(cut("select 1", 100), ("select 1", false));
        assert_eq!(cut("äöü", 3), ("ä", true));
        assert_eq!(cut("äöü", 4), ("äö", true));
    }
}
