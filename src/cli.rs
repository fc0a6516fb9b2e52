//! The command line: `auditlake serve`, `demo`, `query`, `report` and `user`.
//!
//! This is the only module that writes to stdout (what the user asked for:
//! connection strings, a ready line scripts can wait for). Logs go to stderr
//! through `tracing`. It wires the layers together and owns no logic of its own.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use datafusion::arrow::array::RecordBatch;
use tracing::{info, warn};

use crate::exporter::{self, ExportFormat, ExportRequest};
use crate::import::{self, ImportFormat};
use crate::ingest::tokens::{TokenScope, Tokens};
use crate::ingest::{self, demo};
use crate::policy::{Policies, UgcKey, UgcMode};
use crate::server::users::{Role, Users};
use crate::storage::compaction::CompactionPolicy;
use crate::storage::{self, Storage, StorageConfig};
use crate::{client, integrity, reports};
use crate::{query, server};

#[derive(Debug, Parser)]
#[command(name = "auditlake", version, about = "A self-hosted audit log you query with SQL")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: HTTP ingest and the Postgres endpoint.
    Serve(ServeArgs),
    /// Fill a fresh data directory with realistic demo activity, then serve it.
    Demo(DemoArgs),
    /// Run one read-only SQL statement over a data directory (no server
    /// running on it) or against a running server, and print the rows.
    Query(QueryArgs),
    /// Run a saved compliance report from `sql/` (or any SQL file written for
    /// psql variables) the same way.
    Report(ReportArgs),
    /// Manage who may connect to the Postgres endpoint.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the API tokens applications send events with.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage organisations' policies: what is kept of user-generated content.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Export one organisation's events to a JSON Lines or Parquet file, a
    /// page at a time in seq order, with a progress bar.
    Export(ExportArgs),
    /// Import audit logs of other products (or auditlake NDJSON) into a data
    /// directory (server stopped). Reports per file what was imported and
    /// what was rejected and why; exits with 2 when anything was rejected.
    Import(ImportArgs),
    /// Create a key file (owner-only, never overwritten).
    #[command(group = clap::ArgGroup::new("key").required(true).multiple(true))]
    Keygen {
        /// The UGC key organisations' hashing keys derive from; give it to
        /// `serve --ugc-key-file`. Keep it outside the data directory.
        #[arg(long, value_name = "PATH", group = "key")]
        ugc_key: Option<PathBuf>,
        /// The Ed25519 key checkpoints are signed with (its public half goes
        /// to PATH.pub); give it to `serve --signing-key`. Keep it outside
        /// the data directory.
        #[arg(long, value_name = "PATH", group = "key")]
        signing_key: Option<PathBuf>,
    },
    /// Check the stored log against its signed checkpoints (server stopped):
    /// prints `ok`, or each thing wrong and where, and exits with 2.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR")]
    data_dir: PathBuf,
    /// Segments location of that data directory, if not inside it.
    #[arg(long, env = "AUDITLAKE_SEGMENTS_URL")]
    segments_url: Option<String>,
    /// The key the checkpoints were signed with.
    #[arg(long, env = "AUDITLAKE_SIGNING_KEY_FILE", value_name = "PATH")]
    signing_key: PathBuf,
    /// Check only segments and checkpoints reaching seqs at or above this.
    #[arg(long, value_name = "SEQ")]
    from: Option<u64>,
    /// Check only segments and checkpoints reaching seqs at or below this.
    #[arg(long, value_name = "SEQ")]
    to: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
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
enum TokenCommand {
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
enum UserCommand {
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

#[derive(Debug, Args)]
struct ImportArgs {
    #[arg(long, value_enum)]
    format: ImportFormat,
    /// The organisation the events belong to (required but for ndjson, whose
    /// events name their own; given there, every event must be of it).
    #[arg(long, required_if_eq_any = [
        ("format", "cloudtrail"), ("format", "k8s"), ("format", "github"),
        ("format", "okta"), ("format", "atlassian"), ("format", "ocsf"),
    ])]
    org: Option<String>,
    /// Files to import: plain or gzip.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    offline: OfflineArgs,
}

/// The data directory a command opens itself, with the server stopped
/// (`import`, `org rewrite`), and the UGC key its policies may need.
#[derive(Debug, Clone, Args)]
struct OfflineArgs {
    /// The UGC key, when an organisation's policy hashes UGC.
    #[arg(long, env = "AUDITLAKE_UGC_KEY_FILE", value_name = "PATH")]
    ugc_key_file: Option<PathBuf>,
    #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR")]
    data_dir: PathBuf,
    /// Segments location of that data directory, if not inside it.
    #[arg(long, env = "AUDITLAKE_SEGMENTS_URL")]
    segments_url: Option<String>,
    /// The key checkpoints of what this command seals are signed with.
    #[arg(long, env = "AUDITLAKE_SIGNING_KEY_FILE", value_name = "PATH")]
    signing_key: Option<PathBuf>,
}

