//! Per-organisation data policy: what auditlake keeps of user-generated
//! content (UGC): page titles, issue keys, content and container ids, and the
//! attribute keys an organisation names.
//!
//! - `store`: kept as sent.
//! - `hash`: replaced by `ugc:` and the hex of the first 128 bits of
//!   HMAC-SHA256 under the organisation's key, before the event reaches the
//!   WAL. Equal values stay equal, so "who viewed content X" still works as
//!   `content_id = ugc_hash('X')`; the value itself is not on disk.
//! - `drop`: the fields are never written anywhere, WAL included.
//!
//! Policies live in `policies.json` (data directory, owner-only, re-read when
//! changed). Organisation keys are derived (HMAC-SHA256) from one 32-byte
//! UGC key kept outside the data directory (`--ugc-key-file`, made by
//! `auditlake keygen --ugc-key`): a copy of the data directory or of the
//! bucket does not let anyone test guesses against hashed values.
//!
//! This module decides what of an event may be kept. It never writes events,
//! and never logs a UGC value or a key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::model::Event;
use crate::storage::Expiry;
use crate::storage::settings::{from_hex32 as unhex32, to_hex as hex};
use crate::storage::{SettingsError, WatchedFile, read_json, update_json, write_private_file};

pub const POLICIES_FILE: &str = "policies.json";
/// The event fields that are UGC in every organisation.
pub const UGC_FIELDS: [&str; 3] = ["content_title", "content_id", "container_id"];
/// Prefix of a hashed value: tells it from a value sent as is.
pub const HASHED_PREFIX: &str = "ugc:";
/// Most attribute keys one policy may name.
pub const MAX_UGC_ATTRIBUTE_KEYS: usize = 64;
/// The most origins that may frame an organisation's embedded viewer.
pub const MAX_EMBED_ORIGINS: usize = 16;
const UGC_KEY_BYTES: usize = 32;
/// Separates organisation-key derivation from any other use of the UGC key.
const ORG_KEY_CONTEXT: &[u8] = b"auditlake ugc org key v1\0";

/// What an organisation lets auditlake keep of UGC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UgcMode {
    /// Keep UGC as sent.
    #[default]
    Store,
    /// Keep only a keyed hash of each UGC value.
    Hash,
    /// Keep nothing of UGC.
    Drop,
}

impl std::fmt::Display for UgcMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UgcMode::Store => "store",
            UgcMode::Hash => "hash",
            UgcMode::Drop => "drop",
        })
    }
}

impl UgcMode {
    /// How strict it is: a rewrite may only move to a stricter mode.
    fn strictness(self) -> u8 {
        match self {
            UgcMode::Store => 0,
            UgcMode::Hash => 1,
            UgcMode::Drop => 2,
        }
    }

    pub fn is_stricter_than(self, other: UgcMode) -> bool {
        self.strictness() > other.strictness()
    }
}

/// One organisation's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgPolicy {
    pub ugc: UgcMode,
    /// Top-level keys of `attributes` that hold UGC too.
    #[serde(default)]
    pub ugc_attribute_keys: Vec<String>,
    /// Events older than this many days are removed (hourly, by the
    /// server, or by `auditlake org expire`); `None`, the default, keeps
    /// them for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// While set, nothing of the organisation's is removed or rewritten:
    /// no retention, no erasure, no rewrite to a stricter UGC policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legal_hold: bool,
    /// Origins (`https://admin.example.com`) whose pages may frame the
    /// embedded viewer with this organisation's viewer tokens; none: no page
    /// may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embed_origins: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PoliciesFile {
    orgs: BTreeMap<String, OrgPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("UGC key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error(
        "organisation {org:?} hashes UGC but no UGC key was given (start the server with --ugc-key-file; create one with `auditlake keygen --ugc-key PATH`)"
    )]
    NoKey { org: String },
    #[error("invalid policy: {0}")]
    Invalid(String),
    #[error(
        "organisation {org:?} is under legal hold: nothing of it may be removed or rewritten until the hold is lifted (`auditlake org policy {org} --legal-hold off`)"
    )]
    LegalHold { org: String },
}

/// The UGC key: the secret every organisation's hashing key derives from.
pub struct UgcKey {
    master: hmac::Key,
}

impl std::fmt::Debug for UgcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UgcKey(..)")
    }
}

