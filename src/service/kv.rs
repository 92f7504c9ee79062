//! etcdserverpb.KV: Range, RangeStream (etcd 3.7; both in `kv_range`), Put, DeleteRange,
//! Txn, Compact.
//!
//! Order of checks, as etcd's v3rpc/key.go and etcdserver do it: gRPC's own size limit
//! (transport), then field validation (key not provided, duplicate keys, too many ops),
//! then the proposal size limit for writes (--max-request-bytes, "request is too large"),
//! then the state machine.

use crate::error::EtcdError;
use crate::grpc::Call;
use crate::proto::etcdserverpb as pb;
use crate::service::call::{unary, unary_prechecked};
use crate::service::{kv_range, validate};
use crate::service::{unknown_method, ServiceContext};

pub async fn serve(context: &ServiceContext, method: &str, call: Call) {
    match method {
        "Range" => kv_range::serve_range(context, call).await,
        "RangeStream" => kv_range::serve_range_stream(context, call).await,
        "Put" => {
            unary(call, |req: pb::PutRequest, bytes| async move {
                validate::check_put(&req)?;
                check_proposal_size(context, bytes)?;
                context.state.put(req).await
            })
            .await
        }
        "DeleteRange" => {
            unary(call, |req: pb::DeleteRangeRequest, bytes| async move {
                validate::check_delete_range(&req)?;
                check_proposal_size(context, bytes)?;
                context.state.delete_range(req).await
            })
            .await
        }
        "Txn" => {
            let max_txn_ops = context.limits.max_txn_ops;
            let precheck = move |bytes: &[u8]| validate::check_txn_depth(bytes, max_txn_ops);
            unary_prechecked(call, precheck, |req: pb::TxnRequest, bytes| async move {
                validate::check_txn(&req, context.limits.max_txn_ops)?;
                check_proposal_size(context, bytes)?;
                context.state.txn(req).await
            })
            .await
        }
        "Compact" => {
            unary(call, |req: pb::CompactionRequest, _| async move {
                context.state.compact(req).await
            })
            .await
        }
        _ => call
            .responses
            .finish(unknown_method("etcdserverpb.KV", method)),
    }
}

/// etcd refuses to propose an entry larger than --max-request-bytes.
fn check_proposal_size(context: &ServiceContext, encoded_bytes: usize) -> Result<(), EtcdError> {
    if encoded_bytes > context.limits.max_request_bytes {
        return Err(EtcdError::RequestTooLarge);
    }
    Ok(())
}
