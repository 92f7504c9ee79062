//! Fuzzes the server's decoding of every etcd request message: the first byte picks the
//! message, the rest is its encoding, decoded as the server decodes a client's request
//! (`tern::service::decode_request`: protobuf groups refused, then prost), with the
//! Txn nesting check the KV service runs first. Nothing may panic or overflow the stack
//! (run with `-max_len=200000` so that deep nesting is reachable); what decodes
//! re-encodes. Run: `cargo +nightly fuzz run etcd_requests -- -max_len=200000` in fuzz/.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tern::proto::etcdserverpb as pb;
use tern::proto::{v3electionpb as election, v3lockpb as lock};
use tern::service::decode_request;

fn decode<T: Message + Default + prost::Name>(bytes: Bytes) {
    if let Ok(message) = decode_request::<T>(bytes) {
        let _ = message.encode_to_vec();
    }
}

macro_rules! by_first_byte {
    ($which:expr, $bytes:expr, $($t:ty),* $(,)?) => {{
        let types: &[fn(Bytes)] = &[$(decode::<$t>),*];
        types[$which as usize % types.len()]($bytes)
    }};
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let bytes = Bytes::copy_from_slice(rest);
    let _ = tern::proto::txn_depth::txn_nesting_depth(rest, 129);
    by_first_byte!(
        which,
        bytes,
        pb::RangeRequest,
        pb::PutRequest,
        pb::DeleteRangeRequest,
        pb::TxnRequest,
        pb::CompactionRequest,
        pb::WatchRequest,
        pb::LeaseGrantRequest,
        pb::LeaseRevokeRequest,
        pb::LeaseKeepAliveRequest,
        pb::LeaseTimeToLiveRequest,
        pb::LeaseLeasesRequest,
        pb::MemberAddRequest,
        pb::MemberRemoveRequest,
        pb::MemberUpdateRequest,
        pb::MemberListRequest,
        pb::MemberPromoteRequest,
        pb::DefragmentRequest,
        pb::MoveLeaderRequest,
        pb::AlarmRequest,
        pb::DowngradeRequest,
        pb::StatusRequest,
        pb::HashRequest,
        pb::HashKvRequest,
        pb::SnapshotRequest,
        pb::AuthEnableRequest,
        pb::AuthDisableRequest,
        pb::AuthStatusRequest,
        pb::AuthenticateRequest,
        pb::AuthUserAddRequest,
        pb::AuthUserGetRequest,
        pb::AuthUserDeleteRequest,
        pb::AuthUserChangePasswordRequest,
        pb::AuthUserGrantRoleRequest,
        pb::AuthUserRevokeRoleRequest,
        pb::AuthRoleAddRequest,
        pb::AuthRoleGetRequest,
        pb::AuthUserListRequest,
        pb::AuthRoleListRequest,
        pb::AuthRoleDeleteRequest,
        pb::AuthRoleGrantPermissionRequest,
        pb::AuthRoleRevokePermissionRequest,
        lock::LockRequest,
        lock::UnlockRequest,
        election::CampaignRequest,
        election::LeaderRequest,
        election::ResignRequest,
        election::ProclaimRequest,
    );
});
