//! etcdserverpb.Cluster: membership, answered by the raft node (src/raft/node/membership.rs).

use crate::grpc::Call;
use crate::proto::etcdserverpb as pb;
use crate::service::call::unary;
use crate::service::{unknown_method, ServiceContext};

const SERVICE: &str = "etcdserverpb.Cluster";

pub async fn serve(context: &ServiceContext, method: &str, call: Call) {
    match method {
        "MemberList" => {
            unary(call, |_: pb::MemberListRequest, _| async move {
                context.state.member_list().await
            })
            .await
        }
        "MemberAdd" => {
            unary(call, |req: pb::MemberAddRequest, _| async move {
                context.state.member_add(req).await
            })
            .await
        }
        "MemberRemove" => {
            unary(call, |req: pb::MemberRemoveRequest, _| async move {
                context.state.member_remove(req).await
            })
            .await
        }
        "MemberUpdate" => {
            unary(call, |req: pb::MemberUpdateRequest, _| async move {
                context.state.member_update(req).await
            })
            .await
        }
        "MemberPromote" => {
            unary(call, |req: pb::MemberPromoteRequest, _| async move {
                context.state.member_promote(req).await
            })
            .await
        }
        _ => call.responses.finish(unknown_method(SERVICE, method)),
    }
}
