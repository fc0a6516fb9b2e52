//! `auditlake worker`: runs the stages and scan fragments a coordinator
//! sends, and nothing else.
//!
//! Before a request is read, its token is checked (a request without the
//! cluster's token gets `UNAUTHENTICATED` and its body is never decoded).
//! After a plan is decoded, and before it runs, every leaf of it must be a
//! signed scan fragment, a network boundary (rows from another task of the
//! same query) or a source of rows the plan carries itself: a plan that
//! would read a file, a URL or a table of this process is refused. The
//! fragments read segments through this process's own segment store,
//! with its own credentials; the worker has no data directory, no
//! manifest, no users and no keys of organisations.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::SessionState;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::prelude::SessionContext;
use datafusion_distributed::{
    DistributedExt, NetworkBoundaryExt, Worker, WorkerPlanRewriteEvent, WorkerPlanRewriteEventResponse,
    WorkerQueryContext,
};
use subtle::ConstantTimeEq;
use tracing::info;

use crate::query::fragment::FragmentScanExec;
use crate::query::{QueryMemory, SegmentReader, register_functions};

use super::codec::FragmentCodec;
use super::{AUTH_HEADER, ClusterError, ClusterKey};

/// Whether a worker may listen on `address`: loopback and private
/// networks only (the cluster's traffic is authenticated, not encrypted).
pub fn may_listen_on(address: &SocketAddr) -> bool {
    match address.ip() {
        IpAddr::V4(ip) => ip.is_loopback() || ip.is_private(),
        IpAddr::V6(ip) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Serves the worker on `listen` until the process ends.
pub async fn serve(
    listen: SocketAddr,
    reader: SegmentReader,
    key: ClusterKey,
    memory: QueryMemory,
) -> Result<(), ClusterError> {
    if !may_listen_on(&listen) {
        return Err(ClusterError::PublicListen(listen));
    }
    // As on a coordinator: queries never write to disk, and fail when they
    // do not fit in their memory.
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(memory.session_pool())
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
        .build_arc()
        .map_err(ClusterError::Engine)?;
    runtime.register_object_store(reader.store.url().as_ref(), reader.store.object_store());
    let session_key = key.clone();
    let worker = Worker::from_session_builder(move |ctx: WorkerQueryContext| {
        let (reader, key) = (reader.clone(), session_key.clone());
        async move { worker_session(ctx, reader, key).await }
    })
    .with_runtime_env(runtime);
    let expected = key.bearer();
    let authenticate = move |request: tonic::Request<()>| {
        let given = request.metadata().get(AUTH_HEADER).and_then(|v| v.to_str().ok());
        let matches = given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())));
        if matches {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated("this worker answers its cluster's coordinator only"))
        }
    };
    info!(%listen, "worker listening");
    tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(authenticate))
        .add_service(worker.into_worker_server())
        .serve(listen)
        .await
        .map_err(|e| ClusterError::Engine(DataFusionError::External(Box::new(e))))
}

/// The session one request to the worker runs in: the log's functions,
/// the fragment codec, this process's segment reader, the plan check, and
/// the token for the requests it makes to other workers.
async fn worker_session(ctx: WorkerQueryContext, reader: SegmentReader, key: ClusterKey) -> Result<SessionState> {
    let mut builder = ctx.builder;
    builder.config().get_or_insert_default().set_extension(Arc::new(reader));
    let state = builder
        .with_distributed_user_codec(FragmentCodec::new(key.clone()))
        .with_distributed_worker_plan_rewrite_handler(only_fragments)
        .with_distributed_passthrough_headers(key.auth_headers()?)?
        .build();
    let mut session = SessionContext::new_with_state(state);
    register_functions(&mut session)?;
    Ok(session.state())
}

/// Refuses a plan with a leaf that is not a scan fragment, a network
/// boundary, or rows the plan carries itself.
fn only_fragments(event: WorkerPlanRewriteEvent<'_>) -> Result<WorkerPlanRewriteEventResponse> {
    let mut refused = None;
    event.plan.apply(|node| {
        if node.is_network_boundary() {
            return Ok(TreeNodeRecursion::Jump);
        }
        if node.children().is_empty() && !is_allowed_leaf(node) {
            refused = Some(node.name().to_owned());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match refused {
        Some(name) => Err(DataFusionError::Plan(format!(
            "plan refused: a worker runs scan fragments of its cluster only, not {name}"
        ))),
        None => Ok(WorkerPlanRewriteEventResponse::new(event.plan)),
    }
}

fn is_allowed_leaf(node: &Arc<dyn ExecutionPlan>) -> bool {
    if node.is::<FragmentScanExec>() || node.is::<EmptyExec>() || node.is::<PlaceholderRowExec>() {
        return true;
    }
    node.downcast_ref::<DataSourceExec>()
        .is_some_and(|source| source.data_source().downcast_ref::<MemorySourceConfig>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_listen_on_private_networks_only() {
        for private in ["127.0.0.1:1", "10.1.2.3:1", "192.168.0.2:1", "172.16.0.1:1", "[::1]:1", "[fd00::1]:1"] {
            assert!(may_listen_on(&private.parse().unwrap()), "{private}");
        }
        for public in ["0.0.0.0:1", "8.8.8.8:1", "[::]:1", "[2001:db8::1]:1"] {
            assert!(!may_listen_on(&public.parse().unwrap()), "{public}");
        }
    }
}
