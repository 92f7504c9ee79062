//! One etcd 3.4 raft entry translated into the tern entry that does the same, at the same
//! raft index and term (`docs/migration.md`, "Entries").
//!
//! etcd's entry data is an `InternalRaftRequest` (or, for the v2 requests etcd 3.4 still
//! proposes to publish a member and set the cluster version, a bare v2 `Request`); tern's
//! is an [`Envelope`]. The KV, lease, alarm, compaction and auth requests inside are the
//! same etcdserverpb messages in both, so they move over unchanged; the differences are:
//! - a ConfChange's context is JSON of etcd's `Member` there, an envelope here; etcd's
//!   `ConfChangeUpdateNode` is a normal member-update entry in tern;
//! - a 3.4 `AuthUserAdd`/`AuthUserChangePassword` carries the password, which etcd 3.4
//!   hashes when it applies the entry; tern's entries carry the hash, so the conversion
//!   hashes it (bcrypt, etcd's cost 10);
//! - requests with no lasting effect in tern (v2 store writes, which tern's v3 API never
//!   shows, serializable `Range`s and `Authenticate`, whose token lives in memory only) become
//!   empty entries, so the raft log keeps every index.
//!
//! Invariant: the translation depends on the entry's bytes alone, so every member of a
//! converted cluster translates its copy of an entry to the same tern entry.

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType};

use crate::auth::{AuthInfo, AuthOp, AuthRequest};
use crate::membership::cluster::MemberRecord;
use crate::proto::etcdserverpb as pb;
use crate::state::envelope::{Body, Envelope, LeaseCheckpoints, MemberOp};

/// etcd 3.4's bcrypt cost (`bcrypt.DefaultCost`), used for passwords found in its WAL.
const ETCD_BCRYPT_COST: u32 = 10;

/// etcd's `RequestHeader`.
#[derive(Clone, PartialEq, prost::Message)]
struct RequestHeader {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    username: String,
    #[prost(uint64, tag = "3")]
    auth_revision: u64,
}

/// etcd's v2 `Request`, the fields tern reads.
#[derive(Clone, PartialEq, prost::Message)]
struct V2Request {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    method: String,
    #[prost(string, tag = "3")]
    path: String,
    #[prost(string, tag = "4")]
    val: String,
}

/// etcd's `InternalAuthenticateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct InternalAuthenticate {
    #[prost(string, tag = "1")]
    name: String,
}

/// etcd 3.5's `membershippb.ClusterVersionSetRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterVersionSet {
    #[prost(string, tag = "1")]
    ver: String,
}

/// etcd 3.5's `membershippb.Attributes`.
#[derive(Clone, PartialEq, prost::Message)]
struct MemberAttributes {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "2")]
    client_urls: Vec<String>,
}

/// etcd 3.5's `membershippb.ClusterMemberAttrSetRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterMemberAttrSet {
    #[prost(uint64, tag = "1")]
    member_id: u64,
    #[prost(message, optional, tag = "2")]
    member_attributes: Option<MemberAttributes>,
}

