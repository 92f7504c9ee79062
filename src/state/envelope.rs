//! What a raft entry's data holds: tern's counterpart of etcd's `InternalRaftRequest`.
//!
//! A normal entry's data is one prost-encoded [`Envelope`]; a ConfChange entry's context
//! is one too (carrying the member being changed). The `request_id` together with the
//! `origin_member_id` names the waiting client on the member that proposed the entry: only
//! that member answers it, once the entry is committed and applied. The format is part of
//! the peer protocol and the WAL contents (see docs/peer-protocol.md, "Entry data").
//!
//! Invariants:
//! - an envelope carries exactly one [`Body`] (a protobuf `oneof`); bytes with none, or
//!   with two body fields, are corrupt ([`Envelope::decode_entry`]), as are bytes that are
//!   not protobuf at all. Every member applies what the entry's bytes say, so they must
//!   all read the same request out of them;
//! - `member_op` goes with a `member` body only, and names a known operation;
//! - the field numbers are those of the earlier flat message (each body was an optional
//!   field of its own), so WALs written before the `oneof` decode unchanged.

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

/// One proposal: who waits for it, and the one request it carries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    #[prost(uint64, tag = "2")]
    pub origin_member_id: u64,
    /// With a [`Body::Member`] only: what to do with the member.
    #[prost(enumeration = "MemberOp", tag = "8")]
    pub member_op: i32,
    #[prost(oneof = "Body", tags = "3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14")]
    pub body: Option<Body>,
    /// The client a proposed request runs as (etcd's `RequestHeader` username and auth
    /// revision), checked when the entry applies. None: the server's own request (lease
    /// expiry, checkpoints, membership), or an entry from before auth existed.
    #[prost(message, optional, tag = "15")]
    pub caller: Option<crate::auth::AuthInfo>,
}

/// The request an entry carries (tags are the envelope's field numbers).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    #[prost(message, tag = "3")]
    Put(pb::PutRequest),
    #[prost(message, tag = "4")]
    DeleteRange(pb::DeleteRangeRequest),
    #[prost(message, tag = "5")]
    Txn(pb::TxnRequest),
    #[prost(message, tag = "6")]
    Compaction(pb::CompactionRequest),
    /// A member added, removed, promoted (ConfChange context), updated or published.
    #[prost(message, tag = "7")]
    Member(MemberRecord),
    /// The cluster version the leader sets once (etcd's `ClusterVersionSet`).
    #[prost(string, tag = "9")]
    ClusterVersion(String),
    /// LeaseGrant with the id the proposing member chose (never 0).
    #[prost(message, tag = "10")]
    LeaseGrant(pb::LeaseGrantRequest),
    /// LeaseRevoke: a client's, or the leader's for an expired lease.
    #[prost(message, tag = "11")]
    LeaseRevoke(pb::LeaseRevokeRequest),
    /// The leader's lease checkpoints (etcd's `LeaseCheckpointRequest`).
    #[prost(message, tag = "12")]
    LeaseCheckpoint(LeaseCheckpoints),
    /// Alarm ACTIVATE or DEACTIVATE (GET is a read and never proposed).
    #[prost(message, tag = "13")]
    Alarm(pb::AlarmRequest),
    /// A change of auth state (`crate::auth::request`), never one of its reads.
    #[prost(message, tag = "14")]
    Auth(crate::auth::AuthRequest),
}

/// The envelope's field numbers that belong to the body `oneof`.
const BODY_TAGS: [u32; 11] = [3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14];

/// Why entry bytes are not a valid envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum CorruptEnvelope {
    /// Not protobuf, or a field of the wrong type.
    Undecodable(String),
    NoBody,
    /// Two body fields (or one twice): which request the entry means is ambiguous.
    SeveralBodies,
    /// `member_op` without a member, a member without a known operation.
    BadMemberOp(i32),
}

impl std::fmt::Display for CorruptEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorruptEnvelope::Undecodable(e) => write!(f, "not an envelope: {e}"),
            CorruptEnvelope::NoBody => f.write_str("envelope carries no request"),
            CorruptEnvelope::SeveralBodies => f.write_str("envelope carries several requests"),
            CorruptEnvelope::BadMemberOp(op) => {
                write!(
                    f,
                    "envelope has member operation {op} that does not fit its body"
                )
            }
        }
    }
}

impl Envelope {
    /// An envelope for `body`, proposed by `origin_member_id` for its request `request_id`.
    pub fn new(request_id: u64, origin_member_id: u64, body: Body) -> Envelope {
        Envelope {
            request_id,
            origin_member_id,
            member_op: MemberOp::None as i32,
            body: Some(body),
            caller: None,
        }
    }

    /// A member-carrying envelope.
    pub fn member(
        request_id: u64,
        origin_member_id: u64,
        op: MemberOp,
        member: MemberRecord,
    ) -> Envelope {
        Envelope {
            member_op: op as i32,
            ..Envelope::new(request_id, origin_member_id, Body::Member(member))
        }
    }