impl OfflineArgs {
    /// The data directory's UGC policies, with the key if one was given.
    fn policies(&self) -> anyhow::Result<Policies> {
        let key = self.ugc_key_file.as_deref().map(UgcKey::load).transpose()?.map(Arc::new);
        Ok(Policies::in_data_dir(&self.data_dir, key))
    }

    /// Stored events of a checkpointed data directory change only with the
    /// signing key, which keeps their digests and records removals.
    fn refuse_unrecorded_changes(&self) -> anyhow::Result<()> {
        if self.signing_key.is_none() && integrity::is_checkpointed(&self.data_dir) {
            anyhow::bail!(
                "{} is checkpointed: give --signing-key, so that changed events keep verifying",
                self.data_dir.display()
            );
        }
        Ok(())
    }

    /// Opens the data directory and rewrites `org`'s stored UGC with
    /// `rewrite`; in a checkpointed directory, each changed row keeps the
    /// digest its checkpoint covers. The storage, and how many segments were
    /// rewritten.
    fn rewrite_ugc<E: std::fmt::Display>(
        &self,
        org: &str,
        rewrite: impl Fn(&RecordBatch) -> Result<RecordBatch, E>,
    ) -> anyhow::Result<(Storage, usize)> {
        self.refuse_unrecorded_changes()?;
        let key =
            self.signing_key.as_deref().map(|path| integrity::SigningKey::load(path, &self.data_dir)).transpose()?;
        let storage = self.open()?;
        let as_storage_error = |e: E| storage::StorageError::Rewrite(e.to_string());
        let rewritten = match &key {
            Some(key) => {
                let keeping = integrity::canonical::keeping_digests(key.digest_key(), &rewrite);
                storage.rewrite_org(org, &|batch| keeping(batch).map_err(as_storage_error))
            }
            None => storage.rewrite_org(org, &|batch| rewrite(batch).map_err(as_storage_error)),
        };
        match rewritten {
            Ok(n) => Ok((storage, n)),
            Err(e) => {
                storage.shutdown();
                Err(e.into())
            }
        }
    }

    /// Opens the storage engine on the data directory (blocking).
    fn open(&self) -> anyhow::Result<Storage> {
        let config = StorageConfig {
            segments_url: self.segments_url.clone(),
            witness: integrity(self.signing_key.as_deref(), &self.data_dir)?
                .map(|i| i as Arc<dyn storage::SealWitness>),
            ..StorageConfig::new(&self.data_dir)
        };
        Storage::open(config).with_context(|| {
            format!("cannot open data directory {} (is a server running on it?)", self.data_dir.display())
        })
    }
}

#[derive(Debug, Args)]
struct ExportArgs {
    #[arg(long)]
    org: String,
    /// Events at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Events before this time (RFC 3339).
    #[arg(long)]
    to: Option<chrono::DateTime<chrono::Utc>>,
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    format: ExportFormat,
    /// A new local file, or s3://bucket/key (AWS_* variables as for serve).
    #[arg(long)]
    out: String,
    /// Seqs read per statement (a server's --max-result-rows bounds it).
    #[arg(long, default_value_t = exporter::EXPORT_PAGE_EVENTS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    page_events: u64,
    #[command(flatten)]
    source: SourceArgs,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// The statement, e.g. "select action, count(*) from audit_events group by action".
    sql: String,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// A saved report (a file of `sql/` without `.sql`, e.g. actor_timeline).
    #[arg(required_unless_present = "file")]
    name: Option<String>,
    /// Run this SQL file instead of a saved report.
    #[arg(long, conflicts_with = "name")]
    file: Option<PathBuf>,
    /// A parameter of the report, NAME=VALUE (repeatable): numbers as they
    /// are, anything else as a quoted literal, e.g. --param actor=acme-u007.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    #[command(flatten)]
    target: TargetArgs,
}

/// Where `query` and `report` run, and how they print.
#[derive(Debug, Args)]
struct TargetArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// How to print the rows.
    #[arg(long, value_enum, default_value_t = client::Format::Table)]
    format: client::Format,
}

/// Where `query`, `report` and `export` read.
#[derive(Debug, Args)]
struct SourceArgs {
    /// Data directory to read in-process (the server must not be running on it).
    #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR", conflicts_with = "server")]
    data_dir: PathBuf,
    /// Segments location of that data directory, if not inside it (see `serve --help`).
    #[arg(long, env = "AUDITLAKE_SEGMENTS_URL", conflicts_with = "server")]
    segments_url: Option<String>,
    /// Ask a running server instead: a libpq connection string or URL,
    /// e.g. postgres://investigator@127.0.0.1:5433/auditlake.
    #[arg(long, env = "AUDITLAKE_SERVER")]
    server: Option<String>,
}

