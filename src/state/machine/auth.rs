//! The state machine's auth part: the permission checks of every key request (etcd's
//! `authApplierV3` and `checkTxnAuth`), and the Auth service's ops.
//!
//! Checks run where the request is served: reads when they are answered, writes when
//! their committed entry applies, against the caller the entry names. So every member
//! decides the same, and a permission revoked before a write's entry applies refuses
//! that write ("revision of auth store is old" when the caller was checked before).
//!
//! A txn is checked whole before it runs: every compare (read), every request of both
//! branches, and every nested txn at any depth, whichever branch will run, as etcd
//! does. (etcd 3.4 skipped nested txns, CVE-2026-33343; here they recurse. The depth is
//! bounded by prost's decoding recursion limit, so untrusted nesting cannot overflow.)

use std::time::Instant;

use crate::auth::{Access, AuthOp, AuthReply, Caller};
use crate::error::EtcdError;
use crate::proto::etcdserverpb as pb;
use crate::state::client::Reply;

use super::StateMachine;

impl StateMachine {
    /// `[key, range_end)` with `access` for the current caller.
    pub(super) fn check_keys(
        &self,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), EtcdError> {
        self.auth.check_keys(&self.caller, key, range_end, access)
    }

    pub(super) fn check_admin(&self) -> Result<(), EtcdError> {
        self.auth.check_admin(&self.caller)
    }

    pub(super) fn check_range(&self, req: &pb::RangeRequest) -> Result<(), EtcdError> {
        self.check_keys(&req.key, &req.range_end, Access::Read)
    }

    /// A put needs write on its key, read too with `prev_kv`, and write on every key
    /// already attached to its lease: a user that could not revoke the lease must not
    /// attach more to it (etcd's `checkLeasePuts`).
    pub(super) fn check_put(&self, req: &pb::PutRequest) -> Result<(), EtcdError> {
        self.check_keys(&req.key, &[], Access::Write)?;
        if req.prev_kv {
            self.check_keys(&req.key, &[], Access::Read)?;
        }
        if req.lease != 0 {
            self.check_lease_keys(req.lease, Access::Write)?;
        }
        Ok(())
    }

    pub(super) fn check_delete_range(&self, req: &pb::DeleteRangeRequest) -> Result<(), EtcdError> {
        self.check_keys(&req.key, &req.range_end, Access::Write)?;
        if req.prev_kv {
            self.check_keys(&req.key, &req.range_end, Access::Read)?;
        }
        Ok(())
    }

    pub(super) fn check_txn(&self, req: &pb::TxnRequest) -> Result<(), EtcdError> {
        use pb::request_op::Request;
        if !self.auth.is_enabled() || self.caller == Caller::Internal {
            return Ok(());
        }
        for compare in &req.compare {
            self.check_keys(&compare.key, &compare.range_end, Access::Read)?;
        }
        for op in req.success.iter().chain(req.failure.iter()) {
            match &op.request {
                Some(Request::RequestRange(r)) => self.check_range(r)?,
                Some(Request::RequestPut(r)) => self.check_put(r)?,
                Some(Request::RequestDeleteRange(r)) => self.check_delete_range(r)?,
                Some(Request::RequestTxn(t)) => self.check_txn(t)?,
                None => {}
            }
        }
        Ok(())
    }

    /// `access` on every key attached to lease `id` (none if it does not exist: the
    /// request then fails on its own). Root-role users pass without a key walk.
    pub(super) fn check_lease_keys(&self, id: i64, access: Access) -> Result<(), EtcdError> {
        if !self.auth.is_enabled() || self.check_admin().is_ok() {
            return Ok(());
        }
        let Some(lease) = self.lessor.lookup(id) else {
            return Ok(());
        };
        for key in &lease.keys {
            self.check_keys(key, &[], access)?;
        }
        Ok(())
    }

    /// An Auth service op: a read answered now, or a committed entry applied.
    pub(super) fn handle_auth(&mut self, op: AuthOp, reply: Reply<AuthReply>) {
        let changes = !op.is_read();
        if changes {
            self.advance_applied_index();
        }
        let raft_index = self.raft_applied_index;
        let caller = self.caller.clone();
        let res = self
            .auth
            .apply(
                self.store.backend_mut(),
                &caller,
                op,
                raft_index,
                Instant::now(),
            )
            .map(|mut r| {
                r.set_header(self.header(self.store.current_revision()));
                r
            });
        self.reply(reply, res);
    }
}
