//! The building blocks of etcd's concurrency recipes (client/v3/concurrency: `Mutex`,
//! `Election`), run on the network executor against the state executor, for the Lock and
//! Election services. Where the recipes open a watch, these wait on the state executor's
//! change waiters (`server::change_waiters`).
//!
//! Invariants:
//! - A recipe key is `<name>/<lease id in lowercase hex>` (Go's `%x`), attached to the
//!   caller's lease, so it vanishes with the lease.
//! - Order is the keys' create revision: the holder (leader) is the key under the prefix
//!   with the lowest one; a waiter waits until no key with a lower one remains.
//! - A handler whose call is cancelled is dropped mid-wait; `ReleaseOnDrop` then removes
//!   the key it created, as the recipes do when their context is cancelled.

use std::rc::Rc;

use bytes::Bytes;
use prost::Message;

use crate::error::EtcdError;
use crate::grpc::{Code, RequestStream, ResponseSink, Status};
use crate::mvcc::ChangeKind;
use crate::proto::etcdserverpb::{
    compare, range_request, request_op, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest,
};
use crate::service::call::status_from_error;
use crate::service::ServiceContext;
use crate::state::LeaseCommand;
use crate::state::StateClient;

/// TTL of the lease a recipe grants when the request names none (clientv3's
/// `concurrency.defaultSessionTTL`); nobody keeps it alive, so the key lasts this long.
pub const SESSION_TTL_SECS_DEFAULT: i64 = 60;

/// etcd's `GetPrefixRangeEnd`: the smallest key above every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end.into();
        }
        end.pop();
    }
    // Every byte is 0xff (or the prefix is empty): the range runs to the end of the keys.
    Bytes::from_static(&[0])
}

/// `<prefix><lease>` with the lease in Go's `%x` (a sign, then hex digits).
pub fn recipe_key(prefix: &[u8], lease: i64) -> Bytes {
    let mut key = prefix.to_vec();
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    key.extend_from_slice(hex.as_bytes());
    key.into()
}

/// `name` + "/", the prefix every recipe key of `name` lives under.
pub fn recipe_prefix(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix.into()
}

/// The caller's lease, or a fresh one with the session default TTL when it gave none
/// (clientv3's `NewSession` without a lease grants one).
pub async fn session_lease(state: &StateClient, lease: i64) -> Result<i64, EtcdError> {
    if lease != 0 {
        return Ok(lease);
    }
    let req = LeaseGrantRequest {
        ttl: SESSION_TTL_SECS_DEFAULT,
        id: 0,
    };
    Ok(state.lease(|r| LeaseCommand::Grant(req, r)).await?.id)
}

pub fn compare_create_revision(key: &Bytes, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
    }
}

pub fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

pub fn op_get(key: &Bytes) -> RequestOp {
    op(request_op::Request::RequestRange(RangeRequest {
        key: key.clone(),
        ..Default::default()
    }))
}

pub fn op_put(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    op(request_op::Request::RequestPut(PutRequest {
        key: key.clone(),
        value,
        lease,
        ..Default::default()
    }))
}

pub fn op_delete(key: &Bytes) -> RequestOp {
    op(request_op::Request::RequestDeleteRange(
        DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        },
    ))
}

/// The key under `prefix` with the lowest create revision (clientv3 `WithFirstCreate`),
/// or with `descend`, the highest (`WithLastCreate`); at most `max_create_revision` if
/// nonzero.
pub fn create_ordered(prefix: &Bytes, descend: bool, max_create_revision: i64) -> RangeRequest {
    let order = if descend {
        range_request::SortOrder::Descend
    } else {
        range_request::SortOrder::Ascend
    };
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

pub fn op_first_create(prefix: &Bytes) -> RequestOp {
    op(request_op::Request::RequestRange(create_ordered(
        prefix, false, 0,
    )))
}

/// The range response of a txn's `index`-th op (recipe txns put ranges where they read).
pub fn txn_range(
    responses: &[crate::proto::etcdserverpb::ResponseOp],
    index: usize,
) -> RangeResponse {
    use crate::proto::etcdserverpb::response_op::Response;
    match responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(range)) => range.clone(),
        _ => RangeResponse::default(),
    }
}

