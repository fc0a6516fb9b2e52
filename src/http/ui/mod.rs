//! The web investigation view, served by the binary at `/ui/`: for the
//! investigator who does not write SQL ("everything alice did since
//! Monday"). Pages are rendered here on the server; the few assets (one
//! stylesheet, one small script) are compiled into the binary, so the view
//! works offline and fetches nothing from elsewhere (the pages' Content
//! Security Policy says `default-src 'self'`).
//!
//! The view is a thin client of the tenant-scoped query path: a reader
//! signs in as a Postgres role or with an API read token ([`session`]),
//! every query runs in a session scoped to that reader's tenant, the search
//! box's language ([`super::search`]) only adds conditions, and every page
//! shown is recorded in the audit trail as `audit_log.ui_read`. It never
//! shows more than the same reader would get over SQL, and never writes
//! anything but those records.

mod detail;
mod embed;
mod html;
mod query;
mod saved;
pub mod session;
mod views;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use axum::Router;
use axum::extract::{Extension, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::search::SearchError;
use super::tokens::TokenScope;
use super::{Api, ApiError};
use crate::model::{AUDIT_ACCESS_CATEGORY, Event, SYSTEM_ORG_ID};
use crate::server::access_log::{self, ACTION_LOGIN, ACTION_LOGIN_FAILED, ACTION_UI_READ, AccessLog};
use crate::server::throttle::LoginThrottle;
use crate::server::users::{Role, Users};
use html::Page;
use session::{Reader, SessionError, Sessions, UI_SESSION_COOKIE};

/// The largest form body the view reads (a sign-in: a name, a password
/// or a token); more is refused unread, so that anonymous clients cannot
/// make the server hold the API's event-batch size each.
pub const MAX_FORM_BODY_BYTES: usize = 16 * 1024;
/// Longest user agent kept in a record of a read, in bytes.
const MAX_RECORDED_USER_AGENT_BYTES: usize = 256;

/// What the web view keeps besides the API's state.
#[derive(Debug, Clone)]
pub struct UiState {
    /// The Postgres endpoint's users, whose passwords sign in here too.
    pub users: Users,
    pub sessions: Sessions,
    /// Failed sign-ins count as failed Postgres logins do.
    pub throttle: LoginThrottle,
    /// Where every page shown is recorded.
    pub access_log: AccessLog,
}

/// The client's address, put on each request by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub IpAddr);

/// Why a page is not shown.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("{0}")]
    Search(#[from] SearchError),
    #[error("{0}")]
    BadParameter(String),
    #[error("user name or password (or token) is wrong")]
    SignInRefused,
    #[error("too many failed sign-ins; wait {seconds} s before trying again")]
    SignInThrottled { seconds: u64 },
    #[error("sign-in requests must come from this server's own pages")]
    CrossSite,
    #[error("a form of this view is at most {MAX_FORM_BODY_BYTES} bytes")]
    FormTooLarge,
    #[error("no such event here")]
    NotFound,
    #[error("{0}")]
    Api(#[from] ApiError),
}

impl UiError {
    /// The one mapping from the view's errors to HTTP status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            UiError::Session(SessionError::NotSignedIn) | UiError::SignInRefused => StatusCode::UNAUTHORIZED,
            UiError::Session(SessionError::TooManyRequests) | UiError::SignInThrottled { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            UiError::Session(SessionError::TooManySessions) => StatusCode::SERVICE_UNAVAILABLE,
            UiError::Session(SessionError::Users(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            UiError::Search(_) | UiError::BadParameter(_) => StatusCode::BAD_REQUEST,
            UiError::CrossSite => StatusCode::FORBIDDEN,
            UiError::FormTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UiError::NotFound => StatusCode::NOT_FOUND,
            UiError::Api(error) => error.status(),
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        if matches!(self, UiError::Session(SessionError::NotSignedIn)) {
            return Redirect::to("/ui/sign-in").into_response();
        }
        let status = self.status();
        let body =
            format!("{}<p><a href=\"/ui/events\">Back to the events</a></p>", html::message(&self.to_string(), true));
        let mut response =
            Page { title: "Not shown".into(), reader: None, current: "", body, frame_ancestors: None }.render(status);
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        response
    }
}

/// The view's routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/events") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/events") }))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", axum::routing::post(sign_out))
        .route("/ui/events", get(views::events))
        .route("/ui/timeline", get(views::timeline))
        .route("/ui/content", get(views::content))
        .route("/ui/event/{org}/{id}", get(detail::detail))
        .route("/ui/saved", get(saved::list))
        .route("/ui/saved/{name}", get(saved::run))
        .route("/ui/assets/{name}", get(asset))
        .route("/embed", get(embed::embed))
        .layer(axum::middleware::from_fn(back_after_sign_in))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BODY_BYTES))
}

/// A reader sent to sign in from a page (a shared link, an ended session)
/// comes back to that page once signed in.
async fn back_after_sign_in(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let asked = (request.method() == axum::http::Method::GET)
        .then(|| request.uri().path_and_query().map(|asked| asked.as_str().to_string()))
        .flatten();
    let mut response = next.run(request).await;
    let to_sign_in = response.headers().get(header::LOCATION).is_some_and(|to| to == "/ui/sign-in");
    if let (true, Some(asked)) = (to_sign_in, asked) {
        let location = html::link("/ui/sign-in", &[("next", &asked)]);
        response.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).expect("an encoded link"));
    }
    response
}

