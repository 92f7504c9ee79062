//! etcd's KV semantics over the protobuf requests: Range, Put, DeleteRange, Txn, Compact
//! and HashKV, as etcd's applier runs them (`etcdserver/apply.go`, 3.4).
//!
//! Requests are assumed to have passed [`crate::service::validate`]. Responses carry a header whose
//! `revision` is etcd's; the caller fills `cluster_id`, `member_id` and `raft_term`.
//!
//! A txn runs in three steps, as in etcd: (1) every compare — including those of nested
//! txns on the chosen path — is evaluated against the store *before* any write, giving a
//! path of branch choices in pre-order; (2) the ops on that path are checked (puts with
//! `ignore_value`/`ignore_lease` need the key, leases must exist, range revisions must be
//! readable) so that a txn that would fail fails before writing anything; (3) the ops run
//! in one write transaction, at one main revision with increasing sub revisions, reads
//! seeing earlier writes.

use bytes::Bytes;

use crate::error::EtcdError;
use crate::mvcc::backend::Backend;
use crate::mvcc::key_index::KeyRange;
use crate::mvcc::store::{KvStore, RangeOptions, RangeResult, WriteTxn};
use crate::proto::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, CompactionResponse,
    Compare, DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashKvResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest,
    TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

/// How the KV layer asks whether a lease exists (the lessor implements it).
pub trait LeaseLookup {
    fn lease_exists(&self, lease_id: i64) -> bool;
}

/// A lessor with no leases: every nonzero lease is "not found".
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLeases;

