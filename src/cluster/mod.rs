//! Scale-out reads: one query on many machines, over the same segments in
//! object storage, on datafusion-distributed (see ARCHITECTURE.md,
//! "Scale-out reads").
//!
//! A coordinator is an ordinary auditlake node started with `--workers`:
//! it keeps pgwire, HTTP, logins, the buffer and the manifest, plans every
//! statement, and hands the scans the engine sends out ([`fragment`
//! ](crate::query::fragment)) to workers, with the stages above them the
//! distributed planner cuts. A worker (`auditlake worker`) is the same
//! binary with none of that: it runs the fragments and stages it is sent,
//! reading segments with its own object-store credentials.
//!
//! This module owns what crosses the network between them and what
//! guards it, from a key both sides are given ([`ClusterKey`]):
//! - every request to a worker carries a token derived from the key, and a
//!   worker answers nothing without it ([`worker`]);
//! - every scan fragment is signed with a second key derived from it, which
//!   never travels; a worker refuses a fragment whose signature does not
//!   hold, and a plan that reads anything but fragments ([`codec`]).
//!
//! It never decides whose rows a scan reads (the query layer does, and the
//! fragment carries that scope), never sees an organisation's UGC key, and
//! never puts object-store credentials into a plan.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedExt, DistributedLeafExec, ScaleUpLeafNodeEvent,
    ScaleUpLeafNodeEventResponse, SessionStateBuilderExt, WorkerResolver,
};
use ring::hmac;
use tracing::warn;
use url::Url;

use crate::query::engine::Workers;
use crate::query::fragment::FragmentScanExec;
use crate::storage::settings::to_hex;

pub mod codec;
pub mod worker;

/// The header every request to a worker carries its token in.
const AUTH_HEADER: &str = "authorization";
/// The fewest characters a cluster key file may hold.
const MIN_CLUSTER_KEY_CHARS: usize = 32;

/// Why a cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the cluster key file {path}: {source}")]
    KeyFile { path: String, source: std::io::Error },
    #[error(
        "the cluster key file {path} holds {chars} characters; it needs at least {MIN_CLUSTER_KEY_CHARS} (e.g. `openssl rand -hex 32`)"
    )]
    ShortKey { path: String, chars: usize },
    #[error("{0:?} is not a worker address: expected host:port")]
    WorkerAddress(String),
    #[error("a worker listens on loopback or private addresses only, not {0} (the cluster's traffic is not encrypted)")]
    PublicListen(std::net::SocketAddr),
    #[error("{0}")]
    Engine(#[from] DataFusionError),
}

/// The secret coordinator and workers share. Two keys are derived from
/// it: the token requests carry, and the key fragments are signed with;
/// someone who reads the token off the network still cannot sign.
#[derive(Clone)]
pub struct ClusterKey {
    token: String,
    signing: hmac::Key,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn from_secret(secret: &[u8]) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive = |purpose: &[u8]| hmac::sign(&root, purpose);
        let token = to_hex(derive(b"auditlake cluster: request token").as_ref());
        let signing = hmac::Key::new(hmac::HMAC_SHA256, derive(b"auditlake cluster: fragment signing").as_ref());
        ClusterKey { token, signing }
    }

    /// The key in `path` (its text, surrounding white space ignored).
    pub fn read(path: &Path) -> Result<Self, ClusterError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ClusterError::KeyFile { path: shown.clone(), source })?;
        let secret = text.trim();
        if secret.chars().count() < MIN_CLUSTER_KEY_CHARS {
            return Err(ClusterError::ShortKey { path: shown, chars: secret.chars().count() });
        }
        Ok(ClusterKey::from_secret(secret.as_bytes()))
    }

    /// The same token with a signing key derived from `secret`: what one who
    /// read the token off the network, but has not the key, would sign
    /// with. For tests of the barrier.
    #[doc(hidden)]
    pub fn with_foreign_signing(&self, secret: &[u8]) -> ClusterKey {
        ClusterKey { token: self.token.clone(), signing: ClusterKey::from_secret(secret).signing }
    }

    /// The value of the header every request to a worker carries.
    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn auth_headers(&self) -> Result<http::HeaderMap> {
        let mut headers = http::HeaderMap::new();
        let value = self.bearer().parse().map_err(|e| DataFusionError::Internal(format!("auth header: {e}")))?;
        headers.insert(AUTH_HEADER, value);
        Ok(headers)
    }
}

/// How often a coordinator checks which workers answer.
const WORKER_PROBE_INTERVAL_MS: u64 = 500;
/// How long a worker may take to accept a connection before it counts as gone.
const WORKER_PROBE_TIMEOUT_MS: u64 = 300;

/// The workers a coordinator hands scans to, and the key it shares with them.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub workers: Vec<Url>,
    pub key: ClusterKey,
    /// The workers that accepted a connection at the last check: a query
    /// is planned over these only, so one lost worker fails the queries it
    /// was running, not the ones after.
    live: Arc<RwLock<Vec<Url>>>,
    live_count: Arc<AtomicUsize>,
}

