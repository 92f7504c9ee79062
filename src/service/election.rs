//! v3electionpb.Election: Campaign, Proclaim, Leader, Observe, Resign, as etcd's
//! `v3election` runs clientv3's `concurrency.Election` on the server side (building
//! blocks in `recipes`).
//!
//! A candidate's key is `<name>/<lease hex>`; the leader is the key under `<name>/` with
//! the lowest create revision. Campaign returns once its key is that one. Proclaim and
//! Resign act only while the key still has the create revision Campaign returned.
//! Observe streams the leader, then every update of the leader's key, and on its
//! deletion moves to the next leader.
//!
//! The election errors are plain Go errors in etcd, so gRPC sends them with code
//! Unknown and these exact texts (client/v3/concurrency/election.go, v3election).

use std::rc::Rc;

use bytes::Bytes;
use prost::Message;

use crate::error::EtcdError;
use crate::grpc::{Call, Code, ResponseSink, Status};
use crate::mvcc::ChangeKind;
use crate::proto::etcdserverpb::{request_op, PutRequest, ResponseHeader};
use crate::proto::mvccpb::KeyValue;
use crate::proto::v3electionpb as pb;
use crate::service::recipes::{
    compare_create_revision, create_ordered, etcd_status, op, op_delete, op_get, op_put,
    prefix_end, read_request, recipe_key, recipe_prefix, reply, session_lease, txn, txn_range,
    wait_deletes, ReleaseOnDrop,
};
use crate::service::{unknown_method, ServiceContext};

/// concurrency `ErrElectionNotLeader`.
pub const NOT_LEADER: &str = "election: not leader";
/// concurrency `ErrElectionNoLeader`.
pub const NO_LEADER: &str = "election: no leader";
/// v3election `ErrMissingLeaderKey`.
pub const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

fn election_error(text: &str) -> Status {
    Status::new(Code::Unknown, text.to_string())
}

pub async fn serve(context: &Rc<ServiceContext>, method: &str, call: Call) {
    let Call {
        mut requests,
        responses,
        ..
    } = call;
    match method {
        "Campaign" => {
            let result = match read_request::<pb::CampaignRequest>(&mut requests).await {
                Ok(req) => campaign(context, req).await,
                Err(status) => Err(status),
            };
            reply(responses, result).await
        }
        "Proclaim" => {
            let result = match read_request::<pb::ProclaimRequest>(&mut requests).await {
                Ok(req) => proclaim(context, req).await,
                Err(status) => Err(status),
            };
            reply(responses, result).await
        }
        "Leader" => {
            let result = match read_request::<pb::LeaderRequest>(&mut requests).await {
                Ok(req) => leader(context, req).await,
                Err(status) => Err(status),
            };
            reply(responses, result).await
        }
        "Resign" => {
            let result = match read_request::<pb::ResignRequest>(&mut requests).await {
                Ok(req) => resign(context, req).await,
                Err(status) => Err(status),
            };
            reply(responses, result).await
        }
        "Observe" => match read_request::<pb::LeaderRequest>(&mut requests).await {
            Ok(req) => observe(context, req, responses).await,
            Err(status) => responses.finish(status),
        },
        _ => responses.finish(unknown_method("v3electionpb.Election", method)),
    }
}

/// clientv3 `Election.Campaign`.
async fn campaign(
    context: &Rc<ServiceContext>,
    req: pb::CampaignRequest,
) -> Result<pb::CampaignResponse, Status> {
    let state = &context.state;
    let lease = session_lease(state, req.lease).await.map_err(etcd_status)?;
    let prefix = recipe_prefix(&req.name);
    let key = recipe_key(&prefix, lease);
    let resp = txn(
        state,
        vec![compare_create_revision(&key, 0)],
        vec![op_put(&key, req.value.clone(), lease)],
        vec![op_get(&key)],
    )
    .await
    .map_err(etcd_status)?;
    let mut leader_revision = resp.header.as_ref().map_or(0, |h| h.revision);
    if !resp.succeeded {
        // Campaigning again with the same lease resumes the existing candidacy.
        if let Some(kv) = txn_range(&resp.responses, 0).kvs.first() {
            leader_revision = kv.create_revision;
            if kv.value != req.value {
                if let Err(status) =
                    proclaim_at(context, &key, leader_revision, req.value.clone()).await
                {
                    resign_at(context, &key, leader_revision)
                        .await
                        .map_err(etcd_status)?;
                    return Err(status);
                }
            }
        }
    }
    let release = ReleaseOnDrop::new(context, key.clone(), Some(leader_revision));
    wait_deletes(state, &prefix, leader_revision - 1)
        .await
        .map_err(etcd_status)?;
    release.disarm();
    Ok(pb::CampaignResponse {
        header: resp.header,
        leader: Some(pb::LeaderKey {
            name: req.name,
            key,
            rev: leader_revision,
            lease,
        }),
    })
}

