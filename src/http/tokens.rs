//! API tokens of the HTTP API: who may send events, and for which
//! organisation.
//!
//! A token is `alk_<id>_<secret>`, with 32 random bytes of secret. It is
//! shown once, when `auditlake token create` makes it; `tokens.json` in the
//! data directory keeps only its id, its organisation (or none: any
//! organisation, for a product's own backend that sends for all its
//! tenants), its scope and the SHA-256 of the secret. A plain hash is enough
//! because the secret is random, not chosen by a person; it is compared in
//! constant time. This module never logs or stores a token's text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::digest::sha256;
use crate::storage::settings::{from_hex32 as unhex, to_hex as hex};
use crate::storage::{SettingsError, WatchedFile, read_json, update_json};

pub const TOKENS_FILE: &str = "tokens.json";
const TOKEN_PREFIX: &str = "alk_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Send events (`POST /v1/events`).
    Ingest,
    /// Read events back (the export API).
    Read,
    /// Set the organisation's policy (`PUT /v1/orgs/{org}/policy`).
    Admin,
}

/// A token as the server knows it: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    /// The one organisation it may act for; `None`: any.
    pub org: Option<String>,
    pub scope: TokenScope,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
}

impl Token {
    /// Whether it may act for organisation `org`.
    pub fn allows_org(&self, org: &str) -> bool {
        self.org.as_deref().is_none_or(|own| own == org)
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredToken {
    #[serde(flatten)]
    token: Token,
    secret_sha256: String,
}

#[derive(Serialize, Deserialize, Default)]
struct TokensFile {
    tokens: Vec<StoredToken>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("organisation name {0:?} is empty, too long or holds control characters")]
    BadOrg(String),
    #[error("no token with id {0:?}")]
    NoSuchToken(String),
}

/// Why a request's token was not accepted (all answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("missing `Authorization: Bearer <token>` (create a token with `auditlake token create`)")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("unknown or revoked token")]
    Unknown,
}

/// Why a request's token could not be taken: the request's fault, or the
/// server's (its token file cannot be read).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Unauthenticated(#[from] Unauthenticated),
    #[error("the token store cannot be read: {0}")]
    Store(#[source] TokenError),
}

/// Every token with the SHA-256 of its secret, as last read.
type Known = Arc<Vec<(Token, [u8; 32])>>;

/// The tokens of one data directory, read again when the file changes, so
/// tokens created or revoked while the server runs apply at once.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    known: WatchedFile<Vec<(Token, [u8; 32])>>,
}

impl Tokens {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        let path = data_dir.join(TOKENS_FILE);
        Tokens { known: WatchedFile::new(path.clone()), path }
    }

    fn read(&self) -> Result<TokensFile, TokenError> {
        Ok(read_json(&self.path)?)
    }

    /// Makes a token and returns it with its text, which exists nowhere else.
    pub fn create(&self, org: Option<&str>, scope: TokenScope) -> Result<(Token, String), TokenError> {
        if let Some(org) = org
            && (org.is_empty() || org.chars().count() > 128 || org.chars().any(char::is_control))
        {
            return Err(TokenError::BadOrg(org.to_string()));
        }
        let random = SystemRandom::new();
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        random.fill(&mut id).and_then(|()| random.fill(&mut secret)).expect("the system's random source works");
        let (id, secret) = (hex(&id), hex(&secret));
        let token = Token {
            id: id.clone(),
            org: org.map(str::to_string),
            scope,
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let stored = StoredToken { token: token.clone(), secret_sha256: hex(&sha256(secret.as_bytes())) };
        update_json(&self.path, |file: &mut TokensFile| {
            file.tokens.push(stored);
            Ok::<_, TokenError>(())
        })?;
        Ok((token, format!("{TOKEN_PREFIX}{id}_{secret}")))
    }

    pub fn list(&self) -> Result<Vec<Token>, TokenError> {
        Ok(self.read()?.tokens.into_iter().map(|stored| stored.token).collect())
    }

    pub fn revoke(&self, id: &str) -> Result<(), TokenError> {
        update_json(&self.path, |file: &mut TokensFile| {
            let before = file.tokens.len();
            file.tokens.retain(|stored| stored.token.id != id);
            if file.tokens.len() == before {
                return Err(TokenError::NoSuchToken(id.to_string()));
            }
            Ok(())
        })
    }

    /// The token an `Authorization` header value names.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Token, AuthError> {
        let header = authorization.ok_or(Unauthenticated::Missing)?;
        let text = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(Unauthenticated::Malformed)?
            .trim();
        let (id, secret) =
            text.strip_prefix(TOKEN_PREFIX).and_then(|rest| rest.split_once('_')).ok_or(Unauthenticated::Unknown)?;
        let presented = sha256(secret.as_bytes());
        let tokens = self.current().map_err(AuthError::Store)?;
        tokens
            .iter()
            .find(|(token, hash)| token.id == id && bool::from(hash.ct_eq(&presented)))
            .map(|(token, _)| token.clone())
            .ok_or(AuthError::Unauthenticated(Unauthenticated::Unknown))
    }

    /// The tokens as the file holds them now; read again only when it changed.
    fn current(&self) -> Result<Known, TokenError> {
        let damaged = |reason: String| SettingsError::Damaged { path: self.path.clone(), reason };
        let parse = |_: &Path| {
            self.read()?
                .tokens
                .into_iter()
                .map(|stored| {
                    let hash = unhex(&stored.secret_sha256)
                        .ok_or_else(|| damaged(format!("token {}: bad secret_sha256", stored.token.id)))?;
                    Ok((stored.token, hash))
                })
                .collect::<Result<Vec<_>, TokenError>>()
        };
        self.known.current(parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_stored_as_a_hash_and_recognised_by_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::in_data_dir(dir.path());
        let (token, text) = tokens.create(Some("acme"), TokenScope::Ingest).unwrap();
        let (_, other) = tokens.create(None, TokenScope::Read).unwrap();
        let stored = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        let secret = text.rsplit('_').next().unwrap();
        assert!(!stored.contains(secret), "the secret is not on disk");
        assert!(stored.contains(&hex(&sha256(secret.as_bytes()))));

        // What the request is refused for (the store itself always reads here).
        let check = |header: Option<&str>| match tokens.authenticate(header) {
            Ok(token) => Ok(token),
            Err(AuthError::Unauthenticated(refused)) => Err(refused),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(check(Some(&format!("Bearer {text}"))), Ok(token.clone()));
        assert!(token.allows_org("acme") && !token.allows_org("globex"));
        let any = tokens.authenticate(Some(&format!("Bearer {other}"))).unwrap();
        assert!(any.allows_org("globex") && any.scope == TokenScope::Read);

        let mut forged = text.clone();
        forged.replace_range(forged.len() - 1.., if forged.ends_with('0') { "1" } else { "0" });
        assert_eq!(check(Some(&format!("Bearer {forged}"))), Err(Unauthenticated::Unknown));
        assert_eq!(check(None), Err(Unauthenticated::Missing));
        assert_eq!(check(Some(&text)), Err(Unauthenticated::Malformed));

        tokens.revoke(&token.id).unwrap();
        assert_eq!(check(Some(&format!("Bearer {text}"))), Err(Unauthenticated::Unknown));
        assert_eq!(tokens.list().unwrap().len(), 1);
        assert!(matches!(tokens.revoke(&token.id), Err(TokenError::NoSuchToken(_))));
    }
}
