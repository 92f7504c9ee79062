//! v3lockpb.Lock: Lock and Unlock, as etcd's `v3lock` runs clientv3's `concurrency.Mutex`
//! on the server side (building blocks in `recipes`).
//!
//! Lock creates `<name>/<lease hex>` with the caller's lease (a 60 s lease if it gave
//! none) unless that key exists, then waits until no key under `<name>/` has a lower
//! create revision. The answer names the key, which the caller passes to Unlock (a plain
//! delete). A cancelled Lock deletes its key.

use std::rc::Rc;

use bytes::Bytes;

use crate::error::EtcdError;
use crate::grpc::Call;
use crate::proto::etcdserverpb::DeleteRangeRequest;
use crate::proto::v3lockpb as pb;
use crate::service::recipes::{
    compare_create_revision, etcd_status, op_first_create, op_get, op_put, read_request,
    recipe_key, recipe_prefix, reply, session_lease, txn, txn_range, wait_deletes, ReleaseOnDrop,
};
use crate::service::{unknown_method, ServiceContext};

pub async fn serve(context: &Rc<ServiceContext>, method: &str, call: Call) {
    let Call {
        mut requests,
        responses,
        ..
    } = call;
    match method {
        "Lock" => {
            let result = match read_request::<pb::LockRequest>(&mut requests).await {
                Ok(req) => lock(context, req).await.map_err(etcd_status),
                Err(status) => Err(status),
            };
            reply(responses, result).await
        }
        "Unlock" => {
            let result = match read_request::<pb::UnlockRequest>(&mut requests).await {
                Ok(req) => unlock(context, req).await.map_err(etcd_status),
                Err(status) => Err(status),
            };
            reply(responses, result).await
        }
        _ => responses.finish(unknown_method("v3lockpb.Lock", method)),
    }
}

/// clientv3 `Mutex.Lock`.
async fn lock(
    context: &Rc<ServiceContext>,
    req: pb::LockRequest,
) -> Result<pb::LockResponse, EtcdError> {
    let state = &context.state;
    let lease = session_lease(state, req.lease).await?;
    let prefix = recipe_prefix(&req.name);
    let key = recipe_key(&prefix, lease);
    let resp = txn(
        state,
        vec![compare_create_revision(&key, 0)],
        vec![op_put(&key, Bytes::new(), lease), op_first_create(&prefix)],
        vec![op_get(&key), op_first_create(&prefix)],
    )
    .await?;
    let mut my_revision = resp.header.as_ref().map_or(0, |h| h.revision);
    if !resp.succeeded {
        let own = txn_range(&resp.responses, 0);
        my_revision = own.kvs.first().map_or(my_revision, |kv| kv.create_revision);
    }
    let owner = txn_range(&resp.responses, 1);
    if owner
        .kvs
        .first()
        .is_none_or(|kv| kv.create_revision == my_revision)
    {
        return Ok(pb::LockResponse {
            header: resp.header,
            key: key.clone(),
        });
    }
    let release = ReleaseOnDrop::new(context, key.clone(), None);
    let header = wait_deletes(state, &prefix, my_revision - 1).await?;
    release.disarm();
    Ok(pb::LockResponse {
        header,
        key: key.clone(),
    })
}

/// etcd's v3lock `Unlock`: deletes the key Lock returned.
async fn unlock(
    context: &ServiceContext,
    req: pb::UnlockRequest,
) -> Result<pb::UnlockResponse, EtcdError> {
    let resp = context
        .state
        .delete_range(DeleteRangeRequest {
            key: req.key,
            ..Default::default()
        })
        .await?;
    Ok(pb::UnlockResponse {
        header: resp.header,
    })
}
