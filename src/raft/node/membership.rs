//! Membership: the Cluster service's member add/remove/update/promote and MoveLeader as
//! conf changes or transfers, with etcd's safety checks (learner limit, quorum kept
//! after a removal, a learner ready only once caught up); publishing this member's
//! attributes; and applying committed conf changes to raft and the member list.

use std::time::Instant;

use futures::channel::oneshot;
use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType};

use crate::error::EtcdError;
use crate::membership::cluster::MemberRecord;
use crate::proto::etcdserverpb as pb;
use crate::raft::transport;
use crate::state::envelope::{Body, Envelope, MemberOp};

use super::*;

/// A MoveLeader waiting for its transferee to lead: (transferee, reply, deadline).
pub(super) type LeaderTransfer = (
    u64,
    oneshot::Sender<Result<pb::MoveLeaderResponse, EtcdError>>,
    Instant,
);

/// etcd's `maxLearners`.
const MAX_LEARNERS: usize = 1;

/// etcd's `readyPercent` for promoting a learner.
const LEARNER_READY_FRACTION: f64 = 0.9;

impl Node {
    /// Proposes a membership change; `reply` is answered when it applies.
    pub fn propose_member_change(
        &mut self,
        op: MemberOp,
        member: MemberRecord,
        reply: MemberReply,
    ) {
        let request_id = self.new_request_id();
        let data = Envelope::member(request_id, self.id, op, member.clone()).encode_to_vec();
        let conf_change = match op {
            MemberOp::Add | MemberOp::Remove | MemberOp::Promote => {
                // The member rides in the ConfChange's own context, so that it is in the
                // entry's data (raft-rs keeps the proposal context outside of it).
                let mut cc = ConfChange {
                    context: data.clone().into(),
                    ..Default::default()
                };
                cc.set_change_type(match op {
                    MemberOp::Remove => ConfChangeType::RemoveNode,
                    MemberOp::Add if member.is_learner => ConfChangeType::AddLearnerNode,
                    _ => ConfChangeType::AddNode,
                });
                cc.node_id = member.id;
                Some(cc)
            }
            _ => None,
        };
        self.propose(request_id, data, conf_change, Waiter::Member(reply));
        self.wake.wake();
    }

    /// etcd's `IsReadyToAddVotingMember`: after adding one more voter, the started
    /// voters must still form a quorum (adding a second member to a one-member cluster is
    /// allowed, for restoring a cluster).
    fn ready_to_add_voter(&self) -> bool {
        let voters: Vec<&MemberRecord> = self
            .membership
            .members
            .values()
            .filter(|m| !m.is_learner)
            .collect();
        let members = voters.len() + 1;
        let started = voters.iter().filter(|m| !m.name.is_empty()).count();
        if started == 1 && members == 2 {
            return true;
        }
        started > members / 2
    }

    /// etcd's `IsReadyToRemoveVotingMember`.
    fn ready_to_remove_voter(&self, id: u64) -> bool {
        let others: Vec<&MemberRecord> = self
            .membership
            .members
            .values()
            .filter(|m| !m.is_learner && m.id != id)
            .collect();
        let started = others.iter().filter(|m| !m.name.is_empty()).count();
        started > others.len() / 2
    }

    pub(super) fn member_add(
        &mut self,
        req: pb::MemberAddRequest,
        reply: oneshot::Sender<Result<pb::MemberAddResponse, EtcdError>>,
    ) {
        if req.peer_ur_ls.is_empty()
            || req
                .peer_ur_ls
                .iter()
                .any(|u| transport::resolve_checked(u).is_none())
        {
            let _ = reply.send(Err(EtcdError::MemberBadUrls));
            return;
        }
        if req.is_learner && self.membership.learners() >= MAX_LEARNERS {
            let _ = reply.send(Err(EtcdError::TooManyLearners));
            return;
        }
        if !req.is_learner && !self.ready_to_add_voter() {
            let _ = reply.send(Err(EtcdError::MemberNotEnoughStarted));
            return;
        }
        if self.membership.peer_url_taken(&req.peer_ur_ls, 0) {
            let _ = reply.send(Err(EtcdError::PeerUrlExist));
            return;
        }
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let id = crate::membership::id::member_id(
            &req.peer_ur_ls,
            &self.options.cluster_token,
            Some(now_secs),
        );
        if self.membership.members.contains_key(&id) || self.membership.removed.contains(&id) {
            let _ = reply.send(Err(EtcdError::MemberExist));
            return;
        }
        let member = MemberRecord {
            id,
            peer_urls: req.peer_ur_ls,
            is_learner: req.is_learner,
            ..Default::default()
        };
        self.propose_member_change(MemberOp::Add, member, MemberReply::Add(reply));
    }