/// Where a sign-in may send the reader on: a page of this view, never
/// another site (`//host`, `/\\host`) nor the sign-in itself.
fn page_to_return_to(next: &str) -> Option<&str> {
    let local = next.starts_with("/ui/") && !next.contains("//") && !next.contains('\\');
    let plain = !next.chars().any(char::is_control);
    (local && plain && !next.starts_with("/ui/sign-")).then_some(next)
}

/// The assets, compiled in.
const ASSETS: [(&str, &str, &str); 2] = [
    ("ui.css", "text/css; charset=utf-8", include_str!("assets/ui.css")),
    ("ui.js", "text/javascript; charset=utf-8", include_str!("assets/ui.js")),
];

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, text)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "max-age=3600"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *text,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

fn cookie_session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .find_map(|cookie| cookie.trim().strip_prefix(UI_SESSION_COOKIE)?.strip_prefix('='))
}

/// The signed-in reader of a request (within its session's budget).
pub fn signed_in(app: &Api, headers: &HeaderMap) -> Result<Reader, UiError> {
    let id = cookie_session(headers).ok_or(SessionError::NotSignedIn)?;
    Ok(app.ui.sessions.reader(id, Instant::now())?)
}

/// Who made a request, as its record names them.
pub struct Visit<'a> {
    pub reader: &'a Reader,
    pub address: IpAddr,
    pub user_agent: Option<String>,
    /// The session, as the records name it (not its cookie value).
    pub session: String,
}

