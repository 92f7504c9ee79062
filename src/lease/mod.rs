//! Leases: the lessor (grant, revoke, renew, expiry, checkpoints, persistence). The
//! commands the Lease service sends to the state executor are `crate::state::lease_command`.
//! Record format and cluster design: docs/lease.md.
//!
//! Invariants (as etcd's):
//! - Lease state is replicated: Grant (with an id chosen by the proposing member before
//!   proposing), Revoke and Checkpoint are raft entries applied on every member, so every
//!   member's lessor and `lease` bucket agree.
//! - Only the raft leader's lessor is primary: it alone has deadlines, decides expiry and
//!   checkpoints, and proposes them as Revoke/Checkpoint entries (never applying locally).
//!   A new leader promotes (deadlines extended by one election timeout); followers demote.
//! - Keep-alives and TimeToLive are answered by the leader without a raft round; followers
//!   forward them over the peer transport (docs/peer-protocol.md, "Lease forwarding").

pub mod lessor;

pub use lessor::{Granted, Lease, LeaseOptions, Lessor, LEASE_TTL_SECS_MAX};

#[cfg(test)]
mod tests;
