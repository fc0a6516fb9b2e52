//! Logging in to the Postgres endpoint: SCRAM-SHA-256 against stored
//! verifiers, or (only when asked for, only on loopback) no password at all.
//!
//! pgwire's own SCRAM support needs the salted password itself, which is as
//! good as the password for logging in; PostgreSQL keeps only StoredKey and
//! ServerKey and so do we. So the server side of RFC 5802 is here: a few
//! lines of message parsing and the proof check, over pgwire's framing.
//!
//! A successful login fixes the session's tenant scope (from the user's
//! [`Identity`]) once; the query layer refuses to scan without one.

use std::fmt::Debug;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use ring::hmac;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::access_log::{AccessLog, Accessor};
use super::slots::{RESERVED_ADMIN_SESSIONS, SessionSlot, Slots};
use super::throttle::LoginThrottle;
use super::users::{Role, SCRAM_ITERATIONS, ScramVerifier, User, Users};
use crate::digest::sha256;
use crate::query::{Scope, SessionControls};

/// The only SASL mechanism offered (no channel binding: `-PLUS` needs TLS).
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Backend pids (and secret keys) for cancel requests: one generator for
/// the process, so no two connections share a pid.
static BACKEND_PIDS: LazyLock<RandomPidSecretKeyGenerator> = LazyLock::new(RandomPidSecretKeyGenerator::default);

/// Who is logged in on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
    /// The user's own statement timeout, instead of the server's.
    pub statement_timeout: Option<Duration>,
}

impl Identity {
    pub fn scope(&self) -> Scope {
        match &self.role {
            Role::Admin => Scope::All,
            Role::Org(org) => Scope::Org(org.clone()),
        }
    }
}

/// How the endpoint checks who connects.
#[derive(Debug, Clone)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 against the users of the data directory.
    Scram(Users),
    /// Anyone, as admin, without a password: only on a loopback listener and
    /// only with `--insecure-trust-loopback`.
    TrustLoopback,
}

/// How every connection of one endpoint logs in.
#[derive(Debug, Clone)]
pub struct LoginPolicy {
    pub method: AuthMethod,
    /// Refuse a client that did not switch to TLS before logging in.
    pub require_tls: bool,
    /// Answers for users that do not exist, so that a wrong name and a wrong
    /// password look the same from outside. One per server process.
    pub mock_secret: Arc<[u8; 32]>,
    /// Where logins, failed or not, are recorded.
    pub access_log: AccessLog,
    /// The endpoint's session slots, one taken at each login.
    pub slots: Slots,
    /// Failed logins, which make the next attempts wait.
    pub throttle: LoginThrottle,
}

/// The login of one connection: pgwire calls it for every startup message.
pub struct Login {
    policy: LoginPolicy,
    /// The query session's scope and timeout, which only a login sets, and
    /// its cancel.
    controls: SessionControls,
    exchange: Mutex<Exchange>,
    /// Where the logged-in connection's statements become cancellable by its
    /// client's cancel requests (pid and secret key).
    running: super::RunningStatements,
    /// The backend pid given to the client at login.
    pid: OnceLock<i32>,
    /// Who the connection's statements are recorded as, set at login.
    accessor: Arc<OnceLock<Accessor>>,
    /// The session's slot, from login until the connection ends.
    session_slot: OnceLock<SessionSlot>,
}

enum Exchange {
    Start,
    /// The server-first message went out; the client's proof is next.
    Sent(Box<ServerFirst>),
    Done,
}

impl Login {
    pub(crate) fn new(policy: LoginPolicy, running: super::RunningStatements, controls: SessionControls) -> Self {
        Login {
            policy,
            controls,
            exchange: Mutex::new(Exchange::Start),
            running,
            pid: OnceLock::new(),
            accessor: Arc::default(),
            session_slot: OnceLock::new(),
        }
    }

    /// Who this connection's statements are recorded as, once logged in.
    pub fn accessor(&self) -> Arc<OnceLock<Accessor>> {
        Arc::clone(&self.accessor)
    }

    /// Records a refused login of `user`, under its org if it has one.
    fn refused<C: ClientInfo>(&self, client: &C, user: &str, role: Option<Role>, error: PgWireError) -> PgWireError {
        let role = role.or_else(|| match &self.policy.method {
            AuthMethod::Scram(users) => users.find(user).ok().flatten().map(|found| found.role),
            AuthMethod::TrustLoopback => None,
        });
        let accessor = accessor_of(client, user, role.as_ref(), None);
        if let PgWireError::UserError(info) = &error {
            self.policy.access_log.login(&accessor, Some((&info.code, &info.message)));
        }
        error
    }

