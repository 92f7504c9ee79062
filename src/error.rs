//! The one table of client-visible etcd errors.
//!
//! Every error a client can receive from tern is a variant of [`EtcdError`]. Its text and its
//! gRPC status code are etcd's own (`api/v3rpc/rpctypes/error.go` and the `toGRPCErrorMap` in
//! `etcdserver/api/v3rpc/util.go`, etcd 3.4.23 unless a row says otherwise): clients such as
//! clientv3 match on the exact string, so each is written here once and nowhere else.
//!
//! This module knows nothing about the gRPC layer: `grpc_code` is the numeric status code
//! (0..=16, as in `google.golang.org/grpc/codes`) and the gRPC module turns it into a status.

use std::fmt;

/// Numeric gRPC status codes etcd uses (a subset of grpc's `codes` package).
pub mod grpc_code {
    pub const CANCELLED: u8 = 1;
    pub const UNKNOWN: u8 = 2;
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const FAILED_PRECONDITION: u8 = 9;
    pub const OUT_OF_RANGE: u8 = 11;
    pub const UNAVAILABLE: u8 = 14;
    pub const DATA_LOSS: u8 = 15;
    pub const UNAUTHENTICATED: u8 = 16;
}

macro_rules! etcd_errors {
    ($( $(#[$doc:meta])* $name:ident => ($code:ident, $text:literal), )*) => {
        /// A client-visible etcd error: exact message and gRPC code as etcd sends them.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum EtcdError {
            $( $(#[$doc])* $name, )*
        }

        impl EtcdError {
            /// Every error in the table, in table order.
            pub const ALL: &'static [EtcdError] = &[ $( EtcdError::$name, )* ];

            /// The numeric gRPC status code etcd answers this error with.
            pub fn grpc_code(&self) -> u8 {
                match self { $( EtcdError::$name => grpc_code::$code, )* }
            }

            /// etcd's exact error text (the gRPC status message).
            pub fn message(&self) -> &'static str {
                match self { $( EtcdError::$name => $text, )* }
            }
        }
    };
}

etcd_errors! {
    // --- KV requests ---
    EmptyKey => (INVALID_ARGUMENT, "etcdserver: key is not provided"),
    /// Also answered for an empty `RequestOp` inside a txn (etcd's `checkRequestOp`).
    KeyNotFound => (INVALID_ARGUMENT, "etcdserver: key not found"),
    ValueProvided => (INVALID_ARGUMENT, "etcdserver: value is provided"),
    LeaseProvided => (INVALID_ARGUMENT, "etcdserver: lease is provided"),
    TooManyOps => (INVALID_ARGUMENT, "etcdserver: too many operations in txn request"),
    DuplicateKey => (INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"),
    /// etcd ≥ 3.6 (3.4 crashes on an unknown sort target; we answer like 3.6).
    InvalidSortOption => (INVALID_ARGUMENT, "etcdserver: invalid sort option"),
    InvalidClientApiVersion => (INVALID_ARGUMENT, "etcdserver: invalid client api version"),
    Compacted => (OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
    FutureRev => (OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"),
    NoSpace => (RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),

    // --- leases ---
    LeaseNotFound => (NOT_FOUND, "etcdserver: requested lease not found"),
    LeaseExist => (FAILED_PRECONDITION, "etcdserver: lease already exists"),
    LeaseTtlTooLarge => (OUT_OF_RANGE, "etcdserver: too large lease TTL"),

    // --- watch ---
    WatchCanceled => (CANCELLED, "etcdserver: watch canceled"),

    // --- membership ---
    MemberExist => (FAILED_PRECONDITION, "etcdserver: member ID already exist"),
    PeerUrlExist => (FAILED_PRECONDITION, "etcdserver: Peer URLs already exists"),
    /// etcd 3.4 maps this to the client-side `rpctypes.ErrMemberNotEnoughStarted`, which is
    /// not a gRPC status, so grpc-go sends it as Unknown with the same text.
    MemberNotEnoughStarted => (UNKNOWN, "etcdserver: re-configuration failed due to not enough started members"),
    MemberBadUrls => (INVALID_ARGUMENT, "etcdserver: given member URLs are invalid"),
    MemberNotFound => (NOT_FOUND, "etcdserver: member not found"),
    MemberNotLearner => (FAILED_PRECONDITION, "etcdserver: can only promote a learner member"),
    LearnerNotReady => (FAILED_PRECONDITION, "etcdserver: can only promote a learner member which is in sync with leader"),
    TooManyLearners => (FAILED_PRECONDITION, "etcdserver: too many learner members in cluster"),
    /// etcd ≥ 3.5.
    ClusterIdMismatch => (FAILED_PRECONDITION, "etcdserver: cluster ID mismatch"),

    // --- request limits ---
    RequestTooLarge => (INVALID_ARGUMENT, "etcdserver: request is too large"),
    /// Like `MemberNotEnoughStarted`, etcd 3.4 sends this one with code Unknown.
    TooManyRequests => (UNKNOWN, "etcdserver: too many requests"),

    // --- auth ---
    RootUserNotExist => (FAILED_PRECONDITION, "etcdserver: root user does not exist"),
    RootRoleNotExist => (FAILED_PRECONDITION, "etcdserver: root user does not have root role"),
    UserAlreadyExist => (FAILED_PRECONDITION, "etcdserver: user name already exists"),
    UserEmpty => (INVALID_ARGUMENT, "etcdserver: user name is empty"),
    UserNotFound => (FAILED_PRECONDITION, "etcdserver: user name not found"),
    RoleAlreadyExist => (FAILED_PRECONDITION, "etcdserver: role name already exists"),
    RoleNotFound => (FAILED_PRECONDITION, "etcdserver: role name not found"),
    RoleEmpty => (INVALID_ARGUMENT, "etcdserver: role name is empty"),
    AuthFailed => (INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password"),
    /// etcd ≥ 3.5.
    PermissionNotGiven => (INVALID_ARGUMENT, "etcdserver: permission not given"),
    PermissionDenied => (PERMISSION_DENIED, "etcdserver: permission denied"),
    RoleNotGranted => (FAILED_PRECONDITION, "etcdserver: role is not granted to the user"),
    PermissionNotGranted => (FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"),
    AuthNotEnabled => (FAILED_PRECONDITION, "etcdserver: authentication is not enabled"),
    InvalidAuthToken => (UNAUTHENTICATED, "etcdserver: invalid auth token"),
    InvalidAuthMgmt => (INVALID_ARGUMENT, "etcdserver: invalid auth management"),
    AuthOldRevision => (INVALID_ARGUMENT, "etcdserver: revision of auth store is old"),
    /// Not in etcd's gRPC error map, so grpc-go sends the auth package's own text with
    /// code Unknown (etcdctl prints it as such).
    NoPasswordUser => (UNKNOWN, "auth: authentication failed, password was given for no password user"),
    // etcd's Maintenance admin check (`authMaintenanceServer.isAuthenticated`) returns the
    // auth package's errors unmapped: code Unknown and the `auth:` texts.
    UnmappedUserEmpty => (UNKNOWN, "auth: user name is empty"),
    UnmappedUserNotFound => (UNKNOWN, "auth: user not found"),
    UnmappedPermissionDenied => (UNKNOWN, "auth: permission denied"),
    UnmappedInvalidAuthToken => (UNKNOWN, "auth: invalid auth token"),
    UnmappedAuthOldRevision => (UNKNOWN, "auth: revision in header is old"),
    /// A member given only a JWT public key cannot issue tokens.
    VerifyOnly => (UNKNOWN, "auth: token signing attempted with verify-only key"),

    // --- server / raft state ---
    NoLeader => (UNAVAILABLE, "etcdserver: no leader"),
    NotLeader => (FAILED_PRECONDITION, "etcdserver: not leader"),
    LeaderChanged => (UNAVAILABLE, "etcdserver: leader changed"),
    NotCapable => (UNAVAILABLE, "etcdserver: not capable"),
    Stopped => (UNAVAILABLE, "etcdserver: server stopped"),
    Timeout => (UNAVAILABLE, "etcdserver: request timed out"),
    TimeoutDueToLeaderFail => (UNAVAILABLE, "etcdserver: request timed out, possibly due to previous leader failure"),
    TimeoutDueToConnectionLost => (UNAVAILABLE, "etcdserver: request timed out, possibly due to connection lost"),
    TimeoutWaitAppliedIndex => (UNAVAILABLE, "etcdserver: request timed out, waiting for the applied index took too long"),
    TimeoutLeaderTransfer => (UNAVAILABLE, "etcdserver: request timed out, leader transfer took too long"),
    Unhealthy => (UNAVAILABLE, "etcdserver: unhealthy cluster"),
    /// Also what tern answers when its own storage returns corrupt bytes.
    Corrupt => (DATA_LOSS, "etcdserver: corrupt cluster"),
    NotSupportedForLearner => (UNAVAILABLE, "etcdserver: rpc not supported for learner"),
    BadLeaderTransferee => (FAILED_PRECONDITION, "etcdserver: bad leader transferee"),

    // --- downgrade (etcd ≥ 3.5) ---
    ClusterVersionUnavailable => (UNAVAILABLE, "etcdserver: cluster version not found during downgrade"),
    WrongDowngradeVersionFormat => (INVALID_ARGUMENT, "etcdserver: wrong downgrade target version format"),
    InvalidDowngradeTargetVersion => (INVALID_ARGUMENT, "etcdserver: invalid downgrade target version"),
    DowngradeInProcess => (FAILED_PRECONDITION, "etcdserver: cluster has a downgrade job in progress"),
    NoInflightDowngrade => (FAILED_PRECONDITION, "etcdserver: no inflight downgrade job"),

    // --- request lifetime (etcd ≥ 3.5 names; 3.4 sends grpc's own "context canceled") ---
    Canceled => (CANCELLED, "etcdserver: request canceled"),
    DeadlineExceeded => (DEADLINE_EXCEEDED, "etcdserver: context deadline exceeded"),
}

impl EtcdError {
    /// The same auth error as etcd's auth package returns it where etcd does not map it
    /// to its gRPC error (the Maintenance admin check); other errors are unchanged.
    pub fn unmapped_auth(self) -> EtcdError {
        match self {
            EtcdError::UserEmpty => EtcdError::UnmappedUserEmpty,
            EtcdError::UserNotFound => EtcdError::UnmappedUserNotFound,
            EtcdError::PermissionDenied => EtcdError::UnmappedPermissionDenied,
            EtcdError::InvalidAuthToken => EtcdError::UnmappedInvalidAuthToken,
            EtcdError::AuthOldRevision => EtcdError::UnmappedAuthOldRevision,
            other => other,
        }
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for EtcdError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_texts_and_codes() {
        // Texts and codes as the golden etcdctl transcripts show them.
        let cases = [
            (
                EtcdError::Compacted,
                11,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                EtcdError::FutureRev,
                11,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (EtcdError::EmptyKey, 3, "etcdserver: key is not provided"),
            (EtcdError::KeyNotFound, 3, "etcdserver: key not found"),
            (
                EtcdError::DuplicateKey,
                3,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                EtcdError::TooManyOps,
                3,
                "etcdserver: too many operations in txn request",
            ),
            (
                EtcdError::RequestTooLarge,
                3,
                "etcdserver: request is too large",
            ),
            (
                EtcdError::LeaseNotFound,
                5,
                "etcdserver: requested lease not found",
            ),
            (
                EtcdError::InvalidAuthToken,
                16,
                "etcdserver: invalid auth token",
            ),
        ];
        for (e, code, text) in cases {
            assert_eq!(e.grpc_code(), code, "{e:?}");
            assert_eq!(e.message(), text);
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn messages_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for e in EtcdError::ALL {
            // The exceptions: auth-package errors etcd passes through unmapped.
            if e.grpc_code() == grpc_code::UNKNOWN && e.message().starts_with("auth: ") {
                continue;
            }
            assert!(e.message().starts_with("etcdserver: "), "{e:?}");
            assert!(seen.insert(e.message()), "duplicate text {e:?}");
            assert!((1..=16).contains(&e.grpc_code()));
        }
    }
}