impl SourceArgs {
    fn target(&self) -> client::Target {
        match &self.server {
            Some(connection) => client::Target::Server(connection.clone()),
            None => client::Target::DataDir(StorageConfig {
                segments_url: self.segments_url.clone(),
                ..StorageConfig::new(&self.data_dir)
            }),
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long, default_value = "./auditlake-data", env = "AUDITLAKE_DATA_DIR")]
    data_dir: PathBuf,
    /// Keep sealed segments and the manifest here instead of the data
    /// directory: `s3://bucket/prefix` (credentials, region and endpoint from
    /// the usual AWS_* variables, e.g. AWS_ENDPOINT for MinIO or other
    /// S3-compatible stores) or `file:///path`. The WAL stays in the data directory.
    #[arg(long, env = "AUDITLAKE_SEGMENTS_URL")]
    segments_url: Option<String>,
    /// Address of the Postgres endpoint (database `auditlake`, table `audit_events`).
    #[arg(long, default_value = "127.0.0.1:5433")]
    pg_listen: SocketAddr,
    /// Address of the HTTP ingest API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// Seal the in-memory buffer into a Parquet segment at this many rows.
    #[arg(long, default_value_t = StorageConfig::new("").seal_max_buffered_rows, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000_000))]
    seal_max_buffered_rows: usize,
    /// Seal the buffer when its oldest row is this old (milliseconds).
    #[arg(long, default_value_t = StorageConfig::new("").seal_after_ms, value_parser = clap::value_parser!(u64).range(10..=ONE_DAY_MS))]
    seal_after_ms: u64,
    /// Seal the buffer when its Arrow arrays take this many bytes.
    #[arg(long, default_value_t = StorageConfig::new("").seal_max_buffered_bytes, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=MOST_MEMORY_BYTES))]
    seal_max_buffered_bytes: usize,
    /// Answer 503 to ingest while more bytes than this wait to be sealed.
    #[arg(long, default_value_t = StorageConfig::new("").max_buffered_bytes, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MOST_MEMORY_BYTES))]
    max_buffered_bytes: usize,
    /// Largest accepted `POST /v1/events` body (bytes); larger gets 413.
    #[arg(long, default_value_t = ingest::DEFAULT_MAX_BODY_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=1 << 30))]
    max_body_bytes: usize,
    /// Most bytes of event bodies read and parsed at once; past it, requests
    /// are answered 503 before their body is read.
    #[arg(long, default_value_t = ingest::DEFAULT_MAX_INFLIGHT_BODY_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=MOST_MEMORY_BYTES))]
    max_inflight_body_bytes: usize,
    /// Merge adjacent small segments into segments of at most this many rows.
    #[arg(long, default_value_t = StorageConfig::new("").compaction.target_rows, value_parser = clap::value_parser!(u64).range(1..=10_000_000_000))]
    compaction_target_rows: u64,
    /// Merge only runs of at least this many segments.
    #[arg(long, default_value_t = StorageConfig::new("").compaction.min_inputs, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=10_000))]
    compaction_min_segments: usize,
    /// An event whose organisation sent its id within this many hours (by
    /// receive time) is acknowledged again instead of stored twice. Costs
    /// about 50 bytes of memory per event received in the window.
    #[arg(long, default_value_t = storage::idempotency::DEFAULT_IDEMPOTENCY_WINDOW_HOURS, value_parser = clap::value_parser!(u64).range(0..=ONE_YEAR_HOURS))]
    idempotency_window_hours: u64,
    /// Most event ids remembered for idempotency; past it the oldest are
    /// forgotten before the window ends (logged), bounding the memory.
    #[arg(long, default_value_t = storage::idempotency::DEFAULT_MAX_IDEMPOTENCY_KEYS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000_000))]
    max_idempotency_keys: usize,
    /// How often organisations' retention is applied (milliseconds).
    #[arg(long, default_value_t = StorageConfig::new("").retention_interval_ms, value_parser = clap::value_parser!(u64).range(100..=ONE_WEEK_MS))]
    retention_interval_ms: u64,
    /// Most concurrent HTTP connections; more are answered 503 at once.
    #[arg(long, default_value_t = ingest::DEFAULT_MAX_HTTP_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    max_http_connections: usize,
    /// How much lower than ingest's the query threads' CPU priority is
    /// (a nice value, 0 to 19; 0: the same).
    #[arg(long, default_value_t = DEFAULT_QUERY_NICE, value_parser = clap::value_parser!(i32).range(0..=19))]
    query_nice: i32,
    /// Most concurrent Postgres connections.
    #[arg(long, default_value_t = server::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    max_pg_connections: usize,
    /// Working memory one query may use (sorts, aggregations) before it
    /// spills or fails with a clear error.
    #[arg(long, default_value_t = query::DEFAULT_QUERY_MEMORY_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=MOST_MEMORY_BYTES))]
    query_memory_bytes: usize,
    /// Working memory all running queries together may use.
    #[arg(long, default_value_t = query::DEFAULT_TOTAL_QUERY_MEMORY_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=MOST_MEMORY_BYTES))]
    total_query_memory_bytes: usize,
    /// Longest one statement may run (milliseconds) before it is canceled
    /// with an error.
    #[arg(long, default_value_t = query::DEFAULT_STATEMENT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=ONE_DAY_MS))]
    statement_timeout_ms: u64,
    /// Most rows one statement may return; more is an error (export larger
    /// sets in pieces).
    #[arg(long, default_value_t = query::DEFAULT_MAX_RESULT_ROWS, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    max_result_rows: u64,
    /// Memory for segment bytes queries read again and again (footers, page
    /// indexes, bloom filters, the pages lookups land on), shared by all
    /// connections.
    #[arg(long, default_value_t = query::DEFAULT_SEGMENT_CACHE_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MOST_MEMORY_BYTES))]
    segment_cache_bytes: usize,
    /// The UGC key (`auditlake keygen --ugc-key`): needed when an
    /// organisation's policy hashes UGC, and by `ugc_hash()` in SQL.
    #[arg(long, env = "AUDITLAKE_UGC_KEY_FILE", value_name = "PATH")]
    ugc_key_file: Option<PathBuf>,
    /// The Ed25519 key (`auditlake keygen --signing-key`) every sealed range
    /// of events is checkpointed with; keep it outside the data directory.
    /// Without it nothing is checkpointed and `verify` has nothing to check.
    #[arg(long, env = "AUDITLAKE_SIGNING_KEY_FILE", value_name = "PATH")]
    signing_key: Option<PathBuf>,
    /// Let anyone connect to the Postgres endpoint without a password, as an
    /// admin, and send events without a token. Only for trying auditlake
    /// out, and only on loopback `--pg-listen` and `--http-listen`; without it
    /// the server needs users (`auditlake user add`) and tokens (`auditlake
    /// token create`).
    #[arg(long)]
    insecure_trust_loopback: bool,
    /// PEM certificate chain for TLS on the Postgres endpoint.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Refuse Postgres clients that do not use TLS.
    #[arg(long)]
    require_tls: bool,
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Seed of the generator: the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How many events to generate.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Days of activity, ending now.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Who is active: `demo` (4 organisations, 127 users, 400 pages) or
    /// `realistic` (50 organisations, 20,018 users, 500,000 content ids), the
    /// scale investigation benchmarks use.
    #[arg(long, value_enum, default_value_t = DemoShape::Demo)]
    shape: DemoShape,
    /// Generate only; do not start the server.
    #[arg(long)]
    no_serve: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DemoShape {
    Demo,
    Realistic,
}

impl ServeArgs {
    fn auth(&self) -> server::AuthMethod {
        if self.insecure_trust_loopback {
            server::AuthMethod::TrustLoopback
        } else {
            server::AuthMethod::Scram(Users::in_data_dir(&self.data_dir))
        }
    }

