//! The command line: `auditlake serve`, `demo`, `query`, `report`,
//! `export`, `import`, `verify`, `user`, `token`, `org` and `keygen`.
//!
//! `serve.rs` runs the server (and the demo), `admin.rs` the operator's
//! commands, `data.rs` the commands that read or load events. This is the
//! only module that writes to stdout (what the user asked for: rows,
//! connection strings, a ready line scripts can wait for). Logs go to stderr
//! through `tracing`. It wires the layers together and owns no logic of
//! its own.

mod admin;
mod data;
mod serve;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::integrity;

#[derive(Debug, Parser)]
#[command(name = "auditlake", version, about = "A self-hosted audit log you query with SQL")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: HTTP ingest and the Postgres endpoint.
    Serve(serve::ServeArgs),
    /// Run a worker of a coordinator started with `serve --workers`: it
    /// reads the coordinator's segments for the scans it is handed.
    Worker(serve::WorkerArgs),
    /// Fill a fresh data directory with realistic demo activity, then serve it.
    Demo(serve::DemoArgs),
    /// Run one read-only SQL statement over a data directory (no server
    /// running on it) or against a running server, and print the rows.
    Query(data::QueryArgs),
    /// Run a saved compliance report from `sql/` (or any SQL file written for
    /// psql variables) the same way.
    Report(data::ReportArgs),
    /// Manage who may connect to the Postgres endpoint.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Manage the API tokens applications send events with.
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Manage organisations' policies: what is kept of user-generated content.
    #[command(subcommand)]
    Org(admin::OrgCommand),
    /// Export one organisation's events to a JSON Lines or Parquet file, a
    /// page at a time in seq order, with a progress bar.
    Export(data::ExportArgs),
    /// Import audit logs of other products (or auditlake NDJSON) into a data
    /// directory (server stopped). Reports per file what was imported and
    /// what was rejected and why; exits with 2 when anything was rejected.
    Import(data::ImportArgs),
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
    Verify(data::VerifyArgs),
}

/// What the binary's allocator lets the command line tune: `main.rs`
/// chooses the allocator, the library does not.
#[derive(Debug, Clone, Copy)]
pub struct Allocator {
    /// Sets how long freed memory is kept before it goes back to the OS.
    pub set_purge_delay_ms: fn(i64),
}

// Bounds of the server's settings: past them a number is a typo (an extra
// digit, a unit mistaken), refused with the setting's name and range.
/// Most bytes any memory setting may name: 1 TiB.
const MOST_MEMORY_BYTES: u64 = 1 << 40;
const ONE_DAY_MS: u64 = 86_400_000;
const ONE_WEEK_MS: u64 = 7 * ONE_DAY_MS;
const ONE_YEAR_HOURS: u64 = 8_760;

/// Stack of each of the runtime's threads (see `server::complexity`).
pub const THREAD_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Parses the command line and runs it.
pub fn main(allocator: Allocator) -> anyhow::Result<()> {
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
            Command::Serve(args) => serve::serve(args).await,
            Command::Demo(args) => serve::run_demo(args, allocator).await,
            Command::Worker(args) => serve::worker(args).await,
            Command::Query(args) => data::query(args).await,
            Command::Report(args) => data::report(args).await,
            Command::Export(args) => data::export(args).await,
            Command::Import(args) => data::import(args).await,
            Command::User(command) => admin::user(command),
            Command::Token(command) => admin::token(command),
            // A rewrite reads segments on the store's own runtime: off this one.
            Command::Org(command) => tokio::task::spawn_blocking(move || admin::org(command)).await?,
            Command::Keygen { ugc_key, signing_key } => admin::keygen(ugc_key, signing_key),
            Command::Verify(args) => tokio::task::spawn_blocking(move || data::verify(args)).await?,
        }
    })
}

/// The checkpoint signer (and prover) for a data directory, if a signing
/// key was given.
fn open_integrity(key_file: Option<&Path>, data_dir: &Path) -> anyhow::Result<Option<Arc<integrity::Integrity>>> {
    let Some(key_file) = key_file else { return Ok(None) };
    let key = Arc::new(integrity::SigningKey::load(key_file, data_dir)?);
    Ok(Some(Arc::new(integrity::Integrity::open(key, data_dir)?)))
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
