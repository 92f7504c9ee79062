//! etcdserverpb.Cluster: MemberList (membership changes arrive with raft, issue 6).

use crate::grpc::Call;
use crate::proto::etcdserverpb as pb;
use crate::service::call::unary;
use crate::service::{not_yet, unknown_method, ServiceContext};

const SERVICE: &str = "etcdserverpb.Cluster";

pub async fn serve(context: &ServiceContext, method: &str, call: Call) {
    match method {
        "MemberList" => {
            unary(call, |_: pb::MemberListRequest, _| async move {
                context.state.member_list().await
            })
            .await
        }
        "MemberAdd" | "MemberRemove" | "MemberUpdate" | "MemberPromote" => {
            call.responses.finish(not_yet(SERVICE, method))
        }
        _ => call.responses.finish(unknown_method(SERVICE, method)),
    }
}