/// etcd's `InternalRaftRequest` (3.4's fields, and the two 3.5 membership ones an etcd
/// upgraded from 3.4 may have written; our definition, etcd's field numbers).
#[derive(Clone, PartialEq, prost::Message)]
struct InternalRaftRequest {
    #[prost(message, optional, tag = "100")]
    header: Option<RequestHeader>,
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, optional, tag = "2")]
    v2: Option<V2Request>,
    #[prost(message, optional, tag = "3")]
    range: Option<pb::RangeRequest>,
    #[prost(message, optional, tag = "4")]
    put: Option<pb::PutRequest>,
    #[prost(message, optional, tag = "5")]
    delete_range: Option<pb::DeleteRangeRequest>,
    #[prost(message, optional, tag = "6")]
    txn: Option<pb::TxnRequest>,
    #[prost(message, optional, tag = "7")]
    compaction: Option<pb::CompactionRequest>,
    #[prost(message, optional, tag = "8")]
    lease_grant: Option<pb::LeaseGrantRequest>,
    #[prost(message, optional, tag = "9")]
    lease_revoke: Option<pb::LeaseRevokeRequest>,
    #[prost(message, optional, tag = "10")]
    alarm: Option<pb::AlarmRequest>,
    /// etcd's `LeaseCheckpointRequest` has tern's `LeaseCheckpoints` shape.
    #[prost(message, optional, tag = "11")]
    lease_checkpoint: Option<LeaseCheckpoints>,
    #[prost(message, optional, tag = "1000")]
    auth_enable: Option<pb::AuthEnableRequest>,
    #[prost(message, optional, tag = "1011")]
    auth_disable: Option<pb::AuthDisableRequest>,
    #[prost(message, optional, tag = "1012")]
    authenticate: Option<InternalAuthenticate>,
    #[prost(message, optional, tag = "1100")]
    auth_user_add: Option<pb::AuthUserAddRequest>,
    #[prost(message, optional, tag = "1101")]
    auth_user_delete: Option<pb::AuthUserDeleteRequest>,
    #[prost(message, optional, tag = "1102")]
    auth_user_get: Option<pb::AuthUserGetRequest>,
    #[prost(message, optional, tag = "1103")]
    auth_user_change_password: Option<pb::AuthUserChangePasswordRequest>,
    #[prost(message, optional, tag = "1104")]
    auth_user_grant_role: Option<pb::AuthUserGrantRoleRequest>,
    #[prost(message, optional, tag = "1105")]
    auth_user_revoke_role: Option<pb::AuthUserRevokeRoleRequest>,
    #[prost(message, optional, tag = "1106")]
    auth_user_list: Option<pb::AuthUserListRequest>,
    #[prost(message, optional, tag = "1107")]
    auth_role_list: Option<pb::AuthRoleListRequest>,
    #[prost(message, optional, tag = "1200")]
    auth_role_add: Option<pb::AuthRoleAddRequest>,
    #[prost(message, optional, tag = "1201")]
    auth_role_delete: Option<pb::AuthRoleDeleteRequest>,
    #[prost(message, optional, tag = "1202")]
    auth_role_get: Option<pb::AuthRoleGetRequest>,
    #[prost(message, optional, tag = "1203")]
    auth_role_grant_permission: Option<pb::AuthRoleGrantPermissionRequest>,
    #[prost(message, optional, tag = "1204")]
    auth_role_revoke_permission: Option<pb::AuthRoleRevokePermissionRequest>,
    #[prost(message, optional, tag = "1300")]
    cluster_version_set: Option<ClusterVersionSet>,
    #[prost(message, optional, tag = "1301")]
    cluster_member_attr_set: Option<ClusterMemberAttrSet>,
}

/// etcd's `membership.Member` as JSON (in ConfChange contexts and the `members` bucket),
/// with `ConfigChangeContext`'s `isPromote` beside it.
pub fn member_from_json(text: &[u8]) -> Result<(MemberRecord, bool), String> {
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("member JSON: {e}"))?;
    let strings = |name: &str| -> Vec<String> {
        value[name]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let record = MemberRecord {
        id: value["id"].as_u64().ok_or("member JSON without an id")?,
        name: value["name"].as_str().unwrap_or_default().to_string(),
        peer_urls: strings("peerURLs"),
        client_urls: strings("clientURLs"),
        is_learner: value["isLearner"].as_bool().unwrap_or(false),
    };
    Ok((record, value["isPromote"].as_bool().unwrap_or(false)))
}

/// The tern entry for etcd's raftpb.Entry bytes.
pub fn translate(raftpb_entry: &[u8]) -> Result<Entry, String> {
    // raftpb.Entry and raft-rs's eraftpb.Entry share field numbers and types.
    let etcd =
        crate::raft::codec::decode_entry(raftpb_entry).map_err(|e| format!("raftpb.Entry: {e}"))?;
    let mut entry = Entry {
        index: etcd.index,
        term: etcd.term,
        ..Default::default()
    };
    let at = |e: String| format!("entry {}: {e}", etcd.index);
    match etcd.get_entry_type() {
        EntryType::EntryNormal => {
            entry.set_entry_type(EntryType::EntryNormal);
            if !etcd.data.is_empty() {
                if let Some(envelope) = normal(&etcd.data).map_err(at)? {
                    entry.data = envelope.encode_to_vec().into();
                }
            }
        }
        EntryType::EntryConfChange => {
            let (entry_type, data) = conf_change(&etcd.data).map_err(at)?;
            entry.set_entry_type(entry_type);
            entry.data = data.into();
        }
        EntryType::EntryConfChangeV2 => {
            return Err(at("ConfChangeV2 entries are not written by etcd 3.4".into()))
        }
    }
    Ok(entry)
}

