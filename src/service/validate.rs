//! Request checks etcd makes at the API layer, before a request is proposed to raft
//! (`etcdserver/api/v3rpc/key.go`: `checkRangeRequest`, `checkPutRequest`,
//! `checkDeleteRequest`, `checkTxnRequest`, `checkIntervals`).
//!
//! These depend only on the request, never on the store, so every member answers them
//! alike without consulting raft.

use std::cmp::Ordering;
use std::collections::HashSet;

use bytes::Bytes;

use crate::error::EtcdError;
use crate::proto::etcdserverpb::{
    range_request, request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS_DEFAULT: usize = 128;

pub fn check_range(req: &RangeRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    // etcd 3.4 crashes on an unknown sort target; 3.6 rejects unknown enums like this.
    if range_request::SortOrder::try_from(req.sort_order).is_err()
        || range_request::SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(req: &PutRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete_range(req: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// All of etcd's txn checks, in its order: op counts and per-op checks first, then
/// put/delete overlaps in the success branch, then in the failure branch.
///
/// `max_txn_ops` bounds each of `compare`, `success` and `failure` separately. Nested
/// txns are checked against what is left of the bound after the outer level, as etcd does.
/// Nesting depth is bounded before decoding, by [`check_txn_depth`].
pub fn check_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn_request(req, i64::try_from(max_txn_ops).unwrap_or(i64::MAX))?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

/// etcd's answer to a txn nested deeper than its op budget could ever allow, given on the
/// encoded request before it is decoded: each level spends at least one op of
/// `max_txn_ops` on the level below it, and the innermost may have none, so more than
/// `max_txn_ops + 1` levels always end in etcd's "too many operations". Also refuses, with
/// the same error, nesting beyond `TXN_NESTING_MAX` (tern's stack bound; etcd has none).
/// Deviation: for a txn that deep etcd would report an error met earlier in its
/// depth-first check (an empty compare key above, say) first; this check answers
/// TooManyOps for it.
pub fn check_txn_depth(encoded: &[u8], max_txn_ops: usize) -> Result<(), EtcdError> {
    use crate::proto::txn_depth::{txn_nesting_depth, TXN_NESTING_MAX};
    let allowed = max_txn_ops.saturating_add(1).min(TXN_NESTING_MAX);
    match txn_nesting_depth(encoded, allowed) {
        Some(depth) if depth > allowed => Err(EtcdError::TooManyOps),
        // Malformed bytes: prost's decode gives etcd's unmarshalling error.
        _ => Ok(()),
    }
}

fn check_txn_request(req: &TxnRequest, max_txn_ops: i64) -> Result<(), EtcdError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len()) as i64;
    if ops > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        check_request_op(op, max_txn_ops - ops)?;
    }
    Ok(())
}

fn check_request_op(op: &RequestOp, max_txn_ops: i64) -> Result<(), EtcdError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(r)) => check_put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_delete_range(r),
        Some(request_op::Request::RequestTxn(t)) => check_txn_request(t, max_txn_ops),
        // An empty op: etcd answers "key not found".
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A key interval `[begin, end)` compared as etcd's `StringAffineComparable`: an empty
/// `end` is greater than every key.
#[derive(Clone, Debug)]
struct Interval {
    begin: Bytes,
    end: Bytes,
}

fn affine_cmp(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

impl Interval {
    fn point(key: &Bytes) -> Interval {
        let mut end = key.to_vec();
        end.push(0);
        Interval {
            begin: key.clone(),
            end: end.into(),
        }
    }

    /// etcd's `Interval.Compare(...) == 0`. Note that a delete with `range_end = "\0"`
    /// (from-key) becomes `[key, "\0")`, which etcd's check never finds overlapping.
    fn overlaps(&self, other: &Interval) -> bool {
        let left_of = affine_cmp(&self.begin, &other.begin).is_lt()
            && affine_cmp(&self.end, &other.begin).is_le();
        let right_of = affine_cmp(&self.begin, &other.end).is_ge();
        !left_of && !right_of
    }
}

fn intersects(dels: &[Interval], key: &Bytes) -> bool {
    let p = Interval::point(key);
    dels.iter().any(|d| p.overlaps(d))
}

/// etcd's `checkIntervals`: no key may be put twice, or put and deleted, within one txn
/// branch, including in nested txns (whose two branches may put the same key).
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<Interval>), EtcdError> {
    let mut dels: Vec<Interval> = Vec::new();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            let iv = if d.range_end.is_empty() {
                Interval::point(&d.key)
            } else {
                Interval {
                    begin: d.key.clone(),
                    end: d.range_end.clone(),
                }
            };
            dels.push(iv);
        }
    }

    let mut puts: HashSet<Bytes> = HashSet::new();
    let everything = Interval {
        begin: Bytes::from_static(b"\0"),
        end: Bytes::new(),
    };
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || intersects(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            // The same key in both branches is fine: only one branch runs.
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(EtcdError::DuplicateKey);
            }
            if intersects(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(
            dels_then
                .into_iter()
                .chain(dels_else)
                .filter(|d| everything.overlaps(d)),
        );
    }

    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || intersects(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}