/// clientv3 `Election.Proclaim` on a resumed election.
async fn proclaim(
    context: &ServiceContext,
    req: pb::ProclaimRequest,
) -> Result<pb::ProclaimResponse, Status> {
    let leader = req
        .leader
        .ok_or_else(|| election_error(MISSING_LEADER_KEY))?;
    let header = proclaim_at(context, &leader.key, leader.rev, req.value).await?;
    Ok(pb::ProclaimResponse { header })
}

async fn proclaim_at(
    context: &ServiceContext,
    key: &Bytes,
    create_revision: i64,
    value: Bytes,
) -> Result<Option<ResponseHeader>, Status> {
    let put = op(request_op::Request::RequestPut(PutRequest {
        key: key.clone(),
        value,
        ignore_lease: true,
        ..Default::default()
    }));
    let resp = txn(
        &context.state,
        vec![compare_create_revision(key, create_revision)],
        vec![put],
        Vec::new(),
    )
    .await
    .map_err(etcd_status)?;
    if !resp.succeeded {
        return Err(election_error(NOT_LEADER));
    }
    Ok(resp.header)
}

/// clientv3 `Election.Leader`.
async fn leader(
    context: &ServiceContext,
    req: pb::LeaderRequest,
) -> Result<pb::LeaderResponse, Status> {
    let prefix = recipe_prefix(&req.name);
    let resp = context
        .state
        .range(create_ordered(&prefix, false, 0))
        .await
        .map_err(etcd_status)?;
    match resp.kvs.into_iter().next() {
        Some(kv) => Ok(pb::LeaderResponse {
            header: resp.header,
            kv: Some(kv),
        }),
        None => Err(election_error(NO_LEADER)),
    }
}

/// clientv3 `Election.Resign` on a resumed election: deletes the key if it is still the
/// generation Campaign created; not being leader is not an error.
async fn resign(
    context: &ServiceContext,
    req: pb::ResignRequest,
) -> Result<pb::ResignResponse, Status> {
    let leader = req
        .leader
        .ok_or_else(|| election_error(MISSING_LEADER_KEY))?;
    let header = resign_at(context, &leader.key, leader.rev)
        .await
        .map_err(etcd_status)?;
    Ok(pb::ResignResponse { header })
}

async fn resign_at(
    context: &ServiceContext,
    key: &Bytes,
    create_revision: i64,
) -> Result<Option<ResponseHeader>, EtcdError> {
    let resp = txn(
        &context.state,
        vec![compare_create_revision(key, create_revision)],
        vec![op_delete(key)],
        Vec::new(),
    )
    .await?;
    Ok(resp.header)
}

/// clientv3 `Election.Observe`, streamed until the client cancels.
async fn observe(context: &ServiceContext, req: pb::LeaderRequest, mut responses: ResponseSink) {
    match observe_loop(context, &req.name, &mut responses).await {
        Ok(()) => {}
        Err(Some(status)) => responses.finish(status),
        // The client went away: nothing to send.
        Err(None) => {}
    }
}

async fn send_leader(
    responses: &mut ResponseSink,
    header: &Option<ResponseHeader>,
    revision: i64,
    kv: KeyValue,
) -> Result<(), Option<Status>> {
    let mut header = header.unwrap_or_default();
    header.revision = revision;
    let message = pb::LeaderResponse {
        header: Some(header),
        kv: Some(kv),
    };
    responses
        .send(message.encode_to_vec().into())
        .await
        .map_err(|_| None)
}

async fn observe_loop(
    context: &ServiceContext,
    name: &Bytes,
    responses: &mut ResponseSink,
) -> Result<(), Option<Status>> {
    let state = &context.state;
    let prefix = recipe_prefix(name);
    let to_status = |e: EtcdError| Some(etcd_status(e));
    loop {
        let resp = state
            .range(create_ordered(&prefix, false, 0))
            .await
            .map_err(to_status)?;
        let header = resp.header;
        let mut revision = header.as_ref().map_or(0, |h| h.revision);
        let leader = match resp.kvs.into_iter().next() {
            Some(kv) => kv,
            None => {
                // No leader: the first key put under the prefix is the one to follow.
                let changes = state
                    .wait_change(prefix.clone(), prefix_end(&prefix), revision)
                    .await
                    .map_err(to_status)?;
                match changes.into_iter().find(|c| c.kind == ChangeKind::Put) {
                    Some(change) => {
                        revision = change.kv.mod_revision;
                        change.kv
                    }
                    // Only deletes (or history gone): look again.
                    None => continue,
                }
            }
        };
        let key = leader.key.clone();
        send_leader(responses, &header, revision, leader).await?;
        // Follow the leader's key until it is deleted.
        'follow: loop {
            let changes = state
                .wait_change(key.clone(), Bytes::new(), revision)
                .await
                .map_err(to_status)?;
            if changes.is_empty() {
                break 'follow;
            }
            for change in changes {
                if change.kind == ChangeKind::Delete {
                    break 'follow;
                }
                revision = change.kv.mod_revision;
                send_leader(responses, &header, revision, change.kv).await?;
            }
        }
    }
}