/// A ConfChange: etcd's types are add 0, remove 1, update 2, add learner 3 (raft-rs has no
/// update and numbers add-learner 2, so the fields are read by hand).
fn conf_change(data: &[u8]) -> Result<(EntryType, Vec<u8>), String> {
    let fields = tern_storage::etcd_wal::fields(data).map_err(|e| format!("ConfChange: {e}"))?;
    let kind = tern_storage::etcd_wal::varint_field(&fields, 2);
    let node_id = tern_storage::etcd_wal::varint_field(&fields, 3);
    let context = fields
        .iter()
        .rev()
        .find(|f| f.0 == 4)
        .and_then(|f| f.2.clone())
        .unwrap_or_default();
    let member = || -> Result<(MemberRecord, bool), String> {
        let (member, promote) = member_from_json(&context)?;
        if member.id != node_id {
            return Err(format!(
                "ConfChange for {node_id:x} carries member {:x}",
                member.id
            ));
        }
        Ok((member, promote))
    };
    let (change_type, op, record) = match kind {
        0 => {
            let (record, promote) = member()?;
            let op = if promote {
                MemberOp::Promote
            } else {
                MemberOp::Add
            };
            (ConfChangeType::AddNode, op, record)
        }
        1 => (
            ConfChangeType::RemoveNode,
            MemberOp::Remove,
            MemberRecord {
                id: node_id,
                ..Default::default()
            },
        ),
        2 => {
            // Peer URLs updated: a normal entry in tern (`MemberOp::Update`).
            let (record, _) = member()?;
            let envelope = Envelope::member(0, 0, MemberOp::Update, record);
            return Ok((EntryType::EntryNormal, envelope.encode_to_vec()));
        }
        3 => {
            let (record, _) = member()?;
            (ConfChangeType::AddLearnerNode, MemberOp::Add, record)
        }
        other => return Err(format!("unknown ConfChange type {other}")),
    };
    let mut cc = ConfChange::default();
    cc.set_change_type(change_type);
    cc.node_id = node_id;
    cc.context = Envelope::member(0, 0, op, record).encode_to_vec().into();
    let bytes = cc.write_to_bytes().map_err(|e| e.to_string())?;
    Ok((EntryType::EntryConfChange, bytes))
}

/// A normal entry's data: `Some` envelope, or `None` for an entry that changes nothing in
/// tern (module comment).
fn normal(data: &[u8]) -> Result<Option<Envelope>, String> {
    // Bound nesting before prost decodes the one recursive field (txn, 6).
    if let Ok(fields) = tern_storage::etcd_wal::fields(data) {
        let max = crate::proto::txn_depth::TXN_NESTING_MAX;
        for txn in fields
            .iter()
            .filter(|f| f.0 == 6)
            .filter_map(|f| f.2.as_ref())
        {
            if crate::proto::txn_depth::txn_nesting_depth(txn, max).is_some_and(|d| d > max) {
                return Err(format!("txn nested deeper than {max} levels"));
            }
        }
    }
    let request = match InternalRaftRequest::decode(data) {
        Ok(request) if request.header.is_some() || request.v2.is_some() => request,
        // As etcd's apply: what is no InternalRaftRequest is a bare v2 request.
        _ => {
            let v2 = V2Request::decode(data).map_err(|e| format!("neither v3 nor v2: {e}"))?;
            return v2_request(&v2);
        }
    };
    if let Some(v2) = &request.v2 {
        return v2_request(v2);
    }
    let request_id = request.header.as_ref().map_or(0, |h| h.id);
    if let Some(set) = &request.cluster_version_set {
        let body = Body::ClusterVersion(set.ver.clone());
        return Ok(Some(Envelope::new(request_id, 0, body)));
    }
    if let Some(set) = &request.cluster_member_attr_set {
        let attributes = set.member_attributes.clone().unwrap_or_default();
        let record = MemberRecord {
            id: set.member_id,
            name: attributes.name,
            client_urls: attributes.client_urls,
            ..Default::default()
        };
        return Ok(Some(Envelope::member(
            request_id,
            0,
            MemberOp::Publish,
            record,
        )));
    }
    let header = request.header.clone().unwrap_or_default();
    let auth = auth_op(&request)?;
    let body = if let Some(r) = request.put {
        Body::Put(r)
    } else if let Some(r) = request.delete_range {
        Body::DeleteRange(r)
    } else if let Some(r) = request.txn {
        Body::Txn(r)
    } else if let Some(r) = request.compaction {
        Body::Compaction(r)
    } else if let Some(r) = request.lease_grant {
        Body::LeaseGrant(r)
    } else if let Some(r) = request.lease_revoke {
        Body::LeaseRevoke(r)
    } else if let Some(r) = request.alarm {
        Body::Alarm(r)
    } else if let Some(r) = request.lease_checkpoint {
        Body::LeaseCheckpoint(r)
    } else if let Some(op) = auth {
        Body::Auth(AuthRequest { op: Some(op) })
    } else {
        // Range, Authenticate and the auth reads: nothing to keep.
        return Ok(None);
    };
    let mut envelope = Envelope::new(header.id, 0, body);
    if !header.username.is_empty() {
        envelope.caller = Some(AuthInfo {
            username: header.username,
            auth_revision: header.auth_revision,
        });
    }
    Ok(Some(envelope))
}

