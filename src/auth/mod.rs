//! etcd's authentication and authorization: users, roles, key permissions, tokens.
//!
//! - [`store`]: the replicated auth state with etcd 3.4's rules and error texts, kept in
//!   memory and in the backend's `auth`, `authUsers` and `authRoles` buckets;
//! - [`check`]: who a request runs as (its token or client certificate) and whether it
//!   may touch its keys or do an admin's work;
//! - [`perms`]: a user's permissions merged into intervals, and the coverage check;
//! - [`token`]: etcd's simple tokens with their TTL; [`jwt`]: etcd's JWT tokens;
//! - [`request`]: the auth ops the state core answers or applies (an entry format), and
//!   who a request runs as.
//!
//! Invariants:
//! - this module sits below `state` (which owns the one `AuthStore`, on the state
//!   executor) and above `mvcc` (its backend); it knows nothing of raft or gRPC;
//! - nothing here hashes a password: bcrypt runs on a blocking thread before an op is
//!   proposed (`crate::service::auth`), so the state executor only compares and stores.

pub mod check;
pub mod jwt;
pub mod perms;
pub mod request;
pub mod store;
pub mod token;

pub use request::{AuthInfo, AuthOp, AuthReply, AuthRequest, Caller, Credential};
pub use store::{Access, AuthStore};
