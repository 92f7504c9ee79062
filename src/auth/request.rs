//! What the Auth service asks of the state core, and what a raft entry of auth carries.
//!
//! [`AuthRequest`] is a protobuf message (part of the entry format, docs/peer-protocol.md
//! "Entry data"): exactly one [`AuthOp`]. The ops that change auth state are proposed and
//! applied on every member; the others ([`AuthOp::is_read`]) are answered from the
//! applied state and never proposed. Passwords never travel in an entry: the proposing
//! member hashes them first (`hashed_password`), and Authenticate carries no password at
//! all (the password was checked before proposing, as etcd does).
//!
//! [`AuthInfo`] is who a request runs as (etcd's `AuthInfo` and the username/auth
//! revision of its `RequestHeader`); [`Caller`] adds the server's own requests;
//! [`Credential`] is what a request shows to be resolved into an [`AuthInfo`].

use crate::proto::etcdserverpb as pb;

/// A client's identity for one request: the user its token names and the auth revision
/// the token was checked against. Empty name and revision 0: no credentials.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuthInfo {
    #[prost(string, tag = "1")]
    pub username: String,
    #[prost(uint64, tag = "2")]
    pub auth_revision: u64,
}

/// What a client request presents as its identity, resolved on the state core
/// (`AuthStore::info_from`). A request with neither runs as a client without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
/// Shared text: every command of a call carries its credential (a clone is a count).
pub enum Credential {
    /// The `token` (or `authorization`) metadata: a simple token or a JWT. It wins over a
    /// client certificate, as in etcd.
    Token(std::sync::Arc<str>),
    /// With `--client-cert-auth`, no token, over TLS: the subject common name of the
    /// verified client certificate (etcd's `AuthInfoFromTLS`); empty for a certificate
    /// without one, which etcd also takes as the (nonexistent) user "".
    CommonName(std::sync::Arc<str>),
}

/// Who a request runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The server itself (lease expiry, checkpoints, entries from before auth existed):
    /// never checked, like etcd's `WithRoot` requests.
    Internal,
    Client(AuthInfo),
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller::Client(AuthInfo::default())
    }
}

/// Authenticate as proposed: the user and the random token prefix the proposer chose,
/// and the auth revision its password check saw (etcd's `InternalAuthenticateRequest`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct InternalAuthenticate {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub simple_token_prefix: String,
    #[prost(uint64, tag = "3")]
    pub checked_auth_revision: u64,
}

/// A watch about to be created: may its caller read `[key, range_end)`?
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RangeCheck {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: bytes::Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub range_end: bytes::Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthRequest {
    #[prost(
        oneof = "AuthOp",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19"
    )]
    pub op: Option<AuthOp>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AuthOp {
    #[prost(message, tag = "1")]
    Enable(pb::AuthEnableRequest),
    #[prost(message, tag = "2")]
    Disable(pb::AuthDisableRequest),
    #[prost(message, tag = "3")]
    Status(pb::AuthStatusRequest),
    #[prost(message, tag = "4")]
    Authenticate(InternalAuthenticate),
    /// `password` is always empty here; `hashed_password` holds the bcrypt hash.
    #[prost(message, tag = "5")]
    UserAdd(pb::AuthUserAddRequest),
    #[prost(message, tag = "6")]
    UserGet(pb::AuthUserGetRequest),
    #[prost(message, tag = "7")]
    UserList(pb::AuthUserListRequest),
    #[prost(message, tag = "8")]
    UserDelete(pb::AuthUserDeleteRequest),
    /// `password` is always empty here; `hashed_password` holds the bcrypt hash.
    #[prost(message, tag = "9")]
    UserChangePassword(pb::AuthUserChangePasswordRequest),
    #[prost(message, tag = "10")]
    UserGrantRole(pb::AuthUserGrantRoleRequest),
    #[prost(message, tag = "11")]
    UserRevokeRole(pb::AuthUserRevokeRoleRequest),
    #[prost(message, tag = "12")]
    RoleAdd(pb::AuthRoleAddRequest),
    #[prost(message, tag = "13")]
    RoleGet(pb::AuthRoleGetRequest),
    #[prost(message, tag = "14")]
    RoleList(pb::AuthRoleListRequest),
    #[prost(message, tag = "15")]
    RoleDelete(pb::AuthRoleDeleteRequest),
    #[prost(message, tag = "16")]
    RoleGrantPermission(pb::AuthRoleGrantPermissionRequest),
    #[prost(message, tag = "17")]
    RoleRevokePermission(pb::AuthRoleRevokePermissionRequest),
    /// The stored hash of a user's password, for the Authenticate check (a read).
    #[prost(string, tag = "18")]
    PasswordOf(String),
    /// A watch creation's permission check (a read).
    #[prost(message, tag = "19")]
    CheckRange(RangeCheck),
}