    /// The organisations' policies, with the UGC key if one was given;
    /// refused when a policy hashes UGC and there is no key.
    fn policies(&self) -> anyhow::Result<Policies> {
        let key = self.ugc_key_file.as_deref().map(UgcKey::load).transpose()?.map(Arc::new);
        let policies = Policies::in_data_dir(&self.data_dir, key);
        policies.check_key()?;
        Ok(policies)
    }

    /// TLS for the Postgres endpoint, loaded (and checked) before anything starts.
    fn tls(&self) -> Result<Option<pgwire::tokio::TlsAcceptor>, server::ServerError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(server::tls_acceptor(cert, key)?)),
            _ if self.require_tls => Err(server::ServerError::RequireTlsWithoutCert),
            _ => Ok(None),
        }
    }

    fn storage_config(&self, integrity: Option<Arc<integrity::Integrity>>) -> anyhow::Result<StorageConfig> {
        Ok(StorageConfig {
            data_dir: self.data_dir.clone(),
            segments_url: self.segments_url.clone(),
            seal_max_buffered_rows: self.seal_max_buffered_rows,
            seal_after_ms: self.seal_after_ms,
            seal_max_buffered_bytes: self.seal_max_buffered_bytes,
            max_buffered_bytes: self.max_buffered_bytes,
            compaction: CompactionPolicy {
                target_rows: self.compaction_target_rows,
                min_inputs: self.compaction_min_segments,
            },
            idempotency_window_ms: self.idempotency_window_hours.saturating_mul(3_600_000),
            max_idempotency_keys: self.max_idempotency_keys,
            witness: integrity.map(|i| i as Arc<dyn storage::SealWitness>),
            retention: self.retention()?,
            retention_interval_ms: self.retention_interval_ms,
            max_record_bytes: storage::wal::MAX_RECORD_BYTES,
        })
    }

    /// Where the server learns what retention lets go; `None` when removals
    /// could not be recorded (a checkpointed directory without the key).
    fn retention(&self) -> anyhow::Result<Option<Arc<dyn storage::RetentionSource>>> {
        if self.signing_key.is_none() && integrity::is_checkpointed(&self.data_dir) {
            warn!("retention is not applied: this data directory is checkpointed and no --signing-key was given");
            return Ok(None);
        }
        Ok(Some(Arc::new(self.policies()?)))
    }
}

