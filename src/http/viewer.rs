//! Viewer tokens: what a SaaS vendor's backend hands its customer's browser
//! so that the customer can read its own organisation's events, and no more
//! (Retraced's embedded viewer, WorkOS's Admin Portal).
//!
//! A viewer token is read-only, for one organisation, short-lived (15
//! minutes unless asked, a day at most), and may be narrowed to one actor,
//! one content id or one container; it carries the vendor's end-user id. It
//! is `alv_<claims>.<tag>`: the claims as JSON in URL-safe base64, and their
//! HMAC-SHA256 under a key only this server's data directory holds
//! (`viewer.key`, owner-only, made on first use). Nothing of it is stored:
//! the tag and the expiry are checked on every request, and a request with
//! one reads through the same organisation-scoped path as a read token, its
//! narrowing added to whatever the request asks. This module never logs a
//! token's text or the key.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::search::{Filter, Term};
use crate::storage::SettingsError;
use crate::storage::durable::write_private_file;
use crate::storage::settings::{from_hex32, to_hex, with_lock};

pub const VIEWER_KEY_FILE: &str = "viewer.key";
pub const VIEWER_TOKEN_PREFIX: &str = "alv_";
/// How long a viewer token lasts when the request does not say.
pub const DEFAULT_VIEWER_TTL_SECONDS: u64 = 15 * 60;
/// The longest a viewer token may last.
pub const MAX_VIEWER_TTL_SECONDS: u64 = 24 * 60 * 60;
/// The longest actor, content, container or end-user id a token carries.
const MAX_CLAIM_BYTES: usize = 256;

/// What a viewer token allows, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewerClaims {
    pub org: String,
    /// Only this actor's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Only the events about this content (as the application knows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    /// Only the events in this container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Who the vendor says is looking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    /// Milliseconds since the Unix epoch from which the token is refused
    /// (milliseconds, so that a one-second token lasts a second whenever
    /// in a second it is made).
    pub expires_ms: i64,
}

/// What the vendor asks for (`POST /v1/orgs/{org}/viewer-tokens`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewerRequest {
    pub ttl_seconds: Option<u64>,
    pub actor: Option<String>,
    pub content_id: Option<String>,
    pub container_id: Option<String>,
    pub end_user: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{0}")]
    BadRequest(String),
    #[error("not a viewer token of this server")]
    Forged,
    /// A token this server signed, past its expiry (its claims say whose).
    #[error("this viewer token expired at {}; ask the application for a new one", .0.expires_at())]
    Expired(Box<ViewerClaims>),
}

/// The signing key of one data directory.
#[derive(Debug)]
pub struct ViewerKey {
    key: hmac::Key,
}

impl ViewerKey {
    /// The data directory's key, made (32 random bytes) if it has none.
    pub fn in_data_dir(data_dir: &Path) -> Result<ViewerKey, ViewerError> {
        let path = data_dir.join(VIEWER_KEY_FILE);
        let written = |source| SettingsError::Write { path: path.clone(), source };
        // Under the settings lock: a server and the command line starting
        // at once make one key, not two.
        let bytes = with_lock(&path, || -> Result<[u8; 32], SettingsError> {
            match std::fs::read_to_string(&path) {
                Ok(text) => from_hex32(text.trim())
                    .ok_or_else(|| SettingsError::Damaged { path: path.clone(), reason: "not 64 hex digits".into() }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let mut key = [0u8; 32];
                    SystemRandom::new().fill(&mut key).map_err(|_| written(std::io::Error::other("no randomness")))?;
                    write_private_file(&path, to_hex(&key).as_bytes()).map_err(written)?;
                    Ok(key)
                }
                Err(source) => Err(SettingsError::Read { path: path.clone(), source }),
            }
        })?;
        Ok(ViewerKey { key: hmac::Key::new(hmac::HMAC_SHA256, &bytes) })
    }

    /// A token for `org` as `request` asks, expiring `ttl` after `now_ms`.
    pub fn issue(&self, org: &str, request: ViewerRequest, now_ms: i64) -> Result<(String, ViewerClaims), ViewerError> {
        let bad = |message: String| ViewerError::BadRequest(message);
        let ttl = request.ttl_seconds.unwrap_or(DEFAULT_VIEWER_TTL_SECONDS);
        if !(1..=MAX_VIEWER_TTL_SECONDS).contains(&ttl) {
            return Err(bad(format!("ttl_seconds={ttl} is not between 1 and {MAX_VIEWER_TTL_SECONDS}")));
        }
        for (name, value) in [
            ("actor", &request.actor),
            ("content_id", &request.content_id),
            ("container_id", &request.container_id),
            ("end_user", &request.end_user),
        ] {
            if let Some(value) = value
                && (value.is_empty() || value.len() > MAX_CLAIM_BYTES || value.chars().any(char::is_control))
            {
                return Err(bad(format!(
                    "{name} is empty, longer than {MAX_CLAIM_BYTES} bytes or holds control characters"
                )));
            }
        }
        let claims = ViewerClaims {
            org: org.to_string(),
            actor: request.actor,
            content_id: request.content_id,
            container_id: request.container_id,
            end_user: request.end_user,
            expires_ms: now_ms.saturating_add(ttl as i64 * 1000),
        };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialise"));
        let tag = URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, body.as_bytes()));
        Ok((format!("{VIEWER_TOKEN_PREFIX}{body}.{tag}"), claims))
    }

    /// The claims of `token` if this server signed it and it has not
    /// expired at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<ViewerClaims, ViewerError> {
        let (body, tag) =
            token.strip_prefix(VIEWER_TOKEN_PREFIX).and_then(|rest| rest.split_once('.')).ok_or(ViewerError::Forged)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| ViewerError::Forged)?;
        hmac::verify(&self.key, body.as_bytes(), &tag).map_err(|_| ViewerError::Forged)?;
        let claims = URL_SAFE_NO_PAD.decode(body).map_err(|_| ViewerError::Forged)?;
        let claims: ViewerClaims = serde_json::from_slice(&claims).map_err(|_| ViewerError::Forged)?;
        if now_ms >= claims.expires_ms {
            return Err(ViewerError::Expired(Box::new(claims)));
        }
        Ok(claims)
    }
}