    /// The backend pid of the logged-in connection.
    pub fn pid(&self) -> Option<i32> {
        self.pid.get().copied()
    }

    /// The user's verifier, or a made-up one that no password matches.
    fn verifier_for(&self, user: &str) -> PgWireResult<(Option<User>, ScramVerifier)> {
        let AuthMethod::Scram(users) = &self.policy.method else { unreachable!("only SCRAM logins exchange") };
        match users.find(user).map_err(|e| fatal("XX000", e.to_string()))? {
            Some(found) => {
                let verifier = found.verifier.clone();
                Ok((Some(found), verifier))
            }
            None => {
                let mut seed = self.policy.mock_secret.to_vec();
                seed.extend_from_slice(user.as_bytes());
                let salt = sha256(&seed)[..16].to_vec();
                let never =
                    ScramVerifier { iterations: SCRAM_ITERATIONS, salt, stored_key: [0; 32], server_key: [0; 32] };
                Ok((None, never))
            }
        }
    }
}

/// The mechanism and data of a SASLInitialResponse, read from the client's
/// bytes here: pgwire's own reading panics on a length that runs past the
/// message, which any client could send before logging in.
fn sasl_initial_response(message: PasswordMessageFamily) -> PgWireResult<(String, Option<Bytes>)> {
    let PasswordMessageFamily::Raw(body) = message else {
        let initial = message.into_sasl_initial_response()?;
        return Ok((initial.auth_method, initial.data));
    };
    parse_sasl_initial_response(&body).ok_or_else(|| protocol_violation("SASLInitialResponse"))
}

fn parse_sasl_initial_response(body: &[u8]) -> Option<(String, Option<Bytes>)> {
    let end = body.iter().position(|b| *b == 0)?;
    let mechanism = String::from_utf8(body[..end].to_vec()).ok()?;
    let rest = &body[end + 1..];
    let length = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
    match length {
        -1 if data.is_empty() => Some((mechanism, None)),
        n if usize::try_from(n).ok() == Some(data.len()) => Some((mechanism, Some(Bytes::copy_from_slice(data)))),
        _ => None,
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message)))
}

fn protocol_violation(message: &str) -> PgWireError {
    fatal("08P01", format!("malformed SCRAM message: {message}"))
}

