//! Who may connect to the Postgres endpoint, and what each one may see.
//!
//! Users live in `users.json` in the data directory, one entry per user with
//! a role (`admin`: every organisation; `org`: one organisation's events) and
//! a SCRAM-SHA-256 verifier in PostgreSQL's own format
//! (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as in
//! `pg_authid.rolpassword`). A verifier lets the server check a password
//! proof, but neither gives the password back nor lets anyone who reads the
//! file log in: the password is never written anywhere.
//!
//! This module never talks to a client; [`super::auth`] runs the exchange.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::{hmac, pbkdf2};

use crate::digest::sha256;
use serde::{Deserialize, Serialize};

/// PBKDF2 iterations of new verifiers: PostgreSQL's default
/// (`scram_iterations`), the RFC 7677 minimum.
pub const SCRAM_ITERATIONS: u32 = 4096;

/// Bytes of random salt per verifier (PostgreSQL uses 16).
const SALT_BYTES: usize = 16;

/// Shortest password `user add` accepts.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// The file, inside the data directory, that holds the users.
pub const USERS_FILE: &str = "users.json";
/// Beside it: the secret of made-up logins ([`Users::login_secret`]).
pub const LOGIN_SECRET_FILE: &str = "login-secret";

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot read users from {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("users file {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot write users to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("user name {0:?} is not allowed: use 1 to 63 letters, digits, '_', '-' or '.'")]
    BadName(String),
    #[error("organisation {0:?} is not allowed: it must be 1 to 128 characters without control characters")]
    BadOrg(String),
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    ShortPassword,
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("not a SCRAM-SHA-256 verifier: {0}")]
    BadVerifier(String),
    #[error(transparent)]
    Settings(#[from] crate::storage::SettingsError),
}

/// What a user may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every organisation's events.
    Admin,
    /// Only this organisation's events, whatever the SQL.
    Org(String),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Admin => write!(f, "admin"),
            Role::Org(org) => write!(f, "org {org}"),
        }
    }
}

/// What the server keeps to check a SCRAM-SHA-256 password proof (RFC 5802).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

impl ScramVerifier {
    /// A verifier for `password` with a fresh random salt.
    pub fn new(password: &str) -> Self {
        Self::with_salt(password, &rand::random::<[u8; SALT_BYTES]>(), SCRAM_ITERATIONS)
    }

    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(password, salt, iterations);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let server_key = hmac::sign(&key, b"Server Key");
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(client_key.as_ref()),
            server_key: server_key.as_ref().try_into().expect("SHA-256 HMAC is 32 bytes"),
        }
    }

    /// Parses PostgreSQL's text form.
    pub fn parse(text: &str) -> Result<Self, UserError> {
        let bad = || UserError::BadVerifier(text.chars().take(24).collect::<String>() + "...");
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored_key, server_key) = keys.split_once(':').ok_or_else(bad)?;
        let key = |b64: &str| -> Result<[u8; 32], UserError> {
            BASE64.decode(b64).ok().and_then(|k| k.try_into().ok()).ok_or_else(bad)
        };
        Ok(ScramVerifier {
            iterations: iterations.parse().map_err(|_| bad())?,
            salt: BASE64.decode(salt).map_err(|_| bad())?,
            stored_key: key(stored_key)?,
            server_key: key(server_key)?,
        })
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

/// `Hi(Normalize(password), salt, i)` of RFC 5802, with SASLprep as
/// PostgreSQL applies it (a password SASLprep rejects is used as it is).
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let normalized = stringprep::saslprep(password).map(|p| p.into_owned()).unwrap_or_else(|_| password.to_string());
    let mut out = [0u8; 32];
    let iterations = std::num::NonZeroU32::new(iterations.max(1)).expect("at least one iteration");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, normalized.as_bytes(), &mut out);
    out
}

/// One user of the Postgres endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub verifier: ScramVerifier,
    /// This user's longest statement, instead of the server's `--statement-timeout-ms`.
    pub statement_timeout_ms: Option<u64>,
}

/// How a user is stored in `users.json`.
#[derive(Serialize, Deserialize)]
struct StoredUser {
    name: String,
    role: Role,
    scram_sha_256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    statement_timeout_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Default)]
struct UsersFile {
    users: Vec<StoredUser>,
}

/// The users of one data directory.
#[derive(Debug, Clone)]
pub struct Users {
    path: PathBuf,
}

