//! Commands that read or load events: `query`, `report`, `export`,
//! `import` and `verify`. Reads go through a data directory with the server
//! stopped or through a running server as a Postgres user (whose tenant
//! scope applies); `import` and `verify` need the server stopped.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use datafusion::arrow::array::RecordBatch;

use super::{open_integrity, say};
use crate::exporter::{self, ExportFormat, ExportRequest};
use crate::import::{self, ImportFormat};
use crate::integrity;
use crate::policy::{Policies, UgcKey};
use crate::storage::{self, Storage, StorageConfig};
use crate::{client, reports};

#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
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

#[derive(Debug, Args)]
pub(super) struct ImportArgs {
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
pub(super) struct OfflineArgs {
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
    pub(super) fn policies(&self) -> anyhow::Result<Policies> {
        let key = self.ugc_key_file.as_deref().map(UgcKey::load).transpose()?.map(Arc::new);
        Ok(Policies::in_data_dir(&self.data_dir, key))
    }

    /// Stored events of a checkpointed data directory change only with the
    /// signing key, which keeps their digests and records removals.
    pub(super) fn refuse_unrecorded_changes(&self) -> anyhow::Result<()> {
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
    pub(super) fn rewrite_ugc<E: Into<storage::BoxedError>>(
        &self,
        org: &str,
        rewrite: impl Fn(&RecordBatch) -> Result<RecordBatch, E>,
    ) -> anyhow::Result<(Storage, usize)> {
        self.refuse_unrecorded_changes()?;
        let key =
            self.signing_key.as_deref().map(|path| integrity::SigningKey::load(path, &self.data_dir)).transpose()?;
        let storage = self.open()?;
        let as_storage_error = |e: E| storage::StorageError::Rewrite(e.into());
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
    pub(super) fn open(&self) -> anyhow::Result<Storage> {
        let config = StorageConfig {
            segments_url: self.segments_url.clone(),
            witness: open_integrity(self.signing_key.as_deref(), &self.data_dir)?
                .map(|i| i as Arc<dyn storage::SealWitness>),
            ..StorageConfig::new(&self.data_dir)
        };
        Storage::open(config).with_context(|| {
            format!("cannot open data directory {} (is a server running on it?)", self.data_dir.display())
        })
    }
}

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
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
pub(super) struct QueryArgs {
    /// The statement, e.g. "select action, count(*) from audit_events group by action".
    sql: String,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Args)]
pub(super) struct ReportArgs {
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

pub(super) async fn query(args: QueryArgs) -> anyhow::Result<()> {
    run_and_print(&args.target, &args.sql).await
}

pub(super) async fn import(args: ImportArgs) -> anyhow::Result<()> {
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

pub(super) async fn export(args: ExportArgs) -> anyhow::Result<()> {
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

pub(super) async fn report(args: ReportArgs) -> anyhow::Result<()> {
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

pub(super) fn verify(args: VerifyArgs) -> anyhow::Result<()> {
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