/// clientv3 `waitDeletes`: waits until no key under `prefix` has a create revision of at
/// most `max_create_revision`; returns the header of the read that saw none.
pub async fn wait_deletes(
    state: &StateClient,
    prefix: &Bytes,
    max_create_revision: i64,
) -> Result<Option<ResponseHeader>, EtcdError> {
    loop {
        let resp = state
            .range(create_ordered(prefix, true, max_create_revision))
            .await?;
        let Some(last) = resp.kvs.first() else {
            return Ok(resp.header);
        };
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        wait_delete(state, &last.key, revision).await?;
    }
}

/// Waits until `key` is deleted after `revision` (or something makes us look again).
async fn wait_delete(state: &StateClient, key: &Bytes, mut revision: i64) -> Result<(), EtcdError> {
    loop {
        let changes = state
            .wait_change(key.clone(), Bytes::new(), revision)
            .await?;
        if changes.is_empty() || changes.iter().any(|c| c.kind == ChangeKind::Delete) {
            return Ok(());
        }
        revision = changes
            .iter()
            .map(|c| c.kv.mod_revision)
            .max()
            .unwrap_or(revision);
    }
}

/// Sends a txn; the Txn service's validation is not needed for the recipes' own txns.
pub async fn txn(
    state: &StateClient,
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
) -> Result<crate::proto::etcdserverpb::TxnResponse, EtcdError> {
    state
        .txn(TxnRequest {
            compare,
            success,
            failure,
        })
        .await
}

/// Removes a recipe key if the handler is dropped (call cancelled or past its deadline)
/// before it disarms: clientv3's `Unlock`/`Resign` on context cancel. With
/// `create_revision` set, only the key of that generation is removed (Resign's compare).
pub struct ReleaseOnDrop {
    context: Rc<ServiceContext>,
    key: Option<Bytes>,
    create_revision: Option<i64>,
}

impl ReleaseOnDrop {
    pub fn new(context: &Rc<ServiceContext>, key: Bytes, create_revision: Option<i64>) -> Self {
        ReleaseOnDrop {
            context: context.clone(),
            key: Some(key),
            create_revision,
        }
    }

    pub fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let context = self.context.clone();
        let create_revision = self.create_revision;
        glommio::spawn_local(async move {
            let state = &context.state;
            let _ = match create_revision {
                None => txn(state, Vec::new(), vec![op_delete(&key)], Vec::new()).await,
                Some(rev) => {
                    txn(
                        state,
                        vec![compare_create_revision(&key, rev)],
                        vec![op_delete(&key)],
                        Vec::new(),
                    )
                    .await
                }
            };
        })
        .detach();
    }
}

/// Reads the one request message of a unary call (as `call::unary` does).
pub async fn read_request<Req: Message + Default + prost::Name>(
    requests: &mut RequestStream,
) -> Result<Req, Status> {
    match requests.next().await {
        Some(Ok(message)) => crate::service::call::decode_request::<Req>(message).map_err(|e| {
            Status::new(
                Code::Internal,
                format!("grpc: error unmarshalling request: {e}"),
            )
        }),
        Some(Err(status)) => Err(status),
        None => Err(Status::new(
            Code::Internal,
            "grpc: client streaming protocol violation: get <nil>, want <EOF>".to_string(),
        )),
    }
}

/// Sends a unary reply or its error status.
pub async fn reply<Resp: Message>(mut responses: ResponseSink, result: Result<Resp, Status>) {
    match result {
        Ok(resp) => {
            if responses.send(resp.encode_to_vec().into()).await.is_ok() {
                responses.finish(Status::new(Code::Ok, String::new()));
            }
        }
        Err(status) => responses.finish(status),
    }
}

pub fn etcd_status(error: EtcdError) -> Status {
    status_from_error(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_like_etcd() {
        assert_eq!(prefix_end(b"a/"), Bytes::from_static(b"a0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(&[0]));
        assert_eq!(prefix_end(b""), Bytes::from_static(&[0]));
    }

    #[test]
    fn recipe_keys_use_go_hex() {
        assert_eq!(
            recipe_key(b"lock/", 0x694d7f0c1a2b3c4d),
            Bytes::from_static(b"lock/694d7f0c1a2b3c4d")
        );
        assert_eq!(recipe_key(b"e/", 255), Bytes::from_static(b"e/ff"));
        assert_eq!(recipe_key(b"e/", -255), Bytes::from_static(b"e/-ff"));
        assert_eq!(recipe_prefix(b"name"), Bytes::from_static(b"name/"));
    }
}