fn auth_op(request: &InternalRaftRequest) -> Result<Option<AuthOp>, String> {
    let hash = |password: &str| {
        bcrypt::hash(password, ETCD_BCRYPT_COST).map_err(|e| format!("bcrypt: {e}"))
    };
    let r = request.clone();
    Ok(Some(if let Some(x) = r.auth_enable {
        AuthOp::Enable(x)
    } else if let Some(x) = r.auth_disable {
        AuthOp::Disable(x)
    } else if let Some(mut x) = r.auth_user_add {
        let no_password = x.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password && x.hashed_password.is_empty() {
            x.hashed_password = hash(&x.password)?;
        }
        x.password.clear();
        AuthOp::UserAdd(x)
    } else if let Some(x) = r.auth_user_delete {
        AuthOp::UserDelete(x)
    } else if let Some(mut x) = r.auth_user_change_password {
        if x.hashed_password.is_empty() {
            x.hashed_password = hash(&x.password)?;
        }
        x.password.clear();
        AuthOp::UserChangePassword(x)
    } else if let Some(x) = r.auth_user_grant_role {
        AuthOp::UserGrantRole(x)
    } else if let Some(x) = r.auth_user_revoke_role {
        AuthOp::UserRevokeRole(x)
    } else if let Some(x) = r.auth_role_add {
        AuthOp::RoleAdd(x)
    } else if let Some(x) = r.auth_role_delete {
        AuthOp::RoleDelete(x)
    } else if let Some(x) = r.auth_role_grant_permission {
        AuthOp::RoleGrantPermission(x)
    } else if let Some(x) = r.auth_role_revoke_permission {
        AuthOp::RoleRevokePermission(x)
    } else {
        return Ok(None);
    }))
}