impl UgcKey {
    fn from_bytes(bytes: &[u8; UGC_KEY_BYTES]) -> Self {
        UgcKey { master: hmac::Key::new(hmac::HMAC_SHA256, bytes) }
    }

    /// Writes a new random key to `path` (owner-only); never replaces a file.
    pub fn create(path: &Path) -> Result<(), PolicyError> {
        let key_error = |reason: String| PolicyError::KeyFile { path: path.to_path_buf(), reason };
        if path.exists() {
            return Err(key_error("exists already; a new key would make earlier hashes unmatchable".into()));
        }
        let mut bytes = [0u8; UGC_KEY_BYTES];
        SystemRandom::new().fill(&mut bytes).expect("the system's random source works");
        write_private_file(path, format!("{}\n", hex(&bytes)).as_bytes()).map_err(|e| key_error(e.to_string()))
    }

    /// Reads a key file; refuses one that others than its owner may read.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let key_error = |reason: String| PolicyError::KeyFile { path: path.to_path_buf(), reason };
        let meta = std::fs::metadata(path).map_err(|e| key_error(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(key_error("group or others may read it; chmod 600 it".into()));
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(|e| key_error(e.to_string()))?;
        let bytes = unhex32(text.trim()).ok_or_else(|| key_error("expected 64 hexadecimal digits".into()))?;
        Ok(UgcKey::from_bytes(&bytes))
    }

    /// The hashed form of `value` in organisation `org`.
    pub fn hash(&self, org: &str, value: &str) -> String {
        let mut derivation = hmac::Context::with_key(&self.master);
        derivation.update(ORG_KEY_CONTEXT);
        derivation.update(org.as_bytes());
        let org_key = hmac::Key::new(hmac::HMAC_SHA256, derivation.sign().as_ref());
        let tag = hmac::sign(&org_key, value.as_bytes());
        format!("{HASHED_PREFIX}{}", hex(&tag.as_ref()[..16]))
    }
}

/// The policies of one data directory, and the key to apply them with.
#[derive(Debug)]
pub struct Policies {
    file: WatchedFile<PoliciesFile>,
    key: Option<Arc<UgcKey>>,
}

impl Policies {
    pub fn in_data_dir(data_dir: &Path, key: Option<Arc<UgcKey>>) -> Self {
        Policies { file: WatchedFile::new(data_dir.join(POLICIES_FILE)), key }
    }

    pub fn key(&self) -> Option<&Arc<UgcKey>> {
        self.key.as_ref()
    }

    fn current(&self) -> Result<Arc<PoliciesFile>, PolicyError> {
        self.file.current(|path| Ok(read_json(path)?))
    }

    /// Every organisation with a policy of its own (the others store UGC).
    pub fn list(&self) -> Result<BTreeMap<String, OrgPolicy>, PolicyError> {
        Ok(self.current()?.orgs.clone())
    }

    pub fn of(&self, org: &str) -> Result<OrgPolicy, PolicyError> {
        Ok(self.current()?.orgs.get(org).cloned().unwrap_or_default())
    }

    /// Sets an organisation's policy for events received from now on. The
    /// command line does so without the key: the server that applies the
    /// policy checks for it at start ([`Policies::check_key`]) and on every
    /// batch.
    pub fn set(&self, org: &str, policy: OrgPolicy) -> Result<(), PolicyError> {
        self.update(org, |_| Ok(policy)).map(|_| ())
    }

    /// Sets an organisation's policy to what `change` makes of its current
    /// one, with no other change to the file in between (see
    /// [`update_json`]); returns the new policy once it is durable.
    pub fn update(
        &self,
        org: &str,
        change: impl FnOnce(OrgPolicy) -> Result<OrgPolicy, PolicyError>,
    ) -> Result<OrgPolicy, PolicyError> {
        update_json(self.file.path(), |file: &mut PoliciesFile| {
            let policy = change(file.orgs.get(org).cloned().unwrap_or_default())?;
            validate(org, &policy)?;
            file.orgs.insert(org.to_string(), policy.clone());
            Ok(policy)
        })
    }

    /// Fails if an organisation hashes UGC and there is no key to do it with.
    pub fn check_key(&self) -> Result<(), PolicyError> {
        match self.current()?.orgs.iter().find(|(_, p)| p.ugc == UgcMode::Hash) {
            Some((org, _)) if self.key.is_none() => Err(PolicyError::NoKey { org: org.clone() }),
            _ => Ok(()),
        }
    }

