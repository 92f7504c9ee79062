//! The gRPC services, one file per etcd service, and the router that picks one by path.
//!
//! A handler runs on the network executor that owns the connection: it decodes the
//! request, does etcd's API-layer validation (cheap, and rejects bad input before it costs
//! the state core anything), forwards the work over its core's `StateClient`, and encodes
//! the reply. Error texts and codes come from the one table in `crate::error`.

mod call;
mod cluster;
mod election;
pub mod http;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod recipes;
pub mod validate;
pub mod watch;

use std::rc::Rc;

use crate::grpc::{Call, Code, Handler, Status};
use crate::state::{Identity, StateClient};

pub use call::status_from_error;

/// etcd lets a gRPC message exceed --max-request-bytes by this much before gRPC itself
/// refuses it, so that an oversized request reaches etcd's own check and gets etcd's
/// "request is too large" instead of a transport error (etcd's grpcOverheadBytes).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Request limits, from --max-request-bytes and --max-txn-ops.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// --experimental-watch-progress-notify-interval.
    pub watch_progress_notify_interval: std::time::Duration,
}

/// etcd's default --experimental-watch-progress-notify-interval.
pub const WATCH_PROGRESS_NOTIFY_INTERVAL_DEFAULT: std::time::Duration =
    std::time::Duration::from_secs(10 * 60);

impl Limits {
    pub fn max_recv_message_bytes(&self) -> usize {
        self.max_request_bytes + GRPC_OVERHEAD_BYTES
    }
}

/// What every handler on one network executor shares.
pub struct ServiceContext {
    pub state: StateClient,
    pub limits: Limits,
    pub member_id: u64,
    pub cluster_id: u64,
    /// This core's watchers (`watch::hub`; protocol in `crate::watch`).
    pub watch: Rc<watch::hub::WatchHub>,
}

impl ServiceContext {
    pub fn new(
        state: StateClient,
        limits: Limits,
        identity: &Identity,
        watch: Rc<watch::hub::WatchHub>,
    ) -> ServiceContext {
        ServiceContext {
            state,
            limits,
            member_id: identity.member_id,
            cluster_id: identity.cluster_id,
            watch,
        }
    }
}

/// The handler the HTTP/2 layer calls for every new stream.
pub fn handler(context: Rc<ServiceContext>) -> Handler {
    Rc::new(move |call: Call| Box::pin(route(context.clone(), call)))
}

async fn route(context: Rc<ServiceContext>, call: Call) {
    let path = call.method.clone();
    let (service, method) = split_path(&path);
    match service {
        "etcdserverpb.KV" => kv::serve(&context, method, call).await,
        "etcdserverpb.Maintenance" => maintenance::serve(&context, method, call).await,
        "etcdserverpb.Cluster" => cluster::serve(&context, method, call).await,
        "etcdserverpb.Lease" => lease::serve(&context, method, call).await,
        "v3lockpb.Lock" => lock::serve(&context, method, call).await,
        "v3electionpb.Election" => election::serve(&context, method, call).await,
        "etcdserverpb.Watch" => watch::serve(&context, method, call).await,
        // The Auth service's issue has not landed yet.
        "etcdserverpb.Auth" => call.responses.finish(not_yet(service, method)),
        _ => call.responses.finish(Status::new(
            Code::Unimplemented,
            format!("unknown service {service}"),
        )),
    }
}

/// "/etcdserverpb.KV/Range" → ("etcdserverpb.KV", "Range").
fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

/// grpc-go's answer for a method its service does not have.
pub(crate) fn unknown_method(service: &str, method: &str) -> Status {
    Status::new(
        Code::Unimplemented,
        format!("unknown method {method} for service {service}"),
    )
}

/// A method etcd has and tern will have once its issue lands.
pub(crate) fn not_yet(service: &str, method: &str) -> Status {
    Status::new(
        Code::Unimplemented,
        format!("tern: {service}/{method} is not implemented yet"),
    )
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_path("/etcdserverpb.KV/Range"),
            ("etcdserverpb.KV", "Range")
        );
        assert_eq!(split_path("/nonsense"), ("nonsense", ""));
        assert_eq!(split_path(""), ("", ""));
    }
}