/// etcd 3.4's v2 requests: a member's published attributes and the cluster version become
/// tern's entries for them; other v2 store writes change nothing tern serves.
fn v2_request(v2: &V2Request) -> Result<Option<Envelope>, String> {
    if v2.method != "PUT" {
        return Ok(None);
    }
    if v2.path == "/0/version" {
        return Ok(Some(Envelope::new(
            v2.id,
            0,
            Body::ClusterVersion(v2.val.clone()),
        )));
    }
    let Some(id) = v2
        .path
        .strip_prefix("/0/members/")
        .and_then(|rest| rest.strip_suffix("/attributes"))
    else {
        return Ok(None);
    };
    let id = u64::from_str_radix(id, 16).map_err(|_| format!("v2 member path {}", v2.path))?;
    let value: serde_json::Value =
        serde_json::from_str(&v2.val).map_err(|e| format!("v2 member attributes: {e}"))?;
    let record = MemberRecord {
        id,
        name: value["name"].as_str().unwrap_or_default().to_string(),
        client_urls: value["clientURLs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    };
    Ok(Some(Envelope::member(v2.id, 0, MemberOp::Publish, record)))
}

#[cfg(test)]
mod tests {
    //! Translations of hand-built etcd entries: the conf change types raft-rs numbers
    //! differently, a 3.4 v2 publish, and a user added with a plain password.
    use super::*;

    /// A raftpb.Entry of `entry_type` at index 7, term 2, holding `data`.
    fn etcd_entry(entry_type: EntryType, data: Vec<u8>) -> Vec<u8> {
        let mut e = Entry::default();
        e.set_entry_type(entry_type);
        e.index = 7;
        e.term = 2;
        e.data = data.into();
        e.write_to_bytes().unwrap()
    }

    /// etcd's ConfChange bytes: Type (2), NodeID (3), Context (4).
    fn etcd_conf_change(kind: u8, node_id: u8, context: &str) -> Vec<u8> {
        let mut out = vec![0x10, kind, 0x18, node_id];
        if !context.is_empty() {
            out.push(0x22);
            out.push(context.len() as u8);
            out.extend_from_slice(context.as_bytes());
        }
        out
    }

    fn envelope_of_conf_change(entry: &Entry) -> (ConfChangeType, Envelope) {
        assert_eq!(entry.get_entry_type(), EntryType::EntryConfChange);
        let cc = crate::raft::codec::decode_conf_change(&entry.data).unwrap();
        (
            cc.get_change_type(),
            Envelope::decode_entry(&cc.context).unwrap(),
        )
    }

    #[test]
    fn etcds_add_learner_and_update_keep_their_meaning() {
        let member = r#"{"id":9,"peerURLs":["http://a:2380"],"isLearner":true}"#;
        let learner = translate(&etcd_entry(
            EntryType::EntryConfChange,
            etcd_conf_change(3, 9, member),
        ))
        .unwrap();
        assert_eq!((learner.index, learner.term), (7, 2));
        let (kind, env) = envelope_of_conf_change(&learner);
        assert_eq!(kind, ConfChangeType::AddLearnerNode);
        assert!(matches!(env.body, Some(Body::Member(ref m)) if m.id == 9 && m.is_learner));

        let updated = r#"{"id":9,"peerURLs":["http://b:2380"]}"#;
        let update = translate(&etcd_entry(
            EntryType::EntryConfChange,
            etcd_conf_change(2, 9, updated),
        ))
        .unwrap();
        assert_eq!(update.get_entry_type(), EntryType::EntryNormal);
        let env = Envelope::decode_entry(&update.data).unwrap();
        assert_eq!(env.member_op, MemberOp::Update as i32);
        assert!(matches!(env.body, Some(Body::Member(ref m)) if m.peer_urls == ["http://b:2380"]));

        let promote = r#"{"id":9,"peerURLs":["http://a:2380"],"isPromote":true}"#;
        let (kind, env) = envelope_of_conf_change(
            &translate(&etcd_entry(
                EntryType::EntryConfChange,
                etcd_conf_change(0, 9, promote),
            ))
            .unwrap(),
        );
        assert_eq!(kind, ConfChangeType::AddNode);
        assert_eq!(env.member_op, MemberOp::Promote as i32);

        let (kind, _) = envelope_of_conf_change(
            &translate(&etcd_entry(
                EntryType::EntryConfChange,
                etcd_conf_change(1, 9, ""),
            ))
            .unwrap(),
        );
        assert_eq!(kind, ConfChangeType::RemoveNode);
        // A context naming another member than the change is refused.
        let other = r#"{"id":8,"peerURLs":[]}"#;
        assert!(translate(&etcd_entry(
            EntryType::EntryConfChange,
            etcd_conf_change(0, 9, other)
        ))
        .is_err());
    }

    #[test]
    fn a_v2_publish_becomes_a_member_publish() {
        let v2 = V2Request {
            id: 5,
            method: "PUT".into(),
            path: "/0/members/1f/attributes".into(),
            val: r#"{"name":"m1","clientURLs":["http://c:2379"]}"#.into(),
        };
        let entry = translate(&etcd_entry(EntryType::EntryNormal, v2.encode_to_vec())).unwrap();
        let env = Envelope::decode_entry(&entry.data).unwrap();
        assert_eq!(env.member_op, MemberOp::Publish as i32);
        assert!(matches!(env.body, Some(Body::Member(ref m))
            if m.id == 0x1f && m.name == "m1" && m.client_urls == ["http://c:2379"]));
        // Another v2 write changes nothing tern serves: an empty entry keeps its index.
        let other = V2Request {
            path: "/1/foo".into(),
            ..v2
        };
        let entry = translate(&etcd_entry(EntryType::EntryNormal, other.encode_to_vec())).unwrap();
        assert!(entry.data.is_empty());
        assert_eq!(entry.index, 7);
    }

    #[test]
    fn a_plain_password_is_hashed_and_dropped() {
        let request = InternalRaftRequest {
            header: Some(RequestHeader {
                id: 3,
                username: "root".into(),
                auth_revision: 4,
            }),
            auth_user_add: Some(pb::AuthUserAddRequest {
                name: "alice".into(),
                password: "secret".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let entry =
            translate(&etcd_entry(EntryType::EntryNormal, request.encode_to_vec())).unwrap();
        let env = Envelope::decode_entry(&entry.data).unwrap();
        assert_eq!(
            env.caller.as_ref().map(|c| c.username.as_str()),
            Some("root")
        );
        let Some(Body::Auth(AuthRequest {
            op: Some(AuthOp::UserAdd(add)),
        })) = env.body
        else {
            panic!("not a user add: {:?}", env.body);
        };
        assert!(add.password.is_empty());
        assert!(bcrypt::verify("secret", &add.hashed_password).unwrap());
    }
}
