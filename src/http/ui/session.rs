//! Who is signed in to the web view, and how fast they may ask.
//!
//! A reader signs in with a Postgres role's password (checked against the
//! same SCRAM verifiers the Postgres endpoint uses, and counted by the same
//! guess throttle) or with an API read token. Either becomes a session: a
//! random id in an `HttpOnly`, `SameSite=Strict` cookie, and the reader it
//! stands for in memory. Sessions end after [`UI_SESSION_IDLE`] unused, after
//! [`UI_SESSION_LONGEST`] whatever, when the reader signs out, or when the
//! server restarts. The embedded viewer has no session: its viewer token
//! travels with every request.
//!
//! Every session and every viewer token has a request budget
//! ([`UI_REQUESTS_PER_SECOND`], bursts of [`UI_BURST_REQUESTS`]): a page runs
//! several queries, and a script in a browser tab must not keep the query
//! threads to itself. This module never runs a query and never keeps a
//! password.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use super::super::search::Term;
use super::super::viewer::ViewerClaims;
use crate::query::Scope;
use crate::server::users::{Role, SCRAM_ITERATIONS, ScramVerifier, UserError, Users};
use crate::storage::settings::to_hex;

/// The cookie that holds a session's id.
pub const UI_SESSION_COOKIE: &str = "auditlake_ui";
/// A session not used for this long ends.
pub const UI_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after its sign-in, used or not.
pub const UI_SESSION_LONGEST: Duration = Duration::from_secs(12 * 60 * 60);
/// The most sessions held at once: sign-ins past it are refused until
/// some end, so that sign-ins cannot fill the memory.
pub const MAX_UI_SESSIONS: usize = 10_000;
/// The most sessions one reader holds: signing in again past it ends that
/// reader's oldest, so that one password cannot take every session.
pub const MAX_SESSIONS_PER_READER: usize = 20;
/// Requests a session (or a viewer token) may make each second, on average.
pub const UI_REQUESTS_PER_SECOND: f64 = 10.0;
/// Requests a session may make at once before the average applies (a page
/// and its assets, a few quick clicks).
pub const UI_BURST_REQUESTS: f64 = 40.0;
/// The most request budgets kept (sessions' and viewer tokens').
const MAX_BUDGETS: usize = 2 * MAX_UI_SESSIONS;

/// Who reads through the web view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    /// A role of the Postgres endpoint, signed in with its password.
    DatabaseUser { name: String, role: Role },
    /// An API token of read scope (`org: None` reads every organisation).
    ReadToken { id: String, org: Option<String> },
    /// A viewer token, in the embedded viewer.
    Viewer(ViewerClaims),
}

impl Reader {
    /// The tenant scope every query of this reader runs in.
    pub fn scope(&self) -> Scope {
        match self {
            Reader::DatabaseUser { role: Role::Admin, .. } | Reader::ReadToken { org: None, .. } => Scope::All,
            Reader::DatabaseUser { role: Role::Org(org), .. } | Reader::ReadToken { org: Some(org), .. } => {
                Scope::Org(org.clone())
            }
            Reader::Viewer(claims) => Scope::Org(claims.org.clone()),
        }
    }

    /// Terms added to every search of this reader (a viewer token's
    /// narrowing): no search can widen them, as every term must hold.
    pub fn narrowing(&self) -> Vec<Term> {
        match self {
            Reader::Viewer(claims) => claims.narrowing(),
            _ => Vec::new(),
        }
    }

    /// The reader as the self-audit records name them: (actor, actor type).
    pub fn actor(&self) -> (String, &'static str) {
        match self {
            Reader::DatabaseUser { name, .. } => (name.clone(), "database_user"),
            Reader::ReadToken { id, .. } => (format!("token:{id}"), "api_token"),
            Reader::Viewer(claims) => {
                (claims.end_user.clone().unwrap_or_else(|| "viewer".to_string()), "viewer_end_user")
            }
        }
    }

    /// The organisation whose trail records this reader's reads: its own;
    /// readers of every organisation are the system's.
    pub fn record_org(&self) -> Option<&str> {
        match self {
            Reader::DatabaseUser { role: Role::Org(org), .. } | Reader::ReadToken { org: Some(org), .. } => Some(org),
            Reader::Viewer(claims) => Some(&claims.org),
            _ => None,
        }
    }