fn password_failed(user: &str) -> PgWireError {
    fatal("28P01", format!("password authentication failed for user \"{user}\""))
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                if user.is_empty() {
                    return Err(PgWireError::UserNameRequired);
                }
                if self.policy.require_tls && !client.is_secure() {
                    warn!(user = %user, "Postgres login refused: not over TLS");
                    let error = fatal("28000", "this server accepts only TLS connections (sslmode=require)".into());
                    return Err(self.refused(client, &user, None, error));
                }
                if let AuthMethod::TrustLoopback = self.policy.method {
                    return self.logged_in(client, Identity { user, role: Role::Admin, statement_timeout: None }).await;
                }
                let address = client.socket_addr().ip();
                if let Err(wait) = self.policy.throttle.check(address, &user, Instant::now()) {
                    warn!(user = %user, %address, wait_s = wait.as_secs_f64(), "Postgres login refused: too many failures");
                    return Err(fatal(
                        "28000",
                        format!(
                            "too many failed logins from this address or for this user; try again in {} s",
                            wait.as_secs().max(1)
                        ),
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(vec![SCRAM_SHA_256.into()])))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let state = std::mem::replace(&mut *self.exchange.lock().expect("login state"), Exchange::Done);
                match state {
                    Exchange::Start => {
                        let (mechanism, data) = sasl_initial_response(message)?;
                        if mechanism != SCRAM_SHA_256 {
                            return Err(PgWireError::UnsupportedSASLAuthMethod(mechanism));
                        }
                        let data = data.as_deref().ok_or_else(|| protocol_violation("no client-first"))?;
                        let (found, verifier) = self.verifier_for(&user)?;
                        let server_nonce = BASE64.encode(rand::random::<[u8; 18]>());
                        let role = found.as_ref().map(|u| u.role.clone());
                        let mut first = ServerFirst::answer(data, &server_nonce, verifier, role)?;
                        first.statement_timeout = found.and_then(|u| u.statement_timeout_ms).map(Duration::from_millis);
                        let reply = first.message.clone();
                        *self.exchange.lock().expect("login state") = Exchange::Sent(Box::new(first));
                        client
                            .send(PgWireBackendMessage::Authentication(Authentication::SASLContinue(reply.into())))
                            .await?;
                    }
                    Exchange::Sent(first) => {
                        let response = message.into_sasl_response()?;
                        let outcome = first.check_final(&response.data);
                        let (Ok(server_final), Some(role)) = (outcome, first.role.clone()) else {
                            warn!(user = %user, "Postgres login failed: wrong user name or password");
                            self.policy.throttle.failed(client.socket_addr().ip(), &user, Instant::now());
                            return Err(self.refused(client, &user, first.role.clone(), password_failed(&user)));
                        };
                        client
                            .send(PgWireBackendMessage::Authentication(Authentication::SASLFinal(server_final.into())))
                            .await?;
                        self.policy.throttle.succeeded(client.socket_addr().ip(), &user);
                        let statement_timeout = first.statement_timeout;
                        return self.logged_in(client, Identity { user, role, statement_timeout }).await;
                    }
                    Exchange::Done => return Err(protocol_violation("unexpected message after the exchange")),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Login {
    async fn logged_in<C>(&self, client: &mut C, identity: Identity) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let admin = identity.role == Role::Admin;
        let Some(slot) = self.policy.slots.session(admin) else {
            warn!(user = %identity.user, "Postgres login refused: every session slot is taken");
            let message = if admin || !self.policy.slots.admin_slot_free() {
                "sorry, too many clients already".to_string()
            } else {
                format!("remaining connection slots are reserved for admins ({RESERVED_ADMIN_SESSIONS})")
            };
            return Err(self.refused(client, &identity.user, Some(identity.role), fatal("53300", message)));
        };
        let _ = self.session_slot.set(slot);
        info!(user = %identity.user, role = %identity.role, "Postgres login");
        let (pid, secret_key) = BACKEND_PIDS.generate(client);
        self.running.register(pid, secret_key.to_bytes(), self.controls.cancel.clone());
        let _ = self.pid.set(pid);
        client.set_pid_and_secret_key(pid, secret_key);
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        // What drivers read the server's version from (psycopg's
        // `server_version`, pgcli's choice of catalog queries): the one
        // `version()` reports.
        parameters.server_version = super::compat::SERVER_VERSION.to_string();
        self.controls.scope.set(identity.scope()).map_err(|_| protocol_violation("logged in twice"))?;
        if let Some(timeout) = identity.statement_timeout {
            self.controls.timeout.set(timeout);
        }
        let accessor = accessor_of(client, &identity.user, Some(&identity.role), Some(pid));
        self.policy.access_log.login(&accessor, None);
        let _ = self.accessor.set(accessor);
        finish_authentication(client, &parameters).await
    }
}

/// Who a connection's records name: `pid` once logged in.
fn accessor_of<C: ClientInfo>(client: &C, user: &str, role: Option<&Role>, pid: Option<i32>) -> Accessor {
    Accessor {
        user: user.to_string(),
        org: match role {
            Some(Role::Org(org)) => Some(org.clone()),
            Some(Role::Admin) | None => None,
        },
        address: client.socket_addr().ip(),
        application: client.metadata().get("application_name").filter(|name| !name.is_empty()).cloned(),
        tls: client.is_secure(),
        session: pid.map(|pid| format!("pg-{pid}")),
    }
}

/// The server's half of the exchange after the client-first message.
struct ServerFirst {
    /// What we sent: `r=<nonce>,s=<salt>,i=<iterations>`.
    message: String,
    client_first_bare: String,
    /// The channel-binding header the client chose, which it must echo.
    gs2_header: String,
    nonce: String,
    verifier: ScramVerifier,
    /// `None` for a user that does not exist: the proof is checked anyway.
    role: Option<Role>,
    statement_timeout: Option<Duration>,
}

impl ServerFirst {
    /// Parses `gs2-header client-first-message-bare` (RFC 5802 §7).
    fn answer(
        client_first: &[u8],
        server_nonce: &str,
        verifier: ScramVerifier,
        role: Option<Role>,
    ) -> PgWireResult<Self> {
        let text = std::str::from_utf8(client_first).map_err(|_| protocol_violation("not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let (Some(flag), Some(_authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(protocol_violation("no GS2 header"));
        };
        match flag {
            "n" | "y" => {}
            _ => return Err(protocol_violation("channel binding was not offered")),
        }
        let gs2_header = text[..text.len() - bare.len()].to_string();
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| protocol_violation("no client nonce"))?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let message = format!("r={nonce},s={},i={}", BASE64.encode(&verifier.salt), verifier.iterations);
        Ok(ServerFirst {
            message,
            client_first_bare: bare.to_string(),
            gs2_header,
            nonce,
            verifier,
            role,
            statement_timeout: None,
        })
    }

    /// Checks `c=...,r=...,p=<proof>` and returns the server-final message.
    fn check_final(&self, client_final: &[u8]) -> PgWireResult<String> {
        let text = std::str::from_utf8(client_final).map_err(|_| protocol_violation("not UTF-8"))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or_else(|| protocol_violation("no proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attribute in without_proof.split(',') {
            if let Some(v) = attribute.strip_prefix("c=") {
                binding = Some(v);
            } else if let Some(v) = attribute.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        if binding != Some(BASE64.encode(&self.gs2_header).as_str()) || nonce != Some(self.nonce.as_str()) {
            return Err(protocol_violation("channel binding or nonce does not match"));
        }
        let proof = BASE64.decode(proof).map_err(|_| protocol_violation("proof is not base64"))?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.message, without_proof);
        let signature =
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.verifier.stored_key), auth_message.as_bytes());
        if proof.len() != 32 {
            return Err(protocol_violation("proof has the wrong length"));
        }
        let client_key: Vec<u8> = proof.iter().zip(signature.as_ref()).map(|(p, s)| p ^ s).collect();
        if !bool::from(sha256(&client_key).ct_eq(&self.verifier.stored_key)) {
            return Err(protocol_violation("wrong proof"));
        }
        let server_signature =
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.verifier.server_key), auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn initial(mechanism: &[u8], length: i32, data: &[u8]) -> Vec<u8> {
        [mechanism, b"\0", &length.to_be_bytes(), data].concat()
    }

    #[test]
    fn sasl_initial_responses_are_read_whole_or_refused() {
        let read = |body: &[u8]| parse_sasl_initial_response(body);
        let first = b"n,,n=,r=abc";
        assert_eq!(
            read(&initial(b"SCRAM-SHA-256", first.len() as i32, first)),
            Some(("SCRAM-SHA-256".into(), Some(Bytes::from_static(first))))
        );
        assert_eq!(read(&initial(b"SCRAM-SHA-256", -1, b"")), Some(("SCRAM-SHA-256".into(), None)));
        // Each of these made pgwire panic, or read past the data.
        assert_eq!(read(b"SCRAM-SHA-256\0"), None);
        assert_eq!(read(b"SCRAM-SHA-256\0\0\0"), None);
        assert_eq!(read(&initial(b"SCRAM-SHA-256", 1000, b"abc")), None);
        assert_eq!(read(&initial(b"SCRAM-SHA-256", -5, b"abc")), None);
        assert_eq!(read(&initial(b"SCRAM-SHA-256", 2, b"abc")), None);
        assert_eq!(read(b"no terminator"), None);
    }

    proptest! {
        #![proptest_config(crate::proptest_cases(2048))]

        #[test]
        fn any_bytes_are_read_or_refused_without_a_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_sasl_initial_response(&body);
        }

        #[test]
        fn well_formed_responses_read_back(mechanism in "[A-Z0-9-]{1,20}", data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let body = initial(mechanism.as_bytes(), data.len() as i32, &data);
            prop_assert_eq!(parse_sasl_initial_response(&body), Some((mechanism, Some(Bytes::from(data)))));
        }
    }

    #[test]
    fn the_rfc_7677_exchange_passes_and_a_wrong_proof_fails() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = ScramVerifier::with_salt("pencil", &salt, 4096);
        let first = ServerFirst::answer(
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            verifier,
            Some(Role::Admin),
        )
        .unwrap();
        assert_eq!(
            first.message,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let final_without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let good = format!("{final_without_proof},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert_eq!(first.check_final(good.as_bytes()).unwrap(), "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        let wrong = format!("{final_without_proof},p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert!(first.check_final(wrong.as_bytes()).is_err());
        let replayed_nonce = "c=biws,r=rOprNGfwEbeRWgbNEkqOother,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert!(first.check_final(replayed_nonce.as_bytes()).is_err());
        assert!(ServerFirst::answer(b"p=tls-unique,,n=,r=x", "s", ScramVerifier::new("long password"), None).is_err());
    }
}