impl<'a> Visit<'a> {
    pub fn of(reader: &'a Reader, headers: &HeaderMap, address: Option<Extension<ClientAddress>>) -> Self {
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|agent| access_log::cut(agent, MAX_RECORDED_USER_AGENT_BYTES).0.to_string());
        // A record names the session without its secret: a digest's start.
        let session = match cookie_session(headers) {
            Some(id) => {
                format!("ui-{}", &crate::storage::settings::to_hex(&crate::digest::sha256(id.as_bytes()))[..16])
            }
            None => "embed".to_string(),
        };
        let address = address.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(ClientAddress(ip))| ip);
        Visit { reader, address, user_agent, session }
    }

    /// Records that `view` was shown (or refused, with `error`).
    pub fn record(&self, log: &AccessLog, view: &str, attributes: Value, error: Option<&UiError>) {
        self.record_as(log, ACTION_UI_READ, view, attributes, error);
    }

    /// Records a read through the HTTP API (a viewer token's), refused or
    /// not, as the view's pages are.
    pub fn record_api(&self, log: &AccessLog, view: &str, attributes: Value, error: Option<&ApiError>) {
        let refusal = error.map(|error| (error.to_string(), error.status()));
        self.record_refusal(log, ACTION_UI_READ, view, attributes, refusal);
    }

    /// Records `action` done through `view` (or refused, with `error`).
    fn record_as(&self, log: &AccessLog, action: &str, view: &str, attributes: Value, error: Option<&UiError>) {
        let refusal = error.map(|error| (error.to_string(), error.status()));
        self.record_refusal(log, action, view, attributes, refusal);
    }

    fn record_refusal(
        &self,
        log: &AccessLog,
        action: &str,
        view: &str,
        mut attributes: Value,
        refusal: Option<(String, StatusCode)>,
    ) {
        let (actor, actor_type) = self.reader.actor();
        let fields = attributes.as_object_mut().expect("attributes are an object");
        fields.insert("view".into(), json!(view));
        if let Reader::Viewer(claims) = self.reader {
            fields.insert("viewer".into(), json!({ "end_user": claims.end_user, "expires_at": claims.expires_at() }));
        }
        let success = refusal.is_none();
        if let Some((error, status)) = refusal {
            fields.insert("error".into(), json!(error));
            fields.insert("status".into(), json!(status.as_u16()));
        }
        let org = self.reader.record_org().unwrap_or(SYSTEM_ORG_ID);
        let record = Event {
            source_ip: Some(self.address.to_string()),
            user_agent: self.user_agent.clone(),
            session_id: Some(self.session.clone()),
            ..Event::system(org, (&actor, actor_type), action, AUDIT_ACCESS_CATEGORY, success, &attributes)
        };
        log.read_over_http(record);
    }
}

async fn sign_in_page(Query(asked): Query<std::collections::HashMap<String, String>>) -> Response {
    sign_in_form(None, asked.get("next").map_or("", String::as_str), StatusCode::OK)
}

fn sign_in_form(error: Option<&UiError>, next: &str, status: StatusCode) -> Response {
    let mut body = String::new();
    if let Some(error) = error {
        body.push_str(&html::message(&error.to_string(), true));
    }
    body.push_str(
        "<p>Sign in as a user of the Postgres endpoint, or with an API token of read scope.</p>\
         <form method=\"post\" action=\"/ui/sign-in\" class=\"sign-in\">",
    );
    if let Some(next) = page_to_return_to(next) {
        body.push_str(&format!("<input type=\"hidden\" name=\"next\" value=\"{}\">", html::esc(next)));
    }
    body.push_str(
        "\
         <fieldset><legend>Postgres role</legend>\
         <label for=\"user\">User name</label><input id=\"user\" name=\"user\" autocomplete=\"username\">\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\">\
         </fieldset>\
         <fieldset><legend>Or an API read token</legend>\
         <label for=\"token\">Token</label><input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\">\
         </fieldset>\
         <button type=\"submit\">Sign in</button></form>",
    );
    Page { title: "Sign in".into(), reader: None, current: "", body, frame_ancestors: None }.render(status)
}

#[derive(Debug, Default, Deserialize)]
pub struct SignIn {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    /// The page to go on to (see [`page_to_return_to`]).
    #[serde(default)]
    next: String,
}

/// A form post must come from this server's own page: a browser sends
/// `Origin` with every POST, and it must name the host the request went to.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match headers.get(header::ORIGIN).map(|v| v.to_str().ok()) {
        None => true,
        Some(Some(origin)) => host.is_some_and(|host| {
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
        }),
        Some(None) => false,
    }
}

