//! etcdserverpb.Maintenance: Status, Hash, HashKV, Alarm, Defragment, MoveLeader.
//!
//! MoveLeader is answered by the raft node. Snapshot needs the persistent backend; Downgrade
//! is an etcd 3.5 cluster-version operation with no meaning for a single 3.4-API member.
//!
//! With auth on, Defragment, Hash, HashKV, MoveLeader and raising or clearing an alarm
//! are for root-role users only (checked by the state core); their refusals come back as
//! etcd's `authMaintenanceServer` sends them: the auth package's text with code Unknown.

use crate::error::EtcdError;
use crate::grpc::Call;
use crate::proto::etcdserverpb as pb;
use crate::service::call::unary;
use crate::service::{not_yet, unknown_method, ServiceContext};

const SERVICE: &str = "etcdserverpb.Maintenance";

pub async fn serve(context: &ServiceContext, method: &str, call: Call) {
    match method {
        "Status" => {
            unary(call, |_: pb::StatusRequest, _| async move {
                context.state.status().await
            })
            .await
        }
        "HashKV" => {
            unary(call, |req: pb::HashKvRequest, _| async move {
                context
                    .state
                    .hash_kv(req)
                    .await
                    .map_err(EtcdError::unmapped_auth)
            })
            .await
        }
        "Hash" => {
            unary(call, |_: pb::HashRequest, _| async move {
                context.state.hash().await.map_err(EtcdError::unmapped_auth)
            })
            .await
        }
        "Alarm" => {
            unary(call, |req: pb::AlarmRequest, _| async move {
                context
                    .state
                    .alarm(req)
                    .await
                    .map_err(EtcdError::unmapped_auth)
            })
            .await
        }
        "Defragment" => {
            unary(call, |_: pb::DefragmentRequest, _| async move {
                context
                    .state
                    .defragment()
                    .await
                    .map_err(EtcdError::unmapped_auth)
            })
            .await
        }
        "MoveLeader" => {
            unary(call, |req: pb::MoveLeaderRequest, _| async move {
                context
                    .state
                    .move_leader(req)
                    .await
                    .map_err(EtcdError::unmapped_auth)
            })
            .await
        }
        "Snapshot" | "Downgrade" => call.responses.finish(not_yet(SERVICE, method)),
        _ => call.responses.finish(unknown_method(SERVICE, method)),
    }
}
