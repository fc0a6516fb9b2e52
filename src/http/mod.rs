//! The HTTP API: applications send events, SIEMs and tools read one
//! organisation's events back (`export.rs`) with their inclusion proofs,
//! and an organisation's UGC policy is read and changed. Callers present an
//! API token (`tokens.rs`) whose organisation and scope bound what they may
//! do; `listener.rs` bounds the connections.
//!
//! `POST /v1/events` takes a JSON array or NDJSON. The batch is validated as a
//! whole (one bad event rejects all of it, and every bad line is named), then
//! handed to storage, and answered only after storage says it is durable.
//! Reads run in a session scoped to the organisation, on the query runtime.
//! This layer never touches files itself and never answers 2xx for events
//! that are not yet fsynced.
//!
//! Status codes are decided in one place, [`ApiError::status`].

pub mod export;
mod listener;
pub mod search;
pub mod tokens;
pub mod ui;
pub mod viewer;

use search::{Search, Term};
use viewer::{VIEWER_TOKEN_PREFIX, ViewerClaims, ViewerError, ViewerKey, ViewerRequest};

pub use listener::{DEFAULT_MAX_HTTP_CONNECTIONS, HEADER_READ_TIMEOUT};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::integrity::Integrity;
use crate::integrity::proof::ProofError;
use crate::model::{self, FieldError};
use crate::policy::{HASHED_PREFIX, OrgPolicy, Policies, PolicyError, UgcMode};
use crate::query::{LimitHit, QueryConfig, limit_hit};
use crate::storage::{Storage, StorageError};
use tokens::{AuthError, Token, TokenError, TokenScope, Tokens, Unauthenticated};

/// Default largest request body accepted by `POST /v1/events`, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default most bytes of event bodies the server reads and parses at once.
pub const DEFAULT_MAX_INFLIGHT_BODY_BYTES: usize = 256 * 1024 * 1024;
/// What the record of a policy change says was done.
pub const ACTION_POLICY_CHANGED: &str = "audit_log.policy_changed";
/// What a client told to back off (storage busy sealing) should wait
/// before retrying, in seconds.
const RETRY_AFTER_SECONDS: u32 = 1;
/// What a client told the disk is full should wait: space is not freed in
/// a second, and a fleet retrying every second only adds load.
const DISK_FULL_RETRY_AFTER_SECONDS: u32 = 60;

