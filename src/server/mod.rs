//! The Postgres wire endpoint: how psql, drivers and BI tools reach `audit_events`.
//!
//! We own the accept loop and build a fresh set of handlers, with its own
//! DataFusion session, for every connection, so one client's `SET` never
//! reaches another: SCRAM logins (`auth.rs`, `users.rs`), the user's tenant
//! scope fixed in the session at login, cancel requests, connection slots
//! and login throttling (`slots.rs`, `throttle.rs`), and a self-audit record
//! of every statement (`access_log.rs`) are per connection. The protocol
//! itself (pgwire) and the Arrow-to-Postgres encoding, `pg_catalog` emulation
//! and query hooks (datafusion-postgres) come from crates; see ARCHITECTURE.md
//! for why we use them this way.
//!
//! The endpoint is read-only: anything but queries, `EXPLAIN`, `SHOW`, `SET`,
//! transactions and cursors is refused with SQLSTATE 25006 before planning.
//! It never writes to storage.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{CopyTarget, Statement};
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::{DfSessionService, QueryHook};
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::{ClientInfo, PgWireServerHandlers};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::tokio::TlsAcceptor;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{debug, info, warn};

use crate::query;
use crate::storage::Storage;
pub use access_log::AccessLog;
use access_log::AuditedSession;
pub use auth::{AuthMethod, Identity};
use auth::{Login, LoginPolicy};

pub mod access_log;
pub mod auth;
mod catalog;
mod compat;
mod complexity;
pub mod connection;
mod copy_out;
mod describe;
mod over_limit;
mod settings;
pub mod slots;
mod sqlstate;
mod subqueries;
pub mod throttle;
pub mod users;

/// Default cap on concurrent Postgres connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Errors of the Postgres endpoint's own lifecycle (not of one query).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen for Postgres clients on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot set up a query session: {0}")]
    Session(String),
    #[error(
        "no Postgres users in {path}: add one with `auditlake user add NAME --admin` (or --org ORG), \
         or, on a loopback address only, start with --insecure-trust-loopback"
    )]
    NoUsers { path: PathBuf },
    #[error("--insecure-trust-loopback only works on a loopback address, not on {addr}")]
    TrustNotLoopback { addr: SocketAddr },
    #[error(transparent)]
    Users(#[from] users::UserError),
    #[error("TLS is not usable with {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("--require-tls needs --tls-cert and --tls-key")]
    RequireTlsWithoutCert,
}

/// How the Postgres endpoint lets clients in.
#[derive(Clone)]
pub struct Endpoint {
    pub auth: AuthMethod,
    /// TLS for clients that ask for it (`sslmode=require` and stricter).
    pub tls: Option<TlsAcceptor>,
    /// Refuse clients that did not switch to TLS.
    pub require_tls: bool,
    pub max_connections: usize,
    pub limits: query::QueryConfig,
    /// Where every login and statement is recorded.
    pub access_log: AccessLog,
    /// Failed logins, which make the next guesses wait; shared with the web
    /// view's sign-in, so that guesses count wherever they are made.
    pub throttle: throttle::LoginThrottle,
}

/// Loads the certificate chain and private key (PEM) TLS clients see. Any
/// problem stops the server from starting: it never falls back to plaintext.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServerError> {
    let bad = |path: &Path, reason: String| ServerError::Tls { path: path.to_path_buf(), reason };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate in the file".into()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| bad(key, format!("does not go with the certificate: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts Postgres clients on `listener` until the process ends; each logs