impl ViewerClaims {
    /// When the token stops being accepted, in RFC 3339.
    pub fn expires_at(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.expires_ms)
            .map_or_else(|| self.expires_ms.to_string(), |t| t.to_rfc3339())
    }

    /// What the token narrows its organisation's events to, as search terms
    /// every request made with it must also hold (so that whatever else the
    /// request asks only narrows further).
    pub fn narrowing(&self) -> Vec<Term> {
        let filters = [
            self.actor.clone().map(Filter::Actor),
            self.content_id.clone().map(Filter::Content),
            self.container_id.clone().map(Filter::Container),
        ];
        filters.into_iter().flatten().map(|filter| Term { negated: false, filter }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T…, in milliseconds.
    const NOW: i64 = 1_796_000_000_000;

    fn key() -> (tempfile::TempDir, ViewerKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = ViewerKey::in_data_dir(dir.path()).unwrap();
        (dir, key)
    }

    #[test]
    fn a_token_verifies_until_it_expires_and_the_key_is_kept() {
        let (dir, key) = key();
        let request =
            ViewerRequest { actor: Some("alice".into()), end_user: Some("vendor-user-9".into()), ..Default::default() };
        let (token, claims) = key.issue("acme", request, NOW).unwrap();
        assert!(token.starts_with("alv_"));
        assert_eq!(claims.expires_ms, NOW + 900_000);
        assert_eq!(key.verify(&token, NOW + 899_999).unwrap(), claims);
        let expired = key.verify(&token, NOW + 900_000).unwrap_err().to_string();
        assert!(expired.contains("expired at 2026-"), "{expired}");
        // The same data directory signs with the same key after a restart.
        let again = ViewerKey::in_data_dir(dir.path()).unwrap();
        assert_eq!(again.verify(&token, NOW).unwrap(), claims);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(VIEWER_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_one_second_token_lasts_a_second_late_in_a_second_too() {
        let (_dir, key) = key();
        let late = NOW + 999;
        let request = ViewerRequest { ttl_seconds: Some(1), ..Default::default() };
        let (token, _) = key.issue("acme", request, late).unwrap();
        assert!(key.verify(&token, late + 999).is_ok());
        assert!(key.verify(&token, late + 1000).is_err());
    }

    #[test]
    fn tampered_or_foreign_tokens_are_refused() {
        let (_dir, key) = key();
        let (token, _) = key.issue("acme", ViewerRequest::default(), NOW).unwrap();
        let (body, tag) = token.split_once('.').unwrap();
        // The claims changed to another organisation, with the old tag.
        let forged = serde_json::json!({"org": "globex", "expires_ms": NOW + 900_000});
        let forged_body = URL_SAFE_NO_PAD.encode(forged.to_string());
        for bad in [
            format!("alv_{forged_body}.{tag}"),
            format!("{body}.{}", URL_SAFE_NO_PAD.encode([0u8; 32])),
            format!("{body}x.{tag}"),
            "alv_".to_string(),
            "alv_.".to_string(),
            token.replace("alv_", "alk_"),
        ] {
            assert!(matches!(key.verify(&bad, NOW), Err(ViewerError::Forged)), "{bad}");
        }
        let (_other_dir, other) = super::tests::key();
        assert!(matches!(other.verify(&token, NOW), Err(ViewerError::Forged)));
    }

    #[test]
    fn lifetimes_and_claims_are_bounded() {
        let (_dir, key) = key();
        let issue = |request: ViewerRequest| key.issue("acme", request, NOW).map(|_| ()).unwrap_err().to_string();
        assert!(issue(ViewerRequest { ttl_seconds: Some(0), ..Default::default() }).contains("ttl_seconds=0"));
        assert!(issue(ViewerRequest { ttl_seconds: Some(86_401), ..Default::default() }).contains("86400"));
        assert!(issue(ViewerRequest { actor: Some(String::new()), ..Default::default() }).contains("actor is empty"));
        let long = ViewerRequest { end_user: Some("x".repeat(257)), ..Default::default() };
        assert!(issue(long).contains("end_user"));
        let day = ViewerRequest { ttl_seconds: Some(86_400), ..Default::default() };
        assert_eq!(key.issue("acme", day, NOW).unwrap().1.expires_ms, NOW + 86_400_000);
    }
}