// Bounds of the server's settings: past them a number is a typo (an extra
// digit, a unit mistaken), refused with the setting's name and range.
/// Most bytes any memory setting may name: 1 TiB.
const MOST_MEMORY_BYTES: u64 = 1 << 40;
const ONE_DAY_MS: u64 = 86_400_000;
const ONE_WEEK_MS: u64 = 7 * ONE_DAY_MS;
const ONE_YEAR_HOURS: u64 = 8_760;

/// Default of `serve --query-nice`.
pub const DEFAULT_QUERY_NICE: i32 = 10;

/// Stack of each of the runtime's threads (see `server::complexity`).
pub const THREAD_STACK_BYTES: usize = 64 * 1024 * 1024;

/// The runtime statements are planned and run on (Postgres sessions and
/// the HTTP API's reads), one thread per core.
///
/// Its threads run at `nice` (0 to 19) above the process's own: when both
/// want the CPU, group commit, sealing and `/healthz` come first, and
/// queries take what is left, so heavy statements slow each other down
/// rather than the log's intake.
fn query_runtime(nice: i32) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("auditlake-query")
        .thread_stack_size(THREAD_STACK_BYTES)
        .on_thread_start(move || lower_this_threads_priority(nice))
        .enable_all()
        .build()
}

/// Raises the calling thread's nice value by `nice` (on Linux, priority is
/// per thread). Failing is harmless: the thread keeps the process's.
#[allow(unsafe_code)]
fn lower_this_threads_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id.
        let changed = unsafe {
            let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let current = libc::getpriority(libc::PRIO_PROCESS, thread);
            libc::setpriority(libc::PRIO_PROCESS, thread, (current + nice).min(19))
        };
        if changed != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "query thread keeps its priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Parses the command line and runs it.
pub fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Planning recurses over a statement's expressions (DataFusion, and the
    // SQL rewriting of datafusion-postgres, in frames of kilobytes each): a
    // thread's stack, reserved and not touched until used, bounds how
    // complex a statement may be before the process would abort.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().thread_stack_size(THREAD_STACK_BYTES).enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Demo(args) => run_demo(args).await,
            Command::Query(args) => query(args).await,
            Command::Report(args) => report(args).await,
            Command::Export(args) => export(args).await,
            Command::Import(args) => import(args).await,
            Command::User(command) => user(command),
            Command::Token(command) => token(command),
            // A rewrite reads segments on the store's own runtime: off this one.
            Command::Org(command) => tokio::task::spawn_blocking(move || org(command)).await?,
            Command::Keygen { ugc_key, signing_key } => {
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
            Command::Verify(args) => tokio::task::spawn_blocking(move || verify(args)).await?,
        }
    })
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    run_and_print(&args.target, &args.sql).await
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let policies = args.offline.policies()?;
    policies.check_key()?;
    let offline = args.offline.clone();
    let storage = tokio::task::spawn_blocking(move || offline.open()).await??;
    let total: u64 = args.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("valid template"),
    );
    let started = std::time::Instant::now();
    let imported = import::import(&storage, &policies, args.format, args.org.as_deref(), &args.files, |read| {
        bar.set_position(read)
    })
    .await;
    bar.finish_and_clear();
    let closing = storage.clone();
    tokio::task::spawn_blocking(move || closing.shutdown()).await?;
    let reports = imported?;
    let seconds = started.elapsed().as_secs_f64();
    let mut rejected = 0;
    for report in &reports {
        say(&format!(
            "{}: {} imported ({} already stored), {} rejected",
            report.path.display(),
            report.imported,
            report.duplicates,
            report.rejected
        ));
        for rejection in &report.rejections {
            eprintln!("  {} record {}: {}", report.path.display(), rejection.record, rejection.reason);
        }
        if report.rejected > report.rejections.len() {
            eprintln!("  … and {} more", report.rejected - report.rejections.len());
        }
        rejected += report.rejected;
    }
    let events: usize = reports.iter().map(|r| r.imported).sum();
    say(&format!(
        "{events} events imported from {} file(s) in {seconds:.2} s ({:.0} events/s); {rejected} rejected",
        reports.len(),
        events as f64 / seconds.max(1e-9)
    ));
    if rejected > 0 {
        std::process::exit(2);
    }
    Ok(())
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let request = ExportRequest {
        org: args.org,
        from: args.from,
        to: args.to,
        format: args.format,
        out: args.out,
        page_events: args.page_events as usize,
    };
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} {eta}").expect("valid template"),
    );
    let started = std::time::Instant::now();
    let written = exporter::export(&args.source.target(), &request, |total, written| {
        bar.set_length(total);
        bar.set_position(written);
    })
    .await?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    say(&format!(
        "{written} events of {} written to {} in {seconds:.1} s ({:.0} events/s)",
        request.org,
        request.out,
        written as f64 / seconds.max(1e-9)
    ));
    Ok(())
}