/// in by `endpoint.auth` (see [`check_auth`] for when the server may start).
pub async fn serve(listener: TcpListener, storage: Storage, endpoint: Endpoint) {
    let Endpoint { auth, tls, require_tls, max_connections, limits, access_log, throttle } = endpoint;
    let slots = slots::Slots::new(max_connections);
    let policy = LoginPolicy {
        mock_secret: Arc::new(login_secret(&auth)),
        method: auth,
        require_tls,
        access_log,
        slots: slots.clone(),
        throttle,
    };
    let running = RunningStatements::default();
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting a Postgres connection failed");
                continue;
            }
        };
        let Some(slot) = slots.login(peer.ip()) else {
            warn!(%peer, max_connections, "refusing Postgres connection: too many clients logging in");
            tokio::spawn(over_limit::refuse(socket, tls.clone(), running.clone()));
            continue;
        };
        let (storage, limits, policy, tls, running) =
            (storage.clone(), limits.clone(), policy.clone(), tls.clone(), running.clone());
        tokio::spawn(async move {
            let handlers = match ConnectionHandlers::new(&storage, &limits, policy, running) {
                Ok(handlers) => handlers,
                Err(e) => {
                    warn!(%peer, error = %e, "cannot start a session");
                    return;
                }
            };
            debug!(%peer, "Postgres connection opened");
            let (login, running) = (Arc::clone(&handlers.login), handlers.running.clone());
            let logging_in = Arc::clone(&login);
            if let Err(e) = connection::serve(socket, tls, handlers, slot, move || logging_in.pid().is_some()).await {
                debug!(%peer, error = %e, "Postgres connection ended with an error");
            }
            if let Some(pid) = login.pid() {
                running.forget(pid);
            }
        });
    }
}

/// The secret unknown users' answers are made from: the data directory's
/// own, or (without users, or when it cannot be read) one for this run.
fn login_secret(auth: &AuthMethod) -> [u8; 32] {
    match auth {
        AuthMethod::Scram(users) => users.login_secret().unwrap_or_else(|e| {
            warn!(error = %e, "unknown users' SCRAM salts will change at the next start");
            rand::random()
        }),
        AuthMethod::TrustLoopback => rand::random(),
    }
}

/// Binds the Postgres listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
    info!(addr = %listener.local_addr().unwrap_or(addr), "Postgres endpoint listening");
    Ok(listener)
}

/// Whether the endpoint may start with `auth` on `addr`: without users only
/// when trusting loopback was asked for and the address is loopback.
pub fn check_auth(auth: &AuthMethod, addr: SocketAddr) -> Result<(), ServerError> {
    match auth {
        AuthMethod::TrustLoopback if !addr.ip().is_loopback() => Err(ServerError::TrustNotLoopback { addr }),
        AuthMethod::TrustLoopback => {
            warn!(%addr, "Postgres endpoint accepts anyone on loopback without a password (--insecure-trust-loopback)");
            Ok(())
        }
        AuthMethod::Scram(users) => match users.load() {
            Ok(found) if found.is_empty() => Err(ServerError::NoUsers { path: users.path().to_path_buf() }),
            Ok(_) => Ok(()),
            Err(e) => Err(ServerError::Users(e)),
        },
    }
}

/// The statements that cancel requests can reach: each logged-in
/// connection's backend pid and secret key, and its session's cancel.
#[derive(Clone, Default)]
pub(crate) struct RunningStatements {
    by_pid: Arc<std::sync::Mutex<HashMap<i32, (Bytes, query::StatementCancel)>>>,
}

impl RunningStatements {
    pub(crate) fn register(&self, pid: i32, secret_key: Bytes, cancel: query::StatementCancel) {
        self.by_pid.lock().expect("cancel registry").insert(pid, (secret_key, cancel));
    }

    fn forget(&self, pid: i32) {
        self.by_pid.lock().expect("cancel registry").remove(&pid);
    }
}

#[async_trait]
impl CancelHandler for RunningStatements {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let target = self.by_pid.lock().expect("cancel registry").get(&request.pid).cloned();
        match target {
            // The secret key proves the request comes from the session's client.
            Some((secret_key, cancel))
                if bool::from(secret_key.as_ref().ct_eq(request.secret_key.to_bytes().as_ref())) =>
            {
                info!(pid = request.pid, "canceling the running statement on request");
                cancel.cancel();
            }
            _ => warn!(pid = request.pid, "ignoring a cancel request that matches no connection"),
        }
    }
}

/// The handlers of one connection, around that connection's own session.
struct ConnectionHandlers {
    session: Arc<AuditedSession>,
    login: Arc<Login>,
    running: RunningStatements,
}