    /// Decodes a committed entry's bytes, refusing anything but exactly one body (see the
    /// module invariants). prost alone would keep the last of two body fields.
    pub fn decode_entry(data: &[u8]) -> Result<Envelope, CorruptEnvelope> {
        let bodies = count_body_fields(data).map_err(CorruptEnvelope::Undecodable)?;
        if bodies > 1 {
            return Err(CorruptEnvelope::SeveralBodies);
        }
        // prost decodes without a recursion limit: bound the one recursive body first.
        if let Some(txn) = body_bytes(data, TXN_BODY_TAG) {
            let max = crate::proto::txn_depth::TXN_NESTING_MAX;
            if crate::proto::txn_depth::txn_nesting_depth(txn, max).is_some_and(|d| d > max) {
                return Err(CorruptEnvelope::Undecodable(format!(
                    "txn nested deeper than {max} levels"
                )));
            }
        }
        let env = <Envelope as prost::Message>::decode(data)
            .map_err(|e| CorruptEnvelope::Undecodable(e.to_string()))?;
        let op = MemberOp::try_from(env.member_op);
        match (&env.body, op) {
            (None, _) => Err(CorruptEnvelope::NoBody),
            (Some(Body::Member(_)), Ok(op)) if op != MemberOp::None => Ok(env),
            (Some(Body::Member(_)), _) => Err(CorruptEnvelope::BadMemberOp(env.member_op)),
            (Some(_), Ok(MemberOp::None)) => Ok(env),
            (Some(_), _) => Err(CorruptEnvelope::BadMemberOp(env.member_op)),
        }
    }
}

/// How many top-level fields of `data` are body fields, walking the protobuf wire format
/// (key varint, then a payload whose size the wire type gives).
/// The envelope field number of [`Body::Txn`].
const TXN_BODY_TAG: u64 = 5;

/// The bytes of the first length-delimited field `tag`, if the envelope is well formed up
/// to it.
fn body_bytes(data: &[u8], tag: u64) -> Option<&[u8]> {
    let mut at = 0;
    while at < data.len() {
        let key = read_varint(data, &mut at).ok()?;
        let len = match key & 7 {
            0 => {
                read_varint(data, &mut at).ok()?;
                0
            }
            1 => 8,
            2 => usize::try_from(read_varint(data, &mut at).ok()?).ok()?,
            5 => 4,
            _ => return None,
        };
        let end = at.checked_add(len).filter(|end| *end <= data.len())?;
        if key >> 3 == tag && key & 7 == 2 {
            return Some(&data[at..end]);
        }
        at = end;
    }
    None
}

fn count_body_fields(data: &[u8]) -> Result<usize, String> {
    let mut at = 0;
    let mut bodies = 0;
    while at < data.len() {
        let key = read_varint(data, &mut at)?;
        let tag = key >> 3;
        if tag == 0 || tag > u64::from(u32::MAX >> 3) {
            return Err(format!("invalid field number {tag}"));
        }
        if BODY_TAGS.contains(&(tag as u32)) {
            bodies += 1;
        }
        let skip = match key & 7 {
            0 => {
                read_varint(data, &mut at)?;
                0
            }
            1 => 8,
            2 => {
                let len = read_varint(data, &mut at)?;
                usize::try_from(len).map_err(|_| "length overflows".to_string())?
            }
            5 => 4,
            other => return Err(format!("unsupported wire type {other}")),
        };
        at = at
            .checked_add(skip)
            .filter(|end| *end <= data.len())
            .ok_or_else(|| "field runs past the end".to_string())?;
    }
    Ok(bodies)
}

