//! etcdserverpb.Lease: LeaseGrant, LeaseRevoke, LeaseKeepAlive (bidi stream),
//! LeaseTimeToLive, LeaseLeases — etcd's `v3rpc/lease.go` over the state executor's
//! lessor (`crate::lease`, applied in `state/machine/leases.rs`).
//!
//! KeepAlive answers each request in order on the same stream; an unknown lease gets
//! TTL 0 (not an error), which clients turn into "requested lease not found". The stream
//! ends OK when the client half-closes, and with the error's status on any other failure.

use prost::Message;

use crate::grpc::{Call, Code, Status};
use crate::proto::etcdserverpb as pb;
use crate::service::call::{status_from_error, unary};
use crate::service::{unknown_method, ServiceContext};
use crate::state::LeaseCommand;

pub async fn serve(context: &ServiceContext, method: &str, call: Call) {
    let state = &context.state;
    match method {
        "LeaseGrant" => {
            unary(call, |req: pb::LeaseGrantRequest, _| async move {
                state.lease(|r| LeaseCommand::Grant(req, r)).await
            })
            .await
        }
        "LeaseRevoke" => {
            unary(call, |req: pb::LeaseRevokeRequest, _| async move {
                state.lease(|r| LeaseCommand::Revoke(req, r)).await
            })
            .await
        }
        "LeaseTimeToLive" => {
            unary(call, |req: pb::LeaseTimeToLiveRequest, _| async move {
                state.lease(|r| LeaseCommand::TimeToLive(req, r)).await
            })
            .await
        }
        "LeaseLeases" => {
            unary(call, |_: pb::LeaseLeasesRequest, _| async move {
                state.lease(LeaseCommand::Leases).await
            })
            .await
        }
        "LeaseKeepAlive" => keep_alive(context, call).await,
        _ => call
            .responses
            .finish(unknown_method("etcdserverpb.Lease", method)),
    }
}

async fn keep_alive(context: &ServiceContext, call: Call) {
    let Call {
        mut requests,
        mut responses,
        ..
    } = call;
    loop {
        let message = match requests.next().await {
            Some(Ok(message)) => message,
            Some(Err(status)) => return responses.finish(status),
            None => return responses.finish(Status::new(Code::Ok, String::new())),
        };
        let req = match crate::service::call::decode_request::<pb::LeaseKeepAliveRequest>(message) {
            Ok(req) => req,
            Err(e) => {
                return responses.finish(Status::new(
                    Code::Internal,
                    format!("grpc: error unmarshalling request: {e}"),
                ))
            }
        };
        match context.state.lease(|r| LeaseCommand::Renew(req, r)).await {
            Ok(reply) => {
                if responses.send(reply.encode_to_vec().into()).await.is_err() {
                    return;
                }
            }
            Err(error) => return responses.finish(status_from_error(error)),
        }
    }
}