/// Why an ingest request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the batch was rejected: {} invalid field(s)", .0.total)]
    Invalid(model::Rejected),
    #[error("request body is larger than the limit of {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize },
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout { seconds: u64 },
    #[error("the server is reading as many bytes of request bodies as it may ({limit_bytes}); retry shortly")]
    BodiesBusy { limit_bytes: usize },
    #[error("{0}; send application/json or application/x-ndjson, plain or gzip")]
    UnsupportedMedia(String),
    #[error("{0}")]
    Unauthenticated(#[from] Unauthenticated),
    /// The server's fault, not the client's: never answered 401.
    #[error("the token store cannot be read: {0}")]
    TokenStore(#[source] TokenError),
    #[error("this token's scope is {0:?}, which does not allow this")]
    WrongScope(TokenScope),
    #[error("this token is not for organisation {0:?}")]
    NotThisOrg(String),
    #[error("{0}")]
    BadParameter(String),
    #[error("the query failed: {0}")]
    Query(#[source] datafusion::error::DataFusionError),
    #[error("no event {id:?} in organisation {org:?}")]
    NotFound { org: String, id: String },
    #[error("this token may send events of organisation {org:?} only: {} event(s) of others", .errors.len())]
    OtherOrg { org: String, errors: Vec<FieldError> },
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error(
        "this server has no UGC key, so it cannot hash UGC; restart it with --ugc-key-file (create one with `auditlake keygen --ugc-key PATH`)"
    )]
    NoUgcKey,
    #[error("this server does not checkpoint events (start it with --signing-key), so it has no proofs")]
    NoCheckpoints,
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error(transparent)]
    Viewer(#[from] viewer::ViewerError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A bug: work handed to a thread of its own did not finish.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The one mapping from ingest errors to HTTP status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::Body(_) | ApiError::BadParameter(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            // A limit of the statement is the server's refusal, said as such:
            // a timeout as 504, a memory refusal as 503 (retry shortly).
            ApiError::Query(error) => match limit_hit(error) {
                Some(LimitHit::Timeout) => StatusCode::GATEWAY_TIMEOUT,
                Some(LimitHit::OutOfMemory | LimitHit::Canceled) => StatusCode::SERVICE_UNAVAILABLE,
                Some(LimitHit::TooManyRows | LimitHit::ValueTooLarge) => StatusCode::BAD_REQUEST,
                None => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Internal(_) | ApiError::TokenStore(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::WrongScope(_) | ApiError::NotThisOrg(_) | ApiError::OtherOrg { .. } => StatusCode::FORBIDDEN,
            ApiError::BodiesBusy { .. }
            | ApiError::Storage(StorageError::Backpressure { .. } | StorageError::ShutDown) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Storage(StorageError::DiskFull(_)) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Storage(StorageError::RecordTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Policy(PolicyError::Invalid(_)) => StatusCode::BAD_REQUEST,
            ApiError::Policy(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NoUgcKey | ApiError::NoCheckpoints => StatusCode::CONFLICT,
            ApiError::Proof(ProofError::NotCheckpointed(_)) => StatusCode::CONFLICT,
            ApiError::Proof(ProofError::Gone(_)) => StatusCode::NOT_FOUND,
            ApiError::Proof(ProofError::Integrity(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Viewer(ViewerError::BadRequest(_)) => StatusCode::BAD_REQUEST,
            ApiError::Viewer(ViewerError::Forged | ViewerError::Expired(_)) => StatusCode::UNAUTHORIZED,
            ApiError::Viewer(ViewerError::Settings(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Invalid(model::Rejected { listed, total }) => {
                // A batch of a million bad events is answered with the first
                // problems and how many there are, not a million lines.
                let listed = &listed[..listed.len().min(MAX_LISTED_PROBLEMS)];
                json!({ "error": self.to_string(), "errors": listed, "errors_total": total })
            }
            ApiError::OtherOrg { errors, .. } => {
                let listed = &errors[..errors.len().min(MAX_LISTED_PROBLEMS)];
                json!({ "error": self.to_string(), "errors": listed, "errors_total": errors.len() })
            }
            _ => json!({ "error": self.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        let retry_after = match status {
            StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_SECONDS),
            StatusCode::INSUFFICIENT_STORAGE => Some(DISK_FULL_RETRY_AFTER_SECONDS),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthenticated(refused) => ApiError::Unauthenticated(refused),
            AuthError::Store(cause) => ApiError::TokenStore(cause),
        }
    }
}

/// Who may send events.
#[derive(Debug, Clone)]
pub struct ApiAuth {
    pub tokens: Arc<Tokens>,
    /// Requests without a token are taken as from an any-organisation
    /// ingest token (`--insecure-trust-loopback`, on loopback only).
    pub trust_without_token: bool,
}

/// What the HTTP API serves from.
#[derive(Debug, Clone)]
pub struct Api {
    /// Connections the listener serves at once.
    pub max_connections: usize,
    /// Where export queries are planned and run: off the runtime that
    /// answers requests.
    pub queries: tokio::runtime::Handle,
    pub storage: Storage,
    pub max_body_bytes: usize,
    /// What bodies being read and parsed may take together.
    pub bodies: BodyBudget,
    pub auth: ApiAuth,
    /// What export queries may use.
    pub limits: QueryConfig,
    /// Applied to every batch before it reaches storage.
    pub policies: Arc<Policies>,
    /// Inclusion proofs; `None` when the server does not checkpoint.
    pub integrity: Option<Arc<Integrity>>,
    /// Signs and checks viewer tokens.
    pub viewer: Arc<ViewerKey>,
    /// The web view's sessions, sign-in and records.
    pub ui: ui::UiState,
}

/// The memory event bodies may take together while they are read, parsed
/// and stored: each request holds its announced length (or the largest
/// body, when it announces none) until answered, or is answered 503 at
/// once. Without it, every connection a token holder opens could hold a
/// body of the largest size.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    kib: Arc<tokio::sync::Semaphore>,
    limit_bytes: usize,
}

impl BodyBudget {
    pub fn new(limit_bytes: usize) -> Self {
        BodyBudget { kib: Arc::new(tokio::sync::Semaphore::new(limit_bytes.div_ceil(1024))), limit_bytes }
    }

    /// Room for a body of `bytes`, held until the guard is dropped.
    fn reserve(&self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        Arc::clone(&self.kib)
            .try_acquire_many_owned(kib)
            .map_err(|_| ApiError::BodiesBusy { limit_bytes: self.limit_bytes })
    }
}

/// Largest policy document `PUT /v1/orgs/{org}/policy` reads.
pub const MAX_POLICY_BODY_BYTES: usize = 64 * 1024;

/// The HTTP API.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/orgs/{org}/events", get(export_events))
        .route("/v1/orgs/{org}/events/{id}", get(export_event))
        .route("/v1/orgs/{org}/events/{id}/proof", get(event_proof))
        .route("/v1/orgs/{org}/policy", get(get_policy).put(put_policy))
        .route("/v1/orgs/{org}/viewer-tokens", post(create_viewer_token))
        .route("/healthz", get(health))
        .route("/openapi.json", get(openapi))
        .merge(ui::routes())
        .layer(DefaultBodyLimit::max(api.max_body_bytes))
        .with_state(api)
}

/// A request's body, read only now (handlers call this once the token was
/// checked: a client without one is answered before it sends a byte of
/// body) and never past `limit_bytes`: a larger `Content-Length` is refused
/// unread, and a body that grows past the limit is refused as it does.
/// The most problems of a rejected batch an answer lists (`errors_total`
/// says how many there were).
pub const MAX_LISTED_PROBLEMS: usize = 100;

/// How long a client may take to send a request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The most memory set aside for a body before its bytes arrive.
const BODY_PREALLOCATION_BYTES: u64 = 1024 * 1024;

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

async fn read_body(headers: &HeaderMap, body: axum::body::Body, limit_bytes: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge { limit_bytes };
    let declared = content_length(headers);
    if declared.is_some_and(|length| length > limit_bytes as u64) {
        return Err(too_large());
    }
    // Grown as bytes arrive: a length announced and not sent costs nothing.
    let mut read = Vec::with_capacity(declared.map_or(0, |length| length.min(BODY_PREALLOCATION_BYTES) as usize));
    let mut chunks = body.into_data_stream();
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut chunks)).await {
            Ok(Some(chunk)) => chunk.map_err(|e| ApiError::Body(e.to_string()))?,
            Ok(None) => return Ok(Bytes::from(read)),
            Err(_) => return Err(ApiError::BodyTimeout { seconds: BODY_READ_TIMEOUT.as_secs() }),
        };
        if read.len() + chunk.len() > limit_bytes {
            return Err(too_large());
        }
        read.extend_from_slice(&chunk);
    }
}

/// The organisation a request may act for (`None`: any), from its token,
/// which must have `scope`. Checked before the body is read.
fn token_org(auth: &ApiAuth, headers: &HeaderMap, scope: TokenScope) -> Result<Option<String>, ApiError> {
    Ok(token_of(auth, headers, scope)?.and_then(|token| token.org))
}

/// The request's token, which must have `scope`; `None` for a request
/// trusted without one.
fn token_of(auth: &ApiAuth, headers: &HeaderMap, scope: TokenScope) -> Result<Option<Token>, ApiError> {
    let authorization = headers.get(header::AUTHORIZATION);
    if authorization.is_none() && auth.trust_without_token {
        return Ok(None);
    }
    let authorization =
        authorization.map(|value| value.to_str().map_err(|_| Unauthenticated::Malformed)).transpose()?;
    let token = auth.tokens.authenticate(authorization)?;
    if token.scope != scope {
        return Err(ApiError::WrongScope(token.scope));
    }
    Ok(Some(token))
}

/// Whether the request's token has `scope` for organisation `org`.
fn may(auth: &ApiAuth, headers: &HeaderMap, scope: TokenScope, org: &str) -> Result<(), ApiError> {
    match token_org(auth, headers, scope)? {
        Some(own) if own != org => Err(ApiError::NotThisOrg(org.to_string())),
        _ => Ok(()),
    }
}

/// Whether the request's token may read `org`'s events.
fn may_read(auth: &ApiAuth, headers: &HeaderMap, org: &str) -> Result<(), ApiError> {
    may(auth, headers, TokenScope::Read, org)
}

/// An organisation's policy as the API shows it.
fn policy_json(org: &str, policy: &OrgPolicy) -> serde_json::Value {
    json!({
        "org": org,
        "ugc": policy.ugc,
        "ugc_attribute_keys": policy.ugc_attribute_keys,
        "embed_origins": policy.embed_origins,
    })
}

async fn get_policy(
    State(app): State<Api>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    may(&app.auth, &headers, TokenScope::Admin, &org)?;
    Ok(Json(policy_json(&org, &app.policies.of(&org)?)))
}

/// Sets the policy for events received from now on; `auditlake org rewrite`
/// applies a stricter one to what is stored already.
async fn put_policy(
    State(app): State<Api>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let token = token_of(&app.auth, &headers, TokenScope::Admin)?;
    if let Some(own) = token.as_ref().and_then(|t| t.org.as_deref())
        && own != org
    {
        return Err(ApiError::NotThisOrg(org));
    }
    let body = read_body(&headers, body, MAX_POLICY_BODY_BYTES).await?;
    let policy: OrgPolicy =
        serde_json::from_slice(&body).map_err(|e| ApiError::Body(format!("the policy is not valid: {e}")))?;
    // Retention and legal hold are the operator's (`auditlake org policy`):
    // an organisation's token must not lift a hold.
    if policy.retention_days.is_some() || policy.legal_hold {
        return Err(ApiError::Body(
            "retention_days and legal_hold are set by the operator (auditlake org policy), not over HTTP".into(),
        ));
    }
    if policy.ugc == UgcMode::Hash && app.policies.key().is_none() {
        return Err(ApiError::NoUgcKey);
    }
    // Read, change and write under the file's lock, fsyncs off the async
    // workers: concurrent changes (other organisations', the command
    // line's) are all kept, and the answer comes once the change is durable.
    let (policies, changed_org) = (Arc::clone(&app.policies), org.clone());
    let policy = tokio::task::spawn_blocking(move || {
        policies.update(&changed_org, |current| {
            Ok(OrgPolicy { retention_days: current.retention_days, legal_hold: current.legal_hold, ..policy })
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("changing the policy stopped: {e}")))??;
    info!(org, ugc = ?policy.ugc, attribute_keys = policy.ugc_attribute_keys.len(), "UGC policy changed");
    // The change is itself on record, in the organisation's own trail of
    // audit-log use (a category clients cannot send).
    let actor = token.map_or_else(|| "trusted-loopback".to_string(), |t| format!("token:{}", t.id));
    let record = model::Event::system(
        &org,
        (&actor, "api_token"),
        ACTION_POLICY_CHANGED,
        model::AUDIT_ACCESS_CATEGORY,
        true,
        &policy_json(&org, &policy),
    );
    app.storage.append(vec![record]).await?;
    Ok(Json(policy_json(&org, &policy)))
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `POST /v1/orgs/{org}/viewer-tokens`: a viewer token for the browser of
/// one of `org`'s users, asked for by the application with a read token of
/// `org` (a viewer token never reads more than its maker may).
async fn create_viewer_token(
    State(app): State<Api>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ViewerRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    may_read(&app.auth, &headers, &org)?;
    let Json(request) = body.map_err(|rejection| ApiError::BadParameter(rejection.body_text()))?;
    let (token, claims) = app.viewer.issue(&org, request, now_ms())?;
    Ok((StatusCode::CREATED, Json(json!({ "token": token, "expires_at": claims.expires_at(), "claims": claims }))))
}

/// Content ids as `org` stores them: where the organisation hashes UGC,
/// `content=X` (and `content:X`, and a viewer token's content) means the
/// events about X.
pub(crate) fn as_stored<'a>(
    app: &Api,
    org: &str,
    contents: impl Iterator<Item = &'a mut String>,
) -> Result<(), ApiError> {
    let mut unhashed = contents.filter(|content| !content.starts_with(HASHED_PREFIX)).peekable();
    if unhashed.peek().is_some() && app.policies.of(org)?.ugc == UgcMode::Hash {
        let key = app.policies.key().ok_or(PolicyError::NoKey { org: org.to_string() })?;
        for content in unhashed {
            *content = key.hash(org, content);
        }
    }
    Ok(())
}

/// Who reads `org`'s events over the API: a read token of `org`, or a
/// viewer token for `org` (its claims: narrowing and end user).
struct ApiReader(Option<ViewerClaims>);

impl ApiReader {
    /// Terms every read of this reader adds: a viewer token's narrowing.
    fn narrowing(&self) -> Vec<Term> {
        self.0.as_ref().map_or_else(Vec::new, ViewerClaims::narrowing)
    }

    /// Records a viewer token's read, as the embedded viewer's pages are
    /// (a read token's reads are not: a SIEM poller would read its own
    /// records back without end).
    fn record<T>(
        &self,
        app: &Api,
        (headers, address): (&HeaderMap, Option<Extension<ui::ClientAddress>>),
        view: &str,
        attributes: serde_json::Value,
        result: &Result<T, ApiError>,
    ) {
        if let Some(claims) = &self.0 {
            let reader = ui::session::Reader::Viewer(claims.clone());
            ui::Visit::of(&reader, headers, address).record_api(
                &app.ui.access_log,
                view,
                attributes,
                result.as_ref().err(),
            );
        }
    }
}

/// Who may read `org`'s events: a read token of `org` (no narrowing), or a
/// viewer token for `org` (its narrowing).
fn reader_of(app: &Api, headers: &HeaderMap, org: &str) -> Result<ApiReader, ApiError> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    let Some(token) =
        bearer.and_then(|value| value.strip_prefix("Bearer ")).filter(|t| t.starts_with(VIEWER_TOKEN_PREFIX))
    else {
        may_read(&app.auth, headers, org)?;
        return Ok(ApiReader(None));
    };
    let claims = app.viewer.verify(token.trim(), now_ms())?;
    if claims.org != org {
        return Err(ApiError::NotThisOrg(org.to_string()));
    }
    Ok(ApiReader(Some(claims)))
}

async fn export_events(
    State(app): State<Api>,
    Path(org): Path<String>,
    address: Option<Extension<ui::ClientAddress>>,
    headers: HeaderMap,
    request: Result<Query<export::PageRequest>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reader = reader_of(&app, &headers, &org)?;
    let Query(mut request) = request.map_err(|rejection| ApiError::BadParameter(rejection.body_text()))?;
    let searched = request.search.clone();
    let page = async {
        let mut search = request.search()?;
        search.terms.extend(reader.narrowing());
        as_stored(&app, &org, request.content.iter_mut().chain(search.content_ids_mut()))?;
        let (app, org) = (app.clone(), org.clone());
        let page = app
            .queries
            .clone()
            .spawn(async move { export::page(&app.storage, &app.limits, &org, &request, &search).await });
        page.await.map_err(|e| ApiError::Internal(e.to_string()))?
    }
    .await;
    let rows = page.as_ref().map_or(0, |page| page["events"].as_array().map_or(0, Vec::len));
    reader.record(&app, (&headers, address), "api_events", json!({ "search": searched, "rows": rows }), &page);
    Ok(Json(page?))
}

async fn export_event(
    State(app): State<Api>,
    Path((org, id)): Path<(String, String)>,
    address: Option<Extension<ui::ClientAddress>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reader = reader_of(&app, &headers, &org)?;
    let found = match one_event(&app, &org, &id, reader.narrowing()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(ApiError::NotFound { org: org.clone(), id: id.clone() }),
        Err(error) => Err(error),
    };
    reader.record(&app, (&headers, address), "api_event", json!({ "id": id }), &found);
    Ok(Json(found?))
}

/// One event of `org` by id within a viewer token's `narrowing`, looked up
/// on the query runtime.
async fn one_event(
    app: &Api,
    org: &str,
    id: &str,
    narrowing: Vec<Term>,
) -> Result<Option<serde_json::Value>, ApiError> {
    let mut within = Search { terms: narrowing };
    as_stored(app, org, within.content_ids_mut())?;
    let (storage, limits, org, id) = (app.storage.clone(), app.limits.clone(), org.to_string(), id.to_string());
    let lookup = app.queries.spawn(async move { export::one(&storage, &limits, &org, &id, within.condition()).await });
    lookup.await.map_err(|e| ApiError::Internal(e.to_string()))?
}

/// The event and the proof that it is included under a signed checkpoint.
async fn event_proof(
    State(app): State<Api>,
    Path((org, id)): Path<(String, String)>,
    address: Option<Extension<ui::ClientAddress>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reader = reader_of(&app, &headers, &org)?;
    let integrity = app.integrity.clone().ok_or(ApiError::NoCheckpoints)?;
    let event = one_event(&app, &org, &id, reader.narrowing()).await;
    let event = event.and_then(|found| found.ok_or(ApiError::NotFound { org, id: id.clone() }));
    reader.record(&app, (&headers, address), "api_proof", json!({ "id": id }), &event);
    let event = event?;
    let seq = event["seq"].as_u64().ok_or_else(|| ApiError::Internal("an event without a seq".into()))?;
    let storage = app.storage.clone();
    let mut proof = tokio::task::spawn_blocking(move || integrity.prove(&storage, seq))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    proof["event"] = event;
    Ok(Json(proof))
}

async fn post_events(
    State(app): State<Api>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let org = token_org(&app.auth, &headers, TokenScope::Ingest)?;
    let announced =
        content_length(&headers).map_or(app.max_body_bytes, |length| length.min(app.max_body_bytes as u64) as usize);
    let _room = app.bodies.reserve(announced)?;
    let body = read_body(&headers, body, app.max_body_bytes).await?;
    let body = decoded_body(&headers, body, app.max_body_bytes)?;
    let mut events =
        model::parse_batch_listing(&body, chrono::Utc::now(), MAX_LISTED_PROBLEMS).map_err(ApiError::Invalid)?;
    if let Some(org) = org
        && events.iter().any(|event| event.org_id != org)
    {
        // Named by the line each event came from, as other rejections are.
        let lines = model::event_lines(&body);
        let errors = events
            .iter()
            .zip(lines)
            .filter(|(event, _)| event.org_id != org)
            .map(|(event, line)| {
                FieldError::new(line, Some("org_id"), format!("{:?} is not this token's organisation", event.org_id))
            })
            .collect();
        return Err(ApiError::OtherOrg { org, errors });
    }
    // Before storage sees the batch: what a policy drops or hashes never
    // reaches the WAL.
    app.policies.apply(&mut events)?;
    let accepted = events.len();
    let appended = app.storage.append(events).await.inspect_err(|e| {
        warn!(error = %e, "ingest batch not stored");
    })?;
    // Every event of the batch is durable now; `duplicates` of them were
    // stored by an earlier request (a retry) and were not stored again.
    let (first_seq, last_seq) = appended.seqs.unzip();
    Ok(Json(json!({
        "accepted": accepted,
        "stored": accepted - appended.duplicates,
        "duplicates": appended.duplicates,
        "first_seq": first_seq,
        "last_seq": last_seq,
    })))
}

/// Content types a batch may be sent as (parameters aside). No content type
/// at all is taken as JSON too.
const ACCEPTED_CONTENT_TYPES: [&str; 4] =
    ["application/json", "application/x-ndjson", "application/ndjson", "application/jsonl"];

/// The request body as JSON text: its content type checked, a gzip body
/// inflated, and never more than `max_body_bytes` once inflated (a small
/// gzip body can inflate without bound).
fn decoded_body(headers: &HeaderMap, body: Bytes, max_body_bytes: usize) -> Result<Bytes, ApiError> {
    let text_header = |name: header::HeaderName| {
        headers
            .get(&name)
            .map(|value| value.to_str().map(|v| v.trim().to_ascii_lowercase()))
            .transpose()
            .map_err(|_| ApiError::UnsupportedMedia(format!("{name} is not text")))
    };
    if let Some(content_type) = text_header(header::CONTENT_TYPE)? {
        let mut parts = content_type.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let utf8 = parts.all(|p| p.strip_prefix("charset=").is_none_or(|c| c.trim_matches('"') == "utf-8"));
        if !ACCEPTED_CONTENT_TYPES.contains(&media) || !utf8 {
            return Err(ApiError::UnsupportedMedia(format!("Content-Type {content_type:?} is not accepted")));
        }
    }
    match text_header(header::CONTENT_ENCODING)?.as_deref() {
        None | Some("identity") => Ok(body),
        Some("gzip") => {
            use std::io::Read;
            let mut inflated = Vec::new();
            // Every member: a body of several members is one gzip stream to
            // gzip(1), and stopping after the first would drop events silently.
            flate2::read::MultiGzDecoder::new(body.as_ref())
                .take(max_body_bytes as u64 + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| ApiError::Body(format!("the gzip body cannot be inflated: {e}")))?;
            if inflated.len() > max_body_bytes {
                return Err(ApiError::TooLarge { limit_bytes: max_body_bytes });
            }
            Ok(Bytes::from(inflated))
        }
        Some(other) => Err(ApiError::UnsupportedMedia(format!("Content-Encoding {other:?} is not accepted"))),
    }
}

/// The API's OpenAPI document, kept in the repository (`api/openapi.json`)
/// and served as it is there.
pub const OPENAPI_JSON: &str = include_str!("../../api/openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// `200 {"status": "ok", ...}`, or `503 {"status": "degraded", "reasons":
/// [...]}` while storage cannot work as it should (a load balancer or a
/// service manager then knows without parsing logs).
async fn health(State(app): State<Api>) -> (StatusCode, Json<serde_json::Value>) {
    let stats = app.storage.stats();
    let reasons = app.storage.health();
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({
        "status": if reasons.is_empty() { "ok" } else { "degraded" },
        "last_seq": stats.last_seq,
        "sealed_seq": stats.sealed_seq,
        "buffered_rows": stats.buffered_rows,
        "segments": stats.segments,
        "compacting": stats.compacting,
    });
    if !reasons.is_empty() {
        body["reasons"] = json!(reasons);
    }
    (status, Json(body))
}

/// Binds the HTTP listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for HTTP on {addr}: {e}")))?;
    info!(addr = %listener.local_addr().unwrap_or(addr), "HTTP ingest listening");
    Ok(listener)
}

/// Serves the HTTP API until the process ends.
pub async fn serve(listener: TcpListener, api: Api) -> std::io::Result<()> {
    let max_connections = api.max_connections;
    listener::serve(listener, router(api), max_connections).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(error: ApiError) -> (u16, Option<String>) {
        let response = error.into_response();
        let retry_after = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), retry_after)
    }

    #[test]
    fn the_openapi_document_describes_the_events_we_take() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("api/openapi.json is JSON");
        let properties = document["components"]["schemas"]["Event"]["properties"].as_object().unwrap();
        let mut described: Vec<&str> = properties.keys().map(String::as_str).collect();
        described.sort_unstable();
        // Every column but those the server sets.
        let mut columns: Vec<String> = model::schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|name| name != "received_at" && name != "seq")
            .collect();
        columns.sort_unstable();
        assert_eq!(described, columns);
        for path in [
            "/v1/events",
            "/v1/orgs/{org}/events",
            "/v1/orgs/{org}/events/{id}",
            "/v1/orgs/{org}/policy",
            "/healthz",
            "/openapi.json",
        ] {
            assert!(document["paths"].get(path).is_some(), "{path} is described");
        }
        for status in ["200", "400", "401", "403", "413", "415", "503", "507"] {
            assert!(document["paths"]["/v1/events"]["post"]["responses"].get(status).is_some(), "{status}");
        }
        for status in ["200", "400", "401", "403", "500", "503", "504"] {
            let read = &document["paths"]["/v1/orgs/{org}/events"]["get"]["responses"];
            assert!(read.get(status).is_some(), "{status} of a read is described");
        }
    }

    #[test]
    fn every_error_maps_to_one_status() {
        use datafusion::error::DataFusionError;

        use crate::query::{STATEMENT_TIMEOUT, TOO_MANY_ROWS};

        let io = || std::io::Error::other("boom");
        let wal_io = || Arc::new(StorageError::Io { path: "/wal".into(), source: io() });
        let cases = [
            (ApiError::Invalid(model::Rejected { listed: Vec::new(), total: 0 }), 400, None),
            (ApiError::Body("cut off".into()), 400, None),
            (ApiError::TooLarge { limit_bytes: 1 }, 413, None),
            (ApiError::UnsupportedMedia("br".into()), 415, None),
            (Unauthenticated::Unknown.into(), 401, None),
            (ApiError::WrongScope(TokenScope::Read), 403, None),
            (ApiError::NotThisOrg("acme".into()), 403, None),
            (ApiError::BadParameter("limit".into()), 400, None),
            (ApiError::Query(DataFusionError::Internal("boom".into())), 500, None),
            // The statement's limits, whether they strike at once or inside a plan.
            (ApiError::Query(DataFusionError::Execution(format!("{STATEMENT_TIMEOUT} of 5 ms"))), 504, None),
            (ApiError::Query(DataFusionError::ResourcesExhausted("cannot reserve 64 KiB".into())), 503, Some("1")),
            (ApiError::Query(DataFusionError::ResourcesExhausted(format!("{TOO_MANY_ROWS} 10 rows"))), 400, None),
            (ApiError::Internal("a task panicked".into()), 500, None),
            // A token file that cannot be read is the server's problem.
            (AuthError::Store(TokenError::NoSuchToken("x".into())).into(), 500, None),
            (AuthError::from(Unauthenticated::Missing).into(), 401, None),
            (ApiError::NotFound { org: "acme".into(), id: "x".into() }, 404, None),
            (ApiError::OtherOrg { org: "acme".into(), errors: Vec::new() }, 403, None),
            (StorageError::Backpressure { buffered_bytes: 2, limit_bytes: 1 }.into(), 503, Some("1")),
            (StorageError::ShutDown.into(), 503, Some("1")),
            // A full disk is not freed in a second: retrying clients wait a minute.
            (StorageError::DiskFull(wal_io()).into(), 507, Some("60")),
            (StorageError::WalWrite(wal_io()).into(), 500, None),
            (StorageError::WalPoisoned(wal_io()).into(), 500, None),
            (StorageError::Io { path: "/x".into(), source: io() }.into(), 500, None),
            (PolicyError::Invalid("keys".into()).into(), 400, None),
            (PolicyError::NoKey { org: "acme".into() }.into(), 500, None),
            (ApiError::NoUgcKey, 409, None),
        ];
        for (error, status, retry_after) in cases {
            let name = format!("{error:?}");
            assert_eq!(status_of(error), (status, retry_after.map(str::to_owned)), "{name}");
        }
    }

    fn gzip_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_cases(1024))]

        /// Any bytes sent as gzip are inflated whole within the limit, or
        /// refused: never a panic, never more than the limit.
        #[test]
        fn gzip_bodies_inflate_within_the_limit_or_are_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            damage in proptest::collection::vec((0usize..512, proptest::prelude::any::<u8>()), 0..4),
            limit in 1usize..300,
        ) {
            let mut body = gzip(&bytes);
            for (at, value) in damage {
                let at = at % body.len();
                body[at] ^= value;
            }
            if let Ok(inflated) = decoded_body(&gzip_headers(), Bytes::from(body), limit) {
                proptest::prop_assert!(inflated.len() <= limit);
            }
            // Undamaged, it reads back exactly, or is too large.
            match decoded_body(&gzip_headers(), Bytes::from(gzip(&bytes)), limit) {
                Ok(inflated) => proptest::prop_assert_eq!(inflated.as_ref(), bytes.as_slice()),
                Err(error) => proptest::prop_assert!(bytes.len() > limit, "{}", error),
            }
        }

        /// Any bytes as an event batch: events or named problems, no panic.
        #[test]
        fn any_body_is_parsed_or_refused_without_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = model::parse_batch(&bytes, chrono::Utc::now());
        }
    }
}
