//! The operator's commands: `user`, `token`, `org` and `keygen`. They change
//! the settings files of a data directory (a running server picks the
//! change up) or, for `org expire/rewrite/erase`, its stored events with the
//! server stopped, recording what was done as an event of the organisation.

use std::path::PathBuf;

use clap::Subcommand;

use super::data::OfflineArgs;
use super::{ONE_DAY_MS, say};
use crate::http::tokens::{TokenScope, Tokens};
use crate::integrity;
use crate::model::Event;
use crate::policy::{Policies, UgcKey, UgcMode};
use crate::server::users::{Role, Users};
use crate::storage::Storage;

#[derive(Debug, Subcommand)]
pub(super) enum OrgCommand {
    /// Show an organisation's policy, or set it for events received from now
    /// on (a running server applies it to the next batch).
    Policy {
        org: String,
        /// store: keep UGC as sent; hash: keep a keyed hash of each value
        /// (the server needs --ugc-key-file); drop: keep nothing of it.
        #[arg(long, value_enum)]
        ugc: Option<UgcMode>,
        /// A top-level key of `attributes` that holds UGC too (repeatable);
        /// replaces the policy's list when given.
        #[arg(long = "attribute-key", value_name = "KEY", requires = "ugc")]
        attribute_keys: Vec<String>,
        /// Remove events older than this many days (0: keep for ever, the
        /// default; at most 36525, 100 years). A server removes them
        /// hourly; `org expire` now.
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::policy::MAX_RETENTION_DAYS)))]
        retention_days: Option<u32>,
        /// on: nothing of the organisation's is removed or rewritten (no
        /// retention, erasure or UGC rewrite) until it is set off again.
        #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
        legal_hold: Option<bool>,
        /// Origins whose pages may frame the embedded viewer (comma
        /// separated, e.g. https://admin.example.com); an empty value
        /// allows none.
        #[arg(long, value_name = "ORIGINS", value_delimiter = ',')]
        embed_origins: Option<Vec<String>>,
        #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Remove, now, the events each organisation's retention lets go
    /// (a running server does this hourly). Run it with the server stopped;
    /// in a checkpointed data directory give --signing-key, so that each
    /// removal is recorded for `verify`.
    Expire {
        #[command(flatten)]
        offline: OfflineArgs,
    },
    /// Apply the organisation's current policy to the events already stored:
    /// seals the WAL into segments, then rewrites every segment holding the
    /// organisation's events with its UGC hashed or dropped. Run it with the
    /// server stopped.
    Rewrite {
        org: String,
        #[command(flatten)]
        offline: OfflineArgs,
    },
    /// Erase one actor's UGC from the organisation's stored events (a data
    /// subject's request): their UGC fields and the organisation's UGC
    /// attribute keys are dropped, everything else is kept, and the erasure
    /// is recorded as an event of the organisation. Run it with the server
    /// stopped; in a checkpointed data directory give --signing-key, so the
    /// events keep verifying.
    Erase {
        org: String,
        #[arg(long)]
        actor: String,
        #[command(flatten)]
        offline: OfflineArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Make a token and print it: it is shown this once, and only a hash of
    /// it is stored.
    Create {
        /// The one organisation the token may send events for.
        #[arg(long, required_unless_present = "any_org", conflicts_with = "any_org")]
        org: Option<String>,
        /// The token may send events for every organisation (a product's own
        /// backend, sending for all its tenants).
        #[arg(long)]
        any_org: bool,
        #[arg(long, value_enum, default_value_t = TokenScope::Ingest)]
        scope: TokenScope,
        #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// List the tokens (never their secrets).
    List {
        #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Revoke a token by its id; requests with it are refused at once.
    Revoke {
        id: String,
        #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum UserCommand {
    /// Add a user, or give an existing one a new role and password. The
    /// password comes from AUDITLAKE_PASSWORD or is asked for; only a
    /// SCRAM-SHA-256 verifier of it is stored.
    Add {
        name: String,
        /// The user sees every organisation's events.
        #[arg(long, required_unless_present = "org", conflicts_with = "org")]
        admin: bool,
        /// The user sees only this organisation's events.
        #[arg(long)]
        org: Option<String>,
        /// This user's longest statement, instead of the server's --statement-timeout-ms.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=ONE_DAY_MS))]
        statement_timeout_ms: Option<u64>,
        #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// List the users and what each may see.
    List {
        #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Remove a user; their open connections keep running until they close.
    Remove {
        name: String,
        #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR")]
        data_dir: PathBuf,
    },
}

pub(super) fn user(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add { name, admin, org, statement_timeout_ms, data_dir } => {
            let role = match (admin, org) {
                (true, _) => Role::Admin,
                (false, Some(org)) => Role::Org(org),
                (false, None) => unreachable!("clap requires --admin or --org"),
            };
            let password = match std::env::var("AUDITLAKE_PASSWORD") {
                Ok(password) => password,
                Err(_) => {
                    let password = rpassword::prompt_password(format!("Password for {name}: "))?;
                    if rpassword::prompt_password("Again: ")? != password {
                        anyhow::bail!("the two passwords differ; nothing changed");
                    }
                    password
                }
            };
            let users = Users::in_data_dir(&data_dir);
            users.upsert(&name, role.clone(), &password, statement_timeout_ms)?;
            say(&format!("User {name} ({role}) saved in {}.", users.path().display()));
        }
        UserCommand::List { data_dir } => {
            for user in Users::in_data_dir(&data_dir).load()? {
                let timeout = user.statement_timeout_ms.map(|ms| format!("\tstatement timeout {ms} ms"));
                say(&format!("{}\t{}{}", user.name, user.role, timeout.unwrap_or_default()));
            }
        }
        UserCommand::Remove { name, data_dir } => {
            Users::in_data_dir(&data_dir).remove(&name)?;
            say(&format!("User {name} removed."));
        }
    }
    Ok(())
}

pub(super) fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { org, any_org: _, scope, data_dir } => {
            let (token, text) = Tokens::in_data_dir(&data_dir).create(org.as_deref(), scope)?;
            let org = token.org.as_deref().unwrap_or("any organisation");
            // The token alone on stdout, so scripts can capture it.
            say(&text);
            eprintln!("Token {} ({:?}, {org}) created; it is not shown again.", token.id, token.scope);
        }
        TokenCommand::List { data_dir } => {
            for token in Tokens::in_data_dir(&data_dir).list()? {
                let org = token.org.as_deref().unwrap_or("*");
                say(&format!("{}\t{:?}\t{org}\t{}", token.id, token.scope, token.created));
            }
        }
        TokenCommand::Revoke { id, data_dir } => {
            Tokens::in_data_dir(&data_dir).revoke(&id)?;
            say(&format!("Token {id} revoked."));
        }
    }
    Ok(())
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, not {text:?}")),
    }
}

/// Records what an operator did to stored events as an event of the
/// organisation, so that its investigators see it beside the events.
fn record_operator_event(storage: &Storage, org: &str, action: &str, attributes: serde_json::Value) {
    let operator = format!("os:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
    let event = Event::system(org, (&operator, "operator"), action, "admin", true, &attributes);
    if let Err(e) = tokio::runtime::Handle::current().block_on(storage.append(vec![event])) {
        eprintln!("warning: {action} could not be recorded as an event: {e}");
    }
}

pub(super) fn org(command: OrgCommand) -> anyhow::Result<()> {
    match command {
        OrgCommand::Policy { org, ugc, attribute_keys, retention_days, legal_hold, embed_origins, data_dir } => {
            let policies = Policies::in_data_dir(&data_dir, None);
            let changes = ugc.is_some() || retention_days.is_some() || legal_hold.is_some() || embed_origins.is_some();
            let policy = if changes {
                // Under the file's lock: a running server's changes in between are kept.
                policies.update(&org, |mut policy| {
                    if let Some(ugc) = ugc {
                        policy.ugc = ugc;
                        policy.ugc_attribute_keys = attribute_keys;
                    }
                    if let Some(days) = retention_days {
                        policy.retention_days = (days > 0).then_some(days);
                    }
                    if let Some(hold) = legal_hold {
                        policy.legal_hold = hold;
                    }
                    if let Some(origins) = &embed_origins {
                        policy.embed_origins = origins.iter().filter(|o| !o.is_empty()).cloned().collect();
                    }
                    Ok(policy)
                })?
            } else {
                policies.of(&org)?
            };
            let keys = policy.ugc_attribute_keys.join(",");
            let retention = policy.retention_days.map_or_else(|| "forever".to_string(), |d| format!("{d}d"));
            let hold = if policy.legal_hold { "on" } else { "off" };
            let origins = policy.embed_origins.join(",");
            say(&format!(
                "{org}\tugc={}\tattribute_keys={keys}\tretention={retention}\tlegal_hold={hold}\tembed_origins={origins}",
                policy.ugc
            ));
            if ugc == Some(UgcMode::Hash) {
                eprintln!("The server must run with --ugc-key-file to accept events of {org}.");
            }
        }
        OrgCommand::Expire { offline } => {
            offline.refuse_unrecorded_changes()?;
            let expiries = offline.policies()?.expiries(chrono::Utc::now().timestamp_micros())?;
            let storage = offline.open()?;
            let removed = storage.expire(&expiries);
            storage.shutdown();
            say(&format!(
                "{} event(s) removed past retention ({} organisation(s) with a retention).",
                removed?,
                expiries.len()
            ));
        }
        OrgCommand::Rewrite { org, offline } => {
            let policies = offline.policies()?;
            let Some(rewrite) = policies.rewriter(&org)? else {
                say(&format!("{org} stores UGC as sent: nothing to rewrite."));
                return Ok(());
            };
            let policy = policies.of(&org)?.ugc;
            let (storage, rewritten) = offline.rewrite_ugc(&org, rewrite)?;
            let attributes = serde_json::json!({"segments": rewritten, "ugc": policy.to_string()});
            record_operator_event(&storage, &org, "auditlake.org.rewritten", attributes);
            storage.shutdown();
            say(&format!("{org}: {rewritten} segment(s) rewritten to its policy ({policy})."));
        }
        OrgCommand::Erase { org, actor, offline } => {
            let policies = offline.policies()?;
            let eraser = policies.eraser(&org, &actor)?;
            let (storage, rewritten) = offline.rewrite_ugc(&org, eraser)?;
            let attributes = serde_json::json!({"erased_actor": actor, "segments": rewritten});
            record_operator_event(&storage, &org, "auditlake.ugc.erased", attributes);
            storage.shutdown();
            say(&format!("{org}: UGC of actor {actor} erased ({rewritten} segment(s) rewritten)."));
        }
    }
    Ok(())
}

/// `auditlake keygen`: creates the key files asked for, owner-only, never
/// overwriting one.
pub(super) fn keygen(ugc_key: Option<PathBuf>, signing_key: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(path) = ugc_key {
        UgcKey::create(&path)?;
        say(&format!("UGC key written to {} (mode 600).", path.display()));
    }
    if let Some(path) = signing_key {
        let public = integrity::SigningKey::create(&path)?;
        say(&format!(
            "Signing key written to {} (mode 600); public key {public} in {}.",
            path.display(),
            integrity::checkpoint::public_key_path(&path).display()
        ));
    }
    Ok(())
}