impl LeaseLookup for NoLeases {
    fn lease_exists(&self, _lease_id: i64) -> bool {
        false
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn key_range<'a>(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
    KeyRange::from_request(key, range_end)
}

/// etcd's `applierV3backend.Range` over any reader (the store, or a write txn).
fn range_with(
    req: &RangeRequest,
    read: impl FnOnce(KeyRange<'_>, RangeOptions) -> Result<RangeResult, EtcdError>,
) -> Result<RangeResponse, EtcdError> {
    use range_request::{SortOrder, SortTarget};
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Sorting or filtering needs every match; otherwise fetch one extra to learn `more`.
    let fetch_limit = if req.sort_order != SortOrder::None as i32 || filtered || req.limit <= 0 {
        0
    } else {
        usize::try_from(req.limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    };
    let options = RangeOptions {
        limit: fetch_limit,
        revision: req.revision,
        count_only: req.count_only,
    };
    let result = read(key_range(&req.key, &req.range_end), options)?;
    let mut kvs = result.kvs;

    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }

    let target = SortTarget::try_from(req.sort_target).ok();
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if order == SortOrder::None && target.is_some_and(|t| t != SortTarget::Key) {
        // Results come in key order; any other target sorts ascending by default.
        order = SortOrder::Ascend;
    }
    if order != SortOrder::None {
        if let Some(target) = target {
            let cmp = |a: &KeyValue, b: &KeyValue| match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            // Stable: ties keep key order (etcd's sort is stable for small inputs only).
            match order {
                SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
                _ => kvs.sort_by(cmp),
            }
        }
    }

    let mut more = false;
    if req.limit > 0 && kvs.len() as u64 > req.limit as u64 {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    Ok(RangeResponse {
        header: header(result.revision),
        kvs,
        more,
        count: result.count as i64,
    })
}

fn put_in<B: Backend>(
    txn: &mut WriteTxn<'_, B>,
    req: &PutRequest,
) -> Result<PutResponse, EtcdError> {
    let needs_prev = req.ignore_value || req.ignore_lease || req.prev_kv;
    let prev = if needs_prev {
        txn.range(KeyRange::Single(&req.key), RangeOptions::default())?
            .kvs
            .pop()
    } else {
        None
    };
    if (req.ignore_value || req.ignore_lease) && prev.is_none() {
        return Err(EtcdError::KeyNotFound);
    }
    let value = match (&prev, req.ignore_value) {
        (Some(p), true) => p.value.clone(),
        _ => req.value.clone(),
    };
    let lease = match (&prev, req.ignore_lease) {
        (Some(p), true) => p.lease,
        _ => req.lease,
    };
    let revision = txn.put(req.key.clone(), value, lease)?;
    Ok(PutResponse {
        header: header(revision),
        prev_kv: if req.prev_kv { prev } else { None },
    })
}

fn delete_in<B: Backend>(
    txn: &mut WriteTxn<'_, B>,
    req: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, EtcdError> {
    let range = key_range(&req.key, &req.range_end);
    let prev_kvs = if req.prev_kv {
        txn.range(range, RangeOptions::default())?.kvs
    } else {
        Vec::new()
    };
    let (deleted, revision) = txn.delete_range(range)?;
    Ok(DeleteRangeResponse {
        header: header(revision),
        deleted,
        prev_kvs,
    })
}

/// etcd's `compareKV`: how one key-value fares against a compare.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(want)
        }
        Ok(target) => {
            let (have, want) = match (target, &c.target_union) {
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => {
                    (kv.create_revision, *v)
                }
                (CompareTarget::Create, _) => (kv.create_revision, 0),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => (kv.mod_revision, *v),
                (CompareTarget::Mod, _) => (kv.mod_revision, 0),
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => (kv.version, *v),
                (CompareTarget::Version, _) => (kv.version, 0),
                (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => (kv.lease, *v),
                (CompareTarget::Lease, _) => (kv.lease, 0),
                (CompareTarget::Value, _) => unreachable!("handled above"),
            };
            have.cmp(&want)
        }
        // An unknown target compares as equal, as etcd's switch falls through.
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => !ordering.is_eq(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

/// A request op's variant, so the txn code reads like etcd's type switch.
fn op_request(op: &RequestOp) -> Option<&request_op::Request> {
    op.request.as_ref()
}

impl<B: Backend> KvStore<B> {
    /// etcd's `applyCompare`: every key in the compare's range must satisfy it; a range
    /// with no keys compares a zero key-value (and always fails a VALUE compare).
    fn compare_holds(&self, c: &Compare) -> bool {
        let Ok(result) = self.range_keys(key_range(&c.key, &c.range_end), RangeOptions::default())
        else {
            return false;
        };
        if result.kvs.is_empty() {
            return c.target != compare::CompareTarget::Value as i32
                && compare_kv(c, &KeyValue::default());
        }
        result.kvs.iter().all(|kv| compare_kv(c, kv))
    }

    /// Pre-order list of branch choices: this txn's, then those of nested txns on the path.
    fn compare_to_path(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = req.compare.iter().all(|c| self.compare_holds(c));
        path.push(succeeded);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(t)) = op_request(op) {
                self.compare_to_path(t, path);
            }
        }
    }

    /// etcd's `checkRequests` with `checkRequestPut` and `checkRequestRange` along `path`.
    fn check_txn_ops(
        &self,
        req: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
        leases: &dyn LeaseLookup,
    ) -> Result<(), EtcdError> {
        let succeeded = path[*cursor];
        *cursor += 1;
        for op in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            match op_request(op) {
                Some(request_op::Request::RequestTxn(t)) => {
                    self.check_txn_ops(t, path, cursor, leases)?
                }
                Some(request_op::Request::RequestPut(p)) => {
                    if (p.ignore_value || p.ignore_lease)
                        && self
                            .range_keys(KeyRange::Single(&p.key), RangeOptions::default())?
                            .kvs
                            .is_empty()
                    {
                        return Err(EtcdError::KeyNotFound);
                    }
                    if p.lease != 0 && !leases.lease_exists(p.lease) {
                        return Err(EtcdError::LeaseNotFound);
                    }
                }
                Some(request_op::Request::RequestRange(r)) => {
                    if r.revision > self.current_revision() {
                        return Err(EtcdError::FutureRev);
                    }
                    if r.revision != 0 && r.revision < self.compact_revision() {
                        return Err(EtcdError::Compacted);
                    }
                }
                Some(request_op::Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    /// Range (serializable or not: the store answers both alike).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        range_with(req, |range, options| self.range_keys(range, options))
    }

    /// Put. A nonzero lease must exist in `leases`.
    pub fn put(
        &mut self,
        req: &PutRequest,
        leases: &dyn LeaseLookup,
    ) -> Result<PutResponse, EtcdError> {
        if req.lease != 0 && !leases.lease_exists(req.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        put_in(&mut self.write(), req)
    }

    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        delete_in(&mut self.write(), req)
    }

    /// Txn: compares, then the chosen branch at one revision.
    pub fn txn(
        &mut self,
        req: &TxnRequest,
        leases: &dyn LeaseLookup,
    ) -> Result<TxnResponse, EtcdError> {
        let mut path = Vec::new();
        self.compare_to_path(req, &mut path);
        self.check_txn_ops(req, &path, &mut 0, leases)?;
        let mut txn = self.write();
        let mut response = apply_txn(&mut txn, req, &path, &mut 0)?;
        response.header = header(txn.read_revision());
        Ok(response)
    }

    /// Compaction: logical and physical at once; the header carries the current revision.
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, EtcdError> {
        self.compact_to(req.revision)?;
        Ok(CompactionResponse {
            header: header(self.current_revision()),
        })
    }

    /// HashKV at `req.revision` (0: current); the header carries the current revision.
    pub fn hash_kv(&self, req: &HashKvRequest) -> Result<HashKvResponse, EtcdError> {
        let h = self.hash_by_rev(req.revision)?;
        Ok(HashKvResponse {
            header: header(h.current_revision),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: if req.revision > 0 {
                req.revision
            } else {
                h.current_revision
            },
        })
    }
}

/// etcd's `applyTxn`: runs the branch chosen by `path[*cursor]`; nested txn responses get
/// an empty header, as in etcd.
fn apply_txn<B: Backend>(
    txn: &mut WriteTxn<'_, B>,
    req: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
) -> Result<TxnResponse, EtcdError> {
    let succeeded = path[*cursor];
    *cursor += 1;
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op_request(op) {
            Some(request_op::Request::RequestRange(r)) => Some(
                response_op::Response::ResponseRange(range_with(r, |range, options| {
                    txn.range(range, options)
                })?),
            ),
            Some(request_op::Request::RequestPut(p)) => {
                Some(response_op::Response::ResponsePut(put_in(txn, p)?))
            }
            Some(request_op::Request::RequestDeleteRange(d)) => Some(
                response_op::Response::ResponseDeleteRange(delete_in(txn, d)?),
            ),
            Some(request_op::Request::RequestTxn(t)) => {
                let mut nested = apply_txn(txn, t, path, cursor)?;
                nested.header = Some(ResponseHeader::default());
                Some(response_op::Response::ResponseTxn(nested))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}
