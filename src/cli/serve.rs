//! `auditlake serve` and `auditlake demo`: the server's settings, checked
//! before anything opens, and the wiring of storage, the Postgres endpoint
//! and the HTTP API onto their runtimes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tracing::{info, warn};

use super::{
    Allocator, MOST_MEMORY_BYTES, ONE_DAY_MS, ONE_WEEK_MS, ONE_YEAR_HOURS, THREAD_STACK_BYTES, open_integrity, say,
};
use crate::cluster::{Cluster, ClusterKey};
use crate::demo;
use crate::http;
use crate::http::tokens::Tokens;
use crate::policy::{Policies, UgcKey};
use crate::server::users::{Role, Users};
use crate::storage::compaction::CompactionPolicy;
use crate::storage::{self, Storage, StorageConfig};
use crate::{integrity, query, server};

#[derive(Debug, Args)]
pub(super) struct WorkerArgs {
    /// Address the worker listens on: loopback or a private network only.
    #[arg(long, default_value = "127.0.0.1:5450")]
    listen: SocketAddr,
    /// Where the coordinator keeps its segments: the same `s3://bucket/prefix`
    /// (read with this process's own AWS_* settings) or `file:///path`.
    #[arg(long, env = "AUDITLAKE_SEGMENTS_URL")]
    segments_url: String,
    /// The secret shared with the coordinator (`serve --cluster-key-file`).
    #[arg(long, env = "AUDITLAKE_CLUSTER_KEY_FILE", value_name = "PATH")]
    cluster_key_file: PathBuf,
    /// Working memory one stage of a query may use on this worker.
    #[arg(long, default_value_t = query::DEFAULT_QUERY_MEMORY_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=MOST_MEMORY_BYTES))]
    query_memory_bytes: usize,
    /// Working memory all stages running on this worker may use together.
    #[arg(long, default_value_t = query::DEFAULT_TOTAL_QUERY_MEMORY_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=MOST_MEMORY_BYTES))]
    total_query_memory_bytes: usize,
    /// Memory for segment footers, indexes and pages read again and again.
    #[arg(long, default_value_t = query::DEFAULT_SEGMENT_CACHE_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MOST_MEMORY_BYTES))]
    segment_cache_bytes: usize,
}