    /// Applies each event's organisation policy to it, in place: what this
    /// returns is all of the events that may reach the WAL.
    pub fn apply(&self, events: &mut [Event]) -> Result<(), PolicyError> {
        let policies = self.current()?;
        if policies.orgs.values().all(|p| p.ugc == UgcMode::Store) {
            return Ok(());
        }
        for event in events {
            let Some(policy) = policies.orgs.get(&event.org_id) else { continue };
            let org = event.org_id.clone();
            if let Some(protect) = self.protection(&org, policy, false)? {
                protect.event(event);
            }
        }
        Ok(())
    }

    /// What `policy` does to `org`'s UGC; `None` for storing it as sent.
    fn protection<'a>(
        &'a self,
        org: &'a str,
        policy: &'a OrgPolicy,
        keep_hashed: bool,
    ) -> Result<Option<Protect<'a>>, PolicyError> {
        let key = match policy.ugc {
            UgcMode::Store => return Ok(None),
            UgcMode::Hash => Some(self.key.as_deref().ok_or_else(|| PolicyError::NoKey { org: org.to_string() })?),
            UgcMode::Drop => None,
        };
        Ok(Some(Protect { org, policy, key, keep_hashed, actor: None }))
    }

    /// A rewrite of stored batches to `org`'s current policy: each batch
    /// with that organisation's UGC hashed (values hashed already kept) or
    /// dropped. `None` when the policy stores UGC: nothing to rewrite.
    pub fn rewriter(
        &self,
        org: &str,
    ) -> Result<Option<impl Fn(&RecordBatch) -> Result<RecordBatch, PolicyError>>, PolicyError> {
        let policy = self.of(org)?;
        if policy.legal_hold {
            return Err(PolicyError::LegalHold { org: org.to_string() });
        }
        let org = org.to_string();
        let key = self.key.clone();
        if policy.ugc == UgcMode::Hash && key.is_none() {
            return Err(PolicyError::NoKey { org });
        }
        if policy.ugc == UgcMode::Store {
            return Ok(None);
        }
        Ok(Some(move |batch: &RecordBatch| {
            let key = if policy.ugc == UgcMode::Hash { key.as_deref() } else { None };
            Protect { org: &org, policy: &policy, key, keep_hashed: true, actor: None }.batch(batch)
        }))
    }

    /// A rewrite of stored batches that erases one actor's UGC in one
    /// organisation (a data subject's request): the UGC fields and the
    /// organisation's UGC attribute keys of that actor's events are dropped,
    /// as a `drop` policy would have; everything else stays.
    pub fn eraser(
        &self,
        org: &str,
        actor: &str,
    ) -> Result<impl Fn(&RecordBatch) -> Result<RecordBatch, PolicyError>, PolicyError> {
        let policy = OrgPolicy { ugc: UgcMode::Drop, ..self.of(org)? };
        if policy.legal_hold {
            return Err(PolicyError::LegalHold { org: org.to_string() });
        }
        let (org, actor) = (org.to_string(), actor.to_string());
        Ok(move |batch: &RecordBatch| {
            Protect { org: &org, policy: &policy, key: None, keep_hashed: false, actor: Some(&actor) }.batch(batch)
        })
    }
}

/// The longest retention a policy may have: a year count cannot mean more,
/// and `days * DAY_US` stays far inside `i64`.
pub const MAX_RETENTION_DAYS: u32 = 36_525;

impl Policies {
    /// What retention lets go as of `now_us`: for each organisation with a
    /// retention and no legal hold, its events older than the retention. A
    /// retention past [`MAX_RETENTION_DAYS`] (a hand-edited file) removes
    /// nothing: a wrong number must never delete history.
    pub fn expiries(&self, now_us: i64) -> Result<Vec<Expiry>, PolicyError> {
        const DAY_US: i64 = 86_400_000_000;
        Ok(self
            .list()?
            .into_iter()
            .filter(|(_, policy)| !policy.legal_hold)
            .filter_map(|(org, policy)| {
                let days = policy.retention_days?;
                if days > MAX_RETENTION_DAYS {
                    tracing::error!(org, days, "{}; nothing of it is removed", retention_too_long(days));
                    return None;
                }
                let before_us = now_us.checked_sub(i64::from(days).checked_mul(DAY_US)?)?;
                Some(Expiry { org, before_us })
            })
            .collect())
    }
}