    /// How the page names who is signed in.
    pub fn label(&self) -> String {
        match self {
            Reader::DatabaseUser { name, role } => format!("{name} ({role})"),
            Reader::ReadToken { id, org: Some(org) } => format!("token {id} (org {org})"),
            Reader::ReadToken { id, org: None } => format!("token {id} (every organisation)"),
            Reader::Viewer(claims) => format!("viewer of {}", claims.org),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("not signed in, or the session ended; sign in again")]
    NotSignedIn,
    #[error("too many requests from this session: at most {UI_REQUESTS_PER_SECOND} a second; wait a moment")]
    TooManyRequests,
    #[error("the server holds as many sessions as it may ({MAX_UI_SESSIONS}); try again later")]
    TooManySessions,
    #[error(transparent)]
    Users(#[from] UserError),
}

/// A token bucket: [`UI_BURST_REQUESTS`] at most, refilled at
/// [`UI_REQUESTS_PER_SECOND`].
#[derive(Debug, Clone, Copy)]
struct Budget {
    requests: f64,
    refilled: Instant,
}

impl Budget {
    fn full(now: Instant) -> Self {
        Budget { requests: UI_BURST_REQUESTS, refilled: now }
    }

    fn spend(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * UI_REQUESTS_PER_SECOND;
        self.requests = (self.requests + earned).min(UI_BURST_REQUESTS);
        self.refilled = now;
        if self.requests < 1.0 {
            return false;
        }
        self.requests -= 1.0;
        true
    }
}

#[derive(Debug)]
struct Session {
    reader: Reader,
    signed_in: Instant,
    seen: Instant,
}

#[derive(Debug, Default)]
struct Held {
    sessions: HashMap<String, Session>,
    budgets: HashMap<String, Budget>,
}

/// The web view's sessions, in memory.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    held: Arc<Mutex<Held>>,
}

impl Sessions {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().expect("UI sessions")
    }

    /// A new session for `reader`; its id goes in the cookie.
    pub fn open(&self, reader: Reader, now: Instant) -> Result<String, SessionError> {
        let mut id = [0u8; 32];
        SystemRandom::new().fill(&mut id).expect("the system's random numbers");
        let id = to_hex(&id);
        let mut held = self.held();
        let own: Vec<(&String, Instant)> = held
            .sessions
            .iter()
            .filter(|(_, session)| session.reader == reader)
            .map(|(id, s)| (id, s.signed_in))
            .collect();
        if own.len() >= MAX_SESSIONS_PER_READER
            && let Some(oldest) = own.iter().min_by_key(|(_, signed_in)| *signed_in).map(|(id, _)| (*id).clone())
        {
            held.sessions.remove(&oldest);
        }
        if held.sessions.len() >= MAX_UI_SESSIONS {
            held.sessions.retain(|_, session| alive(session, now));
            if held.sessions.len() >= MAX_UI_SESSIONS {
                return Err(SessionError::TooManySessions);
            }
        }
        held.sessions.insert(id.clone(), Session { reader, signed_in: now, seen: now });
        Ok(id)
    }

    /// The reader of session `id`, if it is alive and within its budget.
    pub fn reader(&self, id: &str, now: Instant) -> Result<Reader, SessionError> {
        let mut held = self.held();
        let session = held.sessions.get_mut(id).ok_or(SessionError::NotSignedIn)?;
        if !alive(session, now) {
            held.sessions.remove(id);
            return Err(SessionError::NotSignedIn);
        }
        session.seen = now;
        let reader = session.reader.clone();
        spend(&mut held, id, now)?;
        Ok(reader)
    }

    /// Spends one request of the budget kept under `key` (a viewer token's
    /// signature: the embedded viewer has no session).
    pub fn spend(&self, key: &str, now: Instant) -> Result<(), SessionError> {
        spend(&mut self.held(), key, now)
    }

    pub fn close(&self, id: &str) {
        let mut held = self.held();
        held.sessions.remove(id);
        held.budgets.remove(id);
    }
}

fn alive(session: &Session, now: Instant) -> bool {
    now.saturating_duration_since(session.seen) < UI_SESSION_IDLE
        && now.saturating_duration_since(session.signed_in) < UI_SESSION_LONGEST
}

fn spend(held: &mut Held, key: &str, now: Instant) -> Result<(), SessionError> {
    if !held.budgets.contains_key(key) && held.budgets.len() >= MAX_BUDGETS {
        // Budgets refilled to full are the same as none.
        let full_after = Duration::from_secs_f64(UI_BURST_REQUESTS / UI_REQUESTS_PER_SECOND);
        held.budgets.retain(|_, budget| now.saturating_duration_since(budget.refilled) < full_after);
    }
    let budget = held.budgets.entry(key.to_string()).or_insert_with(|| Budget::full(now));
    if budget.spend(now) { Ok(()) } else { Err(SessionError::TooManyRequests) }
}