    pub(super) fn member_remove(
        &mut self,
        req: pb::MemberRemoveRequest,
        reply: oneshot::Sender<Result<pb::MemberRemoveResponse, EtcdError>>,
    ) {
        let Some(member) = self.membership.members.get(&req.id).cloned() else {
            let _ = reply.send(Err(EtcdError::MemberNotFound));
            return;
        };
        if !member.is_learner && !self.ready_to_remove_voter(member.id) {
            let _ = reply.send(Err(EtcdError::MemberNotEnoughStarted));
            return;
        }
        self.propose_member_change(MemberOp::Remove, member, MemberReply::Remove(reply));
    }

    pub(super) fn member_update(
        &mut self,
        req: pb::MemberUpdateRequest,
        reply: oneshot::Sender<Result<pb::MemberUpdateResponse, EtcdError>>,
    ) {
        let Some(member) = self.membership.members.get(&req.id).cloned() else {
            let _ = reply.send(Err(EtcdError::MemberNotFound));
            return;
        };
        if req.peer_ur_ls.is_empty()
            || req
                .peer_ur_ls
                .iter()
                .any(|u| transport::resolve_checked(u).is_none())
        {
            let _ = reply.send(Err(EtcdError::MemberBadUrls));
            return;
        }
        if self.membership.peer_url_taken(&req.peer_ur_ls, req.id) {
            let _ = reply.send(Err(EtcdError::PeerUrlExist));
            return;
        }
        let member = MemberRecord {
            peer_urls: req.peer_ur_ls,
            ..member
        };
        self.propose_member_change(MemberOp::Update, member, MemberReply::Update(reply));
    }

    pub(super) fn member_promote(
        &mut self,
        req: pb::MemberPromoteRequest,
        reply: oneshot::Sender<Result<pb::MemberPromoteResponse, EtcdError>>,
    ) {
        let Some(member) = self.membership.members.get(&req.id).cloned() else {
            let _ = reply.send(Err(EtcdError::MemberNotFound));
            return;
        };
        // etcd's isLearnerReady: the learner's log must match at least 90% of the leader's.
        // Checked before the learner flag, as etcd's leader does (`mayPromoteMember`; the
        // flag is checked when the change applies): a learner whose flag a MemberUpdate
        // cleared (etcd 3.4's quirk, reproduced in ready.rs) is "not in sync" first.
        if self.is_leader() {
            let leader_match = self.matched_index(self.id).unwrap_or(0);
            let learner_match = self.matched_index(member.id).unwrap_or(0);
            if (learner_match as f64) < (leader_match as f64) * LEARNER_READY_FRACTION {
                let _ = reply.send(Err(EtcdError::LearnerNotReady));
                return;
            }
        }
        if !member.is_learner {
            let _ = reply.send(Err(EtcdError::MemberNotLearner));
            return;
        }
        if !self.ready_to_add_voter() {
            let _ = reply.send(Err(EtcdError::MemberNotEnoughStarted));
            return;
        }
        self.propose_member_change(MemberOp::Promote, member, MemberReply::Promote(reply));
    }

