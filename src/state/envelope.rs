//! What a raft entry's data holds: tern's counterpart of etcd's `InternalRaftRequest`.
//!
//! A normal entry's data is one prost-encoded [`Envelope`]; a ConfChange entry's context
//! is one too (carrying the member being changed). The `request_id` together with the
//! `origin_member_id` names the waiting client on the member that proposed the entry: only
//! that member answers it, once the entry is committed and applied. The format is part of
//! the peer protocol and the WAL contents (see docs/peer-protocol.md, "Entry data").

use crate::membership::cluster::MemberRecord;
use crate::proto::etcdserverpb as pb;

/// Which membership operation a member-carrying envelope performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum MemberOp {
    None = 0,
    Add = 1,
    Remove = 2,
    Update = 3,
    Promote = 4,
    /// A member announcing its name and client URLs after start (etcd `publish`).
    Publish = 5,
}

/// One proposal. Exactly one of the request fields is set, or none for an entry that only
/// carries `member` or `cluster_version`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    #[prost(uint64, tag = "2")]
    pub origin_member_id: u64,
    #[prost(message, optional, tag = "3")]
    pub put: Option<pb::PutRequest>,
    #[prost(message, optional, tag = "4")]
    pub delete_range: Option<pb::DeleteRangeRequest>,
    #[prost(message, optional, tag = "5")]
    pub txn: Option<pb::TxnRequest>,
    #[prost(message, optional, tag = "6")]
    pub compaction: Option<pb::CompactionRequest>,
    #[prost(message, optional, tag = "7")]
    pub member: Option<MemberRecord>,
    #[prost(enumeration = "MemberOp", tag = "8")]
    pub member_op: i32,
    #[prost(string, tag = "9")]
    pub cluster_version: String,
    /// LeaseGrant with the id the proposing member chose (never 0).
    #[prost(message, optional, tag = "10")]
    pub lease_grant: Option<pb::LeaseGrantRequest>,
    /// LeaseRevoke: a client's, or the leader's for an expired lease.
    #[prost(message, optional, tag = "11")]
    pub lease_revoke: Option<pb::LeaseRevokeRequest>,
    /// The leader's lease checkpoints (etcd's `LeaseCheckpointRequest`).
    #[prost(message, optional, tag = "12")]
    pub lease_checkpoint: Option<LeaseCheckpoints>,
    /// Alarm ACTIVATE or DEACTIVATE (GET is a read and never proposed).
    #[prost(message, optional, tag = "13")]
    pub alarm: Option<pb::AlarmRequest>,
}

/// One lease's remaining TTL as the leader saw it (etcd's `LeaseCheckpoint`); 0 clears it.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct LeaseCheckpoint {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub remaining_ttl_secs: i64,
}

/// A batch of checkpoints carried by one entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpoints {
    #[prost(message, repeated, tag = "1")]
    pub checkpoints: Vec<LeaseCheckpoint>,
}

/// A Lease request a follower forwards to the leader over the peer transport
/// (docs/peer-protocol.md, "Lease forwarding"): exactly one field is set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseForward {
    #[prost(message, optional, tag = "1")]
    pub renew: Option<pb::LeaseKeepAliveRequest>,
    #[prost(message, optional, tag = "2")]
    pub time_to_live: Option<pb::LeaseTimeToLiveRequest>,
}

/// The leader's answer to a [`LeaseForward`]: the response, or `error` holding the text of
/// an etcd error (`EtcdError::message`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseForwardResponse {
    #[prost(message, optional, tag = "1")]
    pub renew: Option<pb::LeaseKeepAliveResponse>,
    #[prost(message, optional, tag = "2")]
    pub time_to_live: Option<pb::LeaseTimeToLiveResponse>,
    #[prost(string, tag = "3")]
    pub error: String,
}