impl Cluster {
    /// Workers as `host:port`, comma-separated.
    pub fn new(workers: &str, key: ClusterKey) -> Result<Self, ClusterError> {
        let workers = workers
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| {
                let url = Url::parse(&format!("http://{w}")).map_err(|_| ClusterError::WorkerAddress(w.to_owned()))?;
                match (url.host_str(), url.port(), url.path()) {
                    (Some(_), Some(_), "/") => Ok(url),
                    _ => Err(ClusterError::WorkerAddress(w.to_owned())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if workers.is_empty() {
            return Err(ClusterError::WorkerAddress(String::new()));
        }
        let live_count = Arc::new(AtomicUsize::new(workers.len()));
        Ok(Cluster { live: Arc::new(RwLock::new(workers.clone())), live_count, workers, key })
    }

    /// How many workers answered at the last check, for the engine's choice.
    pub fn live_workers(&self) -> Workers {
        Workers(Arc::clone(&self.live_count))
    }

    /// Checks, until the process ends, which workers accept connections.
    pub fn watch_workers(&self) {
        let (workers, live, count) = (self.workers.clone(), Arc::clone(&self.live), Arc::clone(&self.live_count));
        tokio::spawn(async move {
            loop {
                let mut answering = Vec::with_capacity(workers.len());
                for url in &workers {
                    let address = format!("{}:{}", url.host_str().unwrap_or_default(), url.port().unwrap_or_default());
                    let timeout = Duration::from_millis(WORKER_PROBE_TIMEOUT_MS);
                    if let Ok(Ok(_)) = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address)).await {
                        answering.push(url.clone());
                    }
                }
                if answering.len() != count.load(Ordering::Relaxed) {
                    warn!(answering = answering.len(), workers = workers.len(), "workers answering changed");
                }
                count.store(answering.len(), Ordering::Relaxed);
                if let Ok(mut live) = live.write() {
                    *live = answering;
                }
                tokio::time::sleep(Duration::from_millis(WORKER_PROBE_INTERVAL_MS)).await;
            }
        });
    }

    /// `builder` (whose query planner is set) as a coordinator's: the
    /// distributed planner around its planner, the workers, and how scan
    /// fragments are split, encoded and signed.
    pub fn coordinate(&self, builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
        let workers = self.workers.len();
        builder
            .with_distributed_planner()
            .with_distributed_max_tasks_per_stage(workers.max(MIN_FRAGMENT_TASKS))?
            .with_distributed_worker_resolver(LiveWorkers(Arc::clone(&self.live)))
            .with_distributed_user_codec(codec::FragmentCodec::new(self.key.clone()))
            .with_distributed_desired_task_count_handler(move |event: DesiredTaskCountEvent<'_>| {
                desired_tasks(event, workers)
            })
            .with_distributed_scale_up_leaf_node_handler(split_fragment)
            // A union of local scans (the buffer's, the segments') would
            // otherwise run its inputs as tasks of their own, on workers.
            .with_distributed_children_isolator_unions(false)?
            .with_distributed_passthrough_headers(self.key.auth_headers()?)
    }
}

#[derive(Debug, Clone)]
struct LiveWorkers(Arc<RwLock<Vec<Url>>>);

impl WorkerResolver for LiveWorkers {
    fn get_urls(&self) -> Result<Vec<Url>> {
        Ok(self.0.read().map(|live| live.clone()).unwrap_or_default())
    }
}

/// The fewest tasks a stage reading a scan fragment runs as. The
/// distributed planner folds a stage of one task under a consumer of one
/// task into the consumer, and so on up to the coordinator: with one task,
/// the fragment would be read, and everything above it run, here. Two
/// tasks keep the stages on the workers, on the one worker if one is left
/// (or configured).
const MIN_FRAGMENT_TASKS: usize = 2;

/// How many tasks a stage reading `event.plan` runs on: a scan fragment on
/// every worker (one a segment at most, two at least); any other scan, the
/// local ones of the segments or the buffer among them, stays on this node.
fn desired_tasks(event: DesiredTaskCountEvent<'_>, workers: usize) -> Option<Result<DesiredTaskCountEventResponse>> {
    if let Some(scan) = event.plan.downcast_ref::<FragmentScanExec>() {
        let segments = scan.fragment().segments.len().max(1);
        let tasks = workers.min(segments).max(MIN_FRAGMENT_TASKS);
        return Some(Ok(DesiredTaskCountEventResponse::desired(tasks)));
    }
    if event.plan.is::<DataSourceExec>() {
        return Some(Ok(DesiredTaskCountEventResponse::maximum(1)));
    }
    None
}

/// A scan fragment split into one part a task (see `ScanFragment::split`).
fn split_fragment(event: ScaleUpLeafNodeEvent<'_>) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    let scan = event.plan.downcast_ref::<FragmentScanExec>()?;
    let parts = scan
        .fragment()
        .split(event.task_count)
        .into_iter()
        .map(|part| Ok(Arc::new(FragmentScanExec::new(part)?) as Arc<dyn ExecutionPlan>))
        .collect::<Result<Vec<_>>>();
    Some(
        parts
            .and_then(|parts| DistributedLeafExec::try_new(Arc::clone(event.plan), parts))
            .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_addresses_and_key_files_are_checked_before_anything_starts() {
        let key = || ClusterKey::from_secret(b"a key of the cluster, long enough");
        let cluster = Cluster::new(" 10.0.0.1:5450, 10.0.0.2:5451 ", key()).unwrap();
        assert_eq!(cluster.workers.len(), 2);
        for bad in ["", "10.0.0.1", "10.0.0.1:5450/path", "http://10.0.0.1:5450", "10.0.0.1:99999"] {
            let error = Cluster::new(bad, key()).unwrap_err().to_string();
            assert!(error.contains("is not a worker address: expected host:port"), "{bad}: {error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "too short\n").unwrap();
        let error = ClusterKey::read(&short).unwrap_err().to_string();
        assert!(error.contains("holds 9 characters; it needs at least 32"), "{error}");
        let error = ClusterKey::read(&dir.path().join("missing.key")).unwrap_err().to_string();
        assert!(error.contains("cannot read the cluster key file"), "{error}");
    }
}