/// `auditlake worker`: runs the scan fragments and stages its coordinator sends.
pub(super) async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    if args.total_query_memory_bytes < args.query_memory_bytes {
        anyhow::bail!(
            "--total-query-memory-bytes ({}) is less than --query-memory-bytes ({})",
            args.total_query_memory_bytes,
            args.query_memory_bytes
        );
    }
    let key = ClusterKey::read(&args.cluster_key_file)?;
    let url = args.segments_url.clone();
    let store = tokio::task::spawn_blocking(move || storage::objects::SegmentStore::open_elsewhere(&url))
        .await?
        .with_context(|| format!("cannot open the segment store {}", args.segments_url))?;
    let reader =
        query::SegmentReader { store: Arc::new(store), cache: query::SegmentCache::new(args.segment_cache_bytes) };
    let memory = query::QueryMemory::new(args.query_memory_bytes, args.total_query_memory_bytes);
    say(&format!("auditlake worker listening on {} over {}", args.listen, args.segments_url));
    crate::cluster::worker::serve(args.listen, reader, key, memory).await?;
    Ok(())
}

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
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
    #[arg(long, default_value_t = http::DEFAULT_MAX_BODY_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=1 << 30))]
    max_body_bytes: usize,
    /// Most bytes of event bodies read and parsed at once; past it, requests
    /// are answered 503 before their body is read.
    #[arg(long, default_value_t = http::DEFAULT_MAX_INFLIGHT_BODY_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=MOST_MEMORY_BYTES))]
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
    #[arg(long, default_value_t = http::DEFAULT_MAX_HTTP_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
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
    /// Workers (`auditlake worker`) this node hands large scans to, as
    /// `host:port,host:port`; it then coordinates (see `SET auditlake.engine`).
    /// Needs --cluster-key-file, and segments in a store every worker reads.
    #[arg(long, value_name = "HOST:PORT,...", requires = "cluster_key_file")]
    workers: Option<String>,
    /// The secret coordinator and workers share (at least 32 characters,
    /// e.g. `openssl rand -hex 32 > cluster.key`); the same file on every node.
    #[arg(long, env = "AUDITLAKE_CLUSTER_KEY_FILE", value_name = "PATH")]
    cluster_key_file: Option<PathBuf>,
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
pub(super) struct DemoArgs {
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

/// Default of `serve --query-nice`.
pub const DEFAULT_QUERY_NICE: i32 = 10;

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

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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

/// The storage a server runs on, and its integrity layer (the seal witness
/// and, for the HTTP API, the prover) if it checkpoints.
async fn open_storage(args: &ServeArgs) -> anyhow::Result<(Storage, Option<Arc<integrity::Integrity>>)> {
    let integrity = open_integrity(args.signing_key.as_deref(), &args.data_dir)?;
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

impl ServeArgs {
    fn cluster(&self) -> anyhow::Result<Option<Cluster>> {
        let (Some(workers), Some(key)) = (&self.workers, &self.cluster_key_file) else {
            return Ok(None);
        };
        Ok(Some(Cluster::new(workers, ClusterKey::read(key)?)?))
    }
}

async fn serve_storage(
    args: ServeArgs,
    storage: Storage,
    integrity: Option<Arc<integrity::Integrity>>,
) -> anyhow::Result<()> {
    let policies = Arc::new(args.policies()?);
    let cluster = args.cluster()?;
    if let Some(cluster) = &cluster {
        cluster.watch_workers();
    }
    let access_log = server::AccessLog::start(storage.clone(), Arc::clone(&policies));
    let endpoint = server::Endpoint {
        auth: args.auth(),
        tls: args.tls()?,
        require_tls: args.require_tls,
        max_connections: args.max_pg_connections,
        limits: query::QueryConfig {
            memory: query::QueryMemory::new(args.query_memory_bytes, args.total_query_memory_bytes),
            statement_timeout: std::time::Duration::from_millis(args.statement_timeout_ms),
            max_result_rows: args.max_result_rows,
            segment_cache: query::SegmentCache::new(args.segment_cache_bytes),
            ugc_key: policies.key().cloned(),
            cluster,
        },
        access_log: access_log.clone(),
        throttle: server::throttle::LoginThrottle::default(),
    };
    // Statements are planned and run on a runtime of their own: a statement
    // that keeps a core busy (a big join, a long constant to fold) then
    // competes with ingest and /healthz for the CPU as any thread does,
    // instead of holding the threads their requests wait for.
    let queries = query_runtime(args.query_nice)?;
    let api = http::Api {
        queries: queries.handle().clone(),
        storage: storage.clone(),
        max_body_bytes: args.max_body_bytes,
        bodies: http::BodyBudget::new(args.max_inflight_body_bytes),
        max_connections: args.max_http_connections,
        auth: http::ApiAuth {
            tokens: Arc::new(Tokens::in_data_dir(&args.data_dir)),
            trust_without_token: args.insecure_trust_loopback,
        },
        limits: endpoint.limits.clone(),
        policies,
        integrity,
        viewer: Arc::new(http::viewer::ViewerKey::in_data_dir(&args.data_dir)?),
        ui: http::ui::UiState {
            users: server::users::Users::in_data_dir(&args.data_dir),
            sessions: http::ui::session::Sessions::default(),
            throttle: endpoint.throttle.clone(),
            access_log: access_log.clone(),
        },
    };
    let pg = server::bind(args.pg_listen).await?;
    let http = http::bind(args.http_listen).await?;
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
        result = http::serve(http, api) => result?,
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

pub(super) async fn run_demo(args: DemoArgs, allocator: Allocator) -> anyhow::Result<()> {
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
        (allocator.set_purge_delay_ms)(BULK_LOAD_PURGE_DELAY_MS);
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
        (allocator.set_purge_delay_ms)(0);
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
    let mut browser = String::new();
    let connection = if args.serve.insecure_trust_loopback {
        format!("postgresql://{DEMO_USER}@{pg}/auditlake")
    } else {
        // A fresh password at every start: only its verifier is stored, so
        // this is the one moment it can be shown.
        let password: String =
            rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric).take(20).map(char::from).collect();
        Users::in_data_dir(&args.serve.data_dir).upsert(DEMO_USER, Role::Admin, &password, None)?;
        browser = format!(
            "\nOr in a browser, signed in as {DEMO_USER} with the same password, the account's timeline:\n  \
             http://{}/ui/timeline?actor={}\n",
            args.serve.http_listen,
            demo::INCIDENT_ACTOR
        );
        format!("postgresql://{DEMO_USER}:{password}@{pg}/auditlake")
    };
    server::check_auth(&args.serve.auth(), pg)?;
    say(&format!(
        "\nConnect with (user {DEMO_USER}, an admin: it sees every demo organisation):\n  psql \"{connection}\"\n\n\
         Then try (what did the phished account do, and from where?):\n  \
         select time, action, source_ip, content_title from audit_events\n  \
         where actor_id = '{}' and time > now() - interval '3 days' order by time;\n{browser}",
        demo::INCIDENT_ACTOR
    ));
    serve_storage(args.serve, storage, integrity).await
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