/// The role `name` signs in as with `password`, or `None` when either is
/// wrong. A name no user has costs the same work as a wrong password, so
/// timing does not tell which names exist. Slow on purpose (PBKDF2): call
/// it off the async workers.
pub fn check_password(users: &Users, name: &str, password: &str) -> Result<Option<Role>, SessionError> {
    let found = users.find(name)?;
    let verifier = match &found {
        Some(user) => user.verifier.clone(),
        None => {
            ScramVerifier { iterations: SCRAM_ITERATIONS, salt: vec![0; 16], stored_key: [0; 32], server_key: [0; 32] }
        }
    };
    let offered = ScramVerifier::with_salt(password, &verifier.salt, verifier.iterations);
    let holds = bool::from(offered.stored_key.ct_eq(&verifier.stored_key));
    Ok(found.filter(|_| holds).map(|user| user.role))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> Reader {
        Reader::DatabaseUser { name: "ann".into(), role: Role::Org("acme".into()) }
    }

    #[test]
    fn sessions_end_when_idle_or_old() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let id = sessions.open(reader(), start).unwrap();
        assert_eq!(sessions.reader(&id, start).unwrap(), reader());
        // Used every 20 minutes, it lives until its 12 hours are up.
        let mut now = start;
        while now.duration_since(start) + Duration::from_secs(20 * 60) < UI_SESSION_LONGEST {
            now += Duration::from_secs(20 * 60);
            assert!(sessions.reader(&id, now).is_ok(), "alive after {:?}", now.duration_since(start));
        }
        assert!(matches!(sessions.reader(&id, start + UI_SESSION_LONGEST), Err(SessionError::NotSignedIn)));
        let idle = sessions.open(reader(), start).unwrap();
        assert!(matches!(sessions.reader(&idle, start + UI_SESSION_IDLE), Err(SessionError::NotSignedIn)));
        assert!(matches!(sessions.reader("not-a-session", start), Err(SessionError::NotSignedIn)));
        sessions.close(&id);
    }

    #[test]
    fn one_reader_holds_a_few_sessions_not_the_servers_all() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let ids: Vec<String> = (0..MAX_SESSIONS_PER_READER + 5)
            .map(|i| sessions.open(reader(), start + Duration::from_millis(i as u64)).unwrap())
            .collect();
        let now = start + Duration::from_secs(1);
        let (ended, alive) = ids.split_at(5);
        for id in ended {
            assert!(matches!(sessions.reader(id, now), Err(SessionError::NotSignedIn)), "the oldest ended");
        }
        for id in alive {
            assert!(sessions.reader(id, now).is_ok());
        }
        // Another reader's sessions are not touched.
        let admin = Reader::DatabaseUser { name: "root".into(), role: Role::Admin };
        let theirs = sessions.open(admin.clone(), now).unwrap();
        sessions.open(reader(), now).unwrap();
        assert_eq!(sessions.reader(&theirs, now).unwrap(), admin);
    }

    #[test]
    fn a_session_spends_its_burst_then_its_rate() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let id = sessions.open(reader(), now).unwrap();
        for _ in 0..UI_BURST_REQUESTS as usize {
            sessions.reader(&id, now).unwrap();
        }
        assert!(matches!(sessions.reader(&id, now), Err(SessionError::TooManyRequests)));
        // A tenth of a second later, one more.
        let later = now + Duration::from_millis(100);
        sessions.reader(&id, later).unwrap();
        assert!(matches!(sessions.reader(&id, later), Err(SessionError::TooManyRequests)));
        // Another session is not held back by this one.
        let other = sessions.open(reader(), later).unwrap();
        sessions.reader(&other, later).unwrap();
    }

    #[test]
    fn readers_read_within_their_scope() {
        assert_eq!(reader().scope(), Scope::Org("acme".into()));
        let admin = Reader::DatabaseUser { name: "root".into(), role: Role::Admin };
        assert_eq!(admin.scope(), Scope::All);
        assert_eq!(admin.record_org(), None);
        assert_eq!(Reader::ReadToken { id: "t1".into(), org: None }.scope(), Scope::All);
        assert_eq!(Reader::ReadToken { id: "t1".into(), org: Some("g".into()) }.scope(), Scope::Org("g".into()));
    }

    #[test]
    fn only_the_right_password_signs_in() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::in_data_dir(dir.path());
        users.upsert("ann", Role::Org("acme".into()), "s3cret pass", None).unwrap();
        assert_eq!(check_password(&users, "ann", "s3cret pass").unwrap(), Some(Role::Org("acme".into())));
        assert_eq!(check_password(&users, "ann", "s3cret").unwrap(), None);
        assert_eq!(check_password(&users, "bob", "s3cret pass").unwrap(), None);
        assert_eq!(check_password(&users, "bob", "").unwrap(), None);
    }
}
