//! What the Lease service asks of the state executor (one variant per etcd Lease RPC;
//! `Renew` is one keep-alive request of a KeepAlive stream).

use crate::proto::etcdserverpb as pb;
use crate::state::client::Reply;
use crate::state::envelope::LeaseCheckpoints;

pub enum LeaseCommand {
    Grant(pb::LeaseGrantRequest, Reply<pb::LeaseGrantResponse>),
    Revoke(pb::LeaseRevokeRequest, Reply<pb::LeaseRevokeResponse>),
    Renew(pb::LeaseKeepAliveRequest, Reply<pb::LeaseKeepAliveResponse>),
    TimeToLive(
        pb::LeaseTimeToLiveRequest,
        Reply<pb::LeaseTimeToLiveResponse>,
    ),
    Leases(Reply<pb::LeaseLeasesResponse>),
    /// The leader's checkpoints, applied from a committed raft entry on every member.
    Checkpoint(LeaseCheckpoints, Reply<()>),
}