async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let script = match (&args.file, &args.name) {
        (Some(path), _) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        (None, Some(name)) => reports::saved(name)?.to_owned(),
        (None, None) => unreachable!("clap requires a name or --file"),
    };
    let sql = reports::render(&script, &reports::parameters(&args.params)?)?;
    run_and_print(&args.target, &sql).await
}

async fn run_and_print(target: &TargetArgs, sql: &str) -> anyhow::Result<()> {
    let batches = client::run(&target.source.target(), sql).await?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&client::render(&batches, target.format)?)?;
    stdout.flush()?;
    Ok(())
}

fn user(command: UserCommand) -> anyhow::Result<()> {
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

fn token(command: TokenCommand) -> anyhow::Result<()> {
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
    let now = chrono::Utc::now().timestamp_micros();
    let operator = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let event = crate::model::Event {
        time_us: now,
        received_at_us: now,
        id: uuid::Uuid::now_v7().to_string(),
        org_id: org.to_string(),
        actor_id: format!("os:{operator}"),
        actor_type: Some("operator".into()),
        action: action.to_string(),
        category: Some("admin".into()),
        outcome: Some("success".into()),
        product: Some("auditlake".into()),
        attributes: Some(attributes.to_string()),
        ..Default::default()
    };
    if let Err(e) = tokio::runtime::Handle::current().block_on(storage.append(vec![event])) {
        eprintln!("warning: {action} could not be recorded as an event: {e}");
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let key = integrity::SigningKey::load(&args.signing_key, &args.data_dir)?;
    // The server holds the data directory's lock; a merge it runs would
    // retire files under the check.
    let lock = storage::lock_data_dir(&args.data_dir)
        .with_context(|| format!("cannot verify {} (is a server running on it?)", args.data_dir.display()))?;
    let store = Arc::new(storage::objects::SegmentStore::open(
        &args.data_dir,
        args.segments_url.as_deref(),
        Default::default(),
    )?);
    let started = std::time::Instant::now();
    let report = integrity::verify::verify(&args.data_dir, &store, &key, (args.from, args.to))?;
    drop(lock);
    for finding in &report.findings {
        say(&finding.to_string());
    }
    let not_covered = report.sealed_through.saturating_sub(report.checkpointed_through);
    if not_covered > 0 {
        eprintln!(
            "note: seqs {}..={} are sealed but not checkpointed yet (a server with --signing-key checkpoints them when it starts)",
            report.checkpointed_through + 1,
            report.sealed_through
        );
    }
    eprintln!(
        "{} checkpoint(s), {} event(s) verified in {:.2} s",
        report.checkpoints,
        report.events_verified,
        started.elapsed().as_secs_f64()
    );
    if !report.is_ok() {
        say(&format!("TAMPERED: {} finding(s)", report.findings.len()));
        std::process::exit(2);
    }
    say("ok");
    Ok(())
}

fn org(command: OrgCommand) -> anyhow::Result<()> {
    match command {
        OrgCommand::Policy { org, ugc, attribute_keys, retention_days, legal_hold, data_dir } => {
            let policies = Policies::in_data_dir(&data_dir, None);
            let policy = if ugc.is_some() || retention_days.is_some() || legal_hold.is_some() {
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
                    Ok(policy)
                })?
            } else {
                policies.of(&org)?
            };
            let keys = policy.ugc_attribute_keys.join(",");
            let retention = policy.retention_days.map_or_else(|| "forever".to_string(), |d| format!("{d}d"));
            let hold = if policy.legal_hold { "on" } else { "off" };
            say(&format!("{org}\tugc={}\tattribute_keys={keys}\tretention={retention}\tlegal_hold={hold}", policy.ugc));
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Before the data directory opens: a server nobody may log in to (or
    // everybody, off loopback) must not start at all.
    server::check_auth(&args.auth(), args.pg_listen)?;
    if args.insecure_trust_loopback && !args.http_listen.ip().is_loopback() {
        anyhow::bail!(
            "--insecure-trust-loopback only works on a loopback address; --http-listen is {}",
            args.http_listen
        );
    }
    args.tls()?;
    if args.max_inflight_body_bytes < args.max_body_bytes {
        anyhow::bail!(
            "--max-inflight-body-bytes ({}) is less than --max-body-bytes ({}): the largest body could never be read",
            args.max_inflight_body_bytes,
            args.max_body_bytes
        );
    }
    if args.total_query_memory_bytes < args.query_memory_bytes {
        anyhow::bail!(
            "--total-query-memory-bytes ({}) is less than --query-memory-bytes ({}): no query could use its share",
            args.total_query_memory_bytes,
            args.query_memory_bytes
        );
    }
    let (storage, integrity) = open_storage(&args).await?;
    serve_storage(args, storage, integrity).await
}

/// The checkpoint signer (and prover) for a data directory, if a signing
/// key was given.
fn integrity(key_file: Option<&Path>, data_dir: &Path) -> anyhow::Result<Option<Arc<integrity::Integrity>>> {
    let Some(key_file) = key_file else { return Ok(None) };
    let key = Arc::new(integrity::SigningKey::load(key_file, data_dir)?);
    Ok(Some(Arc::new(integrity::Integrity::open(key, data_dir)?)))
}

/// The storage a server runs on, and its integrity layer (the seal witness
/// and, for the HTTP API, the prover) if it checkpoints.
async fn open_storage(args: &ServeArgs) -> anyhow::Result<(Storage, Option<Arc<integrity::Integrity>>)> {
    let integrity = integrity(args.signing_key.as_deref(), &args.data_dir)?;
    let config = args.storage_config(integrity.clone())?;
    if config.witness.is_none() {
        warn!("no --signing-key: sealed events are not checkpointed, so `auditlake verify` cannot vouch for them");
    }
    let dir = config.data_dir.display().to_string();
    let storage = tokio::task::spawn_blocking(move || Storage::open(config))
        .await?
        .with_context(|| format!("cannot open data directory {dir}"))?;
    Ok((storage, integrity))
}

async fn serve_storage(
    args: ServeArgs,
    storage: Storage,
    integrity: Option<Arc<integrity::Integrity>>,
) -> anyhow::Result<()> {
    let policies = Arc::new(args.policies()?);
    let access_log = server::AccessLog::start(storage.clone(), Arc::clone(&policies));
    let endpoint = server::Endpoint {
        auth: args.auth(),
        tls: args.tls()?,
        require_tls: args.require_tls,
        max_connections: args.max_pg_connections,
        limits: query::QueryLimits {
            memory: query::QueryMemory::new(args.query_memory_bytes, args.total_query_memory_bytes),
            statement_timeout: std::time::Duration::from_millis(args.statement_timeout_ms),
            max_result_rows: args.max_result_rows,
            segment_cache: query::SegmentCache::new(args.segment_cache_bytes),
            ugc_key: policies.key().cloned(),
        },
        access_log: access_log.clone(),
    };
    // Statements are planned and run on a runtime of their own: a statement
    // that keeps a core busy (a big join, a long constant to fold) then
    // competes with ingest and /healthz for the CPU as any thread does,
    // instead of holding the threads their requests wait for.
    let queries = query_runtime(args.query_nice)?;
    let api = ingest::Api {
        queries: queries.handle().clone(),
        storage: storage.clone(),
        max_body_bytes: args.max_body_bytes,
        bodies: ingest::BodyBudget::new(args.max_inflight_body_bytes),
        max_connections: args.max_http_connections,
        auth: ingest::IngestAuth {
            tokens: Arc::new(Tokens::in_data_dir(&args.data_dir)),
            trust_without_token: args.insecure_trust_loopback,
        },
        limits: endpoint.limits.clone(),
        policies,
        integrity,
    };
    let pg = server::bind(args.pg_listen).await?;
    let http = ingest::bind(args.http_listen).await?;
    let pg_addr = pg.local_addr()?;
    let http_addr = http.local_addr()?;
    // One machine-readable line: tests and scripts wait for it, and it carries
    // the real ports when port 0 was asked for.
    say(&format!("auditlake ready: pg={pg_addr} http={http_addr}"));
    let pg = pg.into_std()?;
    let serving_pg = storage.clone();
    let pg_server = queries.spawn(async move {
        match tokio::net::TcpListener::from_std(pg) {
            Ok(pg) => server::serve(pg, serving_pg, endpoint).await,
            Err(e) => warn!(error = %e, "cannot listen for Postgres clients on the query runtime"),
        }
    });
    tokio::select! {
        _ = pg_server => {}
        result = ingest::serve(http, api) => result?,
        signal = stop_requested() => {
            info!(signal = signal?, "shutting down");
        }
    }
    // Statements still running end with their connections.
    queries.shutdown_background();
    access_log.flush().await;
    tokio::task::spawn_blocking(move || storage.shutdown()).await?;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM (what systemd, Docker and Kubernetes send
/// to stop a service): either stops the server the same orderly way, its
/// records of access flushed and storage shut down. Returns which came.
async fn stop_requested() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.map(|()| "SIGINT"),
            _ = terminate.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let (storage, integrity) = open_storage(&args.serve).await?;
    if storage.stats().last_seq > 0 {
        say(&format!(
            "{} already holds {} events; serving them without generating more.",
            args.serve.data_dir.display(),
            storage.stats().last_seq
        ));
    } else {
        let end_us = chrono::Utc::now().timestamp_micros();
        let (seed, count, days) = (args.seed, args.events, args.days);
        let shape = match args.shape {
            DemoShape::Demo => demo::Shape::DEMO,
            DemoShape::Realistic => demo::Shape::REALISTIC,
        };
        // Generation and segment writing overlap: one thread makes Arrow
        // batches while the bulk loader sorts, compresses and publishes the
        // previous one.
        let (chunks, chunk_rx) = std::sync::mpsc::sync_channel(1);
        set_allocator_purge_delay_ms(BULK_LOAD_PURGE_DELAY_MS);
        let generator = std::thread::Builder::new().name("auditlake-demo".into()).spawn(move || {
            let mut generator = demo::Generator::new(seed, count, end_us, days, shape);
            while let Some(segment) = generator.next_segment(BULK_CHUNK_EVENTS) {
                if chunks.send(segment).is_err() {
                    return;
                }
            }
        })?;
        let started = std::time::Instant::now();
        let loader = storage.clone();
        // A thread outside the runtime, so that the segment store runs its
        // writes on its own runtime directly rather than via a helper thread
        // per call.
        let loading = std::thread::Builder::new()
            .name("auditlake-bulk".into())
            .spawn(move || loader.bulk_load(chunk_rx.into_iter()))?;
        tokio::task::spawn_blocking(move || loading.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the bulk load panicked"))??;
        generator.join().map_err(|_| anyhow::anyhow!("the demo generator panicked"))?;
        set_allocator_purge_delay_ms(0);
        let elapsed = started.elapsed().as_secs_f64();
        say(&format!("Loaded {count} events in {elapsed:.1} s ({:.0} events/s).", count as f64 / elapsed));
        let stats = storage.stats();
        say(&format!(
            "Generated {} demo events ({:?} shape: orgs acme, globex, initech, umbrella{}; seed {}); {} segment(s), \
             {} bytes.",
            stats.last_seq,
            args.shape,
            if shape.extra_orgs > 0 { " and more" } else { "" },
            args.seed,
            stats.segments,
            stats.segment_bytes
        ));
    }
    if args.no_serve {
        tokio::task::spawn_blocking(move || storage.shutdown()).await?;
        return Ok(());
    }
    let pg = args.serve.pg_listen;
    let connection = if args.serve.insecure_trust_loopback {
        format!("postgresql://{DEMO_USER}@{pg}/auditlake")
    } else {
        // A fresh password at every start: only its verifier is stored, so
        // this is the one moment it can be shown.
        let password: String =
            rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric).take(20).map(char::from).collect();
        Users::in_data_dir(&args.serve.data_dir).upsert(DEMO_USER, Role::Admin, &password, None)?;
        format!("postgresql://{DEMO_USER}:{password}@{pg}/auditlake")
    };
    server::check_auth(&args.serve.auth(), pg)?;
    say(&format!(
        "\nConnect with (user {DEMO_USER}, an admin: it sees every demo organisation):\n  psql \"{connection}\"\n\n\
         Then try (what did the phished account do, and from where?):\n  \
         select time, action, source_ip, content_title from audit_events\n  \
         where actor_id = '{}' and time > now() - interval '3 days' order by time;\n",
        demo::INCIDENT_ACTOR
    ));
    serve_storage(args.serve, storage, integrity).await
}

/// `mi_option_purge_delay`: its value in mimalloc 3's `mi_option_t` (between
/// `mi_option_eager_commit_delay` = 14 and `mi_option_use_numa_nodes` = 16,
/// which libmimalloc-sys does name).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc (the binary's allocator) keeps freed memory before
/// returning it to the OS. mimalloc's own `MIMALLOC_PURGE_DELAY` wins, for
/// experiments; without mimalloc as the allocator this changes nothing.
#[allow(unsafe_code)]
pub fn set_allocator_purge_delay_ms(ms: i64) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads it when it purges.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as std::ffi::c_long) };
    }
}

/// While the demo bulk-loads: batches of the same sizes are freed and made
/// again all the time, and memory the OS must zero again at every reuse cost
/// about a tenth of the load's CPU time.
const BULK_LOAD_PURGE_DELAY_MS: i64 = 250;

/// The Postgres user `auditlake demo` creates and prints a password for.
const DEMO_USER: &str = "demo";

/// Events per segment written by the demo's bulk load: at the default
/// compaction policy, large enough not to be merged again.
const BULK_CHUNK_EVENTS: usize = 250_000;

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