    /// Maintenance.MoveLeader (etcd `MoveLeader`): only the leader transfers, only to a
    /// voting member; answered once the transferee leads, or with etcd's timeout error.
    pub(super) fn move_leader(
        &mut self,
        req: pb::MoveLeaderRequest,
        reply: oneshot::Sender<Result<pb::MoveLeaderResponse, EtcdError>>,
    ) {
        let is_voter = self
            .membership
            .members
            .get(&req.target_id)
            .is_some_and(|m| !m.is_learner);
        if !is_voter {
            let _ = reply.send(Err(EtcdError::BadLeaderTransferee));
            return;
        }
        if !self.is_leader() {
            let _ = reply.send(Err(EtcdError::NotLeader));
            return;
        }
        if req.target_id == self.id {
            // etcd answers an empty MoveLeaderResponse: no header.
            let _ = reply.send(Ok(pb::MoveLeaderResponse { header: None }));
            return;
        }
        crate::info!("leadership transfer starting", "transferee" => format!("{:x}", req.target_id));
        self.raw.transfer_leader(req.target_id);
        let deadline = Instant::now() + self.request_timeout();
        self.leader_transfers.push((req.target_id, reply, deadline));
    }

    pub(super) fn finish_leader_transfers(&mut self, now: Instant) {
        let leader = self.leader_id;
        let mut keep = Vec::new();
        for (target, reply, deadline) in self.leader_transfers.drain(..) {
            if leader == target {
                let _ = reply.send(Ok(pb::MoveLeaderResponse { header: None }));
            } else if now >= deadline {
                let _ = reply.send(Err(EtcdError::TimeoutLeaderTransfer));
            } else {
                keep.push((target, reply, deadline));
            }
        }
        self.leader_transfers = keep;
    }

    /// Applied index of a member as the leader's progress tracker sees it (for promote).
    pub fn matched_index(&self, member_id: u64) -> Option<u64> {
        self.raw.raft.prs().get(member_id).map(|p| p.matched)
    }

    /// etcd's `publish` (each member announces its name and client URLs once started) and
    /// the leader's cluster-version entry.
    pub(super) fn maybe_publish(&mut self, now: Instant) {
        if self.leader_id == 0 || !self.membership.members.contains_key(&self.id) {
            return;
        }
        let retry_after = self.request_timeout();
        if !self.published
            && self
                .publish_proposed_at
                .is_none_or(|at| now.duration_since(at) >= retry_after)
        {
            self.publish_proposed_at = Some(now);
            let identity = self.state.borrow_mut().identity().clone();
            let request_id = self.new_request_id();
            let env = Envelope::member(
                request_id,
                self.id,
                MemberOp::Publish,
                MemberRecord {
                    id: self.id,
                    name: identity.name.clone(),
                    client_urls: identity.client_urls.clone(),
                    ..Default::default()
                },
            );
            self.propose(request_id, env.encode_to_vec(), None, Waiter::Publish);
        }
        if self.is_leader()
            && self.membership.cluster_version.is_none()
            && self
                .version_proposed_at
                .is_none_or(|at| now.duration_since(at) >= retry_after)
        {
            self.version_proposed_at = Some(now);
            crate::info!("setting up initial cluster version", "cluster-version" => "3.4");
            let request_id = self.new_request_id();
            let env = Envelope::new(
                request_id,
                self.id,
                Body::ClusterVersion("3.4.0".to_string()),
            );
            self.propose(
                request_id,
                env.encode_to_vec(),
                None,
                Waiter::ClusterVersion,
            );
        }
    }