async fn sign_in(
    State(app): State<Api>,
    address: Option<Extension<ClientAddress>>,
    headers: HeaderMap,
    form: Result<Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    let next = form.as_ref().map_or(String::new(), |Form(form)| form.next.clone());
    match check_sign_in(&app, address, &headers, form).await {
        Ok(reader) => match app.ui.sessions.open(reader, Instant::now()) {
            Ok(id) => {
                // Behind a TLS proxy the cookie is kept to HTTPS, so that it
                // never travels in clear text.
                let over_tls = headers
                    .get("x-forwarded-proto")
                    .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
                let secure = if over_tls { "; Secure" } else { "" };
                let cookie = format!("{UI_SESSION_COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict{secure}");
                let mut response = Redirect::to(page_to_return_to(&next).unwrap_or("/ui/events")).into_response();
                response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("hex"));
                response
            }
            Err(error) => UiError::from(error).into_response(),
        },
        Err(error) => {
            let status = error.status();
            sign_in_form(Some(&error), &next, status)
        }
    }
}

async fn check_sign_in(
    app: &Api,
    address: Option<Extension<ClientAddress>>,
    headers: &HeaderMap,
    form: Result<Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Result<Reader, UiError> {
    if !same_origin(headers) {
        return Err(UiError::CrossSite);
    }
    let Form(form) = form.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => UiError::FormTooLarge,
        _ => UiError::BadParameter(rejection.body_text()),
    })?;
    if !form.token.is_empty() {
        let token = app
            .auth
            .tokens
            .authenticate(Some(&format!("Bearer {}", form.token.trim())))
            .map_err(|_| UiError::SignInRefused)?;
        if token.scope != TokenScope::Read {
            return Err(UiError::Api(ApiError::WrongScope(token.scope)));
        }
        return Ok(Reader::ReadToken { id: token.id, org: token.org });
    }
    let ip = address.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(ClientAddress(ip))| ip);
    if let Err(wait) = app.ui.throttle.check(ip, &form.user, Instant::now()) {
        return Err(UiError::SignInThrottled { seconds: wait.as_secs().max(1) });
    }
    let (users, user, password) = (app.ui.users.clone(), form.user.clone(), form.password);
    let role = tokio::task::spawn_blocking(move || session::check_password(&users, &user, &password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    // A sign-in is recorded as a Postgres login is: who, from where, and
    // whether it was refused. A refused one is the system's record (the
    // name typed may be no one's), as a failed Postgres login is.
    let refused = role.is_none();
    let reader = Reader::DatabaseUser { name: form.user.clone(), role: role.unwrap_or(Role::Admin) };
    let visit = Visit::of(&reader, headers, Some(Extension(ClientAddress(ip))));
    if refused {
        app.ui.throttle.failed(ip, &form.user, Instant::now());
        visit.record_as(&app.ui.access_log, ACTION_LOGIN_FAILED, "sign_in", json!({}), Some(&UiError::SignInRefused));
        return Err(UiError::SignInRefused);
    }
    app.ui.throttle.succeeded(ip, &form.user);
    visit.record_as(&app.ui.access_log, ACTION_LOGIN, "sign_in", json!({}), None);
    Ok(reader)
}

async fn sign_out(State(app): State<Api>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie_session(&headers) {
        app.ui.sessions.close(id);
    }
    let mut response = Redirect::to("/ui/sign-in").into_response();
    let expired = format!("{UI_SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&expired).expect("ASCII"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_returns_only_to_this_views_pages() {
        assert_eq!(page_to_return_to("/ui/timeline?actor=a"), Some("/ui/timeline?actor=a"));
        for elsewhere in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui//evil.example",
            "/ui/\\evil.example",
            "/\\evil.example",
            "/ui/sign-in",
            "/ui/sign-out",
            "/embed?token=x",
            "/ui/x\r\nSet-Cookie: a=b",
            "",
        ] {
            assert_eq!(page_to_return_to(elsewhere), None, "{elsewhere}");
        }
    }
}