impl crate::storage::RetentionSource for Policies {
    fn expiries(&self, now_us: i64) -> Vec<Expiry> {
        Policies::expiries(self, now_us).unwrap_or_else(|e| {
            tracing::error!(error = %e, "policies unreadable; no retention applied");
            Vec::new()
        })
    }
}

/// What stands in for a value a policy drops from a recorded statement.
pub const WITHHELD: &str = "<withheld by UGC policy>";

impl Policies {
    /// Records of the audit log's own use quote what investigators searched
    /// for (content ids, titles) as SQL literals and bound parameters. Under
    /// a policy that hashes or drops UGC, those are hashed or withheld too,
    /// and so is the error message (which may echo a value); the statement
    /// keeps its shape. A record of `system_org` (admins, whose statements
    /// may name any organisation's content) follows the strictest policy any
    /// organisation has. Never fails: when the policies cannot be read, or a
    /// hash has no key, values are withheld.
    pub fn protect_statement_records(&self, records: &mut [Event], system_org: &str) {
        let policies = self.current().ok();
        let strictest = policies.as_ref().map_or(UgcMode::Drop, |p| {
            p.orgs.values().map(|p| p.ugc).max_by_key(|mode| mode.strictness()).unwrap_or_default()
        });
        for record in records {
            let mode = match &policies {
                _ if record.org_id == system_org => strictest,
                Some(p) => p.orgs.get(&record.org_id).map_or(UgcMode::Store, |p| p.ugc),
                None => UgcMode::Drop,
            };
            let key = match mode {
                UgcMode::Store => continue,
                UgcMode::Hash => self.key.as_deref(),
                UgcMode::Drop => None,
            };
            protect_statement_record(record, key);
        }
    }
}

fn protect_statement_record(record: &mut Event, key: Option<&UgcKey>) {
    let Some(Ok(serde_json::Value::Object(mut attributes))) =
        record.attributes.as_deref().map(serde_json::from_str::<serde_json::Value>)
    else {
        return;
    };
    let org = record.org_id.clone();
    let protect = |value: &str| key.map_or_else(|| WITHHELD.to_string(), |key| key.hash(&org, value));
    if let Some(serde_json::Value::String(sql)) = attributes.get_mut("sql") {
        *sql = protect_sql_literals(sql, &protect);
    }
    if let Some(serde_json::Value::Array(parameters)) = attributes.get_mut("parameters") {
        for parameter in parameters {
            if let serde_json::Value::String(value) = parameter {
                *value = protect(value);
            }
        }
    }
    if let Some(error) = attributes.get_mut("error") {
        *error = serde_json::Value::String(WITHHELD.into());
    }
    record.attributes = Some(serde_json::Value::Object(attributes).to_string());
}