impl AuthOp {
    /// Answered from the applied state, never proposed.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            AuthOp::Status(_)
                | AuthOp::UserGet(_)
                | AuthOp::UserList(_)
                | AuthOp::RoleGet(_)
                | AuthOp::RoleList(_)
                | AuthOp::PasswordOf(_)
                | AuthOp::CheckRange(_)
        )
    }

    /// etcd's `needAdminPermission`: only a root-role user may ask this while auth is on.
    /// (UserGet and RoleGet are also allowed for one's own user and roles.)
    pub fn needs_admin(&self) -> bool {
        matches!(
            self,
            AuthOp::Enable(_)
                | AuthOp::Disable(_)
                | AuthOp::UserAdd(_)
                | AuthOp::UserDelete(_)
                | AuthOp::UserChangePassword(_)
                | AuthOp::UserGrantRole(_)
                | AuthOp::UserRevokeRole(_)
                | AuthOp::RoleAdd(_)
                | AuthOp::RoleGrantPermission(_)
                | AuthOp::RoleRevokePermission(_)
                | AuthOp::RoleDelete(_)
                | AuthOp::UserList(_)
                | AuthOp::RoleList(_)
        )
    }
}

/// A user's stored password, as the Authenticate check needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPassword {
    pub bcrypt_hash: Vec<u8>,
    /// The auth revision the hash was read at.
    pub auth_revision: u64,
}

/// The answer to an [`AuthOp`], of the op's kind.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthReply {
    Enable(pb::AuthEnableResponse),
    Disable(pb::AuthDisableResponse),
    Status(pb::AuthStatusResponse),
    Authenticate(pb::AuthenticateResponse),
    UserAdd(pb::AuthUserAddResponse),
    UserGet(pb::AuthUserGetResponse),
    UserList(pb::AuthUserListResponse),
    UserDelete(pb::AuthUserDeleteResponse),
    UserChangePassword(pb::AuthUserChangePasswordResponse),
    UserGrantRole(pb::AuthUserGrantRoleResponse),
    UserRevokeRole(pb::AuthUserRevokeRoleResponse),
    RoleAdd(pb::AuthRoleAddResponse),
    RoleGet(pb::AuthRoleGetResponse),
    RoleList(pb::AuthRoleListResponse),
    RoleDelete(pb::AuthRoleDeleteResponse),
    RoleGrantPermission(pb::AuthRoleGrantPermissionResponse),
    RoleRevokePermission(pb::AuthRoleRevokePermissionResponse),
    PasswordOf(StoredPassword),
    CheckRange,
}

impl AuthReply {
    /// Puts `header` on a response that has one.
    pub fn set_header(&mut self, header: pb::ResponseHeader) {
        let slot = match self {
            AuthReply::Enable(r) => &mut r.header,
            AuthReply::Disable(r) => &mut r.header,
            AuthReply::Status(r) => &mut r.header,
            AuthReply::Authenticate(r) => &mut r.header,
            AuthReply::UserAdd(r) => &mut r.header,
            AuthReply::UserGet(r) => &mut r.header,
            AuthReply::UserList(r) => &mut r.header,
            AuthReply::UserDelete(r) => &mut r.header,
            AuthReply::UserChangePassword(r) => &mut r.header,
            AuthReply::UserGrantRole(r) => &mut r.header,
            AuthReply::UserRevokeRole(r) => &mut r.header,
            AuthReply::RoleAdd(r) => &mut r.header,
            AuthReply::RoleGet(r) => &mut r.header,
            AuthReply::RoleList(r) => &mut r.header,
            AuthReply::RoleDelete(r) => &mut r.header,
            AuthReply::RoleGrantPermission(r) => &mut r.header,
            AuthReply::RoleRevokePermission(r) => &mut r.header,
            AuthReply::PasswordOf(_) | AuthReply::CheckRange => return,
        };
        *slot = Some(header);
    }
}