    pub(super) fn apply_conf_change(&mut self, raft_index: u64, data: &[u8]) {
        // An undecodable conf change stops the member, as etcd's `MustUnmarshal` does:
        // skipping it would leave this member with another configuration than the rest.
        let parsed = crate::raft::codec::decode_conf_change(data);
        let cc = match parsed {
            Ok(cc) => cc,
            Err(e) => crate::fatal!(
                "failed to decode a committed raft entry",
                "raft-index" => raft_index,
                "entry-type" => "EntryConfChange",
                "error" => e.to_string()
            ),
        };
        let env = match Envelope::decode_entry(&cc.context[..]) {
            Ok(env) => env,
            Err(e) => crate::fatal!(
                "failed to decode a committed raft entry",
                "raft-index" => raft_index,
                "entry-type" => "EntryConfChange",
                "error" => format!("conf change context: {e}")
            ),
        };
        let member = match env.body {
            Some(Body::Member(member)) if member.id == cc.node_id => member,
            _ => crate::fatal!(
                "failed to decode a committed raft entry",
                "raft-index" => raft_index,
                "entry-type" => "EntryConfChange",
                "error" => "conf change context carries no member of the changed node id"
            ),
        };
        let waiter = if env.origin_member_id == self.id && env.request_id != 0 {
            self.pending.remove(&env.request_id).map(|p| p.waiter)
        } else {
            None
        };
        let removed_before = self.membership.removed.contains(&cc.node_id);
        if removed_before {
            // etcd refuses ConfChanges for removed IDs at apply time (ErrIDRemoved).
            self.mark_applied(raft_index);
            if let Some(w) = waiter {
                self.answer_error(w, EtcdError::MemberNotFound);
            }
            return;
        }
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => self.log.set_conf_state(cs),
            Err(e) => crate::warn!("raft refused a ConfChange", "error" => e.to_string()),
        }
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let is_learner = cc.get_change_type() == ConfChangeType::AddLearnerNode;
                if let Some(existing) = self.membership.members.get(&cc.node_id) {
                    if existing.is_learner && !is_learner {
                        self.membership.promote(cc.node_id);
                        crate::info!("promoted a learner member", "promoted-member-id" => format!("{:x}", cc.node_id));
                    }
                } else {
                    let record = MemberRecord {
                        id: cc.node_id,
                        is_learner,
                        ..member
                    };
                    crate::info!(
                        "added member",
                        "added-peer-id" => format!("{:x}", record.id),
                        "added-peer-peer-urls" => record.peer_urls.join(",")
                    );
                    if record.id != self.id {
                        self.transport.set_peer(record.id, record.peer_urls.clone());
                    }
                    self.membership.add(record);
                }
            }
            ConfChangeType::RemoveNode => {
                self.membership.remove(cc.node_id);
                self.transport.remove_peer(cc.node_id);
                self.heartbeats.forget(cc.node_id);
                crate::info!("removed member", "removed-member-id" => format!("{:x}", cc.node_id));
                if cc.node_id == self.id {
                    crate::warn!("the member has been permanently removed from the cluster");
                    self.removed_at = Some(Instant::now());
                    let waiting: Vec<u64> = self.pending.keys().copied().collect();
                    for id in waiting {
                        if let Some(p) = self.pending.remove(&id) {
                            self.answer_error(p.waiter, EtcdError::Stopped);
                        }
                    }
                    self.unproposed.clear();
                }
            }
        }
        self.mark_applied(raft_index);
        if let Some(Waiter::Member(reply)) = waiter {
            let header = Some(self.header());
            let members = self.membership.list();
            match reply {
                MemberReply::Add(r) => {
                    let added = self
                        .membership
                        .members
                        .get(&cc.node_id)
                        .map(MemberRecord::to_pb);
                    let _ = r.send(Ok(pb::MemberAddResponse {
                        header,
                        member: added,
                        members,
                    }));
                }
                MemberReply::Remove(r) => {
                    drop(r.send(Ok(pb::MemberRemoveResponse { header, members })))
                }
                MemberReply::Promote(r) => {
                    crate::metrics::STATE
                        .learner_promote_successes
                        .add(1, false);
                    drop(r.send(Ok(pb::MemberPromoteResponse { header, members })))
                }
                MemberReply::Update(r) => {
                    drop(r.send(Ok(pb::MemberUpdateResponse { header, members })))
                }
            }
        }
    }

    /// Refreshes what this member tells joining members.
    pub(super) fn refresh_members_answer(&mut self) {
        let answer = transport::MembersResponse {
            cluster_id: self.cluster_id,
            members: self.membership.members.values().cloned().collect(),
        };
        *self.transport.members_answer.borrow_mut() = answer.encode_to_vec();
    }
}