impl ConnectionHandlers {
    fn new(
        storage: &Storage,
        limits: &query::QueryConfig,
        policy: LoginPolicy,
        running: RunningStatements,
    ) -> Result<Self, ServerError> {
        let controls = query::SessionControls::new(limits);
        let (cancel, timeout) = (controls.cancel.clone(), controls.timeout.clone());
        let settings = settings::SettingsHook { scope: Arc::clone(&controls.scope), timeout: controls.timeout.clone() };
        let log = policy.access_log.clone();
        let login = Arc::new(Login::new(policy, running.clone(), controls.clone()));
        let ctx = query::new_scoped_session_context(storage, limits, controls)
            .map_err(|e| ServerError::Session(e.to_string()))?;
        let accessor = login.accessor();
        let user: catalog::SessionUser = Arc::new(move || accessor.get().map(|accessor| accessor.user.clone()));
        catalog::register(&ctx, query::CATALOG, user).map_err(|e| ServerError::Session(e.to_string()))?;
        compat::register(&ctx);
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnlyHook),
            Arc::new(copy_out::CopyToClientHook),
            Arc::new(compat::SavepointHook),
            Arc::new(CursorStatementHook),
            Arc::new(settings),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
            Arc::new(describe::DescribedQueryHook),
        ];
        let inner = Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks));
        let session = Arc::new(AuditedSession {
            parser: Arc::new(describe::DescribedAsPostgres { inner: inner.query_parser() }),
            inner,
            log,
            accessor: login.accessor(),
            cancel,
            timeout,
            prepared_sql: Default::default(),
        });
        Ok(ConnectionHandlers { session, login, running })
    }
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.session)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.session)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.login)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(self.running.clone())
    }
}

/// Refuses every statement that could change anything.
#[derive(Debug)]
struct ReadOnlyHook;

fn read_only_error(statement: &Statement) -> PgWireError {
    let (code, message) = match statement {
        // As PostgreSQL answers a user without pg_read/write_server_files.
        Statement::Copy { target: CopyTarget::File { .. } | CopyTarget::Program { .. }, .. } => (
            "42501",
            "COPY to or from a file or program on the server is not allowed; use COPY ... TO STDOUT \
             (psql's \\copy ... to 'file') to save rows on the client"
                .to_string(),
        ),
        _ if query::selects_into(statement) => {
            ("25006", "cannot execute SELECT INTO: the auditlake SQL endpoint is read-only".to_string())
        }
        _ => {
            let verb = query::statement_verb(statement);
            ("25006", format!("cannot execute {verb}: the auditlake SQL endpoint is read-only"))
        }
    };
    sqlstate::statement_error(code, message)
}

/// Reads, and copies of query results to the client; never a `SELECT ...
/// INTO`, which creates a table in the session.
fn allowed(statement: &Statement) -> bool {
    !query::selects_into(statement)
        && (query::is_read_only(statement) || copy_out::is_copy_to_client(statement) || compat::is_savepoint(statement))
}

#[async_trait]
impl QueryHook for ReadOnlyHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        (!allowed(statement)).then(|| Err(read_only_error(statement)))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        (!allowed(statement)).then(|| Err(read_only_error(statement)))
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        // Refused at parse time already; a parsed statement here is read-only.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parse(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0)
    }

    #[test]
    fn reads_pass_and_writes_are_refused() {
        for sql in [
            "select 1",
            "explain select * from audit_events",
            "show time zone",
            "set datestyle = 'ISO'",
            "begin",
            "commit",
        ] {
            assert!(query::is_read_only(&parse(sql)), "{sql}");
        }
        for sql in [
            "insert into audit_events (id) values ('x')",
            "delete from audit_events",
            "drop table audit_events",
            "create table t (a int)",
            "copy audit_events to '/tmp/x'",
            "explain analyze delete from audit_events",
            "update audit_events set actor_id = 'x'",
            "select * into stolen from audit_events",
            "with t as (select 1 as x into kept) select * from t",
            "select 1 union select 2 into other",
            "explain select * into stolen from audit_events",
        ] {
            assert!(!query::is_read_only(&parse(sql)), "{sql}");
        }
        let PgWireError::UserError(info) = read_only_error(&parse("drop table audit_events")) else { panic!() };
        assert_eq!(info.code, "25006");
        assert!(info.message.contains("DROP TABLE"), "{}", info.message);
        let copied = parse("copy (select 1 as x into copied) to stdout");
        assert!(!allowed(&copied));
        let PgWireError::UserError(info) = read_only_error(&copied) else { panic!() };
        assert_eq!((info.code.as_str(), info.message.contains("SELECT INTO")), ("25006", true), "{}", info.message);
    }
}
