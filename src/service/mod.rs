//! The gRPC services, one file per etcd service, and the router that picks one by path.
//!
//! A handler runs on the network executor that owns the connection: it decodes the
//! request, does etcd's API-layer validation (cheap, and rejects bad input before it costs
//! the state core anything), forwards the work over its core's `StateClient`, and encodes
//! the reply. Error texts and codes come from the one table in `crate::error`.

pub mod auth;
mod call;
mod cluster;
mod election;
pub mod http;
mod kv;
mod kv_range;
mod lease;
mod lock;
mod maintenance;
mod recipes;
pub mod validate;
pub mod watch;

use std::rc::Rc;

use crate::auth::Credential;
use crate::grpc::{Call, Code, Handler, Status};
use crate::state::{Identity, StateClient};

/// Public so that the `etcd_requests` fuzz target (fuzz/) decodes requests exactly as the
/// services do.
pub use call::decode_request;
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
    /// --bcrypt-cost, for the passwords the Auth service hashes.
    pub bcrypt_cost: u32,
    /// `--auth-token jwt,...`: the keys Authenticate signs tokens with.
    pub jwt: Option<std::sync::Arc<crate::auth::jwt::JwtKeys>>,
    /// `--client-cert-auth`: a call without a token runs as its client certificate's CN.
    pub client_cert_auth: bool,
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
            bcrypt_cost: auth::BCRYPT_COST_DEFAULT,
            jwt: None,
            client_cert_auth: false,
        }
    }

    pub fn with_jwt(
        mut self,
        jwt: Option<std::sync::Arc<crate::auth::jwt::JwtKeys>>,
    ) -> ServiceContext {
        self.jwt = jwt;
        self
    }

    pub fn with_client_cert_auth(mut self, client_cert_auth: bool) -> ServiceContext {
        self.client_cert_auth = client_cert_auth;
        self
    }

    pub fn with_bcrypt_cost(mut self, bcrypt_cost: u32) -> ServiceContext {
        self.bcrypt_cost = bcrypt_cost;
        self
    }
}

/// The handler the HTTP/2 layer calls for every new stream.
pub fn handler(context: Rc<ServiceContext>) -> Handler {
    Rc::new(move |call: Call| Box::pin(route(context.clone(), call)))
}

async fn route(context: Rc<ServiceContext>, call: Call) {
    let path = call.method.clone();
    let (service, method) = split_path(&path);
    // Everything this call asks of the state core runs as whoever its credential names.
    let credential = credential_of(&call, context.client_cert_auth);
    let context = Rc::new(ServiceContext {
        state: context.state.with_credential(credential),
        limits: context.limits.clone(),
        member_id: context.member_id,
        cluster_id: context.cluster_id,
        watch: context.watch.clone(),
        bcrypt_cost: context.bcrypt_cost,
        jwt: context.jwt.clone(),
        client_cert_auth: context.client_cert_auth,
    });
    match service {
        "etcdserverpb.KV" => kv::serve(&context, method, call).await,
        "etcdserverpb.Maintenance" => maintenance::serve(&context, method, call).await,
        "etcdserverpb.Cluster" => cluster::serve(&context, method, call).await,
        "etcdserverpb.Lease" => lease::serve(&context, method, call).await,
        "v3lockpb.Lock" => lock::serve(&context, method, call).await,
        "v3electionpb.Election" => election::serve(&context, method, call).await,
        "etcdserverpb.Watch" => watch::serve(&context, method, call).await,
        "etcdserverpb.Auth" => auth::serve(&context, method, call).await,
        _ => call.responses.finish(Status::new(
            Code::Unimplemented,
            format!("unknown service {service}"),
        )),
    }
}

/// Who a call says it is (etcd's `AuthInfoFromCtx`, then `AuthInfoFromTLS`):
/// - its auth token: gRPC metadata `token` (etcd's `TokenFieldNameGRPC`), or
///   `authorization` as etcd also accepts (`TokenFieldNameSwagger`). Not UTF-8: no token
///   can match, so it is passed on as text that fails ("invalid auth token");
/// - else, with `--client-cert-auth`, the common name of the verified client certificate
///   of its TLS connection, unless the call came through a gRPC gateway
///   (`grpcgateway-accept` metadata): etcd never takes the gateway's own certificate
///   for its client's identity.
fn credential_of(call: &Call, client_cert_auth: bool) -> Option<Credential> {
    let metadata = |wanted: &str| call.metadata.iter().find(|(name, _)| name == wanted);
    if let Some((_, token)) = metadata("token").or_else(|| metadata("authorization")) {
        return Some(Credential::Token(String::from_utf8_lossy(token).into()));
    }
    if !client_cert_auth || metadata("grpcgateway-accept").is_some() {
        return None;
    }
    let name = call.tls_common_name.as_deref()?;
    Some(Credential::CommonName(name.into()))
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