/// One base-128 varint at `*at`, at most 10 bytes.
fn read_varint(data: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7).take(10) {
        let byte = *data.get(*at).ok_or("truncated varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".to_string())
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

#[cfg(test)]
mod tests {
    //! Checks the oneof rules of `Envelope::decode_entry` on hand-built wire bytes: one body
    //! decodes, zero or two bodies are corrupt, and the flat pre-oneof encoding still reads.
    use super::*;
    use prost::Message as _;

    fn put(key: &str) -> Body {
        Body::Put(pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })
    }

    #[test]
    fn one_body_round_trips() {
        let env = Envelope::new(7, 9, put("a"));
        assert_eq!(Envelope::decode_entry(&env.encode_to_vec()), Ok(env));
        let member = Envelope::member(1, 2, MemberOp::Publish, MemberRecord::default());
        assert_eq!(Envelope::decode_entry(&member.encode_to_vec()), Ok(member));
        let version = Envelope::new(3, 4, Body::ClusterVersion(String::new()));
        assert_eq!(
            Envelope::decode_entry(&version.encode_to_vec()),
            Ok(version)
        );
    }

    #[test]
    fn zero_bodies_are_corrupt() {
        let ids_only = Envelope {
            request_id: 5,
            origin_member_id: 6,
            member_op: 0,
            body: None,
            caller: None,
        };
        let bytes = ids_only.encode_to_vec();
        assert!(!bytes.is_empty());
        assert_eq!(Envelope::decode_entry(&bytes), Err(CorruptEnvelope::NoBody));
    }

    #[test]
    fn two_bodies_are_corrupt() {
        // prost itself would keep the last one and apply a delete nobody proposed alone.
        let mut bytes = Envelope::new(1, 1, put("a")).encode_to_vec();
        let delete = Body::DeleteRange(pb::DeleteRangeRequest {
            key: b"a".to_vec().into(),
            ..Default::default()
        });
        bytes.extend(
            Envelope {
                body: Some(delete),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert!(<Envelope as prost::Message>::decode(&bytes[..]).is_ok());
        assert_eq!(
            Envelope::decode_entry(&bytes),
            Err(CorruptEnvelope::SeveralBodies)
        );
        // The same body twice is ambiguous too (protobuf would merge the two puts).
        let mut twice = Envelope::new(1, 1, put("a")).encode_to_vec();
        twice.extend(Envelope::new(0, 0, put("b")).encode_to_vec());
        assert_eq!(
            Envelope::decode_entry(&twice),
            Err(CorruptEnvelope::SeveralBodies)
        );
    }

    #[test]
    fn garbage_and_truncated_bytes_are_corrupt() {
        for bytes in [
            &[0xff; 9][..],
            &[0x1a, 0x05, 0x0a][..], // a put whose length runs past the end
            &[0x1b][..],             // wire type 3 (groups)
            &[0x00, 0x01][..],       // field number 0
        ] {
            assert!(
                matches!(
                    Envelope::decode_entry(bytes),
                    Err(CorruptEnvelope::Undecodable(_))
                ),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn member_op_must_fit_the_body() {
        let mut env = Envelope::new(1, 1, put("a"));
        env.member_op = MemberOp::Update as i32;
        assert_eq!(
            Envelope::decode_entry(&env.encode_to_vec()),
            Err(CorruptEnvelope::BadMemberOp(3))
        );
        let mut member = Envelope::member(1, 1, MemberOp::Add, MemberRecord::default());
        member.member_op = 0;
        assert_eq!(
            Envelope::decode_entry(&member.encode_to_vec()),
            Err(CorruptEnvelope::BadMemberOp(0))
        );
        member.member_op = 42;
        assert_eq!(
            Envelope::decode_entry(&member.encode_to_vec()),
            Err(CorruptEnvelope::BadMemberOp(42))
        );
    }

    /// The envelope before it became a oneof: every body an optional field of its own.
    #[derive(Clone, PartialEq, prost::Message)]
    struct FlatEnvelope {
        #[prost(uint64, tag = "1")]
        request_id: u64,
        #[prost(uint64, tag = "2")]
        origin_member_id: u64,
        #[prost(message, optional, tag = "3")]
        put: Option<pb::PutRequest>,
        #[prost(message, optional, tag = "7")]
        member: Option<MemberRecord>,
        #[prost(enumeration = "MemberOp", tag = "8")]
        member_op: i32,
        #[prost(string, tag = "9")]
        cluster_version: String,
        #[prost(message, optional, tag = "10")]
        lease_grant: Option<pb::LeaseGrantRequest>,
    }

    #[test]
    fn entries_written_before_the_oneof_decode_the_same() {
        let Body::Put(req) = put("k") else {
            unreachable!()
        };
        let flat = FlatEnvelope {
            request_id: 11,
            origin_member_id: 12,
            put: Some(req.clone()),
            ..Default::default()
        };
        assert_eq!(
            Envelope::decode_entry(&flat.encode_to_vec()),
            Ok(Envelope::new(11, 12, Body::Put(req)))
        );
        let version = FlatEnvelope {
            cluster_version: "3.4.0".into(),
            ..Default::default()
        };
        assert_eq!(
            Envelope::decode_entry(&version.encode_to_vec()),
            Ok(Envelope::new(0, 0, Body::ClusterVersion("3.4.0".into())))
        );
        let member = MemberRecord {
            id: 3,
            name: "m".into(),
            ..Default::default()
        };
        let publish = FlatEnvelope {
            member: Some(member.clone()),
            member_op: MemberOp::Publish as i32,
            ..Default::default()
        };
        assert_eq!(
            Envelope::decode_entry(&publish.encode_to_vec()),
            Ok(Envelope::member(0, 0, MemberOp::Publish, member))
        );
        // And the other way: what tern writes now is what the flat message reads.
        let grant = pb::LeaseGrantRequest { ttl: 5, id: 77 };
        let now = Envelope::new(1, 2, Body::LeaseGrant(grant));
        let old = FlatEnvelope::decode(&now.encode_to_vec()[..]).unwrap();
        assert_eq!(old.lease_grant, Some(grant));
    }
}