impl Users {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Users { path: data_dir.join(USERS_FILE) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every user, read afresh: a user added while the server runs can log
    /// in at once.
    pub fn load(&self) -> Result<Vec<User>, UserError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(UserError::Read { path: self.path.clone(), source }),
        };
        let damaged = |reason: String| UserError::Damaged { path: self.path.clone(), reason };
        let file: UsersFile = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        file.users
            .into_iter()
            .map(|u| {
                let verifier =
                    ScramVerifier::parse(&u.scram_sha_256).map_err(|e| damaged(format!("user {:?}: {e}", u.name)))?;
                Ok(User { name: u.name, role: u.role, verifier, statement_timeout_ms: u.statement_timeout_ms })
            })
            .collect()
    }

    /// The secret that made-up answers for unknown users (their SCRAM salt)
    /// are derived from: kept next to the users file, made once, so that an
    /// unknown name gets the same salt after a restart as a real one does.
    pub fn login_secret(&self) -> Result<[u8; 32], UserError> {
        let path = self.path.with_file_name(LOGIN_SECRET_FILE);
        let read = |path: &Path| -> Result<Option<[u8; 32]>, UserError> {
            match std::fs::read(path) {
                Ok(bytes) => bytes.try_into().map(Some).map_err(|bytes: Vec<u8>| UserError::Damaged {
                    path: path.to_path_buf(),
                    reason: format!("a login secret of {} bytes instead of 32", bytes.len()),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(UserError::Read { path: path.to_path_buf(), source }),
            }
        };
        if let Some(secret) = read(&path)? {
            return Ok(secret);
        }
        crate::storage::settings::with_lock(&path, || {
            if let Some(secret) = read(&path)? {
                return Ok(secret);
            }
            let secret: [u8; 32] = rand::random();
            crate::storage::write_private_file(&path, &secret)
                .map_err(|source| UserError::Write { path: path.clone(), source })?;
            Ok(secret)
        })
    }

    pub fn find(&self, name: &str) -> Result<Option<User>, UserError> {
        Ok(self.load()?.into_iter().find(|u| u.name == name))
    }

    /// Adds `name`, or gives an existing `name` a new role, password and
    /// statement timeout (`None`: the server's).
    pub fn upsert(
        &self,
        name: &str,
        role: Role,
        password: &str,
        statement_timeout_ms: Option<u64>,
    ) -> Result<(), UserError> {
        check_name(name)?;
        if let Role::Org(org) = &role
            && (org.is_empty() || org.chars().count() > 128 || org.chars().any(char::is_control))
        {
            return Err(UserError::BadOrg(org.clone()));
        }
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(UserError::ShortPassword);
        }
        let verifier = ScramVerifier::new(password);
        // Read and written under the settings lock: two `user add`s at once both stay.
        crate::storage::with_lock(&self.path, || {
            let mut users = self.load()?;
            users.retain(|u| u.name != name);
            users.push(User { name: name.to_string(), role, verifier, statement_timeout_ms });
            self.store(&users)
        })
    }

    pub fn remove(&self, name: &str) -> Result<(), UserError> {
        crate::storage::with_lock(&self.path, || {
            let mut users = self.load()?;
            let before = users.len();
            users.retain(|u| u.name != name);
            if users.len() == before {
                return Err(UserError::NoSuchUser(name.to_string()));
            }
            self.store(&users)
        })
    }

    /// Replaces the file atomically (write, fsync, rename), readable by its
    /// owner only.
    fn store(&self, users: &[User]) -> Result<(), UserError> {
        let write = |source| UserError::Write { path: self.path.clone(), source };
        let file = UsersFile {
            users: users
                .iter()
                .map(|u| StoredUser {
                    name: u.name.clone(),
                    role: u.role.clone(),
                    scram_sha_256: u.verifier.to_string(),
                    statement_timeout_ms: u.statement_timeout_ms,
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file).expect("users serialise");
        crate::storage::write_private_file(&self.path, text.as_bytes()).map_err(write)?;
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), UserError> {
    let ok = (1..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok { Ok(()) } else { Err(UserError::BadName(name.to_string())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_match_rfc_7677_and_round_trip_as_postgres_writes_them() {
        // RFC 7677's example: user "user", password "pencil".
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = ScramVerifier::with_salt("pencil", &salt, 4096);
        // StoredKey and ServerKey of that exchange (as PostgreSQL would store it).
        assert_eq!(
            verifier.to_string(),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        assert_eq!(ScramVerifier::parse(&verifier.to_string()).unwrap(), verifier);
        assert!(ScramVerifier::parse("md5abc").is_err());
    }

    #[test]
    fn users_are_stored_without_their_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::in_data_dir(dir.path());
        assert!(users.load().unwrap().is_empty());
        users.upsert("alice", Role::Org("acme".into()), "correct horse battery", None).unwrap();
        users.upsert("root", Role::Admin, "another long secret", Some(5_000)).unwrap();
        users.upsert("alice", Role::Org("globex".into()), "a changed password", None).unwrap();
        let text = std::fs::read_to_string(users.path()).unwrap();
        assert!(!text.contains("correct horse") && !text.contains("changed password"), "{text}");
        let all = users.load().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(users.find("alice").unwrap().unwrap().role, Role::Org("globex".into()));
        assert_eq!(users.find("root").unwrap().unwrap().statement_timeout_ms, Some(5_000));
        assert_eq!(users.find("alice").unwrap().unwrap().statement_timeout_ms, None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(users.path()).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(users.upsert("bob", Role::Admin, "short", None), Err(UserError::ShortPassword)));
        assert!(matches!(users.upsert("bad name", Role::Admin, "long enough", None), Err(UserError::BadName(_))));
        users.remove("root").unwrap();
        assert!(matches!(users.remove("root"), Err(UserError::NoSuchUser(_))));
        assert_eq!(users.load().unwrap().len(), 1);
    }
}