/// The statement with each string literal protected; withheld whole when it
/// cannot be parsed (it failed to parse for the server too, or was cut).
fn protect_sql_literals(sql: &str, protect: &dyn Fn(&str) -> String) -> String {
    use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions_mut};
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    let Ok(mut statements) = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql) else {
        return WITHHELD.to_string();
    };
    let _ = visit_expressions_mut(&mut statements, |expr| {
        if let Expr::Value(value) = expr {
            match &mut value.value {
                Value::SingleQuotedString(text)
                | Value::DoubleQuotedString(text)
                | Value::EscapedStringLiteral(text)
                | Value::NationalStringLiteral(text) => *text = protect(text),
                Value::DollarQuotedString(dollar) => dollar.value = protect(&dollar.value),
                _ => {}
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    statements.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// What one organisation's policy does to its UGC values: hash them with
/// its key, or drop them (`key: None`).
struct Protect<'a> {
    org: &'a str,
    policy: &'a OrgPolicy,
    key: Option<&'a UgcKey>,
    /// Leave values that are hashed already as they are (rewriting stored
    /// events, some of which arrived under the policy).
    keep_hashed: bool,
    /// Only this actor's rows (erasure); every row of the organisation if `None`.
    actor: Option<&'a str>,
}

impl Protect<'_> {
    fn value(&self, value: Option<&str>) -> Option<String> {
        match (value, self.key) {
            (Some(v), Some(_)) if self.keep_hashed && is_hashed(v) => Some(v.to_string()),
            (Some(v), Some(key)) => Some(key.hash(self.org, v)),
            _ => None,
        }
    }

    /// `attributes` with the policy's keys hashed or removed; `None` when
    /// nothing changes.
    fn attributes(&self, text: &str) -> Option<String> {
        if self.policy.ugc_attribute_keys.is_empty() {
            return None;
        }
        let Ok(serde_json::Value::Object(mut attributes)) = serde_json::from_str(text) else { return None };
        let mut changed = false;
        for name in &self.policy.ugc_attribute_keys {
            let Some(value) = attributes.remove(name) else { continue };
            changed = true;
            // A string is hashed as itself, so `attributes->>'k' = ugc_hash('X')`
            // matches; any other JSON value as its compact JSON text.
            let plain = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            if let Some(protected) = self.value(Some(&plain)) {
                attributes.insert(name.clone(), serde_json::Value::String(protected));
            }
        }
        changed.then(|| serde_json::Value::Object(attributes).to_string())
    }

    fn event(&self, event: &mut Event) {
        for field in [&mut event.content_title, &mut event.content_id, &mut event.container_id] {
            *field = self.value(field.as_deref());
        }
        if let Some(protected) = event.attributes.as_deref().and_then(|text| self.attributes(text)) {
            event.attributes = Some(protected);
        }
    }

    /// The batch with this organisation's rows protected; other rows as they were.
    fn batch(&self, batch: &RecordBatch) -> Result<RecordBatch, PolicyError> {
        let orgs = batch.column_by_name("org_id").expect("org_id column").as_string::<i32>();
        let actors = batch.column_by_name("actor_id").expect("actor_id column").as_string::<i32>();
        let ours: Vec<bool> = (0..batch.num_rows())
            .map(|row| orgs.value(row) == self.org && self.actor.is_none_or(|a| actors.value(row) == a))
            .collect();
        let mut columns = batch.columns().to_vec();
        for (i, field) in batch.schema().fields().iter().enumerate() {
            let name = field.name().as_str();
            let is_ugc = UGC_FIELDS.contains(&name);
            if !is_ugc && name != "attributes" {
                continue;
            }
            let text = columns[i].as_string::<i32>();
            let protected: StringArray = (0..text.len())
                .map(|row| {
                    let value = text.is_valid(row).then(|| text.value(row));
                    match (ours[row], is_ugc, value) {
                        (false, _, value) => value.map(str::to_string),
                        (true, true, value) => self.value(value),
                        (true, false, Some(attributes)) => {
                            Some(self.attributes(attributes).unwrap_or_else(|| attributes.to_string()))
                        }
                        (true, false, None) => None,
                    }
                })
                .collect();
            columns[i] = Arc::new(protected);
        }
        RecordBatch::try_new(batch.schema(), columns).map_err(|e| PolicyError::Invalid(e.to_string()))
    }
}

/// Whether a value has the form of a hashed one: the prefix and 32 hex digits.
pub fn is_hashed(value: &str) -> bool {
    value
        .strip_prefix(HASHED_PREFIX)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn validate(org: &str, policy: &OrgPolicy) -> Result<(), PolicyError> {
    if org.is_empty() || org.chars().count() > 128 || org.chars().any(char::is_control) {
        return Err(PolicyError::Invalid(format!(
            "organisation name {org:?} is empty, too long or holds control characters"
        )));
    }
    if policy.ugc_attribute_keys.len() > MAX_UGC_ATTRIBUTE_KEYS {
        return Err(PolicyError::Invalid(format!("at most {MAX_UGC_ATTRIBUTE_KEYS} attribute keys")));
    }
    if let Some(bad) = policy.ugc_attribute_keys.iter().find(|k| k.is_empty() || k.len() > 256) {
        return Err(PolicyError::Invalid(format!("attribute key {bad:?} is empty or longer than 256 bytes")));
    }
    if let Some(days) = policy.retention_days.filter(|&d| d > MAX_RETENTION_DAYS) {
        return Err(PolicyError::Invalid(retention_too_long(days)));
    }
    if policy.embed_origins.len() > MAX_EMBED_ORIGINS {
        return Err(PolicyError::Invalid(format!("at most {MAX_EMBED_ORIGINS} embed origins")));
    }
    if let Some(bad) = policy.embed_origins.iter().find(|origin| !is_origin(origin)) {
        return Err(PolicyError::Invalid(format!(
            "embed origin {bad:?} is not an origin: write it as https://host or http://host:port, nothing after"
        )));
    }
    Ok(())
}

/// Whether `text` is a web origin as a Content-Security-Policy source
/// names one: `http` or `https`, a host name or IPv4 address, maybe a port
/// (IPv6 literals are not taken). It goes into a response header, so
/// nothing else may pass.
pub fn is_origin(text: &str) -> bool {
    let Some(authority) = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://")) else {
        return false;
    };
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let port_ok = port
        .is_none_or(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p > 0));
    host_ok && port_ok
}

fn retention_too_long(days: u32) -> String {
    format!(
        "a retention of {days} days is more than {MAX_RETENTION_DAYS} (100 years); to keep events for ever, \
         set --retention-days 0"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(org: &str) -> Event {
        Event {
            org_id: org.into(),
            content_id: Some("PAGE-1".into()),
            content_title: Some("Layoffs plan".into()),
            container_id: Some("HR".into()),
            attributes: Some(r#"{"title":"Layoffs plan","size":3,"kept":"yes"}"#.into()),
            ..Event::default()
        }
    }

    fn with_key(dir: &Path) -> Policies {
        let key_path = dir.join("ugc.key");
        UgcKey::create(&key_path).unwrap();
        Policies::in_data_dir(dir, Some(Arc::new(UgcKey::load(&key_path).unwrap())))
    }

    #[test]
    fn hash_keeps_equality_within_an_organisation_and_nothing_of_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let policies = with_key(dir.path());
        let keys = vec!["title".to_string(), "size".to_string()];
        policies.set("acme", OrgPolicy { ugc: UgcMode::Hash, ugc_attribute_keys: keys, ..Default::default() }).unwrap();
        let mut events = vec![event("acme"), event("acme"), event("globex")];
        policies.apply(&mut events).unwrap();

        let key = policies.key().unwrap();
        assert_eq!(events[0].content_id, Some(key.hash("acme", "PAGE-1")));
        assert_eq!(events[0].content_id, events[1].content_id);
        assert_ne!(key.hash("acme", "PAGE-1"), key.hash("globex", "PAGE-1"), "keys differ per organisation");
        assert!(events[0].content_id.as_deref().unwrap().starts_with(HASHED_PREFIX));
        let attributes: serde_json::Value = serde_json::from_str(events[0].attributes.as_deref().unwrap()).unwrap();
        assert_eq!(attributes["title"], key.hash("acme", "Layoffs plan").as_str());
        assert_eq!(attributes["size"], key.hash("acme", "3").as_str());
        assert_eq!(attributes["kept"], "yes");
        assert_eq!(events[2], event("globex"), "no policy: stored as sent");
    }

    #[test]
    fn only_web_origins_may_frame_the_viewer() {
        let dir = tempfile::tempdir().unwrap();
        let policies = Policies::in_data_dir(dir.path(), None);
        for origin in ["https://admin.example.com", "http://127.0.0.1:8081", "https://a-b.example"] {
            assert!(is_origin(origin), "{origin}");
        }
        for not_origin in [
            "admin.example.com",
            "https://",
            "https://a.example/path",
            "https://a.example:0",
            "https://a.example:65536",
            "https://a.example; script-src *",
            "https://*.example.com",
            "javascript:alert(1)",
            "https://a.example\r\nX: y",
        ] {
            assert!(!is_origin(not_origin), "{not_origin}");
            let policy = OrgPolicy { embed_origins: vec![not_origin.into()], ..Default::default() };
            assert!(matches!(policies.set("acme", policy), Err(PolicyError::Invalid(m)) if m.contains("embed origin")));
        }
        let allowed = OrgPolicy { embed_origins: vec!["https://admin.example.com".into()], ..Default::default() };
        policies.set("acme", allowed.clone()).unwrap();
        assert_eq!(policies.of("acme").unwrap(), allowed);
    }

    #[test]
    fn a_retention_no_year_count_can_mean_is_refused_and_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let policies = Policies::in_data_dir(dir.path(), None);
        let forever = OrgPolicy { retention_days: Some(4_000_000_000), ..Default::default() };
        assert!(
            matches!(policies.set("acme", forever.clone()), Err(PolicyError::Invalid(m)) if m.contains("100 years"))
        );
        // Written by hand past the check: nothing expires.
        let file = PoliciesFile { orgs: [("acme".to_string(), forever)].into() };
        crate::storage::write_json(&dir.path().join(POLICIES_FILE), &file).unwrap();
        let now_us = 1_795_000_000_000_000;
        assert_eq!(policies.expiries(now_us).unwrap(), vec![]);
        let longest = OrgPolicy { retention_days: Some(MAX_RETENTION_DAYS), ..Default::default() };
        policies.set("acme", longest).unwrap();
        let expiries = policies.expiries(now_us).unwrap();
        assert_eq!(expiries[0].before_us, now_us - i64::from(MAX_RETENTION_DAYS) * 86_400_000_000);
        assert!(expiries[0].before_us < now_us);
    }

    #[test]
    fn drop_removes_every_ugc_field_and_named_attribute() {
        let dir = tempfile::tempdir().unwrap();
        let policies = Policies::in_data_dir(dir.path(), None);
        let policy = OrgPolicy { ugc: UgcMode::Drop, ugc_attribute_keys: vec!["title".into()], ..Default::default() };
        policies.set("acme", policy.clone()).unwrap();
        assert_eq!(policies.of("acme").unwrap(), policy);
        let mut events = vec![event("acme")];
        policies.apply(&mut events).unwrap();
        let e = &events[0];
        assert_eq!((&e.content_id, &e.content_title, &e.container_id), (&None, &None, &None));
        assert_eq!(e.attributes.as_deref(), Some(r#"{"kept":"yes","size":3}"#));
    }

    #[test]
    fn hashing_without_a_key_is_refused_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let offline = Policies::in_data_dir(dir.path(), None);
        offline
            .set("acme", OrgPolicy { ugc: UgcMode::Hash, ugc_attribute_keys: vec![], ..Default::default() })
            .unwrap();
        assert!(matches!(offline.check_key(), Err(PolicyError::NoKey { org }) if org == "acme"));
        let mut events = vec![event("acme")];
        assert!(matches!(offline.apply(&mut events), Err(PolicyError::NoKey { .. })));
    }

    #[test]
    fn recorded_statements_keep_their_shape_and_lose_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let policies = with_key(dir.path());
        policies
            .set("acme", OrgPolicy { ugc: UgcMode::Hash, ugc_attribute_keys: vec![], ..Default::default() })
            .unwrap();
        policies
            .set("globex", OrgPolicy { ugc: UgcMode::Drop, ugc_attribute_keys: vec![], ..Default::default() })
            .unwrap();
        let record = |org: &str| Event {
            org_id: org.into(),
            attributes: Some(
                serde_json::json!({
                    "sql": "select count(*) from audit_events where content_id = 'PAGE-1' and seq > 3",
                    "parameters": ["PAGE-2", 7],
                    "error": "no 'PAGE-1'",
                    "rows": 1,
                })
                .to_string(),
            ),
            ..Event::default()
        };
        let mut records = vec![record("acme"), record("globex"), record("initech"), record("_system")];
        policies.protect_statement_records(&mut records, "_system");
        let attributes = |i: usize| -> serde_json::Value {
            serde_json::from_str(records[i].attributes.as_deref().unwrap()).unwrap()
        };
        let hashed = policies.key().unwrap().hash("acme", "PAGE-1");
        assert_eq!(
            attributes(0)["sql"],
            format!("SELECT count(*) FROM audit_events WHERE content_id = '{hashed}' AND seq > 3")
        );
        assert_eq!(attributes(0)["parameters"], serde_json::json!([policies.key().unwrap().hash("acme", "PAGE-2"), 7]));
        assert_eq!(attributes(0)["error"], WITHHELD);
        assert_eq!(attributes(1)["parameters"][0], WITHHELD);
        assert!(attributes(1)["sql"].as_str().unwrap().contains(&format!("'{WITHHELD}'")));
        assert_eq!(records[2], record("initech"), "stored as sent");
        assert_eq!(attributes(3)["parameters"][0], WITHHELD, "admins follow the strictest policy");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ugc.key");
        UgcKey::create(&path).unwrap();
        assert!(matches!(UgcKey::create(&path), Err(PolicyError::KeyFile { .. })), "never replaced");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = UgcKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
